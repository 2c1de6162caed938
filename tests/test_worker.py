"""worker.py as a plain file: `python worker.py IN OUT`, the way an Azure node runs it.

The script is copied to a folder outside the package so nothing of ours is importable next
to it; it must need nothing but the standard library and dill.
"""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import types

import pytest

from azpar_magic import worker as wire
from azpar_magic.run import capture
from azpar_magic.run.parsing import parse_cell


@pytest.fixture
def stage(tmp_path, monkeypatch):
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    script = tmp_path / "node" / "worker.py"
    script.parent.mkdir()
    shutil.copy(wire.__file__, script)

    def make(body, namespace_source="", items=(1, 2, 3), edit=None):
        exec(namespace_source, module.__dict__)
        cell = parse_cell("for x in items", body)
        cap = capture.capture(cell, module.__dict__)
        header = capture.envelope_header(cell, cap)
        if edit:
            edit(header)
        (tmp_path / header["namespace"]["file"]).write_bytes(cap.data)
        (tmp_path / "job.azpj").write_bytes(wire.pack(wire.ENVELOPE_MAGIC, header))
        codec, data = capture.serialize_items(list(items), cap.names, module.__dict__)
        task = {"envelope": "job.azpj", "task": "1", "indices": list(range(len(items))), "items_codec": codec}
        (tmp_path / "task-1.azpt").write_bytes(wire.pack(wire.TASK_MAGIC, task, data))
        return tmp_path

    def run(*args):
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.path.dirname(os.path.dirname(wire._dill().__file__))}
        return subprocess.run([sys.executable, "-I", str(script), *args], cwd=tmp_path / "node",
                              capture_output=True, text=True, env=env, timeout=60)

    return make, run


def read(path):
    return wire.read_result(path.read_bytes())


def test_runs_a_task_from_files(stage):
    make, run = stage
    folder = make("print('hi', x)\nhelper(x)", "K = 10\ndef helper(v):\n    return v * K\n")
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    result = read(folder / "out.azpr")
    assert wire.loads(*result["values"][1:]) == [10, 20, 30]
    assert result["outputs"][0] == [["stdout", "hi 1\n"]]


@pytest.mark.parametrize("stdin", ["closed", "a pipe nobody writes to"])
def test_a_tasks_input_and_debugger_meet_an_empty_input_whatever_the_node_gives(stage, stdin):
    """How a node agent starts a task's process, and what its standard input is, is not documented: with it
    closed, input() failed with "lost sys.stdin" and breakpoint() with a RuntimeError; with a pipe nobody
    writes to, both waited until the task's --timeout. The task reads the null device, as a pool worker
    does: input() and the debugger meet the end of an empty input, and their errors say why."""
    make, _ = stage
    folder = make("if x == 1:\n    input('v? ')\nelse:\n    breakpoint()\nx", items=(1, 2))
    node = folder / "node"
    argv = [sys.executable, "-I", str(node / "worker.py"), str(folder / "task-1.azpt"), str(folder / "out.azpr")]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.path.dirname(os.path.dirname(wire._dill().__file__))}
    if stdin == "closed":
        proc = subprocess.run(["sh", "-c", 'exec "$@" 0<&-', "sh", *argv], cwd=node, env=env, timeout=60,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        with subprocess.Popen(argv, cwd=node, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as proc:
            try:
                proc.wait(timeout=30)
            finally:
                proc.kill()
    assert proc.returncode == wire.EXIT_OK
    failed = read(folder / "out.azpr")["failed"]
    assert failed[0]["type"] == "builtins.EOFError" and "an iteration has no standard input" in failed[0]["message"]
    assert failed[1]["type"] == "bdb.BdbQuit" and "`%azpar debug` runs this iteration" in failed[1]["message"]


def test_user_exception_is_a_result_not_an_exit_code(stage):
    make, run = stage
    folder = make("1 / (x - 2)")
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_OK
    failed = read(folder / "out.azpr")["failed"]
    assert list(failed) == [1] and failed[1]["type"] == "builtins.ZeroDivisionError"
    assert 'File "<azpar cell>", line 2' in failed[1]["traceback"] and failed[1]["line"] == 2


@pytest.mark.parametrize("edit, expected", [
    (lambda h: h.update(dill="0.0.1"), "dill 0.0.1 on the client but dill"),
    (lambda h: h.update(python="2.7.18"), "Python 2.7.18 on the client but Python"),
    (lambda h: h["packages"].update({"surely-not-installed-pkg": "1.0"}), "surely-not-installed-pkg==1.0"),
    (lambda h: h["packages"].update({"dill": "0.0.2"}), "package dill is 0.0.2 on the client but"),
])
def test_environment_mismatch_fails_fast_naming_both_versions(stage, edit, expected):
    make, run = stage
    folder = make("x", edit=edit)
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_ENVIRONMENT
    assert expected in proc.stderr
    assert expected in read(folder / "out.azpr")["environment_error"]
    check = run("--check", str(folder / "job.azpj"))
    assert check.returncode == wire.EXIT_ENVIRONMENT and expected in check.stderr


def test_check_passes_on_a_matching_environment(stage):
    make, run = stage
    folder = make("x")
    assert run("--check", str(folder / "job.azpj")).returncode == wire.EXIT_OK


def test_the_check_on_a_node_does_not_import_dill_to_learn_its_version(stage, tmp_path):
    make, _ = stage
    folder = make("x")
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('worker', {str(tmp_path / 'node' / 'worker.py')!r})\n"
        "worker = importlib.util.module_from_spec(spec); spec.loader.exec_module(worker)\n"
        f"worker.check_node({str(folder / 'job.azpj')!r})\n"
        "print('dill' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"  # ~55 ms of job preparation on every node for every job
    assert (folder / ("job.azpj" + wire.CHECKED_SUFFIX)).is_file()


def _package(folder, info):
    (folder / "dill").mkdir(parents=True)
    (folder / "dill" / "__init__.py").write_text("")
    if info is not None:
        (folder / "dill" / "__info__.py").write_text(info)
    return str(folder)


def test_dills_version_comes_from_the_package_the_import_would_find(tmp_path, monkeypatch):
    first = _package(tmp_path / "first", "__author__ = 'x'\n__version__ = '9.9.9'\n")
    later = _package(tmp_path / "later", "__version__ = '1.1.1'\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), first, later, *sys.path])
    monkeypatch.delitem(sys.modules, "dill")  # not imported yet, as on a node
    assert wire._dill_version() == "9.9.9"
    monkeypatch.setitem(sys.modules, "dill", types.SimpleNamespace(__version__="2.2.2"))
    assert wire._dill_version() == "2.2.2"  # once imported, the module is what counts


@pytest.mark.parametrize("shape", ["module file", "no version line", "no info file", "a zip first"])
def test_dills_version_of_an_unusual_install_is_asked_of_dill_itself(tmp_path, monkeypatch, shape):
    if shape == "module file":
        (tmp_path / "dill.py").write_text("__version__ = '9.9.9'\n")
        entry = str(tmp_path)
    elif shape == "a zip first":
        entry = str(tmp_path / "lib.zip")
        (tmp_path / "lib.zip").write_bytes(b"PK")
        _package(tmp_path / "after", "__version__ = '9.9.9'\n")
        monkeypatch.setattr(sys, "path", [entry, str(tmp_path / "after"), *sys.path])
    else:
        entry = _package(tmp_path, "__author__ = 'x'\n" if shape == "no version line" else None)
    if shape != "a zip first":
        monkeypatch.setattr(sys, "path", [entry, *sys.path])
    real = sys.modules["dill"]
    monkeypatch.delitem(sys.modules, "dill")  # not imported yet, as on a node
    monkeypatch.setattr(wire, "_dill", lambda: real)  # what importing it gives
    assert wire._dill_version() == real.__version__ != "9.9.9"


def test_a_plain_task_imports_neither_the_json_nor_the_pickle_package(stage):
    """The worker reads and writes its headers with the C JSON codec and pickles with the C
    pickler: the packages around them cost a task's start on a node ~3 ms (issue 16 j)."""
    make, run = stage
    folder = make("import sys\n(x, 'json' in sys.modules, 'pickle' in sys.modules)")
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert wire.loads(*read(folder / "out.azpr")["values"][1:]) == [(x, False, False) for x in (1, 2, 3)]


def test_a_plain_task_imports_neither_linecache_nor_re(stage):
    """linecache (with tokenize, re and enum) is a third of a trivial task's start on a node: the cell's
    source is given to it only when something imports it (issue 16 j)."""
    make, run = stage
    folder = make("import sys\n(x, 'linecache' in sys.modules, 're' in sys.modules)")
    assert run("--check", str(folder / "job.azpj")).returncode == wire.EXIT_OK  # job preparation's check, as on a node
    assert list(folder.glob("*.checked"))
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    assert wire.loads(*read(folder / "out.azpr")["values"][1:]) == [(x, False, False) for x in (1, 2, 3)]


def test_the_cells_lines_show_in_tracebacks_warnings_and_inspect_in_a_fresh_interpreter(stage):
    """What reads a cell's source through linecache imported after the cell was loaded: a failing
    iteration's traceback, a warning's report, ``inspect.getsource`` of a function the cell defines."""
    make, run = stage
    body = (
        "import warnings\n"
        "warnings.warn(f'careful with {x}')  # the warned line\n"
        "def twice(v):\n"
        "    return 2 * v  # inside twice\n"
        "import inspect\n"
        "source = inspect.getsource(twice)\n"
        "(source, 1 / (x - 2))  # the failing line\n"
    )
    folder = make(body)
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_OK, proc.stderr
    result = read(folder / "out.azpr")
    assert "(source, 1 / (x - 2))  # the failing line" in result["failed"][1]["traceback"]
    values = wire.loads(*result["values"][1:])  # by iteration: x = 1, 2 (failed), 3
    assert values[0][0] == values[2][0] == "def twice(v):\n    return 2 * v  # inside twice\n"
    stderr = "".join(text for stream, text in result["outputs"][0] if stream == "stderr")
    assert "careful with 1" in stderr and "the warned line" in stderr, stderr


@pytest.mark.parametrize("value", [
    {"b": [1, 2.5, None, True, False], "a": {"x": -1, "é": "quote \" and \\ and \n"}},
    [], {}, "text", 0, 1e300, -0.0, [float("inf"), float("-inf")], {"nested": [[{"deep": [1]}]]},
])
def test_the_workers_json_is_the_json_modules_text(value):
    for sort_keys in (False, True):
        text = wire.json_dumps(value, sort_keys=sort_keys)
        assert text == json.dumps(value, sort_keys=sort_keys)
        assert wire.json_loads(text) == json.loads(text) and wire.json_loads(text.encode()) == json.loads(text)
    assert wire.json_loads(" \n" + json.dumps(value) + "\n") == json.loads(json.dumps(value))


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "nope", "[1,]"])
def test_the_workers_json_refuses_what_the_json_module_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        wire.json_loads(text)
    with pytest.raises(TypeError):
        wire.json_dumps({"a": object()})


def test_corrupt_namespace_is_bad_input(stage):
    make, run = stage
    folder = make("x", "data = list(range(50))\n", edit=None)
    ns_file = next(folder.glob("ns-*.bin"))
    ns_file.write_bytes(ns_file.read_bytes()[:-3] + b"xyz")
    proc = run(str(folder / "task-1.azpt"), str(folder / "out.azpr"))
    assert proc.returncode == wire.EXIT_BAD_INPUT and "corrupt" in proc.stderr


def test_missing_task_file_is_bad_input(stage):
    _, run = stage
    proc = run("/nonexistent/task.azpt", "/tmp/out.azpr")
    assert proc.returncode == wire.EXIT_BAD_INPUT


def test_usage_without_arguments(stage):
    _, run = stage
    assert run().returncode == wire.EXIT_USAGE


def test_worker_imports_nothing_of_the_package():
    source = open(wire.__file__).read()
    for error_type in ('"azpar_magic.SerializationError"', '"azpar_magic.TransferError"', '"azpar_magic.TaskTimeoutError"',
                       '"azpar_magic.JobCancelled"'):  # names, not imports
        source = source.replace(error_type, "")
    assert "azpar_magic" not in source
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    allowed_third_party = {"dill"}
    for line in imports:
        name = line.split()[1].split(".")[0]
        assert name in sys.stdlib_module_names or name in allowed_third_party or name == "__future__", line


def test_mime_bundle_without_ipython():
    class Rich:
        def _repr_html_(self):
            return "<b>x</b>"

        def _repr_png_(self):
            return b"\x89PNG"

    bundle = wire.mime_bundle(Rich())
    assert bundle["text/html"] == "<b>x</b>" and bundle["image/png"] == "iVBORw==" and "text/plain" in bundle
    assert json.dumps(bundle)


def test_cut_frames_takes_the_whole_frames_a_read_brought_and_keeps_the_rest():
    import pickle
    import struct

    frames = [pickle.dumps({"task": str(i)}) for i in range(3)]
    stream = b"".join(struct.pack(">Q", len(f)) + f for f in frames)
    buffer = bytearray(stream[:-5])  # the third frame is not whole yet
    assert [pickle.loads(f) for f in wire.cut_frames(buffer)] == [{"task": "0"}, {"task": "1"}]
    buffer += stream[-5:]
    assert [pickle.loads(f) for f in wire.cut_frames(buffer)] == [{"task": "2"}] and buffer == bytearray()


@pytest.mark.parametrize("readv", [True, False], ids=["readv", "no-readv"])
def test_large_items_travel_after_the_frames_pickle_and_the_workers_arrays_use_the_frames_memory(readv, monkeypatch):
    """The local pool writes a task's items of a MB or more after its frame's pickle, from the task's own
    bytes; the worker reads them straight into the frame's memory and builds the arrays on it, writable,
    without a copy. They were copied into the pickle and out of it on each side: a cell over 20 arrays of
    20 MB took twice a fork Pool's time (issue 16). A large result comes back the same way, and the kernel
    loads copies of its arrays (the job store writes the blob it came in later)."""
    import threading

    np = pytest.importorskip("numpy")
    arrays = [np.arange(200_000, dtype=np.float64) + i for i in range(2)]  # 1.6 MB each
    codec, items = wire.dumps(arrays, out_of_band=True)
    task = {"op": "task", "task": "1", "items_codec": codec, "items": None, wire.ITEMS_APART: True}
    pieces = wire.frame_pieces([task, {"op": "task", "task": "2", "items_codec": "pickle", "items": b"x"}], [items])
    assert items in pieces, "the items are written from the task's own bytes"
    if not readv:  # as on Windows
        monkeypatch.delattr(os, "readv", raising=False)
    read_fd, write_fd = os.pipe()
    try:
        inbox = wire._Inbox(read_fd, lambda message: None)
        writer = threading.Thread(target=wire.write_pieces, args=(write_fd, pieces))
        writer.start()  # (more than a pipe holds: the worker reads it as it comes)
        first, second = inbox.next(), inbox.next()
        writer.join()
        inbox._busy = False  # its helper stops looking at the pipe before the pipe is closed
        time.sleep(3 * inbox.GIVE_BACK_POLL)
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert second["items"] == b"x" and type(first["items"]) is memoryview and not first["items"].readonly
    loaded = wire.loads(first["items_codec"], first["items"])
    assert all(np.array_equal(a, b) for a, b in zip(loaded, arrays))
    assert all(np.shares_memory(a, np.frombuffer(first["items"], dtype=np.uint8)) for a in loaded)
    loaded[0][0] = -1.0  # writable, and only the worker's own
    assert arrays[0][0] == 0.0

    result = {"indices": [0, 1], "files": None, "values": ["all", codec, items], "gathered": None, "failed": {},
              "outputs": {0: [["stdout", "a\n"]]}, "seconds": 0.1, "worker": {"pid": 1, "namespace_loads": 1}}
    stream = io.BytesIO()
    wire._send_reply(stream, {"op": "result", "task": "1", "result": result, "ran": 0.2})
    assert len(stream.getvalue()) < len(items) + 4096, "the values' blob travelled once, not inside the pickle"
    (frame,) = wire.cut_frames(bytearray(stream.getvalue()))
    reply = wire.load_frame(frame, writable=False)
    blob = reply["result"]["values"][2]
    assert bytes(blob) == items and blob.readonly and reply["result"]["outputs"] == result["outputs"]
    back = wire.loads(codec, blob)
    assert all(np.array_equal(a, b) and a.flags.writeable for a, b in zip(back, arrays))
    assert not any(np.shares_memory(a, np.frombuffer(blob, dtype=np.uint8)) for a in back)


def test_a_new_job_gets_a_fresh_copy_of_a_namespace_an_earlier_job_could_have_changed(stage, monkeypatch):
    """Jobs shipping the same namespace bytes shared the worker's copy: a cell run again started from what the
    last run's iterations had left in it (``seen.append(x)``), so its values depended on which worker had run
    what. A job's own tasks still share one copy; one of numbers only is never loaded again."""
    make, _ = stage
    folder = make("seen.append(x)\nlen(seen)", "seen = []\n")
    data = (folder / "job.azpj").read_bytes()
    monkeypatch.setattr(wire, "check_environment", lambda envelope: None)
    cache = wire.JobCache()
    first = wire.load_job(str(folder / "job.azpj"), cache, data)
    def values(job, indices, items):
        kind, codec, data = wire.Runner(job).run(indices, items)["values"]
        return pickle.loads(data)

    assert values(first, range(2), [5, 6]) == [1, 2]
    assert wire.load_job(str(folder / "job.azpj"), cache, data) is first  # its own later task: the same copy
    assert values(first, [2], [7]) == [3]
    again = wire.load_job(str(folder / "job-2.azpj"), cache, data)  # the cell run again
    assert again is not first and cache.namespace_loads == 2 and again.module.seen == []
    assert values(again, range(2), [5, 6]) == [1, 2]
    # One copy a worker: the jobs loaded over the old one are let go (the pool sends their envelope again).
    assert list(cache.jobs) == [str(folder / "job-2.azpj")] and list(cache.envelopes.values()) == [again]
    # While the worker idles it loads the next job's copy (a spare), off that job's path; once.
    cache.load_spare()
    cache.load_spare()
    assert len(cache.spares) == 1 and cache.namespace_loads == 2
    third = wire.load_job(str(folder / "job-3.azpj"), cache, data)
    assert third.module.seen == [] and cache.namespace_loads == 2 and not cache.spares
    assert values(third, range(3), [5, 6, 7]) == [1, 2, 3] and again.module.seen == [5, 6]

    assert wire.namespace_is_changeable([lambda x, seen=[]: x]) and not wire.namespace_is_changeable([lambda x, k=3: x])
    numbers = make("x * K", "K = 3\nname = 'k'\npair = (1, 'a')\n")
    data = (numbers / "job.azpj").read_bytes()
    cache = wire.JobCache()
    first = wire.load_job(str(numbers / "job.azpj"), cache, data)
    assert wire.load_job(str(numbers / "job-2.azpj"), cache, data) is first and cache.namespace_loads == 1


def test_a_job_loads_from_the_envelope_it_came_with_and_the_same_envelope_is_loaded_once(stage, monkeypatch):
    # The local pool sends a job's envelope with its first task to each worker: no file to open.
    # A cell run again ships the same envelope bytes under a new job's path: the worker's job of
    # the first run serves (its environment checked, its code built), not a second load.
    make, _ = stage
    folder = make("x * K", "K = 3\n")
    data = (folder / "job.azpj").read_bytes()
    (folder / "job.azpj").unlink()  # only the bytes in hand
    checks = []
    monkeypatch.setattr(wire, "check_environment", lambda envelope: checks.append(envelope["format"]))
    cache = wire.JobCache()
    job = wire.load_job(str(folder / "job.azpj"), cache, data)
    assert wire.Runner(job).run(range(2), [5, 6])["values"][0] == "all" and checks == [wire.FORMAT_VERSION]
    again = wire.load_job(str(folder / "job-2.azpj"), cache, data)
    assert again is job and checks == [wire.FORMAT_VERSION] and cache.namespace_loads == 1
    with pytest.raises(wire.BadInput, match="cannot read the job envelope"):  # neither bytes nor a file
        wire.load_job(str(folder / "job-3.azpj"), cache)


def test_a_task_given_back_hands_its_envelope_to_the_next_kept_task_of_its_job():
    # The pool sends a job's first task to a worker with the envelope and the next ones without it,
    # and without its file (backends/local.py, _note_sent). If the first is given back and a later
    # one kept, the kept one must bring the envelope, or the worker could not load the job.
    import io

    read_fd, write_fd = os.pipe()
    sent: list = []
    try:
        inbox = wire._Inbox(read_fd, sent.append)
        frames = io.BytesIO()
        messages = [
            {"op": "task", "task": "1", "envelope": "/stage/job-a.azpj", "envelope_data": b"A"},
            {"op": "task", "task": "2", "envelope": "/stage/job-b.azpj", "envelope_data": b"B"},
            {"op": "task", "task": "3", "envelope": "/stage/job-a.azpj"},
            {"op": "task", "task": "4", "envelope": "/stage/job-a.azpj"},
            {"op": "task", "task": "1", "envelope": "/stage/job-c.azpj", "envelope_data": b"C"},
            # Tasks are named with their job: ids repeat across jobs (job c's task 1 stays here).
            {"op": "return", "tasks": [["/stage/job-a.azpj", "1"], ["/stage/job-b.azpj", "2"]]},
        ]
        for message in messages:
            wire.write_frame(frames, message)
        os.write(write_fd, frames.getvalue())
        kept = [inbox.next(), inbox.next(), inbox.next()]
        assert sent == [{"op": "returned", "tasks": [("/stage/job-a.azpj", "1"), ("/stage/job-b.azpj", "2")]}]
        assert [(m["task"], m.get("envelope_data")) for m in kept] == [("3", b"A"), ("4", None), ("1", b"C")]
        inbox._busy = False  # as when no task runs: its helper stops looking at the pipe
        time.sleep(3 * inbox.GIVE_BACK_POLL)
    finally:
        os.close(write_fd)
        os.close(read_fd)


def test_the_inbox_helper_rests_after_a_quiet_spell_and_the_next_task_wakes_it(monkeypatch):
    # The helper that answers "return" while a task runs is not woken at every task (a thread switch
    # in every cell, issue 16, a): it rests after REST_AFTER seconds with no task running, and the
    # next task taken wakes it, so a return asked for during that task is still answered.
    import io

    monkeypatch.setattr(wire._Inbox, "REST_AFTER", 0.1)
    read_fd, write_fd = os.pipe()
    sent: list = []
    try:
        inbox = wire._Inbox(read_fd, sent.append)
        frames = io.BytesIO()
        wire.write_frame(frames, [{"op": "task", "task": str(n), "envelope": "/stage/job-a.azpj"} for n in (1, 2, 3)])
        os.write(write_fd, frames.getvalue())
        assert inbox.next()["task"] == "1"
        time.sleep(0.3)
        assert inbox._awake.is_set()  # a task runs: the helper keeps looking
        inbox._busy = False  # as while this thread waits for the pipe
        deadline = time.monotonic() + 5
        while inbox._awake.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not inbox._awake.is_set()  # rested
        assert inbox.next()["task"] == "2" and inbox._awake.is_set()
        frames = io.BytesIO()
        wire.write_frame(frames, {"op": "return", "tasks": [["/stage/job-a.azpj", "3"]]})
        os.write(write_fd, frames.getvalue())
        while not sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sent == [{"op": "returned", "tasks": [("/stage/job-a.azpj", "3")]}]  # answered while task 2 runs
        inbox._busy = False
        time.sleep(3 * inbox.GIVE_BACK_POLL)
    finally:
        os.close(write_fd)
        os.close(read_fd)


@pytest.mark.parametrize("exact", [True, False])
def test_prints_and_failures_belong_to_their_iterations_however_the_runner_tracks_them(stage, exact):
    # Exact (a task with a --timeout on the local pool): each iteration's index is written as it
    # starts. Else a loop of calls runs at C speed and counts its iterations instead (issue 16, a):
    # a print, a failure and the index it leaves behind must come out the same.
    make, _ = stage
    items = list(range(10, 20))
    folder = make("if x in (12, 17, 19):\n    print('it', x)\nif x in (10, 15, 19):\n    raise ValueError(x)\nx * 2",
                  items=items)
    job = wire.load_job(str(folder / "job.azpj"), wire.JobCache())
    assert job.function is not None  # a loop of calls
    progress = memoryview(bytearray(16)).cast("q")
    result = wire.Runner(job, progress, exact=exact).run(range(100, 110), items)
    assert wire.loads(*result["values"][1:]) == [None if x in (10, 15, 19) else 2 * x for x in items]
    assert sorted(result["failed"]) == [100, 105, 109]
    assert result["failed"][105]["message"] == "15" and result["failed"][105]["line"] == 5
    assert result["outputs"] == {102: [["stdout", "it 12\n"]], 107: [["stdout", "it 17\n"]],
                                 109: [["stdout", "it 19\n"]]}
    assert progress[0] == (109 if exact else 100)  # the counted loop writes only its first
    assert wire._RUNNING == [None]  # the heartbeat has no loop to look at once it ended


def test_iterations_failing_at_one_place_format_its_frames_once_each_with_its_own_message(stage, monkeypatch):
    # A loop whose iterations fail mostly fails at the same place: the frames' text is made once per
    # task and place (Python 3.11+ parses each frame's line again to point at it, ~30 us a failure),
    # and a built-in exception with plain arguments is pickled as it is, not through dumps (issue 16).
    # Each failure still reads as Python formats it: its own message, a chained one whole.
    import traceback

    make, _ = stage
    body = (
        "def look(k):\n"
        "    return table[k]  # the lookup\n"
        "if x % 10 == 3:\n"
        "    try:\n"
        "        look(x)\n"
        "    except KeyError:\n"
        "        raise ValueError(f'no {x}')  # while handling\n"
        "look(x) + 1  # the call\n"
    )
    items = list(range(40))
    folder = make(body, "table = {0: 1, 10: 1, 20: 1, 30: 1}", items=items)
    job = wire.load_job(str(folder / "job.azpj"), wire.JobCache())
    made, dumped = [], []
    real_init, real_dumps = traceback.TracebackException.__init__, wire.dumps

    def counted_init(self, *args, **kwargs):
        made.append((args[1], args[2]))  # (exception, the traceback to format: None for its own line only)
        return real_init(self, *args, **kwargs)

    monkeypatch.setattr(traceback.TracebackException, "__init__", counted_init)
    monkeypatch.setattr(wire, "dumps", lambda obj, **kw: dumped.append(obj) or real_dumps(obj, **kw))
    failed = wire.Runner(job).run(range(len(items)), items)["failed"]
    monkeypatch.undo()

    lookups = [i for i in items if i % 10 not in (0, 3)]
    assert sorted(failed) == sorted(lookups + [3, 13, 23, 33])
    for i in lookups:
        text = failed[i]["traceback"]
        assert text.startswith("Traceback (most recent call last):\n") and text.endswith(f"KeyError: {i}\n"), text
        assert "look(x) + 1  # the call" in text and "return table[k]  # the lookup" in text, text
        assert text.rsplit("KeyError", 1)[0] == failed[1]["traceback"].rsplit("KeyError", 1)[0]
        assert wire.loads(*failed[i]["exc"]).args == (i,)
    for i in (3, 13, 23, 33):  # chained to the KeyError: formatted whole, both parts
        text = failed[i]["traceback"]
        assert f"KeyError: {i}" in text and "During handling of the above exception" in text, text
        assert text.endswith(f"ValueError: no {i}\n") and "# while handling" in text, text
    # Frames formatted: once for the lookups' place, and once per chained failure (with its context);
    # format_exception_only's own TracebackException per later lookup has no frames to format.
    framed = [exc for exc, tb in made if tb is not None and type(exc) is KeyError and exc.args[0] in lookups]
    assert len(framed) == 1, framed
    # Nor is a TracebackException made for a later lookup's own line (~3 us of each failure).
    assert len([exc for exc, _ in made if type(exc) is KeyError and exc.args[0] in lookups]) == 1, len(made)
    assert dumped == []  # every exception here is built-in with plain arguments


def test_an_exceptions_own_line_reads_as_python_formats_it():
    # _exception_line stands in for traceback.format_exception_only (a TracebackException each): it
    # must say the same for every exception, the usual ones made directly, the others by traceback.
    import json
    import traceback

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    noted = ValueError("with a note")
    noted.add_note("see the docs") if hasattr(noted, "add_note") else None
    try:
        compile("1 +", "<cell>", "exec")
    except SyntaxError as exc:
        syntax = exc
    cases = [
        ZeroDivisionError("division by zero"), KeyError("k"), KeyError(""), ValueError(""), Exception(),
        json.JSONDecodeError("Expecting value", "x", 0), OSError(2, "No such file", "f.csv"),
        Unprintable(), noted, syntax, type("Local", (Exception,), {"__module__": "__main__"})("mine"),
    ]
    for exc in cases:
        assert wire._exception_line(exc) == "".join(traceback.format_exception_only(type(exc), exc)), exc


def test_alike_plain_exceptions_are_pickled_once_and_load_as_each_was():
    # A loop's failures are mostly alike: the same class and arguments are pickled once (pickling the
    # class by name looked it up through the import system, ~1 us each). 1 and True, 0.0 and -0.0
    # are equal but not alike; each loads as the exception it was.
    import math
    import pickle

    first, again = wire._plain_exception(ZeroDivisionError("division by zero")), wire._plain_exception(
        ZeroDivisionError("division by zero")
    )
    assert first == again and first[1] is again[1]
    for exc in (ValueError(1), ValueError(True), ValueError(0.0), ValueError(-0.0), KeyError(1), KeyError("1"),
                OSError(2, "No such file", "f.csv"), ValueError(1)):
        codec, data = wire._plain_exception(exc)
        back = pickle.loads(data)
        assert type(back) is type(exc) and back.args == exc.args
        assert [type(a) for a in back.args] == [type(a) for a in exc.args]
        assert [math.copysign(1, a) for a in back.args if type(a) is float] == [
            math.copysign(1, a) for a in exc.args if type(a) is float
        ]
    assert pickle.loads(wire._plain_exception(OSError(2, "No such file", "f.csv"))[1]).filename == "f.csv"


def test_a_small_reply_travels_as_a_tuple_and_reads_back_as_the_reply_it_was(stage):
    # A one-iteration task's reply goes as a tuple of its values (unpickling the dicts was most of
    # the kernel's cost of such a task, issue 16, a'); the kernel reads it back as the whole reply.
    # A reply with anything more than values and timings (a print here) travels whole.
    import io
    import pickle

    make, _ = stage
    folder = make("if x == 2:\n    print('two')\nx * 2")
    job = wire.load_job(str(folder / "job.azpj"), wire.JobCache())
    for items, compact in (([1], True), ([2], False)):
        result = wire.Runner(job).run(range(len(items)), items)
        result["worker"] = {"pid": 123, "namespace_loads": 1}
        reply = {"op": "result", "task": "7", "result": result, "ran": 0.25}
        stream = io.BytesIO()
        wire._send_reply(stream, reply)
        (frame,) = wire.cut_frames(bytearray(stream.getvalue()))
        travelled = pickle.loads(frame)
        assert (type(travelled) is tuple) == compact
        assert (wire.full_reply(travelled) if compact else travelled) == reply


def test_tasks_sent_together_are_read_as_tasks_of_their_own(stage):
    # The pool writes the tasks it gives a worker at once as one frame holding their list.
    import io

    read_fd, write_fd = os.pipe()
    sent: list = []
    try:
        inbox = wire._Inbox(read_fd, sent.append)
        frames = io.BytesIO()
        wire.write_frame(frames, [{"op": "task", "task": n, "envelope": "/stage/job-a.azpj"} for n in "123"])
        wire.write_frame(frames, {"op": "return", "tasks": [["/stage/job-a.azpj", "3"]]})
        wire.write_frame(frames, {"op": "task", "task": "4", "envelope": "/stage/job-a.azpj"})
        os.write(write_fd, frames.getvalue())
        assert [inbox.next()["task"], inbox.next()["task"], inbox.next()["task"]] == ["1", "2", "4"]
        assert sent == [{"op": "returned", "tasks": [("/stage/job-a.azpj", "3")]}]
        inbox._busy = False
        time.sleep(3 * inbox.GIVE_BACK_POLL)
    finally:
        os.close(write_fd)
        os.close(read_fd)


def test_a_stream_an_iteration_kept_writes_to_the_task_running_when_it_writes(stage):
    # The worker's sys.stdout serves every task (made once, not per task: issue 16, a'). A logging
    # handler or a stream an iteration kept then writes to the output of the iteration running when
    # it writes, not to an earlier task's output, which is gone; between tasks, it is dropped.
    make, _ = stage
    folder = make("import sys\nif x == 0:\n    sys.azpar_kept = sys.stdout\nsys.azpar_kept.write(f'k{x}\\n')\nx")
    job = wire.load_job(str(folder / "job.azpj"), wire.JobCache())
    try:
        first = wire.Runner(job).run(range(0, 1), [0])
        second = wire.Runner(job).run(range(1, 2), [1])
        assert first["outputs"] == {0: [["stdout", "k0\n"]]} and second["outputs"] == {1: [["stdout", "k1\n"]]}
        assert sys.azpar_kept.write("between tasks\n") == len("between tasks\n")  # dropped, no error
    finally:
        sys.__dict__.pop("azpar_kept", None)


def test_alike_failures_rebuild_their_exceptions_in_the_kernel_without_unpickling_each(monkeypatch):
    # The kernel rebuilt each failure's exception from its pickle (~1 us each: the class looked up
    # through the import system). Alike ones are made again from their class and arguments, each its
    # own object, as unpickling makes them; what is not a plain exception is still unpickled.
    from azpar_magic.jobs import results

    loaded = []
    real = wire.loads
    monkeypatch.setattr(wire, "loads", lambda *a, **k: loaded.append(a[0]) or real(*a, **k))
    results._EXCEPTION_RECIPES.clear() if hasattr(results, "_EXCEPTION_RECIPES") else None
    records = {i: {"type": "builtins.OSError", "message": "m", "exc": wire._plain_exception(
        FileNotFoundError(2, "No such file or directory", f"f{i % 2}.csv"))} for i in range(6)}
    failures = [results.failure_from_record(i, rec) for i, rec in records.items()]
    assert len(loaded) == 2  # one per distinct pickle
    assert [f.exc.filename for f in failures] == ["f0.csv", "f1.csv"] * 3
    assert all(type(f.exc) is FileNotFoundError and f.exc.errno == 2 for f in failures)
    assert len({id(f.exc) for f in failures}) == 6
    noted = ValueError("x")
    noted.__notes__ = ["a note"]  # state beside the arguments: unpickled each time
    codec, data = wire.dumps(noted)
    for _ in range(2):
        assert results.failure_from_record(0, {"exc": (codec, data)}).exc.__notes__ == ["a note"]
    assert len(loaded) == 4


def test_the_notebooks_filters_import_nothing_until_a_warning_meets_them(tmp_path):
    """The kernel's warning filters travel with a job (capture.interpreter_settings). numpy adds a filter for its
    RankWarning when imported, so rebuilding each category by importing its module cost every worker numpy's
    import, and a message pattern cost ``re``'s, whatever the body used. A category whose module is not imported
    yet stands in until it is, then matches as the class; a pattern is compiled when a warning meets it. numpy's
    error handling is set when the task's own import of numpy ends, not by importing it."""
    script = tmp_path / "worker.py"
    shutil.copy(wire.__file__, script)
    (tmp_path / "azpar_lazy_library.py").write_text("class Noisy(UserWarning):\n    pass\n")
    probe = """
import sys, warnings
import worker
worker._follow_settings({"filters": worker.json_dumps([
    ["ignore", {"re": "quiet.*", "flags": 34}, "builtins:UserWarning", None, 0],
    ["error", None, "azpar_lazy_library:Noisy", None, 0],
    ["error", None, "builtins:RuntimeWarning", {"re": "never", "flags": 32}, 0],
    ["ignore", None, "numpy.exceptions:RankWarning", None, 0],
]), "numpy_errors": {"divide": "raise", "over": "warn", "under": "ignore", "invalid": "warn"}})
before = ("azpar_lazy_library" in sys.modules, "numpy" in sys.modules, "re" in sys.modules)
warnings.warn("Quiet please")                      # matched by the pattern: ignored
import azpar_lazy_library
try:
    warnings.warn("fit is poor", azpar_lazy_library.Noisy)
    raised = False
except azpar_lazy_library.Noisy:
    raised = True
warnings.warn("shown", RuntimeWarning)             # the module pattern does not match: shown
imported = "numpy" in sys.modules
import numpy                                        # the task's own import: numpy's errors set as it ends
print(before, raised, imported, numpy.geterr()["divide"])
"""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{probe}"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(False, False, False) True False raise", done.stdout
    assert "Quiet please" not in done.stderr and "RuntimeWarning: shown" in done.stderr, done.stderr

"""A large value on its way back from a local worker (issue 13, item 6): how many copies of
it the worker needs, and a MemoryError there is the iteration's own failure, reported once.

Each case runs in a script of its own (``azpar_magic.run`` on a fresh one-worker pool), whose
body lowers its worker's address-space limit (RLIMIT_AS) to what it uses now plus a share of
the value's size: a real MemoryError wherever the worker needs more than that share, and a
pool that ends with the script."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

resource = pytest.importorskip("resource")

SCRIPT = textwrap.dedent('''
    import json, sys
    import azpar_magic
    from azpar_magic.errors import IterationError

    body = sys.argv[1]
    job = azpar_magic.run("for i in range(1)", body, {"TALLY": sys.argv[2]}, workers=1, retries=2)
    try:
        value = job.result(timeout=240)
        out = {"ok": True, "size": len(value[0])}
    except IterationError as exc:
        out = {"ok": False, "error": str(exc), "kind": job.failures[0].kind}
    out["attempts"] = len(open(sys.argv[2]).read().split())
    print(json.dumps(out))
''')

# Sets this worker's limit to its address space now plus SHARE times the value (built first).
LIMITED = textwrap.dedent('''
    import resource
    open(TALLY, "a").write("attempt\\n")
    value = b"x" * (100 * 2**20)
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(SHARE * len(value)), resource.getrlimit(resource.RLIMIT_AS)[1]))
    value''')


def _run(tmp_path, body: str) -> dict:
    tally = tmp_path / "tally"
    tally.write_text("")
    done = subprocess.run([sys.executable, "-c", SCRIPT, body, str(tally)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_a_value_comes_back_with_room_for_one_serialised_copy(tmp_path):
    # The value and its pickle fit (1.5 times the value beyond what the worker used);
    # before, sending built two more copies (the frame's pickle, then head + pickle) and
    # the worker died on MemoryError, retried as an infrastructure failure three times.
    out = _run(tmp_path, "SHARE = 1.5\n" + LIMITED)
    assert out == {"ok": True, "size": 100 * 2**20, "attempts": 1}, out


@pytest.mark.timeout(300)
def test_out_of_memory_serialising_a_value_fails_its_iteration_once(tmp_path):
    out = _run(tmp_path, "SHARE = 0.5\n" + LIMITED)  # no room for the pickle at all
    assert not out["ok"] and out["kind"] == "user" and out["attempts"] == 1, out
    assert "ran out of memory" in out["error"] and "could not run" not in out["error"], out["error"]


@pytest.mark.timeout(120)
def test_a_value_whose_pickling_raises_memory_error_is_reported_once(tmp_path):
    body = textwrap.dedent('''
        class Huge:
            def __reduce__(self):
                open(TALLY, "a").write("reduce\\n")
                raise MemoryError("pretend the copy did not fit")
        open(TALLY, "a").write("attempt\\n")
        Huge()''')
    out = _run(tmp_path, body)
    assert not out["ok"] and out["kind"] == "user", out
    assert "iteration 0" in out["error"] and "ran out of memory" in out["error"], out["error"]
    # One run of the iteration, its value pickled once, on its own (a body that defines a class has each value
    # pickled with its iteration's names, worker.IterationMade); never retried.
    assert out["attempts"] == 2, out


class _NoRoom:
    """Stands for a blob the reply cannot be pickled with (a unit test of worker.py alone)."""

    def __reduce__(self):
        raise MemoryError("no room for the frame")


def test_a_reply_that_cannot_be_measured_is_replaced_by_failures_not_a_dead_worker():
    import io

    from azpar_magic import worker

    result = {"indices": [3, 4], "files": None, "values": ["all", "pickle", _NoRoom()], "gathered": None,
              "failed": {4: {"type": "builtins.ValueError", "message": "own failure", "traceback": "", "line": 2,
                             "exc": None}},
              "outputs": {3: [["stdout", "kept\n"]]}, "seconds": 0.1}
    stream = io.BytesIO()
    worker._send_reply(stream, {"op": "result", "task": "t1", "result": result})
    stream.seek(0)
    sent = worker._read_frame(stream)
    assert stream.read() == b""  # exactly one frame
    assert sent["result"]["values"] == ["each", [None, None]] and sent["result"]["outputs"] == result["outputs"]
    failed = sent["result"]["failed"]
    assert failed[4]["message"] == "own failure"  # the iteration's own failure stays
    assert "iteration 3 could not be sent back: the worker ran out of memory" in failed[3]["message"]


def test_a_small_reply_is_pickled_once_and_a_large_or_busy_one_is_measured_first():
    import io
    import pickle
    import struct

    from azpar_magic import worker

    def reply(blob: bytes, **more) -> dict:
        result = {"indices": [0], "files": None, "values": ["all", "pickle", blob], "gathered": None, "failed": {},
                  "outputs": {}, "seconds": 0.1, **more}
        return {"op": "result", "task": "1", "result": result}

    small, large = reply(pickle.dumps([1])), reply(b"x" * worker.SMALL_REPLY)
    printed = reply(pickle.dumps([1]), outputs={0: [["stdout", "hi\n"]]})
    assert worker._small_reply(small) and not worker._small_reply(large) and not worker._small_reply(printed)
    assert not worker._small_reply({"op": "result", "task": "1", "error": "bad", "exit_code": 3})
    for message in (small, large, printed):  # one frame, the same bytes either way
        stream = io.BytesIO()
        worker._send_reply(stream, message)
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        assert stream.getvalue() == struct.pack(">Q", len(data)) + data
    # A small reply of the keys a worker's serve() gives travels as a tuple (issue 16, a'), one
    # frame too, and reads back as the reply it was; one of any other shape travels whole (above).
    usual = reply(pickle.dumps([1]), worker={"pid": 7, "namespace_loads": 1})
    usual["ran"] = 0.2
    stream = io.BytesIO()
    worker._send_reply(stream, usual)
    data = pickle.dumps(worker.compact_reply(usual), protocol=pickle.HIGHEST_PROTOCOL)
    assert stream.getvalue() == struct.pack(">Q", len(data)) + data
    assert worker.full_reply(pickle.loads(data)) == usual


def test_large_and_small_frames_read_back_whole():
    import io

    from azpar_magic import worker

    for size in (10, worker._Measure.SMALL_FRAME * 3):
        message = {"op": "result", "blob": b"y" * size, "view": bytearray(b"z" * size)}
        stream = io.BytesIO()
        worker.write_frame(stream, message)
        stream.seek(0)
        assert worker._read_frame(stream) == message and stream.read() == b""


def test_a_result_file_that_cannot_be_written_for_memory_says_so_per_iteration(tmp_path):
    from azpar_magic import worker

    result = {"task": "7", "indices": [0], "files": None, "values": ["all", "pickle", _NoRoom()], "gathered": None,
              "failed": {}, "outputs": {}, "seconds": 0.1}
    path = tmp_path / "7.azpr"
    worker.write_result(str(path), result)  # an Azure task: exits 0 with this file, so Batch does not retry it
    written = worker.read_result(path.read_bytes())
    assert written["task"] == "7" and written["values"] == ["each", [None]]
    assert "the worker ran out of memory" in written["failed"][0]["message"]
    assert not (tmp_path / "7.azpr.part").exists()

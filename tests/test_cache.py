"""``--cache`` (issue 20): iteration keys by content, reuse of stored values, the index's
clearing and bound, and the same cell in two real kernels.

Each test has its own job store (so its own cache index). What ran is read from the new
job's tasks (reused values come with none) and its ``from_cache`` count.
"""

from __future__ import annotations

import textwrap
import time

import pytest

import azpar_magic
from azpar_magic import jobstore
from azpar_magic.jobs import JobOptions
from azpar_magic.jobstore import cache as index
from azpar_magic.run import cache
from azpar_magic.run.parsing import parse_cell
from azpar_magic.run.request import RunRequest
from azpar_magic.ui.text import format_snapshot


@pytest.fixture(autouse=True)
def own_store(tmp_path, monkeypatch):
    monkeypatch.setenv(jobstore.STORE_ENV, str(tmp_path / "store"))
    return tmp_path / "store"


def _ran(job) -> list[int]:
    """The iterations this run computed: those of its tasks (reused values come with none)."""
    return sorted(i for task in job.tasks.values() for i in task.indices)


def _run(ns, body="f(x) + 1", loop="for x in xs", **options):
    job = azpar_magic.run(loop, body, ns, workers=2, **options)
    return job, job.result()


def _ns(**extra):
    ns: dict = {}
    exec(textwrap.dedent("""
        def f(x):
            return x * 2
    """), ns)
    ns["xs"] = list(range(20))
    ns.update(extra)
    return ns


# ------------------------------------------------------------------ keys


def _function(source: str, filename: str, blank_lines: int = 0):
    scope: dict = {"__name__": "__main__"}
    exec(compile("\n" * blank_lines + textwrap.dedent(source), filename, "exec"), scope)
    return scope["g"]


def test_a_function_digest_is_its_content_not_where_it_was_written():
    source = """
        def g(x):
            return [y * 2 for y in range(x)]
    """
    here = cache.content_digest(_function(source, "/tmp/ipykernel_111/123.py"))
    assert cache.content_digest(_function(source, "/tmp/ipykernel_999/456.py", blank_lines=7)) == here
    changed = source.replace("y * 2", "y * 3")  # inside the nested comprehension's code
    assert cache.content_digest(_function(changed, "/tmp/ipykernel_111/123.py")) != here


_PROCESS_DIGEST = r'''
import sys
from azpar_magic.run import cache
source = """
K = 3
def helper(y):
    return y + K
def score(x):
    return sum(helper(i) * x for i in range(50))
def fact(n):
    return 1 if n < 2 else n * fact(n - 1)
""".replace("K = 3", "K = " + sys.argv[2])
scope = {"__name__": "__main__"}
exec(compile("\n" * int(sys.argv[1]) + source, "/tmp/ipykernel_" + sys.argv[1] + "/1.py", "exec"), scope)
print(cache.content_digest([scope["score"], scope["fact"]]).hex())
'''


def test_a_function_digest_is_the_same_in_every_process():
    """String hashes (so set orders) differ between processes: what a function reads must not depend on them."""
    import os
    import subprocess
    import sys

    def digest(seed: int, k: int = 3) -> str:
        return subprocess.run([sys.executable, "-c", _PROCESS_DIGEST, str(seed), str(k)], check=True, text=True,
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()

    first = digest(1)
    assert all(digest(seed) == first for seed in (2, 3, 4, 5))
    assert digest(1, k=4) != first  # a global that a called function reads


_ENUM = """import enum
class Color(enum.Enum):
    RED = 1
    BLUE = 2
    def shout(self):
        return self.name + "!"
"""


def _notebook_enum(source: str, blank_lines: int = 0, scope: dict | None = None) -> type:
    scope = {"__name__": "__main__"} if scope is None else scope
    exec(compile("\n" * blank_lines + source, f"/tmp/ipykernel_{blank_lines}/1.py", "exec"), scope)
    return scope["Color"]


def test_a_notebook_enum_digest_is_its_content():
    """dill could only name a notebook Enum class (after two PicklingWarnings): a changed member or
    method kept every key. Moved down the notebook, it keeps them."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        here = cache.content_digest(_notebook_enum(_ENUM))
        assert cache.content_digest(_notebook_enum(_ENUM, blank_lines=6)) == here
        assert cache.content_digest(_notebook_enum(_ENUM.replace('"!"', '"?"'))) != here
        assert cache.content_digest(_notebook_enum(_ENUM.replace("BLUE = 2", "BLUE = 3"))) != here
        assert cache.content_digest(_notebook_enum(_ENUM).BLUE) != cache.content_digest(_notebook_enum(_ENUM).RED)


def test_a_changed_notebook_enum_invalidates_the_iterations_over_it(ip, run_cell):
    run_cell(_ENUM)
    cell = "%%azpar -q --cache -o out --workers 2 for c in Color:\nc.shout(), c.value\n"
    try:
        import warnings

        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            first = run_cell(cell)
        assert first.success, first.error
        assert not [w for w in warned if "Pickling" in type(w.message).__name__], [str(w.message) for w in warned]
        assert ip.user_ns["out"] == [("RED!", 1), ("BLUE!", 2)]
        assert run_cell(cell).success and azpar_magic.jobs()[-1].from_cache == 2
        run_cell(_ENUM.replace('"!"', '"?"'))  # the cell defining Color, edited and run again
        again = run_cell(cell)
        assert again.success, again.error
        assert azpar_magic.jobs()[-1].from_cache == 0 and ip.user_ns["out"] == [("RED?", 1), ("BLUE?", 2)]
        run_cell(_ENUM.replace("BLUE = 2", "BLUE = 3"))  # a member's value: nothing the body names changed
        valued = run_cell(cell)
        assert valued.success, valued.error
        assert ip.user_ns["out"] == [("RED!", 1), ("BLUE!", 3)]
    finally:
        for name in ("enum", "Color", "out"):
            ip.user_ns.pop(name, None)


def test_a_set_digest_does_not_depend_on_its_order():
    words = [f"w{i}" for i in range(50)]
    assert cache.content_digest(set(words)) == cache.content_digest(set(reversed(words)))
    assert cache.content_digest(frozenset(words)) != cache.content_digest(frozenset(words[1:]))


def _keys(items, ns=None, body="f(x) + 1", **options):
    request = RunRequest(parse_cell("for x in xs", body), ns or _ns(), JobOptions(**options))
    return cache.iteration_keys(request, items)


def test_keys_hold_what_changes_a_value_and_nothing_else():
    items = [1, 2, 2]
    plain = _keys(items)
    assert plain[1] == plain[2] and plain[0] != plain[1]  # the item decides, not its position
    assert _keys(items, combine="sum", errors="pass", chunk_size=7) == plain  # whole-result options
    assert _keys(items, body="f(x) + 2") != plain
    assert _keys(items, gather=("y",))[0] != plain[0]
    seeded = _keys(items, seed=5)
    assert seeded[1] != seeded[2]  # the iteration's stream is seed and index
    assert _keys(items, seed=6)[0] != seeded[0]
    ns = _ns()
    exec("def f(x):\n    return x * 3\n", ns)
    assert _keys(items, ns)[0] != plain[0]


def test_keys_follow_the_versions_of_the_packages_the_namespace_names(monkeypatch):
    ns = _ns(np=pytest.importorskip("numpy"))
    body = "np.float64(f(x))"
    before = _keys([1], ns, body)
    from azpar_magic.run import capture
    real = capture.distributions_for
    monkeypatch.setattr(capture, "distributions_for", lambda modules: {**real(modules), "numpy": "0.0.1"})
    assert _keys([1], ns, body) != before


# ------------------------------------------------------------------ reuse


def test_a_rerun_with_nothing_changed_takes_every_value_from_the_cache():
    ns = _ns()
    first, expected = _run(ns, cache=True)
    assert first.from_cache == 0
    again, values = _run(ns, cache=True)
    assert values == expected == [x * 2 + 1 for x in range(20)]
    assert again.from_cache == 20 and _ran(again) == []
    assert "20 from cache" in format_snapshot(again.snapshot())
    uncached, plain = _run(ns)
    assert plain == values and uncached.from_cache == 0


def test_one_changed_item_recomputes_only_that_iteration():
    ns = _ns()
    _run(ns, cache=True)
    ns["xs"][3] = 100
    job, values = _run(ns, cache=True)
    assert _ran(job) == [3] and job.from_cache == 19
    assert values == [x * 2 + 1 for x in ns["xs"]]


def test_a_changed_captured_array_recomputes_every_iteration():
    np = pytest.importorskip("numpy")
    ns = _ns(weights=np.arange(5.0))
    body = "float(weights.sum()) + x"
    _run(ns, body, cache=True)
    ns["weights"] = np.arange(5.0) * 2
    job, values = _run(ns, body, cache=True)
    assert job.from_cache == 0 and _ran(job) == list(range(20))
    assert values == [20.0 + x for x in range(20)]
    same, _ = _run(ns, body, cache=True)
    assert same.from_cache == 20


def test_a_changed_notebook_function_invalidates_and_the_same_one_defined_again_does_not():
    ns = _ns()
    _run(ns, cache=True)
    exec("def f(x):\n    return x * 2\n", ns)  # the cell defining f run again: same content
    assert _run(ns, cache=True)[0].from_cache == 20
    exec("def f(x):\n    return x * 5\n", ns)
    job, values = _run(ns, cache=True)
    assert job.from_cache == 0 and values == [x * 5 + 1 for x in range(20)]


def test_an_input_file_edited_since_recomputes_the_iterations_that_read_it(tmp_path, monkeypatch):
    """The files --inputs gives an iteration are in its key (path, size, modification time): a shared
    file edited since recomputes every iteration, one iteration's own file that iteration only. Before,
    an edited input gave the earlier run's values back."""
    import os

    monkeypatch.chdir(tmp_path)
    (tmp_path / "scale.txt").write_text("1")
    for i in range(3):
        (tmp_path / f"part-{i}.txt").write_text(str(10 * i))
    body = "int(open('inputs/scale.txt').read()) * int(open(f'inputs/part-{x}.txt').read())"

    def run():
        job, out = _run({"xs": [0, 1, 2]}, body, cache=True, inputs=["scale.txt", "part-{x}.txt"])
        return job, out

    first, out = run()
    assert out == [0, 10, 20] and first.from_cache == 0
    again, out = run()
    assert out == [0, 10, 20] and again.from_cache == 3
    (tmp_path / "part-1.txt").write_text("11")
    one, out = run()
    assert out == [0, 11, 20] and _ran(one) == [1]
    scale = tmp_path / "scale.txt"
    scale.write_text("2")
    st = os.stat(scale)
    os.utime(scale, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock: a later time
    every, out = run()
    assert out == [0, 22, 40] and _ran(every) == [0, 1, 2]


def test_the_data_plan_is_built_once_when_nothing_is_reused(tmp_path, monkeypatch):
    """--cache --inputs plans every iteration's files to key them; when no value is reused that plan is
    the run's own, and is not built again (globbing, a stat per file, an az:// listing). A run that
    reuses some values plans the rest again, for those iterations only."""
    from azpar_magic.run import data as data_mod

    monkeypatch.chdir(tmp_path)
    for i in range(3):
        (tmp_path / f"part-{i}.txt").write_text(str(i))
    calls = []
    real = data_mod.plan

    def counted(*args, **kwargs):
        calls.append(kwargs.get("indices"))
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "plan", counted)
    body = "int(open(f'inputs/part-{x}.txt').read())"
    job, out = _run({"xs": [0, 1, 2]}, body, cache=True, inputs=["part-{x}.txt"])
    assert out == [0, 1, 2] and calls == [None]
    calls.clear()
    (tmp_path / "part-2.txt").write_text("7")
    job, out = _run({"xs": [0, 1, 2]}, body, cache=True, inputs=["part-{x}.txt"])
    assert out == [0, 1, 7] and calls == [None, [2]]


def test_reused_iterations_bring_their_outputs_into_the_new_jobs_folder(ip, run_cell, tmp_path, monkeypatch):
    """--cache --outputs: the files a reused iteration wrote were left in the earlier job's folder, named
    nowhere, so the new job's folder lacked them. They are linked into it now, and the line counts them.
    An earlier run that did not bring these patterns back (no --outputs, another pattern), or whose folder
    is gone, cannot stand for them: its iterations run again and write their files."""
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    body = "open(f'o{x}.txt', 'w').write(str(x))\nx"

    def cell(xs, options="--outputs 'o*.txt'"):
        ip.user_ns["xs"] = xs
        run = run_cell(f"%%azpar --cache -o out --workers 2 {options} for x in xs:\n{body}")
        assert run.success, run.error
        assert ip.user_ns["out"] == xs
        return azpar_magic.jobs()[-1], run.stdout

    first, _ = cell([1, 2, 3])
    second, said = cell([1, 2, 4])
    assert second.from_cache == 2 and _ran(second) == [2]
    outputs = tmp_path / "azpar_outputs"
    assert f"outputs of 3 iterations (2 from the cache) in {outputs / second.id}" in said, said
    assert [second.files.files(i) for i in range(3)] == [
        [str(outputs / second.id / str(i) / f"o{x}.txt")] for i, x in enumerate([1, 2, 4])
    ]
    reused = outputs / second.id / "0" / "o1.txt"
    assert reused.read_text() == "1"
    assert os.stat(reused).st_ino == os.stat(outputs / first.id / "0" / "o1.txt").st_ino  # a link, not a copy
    # Another pattern than the earlier run's: every iteration runs again.
    third, _ = cell([1, 2, 4], "--outputs 'o*.txt' --outputs '*.csv'")
    assert third.from_cache == 0 and _ran(third) == [0, 1, 2]
    # A first run without --outputs brought no files back: nothing of it is reused with them.
    cell([7], "")
    with_files, _ = cell([7])
    assert with_files.from_cache == 0 and (outputs / with_files.id / "0" / "o7.txt").read_text() == "7"
    # The earlier folders gone (the user cleared azpar_outputs): the iterations run again, and write them.
    shutil.rmtree(outputs)  # (the pool's working folder there is gone already: it raced this rmtree once)
    again, _ = cell([1, 2, 4])
    assert again.from_cache == 0 and _ran(again) == [0, 1, 2]
    assert sorted(p.name for p in (outputs / again.id).glob("*/*")) == ["o1.txt", "o2.txt", "o4.txt"]
    # Without --outputs the values are reused as before, whatever became of the files.
    plain, _ = cell([1, 2, 4], "")
    assert plain.from_cache == 3


def test_outputs_the_cache_cannot_bring_are_said_once_and_the_run_goes_on(tmp_path, monkeypatch):
    """A unit test of data.FilesReport.reuse: a file that can be neither linked nor copied into the new job's
    folder (a full disk, a read-only folder) was an OSError out of the engine's submit, after the job was made;
    it is one warning naming where the files stay, and the iterations that could be brought are."""
    import os
    import shutil

    from azpar_magic.run import data as data_mod

    dest = str(tmp_path / "azpar_outputs")
    for position, name in ((0, "a.txt"), (1, "b.txt")):
        os.makedirs(os.path.join(dest, "old", str(position)))
        (tmp_path / "azpar_outputs" / "old" / str(position) / name).write_text(name)
    earlier = data_mod.DataPlan(outputs=("*.txt",), dest=dest, job_id="old")
    report = data_mod.FilesReport(data_mod.DataPlan(outputs=("*.txt",), dest=dest, job_id="new"))

    def refuse(source, target, *args, **kwargs):
        if source.endswith("b.txt"):
            raise OSError(28, "No space left on device")
        return real_copy(source, target)

    real_copy = shutil.copy2
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    monkeypatch.setattr(shutil, "copy2", refuse)
    report.reuse({0: (earlier, 0), 1: (earlier, 1)})
    assert report.files(0) == [os.path.join(dest, "new", "0", "a.txt")] and report.from_cache == 1
    assert report.files(1) == []
    (line,) = report.warnings()
    assert line.startswith(f"--cache could not bring the outputs of 1 reused iteration (1) into {dest}/new"), line
    assert "No space left on device" in line and os.path.join(dest, "old", "1") in line
    assert report.warnings() == []  # said once


def test_failed_iterations_are_never_reused():
    ns = _ns()
    body = "if x % 7 == 3:\n    raise ValueError(x)\nx"
    first, _ = _run(ns, body, cache=True, errors="pass")
    assert len(first.failures) == 3
    job, values = _run(ns, body, cache=True, errors="pass")
    assert job.from_cache == 17 and _ran(job) == [3, 10, 17]
    assert [type(v).__name__ for v in values if not isinstance(v, int)] == ["ValueError"] * 3


def test_a_value_this_kernel_cannot_load_is_computed_again(monkeypatch):
    ns = _ns()
    _run(ns, cache=True)
    real = index.decode_each

    def first_unloadable(encoded, count):
        values, problems = real(encoded, count)
        return values, {**problems, 0: "ModuleNotFoundError: No module named 'gone'"}

    monkeypatch.setattr(index, "decode_each", first_unloadable)
    job, values = _run(ns, cache=True)
    assert values == [x * 2 + 1 for x in range(20)]
    assert 0 in _ran(job) and job.from_cache == 20 - len(_ran(job))


def test_seeded_values_are_reused_only_for_the_same_seed():
    ns = _ns()
    body = "import random\nrandom.random()"
    _, expected = _run(ns, body, cache=True, seed=11)
    job, values = _run(ns, body, cache=True, seed=11)
    assert values == expected and job.from_cache == 20
    other, _ = _run(ns, body, cache=True, seed=12)
    assert other.from_cache == 0


def test_values_are_reused_only_under_the_same_decimal_context():
    """The iterations follow the notebook's decimal context (capture.interpreter_settings): a value computed with
    28 digits was reused after ``getcontext().prec = 50``. The context is in the key when it is not the default."""
    import decimal

    ns = _ns(D=decimal.Decimal, xs=[1, 3, 7])
    first, values = _run(ns, body="D(1) / D(x)", cache=True)
    with decimal.localcontext() as context:
        context.prec = 50
        job, longer = _run(ns, body="D(1) / D(x)", cache=True)
        assert _ran(job) == [0, 1, 2] and len(str(longer[2])) == 52, longer
        again, same = _run(ns, body="D(1) / D(x)", cache=True)
        assert _ran(again) == [] and same == longer
    back, shorter = _run(ns, body="D(1) / D(x)", cache=True)
    assert _ran(back) == [] and shorter == values and len(str(values[2])) == 30


def test_values_are_reused_only_under_the_same_pandas_options():
    """The iterations follow the notebook's pandas options (capture.interpreter_settings): a string column's
    dtype computed under one ``future.infer_string`` was reused under the other. Set options that change values
    are in the key; display options are not."""
    import warnings

    pd = pytest.importorskip("pandas")
    ns = _ns(pd=pd, xs=[1, 2])
    body = "str(pd.Series(['a']).dtype)"
    _, default = _run(ns, body=body, cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (pandas 3 deprecates the option)
        pd.set_option("future.infer_string", not pd.get_option("future.infer_string"))
        try:
            job, flipped = _run(ns, body=body, cache=True)
            assert _ran(job) == [0, 1] and flipped != default, flipped
        finally:
            pd.reset_option("future.infer_string")
    back, same = _run(ns, body=body, cache=True)
    assert _ran(back) == [] and same == default
    pd.set_option("display.max_rows", 5)  # how frames print is not in the key
    try:
        shown, same = _run(ns, body=body, cache=True)
        assert _ran(shown) == [] and same == default
    finally:
        pd.reset_option("display.max_rows")


def test_values_are_reused_only_under_the_same_environment_variables_the_code_reads(monkeypatch):
    """The local pool's workers follow the kernel's environment variables: a body reading ``os.environ["SCALE"]``
    (or a notebook function doing so) gave another value once the notebook set the variable, and ``--cache``
    reused the old one. The variables the code reads by name are in the key; the others are not."""
    monkeypatch.setenv("AZPAR_TEST_SCALE", "3")
    ns = _ns(xs=[1, 2])
    body = "import os\nx * int(os.environ['AZPAR_TEST_SCALE'])"
    _, first = _run(ns, body=body, cache=True)
    assert first == [3, 6]
    monkeypatch.setenv("AZPAR_TEST_OTHER", "1")  # a variable the body does not read: the values are reused
    again, same = _run(ns, body=body, cache=True)
    assert _ran(again) == [] and same == first
    monkeypatch.setenv("AZPAR_TEST_SCALE", "5")
    job, scaled = _run(ns, body=body, cache=True)
    assert _ran(job) == [0, 1] and scaled == [5, 10], scaled
    exec("import os\ndef scale(v):\n    return v * int(os.getenv('AZPAR_TEST_SCALE', '1'))", ns)
    _, through_function = _run(ns, body="scale(x)", cache=True)
    assert through_function == [5, 10]
    monkeypatch.delenv("AZPAR_TEST_SCALE")
    unset, plain = _run(ns, body="scale(x)", cache=True)
    assert _ran(unset) == [0, 1] and plain == [1, 2], plain


def test_gathered_variables_come_back_from_the_cache():
    ns = _ns()
    body = "y = x * 10\nx"
    first = azpar_magic.run("for x in xs", body, ns, workers=2, cache=True, gather=("y",))
    first.result()
    job = azpar_magic.run("for x in xs", body, ns, workers=2, cache=True, gather=("y",))
    job.result()
    assert job.from_cache == 20 and job.gathered() == first.gathered() == {"y": [x * 10 for x in range(20)]}


def test_a_job_that_took_values_from_the_cache_loads_whole_from_the_store():
    ns = _ns()
    _run(ns, cache=True)
    ns["xs"][5] = 50
    job, values = _run(ns, cache=True)
    jobstore.flush()
    loaded = jobstore.load_job(job.id)
    assert loaded.result() == values and loaded.from_cache == 19
    # The same tasks as the job that ran: the reused values' record is not a task (it was one more, "cache")
    assert sorted(loaded.tasks) == sorted(job.tasks) and _ran(loaded) == _ran(job) == [5], (loaded.tasks, job.tasks)
    assert loaded.snapshot().tasks_total == job.snapshot().tasks_total


def test_a_job_that_did_not_end_counts_its_reused_iterations_once():
    """A job lost with its kernel has no final counts: they are read from its records."""
    ns = _ns()
    _run(ns, cache=True)
    ns["xs"][3] = 100
    job, _ = _run(ns, cache=True)
    jobstore.flush()
    manifest = jobstore.read_manifest(job.id)
    manifest.update(state="running", owner={**manifest["owner"], "pid": 2 ** 22 + 7, "start": "0"})
    for key in ("counts", "finished", "elapsed"):
        manifest.pop(key, None)
    jobstore.write_manifest(jobstore.store_root() / job.id, manifest)
    found = jobstore.summary(job.id)
    assert (found.state, found.succeeded, found.failed, found.total) == ("lost", 20, 0, 20)


def test_map_takes_cache_too():
    ns = _ns()
    f = ns["f"]
    assert azpar_magic.map(f, range(10), cache=True, workers=2) == [x * 2 for x in range(10)]
    job = azpar_magic.map(f, range(10), cache=True, workers=2, wait=False)
    assert job.result() == [x * 2 for x in range(10)] and job.from_cache == 10


# ------------------------------------------------------------------ clearing and the bound


def test_cache_clear_forgets_every_value_but_keeps_the_jobs():
    ns = _ns()
    first, _ = _run(ns, cache=True)
    assert azpar_magic.cache_clear() == 1
    job, _ = _run(ns, cache=True)
    assert job.from_cache == 0
    assert first.id in jobstore.job_ids()


def test_the_oldest_jobs_leave_the_index_past_the_bound(monkeypatch):
    ns = _ns()
    older, _ = _run(ns, cache=True)
    ns["xs"] = list(range(100, 120))
    time.sleep(0.02)  # index files are ordered by their time
    newer, _ = _run(ns, cache=True)
    jobstore.flush()
    size = (jobstore.store_root() / newer.id / jobstore.RECORDS).stat().st_size
    dropped = index.enforce_bound(size)  # room for one job's records
    assert dropped == [older.id]
    assert [job_id for _, job_id in index.indexed_jobs()] == [newer.id]
    ns["xs"] = list(range(20))
    assert _run(ns, cache=True)[0].from_cache == 0  # the older job's values are no longer reused


def test_the_bound_is_a_setting(monkeypatch):
    monkeypatch.setenv("AZPAR_CACHE_MAX_BYTES", "12345")
    assert cache.max_bytes() == 12345
    monkeypatch.delenv("AZPAR_CACHE_MAX_BYTES")
    assert cache.max_bytes() == index.DEFAULT_MAX_BYTES


def test_a_deleted_job_is_not_a_hit():
    ns = _ns()
    first, _ = _run(ns, cache=True)
    jobstore.flush()
    azpar_magic.delete(first.id)
    assert _run(ns, cache=True)[0].from_cache == 0


# ------------------------------------------------------------------ two real kernels


CELL_DEFINING = """
def score(x):
    return sum(i * x for i in range(50))
"""


@pytest.mark.timeout(300)
def test_the_same_cell_in_another_kernel_takes_every_value_from_the_cache(tmp_path, own_store):
    from .test_kernel import Kernel, _isolated_env, _stop

    manager = pytest.importorskip("jupyter_client.manager")

    def start(name: str) -> Kernel:
        env = _isolated_env(tmp_path / name)
        env[jobstore.STORE_ENV] = str(own_store)
        (tmp_path / name / "cwd").mkdir(parents=True, exist_ok=True)
        km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env,
                                          cwd=str(tmp_path / name / "cwd"))
        kernel = Kernel(km, kc)
        kernel.ok("%load_ext azpar_magic")
        return kernel

    def run(kernel: Kernel) -> str:
        reply = kernel.ok("job = azpar_magic.run('for x in xs', 'score(x)', cache=True, workers=2)\n"
                          "values = job.result()\nprint(job.from_cache, values == [score(x) for x in xs])")
        return reply.stdout.strip()

    first = start("one")
    try:
        first.ok("import azpar_magic\nxs = list(range(30))")
        first.ok(CELL_DEFINING)
        assert run(first) == "0 True"
    finally:
        _stop(first)
    second = start("two")
    try:
        # Other cells first: the function's code now has other line numbers and another file.
        second.ok("import azpar_magic\n\n\n\nxs = list(range(30))")
        second.ok("a = 1")
        second.ok("\n\n\n" + CELL_DEFINING)
        assert run(second) == "30 True"
        second.ok(CELL_DEFINING.replace("i * x", "i + x"))
        assert run(second) == "0 True"
    finally:
        _stop(second)


# ------------------------------------------------------------------ the magic


def test_the_cell_option_and_the_cache_command(ip, run_cell):
    ip.user_ns["xs"] = list(range(12))
    run_cell("def f(x):\n    return x * 2\n")
    cell = "%%azpar --cache -o out --workers 2 for x in xs:\nf(x) + 1\n"
    first = run_cell(cell)
    assert first.success, first.error
    expected = ip.user_ns["out"]
    again = run_cell(cell)
    assert again.success, again.error
    assert ip.user_ns["out"] == expected == [x * 2 + 1 for x in range(12)]
    job = azpar_magic.jobs()[-1]  # this process's jobs, oldest first
    assert job.from_cache == 12 and "12 from cache" in repr(job)
    assert "<b>12</b> from cache" in job._repr_html_()
    shown = run_cell("%azpar cache")
    assert "the cache holds the values of 2 jobs" in shown.stdout
    cleared = run_cell("%azpar cache clear")
    assert "cache cleared: the values of 2 jobs" in cleared.stdout
    assert run_cell(cell).success
    assert azpar_magic.jobs()[-1].from_cache == 0


# ------------------------------------------------------------------ Azure


@pytest.mark.azure
@pytest.mark.timeout(300)
def test_an_azure_job_stores_its_values_for_the_cache_as_a_local_one_does(batch, azurite, tmp_path, monkeypatch):
    """The test Batch service and Azurite: reuse happens in the kernel, and an Azure job's
    records hold its values as a local job's do, so its values are reused too."""
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__", "xs": list(range(6))}
    with azure_profile(tmp_path / "config", batch, azurite):
        first = azpar_magic.run("for x in xs", "x * 10", ns, backend=None, cache=True)
        assert first.result(120) == [x * 10 for x in range(6)] and first.backend_name == "azure"
        ns["xs"][2] = 7
        job = azpar_magic.run("for x in xs", "x * 10", ns, backend=None, cache=True)
        assert job.result(120) == [0, 10, 70, 30, 40, 50]
        assert job.from_cache == 5 and _ran(job) == [2]
        again = azpar_magic.run("for x in xs", "x * 10", ns, backend=None, cache=True)
        assert again.result(120) == [0, 10, 70, 30, 40, 50] and again.from_cache == 6

"""``%azpar debug JOB I`` through IPython's InteractiveShell (issue 20): one iteration runs
again in the kernel with the job's own namespace and item, under IPython's post-mortem
debugger (fed its commands, as IPython's own debugger tests feed theirs) or, with --no-pdb,
raising the iteration's exception with the cell's line numbers. Kernel restarts:
test_debug_kernel.py. An Azure job on the test Batch service and Azurite: at the end."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import traceback

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic import jobstore as store
from azpar_magic.run.parsing import CELL_FILENAME

from .helpers_corpus import restore_namespace, snapshot_namespace

CELL = """%%azpar -q --errors pass -o debugged for x in range(6):
y = x * scale
z = f(x)
z + y"""


@pytest.fixture
def job_store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))
    return root


@pytest.fixture(autouse=True)
def _shell_left_as_found(ip):
    """The tests define notebook names (f, scale, Point, ...) in the session's one shell; later
    test modules must not find them (a leftover ``Point`` made test_store's class check pass)."""
    before = snapshot_namespace(ip.user_ns)
    yield
    restore_namespace(ip.user_ns, before)


def _failing_job(ip, run_cell) -> str:
    """A local job whose iteration 3 raises ZeroDivisionError inside a notebook function;
    then the notebook rebinds both names the body uses, as a user fixing things would."""
    ip.run_cell("def f(x):\n    return 10 / (x - 3)\nscale = 2")
    before = {j.id for j in azpar_magic.jobs()}
    result = run_cell(CELL)
    assert result.success, result.error
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    assert isinstance(ip.user_ns["debugged"][3], ZeroDivisionError)
    ip.run_cell("def f(x):\n    return 0\nscale = 1000")  # today's namespace: this must not matter
    return job.id


def _cell_lines(tb) -> list[int]:
    return [frame.lineno for frame in traceback.extract_tb(tb) if frame.filename == CELL_FILENAME]


def test_no_pdb_raises_the_jobs_exception_with_its_namespace(ip, run_cell, job_store):
    job_id = _failing_job(ip, run_cell)
    failure = azpar_magic.attach(job_id).failures[3]
    run = run_cell(f"%azpar debug {job_id} 3 --no-pdb")
    assert not run.success
    assert isinstance(run.error, ZeroDivisionError), run.error
    # The cell's line that called f, as the worker's traceback named it (line 3 of the body).
    assert _cell_lines(run.error.__traceback__) == [failure.line] == [3]
    # azpar's own frames are left out of what IPython shows (its dispatch frames are hidden; the debugging
    # module's and the worker's are not in the traceback): the first frame after IPython's is the body's.
    shown = [t.tb_frame for t in _walk(run.error.__traceback__) if "__tracebackhide__" not in t.tb_frame.f_locals]
    package = os.path.dirname(azpar_magic.__file__)
    assert not [f.f_code.co_filename for f in shown if f.f_code.co_filename.startswith(package)], shown
    after_ipython = [f for f in shown if "IPython" not in f.f_code.co_filename and "<ipython-input" not in
                     f.f_code.co_filename and not f.f_code.co_filename.startswith("<ipython")]
    assert after_ipython[0].f_code.co_filename == CELL_FILENAME, [f.f_code.co_filename for f in shown]
    # The frame of the body saw the job's values: x is the item, y used the old scale.
    body = [t for t in _walk(run.error.__traceback__) if t.tb_frame.f_code.co_filename == CELL_FILENAME][0]
    assert (body.tb_frame.f_globals | body.tb_frame.f_locals)["x"] == 3
    assert (body.tb_frame.f_globals | body.tb_frame.f_locals)["y"] == 6
    # A succeeded iteration reruns here too, with the old f and scale: 10 / (2 - 3) + 4.
    assert ip.run_line_magic("azpar", f"debug {job_id} 2 --no-pdb") == -6.0
    assert ip.run_line_magic("azpar", f"debug {job_id} -4 --no-pdb") == -6.0  # from the end, as a list's
    # The notebook's own names are untouched.
    assert ip.user_ns["scale"] == 1000 and ip.user_ns["f"](3) == 0


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def test_pdb_opens_ipythons_post_mortem_on_the_failing_frame(ip, run_cell, job_store, monkeypatch):
    job_id = _failing_job(ip, run_cell)
    out = io.StringIO()
    debugger = ip.debugger_cls(stdin=io.StringIO("up\np x, y, scale\nquit\n"), stdout=out)
    monkeypatch.setattr(ip.InteractiveTB, "pdb", debugger)  # %debug's own debugger, fed its commands
    monkeypatch.setattr(ip.InteractiveTB, "tb", None, raising=False)
    run = run_cell(f"%azpar debug {job_id} 3")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert run.success, run.error
    assert "ZeroDivisionError" in run.stdout + run.stderr + text
    # The post-mortem starts in f (where it raised); one frame up is the cell's body with the item.
    assert "(3, 6, 2)" in text, text
    assert "return 10 / (x - 3)" in text, text  # f as the job shipped it, not today's
    assert "<azpar cell>(3)<module>()" in text and "----> 3 z = f(x)" in text, text


@pytest.mark.parametrize("stop", ["breakpoint()", "import pdb; pdb.set_trace()"])
def test_a_breakpoint_in_the_body_fails_the_cell_aloud_and_debug_stops_there(ip, run_cell, job_store, monkeypatch, stop):
    """A user debugging a loop leaves breakpoint() in the body and runs it through %%azpar. On a worker
    the debugger meets an empty standard input and quits (bdb.BdbQuit); the kernel raised an error of
    that class, and IPython runs a cell ending in BdbQuit as a debugger the user quit: the cell failed
    showing nothing at all, no result bound. It says what happened now, and `%azpar debug` stops at
    that line in the notebook, as the error tells."""
    run = run_cell(f"%%azpar -q -o stopped for x in range(1, 3):\ny = x * 7\n{stop}\ny")
    shown = run.stdout + run.stderr + "".join(str(o.data) for o in run.outputs)
    assert isinstance(run.error, azpar_magic.IterationError), run.error
    assert "azpar: iteration 0 (item 1) raised BdbQuit: the body stopped at a debugger" in shown, shown
    assert "`%azpar debug` runs this iteration in the notebook, where that line stops as it would in a cell" in shown, shown
    assert "stopped" not in ip.user_ns
    import pdb

    def set_trace(*, header=None):  # Python's own, which a kernel has: pytest replaces it in its process
        pdb.Pdb().set_trace(sys._getframe().f_back)

    monkeypatch.setattr(pdb, "set_trace", set_trace)
    monkeypatch.setattr(sys, "breakpointhook", sys.__breakpointhook__)  # (calls pdb.set_trace)
    monkeypatch.setattr(sys, "stdin", io.StringIO("p y + 1000\nc\n"))  # what the user types at (Pdb)
    before = signal.getsignal(signal.SIGINT)
    debugged = run_cell("%azpar debug")
    assert debugged.success, debugged.error
    # pdb's `c` left its own Ctrl-C handler installed: the kernel's next interrupt opened a debugger prompt
    assert signal.getsignal(signal.SIGINT) is before
    assert "1007" in debugged.stdout, debugged.stdout  # stopped in iteration 0 (item 1), y = 7
    assert "ran here without an exception" in debugged.stdout, debugged.stdout


def test_bad_debug_requests_are_usage_errors(ip, run_cell, job_store):
    job_id = _failing_job(ip, run_cell)
    for line, fragment in ((f"debug {job_id} 6", "has 6 iterations (0 to 5, -1 the last); there is no iteration 6"),
                           (f"debug {job_id} -7", "there is no iteration -7"),
                           (f"debug {job_id} x", "ITERATION is an iteration number"),
                           (f"debug {job_id} 1 2", "usage: %azpar debug [JOB [ITERATION]] [--no-pdb]"),
                           (f"debug {job_id} 1 --pdb", "usage: %azpar debug"),
                           ("debug azpar-nobody-20200101-000000-000000000000 1", "no job"),
                           ("debug no-such-name 1", "no job 'no-such-name'"),
                           # An iteration alone was read as a job and said only that: it names the fix now.
                           ("debug 3", "give the job first: %azpar debug JOB 3"),
                           ("debug -1 --no-pdb", "give the job first: %azpar debug JOB -1")):
        with pytest.raises(UsageError) as caught:
            ip.run_line_magic("azpar", line)
        assert fragment in str(caught.value), (line, str(caught.value))


def test_without_an_iteration_it_debugs_the_first_failure_of_the_job_or_the_latest(ip, run_cell, job_store):
    """`%azpar debug` alone takes the latest job's first failed iteration, as IPython's %debug takes
    the last exception; `%azpar debug JOB` that job's, also read back from the store; a job with no
    failure says so and how to run any iteration. It needed both the job and the iteration."""
    from azpar_magic import session

    job_id = _failing_job(ip, run_cell)
    run = run_cell("%azpar debug --no-pdb")
    assert isinstance(run.error, ZeroDivisionError), run.error
    assert f"azpar: iteration 3 of job {job_id}, its first failure" in run.stderr, run.stderr
    assert _cell_lines(run.error.__traceback__) == [3]
    clean = run_cell("%%azpar -q -o fine for x in range(2):\nx")
    assert clean.success, clean.error
    with pytest.raises(UsageError, match="has no failed iteration to debug; %azpar debug .* ITERATION runs any"):
        ip.run_line_magic("azpar", "debug")
    session.forget(job_id)  # read back from the store, without its values
    again = run_cell(f"%azpar debug {job_id} --no-pdb")
    assert isinstance(again.error, ZeroDivisionError), again.error
    assert f"iteration 3 of job {job_id}, its first failure" in again.stderr


def test_a_job_stored_without_its_envelope_says_so(ip, run_cell, job_store):
    job_id = _failing_job(ip, run_cell)
    store.flush()
    records = job_store / job_id / store.RECORDS
    data = records.read_bytes()
    kept = [store.FILE_MAGIC]
    for header, body, _ in store.iter_records(data, len(store.FILE_MAGIC)):
        if header.get("k") not in ("envelope", "namespace"):
            kept.append(store.record(header, bytes(body)))
    records.write_bytes(b"".join(kept))  # as an azpar before debugging existed stored it
    azpar_magic.session.forget(job_id)
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("azpar", f"debug {job_id} 3")
    assert "stored without its envelope" in str(caught.value) and "%azpar rerun" in str(caught.value)


def test_seeded_iteration_gets_the_jobs_stream_and_leaves_the_kernels(ip, run_cell, job_store):
    ip.run_cell("import random")
    before = {j.id for j in azpar_magic.jobs()}
    assert run_cell("%%azpar -q --seed 7 -o drawn for i in range(4):\nrandom.random()").success
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    random_state = __import__("random").getstate()
    assert ip.run_line_magic("azpar", f"debug {job.id} 2 --no-pdb") == ip.user_ns["drawn"][2]
    assert __import__("random").getstate() == random_state


# ---------------------------------------------------------------------------------------
# Azure: the test Batch service and Azurite
# ---------------------------------------------------------------------------------------


@pytest.mark.azure
def test_azure_job_debugs_from_the_staged_namespace(ip, run_cell, azure, job_store):
    ip.run_cell("def f(x):\n    return 10 / (x - 3)\nscale = 2")
    before = {j.id for j in azpar_magic.jobs()}
    result = run_cell(CELL.replace("for x in range(6)", "for x in range(5)"))
    assert result.success, result.error
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    assert job.backend_name == "azure"
    envelope, namespace = store.stored_envelope(job.id)
    assert envelope is not None and namespace is None  # staged in the cache container, not kept here
    ip.run_cell("def f(x):\n    return 0\nscale = 1000")
    azpar_magic.session.forget(job.id)  # read back from the store, as after a restart
    run = run_cell(f"%azpar debug {job.id} 3 --no-pdb")
    assert isinstance(run.error, ZeroDivisionError), run.error
    assert _cell_lines(run.error.__traceback__) == [3]
    # The blob removed: a clear error, naming it.
    from azpar_magic import session
    backend = session.engine_for_stored(store.read_manifest(job.id)).backend
    cache = store.read_manifest(job.id)["backend_info"]["containers"]["cache"]
    backend.staging.service.get_blob_client(cache, f"ns/{envelope['namespace']['file']}").delete_blob()
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("azpar", f"debug {job.id} 3")
    assert "no longer available" in str(caught.value) and envelope["namespace"]["file"] in str(caught.value)


def test_chunked_module_mode_job_with_a_notebook_class_item(ip, run_cell, job_store):
    """--gather runs the body in module mode; --chunk-size 3 puts iteration 4 second in its
    task; the item is an instance of a notebook class, rebuilt with the job's class."""
    ip.run_cell("class Point:\n    def __init__(self, v):\n        self.v = v\n    def inv(self):\n"
                "        return 1 / (self.v - 4)\npoints = [Point(v) for v in range(6)]")
    before = {j.id for j in azpar_magic.jobs()}
    assert run_cell("%%azpar -q --chunk-size 3 --gather w --errors pass -o inv for p in points:\n"
                    "w = p.v * 2\np.inv()").success
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    ip.run_cell("class Point:\n    def __init__(self, v):\n        self.v = v\n    def inv(self):\n        return 0")
    run = run_cell(f"%azpar debug {job.id} 4 --no-pdb")
    assert isinstance(run.error, ZeroDivisionError), run.error
    frames = {t.tb_frame.f_code.co_name: t.tb_frame for t in _walk(run.error.__traceback__)}
    assert frames["inv"].f_locals["self"].v == 4
    assert ip.run_line_magic("azpar", f"debug {job.id} 5 --no-pdb") == 1.0


def test_the_jobs_local_module_and_the_kernels_imports_afterwards(ip, run_cell, job_store, tmp_path, monkeypatch):
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "h8helpers.py").write_text("def g(x):\n    return 1 / (x - 1)\n")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    ip.run_cell("import h8helpers")
    before = {j.id for j in azpar_magic.jobs()}
    assert run_cell("%%azpar -q --errors pass -o hv for x in range(3):\nh8helpers.g(x)").success
    (job,) = [j for j in azpar_magic.jobs() if j.id not in before]
    assert store.stored_envelope(job.id)[0]["local_modules"], "the job did not ship the module"
    (folder / "h8helpers.py").write_text("def g(x):\n    return 'today'\n")
    ip.run_cell("import importlib; importlib.reload(h8helpers)")
    path_before, today = list(sys.path), sys.modules["h8helpers"]
    run = run_cell(f"%azpar debug {job.id} 1 --no-pdb")
    assert isinstance(run.error, ZeroDivisionError), run.error  # the job's copy of the module
    assert sys.path == path_before and sys.modules["h8helpers"] is today
    assert ip.run_cell("h8helpers.g(1)").result == "today"


def test_the_notebooks_modules_are_kept_once_and_go_with_their_last_job(ip, run_cell, job_store, tmp_path, monkeypatch):
    """A package beside the notebook was written into every job's records (3 MB a job for a package of 300
    modules). The store keeps each set of modules once, linked into the jobs that shipped it; debug reads
    them back, and the set goes with the last job that links it."""
    folder = tmp_path / "nb"
    (folder / "azpar_kept_pkg").mkdir(parents=True)
    (folder / "azpar_kept_pkg" / "__init__.py").write_text("from .core import g\n")
    filler = "# " + "x" * 200_000 + "\n"
    (folder / "azpar_kept_pkg" / "core.py").write_text(filler + "def g(x):\n    return 1 / (x - 1)\n")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    ip.run_cell("import azpar_kept_pkg")
    try:
        before = {j.id for j in azpar_magic.jobs()}
        cell = "%%azpar -q --errors pass -o hv for x in range(3):\nazpar_kept_pkg.g(x)"
        assert run_cell(cell).success and run_cell(cell).success
        first, second = [j.id for j in azpar_magic.jobs() if j.id not in before]
        store.flush()
        (kept,) = [p for p in (job_store / store.NAMESPACES).iterdir() if p.name.startswith("mods-")]
        assert kept.stat().st_nlink == 3 and oct(kept.stat().st_mode & 0o777) == "0o600"  # once, linked twice
        for job_id in (first, second):
            assert (job_store / job_id / store.MODULES_LINK).samefile(kept)
            assert (job_store / job_id / store.RECORDS).stat().st_size < 100_000  # not in the job's records
        envelope, _ = store.stored_envelope(first)
        assert envelope["local_modules"]["azpar_kept_pkg/core.py"].endswith("return 1 / (x - 1)\n")
        (folder / "azpar_kept_pkg" / "core.py").write_text("def g(x):\n    return 'today'\n")
        run = run_cell(f"%azpar debug {first} 1 --no-pdb")
        assert isinstance(run.error, ZeroDivisionError), run.error  # the job's own copy of the package
        ip.run_line_magic("azpar", f"delete {first}")
        assert kept.exists() and kept.stat().st_nlink == 2
        ip.run_line_magic("azpar", f"delete {second}")
        assert not kept.exists()
    finally:
        ip.run_cell("del azpar_kept_pkg")
        for name in ("azpar_kept_pkg", "azpar_kept_pkg.core"):
            sys.modules.pop(name, None)


def test_a_namespace_is_kept_once_and_goes_with_its_last_job(ip, run_cell, job_store):
    ip.run_cell("import numpy as np\nbig = np.arange(200_000)")
    cell = "%%azpar -q -o s for x in range(3):\nint(big[x])"
    before = {j.id for j in azpar_magic.jobs()}
    assert run_cell(cell).success and run_cell(cell).success
    first, second = [j.id for j in azpar_magic.jobs() if j.id not in before]
    store.flush()
    (kept,) = list((job_store / store.NAMESPACES).iterdir())
    assert kept.stat().st_size > 1_600_000 and kept.stat().st_nlink == 3  # once, linked by both jobs
    assert (job_store / first / store.NAMESPACE_LINK).samefile(kept)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    ip.run_line_magic("azpar", f"delete {first}")
    assert kept.exists() and kept.stat().st_nlink == 2
    assert ip.run_line_magic("azpar", f"debug {second} 2 --no-pdb") == 2
    ip.run_line_magic("azpar", f"delete {second}")
    assert not kept.exists()

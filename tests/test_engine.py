"""The engine (azpar_magic/run/engine.py) on its own: the checks it makes before anything is
submitted, how it cuts items into tasks, and how it turns the backend's task events into a
job's outcome: infrastructure failures retried, user exceptions never, ``--errors stop``
stopping the rest of the job early.

Jobs run on a real local pool (real worker processes) driven by an Engine made here, not by
the session, so each test owns its pool and closes it.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

from azpar_magic.backends.local import LocalBackend
from azpar_magic.errors import IterationError, SubmitError
from azpar_magic.jobs.job import JobOptions
from azpar_magic.run import engine as engine_mod
from azpar_magic.run.engine import Engine, chunk_indices, chunk_subset, materialize, validate_options
from azpar_magic.run.parsing import parse_cell
from azpar_magic.run.request import API_SPELLING, FLAG_SPELLING, RunRequest


@pytest.fixture
def engine():
    """An Engine over a local pool of two workers, closed (its jobs cancelled) afterwards."""
    eng = Engine(LocalBackend(workers=2))
    yield eng
    for job in list(eng.jobs.values()):
        job.cancel()
    eng.backend.close()


def _request(loop: str, body: str, namespace: dict | None = None, **options) -> RunRequest:
    return RunRequest(parse_cell(loop, body), namespace or {}, JobOptions(**options))


def _marks(folder, prefix: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(prefix))


# ------------------------------------------------------------------ submit and the job's outcome


@pytest.mark.timeout(120)
def test_a_submitted_loop_is_cut_into_tasks_and_gives_its_values_in_order(engine):
    job = engine.submit(_request("for x in range(7)", "x * x", chunk_size=3))
    assert job.result(timeout=60) == [x * x for x in range(7)]
    assert sorted(job.tasks) == ["1", "2", "3"]
    assert [list(job.task(t).indices) for t in ("1", "2", "3")] == [[0, 1, 2], [3, 4, 5], [6]]
    assert job.id in engine.jobs and not engine.cancelled(job.id)


@pytest.mark.timeout(120)
def test_an_infrastructure_failure_is_retried_and_the_retry_gives_the_value(engine, tmp_path):
    # Each iteration's worker dies (os._exit) the first time it runs it: the task is run again.
    body = ("import os\n"
            "flag = os.path.join(folder, f'died-{x}')\n"
            "if not os.path.exists(flag):\n"
            "    open(flag, 'w').close()\n"
            "    os._exit(3)\n"
            "x * 10")
    job = engine.submit(_request("for x in range(3)", body, {"folder": str(tmp_path)}, chunk_size=1, retries=1))
    assert job.result(timeout=60) == [0, 10, 20]
    assert [job.task(t).attempts for t in sorted(job.tasks)] == [2, 2, 2]
    assert _marks(tmp_path, "died-") == ["died-0", "died-1", "died-2"]


@pytest.mark.timeout(120)
def test_a_user_exception_is_never_retried(engine, tmp_path):
    body = ("import os\n"
            "with open(os.path.join(folder, f'ran-{x}'), 'a') as fh:\n"
            "    fh.write('.')\n"
            "if x == 1:\n"
            "    raise ValueError(f'bad item {x}')\n"
            "x")
    job = engine.submit(_request("for x in range(3)", body, {"folder": str(tmp_path)},
                                 chunk_size=1, retries=3, errors="remove"))
    assert job.result(timeout=60) == [0, 2]
    assert [(tmp_path / f"ran-{x}").read_text() for x in range(3)] == [".", ".", "."], "an iteration ran twice"
    assert job.task("2").attempts == 1
    assert job.failures[1].error_type.endswith("ValueError") and "bad item 1" in job.failures[1].message


@pytest.mark.timeout(120)
def test_errors_stop_ends_the_job_early_and_names_the_failed_iteration(engine, tmp_path):
    body = ("import os, time\n"
            "open(os.path.join(folder, f'ran-{x}'), 'w').close()\n"
            "if x == 0:\n"
            "    raise ValueError('the first one fails')\n"
            "time.sleep(0.3)\n"
            "x")
    job = engine.submit(_request("for x in range(40)", body, {"folder": str(tmp_path)}, chunk_size=1))
    assert job.wait(60)
    with pytest.raises(IterationError, match="iteration 0 .*ValueError: the first one fails"):
        job.result()
    ran = _marks(tmp_path, "ran-")
    # Two workers at 0.3 s an iteration: without the early stop all 40 run (about 6 s).
    assert len(ran) < 12, f"{len(ran)} iterations ran after the first failed"


@pytest.mark.timeout(120)
def test_cancel_marks_the_job_cancelled_in_the_engine(engine):
    job = engine.submit(_request("for x in range(4)", "import time\ntime.sleep(30)\nx", chunk_size=1))
    engine.cancel(job.id)
    assert job.wait(60)
    assert job.state == "cancelled" and engine.cancelled(job.id)


# ------------------------------------------------------------------ bad input leaves nothing behind


def test_an_object_that_cannot_be_shipped_is_refused_before_a_job_exists(engine):
    import threading

    with pytest.raises(SubmitError, match="holder"):
        engine.submit(_request("for x in range(2)", "holder is not None", {"holder": threading.Lock()}))
    assert engine.jobs == {}


def test_iterations_to_run_outside_the_items_are_refused(engine):
    request = _request("for x in range(3)", "x")
    request.indices = [0, 3]
    with pytest.raises(SubmitError, match="between 0 and 2. Nothing was submitted."):
        engine.submit(request)
    assert engine.jobs == {}


def test_combine_dict_with_an_unhashable_item_is_refused_up_front(engine):
    with pytest.raises(SubmitError, match=r"item 1 \(\[1\]\) is a list, which is not hashable.*Nothing was submitted"):
        engine.submit(_request("for x in [0, [1]]", "x", combine="dict"))
    assert engine.jobs == {}


# ------------------------------------------------------------------ materialize: the bound on items


def test_materialize_takes_up_to_the_bound_and_refuses_one_more():
    assert materialize(parse_cell("for x in range(5)", "x"), {}, max_items=5) == [0, 1, 2, 3, 4]
    assert materialize(parse_cell("for x in (i for i in range(5))", "x"), {}, max_items=5) == [0, 1, 2, 3, 4]
    for loop in ("for x in range(6)", "for x in (i for i in range(6))", "for x in __import__('itertools').count()"):
        with pytest.raises(SubmitError, match="has more than 5 items .*AZPAR_MAX_ITEMS"):
            materialize(parse_cell(loop, "x"), {}, max_items=5)


def test_materialize_says_which_iterable_failed_and_how():
    with pytest.raises(SubmitError, match=r"`missing` could not be evaluated: NameError"):
        materialize(parse_cell("for x in missing", "x"), {})

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(SubmitError, match=r"Iterating over `broken\(\)` raised OSError: disk gone"):
        materialize(parse_cell("for x in broken()", "x"), {"broken": broken})


def test_materialize_reads_the_namespace_it_is_given():
    assert materialize(parse_cell("for x in xs", "x"), {"xs": (3, 1)}) == [3, 1]


# ------------------------------------------------------------------ chunking helpers


def test_chunk_indices_cuts_every_iteration_in_order():
    assert chunk_indices(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert chunk_indices(3, 5) == [range(0, 3)]
    assert chunk_indices(0, 2) == []
    assert chunk_indices(8, 4) == [range(0, 4), range(4, 8)]
    assert chunk_indices(3, 1) == [range(0, 1), range(1, 2), range(2, 3)]


def test_small_parts_of_plain_items_are_checked_in_one_pass_and_pickled_as_one_by_one():
    # Items checked all at once, then each part pickled without its own check: the same bytes as
    # each part's own check and pickle, and nothing pickled when any item is not plain data.
    from azpar_magic import worker as wire

    items = [1, "two", 3.0, None, (5, 6), {"k": [7]}, b"8", True, 9]
    parts = [items[i:i + 2] for i in range(0, len(items), 2)]
    assert engine_mod._plain_parts(items, parts) == [wire.plain_pickle(part) for part in parts]
    odd = [*items, object()]
    assert engine_mod._plain_parts(odd, [odd[i:i + 2] for i in range(0, len(odd), 2)]) == []
    big = list(range(40))  # parts of 20 items: each checked as it is pickled, the same bytes again
    assert engine_mod._plain_parts(big, [big[:20], big[20:]]) == [wire.plain_pickle(big[:20]), wire.plain_pickle(big[20:])]
    assert engine_mod._plain_parts([*big, object()], [big[:20], [*big[20:], object()]]) == []


def test_chunk_subset_keeps_contiguous_chunks_as_ranges():
    assert chunk_subset([8, 0, 2, 1, 7, 5], 3) == [range(0, 3), [5, 7, 8]]
    assert chunk_subset([4, 5, 6, 7], 2) == [range(4, 6), range(6, 8)]
    assert chunk_subset([9], 4) == [range(9, 10)]


# ------------------------------------------------------------------ validate_options: one rule, two spellings


_BAD_OPTIONS = [
    ({"combine": "average"}, "combine must be one of list, dict, sum, concat or a callable, not 'average'."),
    ({"errors": "ignore"}, "errors must be one of stop, remove, pass, not 'ignore'."),
    ({"chunk_size": 0}, "chunk_size must be a positive whole number (or auto), not 0."),
    ({"chunk_size": 2.5}, "chunk_size must be a positive whole number (or auto), not 2.5."),
    ({"timeout": 0}, "timeout must be a number of seconds above 0 and at most 604800"),
    ({"timeout": math.nan}, "timeout must be a number of seconds above 0"),
    ({"timeout": math.inf}, "timeout must be a number of seconds above 0"),
    ({"timeout": True}, "timeout must be a number of seconds above 0"),
    ({"retries": -1}, "retries must be a whole number from 0 to 100, not -1."),
    ({"retries": 101}, "retries must be a whole number from 0 to 100, not 101."),
    ({"seed": -1}, "seed must be a whole number from 0 to 2**64-1, not -1."),
    ({"seed": 2**64}, "seed must be a whole number from 0 to 2**64-1"),
    ({"gather": ("ok", "1x")}, "gather takes variable names; '1x' is not one."),
    ({"gather": ("r",), "output_name": "r"}, "gather r would overwrite the output variable of the same name."),
]


@pytest.mark.parametrize("given, message", _BAD_OPTIONS, ids=[next(iter(g)) + "=" + repr(g[next(iter(g))])
                                                               for g, _ in _BAD_OPTIONS])
def test_validate_options_names_each_option_as_the_caller_wrote_it(given, message):
    with pytest.raises(SubmitError) as api:
        validate_options(JobOptions(**given))
    assert str(api.value).startswith(message), str(api.value)
    option = next(iter(given))
    with pytest.raises(SubmitError) as flag:
        validate_options(JobOptions(**given), FLAG_SPELLING)
    flag_spelled = message.replace(API_SPELLING[option], FLAG_SPELLING[option], 1)
    assert str(flag.value).startswith(flag_spelled), str(flag.value)


def test_validate_options_accepts_the_edges_of_each_range():
    validate_options(JobOptions(combine=sum, errors="pass", chunk_size=1, timeout=engine_mod.MAX_TIMEOUT,
                                retries=engine_mod.MAX_RETRIES, seed=engine_mod.MAX_SEED, gather=("a", "b")))
    validate_options(JobOptions(retries=0, seed=0, timeout=0.001))


def test_a_bad_job_name_is_refused_with_the_stores_reason():
    with pytest.raises(SubmitError, match="'a b' cannot name a job: it has ' '.*Nothing was submitted."):
        validate_options(JobOptions(name="a b"))


def test_missing_file_hint_names_only_files_this_machine_has(tmp_path):
    from azpar_magic.jobs import Failure
    from azpar_magic.run.hints import FilesSeen, missing_file_hint

    nodes = FilesSeen(str(tmp_path))
    (tmp_path / "here.csv").write_text("x")
    here = Failure(0, "builtins.FileNotFoundError", "[Errno 2] No such file or directory: 'here.csv'")
    assert missing_file_hint(here, nodes).message.endswith(
        "('here.csv' is a file of this machine, which the nodes do not have: pass --inputs 'here.csv' and open "
        "'inputs/here.csv' in the body)")
    gone = Failure(0, "builtins.FileNotFoundError", "[Errno 2] No such file or directory: 'gone.csv'")
    assert missing_file_hint(gone, nodes) is gone
    other = Failure(0, "builtins.ValueError", "No such file or directory: 'here.csv'")
    assert missing_file_hint(other, nodes) is other
    by_exc = Failure(0, "builtins.FileNotFoundError", "gone", exc=FileNotFoundError(2, "No such file", "here.csv"))
    assert "pass --inputs 'here.csv'" in missing_file_hint(by_exc, nodes).message
    # Passed with --inputs already, but opened by its own name: where iterations find it.
    for remote in (True, False):
        given = FilesSeen(str(tmp_path), remote, frozenset({"here.csv"}))
        assert missing_file_hint(here, given).message.endswith(
            "('here.csv' is given with --inputs, and iterations find it as 'inputs/here.csv': open that in the body)")
    own = FilesSeen(str(tmp_path), remote=False)  # the local pool, --outputs only: a folder of its own
    assert "each iteration runs in a folder of its own: pass --inputs 'here.csv'" in missing_file_hint(here, own).message


def test_missing_module_hint_names_the_kernels_distribution_only():
    import numpy as np

    from azpar_magic.jobs import Failure
    from azpar_magic.run.hints import missing_module_hint

    hidden = Failure(0, "builtins.ModuleNotFoundError", "No module named 'numpy'")
    assert missing_module_hint(hidden).message.endswith(
        f"(numpy is installed in this kernel, but no code the cell sends names it, so the nodes did not install it: "
        f"pass --packages numpy=={np.__version__})")
    optional = Failure(0, "builtins.ImportError", "Missing optional dependency 'numpy'.  Use pip or conda to install numpy.")
    assert f"--packages numpy=={np.__version__}" in missing_module_hint(optional).message
    for untouched in (Failure(0, "builtins.ModuleNotFoundError", "No module named 'azpar_nowhere_pkg'"),
                      Failure(0, "builtins.ModuleNotFoundError", "No module named 'tomllib'"),  # the standard library
                      Failure(0, "builtins.ValueError", "No module named 'numpy'")):
        assert missing_module_hint(untouched) is untouched


def test_made_code_lines_fill_only_frames_the_worker_had_no_line_for():
    """A frame in a function an earlier cell made gets its line from this kernel's linecache; a frame that has
    its line, one of a cell this kernel does not know, and a traceback of this cell's alone stay as they are."""
    from azpar_magic import worker
    from azpar_magic.jobs import Failure
    from azpar_magic.run.capture import show_cell_source
    from azpar_magic.run.hints import made_code_lines

    earlier = "%%azpar -o fs for k in ks:\ndef f(v):\n    return v / k\nf"
    show_cell_source(earlier)
    name, unknown = worker.made_code_filename(earlier), worker.made_code_filename(earlier + " ")
    text = ('Traceback (most recent call last):\n  File "<azpar cell>", line 2, in <module>\n    g(1)\n'
            f'  File "{name}", line 3, in f\n  File "{unknown}", line 3, in f\nZeroDivisionError: division by zero\n')
    failure = Failure(0, "builtins.ZeroDivisionError", "division by zero", traceback=text)
    filled = made_code_lines(failure).traceback
    assert filled == text.replace(f'line 3, in f\n  File "{unknown}"', f'line 3, in f\n    return v / k\n  File "{unknown}"')
    assert made_code_lines(made_code_lines(failure)).traceback == filled  # a line already there is not added again
    own = Failure(0, "builtins.ValueError", "no", traceback=text.split(f'  File "{name}"')[0] + "ValueError: no\n")
    assert made_code_lines(own) is own


def test_missing_module_hint_sees_a_package_installed_after_a_first_failure(tmp_path, monkeypatch):
    """The user installs the module into the kernel after the nodes first failed on it: the next
    failure names it (the answer was kept for the session before)."""
    from azpar_magic.jobs import Failure
    from azpar_magic.run.hints import missing_module_hint

    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    failure = Failure(0, "builtins.ModuleNotFoundError", "No module named 'azpar_late_pkg'")
    assert missing_module_hint(failure) is failure
    (tmp_path / "azpar_late_pkg").mkdir()
    (tmp_path / "azpar_late_pkg" / "__init__.py").write_text("VALUE = 1\n")
    info = tmp_path / "azpar_late_pkg-2.1.dist-info"  # what pip leaves beside the package
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: azpar-late-pkg\nVersion: 2.1\n")
    (info / "top_level.txt").write_text("azpar_late_pkg\n")
    (info / "RECORD").write_text("azpar_late_pkg/__init__.py,,\n")
    assert "pass --packages azpar-late-pkg==2.1)" in missing_module_hint(failure).message


@pytest.mark.timeout(180)
def test_items_slow_to_serialise_are_said_before_the_job_with_what_travels_faster(engine, capsys, monkeypatch):
    # A row of df.iterrows() is a whole pandas Series (~40 us to pickle): 10,000 rows held every iteration
    # back 0.4 s, for a loop that takes 0.1 s here. The bounds are lowered so that the test does not
    # depend on this machine's speed; large arrays that went at about the speed of memory are not said.
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(engine_mod, "SLOW_ITEMS_SECONDS", 0.0)
    monkeypatch.setattr(engine_mod, "SLOW_ITEM_SECONDS", 0.0)
    df = pd.DataFrame({"a": range(300), "b": range(300)})
    namespace = {"df": df, "arrays": [np.full(2_000_000, float(i)) for i in range(4)]}

    job = engine.submit(_request("for i, row in df.iterrows()", "row['a'] + row['b']", namespace))
    assert job.result(timeout=60) == [2 * i for i in range(300)]
    said = capsys.readouterr().err
    assert "serialising the 300 items of `df.iterrows()` (int, pandas." in said and "Series) took" in said, said
    assert "df.itertuples() gives named tuples" in said and "df.to_dict('records')" in said, said

    for loop, body, expected in (
        ("for row in df.itertuples(index=False, name=None)", "row[0] + row[1]", [2 * i for i in range(300)]),
        ("for a in arrays", "float(a[0])", [0.0, 1.0, 2.0, 3.0]),  # 64 MB: large, and quick for their size
    ):
        job = engine.submit(_request(loop, body, namespace))
        assert job.result(timeout=60) == expected
        assert "serialising the" not in capsys.readouterr().err


@pytest.fixture
def one_by_one(monkeypatch) -> list:
    """A list that gets an entry for each task's items sent through capture.serialize_items, the pickler
    with Python hooks (the items that travel packed or as they are never go there)."""
    from azpar_magic.run import capture as capture_mod

    calls: list = []
    real = capture_mod.serialize_items
    monkeypatch.setattr(capture_mod, "serialize_items", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.timeout(120)
def test_items_holding_notebook_functions_bring_what_those_read(ip, run_cell):
    # `for job in [functools.partial(train, lr) for lr in rates]: job()` failed with NameError: the
    # partial took `train` by value, without the notebook names `train` reads. A lambda inside one too.
    ip.run_cell(
        "import functools\nK = 10\ndef train(lr, extra=0):\n    return lr * K + extra\n"
        "jobs = [functools.partial(train, lr) for lr in (1, 2, 3)]\n"
        "shifted = [functools.partial(lambda x, y: x * K + y, 1, y) for y in range(3)]\n"
    )
    try:
        run = run_cell("%%azpar -q -o got for job in jobs:\njob()")
        assert run.success, run.error
        assert ip.user_ns["got"] == [10, 20, 30]
        run = run_cell("K = 20")
        run = run_cell("%%azpar -q -o got for job in shifted:\njob()")
        assert run.success, run.error
        assert ip.user_ns["got"] == [20, 21, 22]
        run = run_cell("%%azpar -q -o got --no-export K for job in jobs:\njob()")  # not shipped, as asked
        assert not run.success and "NameError" in str(run.error)
        # Closures a notebook function made, and bound methods of notebook objects, as items: the same.
        ip.run_cell(
            "def make(k):\n    def score(x):\n        return x * k + K\n    return score\n"
            "class Model:\n    def __init__(self, w):\n        self.w = w\n"
            "    def predict(self, x):\n        return self.w * x + K\n"
            "scorers = [make(k) for k in range(3)]\npredictors = [Model(w).predict for w in range(3)]\n"
        )
        run = run_cell("%%azpar -q -o got for s in scorers:\ns(1)")
        assert run.success, run.error
        assert ip.user_ns["got"] == [20, 21, 22]
        run = run_cell("%%azpar -q -o got for p in predictors:\np(2)")
        assert run.success, run.error
        assert ip.user_ns["got"] == [20, 22, 24]
        # A lambda among the items reading the loop's target as a global (a sequential loop assigns it):
        # the body runs as module code, not as a function whose target is a local.
        ip.run_cell("pairs = [(i, lambda: t * 2) for i in range(3)]\n")
        ip.user_ns.pop("t", None)
        run = run_cell("%%azpar -q -o got for t, f in pairs:\nf()")
        assert run.success, run.error
        assert ip.user_ns["got"] == [0, 2, 4]
    finally:
        for name in ("functools", "K", "train", "jobs", "shifted", "got", "make", "Model", "scorers", "predictors",
                     "pairs"):
            ip.user_ns.pop(name, None)


@pytest.mark.timeout(120)
def test_dates_timestamps_and_paths_travel_without_the_hooks_and_arrive_as_the_loop_gives(engine, one_by_one):
    # pd.date_range's Timestamps, datetimes, paths and tuples of them went through the pickler's Python
    # hooks one by one (a loop over 10,000 Timestamps: 42 ms, a fork Pool 16). Now each task's are
    # pickled as they are; the workers get pandas for them though the body never names it, and values
    # of those kinds come back as they are too.
    import datetime
    import pathlib
    import zoneinfo

    pd = pytest.importorskip("pandas")
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    namespace = {
        "stamps": pd.date_range("2020-03-28", periods=50, freq="h", tz=paris),
        "paths": [pathlib.Path(f"data/day{i}.csv") for i in range(30)],
        "days": [datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(30)],
    }
    job = engine.submit(_request("for t in stamps", "(t.hour, t.utcoffset(), t)", namespace, chunk_size=7))
    assert job.result(timeout=60) == [(t.hour, t.utcoffset(), t) for t in namespace["stamps"]]
    assert all(back.tzinfo is paris for _, _, back in job.result())
    assert "pandas" in job.capture.packages
    job = engine.submit(_request("for i, p in enumerate(paths)", "(i, p.stem, p.with_suffix('.txt'))", namespace))
    assert job.result(timeout=60) == [(i, p.stem, p.with_suffix(".txt")) for i, p in enumerate(namespace["paths"])]
    job = engine.submit(_request("for d in days", "datetime.datetime.combine(d, datetime.time(12))",
                                 {**namespace, "datetime": datetime}))
    assert job.result(timeout=60) == [datetime.datetime.combine(d, datetime.time(12)) for d in namespace["days"]]
    assert one_by_one == []


@pytest.mark.timeout(120)
def test_numpy_items_and_values_travel_as_arrays_and_arrive_as_what_the_loop_gives(engine, one_by_one):
    # np.linspace's scalars and a matrix's rows go as one array a task (not through the pickler's hooks
    # one by one), and the body sees what iterating them here gives: numpy.float64, a row of the dtype.
    np = pytest.importorskip("numpy")
    namespace = {"np": np, "M": np.arange(60, dtype=np.float32).reshape(20, 3)}
    job = engine.submit(_request("for x in np.linspace(0, 1, 41)", "(type(x).__name__, x * 2, np.sqrt(x))", namespace))
    got = job.result(timeout=60)
    assert [kind for kind, _, _ in got] == ["float64"] * 41
    assert [v for _, v, _ in got] == [x * 2 for x in np.linspace(0, 1, 41)]
    assert all(type(root) is np.float64 for _, _, root in got)
    job = engine.submit(_request("for row in M", "(row.shape, row.dtype.str, row.sum())", namespace))
    got = job.result(timeout=60)
    assert [(shape, kind) for shape, kind, _ in got] == [((3,), "<f4")] * 20
    assert [float(total) for _, _, total in got] == [float(r.sum()) for r in namespace["M"]]
    assert all(type(total) is np.float32 for _, _, total in got)
    namespace.update(xs=np.linspace(0, 1, 30), ys=np.arange(30))
    job = engine.submit(_request("for a, b in zip(xs, ys)", "(type(a).__name__, type(b).__name__, a * b)", namespace))
    got = job.result(timeout=60)
    assert [(ka, kb) for ka, kb, _ in got] == [("float64", "int64")] * 30
    assert [v for _, _, v in got] == [a * b for a, b in zip(namespace["xs"], namespace["ys"])]
    # The items come from numpy, which the workers need to load them, though this body never names it.
    job = engine.submit(_request("for x in xs", "x + 1", {"xs": namespace["xs"]}))
    assert job.result(timeout=60) == [x + 1 for x in namespace["xs"]]
    assert "numpy" in job.capture.packages
    # A matrix of 1.6 MB a task: its small rows are stacked whatever their total.
    big = np.arange(400_000.0).reshape(50_000, 8)
    job = engine.submit(_request("for row in big", "float(row[7])", {"big": big}))
    assert job.result(timeout=60) == [float(v) for v in big[:, 7]]
    assert one_by_one == []

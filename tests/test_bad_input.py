"""Misuse of ``%%azpar``: each case gives a clear error naming the problem and submits
nothing (no job is recorded and no worker runs a single iteration)."""

from __future__ import annotations

import time

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic import session

from .helpers_corpus import AZ_OUT, restore_namespace, run_cell_job, run_sequential, same, snapshot_namespace


class Guard:
    """Records the job counters before a cell; ``marker`` is a body line that leaves a file
    behind if any iteration ever runs."""

    def __init__(self, ip, folder):
        self.ip = ip
        self.folder = folder
        self.folder.mkdir(exist_ok=True)
        # (pathlib, not open(): see the differential case body_calls_open)
        self.marker = f"import pathlib; pathlib.Path(r'{self.folder}/ran-' + str(id(object()))).touch()"
        # Ids, not counts: submitting a job may let the session go of old ones (session.KEPT_JOBS).
        self.session_jobs = {job.id for job in azpar_magic.jobs()}
        self.engine_jobs = {key: set(eng.jobs) for key, eng in session._engines.items()}
        ip.user_ns.pop("r", None)  # the -o variable of the refused cells

    def assert_nothing_submitted(self) -> None:
        assert "r" not in self.ip.user_ns, "a result was bound"
        assert not self.new_jobs(), "a job was recorded"
        for key, eng in session._engines.items():
            assert set(eng.jobs) <= self.engine_jobs.get(key, set()), f"the engine {key} holds a new job"
        time.sleep(0.2)
        assert not list(self.folder.iterdir()), "an iteration ran"

    def new_jobs(self) -> list[str]:
        return [job.id for job in azpar_magic.jobs() if job.id not in self.session_jobs]


@pytest.fixture
def guard(ip, tmp_path):
    before = snapshot_namespace(ip.user_ns)
    yield Guard(ip, tmp_path / "markers")
    restore_namespace(ip.user_ns, before)


@pytest.mark.timeout(60)
def test_the_guard_sees_a_run(ip, run_cell, guard):
    """The 'nothing ran' check of these tests can fail: a valid cell leaves its markers."""
    run = run_cell(f"%%azpar -q -o {AZ_OUT} for x in range(3)\n{guard.marker}\nx")
    assert run.success, run.error
    assert len(list(guard.folder.iterdir())) >= 1
    assert len(guard.new_jobs()) == 1


def _usage_error(run, *fragments: str) -> str:
    assert not run.success
    assert isinstance(run.error, UsageError), f"expected a UsageError, got {run.error!r}"
    message = str(run.error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize("line, fragments", [
    ("-o r x in range(3)", ["needs a loop header", "for TARGET in ITERABLE"]),
    ("-o r", ["needs a loop header"]),
    ("-o r for x in", ["'for x in'", "not valid Python"]),
    ("-o r for x", ["'for x'", "not valid Python"]),
    ("))) for (((", ["not valid Python"]),
    ("for x in range(3) garbage here", ["'for x in range(3) garbage here'", "not valid Python"]),
    ("for 1 in range(3)", ["not valid Python"]),
    ("while True", ["needs a loop header"]),
    # a header going on over lines: IPython hands the magic its first line only
    ("-o r for x in [1,", ["ends inside an open bracket", "'-o r for x in [1,'", "xs = [...]", "Nothing was submitted"]),
    ("-o r for x in range(3", ["ends inside an open bracket"]),
], ids=["no_for", "options_only", "no_iterable", "no_in", "garbage", "trailing_garbage", "literal_target",
        "while", "open_bracket", "open_paren"])
def test_malformed_header(run_cell, guard, line, fragments):
    run = run_cell(f"%%azpar {line}\nx = 1\n{guard.marker}\nx")
    _usage_error(run, *fragments)
    guard.assert_nothing_submitted()


@pytest.mark.parametrize("options", ["", "--cache "])
def test_a_module_of_the_notebooks_that_cannot_be_read_is_named(run_cell, guard, tmp_path, monkeypatch, options):
    """A module beside the notebook that is not UTF-8 and declares no encoding: the cell said "'utf-8' codec
    can't decode byte 0xe9" without naming the file, and with --cache it raised UnicodeDecodeError."""
    (tmp_path / "azpar_undecodable.py").write_bytes(b'NAME = "caf\xe9"\n')
    monkeypatch.chdir(tmp_path)
    run = run_cell(f"%%azpar {options}-o r for x in range(3)\n{guard.marker}\nimport azpar_undecodable\nx")
    _usage_error(run, "azpar_undecodable.py cannot travel to the workers", "coding: latin-1", "Nothing was submitted")
    guard.assert_nothing_submitted()


# ------------------------------------------------------------------------ the body


@pytest.mark.parametrize("body, line, word", [
    ("break", 2, "`break`"),
    ("y = x\nif y > 1:\n    break", 4, "`break`"),
    ("for k in range(3):\n    pass\nelse:\n    break", 5, "`break`"),  # the else of an inner loop is outside it
    ("return x", 2, "`return`"),
    ("if x:\n    return x * 2", 3, "`return`"),
    ("yield x", 2, "`yield`"),
    ("y = (yield x)", 2, "`yield`"),
    ("yield from range(x)", 2, "`yield`"),
], ids=["break", "break_in_if", "break_in_inner_loop_else", "return", "return_in_if", "yield", "yield_expr",
        "yield_from"])
def test_break_return_yield_refused(run_cell, guard, body, line, word):
    run = run_cell(f"%%azpar -o r for x in range(3)\n{guard.marker}\n{body}")
    _usage_error(run, word, f"Line {line + 1} of the cell", "Nothing was submitted")
    guard.assert_nothing_submitted()


@pytest.mark.timeout(60)
def test_break_return_yield_in_nested_scopes_are_fine(ip, run_cell, guard):
    body = ("found = None\n"
            "for k in range(10):\n"
            "    if k * k > x:\n"
            "        found = k\n"
            "        break\n"
            "else:\n"
            "    found = -1\n"
            "def first_even(v):\n"
            "    for j in range(v, v + 3):\n"
            "        if j % 2 == 0:\n"
            "            return j\n"
            "def gen(v):\n"
            "    yield v\n"
            "    yield v + 1\n"
            "i = 0\n"
            "while True:\n"
            "    i += 1\n"
            "    if i >= x:\n"
            "        break\n"
            "(found, first_even(x), list(gen(x)), i)")
    run = run_cell(f"%%azpar -q -o {AZ_OUT} for x in range(12)\n{body}")
    assert run.success, run.error
    parallel = ip.user_ns[AZ_OUT]
    seq = run_sequential(ip, run_cell, "for x in range(12)", body)
    same(parallel, seq.values)


# ---------------------------------------------------------------- what can't be shipped

UNSHIPPABLE_SETUP = """
import threading
lock = threading.Lock()
fh = open(__file_path__)
gen = (i for i in range(3))
def uses_lock(v):
    with lock:
        return v
class Holder:
    pass
holder = Holder()
holder.rlock = threading.RLock()
"""


@pytest.fixture
def unshippable(ip, run_cell, guard, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("some data\n")
    ip.user_ns["__file_path__"] = str(path)
    setup = run_cell(UNSHIPPABLE_SETUP)
    assert setup.success, setup.error
    yield
    ip.user_ns["fh"].close()


@pytest.mark.parametrize("body, name, type_name", [
    ("with lock:\n    y = x\ny", "lock", "lock"),
    ("uses_lock(x)", "lock", "lock"),  # reached through a notebook function's globals
    ("fh.readline() + str(x)", "fh", "TextIOWrapper"),
    ("next(gen) + x", "gen", "generator"),
    ("holder.rlock is not None", "holder", "Holder"),  # an object holding a lock
], ids=["lock", "lock_via_function", "open_file", "generator", "object_holding_rlock"])
def test_needed_unpicklable_object_is_named(run_cell, guard, unshippable, body, name, type_name):
    run = run_cell(f"%%azpar -o r for x in range(4)\n{guard.marker}\n{body}")
    message = _usage_error(run, f"`{name}`", type_name, "Nothing was submitted")
    # ...and why: something about the process owning it.
    assert any(word in message for word in ("process", "copied", "handle")), message
    # ...and, when the body never names it, which of the notebook's functions reads it.
    assert ("; `uses_lock` reads it)" in message) == body.startswith("uses_lock"), message
    guard.assert_nothing_submitted()


def test_a_script_is_told_the_fix_in_keywords_not_flags(ip, guard, unshippable):
    """azpar_magic.map and run told a script to "pass --no-export lock", a flag it has no way to give."""
    with pytest.raises(ValueError) as raised:
        azpar_magic.map(ip.user_ns["uses_lock"], [1])
    message = str(raised.value)
    assert "`uses_lock` reads it" in message and "pass no_export='lock' if" in message, message
    assert "--no-export" not in message, message
    # map's caller wrote a function, not a loop body: the message speaks of that function
    assert message.startswith("The function given to map needs the variable `lock`"), message
    assert "Create it inside the function given to map instead" in message and "loop body" not in message, message
    with pytest.raises(ValueError, match=r"^export names nope, which the namespace does not define"):
        azpar_magic.run("for x in range(2)", "x", {}, export="nope")
    guard.assert_nothing_submitted()


def test_the_part_that_cannot_be_sent_is_named_where_the_body_reaches_it(run_cell, guard, unshippable):
    """A notebook object holding a lock named only the object and the lock's type: a model or a client
    with many attributes left the user to search. The path is spelt as the body would reach it, for
    a variable and for an item alike."""
    run = run_cell(f"%%azpar -o r for x in range(4)\n{guard.marker}\nholder.rlock is not None")
    _usage_error(run, "`holder`", "(at `holder.rlock`)", "Nothing was submitted")
    run = run_cell(f"%%azpar -o r for h in [1, [2, holder]]\n{guard.marker}\nh")
    _usage_error(run, "item 1", "(at `item[1].rlock`)", "Nothing was submitted")
    guard.assert_nothing_submitted()


@pytest.mark.timeout(60)
def test_a_managers_proxy_is_refused_before_anything_is_submitted(ip, run_cell, guard):
    """A Manager list pickles, so it used to reach the workers and fail there on every iteration
    ("digest sent was rejected"): the workers cannot reach a manager of this kernel."""
    setup = run_cell("import multiprocessing\nmanager = multiprocessing.Manager()\nshared = manager.list()")
    assert setup.success, setup.error
    try:
        run = run_cell(f"%%azpar -o r for x in range(4)\n{guard.marker}\nshared.append(x)\nx")
        message = _usage_error(run, "`shared`", "ListProxy", "Nothing was submitted")
        assert "manager" in message and "cannot reach" in message, message
        guard.assert_nothing_submitted()
    finally:
        ip.user_ns.pop("shared", None)
        ip.user_ns.pop("manager").shutdown()


@pytest.mark.parametrize("options, fragments", [
    ("--chunk-size many", ["--chunk-size", "many", "Nothing was submitted"]),
    ("--chunk-size 1e3", ["--chunk-size", "1e3", "Nothing was submitted"]),
], ids=["word", "float"])
def test_a_chunk_size_that_is_not_a_number_says_nothing_was_submitted(ip, run_cell, guard, options, fragments):
    run = run_cell(f"%%azpar -o r {options} for x in range(3)\n{guard.marker}\nx")
    _usage_error(run, *fragments)
    guard.assert_nothing_submitted()


def test_unneeded_unpicklable_objects_are_ignored(ip, run_cell, guard, unshippable):
    run, job = run_cell_job(run_cell, f"%%azpar -q -o {AZ_OUT} for x in range(5)\n[i * x for i in range(3)]")
    assert run.success, run.error
    assert ip.user_ns[AZ_OUT] == [[i * x for i in range(3)] for x in range(5)]
    assert not {"lock", "fh", "gen", "holder", "uses_lock"} & set(job.capture.names)


@pytest.mark.timeout(60)
def test_no_export_drops_a_name_the_body_mentions_only_in_dead_code(ip, run_cell, guard, unshippable):
    run = run_cell(f"%%azpar -q --no-export lock -o {AZ_OUT} for x in range(3)\n"
                   "if False:\n    lock.acquire()\nx + 1")
    assert run.success, run.error
    assert ip.user_ns[AZ_OUT] == [1, 2, 3]


@pytest.mark.timeout(60)
def test_no_export_of_a_name_the_body_reads_is_warned_of_before_the_run(ip, run_cell, guard, capsys):
    """A name --no-export keeps out that the body, or a notebook function it calls, reads: each such
    iteration failed with a NameError on the workers, with nothing said before the run. It is said
    first now, as --no-export or no_export as the caller writes it; a body that binds the name first
    is not warned of."""
    setup = run_cell("nums = [1, 2]\ndef count(v):\n    return len(nums) + v\n")
    assert setup.success, setup.error
    said = "the loop body (or a function it calls) reads nums, which the workers will not have"
    for body in ("len(nums) + x", "count(x)"):
        run = run_cell(f"%%azpar -q --errors pass --no-export nums -o {AZ_OUT} for x in range(2)\n{body}")
        assert run.success, run.error
        assert f"azpar: warning: --no-export nums: {said}" in run.stderr, run.stderr
        assert all(isinstance(v, NameError) for v in ip.user_ns[AZ_OUT]), ip.user_ns[AZ_OUT]
    run = run_cell(f"%%azpar -q --no-export nums -o {AZ_OUT} for x in range(2)\nnums = [x]\nlen(nums)")
    assert run.success and "warning" not in run.stderr, run.stderr
    assert ip.user_ns[AZ_OUT] == [1, 1]
    capsys.readouterr()
    assert isinstance(azpar_magic.map(ip.user_ns["count"], [1], errors="pass", no_export="nums")[0], NameError)
    said = said.replace("the loop body", "the function given to map")  # (map's caller wrote no loop body)
    assert f"azpar: warning: no_export nums: {said}" in capsys.readouterr().err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "hint"), [
    ('input("name? ")', "(an iteration has no standard input: input() cannot ask anyone;"),
    ("get_ipython()", "(the body runs in a plain Python process on the workers, not in IPython: get_ipython"),
    ("undefined_thing", None),
], ids=["input", "get_ipython", "plain_name_error"])
def test_what_a_worker_lacks_is_said_beside_its_error(run_cell, guard, body, hint):
    """input() failed with a bare "EOF when reading a line" and get_ipython() with a bare NameError: a
    notebook has both, a worker has neither. The error now says why; other errors are unchanged."""
    run = run_cell(f"%%azpar -q --retries 0 -o {AZ_OUT} for x in range(1)\n{body}")
    assert isinstance(run.error, azpar_magic.IterationError), run.error
    message = run.error.error_message
    if hint is None:
        assert message == "name 'undefined_thing' is not defined", message
    else:
        assert hint in message, message


@pytest.mark.timeout(60)
def test_a_name_nothing_defines_is_said_before_the_run(ip, run_cell, guard, capsys):
    """`for x in xs: mylib.f(x)` after `import mylib` failed (a module not on the path), or with `np` for
    `numpy`, was submitted and failed with NameError on every worker: on Azure minutes later. It is said
    before the run; names the body binds anywhere (in one branch, in a loop), builtins, the notebook's
    names, and bodies that may bind names unseen (`import *`, `globals()`) are not named."""
    said = "which is not defined in the notebook (nor a builtin): each iteration that reaches it fails with NameError"
    run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(2)\nnp_typo.sqrt(x)")
    assert run.success, run.error
    assert f"azpar: warning: the loop body reads `np_typo`, {said}" in run.stderr, run.stderr
    assert all(isinstance(v, NameError) for v in ip.user_ns[AZ_OUT]), ip.user_ns[AZ_OUT]
    run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(2)\nfirst_typo(x) + second_typo")
    assert "reads `first_typo` and `second_typo`, which are not defined in the notebook (nor builtins)" in run.stderr
    assert "Define or import them in a cell first" in run.stderr, run.stderr
    setup = run_cell("defined_here = 3")
    assert setup.success
    quiet_bodies = (
        "for k in range(x + 1):\n    last = k\nlast",  # bound in a loop only
        "if x:\n    y = 1\nelse:\n    pass\ny if x else None",  # bound in one branch
        "def g(v):\n    return v + defined_here\ng(x)",
        "[i * 2 for i in range(x)] + [len(str(x))]",
        "from math import *\nsqrt(x)",
        "globals()['made'] = x\nmade",
        "try:\n    maybe\nexcept NameError:\n    maybe = None\nmaybe",
        "try:\n    use = maybe\nexcept NameError:\n    use = None\nuse",  # asks whether it exists
        "try:\n    use = maybe\nexcept (KeyError, Exception):\n    use = None\nuse",
    )
    for body in quiet_bodies:
        run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(2)\n{body}")
        assert run.success, (body, run.error)
        assert "not defined in the notebook" not in run.stderr, (body, run.stderr)
    capsys.readouterr()
    assert isinstance(azpar_magic.run("for x in range(1)", "helper_typo(x)", {}, errors="pass").result()[0], NameError)
    assert "the loop body reads `helper_typo`, which is not defined" in capsys.readouterr().err


def test_a_name_a_notebook_function_reads_and_nothing_defines_is_said_before_the_run(ip, run_cell, guard, capsys):
    """`def g(x): return np.sqrt(x)` in a notebook that imported `numpy`, called by the body (or given to
    map), failed with NameError on every worker, as the body's own misspelt name did before it was said.
    Not said: a global another function assigns, one the body binds, a read the function guards."""
    setup = run_cell(
        "import math\n"
        "def uses_typo(x):\n    return mth.sqrt(x) + other_typo\n"
        "def sets_cache(x):\n    global CACHED_HERE\n    CACHED_HERE = x\n    return x\n"
        "def reads_cache(x):\n    return CACHED_HERE + x\n"
        "def asks_first(x):\n    try:\n        return x + maybe_there\n    except NameError:\n        return x\n"
        "def reads_body_name(x):\n    return x + set_by_body\n"
        "typo_lambda = lambda v: v + lambda_typo\n"
    )
    assert setup.success, setup.error
    run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(2)\nuses_typo(x)")
    assert run.success, run.error
    assert "azpar: warning: `uses_typo` reads `mth` and `other_typo`: not defined in the notebook (nor builtins), " \
        "so each call that reaches them fails with NameError on the workers" in run.stderr, run.stderr
    assert all(isinstance(v, NameError) for v in ip.user_ns[AZ_OUT]), ip.user_ns[AZ_OUT]
    quiet = {
        "sets_cache(x)\nreads_cache(x)": [0, 2],
        "asks_first(x)": [0, 1],
        "set_by_body = 1\nreads_body_name(x)": [1, 2],
    }
    for body, values in quiet.items():
        run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(2)\n{body}")
        assert run.success, (body, run.error)
        assert "not defined in the notebook" not in run.stderr, (body, run.stderr)
        assert ip.user_ns[AZ_OUT] == values, (body, ip.user_ns[AZ_OUT])
    capsys.readouterr()
    values = azpar_magic.map(ip.user_ns["typo_lambda"], range(2), errors="pass")
    assert all(isinstance(v, NameError) for v in values), values
    assert "azpar: warning: a lambda reads `lambda_typo`: not defined" in capsys.readouterr().err


def test_unpicklable_item_is_a_usage_error(run_cell, guard):
    run = run_cell("%%azpar -o r for g in [iter([1]), (i for i in range(3))]\ng")
    _usage_error(run, "item 1", "generator")
    guard.assert_nothing_submitted()


@pytest.mark.timeout(60)
def test_value_that_cannot_be_sent_back_fails_only_its_iteration(ip, run_cell, guard):
    run = run_cell(f"%%azpar -q --errors pass -o {AZ_OUT} for x in range(4)\n"
                   "((i for i in range(3)) if x == 2 else x)")
    assert run.success, run.error
    values = ip.user_ns[AZ_OUT]
    assert values[:2] == [0, 1] and values[3] == 3
    assert isinstance(values[2], Exception)
    assert "iteration 2" in str(values[2]) and "could not be sent back" in str(values[2])


# -------------------------------------------------------------------------- iterables


def test_iterable_name_error(run_cell, guard):
    run = run_cell(f"%%azpar -o r for x in undefined_iterable_name\n{guard.marker}\nx")
    _usage_error(run, "undefined_iterable_name", "NameError", "Nothing was submitted")
    guard.assert_nothing_submitted()


def test_iterable_raising_mid_iteration(ip, run_cell, guard):
    setup = run_cell("def flaky_items():\n    yield 1\n    yield 2\n    raise RuntimeError('source went away')\n")
    assert setup.success
    run = run_cell(f"%%azpar -o r for x in flaky_items()\n{guard.marker}\nx")
    _usage_error(run, "flaky_items()", "RuntimeError", "source went away", "Nothing was submitted")
    guard.assert_nothing_submitted()


def test_combine_dict_with_unhashable_items(run_cell, guard):
    run = run_cell(f"%%azpar --combine dict -o r for x in [(1, 2), [3], [4]]\n{guard.marker}\nx")
    _usage_error(run, "--combine dict", "item 1", "[3]", "not hashable")
    guard.assert_nothing_submitted()


# ---------------------------------------------------------------------------- options


def test_unknown_option(run_cell, guard):
    run = run_cell(f"%%azpar --frobnicate 3 -o r for x in range(3)\n{guard.marker}\nx")
    assert "did you mean" not in _usage_error(run, "unknown %%azpar option --frobnicate", "Nothing was submitted")
    guard.assert_nothing_submitted()
    for typed, meant in (("--chunksize 2", "--chunk-size"), ("--retry 1", "--retries"), ("--no-exports=a", "--no-export")):
        run = run_cell(f"%%azpar {typed} -o r for x in range(3)\n{guard.marker}\nx")
        _usage_error(run, f"unknown %%azpar option {typed.split()[0]} (did you mean {meant}?)")
        guard.assert_nothing_submitted()


@pytest.mark.parametrize("options, fragments", [
    ("--chunk-size 0", ["--chunk-size", "not 0"]),
    ("--chunk-size -3", ["--chunk-size"]),
    ("--chunk-size many", ["--chunk-size", "many"]),
    ("--retries -1", ["--retries", "-1"]),
    ("--retries lots", ["--retries", "lots"]),
    ("--timeout 0", ["--timeout", "0"]),
    ("--timeout -5", ["--timeout"]),
    # a dashed value argparse took for an option ("expected one argument"): the option's own check says what is wrong
    ("--timeout -5s", ["--timeout", "above 0", "not -5.0"]),
    ("--timeout -1m", ["--timeout", "above 0", "not -60.0"]),
    ("--gather 1x", ["--gather", "'1x' is not", "does not start with a digit"]),
    ("--gather 1x,if", ["--gather", "'1x', 'if' are not", "nor is it a Python keyword"]),
    ("--combine NOT_CALLABLE", ["--combine", "NOT_CALLABLE", "callable", "int"]),
    ("--combine no_such_function", ["--combine", "no_such_function", "NameError"]),
    ("--errors ignore", ["--errors", "ignore"]),
    ("--workers 0", ["--workers"]),
    ("-o 2fast", ["-o", "2fast"]),
    ("--gather y,r", ["--gather", "r"]),
    ("--gather 'y z'", ["y z"]),
    ("--export not_defined_anywhere", ["--export", "not_defined_anywhere"]),
    # issue 13 item 3: values that passed argparse and then hung or killed the pool
    ("--timeout 3000000", ["--timeout", "604800", "3000000"]),
    ("--timeout inf", ["--timeout", "inf"]),
    ("--timeout nan", ["--timeout", "nan"]),
    ("--timeout 1e400", ["--timeout", "inf"]),
    ("--timeout soon", ["--timeout", "soon"]),
    ("--timeout 10x", ["--timeout", "10x", "10m"]),
    ("-o first -o second", ["-o is given twice", "-o first and -o second"]),
    ("--retries 1 --retries=3", ["--retries is given twice", "--retries 1 and --retries 3"]),
    ("--export a --export b", ["--export is given twice", "comma-separated (--export a,b)"]),
    # argparse takes a unique prefix of a long option for it: the last value won silently
    ("--combine sum --comb list", ["--combine is given twice", "--combine sum and --combine list"]),
    ("--chunk-size 1 --chunk=2", ["--chunk-size is given twice", "--chunk-size 1 and --chunk-size 2"]),
    ("--timeout 8d", ["--timeout", "604800", "691200"]),
    ("--timeout m", ["--timeout", "'m'"]),
    ("--retries 1000", ["--retries", "100", "1000"]),
    ("--retries 2.5", ["--retries", "2.5"]),
    ("--chunk-size 2.5", ["--chunk-size", "2.5"]),
    ("--workers 100000", ["--workers", "100000", "per CPU"]),
    ("--workers -1", ["--workers", "-1"]),
    ("--workers two", ["--workers", "two"]),
    ("--seed -1", ["--seed", "-1"]),
    ("--seed 1e3", ["--seed", "1e3"]),
    ("--seed 18446744073709551616", ["--seed", "2**64-1"]),
    # issue 13 item 8: keywords pass str.isidentifier but can be neither bound nor assigned
    ("-o class", ["-o", "class", "keyword"]),
    ("-o None", ["-o", "None", "keyword"]),
    ("--gather class", ["--gather", "class", "keyword"]),
    ("--export lambda", ["--export", "lambda", "keyword"]),
    ("--no-export True", ["--no-export", "True", "keyword"]),
    ("--packages 'x; rm -rf /'", ["--packages", "x; rm -rf /"]),
    ("--packages 'x==1.0,https://evil/x.whl'", ["--packages", "https://evil/x.whl"]),
    ("--combine 'lambda rows: [r for r in'", ["--combine", "SyntaxError"]),
    ("--combine lambda rows: [v for v in rows]", ["unrecognized arguments", "must be quoted"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_option_values(ip, run_cell, guard, options, fragments):
    ip.user_ns["NOT_CALLABLE"] = 3
    output = "" if options.startswith("-o ") else "-o r "  # (given twice with another value is refused as such)
    run = run_cell(f"%%azpar {output}{options} for x in range(3)\ny = x\n{guard.marker}\nx")
    _usage_error(run, *fragments, "Nothing was submitted")
    guard.assert_nothing_submitted()


@pytest.mark.parametrize("options", [
    pytest.param({"errors": "ignore"}, id="errors"),
    pytest.param({"workers": 0}, id="workers_0"),
    pytest.param({"combine": "nonsense"}, id="combine_nonsense"),
    pytest.param({"chunk_size": 0}, id="chunk_size_0"),
    pytest.param({"chunk_size": -2}, id="chunk_size_negative"),
    pytest.param({"timeout": 0}, id="timeout_0"),
    pytest.param({"timeout": -1}, id="timeout_negative"),
    pytest.param({"retries": -1}, id="retries_negative"),
    pytest.param({"retries": 1000}, id="retries_huge"),
    pytest.param({"retries": True}, id="retries_bool"),
    pytest.param({"timeout": 3_000_000}, id="timeout_huge"),
    pytest.param({"timeout": float("inf")}, id="timeout_inf"),
    pytest.param({"timeout": float("nan")}, id="timeout_nan"),
    pytest.param({"timeout": "5 minutes"}, id="timeout_str"),
    pytest.param({"timeout": "0s"}, id="timeout_str_0"),
    pytest.param({"timeout": "8d"}, id="timeout_str_huge"),
    pytest.param({"chunk_size": 2.0}, id="chunk_size_float"),
    pytest.param({"seed": -1}, id="seed_negative"),
    pytest.param({"seed": 2**64}, id="seed_huge"),
    pytest.param({"gather": ["class"]}, id="gather_keyword"),
])
def test_python_api_refuses_bad_option_values(guard, options):
    job = None
    try:
        with pytest.raises(ValueError) as info:
            job = azpar_magic.run("for x in range(3)", guard.marker + "\nx", {}, **options)
        assert str(next(iter(options))).split("_")[0] in str(info.value)
        guard.assert_nothing_submitted()
    finally:
        if job is not None:
            job.cancel()
            job.wait(1)


def test_python_api_takes_the_timeout_forms_the_magic_takes(guard):
    """``--timeout 10m`` worked in a cell while ``run(..., timeout="10m")`` and ``map(..., timeout="10m")`` were
    refused: the API reads the same forms (jobs.text.parse_duration)."""
    job = azpar_magic.run("for x in range(2)", "x", {}, timeout="10m")
    assert job.result() == [0, 1] and job.options.timeout == 600
    mapped = azpar_magic.map(abs, [-1], timeout="1.5h", wait=False)
    assert mapped.result() == [1] and mapped.options.timeout == 5400
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds, or a string with a unit \(90s"):
        azpar_magic.map(abs, [-1], timeout="soon")
    for muddled in ("30m1h", "1h1h", "1:75:00"):  # units out of order or twice, a clock's 75 minutes
        with pytest.raises(ValueError, match="1h30m, 1:30:00"):
            azpar_magic.map(abs, [-1], timeout=muddled)
    assert azpar_magic.map(abs, [-1], timeout="1h30m", wait=False).options.timeout == 5400


@pytest.mark.parametrize(("loop", "body", "error", "said"), [
    # The magic line pasted: the options were dropped in silence (a list came back, not the sum).
    ("--combine sum for x in range(3)", "x", ValueError, "'--combine sum' before it are the magic's options"),
    ("-o total for x in range(3)", "x", ValueError, "'-o total' before it"),
    ("x in range(3)", "x", ValueError, "run's loop is a `for TARGET in ITERABLE` clause"),  # not "the %%azpar line"
    ("for x in range(3)", "  \n", ValueError, "run's body is empty"),  # not "the lines after the %%azpar line"
    (b"for x in range(3)", "x", TypeError, "run's loop is a str, not bytes"),  # failed inside the tokenizer
    ("for x in range(3)", None, TypeError, "run's body is a str, not NoneType"),
])
def test_python_api_refuses_a_loop_or_body_it_cannot_take_in_its_own_terms(guard, loop, body, error, said):
    with pytest.raises(error) as info:
        azpar_magic.run(loop, body, {})
    assert said in str(info.value), str(info.value)
    assert "%%azpar line" not in str(info.value)
    guard.assert_nothing_submitted()


@pytest.mark.timeout(60)
def test_option_bounds_are_inclusive(ip, run_cell, guard):
    """The largest accepted values run, and the pool still serves the next cell."""
    run = run_cell(f"%%azpar -q -o r --timeout 604800 --retries 100 --seed {2**64 - 1} --chunk-size 1 "
                   f"for x in range(3)\n{guard.marker}\nx")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 1, 2]
    again = run_cell("%%azpar -q -o r for x in range(2)\nx + 1")
    assert again.success and ip.user_ns["r"] == [1, 2]


@pytest.mark.timeout(60)
def test_failing_combine_callable_keeps_the_values(ip, run_cell, guard):
    setup = run_cell("def picky(values):\n    raise TypeError('picky cannot combine ' + str(len(values)))\n")
    assert setup.success
    run, job = run_cell_job(run_cell, "%%azpar -q --combine picky -o r for x in range(4)\nx * 3")
    _usage_error(run, "could not be combined", "picky cannot combine 4", "partial_results")
    assert "r" not in ip.user_ns
    assert job.partial_results() == {0: 0, 1: 3, 2: 6, 3: 9}


# ---------------------------------------------------------------------- empty iterable


@pytest.mark.parametrize("combine, expected", [("list", []), ("dict", {}), ("sum", 0)])
def test_empty_iterable_starts_nothing(ip, run_cell, guard, combine, expected):
    workers = 5  # a pool size no other test uses: this engine's pool must never start
    ip.user_ns.pop(AZ_OUT, None)
    run, job = run_cell_job(run_cell, f"%%azpar -q --workers {workers} --combine {combine} -o {AZ_OUT} "
                                      f"for x in []\n{guard.marker}\nx")
    assert run.success, run.error
    result = ip.user_ns[AZ_OUT]
    assert result == expected and type(result) is type(expected)
    backend = session.engine(None, workers).backend
    assert not backend._workers and backend._thread is None, "an empty loop started worker processes"
    assert job.done and not job.tasks
    assert not list(guard.folder.iterdir())


def test_empty_iterable_through_the_python_api(guard):
    job = azpar_magic.run("for x in ()", guard.marker, {}, combine="sum", workers=5)
    assert job.result(timeout=5) == 0
    assert not session.engine(None, 5).backend._workers


# ------------------------------------------------------------------------------ help

OPTIONS = ["-o NAME", "--combine", "--gather", "--errors", "--retries", "--chunk-size", "--seed", "--timeout",
           "--export", "--no-export", "--no-wait", "--quiet", "--workers"]


def test_help_shows_the_generated_option_help(ip):
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        ip.run_line_magic("pinfo", "%%azpar")
    text = captured.stdout
    assert "for TARGET in ITERABLE" in text
    for option in OPTIONS:
        assert option in text, f"{option} missing from %%azpar? output"
    assert "stop" in text and "remove" in text and "pass" in text
    doc = ip.find_cell_magic("azpar").__doc__
    for option in OPTIONS:
        assert option in doc
    assert "%%azpar [-o NAME]" in doc  # the generated usage line names the cell magic


def test_line_magic_misuse(run_cell):
    _usage_error(run_cell("%azpar"), "collect")
    _usage_error(run_cell("%azpar frobnicate"), "frobnicate")
    _usage_error(run_cell("%azpar collect no-such-job-id"), "no-such-job-id")


# ------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["__reduce__", "__getstate__"])
def test_ctrl_c_during_capture_says_nothing_was_submitted(ip, run_cell, guard, method):
    """Ctrl-C while the namespace is pickled (simulated: the pickling itself raises
    KeyboardInterrupt) gives one line, no traceback from inside pickling, and no job."""
    ip.run_cell(f"class SlowToPickle:\n    def {method}(self):\n        raise KeyboardInterrupt\n"
                "slow = SlowToPickle()")
    run = run_cell(f"%%azpar -o r for x in range(3)\n{guard.marker}\nslow\nx")
    message = _usage_error(run, "Interrupted", "nothing was submitted")
    assert "\n" not in message
    shown = run.stdout + run.stderr
    assert "Traceback" not in shown and method not in shown and "pickle" not in shown
    guard.assert_nothing_submitted()
    again = run_cell("%%azpar -q -o r for x in range(2)\nx")  # the kernel and pool are fine
    assert again.success and ip.user_ns["r"] == [0, 1]


@pytest.mark.parametrize("command", ["collect -o class", "collect -o None", "rerun -o lambda", "attach -o True"])
def test_line_magic_output_name_keyword_is_refused(ip, run_cell, command):
    _usage_error(run_cell(f"%azpar {command}"), "-o", "variable name")
    assert "class" not in ip.user_ns and "None" not in ip.user_ns

"""``azpar_magic.map`` / ``starmap``: the cell's job for a function.

The differential corpus (tests/test_differential.py) is turned into functions: each case's
body becomes a function of the loop target defined in the shell's ``__main__``, its setup
defines what the body calls, and ``map`` (``starmap`` where the loop target unpacks) must
give exactly the plain ``[f(x) for x in items]`` of the same shell, under each error policy.
Scripts (a function of ``__main__``, a lambda, a closure, a partial, an imported module's
function) run in a real subprocess; one map runs on the test Batch service.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import azpar_magic
from azpar_magic import jobstore

from .helpers_corpus import Case, notebook_classes, same
from .test_bad_input import Guard
from .test_differential import CASES, clean_shell, prepare_case  # noqa: F401 (clean_shell is a fixture)

FN = "__azmap_fn"
ARG = "__azmap_arg"


def _target_unpacks(header: str) -> bool:
    text = header.strip().removesuffix(":")
    loop = ast.parse(text + ":\n    pass\n").body[0]
    return isinstance(loop.target, (ast.Tuple, ast.List))


def function_source(case: Case, star: bool) -> str:
    """``def __azmap_fn(arg)`` (``(*args)`` for starmap) binding the case's loop target and
    running its body; the value of its last expression is returned, as the cell's value."""
    text = case.header.strip().removesuffix(":")
    loop = ast.parse(text + ":\n    pass\n").body[0]
    body = ast.parse(case.body).body
    if body and isinstance(body[-1], ast.Expr):
        body[-1] = ast.Return(body[-1].value)
    bind = ast.Assign(targets=[loop.target], value=ast.Name(ARG, ast.Load()), lineno=1)
    args = ast.arguments(posonlyargs=[], args=[] if star else [ast.arg(ARG)], vararg=ast.arg(ARG) if star else None,
                         kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])
    fn = ast.FunctionDef(FN, args, [bind, *body], [], None, type_params=[]) if sys.version_info >= (3, 12) \
        else ast.FunctionDef(FN, args, [bind, *body], [], None)
    return ast.unparse(ast.fix_missing_locations(ast.Module([fn], [])))


def _usable(case: Case) -> bool:
    """Cases a function expresses: not ``continue`` (a loop statement) nor display()
    (the cell's rich output, which map keeps in the job rather than showing)."""
    return "continue" not in case.body and "display(" not in case.body


def _map_options(case: Case) -> dict:
    words = case.options.split()
    options: dict = {"errors": case.errors}
    for flag, value in zip(words[::2], words[1::2]):
        options[{"--chunk-size": "chunk_size", "--export": "export"}[flag]] = (
            int(value) if flag == "--chunk-size" else value.split(","))
    if case.files:
        options["chunk_size"] = 1000  # one worker installs the shipped modules (see check_case)
    return options


def _sequential(fn, items: list, errors: str):
    """The plain loop: values (exceptions kept under pass, dropped under remove), and the
    first failure with its index under stop."""
    values = []
    for index, item in enumerate(items):
        try:
            values.append(fn(item))
        except Exception as exc:
            if errors == "stop":
                return values, (index, item, exc)
            if errors == "pass":
                values.append(exc)
    return values, None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if _usable(c)])
def test_map_equals_the_sequential_calls(case: Case, ip, run_cell, tmp_path, clean_shell):  # noqa: F811
    prepare_case(case, run_cell, tmp_path)
    star = _target_unpacks(case.header)
    defined = run_cell(function_source(case, star))
    assert defined.success, defined.error
    fn = ip.user_ns[FN]
    assert sys.modules["__main__"].__dict__ is ip.user_ns, "the shell's namespace is not __main__'s"
    iterable = case.header.strip().removesuffix(":").split(" in ", 1)[1]
    items = list(eval(iterable, ip.user_ns))
    call = (lambda item: fn(*item)) if star else fn
    classes = notebook_classes(ip.user_ns)
    expected, failure = _sequential(call, items, case.errors)

    run = azpar_magic.starmap if star else azpar_magic.map
    if failure is None:
        got = run(fn, eval(iterable, ip.user_ns), **_map_options(case))
        same(got, expected, classes)
        if case.check:
            case.check(ip, got, None)
        return
    index, item, exc = failure
    with pytest.raises(azpar_magic.IterationError) as info:
        run(fn, eval(iterable, ip.user_ns), **_map_options(case))
    err = info.value
    assert (err.index, err.item_repr) == (index, repr(item))
    assert err.error_type.rsplit(".", 1)[-1] == type(exc).__name__
    assert err.error_message == str(exc)
    assert f"in {FN}" in err.remote_traceback, err.remote_traceback  # the user's function, by its name
    if case.check:
        case.check(ip, err, None)


def test_the_corpus_gives_map_and_starmap_enough_cases():
    usable = [c for c in CASES if _usable(c)]
    assert len(usable) >= 50
    assert sum(_target_unpacks(c.header) for c in usable) >= 5  # starmap
    assert {c.errors for c in usable} == {"stop", "remove", "pass"}


@pytest.mark.timeout(60)
def test_map_runs_lambdas_closures_partials_and_module_functions(ip, run_cell, clean_shell):  # noqa: F811
    import functools

    setup = run_cell("K = 7\ndef make(n):\n    return lambda v: v * n + K\nadd = make(3)\n")
    assert setup.success, setup.error
    assert azpar_magic.map(ip.user_ns["add"], range(4)) == [7, 10, 13, 16]
    assert azpar_magic.map(lambda v: -v, [1, 2]) == [-1, -2]
    assert azpar_magic.map(functools.partial(pow, 2), range(4), chunk_size=1) == [1, 2, 4, 8]
    assert azpar_magic.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
    assert azpar_magic.map(len, []) == []


@pytest.mark.timeout(60)
def test_map_ships_what_the_function_reads_and_nothing_else(ip, run_cell, clean_shell):  # noqa: F811
    setup = run_cell("import threading\nUNRELATED = threading.Lock()\nSCALE = 3\n"
                     "def scaled(v):\n    return v * SCALE\n")
    assert setup.success, setup.error
    job = azpar_magic.map(ip.user_ns["scaled"], range(3), wait=False)
    assert job.result(timeout=30) == [0, 3, 6]
    assert set(job.capture.names) == {"scaled", "SCALE"}  # not the lock, not the rest of __main__
    assert job.source.splitlines()[1] == "scaled(__azpar_item__)"  # a notebook function by its own name


@pytest.mark.timeout(60)
def test_map_under_seed_gives_the_cells_streams(ip, run_cell, clean_shell):  # noqa: F811
    setup = run_cell("import random\ndef draw(i):\n    return random.random()\n")
    assert setup.success, setup.error
    cell = run_cell("%%azpar -q -o __seeded --seed 11 for i in range(6)\ndraw(i)")
    assert cell.success, cell.error
    assert azpar_magic.map(ip.user_ns["draw"], range(6), seed=11, chunk_size=4) == ip.user_ns["__seeded"]


SCRIPT = '''
import functools, sys
import azpar_magic
from helper_mod import triple

OFFSET = 100

def shifted(v):
    return v + OFFSET

def make_closure(k):
    def inner(v):
        return v * k + OFFSET
    return inner

if __name__ == "__main__":
    print(azpar_magic.map(shifted, range(3), workers=2))
    print(azpar_magic.map(lambda v: v - OFFSET, range(3)))
    print(azpar_magic.map(make_closure(5), range(3)))
    print(azpar_magic.map(functools.partial(shifted), [1]))
    print(azpar_magic.map(triple, range(3)))
    print(azpar_magic.starmap(max, [(1, 9), (8, 2)]))
    job = azpar_magic.map(shifted, range(4), wait=False)
    print(sorted(job.as_completed()))
'''


@pytest.mark.timeout(90)
def test_map_from_a_script(tmp_path):
    """A script's own functions (its __main__), lambdas, closures and a function of a module
    beside it (shipped with the job: the pool's workers do not have it)."""
    (tmp_path / "helper_mod.py").write_text("def triple(v):\n    return 3 * v\n")
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZPAR_") or k == "AZPAR_JOB_STORE"}
    env["PYTHONPATH"] = str(Path(azpar_magic.__file__).parents[1])  # this checkout's package, whatever is installed
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=80)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[100, 101, 102]", "[-100, -99, -98]", "[100, 105, 110]", "[101]",
                                        "[0, 3, 6]", "[9, 8]", "[(0, 100), (1, 101), (2, 102), (3, 103)]"]


# ------------------------------------------------------------------------------ errors


def test_map_errors_policy_and_the_failure(ip, run_cell, clean_shell):  # noqa: F811
    setup = run_cell("def inv(v):\n    return 1 / v\n")
    assert setup.success, setup.error
    inv = ip.user_ns["inv"]
    assert azpar_magic.map(inv, [1, 0, 2], errors="remove") == [1.0, 0.5]
    passed = azpar_magic.map(inv, [1, 0, 2], errors="pass")
    assert isinstance(passed[1], ZeroDivisionError) and passed[::2] == [1.0, 0.5]
    with pytest.raises(azpar_magic.IterationError) as info:
        azpar_magic.map(inv, [1, 0, 2])
    assert info.value.index == 1 and "return 1 / v" in info.value.remote_traceback
    # No "(cell line 2)": map's one-line cell is not the user's; the traceback says where in the function.
    assert info.value.line is None and "cell line" not in str(info.value), str(info.value)




FAILING_SCRIPT = """
import azpar_magic

class Refused(Exception):
    def __init__(self, code, why):  # arguments of its own: the error cannot be made by calling it
        super().__init__(code, why)
        self.code = code

class Sealed(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("no subclasses")

def check(x):
    if x == 2:
        raise Refused(7, "two is refused")
    return x

def sealed(x):
    raise Sealed("sealed")

if __name__ == "__main__":
    try:
        azpar_magic.map(check, [1, 2, 3])
    except Refused as exc:
        print("Refused", exc.code, exc.args, exc.index, isinstance(exc, azpar_magic.IterationError),
              exc.exception.args)
    try:
        azpar_magic.map(lambda k: {"a": 1}[k], ["a", "b"])
    except KeyError as exc:
        print("KeyError", exc.args)
    try:
        azpar_magic.map(lambda p: open(p).read(), ["/nonexistent-azpar/x.csv"])
    except FileNotFoundError as exc:
        print("FileNotFoundError", exc.errno, exc.filename, exc.strerror)
    try:
        azpar_magic.map(sealed, [1])
    except Sealed:
        print("Sealed caught")
    except azpar_magic.IterationError as exc:
        print("IterationError", type(exc.exception).__name__)
    job = azpar_magic.map(check, [2], wait=False)
    for caught in (job.result, lambda: next(iter(job.as_completed()))):
        try:
            caught()
        except Refused as exc:
            print("again", exc.code)
    azpar_magic.map(check, [1, 2])
"""


@pytest.mark.timeout(90)
def test_a_failed_iteration_is_caught_by_its_exception_class_and_a_script_prints_the_remote_traceback(tmp_path):
    """``except KeyError`` (or the script's own class) around ``map`` or ``job.result()`` did not catch a
    failed iteration, as it does around concurrent.futures, joblib and dask: the error is now also an
    instance of the iteration's exception class, with its args and attributes (the C members of an
    OSError too); a class that refuses subclasses gives a plain IterationError. And a script that
    did not catch it printed one line about the iteration and none of its remote traceback: the
    traceback is the error's cause now, printed above it."""
    (tmp_path / "script.py").write_text(FAILING_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZPAR_") or k == "AZPAR_JOB_STORE"}
    env["PYTHONPATH"] = str(Path(azpar_magic.__file__).parents[1])
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=80)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.splitlines() == [
        "Refused 7 (7, 'two is refused') 1 True (7, 'two is refused')",
        "KeyError ('b',)",
        "FileNotFoundError 2 /nonexistent-azpar/x.csv No such file or directory",
        "IterationError Sealed",
        "again 7",
        "again 7",
    ], done.stderr
    remote, _, local = done.stderr.partition("The above exception was the direct cause of the following exception")
    assert 'raise Refused(7, "two is refused")' in remote and "Refused: (7, 'two is refused')" in remote, remote
    assert local.rstrip().splitlines()[-1].startswith(
        "azpar_magic.errors.IterationError: iteration 1 (item 2) raised Refused: (7, 'two is refused')."), local


NESTED = """
def tenfold(v):
    return 10 * v

def nested(n):
    import os
    import azpar_magic
    return (os.environ.get("AZPAR_IN_TASK"), azpar_magic.map(tenfold, range(n)),
            azpar_magic.map(lambda v: 1 / v, [1, 0], errors="pass"), azpar_magic.map(abs, [-1, 0], errors="remove"))

def nested_failing(n):
    import azpar_magic
    return azpar_magic.map(lambda v: 1 / v, [1, 0])

def nested_no_wait(n):
    import azpar_magic
    return azpar_magic.map(abs, [n], wait=False)

def nested_run(n):
    import azpar_magic
    return azpar_magic.run("for v in range(n)", "v", {"n": n}).result()

def nested_rerun(n):
    import azpar_magic
    return azpar_magic.rerun()
"""


@pytest.mark.timeout(60)
def test_map_over_several_iterables_calls_with_one_argument_from_each(ip, run_cell, clean_shell):  # noqa: F811
    """``map(f, xs, ys)``, as the built-in map, ``Executor.map``, dask's and ipyparallel's take it, was a
    TypeError (map takes 2 positional arguments): each call now takes one argument from each iterable,
    stopping at the shortest, with map's options and errors, also inside a task."""
    import itertools

    setup = run_cell("def weighted(x, w, bias=0):\n    return x * w + bias\n")
    assert setup.success, setup.error
    weighted = ip.user_ns["weighted"]
    assert azpar_magic.map(weighted, [1, 2, 3], [10, 20, 30, 40]) == [10, 40, 90]
    assert azpar_magic.map(weighted, range(3), itertools.repeat(2), [5, 5, 5], chunk_size=1) == [5, 7, 9]
    assert azpar_magic.map(lambda a, b: a / b, [1, 2], [0, 4], errors="pass")[1] == 0.5
    job = azpar_magic.map(pow, iter([2, 3]), (x for x in [3, 2]), wait=False)
    assert job.result() == [8, 9] and job.items == ((2, 3), (3, 2)), job.items
    with pytest.raises(azpar_magic.IterationError) as info:
        azpar_magic.map(weighted, [1], ["a", None])
    assert info.value.error_type.endswith("TypeError") and info.value.item_repr == "(1, 'a')", info.value
    with pytest.raises(TypeError, match="^azpar_magic.map takes a function"):
        azpar_magic.map(3, [1], [2])
    with pytest.raises(ValueError, match="^Iterating over iterable 2 given to map raised TypeError: 'int' object"):
        azpar_magic.map(weighted, [1], 5)
    inner = run_cell("def pairs(n):\n    import azpar_magic\n    return azpar_magic.map(divmod, range(n), [2] * n)\n")
    assert inner.success, inner.error
    assert azpar_magic.map(ip.user_ns["pairs"], [3]) == [[(0, 0), (0, 1), (1, 0)]]


@pytest.mark.timeout(60)
def test_map_called_by_an_iteration_runs_its_calls_there(ip, run_cell, clean_shell):  # noqa: F811
    """A function that calls azpar_magic.map, mapped itself: each nested call started a local pool inside
    the worker (a process per CPU, on cores the outer job already fills) and stored a job of its own
    (three jobs for two items). The calls now run in the worker, one after the other, with map's errors
    policy, and only the outer job is made."""
    setup = run_cell(NESTED)
    assert setup.success, setup.error
    stored = len(azpar_magic.jobs(stored=True))
    got = azpar_magic.map(ip.user_ns["nested"], [2, 3])
    assert [(flag, tens, kept) for flag, tens, _, kept in got] == [("1", [0, 10], [1, 0]), ("1", [0, 10, 20], [1, 0])]
    for _, _, passed, _ in got:
        assert passed[0] == 1.0 and isinstance(passed[1], ZeroDivisionError), passed
    jobstore.flush()
    assert len(azpar_magic.jobs(stored=True)) == stored + 1, "a nested call made a job of its own"
    with pytest.raises(azpar_magic.IterationError) as info:  # the first exception goes through, as itself
        azpar_magic.map(ip.user_ns["nested_failing"], [1])
    assert info.value.error_type.endswith("ZeroDivisionError"), info.value
    with pytest.raises(azpar_magic.IterationError) as info:
        azpar_magic.map(ip.user_ns["nested_no_wait"], [1])
    assert "was called inside an azpar task" in info.value.error_message, info.value


@pytest.mark.parametrize(("name", "what"), [("nested_run", "azpar_magic.run"), ("nested_rerun", "azpar_magic.rerun")])
def test_run_or_rerun_called_by_an_iteration_is_refused_saying_what_to_call(
    ip, run_cell, clean_shell, name, what  # noqa: F811
):
    """azpar_magic.run (or rerun) called by an iteration started a pool of its own in the worker, on
    cores the outer job already fills, and stored a job per call. It is refused there, naming map
    (which runs its calls in place) and a plain loop; the outer job is the only one stored."""
    setup = run_cell(NESTED)
    assert setup.success, setup.error
    jobstore.flush()
    stored = len(azpar_magic.jobs(stored=True))
    with pytest.raises(azpar_magic.IterationError) as info:
        azpar_magic.map(ip.user_ns[name], [2])
    said = info.value.error_message
    assert info.value.error_type.endswith("ValueError"), info.value
    assert f"{what} was called inside an azpar task" in said and "azpar_magic.map(function, items)" in said, said
    jobstore.flush()
    assert len(azpar_magic.jobs(stored=True)) == stored + 1, "the nested call made a job of its own"


@pytest.fixture
def guard(ip, tmp_path, clean_shell):  # noqa: F811
    found = Guard(ip, tmp_path / "markers")
    run = ip.run_cell(f"def __azmap_marked(x):\n    {found.marker}\n    return x\n")
    assert run.success
    found.fn = ip.user_ns["__azmap_marked"]
    return found


def test_the_guard_sees_a_map(guard):
    """The 'nothing ran' check below can fail: a valid map leaves its markers."""
    assert azpar_magic.map(guard.fn, range(2)) == [0, 1]
    assert list(guard.folder.iterdir())


@pytest.mark.parametrize("options, fragments", [
    ({"errors": "ignore"}, ["errors must be one of stop, remove, pass, not 'ignore'"]),
    ({"chunk_size": 0}, ["chunk_size must be a positive whole number"]),
    ({"chunk_size": 2.0}, ["chunk_size must be a positive whole number"]),
    ({"retries": -1}, ["retries must be a whole number from 0 to 100"]),
    ({"retries": True}, ["retries must be a whole number"]),
    ({"timeout": 0}, ["timeout must be a number of seconds above 0"]),
    ({"timeout": float("nan")}, ["timeout must be a number of seconds"]),
    ({"seed": -1}, ["seed must be a whole number from 0 to 2**64-1"]),
    ({"workers": 0}, ["workers must be a whole number between 1 and"]),
    ({"workers": 10_000}, ["workers must be a whole number between 1 and"]),
    ({"workers": "2"}, ["workers must be a whole number"]),
    ({"packages": ["git+https://example.org/x.git"]}, ["packages takes pip requirements"]),
    ({"profile": "no-such-profile"}, ["no-such-profile"]),
    ({"export": ["UNDEFINED_NAME_X"]}, ["UNDEFINED_NAME_X"]),
    ({"name": "-sweep"}, ["'-sweep' cannot name a job"]),
], ids=["errors", "chunk_zero", "chunk_float", "retries_negative", "retries_bool", "timeout_zero", "timeout_nan",
        "seed_negative", "workers_zero", "workers_huge", "workers_str", "packages_url", "profile_unknown",
        "export_unknown", "name_dash"])
def test_bad_options_are_refused_before_anything_is_submitted(guard, options, fragments):
    with pytest.raises(ValueError) as info:
        azpar_magic.map(guard.fn, range(3), **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert message.endswith("Nothing was submitted.") and message.count("Nothing was submitted.") == 1, message
    guard.assert_nothing_submitted()


def test_starmap_refuses_an_item_that_is_not_a_tuple_of_arguments(guard):
    """An item that is not a tuple (or other iterable) of arguments failed on the workers, each such
    call an IterationError naming "cell line 2" of a cell the user never wrote; it is refused first,
    naming the item, and nothing runs."""
    with pytest.raises(TypeError) as info:
        azpar_magic.starmap(guard.fn, [(1,), 5, (2,)])
    message = str(info.value)
    assert message.startswith("azpar_magic.starmap takes an iterable of argument tuples"), message
    assert "item 1 is int 5" in message and message.endswith("Nothing was submitted."), message
    guard.assert_nothing_submitted()
    # The guard can fail: the same call with tuples runs, and a string is a tuple of its characters.
    assert azpar_magic.starmap(guard.fn, iter([(1,), ["a"], "b"])) == [1, "a", "b"]
    assert list(guard.folder.iterdir())


@pytest.mark.parametrize("workers", [0, 10_000, "2", True], ids=["zero", "huge", "str", "bool"])
def test_run_refuses_a_worker_count_the_magic_would_refuse(guard, workers):
    """run() had no bound on workers: 0 failed as a config error about "magic options", "2" and True
    were taken as numbers, and 10,000 made a pool of that size (it starts a worker per task). It now
    says what map says."""
    with pytest.raises(ValueError) as info:
        azpar_magic.run("for x in range(3)", "__azmap_marked(x)", guard.ip.user_ns, workers=workers)
    message = str(info.value)
    assert message.startswith("workers must be a whole number between 1 and"), message
    assert message.endswith("Nothing was submitted."), message
    guard.assert_nothing_submitted()


def test_run_takes_a_worker_count_within_the_bound(guard):
    """The guard above can fail: the same call with a valid count runs the body."""
    assert azpar_magic.run("for x in range(3)", "__azmap_marked(x)", guard.ip.user_ns, workers=1).result() == [0, 1, 2]
    assert list(guard.folder.iterdir())


def test_run_takes_a_single_string_as_one_name_or_pattern(tmp_path, monkeypatch):
    """gather, inputs and outputs given one string: it was split into characters (tuple("total")),
    so gather="total" gathered t, o, a and l in silence, inputs="data.csv" looked for a file "d",
    and outputs="*.csv" brought back every file (its "*")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("hello")
    job = azpar_magic.run("for x in range(2)", "total = x * 2\ntotal", {}, workers=2, gather="total")
    assert job.result() == [0, 2]
    assert job.gathered() == {"total": [0, 2]}
    job = azpar_magic.run(
        "for x in range(2)", "open('inputs/data.csv').read() + str(x)", {}, workers=2, inputs="data.csv"
    )
    assert job.result() == ["hello0", "hello1"]
    body = "open('out.csv', 'w').write('a')\nopen('note.txt', 'w').write('b')\nx"
    job = azpar_magic.run("for x in range(2)", body, {}, workers=2, outputs="*.csv", outputs_to="got")
    assert job.result() == [0, 1]
    # (under the job's folder: the pool's hidden work folder beside it may still be going away)
    folder = tmp_path / "got" / job.id
    back = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert back == ["0/out.csv", "1/out.csv"]


@pytest.mark.parametrize("option, said", [
    ("inputs", "--inputs '' names no file"),
    ("outputs", "--outputs '' must be a relative path or glob"),
])
def test_run_refuses_a_blank_path_as_the_magic_does(guard, option, said):
    """``run(inputs="")`` ran with no inputs at all, where ``--inputs ''`` is refused (it named the
    notebook's whole folder); a blank name (``gather=""``) still names none, as ``--gather ''`` does."""
    with pytest.raises(ValueError) as info:
        azpar_magic.run("for x in range(2)", "__azmap_marked(x)", guard.ip.user_ns, workers=2, **{option: ""})
    assert said in str(info.value), str(info.value)
    guard.assert_nothing_submitted()
    job = azpar_magic.run("for x in range(2)", "__azmap_marked(x)", guard.ip.user_ns, workers=2, gather="")
    assert job.result() == [0, 1] and list(guard.folder.iterdir())


def test_run_warns_as_the_magic_does(capsys):
    """A body that changes a notebook variable, an empty body and a gathered name the body never
    binds: the magic warned of each, run() said nothing and gave its list of Nones in silence."""
    namespace = {"total": 0}
    assert azpar_magic.run("for x in range(3)", "total += x", namespace, workers=2).result() == [None] * 3
    said = capsys.readouterr().err
    assert "azpar: warning: the loop body changes total (a notebook variable)" in said, said
    assert 'the result is the list of values (combine="sum" adds them' in said and "-o binds" not in said, said
    assert azpar_magic.run("for x in range(2)", "# nothing yet", {}, workers=2).result() == [None, None]
    assert "azpar: warning: the loop body has no statement" in capsys.readouterr().err
    assert azpar_magic.run("for x in range(2)", "x", {}, workers=2, gather="y").result() == [0, 1]
    assert "azpar: warning: gather y: the loop body never assigns y" in capsys.readouterr().err
    assert azpar_magic.run("for x in range(2)", "y = x\ny", {}, workers=2, gather="y").result() == [0, 1]
    assert "warning" not in capsys.readouterr().err  # the guard: a sound body says nothing


@pytest.mark.parametrize("call", ["run", "map"])
def test_a_name_that_is_not_a_string_is_refused_before_anything_is_submitted(guard, call):
    with pytest.raises(ValueError) as info:
        if call == "run":
            azpar_magic.run("for x in range(3)", "__azmap_marked(x)", guard.ip.user_ns, export=["__azmap_marked", 3])
        else:
            azpar_magic.map(guard.fn, range(3), export=["__azmap_marked", 3])
    assert str(info.value) == "export takes a string or a list of strings, not int 3. Nothing was submitted."
    guard.assert_nothing_submitted()


def test_the_options_say_the_same_as_the_magics(ip, run_cell, guard):
    """The rule and its words are the cell's (engine.validate_options), each option named
    as the caller wrote it: --chunk-size in a cell, chunk_size for map."""
    run = run_cell("%%azpar -q --chunk-size 0 for x in range(3)\nx")
    assert not run.success
    with pytest.raises(ValueError) as info:
        azpar_magic.map(guard.fn, range(3), chunk_size=0)
    assert str(run.error).replace("--chunk-size", "chunk_size") == str(info.value)
    guard.assert_nothing_submitted()


def test_a_non_callable_or_an_unusable_iterable_is_refused(guard):
    with pytest.raises(TypeError, match="takes a function"):
        azpar_magic.map([1, 2], range(3))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(ValueError) as info:
        azpar_magic.map(guard.fn, broken())
    assert "the iterable given to map raised OSError: disk gone" in str(info.value)
    with pytest.raises(TypeError):
        azpar_magic.map(guard.fn, range(3), gather=["y"])  # no body variables: not an option of map
    guard.assert_nothing_submitted()


# ------------------------------------------------------------------------------- Azure


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_map_and_starmap_on_the_test_batch_service(azure, ip, run_cell, clean_shell):  # noqa: F811
    setup = run_cell("OFFSET = 1000\ndef shifted(v, w=0):\n    return v + w + OFFSET\n")
    assert setup.success, setup.error
    job = azpar_magic.map(ip.user_ns["shifted"], range(5), chunk_size=2, wait=False)
    assert job.backend_name == "azure"
    assert job.result(timeout=150) == [1000, 1001, 1002, 1003, 1004]
    assert azpar_magic.starmap(ip.user_ns["shifted"], [(1, 2), (3, 4)]) == [1003, 1007]


@pytest.mark.timeout(60)
def test_rerun_of_a_map_job(ip, run_cell, clean_shell):  # noqa: F811
    """A notebook function is called by its name, so ``rerun`` runs the failed calls with the
    function as it is now; a lambda has no name to find again: refused, saying what to do."""
    setup = run_cell("LIMIT = 1\ndef capped(v):\n    if v > LIMIT:\n        raise ValueError(v)\n    return v\n")
    assert setup.success, setup.error
    job = azpar_magic.map(ip.user_ns["capped"], range(4), errors="pass", wait=False)
    assert job.wait(30) and sorted(job.failures) == [2, 3]
    ip.user_ns["LIMIT"] = 10
    assert azpar_magic.rerun(job.id, namespace=ip.user_ns).result(timeout=30) == [0, 1, 2, 3]
    unnamed = azpar_magic.map(lambda v: 1 / v, range(3), errors="pass", wait=False)
    assert unnamed.wait(30) and sorted(unnamed.failures) == [0]
    jobs_before = len(azpar_magic.jobs())
    with pytest.raises(ValueError) as info:
        azpar_magic.rerun(unnamed.id, namespace=ip.user_ns)
    assert "no name of its own" in str(info.value) and str(info.value).endswith("Nothing was submitted.")
    assert len(azpar_magic.jobs()) == jobs_before


@pytest.mark.timeout(60)
def test_a_named_map_job(ip, run_cell, clean_shell):  # noqa: F811
    job = azpar_magic.map(abs, [-1, 2], name="abs-sweep", wait=False)
    assert job.result(timeout=30) == [1, 2]
    assert job.options.name == "abs-sweep" and job.snapshot().name == "abs-sweep"
    assert azpar_magic.attach("abs-sweep").id == job.id

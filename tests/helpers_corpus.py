"""Helpers for the differential, bad-input and fault tests of ``%%azpar``.

The sequential reference is built here from first principles, without any code of the
package: the loop header and body of a cell become an ordinary ``for`` loop run in the
same IPython namespace, collecting the value of the body's last expression statement per
iteration (None when the iteration ends by ``continue`` or has no last expression).
"""

from __future__ import annotations

import ast
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

SEQ = "__seqref"  # prefix of every name the sequential reference binds
AZ_OUT = "__azpar_out"  # the -o variable of the parallel run

_TEMPLATE = f"""
{SEQ}_values = []
{SEQ}_items = []
{SEQ}_errors = {{}}
{SEQ}_gathered = []
for {SEQ}_i, {SEQ}_item in enumerate(__ITERABLE__):
    {SEQ}_v = None
    try:
        __TARGET__ = {SEQ}_item
        for {SEQ}_once in (None,):
            __BODY__
    except Exception as {SEQ}_e:
        {SEQ}_errors[{SEQ}_i] = {SEQ}_e
        {SEQ}_v = {SEQ}_e
        if {SEQ}_mode == "stop":
            {SEQ}_items.append({SEQ}_item)
            break
        if {SEQ}_mode == "remove":
            continue
    {SEQ}_items.append({SEQ}_item)
    {SEQ}_values.append({SEQ}_v)
    {SEQ}_gathered.append({{{SEQ}_n: globals().get({SEQ}_n) for {SEQ}_n in {SEQ}_gather}})
"""


def split_header(header: str) -> tuple[str, str]:
    """``for TARGET in ITERABLE[:]`` -> (target source, iterable source), with ast."""
    text = header.strip()
    if text.endswith(":"):
        text = text[:-1]
    loop = ast.parse(text + ":\n    pass\n").body[0]
    assert isinstance(loop, ast.For)
    return ast.unparse(loop.target), ast.unparse(loop.iter)


def sequential_source(header: str, body: str) -> str:
    """The plain Python loop equivalent to ``%%azpar ... header`` + ``body``."""
    target, iterable = split_header(header)
    body_tree = ast.parse(body)
    stmts = list(body_tree.body)
    if stmts and isinstance(stmts[-1], ast.Expr):
        last = stmts[-1]
        stmts[-1] = ast.copy_location(ast.Assign(targets=[ast.Name(f"{SEQ}_v", ast.Store())], value=last.value),
                                      last)
    template = ast.parse(_TEMPLATE.replace("__ITERABLE__", iterable).replace("__TARGET__", f"({target})"))

    class Fill(ast.NodeTransformer):
        def visit_Expr(self, node):
            if isinstance(node.value, ast.Name) and node.value.id == "__BODY__":
                return stmts or [ast.Pass()]
            return node

    filled = ast.fix_missing_locations(Fill().visit(template))
    return ast.unparse(filled)


@dataclass
class SeqResult:
    values: list
    items: list
    errors: dict  # index -> exception
    gathered: list  # one dict per kept iteration
    stdout: str
    stderr: str
    outputs: list  # rich display outputs


def run_sequential(ip, run_cell, header: str, body: str, *, mode: str = "pass",
                   gather: tuple[str, ...] = ()) -> SeqResult:
    """Run the plain loop in ``ip``'s namespace. ``mode`` is the error policy applied while
    collecting (stop: stop at the first exception; remove: skip; pass: keep the exception)."""
    ns = ip.user_ns
    ns[f"{SEQ}_mode"] = mode
    ns[f"{SEQ}_gather"] = tuple(gather)
    run = run_cell(sequential_source(header, body))
    assert run.success, f"the sequential reference itself failed: {run.error!r}\n{run.stdout}"
    result = SeqResult(ns[f"{SEQ}_values"], ns[f"{SEQ}_items"], ns[f"{SEQ}_errors"], ns[f"{SEQ}_gathered"],
                       run.stdout, run.stderr, run.outputs)
    for name in [n for n in ns if n.startswith(SEQ)]:
        del ns[name]
    return result


def azpar_cell(options: str, header: str, body: str, output: str = AZ_OUT) -> str:
    return f"%%azpar -q -o {output} {options} {header}\n{body}"


# ------------------------------------------------------------------------- comparisons


def notebook_classes(ns: dict) -> frozenset[int]:
    """ids of the classes the notebook namespace defines now."""
    return frozenset(id(v) for v in ns.values() if isinstance(v, type))


def same(a: Any, b: Any, classes: frozenset[int] = frozenset(), path: str = "value") -> None:
    """Assert that a (parallel) and b (sequential) are the same value, deeply: same types
    (a class in ``classes``, the notebook's, must be the user's very class), numpy dtypes and contents, pandas
    contents, exceptions of the same type and message."""
    import numpy as np
    import pandas as pd

    if type(a) is not type(b):
        ta, tb = type(a), type(b)
        # Classes defined inside the body are new class objects in every iteration and in
        # every process: compare them by name and state. A notebook class must be identical.
        assert id(tb) not in classes, f"{path}: {ta!r} is not the user's own class {tb!r}"
        assert ta.__qualname__ == tb.__qualname__ and ta.__module__ == tb.__module__, \
            f"{path}: type {ta!r} != {tb!r} ({a!r} vs {b!r})"
        same(vars(a), vars(b), classes, path + ".__dict__")
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{path}: {a!r} != {b!r}"
        return
    if isinstance(a, (pd.DataFrame, pd.Series)):
        assert a.equals(b) and list(a.index) == list(b.index), f"{path}: {a!r} != {b!r}"
        return
    if isinstance(a, BaseException):
        assert a.args == b.args and str(a) == str(b), f"{path}: {a!r} != {b!r}"
        return
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, classes, f"{path}[{i}]")
        return
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)!r} != {list(b)!r}"
        for k in a:
            same(a[k], b[k], classes, f"{path}[{k!r}]")
        return
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: nan != {b!r}"
        return
    if type(a).__eq__ is object.__eq__ and hasattr(a, "__dict__"):
        same(vars(a), vars(b), classes, path + ".__dict__")
        return
    assert a == b, f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------- namespace hygiene

_IPY_HISTORY = re.compile(r"^_(i{1,3}|i?\d+|oh|ih|dh|)$|^__+$")


def snapshot_namespace(ns: dict) -> dict:
    return dict(ns)


def restore_namespace(ns: dict, before: dict) -> None:
    """Remove what a test added to the shared shell namespace and restore what it rebound
    (IPython's own history variables are left alone)."""
    for name in list(ns):
        if name not in before and not _IPY_HISTORY.match(name):
            del ns[name]
    for name, value in before.items():
        if ns.get(name, object()) is not value and not _IPY_HISTORY.match(name):
            ns[name] = value


# ------------------------------------------------------------------------- job helpers


def run_cell_job(run_cell, source: str):
    """Run a cell and return (its CellRun, the one job it started). The job is found by id,
    not as jobs()[-1]: that order comes from wall-clock creation times."""
    import azpar_magic

    before = {j.id for j in azpar_magic.jobs()}
    run = run_cell(source)
    new = [j for j in azpar_magic.jobs() if j.id not in before]
    assert len(new) == 1, f"expected one new job, got {len(new)}: {run.error!r}"
    return run, new[0]


# ------------------------------------------------------------------------- pool helpers


def local_backend(workers: int | None = None):
    from azpar_magic import session

    return session.engine(None, workers).backend


def live_worker_pids(backend) -> set[int]:
    with backend._lock:
        return {w.proc.pid for w in backend._workers.values()}


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for_file(path: str, timeout: float = 20.0) -> str:
    """Wait until ``path`` exists and holds some text; return the text."""
    def ready():
        try:
            with open(path) as fh:
                return bool(fh.read().strip())
        except OSError:
            return False

    assert wait_for(ready, timeout), f"{path} never appeared"
    with open(path) as fh:
        return fh.read().strip()


@dataclass
class Case:
    """One differential corpus entry."""

    id: str
    header: str
    body: str
    setup: str = ""
    options: str = ""
    combine: str = "list"  # list | dict | sum | concat | callable (the --combine text)
    errors: str = "stop"
    gather: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    raise_line: int | None = None  # body line (1-based) an --errors stop case raises on
    check: Any = None  # extra assertions: check(ip, parallel_result, sequential_result)
    xfail: str | None = None

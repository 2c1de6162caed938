"""``azpar_magic.map`` and ``starmap``: the job a ``%%azpar`` cell runs, for a function.

A call becomes the cell ``for __azpar_item__ in ITEMS: FUNC(__azpar_item__)`` (``FUNC(*item)``
for starmap) and goes through the same engine, backends, options and checks as the magic's
cells, so scripts, libraries and papermill runs get exactly what notebooks get. The function
is captured by the cell's rules: a function of ``__main__`` (a notebook, a script), a lambda
or a closure travels by value (dill) with the notebook names it reads, and nothing else; a
function of an importable module travels by reference (a module of the working folder is
shipped, an installed one is required on the workers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from . import config, session
from .errors import SubmitError
from .jobs import Job, JobOptions, progress_bar
from .jobs.job import FUNCTION_ITEM, FUNCTION_ITEMS, FUNCTION_LOOP, NAMELESS_FUNCTION
from .jobs.text import DURATION_FORMS, parse_duration, short_repr
from .run.engine import Engine, validate_options
from .run.parsing import checked_requirements, is_variable_name, parse_cell
from .run.request import API_SPELLING, RunRequest
from .worker import IN_TASK_VARIABLE

_FN = NAMELESS_FUNCTION  # the function, when it has no name of its own in __main__ (a lambda, a closure)


def map(
    func: Callable[..., Any],
    iterable: Iterable[Any],
    *iterables: Iterable[Any],
    errors: str = "stop",
    retries: int = 2,  # noqa: A001
    timeout: float | str | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    backend: str | None = None,
    profile: str | None = None,
    packages: Iterable[str] | str = (),
    keep: bool = False,
    export: Iterable[str] | str = (),
    no_export: Iterable[str] | str = (),
    name: str | None = None,
    wait: bool = True,
    cache: bool = False,
    max_cost: float | None = None,
) -> list | Job:
    """``[func(x) for x in iterable]``, each call an iteration of one azpar job, on the local
    pool or on Azure Batch: the list of values in input order, or with ``wait=False`` the Job
    at once (``job.result()``, ``job.as_completed()``, ``await job``). Given several iterables,
    ``func`` takes one argument from each, ``[func(x, y) for x, y in zip(xs, ys)]``, stopping at the
    shortest, as the built-in ``map`` and ``Executor.map`` call it.

    Options are the cell's, as keywords: ``errors`` (stop raises IterationError with the
    failing index, item and remote traceback; remove drops failed calls; pass puts the
    exception in their place), ``retries``, ``timeout``, ``chunk_size``, ``seed``,
    ``workers``, ``backend``, ``profile``, ``packages`` (Azure), ``keep`` (Azure), ``max_cost`` (Azure:
    ``--max-cost``), ``export``, ``no_export`` and ``name`` (``--name``: commands such as
    ``%azpar logs NAME`` accept it);
    ``packages``, ``export`` and ``no_export`` take a list, or one entry as a string.
    Bad values raise ValueError (TypeError for a ``func`` that is not callable) before anything
    is submitted. Ctrl-C while waiting cancels the job. ``cache=True`` is the cell's ``--cache``: a call
    whose function, captured names and argument are unchanged reuses its stored value.
    What the calls print is kept, not shown: ``job.output(i)``, ``job.logs()``."""
    if iterables:  # each call's arguments, one from each iterable: starmap's items
        for position, each in enumerate((iterable, *iterables), start=1):
            try:
                iter(each)
            except TypeError as exc:  # as map(f, 5) says it, not zip's bare TypeError
                raise ValueError(
                    f"Iterating over iterable {position} given to map raised TypeError: {exc}. Nothing was submitted."
                ) from None
        return _submit(func, zip(iterable, *iterables), True, locals(), "map")
    return _submit(func, iterable, False, locals(), "map")


def starmap(
    func: Callable[..., Any],
    iterable: Iterable[Iterable[Any]],
    *,
    errors: str = "stop",
    retries: int = 2,
    timeout: float | str | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    backend: str | None = None,
    profile: str | None = None,
    packages: Iterable[str] | str = (),
    keep: bool = False,
    export: Iterable[str] | str = (),
    no_export: Iterable[str] | str = (),
    name: str | None = None,
    wait: bool = True,
    cache: bool = False,
    max_cost: float | None = None,
) -> list | Job:
    """``[func(*args) for args in iterable]`` as one azpar job (see ``map``): each item is
    a tuple (any iterable) of positional arguments, as ``itertools.starmap`` takes them."""
    return _submit(func, iterable, True, locals(), "starmap")


def _submit(func: Callable, iterable: Iterable, star: bool, given: dict[str, Any], called: str) -> list | Job:
    """Check everything, submit one job, then wait for it or hand it back (``called``: the function the
    user called, as errors name it)."""
    if not callable(func):
        raise TypeError(
            f"azpar_magic.{called} takes a function (any callable) first, not "
            f"{type(func).__name__} {func!r}. Nothing was submitted."
        )
    options = JobOptions(
        errors=given["errors"],
        retries=given["retries"],
        timeout=timeout_argument(given["timeout"]),
        chunk_size=given["chunk_size"],
        seed=given["seed"],
        name=given["name"],
        cache=bool(given["cache"]),
        max_cost=given["max_cost"],
    )
    try:
        validate_options(options, API_SPELLING)
    except SubmitError as exc:
        said = str(exc)
        raise ValueError(
            said if said.endswith("Nothing was submitted.") else f"{said} Nothing was submitted."
        ) from None
    check_workers(given["workers"])
    packages = requirements_argument(given["packages"])
    if _in_task():
        return _in_this_task(func, iterable, star, given)
    engine, settings = engine_and_settings(given["backend"], given["workers"], given["profile"])
    namespace, name = _namespace(func, iterable)
    cell = parse_cell(FUNCTION_LOOP, f"{name}({'*' if star else ''}{FUNCTION_ITEM})")
    request = RunRequest(
        cell,
        namespace,
        options,
        names_argument(given["export"], "export"),
        names_argument(given["no_export"], "no_export"),
        backend_options={"packages": packages, "merge": "client", "keep": bool(given["keep"])},
        spelling=dict(API_SPELLING, body=f"the function given to {called}"),
        max_items=settings["max_items"],
    )
    bars: list[Any] = []  # a tqdm bar starmap's iterable came in (submit finds map's itself)
    try:
        if star:  # taken once here, as submit would take it, so that each item is checked first
            items = engine.prepare(request, bars)
            _check_argument_tuples(items)
            request = replace(request, items=items)
        job = engine.submit(request)
    except SubmitError as exc:
        raise ValueError(str(exc).replace(f"`{FUNCTION_ITEMS}`", "the iterable given to map")) from None
    for bar in bars:
        progress_bar.follow(job, bar)
    session.remember(job)
    if not given["wait"]:
        return job
    try:
        return job.result()
    except KeyboardInterrupt:  # as in a cell: Ctrl-C cancels the job; finished values stay on the handle
        job.cancel()
        job.wait(10)
        raise


def _in_task() -> bool:
    """Whether this process runs an azpar task: the worker's entry sets the variable, a kernel never has it."""
    return bool(os.environ.get(IN_TASK_VARIABLE))


def refuse_in_task(what: str) -> None:
    """ValueError, before anything is submitted, for ``what`` (``azpar_magic.run``, ``rerun``) called
    by an iteration that already runs in an azpar task: it started a local pool inside the worker (a
    process per CPU, on cores the outer job already fills) and stored a job per call. ``map`` runs its
    calls in place there instead (``_in_this_task``); a loop given as text has no such plain form."""
    if _in_task():
        raise ValueError(
            f"{what} was called inside an azpar task (an iteration of another job), where it would start a "
            "pool of its own on cores the outer job already uses and store a job per call: call "
            "azpar_magic.map(function, items), which runs its calls in the task one after the other, or write "
            "a plain for loop. Nothing was submitted."
        )


def _in_this_task(func: Callable, iterable: Iterable, star: bool, given: dict[str, Any]) -> list:
    """``map`` called by an iteration that already runs in an azpar task (a local worker, a node's
    task): the calls run here, one after the other, and no job is made. A pool inside each worker
    started a process per CPU in every one (their cores already busy with the outer job) and stored a
    job per call; joblib too starts no processes for a Parallel nested in its workers. ``errors`` is
    kept (stop lets the first exception through, pass puts it in its item's place, remove drops it);
    the other options are a job's, and there is none."""
    if not given["wait"]:
        raise ValueError(
            "azpar_magic.map(..., wait=False) was called inside an azpar task, where map runs its calls in "
            "the task, one after the other, and returns their values: call it without wait=False. Nothing "
            "was submitted."
        )
    values = []
    for item in iterable:
        try:
            values.append(func(*item) if star else func(item))
        except Exception as exc:
            if given["errors"] == "stop":
                raise
            if given["errors"] == "pass":
                values.append(exc)
    return values


def _check_argument_tuples(items: list) -> None:
    """TypeError, before anything is submitted, for a starmap item that is not a tuple (or other
    iterable) of arguments: each call would fail on the workers, naming a cell line the user never
    wrote (``starmap(pow, [1, 2])`` for ``map``'s ``[1, 2]``)."""
    for index, item in enumerate(items):
        try:
            iter(item)
        except TypeError:
            raise TypeError(
                f"azpar_magic.starmap takes an iterable of argument tuples, one per call; item {index} is "
                f"{type(item).__name__} {short_repr(item)}, not a tuple of arguments (azpar_magic.map calls "
                "the function with each item as its one argument). Nothing was submitted."
            ) from None


def _namespace(func: Callable, iterable: Iterable) -> tuple[dict[str, Any], str]:
    """The namespace the cell is captured from, and the name the body calls ``func`` by.

    ``__main__``'s names (the notebook's, or the script's) are where the code of a function
    defined there finds its globals, so capture resolves what it reads there, exactly as
    for a cell. A function bound in ``__main__`` under its own name is called by that name,
    so tracebacks and ``rerun`` read as the user wrote it; any other callable by _FN."""
    main = getattr(sys.modules.get("__main__"), "__dict__", None) or {}
    namespace = dict(main)
    name = getattr(func, "__name__", None)
    if not (
        isinstance(name, str)
        and is_variable_name(name)
        and main.get(name) is func
        and getattr(func, "__module__", None) == "__main__"
        and not name.startswith("__azpar")
    ):
        name = _FN
        namespace[_FN] = func
    namespace[FUNCTION_ITEMS] = iterable
    return namespace, name


def rerun_problem(job_id: str, source: str, namespace: Mapping[str, Any]) -> str | None:
    """Why the cell of map job ``job_id`` cannot run again from ``namespace``, or None.

    A function with a name of its own in ``__main__`` is called by it, so a rerun finds it
    (as it is now, like any notebook function a cell calls); any other callable was only in
    the job's namespace, under _FN, and would fail every iteration with a NameError."""
    body = source.partition("\n")[2]
    if not body.startswith(f"{_FN}(") or _FN in namespace:
        return None
    return (
        f"job {job_id} ran azpar_magic.map on a function with no name of its own in the notebook (a lambda, a "
        "closure, a partial or a module's function), which a rerun cannot find again. Call azpar_magic.map "
        "(or starmap) again with it, on the items whose indices job.missing_indices() gives. Nothing was "
        "submitted."
    )


def timeout_argument(value: Any) -> Any:
    """The API's ``timeout`` in seconds: a number as given (the engine checks its range), or a string the magic's
    ``--timeout`` takes (``"10m"``, ``"1.5h"``), which ``timeout="10m"`` refused though the cell took it."""
    if not isinstance(value, str):
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"timeout must be a number of seconds, or a string with a unit ({DURATION_FORMS}), not {value!r}. "
            "Nothing was submitted."
        ) from None


def check_workers(workers: Any) -> None:
    """ValueError, before anything is submitted, unless ``workers`` (the API's argument: ``run``,
    ``map``) is None or a whole number of local workers this process may start (``session.workers_limit``,
    the bound the magic's --workers has)."""
    if workers is None:
        return
    limit = session.workers_limit()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= limit:
        raise ValueError(
            f"workers must be a whole number between 1 and {limit} ({session.WORKERS_PER_CPU} per "
            f"CPU this process may use, at least {session.WORKERS_FLOOR}), not {workers!r}. Nothing was "
            "submitted."
        )


def names_argument(value: Iterable[str] | str | None, option: str, *, paths: bool = False) -> tuple[str, ...]:
    """An API argument that takes names or patterns (``gather``, ``export``, ``no_export``,
    ``inputs``, ``outputs``) as a tuple: a single string is one of them, as ``packages`` takes
    one requirement. ``tuple("total")`` was ``("t", "o", "t", "a", "l")``: ``gather="total"``
    gathered four one-letter names in silence, ``outputs="*.csv"`` collected every file (its
    ``*``), ``inputs="data.csv"`` looked for a file ``d``. ValueError, before anything is
    submitted, for an entry that is not a string. ``paths`` (``inputs``, ``outputs``): a blank string is
    kept, for the data plan to refuse as it refuses ``--inputs ''`` (it is no file); a blank name names
    none, as in the magic."""
    if isinstance(value, str):
        return (value,) if value.strip() or paths else ()
    if not value:  # None, or empty: the defaults, at no cost to every run
        return ()
    entries = tuple(value)
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(
                f"{option} takes a string or a list of strings, not {type(entry).__name__} {entry!r}. "
                "Nothing was submitted."
            )
    return entries


def engine_and_settings(
    backend: str | None, workers: int | None, profile: str | None
) -> tuple[Engine, config.Settings]:
    """``session.engine_and_settings`` for a call of the Python API: a profile that does not exist or
    cannot be read is a ValueError saying nothing was submitted."""
    try:
        return session.engine_and_settings(backend, workers, profile)
    except ValueError as exc:  # config.ConfigError is a ValueError
        raise ValueError(f"{exc}. Nothing was submitted.") from None


def requirements_argument(packages: Iterable[str] | str) -> list[str]:
    """``packages`` as pip requirements, checked as --packages checks them."""
    if isinstance(packages, str):
        packages = [packages]
    return checked_requirements(list(packages), spelling="packages", how="")

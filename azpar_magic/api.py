"""The package's public functions: start, list, follow, collect, cancel, rerun and delete jobs.

``azpar_magic`` re-exports them; the magic's commands call them too, so the cell and a script
reach the same behaviour through one path.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import jobstore, mapping, session
from .errors import CellError, SubmitError
from .jobs import FINAL_STATES, Job, JobOptions
from .jobstore import JobSummary
from .run.parsing import ParsedCell, future_flags, parse_cell, parse_source, split_header
from .run.request import API_SPELLING, RunRequest

__all__ = [
    "run",
    "cache_clear",
    "jobs",
    "attach",
    "collect",
    "logs",
    "cancel",
    "rerun",
    "rerun_with",
    "delete",
    "deletable_id",
]


def run(
    loop: str,
    body: str,
    namespace: Mapping[str, Any] | None = None,
    *,
    combine: str | Callable = "list",
    errors: str = "stop",
    gather: Iterable[str] | str = (),
    retries: int = 2,
    timeout: float | str | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
    export: Iterable[str] | str = (),
    no_export: Iterable[str] | str = (),
    backend: str | None = None,
    workers: int | None = None,
    inputs: Iterable[str] | str = (),
    outputs: Iterable[str] | str = (),
    outputs_to: str | None = None,
    cache: bool = False,
    profile: str | None = None,
    packages: Iterable[str] | str = (),
    keep: bool = False,
    max_cost: float | None = None,
    name: str | None = None,
) -> Job:
    """Start the loop ``loop`` (``"for x in xs"``) with ``body`` and return its Job at once.

    ``namespace`` defaults to the caller's globals; ``job.result()`` waits and returns the
    combined value exactly as ``%%azpar`` would bind it. Options mean what the magic's do
    (``inputs``/``outputs``/``outputs_to``: ``--inputs``/``--outputs``/``--outputs-to``; the
    outputs' locations are in ``job.files``; ``cache``: ``--cache``; ``profile``, ``packages``,
    ``keep`` and ``max_cost``: the Azure options, as ``map`` takes them; ``name``: ``--name``).
    ``gather``, ``export``, ``no_export``, ``inputs``, ``outputs`` and ``packages`` take a list of
    names, patterns or requirements, or one as a string.
    """
    if namespace is None:
        namespace = sys._getframe(1).f_globals
    mapping.refuse_in_task("azpar_magic.run")
    mapping.check_workers(workers)
    gather, export, no_export = (
        mapping.names_argument(value, option)
        for value, option in ((gather, "gather"), (export, "export"), (no_export, "no_export"))
    )
    inputs, outputs = (
        mapping.names_argument(value, option, paths=True)
        for value, option in ((inputs, "inputs"), (outputs, "outputs"))
    )
    cell = _parsed_loop(loop, body, future_flags(namespace))
    options = JobOptions(
        combine=combine,
        errors=errors,
        gather=gather,
        retries=retries,
        timeout=mapping.timeout_argument(timeout),
        chunk_size=chunk_size,
        seed=seed,
        inputs=inputs,
        outputs=outputs,
        outputs_to=outputs_to,
        cache=bool(cache),
        max_cost=max_cost,
        name=name,
    )
    requirements = mapping.requirements_argument(packages)
    engine, settings = mapping.engine_and_settings(backend, workers, profile)
    request = RunRequest(
        cell,
        namespace,
        options,
        export,
        no_export,
        backend_options={"packages": requirements, "merge": "client", "keep": bool(keep)},
        max_items=settings["max_items"],
    )
    try:
        job = engine.submit(request)
    except SubmitError as exc:
        raise ValueError(str(exc)) from None  # bad input to a function: ValueError, as usual
    session.remember(job)
    return job


def _parsed_loop(loop: str, body: str, future: int = 0) -> ParsedCell:
    """``run``'s loop and body, parsed as a cell's (cached), with errors in ``run``'s terms: a bytes
    loop failed inside the tokenizer, the magic's own words ("the %%azpar line") named a line the
    caller never wrote, and options written before ``for`` ('--combine sum for x in xs', the magic
    line pasted) were dropped in silence."""
    for name, value in (("loop", loop), ("body", body)):
        if not isinstance(value, str):
            raise TypeError(f"azpar_magic.run's {name} is a str, not {type(value).__name__} {value!r}")
    try:
        cell = parse_cell(loop, body, future)
    except CellError as exc:
        if not body.strip():
            raise ValueError(
                "azpar_magic.run's body is empty: give the statements each iteration runs (its last expression is "
                "the iteration's value). Nothing was submitted."
            ) from None
        try:
            split_header(loop)
        except CellError:
            raise ValueError(
                f"azpar_magic.run's loop is a `for TARGET in ITERABLE` clause, like 'for x in range(10)'; got "
                f"{loop!r}. Nothing was submitted."
            ) from None
        raise ValueError(str(exc)) from None
    if cell.options:
        raise ValueError(
            f"azpar_magic.run's loop is the `for TARGET in ITERABLE` clause alone; {cell.options!r} before it are "
            "the magic's options, which run takes as keywords (combine=, errors=, chunk_size=, ...). Nothing was "
            "submitted."
        )
    return cell


def jobs(
    *, stored: bool = False, state: str | None = None, name: str | None = None, since: str | float | None = None
) -> list:
    """The jobs this process holds in memory as Job handles, oldest first (the newest 50 or so:
    ``session.KEPT_JOBS``; older ones are read back from the store by ``attach``); with ``stored=True`` instead one
    JobSummary per job in the job store (every kernel's, earlier sessions' too, this
    process's with their live counts): the rows of ``%azpar jobs``. Summaries, not handles,
    because a handle holds the values and listing must not read them.

    Filters, as ``%azpar jobs`` takes them: ``state`` (``"failed"``, or several with commas),
    ``name`` (a glob over the jobs' ``--name``: ``"sweep-*"``), ``since`` (an ISO date or
    date and time, ``"today"``, ``"yesterday"``, ``"7d"``, or seconds since the epoch).
    ValueError for a state, a date or a name pattern it cannot read."""
    if not stored:
        found = session.jobs()
        if state is None and name is None and since is None:
            return found
        keep = {
            r.id for r in jobstore.filter_jobs([JobSummary.of(j) for j in found], state=state, name=name, since=since)
        }
        return [j for j in found if j.id in keep]
    rows = {row.id: row for row in jobstore.list_jobs()}
    for job in session.jobs():
        if job.owner:  # followed from the store: the store's row is the truth
            continue
        rows[job.id] = JobSummary.of(job)
    return jobstore.filter_jobs(
        sorted(rows.values(), key=lambda r: (r.created, r.id)), state=state, name=name, since=since
    )


def attach(job_id: str | None = None) -> Job:
    """The handle of job ``job_id`` (the whole id or a unique end of it; default the latest),
    whichever kernel started it: from this process, or rebuilt from the job store, where a job
    keeps its items, values, failures and output after its kernel ends. A job another process
    of this machine still runs is followed until it ends; a local job whose kernel died is in
    state "lost" with its finished iterations: ``rerun`` completes it.

    Raises KeyError naming the known ids for an unknown one, and jobstore.StoreError when the
    stored values cannot be rebuilt here (a notebook class they use is not defined yet)."""
    return session.find_job(job_id)


def collect(job_id: str | None = None, timeout: float | None = None, *, errors: str | None = None) -> Any:
    """Wait for job ``job_id`` and return its combined result (``attach(job_id).result()``); ``errors``
    ("remove" or "pass") combines what finished under that policy, also for a failed, cancelled or lost job."""
    return attach(job_id).result(timeout, errors=errors)


def logs(job_id: str | None = None, i: int | None = None) -> str:
    """What iteration ``i`` of the job printed, and its traceback if it failed (every
    iteration that printed or failed when ``i`` is None; -1 is the last, as in a list), also
    after its kernel ended. Reads
    the store's logs without decoding any value, so it works whatever this kernel defines."""
    try:
        job = session.find_job(job_id, stored=False)
    except KeyError:
        ids = jobstore.job_ids()
        found = None
        if job_id is None:
            found = jobstore.latest_id() if ids else None
        else:
            try:
                found = jobstore.resolve(job_id)
            except KeyError as exc:
                if exc.args and exc.args[0] != job_id:
                    raise  # ambiguous
        if found is None:
            return session.find_job(job_id).logs(i)  # raises the KeyError that names the known ids
        job = jobstore.load_job(found, values=False)
    return job.logs(i)


def cancel(job_id: str | None = None) -> Job:
    """Cancel a running job of this process (queued iterations never start, running ones
    stop, finished ones stay); a job that has ended is returned unchanged. A job another
    process runs is refused (ValueError): only the process that runs a local job can stop it."""
    job = session.find_job(job_id)
    if job.owner:
        raise ValueError(f"job {job.id} runs in {job.owner}, not in this process: cancel it there")
    job.cancel()
    return job


def cache_clear() -> int:
    """Forget every value ``--cache`` could reuse (the jobs themselves stay in the store);
    returns how many jobs were in the cache's index. ``%azpar cache clear`` in a notebook."""
    from .jobstore import cache as stored_cache

    return stored_cache.clear()


def delete(job_id: str) -> None:
    """Remove the job's results, items, logs and manifest from the job store (and forget it
    in this process); for an Azure job first its Batch job and containers (logs, result
    blobs), through the profile that ran it. A job still running is refused (ValueError):
    cancel it first. When Azure refuses, the local copy stays, so deleting can be retried."""
    found = deletable_id(job_id)
    jobstore.flush()
    try:
        manifest = jobstore.read_manifest(found)
    except KeyError:
        manifest = {}
    if (manifest.get("backend_info") or {}).get("batch_job_id"):
        session.engine_for_stored(manifest).backend.delete_job(manifest["backend_info"]["batch_job_id"])
    try:
        jobstore.delete(found)
    except KeyError:  # a job the store never got (its writes failed): forgetting it is all
        pass
    session.forget(found)


def deletable_id(job_id: str) -> str:
    """The whole id of the job ``job_id`` names if it may be deleted now; KeyError (naming
    the known ids) or ValueError (still running) otherwise."""
    try:
        job = session.find_job(job_id, stored=False)
    except KeyError:
        job = None
    if job is not None:
        if not job.done:
            raise ValueError(f"job {job.id} is still {job.state}; cancel it before deleting it")
        return job.id
    try:
        found = jobstore.resolve(job_id)
    except KeyError as exc:
        if exc.args and exc.args[0] == job_id:
            session.find_job(job_id)  # unknown: raises the KeyError that names the known ids
        raise
    state, where = jobstore.effective_state(jobstore.read_manifest(found))
    if state not in FINAL_STATES:
        raise ValueError(
            f"job {found} is still {state} in {where or 'another process'}; cancel it there before deleting it"
        )
    return found


def rerun(
    job_id: str | None = None,
    failed: bool = True,
    *,
    namespace: Mapping[str, Any] | None = None,
    output_name: str | None = None,
) -> Job:
    """Run the job's failed or missing iterations again (all of them with ``failed=False``)
    and return the new Job, whose result holds the earlier values and the new ones merged in
    iteration order. Its id is new; its manifest names the original (``rerun_of``).

    What runs: the stored items (the iterable is not evaluated again) with the cell's body
    and loop header from the stored cell source, captured from ``namespace`` as it is now
    (default: the caller's globals; in IPython the notebook's), so a function or variable
    fixed since the first run is the fixed one, also in a new kernel. Options (combine,
    errors, gather, seed, ...) are the original run's; with ``--seed`` iteration i gets the
    same random stream as before.

    Raises ValueError before anything is submitted when the job is still running, when an
    item to run cannot be rebuilt here, or when the cell cannot be captured."""
    if namespace is None:
        namespace = sys._getframe(1).f_globals
    return rerun_with(job_id, failed, namespace, output_name)


def rerun_with(
    job_id: str | Job | None,
    failed: bool,
    namespace: Mapping[str, Any],
    output_name: str | None,
    spelling: dict[str, str] | None = None,
) -> Job:
    mapping.refuse_in_task("azpar_magic.rerun")
    base = job_id if isinstance(job_id, Job) else session.find_job(job_id)  # (the magic has found it already)
    if not base.done:
        raise ValueError(f"job {base.id} is still {base.state}; wait for it to end (or cancel it) before a rerun")
    todo = base.missing_indices() if failed else list(range(len(base.items)))
    missing_items = [base.items[i] for i in todo if isinstance(base.items[i], jobstore.MissingItem)]
    if missing_items:
        first = missing_items[0]
        raise ValueError(
            f"item {first.index} of job {base.id} could not be rebuilt in this kernel "
            f"({first.reason}); define what it refers to (a notebook class?), then rerun. "
            "Nothing was submitted."
        )
    missing_combine = getattr(base.options.combine, "missing", None)
    if missing_combine:
        raise ValueError(f"{missing_combine} Nothing was submitted.")
    problem = mapping.rerun_problem(base.id, base.source, namespace)  # a map job's lambda cannot be found again
    if problem:
        raise ValueError(problem)
    try:
        cell = parse_source(base.source, future_flags(namespace))
    except CellError as exc:
        raise ValueError(f"the cell of job {base.id} cannot be parsed again: {exc}") from None
    options = dataclasses.replace(base.options, output_name=output_name or base.options.output_name)
    manifest = base.manifest or {}
    request = RunRequest(
        cell,
        namespace,
        options,
        tuple(manifest.get("export") or ()),
        tuple(manifest.get("no_export") or ()),
        spelling=spelling or dict(API_SPELLING),
        items=list(base.items),  # (a job keeps a tuple; the engine cuts tasks' items from a list)
        indices=todo,
        base=base,
    )
    try:
        job = _engine_for(base).submit(request)
    except SubmitError as exc:
        raise ValueError(str(exc)) from None
    session.remember(job)
    return job


def _engine_for(job: Job):
    """The engine that ran ``job`` when this process ran it; else one for its backend (the
    local pool, or the profile its manifest names)."""
    for engine in session.engines():
        if job.id in engine.jobs:
            return engine
    return session.engine_for_stored(job.manifest or {"backend": job.backend_name})

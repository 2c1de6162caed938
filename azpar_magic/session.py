"""The per-process state shared by the magic and the Python API: one engine (and so one
pool) per backend configuration, started on first use and closed at unload or exit."""

from __future__ import annotations

import atexit
import functools
import logging
import operator
import threading
import time
from typing import Any

from . import config, jobstore
from .backends.base import Backend, backend_entry, create_backend
from .backends.cpus import usable_cpus
from .errors import ConfigError, StoreError
from .jobs import Job
from .run.capture import show_cell_source
from .run.engine import Engine

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}
_jobs: dict[str, Job] = {}


def settings(overrides: dict[str, Any] | None = None) -> config.Settings:
    return config.load_settings(overrides)


_active_profile: str | None = None  # set by %azpar use / use(); beats the config files
LOCAL = ":local"  # use(LOCAL): the local pool, whatever the config files' profile says


def use(profile: str | None) -> config.Profile | None:
    """Make ``profile`` the default for later cells of this process (None: back to the
    configuration files). The profile is loaded and checked now, so a typo fails here."""
    global _active_profile
    if profile is None:
        _active_profile = None
        return None
    if profile == LOCAL:
        _active_profile = LOCAL
        return None
    loaded = config.load_profile(profile)
    if loaded["backend"] == "azure":
        config.check_profile(loaded)
    _active_profile = profile
    logger.info("later cells use profile %r (%s backend)", profile, loaded["backend"])
    return loaded


def active_profile(explicit: str | None = None, loaded: config.Settings | None = None) -> str | None:
    """The profile a run uses: ``explicit``, else the one ``use`` chose, else the settings' (``loaded``
    when the caller has just read them: a cell reads its settings once, issue 16)."""
    return explicit or _active_profile or (loaded if loaded is not None else settings())["profile"]


def engine(backend: str | None = None, workers: int | None = None, profile: str | None = None) -> Engine:
    """The engine for this backend configuration (see ``engine_and_settings``)."""
    return engine_and_settings(backend, workers, profile)[0]


def engine_and_settings(
    backend: str | None = None, workers: int | None = None, profile: str | None = None
) -> tuple[Engine, config.Settings]:
    """The engine for this backend configuration, created (not started) on first request, and
    the settings it was chosen by: a cell reads its settings once, here (its bound on the
    iterable's length too), not once for the engine and again for the run (issue 16).

    A profile (explicit, then ``use``, then the config files' ``profile``) decides the
    backend unless ``backend`` is given; Azure engines are keyed by the profile's content,
    so editing a profile between cells takes effect and an unchanged one reuses its pool."""
    chosen = settings({"backend": backend, "workers": workers})
    name = active_profile(profile, chosen)
    loaded = config.load_profile(name) if name and name != LOCAL else None
    kind = backend or (loaded["backend"] if loaded else chosen["backend"])
    if kind == "local":
        _check_workers_setting(chosen)
        size = chosen["workers"] or default_workers()  # "default" and an explicit core count: one pool
        key: tuple = ("local", size)
        options: dict[str, Any] = {"workers": chosen["workers"]}
    else:
        if loaded is None:
            try:
                backend_entry(kind)  # a misspelt name ('azur') was told it needs a profile
            except ValueError as exc:
                where = "" if backend else f"{config.source_label('backend', chosen.sources.get('backend', ''))}: "
                raise ConfigError(f"{where}{exc}") from None
            raise ConfigError(
                f"the {kind} backend needs a profile: pass --profile NAME, run %azpar use NAME, "
                'or set profile = "NAME" in a config file (see %azpar config)'
            )
        key = (kind, loaded.name, loaded.digest())
        options = {"profile": loaded}
    with _lock:
        if key not in _engines:
            _engines[key] = Engine(create_backend(kind, **options))
            logger.info("new %s engine for %s", kind, key[1] if kind == "local" else f"profile {key[1]!r}")
        stale = [
            k for k, eng in _engines.items() if kind == "local" and k[0] == "local" and k != key and not eng.running()
        ]
        closing = [_engines.pop(k) for k in stale]
        chosen_engine = _engines[key]
    for eng in closing:  # another --workers size asked for: the old pool's processes end now
        eng.backend.close()
    return chosen_engine, chosen


WORKERS_PER_CPU = 4  # more workers than this many per usable CPU are refused (workers_limit)
WORKERS_FLOOR = 32  # ... but this many are always allowed (I/O-bound bodies on a small machine)


def workers_limit() -> int:
    """The most local workers a cell or ``map`` may ask for: per usable CPU (affinity and
    cgroup quota, as the default pool size), not the machine's count, so a pod limited to 2
    CPUs on a 64-core node may not start 256 workers."""
    return max(WORKERS_FLOOR, WORKERS_PER_CPU * default_workers())


def _check_workers_setting(chosen: config.Settings) -> None:
    """ConfigError, naming where it was set, for a workers setting above ``workers_limit``: the bound
    --workers, run(workers=) and %config AzparMagics.workers have. ``workers = 100000`` in a config file
    (or AZPAR_WORKERS) was taken, and the pool starts a worker per queued task up to its size: with
    AZPAR_WORKERS=100, 100 one-iteration tasks started 100 processes."""
    workers, limit = chosen["workers"], workers_limit()
    if workers and workers > limit:
        where = config.source_label("workers", chosen.sources.get("workers", "the workers setting"))
        raise ConfigError(
            f"{where}: workers must be at most {limit} ({WORKERS_PER_CPU} per CPU this process may use, at "
            f"least {WORKERS_FLOOR}), got {workers}"
        )


@functools.lru_cache(maxsize=1)
def default_workers() -> int:
    """The local pool's default size: the CPUs this process may use (affinity, cgroup quota),
    read once per process."""
    return usable_cpus()[0]


def _azure_backend(profile_name: str | None) -> Backend:
    eng = engine(profile=profile_name)
    if not eng.backend.pool_admin:
        name = active_profile(profile_name)
        if name is None or name == LOCAL:  # it said "profile None is not an Azure profile"
            raise ConfigError(
                "this acts on an Azure profile's pool, and none is chosen: pass --profile NAME (profile= in "
                "Python), or run %azpar use NAME first (see %azpar config)"
            )
        raise ConfigError(f"profile {name!r} is not an Azure profile")
    return eng.backend


def test_connection(profile_name: str | None = None) -> str:
    """Reach the profile's Batch and Storage accounts once; a one-line description."""
    return _azure_backend(profile_name).test_connection()


def pool_action(profile_name: str | None, action: str, dedicated: int | None = None, spot: int | None = None) -> str:
    """create | resize | delete | status for the profile's pool; a one-line outcome."""
    backend = _azure_backend(profile_name)
    if action == "create":
        return backend.pool_create()
    if action == "resize":
        if dedicated is None and spot is None:
            raise ValueError("resize needs a dedicated and/or spot node count")
        return backend.pool_resize(dedicated or 0, spot or 0)
    if action == "delete":
        return backend.pool_delete()
    if action == "status":
        found = backend.pool_status()
        if found is None:
            return f"pool {backend.profile['pool_id']} does not exist"
        cost = backend.cost_note()  # the burn rate now, since when it is idle (issue 19)
        return found.describe() + (f"\n  cost: {cost}" if cost else "")
    raise ValueError(f"unknown pool action {action!r}; expected create, resize, delete or status")


def engines() -> list[Engine]:
    """Every engine (pool) this process has created."""
    with _lock:
        return list(_engines.values())


def describe() -> str:
    return engine().backend.describe()


# How many of this process's ended jobs stay in memory, with their items and values: the newest
# KEPT_JOBS, while their iterations add up to at most KEPT_ITERATIONS (the newest job always). An
# older job whose store folder holds all of it is let go: the job store reads it back when asked for
# (find_job), as after a restart. Without a bound a kernel kept every job it ever ran: a notebook
# rerunning a 1,000,000-iteration cell grew by ~90 MB a run, and 10,000 two-iteration cells by ~110 MB.
KEPT_JOBS = 50
KEPT_ITERATIONS = 2_000_000
# ... and while their values add up to at most this many bytes as they travelled (Job.value_bytes): a
# cell returning 20 arrays of 10 MB, run again and again, grew the kernel by 200 MB a run, its result
# dropped each time (to 10 GB by the 50th job, issue 16).
KEPT_VALUE_BYTES = 512 << 20
# ... and while the objects their values made add up to at most this many (Job.value_objects): the
# garbage collector walks all of them at each full collection of the kernel's heap, whatever cell sets it
# off. A cell returning 10,000 small Series made ~210,000 a run; 50 such jobs kept made every full
# collection take seconds (issue 16).
KEPT_VALUE_OBJECTS = 1_000_000
# New jobs let go of the oldest ones the bounds leave out, as soon as the store holds them: a look
# comes once LET_GO_BATCH jobs are over KEPT_JOBS (or at once over KEPT_ITERATIONS), so that most
# cells pay nothing, and none frees more than a few jobs. A look gives up after LOOK_PATIENCE ended jobs
# not yet written (cells run back to back, a thousand a second, end faster than the store's writer
# records them, oldest first), and the next one waits for LET_GO_BATCH more jobs: its cost does not
# grow with the jobs waiting. A job still running is passed over, as one kept for good is: a long one
# must not stop the let-go of the short ones after it. (Looking at most once a second, as before, let a
# few hundred jobs gather between looks and freed them at once: 14-39 ms in one cell of a
# 10,000-iteration loop run back to back, and the garbage collector walked their values meanwhile,
# ~0.3 ms a cell on average, issue 16.)
LET_GO_BATCH = 8
LOOK_PATIENCE = 4
# An ended job still not written this many seconds after it ended is passed over at no cost to a
# look's patience: the writer writes one within a second or two even behind a flood, so something
# else keeps it, and a few such jobs at the front must not stop every later look.
UNWRITTEN_FOR = 10.0
_kept_iterations = 0  # the iterations of the jobs in _jobs
_next_look = 0  # the number of jobs held at which the next look is due (after one that gave up)


def remember(job: Job) -> None:
    global _kept_iterations, _next_look
    with _lock:
        if job.id not in _jobs:
            _kept_iterations += len(job.items)
        _jobs[job.id] = job
        held = sum(map(_VALUE_BYTES, _jobs.values()))  # (values arrive after remember: summed here, ~2 us)
        made = sum(map(_VALUE_OBJECTS, _jobs.values()))
        if (
            _kept_iterations > KEPT_ITERATIONS
            or held > KEPT_VALUE_BYTES
            or made > KEPT_VALUE_OBJECTS
            or len(_jobs) >= max(KEPT_JOBS + LET_GO_BATCH, _next_look)
        ):
            _let_go_of_stored_jobs(held, made)
            _next_look = len(_jobs) + LET_GO_BATCH


_VALUE_BYTES = operator.attrgetter("value_bytes")
_VALUE_OBJECTS = operator.attrgetter("value_objects")


def _let_go_of_stored_jobs(held: int = 0, made: int = 0) -> None:
    """Drop ended jobs older than the newest KEPT_JOBS (and KEPT_ITERATIONS, KEPT_VALUE_BYTES: ``held``
    is the bytes of the held jobs' values, KEPT_VALUE_OBJECTS: ``made`` the objects they made) from this
    process's list and its engines, the oldest first
    (lock held). Only jobs the store holds whole (``Job.stored``): one
    the store could not keep, or that another process runs, or that a store elsewhere holds, stays
    here, however old, and so does one still running or not yet written; a job passed over does not
    count against the bounds, so the newest jobs keep their places. A user's own handle keeps its
    Job alive."""
    global _kept_iterations
    here = str(jobstore.store_root())  # a job kept in another store (the variable changed) stays
    extra_jobs, extra_iterations = len(_jobs) - KEPT_JOBS, _kept_iterations - KEPT_ITERATIONS
    extra_bytes, extra_objects = held - KEPT_VALUE_BYTES, made - KEPT_VALUE_OBJECTS
    newest = next(reversed(_jobs))
    patience, gone, now = LOOK_PATIENCE, [], time.time()
    for job_id, job in _jobs.items():  # the oldest first
        if (extra_jobs <= 0 and extra_iterations <= 0 and extra_bytes <= 0 and extra_objects <= 0) or job_id == newest:
            break
        extra_jobs, extra_iterations = extra_jobs - 1, extra_iterations - len(job.items)
        extra_bytes, extra_objects = extra_bytes - job.value_bytes, extra_objects - job.value_objects
        if not job.done or job.store_error or job.owner or job.stored not in (None, here):
            continue  # running (however long), or kept for good: passed over at no cost to patience
        if job.stored is None:
            if now - (job.created + job.elapsed()) > UNWRITTEN_FOR:
                continue  # not written long after it ended: kept for good, as one the store failed
            patience -= 1  # ended, not written yet: it goes at a later look
            if not patience:
                break
            continue
        gone.append(job)
    for job in gone:
        del _jobs[job.id]
        _kept_iterations -= len(job.items)
        for eng in _engines.values():
            eng.jobs.pop(job.id, None)


def forget(job_id: str) -> None:
    """Drop a job from this process's list (after ``delete``)."""
    global _kept_iterations
    with _lock:
        job = _jobs.pop(job_id, None)
        if job is not None:
            _kept_iterations -= len(job.items)


def jobs() -> list[Job]:
    """Jobs of this process (including those loaded from the store), oldest first."""
    with _lock:
        return sorted(_jobs.values(), key=lambda j: j.created)


_SHOWN_IDS = 10  # known ids listed in an unknown-id error


def find_job(job_id: str | None, *, stored: bool = True) -> Job:
    """The job ``job_id`` names (the whole id, or a unique start or end of it; the latest
    when None): one of this process first, else, with ``stored``, one from the job store,
    started by an earlier kernel or by another one. A job loaded from the store is
    remembered once it has ended, so later commands reuse it instead of reading it again;
    one still running elsewhere is followed (see jobstore.load_job) and loaded afresh each time."""
    if job_id is not None and not isinstance(job_id, str):
        raise TypeError(f"a job is named by its id or --name, a string, not {type(job_id).__name__} {job_id!r}")
    job_id = _named(job_id)  # (a blank id is refused by jobstore.ids_matching below, as any too short)
    with _lock:
        if job_id is None and _jobs:
            return max(_jobs.values(), key=lambda j: j.created)
        if job_id is not None:
            if job_id in _jobs:
                return _jobs[job_id]
            matches = jobstore.ids_matching(job_id, _jobs)
            if len(matches) == 1:
                return _jobs[matches[0]]
            if matches:
                raise KeyError(
                    f"{job_id!r} matches {len(matches)} jobs of this session "
                    f"({', '.join(sorted(matches)[:5])}); give more of the id"
                )
        here = sorted(_jobs)
    if not stored:
        raise KeyError(f"no job {job_id!r} in this session (known: {', '.join(here) or 'none'})")
    stored_ids = jobstore.job_ids()
    if job_id is None:
        latest = jobstore.latest_id()
        if latest is None:
            raise KeyError(
                f"no azpar job has run in this session, and the job store {jobstore.store_root()} holds none"
            )
        found = latest
    else:
        try:
            found = jobstore.resolve(job_id)
        except KeyError as exc:
            if exc.args and exc.args[0] != job_id:
                raise  # ambiguous: the message says so
            known = sorted(set(here) | set(stored_ids))
            shown = ", ".join(known[-_SHOWN_IDS:]) or "none"
            more = f" and {len(known) - _SHOWN_IDS} older ones (%azpar jobs)" if len(known) > _SHOWN_IDS else ""
            raise KeyError(
                f"no job {job_id!r} in this session or in the job store {jobstore.store_root()} (known: {shown}{more})"
            ) from None
    job = jobstore.load_job(found, take_over=_take_over_followed)
    if job.source:  # tracebacks through functions its body made, called in this kernel, show their lines
        show_cell_source(job.source)
    if job.reattach:  # its kernel is gone but its backend ran on (Azure): this process follows it now
        return _reattach(job)
    if job.done:
        remember(job)
    return job


def _reattach(job: Job) -> Job:
    """Take over a stored job whose kernel is gone (``job.reattach``), unless another kernel claimed
    it this instant: once that kernel's manifest names it, the job is followed through the store
    like any job another kernel runs; if it gives its claim back, this process claims it. While it
    waits, only the manifest is read again, not the job's values."""
    deadline = time.monotonic() + _CLAIM_WAIT
    manifest = job.manifest or {}
    while not _take_over(job, manifest):
        if time.monotonic() > deadline:
            raise StoreError(f"job {job.id} is being taken over by another kernel; try again in a moment")
        time.sleep(jobstore.FOLLOW_INTERVAL)
        with _lock:
            if job.id in _jobs:  # the claimer was this process (a job it was following): that Job runs it
                return _jobs[job.id]
        manifest = jobstore.read_manifest(job.id)
        if not jobstore.reattachable(manifest):  # the claimer named itself: follow it (or its end)
            followed = jobstore.load_job(job.id, take_over=_take_over_followed)
            if followed.done:
                remember(followed)
            return followed
    return job


_CLAIM_WAIT = 10.0  # seconds find_job waits for the kernel that claimed a job to name itself its owner


def _take_over(job: Job, manifest: dict) -> bool:
    """Run ``job`` (stored, its kernel gone, its backend running on) from this process: True when
    this process took it over; False when another process claimed it first. StoreError when this
    kernel cannot follow it (its profile is missing or points elsewhere)."""
    folder = jobstore.job_folder(job.id)
    if not jobstore.claim_takeover(folder, manifest):
        return False
    job.manifest = manifest
    try:
        engine_for_stored(manifest).resume(job)
    except (ConfigError, RuntimeError, OSError) as exc:
        jobstore.release_takeover(folder, manifest)
        raise StoreError(
            f"job {job.id} runs on {manifest.get('backend', '?')} (profile {manifest.get('profile')!r}) without "
            f"its kernel, but this kernel cannot follow it: {exc}"
        ) from None
    except BaseException:
        jobstore.release_takeover(folder, manifest)
        raise
    remember(job)
    return True


def _take_over_followed(job: Job, manifest: dict) -> bool:
    """The store follower's hook (jobstore.load_job): the kernel that ran a job this process was
    following ended, and the job runs on without it. Taking it over ends the wait of whoever
    waits on it here, which would otherwise never end."""
    try:
        taken = _take_over(job, manifest)
    except Exception as exc:  # on the follower's thread: say it, and go on following the store
        logger.warning("%s", exc)
        return False
    if taken:
        logger.info("job %s: its kernel ended; this process follows it now", job.id)
    return taken


def _named(text: str | None) -> str | None:
    """The id of the newest job called ``text`` (``--name``), of this process or the job
    store; else ``text`` unchanged (an id, or a start or end of one)."""
    if text is None or text in _jobs:
        return text
    with _lock:
        here = [j for j in _jobs.values() if j.options.name == text]
    stored = jobstore.newest_named(text)
    best = max(here, key=lambda j: j.created).id if here else None
    if stored is not None and (
        best is None or jobstore.read_manifest(stored).get("created", 0.0) >= _jobs[best].created
    ):
        best = stored
    return best or text


def engine_for_stored(manifest: dict[str, Any]) -> Engine:
    """The engine for a stored job's backend: the local pool, or the profile its manifest
    names (which must still exist in this kernel's configuration; the active one when the
    manifest names none)."""
    if manifest.get("backend", "local") == "local":
        return engine(backend="local")
    return engine(profile=manifest.get("profile") or (manifest.get("backend_info") or {}).get("profile"))


def close_idle() -> list[str]:
    """Stop the pools that run nothing (their workers end); keep those running a job, with their jobs, and
    return those jobs' ids. ``%unload_ext`` and ``%reload_ext`` call it: a reload cancelled a ``--no-wait``
    job that was running, without a word, and ``%azpar collect`` then found it cancelled. The session's
    state (this module) outlives a reload, so the reloaded magics find the job and its pool. ``close``
    still stops everything at exit."""
    with _lock:
        running = {key: [job.id for job in eng.running()] for key, eng in _engines.items()}
        idle = [_engines.pop(key) for key, ids in running.items() if not ids]
    for eng in idle:
        eng.backend.close()
    return [job_id for ids in running.values() for job_id in ids]


def close() -> None:
    """Stop every pool: running local jobs are cancelled, worker processes end. Jobs of a
    backend that outlives the kernel (Azure Batch) run on; ``attach`` takes them over later."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for eng in engines:
        if not eng.backend.outlives_kernel:  # Azure jobs run on; attach follows them later
            for job in eng.running():
                job.cancel()
        eng.backend.close()


atexit.register(close)

"""The per-process state shared by the magic and the Python API: one engine (and so one
pool) per backend configuration, started on first use and closed at unload or exit."""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from . import config
from .backends.base import create_backend
from .engine import Engine
from .job import Job

_lock = threading.Lock()
_engines: dict[tuple, Engine] = {}
_jobs: dict[str, Job] = {}


def settings(overrides: dict[str, Any] | None = None) -> config.Settings:
    return config.load_settings(overrides)


def engine(backend: str | None = None, workers: int | None = None) -> Engine:
    """The engine for this backend configuration, created (not started) on first request."""
    chosen = settings({"backend": backend, "workers": workers})
    size = chosen["workers"]
    if chosen["backend"] == "local":
        size = size or os.cpu_count() or 1  # "default" and an explicit core count: one pool
    key = (chosen["backend"], size)
    with _lock:
        if key not in _engines:
            kwargs = {"workers": size} if chosen["backend"] == "local" else {}
            _engines[key] = Engine(create_backend(chosen["backend"], **kwargs))
        return _engines[key]


def engines() -> list[Engine]:
    """Every engine (pool) this process has created."""
    with _lock:
        return list(_engines.values())


def describe() -> str:
    return engine().backend.describe()


def remember(job: Job) -> None:
    with _lock:
        _jobs[job.id] = job


def jobs() -> list[Job]:
    """Jobs of this process, oldest first."""
    with _lock:
        return sorted(_jobs.values(), key=lambda j: j.created)


def find_job(job_id: str | None) -> Job:
    with _lock:
        if not _jobs:
            raise KeyError("no azpar job has run in this session")
        if job_id is None:
            return max(_jobs.values(), key=lambda j: j.created)
        if job_id in _jobs:
            return _jobs[job_id]
        matches = [j for j in _jobs.values() if j.id.endswith(job_id) or j.id.startswith(job_id)]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(f"no job {job_id!r} in this session (known: {', '.join(sorted(_jobs)) or 'none'})")


def close() -> None:
    """Stop every pool: running jobs are cancelled, worker processes end."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for eng in engines:
        for job in list(eng.jobs.values()):
            if not job.done:
                job.cancel()
        eng.backend.close()


atexit.register(close)

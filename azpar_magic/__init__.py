"""azpar_magic: run the iterations of a notebook ``for`` loop in parallel.

    %load_ext azpar_magic
    %%azpar -o results for x in xs:
    expensive(x)

The same machinery is available without IPython through :func:`run`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import session
from .errors import (AzparError, EnvironmentMismatchError, InfrastructureError, IterationError,
                     JobCancelled, RemoteException)
from .job import Job, JobOptions, JobSnapshot

__version__ = "0.1.0"
__all__ = ["run", "jobs", "Job", "JobSnapshot", "AzparError", "IterationError", "RemoteException",
           "InfrastructureError", "EnvironmentMismatchError", "JobCancelled", "load_ipython_extension",
           "unload_ipython_extension"]


def run(loop: str, body: str, namespace: Mapping[str, Any] | None = None, *, combine: str | Callable = "list",
        errors: str = "stop", gather: Iterable[str] = (), retries: int = 2, timeout: float | None = None,
        chunk_size: int | None = None, seed: int | None = None, export: Iterable[str] = (),
        no_export: Iterable[str] = (), backend: str | None = None, workers: int | None = None) -> Job:
    """Start the loop ``loop`` (``"for x in xs"``) with ``body`` and return its Job at once.

    ``namespace`` defaults to the caller's globals; ``job.result()`` waits and returns the
    combined value exactly as ``%%azpar`` would bind it. Options mean what the magic's do.
    """
    from .engine import RunRequest, SubmitError
    from .parsing import CellError, parse_cell

    if namespace is None:
        namespace = sys._getframe(1).f_globals
    try:
        cell = parse_cell(loop, body)
    except CellError as exc:
        raise ValueError(str(exc)) from None
    options = JobOptions(combine=combine, errors=errors, gather=tuple(gather), retries=retries, timeout=timeout,
                         chunk_size=chunk_size, seed=seed)
    engine = session.engine(backend, workers)
    try:
        job = engine.submit(RunRequest(cell, namespace, options, tuple(export), tuple(no_export)))
    except SubmitError as exc:
        raise ValueError(str(exc)) from None  # bad input to a function: ValueError, as usual
    session.remember(job)
    return job


def jobs() -> list[Job]:
    """The jobs started in this process, oldest first."""
    return session.jobs()


def load_ipython_extension(ipython) -> None:
    from .magics import AzparMagics

    ipython.register_magics(AzparMagics)
    print(f"azpar_magic {__version__}: %%azpar runs loops on the {session.describe()}.")


def unload_ipython_extension(ipython) -> None:
    session.close()

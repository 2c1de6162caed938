"""What the engine needs from a place that runs tasks, and the registry of such places.

Backends plug in by name through the ``azpar_magic.backends`` entry-point group, so a
third party can add one without touching this package; the built-in ones are registered
the same way in pyproject.toml (and found directly when the package is not installed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Protocol, runtime_checkable

from ..jobs import NodeInfo

ENTRY_POINT_GROUP = "azpar_magic.backends"
_BUILTIN = {"local": "azpar_magic.backends.local:LocalBackend",
            "azure": "azpar_magic.backends.azure:AzureBackend"}


@dataclass(frozen=True)
class TaskSpec:
    """One task: a chunk of iterations and their serialised items."""

    task_id: str
    indices: Sequence[int]
    items_codec: str
    items: bytes


@dataclass(frozen=True)
class JobSpec:
    """What every task of a job shares: the envelope header and the namespace bytes."""

    job_id: str
    envelope: dict
    namespace: bytes
    timeout: float | None = None  # per task, seconds
    cwd: str | None = None
    retries: int = 2  # attempts after an infrastructure failure (a backend may delegate them)
    backend_options: dict | None = None  # options only some backends read (--packages, --merge, --keep)
    manifest: dict | None = None  # the job store's manifest (a backend may keep a copy beside the job)


@dataclass(frozen=True)
class TaskEvent:
    """Something happened to a task. ``result`` is the worker's result dict on success."""

    job_id: str
    task_id: str
    kind: str  # "started" | "finished" | "failed"
    node: str | None = None
    result: dict | None = None
    error: str = ""
    retryable: bool = False  # an infrastructure failure that another attempt may survive
    failure_kind: str = "infrastructure"  # infrastructure | environment | cancelled | timeout
    iteration: int | None = None  # timeout: the iteration that was running when the task was killed


EventSink = Callable[[TaskEvent], None]


@runtime_checkable
class Backend(Protocol):
    name: str

    def describe(self) -> str:
        """One line for ``%load_ext``: which backend, where."""

    def pool_info(self) -> tuple[str, str]:
        """(pool id, VM size or worker description) for views."""

    def default_chunk_size(self, n_items: int) -> int:
        """Iterations per task when the user does not say."""

    def start(self) -> None:
        """Make the pool ready (idempotent)."""

    def submit(self, job: JobSpec, tasks: Sequence[TaskSpec], on_event: EventSink) -> None:
        """Stage the job and queue its tasks; events arrive on ``on_event`` from any thread."""

    def resubmit(self, job_id: str, task: TaskSpec) -> None:
        """Queue one task of a submitted job again (after an infrastructure failure)."""

    def nodes(self) -> list[NodeInfo]:
        """The pool's nodes now."""

    def cancel(self, job_id: str, task_ids: Collection[str] | None = None) -> None:
        """Stop the job's tasks (all, or those named): queued ones never start, running
        ones are stopped; each gets a failed event of kind "cancelled"."""

    def finish(self, job_id: str) -> None:
        """The engine is done with the job: release what was staged for it."""

    def close(self) -> None:
        """Stop the pool's processes or connections."""


def available_backends() -> dict[str, str]:
    """name -> "module:attribute" for every known backend."""
    found = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            found[ep.name] = ep.value
    except Exception:  # broken metadata of another distribution must not break us
        pass
    return found


def create_backend(name: str, **settings) -> Backend:
    table = available_backends()
    if name not in table:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(table))}")
    module_name, _, attr = table[name].partition(":")
    factory = getattr(import_module(module_name), attr)
    return factory(**settings)

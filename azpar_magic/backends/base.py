"""What the engine needs from a place that runs tasks, and the registry of such places.

Backends plug in by name through the ``azpar_magic.backends`` entry-point group, so a
third party can add one without touching this package; the built-in ones are registered
the same way in pyproject.toml (and found directly when the package is not installed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any, Protocol, runtime_checkable

from ..errors import NotSupported
from ..jobs import NodeInfo
from ..jobs.cost import Price

ENTRY_POINT_GROUP = "azpar_magic.backends"
_BUILTIN = {"local": "azpar_magic.backends.local:LocalBackend", "azure": "azpar_magic.backends.azure:AzureBackend"}


@dataclass(slots=True)
class TaskSpec:
    """One task: a chunk of iterations and their serialised items. Not changed once made; not
    frozen, as a frozen dataclass costs three times as much to make, and a job makes one per
    task before its first task starts (issue 16, a': 10,000 of them took ~4.5 ms)."""

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


@dataclass(slots=True)
class TaskEvent:
    """Something happened to a task. ``result`` is the worker's result dict on success.

    A value nothing changes once made, but not a frozen dataclass: the local pool makes one per
    task on its dispatcher's thread, and a frozen one's ``__init__`` sets each field through
    ``object.__setattr__``, 1.4 us an event against 0.4 (issue 16, a')."""

    job_id: str
    task_id: str
    kind: str  # "started" | "finished" | "failed"
    node: str | None = None
    result: dict | None = None
    error: str = ""
    retryable: bool = False  # an infrastructure failure that another attempt may survive
    failure_kind: str = "infrastructure"  # infrastructure | environment | cancelled | timeout
    iteration: int | None = None  # timeout: the iteration that was running when the task was killed
    ran: float | None = None  # seconds the task ran, as the service timed it (its core time; None: not known)


EventSink = Callable[[TaskEvent], None]


def timeout_grace(timeout: float) -> float:
    """How long after its --timeout a task is killed. The worker stops the iteration running at the
    --timeout itself and sends what ended before it (worker.TaskTimer); the kill is for a task that did
    not stop (code that never returns to Python, or that swallows the exception), and it loses every value
    the task had. The grace lets the stopped task's values reach the kernel: 5 s, and a twentieth of a
    long limit (an hour's task has 3 minutes), for a task whose values take long to send; at most 10
    minutes, so a week's limit is not a week and 8 hours."""
    return min(5.0 + timeout / 20, 600.0)


def deliver(sink: EventSink, events: Sequence[TaskEvent]) -> None:
    """Hand several events of one job to its sink, in order. A sink with a ``many`` method (the
    engine's) takes them at once: one notification of the job's waiters and views, and one look
    at whether the job ended, for all of them, instead of one each (a read of a worker's pipe
    brings the results of many short tasks, issue 16). Any other callable gets them one by one,
    and so does every sink a lone event: a batch of one notifies once as the event alone does,
    with a bracket around it that one-iteration tasks, one end per read, would pay for nothing."""
    many = getattr(sink, "many", None) if len(events) > 1 else None
    if many is not None:
        many(events)
        return
    for event in events:
        sink(event)


@runtime_checkable
class Required(Protocol):
    """What every backend provides: the engine cannot run a job without these."""

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


# --------------------------------------------------------------------------- capabilities
# Each optional part of the contract is a protocol of its own, so a backend's author reads
# what it means; BaseBackend implements all of them with the defaults of a backend that
# does not have them, and callers use the members directly instead of probing with getattr.


@runtime_checkable
class Views(Protocol):
    """How views label the second half of ``pool_info``."""

    size_label: str  # "VM size" (a machine type) or "size" (a worker count)


@runtime_checkable
class Options(Protocol):
    """Which of ``JobSpec.backend_options`` the backend acts on (the magic says which it ignores)."""

    reads_options: frozenset[str]  # of "packages", "auto_packages", "merge", "keep"


@runtime_checkable
class Reattach(Protocol):
    """Jobs run on when the kernel ends, and a later kernel can follow them."""

    outlives_kernel: bool

    def reattach(
        self,
        job_id: str,
        manifest: dict[str, Any],
        tasks: Sequence[TaskSpec],
        on_event: EventSink,
        *,
        failed_before: bool = False,
    ) -> None:
        """Follow a job an earlier kernel submitted; ``tasks`` are those without a final record."""


@runtime_checkable
class ManifestInfo(Protocol):
    """Where a job lives outside this machine, recorded in the job store's manifest."""

    def manifest_info(self, job_id: str, backend_options: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest's ``backend_info`` (never a secret), or None when there is nothing to say."""


@runtime_checkable
class BlobData(Protocol):
    """``az://`` paths in ``--inputs`` and ``--outputs-to``, and the Blob storage behind them."""

    blob_inputs: bool
    # The workers do not see the kernel's files (nodes in the cloud): a body that opens a file beside
    # the notebook without --inputs fails there only, and the kernel says why (run.hints.missing_file_hint).
    files_are_remote: bool

    def check_data(self, plan: Any) -> None:
        """Check what the data plan's blob paths select, before anything is submitted."""

    def blob_storage(self) -> Any | None:
        """The storage account's client for ``azpar storage`` (None: the backend has none)."""


@runtime_checkable
class Health(Protocol):
    """A remote service that may stop answering while a job runs."""

    def unanswered(self, job_id: str) -> str:
        """A sentence for the job's views when the service stopped answering, else ""."""


@runtime_checkable
class StagedNamespace(Protocol):
    """The namespace bytes are kept where the job ran (the job store does not keep them)."""

    def staged_namespace(self, manifest: dict[str, Any], file_name: str) -> bytes | None:
        """The bytes a stored job staged, or None when they are gone."""


@runtime_checkable
class Environment(Protocol):
    """The nodes install the kernel's distributions (``--packages``, ``auto_packages``)."""

    installs_packages: bool
    profile: Any  # the configuration profile the backend runs (None: none)

    def image_packages(self) -> tuple[dict[str, str] | None, str]:
        """What the pool's image has installed, and where that was read (or why not)."""


@runtime_checkable
class JobCleanup(Protocol):
    """Something of a job lives outside the job store and must be deleted with it."""

    def delete_job(self, job_id: str, *, strict: bool = True) -> None:
        """Remove what the backend keeps of the job (already gone: fine)."""


@runtime_checkable
class Costs(Protocol):
    """What a node hour costs and what caps a job's spending (jobs/cost.py meters it)."""

    def node_prices(self) -> Price | None:
        """The price of a node hour by priority (its figures None when unknown); None: nothing is billed."""

    def cores_per_task(self) -> float:
        """vCPUs one task slot has: a task's run time times this is its core time."""

    def cost_cap(self) -> float | None:
        """The most a job may cost unless its ``--max-cost`` says otherwise (a profile's), None for no cap."""

    def cost_note(self) -> str:
        """The pool's burn rate now and since when it is idle, one line ("" when nothing is billed)."""


@runtime_checkable
class PoolAdministration(Protocol):
    """``%azpar pool`` and the configuration form's buttons."""

    pool_admin: bool

    def test_connection(self) -> str:
        """Reach the services once; one line."""

    def pool_status(self) -> Any | None:
        """The pool as the service reports it (None: it does not exist)."""

    def pool_create(self) -> str:
        """Create the pool (or find it); one line."""

    def pool_resize(self, dedicated: int, spot: int) -> str:
        """Ask for this many nodes; one line."""

    def pool_delete(self) -> str:
        """Delete the pool; one line."""


@runtime_checkable
class Backend(
    Required,
    Views,
    Options,
    Reattach,
    ManifestInfo,
    BlobData,
    Health,
    StagedNamespace,
    Environment,
    JobCleanup,
    Costs,
    PoolAdministration,
    Protocol,
):
    """Every member a backend may provide: the required ones and each optional capability
    (a backend subclassing BaseBackend has the optional ones, as "not supported" defaults)."""


class BaseBackend:
    """The defaults of every optional capability, for backends to subclass: a capability a
    backend does not override is absent (its flag False, its query answering "nothing", its
    action raising NotSupported). The required members are the ``Backend`` protocol's."""

    name = "?"
    size_label = "VM size"
    reads_options: frozenset[str] = frozenset()
    outlives_kernel = False
    blob_inputs = False
    files_are_remote = False
    installs_packages = False
    pool_admin = False
    profile: Any = None

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"the {self.name} backend does not support {what}")

    def reattach(
        self,
        job_id: str,
        manifest: dict[str, Any],
        tasks: Sequence[TaskSpec],
        on_event: EventSink,
        *,
        failed_before: bool = False,
    ) -> None:
        raise self._unsupported("following a job of another kernel")

    def manifest_info(self, job_id: str, backend_options: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def check_data(self, plan: Any) -> None:
        return None

    def blob_storage(self) -> Any | None:
        return None

    def unanswered(self, job_id: str) -> str:
        return ""

    def staged_namespace(self, manifest: dict[str, Any], file_name: str) -> bytes | None:
        raise self._unsupported("reading a staged namespace")

    def image_packages(self) -> tuple[dict[str, str] | None, str]:
        return None, f"the {self.name} backend installs nothing"

    def delete_job(self, job_id: str, *, strict: bool = True) -> None:
        return None

    def node_prices(self) -> Price | None:
        return None

    def cores_per_task(self) -> float:
        return 1.0

    def cost_cap(self) -> float | None:
        return None

    def cost_note(self) -> str:
        return ""

    def test_connection(self) -> str:
        raise self._unsupported("connection tests")

    def pool_status(self) -> Any | None:
        raise self._unsupported("pool administration")

    def pool_create(self) -> str:
        raise self._unsupported("pool administration")

    def pool_resize(self, dedicated: int, spot: int) -> str:
        raise self._unsupported("pool administration")

    def pool_delete(self) -> str:
        raise self._unsupported("pool administration")


def available_backends() -> dict[str, str]:
    """name -> "module:attribute" for every known backend."""
    found = dict(_BUILTIN)
    try:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            found[ep.name] = ep.value
    except Exception:  # broken metadata of another distribution must not break us
        pass
    return found


def backend_entry(name: str) -> str:
    """``name``'s "module:attribute", without importing it; ValueError naming the available backends
    for a name no backend has (a misspelt ``azur``). A built-in name is not looked up among the
    installed distributions' entry points: that scan cost 60 ms of a kernel's first cell (issue 16),
    and a built-in name means the built-in backend."""
    table = _BUILTIN if name in _BUILTIN else available_backends()
    if name not in table:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def backend_class(name: str) -> Callable[..., Backend]:
    """The class (or factory) registered under ``name``: the one place a backend is found by name."""
    module_name, _, attr = backend_entry(name).partition(":")
    return getattr(import_module(module_name), attr)


def create_backend(name: str, **settings: Any) -> Backend:
    return backend_class(name)(**settings)

"""The immutable pieces of the job model: a job's options, one node, one failure, one task's bookkeeping, and
the snapshot every view renders (text, HTML or widget state all come from one ``JobSnapshot``).

They hold plain data and know nothing of how a job runs, so the job store, the backends and the views can
use them without the Job itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EnvironmentMismatchError, InfrastructureError, JobCancelled, RemoteException, TaskTimeoutError
from .states import FINAL_STATES, QUEUED, TaskStatus


@dataclass(frozen=True)
class NodeInfo:
    """One node of a pool (a worker process locally, a VM on Azure)."""

    id: str
    state: str  # idle, running, starting, lost, or any Batch node state
    task: str | None = None
    dedicated: bool = True
    note: str = ""  # why it looks stuck (no heartbeat, stopped, no progress), "" when it does not


@dataclass(frozen=True)
class Failure:
    """Why one iteration has no value."""

    index: int
    error_type: str
    message: str
    traceback: str = ""
    line: int | None = None
    kind: str = "user"  # user | infrastructure | environment | cancelled
    exc: Any = None  # the rebuilt exception object, when it could be rebuilt

    @property
    def summary(self) -> str:
        short = self.error_type.rsplit(".", 1)[-1]
        where = f" (line {self.line})" if self.line else ""
        return f"{short}: {self.message}{where}"

    def as_exception(self) -> BaseException:
        if isinstance(self.exc, BaseException):
            return self.exc
        if self.kind == "infrastructure":
            if self.error_type == "azpar_magic.TaskTimeoutError":
                return TaskTimeoutError(self.message)
            return InfrastructureError(self.message)
        if self.kind == "environment":
            return EnvironmentMismatchError(self.message)
        if self.kind == "cancelled":
            return JobCancelled(self.message)
        return RemoteException(self.error_type, self.message, self.traceback)


@dataclass(frozen=True)
class FailureView:
    index: int
    item: str
    summary: str
    traceback: str
    output: str = ""  # what the iteration printed (stdout/stderr), cut to a few thousand characters


@dataclass(frozen=True)
class JobSnapshot:
    """Everything a view shows, frozen at one instant: the same snapshot renders as text,
    HTML or widget state."""

    job_id: str
    backend: str
    pool: str
    vm_size: str
    state: str
    items_total: int
    items_done: int  # iterations with a final outcome: value, failure or cancelled
    items_failed: int  # failures of the iteration itself (user, infrastructure, environment)
    items_cancelled: int
    tasks_total: int
    tasks_queued: int
    tasks_running: int
    tasks_succeeded: int
    tasks_failed: int
    nodes: tuple[NodeInfo, ...]
    elapsed: float
    eta: float | None
    throughput: float | None  # iterations per second
    failures: tuple[FailureView, ...]
    source_first_line: str = ""
    errors: str = "stop"  # the job's --errors policy: views say "done with N failed" under remove/pass
    stalled: tuple[str, ...] = ()  # running tasks that look stuck: "task 3: worker-2 is not responding: ..."
    unanswered: str = ""  # the backend's service has not answered for a while: what and since when
    tasks_cancelled: int = 0  # tasks all of whose iterations were cancelled (not counted in tasks_failed)
    name: str = ""  # the job's --name: the panel's title shows it
    from_cache: int = 0  # iterations whose value --cache reused from an earlier job
    size_label: str = "VM size"  # what views call vm_size, as the backend declares it ("size": a worker count)
    cost: Any = None  # jobs.cost.CostEstimate (which imports this module): node and task time; None: not metered
    stop_reason: str = ""  # why azpar stopped the job itself (its cost cap), "" when it did not

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def items_succeeded(self) -> int:
        return self.items_done - self.items_failed - self.items_cancelled


@dataclass(slots=True)  # a job of 10,000 one-iteration tasks makes 10,000 before its first starts
class TaskState:
    task_id: str
    indices: Sequence[int]
    state: TaskStatus = QUEUED
    attempts: int = 1
    node: str | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None


@dataclass
class JobOptions:
    combine: Any = "list"  # a mode name or a callable
    errors: str = "stop"
    gather: tuple[str, ...] = ()
    retries: int = 2
    timeout: float | None = None
    chunk_size: int | None = None
    seed: int | None = None
    output_name: str | None = None
    inputs: tuple[str, ...] = ()  # --inputs specs (data.py)
    outputs: tuple[str, ...] = ()  # --outputs globs
    outputs_to: str | None = None  # --outputs-to folder or az:// path
    name: str | None = None  # --name: a short label commands accept instead of the id (jobstore.check_name)
    cache: bool = False  # --cache: reuse stored values of unchanged iterations (run/cache.py)
    max_cost: float | None = None  # --max-cost: cancel the job once its estimated cost passes this

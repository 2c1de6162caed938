"""Backend-neutral orchestration: from a parsed cell to a running Job.

The engine evaluates and materialises the iterable, captures the namespace, cuts the
items into tasks, submits them, and turns the backend's task events into per-iteration
records on the Job: retrying infrastructure failures (never user exceptions), stopping
early under ``--errors stop``, and finishing the job when every task is final.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import capture as capture_mod
from . import merge
from . import worker as wire
from .backends.base import Backend, JobSpec, TaskEvent, TaskSpec
from .job import CANCELLED, FAILED, SUCCEEDED, TASK_FAILED, TASK_SUCCEEDED, Failure, Job, JobOptions
from .parsing import ParsedCell


class SubmitError(ValueError):
    """Nothing was submitted; the message says why, in one paragraph."""


@dataclass
class RunRequest:
    """Everything needed to start one run, whoever asked (the magic or the Python API)."""

    cell: ParsedCell
    namespace: Mapping[str, Any]
    options: JobOptions
    export: tuple[str, ...] = ()
    no_export: tuple[str, ...] = ()
    folder: str | None = None
    extra: dict = field(default_factory=dict)


def new_job_id() -> str:
    """Sortable by time, unguessable, and a valid Batch id (letters, digits, '-')."""
    return time.strftime("azpar-%Y%m%d-%H%M%S-") + secrets.token_hex(6)


def materialize(cell: ParsedCell, namespace: Mapping[str, Any]) -> list:
    """Evaluate the iterable once in the namespace and take all its items."""
    try:
        scope = namespace if isinstance(namespace, dict) else dict(namespace)
        iterable = eval(compile(cell.iterable_source, "<azpar iterable>", "eval"), scope)
    except Exception as exc:
        raise SubmitError(f"The iterable `{cell.iterable_source}` could not be evaluated: "
                          f"{type(exc).__name__}: {exc}. Nothing was submitted.") from None
    try:
        return list(iterable)
    except Exception as exc:
        raise SubmitError(f"Iterating over `{cell.iterable_source}` raised {type(exc).__name__}: {exc}. "
                          "Nothing was submitted.") from None


def chunk_indices(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


class _Run:
    """Routes one job's task events to its Job; owns retries and early stop."""

    def __init__(self, engine: Engine, job: Job, spec: JobSpec, tasks: dict[str, TaskSpec]):
        self.engine, self.job, self.spec, self.tasks = engine, job, spec, tasks
        self.lock = threading.Lock()
        self.stopping = False

    def on_event(self, event: TaskEvent) -> None:
        try:
            self._handle(event)
        except Exception as exc:  # never let a decoding bug kill the backend's thread
            self.job.record_task_failed(event.task_id, lambda i: Failure(
                i, "azpar_magic.InternalError", f"could not read the task's result: {exc}", kind="infrastructure"))
        self._maybe_finish()

    def _handle(self, event: TaskEvent) -> None:
        job = self.job
        if event.kind == "started":
            job.record_task_started(event.task_id, event.node)
            return
        if event.kind == "finished":
            self._record_result(event)
            return
        task = job.task(event.task_id)
        if event.retryable and task.attempts <= job.options.retries and not self.stopping:
            job.record_task_requeued(event.task_id, event.error)
            self.engine.backend.resubmit(job.id, self.tasks[event.task_id])
            return
        kind = {"timeout": "infrastructure"}.get(event.failure_kind, event.failure_kind)
        etype = {"timeout": "TimeoutError", "environment": "EnvironmentMismatchError",
                 "cancelled": "JobCancelled"}.get(event.failure_kind, "InfrastructureError")
        attempts = f" (after {task.attempts} attempts)" if task.attempts > 1 else ""
        job.record_task_failed(event.task_id, lambda i: Failure(
            i, f"azpar_magic.{etype}", event.error + attempts, kind=kind))
        if kind != "cancelled":
            self._stop_early()

    def _record_result(self, event: TaskEvent) -> None:
        result = event.result or {}
        if event.node and result.get("worker"):
            self.job.worker_stats[event.node] = result["worker"]
        indices = self.tasks[event.task_id].indices
        if list(result["indices"]) != list(indices):
            raise ValueError(f"task {event.task_id} answered for other iterations than it was given")
        values = _decode_list(result["values"], len(indices))
        gathered = None
        if result.get("gathered") is not None:
            rows = _decode_list(result["gathered"], len(indices))
            gathered = {name: [(row or {}).get(name) for row in rows] for name in self.job.options.gather}
        failures = {i: _failure_from_record(i, rec) for i, rec in result.get("failed", {}).items()}
        self.job.record_values(event.task_id, indices, values, failures, result.get("outputs", {}), gathered)
        if failures:
            self._stop_early()

    def _stop_early(self) -> None:
        """``--errors stop``: the result will be an error, so stop spending compute."""
        if self.job.options.errors != "stop":
            return
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
        threading.Thread(target=self.engine.backend.cancel, args=(self.job.id,), daemon=True).start()

    def _maybe_finish(self) -> None:
        job = self.job
        if job.done or any(t.state not in (TASK_SUCCEEDED, TASK_FAILED) for t in job.tasks.values()):
            return
        if self.engine.cancelled(job.id):
            state = CANCELLED
        elif job.failures:
            state = FAILED
        else:
            state = SUCCEEDED
        job.finish(state)
        self.engine.forget(job.id)


def _decode_list(encoded, n: int) -> list:
    mode = encoded[0]
    if mode == "all":
        return list(wire.loads(encoded[1], encoded[2]))
    return [wire.loads(*blob) if blob is not None else None for blob in encoded[1]]


def _failure_from_record(index: int, rec: dict) -> Failure:
    exc = None
    if rec.get("exc"):
        try:
            exc = wire.loads(*rec["exc"])
        except Exception:  # the exception's class may not exist here
            exc = None
    return Failure(index, rec.get("type", "Exception"), rec.get("message", ""), rec.get("traceback", ""),
                   rec.get("line"), "user", exc)


class Engine:
    """Submits runs to one backend and tracks their jobs."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._runs: dict[str, _Run] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self.jobs: dict[str, Job] = {}

    def prepare(self, request: RunRequest) -> list:
        """The checks on the items that can fail on bad input, before anything is submitted."""
        items = materialize(request.cell, request.namespace)
        if request.options.combine == "dict":
            try:
                merge.check_dict_keys(items)
            except merge.CombineError as exc:
                raise SubmitError(f"{exc} Nothing was submitted.") from None
        return items

    def submit(self, request: RunRequest) -> Job:
        options = request.options
        items = self.prepare(request)
        job_id = new_job_id()
        pool, vm_size = self.backend.pool_info()
        job = Job(job_id, items, options, backend_name=self.backend.name, pool=pool, vm_size=vm_size,
                  source=request.cell.source, nodes=self.backend.nodes, cancel=lambda: self.cancel(job_id))
        self.jobs[job_id] = job
        if not items:
            job.finish(SUCCEEDED)
            return job
        try:
            cap = capture_mod.capture(request.cell, request.namespace, export=request.export,
                                      no_export=request.no_export, folder=request.folder, items=items)
        except capture_mod.CaptureError as exc:
            del self.jobs[job_id]
            raise SubmitError(str(exc)) from None
        envelope = capture_mod.envelope_header(request.cell, cap, gather=options.gather, seed=options.seed)
        size = options.chunk_size or self.backend.default_chunk_size(len(items))
        tasks: dict[str, TaskSpec] = {}
        for number, indices in enumerate(chunk_indices(len(items), size), start=1):
            codec, data = capture_mod.serialize_items(items[indices.start:indices.stop])
            tasks[str(number)] = TaskSpec(str(number), indices, codec, data)
            job.add_task(str(number), indices)
        spec = JobSpec(job_id, envelope, cap.data, timeout=options.timeout, cwd=request.folder or os.getcwd(),
                       extra=dict(request.extra))
        run = _Run(self, job, spec, tasks)
        with self._lock:
            self._runs[job_id] = run
        job.capture = cap
        job.mark_running()
        self.backend.submit(spec, list(tasks.values()), run.on_event)
        return job

    def cancel(self, job_id: str) -> None:
        with self._lock:
            if job_id not in self._runs:
                return
            self._cancelled.add(job_id)
        self.backend.cancel(job_id)

    def cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._runs.pop(job_id, None)
        self.backend.finish(job_id)

"""Adding a job's tasks: add-task-collection calls of at most 100 tasks and under 1 MB,
several in flight, halved on RequestBodyTooLarge, retried with backoff on server errors and
throttling (waiting at least what Retry-After asks), and idempotent: a task that already
exists was added by an earlier attempt whose answer was lost (the tasks are numbered within
this run's own job, which ``AzureRun._create_job`` checked is ours, so TaskExists can only
come from this run; the SDK's own bulk add treats it the same way).

doAzureParallel added one task per REST call (3,375 tasks took about 15 minutes); this adds
them a hundred at a time with a few calls in flight, and sends each group as soon as it is
built (the first tasks can run while the last definitions are still being made). Definitions
travel as REST wire JSON (``wire_json``): building a dozen SDK models per task was most of the
submit thread's time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from . import retry
from .threads import ThreadPool

MAX_TASKS_PER_CALL = 100
MAX_BODY_BYTES = 1_000_000
BODY_BUDGET = 900_000  # leave room for the JSON the estimate does not see
IN_FLIGHT = 4
MAX_ATTEMPTS = retry.ADD_ATTEMPTS  # requests per group at most: this loop is the only retry layer (retry.py)
BACKOFF = retry.ADD_BACKOFF  # seconds, doubled per attempt, with jitter


def wire_json(model: Any) -> Any:
    """An SDK model as the JSON the SDK itself would send (REST wire names, read-only fields left out), through
    the models' public ``as_dict``; the JSON round trip makes sure what is kept is plain JSON."""
    return json.loads(json.dumps(model.as_dict(exclude_readonly=True)))


@dataclass
class PendingTask:
    """A task definition (REST wire JSON), an estimate of its JSON size (known from its parts)
    and, for a task whose inputs are too large to travel inline, the blob to upload before it is added."""

    definition: dict[str, Any]
    size: int
    upload: tuple[str, bytes] | None = None

    @property
    def task_id(self) -> str:
        return self.definition["id"]


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # task id -> why it could not be added
    calls: int = 0
    halvings: int = 0
    retries: int = 0


def cut(tasks: Iterable[PendingTask]) -> Iterator[list[PendingTask]]:
    """Consecutive groups of at most 100 tasks whose estimated body fits the budget, each given
    as soon as it is complete (``tasks`` may still be being built)."""
    current: list[PendingTask] = []
    size = 0
    for task in tasks:
        if current and (len(current) >= MAX_TASKS_PER_CALL or size + task.size > BODY_BUDGET):
            yield current
            current, size = [], 0
        current.append(task)
        size += task.size
    if current:
        yield current


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return True
    status = getattr(exc, "status_code", None)
    return status is not None and (status >= 500 or status in (408, 429))


def _too_large(exc: Exception) -> bool:
    if getattr(exc, "status_code", None) == 413:
        return True
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) == "RequestBodyTooLarge"


class TaskAdder:
    """Adds groups concurrently; ``on_added`` hears each group's added ids as they land."""

    def __init__(
        self,
        client: Any,
        job_id: str,
        *,
        in_flight: int = IN_FLIGHT,
        on_added: Callable[[list[str]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.client, self.job_id = client, job_id
        self.in_flight = in_flight
        self.on_added = on_added or (lambda ids: None)
        self.should_stop = should_stop or (lambda: False)
        self.report = AddReport()
        self._lock = threading.Lock()
        self._halted = False  # building or preparing a group failed: send nothing more

    def add(
        self, tasks: Iterable[PendingTask], prepare: Callable[[list[PendingTask]], None] | None = None
    ) -> AddReport:
        """Add ``tasks`` (an iterator is consumed as it is built: each group goes out once complete).
        ``prepare(group)`` runs before a group's first call (uploading its large inputs); if it or
        building a definition fails, no further group is sent and the error is raised."""
        with ThreadPool(self.in_flight, thread_name_prefix="azpar-add") as pool:
            futures = []
            try:
                for group in cut(tasks):
                    if self.should_stop():  # cancelled: what is not built yet is never sent
                        break
                    futures.append(pool.submit(self._prepare_and_add, group, prepare))
            except BaseException:
                self._halted = True
                raise
            for future in futures:
                future.result()
        return self.report

    def _prepare_and_add(self, group: list[PendingTask], prepare: Callable[[list[PendingTask]], None] | None) -> None:
        if prepare is not None and not self._halted:
            try:
                prepare(group)
            except BaseException:
                self._halted = True
                raise
        self._add_group(group)

    def _add_group(self, group: list[PendingTask]) -> None:
        attempt = 0
        while group:
            if self._halted:
                self._fail(group, "an earlier group of tasks could not be prepared, so this one was not added")
                return
            if self.should_stop():
                self._fail(group, "the job was cancelled before this task was added")
                return
            with self._lock:
                self.report.calls += 1
            try:
                result = self.client.create_task_collection(  # without the SDK's retries: 6 x 4 requests otherwise
                    self.job_id, {"value": [t.definition for t in group]}, **retry.NO_SDK_RETRY
                )
            except HttpResponseError as exc:
                if _too_large(exc) and len(group) > 1:
                    with self._lock:
                        self.report.halvings += 1
                    half = len(group) // 2
                    self._add_group(group[:half])
                    self._add_group(group[half:])
                    return
                if _retryable(exc) and attempt + 1 < MAX_ATTEMPTS:
                    attempt += 1
                    self._backoff(attempt, _retry_after(exc))
                    continue
                self._fail(group, f"adding the task failed: {_describe(exc)}")
                return
            except (ServiceRequestError, ServiceResponseError) as exc:
                if attempt + 1 < MAX_ATTEMPTS:
                    attempt += 1
                    self._backoff(attempt)
                    continue
                self._fail(group, f"adding the task failed: {_describe(exc)}")
                return
            group, attempt = self._sort_results(group, result, attempt)

    def _sort_results(self, group: list[PendingTask], result: Any, attempt: int) -> tuple[list[PendingTask], int]:
        """Record added tasks; return those to try again (server errors per task)."""
        by_id = {t.task_id: t for t in group}
        added, again = [], []
        for value in result.result_values or []:
            task = by_id.pop(value.task_id, None)
            if task is None:
                continue
            code = getattr(value.error, "code", None) if value.error else None
            if value.status == "success" or code == "TaskExists":
                added.append(value.task_id)
            elif value.status == "servererror" and attempt + 1 < MAX_ATTEMPTS:
                again.append(task)
            else:
                message = getattr(value.error, "message", None) or code or value.status
                self._fail([task], f"the service refused the task: {code}: {message}")
        again.extend(by_id.values())  # not mentioned in the answer: try again
        if added:
            with self._lock:
                self.report.added.extend(added)
            self.on_added(added)
        if again:
            attempt += 1
            self._backoff(attempt)
        return again, attempt

    def _fail(self, group: list[PendingTask], why: str) -> None:
        with self._lock:
            for task in group:
                self.report.failed[task.task_id] = why

    def _backoff(self, attempt: int, at_least: float = 0.0) -> None:
        """Wait before the next attempt: exponential with jitter, and no less than the
        Retry-After a throttled answer asked for (capped at retry.RETRY_AFTER_CAP)."""
        with self._lock:
            self.report.retries += 1
        time.sleep(max(BACKOFF * (2 ** (attempt - 1)) * (0.5 + random.random()), min(at_least, retry.RETRY_AFTER_CAP)))


def _retry_after(exc: Exception) -> float:
    """Seconds a 429/503 answer's Retry-After header asks for (0 without one)."""
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def _describe(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    status = getattr(exc, "status_code", None)
    message = getattr(error, "message", None) or str(exc).splitlines()[0]
    return f"HTTP {status} {code}: {message}" if status else f"{type(exc).__name__}: {message}"

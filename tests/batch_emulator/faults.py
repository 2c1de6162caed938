"""Fault plans tests arm through the service object; each is consumed as it fires.

Besides the injected failures, this holds the service's *consistency and throttling model*
(switchable per test through ``svc.faults``; ``svc.reset()`` restores the defaults):

- **Lagging counts and filtered lists** (``set_lag``, on by default, DEFAULT_COUNTS_LAG /
  DEFAULT_LIST_LAG). Source: the REST spec's Get Task Counts ("the numbers ... may not always be
  up to date"; use a list query for exact numbers) and pypeliner's Batch queue, which added an
  unfiltered sweep after a filtered ``state eq 'completed' and stateTransitionTime gt ...`` list
  missed a completed task on real Batch. A change to a task reaches the counts ``counts_lag``
  seconds, and ``$filter`` lists ``list_lag`` seconds, after it happened; a GET and an unfiltered
  list read the task as it is. The defaults are small and equal (a filtered list made after the
  counts showed a completion also shows it) so the suite stays fast and deterministic: nothing
  here is random, every delay counts from the change's own stateTransitionTime.
- **A completed task missing from filtered lists** (``hide_from_filtered_lists``, off by
  default): its completion reaches ``$filter`` lists only after ``seconds`` more (never, by
  default), while counts, GETs and unfiltered lists show it.
- **Throttling** (``throttle``, off by default): the next matching requests are answered 429
  ``TooManyRequests`` or 503 ``ServerBusy`` with ``Retry-After``. Source: azure-core 1.41
  ``RetryPolicy`` (retries any method when Retry-After is present, honouring its seconds);
  Azure documents neither the request rates that trigger it nor the Batch body code of a 429.
- **Lost responses** (``lose_responses``, off by default): the operation succeeds, then the
  answer is a 5xx as if the response was lost on the way back, so the SDK's own retry of the
  POST (azure-core retries POST on 500/503/504) meets ``JobExists`` / ``TaskExists``. Source:
  the azure-batch 15.1 SDK's add-task-collection docstring ("if the server times out or the
  connection is closed during the request, the request may have been partially or fully
  processed"); ``partial`` processes only the first N tasks of a collection; ``status=0``
  closes the connection unanswered (the front end, server.py), which azure-core does not resend.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

from .errors import BatchServiceError
from .rules import ServiceRules

#: Seconds before a task's change shows in the job's task counts / in $filter lists (defaults).
DEFAULT_COUNTS_LAG = 0.2
DEFAULT_LIST_LAG = 0.2
_THROTTLE_CODES = {429: "TooManyRequests", 503: "ServerBusy"}
_LOST_CODES = {500: "InternalServerError", 503: "ServerBusy", 504: "OperationTimedOut"}


class ResponseDropped(Exception):
    """Raised after an operation took effect: the front end closes the connection unanswered."""


@dataclass
class RequestFault:
    pattern: re.Pattern
    method: str | None
    remaining: int
    status: int
    retry_after: float | None = None   # throttling: answered with Retry-After (seconds)
    skip: int = 0                       # let this many matching requests through first


@dataclass
class LostResponse:
    operation_id: str
    remaining: int
    status: int
    partial: int | None = None          # add-task-collection: process only the first N tasks


@dataclass
class Consistency:
    """How far behind the task counts and the $filter lists are (see the module docstring)."""
    counts_lag: float = DEFAULT_COUNTS_LAG
    list_lag: float = DEFAULT_LIST_LAG
    hidden: dict[tuple[str, str], float] = field(default_factory=dict)  # (job or "*", task) -> s


class Faults:
    """Thread-safe counters for the fault hooks (see BatchEmulator's fault methods)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_faults: list[RequestFault] = []
        self.upload_failures = 0
        self.start_task_failures: dict[str | None, int] = {}
        self.node_start_delay: dict[str | None, float] = {}
        self.lost_responses: list[LostResponse] = []
        self.refused: dict[str, str] = {}
        self.consistency = Consistency()
        self.rules = ServiceRules()                 # the spec's limits and rules, switchable (rules.py)
        self.image_pulls: dict[str, float] = {}     # image name (lower case) -> pulls left to fail

    # ---- consistency -----------------------------------------------------------------------
    def set_lag(self, counts: float | None = None, lists: float | None = None) -> None:
        """Seconds before a task's change shows in its job's task counts / in $filter lists
        (0 makes them exact)."""
        with self._lock:
            if counts is not None:
                self.consistency.counts_lag = float(counts)
            if lists is not None:
                self.consistency.list_lag = float(lists)

    def hide_from_filtered_lists(self, task_id: str, seconds: float = math.inf, job_id: str | None = None) -> None:
        """Task ``task_id`` (of ``job_id``, or of any job) reaches $filter lists ``seconds``
        after it completes (never, by default); counts, GETs and unfiltered lists see it."""
        with self._lock:
            self.consistency.hidden[((job_id or "*").lower(), task_id.lower())] = float(seconds)

    def list_delays(self, job_id: str, task_id: str) -> tuple[float, float]:
        """(lag of every change, extra delay of a completion) for this task in $filter lists."""
        with self._lock:
            c = self.consistency
            extra = c.hidden.get((job_id.lower(), task_id.lower()), c.hidden.get(("*", task_id.lower()), 0.0))
            return c.list_lag, extra

    def counts_lag(self) -> float:
        with self._lock:
            return self.consistency.counts_lag

    # ---- throttling and lost responses ----------------------------------------------------------
    def throttle(self, pattern: str = ".*", count: int = 1, status: int = 429, retry_after: float = 1,
                 method: str | None = None, skip: int = 0) -> None:
        """Answer the next ``count`` requests whose decoded path matches ``pattern`` (after
        letting ``skip`` of them through) with ``status`` and a Retry-After of ``retry_after`` s."""
        if status not in _THROTTLE_CODES:
            raise ValueError("throttling answers 429 or 503")
        with self._lock:
            self.request_faults.append(RequestFault(re.compile(pattern), method.upper() if method else None,
                                                    count, status, retry_after=retry_after, skip=skip))

    def lose_responses(self, operation_id: str, count: int = 1, status: int = 503,
                       partial: int | None = None) -> None:
        """The next ``count`` successful calls of ``operation_id`` (e.g. Jobs_CreateJob,
        Tasks_CreateTask, Tasks_CreateTaskCollection) take effect but are answered ``status``;
        ``status=0`` closes the connection without an answer instead (azure-core does not
        resend a POST then: the caller sees ServiceResponseError)."""
        if status and status not in _LOST_CODES:
            raise ValueError(f"a lost response is answered with one of {sorted(_LOST_CODES)}, or 0 (no answer)")
        with self._lock:
            self.lost_responses.append(LostResponse(operation_id, count, status, partial))

    def refuse_tasks(self, *task_ids: str, code: str = "InvalidPropertyValue") -> None:
        """Add-task-collection answers these tasks with a per-task ``clienterror`` (the spec's
        TaskAddResult), every time: tests of a task that could not be added."""
        with self._lock:
            self.refused.update({t.lower(): code for t in task_ids})

    def refusal(self, task_id: str) -> str | None:
        with self._lock:
            return self.refused.get(task_id.lower())

    def take_lost_response(self, operation_id: str) -> LostResponse | None:
        with self._lock:
            for lost in self.lost_responses:
                if lost.remaining > 0 and lost.operation_id == operation_id:
                    lost.remaining -= 1
                    return lost
        return None

    @staticmethod
    def lost_error(lost: LostResponse) -> Exception:
        if not lost.status:
            return ResponseDropped(lost.operation_id)
        return BatchServiceError(lost.status, _LOST_CODES[lost.status],
                                 "The operation was performed but its response was lost (emulator hook).")

    def add_request_fault(self, pattern: str, count: int, status: int, method: str | None) -> None:
        with self._lock:
            self.request_faults.append(RequestFault(re.compile(pattern), method.upper() if method else None,
                                                    count, status))

    def take_request_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self.request_faults:
                if f.remaining > 0 and (f.method is None or f.method == method) and f.pattern.search(path):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    f.remaining -= 1
                    if f.retry_after is not None:
                        raise BatchServiceError(f.status, _THROTTLE_CODES[f.status],
                                                "The server is busy: retry after the time given (emulator hook).",
                                                headers={"Retry-After": f"{f.retry_after:g}"})
                    return f.status
        return None

    # ---- container image pulls --------------------------------------------------------------
    def fail_image_pull(self, image_name: str, count: float = math.inf) -> None:
        """The next ``count`` pulls (every one, by default) of ``image_name`` fail: a node of a
        pool whose containerConfiguration prefetches it goes ``unusable`` with a node error
        naming the image, before its start task (engine.py: Engine._pull_images)."""
        with self._lock:
            self.image_pulls[image_name.lower()] = float(count)

    def take_image_pull_failure(self, image_names: list[str]) -> str | None:
        """The first of ``image_names`` whose pull is armed to fail (that pull is used up)."""
        with self._lock:
            for name in image_names:
                if self.image_pulls.get(name.lower(), 0) > 0:
                    self.image_pulls[name.lower()] -= 1
                    return name
        return None

    def take_upload_failure(self) -> bool:
        with self._lock:
            if self.upload_failures > 0:
                self.upload_failures -= 1
                return True
        return False

    def take_start_task_failure(self, pool_id: str) -> bool:
        with self._lock:
            for key in (pool_id, None):
                if self.start_task_failures.get(key, 0) > 0:
                    self.start_task_failures[key] -= 1
                    return True
        return False

    def extra_start_delay(self, pool_id: str) -> float:
        with self._lock:
            return self.node_start_delay.get(pool_id, self.node_start_delay.get(None, 0.0))

    def clear(self) -> None:
        with self._lock:
            self.request_faults.clear()
            self.upload_failures = 0
            self.start_task_failures.clear()
            self.node_start_delay.clear()
            self.lost_responses.clear()
            self.refused.clear()
            self.consistency = Consistency()
            self.rules = ServiceRules()
            self.image_pulls.clear()

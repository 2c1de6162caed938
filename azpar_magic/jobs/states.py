"""A job's and a task's states, and the rules that turn what happened to a task into a state.

States are string enums: a member *is* its string (``JobState.SUCCEEDED == "succeeded"``), so manifests,
``%azpar jobs --state`` and user code that compares with plain strings see the same values as before the
enums existed, and JSON holds ``"succeeded"``, never the member's name.

The rules are tables, read by everything that decides a state: the Job fed by the engine (``Job.record_*``,
``Job.final_state``), the job store rebuilding a stored job's tasks, and the engine's run mapping a backend's
failure kind to the failure it records. One table per question, so the answer cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class _StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10 too: ``str()``, ``format()`` and f-strings give the value, and so does
    ``repr()``: a notebook showing ``job.state`` or a list of states reads ``'succeeded'``, as it did when states
    were plain strings."""

    def __repr__(self) -> str:
        return str.__repr__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class JobState(_StrEnum):
    """Where a job stands. LOST: the process that ran it ended before it did (a local job dies with its
    kernel): its finished iterations are kept and ``rerun --failed`` completes it. DONE: iterations failed,
    but ``--errors remove/pass`` still gave the result; FAILED: a failure makes ``result()`` raise."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class TaskStatus(_StrEnum):
    """Where one task (a chunk of iterations) stands. CANCELLED: every iteration of it was cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The names the package used before the enums: the members themselves, so call sites read as before.
PENDING, RUNNING, SUCCEEDED, DONE = JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.DONE
FAILED, CANCELLED, LOST = JobState.FAILED, JobState.CANCELLED, JobState.LOST
FINAL_STATES: tuple[JobState, ...] = (SUCCEEDED, DONE, FAILED, CANCELLED, LOST)

QUEUED, TASK_RUNNING, TASK_SUCCEEDED = TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED
TASK_FAILED, TASK_CANCELLED = TaskStatus.FAILED, TaskStatus.CANCELLED
TASK_FINAL: tuple[TaskStatus, ...] = (TASK_SUCCEEDED, TASK_FAILED, TASK_CANCELLED)


class TaskStep(_StrEnum):
    """What can happen to a task, as the Job records it."""

    STARTED = "started"  # a worker or node took it
    REQUEUED = "requeued"  # it failed in a way worth retrying and goes back in the queue
    FINISHED = "finished"  # it gave a value for every iteration
    FINISHED_WITH_FAILURES = "finished with failures"  # it ran, and some of its iterations raised
    FAILED = "failed"  # it produced nothing (lost worker, timeout, environment)
    CANCELLED = "cancelled"  # it produced nothing, and every iteration of it was cancelled


# step -> (the states it applies in, None for any; the state after it). A step outside its states is
# ignored: a late "started" after the task ended does not bring it back to running.
TASK_RULES: Mapping[TaskStep, tuple[frozenset[TaskStatus] | None, TaskStatus]] = {
    TaskStep.STARTED: (frozenset({QUEUED}), TASK_RUNNING),
    TaskStep.REQUEUED: (None, QUEUED),
    TaskStep.FINISHED: (None, TASK_SUCCEEDED),
    TaskStep.FINISHED_WITH_FAILURES: (None, TASK_FAILED),
    TaskStep.FAILED: (None, TASK_FAILED),
    TaskStep.CANCELLED: (None, TASK_CANCELLED),
}


def task_state_after(step: TaskStep, current: TaskStatus) -> TaskStatus:
    """The task's state after ``step``: ``current`` itself when the step does not apply in it."""
    applies_in, after = TASK_RULES[step]
    if applies_in is not None and current not in applies_in:
        return current
    return after


def ending_step(*, produced: bool, any_failed: bool = False, all_cancelled: bool = False) -> TaskStep:
    """The step a task's end is: ``produced`` when it gave its iterations' values (``any_failed``: some of
    them raised); else it produced nothing, ``all_cancelled`` when every iteration was cancelled."""
    if produced:
        return TaskStep.FINISHED_WITH_FAILURES if any_failed else TaskStep.FINISHED
    return TaskStep.CANCELLED if all_cancelled else TaskStep.FAILED


# A job starts running when its tasks are submitted (or it is rebuilt from the store while it runs elsewhere):
# current state -> state once it runs. Only a pending job starts; an ended one keeps its state.
JOB_STARTS: Mapping[str, JobState] = {PENDING: RUNNING}


def job_started_state(current: str) -> str:
    """The job's state once it is marked running (``JOB_STARTS``): ``current`` when it does not start."""
    return JOB_STARTS.get(current, current)


# --errors policies under which failed iterations still give the job a result.
RESULT_DESPITE_FAILURES = frozenset({"remove", "pass"})

# How a job ends once every task is final:
# (the user cancelled it, an iteration failed or was cancelled, the --errors policy still gives a result) -> state.
JOB_ENDINGS: Mapping[tuple[bool, bool, bool], JobState] = {
    (True, False, False): CANCELLED,
    (True, False, True): CANCELLED,
    (True, True, False): CANCELLED,
    (True, True, True): CANCELLED,
    (False, False, False): SUCCEEDED,
    (False, False, True): SUCCEEDED,
    (False, True, True): DONE,
    (False, True, False): FAILED,
}


def job_end_state(*, cancelled: bool, any_failure: bool, errors: str) -> JobState:
    """The state a job ends in (``JOB_ENDINGS``)."""
    return JOB_ENDINGS[(cancelled, any_failure, errors in RESULT_DESPITE_FAILURES)]


def stored_state(state: str, errors: str | None) -> str:
    """The state a manifest's ``state`` means today. A manifest written before DONE existed says FAILED
    for a job whose policy still gave its result: the ending table says what such a job is now."""
    if state == FAILED and errors in RESULT_DESPITE_FAILURES:
        return job_end_state(cancelled=False, any_failure=True, errors=errors)
    return state


# A backend's failure kind for a task that produced nothing -> (the kind of Failure its iterations get, the
# error type they carry). A kind not listed is an infrastructure failure of its own name.
TASK_FAILURE_KINDS: Mapping[str, tuple[str, str]] = {
    "timeout": ("infrastructure", "azpar_magic.TaskTimeoutError"),
    "environment": ("environment", "azpar_magic.EnvironmentMismatchError"),
    "cancelled": ("cancelled", "azpar_magic.JobCancelled"),
}


def task_failure_kind(backend_kind: str) -> tuple[str, str]:
    """(Failure kind, error type) for a backend's failure kind (``TASK_FAILURE_KINDS``)."""
    return TASK_FAILURE_KINDS.get(backend_kind, (backend_kind, "azpar_magic.InfrastructureError"))

"""The job model: a Job's states, its snapshots, the handle itself, and how its values are decoded and combined.

This layer imports only errors and the worker's wire format; everything that runs, stores or shows a job
builds on it.
"""

from .job import AsCompleted, Job, register_views
from .snapshot import Failure, FailureView, JobOptions, JobSnapshot, NodeInfo, TaskState
from .states import (
    CANCELLED,
    DONE,
    FAILED,
    FINAL_STATES,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_FINAL,
    TASK_RUNNING,
    TASK_SUCCEEDED,
    JobState,
    TaskStatus,
    TaskStep,
)

__all__ = [
    "AsCompleted",
    "Job",
    "register_views",
    "Failure",
    "FailureView",
    "JobOptions",
    "JobSnapshot",
    "NodeInfo",
    "TaskState",
    "JobState",
    "TaskStatus",
    "TaskStep",
    "FINAL_STATES",
    "TASK_FINAL",
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "DONE",
    "FAILED",
    "CANCELLED",
    "LOST",
    "QUEUED",
    "TASK_RUNNING",
    "TASK_SUCCEEDED",
    "TASK_FAILED",
    "TASK_CANCELLED",
]

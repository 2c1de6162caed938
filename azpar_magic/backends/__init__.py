"""Backends run tasks somewhere: ``local`` (worker processes here) or ``azure`` (Batch)."""

from .base import Backend, JobSpec, TaskEvent, TaskSpec, available_backends, create_backend

__all__ = ["Backend", "JobSpec", "TaskEvent", "TaskSpec", "available_backends", "create_backend"]

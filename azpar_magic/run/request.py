"""What one run asks for, whoever asks: the magic, the Python API, a rerun or ``map``.

A plain dataclass the callers fill in and the engine reads, so that the callers depend on
this small module rather than on the engine's internals. The spelling tables say how an
error message names each option: as the caller wrote it (``--chunk-size`` in the magic,
``chunk_size`` in Python).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..jobs.job import Job, JobOptions
from .parsing import ParsedCell

API_SPELLING = {
    k: k for k in ("combine", "errors", "chunk_size", "timeout", "retries", "seed", "gather", "max_cost", "no_export")
}
FLAG_SPELLING = {k: "--" + k.replace("_", "-") for k in API_SPELLING}


@dataclass
class RunRequest:
    """Everything needed to start one run, whoever asked (the magic or the Python API)."""

    cell: ParsedCell
    namespace: Mapping[str, Any]
    options: JobOptions
    export: tuple[str, ...] = ()
    no_export: tuple[str, ...] = ()
    folder: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)  # read by the backend only
    spelling: dict[str, str] = field(default_factory=lambda: dict(API_SPELLING))  # how errors name options
    # A rerun: the items already materialised (the iterable is not evaluated again), the
    # iterations to compute (absolute indices; default all), and the earlier job whose other,
    # finished, iterations the new job keeps so its result is whole and in order.
    items: list | None = None
    indices: Sequence[int] | None = None
    base: Job | None = None
    max_items: int | None = None  # bound on the iterable's length; None: the max_items setting

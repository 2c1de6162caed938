"""The one retry layer: how many times, and for how long, each Azure client retries a request.

Every Batch and Blob client the backend builds (context.py, storage.py) takes its retry policy
from here, and nothing above them loops over a request again: a retry loop on top of the SDK's
multiplies the attempts (4 whole transfers x the SDK's 4 tries took 5.5 minutes against a
storage endpoint answering 503, and one task group sent 24 requests). The few places that
retry a whole operation do so only for what no single request's retry covers (a stream cut
mid-way, a server-side copy that ended failed) and say so where they do (``blobs.retried``);
adding tasks keeps its own loop (submission.TaskAdder: it must halve groups and re-send per-task
server errors) and turns the SDK's retries off for those calls, so it is the only layer there.

Worst cases, with the values below (``worst_case_seconds`` computes them from the constants,
so a test that makes them small gets its own bound):

- **Blob storage** (``ExponentialRetry``): 1 try + ``STORAGE_RETRIES`` retries per request,
  waiting ``STORAGE_BACKOFF + STORAGE_BACKOFF_BASE ** n`` (n = 0 for the first wait, then 1, 2, ...)
  ± ``STORAGE_JITTER`` s: 1, 3, 5 and 9 s, so an endpoint answering 503 fails a request after
  about 18 s (at most 20 s) and 5 requests. An endpoint that stops answering adds up to
  ``STORAGE_CONNECT_TIMEOUT`` (cannot connect) or ``STORAGE_READ_TIMEOUT`` (no byte read) per try.
- **Batch** (azure-core ``RetryPolicy``): 1 try + ``BATCH_RETRIES`` retries, waits of
  ``BATCH_BACKOFF * 2 ** (n - 1)`` s (no wait before the first retry) capped at ``BATCH_BACKOFF_MAX``,
  or what a Retry-After asks; ``BATCH_TIMEOUT`` s bound one call as a whole, waits and timeouts included.
- **Adding tasks** (TaskAdder): ``ADD_ATTEMPTS`` requests per group at most, waits of
  ``ADD_BACKOFF * 2 ** (n - 1)`` x (0.5 to 1.5), or a Retry-After capped at ``RETRY_AFTER_CAP``:
  at most (ADD_ATTEMPTS - 1) x RETRY_AFTER_CAP = 150 s of waiting when every answer asks for more,
  about 10 s against a plain 503.
"""

from __future__ import annotations

from typing import Any

from azure.storage.blob import ExponentialRetry

STORAGE_RETRIES = 4  # retries of one Blob request after its first try
STORAGE_BACKOFF = 1.0  # seconds before the first retry
STORAGE_BACKOFF_BASE = 2.0  # later waits add BASE ** retry number
STORAGE_JITTER = 0.5  # seconds either side of each wait
STORAGE_CONNECT_TIMEOUT = 20.0  # seconds to open a connection (the SDK's default)
STORAGE_READ_TIMEOUT = 60.0  # seconds without a byte from the service (the SDK's default)

BATCH_RETRIES = 3  # retries of one Batch request after its first try
BATCH_BACKOFF = 0.2  # seconds; doubled per retry after an immediate first one
BATCH_BACKOFF_MAX = 30.0  # no single wait longer than this (Retry-After aside)
BATCH_TIMEOUT = 300.0  # seconds for one Batch call, every try and wait included

ADD_ATTEMPTS = 6  # add-task-collection requests per group at most (TaskAdder)
ADD_BACKOFF = 0.2  # seconds before its second request; doubled each time, with jitter
RETRY_AFTER_CAP = 30.0  # longest Retry-After TaskAdder honours


def storage_attempts() -> int:
    """Tries of one Blob request in all (what an error message counts)."""
    return STORAGE_RETRIES + 1


def storage_policy() -> ExponentialRetry:
    """The retry policy of every BlobServiceClient the backend builds (read at build time, so
    tests can shrink the constants first)."""
    return ExponentialRetry(
        initial_backoff=STORAGE_BACKOFF,  # type: ignore[arg-type]  # the SDK takes floats; its hint says int
        increment_base=STORAGE_BACKOFF_BASE,  # type: ignore[arg-type]
        random_jitter_range=STORAGE_JITTER,  # type: ignore[arg-type]
        retry_total=STORAGE_RETRIES,
        # The SDK stops at the smallest of these counts: set them all, or a status retry count of
        # 3 (its default) would quietly cap STORAGE_RETRIES.
        retry_connect=STORAGE_RETRIES,
        retry_read=STORAGE_RETRIES,
        retry_status=STORAGE_RETRIES,
    )


def storage_client_options() -> dict[str, Any]:
    """Keyword arguments for BlobServiceClient: the retry policy and per-try timeouts."""
    return {
        "retry_policy": storage_policy(),
        "connection_timeout": STORAGE_CONNECT_TIMEOUT,
        "read_timeout": STORAGE_READ_TIMEOUT,
    }


def batch_client_options() -> dict[str, Any]:
    """Keyword arguments for BatchClient: azure-core's RetryPolicy settings."""
    return {
        "retry_total": BATCH_RETRIES,
        "retry_backoff_factor": BATCH_BACKOFF,
        "retry_backoff_max": BATCH_BACKOFF_MAX,
        "timeout": BATCH_TIMEOUT,
    }


NO_SDK_RETRY: dict[str, Any] = {"retry_total": 0}  # per-call option: the caller's own loop is the only layer


def worst_case_seconds(kind: str) -> float:
    """Longest wait between tries of one operation against a service answering errors at once
    (``storage``: one Blob request; ``add``: one TaskAdder group; ``batch``: one Batch call)."""
    if kind == "storage":
        waits = [STORAGE_BACKOFF + (0 if n == 0 else STORAGE_BACKOFF_BASE**n) for n in range(STORAGE_RETRIES)]
        return sum(waits) + STORAGE_RETRIES * STORAGE_JITTER
    if kind == "add":
        return (ADD_ATTEMPTS - 1) * max(RETRY_AFTER_CAP, ADD_BACKOFF * 2 ** (ADD_ATTEMPTS - 2) * 1.5)
    if kind == "batch":
        return BATCH_TIMEOUT
    raise ValueError(f"unknown kind {kind!r}")

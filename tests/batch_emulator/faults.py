"""Fault plans tests arm through the service object; each is consumed as it fires."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass


@dataclass
class RequestFault:
    pattern: re.Pattern
    method: str | None
    remaining: int
    status: int


class Faults:
    """Thread-safe counters for the fault hooks (see BatchEmulator's fault methods)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_faults: list[RequestFault] = []
        self.upload_failures = 0
        self.start_task_failures: dict[str | None, int] = {}
        self.node_start_delay: dict[str | None, float] = {}

    def add_request_fault(self, pattern: str, count: int, status: int, method: str | None) -> None:
        with self._lock:
            self.request_faults.append(RequestFault(re.compile(pattern), method.upper() if method else None,
                                                    count, status))

    def take_request_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self.request_faults:
                if f.remaining > 0 and (f.method is None or f.method == method) and f.pattern.search(path):
                    f.remaining -= 1
                    return f.status
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

"""A test-only Azure Batch service (REST api-version 2025-06-01) that runs tasks as local processes.

Importing this package is deliberately cheap: nothing here imports azure.* or starts anything.
Use :class:`tests.batch_emulator.service.BatchEmulator` (re-exported lazily as ``BatchEmulator``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["BatchEmulator", "API_VERSION"]

API_VERSION = "2025-06-01"


def __getattr__(name: str) -> Any:
    # Lazy re-export keeps `import tests.batch_emulator` free of threads, sockets and spec loading.
    if name == "BatchEmulator":
        from .service import BatchEmulator

        return BatchEmulator
    raise AttributeError(name)

"""Thread pools that keep working while Python exits.

Python's exit first runs threading's exit hooks, where concurrent.futures stops every pool from
taking work; it then waits for the process's other non-daemon threads (a script's thread waiting on
``job.result()``, a thread of the notebook's), and only then runs atexit, where the session closes
the backend. A job followed in that stretch must go on: its results still arrive, and a thread
waiting for them must get them, not a failure the exit made up, nor a wait without end. So the
backend's pools run a call in the calling thread once they refuse work for that reason, as a pool
of one would, instead of raising RuntimeError.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, ThreadPoolExecutor
from typing import Any

# concurrent.futures' words when the exit has begun and a pool has no thread yet (the SDK makes one per
# large download); a pool whose threads saw the exit says "after shutdown", as if its owner had shut it.
_EXIT_REFUSAL = "after interpreter shutdown"


def refused_by_the_exit(exc: BaseException) -> bool:
    """Whether ``exc`` is a pool of the SDK's refusing work because Python's exit has begun."""
    return isinstance(exc, RuntimeError) and _EXIT_REFUSAL in str(exc)


class ThreadPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose ``submit`` (and so ``map``) runs the call here, in the calling thread,
    when the pool takes no more work though its owner never shut it: Python's exit has begun."""

    _shut_by_owner = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        try:
            return super().submit(fn, *args, **kwargs)
        except BrokenExecutor:
            raise
        except RuntimeError:
            if self._shut_by_owner:  # that refusal stands
                raise
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # the caller reads it from the future, as from a pool's thread
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shut_by_owner = True
        super().shutdown(wait=wait, cancel_futures=cancel_futures)

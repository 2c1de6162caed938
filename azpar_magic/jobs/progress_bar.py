"""A progress bar the loop's iterable came wrapped in (``for x in tqdm(xs)``), moved by its job.

A loop over ``tqdm(xs)`` in one process moves the bar as each iteration ends. A cell listing its
items through the bar filled it at once, before anything ran. So the engine takes the items from
the bar's own iterable (``unwrap``), and ``follow`` moves the bar as iterations end on the
workers, then closes it when the job ends. The bar is known by its class's module, not imported:
tqdm is the notebook's, not a dependency of ours.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

_BAR_METHODS = ("update", "close", "refresh")
_PLAIN = frozenset({list, tuple, range, dict})  # the common iterables, told apart from a bar at once


def unwrap(iterable: Any) -> tuple[Any, Any | None]:
    """``(what the bar wraps, the bar)`` for a tqdm bar (or a subclass of one), else
    ``(iterable, None)``."""
    if type(iterable) in _PLAIN:
        return iterable, None
    if not any((getattr(cls, "__module__", "") or "").partition(".")[0] == "tqdm" for cls in type(iterable).__mro__):
        return iterable, None
    if getattr(iterable, "iterable", None) is None or not all(
        callable(getattr(iterable, m, None)) for m in _BAR_METHODS
    ):
        return iterable, None
    return iterable.iterable, iterable


def follow(job: Job, bar: Any) -> None:
    """Move ``bar`` by the job's iterations as they end (succeeded or failed; not those cancelled),
    from whichever thread records them, and close it when the job ends. A bar over an iterable of
    unknown length (a generator) gets the job's number of iterations as its total."""
    follower = _Follower(bar, len(job.items))
    job.listeners.append(follower)
    follower(job)  # (a job whose values all came from --cache may have ended already)


class _Follower:
    def __init__(self, bar: Any, total: int):
        self.bar, self.shown, self.closed = bar, 0, False
        self._lock = threading.Lock()  # the listeners are called from the threads that record results
        try:
            if getattr(bar, "total", None) is None:
                bar.total = total
                bar.refresh()
        except Exception:  # a bar of its own kind: it stays as it is
            pass

    def __call__(self, job: Job) -> None:
        succeeded, failed, _cancelled = job.counts()
        ended = job.done
        with self._lock:
            if self.closed:
                return
            if succeeded + failed > self.shown:
                self.bar.update(succeeded + failed - self.shown)
                self.shown = succeeded + failed
            if ended:
                self.closed = True
                try:
                    job.listeners.remove(self)
                except ValueError:
                    pass
                self.bar.close()

"""A progress bar the loop's iterable came wrapped in (``for x in tqdm(xs)``), moved by its job.

A loop over ``tqdm(xs)`` in one process moves the bar as each iteration ends. A cell listing its
items through the bar filled it at once, before anything ran. So the engine takes the items from
the bar's own iterable (``unwrap``), and ``follow`` moves the bar as iterations end on the
workers, then closes it when the job ends. The bar is known by its class's module, not imported:
tqdm is the notebook's, not a dependency of ours.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

_BAR_METHODS = ("update", "close", "refresh")
_PLAIN = frozenset({list, tuple, range, dict})  # the common iterables, told apart from a bar at once


def unwrap(iterable: Any) -> tuple[Any, Any | None]:
    """``(what the bar wraps, the bar)`` for a tqdm bar (or a subclass of one), else
    ``(iterable, None)``. A bar inside ``enumerate``, ``zip``, ``map`` or ``filter`` (``for i, x in
    enumerate(tqdm(xs))``, the common way to number a loop's items) is found too, and the wrapper made
    again around what the bar wraps: listed through the bar, it filled before anything ran."""
    if type(iterable) in _PLAIN:
        return iterable, None
    if type(iterable) in _WRAPPERS:
        return _unwrap_inside(iterable)
    if not _is_bar(iterable):
        return iterable, None
    return iterable.iterable, iterable


def _is_bar(obj: Any) -> bool:
    if not any((getattr(cls, "__module__", "") or "").partition(".")[0] == "tqdm" for cls in type(obj).__mro__):
        return False
    return getattr(obj, "iterable", None) is not None and all(callable(getattr(obj, m, None)) for m in _BAR_METHODS)


# The built-in wrappers a loop's iterable is commonly made of; each gives what it wraps by __reduce__
# (``enumerate``: its iterator and next count; ``zip``: its iterators, and strict as its state).
_WRAPPERS = frozenset({enumerate, zip, map, filter})


def _unwrap_inside(wrapper: Any) -> tuple[Any, Any | None]:
    """``wrapper`` made again with a bar's own iterable where it holds the bar's iterator, not yet
    started (``iter(bar)``: a generator of the bar's ``__iter__``, whose frame holds the bar), and the
    bar; else ``(wrapper, None)``, untouched. Wrappers inside wrappers are looked through too."""
    try:
        reduced = wrapper.__reduce__()
    except Exception:
        return wrapper, None
    kind, args = reduced[0], list(reduced[1])
    strict = len(reduced) > 2 and bool(reduced[2])  # zip(..., strict=True) keeps it as its state
    for position, arg in enumerate(args):
        if type(arg) in _WRAPPERS:
            inner, bar = _unwrap_inside(arg)
        else:
            bar = _bar_of(arg)
            inner = iter(bar.iterable) if bar is not None else arg
        if bar is not None:
            args[position] = inner
            return (zip(*args, strict=strict) if kind is zip else kind(*args)), bar
    return wrapper, None


def _bar_of(iterator: Any) -> Any | None:
    """The bar whose ``__iter__`` made the generator ``iterator``, when nothing was taken through it yet;
    else None."""
    if not inspect.isgenerator(iterator) or iterator.gi_code.co_name != "__iter__":
        return None
    frame = iterator.gi_frame
    if frame is None or inspect.getgeneratorstate(iterator) != inspect.GEN_CREATED:
        return None
    bar = frame.f_locals.get("self")
    return bar if bar is not None and _is_bar(bar) else None


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

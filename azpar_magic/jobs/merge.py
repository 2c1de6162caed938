"""Combine per-iteration values into the result a sequential loop would have built.

Pure functions over plain data: no I/O, no threads, no IPython. The engine hands over the
values in iteration order together with which iterations failed; the error policy decides
what a failure becomes and the combine mode decides the shape of the result.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ..errors import CombineError
from .text import short_repr

COMBINE_MODES = ("list", "dict", "sum", "concat")
ERROR_POLICIES = ("stop", "remove", "pass")


def check_dict_keys(items: Sequence[Any]) -> None:
    """``--combine dict`` keys the result by item: every item must be hashable, checked up
    front so the user learns it before any work is submitted."""
    for index, item in enumerate(items):
        if not isinstance(item, Hashable):
            raise CombineError(
                f"--combine dict uses each item as a key, but item {index} ({short_repr(item)}) is a "
                f"{type(item).__name__}, which is not hashable. Use --combine list, or iterate over "
                "hashable keys."
            )
        try:
            hash(item)
        except TypeError as exc:
            raise CombineError(f"--combine dict: item {index} ({short_repr(item)}) is not hashable: {exc}") from None


def select(
    values: Sequence[Any], items: Sequence[Any], failed: dict[int, Any], policy: str
) -> tuple[Sequence[Any], list[Any]]:
    """Apply the error policy: (kept items, kept values). ``failed`` maps iteration index to
    the object that stands in for the failure under ``pass``."""
    if policy == "remove":
        kept = [i for i in range(len(values)) if i not in failed]
        return [items[i] for i in kept], [values[i] for i in kept]
    if policy == "pass":
        return list(items), [failed.get(i, v) if i in failed else v for i, v in enumerate(values)]
    if failed:
        raise ValueError("select() with policy 'stop' must not be given failures")
    return items, list(values)  # the items are only read (a settled job's are a tuple: Job.settle)


def _concat(values: list[Any]) -> Any:
    if not values:
        return []
    first = values[0]
    module = type(first).__module__.split(".")[0]
    if module == "pandas":
        import pandas

        return pandas.concat(values)
    if module == "numpy":
        import numpy

        return numpy.concatenate(values)
    if isinstance(first, str):
        return "".join(values)
    if isinstance(first, bytes):
        return b"".join(values)
    if isinstance(first, tuple):
        return tuple(x for value in values for x in value)
    try:
        return [x for value in values for x in value]
    except TypeError as exc:
        raise CombineError(f"--combine concat needs iterable values; got {type(first).__name__}: {exc}") from None


def combine(values: list[Any], items: Sequence[Any], mode: str | Callable[[list[Any]], Any]) -> Any:
    """Shape the kept values: list in order, dict keyed by item, sum, concatenation, or a
    user callable given the list of values in iteration order."""
    if callable(mode):
        return mode(values)
    if mode == "list":
        return values
    if mode == "dict":
        try:
            return dict(zip(items, values))
        except TypeError:  # an unhashable item: name it (the engine checks this before submitting)
            check_dict_keys(items)
            raise
    if mode == "sum":
        if not values:
            return 0
        try:
            return functools.reduce(operator.add, values)
        except TypeError as exc:
            raise CombineError(f"--combine sum could not add the values: {exc}") from None
    if mode == "concat":
        return _concat(values)
    raise CombineError(
        f"unknown combine mode {mode!r}; expected one of {', '.join(COMBINE_MODES)} or the name of a callable"
    )

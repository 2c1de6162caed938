"""Combine per-iteration values into the result a sequential loop would have built.

Pure functions over plain data: no I/O, no threads, no IPython. The engine hands over the
values in iteration order together with which iterations failed; the error policy decides
what a failure becomes and the combine mode decides the shape of the result.
"""

from __future__ import annotations

import collections
import functools
import operator
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence, Set
from typing import Any

from ..errors import CombineError, CombineWarning
from .text import short_repr

COMBINE_MODES = ("list", "dict", "sum", "concat")
ERROR_POLICIES = ("stop", "remove", "pass")
RESULT_POLICIES = ("remove", "pass")  # what an ended job's result may be combined under again (Job.result)


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
    return items, list(values)  # the items are only read (a job keeps them as a tuple)


def _concat(values: list[Any], items: Sequence[Any]) -> Any:
    """What a sequential loop building one object from the values would give: ``out += v``
    for sequences, strings, arrays and frames, ``out.update(v)`` for dicts, ``out |= v`` for
    sets. The first value's kind decides; a value of another kind is named with its item."""
    if not values:
        return []
    first = values[0]
    module = type(first).__module__.split(".")[0]
    if module == "pandas":
        import pandas

        return pandas.concat(values)
    if module == "numpy":
        import numpy

        if numpy.ndim(first) == 0:
            raise CombineError(
                f"--combine concat joins arrays along their first axis, but the values are numpy scalars "
                f"({type(first).__name__}); use --combine list, or --combine np.array for one array"
            )
        return numpy.concatenate(values)
    if isinstance(first, Mapping):
        return _merged_mappings(values, items)
    if isinstance(first, Set):
        _check_kind(values, items, Set, "sets")
        joined = set().union(*values)
        return frozenset(joined) if isinstance(first, frozenset) else joined
    if isinstance(first, str):
        _check_kind(values, items, str, "strings")
        return "".join(values)
    if isinstance(first, bytes):
        _check_kind(values, items, bytes, "bytes")
        return b"".join(values)
    try:
        if isinstance(first, tuple):
            return tuple(x for value in values for x in value)
        return [x for value in values for x in value]
    except TypeError as exc:
        for value, item in zip(values, items):
            try:
                iter(value)
            except TypeError:
                raise CombineError(
                    f"--combine concat joins iterable values (the first value is a {type(first).__name__}), "
                    f"but the value for item {short_repr(item)} is a {type(value).__name__} "
                    f"({short_repr(value)}), which is not iterable"
                ) from None
        raise CombineError(f"--combine concat could not join the values: {exc}") from None


def _check_kind(values: list[Any], items: Sequence[Any], kind: type, what: str) -> None:
    for value, item in zip(values, items):
        if not isinstance(value, kind):
            raise CombineError(
                f"--combine concat joins {what} (the first value is a {type(values[0]).__name__}), but the "
                f"value for item {short_repr(item)} is a {type(value).__name__} ({short_repr(value)})"
            )


def _merged_mappings(values: list[Any], items: Sequence[Any]) -> Any:
    """Dicts are merged in iteration order, as ``out.update(v)`` would (a Counter adds its
    counts, as its update does). A key given by more than one iteration keeps the last value,
    with a warning: a loop returning ``{"score": s}`` would otherwise lose all but one score
    without a word."""
    _check_kind(values, items, Mapping, "dicts")
    first = values[0]
    merged = first.copy() if isinstance(first, dict) else dict(first)
    given = len(first)
    for value in values[1:]:
        merged.update(value)
        given += len(value)
    if given != len(merged) and not isinstance(merged, collections.Counter):
        key, earlier, later = _first_repeated_key(values)
        warnings.warn(
            CombineWarning(
                f"--combine concat merged the dicts in order, and {given - len(merged)} key(s) came again from "
                f"a later iteration (the first: {short_repr(key)}, from the values for items "
                f"{short_repr(items[earlier])} and {short_repr(items[later])}); the later value was kept. "
                "The per-iteration values stay in job.partial_results(); --combine list keeps them all"
            ),
            stacklevel=2,
        )
    return merged


def _first_repeated_key(values: list[Any]) -> tuple[Any, int, int]:
    """(key, index of the value that gave it first, index of the next value giving it again)."""
    seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        for key in value:
            if key in seen:
                return key, seen[key], index
            seen[key] = index
    raise ValueError("no key repeats")


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
        return _concat(values, items)
    raise CombineError(
        f"unknown combine mode {mode!r}; expected one of {', '.join(COMBINE_MODES)} or the name of a callable"
    )

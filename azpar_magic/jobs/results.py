"""Decoding what a task sent back into values and failures, in this process.

Both the engine (live results) and the job store (replaying a stored job) read task results
the same way; the rules live here, in the job model, so neither reaches into the other.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from .. import worker as wire
from .snapshot import Failure

__all__ = ["decode_list", "decode_each", "failure_from_record"]


def decode_list(encoded) -> list:
    """A task's encoded values (or gathered rows), all or nothing: the job store's replay,
    where a value that cannot be loaded means "define its class first, then attach"."""
    mode = encoded[0]
    if mode == "all":
        return list(cast(Iterable[Any], wire.loads(encoded[1], encoded[2])))
    return [wire.loads(*blob) if blob is not None else None for blob in encoded[1]]


def decode_each(encoded, count: int) -> tuple[list, dict[int, str]]:
    """A task's encoded values, each on its own: (values, {position: why it could not be
    loaded here}). A value whose class or module exists only on the worker, or whose
    rebuilding fails in this process, fails its own iteration, not its task's others.
    The fast path (one blob, loaded whole) is tried first; only when it fails is the blob
    read again by ``_LenientUnpickler``, which puts a stand-in where an object cannot be built."""
    mode = encoded[0]
    if mode != "all":
        values, problems = [], {}
        for pos, blob in enumerate(encoded[1]):
            try:
                values.append(wire.loads(*blob) if blob is not None else None)
            except Exception as exc:
                values.append(None)
                problems[pos] = f"{type(exc).__name__}: {exc}"
        return values, problems
    try:
        loaded = wire.loads(encoded[1], encoded[2])
        # (a list is the job's own already: no copy, on the thread the last task's result waits behind)
        return (loaded if type(loaded) is list else list(cast(Iterable[Any], loaded))), {}
    except Exception as exc:
        whole = f"{type(exc).__name__}: {exc}"
    try:
        unpickler = _LenientUnpickler(io.BytesIO(encoded[2]))
        values = list(unpickler.load())
    except Exception:
        return [None] * count, dict.fromkeys(range(count), whole)
    if len(values) != count:
        return [None] * count, dict.fromkeys(range(count), whole)
    problems = {}
    found: set[int] = set()
    for pos, value in enumerate(values):
        stand_in = _stand_in_within(value, unpickler.stand_in_ids)
        if stand_in is not None:
            problems[pos] = stand_in.reason
            found.add(id(stand_in))
            values[pos] = None
    if not problems or not found >= unpickler.stand_in_ids - unpickler.absorbed_ids:
        # A stand-in went where no value shows it (inside an object's own state): which
        # iteration it belongs to is unknown, so none of the task's values is trusted.
        return [None] * count, dict.fromkeys(range(count), whole)
    return values, problems


class _Unloadable:
    """Stands in, while ``_LenientUnpickler`` reads, for an object that cannot be built in
    this process; it absorbs what the pickle then does to the object it replaces."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, *args, **kwargs):
        return self

    def __setstate__(self, state) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass

    def add(self, item) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass


class _LenientUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, where every step that imports or builds an object puts an
    ``_Unloadable`` (saying why) in its place instead of failing the whole load. It reads
    both codecs: dill's output is a pickle whose few dill-specific names resolve as below."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file)
        self.stand_ins: list[_Unloadable] = []  # kept alive: their ids identify them
        self.stand_in_ids: set[int] = set()
        self.absorbed_ids: set[int] = set()  # stand-ins replaced by a later one (an operand of a failed step)

    def _stand_in(self, reason: str, operands: Sequence[Any] = ()) -> _Unloadable:
        for operand in operands:  # a step failing because its input is a stand-in: say why that one is
            candidates = operand if isinstance(operand, tuple) else (operand,)
            inner = next((x for x in candidates if isinstance(x, _Unloadable)), None)
            if inner is not None:
                self.absorbed_ids.add(id(inner))
                reason = inner.reason
                break
        stand_in = _Unloadable(reason)
        self.stand_ins.append(stand_in)
        self.stand_in_ids.add(id(stand_in))
        return stand_in

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("__builtin__", "__main__"):  # dill's name for the notebook's globals
            return sys.modules["__main__"].__dict__
        if (module, name) == ("__builtin__", "NoneType"):
            return type(None)
        if module == "dill.dill":
            module = "dill._dill"
        try:
            return super().find_class(module, name)
        except Exception as exc:
            return self._stand_in(f"{module}.{name} is not available here: {type(exc).__name__}: {exc}")

    def _guarded(op: bytes, arity: int):  # type: ignore[misc]  # noqa: N805 (a helper run while the class body is built)
        """The handler of ``op``, which replaces ``arity`` stack entries by one object:
        when building that object fails, a stand-in takes its place."""
        original = pickle._Unpickler.dispatch[op[0]]

        def run(self) -> None:
            stack = self.stack
            depth = len(stack)
            operands = stack[depth - arity :]
            try:
                original(self)
            except Exception as exc:
                stand_in = self._stand_in(f"{type(exc).__name__}: {exc}", operands)
                del self.stack[depth - arity :]
                self.stack.append(stand_in)
                if op == pickle.BUILD:  # the half-built object may be memoised: later references get the stand-in too
                    for key, value in self.memo.items():
                        if value is operands[0]:
                            self.memo[key] = stand_in

        return run

    for _op, _arity in ((pickle.REDUCE, 2), (pickle.NEWOBJ, 2), (pickle.NEWOBJ_EX, 3), (pickle.BUILD, 2)):
        dispatch[_op[0]] = _guarded(_op, _arity)
    del _op, _arity, _guarded


def _stand_in_within(value: Any, ids: set[int], limit: int = 100_000) -> _Unloadable | None:
    """The first stand-in inside ``value`` (itself, a container's item or key, an object's
    attribute), looked for breadth-first through at most ``limit`` objects."""
    if not ids:
        return None
    todo, seen = collections.deque([value]), set[int]()
    while todo and len(seen) < limit:
        obj = todo.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if id(obj) in ids:
            return obj
        if isinstance(
            obj, (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType, types.FunctionType)
        ):
            continue
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        else:
            state = getattr(obj, "__dict__", None)
            if isinstance(state, dict):
                todo.extend(state.values())
    return None


# The pickle of a built-in exception with a few plain arguments (worker._plain_exception's) -> its class and
# arguments. A loop failing 5,000 times at one place sends 5,000 such pickles, most of them alike: loading
# each looked up its class through the import system again (~1 us of the kernel's ~6.7 a failure, issue 16).
_EXCEPTION_RECIPES: dict[bytes, tuple[type, tuple]] = {}
_EXCEPTION_RECIPES_KEPT = 1024  # distinct pickles remembered, then forgotten all at once
_PLAIN_ARGUMENTS = frozenset({int, float, str, bytes, bool, type(None)})


def _exception(codec: str, data: Any) -> object:
    """The exception a result record carries, rebuilt. A plain one is made again from its class and
    arguments as its pickle would make it (``cls(*args)``, no state), without unpickling it again."""
    plain = codec == "pickle" and type(data) is bytes
    if plain:
        recipe = _EXCEPTION_RECIPES.get(data)
        if recipe is not None:
            return recipe[0](*recipe[1])
    exc = wire.loads(codec, data)
    if plain and isinstance(exc, BaseException) and type(exc).__module__ == "builtins":
        reduced = exc.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if (
            type(reduced) is tuple
            and len(reduced) == 2
            and reduced[0] is type(exc)
            and type(reduced[1]) is tuple
            and set(map(type, reduced[1])) <= _PLAIN_ARGUMENTS  # (the pickle's bytes tell True from 1, -0.0 from 0.0)
        ):
            if len(_EXCEPTION_RECIPES) >= _EXCEPTION_RECIPES_KEPT:
                _EXCEPTION_RECIPES.clear()
            _EXCEPTION_RECIPES[data] = reduced
    return exc


def failure_from_record(index: int, rec: Mapping[str, Any], *, with_exception: bool = True) -> Failure:
    """A failed iteration as a worker's result record or the job store's logs describe it. The exception
    object itself is rebuilt only ``with_exception`` (a result record carries it; reading logs must work
    whatever this kernel defines) and only if its class exists here."""
    exc = None
    if with_exception and rec.get("exc"):
        try:
            exc = _exception(*rec["exc"])
        except Exception:  # the exception's class may not exist here
            exc = None
    return Failure(
        index,
        rec.get("type", "Exception"),
        rec.get("message", ""),
        rec.get("traceback", ""),
        rec.get("line"),
        rec.get("kind", "user"),
        exc,
    )

"""A cheap content fingerprint of captured objects, to reuse the previous serialisation.

Running the same cell again over an unchanged 100 MB array used to cost a full pickle (a copy)
and a sha256 of that copy, only to find the bytes already staged (issue 16). A fingerprint
reads the array's buffer once with a fast checksum instead, and stands for the serialised
bytes: equal fingerprints mean pickling would write the very same bytes again.

Only what can be fingerprinted exactly and cheaply is: atomic values, containers of them (with
their aliasing, which pickling keeps), plain numeric numpy arrays (their buffer), modules,
functions and classes that travel by name from an installed module, and functions defined in the
notebook (their code, defaults and attributes). Anything else (notebook classes and their
instances, closures, arbitrary objects, object arrays) makes ``fingerprint`` return None, and the
capture serialises as before. So a value mutated in place, a rebound name, a changed
dict or list are all seen: their content is hashed, not their identity.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
import threading
import types
import zlib
from collections.abc import Mapping

_ATOMIC = frozenset({int, float, complex, str, bytes, bool, type(None)})
_SEQUENCES = (list, tuple, set, frozenset)
_MAX_OBJECTS = 200_000  # objects walked at most; beyond, serialising is the cheaper check
_MAX_DEPTH = 40
PICKLE_PROTOCOL = 5  # the capture's (worker.PICKLE_PROTOCOL): a pandas object's reduction depends on it
_REDUCED_PACKAGES = frozenset({"pandas", "numpy"})  # whose objects are fingerprinted by their reduction
_SMALL = 1 << 16  # buffers below this go through blake2b; above, through CRC-32
_PART = 1 << 24  # bytes per thread at least when a large buffer's CRC-32 is split across CPUs


class _Unsupported(Exception):
    """An object the fingerprint cannot stand for: capture serialises instead."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def buffer_digest(view: memoryview) -> bytes:
    """CRC-32 of each part of a large contiguous buffer, the parts computed on several CPUs at
    once (zlib releases the GIL). CRC-32 is the fastest checksum the standard library has: about
    3 GB/s per core on the bench machine, against 0.6 GB/s for blake2b and 1.7 GB/s for sha256
    (with SHA instructions); it catches every change of up to 32 adjacent bits and any two
    flipped bits, and any other change but once in 2**32. Arrays add an XOR of their 64-bit
    words (``_Walk._array``), which catches every change confined to one element."""
    size = len(view)
    parts = max(1, min(_cpus(), 4, size // _PART))
    step = -(-size // parts)
    crcs = [0] * parts

    def one(i: int) -> None:
        crcs[i] = zlib.crc32(view[i * step : (i + 1) * step])

    helpers = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(1, parts)]
    for thread in helpers:
        thread.start()
    one(0)
    for thread in helpers:
        thread.join()
    return b"".join(crc.to_bytes(4, "little") for crc in crcs)


class _Walk:
    def __init__(self) -> None:
        self.hash = hashlib.blake2b(digest_size=32)
        self.seen: dict[int, int] = {}  # id -> order of first visit: aliasing is part of what pickling keeps
        self.left = _MAX_OBJECTS
        # Large buffers are read last, once the walk has found nothing it cannot fingerprint: a
        # namespace of an array and a notebook function then costs no pass over the array.
        self.buffers: list[tuple[memoryview, object]] = []  # (bytes, their 64-bit words or None)
        # What the walk made (a pandas object's reduction, an object array's list): kept alive until it
        # ends, so that no later object gets the id of one, which `seen` would take for it.
        self.made: list[object] = []

    def tag(self, text: str) -> None:
        self.hash.update(text.encode())

    def data(self, blob: bytes | memoryview, words: object = None) -> None:
        self.tag(f"{len(blob)}:")
        if len(blob) < _SMALL:
            self.hash.update(blob)
        else:
            self.tag(f"<{len(self.buffers)}>")
            self.buffers.append((memoryview(blob), words))

    def finish(self) -> bytes:
        numpy = sys.modules.get("numpy")
        for view, words in self.buffers:
            self.hash.update(buffer_digest(view))
            if words is not None and numpy is not None:  # (a few ms for 100 MB)
                self.tag(f"x{int(numpy.bitwise_xor.reduce(words))};")
        return self.hash.digest()

    def visit(self, obj: object, depth: int = 0) -> None:
        self.left -= 1
        if self.left < 0 or depth > _MAX_DEPTH:
            raise _Unsupported
        kind = type(obj)
        if kind is str:
            self.tag("s")
            self.data(obj.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
            return
        if kind is bytes:
            self.tag("b")
            self.data(obj)  # type: ignore[arg-type]
            return
        if kind in _ATOMIC:
            self.tag(f"{kind.__name__}:{obj!r};")
            return
        first = self.seen.get(id(obj))
        if first is not None:
            self.tag(f"@{first};")
            return
        self.seen[id(obj)] = len(self.seen)
        if kind in _SEQUENCES or kind is dict:
            self._container(obj, depth)
        elif kind is bytearray:
            self.tag("ba")
            self.data(memoryview(obj))  # type: ignore[arg-type]
        elif kind.__module__ == "numpy" and kind.__name__ == "ndarray":
            self._array(obj, depth)
        elif isinstance(obj, types.ModuleType):
            self.tag(f"m:{obj.__name__};")
        elif isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) and _by_name(obj):
            self.tag(f"g:{obj.__module__}:{obj.__qualname__};")
        elif kind is types.FunctionType:
            self._notebook_function(obj, depth)  # type: ignore[arg-type]
        elif kind.__name__ == "cython_function_or_method" and _by_name(obj):  # pandas' own unpicklers
            self.tag(f"g:{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')};")
        elif kind is slice:
            self.tag("sl(")
            for part in (obj.start, obj.stop, obj.step):  # type: ignore[attr-defined]
                self.visit(part, depth + 1)
            self.tag(")")
        elif kind.__module__.partition(".")[0] in _REDUCED_PACKAGES and _by_name(kind):
            self._reduced(obj, depth)
        else:
            raise _Unsupported

    def _reduced(self, obj: object, depth: int) -> None:
        """A pandas object (a DataFrame, a Series, their indexes, blocks and arrays) or a numpy dtype or
        scalar, as pickling writes it: its reduction, each part fingerprinted (arrays by their buffers).
        Reading an unchanged DataFrame of 40 MB again pickled it at every cell, ~70 ms (issue 16)."""
        reduced = obj.__reduce_ex__(PICKLE_PROTOCOL)
        if type(reduced) is not tuple or len(reduced) < 2 or any(part is not None for part in reduced[3:]):
            raise _Unsupported  # a name, or items given one by one: serialising decides
        self.made.append(reduced)
        kind = type(obj)
        self.tag(f"r:{kind.__module__}.{kind.__qualname__}(")
        for part in reduced[:3]:
            self.visit(part, depth + 1)
        self.tag(")")

    def _container(self, obj, depth: int) -> None:
        kind = type(obj)
        self.tag(f"{kind.__name__}{len(obj)}(")
        # The kinds of what it holds, at C speed, without a list of its pairs first: that list and its
        # flattening were two thirds of fingerprinting a dict of a million entries (0.3 s, issue 16).
        kinds = set(map(type, obj.keys())) | set(map(type, obj.values())) if kind is dict else set(map(type, obj))
        if kinds <= _ATOMIC:  # C speed: repr tells every atomic value apart
            self.data(repr(obj).encode("utf-8", "surrogatepass"))
            self.left -= 2 * len(obj) if kind is dict else len(obj)
        else:
            for part in (x for pair in obj.items() for x in pair) if kind is dict else obj:
                self.visit(part, depth + 1)
        self.tag(")")

    def _notebook_function(self, fn: types.FunctionType, depth: int) -> None:
        """A function defined in the notebook travels by value (dill): its code, defaults, attributes
        and names, with its globals as a reference to the worker's ``__main__`` (the globals it reads
        are captured as names of their own, each fingerprinted there). A closure, or globals other
        than ``__main__``'s (which dill would copy whole), is not fingerprinted."""
        main = sys.modules.get("__main__")
        if fn.__closure__ or fn.__globals__ is not getattr(main, "__dict__", None):
            raise _Unsupported
        self.tag(f"fn:{fn.__module__}:{fn.__qualname__}:{fn.__name__}:")
        self.data(marshal.dumps(fn.__code__))  # every field of the code object, nested code included
        for part in (fn.__defaults__, fn.__kwdefaults__, fn.__doc__, fn.__dict__, fn.__annotations__):
            self.visit(part, depth + 1)

    def _array(self, arr, depth: int = 0) -> None:
        if arr.dtype.hasobject and arr.dtype.kind == "O" and arr.size <= self.left:
            # Objects inside (a pandas column or index of strings): the objects, as a list, as pickling
            # writes them one by one; anything but atoms and containers of them stops the walk there.
            listed = arr.tolist()
            self.made.append(listed)
            self.tag(f"ndo:{arr.shape}:")
            self.visit(listed, depth + 1)
            return
        if arr.dtype.hasobject or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            raise _Unsupported  # objects in a record, or a strided view: serialising decides
        order = "C" if arr.flags.c_contiguous else "F"
        self.tag(f"nd:{arr.dtype.descr!r}:{arr.dtype.str}:{arr.shape}:{order}:")
        flat = arr.reshape(-1, order=order).view("u1")  # a view: contiguous in that order
        self.data(memoryview(flat), flat.view("u8") if flat.size % 8 == 0 else None)


def _by_name(obj) -> bool:
    """Whether pickling writes ``obj`` as a reference (module and name), never its code."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return False
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


def fingerprint(chosen: Mapping[str, object]) -> bytes | None:
    """A digest standing for ``serialize(chosen)``'s bytes, or None when some value cannot be
    fingerprinted exactly (then the caller serialises)."""
    walk = _Walk()
    try:
        for name in sorted(chosen):
            walk.tag(f"\0{name}=")
            walk.visit(chosen[name])
    except (_Unsupported, RecursionError, AttributeError, TypeError, ValueError):
        return None
    return walk.finish()

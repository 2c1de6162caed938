"""Run the iterations of one task: the only code that executes on a pool node.

This file must work as a plain script on a machine that has Python and dill and nothing
else of ours (an Azure Batch node fetches it as a resource file), so it imports only the
standard library and dill (dill only when a payload needs it: importing it is most of a
trivial task's start on a node, issue 16). The package imports *it* (never the reverse) so that the wire
formats written by the client and read here are defined in exactly one place.

Three ways to run it:

    python worker.py TASK_IN RESULT_OUT     # one task from files (Azure Batch nodes)
    python worker.py --check ENVELOPE       # environment and namespace check (job preparation)
    python worker.py --serve --fd-in R --fd-out W [--parent PID] [--beat FILE]   # local pool worker
    python worker.py --serve --stdio [--parent PID] [--beat FILE]   # the same, portable (Windows)

Exit codes: a task whose iterations raised still exits 0 -- user exceptions are results.
Only failures of the environment or the infrastructure exit non-zero, each with its own code,
so a scheduler can tell "your code raised" (never retried) from "the node is broken"
(retried) from "this node cannot run this payload" (fails fast, never retried).
"""

from __future__ import annotations

import _pickle as pickle  # the C pickler that pickle.py wraps: that module's own import is ~2 ms of a task's start
import binascii
import builtins
import copyreg
import errno
import functools
import gc
import io
import marshal
import os
import struct
import sys
import time
import types
from _collections_abc import Sequence  # collections.abc's own source, loaded at every start: no import
from _json import encode_basestring_ascii as _json_string, make_encoder as _json_encoder, make_scanner as _json_scanner

TYPE_CHECKING = False  # typing's constant without importing typing, which this file never does
if TYPE_CHECKING:
    import re  # imported where a pattern is made: its import (with enum) is ~4 ms of a task's start
    from typing import Any

# Only what every task needs is imported here; the rest (base64, hashlib, platform, random,
# shutil, signal, tempfile, threading, traceback...) where it is used: on a node each task is
# a new interpreter, and its imports were most of a trivial task's cost (issue 16, j).

FORMAT_VERSION = 1
USAGE = """usage: python worker.py TASK_IN RESULT_OUT     run one task from files (TASK_IN may be
                                               env:NAME: the task file, base64, in a variable)
       python worker.py --check ENVELOPE [SHARED_PYC]
                                               check this node's environment and the job's namespace,
                                               and leave the worker compiled beside ENVELOPE (a node-wide
                                               copy at SHARED_PYC, made once, for later jobs to run)
       python worker.py --merge DIR N OUT      stream DIR/1.azpr .. DIR/N.azpr into one file
       python worker.py --serve --fd-in R --fd-out W [--parent PID] [--beat FILE]
       python worker.py --serve --stdio [--parent PID] [--beat FILE]
                                               serve a local pool over two pipes"""
ITEM_NAME = "__azpar_item__"  # the runner code binds the loop target from this name
VALUE_NAME = "__azpar_value__"  # ... and leaves the iteration's value under this one
FUNCTION_NAME = "__azpar_run__"  # the runner compiled as a function (function mode)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3  # Python/dill/package mismatch: never retried
EXIT_BAD_INPUT = 4  # unreadable or corrupt envelope/task input: infrastructure, retried
EXIT_INTERNAL = 5  # a failure of this script itself: infrastructure, retried

ENVELOPE_MAGIC = b"AZPARJ1\n"
TASK_MAGIC = b"AZPART1\n"
RESULT_MAGIC = b"AZPARR1\n"
MERGED_MAGIC = b"AZPARM1\n"

# Captured output kept per iteration (characters of stdout and stderr together; the client
# shows less after a run). Past it, text and displays are counted, not kept, and the
# iteration's output ends with a note saying how much was dropped.
OUTPUT_LIMIT = 1_000_000
TRUNCATED_MARK = "[azpar: this iteration printed "
TRUNCATED_NOTE = (
    "\n" + TRUNCATED_MARK + "{total:,} characters; the worker kept the first {kept:,} "
    "characters and dropped the other {dropped:,}{displays} (at most {kept:,} are kept per "
    "iteration: write large output to a file)]\n"
)

# Loaded namespaces kept per worker process, keyed by their sha256.
NAMESPACE_CACHE_SIZE = 4
# Set in every worker process (the local pool's, a node's task): the package's map, called by an
# iteration, runs its calls there, one after the other, instead of starting a pool inside the worker.
IN_TASK_VARIABLE = "AZPAR_IN_TASK"


class EnvironmentMismatch(Exception):
    """This node cannot run the payload: Python, dill or a package differs from the client."""


class BadInput(Exception):
    """An envelope, namespace or task input is missing, truncated or corrupt."""


# ---------------------------------------------------------------------------------------
# Serialisation shared with the client: the C pickler when it can, dill when it must.
# ---------------------------------------------------------------------------------------


PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL from Python 3.8 to 3.14 (the C module does not name it)


class _JsonContext:
    """What the C JSON scanner reads of a decoder: json.loads's own defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def _not_json(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_SCAN = _json_scanner(_JsonContext())
_ENCODE = _json_encoder({}, _not_json, _json_string, None, ": ", ", ", False, False, True)
_ENCODE_SORTED = _json_encoder({}, _not_json, _json_string, None, ": ", ", ", True, False, True)


def json_dumps(obj: object, sort_keys: bool = False) -> str:
    """``json.dumps(obj, sort_keys=...)``, the same text, through the C encoder json.dumps itself
    uses: the json package's own import was ~1.5 ms of every task's start on a node (issue 16 j)."""
    return "".join((_ENCODE_SORTED if sort_keys else _ENCODE)(obj, 0))


def json_loads(data: str | bytes | bytearray | memoryview) -> object:
    """``json.loads`` of one JSON document (ValueError when it is not one), through the C scanner."""
    text = (bytes(data).decode("utf-8") if not isinstance(data, str) else data).strip(" \t\n\r")
    try:
        obj, end = _SCAN(text, 0)
    except StopIteration as exc:
        raise ValueError(f"not JSON: expected a value at character {exc.value}") from None
    if end != len(text):
        raise ValueError(f"not JSON: extra data at character {end}")
    return obj


class NeedsDill(Exception):
    """Raised inside the fast pickler when an object must be shipped by value."""


_LRU_WRAPPER = functools._lru_cache_wrapper


def _is_main_object(obj: object) -> bool:
    """Functions and classes defined in ``__main__`` (a notebook) cannot go by reference
    to a process that has not executed the notebook."""
    return isinstance(obj, (types.FunctionType, type, _LRU_WRAPPER)) and getattr(obj, "__module__", None) == "__main__"


def _module_reduce(module: types.ModuleType) -> tuple:
    """Modules travel by name, always: dill would pickle a module that is not under
    sys.prefix (an editable install, a notebook folder's own .py file) by value, with its
    whole namespace; the worker imports it instead (local modules are shipped as source)."""
    import importlib

    return importlib.import_module, (module.__name__,)


def _is_plain_array(obj: object) -> bool:
    cls = type(obj)
    return cls.__name__ == "ndarray" and cls.__module__ == "numpy" and not obj.dtype.hasobject and obj.nbytes > 1 << 16


def _exception_reduce(obj: BaseException) -> tuple | None:
    """Exceptions pickle as ``cls(*args)``, which breaks when ``__init__`` takes other
    arguments than it passes on (a common pattern in user code): rebuild them without
    calling ``__init__``, as ``BaseException.__new__`` plus their attributes."""
    if type(obj).__module__ == "builtins" or type(obj).__reduce_ex__ is not BaseException.__reduce_ex__:
        return None
    return copyreg.__newobj__, (type(obj), *obj.args), (obj.__dict__ or None)


def _made_namedtuple_reduce(cls: type) -> tuple | None:
    """A named tuple class made at run time by a module's code, not found by its name (the rows of
    pandas' ``df.itertuples()`` are a ``Pandas`` class each call makes): made again from its name and
    fields, as dill pickles it. The C pickler could not refer to it, so every item of such a loop went
    through dill, ~20 us each: 10,000 rows took 0.2 s, plain tuples 3 ms (issue 16). The reduction is
    dill's own, so the pickle loads wherever dill's do. None for any other class."""
    if not all(hasattr(cls, name) for name in ("_fields", "_make", "_asdict", "_replace")):
        return None
    if cls.__qualname__ != cls.__name__ or cls.__module__ == "__main__":
        return None  # nested, or the notebook's own: dumps decides how it travels
    module = sys.modules.get(cls.__module__)
    if module is not None and getattr(module, cls.__name__, None) is cls:
        return None  # found by its name: pickled as a reference
    create = _dill()._dill._create_namedtuple
    defaults = [cls._field_defaults[f] for f in cls._fields if f in cls._field_defaults]  # type: ignore[attr-defined]
    return create, (cls.__name__, cls._fields, cls.__module__, *((defaults,) if defaults else ()))  # type: ignore[attr-defined]


def _lru_reduce(obj) -> tuple:
    """Rebuild an ``@lru_cache`` notebook function around its wrapped function (shipped by
    value); pickle would otherwise refer to it by name, which the worker cannot resolve."""
    params = obj.cache_parameters()
    state = {k: v for k, v in obj.__dict__.items() if k != "cache_parameters"}
    return _LRU_WRAPPER, (obj.__wrapped__, params["maxsize"], params["typed"], functools._CacheInfo), state


def is_notebook_enum(obj: object) -> bool:
    """An Enum class defined in the notebook (its metaclass is the enum module's or one
    imported from elsewhere). dill cannot ship one by value: the members inside the class
    are instances of the class, a recursion it gives up on, falling back to a reference by
    name that the worker cannot resolve (dill#729, dill#250)."""
    enum = sys.modules.get("enum")  # no Enum class exists before the module is imported
    return (
        enum is not None
        and isinstance(obj, enum.EnumMeta)
        and obj.__module__ == "__main__"
        and type(obj).__module__ != "__main__"
    )


# Entries of an Enum class's namespace that the metaclass makes for every class: never
# copied from one class to the one rebuilt from it (it makes its own).
ENUM_MADE = frozenset(
    {
        "_member_map_",
        "_member_names_",
        "_value2member_map_",
        "_unhashable_values_",
        "_unhashable_values_map_",
        "__dict__",
        "__weakref__",
        "__module__",
        "__qualname__",
    }
)
_ENUM_MEMBER_MADE = frozenset({"_value_", "_name_", "__objclass__", "_sort_order_"})


class _EnumNamespace:
    """What a notebook Enum's class statement built, as pickle rebuilds it: the metaclass's
    own ``__prepare__`` namespace with the members assigned their values in order, so that the
    metaclass makes the members on the other side as it made them here."""

    def __init__(self, cls: type):
        self.metaclass, self.name, self.bases = type(cls), cls.__name__, cls.__bases__
        self.entries = [("__module__", "__main__"), ("__qualname__", cls.__qualname__)]
        self.entries += [(name, member._value_) for name, member in cls.__members__.items()]

    def __reduce__(self):
        import operator

        return (
            operator.methodcaller("__prepare__", self.name, self.bases),
            (self.metaclass,),
            None,
            None,
            iter(self.entries),
        )

    def build(self) -> type:
        namespace = self.metaclass.__prepare__(self.name, self.bases)
        for key, value in self.entries:
            namespace[key] = value
        return self.metaclass(self.name, self.bases, namespace)


class _EnumMember:
    """A member of an Enum class being rebuilt, looked up in it and given the attributes its
    ``__init__`` or ``__new__`` set here (the rebuilt class makes its members from their values
    alone)."""

    def __init__(self, cls: type, name: str, attributes: dict):
        self.cls, self.name, self.attributes = cls, name, attributes

    def __reduce__(self):
        import operator

        return operator.getitem, (self.cls, self.name), self.attributes


def _enum_reduce(cls: type) -> tuple:
    """Pickle a notebook Enum class by value as (metaclass, (name, bases, namespace)), then
    its own methods, properties and docstring set on the class made, and the attributes of its
    members. The recipe is tried here first: an Enum whose members cannot be made again from
    their values (a mixin type whose constructor takes other arguments) is refused with why,
    instead of failing on the workers."""
    namespace = _EnumNamespace(cls)
    try:
        made = namespace.build()
    except Exception as exc:
        raise pickle.PicklingError(
            f"the Enum class {cls.__qualname__} defined in the notebook cannot be made again from its members' "
            f"values ({type(exc).__name__}: {exc}); define it in a module beside the notebook, which is shipped "
            "as source"
        ) from None
    members = cls.__members__
    own = {
        key: value
        for key, value in vars(cls).items()
        if key not in members and key not in ENUM_MADE and vars(made).get(key, _ABSENT) is not value
    }
    extra = {
        name: {k: v for k, v in vars(member).items() if k not in _ENUM_MEMBER_MADE}
        for name, member in members.items()
        if name == member._name_
    }
    if any(extra.values()):
        # Carried by the class's member map, whose value stays what it was: each entry is the
        # member looked up in the rebuilt class, given its attributes on the way.
        own["_member_map_"] = {
            name: _EnumMember(cls, member._name_, extra[member._name_]) for name, member in members.items()
        }
    return type(cls), (namespace.name, namespace.bases, namespace), (None, own) if own else None


_ABSENT = object()
_RECIPES = (_EnumNamespace, _EnumMember)


def _is_notebook_type_name(obj: object) -> bool:
    """A TypeVar, ParamSpec, TypeVarTuple, NewType or ``type`` alias made in the notebook. They
    pickle as their name in ``__main__``, which the worker does not have: a notebook function
    annotated ``(x: T) -> T`` failed every iteration with "Can't get attribute 'T'". The type
    parameters of ``def f[T]`` and ``class Box[T]`` (Python 3.12+) say they are ``typing``'s,
    where no such name is: those could not be pickled at all."""
    module = getattr(obj, "__module__", None)
    if module != "__main__" and module != "typing":  # (first: most objects stop here)
        return False
    typing = sys.modules.get("typing")  # none of them exists before the module is imported
    if typing is None or not isinstance(obj, _type_name_kinds(typing)):
        return False
    return module == "__main__" or getattr(typing, obj.__name__, None) is not obj


@functools.cache
def _type_name_kinds(typing: types.ModuleType) -> tuple:
    names = ("TypeVar", "ParamSpec", "TypeVarTuple", "NewType", "TypeAliasType")  # as far as this Python has them
    return tuple(kind for kind in (getattr(typing, name, None) for name in names) if isinstance(kind, type))


def _type_name_reduce(obj) -> tuple:
    """Make the object again from what defines it: its kind called with its name and
    arguments (a partial, as pickle passes no keyword arguments), then named ``__main__``'s as
    here (a TypeAliasType's module is read-only: it keeps what its making gave it)."""
    kind = type(obj)
    name = obj.__name__
    if kind.__name__ == "NewType":
        args, keywords = (name, obj.__supertype__), {}
    elif kind.__name__ == "TypeAliasType":
        args, keywords = (name, obj.__value__), {"type_params": obj.__type_params__}
    else:
        args = (name, *getattr(obj, "__constraints__", ()))
        keywords = {
            key: getattr(obj, f"__{key}__")
            for key in ("bound", "covariant", "contravariant", "infer_variance")
            if hasattr(obj, f"__{key}__")
        }
        if getattr(obj, "has_default", lambda: False)():  # Python 3.13+
            keywords["default"] = obj.__default__
    state = None if kind.__name__ == "TypeAliasType" else (None, {"__module__": "__main__"})
    return functools.partial(kind, *args, **keywords), (), state


class _NotPlain(Exception):
    pass


class _PlainOnly(pickle.Pickler):
    # The C pickler writes None, bools, exact ints, floats, strings, bytes and exact lists,
    # tuples, dicts and sets itself and asks reducer_override about everything else: here,
    # anything it asks about is not plain.
    def reducer_override(self, obj):
        raise _NotPlain


_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})
_FEW = 8  # up to this many atoms are looked at one by one: cheaper than making a pickler
_SHORT = 1 << 12  # and only short strings and bytes: a long one is pickled into a file (see below)


def _few_short_atoms(obj: object) -> bool:
    if type(obj) not in (list, tuple) or len(obj) > _FEW:  # type: ignore[arg-type]
        return False
    for value in obj:  # type: ignore[attr-defined]
        kind = type(value)
        if kind not in _ATOMS or ((kind is str or kind is bytes) and len(value) > _SHORT):
            return False
    return True


def plain_pickle(obj: object) -> bytes | None:
    """``obj``'s pickle when it is plain data (numbers, strings, bytes, None, and lists, tuples,
    dicts and sets of those, nested), else None: nothing in it is shipped by name, comes from a
    module or needs dill. Checking and pickling are one pass at C speed (a type scan of 100,000
    ints cost more than pickling them, issue 16), into a file, so a large bytes value is copied
    once, not through a growing buffer. A short list or tuple of atoms (a one-iteration task's
    items or values) is checked by type and pickled as it is: the same bytes, a third of the time."""
    if _few_short_atoms(obj):
        return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    buf = io.BytesIO()
    try:
        _PlainOnly(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    except (_NotPlain, RecursionError, pickle.PicklingError):
        return None
    return buf.getvalue()


NUMPY_LIST_KINDS = frozenset("biufc")  # numpy scalars that an array holds exactly: bool, numbers
NUMPY_ARRAY_KINDS = NUMPY_LIST_KINDS | frozenset("mM")  # arrays of one dtype (a datetime's unit is in it)
# Arrays under this size are stacked into one (they travel inside the pickle anyway); larger ones travel
# as they are, apart from it (OUT_OF_BAND_MIN).
NUMPY_STACK_MAX = 1 << 20


NUMPY_TUPLE_MAX = 16  # tuples up to this long travel as columns (numpy_list_pickle)


class _AsList:
    """Pickles as ``list(iterable)``: an array's rows or scalars, each of the type iterating the array
    gives (numpy.float64, a row's view), or a ``_Zip``'s tuples: what the list held."""

    __slots__ = ("iterable",)

    def __init__(self, iterable: object):
        self.iterable = iterable

    def __reduce_ex__(self, protocol: object) -> tuple:
        return list, (self.iterable,)


class _Zip:
    """Pickles as ``zip(*columns)``: tuples made again from their columns."""

    __slots__ = ("columns",)

    def __init__(self, columns: list):
        self.columns = columns

    def __reduce_ex__(self, protocol: object) -> tuple:
        return zip, tuple(self.columns)


def numpy_list_pickle(values: object) -> bytes | None:
    """A list of numpy scalars of one type (``for x in np.arange(n)``, values that ``np.sqrt`` or
    ``a.mean()`` returned), of small arrays of one dtype and shape (``for row in matrix``), or of
    tuples whose every position holds such scalars or plain atoms (``for a, b in zip(xs, ys)``,
    ``(row.mean(), row.std())``), pickled as arrays that load as the same list. Each went through
    the pickler's Python hooks on its own: 10,000 of them cost 4-8 us each, where an array of them
    costs a few us in all (issue 16). None for anything else (plain data included: plain_pickle is
    the faster there)."""
    numpy = sys.modules.get("numpy")
    if numpy is None or type(values) is not list or not values:
        return None
    array = _numpy_array_of(values, numpy)
    if array is not None:
        return pickle.dumps(_AsList(array), protocol=PICKLE_PROTOCOL)
    first = values[0]
    if type(first) is not tuple or not 0 < len(first) <= NUMPY_TUPLE_MAX:
        return None
    numeric = (numpy.generic, numpy.ndarray)
    if not any(isinstance(part, numeric) for part in first) or not all(
        type(part) in _ATOMS or isinstance(part, numeric) for part in first
    ):
        return None  # told by the first tuple, before the whole list is looked at (values of other kinds)
    if len(set(map(type, values))) != 1 or len(set(map(len, values))) != 1:
        return None
    columns: list = []
    for column in map(list, zip(*values)):
        array = _numpy_array_of(column, numpy)
        if array is not None:
            columns.append(array)
        elif set(map(type, column)) <= _ATOMS:
            columns.append(column)
        else:
            return None
    if all(type(column) is list for column in columns):
        return None  # no numpy in them
    return pickle.dumps(_AsList(_Zip(columns)), protocol=PICKLE_PROTOCOL)


def _numpy_array_of(values: list, numpy: types.ModuleType) -> object | None:
    """One array whose iteration gives ``values`` again, of their very types (see numpy_list_pickle)."""
    first = values[0]
    kind = type(first)
    if kind is numpy.ndarray:
        shape, dtype = first.shape, first.dtype
        if not shape or dtype.kind not in NUMPY_ARRAY_KINDS or first.nbytes >= NUMPY_STACK_MAX:
            return None  # (a 0-d array's stack would give scalars back)
        for value in values:
            if type(value) is not numpy.ndarray or value.shape != shape or value.dtype != dtype:
                return None
        return numpy.stack(values)
    if isinstance(first, numpy.generic) and kind.__module__ == "numpy":
        if numpy.dtype(kind).kind not in NUMPY_LIST_KINDS or len(set(map(type, values))) != 1:
            return None
        return numpy.array(values, dtype=kind)
    return None


# Classes whose instances pickle as their class and atoms (a zoned one also its time zone), by module.
# Nothing of the notebook can be inside them, so a list of them needs none of the pickler's Python hooks
# (standard_list_pickle). Exact classes only: a subclass may be the notebook's.
_STANDARD_CLASSES = {
    "datetime": ("date", "datetime", "time", "timedelta", "timezone"),
    "decimal": ("Decimal",),
    "fractions": ("Fraction",),
    "uuid": ("UUID",),
    "pathlib": ("PurePosixPath", "PosixPath", "PureWindowsPath", "WindowsPath"),
    "zoneinfo": ("ZoneInfo",),
    "pandas": ("Timestamp", "Timedelta"),
}
_ZONED_CLASSES = {"datetime": ("datetime", "time"), "pandas": ("Timestamp",)}  # their instances carry a tzinfo
# Time zones that pickle by their name or offset: the standard library's, and pytz's and dateutil's (whose
# classes are many, some made at run time).
_ZONE_MODULES = ("datetime", "zoneinfo", "pytz", "dateutil")


def _classes(table: dict[str, tuple[str, ...]]) -> set[type]:
    """The classes ``table`` names in the modules loaded now (a list of dates has loaded datetime)."""
    found: set[type] = set()
    for module_name, names in table.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found.update(getattr(module, name) for name in names if hasattr(module, name))
    if "pandas" in table and sys.modules.get("pandas") is not None and hasattr(sys.modules["pandas"], "NaT"):
        found.add(type(sys.modules["pandas"].NaT))  # pd.NaT among Timestamps (zoned: its tzinfo is None)
    return found


def standard_list_pickle(values: object) -> tuple[bytes, frozenset[str]] | None:
    """A list of dates, times, time deltas, paths, Decimals, Fractions, UUIDs or pandas Timestamps (or
    of tuples of those and plain atoms: ``zip(days, values)``, ``enumerate(paths)``) pickled by the C
    pickler as it is, with the modules of their classes and time zones (the workers need them to load
    it). Each went through the pickler's Python hooks and the capture's look for notebook objects on its
    own, ~1.5 us apiece: a loop over 10,000 dates or ``pd.date_range`` Timestamps cost twice a fork
    Pool's map (issue 16). None for anything else: a subclass, a container inside, a time zone of
    another kind (the notebook's own tzinfo class)."""
    if type(values) is not list or not values:
        return None
    from itertools import chain

    kinds = set(map(type, values))
    flat: list = values
    if kinds == {tuple}:
        flat = list(chain.from_iterable(values))
        kinds = set(map(type, flat))
    standard = _classes(_STANDARD_CLASSES)
    if not kinds <= standard | _ATOMS or kinds <= _ATOMS:
        return None
    pandas = sys.modules.get("pandas")
    if flat is values and pandas is not None and kinds == {pandas.Timestamp}:
        packed = _timestamps_as_index(values, pandas)
        if packed is not None:
            return packed
    modules = {kind.__module__ for kind in kinds - _ATOMS}
    zoned = kinds & _classes(_ZONED_CLASSES)
    if zoned:
        zones = {value.tzinfo for value in flat if type(value) in zoned}
        for zone_kind in set(map(type, zones)) - {type(None)}:
            module = zone_kind.__module__ or ""
            if module.split(".")[0] not in _ZONE_MODULES:
                return None
            modules.add(module)
    try:
        return pickle.dumps(values, protocol=PICKLE_PROTOCOL), frozenset(modules)
    except Exception:  # (a zone that cannot be pickled: the hooked pickler says why)
        return None


def _timestamps_as_index(values: list, pandas: types.ModuleType) -> tuple[bytes, frozenset[str]] | None:
    """Timestamps of one unit and one fixed zone (``pd.date_range``'s, naive or UTC) as one DatetimeIndex
    that loads as the same list: 10,000 of them pickle in ~2 ms instead of ~6, and load in ~7 instead of
    ~14 (each Timestamp's own reduction). None for other zones: an index of a zone with rules is slower
    to build than the Timestamps are to pickle."""
    from _operator import attrgetter

    try:
        zones = set(map(attrgetter("tzinfo"), values))
        units = set(map(attrgetter("unit"), values))  # (pandas 2 and later)
    except AttributeError:
        return None
    if len(zones) != 1 or len(units) != 1:
        return None
    zone, unit = zones.pop(), units.pop()
    if zone is not None and type(zone) is not sys.modules["datetime"].timezone:
        return None
    index = pandas.DatetimeIndex(values)
    if index.unit != unit:
        index = index.as_unit(unit)
    if index.tz is not zone:
        return None
    modules = frozenset({type(values[0]).__module__, type(index).__module__})
    return pickle.dumps(_AsList(index), protocol=PICKLE_PROTOCOL), modules


def attributes_are_the_types(obj: object) -> bool:
    """Whether what any instance of ``obj``'s class answers for an attribute is its class's answer: no
    attributes of its own (``__dict__``, nor a ``__module__`` or ``__qualname__`` slot), no lookup of
    its own (``__getattr__``, ``__getattribute__`` in Python), and not a proxy (its ``__class__`` is
    its type). What is asked of such an instance (is it a file, a lock, of the notebook?) is then asked
    once per class: a loop over 10,000 dates or Decimals asked it of each, ~2 us apiece, most of the
    cost of sending them (issue 16)."""
    kind = type(obj)
    if kind.__dictoffset__ != 0 or obj.__class__ is not kind:
        return False
    for cls in kind.__mro__:
        own = cls.__dict__
        if "__getattr__" in own or type(own.get("__getattribute__", _SLOT)) is not type(_SLOT):
            return False
        # A name or module of each instance's own (a type alias of Python 3.12+ keeps the module that
        # made it in a slot): whether it is the notebook's is a question for each.
        if type(own.get("__module__", "")) is not str or type(own.get("__qualname__", "")) is not str:
            return False
    return True


_SLOT = object.__dict__["__getattribute__"]  # a lookup written in C, as every built-in class has


# Classes whose instances _FastPickler (and the capture) treat apart: functions, classes, modules,
# exceptions, lru_cache wrappers.
_SPECIAL_KINDS = (type, types.FunctionType, types.ModuleType, BaseException, _LRU_WRAPPER)


def answers_by_type(obj: object) -> bool:
    """Whether what is asked of ``obj`` by its class (``isinstance``, ``issubclass``) is asked of every
    instance of its class: it is not a proxy (its ``__class__`` is its type, no class of it defines
    ``__class__``), and its class is none of the kinds pickled apart (``_SPECIAL_KINDS``, typing's
    names). A DataFrame, its Index and blocks then go through the pickler's Python hooks once per class,
    not per object: ~46 objects a small DataFrame, a loop over ``df.groupby(...)``'s 1,000 groups paid
    ~60 ms for them (issue 16)."""
    kind = type(obj)
    if obj.__class__ is not kind or issubclass(kind, _SPECIAL_KINDS):
        return False
    typing = sys.modules.get("typing")
    if typing is not None and issubclass(kind, _type_name_kinds(typing)):
        return False
    return not any("__class__" in cls.__dict__ for cls in kind.__mro__[:-1])


_ORDINARY: set[type] = set()  # classes whose instances _FastPickler leaves to their own reduction


class _FastPickler(pickle.Pickler):
    def __init__(self, file, hook, by_reference, buffer_callback=None):
        super().__init__(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        self._hook = hook
        self._by_reference = by_reference

    def reducer_override(self, obj):
        if self._hook is not None:
            self._hook(obj)
        kind = type(obj)
        if kind in _ORDINARY:  # (this runs for every object pickled that is not a plain one)
            return NotImplemented
        if _is_main_object(obj) and not self._by_reference(obj):
            raise NeedsDill(obj)
        if _is_notebook_type_name(obj) and not self._by_reference(obj):
            return _type_name_reduce(obj)
        if isinstance(obj, BaseException):
            return _exception_reduce(obj) or NotImplemented
        if isinstance(obj, types.ModuleType) and obj.__name__ != "__main__":
            return _module_reduce(obj)
        if kind is type and obj.__bases__ == (tuple,):
            return _made_namedtuple_reduce(obj) or NotImplemented
        if answers_by_type(obj):
            _ORDINARY.add(kind)  # none of the above holds for any instance of it: a date, a DataFrame
        return NotImplemented


def _dill() -> types.ModuleType:
    """dill, imported on first use: a task whose namespace, items and values the C pickler
    handles never needs it, and its import (~55 ms) is most of such a task's start."""
    import dill

    return dill


@functools.cache
def _dill_pickler() -> type:
    """The dill pickler class, made on first use (it subclasses dill's, see :func:`_dill`)."""

    class _DillPickler(_dill().Pickler):
        def __init__(self, file, hook, main, by_reference, buffer_callback=None, made=None):
            super().__init__(
                file, protocol=PICKLE_PROTOCOL, recurse=False, byref=False, buffer_callback=buffer_callback
            )
            self._hook = hook
            self._main = main
            self._by_reference = by_reference
            self._out_of_band = buffer_callback is not None
            self._made = made  # (file name, bindings, IterationMade): see IterationMade.made

        def _save_made_function(self, obj: types.FunctionType, names: set[str], bound: dict) -> None:
            """A function the iteration defined that reads names it bound (see :class:`IterationMade`): its
            globals on the receiving side are the other ``names`` it reads, as that side's ``__main__`` has
            them when the value loads (:func:`_names_from_main`), and ``bound``. Only what it reads: such a
            function sent on again (the items of a later cell) carries no more. dill's own reduction, with
            its post-processing, so a function that reads itself or is in its own closure loads as dill's
            do."""
            dill_ = _dill()._dill
            # (__name__, which every __main__ has, keeps the dict from being empty as the function is made:
            # dill's _create_function would make it another, and set the bound names in the first)
            globs = _names_from_main(self._main.__dict__, ["__name__", *sorted(names.difference(bound))])
            state = {"__qualname__": obj.__qualname__, "__module__": obj.__module__, "__doc__": obj.__doc__}
            if obj.__annotations__:
                state["__annotations__"] = obj.__annotations__
            made = (obj.__code__, globs, obj.__name__, obj.__defaults__, obj.__closure__, obj.__dict__ or None)
            dill_._save_with_postproc(
                self,
                (dill_._create_function, (*made, obj.__kwdefaults__), (None, state)),
                obj=obj,
                postproc_list=[(dill_._setitems, (globs, bound))],
            )

        def save(self, obj, save_persistent_id=True):
            # (the Enum recipes are this module's own objects, not a package the user's code needs)
            if self._hook is not None and type(obj) not in _RECIPES:
                self._hook(obj)
            if type(obj) is types.CodeType and self._made is not None and obj.co_filename == self._made[0]:
                obj = self._made[2].renamed(obj)  # the cell's own file name, once the code leaves its task
            if id(obj) not in self.memo:
                if (
                    self._made is not None
                    and type(obj) is types.FunctionType
                    and obj.__globals__ is self._main.__dict__
                    and obj.__code__.co_filename == self._made[0]
                ):
                    bindings, names = self._made[1], names_read(obj.__code__)
                    bound = {name: bindings[name] for name in names if name in bindings}
                    if bound:  # else the kernel's namespace, live, as any function of __main__ has
                        return self._save_made_function(obj, names, bound)
                if isinstance(obj, types.ModuleType) and obj is not self._main and obj.__name__ != "__main__":
                    return self.save_reduce(*_module_reduce(obj), obj=obj)
                if _is_plain_array(obj):
                    if self._out_of_band and (obj.flags.c_contiguous or obj.flags.f_contiguous):
                        # The array's own protocol-5 reduction: its buffer goes out of band,
                        # uncopied, which the pure-Python pickler does at C speed.
                        return self.save_reduce(*obj.__reduce_ex__(5), obj=obj)
                    # dill's pickler is pure Python (~3 s/GB); the C pickler is ~10x faster and
                    # an array of numbers cannot hold notebook code that would need dill.
                    return self.save_reduce(pickle.loads, (pickle.dumps(obj, protocol=PICKLE_PROTOCOL),), obj=obj)
                if type(obj) is _LRU_WRAPPER and _is_main_object(obj) and not self._by_reference(obj):
                    return self.save_reduce(*_lru_reduce(obj), obj=obj)
                if is_notebook_enum(obj) and not self._by_reference(obj):
                    return self.save_reduce(*_enum_reduce(obj), obj=obj)
                if _is_notebook_type_name(obj) and not self._by_reference(obj):
                    return self.save_reduce(*_type_name_reduce(obj), obj=obj)
                if isinstance(obj, BaseException):
                    reduced = _exception_reduce(obj)
                    if reduced is not None:
                        return self.save_reduce(*reduced, obj=obj)
            return super().save(obj, save_persistent_id)

    return _DillPickler


class _AtLoad:
    """Stands, in a pickle, for ``call(*args)`` made as the pickle loads (its ``args`` may stand for calls too)."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _names_from_main(main_namespace: dict, names: list[str]) -> _AtLoad:
    """Stands for ``{name: main[name] for name in names if name in main}`` over the ``__main__`` namespace of
    the side that loads the pickle (dill pickles ``main_namespace`` as a reference to it), made of built-in
    calls only, so it loads wherever dill does: a name the kernel no longer has is left out (a NameError when
    read, as for any global)."""
    present = _AtLoad(list, _AtLoad(filter, _AtLoad(getattr, main_namespace, "__contains__"), names))
    values = _AtLoad(map, _AtLoad(getattr, main_namespace, "__getitem__"), present)
    return _AtLoad(dict, _AtLoad(zip, present, values))


def names_read(code: types.CodeType) -> set[str]:
    """The names a code object and the code nested in it (functions, comprehensions) may read as globals
    (attribute names among them: ``co_names`` holds both)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= names_read(const)
    return names


class IterationMade:
    """What an iteration run as module code bound, kept for the functions it defined.

    The body's assignments are globals of the worker's namespace, so a function or class the body
    defines reads them from there (``lambda y: y + x`` over the loop's ``x``). The namespace is put
    back for the next iteration, and such a function pickled by reference to ``__main__`` loaded in
    the kernel reading the kernel's names: a NameError when called, or silently the notebook's own
    ``x``. Each iteration's own bindings (what differs from the loaded namespace) are kept here, and
    its values are pickled with them (:func:`dumps`'s ``made``): the functions it defined read them,
    and the rest of what they name (the notebook's functions, modules, data) as the kernel has it when
    the value comes back. Only the names those functions read are kept (:func:`names_functions_read`), so an
    iteration's other intermediates are freed at its end, as before.
    """

    def __init__(self, filename: str, base: dict, names: frozenset[str], source: str = ""):
        self.filename = filename
        self.base = base
        self.names = names
        self.bindings: dict[int, dict] = {}  # iteration index -> what it bound
        self.shown_as = made_code_filename(source)
        self._renamed: dict[int, tuple] = {}  # id(code) -> (code, its copy named shown_as)

    def renamed(self, code: types.CodeType) -> types.CodeType:
        """``code`` under this cell's own file name (:func:`made_code_filename`), one copy per code object."""
        known = self._renamed.get(id(code))
        if known is None:
            known = self._renamed[id(code)] = (code, code.replace(co_filename=self.shown_as))
        return known[1]

    def keep(self, index: int, namespace: dict) -> None:
        base, missing = self.base, _MISSING
        self.bindings[index] = {
            k: namespace[k] for k in self.names if k in namespace and base.get(k, missing) is not namespace[k]
        }

    def made(self, index: int) -> tuple[str, dict, IterationMade]:
        return self.filename, self.bindings.get(index) or {}, self


def made_code_filename(source: str) -> str:
    """The file name of the code of functions and classes a cell's body made, once they have left their task
    (``<azpar cell 1a2b3c4d>``, after the cell's source): the kernel gives linecache that cell's source under
    it (capture.show_made_code), so a traceback through such a function called in the notebook shows its
    lines, not "Could not get source", and a later cell's worker does not take its lines for its own cell's."""
    return f"<azpar cell {binascii.crc32(source.encode()):08x}>"


_MISSING = object()
_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})


def _definitions(code: types.CodeType) -> list[types.CodeType]:
    """The code of the functions, lambdas and classes code defines (comprehensions aside: they run where they
    are written)."""
    return [c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name not in _COMPREHENSIONS]


def _defines_code(code: types.CodeType) -> bool:
    return bool(_definitions(code))


def names_functions_read(code: types.CodeType) -> frozenset[str]:
    """The names read by the functions, lambdas and classes module code defines; empty when it defines none."""
    names: set[str] = set()
    for definition in _definitions(code):
        names |= names_read(definition)
    return frozenset(names)


class _MainSwapped:
    """Make ``module`` the process's ``__main__`` for the duration: the C pickler looks
    notebook classes up there by name when it pickles or unpickles them by reference."""

    def __init__(self, module: types.ModuleType | None):
        self.module = module

    def __enter__(self):
        # None: nothing to swap, and nothing to put back (a load in the kernel, a task at a time).
        self.previous = sys.modules.get("__main__") if self.module is not None else None
        if self.module is not None:
            sys.modules["__main__"] = self.module

    def __exit__(self, *exc):
        if self.previous is not None:
            sys.modules["__main__"] = self.previous


def _surely_needs_dill(obj: object, by_reference) -> bool:
    """A namespace holding a notebook function or class will fail the C pickler, but only
    when it reaches that entry, after pickling everything before it (a 100 MB array, say):
    look at the top-level values first and go to dill in one pass."""
    if not isinstance(obj, dict):
        return False
    return any(_is_main_object(v) and not by_reference(v) or _is_local_function(v) for v in obj.values())


def _is_local_function(obj: object) -> bool:
    return isinstance(obj, types.FunctionType) and ("<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>")


def dumps(
    obj: object,
    *,
    main: types.ModuleType | None = None,
    hook=None,
    by_reference=None,
    out_of_band: bool = False,
    maybe_plain: bool = True,
    made: tuple[str, dict, IterationMade] | None = None,
) -> tuple[str, bytes]:
    """Serialise ``obj``; return (codec, bytes) where codec is "pickle" or "dill".

    The C pickler is tried first because it is an order of magnitude faster and its output
    loads with the C unpickler. It refuses ``__main__`` functions and classes unless
    ``by_reference(obj)`` says the receiving side has the very same object by name; those
    and anything else the C pickler cannot handle (lambdas, closures) go through dill with
    ``__main__`` globals saved as a reference to the receiver's ``__main__``.
    ``hook(obj)`` sees every object either pickler visits and may raise to refuse one.
    ``out_of_band``: large contiguous buffers (numpy arrays) are laid out after the pickle,
    page-aligned (:func:`frame_out_of_band`), so a worker maps them from the file instead of
    copying them out of the pickle: loading a namespace then costs the same at 1 MB and 1 GB.
    ``maybe_plain=False``: the caller already found that ``obj`` is not plain data.
    ``made``: (the body's file name, what its iteration bound, the IterationMade), for a value of an iteration
    whose body defines functions or classes: those functions travel with what they read of it, under the cell's
    own file name (:class:`IterationMade`).
    """
    plain = plain_pickle(obj) if maybe_plain else None
    if plain is not None:
        # Plain data: nothing for the hook to see (the pickler below asks it only about other
        # objects), no buffer to keep apart, the same bytes, without the pickler subclass and a
        # __main__ swap per task (issue 16, a').
        return "pickle", plain
    by_reference = by_reference or (lambda _obj: False)
    buffers: list[pickle.PickleBuffer] = []

    def keep_apart(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # in band: not worth a page of padding
        buffers.append(buffer)
        return False

    callback = keep_apart if out_of_band else None
    with _MainSwapped(main):
        main = sys.modules["__main__"]
        buf = io.BytesIO()
        try:
            if _surely_needs_dill(obj, by_reference):
                raise NeedsDill(obj)
            _FastPickler(buf, hook, by_reference, callback).dump(obj)
            return "pickle", frame_out_of_band(buf.getbuffer(), buffers) if buffers else buf.getvalue()
        except (NeedsDill, pickle.PicklingError, TypeError, AttributeError):
            pass
        buffers.clear()
        buf = io.BytesIO()
        _dill_pickler()(buf, hook, main, by_reference, callback, made).dump(obj)
        return "dill", frame_out_of_band(buf.getbuffer(), buffers) if buffers else buf.getvalue()


def loads(codec: str, data, *, main: types.ModuleType | None = None) -> object:
    """Inverse of :func:`dumps`; ``main`` is the module that ``__main__`` names bind to.
    ``data``: bytes, or a writable mapping of a file (``mmap.ACCESS_COPY``), whose
    out-of-band buffers then become the arrays' memory without a copy."""
    pickled, buffers = split_out_of_band(data)
    if codec == "pickle" and (main is None or (type(pickled) is bytes and b"__main__" not in pickled)):
        # Nothing to swap: a pickle that names no ``__main__`` object looks nothing up there
        # (one-iteration tasks load their items and values this way, issue 16, a').
        return pickle.loads(pickled, buffers=buffers)
    with _MainSwapped(main):
        if codec == "pickle":
            return pickle.loads(pickled, buffers=buffers)
        unpickler = _dill().Unpickler(io.BytesIO(pickled), buffers=buffers)
        unpickler._main = sys.modules["__main__"]
        return unpickler.load()


# Out-of-band framing: OUT_OF_BAND_MAGIC, the JSON header's length (8 bytes, big-endian), the
# header {"pickle": [start, length], "buffers": [[start, length], ...]}, then the body: offsets
# count from the body's start, which like every buffer's start is a multiple of OUT_OF_BAND_ALIGN
# from the start of the file, so buffers mapped from the file are page-aligned. Data without
# the magic is a plain pickle (what older clients wrote and small namespaces still are).
OUT_OF_BAND_MAGIC = b"AZPARO1\n"
OUT_OF_BAND_MIN = 1 << 20
OUT_OF_BAND_ALIGN = 4096


def _aligned(n: int) -> int:
    return -(-n // OUT_OF_BAND_ALIGN) * OUT_OF_BAND_ALIGN


def frame_out_of_band(pickled, buffers: list) -> bytes:
    """One bytes object: the pickle and its out-of-band buffers, laid out as described above."""
    layout, pos = [], _aligned(len(pickled))
    raws = [b.raw() for b in buffers]
    for raw in raws:
        layout.append([pos, raw.nbytes])
        pos = _aligned(pos + raw.nbytes)
    head = json_dumps({"pickle": [0, len(pickled)], "buffers": layout}).encode()
    prefix = OUT_OF_BAND_MAGIC + struct.pack(">Q", len(head)) + head
    parts = [prefix, bytes(_aligned(len(prefix)) - len(prefix)), pickled]
    end = len(pickled)
    for (start, _), raw in zip(layout, raws):
        parts += [bytes(start - end), raw]
        end = start + raw.nbytes
    return b"".join(parts)


def split_out_of_band(data) -> tuple:
    """(pickle, buffers or None) of serialised ``data``. A read-only ``data`` (bytes) gives
    each buffer as a copy, so arrays stay writable as they were before the framing."""
    if data[: len(OUT_OF_BAND_MAGIC)] != OUT_OF_BAND_MAGIC:
        return data, None
    view = memoryview(data)
    at = len(OUT_OF_BAND_MAGIC)
    try:
        (size,) = struct.unpack(">Q", view[at : at + 8])
        header = json_loads(view[at + 8 : at + 8 + size])
        body = _aligned(at + 8 + size)
        start, length = header["pickle"]
        pickled = view[body + start : body + start + length]
        parts = [view[body + s : body + s + n] for s, n in header["buffers"]]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"corrupt out-of-band framing: {exc}") from None
    if any(len(p) != n for p, (_, n) in zip(parts, header["buffers"])) or len(pickled) != length:
        raise BadInput("out-of-band framing runs past the end of the data (truncated)")
    if view.readonly:
        parts = [bytearray(p) for p in parts]
    return pickled, parts


# ---------------------------------------------------------------------------------------
# File formats: a magic line, a length-prefixed JSON header, then a binary body.
# ---------------------------------------------------------------------------------------


def pack(magic: bytes, header: dict, body: bytes = b"") -> bytes:
    head = json_dumps(header, sort_keys=True).encode()
    return magic + struct.pack(">Q", len(head)) + head + body


def unpack(magic: bytes, data: bytes) -> tuple[dict, bytes]:
    if not data.startswith(magic):
        raise BadInput(f"not an azpar {magic.strip().decode()} file (found {data[:8]!r})")
    start = len(magic) + 8
    if len(data) < start:
        raise BadInput("file truncated inside its header length")
    (size,) = struct.unpack(">Q", data[len(magic) : start])
    if len(data) < start + size:
        raise BadInput("file truncated inside its header")
    try:
        header = json_loads(data[start : start + size])
    except ValueError as exc:
        raise BadInput(f"corrupt header: {exc}") from None
    return header, data[start + size :]


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def namespace_file_name(digest: str) -> str:
    """Namespace blobs are content-addressed so identical captures are staged once."""
    return f"ns-{digest}.bin"


def modules_file_name(digest: str) -> str:
    """The notebook's own modules, staged beside the namespace once per distinct set (the local pool)."""
    return f"mods-{digest}.json"


# ---------------------------------------------------------------------------------------
# Environment checks: fail fast, with both versions named, before touching user bytes.
# ---------------------------------------------------------------------------------------


def _installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _dill_version() -> str:
    """The version ``import dill`` would report, read from the package it would import
    (``dill/__info__.py``, the file dill's ``__init__`` takes it from) without importing it: the
    import is ~55 ms, most of job preparation's check on a node, once per node per job (issue 16).
    The sys.path entries are searched as the import system searches them; whatever is not a
    plain folder holding the package (a zip, a single-file module, an extension, no version
    line) imports dill and asks it, so an unusual install is never guessed at."""
    loaded = sys.modules.get("dill")
    if loaded is not None:  # imported already: that one is what the payloads meet
        return loaded.__version__
    import re
    from importlib.machinery import all_suffixes

    version_line = re.compile(r"""__version__\s*=\s*['"]([^'"]+)['"]\s*$""")  # not at import: ~0.3 ms of every start
    for entry in sys.path:
        folder = entry or os.getcwd()
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                break  # a zip on the path: let the import system say what it holds
            continue
        package = os.path.join(folder, "dill")
        if os.path.isfile(os.path.join(package, "__init__.py")):
            try:
                with open(os.path.join(package, "__info__.py"), encoding="utf-8") as fh:
                    for line in fh:
                        found = version_line.match(line)
                        if found:
                            return found.group(1)
            except OSError:
                pass
            break
        if any(os.path.exists(package + suffix) for suffix in all_suffixes()) or os.path.isdir(package):
            break  # a module file, or a folder that is not a plain package
    return _dill().__version__


def check_environment(envelope: dict) -> None:
    """Raise EnvironmentMismatch naming what differs between the client and this node."""
    problems = []
    fmt = envelope.get("format")
    if fmt != FORMAT_VERSION:
        problems.append(f"envelope format {fmt} (this worker reads format {FORMAT_VERSION})")
    client_py = envelope.get("python", "?")
    import platform

    here_py = platform.python_version()
    if client_py.split(".")[:2] != here_py.split(".")[:2]:
        problems.append(f"Python {client_py} on the client but Python {here_py} on this node")
    client_dill, here_dill = envelope.get("dill", "?"), _dill_version()
    if client_dill != here_dill:
        problems.append(f"dill {client_dill} on the client but dill {here_dill} on this node")
    for name, wanted in sorted(envelope.get("packages", {}).items()):
        found = _installed_version(name)
        if found is None:
            problems.append(f"package {name}=={wanted} is used by the cell but not installed on this node")
        elif found != wanted:
            problems.append(f"package {name} is {wanted} on the client but {found} on this node")
    if problems:
        raise EnvironmentMismatch("This node's environment does not match the notebook's: " + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------------------
# Loading a job: envelope header + content-addressed namespace -> a runnable Job.
# ---------------------------------------------------------------------------------------


class LoadedNamespace:
    """A namespace loaded into a private ``__main__`` module, shared by the tasks of a job and by the
    jobs that ship the same bytes (cached by sha256, so a worker loads a 100 MB capture once), unless
    a job may have changed it: ``fresh_for``."""

    def __init__(self, envelope: dict, namespace_bytes: bytes, module_dir: str | None):
        # A fresh module per namespace: functions shipped from the notebook get it as their
        # globals, so they and the cell body share one global scope, as in the notebook.
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = builtins
        _install_local_modules(shipped_modules(envelope, module_dir), module_dir, envelope.get("local_modules_sha256"))
        try:
            namespace = loads(envelope["namespace"]["codec"], namespace_bytes, main=self.module)
        except Exception as exc:  # the same bytes fail the same way on every retry
            raise EnvironmentMismatch(
                f"the captured namespace could not be loaded on this node: {type(exc).__name__}: {exc}"
            ) from None
        self.module.__dict__.update(namespace)
        self.base = dict(self.module.__dict__)
        self.shipped_ids = {id(v) for v in namespace.values() if _is_main_object(v)}
        # Whether an iteration could change it in place: as the kernel judged it (the local pool's mirror of this
        # cache counts on the same answer), else judged here.
        said = envelope["namespace"].get("changeable")
        self.changeable = said if isinstance(said, bool) else namespace_is_changeable(namespace.values())
        self.served: str | None = None  # the envelope path of the job that used it first
        self.origin: tuple[dict, str] | None = None  # (envelope, namespace file): what a spare copy loads

    def fresh_for(self, envelope_path: str) -> bool:
        """Whether job ``envelope_path`` may use this copy: the job it was loaded for, or any job while no
        iteration could have changed it. A copy another job's iterations may have changed in place is loaded
        again: a cell run again on the local pool started from what the last run's iterations left in the
        worker's copy (a list appended to, a model trained further), so its values depended on which worker
        had run what, where on Azure each job has processes of its own."""
        if self.served is None:
            self.served = envelope_path
        return self.served == envelope_path or not self.changeable


_UNCHANGEABLE_PARTS = _ATOMS | {complex}  # what a tuple or frozenset may hold and stay unchangeable
_UNCHANGEABLE = (*_UNCHANGEABLE_PARTS, range, types.FunctionType, type, types.ModuleType)


def namespace_is_changeable(values) -> bool:
    """Whether an iteration could change one of ``values`` in place (``lst.append(x)``,
    ``model.partial_fit(...)``): any value but numbers, strings, tuples of them, functions, classes and
    modules. Such a namespace is loaded again for each job (``LoadedNamespace.fresh_for``)."""
    return any(not _unchangeable(value) for value in values)


def _unchangeable(value: object, depth: int = 1) -> bool:
    kind = type(value)
    if kind in (tuple, frozenset):
        return all(type(part) in _UNCHANGEABLE_PARTS for part in value)
    if kind is types.FunctionType:  # its defaults and closure are its state (``def add(x, seen=[])``)
        if not depth:
            return True
        held = [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
        for cell in value.__closure__ or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        return all(_unchangeable(part, depth - 1) for part in held)
    return isinstance(value, _UNCHANGEABLE) or kind is types.BuiltinFunctionType


class LoadedJob:
    """What a task needs: the job's compiled body and options, over a loaded namespace."""

    def __init__(self, envelope: dict, namespace: LoadedNamespace):
        self.envelope = envelope
        self.code = marshal.loads(binascii.a2b_base64(envelope["code"]))
        self.filename = envelope["filename"]
        self.gather = list(envelope.get("gather") or [])
        self.seed = envelope.get("seed")
        self.logging = envelope.get("logging")  # the notebook's logging set-up (capture.logging_setup)
        self.settings = envelope.get("settings")  # its warning filters, ... (capture.interpreter_settings)
        self.namespace = namespace
        self.namespace_key = ""  # its key in JobCache.namespaces (set by _load_job)
        self.module, self.base, self.shipped_ids = namespace.module, namespace.base, namespace.shipped_ids
        # Modules travel by name: the submodules the kernel's copy had, which this body reaches through it
        # (``xml.dom`` after ``import xml.dom.minidom``), are imported here, per job (jobs share a loaded
        # namespace, not their bodies). One that fails to import leaves the body's AttributeError, as before.
        for name in envelope.get("submodules") or ():
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - the body says what it missed, where it needs it
                pass
        # Function mode: the runner as a function whose globals are the namespace, built
        # from the code object inside the shipped module code (nothing is added to the
        # namespace itself, which other jobs share).
        self.function = None
        if envelope.get("mode") == "function":
            module_code = marshal.loads(binascii.a2b_base64(envelope["function_code"]))
            fcode = next(
                c for c in module_code.co_consts if isinstance(c, types.CodeType) and c.co_name == FUNCTION_NAME
            )
            # Tracebacks name the frame as module mode does: the user wrote no function.
            names = {"co_name": "<module>"}
            if hasattr(fcode, "co_qualname"):
                names["co_qualname"] = "<module>"
            fcode = fcode.replace(**names)
            self.function = types.FunctionType(fcode, self.module.__dict__, FUNCTION_NAME)
        # Module mode, where functions the body defines read its assignments as globals (IterationMade).
        self.functions_read = names_functions_read(self.code) if self.function is None else frozenset()
        # Any mode: functions and classes the body defines get the cell's own file name as they leave (IterationMade)
        self.defines_code = _defines_code(self.code if self.function is None else self.function.__code__)
        sources = envelope.get("sources") or {}
        _SOURCES.update(sources)
        _show_sources(sources)


_SOURCES: dict = {}  # the cells' source by file name, for linecache: every job's this process has loaded

# The notebook's logging set-up this process follows now, and how to undo it: (set-up, handler,
# root level before, {logger name: level before}). None: as Python starts, unconfigured.
_LOGGING: list = [None]


def _follow_logging(setup: dict | None) -> None:
    """Show the iterations' log records as the notebook shows its own (``capture.logging_setup``):
    the root logger's level, a handler writing each record in the notebook's format to the stream
    the iteration's output is recorded from at that moment, and the levels set on the loggers the
    body was given. Another job's set-up (or none) first undoes this one's: jobs share the process."""
    current = _LOGGING[0]
    if current is not None and current[0] == setup:
        return
    import logging

    if current is not None:
        _, handler, root_level, levels = current
        if handler is not None:
            logging.root.removeHandler(handler)
        logging.root.setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _LOGGING[0] = None
    if setup is None:
        return
    handler, root_level = None, logging.root.level
    if setup.get("format"):
        handler = _recorded_stream_handler(logging, setup)
        logging.root.addHandler(handler)
        logging.root.setLevel(setup["level"])
    elif "root_level" in setup:  # the notebook's root level without a handler of its own
        logging.root.setLevel(setup["root_level"])
    levels = {}
    for name, level in setup["levels"].items():
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(level)
    _LOGGING[0] = (setup, handler, root_level, levels)


# The notebook's settings this process follows now (capture.interpreter_settings), or None: the worker's own.
_SETTINGS: list = [None]
_FILTERS_MADE: list = [None, []]  # the filters last given, as data, and as the interpreter's
_STARTED_RECURSION_LIMIT = sys.getrecursionlimit()
_STARTED_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
# numpy's defaults (the kernel's capture compares its own with them)
NUMPY_DEFAULT_ERRORS = {"divide": "warn", "over": "warn", "under": "ignore", "invalid": "warn"}
# np.get_printoptions() as numpy starts, 1.x and 2.x alike (2.1+ adds override_repr)
NUMPY_DEFAULT_PRINT = {
    "edgeitems": 3,
    "threshold": 1000,
    "floatmode": "maxprec",
    "precision": 8,
    "suppress": False,
    "linewidth": 75,
    "nanstr": "nan",
    "infstr": "inf",
    "sign": "-",
    "formatter": None,
    "legacy": False,
    "override_repr": None,
}


def follow_numpy_settings(numpy: types.ModuleType, settings: dict | None) -> None:
    """Give numpy the notebook's error handling and print options (``capture.interpreter_settings``), and its
    defaults for what the notebook left as they were: what a body or an earlier job set goes."""
    settings = settings or {}
    errors = settings.get("numpy_errors") or NUMPY_DEFAULT_ERRORS
    if numpy.geterr() != errors:
        numpy.seterr(**errors)
    now = numpy.get_printoptions()
    wanted = {key: value for key, value in NUMPY_DEFAULT_PRINT.items() if key in now}
    wanted.update((key, value) for key, value in (settings.get("numpy_print") or {}).items() if key in now)
    if now != wanted:
        try:
            numpy.set_printoptions(**wanted)
        except Exception:  # noqa: BLE001 - a value this numpy refuses: its own options stand
            pass


def _follow_settings(settings: dict) -> None:
    """Run the iterations under the notebook's warning filters, numpy's error handling, ``decimal``'s context,
    recursion limit and integer string limit, as the sequential loop runs (``capture.interpreter_settings``).
    What the last job's settings changed and this job's leave out goes back to the worker's own."""
    import warnings

    previous = _SETTINGS[0] or {}
    given = settings.get("filters") or "[]"  # (a JSON string: compared, not read, job after job)
    if given != _FILTERS_MADE[0]:  # (the same filters, job after job: made once)
        made = []
        for action, message, category, module, lineno in json_loads(given):  # type: ignore[union-attr]
            made.append((action, _pattern(message), _warning_category(category), _pattern(module), lineno))
        _FILTERS_MADE[:] = [given, made]
    warnings.filters[:] = _FILTERS_MADE[1]
    warnings._filters_mutated()  # the modules' registries of warnings already shown are stale
    numpy = sys.modules.get("numpy")  # (never imported for this: a task imports it when it uses it)
    if numpy is not None:
        follow_numpy_settings(numpy, settings)
    elif "numpy_errors" in settings or "numpy_print" in settings:  # set as a task's own import of numpy ends
        _NUMPY_SETTINGS_WATCH.install()
    context = settings.get("decimal")
    if context is not None or previous.get("decimal") is not None:
        import decimal

        if context is None:
            decimal.setcontext(decimal.Context())
        else:
            traps = [getattr(decimal, name) for name in context["traps"] if hasattr(decimal, name)]
            fields = {k: v for k, v in context.items() if k != "traps"}
            decimal.setcontext(decimal.Context(**fields, traps=traps, flags=[]))
    limit = settings.get("recursion_limit")
    if limit is not None or previous.get("recursion_limit") is not None:
        sys.setrecursionlimit(limit or _STARTED_RECURSION_LIMIT)
    digits = settings.get("int_max_str_digits")
    if (digits is not None or previous.get("int_max_str_digits") is not None) and _STARTED_INT_DIGITS:
        sys.set_int_max_str_digits(_STARTED_INT_DIGITS if digits is None else digits)
    if settings.get("figures"):
        _draw_figures_here()
    _SETTINGS[0] = settings
    # (here, not in _ProcessState.restore, which precedes this at a job's first task: a notebook's options are
    # then compared with what the worker has, not put back to pandas' defaults and set again at every job)
    if "pandas._config.config" in sys.modules:  # what a body or an earlier job set goes
        follow_pandas_options(settings.get("pandas"))
    elif settings.get("pandas") is not None:  # set as a task's own import of pandas ends
        _PANDAS_SETTINGS_WATCH.install()


_PANDAS_DEFAULTS: list = [None]  # pandas' option values as it registers them, nested as it keeps them


def pandas_option(values: dict, key: str, missing: object) -> object:
    """Option ``key`` ("display.max_columns") in pandas' nested dicts of option values, or ``missing``."""
    *path, last = key.split(".")
    for part in path:
        values = values.get(part)  # type: ignore[assignment]
        if not isinstance(values, dict):
            return missing
    return values.get(last, missing)


def follow_pandas_options(options: dict | None) -> None:
    """Give pandas' options the notebook's values (``capture.pandas_options``: a value, or its pickle), and
    every other option pandas' default: what a body or an earlier job set goes. Nothing is imported; a job
    where nothing differs costs one comparison of pandas' nested option dicts (~2 us). An option this pandas
    does not have, or refuses, is left as it is."""
    config = sys.modules.get("pandas._config.config")
    if config is None:
        return
    try:
        registered, values = config._registered_options, config._global_config
        if _PANDAS_DEFAULTS[0] is None:
            defaults: dict = {}
            for key, option in registered.items():
                *path, last = key.split(".")
                place = defaults
                for part in path:
                    place = place.setdefault(part, {})
                place[last] = option.defval
            _PANDAS_DEFAULTS[0] = defaults
        if not options and values == _PANDAS_DEFAULTS[0]:
            return
    except Exception:  # noqa: BLE001 - another layout of pandas' registry
        return
    import warnings

    wanted = options or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a deprecated option warns when set)
        for key, option in registered.items():
            value = wanted.get(key, option.defval)
            try:
                if isinstance(value, dict):
                    value = pickle.loads(binascii.a2b_base64(value["pickle"]))
                now = pandas_option(values, key, _MISSING)
                if now is value or now == value:
                    continue
                config.set_option(key, value)
            except Exception:  # noqa: BLE001
                continue


# matplotlib figures, for a notebook that shows them inline (capture.interpreter_settings' "figures"): the
# worker's pyplot draws with a backend of its own, whose show() puts each open figure, as a PNG, in the output
# of the iteration running, and a task's end does the same with the figures its iterations left open, as a
# notebook's cell end does. The kernel's inline backend (its MPLBACKEND, inherited) printed Figure(640x480).
FIGURES_BACKEND = "azpar_figures_backend"
_BASELINE: list = [None]  # the serving worker's _ProcessState
_FIGURES: list = [False]  # whether a job asked for them here


def _draw_figures_here() -> None:
    backend = f"module://{FIGURES_BACKEND}"
    if not _FIGURES[0]:
        sys.meta_path.append(_FiguresBackendFinder())
    _FIGURES[0] = True
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        if os.environ.get("MPLBACKEND") != backend:
            os.environ["MPLBACKEND"] = backend
            if _BASELINE[0] is not None:  # the worker's own now: not put back (and set again) at every job
                _BASELINE[0].keep_environ("MPLBACKEND", backend)
        return
    params = matplotlib.rcParams
    current = params._get_backend_or_none() if hasattr(params, "_get_backend_or_none") else None
    if current != backend:
        try:
            matplotlib.use(backend)
        except Exception:  # a matplotlib too old for module backends: figures are not drawn here
            _FIGURES[0] = False


class _FiguresBackendFinder:
    """Makes the backend module when matplotlib imports it (it reads the module's attributes once, then): Agg's
    canvas, and a show() of our own. No file: the worker is one script."""

    def find_spec(self, name, path=None, target=None):
        if name != FIGURES_BACKEND:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg
        module.show = _show_figures


def _show_figures(*_args, **_kwargs) -> None:
    """``plt.show()`` in a body: the open figures, in the running iteration's output."""
    sink = _STDOUT._sink
    if sink is not None:
        _flush_figures(sink.add)


def _flush_figures(add) -> None:
    """Each open figure as a display (a PNG and its text), then closed, as the notebook's inline backend does."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        figures = [manager.canvas.figure for manager in pyplot._pylab_helpers.Gcf.get_all_fig_managers()]
    except Exception:
        return
    for figure in figures:
        try:
            bundle = mime_bundle(figure)
        except Exception as exc:  # a figure that cannot be drawn must not fail the task
            bundle = {"text/plain": f"{figure!r} (it could not be drawn: {type(exc).__name__}: {exc})"}
        add("display", bundle)
    if figures:
        pyplot.close("all")


def _pattern(given):
    if given is None or isinstance(given, str):
        return given
    return _LazyPattern(given["re"], given["flags"])


class _LazyPattern:
    """A filter's regular expression, compiled when a warning is first matched against it: the interpreter's
    filters need only a ``match`` method, and importing ``re`` for the kernel's filters (IPython has one) cost
    every task on a node its start-up share (issue 16, j) though most tasks warn of nothing."""

    __slots__ = ("pattern", "flags", "_compiled")

    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern, self.flags, self._compiled = pattern, flags, None

    def match(self, text: str):
        if self._compiled is None:
            import re

            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled.match(text)

    def __repr__(self) -> str:
        return f"re.compile({self.pattern!r}, {self.flags})"


def _warning_category(path: str):
    """The warning class ``module:qualname`` names, or, when its module is not imported here yet, a
    ``_LazyCategory`` standing in for it: importing a library for a filter (numpy adds one for its RankWarning)
    cost every worker that library's import, whether the body used it or not."""
    module_name, _, qualname = path.partition(":")
    if module_name in sys.modules:
        found = _LazyCategory(module_name, qualname).resolve()
        if found is not None:
            return found
    return _LazyCategory(module_name, qualname)


class _LazyCategory:
    """A filter's category whose module this process has not imported: no warning of it can be raised before
    the module is, so it matches nothing until then, and the class itself once it is (the interpreter asks
    ``issubclass(category, filter_category)``, which calls ``__subclasscheck__`` here)."""

    __slots__ = ("module", "qualname", "_found")

    def __init__(self, module: str, qualname: str) -> None:
        self.module, self.qualname, self._found = module, qualname, None

    def resolve(self):
        if self._found is None:
            module = sys.modules.get(self.module)
            if module is None:
                return None  # not imported yet: looked for again at the next warning
            found = module
            try:
                for part in self.qualname.split("."):
                    found = getattr(found, part)
            except AttributeError:
                found = None
            self._found = found if isinstance(found, type) and issubclass(found, Warning) else False
        return self._found or None

    def __subclasscheck__(self, category) -> bool:
        found = self.resolve()
        return found is not None and issubclass(category, found)

    def __repr__(self) -> str:
        return f"<warning category {self.module}.{self.qualname}>"


def _recorded_stream_handler(logging: types.ModuleType, setup: dict):
    """A handler writing to ``sys.stdout``/``sys.stderr`` as they are when a record comes (an
    iteration's recorded streams), not as they were when it was made, as StreamHandler would."""
    to_stdout = setup.get("stream") == "stdout"

    class RecordedStreamHandler(logging.Handler):
        def emit(self, record):
            try:
                (sys.stdout if to_stdout else sys.stderr).write(self.format(record) + "\n")
            except Exception:
                self.handleError(record)

    handler = RecordedStreamHandler(setup.get("handler_level") or 0)
    try:
        formatter = logging.Formatter(setup["format"], setup.get("datefmt"), style=setup.get("style") or "%")
    except (ValueError, TypeError):  # checked in the kernel; another Python may read it otherwise
        formatter = logging.Formatter(logging.BASIC_FORMAT)
    handler.setFormatter(formatter)
    return handler


def _show_sources(sources: dict) -> None:
    """Tracebacks, warnings and ``inspect`` show a cell's lines from linecache, which cannot read
    them from a file. Registered when linecache is imported, not before: its import (tokenize,
    re, enum) is a third of a trivial task's start on a node, and a task that raises no
    exception, warns of nothing and asks for no source never needs it (issue 16, j)."""
    linecache = sys.modules.get("linecache")
    if linecache is None:
        _LINECACHE_WATCH.install()
        return
    for fname, text in sources.items():
        linecache.cache[fname] = (len(text), None, text.splitlines(True), fname)


LOCAL_MODULES_PREFIX = "azpar-modules-"  # the folders of the notebooks' own modules, first on sys.path


def modules_apart(envelope: dict) -> tuple[dict, str | None]:
    """The kernel's side of ``shipped_modules``: the envelope naming the file its modules are staged in
    (once per set, by the backend) instead of carrying them, and that file's name; the envelope as it is,
    and None, when it ships no modules (or names no digest for them)."""
    digest = envelope.get("local_modules_sha256")
    if not envelope.get("local_modules") or not digest:
        return envelope, None
    name = modules_file_name(digest)
    return dict(envelope, local_modules={}, local_modules_file=name), name


def shipped_modules(envelope: dict, folder: str | None) -> dict:
    """The notebook's own modules the job ships: in the envelope, or (the local pool) in the file staged
    beside it once per distinct set, named by ``local_modules_file``; a package of a few MB travelled in
    every job's envelope to every worker (issue 16)."""
    name = envelope.get("local_modules_file")
    if not name:
        return envelope.get("local_modules") or {}
    path = os.path.join(folder or ".", name)
    try:
        with open(path, "rb") as fh:
            modules = json_loads(fh.read())
    except (OSError, ValueError) as exc:
        raise EnvironmentMismatch(
            f"the notebook's modules staged for this job could not be read ({path}): {exc}"
        ) from None
    if not isinstance(modules, dict):
        raise EnvironmentMismatch(f"the notebook's modules staged for this job ({path}) are not a table of files")
    return modules


def source_encoding(text: str) -> str:
    """The encoding a module's source declares: a PEP 263 coding comment on its first line, or on its
    second after a comment or blank first line (as Python reads it); else UTF-8. A module shipped as
    text is written back in it, so that its import decodes the same text (a ``latin-1`` module written
    as UTF-8 read "café" as "cafÃ©"). Without ``re``: its import is a cost of every task's start."""
    for line in text.split("\n", 2)[:2]:
        stripped = line.lstrip(" \t\f")
        if not stripped.startswith("#"):
            if stripped.strip():
                break  # code on the first line: a cookie on the second is not read
            continue
        at = stripped.find("coding")
        while at != -1:
            rest = stripped[at + 6 :]
            if rest[:1] in (":", "="):
                name = rest[1:].lstrip(" \t")
                end = 0
                while end < len(name) and (name[end].isalnum() or name[end] in "-_."):
                    end += 1
                if end:
                    return name[:end]
            at = stripped.find("coding", at + 1)
    return "utf-8"


def _install_local_modules(modules: dict, module_dir: str | None, digest: str | None = None) -> None:
    """Write the notebook folder's own .py modules where imports find them first, and
    forget any stale copy imported by an earlier job in this process. ``digest``: the set's own
    (``local_modules_sha256``), which spares serialising and hashing the modules again here."""
    if not modules:
        return
    digest = (digest or sha256(json_dumps(modules, sort_keys=True).encode()))[:16]
    import tempfile

    root = os.path.join(module_dir or tempfile.gettempdir(), f"{LOCAL_MODULES_PREFIX}{digest}")
    for rel, text in modules.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            # Atomic: another worker of the same job may import it the moment it exists.
            tmp = f"{path}.{os.getpid()}.part"
            with open(tmp, "w", encoding=source_encoding(text)) as fh:
                fh.write(text)
            os.replace(tmp, path)
        top = rel.split("/")[0].removesuffix(".py")
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


class JobCache:
    """Per-process caches: jobs by envelope path and by the envelope's bytes (a cell run again
    ships the same envelope under a new job's path), namespaces by content (LRU)."""

    def __init__(self) -> None:
        self.jobs: dict[str, LoadedJob] = {}
        self.envelopes: dict[bytes, LoadedJob] = {}
        self.namespaces: dict[str, LoadedNamespace] = {}
        self.failed: dict[str, tuple] = {}  # envelope path -> why loading that job failed here (class, words)
        self.namespace_loads = 0  # loads a job waited for, reported back so "loaded once per worker" can be checked
        self.spares: dict[str, LoadedNamespace] = {}  # fresh copies for the next job (load_spare), by key
        # Copies replaced for a new job, freed while the worker idles (load_spare), not on that job's path:
        # freeing a list of 100,000 floats took ~1 ms.
        self.replaced: list[LoadedNamespace] = []

    def spare(self, key: str, envelope_path: str) -> LoadedNamespace | None:
        """The copy of namespace ``key`` loaded while this worker was idle (``load_spare``), for the job at
        ``envelope_path``, or None."""
        spare = self.spares.pop(key, None)
        if spare is not None:
            spare.served = envelope_path
        return spare

    def load_spare(self) -> None:
        """While the worker waits for a task: the copies replaced for a job are freed, and a fresh copy of a
        namespace a job has used and may have changed is loaded for the next job of it, so that loading it
        again (LoadedNamespace.fresh_for) is not on that job's path (a cell run again over a dict of 10,000
        entries paid ~1 ms, a list of 100,000 floats ~3-5). Only below SPARE_MAX bytes of pickle: a copy held
        beside the one in use costs its memory."""
        self.replaced.clear()
        for key in [k for k in self.spares if k not in self.namespaces]:  # let go with their namespace
            del self.spares[key]
        for key, namespace in list(self.namespaces.items()):
            if key in self.spares or namespace.origin is None or namespace.served is None or not namespace.changeable:
                continue
            envelope, path = namespace.origin
            if envelope["namespace"].get("size", SPARE_MAX + 1) > SPARE_MAX:
                continue
            try:
                spare = LoadedNamespace(envelope, read_namespace(path), os.path.dirname(path))
            except Exception:  # noqa: BLE001 - the file went (the job ended): the next job loads its own
                namespace.origin = None
                continue
            spare.origin = namespace.origin
            self.spares[key] = spare  # (not in namespace_loads: the loads a job waited for)
            return  # one a wait: a task may be on its way

    def replace(self, key: str, old: LoadedNamespace | None, new: LoadedNamespace) -> None:
        """``new`` is the copy of namespace ``key`` from now on; the jobs loaded over ``old`` (a copy an earlier
        job's iterations may have changed) are forgotten, so that a worker holds one copy of a namespace, not
        one per job it kept (a job still running loads it again for its next task)."""
        if old is not None:
            for table in (self.jobs, self.envelopes):
                for stale in [k for k, job in table.items() if job.namespace is old]:
                    del table[stale]
            if old is not new:
                self.replaced.append(old)
        self._remember(self.namespaces, key, new)

    @staticmethod
    def _remember(table: dict, key: str | bytes, value) -> None:
        table[key] = value
        while len(table) > NAMESPACE_CACHE_SIZE:
            table.pop(next(iter(table)))


def read_namespace(ns_path: str):
    """The namespace file's bytes; a file with out-of-band buffers is mapped copy-on-write
    instead, so its arrays use the node's page cache (shared by the tasks and workers of the
    node, read only where touched) and a task that writes to one changes only its own copy.
    Not on Windows, where a mapped file cannot be deleted (the local pool removes its stage)."""
    try:
        with open(ns_path, "rb") as fh:
            if fh.read(len(OUT_OF_BAND_MAGIC)) == OUT_OF_BAND_MAGIC and os.name != "nt":
                import mmap

                return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            fh.seek(0)
            return fh.read()
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the namespace {ns_path}: {exc}") from None


def verify_namespace(data, ns_path: str, digest: str) -> None:
    """BadInput unless ``data`` (the file at ``ns_path``) has the sha256 the envelope names."""
    if sha256(data) != digest:
        raise BadInput(f"namespace {ns_path} is corrupt: its sha256 does not match the envelope")


# Job preparation runs ``worker.py --check ENVELOPE`` once per node per job: the environment
# check and the namespace's sha256, which each task otherwise repeats (importing dill and
# reading every package's metadata, and hashing the whole namespace: a cost that grew with its
# size, issue 16). When both pass it leaves this stamp beside the envelope, naming the files it
# checked (size, mtime, inode) and the interpreter and path it checked them with; a task that
# finds the stamp matching skips both checks.
CHECKED_SUFFIX = ".checked"


def _file_identity(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _check_context(envelope_path: str, ns_path: str, digest: str) -> dict:
    return {
        "envelope": _file_identity(envelope_path),
        "namespace": _file_identity(ns_path),
        "sha256": digest,
        "python": sys.executable,
        "path": os.environ.get("PYTHONPATH", ""),
    }


def checked_before(envelope_path: str, ns_path: str, digest: str) -> bool:
    """Whether job preparation checked this envelope and namespace, unchanged since, here."""
    try:
        with open(envelope_path + CHECKED_SUFFIX, encoding="utf-8") as fh:
            return json_loads(fh.read()) == _check_context(envelope_path, ns_path, digest)
    except (OSError, ValueError):
        return False


def check_node(envelope_path: str) -> None:
    """``--check``: the environment check, then the namespace's sha256 when the namespace is
    beside the envelope; when both pass, the stamp :func:`checked_before` looks for."""
    with open(envelope_path, "rb") as fh:
        envelope, _ = unpack(ENVELOPE_MAGIC, fh.read())
    check_environment(envelope)
    info = envelope.get("namespace") or {}
    ns_path = os.path.join(os.path.dirname(os.path.abspath(envelope_path)), info.get("file", ""))
    if not info.get("file") or not os.path.isfile(ns_path):
        return
    verify_namespace(read_namespace(ns_path), ns_path, info["sha256"])
    stamp = envelope_path + CHECKED_SUFFIX
    tmp = f"{stamp}.{os.getpid()}.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json_dumps(_check_context(envelope_path, ns_path, info["sha256"])))
    os.replace(tmp, stamp)


COMPILED_FILE = "worker.pyc"


def compile_for_tasks(folder: str, shared: str | None = None) -> None:
    """Leave the worker compiled in ``folder`` (COMPILED_FILE) for the job's tasks, whose command
    line prefers it: Python compiles a script at every start (30-40 ms of a trivial task) but
    runs a compiled file as it is. ``shared``: a node-wide copy named by the worker's sha256 and
    the node's Python, which job preparation runs when it is there (issue 16: compiling the
    script to run it, then again for the tasks, was ~50 ms of every job's preparation on every
    node). Run from that copy, this links it into ``folder``; run from the source, it compiles
    and then leaves the copy for the next job. Never fatal: tasks fall back to the source."""
    here = os.path.abspath(__file__)
    target = os.path.join(folder, COMPILED_FILE)
    try:
        if here.endswith(".pyc"):
            if here != os.path.abspath(target):
                _place(here, target)
            return
        import py_compile

        py_compile.compile(here, cfile=target, dfile=os.path.basename(here), doraise=True)
    except Exception as exc:  # a read-only folder, a full disk: the tasks run the source
        print(f"azpar worker: not compiled ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    if shared:
        try:
            _place(target, shared)
        except OSError as exc:  # the next job compiles again
            print(f"azpar worker: compiled, not shared ({exc})", file=sys.stderr)


def _place(source: str, target: str) -> None:
    """``target`` becomes a whole copy of ``source`` at once (a hard link when it can), so a
    concurrent reader sees the old file or the new one, never a part."""
    part = f"{target}.{os.getpid()}.part"
    try:
        os.link(source, part)
    except OSError:
        with open(source, "rb") as src, open(part, "wb") as dst:
            dst.write(src.read())
    os.replace(part, target)


def load_job(envelope_path: str, cache: JobCache | None = None, data: bytes | None = None) -> LoadedJob:
    """Read, check and load a job; the environment check comes before any user bytes.
    ``data``: the envelope file's bytes, when the pool sent them with the job's first task to
    this worker (no file to open; issue 16: opening and parsing it was most of loading a job on
    a worker that had slept since the last cell). A job whose envelope has the same bytes as one
    loaded before (the same cell run again) is that job: its checks passed, its code is built."""
    if cache is not None and envelope_path in cache.jobs:
        return cache.jobs[envelope_path]
    if data is None:
        try:
            with open(envelope_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            # The pool writes no file for a job it knows this process loaded from a task that carried
            # the envelope; if that load failed, its failure is this task's too.
            failure = cache.failed.get(envelope_path) if cache is not None else None
            if failure is not None:
                raise failure[0](failure[1]) from None
            raise BadInput(f"cannot read the job envelope {envelope_path}: {exc}") from None
    try:
        return _load_job(envelope_path, cache, data)
    except Exception as exc:
        if cache is not None:  # its class and words, not the exception: its traceback holds the load's data
            if isinstance(exc, (EnvironmentMismatch, BadInput)):
                failure = (type(exc), str(exc))
            else:
                failure = (BadInput, f"loading the job failed here: {type(exc).__name__}: {exc}")
            cache._remember(cache.failed, envelope_path, failure)
        raise


def _load_job(envelope_path: str, cache: JobCache | None, data: bytes) -> LoadedJob:
    if cache is not None and data in cache.envelopes:
        job = cache.envelopes[data]
        if not job.namespace.fresh_for(envelope_path):  # its checks passed: only the namespace is loaded again
            old, key = job.namespace, job.namespace_key
            ns_path = os.path.join(os.path.dirname(os.path.abspath(envelope_path)), job.envelope["namespace"]["file"])
            namespace = _fresh_namespace(cache, key, envelope_path, job.envelope, ns_path)
            job = LoadedJob(job.envelope, namespace)
            job.namespace_key = key
            cache.replace(key, old, namespace)
            cache._remember(cache.envelopes, data, job)
        cache._remember(cache.jobs, envelope_path, job)
        return job
    envelope, _ = unpack(ENVELOPE_MAGIC, data)
    # The folders of the notebook's compiled modules (a %%cython cell's), on the machine that compiled them,
    # before the namespace that names them loads: last, so they add these modules and shadow nothing.
    for extra in envelope.get("import_folders") or ():
        if extra not in sys.path:
            sys.path.append(extra)
    info = envelope["namespace"]
    folder = os.path.dirname(os.path.abspath(envelope_path))
    ns_path = os.path.join(folder, info["file"])
    checked = checked_before(envelope_path, ns_path, info["sha256"])
    if not checked:
        check_environment(envelope)
    # The digest the kernel gave the modules, else their text itself, not a hash of it: a key in this
    # process only, and hashing would import hashlib in every task for nothing.
    ns_key = info["sha256"] + (
        envelope.get("local_modules_sha256") or json_dumps(envelope.get("local_modules") or {}, sort_keys=True)
    )
    old = namespace = cache.namespaces.get(ns_key) if cache is not None else None
    if namespace is None or not namespace.fresh_for(envelope_path):
        namespace = _fresh_namespace(
            cache, ns_key, envelope_path, envelope, ns_path, None if checked else info["sha256"]
        )
        if cache is not None:
            cache.replace(ns_key, old, namespace)
    job = LoadedJob(envelope, namespace)
    job.namespace_key = ns_key
    if cache is not None:
        cache._remember(cache.jobs, envelope_path, job)
        cache._remember(cache.envelopes, data, job)
    return job


def _fresh_namespace(
    cache: JobCache | None, key: str, envelope_path: str, envelope: dict, ns_path: str, digest: str | None = None
) -> LoadedNamespace:
    """A copy of ``envelope``'s namespace no job has used, for the job at ``envelope_path``: the spare the worker
    loaded while idle, else one loaded from ``ns_path`` now (checked against ``digest`` when given)."""
    namespace = cache.spare(key, envelope_path) if cache is not None else None
    if namespace is not None:
        return namespace
    ns_data = read_namespace(ns_path)
    if digest is not None:
        verify_namespace(ns_data, ns_path, digest)
    namespace = LoadedNamespace(envelope, ns_data, os.path.dirname(os.path.abspath(envelope_path)))
    namespace.served, namespace.origin = envelope_path, (envelope, ns_path)
    if cache is not None:
        cache.namespace_loads += 1
    return namespace


SPARE_MAX = 8 << 20  # the largest namespace pickle (out-of-band arrays included) a worker loads a spare copy of


# ---------------------------------------------------------------------------------------
# Running iterations.
# ---------------------------------------------------------------------------------------


class _Recorder:
    """One iteration's stdout, stderr and display output, in the order produced, up to
    OUTPUT_LIMIT characters; what comes after is counted so the note can say how much."""

    def __init__(self) -> None:
        self.events: list[list] = []
        self.size = 0
        self.dropped = 0  # characters past the limit
        self.dropped_displays = 0  # displays after the limit was reached

    def add(self, kind: str, data) -> None:
        if self.dropped:
            if isinstance(data, str):
                self.dropped += len(data)
            else:
                self.dropped_displays += 1
            return
        if isinstance(data, str):
            room = OUTPUT_LIMIT - self.size
            if len(data) > room:
                self.dropped = len(data) - room
                data = data[:room]
                if not data:
                    return
            self.size += len(data)
            if self.events and self.events[-1][0] == kind:
                self.events[-1][1] += data
                return
        self.events.append([kind, data])

    def finish(self) -> list[list]:
        """The events, ending with the truncation note (on stderr) when text was dropped."""
        if self.dropped:
            displays = self.dropped_displays
            note = TRUNCATED_NOTE.format(
                total=self.size + self.dropped,
                kept=self.size,
                dropped=self.dropped,
                displays=f" and {displays} display{'s' * (displays != 1)}" if displays else "",
            )
            if self.events and self.events[-1][0] == "stderr":
                self.events[-1][1] += note
            else:
                self.events.append(["stderr", note])
        return self.events


class _OutputSink:
    """Routes writes to the recorder of the iteration running now (the runner's count of it in a
    counted loop, else ``progress[0]``, which the runner writes as each iteration starts),
    creating it only when the iteration writes: silent iterations (the common case) cost nothing."""

    def __init__(self, progress: memoryview, running=None) -> None:
        self.progress = progress
        self.running = running  # the runner's count of the iteration running now, where it keeps one
        self.recorders: dict[int, _Recorder] = {}
        self.displays: dict[str, list[dict]] = {}  # display_id -> the bundles shown with it (_update_display)

    def add(self, kind: str, data) -> None:
        self.add_to(self.running() if self.running is not None else self.progress[0], kind, data)

    def clear(self) -> None:
        """IPython's ``clear_output()`` in an iteration: what it has shown so far is dropped."""
        self.recorders.pop(self.running() if self.running is not None else self.progress[0], None)

    def add_to(self, index: int, kind: str, data) -> None:
        recorder = self.recorders.get(index)
        if recorder is None:
            recorder = self.recorders[index] = _Recorder()
        recorder.add(kind, data)


class _Stream(io.TextIOBase):
    """A task's ``sys.stdout`` or ``sys.stderr``: writes go to the sink of the task running now.

    Two made once per process (``_STDOUT``, ``_STDERR``) serve every task, which points them at
    its sink: making and freeing a pair per task was a sixth of a one-iteration task's time on
    the worker (issue 16, a'). A stream an iteration kept (a logging handler made in the cell)
    then writes to the task running when it writes; between tasks, what it writes is dropped,
    as it was when each task had streams of its own."""

    def __init__(self, kind: str):
        self._sink: _OutputSink | None = None
        self._kind = kind

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        sink = self._sink
        if text and sink is not None:
            sink.add(self._kind, text)
        return len(text)

    @property
    def encoding(self) -> str:
        return "utf-8"


_STDOUT, _STDERR = _Stream("stdout"), _Stream("stderr")


def _display(*objs, raw: bool = False, display_id=None, clear: bool = False, **_kw):
    """IPython's ``display`` in a task: each object's rich representations (or, ``raw``, the MIME bundle given),
    as the running iteration's output (``clear``: after clearing what it showed so far). With ``display_id`` it
    returns a handle, as IPython does: a progress display updated with ``handle.update(...)`` in a loop failed
    on None."""
    sink = _STDOUT._sink
    if sink is None:
        return None
    if clear:
        _clear_output()
    bundles = [_bundle(obj, raw) for obj in objs]
    for bundle in bundles:
        sink.add("display", bundle)
    if display_id is None or display_id is False:
        return None
    if display_id is True:
        display_id = binascii.hexlify(os.urandom(16)).decode()
    sink.displays.setdefault(display_id, []).extend(bundles)
    return _DisplayHandle(display_id)


def _update_display(obj, *, display_id, raw: bool = False, **_kw) -> None:
    """IPython's ``update_display`` in a task: the displays shown with ``display_id`` show ``obj`` instead, where
    they are in the iteration's output (the notebook updates them in place)."""
    sink = _STDOUT._sink
    shown = sink.displays.get(display_id) if sink is not None else None
    if shown:
        new = _bundle(obj, raw)
        for bundle in shown:  # the recorded events hold these dicts until the task's end
            bundle.clear()
            bundle.update(new)


def _bundle(obj, raw: bool) -> dict:
    """What ``display(obj)`` shows: ``raw``, the MIME bundle given; else the object's representations."""
    return dict(obj) if raw and isinstance(obj, dict) else mime_bundle(obj)


def _clear_output(wait: bool = False) -> None:
    """IPython's ``clear_output`` in a task: what the running iteration has shown so far is dropped."""
    sink = _STDOUT._sink
    if sink is not None:
        sink.clear()


class _DisplayHandle:
    """What ``display(..., display_id=...)`` returns in a task, as IPython's DisplayHandle."""

    def __init__(self, display_id: str) -> None:
        self.display_id = display_id

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def __reduce__(self):  # returned as a value: its text (it updates nothing once its task has ended)
        return str, (repr(self),)

    def display(self, obj, **kwargs) -> None:
        _display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs) -> None:
        _update_display(obj, display_id=self.display_id, **kwargs)


_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
)


def mime_bundle(obj: object) -> dict:
    """Render an object the way Jupyter would, without IPython: the worker has none."""
    bundle: dict = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            result = method()
            data = result[0] if isinstance(result, tuple) else result
            bundle.update(data or {})
        except Exception:  # a broken repr must not fail the iteration
            pass
    for mime, name in _MIME_METHODS:
        method = getattr(obj, name, None)
        if mime in bundle or not callable(method) or isinstance(obj, type):
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, tuple):
            value = value[0]
        if value is None:
            continue
        if isinstance(value, bytes):
            value = binascii.b2a_base64(value, newline=False).decode()
        bundle[mime] = value
    if not bundle and hasattr(obj, "savefig") and type(obj).__module__.startswith("matplotlib"):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", bbox_inches="tight")
        bundle["image/png"] = binascii.b2a_base64(buf.getvalue(), newline=False).decode()
    bundle.setdefault("text/plain", repr(obj))
    return bundle


def _seed_iteration(seed: int, index: int) -> None:
    """An independent, reproducible stream per iteration, whatever the scheduling: it
    depends only on (seed, iteration index), never on which worker or chunk runs it.

    The derivation is in the README (a sequential loop can reproduce a run from it):
    ``random`` is seeded with the string ``azpar:SEED:INDEX``; numpy's legacy global state
    with ``SeedSequence(SEED, spawn_key=(INDEX,)).generate_state(4)``; and the K-th numpy
    generator the iteration makes without a seed (``default_rng()``, ``PCG64()``,
    ``SeedSequence()``, K = 0, 1, ...) gets the entropy
    ``random.Random("azpar:SEED:INDEX:K").getrandbits(128)`` instead of the OS's."""
    import random

    random.seed(f"azpar:{seed}:{index}")
    _SEEDING[0] = (seed, index)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _seed_numpy(numpy, seed, index)
    else:
        _NUMPY_WATCH.install()


_SEEDING: list = [None]  # (seed, index) of the seeded iteration running, else None


def _seed_numpy(numpy: types.ModuleType, seed: int, index: int) -> None:
    sequence = numpy.random.SeedSequence(seed, spawn_key=(index,))
    numpy.random.seed(sequence.generate_state(4))
    entropy = _fresh_entropy(numpy)
    if entropy is not None:
        entropy.start(f"azpar:{seed}:{index}")


class _AfterImport:
    """A ``sys.meta_path`` entry that calls ``then(module)`` the moment module ``name`` has been
    executed, whoever imports it (the worker, the body, a library), then leaves
    ``sys.meta_path``. It finds the module through the other finders and wraps that loader's
    ``exec_module``, so the module is the one the import would have given anyway. A loader it
    cannot wrap for this module alone (none, or a class such as the frozen importer) is left to
    import it unwatched: ``then`` is not called, and the entry leaves ``sys.meta_path``."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then
        self.busy = False  # finding the module's own spec through the other finders

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, name: str, path=None, target=None):
        if name != self.name or self.busy:
            return None
        self.busy = True
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            self.remove()
            return spec
        run = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            self.remove()
            self.then(module)

        loader.exec_module = exec_module
        return spec


def _numpy_imported(numpy: types.ModuleType) -> None:
    """Seeds numpy the moment a seeded iteration imports it (itself, or through pandas, scipy,
    ...): the worker never imports numpy for a body that does not use it, and the first
    iteration of a body that does is seeded like the others."""
    if _SEEDING[0] is not None:
        _seed_numpy(numpy, *_SEEDING[0])


_NUMPY_WATCH = _AfterImport("numpy", _numpy_imported)  # installed for a seeded task, removed when it ends
# Installed when a job gives numpy's error handling before this process imported numpy (_follow_settings).
_NUMPY_SETTINGS_WATCH = _AfterImport("numpy", lambda numpy: follow_numpy_settings(numpy, _SETTINGS[0]))
_PANDAS_SETTINGS_WATCH = _AfterImport(
    "pandas", lambda _pandas: follow_pandas_options((_SETTINGS[0] or {}).get("pandas"))
)
_LINECACHE_WATCH = _AfterImport("linecache", lambda _linecache: _show_sources(_SOURCES))


def _ipython_display_imported(module: types.ModuleType) -> None:
    """IPython's ``display()``, run where no IPython shell is, prints each object's text, and ``clear_output()``
    prints a terminal's erase-line codes: a body that ran ``from IPython.display import display`` (or a notebook
    that had, its ``display`` captured) showed ``<IPython.core.display.HTML object>`` and a frame as text where
    the notebook's own loop showed them rendered. In a task they now give the iteration's output a display, as
    the ``display`` builtin does here (``_display``, with handles that ``update_display`` updates);
    ``clear_output()`` clears what the iteration has shown so far (the iterations run side by side: each keeps its
    own last output). Outside a task, IPython's own."""
    for name, ours in (("display", _display), ("update_display", _update_display), ("clear_output", _clear_output)):
        theirs = getattr(module, name, None)
        if callable(theirs):
            setattr(module, name, _while_a_task_runs(ours, theirs))


def _while_a_task_runs(ours, theirs):
    """``ours`` while a task's output is recorded here, else ``theirs``, under ``theirs``'s name and doc."""

    def either(*args, **kwargs):
        return (ours if _STDOUT._sink is not None else theirs)(*args, **kwargs)

    return functools.update_wrapper(either, theirs)


# Installed as a worker starts (main): IPython's display functions are in this module since IPython 7.23.
_IPYTHON_DISPLAY_WATCH = _AfterImport("IPython.core.display_functions", _ipython_display_imported)


class _FreshEntropy:
    """Stands in for the OS entropy numpy draws when a generator is made without a seed
    (``numpy.random.bit_generator.randbits``): during a seeded iteration the K-th draw is
    derived from (seed, index, K); otherwise the OS's, as before."""

    def __init__(self, original) -> None:
        import random

        self.original = original
        self.generator = random.Random  # imported here, not at every draw
        self.key: str | None = None
        self.count = 0

    def start(self, key: str) -> None:
        self.key, self.count = key, 0

    def stop(self) -> None:
        self.key = None

    def __call__(self, bits: int) -> int:
        if self.key is None:
            return self.original(bits)
        draw = self.generator(f"{self.key}:{self.count}").getrandbits(bits)
        self.count += 1
        return draw


_FRESH_ENTROPY: list = []  # [the installed _FreshEntropy, or None when numpy's cannot be replaced]
SEED_NOTE = (
    "azpar: --seed could not seed the numpy generators this iteration makes without a seed "
    "(np.random.default_rng()) with numpy {}: they draw from the operating system; pass a seed "
    "(default_rng(seed)) to make them reproducible\n"
)


def _fresh_entropy(numpy: types.ModuleType) -> _FreshEntropy | None:
    """Install :class:`_FreshEntropy` once per process, checking it takes effect (numpy reads
    ``randbits`` from its module at each call since it has had SeedSequence, 1.17); when it
    does not, numpy is left as it was and the iteration's stderr says so once. ``numpy`` is
    the module the iteration imported: the worker never imports it itself."""
    import random

    if _FRESH_ENTROPY:
        return _FRESH_ENTROPY[0]
    module = sys.modules.get("numpy.random.bit_generator")
    original = getattr(module, "randbits", None)
    hook = None
    if callable(original):
        hook = _FreshEntropy(original)
        module.randbits = hook
        hook.start("azpar:check")
        try:
            works = numpy.random.SeedSequence().entropy == random.Random("azpar:check:0").getrandbits(128)
        except Exception:
            works = False
        hook.stop()
        if not works:
            module.randbits, hook = original, None
    if hook is None:
        sys.stderr.write(SEED_NOTE.format(numpy.__version__))
    _FRESH_ENTROPY.append(hook)
    return hook


def _end_seeded_iterations() -> None:
    """Generators made after a seeded task (another job on this worker) draw from the OS,
    and numpy imported then is not seeded."""
    _SEEDING[0] = None
    _NUMPY_WATCH.remove()
    if _FRESH_ENTROPY and _FRESH_ENTROPY[0] is not None:
        _FRESH_ENTROPY[0].stop()


TRACEBACKS_KEPT = 64  # frames' texts a task keeps for the failures that follow (_format_user_traceback)


def _format_user_traceback(exc: BaseException, filename: str, kept: dict | None = None) -> str:
    """The remote traceback from the first frame of the cell on: worker frames are noise.

    ``kept``: the frames' text of earlier failures of the task, by where each frame stopped. The
    iterations of a loop that fail mostly fail at the same place, and Python 3.11+ reads and parses
    each frame's line again to point at its expression: that was ~30 us of each failure, most of a
    loop whose iterations fail often (issue 16). Only the exception's own line (its message) then
    differs; an exception chained to another is formatted whole."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if (
        kept is None
        or tb is None
        or exc.__cause__ is not None
        or exc.__context__ is not None
        or isinstance(exc, _EXCEPTION_GROUPS)
    ):
        return "".join(traceback.format_exception(type(exc), exc, tb))
    where = []
    step: types.TracebackType | None = tb
    while step is not None:
        where.append((step.tb_frame.f_code, step.tb_lasti, step.tb_lineno))
        step = step.tb_next
    key = tuple(where)
    frames = kept.get(key)
    if frames is None:
        whole = traceback.TracebackException(type(exc), exc, tb)
        frames = "".join(whole.stack.format())
        if len(kept) >= TRACEBACKS_KEPT:
            kept.clear()
        kept[key] = frames
        return "Traceback (most recent call last):\n" + frames + "".join(whole.format_exception_only())
    return "Traceback (most recent call last):\n" + frames + _exception_line(exc)


def _exception_line(exc: BaseException) -> str:
    """What ``traceback.format_exception_only`` says of ``exc`` (``ZeroDivisionError: division by zero``),
    made directly for the usual exception (no SyntaxError, no notes): the traceback module builds a
    whole TracebackException for it, ~3 us of each failure of a loop (issue 16)."""
    import traceback

    kind = type(exc)
    if issubclass(kind, SyntaxError) or getattr(exc, "__notes__", None) is not None:
        return "".join(traceback.format_exception_only(kind, exc))
    name, module = kind.__qualname__, kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        text = str(exc)
    except Exception:
        return "".join(traceback.format_exception_only(kind, exc))
    return f"{name}: {text}\n" if text else f"{name}\n"


_EXCEPTION_GROUPS = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+: formatted whole


def _plain_exception(exc: BaseException) -> tuple[str, bytes] | None:
    """An exception that pickles as its class and a few plain arguments (``ZeroDivisionError('division
    by zero')``, ``KeyError('x')``), pickled by the C pickler as it is: the same bytes ``dumps`` makes,
    without its pickler and ``__main__`` swap, which were half of what each failure of a loop cost the
    worker (issue 16). None for any other, which ``dumps`` then serialises."""
    try:
        reduced = exc.__reduce_ex__(PICKLE_PROTOCOL)
    except Exception:
        return None
    if type(reduced) is not tuple or len(reduced) != 2 or reduced[0] is not type(exc):
        return None
    if type(exc).__module__ != "builtins" or not _few_short_atoms(reduced[1]):
        return None  # a class of the notebook or of a module: dumps decides how it travels
    kinds = tuple(map(type, reduced[1]))
    if float in kinds:  # (-0.0 == 0.0: not a key)
        return "pickle", pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
    key = (reduced, kinds)  # (True == 1: the arguments' types are part of the key)
    data = _PLAIN_EXCEPTIONS.get(key)
    if data is None:  # (pickling the class by name looks it up through the import system: ~1 us)
        data = pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        if len(_PLAIN_EXCEPTIONS) >= _PLAIN_EXCEPTIONS_KEPT:
            _PLAIN_EXCEPTIONS.clear()
        _PLAIN_EXCEPTIONS[key] = data
    return "pickle", data


# (class, arguments) -> the exception's pickle: a loop's failures are mostly alike
_PLAIN_EXCEPTIONS: dict[tuple, bytes] = {}
_PLAIN_EXCEPTIONS_KEPT = 256


def _cell_line(exc: BaseException, filename: str) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _uncaptured_name_hint(exc: BaseException, filename: str) -> str:
    """A KeyError raised by the cell's own ``globals()[NAME]`` (or ``vars()[NAME]``): capture
    ships only the names the body reads as names, so NAME never came; say how to ship it."""
    if not isinstance(exc, KeyError) or len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_filename != filename:
        return ""  # raised inside something the cell called, not by its own subscript
    import linecache

    text = linecache.getline(filename, tb.tb_lineno)
    if "globals()[" not in text.replace(" ", "") and "vars()[" not in text.replace(" ", ""):
        return ""
    name = exc.args[0]
    return (
        f" (the body reads {name!r} through globals() or vars(), which capture cannot see, so {name!r} "
        f"was not captured from the notebook: pass --export {name} to ship it)"
    )


_IPYTHON_ONLY_NAMES = frozenset({"get_ipython", "In", "Out"})  # names IPython gives a notebook, not Python


def _worker_process_hint(exc: BaseException) -> str:
    """What a notebook has that a worker does not, said beside the error it causes: the body runs in a
    plain Python process with no terminal, so ``input()`` meets the end of an empty standard input, and
    ``get_ipython()`` (a magic, the history) is a NameError there."""
    if type(exc) is EOFError and str(exc) == "EOF when reading a line":
        return (
            " (an iteration has no standard input: input() cannot ask anyone; give the value to the loop "
            "as an item or a notebook variable)"
        )
    if isinstance(exc, NameError) and getattr(exc, "name", None) in _IPYTHON_ONLY_NAMES:
        return (
            f" (the body runs in a plain Python process on the workers, not in IPython: {exc.name} is not "
            "there; compute what it gives in the notebook and use the value)"
        )
    bdb = sys.modules.get("bdb")  # (loaded by whatever started a debugger)
    if bdb is not None and isinstance(exc, bdb.BdbQuit):
        return (
            " (the body stopped at a debugger, breakpoint() or pdb.set_trace(), which quits at once on a "
            "worker: nobody can type at it there. `%azpar debug` runs this iteration in the notebook, "
            "where that line stops as it would in a cell)"
        )
    return ""


def _with_hint(message: str, hint: str) -> str:
    """An error's message with a hint in brackets after it, or the hint alone (unbracketed) when the
    exception said nothing (a debugger's BdbQuit has no message)."""
    if message or not hint:
        return message + hint
    return hint.strip().removeprefix("(").removesuffix(")")


INPUTS_DIR = "inputs"  # where an iteration finds its --inputs, in its working directory
FILE_ATTEMPTS = 3  # moves of an output file before the iteration is reported as failed


def _resolve_root(path: str) -> str:
    """A root named in a task's data spec: variables expanded (``$AZPAR_STAGE_DIR``),
    relative to the task's working directory."""
    return os.path.abspath(os.path.expandvars(path))


def _pattern_segments(pattern: str) -> list[str]:
    """A glob's segments; none for a pattern ending with a slash, which (as in glob) names
    folders only, so no output file."""
    norm = pattern.replace("\\", "/")
    return [] if norm.endswith("/") else [s for s in norm.split("/") if s not in ("", ".")]


def _segment_matches(pattern: str, name: str) -> bool:
    """One path segment against one glob segment, as glob does: a name starting with a dot
    is matched only by a pattern starting with one."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def glob_regex(pattern: str, *, case_sensitive: bool | None = None) -> re.Pattern:
    """The glob ``pattern`` as one regular expression over ``/``-joined relative paths, with the semantics of
    the standard library's ``glob`` (recursive): used for ``--outputs`` on a node and for ``az://`` inputs in
    the kernel, so a pattern selects the same names locally, on a node and in Blob storage. Case follows the
    local file system unless ``case_sensitive`` says (blob names are always case-sensitive)."""
    return _glob_regex(_pattern_segments(pattern), case_sensitive=case_sensitive)


def _glob_regex(pattern: list[str], *, case_sensitive: bool | None = None) -> re.Pattern:
    """The glob (segments) as one regular expression over a ``/``-joined relative path, one
    match per file: ``*``, ``?`` and ``[..]`` stay within a segment and, as in glob, match a
    leading dot only when the segment itself starts with one; ``**`` spans any number of
    segments that do not start with a dot, as glob's recursive mode does."""
    import re

    if not pattern:
        return re.compile(r"(?!)")  # matches nothing
    out = []
    for i, segment in enumerate(pattern):
        last = i == len(pattern) - 1
        if segment == "**":
            out.append(r"(?:(?!\.)[^/]+(?:/(?!\.)[^/]+)*)?" if last else r"(?:(?!\.)[^/]+/)*")
            continue
        out.append(("" if segment.startswith(".") else r"(?!\.)") + _segment_regex(segment) + ("" if last else "/"))
    if case_sensitive is None:
        case_sensitive = os.path.normcase("A") != "a"
    flags = 0 if case_sensitive else re.IGNORECASE
    try:
        return re.compile("".join(out), flags)
    except re.error:  # a class like [z-a]: as in fnmatch, it matches nothing
        return re.compile(r"(?!)")


def _segment_regex(segment: str) -> str:
    """One glob segment as a regular expression that never crosses a ``/`` (fnmatch's
    rules: ``[!..]`` negates, a ``]`` first in a class is literal, an unclosed ``[`` is)."""
    import re

    out, i, n = [], 0, len(segment)
    while i < n:
        c = segment[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + (segment[i : i + 1] == "!")
            j += segment[j : j + 1] == "]"
            end = segment.find("]", j)
            if end < 0:
                out.append(re.escape(c))
                continue
            body = segment[i:end]
            negate = body.startswith("!")
            body = body[negate:]
            body = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(("[^/" if negate else "[") + body + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _may_hold(pattern: list[str], folder: tuple[str, ...]) -> bool:
    """Whether a file below the folder (segments) could match the glob: folders that
    cannot are not walked, and a link to an outside folder is reported only when a
    pattern could have selected something in it."""
    if not folder:
        return bool(pattern)
    if not pattern:
        return False
    head = pattern[0]
    if head == "**":
        return _may_hold(pattern[1:], folder) or (not folder[0].startswith(".") and _may_hold(pattern, folder[1:]))
    return _segment_matches(head, folder[0]) and _may_hold(pattern[1:], folder[1:])


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class FoundOutputs:
    """What the output patterns select in a working directory: ``files`` {rel: (path to read,
    reached through a link)}, ``skipped`` {rel: where it points} for links leading out of the
    directory that a pattern selects (a folder's rel ends with a slash), ``hit`` the patterns
    that selected either."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bool]] = {}
        self.skipped: dict[str, str] = {}
        self.hit: set[str] = set()


def find_outputs(folder: str, patterns: list[str]) -> FoundOutputs:
    """The files of ``folder`` the glob ``patterns`` select, never under ``inputs/``, never
    through a link that leads out of ``folder`` (reported instead), only regular files (a
    named pipe or a device is no output). Links that stay inside are followed, once per
    folder on the way (a link cycle ends there). Walked by hand rather than with glob, which
    follows every link: a link to ``/`` under ``**`` would walk the whole machine."""
    found = FoundOutputs()
    parsed = [(p, _pattern_segments(p)) for p in patterns]
    regexes = [(p, _glob_regex(segs).fullmatch) for p, segs in parsed]
    root = os.path.realpath(folder)
    stack: list[tuple[tuple[str, ...], str, bool, frozenset]] = [((), folder, False, frozenset([root]))]
    while stack:
        parts, path, via_link, ancestors = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = parts + (entry.name,)
            if not parts and entry.name == INPUTS_DIR:
                continue
            try:
                link = entry.is_symlink()
                is_dir = os.path.isdir(entry.path) if link else entry.is_dir(follow_symlinks=False)
                real = os.path.realpath(entry.path) if link or via_link or is_dir else entry.path
            except OSError:
                continue
            if link and not _inside(real, root):
                chosen = (
                    [p for p, segs in parsed if _may_hold(segs, rel)]
                    if is_dir
                    else [p for p, match in regexes if match("/".join(rel))]
                )
                if chosen:
                    found.skipped["/".join(rel) + ("/" if is_dir else "")] = real
                    found.hit.update(chosen)
                continue
            if is_dir:
                if real not in ancestors and any(_may_hold(segs, rel) for _, segs in parsed):
                    stack.append((rel, entry.path, via_link or link, ancestors | {real}))
                continue
            if not (os.path.isfile(real) if link else entry.is_file(follow_symlinks=False)):
                continue
            joined = "/".join(rel)
            chosen = [p for p, match in regexes if match(joined)]
            if chosen:
                found.files[joined] = (real, via_link or link)
                found.hit.update(chosen)
    return found


def _copy_regular_file(source: str, target: str) -> None:
    """Copy a file reached through a link inside the working directory; the source is
    opened without following a last link (it was resolved already: a link appearing there
    since is refused, not read)."""
    import shutil

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(source, flags)
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _move_regular_file(source: str, target: str) -> None:
    """Rename a file into place (a copy and delete across file systems, never recreating a
    link the way shutil.move does)."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_regular_file(source, target)
        os.unlink(source)


class IterationFiles:
    """``--inputs``/``--outputs`` on the node: each iteration runs in its own empty working
    directory ``<work>/<index>``, finds its inputs under ``inputs/`` there (symbolic links to
    the job's shared inputs and to its own, never copies), and the files matching the output
    patterns are moved to ``<collect>/<index>/<same path>`` when it ends, so iterations of
    one task (``--chunk-size``) never overwrite each other's files.

    ``job_spec`` (from the envelope): ``shared`` -- paths under ``inputs/`` every iteration
    sees, ``outputs`` -- glob patterns. ``task_spec`` (per task): ``roots`` -- ``shared``,
    ``items``, ``work`` and ``collect`` folders; ``items`` -- {index: [paths]} of inputs only
    that iteration sees."""

    def __init__(self, job_spec: dict, task_spec: dict):
        roots = task_spec.get("roots") or {}
        self.shared = list(job_spec.get("shared") or [])
        self.patterns = list(job_spec.get("outputs") or [])
        self.items = {int(k): v for k, v in (task_spec.get("items") or {}).items()}
        self.shared_root = _resolve_root(roots.get("shared") or "azpar-in")
        self.item_root = _resolve_root(roots.get("items") or "azpar-in")
        self.work_root = _resolve_root(roots.get("work") or "azpar-work")
        self.collect_root = _resolve_root(roots.get("collect") or "azpar-out")
        self.produced: dict[int, list[str]] = {}
        self.unmatched: dict[int, list[str]] = {}
        self.skipped: dict[int, list[list[str]]] = {}  # links out of the working directory, with targets
        self.symlinks = task_spec.get("symlinks", True)  # False where the client may not make them (Windows)
        self._previous: str | None = None

    def enter(self, index: int) -> None:
        import shutil

        folder = os.path.join(self.work_root, str(index))
        if os.path.lexists(folder):  # an earlier attempt of this task
            shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        own = self.items.get(index)
        inputs = os.path.join(folder, INPUTS_DIR)
        if own:
            for rel, root in [(r, self.shared_root) for r in self.shared] + [(r, self.item_root) for r in own]:
                link = os.path.join(inputs, rel)
                os.makedirs(os.path.dirname(link), exist_ok=True)
                if not os.path.lexists(link):
                    _link_input(os.path.join(root, rel), link, self.symlinks)
        elif self.shared and self.symlinks:
            os.symlink(self.shared_root, inputs)  # one link for the whole shared tree
        elif self.shared:
            _link_tree(self.shared_root, inputs)
        self._previous = os.getcwd()
        os.chdir(folder)

    def leave(self, index: int, failed: bool) -> str | None:
        """Back to the task's directory; outputs moved out; the iteration's folder removed.
        Returns why an output could not be kept (the iteration then fails), else None.

        Only files inside the working directory are outputs: links leading out of it are
        never followed, moved or deleted through (they are reported in ``skipped``); files
        reached through links that stay inside are copied first (the same file may also be
        matched under its own name), then the others are renamed into place."""
        import shutil

        if self._previous is not None:
            os.chdir(self._previous)
            self._previous = None
        folder = os.path.join(self.work_root, str(index))
        found = find_outputs(folder, self.patterns)
        if not failed:
            unmatched = [p for p in self.patterns if p not in found.hit]
            if unmatched:
                self.unmatched[index] = unmatched
        if found.skipped:
            self.skipped[index] = [[rel, target] for rel, target in found.skipped.items()]
        problem = None
        kept = []
        order = sorted(found.files.items(), key=lambda kv: not kv[1][1])  # reached through links first
        for rel, (source, linked) in order:
            target = os.path.join(self.collect_root, str(index), *rel.split("/"))
            error = None
            for attempt in range(FILE_ATTEMPTS):
                try:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    (_copy_regular_file if linked else _move_regular_file)(source, target)
                    error = None
                    break
                except OSError as exc:
                    error = exc
                    time.sleep(0.05 * 2**attempt)
            if error is None:
                kept.append(rel)
            elif problem is None:
                problem = (
                    f"output file {rel} of iteration {index} could not be moved to {target} after "
                    f"{FILE_ATTEMPTS} attempts: {type(error).__name__}: {error}"
                )
        if kept:
            self.produced[index] = sorted(kept)
        shutil.rmtree(folder, ignore_errors=True)  # never follows links: what they point to stays
        return problem

    def restore_cwd(self) -> None:
        """Back to the task's directory if an iteration left us in its own (a failure
        between enter and leave); a no-op otherwise."""
        if self._previous is not None:
            os.chdir(self._previous)
            self._previous = None

    def report(self) -> dict:
        return {"produced": self.produced, "unmatched": self.unmatched, "skipped": self.skipped}


def _link_input(source: str, link: str, symlinks: bool) -> None:
    """An input file in an iteration's folder: a symbolic link, else (Windows without the
    privilege, or told so) a hard link, else a copy. The client's twin is
    ``platforms.link_or_copy`` (this file imports nothing of the package)."""
    import shutil

    if symlinks:
        try:
            os.symlink(source, link)
            return
        except OSError:
            pass
    try:
        os.link(source, link)
    except OSError:
        shutil.copy2(source, link)


def _link_tree(source: str, target: str) -> None:
    """Every file under ``source`` at the same place under ``target``, without symbolic links."""
    for folder, _dirs, files in os.walk(source):
        here = os.path.join(target, os.path.relpath(folder, source))
        os.makedirs(here, exist_ok=True)
        for name in files:
            _link_input(os.path.join(folder, name), os.path.join(here, name), False)


def iteration_files(envelope: dict, task_spec: dict | None) -> IterationFiles | None:
    job_spec = envelope.get("data")
    if not job_spec:
        return None
    return IterationFiles(job_spec, task_spec or {})


TIMEOUT_ERROR = "azpar_magic.TaskTimeoutError"  # error type names the kernel reads (not imports)
NOT_RUN_ERROR = "azpar_magic.JobCancelled"


class TaskTimeout(BaseException):
    """Raised in the iteration that is running when its task reaches --timeout (not an Exception, so a
    body's ``except Exception`` does not swallow it)."""


class TaskTimer:
    """A task's --timeout, kept here where its iterations run: at the deadline the iteration running is
    stopped (SIGALRM, which only the main thread gets; POSIX only) and the task's result holds the values
    of the iterations that ended before it. The kernel (or Batch) kills the process only when that did not
    happen (code that never returns to Python, or that swallows the exception): a kill loses every value
    the task had, and a task of 100 iterations whose last one hangs had 99.

    The alarm raises only while an iteration's own code runs (``inside``): between iterations, in this
    module's bookkeeping, it is noted (``passed``) and the loop stops before the next iteration."""

    def __init__(self, deadline: float, limit: float | None):
        import _signal

        self.limit = f"{limit:g} s" if limit is not None else "limit"  # as the messages say it
        self.inside = [False]
        self.passed = False
        self.traceback = ""  # where the iteration was stopped (where), and its line of the cell
        self.line: int | None = None
        self._signal = _signal
        self._before = _signal.signal(_signal.SIGALRM, self._alarm)
        _signal.setitimer(_signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))

    @classmethod
    def start(cls, deadline: float | None, limit: float | None = None) -> TaskTimer | None:
        """The timer of a task with a deadline, or None: no deadline, no SIGALRM here (Windows), or not
        the main thread (only it gets signals; then the kill stops the task, as before)."""
        if deadline is None:
            return None
        try:
            import _signal
            import threading

            if not hasattr(_signal, "setitimer") or threading.current_thread() is not threading.main_thread():
                return None
            return cls(deadline, limit)
        except (ImportError, OSError, ValueError):
            return None

    def _alarm(self, signum, frame) -> None:
        self.passed = True
        if self.inside[0]:
            self.inside[0] = False
            raise TaskTimeout("the task reached its --timeout")

    def where(self, exc: TaskTimeout, filename: str) -> None:
        """Keep where the iteration was stopped: its frames from the cell's on, without this class's."""
        import traceback

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        frames = []
        while tb is not None and tb.tb_frame.f_code is not TaskTimer._alarm.__code__:
            frames.append((tb.tb_frame, tb.tb_lineno))
            tb = tb.tb_next
        cell = [line for frame, line in frames if frame.f_code.co_filename == filename]
        self.line = cell[-1] if cell else None
        self.traceback = (
            "Traceback (most recent call last):\n"
            + "".join(traceback.StackSummary.extract(iter(frames)).format())
            + f"{TIMEOUT_ERROR}: stopped here, at the task's --timeout of {self.limit}\n"
        )

    def stop(self) -> None:
        self._signal.setitimer(self._signal.ITIMER_REAL, 0)
        self._signal.signal(self._signal.SIGALRM, self._before)
        self.inside[0] = False

    def fill_in(
        self, indices: Sequence[int], values: list, gathered: list | None, failed: dict, stopped_at: int | None
    ) -> None:
        """The task stopped at its --timeout: the iteration running failed with a TaskTimeoutError (what
        the kernel's kill reported, with the lines it was on), the ones after it never ran (cancelled,
        saying why), and every list gets an entry per iteration."""
        if stopped_at is not None:
            before = len(values)
            chunk = (
                f" (its task, iterations {indices[0]}-{indices[-1]}, was stopped there; the {before} "
                f"iteration{'s' if before != 1 else ''} before it {'are' if before != 1 else 'is'} kept)"
                if len(indices) > 1
                else " and was stopped"
            )
            failed[stopped_at] = {
                "type": TIMEOUT_ERROR,
                "message": f"iteration {stopped_at} was still running when its task reached the --timeout of "
                f"{self.limit}{chunk}",
                "traceback": self.traceback,
                "line": self.line,
                "exc": None,
                "kind": "infrastructure",
            }
            values.append(None)
        why = (
            f"not run: iteration {stopped_at} of the same task ran past --timeout"
            if stopped_at is not None
            else f"not run: its task reached the --timeout of {self.limit} before it started"
        )
        for index in indices[len(values) :]:
            failed[index] = {
                "type": NOT_RUN_ERROR,
                "message": why,
                "traceback": "",
                "line": None,
                "exc": None,
                "kind": "cancelled",
            }
        values.extend([None] * (len(indices) - len(values)))
        if gathered is not None:
            gathered.extend([{}] * (len(indices) - len(gathered)))


class Runner:
    """Runs iterations of a loaded job and builds the result record of a task."""

    def __init__(self, job: LoadedJob, progress: memoryview | None = None, exact: bool = False):
        self.job = job
        # progress[0] = the iteration running now, which the local pool reads from shared memory.
        # ``exact``: written as each one starts, for the pool to name the iteration a --timeout
        # stopped. Else a loop of calls (the common loop) counts its iterations instead, and the
        # heartbeat thread writes the one running (_watch): the write was a third of a trivial
        # iteration (~25 ns of ~75, issue 16, a), and views that say an iteration is stuck look
        # after a minute, not within half a second.
        self.progress = progress if progress is not None else memoryview(bytearray(8)).cast("q")
        self.exact = exact
        self.stopped = False  # its last task was stopped at its --timeout: the process exits after it (serve)
        self._tracebacks: dict = {}  # the frames' text of this task's failures so far (_format_user_traceback)

    def _by_reference(self, obj: object) -> bool:
        # Notebook classes and functions the client shipped exist on the client under the
        # same name, so results refer to them by name and unpickle as the user's own class.
        return id(obj) in self.job.shipped_ids

    def _dump(self, obj: object, made: tuple[str, dict, IterationMade] | None = None) -> tuple[str, bytes]:
        # (a value pickled with its iteration's bindings keeps its arrays out of band, as the whole list's would)
        return dumps(
            obj, main=self.job.module, by_reference=self._by_reference, made=made, out_of_band=made is not None
        )

    def _error_record(self, exc: BaseException) -> dict:
        try:
            exc_blob = _plain_exception(exc) or self._dump(exc)
        except Exception:
            exc_blob = None
        return {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": _with_hint(str(exc) + _uncaptured_name_hint(exc, self.job.filename), _worker_process_hint(exc)),
            "traceback": _format_user_traceback(exc, self.job.filename, self._tracebacks),
            "line": _cell_line(exc, self.job.filename),
            "exc": exc_blob,
        }

    def run(
        self,
        indices: Sequence[int],
        items: list,
        files: IterationFiles | None = None,
        deadline: float | None = None,
        limit: float | None = None,
    ) -> dict:
        """Run each (index, item) and return a result dict (plain data and bytes only);
        ``files``: run each iteration in its own folder with its inputs and outputs; ``deadline``
        (``time.monotonic()``): when the task reaches its --timeout of ``limit`` seconds, at which the
        iteration running is stopped (:class:`TaskTimer`) and the result holds what ended before it,
        where a kill lost it all.

        This loop is the per-iteration overhead of every trivial loop, so it allocates
        nothing per iteration unless the iteration prints, fails or gathers."""
        job = self.job
        namespace = job.module.__dict__
        base, code, seed, gather, function = job.base, job.code, job.seed, job.gather, job.function
        clear, update = namespace.clear, namespace.update
        progress = self.progress
        values: list = []
        append = values.append
        failed: dict = {}
        gathered: list = []
        plain = function is not None and seed is None and files is None and not gather
        counted = plain and not self.exact
        timer = TaskTimer.start(deadline, limit)
        inside = timer.inside if timer is not None else [False]  # True while an iteration's own code runs
        stopped_at: int | None = None  # the iteration the --timeout stopped
        made = (
            IterationMade(job.filename, base, job.functions_read, job.envelope.get("source") or "")
            if job.defines_code
            else None
        )
        keep = made.keep if made is not None and made.names else None

        def running() -> int:  # the iteration running now, in a counted loop: one value per iteration ended
            done = len(values)
            return indices[done] if done < len(indices) else -1

        sink = _OutputSink(progress, running if counted else None)
        saved = sys.stdout, sys.stderr, sys.modules.get("__main__"), builtins.__dict__.get("display")
        sys.modules["__main__"] = job.module
        builtins.display = _display
        _STDOUT._sink = _STDERR._sink = sink
        sys.stdout, sys.stderr = _STDOUT, _STDERR
        if job.logging is not None or _LOGGING[0] is not None:
            _follow_logging(job.logging)
        if job.settings is not None and _SETTINGS[0] != job.settings:
            _follow_settings(job.settings)
        started = time.perf_counter()

        def fail(index: int, exc: BaseException) -> None:
            append(None)
            sys.stdout, sys.stderr = saved[0], saved[1]
            failed[index] = self._error_record(exc)
            sys.stdout, sys.stderr = _STDOUT, _STDERR

        try:
            if counted:  # a loop of calls, at C speed: what a trivial iteration costs (issue 16)
                progress[0] = running()
                _RUNNING[0] = running
                rest = map(function, items)
                while True:
                    try:
                        inside[0] = True  # (nothing of ours runs between the calls)
                        values.extend(rest)  # keeps the values before a failure; `rest` goes on after it
                        inside[0] = False
                        break
                    except TaskTimeout as exc:
                        stopped_at = running()
                        timer.where(exc, job.filename)  # type: ignore[union-attr]
                        break
                    except BaseException as exc:  # SystemExit from user code is a user error too
                        inside[0] = False
                        fail(running(), exc)
                        if timer is not None and timer.passed:  # it passed while the failure was recorded
                            break
            elif plain:
                for index, item in zip(indices, items):
                    progress[0] = index
                    try:
                        inside[0] = True
                        value = function(item)
                        inside[0] = False
                        append(value)
                    except TaskTimeout as exc:
                        stopped_at = index
                        timer.where(exc, job.filename)  # type: ignore[union-attr]
                        break
                    except BaseException as exc:  # SystemExit from user code is a user error too
                        inside[0] = False
                        fail(index, exc)
                    if timer is not None and timer.passed:  # it passed between two iterations
                        break
            for index, item in () if plain else zip(indices, items):
                if timer is not None and timer.passed:
                    break
                progress[0] = index
                if seed is not None:
                    _seed_iteration(seed, index)
                if files is not None:
                    files.enter(index)
                try:
                    if function is not None:
                        inside[0] = True
                        value = function(item)
                        inside[0] = False
                        append(value)
                    else:
                        clear()
                        update(base)
                        namespace[ITEM_NAME] = item
                        inside[0] = True
                        exec(code, namespace)
                        inside[0] = False
                        append(namespace[VALUE_NAME])
                        if keep is not None:
                            keep(index, namespace)
                except TaskTimeout as exc:
                    stopped_at = index
                    timer.where(exc, job.filename)  # type: ignore[union-attr]
                    if files is not None:
                        files.leave(index, True)  # what it wrote so far comes back, as a failed iteration's
                    break
                except BaseException as exc:  # SystemExit from user code is a user error too
                    inside[0] = False
                    fail(index, exc)
                if files is not None:
                    problem = files.leave(index, index in failed)
                    if problem is not None and index not in failed:
                        failed[index] = {
                            "type": "azpar_magic.TransferError",
                            "message": problem,
                            "traceback": "",
                            "line": None,
                            "exc": None,
                        }
                if gather:
                    gathered.append({name: namespace.get(name) for name in gather})
        finally:
            if timer is not None:
                timer.stop()
            _RUNNING[0] = None
            if _FIGURES[0] and indices:  # what the task's iterations left open, shown as a cell's end shows it
                _flush_figures(functools.partial(sink.add_to, indices[-1] if counted else progress[0]))
            _STDOUT._sink = _STDERR._sink = None
            sys.stdout, sys.stderr = saved[0], saved[1]
            if files is not None:
                files.restore_cwd()
            if saved[2] is not None:
                sys.modules["__main__"] = saved[2]
            if saved[3] is None:
                builtins.__dict__.pop("display", None)
            else:
                builtins.display = saved[3]
            if seed is not None:
                _end_seeded_iterations()
            clear()
            update(base)
        if timer is not None and (stopped_at is not None or len(values) < len(indices)):
            timer.fill_in(indices, values, gathered if gather else None, failed, stopped_at)
            self.stopped = True
        return {
            "indices": travelling(indices),
            "files": files.report() if files is not None else None,
            "values": self._encode_list(values, indices, failed, "value", made),
            "gathered": self._encode_list(gathered, indices, failed, "gathered variable", made) if gather else None,
            "failed": failed,
            "outputs": {i: r.finish() for i, r in sink.recorders.items()},
            "seconds": time.perf_counter() - started,
        }

    def _encode_list(
        self, values: list, indices: Sequence[int], failed: dict, what: str, made: IterationMade | None = None
    ):
        """One blob for the whole list when possible (fast to load); else one per entry so
        that a single unserialisable value fails only its own iteration. Plain values are
        pickled here, without going through ``dumps`` (two calls fewer for each task).
        ``made``: what each iteration bound, when the body defines functions; values that are not
        plain data are then pickled one by one, each with its own iteration's bindings."""
        try:  # (a MemoryError too: then each value on its own, see below)
            plain = plain_pickle(values)
            if plain is None:
                plain = numpy_list_pickle(values)
            if plain is None:
                standard = standard_list_pickle(values)
                plain = standard[0] if standard is not None else None
            if plain is not None:
                return ["all", "pickle", plain]
            if made is None or not made.names:  # (else each value with its own iteration's bindings, below)
                # (arrays laid out after the pickle: not grown into the pickler's buffer, and aligned where loaded)
                return [
                    "all",
                    *dumps(
                        values,
                        main=self.job.module,
                        by_reference=self._by_reference,
                        maybe_plain=False,
                        out_of_band=True,
                        made=(made.filename, {}, made) if made is not None else None,
                    ),
                ]
        except Exception:
            pass
        encoded = []
        for index, value in zip(indices, values):
            try:
                encoded.append(self._dump(value, made.made(index) if made is not None else None))
            except Exception as exc:
                encoded.append(None)
                if index not in failed:
                    why = _OUT_OF_MEMORY if isinstance(exc, MemoryError) else ""
                    failed[index] = {
                        "type": "azpar_magic.SerializationError",
                        "message": f"the {what} of iteration {index} could not be sent back: "
                        f"{why}{type(exc).__name__}: {exc}",
                        "traceback": "",
                        "line": None,
                        "exc": None,
                    }
        return ["each", encoded]


def travelling(indices: Sequence[int]) -> range | list[int]:
    """A task's iterations as they travel: a long range as a range (a few bytes however many
    iterations; a list of 1,250 indices cost each side some 15 us to pickle and unpickle per
    task, issue 16), anything else as a list (a range pickles by name, ~3 us, which a list of
    fewer than ~128 indices beats)."""
    return indices if isinstance(indices, range) and len(indices) > RANGE_AT else list(indices)


RANGE_AT = 128  # iterations above which a range travels as a range (see travelling)


def run_here(job: LoadedJob, index: int, item: object) -> object:
    """Run iteration ``index`` of a loaded job on ``item`` in the calling process, as
    ``Runner.run`` runs it on a worker (the same mode, namespace reset and --seed stream),
    but with this process's output and letting the body's exception propagate with its
    frames: ``%azpar debug`` re-runs a failed iteration in the kernel with it. The caller's
    random and numpy global states are put back afterwards (a seeded run replaces them)."""
    import random

    namespace = job.module.__dict__
    saved_main = sys.modules.get("__main__")
    saved_random = random.getstate()
    numpy = sys.modules.get("numpy")
    saved_numpy = numpy.random.get_state() if numpy is not None and job.seed is not None else None
    sys.modules["__main__"] = job.module
    if job.seed is not None:
        _seed_iteration(job.seed, index)
    try:
        if job.function is not None:
            return job.function(item)
        namespace.clear()
        namespace.update(job.base)
        namespace[ITEM_NAME] = item
        exec(job.code, namespace)
        return namespace.get(VALUE_NAME)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        if job.seed is not None:
            _end_seeded_iterations()
            random.setstate(saved_random)
            if saved_numpy is not None:
                numpy.random.set_state(saved_numpy)


# A MemoryError while a value is serialised or sent is the iteration's own failure, not the
# infrastructure's: another attempt would need the same memory again.
_OUT_OF_MEMORY = (
    "the worker ran out of memory serialising it (sending a value takes about its own size "
    "again in the worker: return a smaller value, or write it to a file with --outputs) - "
)


# ---------------------------------------------------------------------------------------
# Entry points.
# ---------------------------------------------------------------------------------------


def load_items(codec: str, data: bytes, job: LoadedJob) -> list:
    try:
        return loads(codec, data, main=job.module)
    except Exception as exc:  # deterministic: retrying on another node cannot help
        raise EnvironmentMismatch(
            f"the task's items could not be loaded on this node: {type(exc).__name__}: {exc}"
        ) from None


LEFT_FILES_SHOWN = 20  # names of files a task left in its folder, reported back at most


def _folder_names() -> set[str]:
    """The names in the task's working folder. Without --inputs/--outputs the iterations run there,
    and what they write in it is never brought back: a task reports the names it added (a cell
    that saved plots beside the notebook on the local pool saved them nowhere the user sees)."""
    try:
        return set(os.listdir("."))
    except OSError:
        return set()


def run_task_file(task_path: str, result_path: str, cache: JobCache | None = None) -> int:
    """Run one task from a task-input file and write its result file; return the exit code."""
    since = time.monotonic()  # its --timeout counts from here (TaskTimer); Batch's own limit is later (GRACE)
    try:
        header, body = unpack(TASK_MAGIC, _read_task_input(task_path))
        envelope_path = header["envelope"]
        if not os.path.isabs(envelope_path):
            base = os.environ.get("AZPAR_STAGE_DIR") or os.path.dirname(os.path.abspath(task_path))
            envelope_path = os.path.join(base, envelope_path)
        job = load_job(envelope_path, cache)
        items = load_items(header["items_codec"], body, job)
        files = iteration_files(job.envelope, header.get("data"))
        before = None if files is not None else _folder_names()
        limit = job.envelope.get("timeout")
        runner = Runner(job)
        result = runner.run(header["indices"], items, files, since + limit if limit else None, limit)
        result["task"] = header.get("task")
        if before is not None:
            left = sorted(_folder_names() - before - {os.path.basename(result_path)})
            if left:
                result["left_files"] = left[:LEFT_FILES_SHOWN]
        write_result(result_path, result)
        if runner.stopped:  # what the iteration stopped at --timeout started ends with it, as Batch's limit ended it
            _end_what_the_task_started()
        return EXIT_OK
    except EnvironmentMismatch as exc:
        write_result(result_path, {"task": None, "environment_error": str(exc)})
        print(f"azpar worker: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except BadInput as exc:
        print(f"azpar worker: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _b64decode_strict(text: str) -> bytes:
    """base64 that refuses stray characters, without importing the base64 module."""
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)
    import base64

    return base64.b64decode(text, validate=True)


def _read_task_input(task_path: str) -> bytes:
    """The task file's bytes; ``env:NAME`` reads them base64-encoded from a variable (small
    tasks travel inline in the task definition instead of as one blob each)."""
    if task_path.startswith("env:"):
        name = task_path[4:]
        try:
            return _b64decode_strict(os.environ[name])
        except KeyError:
            raise BadInput(f"the task input variable {name} is not set") from None
        except ValueError as exc:
            raise BadInput(f"the task input variable {name} is not base64: {exc}") from None
    try:
        with open(task_path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise BadInput(f"cannot read the task input {task_path}: {exc}") from None


def merge_result_files(folder: str, count: int, out_path: str) -> int:
    """Stream the result files of tasks 1..count, in task order, into one merged file: one
    result in memory at a time, whatever the job's size. A task whose result file is missing
    gets an empty record, so the reader knows to look for it elsewhere. Returns how many
    were missing."""
    missing = 0
    tmp = out_path + ".part"
    with open(tmp, "wb") as out:
        out.write(MERGED_MAGIC + struct.pack(">Q", count))
        for number in range(1, count + 1):
            try:
                with open(os.path.join(folder, f"{number}.azpr"), "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                data = b""
                missing += 1
            out.write(struct.pack(">Q", len(data)))
            out.write(data)
    os.replace(tmp, out_path)
    return missing


def read_merged(data: bytes):
    """Yield (task number, result dict or None) from a merged file's bytes."""
    if not data.startswith(MERGED_MAGIC):
        raise BadInput("not an azpar merged-results file")
    offset = len(MERGED_MAGIC)
    (count,) = struct.unpack_from(">Q", data, offset)
    offset += 8
    for number in range(1, count + 1):
        (size,) = struct.unpack_from(">Q", data, offset)
        offset += 8
        chunk = data[offset : offset + size]
        offset += size
        yield number, (read_result(chunk) if size else None)


def write_result(path: str, result: dict) -> None:
    """Pickled straight into the file: the result's value blobs are written as they are,
    never copied into one bytes object first (a 2 GB value must not need 4 GB more). Out
    of memory even so, the file says the iterations failed for that (not retried)."""
    tmp = path + ".part"
    try:
        _write_result_file(tmp, result)
    except MemoryError as exc:
        if "indices" not in result:
            raise
        _write_result_file(tmp, _out_of_memory_result(result, exc))
    os.replace(tmp, path)


def _write_result_file(tmp: str, result: dict) -> None:
    with open(tmp, "wb") as fh:
        fh.write(RESULT_MAGIC)
        pickle.Pickler(fh, protocol=PICKLE_PROTOCOL).dump(result)


def read_result(data: bytes) -> dict:
    if not data.startswith(RESULT_MAGIC):
        raise BadInput("not an azpar result file")
    return pickle.loads(data[len(RESULT_MAGIC) :])


# A frame on the pool's pipes is a length (8 bytes, big-endian), then a pickle; or, when the length's top
# bit is set, an extended frame whose large buffers travel out of band, after the pickle: a task's items,
# or a result's values, of a few MB of arrays. A large bytes value inside a frame's pickle was copied into
# it, out of it, and again out of the pickle on each side (issue 16: a cell iterating over 20 arrays of
# 20 MB took twice a fork Pool's time). Its payload: the number of buffers (4 bytes) and the pickle's
# length (8), each buffer's length (8 each), the pickle, then each buffer at the next multiple of
# FRAME_ALIGN from the payload's start (arrays built on them are aligned).
FRAME_EXTENDED = 1 << 63
FRAME_ALIGN = 64
OUT_OF_BAND_FRAME_MIN = 1 << 20  # items or a values blob this large travel apart (frame_pieces)


def _frame_layout(pickle_size: int, sizes: Sequence[int]) -> tuple[int, list[int], int]:
    """(the pickle's offset, each buffer's offset, the payload's length) of an extended frame."""
    at = 12 + 8 * len(sizes)
    starts, end = [], at + pickle_size
    for size in sizes:
        start = -(-end // FRAME_ALIGN) * FRAME_ALIGN
        starts.append(start)
        end = start + size
    return at, starts, end


def frame_pieces(message: object, apart: Sequence[bytes] = ()) -> list:
    """``message`` framed for a pool's pipe, as pieces to write in order (``write_pieces``): a plain
    frame, or an extended one carrying the large values ``apart`` after the pickle, written from their
    own memory. The message says where each goes (``ITEMS_APART``, ``VALUES_APART``: ``load_frame``)."""
    data = pickle.dumps(message, protocol=PICKLE_PROTOCOL)
    if not apart:
        return [struct.pack(">Q", len(data)) + data]
    at, starts, end = _frame_layout(len(data), [len(a) for a in apart])
    head = struct.pack(">QIQ", end | FRAME_EXTENDED, len(apart), len(data))
    pieces: list = [head + struct.pack(f">{len(apart)}Q", *map(len, apart)), data]
    written = at + len(data)
    for start, raw in zip(starts, apart):
        pieces += [bytes(start - written), raw]
        written = start + len(raw)
    return pieces


ITEMS_APART = "items_apart"  # a task message whose items travel after the frame's pickle
VALUES_APART = "values_apart"  # a reply whose values' blob does


def write_pieces(fd: int, pieces: Sequence, write=None) -> None:
    """Write pieces in order (a frame's; the job store's records too, with its own ``write``): the small
    ones gathered into one write, each large one from its own memory."""
    write = write or write_all
    if len(pieces) == 1:
        write(fd, pieces[0])
        return
    small: list = []
    for piece in pieces:
        if len(piece) < OUT_OF_BAND_FRAME_MIN:
            small.append(piece)
            continue
        if small:
            write(fd, b"".join(small))
            small = []
        write(fd, piece)
    if small:
        write(fd, b"".join(small))


def write_all(fd: int, data) -> None:
    """Write all of ``data`` (bytes or a buffer) to ``fd`` (the job store's records use it too)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class ExtendedFrame:
    """An extended frame's payload, whole (``cut_frames``): ``load_frame`` reads it."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytearray) -> None:
        self.payload = payload


def load_frame(frame: bytes | ExtendedFrame, *, writable: bool = True) -> Any:
    """The message of a frame from ``cut_frames``. The values an extended frame carries apart are put
    back where its message says, as views of its payload: what is unpickled on them (arrays) uses its
    memory without a copy, writable unless ``writable`` is False (the kernel: a result's blob is also
    what the job store writes later, so the values loaded from it are copies: ``split_out_of_band``)."""
    if type(frame) is not ExtendedFrame:
        return pickle.loads(frame)
    view = memoryview(frame.payload)
    if not writable:
        view = view.toreadonly()
    count, size = struct.unpack_from(">IQ", view, 0)
    sizes = struct.unpack_from(f">{count}Q", view, 12)
    at, starts, end = _frame_layout(size, sizes)
    if end != len(view):
        raise BadInput(f"an extended frame of {len(view)} bytes lays out {end}")
    message = pickle.loads(view[at : at + size])
    parts = iter([view[a : a + n] for a, n in zip(starts, sizes)])
    for one in message if type(message) is list else (message,):
        if one.pop(ITEMS_APART, False):
            one["items"] = next(parts)
        if one.pop(VALUES_APART, False):
            values = one["result"]["values"]
            one["result"]["values"] = [values[0], values[1], next(parts)]
    return message


def cut_frames(buffer: bytearray) -> list:
    """The whole frames at the start of ``buffer``, removed from it (a plain frame's pickle as bytes,
    an extended frame as an ``ExtendedFrame``): what is left is shifted once, however many frames one
    read brought (a shift per frame made a read of many small results quadratic)."""
    frames: list = []
    start = 0
    with memoryview(buffer) as view:
        while len(view) - start >= 8:
            (size,) = struct.unpack_from(">Q", view, start)
            extended = size & FRAME_EXTENDED
            size &= ~FRAME_EXTENDED
            if len(view) - start < 8 + size:
                break
            at = start + 8
            frames.append(ExtendedFrame(bytearray(view[at : at + size])) if extended else bytes(view[at : at + size]))
            start = at + size
    del buffer[:start]
    return frames


def frame_missing(buffer: bytearray) -> int:
    """How many bytes the large extended frame at the start of ``buffer`` still lacks (0: none, or
    not such a frame): its reader may then read them straight into the frame's own memory."""
    if len(buffer) < 8:
        return 0
    (size,) = struct.unpack_from(">Q", buffer, 0)
    if not size & FRAME_EXTENDED:
        return 0
    size &= ~FRAME_EXTENDED
    return max(0, 8 + size - len(buffer)) if size >= OUT_OF_BAND_FRAME_MIN else 0


def _read_frame(stream) -> object:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack(">Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class _Measure:
    """A file for the pickler that keeps what is written while it is small and only counts
    it past SMALL_FRAME: a frame's length is known before anything is sent, without building
    a copy of a large message. The C pickler hands a large bytes payload to ``write`` as it
    is, so counting it costs nothing."""

    SMALL_FRAME = 1 << 20

    def __init__(self) -> None:
        self.size = 0
        self.chunks: list | None = []

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        if self.chunks is not None:
            if self.size <= self.SMALL_FRAME:
                self.chunks.append(bytes(data))
            else:
                self.chunks = None
        return n


def measure_frame(message: object) -> _Measure:
    """Pickle ``message`` once to learn its frame's length (and keep the bytes when small).
    Raises what pickling raises, before anything is sent."""
    measured = _Measure()
    pickle.Pickler(measured, protocol=PICKLE_PROTOCOL).dump(message)
    return measured


def write_frame(stream, message: object, measured: _Measure | None = None) -> None:
    """Send one length-prefixed pickle. A small message goes as one write; a large one is
    pickled a second time straight into the stream, so the worker never holds the pickle
    and a concatenated copy of it beside the value's own blob (3x a large value before)."""
    measured = measured or measure_frame(message)
    if measured.chunks is not None:
        _write_whole(stream, b"".join(measured.chunks))
        return
    stream.write(struct.pack(">Q", measured.size))
    sent = _Counted(stream)
    pickle.Pickler(sent, protocol=PICKLE_PROTOCOL).dump(message)
    if sent.size != measured.size:  # the stream is out of step now: end rather than mislead the reader
        raise RuntimeError(f"a frame measured {measured.size} bytes but pickled to {sent.size}")
    stream.flush()


def _write_whole(stream, data: bytes) -> None:
    """Send one small frame, its pickle ``data`` in hand, as one write."""
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


class _Counted:
    """Forwards writes to ``stream`` and counts their bytes."""

    def __init__(self, stream) -> None:
        self.stream, self.size = stream, 0

    def write(self, data) -> int:
        self.size += memoryview(data).nbytes
        return self.stream.write(data)


def _send_reply(stream, reply: dict) -> None:
    """Send a task's reply; when even measuring it runs out of memory (nothing is sent yet),
    send instead a reply that fails the task's iterations as their own MemoryError, which
    the kernel reports once, rather than dying and having the task retried."""
    if _small_reply(reply):  # pickled at once: no pickler made to measure it first
        result = reply["result"]
        compact = (
            reply.keys() == _REPLY_KEYS and result.keys() == _RESULT_KEYS and result["worker"].keys() == _WORKER_KEYS
        )
        _write_whole(stream, pickle.dumps(compact_reply(reply) if compact else reply, protocol=PICKLE_PROTOCOL))
        return
    result = reply.get("result") or {}
    values = result.get("values")
    if values and values[0] == "all" and type(values[2]) is bytes and len(values[2]) >= OUT_OF_BAND_FRAME_MIN:
        # The values' blob travels after the frame's pickle, written from its own memory (frame_pieces).
        light = {**reply, VALUES_APART: True, "result": {**result, "values": [values[0], values[1], None]}}
        for piece in frame_pieces(light, [values[2]]):
            stream.write(piece)
        stream.flush()
        return
    try:
        measured = measure_frame(reply)
    except MemoryError as exc:
        reply = _out_of_memory_reply(reply, exc)
        measured = measure_frame(reply)
    write_frame(stream, reply, measured)


# The keys of a reply that travels compact (``serve`` makes them): any other shape travels whole.
_REPLY_KEYS = frozenset({"op", "task", "result", "ran"})
_RESULT_KEYS = frozenset({"indices", "files", "values", "gathered", "failed", "outputs", "seconds", "worker"})
_WORKER_KEYS = frozenset({"pid", "namespace_loads"})


def compact_reply(reply: dict) -> tuple:
    """A small reply (``_small_reply``) of the usual keys as it travels: a tuple of its values,
    without the keys of its dicts. Unpickling the dicts was the kernel's largest cost of a
    one-iteration task after its bookkeeping (~2.2 us against ~0.2, issue 16, a');
    ``full_reply`` rebuilds it."""
    result = reply["result"]
    worker = result["worker"]
    _all, codec, blob = result["values"]
    return (
        reply["task"],
        result["indices"],
        codec,
        blob,
        result["seconds"],
        reply["ran"],
        worker["pid"],
        worker["namespace_loads"],
    )


def full_reply(compact: tuple) -> dict:
    """The reply ``compact_reply`` made ``compact`` from, as every other reply reads."""
    task, indices, codec, blob, seconds, ran, pid, loads = compact
    result = {
        "indices": indices,
        "files": None,
        "values": ["all", codec, blob],
        "gathered": None,
        "failed": {},
        "outputs": {},
        "seconds": seconds,
        "worker": {"pid": pid, "namespace_loads": loads},
    }
    return {"op": "result", "task": task, "result": result, "ran": ran}


SMALL_REPLY = 1 << 16


def _small_reply(reply: dict) -> bool:
    """Whether a task's reply surely pickles small (its values' blobs under SMALL_REPLY in all,
    nothing printed, failed, gathered or moved): a large one is measured first (write_frame)."""
    result = reply.get("result")
    if result is None or result.get("outputs") or result.get("failed") or result.get("files") is not None:
        return False
    values = result.get("values")
    if result.get("gathered") is not None or not values or values[0] != "all":
        return False
    if not isinstance(result["indices"], range) and len(result["indices"]) > 1024:
        return False
    return isinstance(values[2], (bytes, bytearray)) and len(values[2]) < SMALL_REPLY


def _out_of_memory_reply(reply: dict, exc: MemoryError) -> dict:
    result = reply.get("result")
    if not result:
        return {**reply, "error": f"internal worker error: out of memory sending the reply ({exc})"}
    return {**reply, "result": _out_of_memory_result(result, exc)}


def _out_of_memory_result(result: dict, exc: MemoryError) -> dict:
    """The task's result with no values: each iteration that had not failed by itself fails
    with the MemoryError of sending it back (the iteration's own failure, never retried)."""
    indices = result["indices"]
    failed = dict(result["failed"])
    for index in indices:
        failed.setdefault(
            index,
            {
                "type": "azpar_magic.SerializationError",
                "traceback": "",
                "line": None,
                "exc": None,
                "message": f"the value of iteration {index} could not be sent back: {_OUT_OF_MEMORY}MemoryError: {exc}",
            },
        )
    empty = ["each", [None] * len(indices)]
    return {**result, "values": empty, "gathered": empty if result.get("gathered") else None, "failed": failed}


HEARTBEAT = 0.5  # seconds between a pool worker's heartbeats (and checks that its kernel lives)
BEAT_SLOTS = 2  # int64 slots of a worker's beat file: [iteration running now or -1, last heartbeat (ns)]


def open_beat_file(path: str) -> memoryview:
    """The shared-memory slots a pool worker writes and its kernel reads (see BEAT_SLOTS):
    a write per iteration costs a store, not a message."""
    import mmap

    fd = os.open(path, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, 8 * BEAT_SLOTS)
    finally:
        os.close(fd)
    return memoryview(mapped).cast("q")


def _end_process_group() -> None:
    """Kill this worker and whatever its task started (its own process group when it leads
    one, as pool workers do on Linux and macOS; else its descendants by parent pid, as
    ``taskkill /T`` finds them on Windows): nothing of a dead kernel's work may run on."""
    import signal

    try:
        if sys.platform == "win32":
            import subprocess

            subprocess.run(["taskkill", "/F", "/T", "/PID", str(os.getpid())], capture_output=True, timeout=10)
        elif os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        else:
            for child in _descendants(os.getpid()):
                os.kill(child, signal.SIGKILL)
    except (OSError, ValueError, AttributeError, RuntimeError):
        pass
    os._exit(EXIT_INTERNAL)


def _end_what_the_task_started() -> None:
    """Kill the processes this one started (a task stopped at its --timeout: they would run on, where the
    kill of the whole task ended them), by parent pid from /proc; the local pool also ends the worker's
    process group when it exits, for systems without /proc."""
    import signal

    for child in _descendants(os.getpid()):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, by parent pid from /proc (empty without one). The
    client's twin is ``platforms.descendants``."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                parents.setdefault(int(fh.read().rsplit(b")", 1)[1].split()[1]), []).append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found.extend(children)
        todo.extend(children)
    return found


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (not a zombie). The client's twin is ``platforms.pid_alive``
    (``os.kill(pid, 0)`` terminates a process on Windows: asked of the system there instead)."""
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # no /proc: it exists


def _parent_gone(parent: int, portable: bool) -> bool:
    """Whether the kernel died. A POSIX worker is reparented when it does; the portable
    path (Windows: no reparenting) asks whether the kernel's pid still runs."""
    return not _pid_alive(parent) if portable else os.getppid() != parent


# The counted loop running now (Runner.run): its running() gives the iteration running, for the
# heartbeat to write where the local pool reads it. One slot, as a process runs one task at a time.
_RUNNING: list = [None]


def _watch(parent: int | None, slots: memoryview | None, portable: bool = False) -> None:
    """Heartbeat and lifeline, on a thread of its own so that it runs while a task computes:
    the kernel reads the beat to tell a stopped or hung worker from a busy one, and a worker
    whose kernel died (SIGKILL, OOM) ends itself and its task at once."""
    while True:
        if slots is not None:
            slots[1] = time.monotonic_ns()
            running = _RUNNING[0]
            if running is not None:
                index = running()
                if _RUNNING[0] is running:  # not a task that ended meanwhile
                    slots[0] = index
        if parent is not None and _parent_gone(parent, portable):
            _end_process_group()
        time.sleep(HEARTBEAT)


def _binary_mode(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.setmode(fd, os.O_BINARY)


def no_standard_input() -> None:
    """A node's task reads its standard input from the null device, as a pool worker does: whatever the
    node agent leaves there (a closed descriptor, where ``input()`` raised "lost sys.stdin" and a debugger
    a RuntimeError; a pipe nobody writes to, where they waited until --timeout), an iteration then meets
    the end of an empty input, which the error for ``input()`` and ``breakpoint()`` explains."""
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    if sys.stdin is None:  # (descriptor 0 was closed at start; an open one's wrapper now reads the null device)
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115


def stdio_channel() -> tuple[int, int]:
    """The portable transport (Windows has no descriptor passing): the kernel's pipes are this
    process's stdin and stdout. They are moved to descriptors of their own and stdin/stdout
    become the null device/stderr (the worker's log), so nothing a task prints or reads, even
    from C code or a child process, touches them."""
    fd_in, fd_out = os.dup(0), os.dup(1)
    no_standard_input()
    os.dup2(2, 1)
    for fd in (fd_in, fd_out):
        _binary_mode(fd)
    return fd_in, fd_out


class _Inbox:
    """The kernel's messages to a pool worker.

    The pool sends a worker its next tasks while it still runs one (issue 16: a task then
    starts the moment the previous one ends, not a round trip to the kernel later), and may
    ask for those not started yet back ("return") when another worker sits idle. The worker's
    own thread reads its messages between tasks; while a task runs, a helper thread looks at
    the pipe every GIVE_BACK_POLL seconds and answers a return at once. Taking a task and
    giving tasks back happen under one lock, so each task is either run here or returned,
    never both. A reader thread for every message cost a thread switch per task (0.2-0.3 ms
    of a two-iteration cell on two cores), hence the look-while-running helper.

    The helper is not woken when a task starts. It keeps looking while tasks come, and rests
    (waits on an event) only after REST_AFTER seconds in which none ran; the first task after
    such a spell wakes it. Waking it at each task that followed a wait for the pipe, as before,
    put a thread switch, and a hand-over of the interpreter lock, into every cell of the
    worker's (~5% of the workers' CPU in a 10,000-iteration cell on two cores, issue 16, a).

    Not on Windows (no select() on pipes): there the pool sends no task ahead (``ready``
    says ``gives_back``)."""

    GIVE_BACK_POLL = 0.02
    REST_AFTER = 1.0  # seconds without a running task before the helper rests
    IDLE_AFTER = 0.05  # seconds without a message before next() runs its idle work

    def __init__(self, fd: int, send) -> None:
        import collections
        import threading

        self._fd, self._send = fd, send
        self._lock = threading.Lock()  # the pipe's bytes and the waiting messages
        self._buffer = bytearray()
        self._waiting: collections.deque = collections.deque()
        self._busy = False  # a task taken by next() runs (False while this thread waits for the pipe)
        self._awake = threading.Event()  # clear while the helper rests
        self.gives_back = os.name != "nt"
        if self.gives_back:
            threading.Thread(target=self._look_while_running, name="azpar-inbox", daemon=True).start()

    def next(self, idle=None) -> dict:
        """The next message; a task taken here has started (it can no longer be returned). ``idle()`` runs
        first when no message waits, neither read nor in the pipe (loading a spare namespace)."""
        if idle is not None:
            with self._lock:
                quiet = not self._waiting and not self._pending(0)
                if quiet:
                    self._busy = False
            if quiet:  # nothing yet: the worker idles once none comes for IDLE_AFTER (a job's next tasks come sooner)
                deadline = time.monotonic() + self.IDLE_AFTER
                while time.monotonic() < deadline:  # (in steps: the helper may have read a message meanwhile)
                    if self._waiting or self._pending(0.01):
                        break
                else:
                    idle()
        with self._lock:
            if not self._waiting:
                self._busy = False
                while not self._waiting:
                    self._read(block=True)
            message = self._waiting.popleft()
        if message.get("op") == "task":
            self._busy = True
            if not self._awake.is_set():  # the first task after a quiet spell: the helper rests
                self._awake.set()
        return message

    def _look_while_running(self) -> None:
        quiet = 0  # looks in a row that found no task running
        while True:
            self._awake.wait()
            time.sleep(self.GIVE_BACK_POLL)
            if not self._busy:
                quiet += 1
                if quiet * self.GIVE_BACK_POLL >= self.REST_AFTER:
                    quiet = 0
                    self._awake.clear()
                    if self._busy:  # a task was taken meanwhile and found the helper still awake
                        self._awake.set()
                continue
            quiet = 0
            if self._lock.acquire(blocking=False):
                try:
                    self._read(block=False)
                finally:
                    self._lock.release()

    def _pending(self, wait: float) -> bool:
        """Whether the pipe holds bytes to read, or does within ``wait`` seconds; on Windows, where pipes have no
        select(), say so."""
        if not self.gives_back:
            return True
        import select

        return bool(select.select([self._fd], [], [], wait)[0])

    def _read(self, block: bool) -> None:
        """Read what the pipe holds (lock held; ``block``: wait for at least a byte)."""
        if not block and not self._pending(0):
            return
        try:
            data = os.read(self._fd, 1 << 16)
        except OSError:
            data = b""
        if not data:  # the kernel went away: nothing left to do
            self._stop({"op": "exit"})
            return
        self._buffer += data
        frames = cut_frames(self._buffer)
        missing = frame_missing(self._buffer)
        if missing:  # a task's items of arrays: the rest is read straight into the frame's own memory
            large = self._read_large(missing)
            if large is None:
                self._stop({"op": "exit"})
                return
            frames.append(large)
        for frame in frames:
            try:
                loaded = load_frame(frame)
            except Exception as exc:  # the stream is out of step: nothing after it can be trusted
                loaded = {"op": "exit", "why": f"{type(exc).__name__}: {exc}"}
            if type(loaded) is list:  # tasks sent together (backends/local.py, _send)
                self._waiting.extend(loaded)
                continue
            if loaded.get("op") == "return":
                self._give_back({tuple(key) for key in loaded["tasks"]})
            elif loaded.get("op") == "exit":
                self._stop(loaded)
                return
            else:
                self._waiting.append(loaded)

    def _read_large(self, missing: int) -> ExtendedFrame | None:
        """The large extended frame the buffer starts with, its last ``missing`` bytes read into its
        payload as they come (lock held); None when the kernel went away first."""
        (size,) = struct.unpack_from(">Q", self._buffer, 0)
        payload = bytearray(size & ~FRAME_EXTENDED)
        have = len(self._buffer) - 8
        payload[:have] = memoryview(self._buffer)[8:]
        self._buffer.clear()
        view = memoryview(payload)[have:]
        while view:
            try:
                if hasattr(os, "readv"):
                    got = os.readv(self._fd, [view])
                else:  # (Windows: no readv; a copy of each read instead)
                    chunk = os.read(self._fd, min(len(view), 1 << 20))
                    view[: len(chunk)] = chunk
                    got = len(chunk)
            except InterruptedError:
                continue
            except OSError:
                got = 0
            if not got:
                return None
            view = view[got:]
        del view
        return ExtendedFrame(payload)

    def _give_back(self, wanted: set) -> None:
        """Return the waiting tasks named, each by its job's envelope path and its id (lock held): ids
        alone repeat across jobs. A returned task that carried its job's
        envelope hands it to the next task of that job kept here: the pool sent that one without
        the envelope, and without its file, since this process would have loaded the job first
        (backends/local.py, _note_sent)."""
        kept, returned = type(self._waiting)(), []
        carried: dict = {}  # envelope path -> the bytes a returned task carried
        for m in self._waiting:
            if (m.get("envelope"), m.get("task")) in wanted:
                returned.append((m["envelope"], m["task"]))
                if "envelope_data" in m:
                    carried[m["envelope"]] = m["envelope_data"]
            else:
                if m.get("envelope") in carried and "envelope_data" not in m:
                    m["envelope_data"] = carried.pop(m["envelope"])
                kept.append(m)
        self._waiting = kept
        self._send({"op": "returned", "tasks": returned})

    def _stop(self, message: dict) -> None:
        """The pool closes (or the kernel is gone): tasks held ahead never start (the pool
        reports them as not run), the one running ends as it would have."""
        self._waiting.clear()
        self._waiting.append(message)


class _ProcessState:
    """What a loop body can change in the worker process beyond its namespace, as it was when the
    worker started: environment variables (and the time zone read from ``TZ``), ``sys.path`` (but for
    the notebooks' module folders), warning filters, the recursion limit, the garbage collector's
    switch and thresholds, the file mode mask, the thread switch interval and sockets' default
    timeout; and the random generators' states (seeded from the OS again),
    ``decimal``'s context and numpy's error handling (their defaults). A job's first task on this
    worker puts them back, so that a cell does not run with what an earlier cell's iterations left on
    this worker only (``os.environ[...] = ...``, ``warnings.filterwarnings("error")``,
    ``sys.setrecursionlimit(50)``, ``gc.disable()``), which depended on where those ran, as on Azure,
    where each job has processes of its own. Within a job, iterations still see what earlier ones on
    the same worker did, as the README says."""

    def __init__(self) -> None:
        import warnings

        self.environ = dict(os.environ)
        self.raw_environ = dict(getattr(os.environ, "_data", None) or {})  # compared at C speed (POSIX)
        self.path = list(sys.path)
        self.warnings = warnings
        self.filters = list(warnings.filters)
        self.recursion_limit = sys.getrecursionlimit()
        self.gc_enabled, self.gc_thresholds = gc.isenabled(), gc.get_threshold()
        self.switch_interval = sys.getswitchinterval()
        self.umask = _current_umask()
        logging = sys.modules.get("logging")  # (the worker does not import it; a sitecustomize may have)
        self.root_handlers = list(logging.root.handlers) if logging is not None else []
        self.root_level = logging.root.level if logging is not None else 30  # logging.WARNING

    def _environ_changed(self) -> bool:
        raw = getattr(os.environ, "_data", None)
        return raw != self.raw_environ if raw is not None and self.raw_environ else dict(os.environ) != self.environ

    def keep_environ(self, name: str, value: str) -> None:
        """Make ``name=value`` part of the environment this worker puts back at each job."""
        self.environ[name] = value
        if self.raw_environ:
            self.raw_environ[os.environ.encodekey(name)] = os.environ.encodevalue(value)  # type: ignore[attr-defined]

    def restore_environ(self) -> None:
        if self._environ_changed():
            zone = os.environ.get("TZ")
            os.environ.clear()
            os.environ.update(self.environ)
            _zone_changed_from(zone)  # a body's os.environ["TZ"] = ... and time.tzset(): local time as it was

    def restore(self) -> None:
        _SETTINGS[0] = None  # what this puts back, the job's settings (_follow_settings) then set afresh
        self.restore_environ()
        # The notebooks' own modules stay importable: a job loaded earlier (or the same cell's
        # envelope, loaded once) put their folders first and will not put them there again.
        if sys.path != self.path:
            ours = [entry for entry in sys.path if os.path.basename(entry).startswith(LOCAL_MODULES_PREFIX)]
            if sys.path != ours + self.path:
                sys.path[:] = ours + self.path
        if self.warnings.filters != self.filters:
            self.warnings.filters[:] = self.filters
            self.warnings._filters_mutated()  # the modules' registries of warnings already shown are stale
        _fresh_random_states()
        decimal = sys.modules.get("decimal")
        if decimal is not None:  # precision and rounding a body set with getcontext().prec = ...
            decimal.setcontext(decimal.Context())
        numpy = sys.modules.get("numpy")
        if numpy is not None:  # np.seterr(all="raise"), np.set_printoptions(precision=3) by a body
            follow_numpy_settings(numpy, None)
        logging = sys.modules.get("logging")
        if logging is not None:
            self._restore_logging(logging)
        self._restore_interpreter()

    def _restore_logging(self, logging: types.ModuleType) -> None:
        """A body's ``logging.basicConfig(...)``, or a module-level ``logging.info(...)``, which calls it, left a
        handler on this worker's root logger: a later cell's records were written in that body's format, and a
        notebook that configured no logging saw them formatted there and bare elsewhere. The root logger is put
        back as it was when the worker started; the notebook's own set-up (``_follow_logging``) is made afresh."""
        if _LOGGING[0] is not None:
            _follow_logging(None)
        root = logging.root
        if root.handlers != self.root_handlers:
            for handler in [h for h in root.handlers if h not in self.root_handlers]:
                root.removeHandler(handler)
                try:
                    handler.close()  # a FileHandler's file; a StreamHandler leaves its stream open
                except Exception:
                    pass
        if root.level != self.root_level:
            root.setLevel(self.root_level)

    def _restore_interpreter(self) -> None:
        """The interpreter's settings a body may have changed (a few microseconds a job and worker)."""
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        if _STARTED_INT_DIGITS and sys.get_int_max_str_digits() != _STARTED_INT_DIGITS:
            sys.set_int_max_str_digits(_STARTED_INT_DIGITS)
        if gc.isenabled() != self.gc_enabled:  # gc.disable(): later cells' cycles never freed
            (gc.enable if self.gc_enabled else gc.disable)()
        if gc.get_threshold() != self.gc_thresholds:
            gc.set_threshold(*self.gc_thresholds)
        if sys.getswitchinterval() != self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        os.umask(self.umask)  # os.umask(0o077) in a body: later cells' files unreadable to the group
        socket = sys.modules.get("socket")
        if socket is not None and socket.getdefaulttimeout() is not None:  # socket.setdefaulttimeout(1)
            socket.setdefaulttimeout(None)


def apply_environ_changes(changes: dict) -> None:
    """The kernel's environment variables set or removed since this local worker started (the pool's
    ``KernelEnvironment``), for the job's tasks here: the next job's first task puts the worker's own back."""
    zone = os.environ.get("TZ")
    os.environ.update(changes.get("set") or {})
    for name in changes.get("unset") or ():
        os.environ.pop(name, None)
    _zone_changed_from(zone)


def _zone_changed_from(zone: str | None) -> None:
    """Local time follows ``TZ`` again when the environment's changed it from ``zone``."""
    if zone != os.environ.get("TZ") and hasattr(time, "tzset"):
        time.tzset()


def _current_umask() -> int:
    """The process's file mode mask (reading it means setting it: put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fresh_random_states() -> None:
    """Seed ``random`` and numpy's global generator from the OS again: a body that seeded them
    (``random.seed(0)`` in each iteration) left every worker in the same state, and a later cell that
    draws without seeding then got the same numbers on each worker, each a replay of the earlier
    cell's (~15 us a job and worker; --seed seeds each iteration afresh anyway)."""
    random = sys.modules.get("random")
    if random is not None:
        random.seed(int.from_bytes(os.urandom(16), "little"))
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and hasattr(numpy_random, "seed"):
        numpy_random.seed([int.from_bytes(os.urandom(4), "little") for _ in range(4)])


def serve(fd_in: int, fd_out: int, parent: int | None = None, beat: str | None = None, portable: bool = False) -> int:
    """Persistent local worker: read task messages, answer each with one result message.

    Cancellation and timeouts kill this process (the pool replaces it), so it ignores
    SIGINT: a terminal's Ctrl-C is for the kernel, which decides what to cancel.
    ``parent``: the kernel's pid (this worker ends when it is gone); ``beat``: its beat file;
    ``portable``: started the portable way (see ``stdio_channel``, ``_parent_gone``).
    """
    import signal
    import threading
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots = open_beat_file(beat) if beat else None
    if parent is not None and _parent_gone(parent, portable):
        _end_process_group()  # the kernel died while this process started
    if parent is not None or slots is not None:
        threading.Thread(target=_watch, args=(parent, slots, portable), name="azpar-heartbeat", daemon=True).start()
    writer = os.fdopen(fd_out, "wb", buffering=1 << 16)
    sending = threading.Lock()  # results (this thread) and returned tasks (the inbox's helper) share the pipe

    def send(message: dict) -> None:
        with sending:
            write_frame(writer, message)

    def send_reply(message: dict) -> None:
        with sending:
            _send_reply(writer, message)

    cache = JobCache()
    inbox = _Inbox(fd_in, send)
    baseline, jobs_seen = _ProcessState(), dict[str, None]()
    _BASELINE[0] = baseline
    environ_job, environ_changed = None, False  # the job whose variables the environment holds; changed ones?
    send({"op": "ready", "pid": os.getpid(), "gives_back": inbox.gives_back})
    while True:
        message = inbox.next(cache.load_spare)
        if message.get("op") == "exit":
            if message.get("why"):
                print(f"azpar worker: the kernel's messages could not be read ({message['why']})", file=sys.stderr)
            return EXIT_OK
        taken = time.perf_counter()
        since = time.monotonic()  # its --timeout counts from here (TaskTimer), as the pool's kill does from its start
        reply: dict = {"op": "result", "task": message["task"]}
        try:
            first = message["envelope"] not in jobs_seen  # a job's first task here
            if first:
                baseline.restore()
                jobs_seen[message["envelope"]] = None
                if len(jobs_seen) > 64:  # (jobs running side by side are far fewer)
                    del jobs_seen[next(iter(jobs_seen))]
            if message.get("cwd"):
                os.chdir(message["cwd"])
            job = load_job(message["envelope"], cache, message.get("envelope_data"))
            changes = job.envelope.get("environ")
            if first or (message["envelope"] != environ_job and (changes or environ_changed)):
                if not first:  # jobs interleaving here: each runs with its own kernel's variables
                    baseline.restore_environ()
                if changes:
                    apply_environ_changes(changes)
            environ_job, environ_changed = message["envelope"], bool(changes)
            items = load_items(message["items_codec"], message["items"], job)
            try:
                limit = job.envelope.get("timeout")
                runner = Runner(job, slots, exact=bool(message.get("exact_progress")))
                reply["result"] = runner.run(
                    message["indices"],
                    items,
                    iteration_files(job.envelope, message.get("data")),
                    since + limit if limit else None,
                    limit,
                )
            finally:
                if slots is not None:
                    slots[0] = -1
            reply["result"]["worker"] = {"pid": os.getpid(), "namespace_loads": cache.namespace_loads}
            if runner.stopped:
                reply["exiting"] = True  # the pool takes back the tasks it holds ahead and starts another worker
        except EnvironmentMismatch as exc:
            reply.update(error=str(exc), exit_code=EXIT_ENVIRONMENT)
        except BadInput as exc:
            reply.update(error=str(exc), exit_code=EXIT_BAD_INPUT)
        except Exception as exc:
            reply.update(
                error="internal worker error: " + "".join(traceback.format_exception(exc)), exit_code=EXIT_INTERNAL
            )
        reply["ran"] = time.perf_counter() - taken  # the task's time here, loading its job included: its core time
        send_reply(reply)
        if reply.get("exiting"):
            # An iteration stopped at --timeout may have left this process half way (a lock a library held,
            # an import cut short), and what it started still runs: both end here, as the kill ended them.
            writer.flush()
            _end_what_the_task_started()
            return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"] or (len(argv) == 2 and not argv[0].startswith("-")):  # a worker, tasks to run
        _IPYTHON_DISPLAY_WATCH.install()
    if argv[:1] == ["--serve"]:
        os.environ[IN_TASK_VARIABLE] = "1"  # read by the package's map, should an iteration call it
        portable = "--stdio" in argv
        rest = [a for a in argv[1:] if a != "--stdio"]
        opts = dict(zip(rest[::2], rest[1::2]))
        parent = int(opts["--parent"]) if "--parent" in opts else None
        fd_in, fd_out = stdio_channel() if portable else (int(opts["--fd-in"]), int(opts["--fd-out"]))
        return serve(fd_in, fd_out, parent, opts.get("--beat"), portable)
    if argv[:1] == ["--check"] and len(argv) in (2, 3):
        if __name__ == "__main__":  # run as a node runs it, not called by the package
            compile_for_tasks(os.path.dirname(os.path.abspath(argv[1])), argv[2] if len(argv) == 3 else None)
        try:
            check_node(argv[1])
        except EnvironmentMismatch as exc:
            print(f"azpar worker: {exc}", file=sys.stderr)
            return EXIT_ENVIRONMENT
        except (OSError, BadInput) as exc:
            print(f"azpar worker: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print("azpar worker: environment matches the envelope")
        return EXIT_OK
    if argv[:1] == ["--merge"] and len(argv) == 4:
        missing = merge_result_files(argv[1], int(argv[2]), argv[3])
        print(f"azpar worker: merged {int(argv[2]) - missing} task results ({missing} missing)")
        return EXIT_OK
    if len(argv) == 2 and not argv[0].startswith("-"):
        os.environ[IN_TASK_VARIABLE] = "1"  # (a node's task, as --serve above)
        try:
            no_standard_input()
        except OSError:  # no null device to open: the task runs with what it was given
            pass
        try:
            return run_task_file(argv[0], argv[1])
        except Exception:
            import traceback

            traceback.print_exc()
            return EXIT_INTERNAL
    print(USAGE, file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    # Run as a script, Python put this file's folder first on sys.path: on the local pool the package's
    # own folder, whose modules (config, jobs, storage, api, ...) the iterations then imported instead of
    # the user's and installed ones of those names. Nothing here imports from it.
    if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    sys.exit(main())

"""``--cache``: the key of each iteration, and reusing the values stored under those keys.

The key of iteration i hashes what decides its value: a format tag, the loop's target and
body source, a digest of the CONTENT of the captured namespace (and of the notebook-folder
modules its code comes from, and the versions of the packages it names), the item's content
digest, the files ``--inputs`` gives it (each one's path, size and modification time: a file
edited since is a miss), and the options that change one iteration's value (``--seed`` with i,
since the iteration's stream is spawned from both; ``--gather`` names), and the notebook's ``decimal``
context and pandas options when they are not the defaults (the iterations follow them:
capture.interpreter_settings), and the kernel's environment variables the code reads by name
(``environment_reads``). Options that only shape the
whole result (``--combine``, ``--errors``, ``--chunk-size``) are not in it, nor is the
iterable's expression: the same item through the same body gives the same value whatever
list it came from.

Content, not pickle bytes: dill pickles a notebook function with its code object, whose
``co_filename`` (ipykernel's temporary file, named after the kernel's pid) and line tables
differ in every kernel and move when a cell above gains a line. The digest pickles code
objects as their bytecode, constants, names and flags instead (recursively: nested functions
and comprehensions are constants), and sets in a sorted order (string hashes, hence a set's
order, differ between processes). What the key cannot see is not reused wrongly but
recomputed: a closure over a changed object changes the digest like any other content.

The engine calls ``plan`` before it cuts tasks: hits become a holder Job whose values the new
job adopts (the rerun path, ``Job.adopt``), misses are the only iterations submitted, and
``Plan.record`` writes the reused values into the new job's own records so ``attach`` in another
kernel sees every value, and indexes the job's keys.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import os
import pickle
import re
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dill

from .. import config, jobstore, worker as wire
from ..jobs import Job
from ..jobstore import cache as index
from . import capture as capture_mod, data as data_mod
from .parsing import ParsedCell
from .request import RunRequest

__all__ = ["FORMAT_TAG", "content_digest", "namespace_digest", "iteration_keys", "Plan", "plan", "max_bytes"]

FORMAT_TAG = b"azpar-cache-1"
_DIGEST = 16  # bytes of blake2b: index.KEY_SIZE


class _NeedsContent(Exception):
    """The C pickler met notebook code (which it would pickle by name): use the content pickler."""


def _is_notebook(obj: object) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


class _FastPickler(pickle.Pickler):
    """The C pickler, for plain data (numbers, strings, arrays, frames): deterministic bytes,
    10x faster than dill. It gives up on anything that carries code it would name only."""

    def __init__(self, file, modules: set[str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.modules = modules

    def persistent_id(self, obj):  # called for every object, sets too (unlike reducer_override)
        if type(obj) in (set, frozenset):  # pickled in hash order, which differs between processes
            raise _NeedsContent
        return None

    def reducer_override(self, obj):
        if (
            isinstance(obj, (types.FunctionType, types.CodeType, types.MethodType, types.ModuleType))
            or (isinstance(obj, type) and _is_notebook(obj))
            or _is_notebook(type(obj))
        ):
            raise _NeedsContent
        if isinstance(obj, type):
            self.modules.add(obj.__module__ or "")
        return NotImplemented


def _code_content(code: types.CodeType) -> tuple:
    """What a code object computes, without where it was written (file name, line tables)."""
    return (
        b"code",
        code.co_code,
        code.co_consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_name,
        getattr(code, "co_exceptiontable", b""),
    )


def _cell_full(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (reading it is the test: an empty cell raises)
    except ValueError:
        return False
    return True


def _set_order(value: object) -> tuple[str, str]:
    return type(value).__qualname__, repr(value)


class _ContentPickler(dill.Pickler):
    """dill, for what the C pickler cannot digest, with notebook functions as their content:
    code by content, the globals they read sorted by name (dill's own ``recurse`` collects them
    through a set, in an order that differs between processes), defaults and closure; sets
    sorted. The bytes are only hashed, never loaded."""

    def __init__(self, file, modules: set[str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL, recurse=True, byref=False)
        self.modules = modules
        self._saving: set[int] = set()  # notebook functions being saved: a recursive one names itself

    def _function(self, fn: types.FunctionType) -> tuple:
        if id(fn) in self._saving:
            return str, (f"<recursive {fn.__qualname__}>",)
        self._saving.add(id(fn))
        scope = fn.__globals__
        reads = [(name, scope[name]) for name in sorted(wire.names_read(fn.__code__)) if name in scope]
        cells = tuple(cell.cell_contents if _cell_full(cell) else "<empty cell>" for cell in fn.__closure__ or ())
        state = sorted(fn.__dict__.items(), key=lambda kv: kv[0])
        return tuple, (
            (b"function", fn.__qualname__, fn.__code__, reads, fn.__defaults__, fn.__kwdefaults__, cells, state),
        )

    def save(self, obj, save_persistent_id=True):
        super().save(obj, save_persistent_id)
        if isinstance(obj, types.FunctionType):
            self._saving.discard(id(obj))

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType) and _is_notebook(obj):
            return self._function(obj)
        if wire.is_notebook_enum(obj):
            return tuple, (_enum_content(obj),)
        if isinstance(obj, types.CodeType):
            return tuple, (_code_content(obj),)
        if type(obj) in (set, frozenset):
            try:
                return type(obj), (sorted(obj, key=_set_order),)
            except Exception:
                return NotImplemented
        if isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        return NotImplemented

    def save_global(self, obj, name=None):
        self.modules.add(getattr(obj, "__module__", None) or "")
        return super().save_global(obj, name)


# What every Enum class has by its metaclass, or by where it was written: not its content.
_ENUM_NOT_CONTENT = wire.ENUM_MADE | {"__firstlineno__", "__static_attributes__"}


def _enum_content(cls: type) -> tuple:
    """A notebook Enum class as its content: bases, members and their values, and what else its
    body defined (methods by their content). dill could only name it (it gives up on the class's
    members, instances of the class itself), so a changed member or method kept its cache keys."""
    members = cls.__members__  # type: ignore[attr-defined]
    attributes = sorted(
        ((key, value) for key, value in vars(cls).items() if key not in members and key not in _ENUM_NOT_CONTENT),
        key=lambda kv: kv[0],
    )
    return b"enum", cls.__qualname__, cls.__bases__, [(name, m._value_) for name, m in members.items()], attributes


def content_digest(obj: object, modules: set[str] | None = None) -> bytes:
    """A digest of ``obj``'s content, the same in every process that has the same content;
    the modules its pickle names by reference are added to ``modules``."""
    modules = set() if modules is None else modules
    buf = io.BytesIO()
    try:
        _FastPickler(buf, modules).dump(obj)
    except Exception:
        buf = io.BytesIO()
        _ContentPickler(buf, modules).dump(obj)
    return hashlib.blake2b(buf.getvalue(), digest_size=_DIGEST).digest()


_PRESENTATION = ("display.", "styler.", "plotting.")  # pandas options that change only how values look


def namespace_digest(request: RunRequest, items: Sequence[Any]) -> bytes:
    """The content digest of what capture would ship for this cell: the chosen names (as
    ``capture.capture`` chooses them), the source of the notebook-folder modules they and the
    body import (shipped as files, so their edits must count) and the versions of the
    installed distributions behind the modules they name."""
    cell, namespace = request.cell, request.namespace
    looked_up, _ = capture_mod.namespace_lookups(cell.body_tree)
    wanted = (
        capture_mod.free_names(cell.body_tree, cell.target_names)
        | set(request.export)
        | capture_mod.notebook_objects_in(items, namespace)
        | {name for name in looked_up if name in namespace}
    )
    chosen, _ = capture_mod.resolve_names(namespace, wanted, exclude=request.no_export)
    for name in request.export:
        if name in namespace:
            chosen[name] = namespace[name]
    modules: set[str] = set(capture_mod.imported_modules(cell.body_tree))
    digest = content_digest(sorted(chosen.items(), key=lambda kv: kv[0]), modules)
    modules.discard("")
    local = capture_mod.local_module_files(modules, request.folder or ".")
    versions = capture_mod.distributions_for(modules)  # numpy 1 -> 2 may change a value
    # The modules by their digest (their paths and texts): repr of a package's whole source was every cell's.
    shipped = capture_mod.modules_digest(local) if local else ""
    parts: tuple = (shipped, sorted(versions.items()))
    environ = environment_reads(cell, chosen.values())
    if environ:  # (a tuple of three only then: the keys of code that reads no variable are as before)
        parts += (environ,)
    return hashlib.blake2b(digest + repr(parts).encode(), digest_size=_DIGEST).digest()


# How code reads the environment: os.environ[...], os.environ.get(...), os.getenv(...), "X" in os.environ.
_ENVIRON_READERS = frozenset({"environ", "environb", "getenv", "getenvb"})
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def environment_reads(cell: ParsedCell, values: Iterable[object]) -> list[tuple[str, str | None]]:
    """The kernel's environment variables the body, or a notebook function it is given, reads by name, with
    their values now (None: unset). The local pool's workers follow the kernel's variables, so a body reading
    ``os.environ["SCALE"]`` gave another value once the notebook set it, and ``--cache`` reused the old one.
    A variable counts when the code reads the environment (``environ``, ``getenv``) and names it in a string
    constant; a name built at run time (``f"DIR_{x}"``) is not seen."""
    names = set(_body_environment_names(cell))
    for value in values:
        code = getattr(value, "__code__", None)
        if isinstance(code, types.CodeType):
            names.update(_code_environment_names(code))
    return [(name, os.environ.get(name)) for name in sorted(names)]


@functools.lru_cache(maxsize=64)
def _body_environment_names(cell: ParsedCell) -> tuple[str, ...]:
    """(Once per cell: parse_cell gives a cell run again the same ParsedCell.)"""
    reads, names = False, set()
    for node in ast.walk(cell.body_tree):
        if isinstance(node, ast.Attribute) and node.attr in _ENVIRON_READERS:
            reads = True
        elif isinstance(node, ast.Name) and node.id in _ENVIRON_READERS:
            reads = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _VARIABLE_NAME.match(node.value):
            names.add(node.value)
    return tuple(sorted(names)) if reads else ()


def _code_environment_names(code: types.CodeType) -> set[str]:
    """The names a function's code reads from the environment (its nested functions' too)."""
    nested = [const for const in code.co_consts if isinstance(const, types.CodeType)]
    names: set[str] = set()
    for inner in nested:
        names |= _code_environment_names(inner)
    if _ENVIRON_READERS.intersection(code.co_names):
        names.update(c for c in code.co_consts if isinstance(c, str) and _VARIABLE_NAME.match(c))
    return names


def iteration_keys(
    request: RunRequest,
    items: Sequence[Any],
    ns_digest: bytes | None = None,
    files: Sequence[bytes | None] | None = None,
) -> list[bytes | None]:
    """The key of every iteration (see the module's docstring for what is in it). ``files``: each
    iteration's ``--inputs`` as ``data.input_signatures`` gives them (None for an iteration whose
    inputs the key cannot see: it has no key, and is never reused)."""
    cell, options = request.cell, request.options
    ns_digest = namespace_digest(request, items) if ns_digest is None else ns_digest
    common = hashlib.blake2b(digest_size=_DIGEST)
    for part in (
        FORMAT_TAG,
        cell.target_source.encode(),
        cell.body.encode(),
        ns_digest,
        repr(sorted(options.gather)).encode(),
        repr(options.seed).encode(),
        sys.version.split()[0].encode(),
    ):
        common.update(len(part).to_bytes(8, "big") + part)
    settings = capture_mod.interpreter_settings()
    # The notebook's own decimal precision and rounding (other digits), and its pandas options that change values
    # (future.*, mode.*, compute.*: other dtypes, other results; not how frames print), in the key only when set.
    pandas = {k: v for k, v in (settings.get("pandas") or {}).items() if not k.startswith(_PRESENTATION)}
    for tag, chosen in (("", settings.get("decimal")), ("pandas:", pandas or None)):
        if chosen is not None:
            part = f"{tag}{sorted(chosen.items())!r}".encode()
            common.update(len(part).to_bytes(8, "big") + part)
    seeded = options.seed is not None
    keys: list[bytes | None] = []
    for i, item in enumerate(items):
        if files is not None and files[i] is None:
            keys.append(None)
            continue
        h = common.copy()
        h.update(content_digest(item))
        if files is not None:
            h.update(files[i])  # type: ignore[arg-type]
        if seeded:
            h.update(i.to_bytes(8, "big"))
        keys.append(h.digest())
    return keys


def max_bytes() -> int:
    """The cache_max_bytes setting (config files, AZPAR_CACHE_MAX_BYTES)."""
    try:
        value = config.load_settings()["cache_max_bytes"]
    except config.ConfigError:
        value = None
    return int(value) if value else index.DEFAULT_MAX_BYTES


@dataclass
class Plan:
    """What the cache gives one run: its keys, the iterations still to compute, and a
    holder Job with the reused values at this run's indices (None when nothing is reused)."""

    keys: list[bytes | None]  # None: an iteration the cache cannot key (see iteration_keys)
    todo: list[int]
    holder: Job | None = None
    reused: dict[int, tuple[Any, dict[str, Any] | None]] = field(default_factory=dict)
    # With --outputs: each reused iteration's earlier job's outputs plan and its index there (data.FilesReport.reuse).
    outputs_from: dict[int, tuple[data_mod.DataPlan, int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.reused)

    def record(self, job: Job, recorder: jobstore.JobRecorder) -> None:
        """Write the reused values into the new job's records (one result record, re-encoded
        as the worker encodes), and index the job's keys (now: a run started as soon as this
        one is seen done must find it; its failed or unfinished iterations are simply misses)."""
        job.from_cache = self.count
        if self.reused:
            indices = sorted(self.reused)
            values = wire.dumps([self.reused[i][0] for i in indices])
            gathered = None
            if job.options.gather:
                gathered = wire.dumps([self.reused[i][1] or {} for i in indices])
            recorder.task_result(
                jobstore.REUSED_TASK,
                indices,
                {
                    "indices": indices,
                    "values": ("all", *values),
                    "gathered": ("all", *gathered) if gathered else None,
                    "failed": {},
                    "outputs": {},
                },
            )
        try:
            index.remember(job.id, {i: key for i, key in enumerate(self.keys) if key is not None}, max_bytes())
        except OSError as exc:  # the job is fine; only its later reuse is lost
            print(f"azpar: warning: the cache could not index job {job.id}: {exc}", file=sys.stderr)


def plan(request: RunRequest, items: list, files: Sequence[bytes | None] | None = None) -> Plan:
    """Look every iteration up; load the values found (a value this kernel cannot load, or a
    failed iteration, is not reused: it runs again). ``files``: see ``iteration_keys``."""
    keys = iteration_keys(request, items, files=files)
    keyed = [i for i, key in enumerate(keys) if key is not None]
    found = index.lookup([keys[i] for i in keyed])  # type: ignore[misc]
    candidates = {keyed[position]: where for position, where in found.items()}
    reused: dict[int, tuple[Any, dict[str, Any] | None]] = {}
    outputs_from: dict[int, tuple[data_mod.DataPlan, int]] = {}
    gather = tuple(request.options.gather)
    tried: set[str] = set()
    while True:  # the newest job holding each key first; where it failed (or is unloadable), the next
        by_job: dict[str, list[tuple[int, int]]] = {}
        for i, where in candidates.items():
            if i not in reused:
                for job_id, j in where:
                    if job_id not in tried:
                        by_job.setdefault(job_id, []).append((i, j))
                        break
        if not by_job:
            break
        job_id, pairs = max(by_job.items(), key=lambda kv: len(kv[1]))
        tried.add(job_id)
        earlier = None
        if request.options.outputs:
            earlier = _earlier_outputs(job_id, request.options.outputs, request.options.outputs_to)
            if earlier is None:  # its files are not there to bring back: the iterations run again
                continue
        try:
            values = index.stored_values(job_id, {j for _, j in pairs}, gather)
        except (OSError, ValueError, jobstore.StoreError, KeyError):
            continue
        for i, j in pairs:
            if j in values:
                reused[i] = values[j]
                if earlier is not None:
                    outputs_from[i] = (earlier, j)
    todo = [i for i in range(len(items)) if i not in reused]
    holder = None
    if reused:
        holder = Job("cache", items, request.options, backend_name="cache")
        ordered = sorted(reused)
        gathered: dict[str, Sequence[Any]] | None = (
            {name: [(reused[i][1] or {}).get(name) for i in ordered] for name in gather} if gather else None
        )
        holder.restore(ordered, [reused[i][0] for i in ordered], {}, {}, gathered)
    return Plan(keys, todo, holder, reused, outputs_from)


def _earlier_outputs(job_id: str, outputs: Sequence[str], outputs_to: str | None) -> data_mod.DataPlan | None:
    """Where job ``job_id`` put its ``--outputs``, when they can stand for this run's (``outputs`` to
    ``outputs_to``): it brought back every one of these patterns, into a folder on this machine that is
    still there, and this run's go to a folder too (the files are linked across, data.FilesReport.reuse).
    Else None, and its values are not reused: a value without the files its iteration wrote left this
    run's outputs folder short of them (a first run without --outputs, or whose folder was deleted, gave
    later runs no files at all; blobs are not copied across)."""
    if (outputs_to or "").startswith(data_mod.BLOB_SCHEME):
        return None
    try:
        manifest = jobstore.read_manifest(job_id)
    except (KeyError, OSError, jobstore.StoreError):
        return None
    found = data_mod.outputs_plan(manifest.get("options") or {}, manifest.get("cwd") or "", job_id)
    if found is None or found.dest_is_blob or not set(map(data_mod.literal_spec, outputs)) <= set(found.outputs):
        return None
    return found if os.path.isdir(found.local_dest()) else None

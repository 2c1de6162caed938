"""Files in and out of iterations: ``--inputs``, ``--outputs`` and ``--outputs-to``.

Backend-neutral: this module turns the user's specs into a plan (which local files and
which blob paths every iteration sees, and where outputs go) before anything is submitted,
and keeps the per-iteration report of what came back. Backends decide how the bytes move:
the local pool links the original files in place, Azure stages them as Batch resource files.

Semantics (also in the README):

- Every iteration runs in its own empty working directory when ``--inputs`` or
  ``--outputs`` is given. Inputs appear under ``inputs/`` in it, with the layout they were
  given in: a path relative to the notebook's folder keeps that relative path
  (``data/part-1.csv`` -> ``inputs/data/part-1.csv``), an absolute path outside it keeps its
  path without the leading slash, and ``az://container/path`` becomes
  ``inputs/container/path``. A folder brings every file below it; globs (``*``, ``?``,
  ``[..]``, ``**``) bring their matches.
- A spec holding ``{name}`` placeholders is per-iteration: ``name`` must be a loop target
  name (``for a, b in ...`` gives ``{a}`` and ``{b}``), the item is formatted in
  (``str.format`` rules: ``{row[0]}``, ``{x:03d}``), and each iteration gets only its own
  files.
- ``--outputs GLOB``: regular files matching GLOB in an iteration's working directory (never
  those under ``inputs/``, never through a link leading out of it: such links are reported,
  and what they point to is left alone) come back to ``<dest>/<job id>/<iteration>/<path>``, where ``dest`` is
  ``azpar_outputs`` beside the notebook unless ``--outputs-to`` names another folder or an
  ``az://container/prefix``. An output pattern takes no placeholder: the working directory is the
  iteration's own, so a glob already takes only its files.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import string
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import worker as wire
from ..errors import DataError
from ..jobs.text import short_repr

logger = logging.getLogger(__name__)
BLOB_SCHEME = "az://"
INPUTS_DIR = "inputs"  # where inputs appear in an iteration's working directory
DEFAULT_DEST = "azpar_outputs"
_GLOB_CHARS = re.compile(r"[*?\[]")
_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


@dataclass(frozen=True)
class LocalFile:
    """A local file an iteration reads: ``rel`` under ``inputs/``, ``path`` on this machine."""

    rel: str
    path: str
    size: int


@dataclass(frozen=True)
class BlobSpec:
    """An ``az://container/path`` input, listed by the Azure backend (it holds the
    credentials): an exact blob, a folder (every blob below ``path/``) or a glob."""

    text: str
    container: str
    path: str

    def matches(self, names: Sequence[str]) -> list[str]:
        """The blob names of ``names`` this spec selects."""
        if _GLOB_CHARS.search(self.path):
            rx = wire.glob_regex(self.path, case_sensitive=True)
            return [n for n in names if rx.fullmatch(n)]
        if self.path in names:
            return [self.path]
        folder = self.path.rstrip("/") + "/" if self.path else ""
        return [n for n in names if n.startswith(folder)]

    @property
    def list_prefix(self) -> str:
        """The fixed part of ``path``, for a listing call."""
        m = _GLOB_CHARS.search(self.path)
        return self.path[: m.start()] if m else self.path


@dataclass
class DataPlan:
    """What a job's iterations read and write; built by :func:`plan` before submission."""

    shared_files: list[LocalFile] = field(default_factory=list)
    shared_blobs: list[BlobSpec] = field(default_factory=list)
    item_files: dict[int, list[LocalFile]] = field(default_factory=dict)
    item_blobs: dict[int, list[BlobSpec]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    dest: str = ""  # absolute local folder, or az://container/prefix
    job_id: str = ""
    blob_names: dict[str, list[str]] = field(default_factory=dict)  # az:// spec -> blobs (set by the backend)

    @property
    def dest_is_blob(self) -> bool:
        return self.dest.startswith(BLOB_SCHEME)

    @property
    def has_blobs(self) -> bool:
        return bool(self.shared_blobs or any(self.item_blobs.values()))

    def local_dest(self, index: int | None = None) -> str:
        """``<dest>/<job id>`` (or one iteration's folder in it), on this machine."""
        base = os.path.join(self.dest, self.job_id)
        return base if index is None else os.path.join(base, str(index))

    def worker_spec(self, shared_rels: Sequence[str]) -> dict:
        """The job-level part the worker reads from the envelope."""
        return {"shared": sorted(set(shared_rels)), "outputs": list(self.outputs)}


def blob_path(text: str) -> tuple[str, str]:
    """Split ``az://container/path`` into (container, path); DataError when malformed or
    when the path has a ``..`` segment (it would name a file outside the folder it is
    brought to, and services resolve such segments differently)."""
    rest = text[len(BLOB_SCHEME) :]
    container, _, path = rest.partition("/")
    if not _CONTAINER.match(container or ""):
        raise DataError(
            f"{text!r} does not name a blob container: expected az://CONTAINER/PATH with a container "
            "name of 3-63 lowercase letters, digits and single hyphens."
        )
    if has_dot_dot(path):
        raise DataError(
            f"{text!r} has a '..' segment: az:// paths name blobs as they are, and a '..' would lead "
            "outside the folder the blob is brought to. Write the path without it."
        )
    return container, path


def has_dot_dot(name: str) -> bool:
    """Whether a blob name or relative path has a ``..`` segment (between slashes or
    backslashes, which Windows reads as separators too)."""
    return ".." in re.split(r"[/\\]", name)


def path_below(folder: str, rel: str, what: str) -> str:
    """The local path of ``rel`` (a blob name's tail, an output's path) below ``folder``,
    empty segments dropped (a leading slash stays below too); DataError, naming ``what``,
    when it would land anywhere else (a ``..`` segment, a drive)."""
    parts = [p for p in re.split(r"[/\\]" if os.sep == "\\" else "/", rel) if p not in ("", ".")]
    base = os.path.abspath(folder)
    full = os.path.abspath(os.path.join(base, *parts)) if parts else base
    if (
        has_dot_dot(rel)
        or full == base
        or os.path.commonpath([base, full]) != base
        or any(os.path.splitdrive(p)[0] for p in parts)
    ):
        raise DataError(
            f"{what} has a '..' segment or is not a relative path: written below {folder} it would "
            "land outside that folder, so it is refused."
        )
    return os.path.join(folder, *parts)


# --------------------------------------------------------------------------- placeholders


def placeholders(text: str) -> list[str]:
    """The root names of ``text``'s format fields (``{row[0]:>3}`` -> ``row``); [] when none."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise DataError(
            f"--inputs {text!r} has unbalanced braces ({exc}); write {{{{ and }}}} for literal braces."
        ) from None
    roots = []
    for _literal, name, _spec, _conv in parsed:
        if name is None:
            continue
        if not _FIELD.fullmatch(name):  # {i+1}, {len(x)}: format() would look up "i+1" and fail
            raise DataError(
                f"--inputs {text!r}: {{{name}}} is not a placeholder; a placeholder is a loop target name, "
                "with items or attributes and a format if need be ({i}, {row[0]}, {p.name}, {i:03d}), "
                "never an expression: loop over the values the file names need (for i in range(1, n + 1)). "
                "Write {{ and }} for literal braces. Nothing was submitted."
            )
        roots.append(re.match(r"[A-Za-z_]\w*", name).group(0))  # type: ignore[union-attr]
    return roots


# A format field's name as str.format reads it: a name, then .attributes and [keys].
_FIELD = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\[\]]*\])*")


def literal_spec(text: str) -> str:
    """A spec without placeholders, its {{ and }} read as the literal braces they stand for (as
    in a spec with placeholders, where str.format reads them so)."""
    return text.replace("{{", "{").replace("}}", "}") if "{{" in text or "}}" in text else text


class _Binder:
    """Binds the loop target to an item as the loop would (``for a, (b, c) in ...``)."""

    def __init__(self, target_source: str):
        self.code = compile(f"{target_source} = __azpar_item__", "<azpar target>", "exec")

    def __call__(self, item: Any) -> dict:
        scope: dict = {"__azpar_item__": item, "__builtins__": {}}
        exec(self.code, scope)
        scope.pop("__azpar_item__", None)
        scope.pop("__builtins__", None)
        return scope


# --------------------------------------------------------------------------- local files


def _rel_for(path: str, folder: str) -> str:
    """Where a local file appears under ``inputs/``: relative to the notebook's folder
    when inside it, else its absolute path without the leading slash."""
    absolute = os.path.abspath(path)
    try:
        rel = os.path.relpath(absolute, folder)
    except ValueError:  # another drive (Windows)
        rel = ".."
    if rel == ".." or rel.startswith(".." + os.sep):
        rel = os.path.splitdrive(absolute)[1].lstrip(os.sep)
    return rel.replace(os.sep, "/")


def _walk(folder: str) -> list[str]:
    """The files below ``folder``, through links (an input folder may be a tree of links),
    but never into a folder already on the way down: a link cycle (``loop -> .``) would
    otherwise repeat the whole tree some forty times, until the OS's link limit."""
    found = []
    chains = {folder: frozenset([os.path.realpath(folder)])}
    for root, dirs, files in os.walk(folder, followlinks=True):
        chain = chains.pop(root, frozenset())
        keep = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if real not in chain:
                keep.append(name)
                chains[os.path.join(root, name)] = chain | {real}
        dirs[:] = keep
        found.extend(os.path.join(root, name) for name in sorted(files))
    return found


def _drop_cycles(hits: list[str], pattern: str) -> list[str]:
    """The matches of the glob ``pattern`` that do not go down, below its fixed part, into a
    folder they are already in: glob's ``**`` follows a link cycle such as ``loop -> .`` to
    the OS's link limit. (A link in the fixed part is the user's own way in and is kept,
    wherever it points.) Each distinct folder on the way is resolved once."""
    parts = os.path.abspath(pattern).split(os.sep)
    fixed = next(i for i, part in enumerate(parts + ["*"]) if _GLOB_CHARS.search(part))
    base = os.sep.join(parts[:fixed]) or os.sep
    real: dict[str, str] = {}

    def resolved(path: str) -> str:
        if path not in real:
            real[path] = os.path.realpath(path)
        return real[path]

    def cycles(path: str) -> bool:
        seen = set()
        head = os.path.abspath(path)
        while len(head) >= len(base):
            where = resolved(head)
            if where in seen:
                return True
            seen.add(where)
            head = os.path.dirname(head)
        return False

    return [h for h in hits if not cycles(h)]


def resolve_local(text: str, folder: str, label: str | None = None) -> list[LocalFile]:
    """The files a local spec names (a file, a folder, a glob); DataError when none.
    ``label`` names the spec in messages (default ``--inputs 'TEXT'``)."""
    label = label or f"--inputs {text!r}"
    expanded = os.path.expanduser(text)
    full = expanded if os.path.isabs(expanded) else os.path.join(folder, expanded)
    if _GLOB_CHARS.search(expanded):
        hits = _drop_cycles(sorted(glob.glob(full, recursive=True)), full)
    else:
        hits = [full] if os.path.exists(full) else []
    files: list[str] = []
    for hit in hits:
        files.extend(_walk(hit) if os.path.isdir(hit) else [hit])
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        kind = (
            "matches no file"
            if _GLOB_CHARS.search(expanded)
            else ("is an empty folder" if os.path.isdir(full) else "does not exist")
        )
        raise DataError(f"{label} {kind} (looked for {full}). Nothing was submitted.")
    out = []
    for f in files:
        try:
            size = os.path.getsize(f)
        except OSError as exc:
            raise DataError(f"{label}: {f} cannot be read: {exc}. Nothing was submitted.") from None
        if not os.access(f, os.R_OK):
            raise DataError(f"{label}: {f} is not readable. Nothing was submitted.")
        out.append(LocalFile(_rel_for(f, folder), os.path.abspath(f), size))
    return out


def _check_unique(files: list[LocalFile], where: str) -> list[LocalFile]:
    seen: dict[str, LocalFile] = {}
    for f in files:
        other = seen.get(f.rel)
        if other is not None and other.path != f.path:
            raise DataError(f"--inputs: {other.path} and {f.path} would both appear as {INPUTS_DIR}/{f.rel}{where}.")
        seen[f.rel] = f
    return list(seen.values())


# --------------------------------------------------------------------------- the plan


def output_pattern(pattern: str) -> str:
    """An ``--outputs`` pattern as the workers match it, its ``{{`` and ``}}`` read as literal braces, as
    in every spec; refused when it leads out of an iteration's working directory, into its inputs, or
    holds a ``{name}`` placeholder. (``--inputs`` formats placeholders per iteration, so users wrote
    ``--outputs 'out/o{i}.txt'`` too: the workers matched it as written, found nothing, and the files the
    body wrote stayed in its working directory, removed with it. Each iteration has a working directory
    of its own, so a glob takes only its own files already.)"""
    norm = pattern.replace("\\", "/")
    if not norm or norm.startswith("/") or ".." in norm.split("/") or norm.startswith(BLOB_SCHEME):
        raise DataError(
            f"--outputs {pattern!r} must be a relative path or glob inside the iteration's working "
            "directory (like *.png or results/*.csv); --outputs-to says where outputs go. Nothing was submitted."
        )
    if norm.split("/")[0] == INPUTS_DIR:
        raise DataError(
            f"--outputs {pattern!r} points into {INPUTS_DIR}/, where inputs appear: outputs are the "
            "files the body writes. Nothing was submitted."
        )
    try:
        fields = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise DataError(
            f"--outputs {pattern!r} has unbalanced braces ({exc}); write {{{{ and }}}} for literal braces. "
            "Nothing was submitted."
        ) from None
    named = [name for _literal, name, _spec, _conv in fields if name is not None]
    if not named:
        return literal_spec(pattern)

    def written(field_as) -> str:  # the pattern again, each field replaced by field_as(its name)
        return "".join(
            literal.replace("{", "{{").replace("}", "}}") + (field_as(name) if name is not None else "")
            for literal, name, _spec, _conv in fields
        )

    if len(named) == 1 and "," in named[0]:  # a shell's *.{png,jpg}: not glob syntax in Python either
        each = " ".join(f"--outputs {written(lambda _n, c=choice: c)!r}" for choice in named[0].split(","))
        raise DataError(
            f"--outputs {pattern!r}: braces are not glob syntax here (a shell's alternatives); give --outputs "
            f"once for each: {each}. Write {{{{ and }}}} for literal braces. Nothing was submitted."
        )
    raise DataError(
        f"--outputs {pattern!r} holds {', '.join('{' + n + '}' for n in named)}, but --outputs takes a glob, "
        "not a per-iteration name: each iteration runs in a working directory of its own, and what matches "
        "there comes back under its own iteration's folder, so a glob takes each iteration's own files: "
        f"--outputs {written(lambda _n: '*')!r}. Write {{{{ and }}}} for literal braces. Nothing was submitted."
    )


def resolve_dest(outputs_to: str | None, folder: str) -> str:
    """Where outputs go: ``az://container/prefix`` as given, else an absolute folder
    (``azpar_outputs`` beside the notebook by default)."""
    dest = outputs_to or DEFAULT_DEST
    if dest.startswith(BLOB_SCHEME):
        blob_path(dest)
        return dest.rstrip("/")
    expanded = os.path.expanduser(dest)
    return os.path.abspath(expanded if os.path.isabs(expanded) else os.path.join(folder, expanded))


def outputs_plan(options: Mapping[str, Any], folder: str, job_id: str) -> DataPlan | None:
    """The outputs part of a stored job's plan, rebuilt from its manifest's options (a
    backend following the job after a kernel restart still brings its outputs back)."""
    outputs = tuple(map(literal_spec, options.get("outputs") or ()))
    if not outputs:
        return None
    return DataPlan(outputs=outputs, dest=resolve_dest(options.get("outputs_to"), folder), job_id=job_id)


def plan(
    inputs: Sequence[str],
    outputs: Sequence[str],
    outputs_to: str | None,
    *,
    target_source: str,
    target_names: Sequence[str],
    items: Sequence[Any],
    folder: str,
    indices: Sequence[int] | None = None,
    blobs_ok: bool = False,
    backend: str = "",
) -> DataPlan:
    """Check and resolve the specs for ``items`` (only ``indices`` when given): every local
    path exists, placeholders are loop target names, per-iteration specs format for every
    item. Raises DataError naming the spec (and the iteration) at the first problem."""
    result = DataPlan(outputs=tuple(map(output_pattern, outputs)))
    result.dest = resolve_dest(outputs_to, folder)
    if result.dest_is_blob and not blobs_ok:
        raise DataError(
            f"--outputs-to {outputs_to!r}: az:// destinations need the Azure backend (a profile); this "
            f"cell runs on the {backend} backend."
        )
    if outputs_to and not outputs:
        raise DataError("--outputs-to says where outputs go; give --outputs GLOB to say which files.")
    if outputs and not result.dest_is_blob and os.path.exists(result.dest) and not os.path.isdir(result.dest):
        said = f"--outputs-to {outputs_to!r}" if outputs_to else f"the outputs folder {DEFAULT_DEST!r} (the default)"
        raise DataError(
            f"{said} is a file ({result.dest}): outputs go into a folder, created when missing; name another "
            "with --outputs-to. Nothing was submitted."
        )
    shared_files: list[LocalFile] = []
    per_item: list[str] = []
    for text in inputs:
        if not text.strip():  # it named the notebook's whole folder, linked into every iteration
            raise DataError(
                f"--inputs {text!r} names no file: give a file, a folder or a glob (the folder the notebook "
                "runs in is '.'). Nothing was submitted."
            )
        names = placeholders(text)
        if names:
            unknown = [n for n in names if n not in target_names]
            if unknown:
                allowed = ", ".join("{" + n + "}" for n in target_names) or "none (the loop target binds no name)"
                raise DataError(
                    f"--inputs {text!r} uses {', '.join('{' + n + '}' for n in unknown)}, which is not a "
                    f"loop target name; placeholders can be {allowed}. Write {{{{ and }}}} for literal braces "
                    "in a file name. Nothing was submitted."
                )
            per_item.append(text)
            continue
        text = literal_spec(text)
        if text.startswith(BLOB_SCHEME):
            if not blobs_ok:
                raise DataError(
                    f"--inputs {text!r}: az:// inputs need the Azure backend (a profile); this cell "
                    f"runs on the {backend} backend."
                )
            result.shared_blobs.append(BlobSpec(text, *blob_path(text)))
        else:
            shared_files.extend(resolve_local(text, folder))
    result.shared_files = _check_unique(shared_files, "")
    if per_item:
        binder = _Binder(target_source)
        todo = range(len(items)) if indices is None else indices
        for index in todo:
            try:
                bound = binder(items[index])
            except Exception as exc:
                raise DataError(
                    f"--inputs {per_item[0]!r}: iteration {index} cannot bind the loop target "
                    f"`{target_source}` to its item {short_repr(items[index], 60)} "
                    f"({type(exc).__name__}: {exc})."
                ) from None
            files: list[LocalFile] = []
            blobs: list[BlobSpec] = []
            for text in per_item:
                try:
                    formatted = text.format_map(bound)
                except Exception as exc:
                    raise DataError(
                        f"--inputs {text!r} cannot be formatted for iteration {index} (item "
                        f"{short_repr(items[index], 60)}): {type(exc).__name__}: {exc}."
                    ) from None
                if formatted.startswith(BLOB_SCHEME):
                    if not blobs_ok:
                        raise DataError(
                            f"--inputs {text!r}: az:// inputs need the Azure backend (a profile); this "
                            f"cell runs on the {backend} backend."
                        )
                    blobs.append(BlobSpec(formatted, *blob_path(formatted)))
                    continue
                files.extend(
                    resolve_local(formatted, folder, f"--inputs {text!r} for iteration {index} ({formatted!r})")
                )
            if files:
                result.item_files[index] = _check_unique(files, f" in iteration {index}")
            if blobs:
                result.item_blobs[index] = blobs
    return result


def input_signatures(found: DataPlan, count: int) -> list[bytes | None]:
    """What ``--cache`` keys each of ``count`` iterations' inputs by: the path under ``inputs/``,
    size and modification time of every file it gets (the shared ones and its own), so that a file
    edited since an earlier run makes its iterations run again, as make would. None for an iteration
    reading ``az://`` inputs: a blob's content is not known before it is downloaded."""
    if found.shared_blobs:
        return [None] * count
    shared = _files_signature(found.shared_files)
    return [
        None if index in found.item_blobs else shared + _files_signature(found.item_files.get(index, ()))
        for index in range(count)
    ]


def _files_signature(files: Sequence[LocalFile]) -> bytes:
    parts = []
    for f in sorted(files, key=lambda f: f.rel):
        try:
            st = os.stat(f.path)
            parts.append((f.rel, st.st_size, st.st_mtime_ns))
        except OSError:  # gone since it was resolved: the run itself says so
            parts.append((f.rel, -1, -1))
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


# --------------------------------------------------------------------------- the report


class FilesReport:
    """What came back per iteration, fed by the engine from each task's result: the files
    each iteration produced, the output patterns that matched nothing (warned about once
    per pattern, not once per iteration), and the links leading out of a working directory
    that a pattern selected and the worker left alone (one warning for all of them)."""

    def __init__(self, data_plan: DataPlan):
        self.plan = data_plan
        self.produced: dict[int, list[str]] = {}
        # A rerun's kept iterations: their outputs stay in the earlier job's folder (adopt).
        self.kept: dict[int, list[str]] = {}
        self.kept_location = ""
        self.from_cache = 0  # iterations whose files --cache linked in from an earlier job (reuse)
        self.not_reused: dict[int, str] = {}  # ... and those it could not: where their files are, and why
        self.unmatched: dict[str, list[int]] = {}
        self.skipped: dict[str, tuple[str, list[int]]] = {}  # link rel -> (where it points, iterations)
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def add(self, record: Mapping[str, Any] | None) -> None:
        if not record:
            return
        with self._lock:
            for index, rels in (record.get("produced") or {}).items():
                self.produced[int(index)] = list(rels)
                logger.debug("iteration %s: %d output files moved to %s", index, len(rels), self.location)
            for index, patterns in (record.get("unmatched") or {}).items():
                for pattern in patterns:
                    found = self.unmatched.setdefault(pattern, [])
                    if int(index) not in found:
                        found.append(int(index))
            for index, links in (record.get("skipped") or {}).items():
                for rel, target in links:
                    seen = self.skipped.setdefault(rel, (target, []))[1]
                    if int(index) not in seen:
                        seen.append(int(index))

    def adopt(self, base: FilesReport | None, base_id: str, indices: Sequence[int]) -> None:
        """The iterations ``indices`` that a rerun (``%azpar rerun --failed``) keeps from job ``base_id``:
        their outputs stay in that job's folder, where ``files`` finds them and the cell's line names
        them. ``base``: that job's report when this process ran it; else its folder is listed (on this
        machine: an ``az://`` destination's blobs are only named). A rerun's report held only what the
        rerun made, so ``files(i)`` of a kept iteration was [] and the cell did not say where they were."""
        base_plan = DataPlan(outputs=self.plan.outputs, dest=self.plan.dest, job_id=base_id)
        kept: dict[int, list[str]] = {}
        for index in indices:
            if base is not None:
                paths = base.files(index)
            elif base_plan.dest_is_blob:
                paths = []
            else:
                top = base_plan.local_dest(index)
                paths = _walk(top) if os.path.isdir(top) else []
            if paths:
                kept[index] = paths
        with self._lock:
            self.kept.update(kept)
            self.kept_location = _location(base_plan)

    def reuse(self, earlier: Mapping[int, tuple[DataPlan, int]]) -> None:
        """``--cache``: the files of each reused iteration ``i`` (``earlier[i]``: the job it came from,
        and its index there) are linked into this job's folder, as if it had made them, so the folder
        holds every iteration's, as the job's records hold every value. (They were in the earlier jobs'
        folders, named nowhere.) A hard link costs no space and outlives the earlier folder; a copy
        where links cannot be made. Both folders are on this machine (cache._earlier_outputs)."""
        for index, (found, before) in sorted(earlier.items()):
            top = found.local_dest(before)
            try:
                rels = [os.path.relpath(path, top) for path in _walk(top)] if os.path.isdir(top) else []
                for rel in rels:
                    target = os.path.join(self.plan.local_dest(index), rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    try:
                        os.link(os.path.join(top, rel), target)
                    except OSError:
                        shutil.copy2(os.path.join(top, rel), target)
            except OSError as exc:  # the value is the job's all the same: said once, with where the files are
                with self._lock:
                    self.not_reused[index] = f"{top}: {exc}"
                continue
            with self._lock:
                if rels:
                    self.produced[index] = rels
                self.from_cache += 1 if rels else 0

    @property
    def location(self) -> str:
        return _location(self.plan)

    def files(self, index: int) -> list[str]:
        """Where iteration ``index``'s outputs are (local paths, or az:// paths)."""
        with self._lock:
            rels = list(self.produced.get(index, ()))
            if not rels and index in self.kept:
                return list(self.kept[index])
        if self.plan.dest_is_blob:
            return [f"{self.plan.dest}/{self.plan.job_id}/{index}/{rel}" for rel in rels]
        return [os.path.join(self.plan.local_dest(index), rel) for rel in rels]

    def warnings(self, *, new_only: bool = True) -> list[str]:
        """One line per output pattern that matched nothing in some iterations, and one for
        all the links the worker skipped; with ``new_only`` each is reported once per job,
        however often it is asked."""
        lines = []
        with self._lock:
            for pattern, indices in self.unmatched.items():
                if new_only and pattern in self._warned:
                    continue
                self._warned.add(pattern)
                lines.append(f"--outputs {pattern!r} matched no file in {len(indices)} {_iterations(indices)}")
            if self.not_reused and not (new_only and NOT_REUSED_KEY in self._warned):
                self._warned.add(NOT_REUSED_KEY)
                first = next(iter(self.not_reused.values()))
                lines.append(
                    f"--cache could not bring the outputs of {len(self.not_reused)} reused "
                    f"{_iterations(list(self.not_reused))} into {self.location}; they stay in the earlier jobs' "
                    f"folders ({first})"
                )
            if self.skipped and not (new_only and SKIPPED_KEY in self._warned):
                self._warned.add(SKIPPED_KEY)
                lines.append(self._skipped_line())
        return lines

    def _skipped_line(self) -> str:
        links = sorted(self.skipped.items())
        shown = "; ".join(
            f"{rel} (a link to {target}) in {len(indices)} {_iterations(indices)}"
            for rel, (target, indices) in links[:SKIPPED_SHOWN]
        )
        more = f"; and {len(links) - SKIPPED_SHOWN} more" if len(links) > SKIPPED_SHOWN else ""
        return (
            f"--outputs skipped {len(links)} link{'s' if len(links) != 1 else ''} leading outside the "
            f"iteration's working directory: {shown}{more}. Outputs are files inside it; what the links point "
            "to was left untouched (write the files themselves, or copy them in, to bring them back)."
        )


def _location(found: DataPlan) -> str:
    """The folder (or ``az://`` prefix) where the job of ``found`` puts its outputs."""
    return f"{found.dest}/{found.job_id}" if found.dest_is_blob else found.local_dest()


SKIPPED_KEY = "\0skipped"  # FilesReport._warned: the skipped-links line was shown
NOT_REUSED_KEY = "\0not reused"  # ... and the line on outputs --cache could not bring
SKIPPED_SHOWN = 5  # links named in that line


def _iterations(indices: Sequence[int]) -> str:
    """``3 iterations (0, 2, 4)``'s tail: the word and the first ten indices."""
    shown = ", ".join(map(str, sorted(indices)[:10])) + (", ..." if len(indices) > 10 else "")
    return f"iteration{'s' if len(indices) != 1 else ''} ({shown})"

"""The ``--cache`` index: which stored job holds the value of which iteration key.

The values themselves stay where every job keeps them, in the job's ``records.azs``; the
cache only adds, per job that ran with ``--cache``, one small file naming the keys of its
iterations (only the values of succeeded ones are ever reused: ``stored_values``). So a value
is never stored twice, a new kernel finds it (the index is on disk, under the store root),
and attaching a job that took values from the cache shows them all (the engine writes the
reused values into the new job's own records).

Layout, under the store root::

    cache/<job id>.keys   a magic line, then per iteration 16 bytes of key and 4 of its index
                          in that job (big-endian)                                    (0600)

Why this shape: one file per job, written once when the job is submitted (so a run started
right after it finds it), with no lock (two kernels never write the same file), and dropped
whole (``clear``, the size bound, or the job deleted). Lookups read every index file, newest
first: with the size bound that is a few MB at most, and each file is parsed once per
process while it is unchanged.

The bound (``cache_max_bytes``) is on the bytes of the job records the index points at:
past it, the oldest jobs leave the index (they stay in the store, in ``%azpar jobs``, until
deleted; deleting a job drops its entries too).
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..jobs.results import decode_each
from .layout import FILE_MAGIC, MANIFEST, RECORDS, ensure_root, store_root, valid_id
from .records import create_private, indices_of, read_file, walk
from .writer import flush

__all__ = [
    "CACHE_DIR",
    "KEY_SIZE",
    "DEFAULT_MAX_BYTES",
    "remember",
    "lookup",
    "stored_values",
    "clear",
    "enforce_bound",
    "indexed_jobs",
]

CACHE_DIR = "cache"
KEY_SIZE = 16
DEFAULT_MAX_BYTES = 2 * 1024**3  # the cache_max_bytes setting's default: 2 GiB of job records
_MAGIC = b"AZPARC1\n"
_ENTRY = struct.Struct(f">{KEY_SIZE}sI")
_SUFFIX = ".keys"
_STARTING = 300.0  # seconds an indexed job may have no records yet (its writer has not run) before it counts as deleted

_parsed: dict[str, tuple[tuple[int, int], dict[bytes, int]]] = {}  # path -> (stamp, key -> index)
_lock = threading.Lock()


def _folder(root: Path | None = None) -> Path:
    return (root or store_root()) / CACHE_DIR


def remember(job_id: str, keys: Mapping[int, bytes], max_bytes: int | None = None) -> None:
    """Index the iterations of ``job_id`` (index -> key), then apply the bound."""
    if not keys or not valid_id(job_id):
        return
    root = ensure_root()
    folder = _folder(root)
    folder.mkdir(mode=0o700, exist_ok=True)
    body = b"".join(_ENTRY.pack(key, index) for index, key in sorted(keys.items()))
    target = folder / (job_id + _SUFFIX)
    tmp = folder / f".{job_id}.{os.getpid()}.{threading.get_ident()}.tmp"
    create_private(tmp, _MAGIC + body)
    os.replace(tmp, target)
    enforce_bound(DEFAULT_MAX_BYTES if max_bytes is None else max_bytes, keep=job_id)


def indexed_jobs(root: Path | None = None) -> list[tuple[float, str]]:
    """(index file's time, job id) of every indexed job, newest first."""
    folder = _folder(root)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.endswith(_SUFFIX) or not valid_id(name[: -len(_SUFFIX)]):
            continue
        try:
            found.append((os.stat(folder / name).st_mtime, name[: -len(_SUFFIX)]))
        except FileNotFoundError:
            continue
    return sorted(found, reverse=True)


def _drop(job_id: str, root: Path | None = None) -> None:
    path = _folder(root) / (job_id + _SUFFIX)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    with _lock:
        _parsed.pop(str(path), None)


def enforce_bound(max_bytes: int, keep: str | None = None) -> list[str]:
    """Drop the oldest indexed jobs until the records they hold fit in ``max_bytes``, and
    the entries of deleted jobs; never ``keep`` (the job just indexed). Returns the dropped."""
    root = store_root()
    dropped, total = [], 0
    for when, job_id in indexed_jobs(root):  # newest first: the oldest are the ones past the bound
        try:
            size = os.stat(root / job_id / RECORDS).st_size
        except FileNotFoundError:  # deleted, or just started (its writer creates the folder soon)
            if job_id == keep or time.time() - when < _STARTING:
                continue
            size = None
        if size is None or (job_id != keep and total + size > max_bytes):
            _drop(job_id, root)
            dropped.append(job_id)
            continue
        total += size
    return dropped


def clear() -> int:
    """Forget every cached value (the jobs stay in the store); returns how many jobs were indexed."""
    jobs = indexed_jobs()
    for _, job_id in jobs:
        _drop(job_id)
    return len(jobs)


def _entries(path: Path) -> dict[bytes, int]:
    """key -> index of one index file, parsed once while the file is unchanged."""
    info = os.stat(path)
    stamp = (info.st_mtime_ns, info.st_size)
    with _lock:
        known = _parsed.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    with open(path, "rb") as fh:
        data = fh.read()
    entries: dict[bytes, int] = {}
    if data.startswith(_MAGIC):
        body = memoryview(data)[len(_MAGIC) :]
        usable = len(body) - len(body) % _ENTRY.size
        entries = {key: index for key, index in _ENTRY.iter_unpack(body[:usable])}
    with _lock:
        _parsed[str(path)] = (stamp, entries)
    return entries


def lookup(keys: Sequence[bytes]) -> dict[int, list[tuple[str, int]]]:
    """For each position of ``keys`` found in the index: where its value may be, as (job id,
    index in that job), newest job first (the newest may have failed there, or not be done:
    the caller tries the next). Jobs whose folder is gone are skipped."""
    flush()  # this process's jobs: their folders exist once their records are written
    root = store_root()
    positions: dict[bytes, list[int]] = {}
    for pos, key in enumerate(keys):
        positions.setdefault(key, []).append(pos)
    found: dict[int, list[tuple[str, int]]] = {}
    for _, job_id in indexed_jobs(root):
        if not (root / job_id / MANIFEST).exists():
            continue
        try:
            entries = _entries(_folder(root) / (job_id + _SUFFIX))
        except OSError:
            continue
        small, large = (positions, entries) if len(positions) < len(entries) else (entries, positions)
        for key in small:
            if key in large:
                for pos in positions[key]:
                    found.setdefault(pos, []).append((job_id, entries[key]))
    return found


def stored_values(
    job_id: str, indices: Iterable[int], gather: Sequence[str] = ()
) -> dict[int, tuple[Any, dict[str, Any] | None]]:
    """The stored values of some succeeded iterations of a job: index -> (value, gathered
    variables or None). Only the task records holding one of ``indices`` are decoded (a
    task's values are encoded together, so a wanted iteration decodes its task's others
    too, never the whole job's). An iteration whose value cannot be loaded in this process
    (its class is missing here), or that failed, is left out: the caller computes it."""
    flush()
    wanted = set(indices)
    data = read_file(store_root() / job_id / RECORDS)
    latest: dict[int, tuple[dict, memoryview, int]] = {}  # index -> its last result record and position in it
    for header, body, skip, _, _ in walk(data, len(FILE_MAGIC)) if data else ():
        kind = header.get("k")
        if kind not in ("result", "fail"):
            continue
        for pos, index in enumerate(indices_of(header)):
            if index in wanted and index not in skip:
                if kind == "fail":
                    latest.pop(index, None)
                else:
                    latest[index] = (header, body, pos)
    by_record: dict[int, list[tuple[int, int]]] = {}
    bodies: dict[int, tuple[dict, memoryview]] = {}
    for index, (header, body, pos) in latest.items():
        by_record.setdefault(id(body), []).append((index, pos))
        bodies[id(body)] = (header, body)
    found: dict[int, tuple[Any, dict[str, Any] | None]] = {}
    for key, wanted_here in by_record.items():
        header, body = bodies[key]
        try:
            record = pickle.loads(body)
            count = len(indices_of(header))
            values, problems = decode_each(record["values"], count)
            rows = None
            if gather and record.get("gathered") is not None:
                rows, bad = decode_each(record["gathered"], count)
                problems = {**bad, **problems}
        except Exception:
            continue
        failed = {int(i) for i in (record.get("failed") or {})}
        for index, pos in wanted_here:
            if index in failed or pos in problems:
                continue
            row = (rows[pos] or {}) if rows is not None else None
            found[index] = (values[pos], {name: row.get(name) for name in gather} if row is not None else None)
    return found

"""The formats of a job's files: ``records.azs``, a sequence of length-prefixed records (a small JSON header,
then a body), and ``manifest.json``, replaced atomically; the private file creation both use. Which records a
job has, and when they are written or read, is the writer's and the reader's business.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import worker as wire
from ..errors import StoreError
from .layout import FILE_MAGIC, MANIFEST, job_folder

REUSED_TASK = "cache"  # the record of the values --cache reused: not a task that ran (run/cache.py)

RECORD = struct.Struct(">IQ")  # header length, body length
# One encoder each, made once: json.dumps with any option builds a new encoder per call, and a
# job writes a header per task (a third of the job store's time for short jobs, issue 16).
_HEADER = json.JSONEncoder(separators=(",", ":"))
_MANIFEST = json.JSONEncoder(sort_keys=True, default=str)


def record(header: dict, body: bytes = b"") -> bytes:
    return _framed(_HEADER.encode(header).encode(), body)


def _framed(head: bytes, body: bytes) -> bytes:
    return RECORD.pack(len(head), len(body)) + head + body


def task_record(kind: str, task_id: str, indices: Sequence[int], field: str, value: str | int, body: bytes) -> bytes:
    """``record({"k": kind, "t": task_id, **indices_header(indices), field: value}, body)``, the
    same bytes, formatted directly when the task's iterations are a range: a job writes two such
    records per task (its items, its result), and the encoder's own work per call was most of
    the writer's time for one-iteration tasks (issue 16)."""
    if not (isinstance(indices, range) and indices.step == 1):
        return record({"k": kind, "t": task_id, **indices_header(indices), field: value}, body)
    text = value if isinstance(value, int) else _quote(value)
    head = f'{{"k":{_quote(kind)},"t":{_quote(task_id)},"r":[{indices.start},{indices.stop}],{_quote(field)}:{text}}}'
    return _framed(head.encode(), body)


_quote = json.encoder.encode_basestring_ascii  # a JSON string as the header encoder writes it (ensure_ascii)

# A record's body at least this large is written from its own memory, never copied into a joined
# buffer: a job iterating over 20 arrays of 20 MB had its items joined twice into one 400 MB buffer
# on the way to the file, its peak 1.6 GB over the kernel's (issue 16). Smaller pieces are gathered
# into one write, as before: a job of 10,000 one-iteration tasks still writes its items at once.
LARGE_PIECE = wire.OUT_OF_BAND_FRAME_MIN  # (the size write_pieces writes from its own memory)


def task_record_parts(
    kind: str, task_id: str, indices: Sequence[int], field: str, value: str | int, body: bytes
) -> list[bytes]:
    """``task_record``'s bytes as pieces for ``write_pieces``: the framing, then the body itself."""
    if len(body) < LARGE_PIECE:
        return [task_record(kind, task_id, indices, field, value, body)]
    framed = task_record(kind, task_id, indices, field, value, b"")
    head_len, _ = RECORD.unpack_from(framed)
    return [RECORD.pack(head_len, len(body)) + framed[RECORD.size :], body]


class PickledPieces:
    """A file for the pickler that keeps what it is given: the C pickler hands a large bytes
    payload to ``write`` as it is, so a record's body that holds one (a task's values blob) is
    written without a copy of it (``write_pieces``)."""

    def __init__(self) -> None:
        self.pieces: list = []
        self.size = 0

    def write(self, data) -> int:
        # The pickler's own small writes come as new bytes; a payload comes as the object it was
        # given (bytes, or a PickleBuffer of a view), which stays alive until written.
        piece = data if type(data) is bytes else memoryview(data).cast("B")
        self.pieces.append(piece)
        self.size += len(piece)
        return len(piece)


def record_parts(header: dict, pickled: PickledPieces) -> list:
    """``record(header, body)`` as pieces, the body being what a pickler wrote into ``pickled``."""
    head = _HEADER.encode(header).encode()
    return [RECORD.pack(len(head), pickled.size) + head, *pickled.pieces]


def write_pieces(fd: int, pieces: Sequence) -> None:
    """Write ``pieces`` in order: the small ones gathered into one write, each large one (LARGE_PIECE)
    from its own memory, as the pool's frames are (``worker.write_pieces``)."""
    wire.write_pieces(fd, pieces, write_all)


def indices_header(indices: Sequence[int]) -> dict:
    if isinstance(indices, range) and indices.step == 1:
        return {"r": [indices.start, indices.stop]}
    return {"l": list(indices)}


def indices_of(header: dict) -> Sequence[int]:
    if "r" in header:
        return range(*header["r"])
    return header.get("l", [])


def runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as [start, stop) runs: compact in the manifest for any failure pattern."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def from_runs(runs: Sequence[Sequence[int]] | None) -> set[int]:
    return {i for start, stop in runs or () for i in range(start, stop)}


def iter_records(data: bytes | memoryview | mmap.mmap, start: int = 0) -> Iterator[tuple[dict, memoryview, int]]:
    """(header, body, offset after the record) for each whole record from ``start``; a torn
    last record (the writer was killed mid-write) ends the sequence. Bodies are views: a
    body nobody reads costs nothing."""
    view = memoryview(data)
    offset, end = start, len(view)
    while offset + RECORD.size <= end:
        head_len, body_len = RECORD.unpack_from(view, offset)
        head_at = offset + RECORD.size
        body_at = head_at + head_len
        stop = body_at + body_len
        if stop > end:
            return
        try:
            header = json.loads(bytes(view[head_at:body_at]))
        except ValueError:
            return  # garbage after a torn write: nothing after it is trustworthy
        yield header, view[body_at:stop], stop
        offset = stop


def walk(
    data: bytes | memoryview | mmap.mmap, start: int, skip: frozenset[int] = frozenset(), base: bool = False
) -> Iterator[tuple[dict, memoryview, frozenset[int], bool, int]]:
    """Every record from ``start``, entering import records (a rerun's copy of the earlier
    job's records): (header, body, iterations whose old records no longer count, whether it
    comes from an earlier run, offset after the enclosing top-level record)."""
    for header, body, offset in iter_records(data, start):
        if header.get("k") == "import":
            inner = skip | frozenset(from_runs(header.get("skip")))
            for h, b, sk, _, _ in walk(body, 0, inner, True):
                yield h, b, sk, True, offset
        else:
            yield header, body, skip, base, offset


def read_file(path: Path) -> bytes | mmap.mmap:
    """The file's bytes, memory-mapped: records whose bodies a reader skips (values, when
    only logs or counts are wanted) are never read from disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size
        data: bytes | mmap.mmap = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
    finally:
        os.close(fd)
    if data and data[: len(FILE_MAGIC)] != FILE_MAGIC:
        raise StoreError(f"{path} is not an azpar job store file")
    return data


def create_private(path: Path, data: bytes | Sequence[bytes], *, append: bool = False) -> int | None:
    """Create ``path`` (it must not exist) 0600 with ``data`` (bytes, or pieces: ``write_pieces``);
    keep it open for appending when asked. The mode is given at creation: a umask can only take
    bits away."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if isinstance(data, bytes):
            write_all(fd, data)
        else:
            write_pieces(fd, data)
    except BaseException:
        os.close(fd)
        raise
    if append:
        return fd
    os.close(fd)
    return None


write_all = wire.write_all  # (a name of this module's own: what write_pieces and create_private write with)


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    # One line: json's C encoder is used only without ``indent``, and the pure-Python one
    # cost more than all of a short job's other store work (``python -m json.tool`` shows it).
    return _MANIFEST.encode(manifest).encode() + b"\n"


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half."""
    tmp = folder / f".{MANIFEST}.{os.getpid()}.{threading.get_ident()}.tmp"
    create_private(tmp, manifest_bytes(manifest))
    os.replace(tmp, folder / MANIFEST)


def read_manifest(job_id: str) -> dict:
    path = job_folder(job_id) / MANIFEST
    for attempt in range(2):
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise KeyError(job_id) from None
        except ValueError as exc:
            if attempt:  # not a manifest being created: a broken one
                raise StoreError(f"the manifest of job {job_id} ({path}) is unreadable: {exc}") from None
            time.sleep(0.05)
    raise AssertionError("unreachable")

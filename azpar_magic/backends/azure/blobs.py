"""Moving files between this machine and Blob storage: streamed, with progress.

Used for a job's ``--inputs``/``--outputs`` (files.py) and by the storage helpers
(``%azpar storage``, ``azpar_magic.storage``). The SDK moves the bytes (``upload_blob`` from
the open file, ``download_blob(...).readinto`` the file): a file larger than one block goes as
blocks of ``BLOCK_SIZE``, ``BLOCKS_IN_FLIGHT`` at a time, so a 200 MB input costs a few blocks
of memory, not 200 MB. What the SDK does not do is here: content-addressed names (an input's
sha256, checked again while its bytes are read for the upload), a temporary file so a failed
download never leaves half a file under its name, the progress callbacks, and errors that say
what failed. Retries are the client's own (retry.py), one layer: nothing here loops over a
request again; ``retried`` is only for whole operations no request's retry covers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import (
    AzureError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceResponseError,
)

from ...errors import DataError, TransferError
from ...run.data import path_below
from . import retry
from .storage import BLOCK_SIZE, Staging
from .threads import refused_by_the_exit

logger = logging.getLogger(__name__)
BLOCKS_IN_FLIGHT = 4  # blocks sent or read concurrently (the SDK's max_concurrency; memory ~ a few blocks)
ATTEMPTS = 3  # tries of a whole operation in ``retried`` (each request in it has the client's own retries)
BACKOFF = 0.5  # seconds before its second try; doubled each time
DATA_PREFIX = "data/"  # content-addressed input files in the cache container

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

__all__ = ["BLOCK_SIZE", "TransferError"]  # re-exported: files.py sizes its uploads and names the error by them


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int


def _first_line(exc: object) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def failure(what: str, exc: BaseException) -> TransferError:
    """A TransferError naming ``what`` and why; a server or connection error counts the tries the
    client's retry policy made (retry.py), a refusal (403, 400, ...) is said to be one."""
    status = getattr(exc, "status_code", None)
    transient = status is None or status >= 500 or status in (408, 429)
    how = f"after {retry.storage_attempts()} attempts" if transient else f"(HTTP {status}, not retried)"
    return TransferError(f"{what} failed {how}: {type(exc).__name__}: {_first_line(exc)}")


def _passes(exc: BaseException) -> bool:
    """Errors callers handle themselves (a missing blob, a content-addressed blob already there)."""
    return isinstance(exc, (ResourceNotFoundError, ResourceExistsError))


def _whole_again(exc: BaseException) -> bool:
    """Worth a whole operation again: a stream cut or corrupted mid-way, a local file error,
    or a TransferError the operation raised itself (a copy that ended failed). An answer from the
    service (HttpResponseError) is not: the client's policy has retried those that may pass."""
    if isinstance(exc, DecodeError):  # an HttpResponseError, but about the bytes, not the answer
        return True
    return isinstance(exc, (ServiceResponseError, OSError, TransferError)) and not isinstance(exc, HttpResponseError)


def retried(
    what: str,
    action: Callable[[], Any],
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    fatal: tuple[type[BaseException], ...] = (ResourceNotFoundError,),
) -> Any:
    """``action()`` tried again as a whole, for operations that no single request's retry
    covers: a file streamed from a Batch node (a connection cut mid-stream is not retried by the
    Batch client) and a server-side copy that ends ``failed``. Only such failures are tried
    again (``_whole_again``); an error answer the client has already retried ends it at once.
    At most ``attempts`` tries, ``backoff`` doubled between them; TransferError naming ``what``
    after the last. ``fatal`` errors are raised as they are."""
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return action()
        except fatal:
            raise
        except (AzureError, OSError, TransferError) as exc:
            if not _whole_again(exc):
                raise failure(what, exc) from exc
            last = exc
            if attempt + 1 < attempts:
                logger.info("%s: attempt %d failed (%s); trying again", what, attempt + 1, _first_line(exc))
                time.sleep(backoff * 2**attempt)
    raise TransferError(f"{what} failed after {attempts} attempts: {type(last).__name__}: {_first_line(last or '')}")


# --------------------------------------------------------------------------- hashing

_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def file_digest(path: str) -> str:
    """sha256 of a file, read in 1 MB pieces; remembered per (path, size, mtime, inode) so a
    cell run again does not hash its unchanged inputs again."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _digests_lock:
        _digests[key] = digest
    return digest


def data_blob_name(digest: str) -> str:
    return f"{DATA_PREFIX}{digest}"


class _HashingReader:
    """The file to upload as the SDK reads it, hashed on the way. It says it cannot seek, so the
    SDK reads it front to back, one block at a time (its path for streams it cannot rewind: a
    block it retries is the bytes it already holds, never read twice)."""

    def __init__(self, fh: Any):
        self._fh = fh
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self.sha256.update(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


# --------------------------------------------------------------------------- uploads


def _count_upload(staging: Staging, size: int) -> None:
    """What the SDK sent, in the staging's statistics (one put, or blocks and their commit)."""
    if size <= BLOCK_SIZE:
        staging.stats.add("put_blob", size)
        return
    blocks = math.ceil(size / BLOCK_SIZE)
    for number in range(blocks):
        staging.stats.add("put_block", min(BLOCK_SIZE, size - number * BLOCK_SIZE))
    staging.stats.add("put_block_list")


def upload_file(
    staging: Staging,
    container: str,
    name: str,
    path: str,
    *,
    overwrite: bool = True,
    progress: Progress | None = None,
    digest: str | None = None,
) -> int:
    """Upload the file at ``path`` as a block blob, streamed; returns its size. The blob appears
    only when its last block is committed. ``digest``: the sha256 the file must still have (a
    content-addressed name); the bytes sent are hashed as they are read and a blob whose bytes
    differ is deleted again (TransferError: the file changed while it was being uploaded)."""
    size = os.path.getsize(path)
    blob = staging.service.get_blob_client(container, name)
    what = f"uploading {path} to {container}/{name}"
    hook = (lambda done, total: progress(done, size)) if progress else None
    with open(path, "rb") as fh:
        source: Any = _HashingReader(fh) if digest else fh
        try:
            blob.upload_blob(
                source, length=size, overwrite=overwrite, max_concurrency=BLOCKS_IN_FLIGHT, progress_hook=hook
            )
        except AzureError as exc:
            if _passes(exc):
                raise
            raise failure(what, exc) from exc
    if isinstance(source, _HashingReader) and source.sha256.hexdigest() != digest:
        try:
            blob.delete_blob()
        except AzureError:
            pass
        raise TransferError(f"{what} failed: the file changed while it was being uploaded; run the cell again")
    _count_upload(staging, size)
    if progress and size == 0:
        progress(0, 0)
    return size


def upload_file_once(
    staging: Staging, container: str, path: str, *, progress: Progress | None = None
) -> tuple[str, bool]:
    """Content-addressed upload of a local input: (blob name, whether bytes were sent). The
    blob's existence is checked first, so an input already in the cache, from any earlier
    run or kernel, costs one HEAD request and no upload."""
    digest = file_digest(path)
    name = data_blob_name(digest)
    if (container, name) in staging.known:
        return name, False
    blob = staging.service.get_blob_client(container, name)
    try:
        there = blob.exists()
    except AzureError as exc:
        raise failure(f"checking {container}/{name}", exc) from exc
    if there:
        staging.stats.add("put_blob_exists")
        staging.known.add((container, name))
        return name, False
    try:
        upload_file(staging, container, name, path, overwrite=False, progress=progress, digest=digest)
        sent = True
    except ResourceExistsError:  # another kernel uploaded the same bytes meanwhile
        sent = False
    staging.known.add((container, name))
    return name, sent


# --------------------------------------------------------------------------- downloads


def download_file(staging: Staging, container: str, name: str, path: str, *, progress: Progress | None = None) -> int:
    """Download a blob to ``path``, a few ranges at a time (through a temporary file beside it,
    so a failed transfer never leaves half a file under the final name); returns its size.
    ResourceNotFoundError when the blob does not exist."""
    what = f"downloading {container}/{name} to {path}"
    tmp = f"{path}.azpar-part"
    try:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            client = staging.service.get_blob_client(container, name)
            try:
                with open(tmp, "wb") as fh:
                    size = client.download_blob(max_concurrency=BLOCKS_IN_FLIGHT, progress_hook=progress).readinto(fh)
            except RuntimeError as exc:  # the SDK's pool, stopped by Python's exit (threads.py)
                if not refused_by_the_exit(exc):
                    raise
                with open(tmp, "wb") as fh:  # again from the start, one range at a time, in this thread
                    size = client.download_blob(progress_hook=progress).readinto(fh)
            if progress and size == 0:
                progress(0, 0)
            os.replace(tmp, path)
        except AzureError as exc:
            if _passes(exc):
                raise
            raise failure(what, exc) from exc
        except OSError as exc:  # this machine's side (a file where a folder must go, a full disk): not retried
            raise TransferError(f"{what} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    staging.stats.add("get_blob")
    return size


def download_stream(chunks: Iterator[bytes], path: str) -> int:
    """Write an iterator of byte chunks (a node's file, from Batch) to ``path`` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.azpar-part"
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return size


# --------------------------------------------------------------------------- listing, deleting


def _once(what: str, action: Callable[[], Any]) -> Any:
    """``action()``, its requests retried by the client alone; TransferError naming ``what``
    when they all failed (a missing blob or container, or a blob already there, as they are)."""
    try:
        return action()
    except AzureError as exc:
        if _passes(exc):
            raise
        raise failure(what, exc) from exc


def list_blobs(staging: Staging, container: str, prefix: str = "") -> list[BlobInfo]:
    """Blobs of ``container`` whose names start with ``prefix``; [] for a missing container."""

    def listing() -> list[BlobInfo]:
        client = staging.service.get_container_client(container)
        return [BlobInfo(b.name, b.size or 0) for b in client.list_blobs(name_starts_with=prefix or None)]

    staging.stats.add("list_blobs")
    try:
        return _once(f"listing {container}/{prefix}", listing)
    except ResourceNotFoundError:
        return []


def list_containers(staging: Staging) -> list[tuple[str, str | None]]:
    """Every container of the account, each with the user its metadata names (``azpar_user``, set on
    the containers azpar makes; None on any other)."""
    staging.stats.add("list_containers")
    return _once(
        "listing containers",
        lambda: [
            (c.name, (c.metadata or {}).get("azpar_user"))
            for c in staging.service.list_containers(include_metadata=True)
        ],
    )


def delete_blob(staging: Staging, container: str, name: str) -> bool:
    """Delete one blob; False when it was not there."""
    try:
        _once(f"deleting {container}/{name}", staging.service.get_blob_client(container, name).delete_blob)
    except ResourceNotFoundError:
        return False
    staging.stats.add("delete_blob")
    return True


# --------------------------------------------------------------------------- the storage helpers


def _is_folder(target: str) -> bool:
    return target.endswith(("/", os.sep)) or os.path.isdir(target)


def get_path(
    staging: Staging, container: str, name: str, target: str, *, progress: Callable[[str, int, int], None] | None = None
) -> list[str]:
    """Download the blob ``name``, or every blob below the folder ``name/``, to ``target``
    (a file; a folder when it exists or ends with a slash, or for a folder of blobs).
    Returns the local paths written; FileNotFoundError when nothing is there."""

    def hook(label: str):
        return (lambda done, total: progress(label, done, total)) if progress else None

    exact = name and any(b.name == name for b in list_blobs(staging, container, name))
    if exact:
        path = os.path.join(target, os.path.basename(name)) if _is_folder(target) else target
        download_file(staging, container, name, path, progress=hook(name))
        return [path]
    folder = name.rstrip("/") + "/" if name else ""
    found = list_blobs(staging, container, folder)
    if not found:
        raise FileNotFoundError(f"az://{container}/{name} does not exist (no blob of that name or below it)")
    paths = []
    for blob in found:  # every name checked before the first byte is written
        try:
            paths.append(path_below(target, blob.name[len(folder) :], f"az://{container}/{blob.name}"))
        except DataError as exc:
            raise DataError(
                f"{exc} Nothing was downloaded; rename or delete that blob with another tool, or get "
                "the others one by one."
            ) from None
    for blob, path in zip(found, paths):
        download_file(staging, container, blob.name, path, progress=hook(blob.name))
    return paths


def put_path(
    staging: Staging, source: str, container: str, name: str, *, progress: Callable[[str, int, int], None] | None = None
) -> list[str]:
    """Upload the file or folder ``source`` to ``container``: a file to ``name`` (below it
    when ``name`` is empty or ends with a slash), a folder's files below ``name/`` with their
    relative paths. Creates the container when missing; returns the blob names written."""
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source} does not exist")
    staging.ensure_container(container)
    if os.path.isdir(source):
        pairs = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for file in sorted(files):
                full = os.path.join(root, file)
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                pairs.append((full, f"{name.rstrip('/')}/{rel}" if name else rel))
    else:
        blob = name + os.path.basename(source) if (not name or name.endswith("/")) else name
        pairs = [(source, blob)]
    for full, blob in pairs:
        upload_file(staging, container, blob, full, progress=functools.partial(progress, blob) if progress else None)
    return [blob for _, blob in pairs]


def remove_path(
    staging: Staging, container: str, name: str, *, recursive: bool = False, dry_run: bool = False
) -> list[str]:
    """Delete the blob ``name`` (with ``recursive``, also every blob below ``name/``); the
    names deleted (or that would be, with ``dry_run``). A folder without ``recursive`` is
    refused (ValueError) and a path matching nothing is FileNotFoundError."""
    listed = [b.name for b in list_blobs(staging, container, name)]
    folder = name.rstrip("/") + "/" if name else ""
    exact = [n for n in listed if n == name]
    below = [n for n in listed if n.startswith(folder)]
    if not exact and not below:
        raise FileNotFoundError(f"az://{container}/{name} does not exist")
    if below and not recursive and not exact:
        raise ValueError(
            f"az://{container}/{name} is a folder of {len(below)} blob{'s' if len(below) != 1 else ''}; "
            "removing it needs -r (recursive=True)"
        )
    doomed = exact + (below if recursive else [])
    if not dry_run:
        for blob in doomed:
            delete_blob(staging, container, blob)
    return doomed

"""Moving files between this machine and Blob storage: streamed, retried, with progress.

Used for a job's ``--inputs``/``--outputs`` (files.py) and by the storage helpers
(``%azpar storage``, ``azpar_magic.storage``). Files are never read whole into memory:
uploads go up as blocks of ``BLOCK_SIZE`` (a few in flight), downloads are written chunk by
chunk, so a 200 MB input costs a few blocks of memory, not 200 MB. Every transfer is retried
(bounded, with backoff) on top of the SDK's own per-request retries, because a long
transfer can fail in ways a single request's retry does not cover.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock

from ...errors import DataError, TransferError
from ...run.data import path_below
from .storage import Staging

BLOCK_SIZE = 4 << 20  # bytes per uploaded block
BLOCKS_IN_FLIGHT = 4  # blocks read ahead and sent concurrently (peak memory ~ 4 x BLOCK_SIZE)
ATTEMPTS = 4  # tries of a whole transfer
BACKOFF = 0.25  # seconds before the second try; doubled each time
DATA_PREFIX = "data/"  # content-addressed input files in the cache container

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int


def retried(
    what: str,
    action: Callable[[], Any],
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF,
    fatal: tuple[type[BaseException], ...] = (ResourceNotFoundError,),
) -> Any:
    """``action()`` with bounded retries and exponential backoff; TransferError naming
    ``what`` after the last failure. ``fatal`` errors are raised at once (no retry helps)."""
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return action()
        except fatal:
            raise
        except (AzureError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff * 2**attempt)
    raise TransferError(
        f"{what} failed after {attempts} attempts: {type(last).__name__}: "
        f"{str(last).splitlines()[0] if str(last) else ''}"
    )


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


# --------------------------------------------------------------------------- uploads


def _read_blocks(fh) -> Iterator[tuple[int, bytes]]:
    number = 0
    while True:
        chunk = fh.read(BLOCK_SIZE)
        if not chunk:
            return
        yield number, chunk
        number += 1


def upload_file(
    staging: Staging, container: str, name: str, path: str, *, overwrite: bool = True, progress: Progress | None = None
) -> int:
    """Upload the file at ``path`` as a block blob, streamed; returns its size. Each block
    and the commit are retried; the blob appears only when the commit succeeds."""
    size = os.path.getsize(path)
    blob = staging.service.get_blob_client(container, name)
    if size <= BLOCK_SIZE:
        with open(path, "rb") as fh:
            data = fh.read()
        retried(
            f"uploading {path} to {container}/{name}",
            lambda: blob.upload_blob(data, overwrite=overwrite, length=len(data)),
            fatal=(ResourceNotFoundError, ResourceExistsError),
        )
        staging.stats.add("put_blob", size)
        if progress:
            progress(size, size)
        return size
    ids: list[str] = []
    done = 0
    lock = threading.Lock()
    gate = threading.Semaphore(BLOCKS_IN_FLIGHT)

    def send(block_id: str, chunk: bytes) -> None:
        nonlocal done
        try:
            retried(
                f"uploading {path} to {container}/{name}", lambda: blob.stage_block(block_id, chunk, length=len(chunk))
            )
            staging.stats.add("put_block", len(chunk))
            with lock:
                done += len(chunk)
                if progress:
                    progress(done, size)
        finally:
            gate.release()

    with open(path, "rb") as fh, ThreadPoolExecutor(BLOCKS_IN_FLIGHT, thread_name_prefix="azpar-put") as pool:
        futures = []
        for number, chunk in _read_blocks(fh):
            gate.acquire()  # at most BLOCKS_IN_FLIGHT blocks held in memory
            block_id = base64.b64encode(f"azpar-{number:08d}".encode()).decode()
            ids.append(block_id)
            futures.append(pool.submit(send, block_id, chunk))
            del chunk
            failed = [f for f in futures if f.done() and f.exception() is not None]
            if failed:
                break
        for f in futures:
            f.result()  # raises the TransferError of a block that failed every attempt
    kwargs: dict[str, Any] = {} if overwrite else {"if_none_match": "*"}
    retried(
        f"committing {container}/{name}",
        lambda: blob.commit_block_list([BlobBlock(block_id=i) for i in ids], **kwargs),
        fatal=(ResourceNotFoundError, ResourceExistsError),
    )
    staging.stats.add("put_block_list")
    return size


def upload_file_once(
    staging: Staging, container: str, path: str, *, progress: Progress | None = None
) -> tuple[str, bool]:
    """Content-addressed upload of a local input: (blob name, whether bytes were sent). The
    blob's existence is checked first, so an input already in the cache, from any earlier
    run or kernel, costs one HEAD request and no upload."""
    name = data_blob_name(file_digest(path))
    if (container, name) in staging.known:
        return name, False
    blob = staging.service.get_blob_client(container, name)
    if retried(f"checking {container}/{name}", blob.exists):
        staging.stats.add("put_blob_exists")
        staging.known.add((container, name))
        return name, False
    try:
        upload_file(staging, container, name, path, overwrite=False, progress=progress)
        sent = True
    except ResourceExistsError:  # another kernel uploaded the same bytes meanwhile
        sent = False
    staging.known.add((container, name))
    return name, sent


# --------------------------------------------------------------------------- downloads


def download_file(staging: Staging, container: str, name: str, path: str, *, progress: Progress | None = None) -> int:
    """Download a blob to ``path`` chunk by chunk (through a temporary file beside it, so a
    failed transfer never leaves half a file under the final name); returns its size.
    ResourceNotFoundError when the blob does not exist (not retried)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.azpar-part"

    def attempt() -> int:
        os.makedirs(folder, exist_ok=True)  # retried too: a folder being created or moved meanwhile
        downloader = staging.service.get_blob_client(container, name).download_blob(max_concurrency=1)
        total, done = downloader.size, 0
        with open(tmp, "wb") as fh:
            for chunk in downloader.chunks():
                fh.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        os.replace(tmp, path)
        return total

    try:
        size = retried(f"downloading {container}/{name} to {path}", attempt)
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


def list_blobs(staging: Staging, container: str, prefix: str = "") -> list[BlobInfo]:
    """Blobs of ``container`` whose names start with ``prefix``; [] for a missing container."""

    def listing() -> list[BlobInfo]:
        client = staging.service.get_container_client(container)
        return [BlobInfo(b.name, b.size or 0) for b in client.list_blobs(name_starts_with=prefix or None)]

    staging.stats.add("list_blobs")
    try:
        return retried(f"listing {container}/{prefix}", listing)
    except ResourceNotFoundError:
        return []


def list_containers(staging: Staging) -> list[str]:
    staging.stats.add("list_containers")
    return retried("listing containers", lambda: [c.name for c in staging.service.list_containers()])


def delete_blob(staging: Staging, container: str, name: str) -> bool:
    """Delete one blob; False when it was not there."""
    try:
        retried(f"deleting {container}/{name}", staging.service.get_blob_client(container, name).delete_blob)
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

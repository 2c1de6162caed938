"""Writing jobs into the store: one background thread per process does every write, fed by a JobRecorder per
job, so the engine's threads only format a finished task's records and queue them (why, and what that costs,
is in the package's docstring, in ``_Writer`` and in ``JobRecorder.task_result``). Also what a job's folder
starts with: its manifest and its kept namespace.
"""

from __future__ import annotations

import atexit
import collections
import functools
import hashlib
import json
import logging
import mmap
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..jobs import RUNNING, Job, JobOptions
from .layout import (
    FILE_MAGIC,
    FORMAT,
    MANIFEST,
    MODULES_LINK,
    NAMESPACE_LINK,
    RECORDS,
    checked_roots,
    ensure_root,
    items_file_name,
    items_path,
    modules_path,
    namespace_path,
    store_root,
    valid_id,
)
from .owner import creator, owner
from .records import (
    LARGE_PIECE,
    PickledPieces,
    create_private,
    from_runs,
    indices_header,
    manifest_bytes,
    read_file,
    read_manifest,
    record,
    record_parts,
    runs,
    task_record,
    task_record_parts,
    walk,
    write_manifest,
    write_pieces,
)

logger = logging.getLogger(__name__)
COALESCE = 0.05  # seconds the writer waits so that a short job is written once (see above)
# A clean task result of at least this many iterations, or this many bytes of values, is formatted
# on the writer thread, not on the engine's (JobRecorder.task_result says why, and why not all).
DEFERRED_ITERATIONS = 64
DEFERRED_BYTES = 1 << 16
# Bytes of items and values the writer may hold unwritten before a new job waits for it (wait_for_room):
# a cell over 20 arrays of 20 MB, run again and again, ran faster than the disk took each run's 400 MB,
# and the kernel held every run's bytes until they were written (+1.5 GB after six runs, issue 16).
BACKLOG_LIMIT = 256 << 20
BACKLOG_PATIENCE = 120.0  # seconds a job waits for room at most (a store on a hung network share)
SAY_WAITING_AFTER = 2.0  # seconds of waiting for room after which the cell says why it waits


class _Writer:
    """Does every store write of this process. Recorders queue what happened and mark
    themselves dirty; nothing else happens on the engine's threads.

    The thread is woken once when work appears after a quiet spell, then writes everything
    queued every ``COALESCE`` seconds for as long as there is some, and sleeps again after a
    tick that found nothing. It is never woken per task or per job: a Python thread that
    wakes needs the GIL, and every such hand-over is paid by the job's own threads (the
    first version, woken per event, cost trivial 2,000-iteration jobs 40 extra context
    switches and a quarter of their time). ``flush`` cuts the wait short."""

    def __init__(self) -> None:
        self._dirty: dict[JobRecorder, None] = {}  # insertion-ordered set
        self._cond = threading.Condition(threading.Lock())
        self._ticking = False  # the thread is writing every COALESCE seconds
        self._busy = False
        self._urgent = 0  # flush() calls waiting
        self._thread: threading.Thread | None = None
        self.backlog = 0  # bytes of large items and values queued and not yet written (hold, release)

    def mark(self, recorder: JobRecorder) -> None:
        if recorder in self._dirty:
            # Marked already and not yet taken: the writer takes the mark and clears it under its
            # lock before it drains the recorder, so it drains what the caller has just queued.
            # No lock then: a result of each of a job's tasks came here, contended by the writer.
            return
        with self._cond:
            self._dirty[recorder] = None
            if not self._ticking:
                self._ticking = True
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="azpar-job-store", daemon=True)
                    self._thread.start()
                self._cond.notify_all()

    def hold(self, recorder: JobRecorder, size: int) -> None:
        """``recorder`` queued ``size`` bytes of large items or values for the writer."""
        with self._cond:
            recorder._held += size
            self.backlog += size

    def release(self, recorder: JobRecorder, size: int | None = None) -> None:
        """``size`` of the bytes ``recorder`` held were written (None: all, the recorder stopped)."""
        with self._cond:
            size = recorder._held if size is None else min(size, recorder._held)
            if size:
                recorder._held -= size
                self.backlog -= size
                self._cond.notify_all()

    def wait_for_room(self, limit: int | None = None, patience: float | None = None) -> None:
        """Wait while the writer holds more than ``limit`` bytes of large items and values unwritten
        (at most ``patience`` seconds): a new job's bytes then join a queue the disk keeps up with."""
        limit = BACKLOG_LIMIT if limit is None else limit
        if self.backlog <= limit:  # (no lock: the common case, nothing large waiting)
            return
        started = time.monotonic()
        deadline = started + (BACKLOG_PATIENCE if patience is None else patience)
        said = False
        with self._cond:
            self._urgent += 1  # written now, not at the next tick
            self._cond.notify_all()
            try:
                while self.backlog > limit and (remaining := deadline - time.monotonic()) > 0:
                    waited = time.monotonic() - started
                    if not said and waited >= SAY_WAITING_AFTER:
                        said = True  # (a slow disk: the cell would seem stuck)
                        print(
                            f"azpar: waiting for the job store to write {self.backlog / 1e6:,.0f} MB of earlier "
                            "jobs' items and values before this job starts",
                            file=sys.stderr,
                        )
                    self._cond.wait(min(remaining, 1.0 if said else SAY_WAITING_AFTER - waited))
            finally:
                self._urgent -= 1

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write everything queued so far, now; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._dirty or self._busy:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 1.0) if remaining is not None else 1.0)
            finally:
                self._urgent -= 1
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ticking:
                    self._cond.wait()
                deadline = time.monotonic() + COALESCE
                while not self._urgent:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = list(self._dirty)
                self._dirty.clear()
                if not batch:
                    self._ticking = False  # quiet: sleep until the next mark
                    continue
                self._busy = True
            for recorder in batch:
                recorder._drain()
            # Not kept while this thread sleeps until the next mark: a recorder holds its Job, values and
            # all, which outlived the session's let-go of it (session.remember) by a whole quiet spell.
            del batch, recorder
            with self._cond:
                self._busy = False
                self._cond.notify_all()


_writer = _Writer()


def wait_for_room() -> None:
    """Before a job is built: wait while the store is far behind with large items and values."""
    _writer.wait_for_room()


def flush(timeout: float | None = 30.0) -> bool:
    """Write this process's pending store records now (before reading the store back)."""
    return _writer.flush(timeout)


atexit.register(flush, 10.0)  # registered before session's close: runs after it (LIFO)


# Store roots this process already warned about on stderr (a failing store is said once, not per job).
warned_roots: set[str] = set()


class JobRecorder:
    """Writes one job into the store. The engine's threads call its methods, which queue
    what happened (a finished task's records already formatted, see ``task_result``); the
    writer thread writes it, in order, so a task's record is on disk before the manifest
    that says the job ended. A write that fails stops recording this job (``job.store_error``
    says why, once on stderr too); the job runs on."""

    def __init__(
        self,
        job: Job,
        manifest: dict,
        items: Sequence[tuple[str, Sequence[int], str, bytes]],
        root: Path,
        base_id: str | None = None,
        append_fd: int | None = None,
    ):
        self.job = job
        self.manifest = manifest
        # Paths are fixed now: the writer runs later, when $AZPAR_JOB_STORE may name another folder.
        self.root = root
        self.folder = root / job.id
        self.base = root / base_id if base_id and valid_id(base_id) else None
        self._items = items
        self._held = 0  # bytes of large items and values queued here, unwritten (_Writer.hold)
        large = sum(len(entry[3]) for entry in items if len(entry[3]) >= LARGE_PIECE)
        if large:
            _writer.hold(self, large)
        self._pending: collections.deque[tuple] = collections.deque()
        self._fd: int | None = append_fd  # given: the folder exists (a job resumed by this process)
        self._created = append_fd is not None
        self._failed = False
        self._ended = False
        self._wrote_final = False  # the manifest written at creation already had the final state
        _writer.mark(self)

    def claim(self) -> None:
        """Write the manifest now (a resumed job: it names this process as the owner)."""
        write_manifest(self.folder, self.manifest)

    def abandon(self) -> None:
        """Stop recording without writing anything more (a resumed job that could not be followed)."""
        self._failed = True
        self._close()

    # -------------------------------------------------------------- called by the engine

    def task_result(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> None:
        """A task finished (some iterations may have raised): keep its encoded values.

        A clean result (its values in one blob, nothing failed, printed or gathered) of many
        iterations, or a large one, waits for the writer as one tuple of its id, iterations and
        blob, and is formatted there: formatting it was ~10 us of each such task on the thread
        that reads the workers' replies, which the cell's last result waits behind (issue 16, a),
        and a large blob was copied twice there. Other results are formatted here, and only their
        bytes wait. Short tasks end by thousands a second: formatting theirs on the writer made it
        hold the interpreter in bursts the reading thread waited behind, with the workers short of
        tasks meanwhile (one-iteration tasks cost ~3 us more each, issue 16, a'); and a queued
        result dict (a dozen containers) lived until the writer's next tick, ``COALESCE`` seconds
        later, so the thousands queued meanwhile outlived the garbage collector's young
        generations and set off full collections of the kernel's whole heap (the collector was
        ~5 us of a one-iteration task's ~30 us in the kernel, and ~1.8 us after)."""
        if self._failed:
            return
        values = result.get("values")
        if (
            type(values) is list
            and len(values) == 3
            and values[0] == "all"
            and (len(indices) >= DEFERRED_ITERATIONS or len(values[2]) >= DEFERRED_BYTES)
            and not result.get("failed")
            and not result.get("outputs")
            and result.get("gathered") is None
        ):
            if len(values[2]) >= LARGE_PIECE:
                _writer.hold(self, len(values[2]))
            self._pending.append(("values", task_id, indices, values[1], values[2]))
            _writer.mark(self)
            return
        try:
            data = self._result_records(task_id, indices, result)
        except Exception as exc:  # reported by the writer as a write that failed: the job runs on
            self._pending.append(("error", exc))
        else:
            self._pending.append(("records", data))
        _writer.mark(self)

    def task_failed(self, task_id: str, indices: Sequence[int], error_type: str, message: str, kind: str) -> None:
        """A task produced nothing (lost worker, timeout, cancelled, environment)."""
        self._pending.append(
            (
                "fail",
                task_id,
                indices,
                {"type": error_type, "message": message, "traceback": "", "line": None, "kind": kind},
            )
        )
        _writer.mark(self)

    def keep_envelope(self, envelope: Mapping[str, Any], namespace: bytes | None) -> None:
        """Keep what ran: the envelope header the workers got (cell code, filename, mode,
        packages, seed) and, when ``namespace`` is given, the captured namespace bytes, so
        ``%azpar debug`` can run an iteration again here with the job's own namespace, also
        after the kernel restarts. The envelope is a record of the job's own file; the bytes
        are kept once per distinct namespace and linked into the job's folder
        (``keep_namespace``): one more file creation per job, on the writer thread.

        A backend whose jobs outlive the kernel stages the namespace where its nodes can
        still fetch it after the kernel ends (Azure: the cache container), so the engine
        passes None for it and ``debug`` fetches it from there (``stored_envelope``)."""
        self._pending.append(("envelope", dict(envelope), namespace))
        _writer.mark(self)

    def finish(self) -> None:
        """The job ended: record its final state and counts. Only the moment is taken here; the
        writer reads the rest from the job, final by then: this runs on the thread that woke the
        job's waiter, which waits for it to let go of the interpreter (issue 16, a)."""
        self._pending.append(("end", time.time()))
        _writer.mark(self)

    def _end_record(self, finished: float) -> dict:
        """What the manifest says of the job's end (on the writer thread, from the ended job)."""
        job = self.job
        succeeded, failed, cancelled = job.counts()
        cost = job.cost_now() if job.meter is not None else None  # node and task time, the estimate (issue 19)
        logger.debug("job %s ended %s (%d succeeded, %d failed)", job.id, job.state, succeeded, failed + cancelled)
        return {
            "state": job.state,
            "finished": finished,
            "elapsed": job.elapsed(),
            "counts": {"succeeded": succeeded, "failed": failed, "cancelled": cancelled},
            **({"cost": cost.as_record()} if cost is not None else {}),
            **({"stop_reason": job.stop_reason} if job.stop_reason else {}),
        }

    # -------------------------------------------------------------- on the writer thread

    def _drain(self) -> None:
        if self._failed:
            self._pending.clear()
            _writer.release(self)
            return
        try:
            self._write_pending()
        except Exception as exc:
            self._failed = True
            self._pending.clear()
            _writer.release(self)
            self._close()
            message = f"{type(exc).__name__}: {exc}"
            self.job.store_error = message
            root = str(self.root)
            if root not in warned_roots:
                warned_roots.add(root)
                print(
                    f"azpar: the job store {root} could not keep job {self.job.id} ({message}); its results "
                    "stay in this session only.",
                    file=sys.stderr,
                )

    def _write_pending(self) -> None:
        chunks: list[bytes] = []  # pieces, written by write_pieces: a large body is never copied
        written = 0  # of the bytes held for the writer (_Writer.hold), released once on disk
        end = None
        keep: tuple[str, bytes] | None = None  # (sha256, bytes) of a namespace this store keeps
        modules: tuple[str, Mapping] | None = None  # (sha256, files) of the notebook's modules kept once per set
        while self._pending:
            event = self._pending.popleft()
            if event[0] == "records":
                chunks.append(event[1])
            elif event[0] == "values":
                _, task_id, indices, codec, blob = event
                if len(blob) < LARGE_PIECE:
                    chunks.append(self._result_records(task_id, indices, {"values": ["all", codec, blob]}))
                else:  # the same record, its blob written from its own memory
                    written += len(blob)
                    body = PickledPieces()
                    pickle.Pickler(body, protocol=pickle.HIGHEST_PROTOCOL).dump(
                        {"values": ["all", codec, _as_bytes(blob)], "gathered": None, "failed": {}}
                    )
                    chunks.extend(
                        record_parts({"k": "result", "t": task_id, **indices_header(indices), "failed": 0}, body)
                    )
            elif event[0] == "error":
                raise event[1]
            elif event[0] == "fail":
                _, task_id, indices, failure = event
                chunks.append(record({"k": "fail", "t": task_id, **indices_header(indices), "failure": failure}))
            elif event[0] == "envelope":
                _, envelope, namespace = event
                modules = self._keep_modules_once(envelope)
                if modules is not None:  # kept once per set, not in every job's records (stored_envelope)
                    envelope = dict(envelope, local_modules={}, local_modules_kept=MODULES_LINK)
                chunks.append(record({"k": "envelope"}, json.dumps(envelope, default=str).encode()))
                if namespace is not None:
                    keep = (envelope["namespace"]["sha256"], namespace)
            else:
                end = self._end_record(event[1])
        if not self._created:
            written += sum(len(entry[3]) for entry in self._items if len(entry[3]) >= LARGE_PIECE)
            self._create(chunks, end)
        elif chunks and self._fd is not None:  # (a late duplicate after the end is dropped, as the Job drops it)
            write_pieces(self._fd, chunks)
        if written:
            _writer.release(self, written)
        if keep is not None:
            try:
                keep_namespace(self.root, self.folder, *keep)
            except OSError:  # (a full disk): the job's records matter more; debug then says it has none
                pass
        if modules is not None:
            digest, files = modules
            try:
                _keep_shared(
                    modules_path(self.root, digest), self.folder / MODULES_LINK, lambda: json.dumps(files).encode()
                )
            except OSError:  # as for the namespace: debug then runs without the job's own modules
                pass
        if end is not None and not self._ended:
            self._ended = True
            self._close()
            if not self._wrote_final:
                self.manifest.update(end)
                write_manifest(self.folder, self.manifest)
            self.job.stored = str(self.root)  # all of it is on disk: the session may let go of it
            self.job.settle()  # its values as tuples, which the garbage collector stops walking (Job.settle)

    def _keep_modules_once(self, envelope: Mapping[str, Any]) -> tuple[str, Mapping] | None:
        """Keep the notebook's modules the job shipped under the store root, once per set (a package of
        a few MB was written into every job's records: 100 runs of a cell, 300 MB). (sha256, files), or
        None when the envelope is to keep them itself (no modules, or no room for the file)."""
        digest, files = envelope.get("local_modules_sha256"), envelope.get("local_modules")
        if not files or not digest:
            return None
        try:
            shared = modules_path(self.root, digest)
            if not shared.exists():
                ensure_root(self.root)
                _write_shared(shared, json.dumps(files).encode())
        except (OSError, StoreError):
            return None
        return digest, files

    def _create(self, data: list[bytes], end: dict | None) -> None:
        ensure_root(self.root)
        try:
            os.mkdir(self.folder, 0o700)
        except FileNotFoundError:  # the store was removed since this process checked it
            checked_roots.discard(str(self.root))
            ensure_root(self.root)
            os.mkdir(self.folder, 0o700)
        head = [FILE_MAGIC]
        ran = self.manifest.get("ran")
        if self.base is not None and ran is not None and len(from_runs(ran)) < self.manifest["items"]:
            # Keep the earlier run's records (its items too): this folder stands on its own.
            earlier = read_file(self.base / RECORDS)
            head.append(record({"k": "import", "from": self.base.name, "skip": ran}, earlier[len(FILE_MAGIC) :]))
            self._link_kept_items(earlier, self.base)
        for task_id, indices, codec, blob in self._items:
            digest = self._keep_items_once(blob) if len(blob) >= LARGE_PIECE else None
            if digest is None:
                head.extend(task_record_parts("items", task_id, indices, "codec", codec, blob))
            else:  # kept once per content, linked into this folder (reader.item_bytes)
                head.append(
                    record({"k": "items", "t": task_id, **indices_header(indices), "codec": codec, "kept": digest})
                )
        self._items = ()
        self._fd = create_private(self.folder / RECORDS, [*head, *data], append=end is None)
        if end is not None:  # a job that ended before its first write: one manifest, final at once
            self.manifest.update(end)
            self._wrote_final = True
        create_private(self.folder / MANIFEST, manifest_bytes(self.manifest))
        self._created = True

    def _keep_items_once(self, blob: bytes) -> str | None:
        """Keep a task's large items once per content under the store root, linked into the job's folder,
        as namespaces are: a cell over 400 MB of arrays added 400 MB to the store at each run (issue 16).
        The digest, or None when they are to go in the records (no room for the kept file)."""
        digest = hashlib.sha256(blob).hexdigest()  # (hashlib lets go of the interpreter lock meanwhile)
        try:
            _keep_shared(items_path(self.root, digest), self.folder / items_file_name(digest), lambda: blob)
        except OSError:
            return None
        return digest

    def _link_kept_items(self, earlier: bytes | mmap.mmap, base: Path) -> None:
        """Link into this folder the kept items of the earlier job (``base``) whose records a rerun imports,
        so that the folder stands on its own when that job is deleted."""
        for header, _, _, _, _ in walk(earlier, len(FILE_MAGIC)):
            digest = header.get("kept") if header.get("k") == "items" else None
            if not digest:
                continue
            try:
                name = items_file_name(digest)
                source = base / name  # (read only when the kept file is gone: no hard links here)
                _keep_shared(items_path(self.root, digest), self.folder / name, functools.partial(_read_bytes, source))
            except (OSError, StoreError):  # gone with the earlier job: those items then read as missing
                continue

    def _result_records(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> bytes:
        failed = result.get("failed") or {}
        values = result["values"]
        if values and values[0] == "all":
            values = [values[0], values[1], _as_bytes(values[2])]
        body = pickle.dumps(
            {"values": values, "gathered": result.get("gathered"), "failed": failed},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        data = task_record("result", task_id, indices, "failed", len(failed), body)
        outputs = result.get("outputs") or {}
        if outputs or failed:
            # The failures as the worker described them, their exceptions' pickles too (the reader of logs
            # does not load those; alike ones are one object, pickled once): a copy of each without it was
            # ~0.5 us of each failure on the thread that reads the workers' replies (issue 16). Only an
            # exception carrying much (an array in its arguments) is left out, not to be written twice.
            if any(rec.get("exc") and len(rec["exc"][1]) > LOGGED_EXCEPTION_MAX for rec in failed.values()):
                failed = {i: {k: v for k, v in rec.items() if k != "exc"} for i, rec in failed.items()}
            logs = {"outputs": outputs, "failures": failed}
            where = indices_header(indices)
            data += record({"k": "logs", "t": task_id, **where}, pickle.dumps(logs, protocol=pickle.HIGHEST_PROTOCOL))
        return data

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


LOGGED_EXCEPTION_MAX = 4096  # bytes of an exception's pickle a logs record repeats (see _result_records)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _as_bytes(blob: bytes | memoryview) -> bytes | pickle.PickleBuffer:
    """A values blob to pickle into a record: a view of the frame it came in (a large result's, see
    ``worker.load_frame``) is pickled as the bytes it reads back as, without a copy of it."""
    return blob if type(blob) is bytes else pickle.PickleBuffer(blob)


def options_to_json(options: JobOptions) -> dict:
    """The options as plain data. A callable ``combine`` is kept by its import name and
    looked up again when the job is loaded (a notebook function: in the new ``__main__``)."""
    combine = options.combine
    if callable(combine):
        combine = {
            "callable": f"{getattr(combine, '__module__', None) or '?'}:"
            f"{getattr(combine, '__qualname__', None) or repr(combine)}"
        }
    return {
        "combine": combine,
        "errors": options.errors,
        "gather": list(options.gather),
        "retries": options.retries,
        "timeout": options.timeout,
        "chunk_size": options.chunk_size,
        "seed": options.seed,
        "output_name": options.output_name,
        "inputs": list(options.inputs),
        "outputs": list(options.outputs),
        "outputs_to": options.outputs_to,
        "name": options.name,
        "cache": options.cache,
        "max_cost": options.max_cost,
    }


def start_recording(
    job: Job,
    *,
    items: Sequence[tuple[str, Sequence[int], str, bytes]],
    tasks: int,
    backend_info: Mapping[str, Any] | None = None,
    export: Sequence[str] = (),
    no_export: Sequence[str] = (),
    cwd: str | None = None,
    ran: Sequence[int] | None = None,
    base_id: str | None = None,
) -> JobRecorder:
    """Open the job's folder (on the writer thread) and return what the engine feeds.

    ``items``: (task id, indices, codec, bytes) per task, as shipped (a backend that
    re-attaches to a job after a restart maps its task ids to iterations with them). ``ran``: the iterations this run
    computes when it is a rerun of ``base_id`` (whose other, finished, iterations it keeps)."""
    info = dict(backend_info or {})
    root = store_root()
    manifest = {
        "format": FORMAT,
        "id": job.id,
        "name": job.options.name,
        "created": job.created,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.created)),
        "creator": creator(),
        "owner": owner(),
        "backend": job.backend_name,
        "profile": info.get("profile"),
        "pool": job.pool,
        "vm_size": job.vm_size,
        "size_label": job.size_label,
        "options": options_to_json(job.options),
        "export": list(export),
        "no_export": list(no_export),
        "cwd": cwd,
        "source": job.source,
        "items": len(job.items),
        "tasks": tasks,
        "state": RUNNING,
        "rerun_of": base_id,
        "from_cache": job.from_cache,
        "ran": runs(ran) if ran is not None else None,
        "location": {"folder": os.path.join(root, job.id), "manifest": MANIFEST, "records": RECORDS},
        "backend_info": info,
    }
    job.manifest = manifest  # rerun reads export/no_export from it
    return JobRecorder(job, manifest, items, root, base_id)


def resume_recording(job: Job) -> JobRecorder:
    """Go on writing a stored job from this process (a backend's job that ran on after its
    kernel ended, now followed here): records are appended to its file. ``claim()`` then
    names this process as the owner in its manifest, so other kernels follow it instead of
    taking it over; ``abandon()`` if following it failed to start."""
    root = store_root()
    manifest = dict(job.manifest or read_manifest(job.id))
    manifest["owner"] = owner()
    manifest["resumed"] = time.time()
    fd = os.open(root / job.id / RECORDS, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    job.manifest = manifest
    return JobRecorder(job, manifest, (), root, append_fd=fd)


def keep_namespace(root: Path, folder: Path, digest: str, data: bytes) -> None:
    """Keep a local job's namespace bytes for ``%azpar debug``: written once per distinct
    namespace under the store root (content-addressed, as staging is), and hard-linked into
    the job's folder, so that rerunning a cell that captures a 100 MB array stores it once,
    not once per run, and deleting a job removes its namespace with its last link (see
    ``delete``). A file system without hard links gets a copy per job."""
    _keep_shared(namespace_path(root, digest), folder / NAMESPACE_LINK, lambda: data)


def _keep_shared(shared: Path, target: Path, data: Callable[[], bytes]) -> None:
    """Link the kept file ``shared`` into a job's folder as ``target``, writing it first (``data()``) when
    it is not there; a copy where hard links cannot be made."""
    for _ in range(2):
        if not shared.exists():  # (the folder is made only then: a cell run again links, two system calls fewer)
            _write_shared(shared, data())
        try:
            os.link(shared, target)
            return
        except FileNotFoundError:  # removed by a delete between the check and the link: write it again
            continue
        except FileExistsError:
            return
        except OSError:  # no hard links here (some network or FUSE file systems)
            break
    create_private(target, data())


def _write_shared(shared: Path, data: bytes) -> None:
    """Write a content-addressed file the store keeps once (a namespace, a set of modules)."""
    shared.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = shared.with_name(f".{shared.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    create_private(tmp, data)
    os.replace(tmp, shared)  # atomic: another writer of the same bytes wrote the same file

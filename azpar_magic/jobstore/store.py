"""The job store: each job's manifest, items, results and logs on local disk, so a job
outlives the cell, and the kernel, that started it.

Layout, one folder per job named by its id::

    $AZPAR_JOB_STORE, else $XDG_DATA_HOME/azpar/jobs, else ~/.local/share/azpar/jobs   (0700)
      azpar-20261125-101112-0123456789ab/                                              (0700)
        manifest.json   what the job is and where it stands (JSON)                    (0600)
        records.azs     append-only: the items as shipped, then one record per finished
                        task (encoded values, failures) and per task that printed or failed
                        (its output and tracebacks); the envelope header it ran with  (0600)
        namespace.bin   a local job's captured namespace: a hard link to the file below
      namespaces/ns-<sha256>.bin   each distinct namespace once, for %azpar debug     (0600)

Why this shape:

- The root and every job folder are 0700 and every file 0600 (the modes are given at
  creation, and a umask can only remove bits), and a root owned by another user, or an
  existing one open to group or others, is refused (never chmod-ed: it may be the user's own
  folder, open on purpose):
  one user's results and cell sources are never readable by another OS user (under
  JupyterHub, users are usually separate OS users). Job ids carry 48 random bits
  (``engine.new_job_id``), so they cannot be guessed either.
- ``records.azs`` is a sequence of length-prefixed records, each a small JSON header (kind,
  task, indices, counts) then a body. Headers let listing jobs and reading logs skip the
  values without unpickling them (the file is memory-mapped, so skipped bodies are never
  read from disk); only ``load_job`` (attach, collect, rerun) decodes values. A process
  killed mid-write leaves at most a torn last record, which readers ignore.
- One file, not one per kind, because creating files is what a job pays for: on this
  project's machine each file creation costs about 0.2 ms, as much as a whole trivial
  10,000-iteration job spends per worker task (bench/local.py, workload a).
- All writing happens on one background thread per process. The engine's event path only
  queues the worker's result dict, whose values are still the bytes the worker sent (no
  re-serialisation, ever). The thread writes what is queued every ``COALESCE`` seconds
  while there is any (see ``_Writer`` for why it is never woken per event), so a job
  shorter than that is written once, in three file creations (folder, records, final
  manifest) and, for a local job, one hard link to its namespace (the namespace file itself
  is created only the first time those bytes are captured), and every finished task is on
  disk within ``COALESCE`` seconds. A kernel killed while a job runs therefore loses at most
  the tasks of its last ``COALESCE`` seconds, which ``rerun --failed`` computes again. Nothing
  calls fsync: records survive a killed process (they are in the OS's page cache), a power
  cut may lose the last seconds.
- The manifest is written once when the job's folder is created and replaced atomically
  (write a temporary file, rename) when the job ends, so a reader never sees half of a
  final manifest; a reader that meets a manifest being created retries once.
- A rerun's records start with a copy of the earlier job's records in one ``import`` record
  naming the iterations the rerun computes again: the rerun's folder is complete on its
  own (deleting the earlier job loses nothing) and the copy decodes nothing.

A job whose manifest says it is running, but whose owning process (pid plus that process's
start time, on the same host and boot) is gone, is reported ``lost``: it died with its kernel.
Its finished iterations are intact and ``rerun --failed`` completes it.

Backends add their own location information through ``backend_info`` (kept under that key
in the manifest); a backend whose jobs outlive the kernel (Azure) says so with
``outlives_kernel: true`` there, and such jobs are never reported lost because their kernel ended.
"""

from __future__ import annotations

import atexit
import collections
import json
import mmap
import os
import pickle
import shutil
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import identity
from .. import worker as wire
from ..errors import StoreError
from ..jobs import FINAL_STATES, LOST, PENDING, RUNNING, Failure, Job, JobOptions, TaskStep
from ..jobs.states import ending_step, stored_state
from ..jobs.results import decode_list, failure_from_record

STORE_ENV = "AZPAR_JOB_STORE"
FORMAT = 1
MANIFEST = "manifest.json"
RECORDS = "records.azs"
FILE_MAGIC = b"AZPARS1\n"
_RECORD = struct.Struct(">IQ")  # header length, body length
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
COALESCE = 0.05  # seconds the writer waits so that a short job is written once (see above)
FOLLOW_INTERVAL = 0.3  # seconds between looks at a job another process is running


# ---------------------------------------------------------------------------------------
# Where, and who
# ---------------------------------------------------------------------------------------


def store_root() -> Path:
    """The store folder (not created): ``$AZPAR_JOB_STORE``, else the XDG data folder.

    Read on every call, so a test or a notebook can point it elsewhere at any time."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        root = Path(explicit).expanduser()
    else:
        data_home = os.environ.get("XDG_DATA_HOME")
        base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
        root = base / "azpar" / "jobs"
    # Under JupyterHub several hub users may share one OS account and home folder (a local
    # spawner, or every pod running as jovyan on one volume): each gets a folder of their own,
    # so %azpar jobs, attach and delete only ever see that user's jobs.
    hub = identity.hub_user()
    return root / f"hub-{identity.slug(hub)}" if hub else root


_checked_roots: set[str] = set()


def ensure_root(root: Path | None = None) -> Path:
    """Create the store folder 0700 if needed; refuse one that another user owns, or one that
    exists with access for group or others: azpar never changes the mode of a folder it did
    not create (``$AZPAR_JOB_STORE`` may name a folder of the user's own, shared on purpose),
    and job results are kept only where other users cannot list or read them."""
    root = root or store_root()
    key = str(root)
    if key in _checked_roots:  # checked once per process (a stat per job showed in the benchmark)
        return root
    if root.name.startswith("hub-"):  # a hub user's folder: the shared root above it is private too
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        root.mkdir(parents=True, mode=0o700)  # ours: private from birth (a umask only takes bits away)
    except FileExistsError:
        _check_existing_root(root)
    _checked_roots.add(key)
    return root


def _check_existing_root(root: Path) -> None:
    info = root.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"the job store {root} is not a folder; set {STORE_ENV} to a folder of your own")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise StoreError(f"the job store {root} belongs to another user (uid {info.st_uid}); "
                         f"set {STORE_ENV} to a folder of your own")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise StoreError(f"the job store {root} is open to other users (mode {mode:04o}), and azpar does not change "
                         f"the mode of a folder it did not create. Make it private with `chmod 700 {root}` if "
                         f"that is what you want, or set {STORE_ENV} to a folder that does not exist yet (azpar "
                         "creates it private)")


def creator() -> str:
    """Who the job is for: the JupyterHub user when there is one (several hub users may map
    to one OS account), else the OS user."""
    return identity.user()


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc; None
    when there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], fields[19]


_owner_cache: dict[int, dict] = {}


def owner() -> dict:
    """This process, identified so that another process can later tell whether it still runs:
    a pid alone could be reused, so its start time and the machine's boot id go with it."""
    pid = os.getpid()
    if pid not in _owner_cache:
        stat_ = _proc_stat(pid)
        _owner_cache[pid] = {"host": socket.gethostname(), "pid": pid, "start": stat_[1] if stat_ else None,
                             "boot": _boot_id()}
    return dict(_owner_cache[pid])


def owner_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the process described by ``owner()`` still runs; None when this machine
    cannot tell (another host sharing the home folder)."""
    if not info or info.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if info.get("boot") and boot and info["boot"] != boot:
        return False
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    if os.path.isdir("/proc/self"):
        found = _proc_stat(pid)
        if found is None or found[0] in ("Z", "X"):  # gone, or a zombie nobody reaped yet
            return False
        return info.get("start") is None or found[1] == info["start"]
    try:  # no /proc (macOS): existence only, so a reused pid looks alive
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _valid_id(job_id: str) -> bool:
    return bool(job_id) and job_id.startswith("azpar-") and set(job_id) <= _ID_CHARS


def job_folder(job_id: str) -> Path:
    if not _valid_id(job_id):
        raise StoreError(f"{job_id!r} is not an azpar job id")
    return store_root() / job_id


# ---------------------------------------------------------------------------------------
# Record files
# ---------------------------------------------------------------------------------------


def _record(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _RECORD.pack(len(head), len(body)) + head + body


def _indices_header(indices: Sequence[int]) -> dict:
    if isinstance(indices, range) and indices.step == 1:
        return {"r": [indices.start, indices.stop]}
    return {"l": list(indices)}


def _indices_of(header: dict) -> Sequence[int]:
    if "r" in header:
        return range(*header["r"])
    return header.get("l", [])


def _runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as [start, stop) runs: compact in the manifest for any failure pattern."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _from_runs(runs: Sequence[Sequence[int]] | None) -> set[int]:
    return {i for start, stop in runs or () for i in range(start, stop)}


def _iter_records(data: bytes | memoryview | mmap.mmap, start: int = 0) -> Iterator[tuple[dict, memoryview, int]]:
    """(header, body, offset after the record) for each whole record from ``start``; a torn
    last record (the writer was killed mid-write) ends the sequence. Bodies are views: a
    body nobody reads costs nothing."""
    view = memoryview(data)
    offset, end = start, len(view)
    while offset + _RECORD.size <= end:
        head_len, body_len = _RECORD.unpack_from(view, offset)
        head_at = offset + _RECORD.size
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


def _read_file(path: Path) -> bytes | mmap.mmap:
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
    if data and data[:len(FILE_MAGIC)] != FILE_MAGIC:
        raise StoreError(f"{path} is not an azpar job store file")
    return data


def _create_private(path: Path, data: bytes, *, append: bool = False) -> int | None:
    """Create ``path`` (it must not exist) 0600 with ``data``; keep it open for appending
    when asked. The mode is given at creation: a umask can only take bits away."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | (os.O_APPEND if append else 0)
    fd = os.open(path, flags, 0o600)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    if append:
        return fd
    os.close(fd)
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    # One line: json's C encoder is used only without ``indent``, and the pure-Python one
    # cost more than all of a short job's other store work (``python -m json.tool`` shows it).
    return json.dumps(manifest, sort_keys=True, default=str).encode() + b"\n"


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half."""
    tmp = folder / f".{MANIFEST}.{os.getpid()}.{threading.get_ident()}.tmp"
    _create_private(tmp, _manifest_bytes(manifest))
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


# ---------------------------------------------------------------------------------------
# Writing: one background thread per process
# ---------------------------------------------------------------------------------------


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

    def mark(self, recorder: JobRecorder) -> None:
        with self._cond:
            self._dirty[recorder] = None
            if not self._ticking:
                self._ticking = True
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="azpar-job-store", daemon=True)
                    self._thread.start()
                self._cond.notify_all()

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
            with self._cond:
                self._busy = False
                self._cond.notify_all()


_writer = _Writer()


def flush(timeout: float | None = 30.0) -> bool:
    """Write this process's pending store records now (before reading the store back)."""
    return _writer.flush(timeout)


atexit.register(flush, 10.0)  # registered before session's close: runs after it (LIFO)

_warned: set[str] = set()


class JobRecorder:
    """Writes one job into the store. The engine's threads call its methods, which only
    queue what happened; the writer thread encodes and writes it, in order, so a task's
    record is on disk before the manifest that says the job ended. A write that fails stops
    recording this job (``job.store_error`` says why, once on stderr too); the job runs on."""

    def __init__(self, job: Job, manifest: dict, items: Sequence[tuple[str, Sequence[int], str, bytes]],
                 root: Path, base_id: str | None = None, append_fd: int | None = None):
        self.job = job
        self.manifest = manifest
        # Paths are fixed now: the writer runs later, when $AZPAR_JOB_STORE may name another folder.
        self.root = root
        self.folder = root / job.id
        self.base = root / base_id if base_id and _valid_id(base_id) else None
        self._items = items
        self._pending: collections.deque[tuple] = collections.deque()
        self._fd: int | None = append_fd  # given: the folder exists (a job resumed by this process)
        self._created = append_fd is not None
        self._failed = False
        self._ended = False
        self._wrote_final = False  # the manifest written at creation already had the final state
        _writer.mark(self)

    def __hash__(self) -> int:
        return id(self)

    def claim(self) -> None:
        """Write the manifest now (a resumed job: it names this process as the owner)."""
        write_manifest(self.folder, self.manifest)

    def abandon(self) -> None:
        """Stop recording without writing anything more (a resumed job that could not be followed)."""
        self._failed = True
        self._close()

    # -------------------------------------------------------------- called by the engine

    def task_result(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> None:
        """A task finished (some iterations may have raised): keep its encoded values."""
        self._pending.append(("result", task_id, indices, result))
        _writer.mark(self)

    def task_failed(self, task_id: str, indices: Sequence[int], error_type: str, message: str, kind: str) -> None:
        """A task produced nothing (lost worker, timeout, cancelled, environment)."""
        self._pending.append(("fail", task_id, indices,
                              {"type": error_type, "message": message, "traceback": "", "line": None, "kind": kind}))
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
        """The job ended: record its final state and counts."""
        job = self.job
        succeeded, failed, cancelled = job.counts()
        self._pending.append(("end", {"state": job.state, "finished": time.time(), "elapsed": job.elapsed(),
                                      "counts": {"succeeded": succeeded, "failed": failed, "cancelled": cancelled}}))
        _writer.mark(self)

    # -------------------------------------------------------------- on the writer thread

    def _drain(self) -> None:
        if self._failed:
            self._pending.clear()
            return
        try:
            self._write_pending()
        except Exception as exc:
            self._failed = True
            self._pending.clear()
            self._close()
            message = f"{type(exc).__name__}: {exc}"
            self.job.store_error = message
            root = str(self.root)
            if root not in _warned:
                _warned.add(root)
                print(f"azpar: the job store {root} could not keep job {self.job.id} ({message}); its results "
                      "stay in this session only.", file=sys.stderr)

    def _write_pending(self) -> None:
        chunks: list[bytes] = []
        end = None
        keep: tuple[str, bytes] | None = None  # (sha256, bytes) of a namespace this store keeps
        while self._pending:
            event = self._pending.popleft()
            if event[0] == "result":
                chunks.append(self._result_records(*event[1:]))
            elif event[0] == "fail":
                _, task_id, indices, failure = event
                chunks.append(_record({"k": "fail", "t": task_id, **_indices_header(indices), "failure": failure}))
            elif event[0] == "envelope":
                _, envelope, namespace = event
                chunks.append(_record({"k": "envelope"}, json.dumps(envelope, default=str).encode()))
                if namespace is not None:
                    keep = (envelope["namespace"]["sha256"], namespace)
            else:
                end = event[1]
        data = b"".join(chunks)
        if not self._created:
            self._create(data, end)
        elif data and self._fd is not None:  # (a late duplicate after the end is dropped, as the Job drops it)
            _write_all(self._fd, data)
        if keep is not None:
            try:
                keep_namespace(self.root, self.folder, *keep)
            except OSError:  # (a full disk): the job's records matter more; debug then says it has none
                pass
        if end is not None and not self._ended:
            self._ended = True
            self._close()
            if not self._wrote_final:
                self.manifest.update(end)
                write_manifest(self.folder, self.manifest)

    def _create(self, data: bytes, end: dict | None) -> None:
        ensure_root(self.root)
        try:
            os.mkdir(self.folder, 0o700)
        except FileNotFoundError:  # the store was removed since this process checked it
            _checked_roots.discard(str(self.root))
            ensure_root(self.root)
            os.mkdir(self.folder, 0o700)
        head = [FILE_MAGIC]
        ran = self.manifest.get("ran")
        if self.base is not None and ran is not None and len(_from_runs(ran)) < self.manifest["items"]:
            # Keep the earlier run's records (its items too): this folder stands on its own.
            earlier = _read_file(self.base / RECORDS)
            head.append(_record({"k": "import", "from": self.base.name, "skip": ran}, earlier[len(FILE_MAGIC):]))
        head.extend(_record({"k": "items", "t": task_id, **_indices_header(indices), "codec": codec}, blob)
                    for task_id, indices, codec, blob in self._items)
        self._items = ()
        self._fd = _create_private(self.folder / RECORDS, b"".join(head) + data, append=end is None)
        if end is not None:  # a job that ended before its first write: one manifest, final at once
            self.manifest.update(end)
            self._wrote_final = True
        _create_private(self.folder / MANIFEST, _manifest_bytes(self.manifest))
        self._created = True

    def _result_records(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> bytes:
        failed = result.get("failed") or {}
        where = _indices_header(indices)
        body = pickle.dumps({"values": result["values"], "gathered": result.get("gathered"), "failed": failed},
                            protocol=pickle.HIGHEST_PROTOCOL)
        data = _record({"k": "result", "t": task_id, **where, "failed": len(failed)}, body)
        outputs = result.get("outputs") or {}
        if outputs or failed:
            logs = {"outputs": outputs,
                    "failures": {i: {"type": rec.get("type", "Exception"), "message": rec.get("message", ""),
                                     "traceback": rec.get("traceback", ""), "line": rec.get("line"),
                                     "kind": "user"} for i, rec in failed.items()}}
            data += _record({"k": "logs", "t": task_id, **where}, pickle.dumps(logs, protocol=pickle.HIGHEST_PROTOCOL))
        return data

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def options_to_json(options: JobOptions) -> dict:
    """The options as plain data. A callable ``combine`` is kept by its import name and
    looked up again when the job is loaded (a notebook function: in the new ``__main__``)."""
    combine = options.combine
    if callable(combine):
        combine = {"callable": f"{getattr(combine, '__module__', None) or '?'}:"
                               f"{getattr(combine, '__qualname__', None) or repr(combine)}"}
    return {"combine": combine, "errors": options.errors, "gather": list(options.gather),
            "retries": options.retries, "timeout": options.timeout, "chunk_size": options.chunk_size,
            "seed": options.seed, "output_name": options.output_name, "inputs": list(options.inputs),
            "outputs": list(options.outputs), "outputs_to": options.outputs_to, "name": options.name}


def _restore_combine(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    name = spec.get("callable", "?:?")
    module_name, _, qualname = name.partition(":")
    try:
        if module_name == "__main__":
            obj: Any = sys.modules["__main__"]
        else:
            import importlib

            obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if callable(obj):
            return obj
    except Exception:
        pass

    message = (f"This job combines its values with {qualname} (from {module_name}), which is not defined "
               "here; define it, then try again.")

    def missing(values: list) -> Any:
        raise StoreError(message)

    missing.missing = message  # type: ignore[attr-defined]  (rerun refuses before submitting)
    return missing


def options_from_json(data: Mapping[str, Any]) -> JobOptions:
    return JobOptions(combine=_restore_combine(data.get("combine", "list")), errors=data.get("errors", "stop"),
                      gather=tuple(data.get("gather") or ()), retries=data.get("retries", 2),
                      timeout=data.get("timeout"), chunk_size=data.get("chunk_size"), seed=data.get("seed"),
                      output_name=data.get("output_name"), inputs=tuple(data.get("inputs") or ()),
                      outputs=tuple(data.get("outputs") or ()), outputs_to=data.get("outputs_to"),
                      name=data.get("name"))


def start_recording(job: Job, *, items: Sequence[tuple[str, Sequence[int], str, bytes]],
                    tasks: int, backend_info: Mapping[str, Any] | None = None,
                    export: Sequence[str] = (), no_export: Sequence[str] = (), cwd: str | None = None,
                    ran: Sequence[int] | None = None, base_id: str | None = None) -> JobRecorder:
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
        "options": options_to_json(job.options),
        "export": list(export),
        "no_export": list(no_export),
        "cwd": cwd,
        "source": job.source,
        "items": len(job.items),
        "tasks": tasks,
        "state": RUNNING,
        "rerun_of": base_id,
        "ran": _runs(ran) if ran is not None else None,
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


def stored_tasks(job_id: str) -> list[tuple[str, Sequence[int], str, bytes]]:
    """The tasks the job shipped, as (task id, indices, items codec, items bytes), from its
    own items records (not those an earlier run's import brought): what a backend needs to
    add tasks a dead kernel had not added yet."""
    found = []
    for header, body, _ in _iter_records(_read_file(job_folder(job_id) / RECORDS), len(FILE_MAGIC)):
        if header.get("k") == "items" and header.get("t") is not None:
            found.append((str(header["t"]), _indices_of(header), header["codec"], bytes(body)))
    return found


def stored_envelope(job_id: str) -> tuple[dict | None, bytes | None]:
    """(envelope header, namespace bytes) the job ran with, from its own records (not an
    earlier run's that a rerun imported): (None, None) for a job stored before azpar kept
    them, bytes None when the backend staged the namespace elsewhere (``keep_envelope``)."""
    flush()
    envelope: dict | None = None
    for header, body, _ in _iter_records(_read_file(job_folder(job_id) / RECORDS), len(FILE_MAGIC)):
        if header.get("k") == "envelope":
            envelope = json.loads(bytes(body))
    return envelope, stored_namespace(job_id) if envelope is not None else None


def item_record(job_id: str, index: int) -> tuple[str, bytes, Sequence[int]] | str | None:
    """Where iteration ``index`` of the job was shipped from: (codec, bytes, indices) of
    the job's own task that ran it; the id of the earlier job when a rerun kept that
    iteration's result instead of running it; None when the store has no such item."""
    data = _read_file(job_folder(job_id) / RECORDS)
    for header, body, _ in _iter_records(data, len(FILE_MAGIC)):
        if header.get("k") == "items" and index in _indices_of(header):
            return header["codec"], bytes(body), _indices_of(header)
    for header, _, _ in _iter_records(data, len(FILE_MAGIC)):
        if header.get("k") == "import":
            return str(header.get("from") or "")
    return None


def reattachable(manifest: Mapping[str, Any]) -> bool:
    """A job that runs on without its kernel (``outlives_kernel``), has not ended, and whose
    kernel is gone or on another machine: a process that attaches to it takes it over."""
    if manifest.get("state") in FINAL_STATES:
        return False
    if not (manifest.get("backend_info") or {}).get("outlives_kernel"):
        return False
    return owner_alive(manifest.get("owner") or {}) is not True


# ---------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSummary:
    """One row of ``%azpar jobs``: read from the manifest (and record headers for a job that
    did not end), never from the values."""

    id: str
    created: float
    backend: str
    state: str
    succeeded: int
    failed: int
    cancelled: int
    total: int
    first_line: str
    creator: str = ""
    rerun_of: str | None = None
    where: str = ""  # the process running it, for a job that runs elsewhere
    name: str = ""  # its --name, if it was given one

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        """The row of a job this process holds: its live state and counts."""
        succeeded, failed, cancelled = job.counts()
        first = job.source.splitlines()[0] if job.source else ""
        return cls(job.id, job.created, job.backend_name, job.state, succeeded, failed, cancelled,
                   len(job.items), first, creator(), job.rerun_of, job.owner, job.options.name or "")


def effective_state(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(state, where): a job that did not end and whose process is gone is lost; ``where``
    names the process (or host) of one that still runs elsewhere."""
    # A manifest written before the done state existed says failed for a job that gave its result.
    state = stored_state(manifest.get("state", "?"), (manifest.get("options") or {}).get("errors"))
    if state in FINAL_STATES:
        return state, ""
    info = manifest.get("owner") or {}
    alive = owner_alive(info)
    if (manifest.get("backend_info") or {}).get("outlives_kernel"):  # never lost: it runs without its kernel
        return state, f"process {info.get('pid')}" if alive else ""
    if alive is False:
        return LOST, ""
    if alive is None:
        return state, f"on {info.get('host', '?')}"
    return state, f"process {info.get('pid')}"


def _walk(data: bytes | memoryview | mmap.mmap, start: int, skip: frozenset[int] = frozenset(), base: bool = False
          ) -> Iterator[tuple[dict, memoryview, frozenset[int], bool, int]]:
    """Every record from ``start``, entering import records (a rerun's copy of the earlier
    job's records): (header, body, iterations whose old records no longer count, whether it
    comes from an earlier run, offset after the enclosing top-level record)."""
    for header, body, offset in _iter_records(data, start):
        if header.get("k") == "import":
            inner = skip | frozenset(_from_runs(header.get("skip")))
            for h, b, sk, _, _ in _walk(body, 0, inner, True):
                yield h, b, sk, True, offset
        else:
            yield header, body, skip, base, offset


def _scan_counts(folder: Path, manifest: Mapping[str, Any]) -> tuple[int, int, int]:
    """(succeeded, failed, cancelled) from the record headers: for a job that did not end
    (its manifest has no final counts). Iterations a rerun kept count as succeeded."""
    total = manifest.get("items", 0)
    ran = _from_runs(manifest.get("ran")) if manifest.get("ran") is not None else None
    kept = total - len(ran) if ran is not None else 0
    seen: set[int] = set()
    succeeded, failed, cancelled = kept, 0, 0
    for header, _, _ in _iter_records(_read_file(folder / RECORDS), len(FILE_MAGIC)):
        kind = header.get("k")
        if kind not in ("result", "fail"):
            continue
        indices = [i for i in _indices_of(header) if i not in seen]
        seen.update(indices)
        if kind == "fail":
            if header["failure"].get("kind") == "cancelled":
                cancelled += len(indices)
            else:
                failed += len(indices)
        else:
            bad = min(header.get("failed", 0), len(indices))
            failed += bad
            succeeded += len(indices) - bad
    return succeeded, failed, cancelled


def summary(job_id: str) -> JobSummary:
    manifest = read_manifest(job_id)
    state, where = effective_state(manifest)
    counts = manifest.get("counts")
    if counts and manifest.get("state") in FINAL_STATES:
        succeeded, failed, cancelled = counts["succeeded"], counts["failed"], counts["cancelled"]
    else:
        succeeded, failed, cancelled = _scan_counts(job_folder(job_id), manifest)
    source = manifest.get("source") or ""
    return JobSummary(job_id, manifest.get("created", 0.0), manifest.get("backend", "?"), state, succeeded,
                      failed, cancelled, manifest.get("items", 0), source.splitlines()[0] if source else "",
                      manifest.get("creator", ""), manifest.get("rerun_of"), where, manifest.get("name") or "")


def job_ids() -> list[str]:
    """Ids of every stored job, oldest first (ids start with their creation time)."""
    flush()
    root = store_root()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _valid_id(n) and (root / n / MANIFEST).exists())


def latest_id() -> str | None:
    """The stored job created last (ids sort by time only to the second)."""
    best: tuple[float, str] | None = None
    for job_id in job_ids():
        try:
            created = float(read_manifest(job_id).get("created", 0.0))
        except (KeyError, StoreError, OSError, ValueError):
            continue
        if best is None or (created, job_id) > best:
            best = (created, job_id)
    return best[1] if best else None


def list_jobs() -> list[JobSummary]:
    """Every stored job, oldest first; unreadable ones are skipped rather than failing the list."""
    rows = []
    for job_id in job_ids():
        try:
            rows.append(summary(job_id))
        except (KeyError, StoreError, OSError):
            continue
    return sorted(rows, key=lambda r: (r.created, r.id))


def resolve(job_id: str) -> str:
    """The stored id that ``job_id`` names: the whole id, a job's --name (the newest job of
    that name), or a unique start or end of an id. A name wins over an id's start or end:
    the user typed it in full, while an id's end is only a shortcut."""
    ids = job_ids()
    if job_id in ids:
        return job_id
    named = newest_named(job_id, ids)
    if named is not None:
        return named
    matches = [i for i in ids if i.endswith(job_id) or i.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"{job_id!r} matches {len(matches)} stored jobs ({', '.join(matches[:5])}); give more of the id")
    raise KeyError(job_id)


NAME_MAX = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(name: str) -> str:
    """``name`` if it can label a job (``--name``): 1 to 64 letters, digits, ``-``, ``_`` or
    ``.``, so that it reads the same in a table, a command line and a glob, and cannot be
    taken for an option (no leading ``-``) or an id; ValueError saying why otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("a job name cannot be empty; use letters, digits, '-', '_' or '.' (at most 64)")
    bad = sorted(set(name) - _NAME_CHARS)
    if bad or len(name) > NAME_MAX or name.startswith("-") or _valid_id(name):
        why = (f"it has {', '.join(map(repr, bad))}" if bad else f"it is {len(name)} characters long"
               if len(name) > NAME_MAX else "it starts with '-'" if name.startswith("-") else "it looks like a job id")
        raise ValueError(f"{name!r} cannot name a job: {why}. A name is 1 to {NAME_MAX} letters, digits, '-', '_' "
                         "or '.', not starting with '-' (e.g. --name sweep-2024.v2)")
    return name


def newest_named(name: str, ids: Sequence[str] | None = None) -> str | None:
    """The id of the newest stored job called ``name``, or None. Only names that could be
    given (``check_name``) are looked for, so an id fragment costs no manifest reads."""
    try:
        check_name(name)
    except ValueError:
        return None
    best: tuple[float, str] | None = None
    for job_id in ids if ids is not None else job_ids():
        try:
            manifest = read_manifest(job_id)
        except (KeyError, StoreError, OSError):
            continue
        if manifest.get("name") == name and (best is None or (manifest.get("created", 0.0), job_id) > best):
            best = (float(manifest.get("created", 0.0)), job_id)
    return best[1] if best else None


def parse_since(text: str, now: float | None = None) -> float:
    """The time ``--since`` means, as seconds since the epoch: an ISO date or date and time
    (``2026-12-01``, ``2026-12-01T09:30``; local time unless it says its zone), ``today`` or
    ``yesterday`` (from local midnight), or ``Nd`` (N whole days before now). ValueError
    with the accepted forms otherwise."""
    import datetime as dt

    now = time.time() if now is None else now
    word = text.strip().lower()
    midnight = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "today":
        return midnight.timestamp()
    if word == "yesterday":
        return (midnight - dt.timedelta(days=1)).timestamp()
    if word.endswith("d") and word[:-1].isdigit():
        return now - int(word[:-1]) * 86400
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since takes a date (2026-12-01), a date and time (2026-12-01T09:30), today, yesterday "
                         f"or Nd (the last N days, e.g. 7d), not {text!r}") from None
    return when.timestamp()  # a naive time is local time, as the table's 'when' column shows


def filter_jobs(rows: Sequence[JobSummary], *, state: str | None = None, name: str | None = None,
                since: float | str | None = None) -> list[JobSummary]:
    """The rows whose state is ``state`` (one or several, comma-separated), whose name
    matches the glob ``name`` (``sweep-*``; a job without a name never matches), and that
    were created at or after ``since`` (seconds since the epoch, or what ``parse_since``
    reads)."""
    import fnmatch

    states = {s.strip() for s in state.split(",") if s.strip()} if state else None
    known = (PENDING, RUNNING, *FINAL_STATES)
    unknown = sorted(states - set(known)) if states else []
    if unknown:
        raise ValueError(f"--state takes {', '.join(known)} (several with commas), not {', '.join(unknown)}")
    after = parse_since(since) if isinstance(since, str) else since
    return [r for r in rows
            if (states is None or r.state in states)
            and (name is None or (bool(r.name) and fnmatch.fnmatchcase(r.name, name)))
            and (after is None or r.created >= after)]


class MissingItem:
    """Stands in for an item that could not be read back (its class is not defined in this
    kernel): enough for views; ``rerun`` refuses to run it."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason

    def __repr__(self) -> str:
        return f"<item {self.index}: not loaded: {self.reason}>"


def load_items(job_id: str, total: int | None = None) -> list:
    """The job's items as it shipped them, rebuilt in this process (notebook classes and
    functions the items refer to by name are looked up in this ``__main__``)."""
    data = _read_file(job_folder(job_id) / RECORDS)
    if total is None:
        total = read_manifest(job_id).get("items", 0)
    items: list = [None] * total
    loaded = bytearray(total)
    for header, body, _, _, _ in _walk(data, len(FILE_MAGIC)):
        if header.get("k") != "items":
            continue
        indices = _indices_of(header)
        try:
            chunk = wire.loads(header["codec"], bytes(body))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            chunk = [MissingItem(i, reason) for i in indices]
        for index, item in zip(indices, chunk):
            if 0 <= index < total:
                items[index] = item
                loaded[index] = 1
    for index in range(total):
        if not loaded[index]:
            items[index] = MissingItem(index, "not in the job store")
    return items


def _failure_from_json(index: int, data: Mapping[str, Any]) -> Failure:
    return Failure(index, data.get("type", "Exception"), data.get("message", ""), data.get("traceback", ""),
                   data.get("line"), data.get("kind", "user"))


def _replay(job: Job, data: bytes | memoryview | mmap.mmap, start: int, *, values: bool) -> int:
    """Replay records from ``start`` into ``job``; return the offset after the last whole one.

    Logs first (output; user failures as text), then results. Without ``values`` result
    bodies are not even read: finished iterations get None and their failures come from
    the logs, which is all ``logs`` needs, and it works whatever this kernel defines."""
    logged: dict[int, Failure] = {}
    offset = start
    for header, body, skip, base, offset in _walk(data, start):
        if header.get("k") != "logs":
            continue
        record = pickle.loads(body)
        outputs = {int(i): ev for i, ev in (record.get("outputs") or {}).items() if int(i) not in skip}
        job.restore_outputs(outputs, base=base)
        for i, data_ in (record.get("failures") or {}).items():
            if int(i) not in skip:
                logged.setdefault(int(i), _failure_from_json(int(i), data_))
    for header, body, skip, base, offset in _walk(data, start):
        kind = header.get("k")
        if kind not in ("result", "fail"):
            continue
        indices = list(_indices_of(header))
        keep = [pos for pos, i in enumerate(indices) if i not in skip and 0 <= i < len(job.items)]
        kept = [indices[p] for p in keep]
        if kind == "fail":
            failure = header["failure"]
            job.restore(kept, [None] * len(kept), {i: _failure_from_json(i, failure) for i in kept}, {}, None,
                        base=base)
        elif not values:
            job.restore(kept, [None] * len(kept), {i: logged[i] for i in kept if i in logged}, {}, None, base=base)
        elif kept:
            record = pickle.loads(body)
            all_values = decode_list(record["values"])
            failed = {int(i): failure_from_record(int(i), rec) for i, rec in (record.get("failed") or {}).items()}
            gathered = None
            if record.get("gathered") is not None and job.options.gather:
                rows = decode_list(record["gathered"])
                gathered = {name: [(rows[p] or {}).get(name) for p in keep] for name in job.options.gather}
            job.restore(kept, [all_values[p] for p in keep], {i: failed[i] for i in kept if i in failed}, {},
                        gathered, base=base)
        if not base and header.get("t") is not None and header["t"] not in job.tasks:
            job.restore_task(header["t"], indices, _task_step(kind, header))
    return offset


def _task_step(kind: str, header: Mapping[str, Any]) -> TaskStep:
    """How a stored task ended, as the Job that ran it recorded it (``states.TASK_RULES`` gives its state)."""
    if kind == "fail":
        return ending_step(produced=False, all_cancelled=header["failure"].get("kind") == "cancelled")
    return ending_step(produced=True, any_failed=bool(header.get("failed")))


def load_job(job_id: str, *, values: bool = True) -> Job:
    """Rebuild the Job of a stored job: its items, values, failures and output come from the
    store, so ``result()``, ``logs()`` and ``rerun`` work in a new kernel. A job still running
    in another process of this machine is followed until it ends (the returned Job updates).

    Values are decoded here, so notebook classes they are instances of must be defined in
    this kernel first (StoreError says which is missing). ``values=False`` skips them (for
    ``logs``: output and tracebacks only; the Job's values are then all None)."""
    flush()
    manifest = read_manifest(job_id)
    folder = job_folder(job_id)
    total = manifest.get("items", 0)
    items = load_items(job_id, total)
    job = Job(job_id, items, options_from_json(manifest.get("options") or {}),
              backend_name=manifest.get("backend", "?"), pool=manifest.get("pool", ""),
              vm_size=manifest.get("vm_size", ""), source=manifest.get("source", ""))
    job.rerun_of = manifest.get("rerun_of")
    job.manifest = manifest
    state, where = effective_state(manifest)
    try:
        offset = _replay(job, _read_file(folder / RECORDS), len(FILE_MAGIC), values=values)
    except Exception as exc:
        raise StoreError(f"the results of job {job_id} could not be read back here: {type(exc).__name__}: {exc}. "
                         "Values that are instances of notebook classes need those classes defined in this "
                         "kernel (run the cells that define them), then try again.") from None
    job.restore_timing(manifest.get("created", time.time()), manifest.get("elapsed"))
    if state in FINAL_STATES:
        job.finish(state)
    elif values and reattachable(manifest):
        job.mark_running()
        job.reattach = True  # the caller hands it to its backend's engine (Engine.resume)
    else:
        job.mark_running()
        job.owner = where or "another process"  # job.cancel() does nothing here; the commands say why
        if values:
            _Follower(job, folder, offset).start()
    return job


class _Follower(threading.Thread):
    """Keeps a Job loaded from the store up to date while another process of this machine
    runs it: new records are replayed as they appear, and the job ends when that process
    writes its final state, or is lost when that process disappears first."""

    def __init__(self, job: Job, folder: Path, offset: int):
        super().__init__(name=f"azpar-follow-{job.id}", daemon=True)
        self.job, self.folder, self.offset = job, folder, offset

    def run(self) -> None:
        job = self.job
        while True:
            time.sleep(FOLLOW_INTERVAL)
            try:
                manifest = read_manifest(job.id)
                state, _ = effective_state(manifest)
                self.offset = max(self.offset, _replay(job, _read_file(self.folder / RECORDS), self.offset,
                                                       values=True))
            except Exception as exc:  # deleted meanwhile, or unreadable: stop following
                job.store_error = f"{type(exc).__name__}: {exc}"
                job.finish(LOST)
                return
            job.notify()
            if state in FINAL_STATES:
                if manifest.get("elapsed") is not None:
                    job.restore_timing(manifest.get("created", job.created), manifest["elapsed"])
                job.finish(state)
                return


def delete(job_id: str) -> None:
    """Remove the job's folder: its manifest and records (items, results, logs), and its
    namespace when no other job keeps the same one."""
    folder = job_folder(job_id)
    if not (folder / MANIFEST).exists():
        raise KeyError(job_id)
    digest = None
    try:
        digest = stored_envelope(job_id)[0]["namespace"]["sha256"]
    except (TypeError, KeyError, ValueError, OSError, StoreError):
        pass
    shutil.rmtree(folder)
    if digest:
        _drop_unlinked_namespace(folder.parent, digest)


# ---------------------------------------------------------------------------------------
# Namespaces: content-addressed, one hard link per job
# ---------------------------------------------------------------------------------------

NAMESPACES = "namespaces"  # under the store root: ns-<sha256>.bin, one file per distinct namespace
NAMESPACE_LINK = "namespace.bin"  # in a job's folder: a hard link to its namespace


def _namespace_path(root: Path, digest: str) -> Path:
    if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise StoreError(f"{digest!r} is not a sha256 digest")
    return root / NAMESPACES / wire.namespace_file_name(digest)


def keep_namespace(root: Path, folder: Path, digest: str, data: bytes) -> None:
    """Keep a local job's namespace bytes for ``%azpar debug``: written once per distinct
    namespace under the store root (content-addressed, as staging is), and hard-linked into
    the job's folder, so that rerunning a cell that captures a 100 MB array stores it once,
    not once per run, and deleting a job removes its namespace with its last link (see
    ``delete``). A file system without hard links gets a copy per job."""
    shared = _namespace_path(root, digest)
    shared.parent.mkdir(mode=0o700, exist_ok=True)
    target = folder / NAMESPACE_LINK
    for _ in range(2):
        if not shared.exists():
            tmp = shared.with_name(f".{shared.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            _create_private(tmp, data)
            os.replace(tmp, shared)  # atomic: another writer of the same bytes wrote the same file
        try:
            os.link(shared, target)
            return
        except FileNotFoundError:  # removed by a delete between the check and the link: write it again
            continue
        except FileExistsError:
            return
        except OSError:  # no hard links here (some network or FUSE file systems)
            break
    _create_private(target, data)


def stored_namespace(job_id: str) -> bytes | None:
    """The namespace bytes the store keeps for a job (``keep_namespace``), or None."""
    try:
        with open(job_folder(job_id) / NAMESPACE_LINK, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _drop_unlinked_namespace(root: Path, digest: str) -> None:
    """Remove a kept namespace no job folder links to any more (its only link is its own)."""
    try:
        shared = _namespace_path(root, digest)
        if shared.stat().st_nlink <= 1:
            shared.unlink()
    except (FileNotFoundError, StoreError):
        pass

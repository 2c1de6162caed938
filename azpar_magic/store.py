"""The job store: each job's manifest, items, results and logs on local disk, so a job
outlives the cell, and the kernel, that started it.

Layout, one folder per job named by its id::

    $AZPAR_JOB_STORE, else $XDG_DATA_HOME/azpar/jobs, else ~/.local/share/azpar/jobs   (0700)
      azpar-20261125-101112-0123456789ab/                                              (0700)
        manifest.json   what the job is and where it stands; replaced atomically     (0600)
        items.azs       the materialised items, one record per task, as shipped      (0600)
        results.azs     one record per finished task: encoded values, failures        (0600)
        logs.azs        one record per task that printed or failed: output, tracebacks (0600)

Why this shape:

- The root and every job folder are 0700 and every file 0600 whatever the umask, and a root
  owned by another user is refused: one user's results and cell sources are never readable by
  another OS user (under JupyterHub, users are usually separate OS users). Job ids carry 48
  random bits (``engine.new_job_id``), so they cannot be guessed either.
- The ``.azs`` files are append-only sequences of length-prefixed records (a small JSON
  header, then a body). A task's record is appended once, when the task finishes, by one
  background writer thread per process: the engine's event path only puts the worker's
  result dict, whose values are still the bytes the worker sent, on a queue, so the store
  costs no re-serialisation and no I/O on the path the benchmark measures. A process killed
  mid-write leaves at most a torn last record, which readers ignore; records already written
  survive a killed kernel (they are in the OS's page cache; nothing here calls fsync, so a
  power cut may lose the last seconds).
- Headers carry the task's indices and counts, so listing jobs and reading logs never
  unpickles values; only ``load_job`` (attach, collect, rerun) decodes them.
- The manifest (JSON, readable by a human and by other tools) is rewritten with
  write-to-temporary-then-rename on each state change, so a reader never sees half of it.
- A rerun's files start with a copy of the earlier job's records under an ``import`` header
  naming the indices the rerun computes again: the rerun's folder is complete on its own
  (deleting the earlier job loses nothing) and the copy costs no decoding.

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
import getpass
import json
import os
import pickle
import shutil
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import worker as wire
from .job import FINAL_STATES, LOST, RUNNING, Failure, Job, JobOptions

STORE_ENV = "AZPAR_JOB_STORE"
FORMAT = 1
MANIFEST = "manifest.json"
ITEMS, RESULTS, LOGS = "items.azs", "results.azs", "logs.azs"
FILE_MAGIC = b"AZPARS1\n"
_RECORD = struct.Struct(">IQ")  # header length, body length
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
FOLLOW_INTERVAL = 0.3  # seconds between looks at a job another process is running


class StoreError(RuntimeError):
    """The job store cannot give what was asked; the message says why and what to do."""


# ---------------------------------------------------------------------------------------
# Where, and who
# ---------------------------------------------------------------------------------------


def store_root() -> Path:
    """The store folder (not created): ``$AZPAR_JOB_STORE``, else the XDG data folder.

    Read on every call, so a test or a notebook can point it elsewhere at any time."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    return base / "azpar" / "jobs"


_checked_roots: set[str] = set()


def ensure_root(root: Path | None = None) -> Path:
    """Create the store folder 0700 if needed; refuse one that another user owns, and take
    group and other permissions away from ours (a store made by hand with the umask's modes)."""
    root = root or store_root()
    key = str(root)
    if key in _checked_roots and root.is_dir():
        return root
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = root.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise StoreError(f"the job store {root} belongs to another user (uid {info.st_uid}); "
                         f"set {STORE_ENV} to a folder of your own")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(root, 0o700)
    _checked_roots.add(key)
    return root


def creator() -> str:
    """Who the job is for: the JupyterHub user when there is one (several hub users may map
    to one OS account), else the OS user."""
    hub = os.environ.get("JUPYTERHUB_USER")
    if hub:
        return hub
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


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


def _iter_records(data: bytes | memoryview, start: int = 0, *, bodies: bool = True
                  ) -> Iterator[tuple[dict, memoryview | None, int]]:
    """(header, body, offset after the record) for each whole record from ``start``; a torn
    last record (the writer was killed mid-write) ends the sequence."""
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
        yield header, (view[body_at:stop] if bodies else None), stop
        offset = stop


def _read_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return b""
    if data and not data.startswith(FILE_MAGIC):
        raise StoreError(f"{path} is not an azpar job store file")
    return data


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest atomically: readers see the old one or the new one, never half."""
    tmp = folder / f".{MANIFEST}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        _write_all(fd, json.dumps(manifest, indent=1, sort_keys=True, default=str).encode())
    finally:
        os.close(fd)
    os.replace(tmp, folder / MANIFEST)


def read_manifest(job_id: str) -> dict:
    path = job_folder(job_id) / MANIFEST
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise KeyError(job_id) from None
    except ValueError as exc:
        raise StoreError(f"the manifest of job {job_id} ({path}) is unreadable: {exc}") from None


# ---------------------------------------------------------------------------------------
# Writing: one background thread per process
# ---------------------------------------------------------------------------------------


class _Writer:
    """Does every store write of this process, in the order asked. Keeping file I/O and
    pickling off the engine's event thread is what keeps the store out of the benchmark."""

    def __init__(self) -> None:
        self._ops: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None

    def put(self, op: Callable[[], None]) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="azpar-job-store", daemon=True)
                self._thread.start()
            self._ops.append(op)
            self._cond.notify()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything asked so far is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._ops or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops:
                    self._cond.wait()
                batch = list(self._ops)
                self._ops.clear()
                self._busy = True
            for op in batch:
                try:
                    op()
                except Exception:  # each op reports its own errors; never let the thread die
                    pass
            with self._cond:
                self._busy = False
                self._cond.notify_all()


_writer = _Writer()


def flush(timeout: float | None = 30.0) -> bool:
    """Wait for this process's pending store writes (before reading the store back)."""
    return _writer.flush(timeout)


atexit.register(flush, 10.0)  # registered before session's close: runs after it (LIFO)

_warned: set[str] = set()


class JobRecorder:
    """Writes one job into the store. Its methods are called from the engine's threads and
    only queue work; the writer thread does it, in order, so a task's record is on disk
    before the manifest that says the job ended. A write that fails stops recording this
    job (``job.store_error`` says why, once on stderr too); the job itself runs on."""

    def __init__(self, job: Job, manifest: dict, items: Sequence[tuple[Sequence[int], str, bytes]],
                 base_id: str | None = None):
        self.job = job
        self.manifest = manifest
        # Paths are fixed now: the writer runs later, when $AZPAR_JOB_STORE may name another folder.
        self.root = store_root()
        self.folder = self.root / job.id
        self.base = self.root / base_id if base_id and _valid_id(base_id) else None
        self._fds: dict[str, int] = {}
        self._failed = False
        _writer.put(lambda: self._guard(self._create, items, base_id))

    # -------------------------------------------------------------- called by the engine

    def task_result(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> None:
        """A task finished (some iterations may have raised): keep its encoded values."""
        _writer.put(lambda: self._guard(self._append_result, task_id, indices, result))

    def task_failed(self, task_id: str, indices: Sequence[int], error_type: str, message: str, kind: str) -> None:
        """A task produced nothing (lost worker, timeout, cancelled, environment)."""
        _writer.put(lambda: self._guard(self._append_failure, task_id, indices, error_type, message, kind))

    def finish(self) -> None:
        """The job ended: record its final state and counts, close the files."""
        job = self.job
        succeeded, failed, cancelled = job.counts()
        update = {"state": job.state, "finished": time.time(), "elapsed": job.elapsed(),
                  "counts": {"succeeded": succeeded, "failed": failed, "cancelled": cancelled}}
        _writer.put(lambda: self._guard(self._finish, update))

    # -------------------------------------------------------------- on the writer thread

    def _guard(self, step: Callable[..., None], *args: Any) -> None:
        if self._failed:
            return
        try:
            step(*args)
        except Exception as exc:
            self._failed = True
            self._close()
            message = f"{type(exc).__name__}: {exc}"
            self.job.store_error = message
            root = str(store_root())
            if root not in _warned:
                _warned.add(root)
                print(f"azpar: the job store {root} could not keep job {self.job.id} ({message}); its results "
                      "stay in this session only.", file=sys.stderr)

    def _create(self, items: Sequence[tuple[Sequence[int], str, bytes]], base_id: str | None) -> None:
        ensure_root(self.root)
        os.mkdir(self.folder, 0o700)
        os.chmod(self.folder, 0o700)
        base = self.base
        if base is not None and (base / ITEMS).exists():
            # A rerun runs the same items: the earlier job's copy is complete, ours only a subset.
            shutil.copyfile(base / ITEMS, self.folder / ITEMS)
            os.chmod(self.folder / ITEMS, 0o600)
        else:
            fd = _open_private(self.folder / ITEMS, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                _write_all(fd, FILE_MAGIC + b"".join(
                    _record({**_indices_header(indices), "codec": codec}, data) for indices, codec, data in items))
            finally:
                os.close(fd)
        ran = self.manifest.get("ran")
        skip = _runs(_from_runs(ran))
        keeps_some = ran is not None and len(_from_runs(ran)) < self.manifest["items"]
        for name in (RESULTS, LOGS):
            fd = _open_private(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            self._fds[name] = fd
            head = FILE_MAGIC
            if base is not None and keeps_some:
                earlier = _read_file(base / name)[len(FILE_MAGIC):]
                head += _record({"import": base_id, "skip": skip}, earlier)
            _write_all(fd, head)
        write_manifest(self.folder, self.manifest)

    def _append_result(self, task_id: str, indices: Sequence[int], result: Mapping[str, Any]) -> None:
        failed = result.get("failed") or {}
        body = pickle.dumps({"values": result["values"], "gathered": result.get("gathered"), "failed": failed},
                            protocol=pickle.HIGHEST_PROTOCOL)
        header = {"t": task_id, **_indices_header(indices), "failed": len(failed)}
        _write_all(self._fds[RESULTS], _record(header, body))
        outputs = result.get("outputs") or {}
        if outputs or failed:
            logs = {"outputs": outputs,
                    "failures": {i: {"type": rec.get("type", "Exception"), "message": rec.get("message", ""),
                                     "traceback": rec.get("traceback", ""), "line": rec.get("line"),
                                     "kind": "user"} for i, rec in failed.items()}}
            _write_all(self._fds[LOGS], _record({"t": task_id, **_indices_header(indices)},
                                                pickle.dumps(logs, protocol=pickle.HIGHEST_PROTOCOL)))

    def _append_failure(self, task_id: str, indices: Sequence[int], error_type: str, message: str,
                        kind: str) -> None:
        failure = {"type": error_type, "message": message, "traceback": "", "line": None, "kind": kind}
        header = {"t": task_id, **_indices_header(indices), "task_failure": failure}
        _write_all(self._fds[RESULTS], _record(header))
        if kind != "cancelled":
            _write_all(self._fds[LOGS], _record(header))

    def _finish(self, update: dict) -> None:
        self._close()
        self.manifest.update(update)
        write_manifest(self.folder, self.manifest)

    def _close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


def options_to_json(options: JobOptions) -> dict:
    """The options as plain data. A callable ``combine`` is kept by its import name and
    looked up again when the job is loaded (a notebook function: in the new ``__main__``)."""
    combine = options.combine
    if callable(combine):
        combine = {"callable": f"{getattr(combine, '__module__', None) or '?'}:"
                               f"{getattr(combine, '__qualname__', None) or repr(combine)}"}
    return {"combine": combine, "errors": options.errors, "gather": list(options.gather),
            "retries": options.retries, "timeout": options.timeout, "chunk_size": options.chunk_size,
            "seed": options.seed, "output_name": options.output_name}


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
                      output_name=data.get("output_name"))


def start_recording(job: Job, *, items: Sequence[tuple[Sequence[int], str, bytes]],
                    tasks: int, backend_info: Mapping[str, Any] | None = None,
                    export: Sequence[str] = (), no_export: Sequence[str] = (), cwd: str | None = None,
                    ran: Sequence[int] | None = None, base_id: str | None = None) -> JobRecorder:
    """Open the job's folder (on the writer thread) and return what the engine feeds.

    ``items``: (indices, codec, bytes) per task, as shipped. ``ran``: the iterations this run
    computes when it is a rerun of ``base_id`` (whose other, finished, iterations it keeps)."""
    info = dict(backend_info or {})
    folder = job_folder(job.id)
    manifest = {
        "format": FORMAT,
        "id": job.id,
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
        "location": {"folder": str(folder), "items": ITEMS, "results": RESULTS, "logs": LOGS},
        "backend_info": info,
    }
    job.manifest = manifest  # rerun reads export/no_export from it
    return JobRecorder(job, manifest, items, base_id)


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

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        """The row of a job this process holds: its live state and counts."""
        succeeded, failed, cancelled = job.counts()
        first = job.source.splitlines()[0] if job.source else ""
        return cls(job.id, job.created, job.backend_name, job.state, succeeded, failed, cancelled,
                   len(job.items), first, creator(), job.rerun_of, job.owner)


def effective_state(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(state, where): a job that did not end and whose process is gone is lost; ``where``
    names the process (or host) of one that still runs elsewhere."""
    state = manifest.get("state", "?")
    if state in FINAL_STATES:
        return state, ""
    info = manifest.get("owner") or {}
    if (manifest.get("backend_info") or {}).get("outlives_kernel"):
        return state, ""
    alive = owner_alive(info)
    if alive is False:
        return LOST, ""
    if alive is None:
        return state, f"on {info.get('host', '?')}"
    return state, f"process {info.get('pid')}"


def _scan_counts(folder: Path, manifest: Mapping[str, Any]) -> tuple[int, int, int]:
    """(succeeded, failed, cancelled) from the results file's headers: for a job that did not
    end (its manifest has no final counts). Iterations a rerun kept count as succeeded."""
    total = manifest.get("items", 0)
    ran = _from_runs(manifest.get("ran")) if manifest.get("ran") is not None else None
    kept = total - len(ran) if ran is not None else 0
    seen: set[int] = set()
    succeeded, failed, cancelled = kept, 0, 0
    for header, _, _ in _iter_records(_read_file(folder / RESULTS), len(FILE_MAGIC), bodies=False):
        if "import" in header:
            continue
        indices = [i for i in _indices_of(header) if i not in seen]
        seen.update(indices)
        task_failure = header.get("task_failure")
        if task_failure:
            if task_failure.get("kind") == "cancelled":
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
                      manifest.get("creator", ""), manifest.get("rerun_of"), where)


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
    """The stored id that ``job_id`` names: the whole id, or a unique start or end of one."""
    ids = job_ids()
    if job_id in ids:
        return job_id
    matches = [i for i in ids if i.endswith(job_id) or i.startswith(job_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KeyError(f"{job_id!r} matches {len(matches)} stored jobs ({', '.join(matches[:5])}); give more of the id")
    raise KeyError(job_id)


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
    data = _read_file(job_folder(job_id) / ITEMS)
    if total is None:
        total = read_manifest(job_id).get("items", 0)
    items: list = [None] * total
    loaded = bytearray(total)
    for header, body, _ in _iter_records(data, len(FILE_MAGIC)):
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


def _decoders():
    # The worker's result format is decoded by the engine's own helpers, imported here (not
    # at the top) because the engine imports this module.
    from .engine import _decode_list, _failure_from_record

    return _decode_list, _failure_from_record


def _failure_from_json(index: int, data: Mapping[str, Any]) -> Failure:
    return Failure(index, data.get("type", "Exception"), data.get("message", ""), data.get("traceback", ""),
                   data.get("line"), data.get("kind", "user"))


def _replay_logs(job: Job, data: bytes | memoryview, start: int, skip: set[int], base: bool,
                 failures: dict[int, Failure]) -> int:
    """Output (into ``job``) and user failures (into ``failures``) from a logs file's records;
    ``skip``: iterations a rerun computed again, whose earlier records no longer count."""
    offset = start
    for header, body, offset in _iter_records(data, start):
        if "import" in header:
            _replay_logs(job, body, 0, skip | _from_runs(header.get("skip")), True, failures)
            continue
        if "task_failure" in header:
            continue  # rebuilt from the results file, which has them all
        record = pickle.loads(body)
        outputs = {int(i): ev for i, ev in (record.get("outputs") or {}).items() if int(i) not in skip}
        with job._lock:
            (job._base_outputs if base else job._outputs).update(outputs)
        for i, data_ in (record.get("failures") or {}).items():
            if int(i) not in skip:
                failures.setdefault(int(i), _failure_from_json(int(i), data_))
    return offset


def _replay_results(job: Job, data: bytes | memoryview, start: int, skip: set[int], base: bool, *,
                    values: bool, logged: Mapping[int, Failure]) -> int:
    """Iterations from a results file's records into ``job``; return the offset reached.
    Without ``values`` only the headers are read: finished iterations get None as their value
    and failures come from ``logged`` (the logs file), which is all ``logs`` needs."""
    decode_list, failure_from_record = _decoders() if values else (None, None)
    offset = start
    for header, body, offset in _iter_records(data, start, bodies=values):
        if "import" in header:
            _replay_results(job, body, 0, skip | _from_runs(header.get("skip")), True, values=values,
                            logged=logged)
            continue
        indices = list(_indices_of(header))
        keep = [pos for pos, i in enumerate(indices) if i not in skip and 0 <= i < len(job.items)]
        kept = [indices[p] for p in keep]
        task_failure = header.get("task_failure")
        if task_failure:
            job.restore(kept, [None] * len(kept), {i: _failure_from_json(i, task_failure) for i in kept}, {},
                        None, base=base)
        elif not values:
            failed = {i: logged[i] for i in kept if i in logged}
            job.restore(kept, [None] * len(kept), failed, {}, None, base=base)
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
        if not base and "t" in header and header["t"] not in job.tasks:
            job.add_task(header["t"], indices)
            job._finalize(job.task(header["t"]), "failed" if task_failure or header.get("failed") else "succeeded")
    return offset


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
    logged: dict[int, Failure] = {}
    logs_at = _replay_logs(job, _read_file(folder / LOGS), len(FILE_MAGIC), set(), False, logged)
    try:
        results_at = _replay_results(job, _read_file(folder / RESULTS), len(FILE_MAGIC), set(), False,
                                     values=values, logged=logged)
    except Exception as exc:
        raise StoreError(f"the results of job {job_id} could not be read back here: {type(exc).__name__}: {exc}. "
                         "Values that are instances of notebook classes need those classes defined in this "
                         "kernel (run the cells that define them), then try again.") from None
    job.restore_timing(manifest.get("created", time.time()), manifest.get("elapsed"))
    if state in FINAL_STATES:
        job.finish(state)
    else:
        job.mark_running()
        job.owner = where or "another process"  # job.cancel() does nothing here; the commands say why
        if values:
            _Follower(job, folder, logs_at, results_at).start()
    return job


class _Follower(threading.Thread):
    """Keeps a Job loaded from the store up to date while another process of this machine
    runs it: new records are replayed as they appear, and the job ends when that process
    writes its final state, or is lost when that process disappears first."""

    def __init__(self, job: Job, folder: Path, logs_at: int, results_at: int):
        super().__init__(name=f"azpar-follow-{job.id}", daemon=True)
        self.job, self.folder = job, folder
        self.logs_at, self.results_at = logs_at, results_at

    def run(self) -> None:
        job = self.job
        while True:
            time.sleep(FOLLOW_INTERVAL)
            try:
                manifest = read_manifest(job.id)
                state, _ = effective_state(manifest)
                logged: dict[int, Failure] = {}
                self.logs_at = _replay_logs(job, _read_file(self.folder / LOGS), self.logs_at, set(), False, logged)
                self.results_at = _replay_results(job, _read_file(self.folder / RESULTS), self.results_at, set(),
                                                  False, values=True, logged=logged)
            except Exception as exc:  # deleted meanwhile, or unreadable: stop following
                job.store_error = f"{type(exc).__name__}: {exc}"
                job.finish(LOST)
                return
            job._notify()
            if state in FINAL_STATES:
                if manifest.get("elapsed") is not None:
                    job.restore_timing(manifest.get("created", job.created), manifest["elapsed"])
                job.finish(state)
                return


def delete(job_id: str) -> None:
    """Remove the job's folder: manifest, items, results and logs."""
    folder = job_folder(job_id)
    if not (folder / MANIFEST).exists():
        raise KeyError(job_id)
    shutil.rmtree(folder)

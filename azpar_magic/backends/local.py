"""A pool of worker processes on this machine, reused by every cell of the kernel.

Each worker is ``python worker.py --serve``: the very file an Azure node runs, talking
length-prefixed pickles over a private pipe pair (the task's own prints never touch it).
How the pipes reach a worker, how it is killed and how --inputs are linked depend on the
system (``platforms``: the fast path on Linux and macOS, the portable one on Windows).
Workers are separate sessions, so the kernel's Ctrl-C reaches only the kernel, which then
cancels explicitly. A worker stops a task at its --timeout itself, sends what ended before it
and exits (worker.TaskTimer); one that dies, does not stop within a grace of its timeout, or
runs a cancelled task is killed and replaced; its task is reported for the engine to retry or fail.

Workers start as tasks need them (never more than the pool's size, never more than the
work queued), get the kernel's environment without its secrets, beat a heartbeat into a
shared-memory file the kernel reads (which iteration runs, whether the worker still
lives), and end themselves when the kernel dies. The staging folder is named after its
owner process, so the next pool of any kernel removes those of dead kernels.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import mmap
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import config, platforms, worker as wire
from ..jobs import NodeInfo
from ..jobs.text import format_duration
from .base import BaseBackend, EventSink, JobSpec, TaskEvent, TaskSpec, deliver, timeout_grace
from .cpus import usable_cpus

WORKER_SCRIPT = os.path.abspath(wire.__file__)


def worker_program(source: str = WORKER_SCRIPT) -> str:
    """What a worker runs: the compiled worker Python keeps beside its source (``__pycache__``, written when
    the package was installed or first imported) while it is that source's, else the source. Python compiles
    a script at every start and never keeps it: the worker's ~3,500 lines took ~25 ms of each worker's start
    (39 against 15 ms here), paid by every first cell of a kernel, on both cores at once. A compiled file it
    runs as it is; one that is not the source's (an edited checkout, no bytecode written) is passed over."""
    import importlib.util

    try:
        cached = importlib.util.cache_from_source(source)
        with open(cached, "rb") as fh:
            header = fh.read(16)
        st = os.stat(source)
    except (OSError, ValueError, NotImplementedError):
        return source
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return source
    flags = int.from_bytes(header[4:8], "little")
    if flags == 0:  # timestamp-based, as importlib and pip write it: the source's mtime and size
        stamp = int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF
        fresh = (int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:16], "little")) == stamp
    else:  # hash-based (SOURCE_DATE_EPOCH builds): the source's hash
        try:
            with open(source, "rb") as fh:
                fresh = header[8:16] == importlib.util.source_hash(fh.read())
        except OSError:
            return source
    return cached if fresh else source


logger = logging.getLogger(__name__)
_LOST_SHOWN = 8  # lost workers kept in the node list so the panel can show what happened
_MAX_WAIT = 5.0  # longest dispatcher sleep: any --timeout, however large, stays a valid select() timeout
STALL_AFTER = 60.0  # seconds without a heartbeat, or on one iteration, before views say so
STAGE_PREFIX = "azpar-local-"
# Workers stop a task at its --timeout themselves (worker.TaskTimer, SIGALRM), so the kill waits a grace
# for the values that ended; on Windows they cannot, and the kill comes at the --timeout, as it did.
_WORKERS_STOP_AT_TIMEOUT = hasattr(signal, "setitimer")
# A busy worker is sent its next tasks ahead, so that each starts the moment the one before ends
# instead of a round trip to the kernel later (issue 16: with --chunk-size 1 that round trip was
# most of a trivial task, and on two cores the kernel's threads often answered a millisecond
# late). Up to AHEAD tasks and AHEAD_BYTES of them, so a write to a busy worker never waits for
# it to read (a pipe holds 64 KiB on Linux, less on macOS at first). A task ahead has not
# started: when a worker is idle and nothing is queued, the busy workers are asked for the tasks
# they hold ahead (the worker's inbox gives back those it has not taken), so no task waits
# behind a long one while a worker sits idle. The more a worker holds, the more results one read
# of its pipe brings and the fewer times the dispatcher wakes: 32 rather than 8 took 10,000
# one-iteration tasks from ~60 to ~47 us each on two cores (issue 16, a'); 64 gained nothing more,
# the bytes being the bound then.
AHEAD = 32
AHEAD_BYTES = 32 * 1024


@dataclass
class _Worker:
    id: str
    proc: subprocess.Popen
    send_fd: int
    recv_fd: int
    ready: bool = False
    gives_back: bool = False  # it can give back tasks sent ahead (worker._Inbox): only then are any sent
    task: tuple[str, TaskSpec] | None = None  # (job id, task) it runs now
    ahead: collections.deque = field(default_factory=collections.deque)  # (job id, task) sent, not started
    returning: int = 0  # requests for its tasks ahead not answered yet
    deadline: float | None = None
    ending: str | None = None  # why we killed it: "timeout" | "cancelled"
    buffer: bytearray = field(default_factory=bytearray)
    beat: memoryview | None = None  # the worker's beat file: [iteration running or -1, heartbeat ns]
    timed_out_at: int | None = None  # the iteration running when --timeout killed it
    progress: tuple = ()  # (job id, task id, iteration) last seen running, and since when
    progress_since: float = 0.0
    told: set = field(default_factory=set)  # jobs whose envelope it was sent (with their first task)
    # Jobs its job cache surely still holds (a mirror of worker.JobCache, see _note_sent): job id ->
    # the other jobs sent to it since that job's envelope. Their tasks need no envelope file.
    holds: dict = field(default_factory=dict)
    last_job: str | None = None  # the job of the last task sent to it

    @property
    def state(self) -> str:
        if not self.ready:
            return "starting"
        return "running" if self.task or self.ahead else "idle"

    @property
    def idle(self) -> bool:
        return self.ready and not self.ending and not self.task and not self.ahead and not self.returning


@dataclass
class _Job:
    spec: JobSpec
    envelope_path: str
    on_event: EventSink
    envelope_data: bytes = b""  # the envelope file's bytes: sent with the job's first task to each worker
    envelope_written: bool = False  # the file exists (written once a task went without the bytes)
    cancelled_tasks: set = field(default_factory=set)  # task ids that must never start
    data: dict | None = None  # --inputs/--outputs: the worker's roots, and per-iteration inputs
    scratch: list = field(default_factory=list)  # folders removed when the job ends


class LocalBackend(BaseBackend):
    """Worker processes on this machine (default: one per CPU this process may use). Of the
    optional capabilities (base.BaseBackend) it has none: its jobs end with the kernel."""

    name = "local"
    size_label = "size"  # pool_info's second half is a worker count, not a machine type

    def __init__(self, workers: int | None = None, **_settings):
        if workers:
            self.size, self.sizing = int(workers), "as the workers setting asks"
        else:
            self.size, self.sizing = usable_cpus()
        if self.size < 1:
            raise ValueError("the local pool needs at least one worker")
        self.stall_after = STALL_AFTER
        self._lock = threading.RLock()
        # Held from a submit's look at its staged namespace until its job is registered, and while
        # unused namespaces are dropped: jobs submitted from several threads at once must not drop
        # a namespace another has staged (or found staged) but not yet registered.
        self._staging = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._lost: collections.deque[NodeInfo] = collections.deque(maxlen=_LOST_SHOWN)
        self._queue: collections.deque[tuple[str, TaskSpec]] = collections.deque()
        self._jobs: dict[str, _Job] = {}
        self._cancelled: set[str] = set()  # jobs whose tasks must never start again
        self._ids = itertools.count(1)
        self._stage = ""
        self._program = WORKER_SCRIPT  # what workers run (worker_program, looked up as the pool starts)
        self._environ = KernelEnvironment()  # what workers start with, and what a job's kernel changed since
        self._platform = platforms.current()
        self._selector: platforms.Mailbox | None = None  # what the dispatcher waits on, while it runs
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ Backend protocol

    def describe(self) -> str:
        return (
            f"local pool of {self.size} worker process{'es' if self.size != 1 else ''} on this machine "
            f"({self.sizing}; started as tasks need them)"
        )

    def pool_info(self) -> tuple[str, str]:
        return "local", f"{self.size} worker processes"

    def default_chunk_size(self, n_items: int) -> int:
        # About four tasks per worker: few enough that per-task overhead vanishes on
        # trivial loops, enough that uneven iterations still balance across workers.
        return max(1, -(-n_items // (self.size * 4)))

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._closed:
                raise RuntimeError("the local pool was closed")
            if not self._stage:  # kept when the dispatcher restarts after a failure
                base = stage_base(self._platform.portable)
                sweep_stale_stages(base)
                self._stage = tempfile.mkdtemp(prefix=stage_prefix(), dir=base)
                self._program = worker_program(WORKER_SCRIPT)
            self._selector = platforms.mailbox(self._platform)
            self._thread = threading.Thread(target=self._loop, name="azpar-local-pool", daemon=True)
            self._thread.start()

    def submit(self, job: JobSpec, tasks: Sequence[TaskSpec], on_event: EventSink) -> None:
        self.start()
        ns_path = os.path.join(self._stage, job.envelope["namespace"]["file"])
        envelope_path = self._envelope_path(job.job_id)
        envelope, data = job.envelope, None
        scratch: list[str] = []
        plan = (job.backend_options or {}).get("data")
        if plan is not None:
            envelope, data, scratch = self._stage_data(job, plan)
        # The notebook's own modules are staged once per distinct set, as the namespace is, and the
        # envelope names the file: a package of 300 modules (3 MB) was serialised into every job's
        # envelope and written to every worker, ~25 ms of each cell using it (issue 16).
        envelope, modules_name = wire.modules_apart(envelope)
        changes = self._environ.changes()
        if changes is not None:  # the kernel's variables set or removed since the workers started: this job's
            envelope = {**envelope, "environ": changes}
        packed = wire.pack(wire.ENVELOPE_MAGIC, envelope)
        # The envelope file is written only once a task goes without its bytes (_task_message):
        # a job of one task per worker, a short cell's, never needs it (issue 16, c).
        with self._staging:
            if modules_name and self._stage_file(modules_name, job.envelope["local_modules"]):
                self._drop_unused_modules(keep=modules_name)
            staged = self._stage_file(os.path.basename(ns_path), job.namespace)  # identical captures: once
            with self._lock:
                # The namespace is staged (a file): the job's record keeps no copy of its bytes.
                self._jobs[job.job_id] = _Job(
                    replace(job, namespace=b""), envelope_path, on_event, packed, data=data, scratch=scratch
                )
                self._queue.extend(zip(itertools.repeat(job.job_id), tasks))
            if staged:
                self._drop_unused_namespaces(keep=ns_path)
        self.start()  # again: a dispatcher that failed since the first call is started afresh
        # Hand the first tasks to idle workers from this thread, now: once workers compute on
        # every core, the dispatcher thread may wait for a CPU before it can write them.
        try:
            self._dispatch()
        except Exception as exc:
            self._crash(exc)
        with self._lock:  # the dispatcher needs to look again only for what this thread did not hand out
            look = bool(self._queue) or any(w.deadline or not w.ready for w in self._workers.values())
        if look:
            self._wake()

    def _stage_file(self, name: str, content: bytes | mmap.mmap | dict) -> bool:
        """Write a content-addressed file into the staging folder unless it is there (``_staging``
        held), atomically: a worker may open it the moment it exists. A dict is written as JSON; bytes,
        or a namespace the job store kept (a memory-mapped file), as they are. False when it was there."""
        path = os.path.join(self._stage, name)
        if os.path.exists(path):
            return False
        data = wire.json_dumps(content).encode() if isinstance(content, dict) else content
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return True

    def _drop_unused_modules(self, keep: str) -> None:
        """Staged module sets are in RAM too: one per version of a package being edited would pile up."""
        with self._lock:
            used = {keep} | {
                wire.modules_file_name(j.spec.envelope["local_modules_sha256"])
                for j in self._jobs.values()
                if j.spec.envelope.get("local_modules_sha256")
            }
        self._drop_staged("mods-", ".json", used)

    def _drop_unused_namespaces(self, keep: str) -> None:
        """Staged namespaces are in RAM (/dev/shm): keep the one just staged (an identical
        next run reuses it) and those of jobs still running (a replacement worker reads
        them), not one per distinct capture for the pool's life."""
        with self._lock:
            used = {os.path.basename(keep)} | {j.spec.envelope["namespace"]["file"] for j in self._jobs.values()}
        self._drop_staged("ns-", ".bin", used)

    def _drop_staged(self, prefix: str, suffix: str, used: set[str]) -> None:
        """Remove the staged content-addressed files of one kind (``prefix``...``suffix``) not in ``used``."""
        for name in os.listdir(self._stage):
            if name.startswith(prefix) and name.endswith(suffix) and name not in used:
                try:
                    os.unlink(os.path.join(self._stage, name))
                except OSError:
                    pass

    def _stage_data(self, job: JobSpec, plan) -> tuple[dict, dict, list]:
        """--inputs are read in place: one tree of links to the original files per job
        (symbolic, else hard links; copies only where neither can be made, see
        ``platforms.link_or_copy``). Iterations work in folders beside the
        output destination, so their outputs are renamed into it, not copied."""
        tree = os.path.join(self._stage, f"in-{job.job_id}")
        files = list(plan.shared_files) + [f for fs in plan.item_files.values() for f in fs]
        for f in files:
            link = os.path.join(tree, f.rel)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                platforms.link_or_copy(f.path, link, self._platform.symlinks)
        if plan.outputs:
            os.makedirs(plan.dest, exist_ok=True)
            work = tempfile.mkdtemp(prefix=f".azpar-work-{job.job_id}-", dir=plan.dest)
        else:
            work = tempfile.mkdtemp(prefix=f"azpar-work-{job.job_id}-")
        envelope = dict(job.envelope, data=plan.worker_spec([f.rel for f in plan.shared_files]))
        roots = {"shared": tree, "items": tree, "work": work, "collect": plan.local_dest()}
        items = {i: [f.rel for f in fs] for i, fs in plan.item_files.items()}
        data: dict = {"roots": roots, "items": items}
        if not self._platform.symlinks:
            data["symlinks"] = False  # the worker links an iteration's inputs as this did
        return envelope, data, [tree, work]

    def resubmit(self, job_id: str, task: TaskSpec) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._queue.append((job_id, task))
                self._grow()
        self._wake()

    def nodes(self) -> list[NodeInfo]:
        with self._lock:
            live = [
                NodeInfo(w.id, w.state, w.task[1].task_id if w.task else None, note=self._stall_note(w))
                for w in self._workers.values()
            ]
            return list(self._lost) + live

    def _stall_note(self, w: _Worker) -> str:
        """Why a busy worker looks stuck, or "": stopped (SIGSTOP), silent (no heartbeat: a
        hung process), or on one iteration for long (a deadlock, or just a long iteration).
        Read from its beat file and the process state; lock held."""
        if w.task is None or w.beat is None:
            return ""
        now = time.monotonic()
        index, beat = w.beat[0], w.beat[1]
        key = (w.task[0], w.task[1].task_id, index)
        if key != w.progress:
            w.progress, w.progress_since = key, now
        silent = now - beat / 1e9 if beat else 0.0
        if _process_state(w.proc.pid) in ("T", "t"):
            return f"worker {w.id} is stopped (SIGSTOP?); no heartbeat for {_duration(silent)}"
        if silent >= self.stall_after:
            return f"worker {w.id} is not responding: no heartbeat for {_duration(silent)}"
        if index >= 0 and now - w.progress_since >= self.stall_after:
            return f"no progress for {_duration(now - w.progress_since)}: iteration {index} still running"
        return ""

    def cancel(self, job_id: str, task_ids: Collection[str] | None = None) -> None:
        """Stop the job's tasks (all, or those named): queued ones are dropped and a worker
        running one is killed (and replaced)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if task_ids is None:
                self._cancelled.add(job_id)
            else:
                job.cancelled_tasks.update(task_ids)
            dropped = [(j, t) for j, t in self._queue if self._is_cancelled(j, t.task_id)]
            self._queue = collections.deque((j, t) for j, t in self._queue if not self._is_cancelled(j, t.task_id))
            jobs = dict(self._jobs)
            for w in self._workers.values():
                if w.task and self._is_cancelled(w.task[0], w.task[1].task_id) and not w.ending:
                    w.ending = "cancelled"
                    self._kill(w)
                elif not w.ending:
                    self._ask_back(w, [e for e in w.ahead if self._is_cancelled(e[0], e[1].task_id)])
        self._tell_cancelled(dropped, jobs)
        self._wake()

    def _is_cancelled(self, job_id: str, task_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job_id in self._cancelled or (job is not None and task_id in job.cancelled_tasks)

    def finish(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            self._cancelled.discard(job_id)
            for w in self._workers.values():
                w.told.discard(job_id)
                w.holds.pop(job_id, None)
        if job is not None:
            if job.envelope_written:
                try:
                    os.unlink(job.envelope_path)
                except OSError:
                    pass
            for folder in job.scratch:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
            # Tasks that will never report now: the dispatcher stops below, so a running task's
            # end (even one cancel() just killed) and a queued one's are said here, once.
            unfinished = [w.task for w in workers if w.task] + [e for w in workers for e in w.ahead] + list(self._queue)
            self._queue.clear()
            jobs = dict(self._jobs)
        self._wake()
        for w in workers:
            try:
                os.write(w.send_fd, _frame({"op": "exit"})[0])
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._release(w)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None  # start() after close() refuses instead of returning as if running
        self._tell_cancelled(unfinished, jobs, "the local pool was closed")
        with self._lock:
            mailbox, self._selector = self._selector, None
        if mailbox is not None:
            mailbox.close()
        if self._stage:
            shutil.rmtree(self._stage, ignore_errors=True)

    # ------------------------------------------------------------------ workers

    def _grow(self) -> None:
        """Start workers as queued work needs them, up to the pool's size (lock held): a
        --workers 24 cell of 3 tasks starts 3 processes, not 24."""
        if self._selector is None:
            return
        busy = sum(1 for w in self._workers.values() if w.task)
        for _ in range(min(self.size, busy + len(self._queue)) - len(self._workers)):
            self._spawn()

    def _spawn(self) -> _Worker:
        wid = f"worker-{next(self._ids)}"
        beat_path = os.path.join(self._stage, f"{wid}.beat")
        with open(beat_path, "wb") as fh:
            fh.write(struct.pack(f"{wire.BEAT_SLOTS}q", -1, 0))
        log = open(os.path.join(self._stage, f"{wid}.log"), "ab")
        command = [sys.executable, "-u", self._program, "--serve", "--parent", str(os.getpid()), "--beat", beat_path]
        try:
            started = platforms.start_worker(command, self._environ.base(), log, self._platform)
        finally:
            log.close()
        worker = _Worker(wid, started.proc, started.send_fd, started.recv_fd, beat=wire.open_beat_file(beat_path))
        self._workers[wid] = worker
        assert self._selector is not None  # _grow spawns only while the dispatcher runs
        self._selector.watch(wid, started.recv_fd)
        return worker

    def worker_log(self, worker_id: str) -> str:
        try:
            with open(os.path.join(self._stage, f"{worker_id}.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def _release(self, w: _Worker) -> None:
        """Close a gone worker's pipe to it and its beat file (the pipe from it is the
        mailbox's to close)."""
        try:
            os.close(w.send_fd)
        except OSError:
            pass
        with self._lock:
            beat, w.beat = w.beat, None
        if beat is not None:
            mapped = beat.obj
            try:
                beat.release()
                if isinstance(mapped, mmap.mmap):
                    mapped.close()  # unmapped, so that Windows may delete the file
            except (BufferError, ValueError, AttributeError):
                pass
            try:
                os.unlink(os.path.join(self._stage, f"{w.id}.beat"))
            except OSError:
                pass

    def _kill(self, w: _Worker) -> None:
        platforms.kill_worker(w.proc, self._platform)

    def _wake(self) -> None:
        mailbox = self._selector
        if mailbox is not None:
            mailbox.wake()

    # ------------------------------------------------------------------ dispatcher thread

    def _loop(self) -> None:
        """The dispatcher thread. It must never die silently (every later cell would hang):
        whatever it raises fails the running jobs with the cause and restarts the pool."""
        selector = self._selector
        try:
            assert selector is not None  # start() made it before starting this thread
            while True:
                with self._lock:
                    if self._closed or self._selector is not selector:
                        return
                    deadlines = [w.deadline for w in self._workers.values() if w.deadline]
                timeout = min(_MAX_WAIT, max(0.0, min(deadlines) - time.monotonic())) if deadlines else _MAX_WAIT
                for wid, chunk in selector.wait(timeout):
                    self._on_readable(wid, chunk)
                self._expire()
                self._dispatch()
        except BaseException as exc:  # noqa: BLE001 - reported to every job it affects
            with self._lock:
                current = self._selector is selector and not self._closed  # not already restarted
            if current:
                self._crash(exc)

    def _crash(self, exc: BaseException) -> None:
        """The dispatcher failed: stop every worker, fail each task it had queued or running
        with the cause (not retried: the same input may fail it again), and leave the pool
        to start afresh, with new workers and a new dispatcher, at the next submit."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
            affected = [w.task for w in workers if w.task] + [e for w in workers for e in w.ahead] + list(self._queue)
            self._queue.clear()
            jobs = dict(self._jobs)
            selector, self._selector, self._thread = self._selector, None, None
        for w in workers:
            self._kill(w)
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._release(w)
        if selector is not None:
            selector.close()
        error = (
            f"the local pool's dispatcher failed ({type(exc).__name__}: {exc}); its tasks were stopped and "
            "the pool restarts for the next cell"
        )
        for job_id, task in affected:
            job = jobs.get(job_id)
            if job is not None:
                try:
                    job.on_event(TaskEvent(job_id, task.task_id, "failed", error=error))
                except Exception:  # one job's sink must not keep the others from hearing
                    pass

    def _on_readable(self, wid: str, chunk: bytes) -> None:
        with self._lock:
            w = self._workers.get(wid)
        if w is None:
            return
        if not chunk:
            self._on_death(w)
            return
        w.buffer += chunk
        began: list = []  # tasks that started, told once this read's messages are handled
        ended: list = []  # (job, task, event) of the tasks that ended in this read, in order
        for frame in wire.cut_frames(w.buffer):
            message = wire.load_frame(frame, writable=False)  # (the store writes a result's blob later)
            if type(message) is tuple:  # a small task result, as it travels (wire.compact_reply)
                message = wire.full_reply(message)
            self._on_message(w, message, began, ended)
        # A task that started and ended within one read is not told it started: its end says all
        # the job needs (its run time comes with its result), and one read holds the results of
        # many short tasks, each of which would otherwise cost the engine an event (issue 16).
        # The others are told with the ends, after them: the next task ahead starts as one ends.
        done = {id(task) for _, task, _ in ended}
        ended.extend(
            (job, task, TaskEvent(job.spec.job_id, task.task_id, "started", node=wid))
            for job, task, wid in began
            if job is not None and id(task) not in done
        )
        # One read holds the results of many short tasks: each job hears of its own at once
        # (base.deliver: one notification of the job's waiters and views for them all, and one
        # look at whether the job ended, for its ends and starts alike).
        for _, run in itertools.groupby(ended, key=lambda entry: id(entry[0])):
            entries = list(run)
            if entries[0][0] is not None:
                deliver(entries[0][0].on_event, [event for _, _, event in entries])

    def _on_message(self, w: _Worker, message: dict, began: list, ended: list) -> None:
        op = message.get("op")
        if op == "ready":
            with self._lock:
                w.ready, w.gives_back = True, bool(message.get("gives_back"))
            return
        if op == "returned":
            self._on_returned(w, {tuple(key) for key in message.get("tasks") or ()})
            return
        with self._lock:
            if w.task is None and w.ahead and w.ahead[0][1].task_id == message.get("task"):
                began.append(self._begin(w))  # it started while its worker was asked for its tasks back
            if w.task is None or message.get("task") != w.task[1].task_id:
                return
            (job_id, task), w.task, w.deadline = w.task, None, None
            if "result" not in message:  # its job may not have loaded there: not surely held (_note_sent)
                w.holds.pop(job_id, None)
            if message.get("exiting"):  # stopped at --timeout, it ends: what it holds ahead goes back (_on_death)
                w.ending = "stopped"
            elif w.ahead and not w.returning:  # the next one started as this one ended
                began.append(self._begin(w))
            job = self._jobs.get(job_id)
        event = self._ended_event(w, job_id, task, message)
        if event.ran is None:  # its run time is then the engine's clock from "started": told first
            ended.extend(
                (job, task, TaskEvent(job_id, task.task_id, "started", node=wid))
                for entry_job, entry_task, wid in began
                if entry_task is task and entry_job is not None
            )
        ended.append((job, task, event))

    def _ended_event(self, w: _Worker, job_id: str, task: TaskSpec, message: dict) -> TaskEvent:
        ran = message.get("ran")  # seconds the worker spent on it (its core time), loading the job included
        if "result" in message:
            event = TaskEvent(job_id, task.task_id, "finished", node=w.id, result=message["result"], ran=ran)
        else:
            code = message.get("exit_code")
            kind = "environment" if code == wire.EXIT_ENVIRONMENT else "infrastructure"
            event = TaskEvent(
                job_id,
                task.task_id,
                "failed",
                node=w.id,
                error=message.get("error", ""),
                retryable=kind == "infrastructure",
                failure_kind=kind,
                ran=ran,
            )
        return event

    def _on_returned(self, w: _Worker, returned: set[tuple]) -> None:
        """A worker gave back the tasks it held ahead and had not started (``_task_key``s): cancelled
        ones end here, the others go back to the front of the queue (in their order). The first one
        it kept, if any, is the one it runs now."""
        began = []
        with self._lock:
            w.returning = max(0, w.returning - 1)
            back = [e for e in w.ahead if self._task_key(e) in returned]
            for job_id, _ in back:  # the worker may hold these jobs from before: not surely (_note_sent)
                w.holds.pop(job_id, None)
            w.ahead = collections.deque(e for e in w.ahead if self._task_key(e) not in returned)
            if w.task is None and w.ahead and not w.returning:
                began.append(self._begin(w))
            dropped = [e for e in back if self._is_cancelled(e[0], e[1].task_id)]
            self._queue.extendleft(reversed([e for e in back if e not in dropped]))
            jobs = dict(self._jobs)
        self._tell_started(began)
        self._tell_cancelled(dropped, jobs)

    def _tell_cancelled(self, entries: list, jobs: dict, why: str = "cancelled before it started") -> None:
        """Each (job id, task) of ``entries`` ended without a result: a cancelled failure saying ``why``."""
        for job_id, task in entries:
            job = jobs.get(job_id)
            if job is not None:
                job.on_event(TaskEvent(job_id, task.task_id, "failed", error=why, failure_kind="cancelled"))

    def _tell_started(self, began: list) -> None:
        """Each job hears of its tasks that started at once (base.deliver): a cell's first tasks
        start together, and each event on its own woke the job's views and waiters (issue 16)."""
        for _, run in itertools.groupby(began, key=lambda entry: id(entry[0])):
            entries = list(run)
            job = entries[0][0]
            if job is not None:
                deliver(
                    job.on_event,
                    [TaskEvent(job.spec.job_id, task.task_id, "started", node=wid) for _, task, wid in entries],
                )

    def _on_death(self, w: _Worker) -> None:
        with self._lock:
            assert self._selector is not None  # only the dispatcher, while it runs, reads the workers' pipes
            self._selector.forget(w.id)
            self._workers.pop(w.id, None)
            if w.task is None and w.ahead and w.returning:
                # Asked for its tasks back, it had not answered: the first may have started (and
                # be why it died), so it counts as running; an attempt too many beats one lost.
                w.task = w.ahead.popleft()
            running = w.task
            # Tasks it held ahead never started: queued again (in their order), cancelled ones end.
            waiting, w.ahead = list(w.ahead), collections.deque()
            dropped = [e for e in waiting if self._is_cancelled(e[0], e[1].task_id)]
            if not self._closed:
                self._queue.extendleft(reversed([e for e in waiting if e not in dropped]))
            jobs = dict(self._jobs)
            job = self._jobs.get(running[0]) if running else None
            cancelled = w.ending == "cancelled" or (
                running is not None and self._is_cancelled(running[0], running[1].task_id)
            )
            closed = self._closed
        stopped = w.ending == "stopped" and running is None  # it ended itself after a task stopped at --timeout
        if stopped:  # its process group (before it is reaped, its id is not reused): what that task started,
            self._kill(w)  # where the worker could not find it itself
        try:
            code = w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(w)
            code = w.proc.wait()
        self._release(w)
        if closed:
            return
        self._tell_cancelled(dropped, jobs)
        with self._lock:
            if not stopped:  # (nothing was lost: views need not show it)
                self._lost.append(NodeInfo(w.id, "lost", running[1].task_id if running else None))
            logger.info(
                "local %s ended (exit code %s)%s; replaced",
                w.id,
                code,
                " after a task stopped at --timeout"
                if stopped
                else f" during task {running[1].task_id if running else None}",
            )
            # Not past the pool's size: a submit on another thread may have grown it meanwhile.
            if self._selector is not None and len(self._workers) < self.size:
                self._spawn()
        if job is None or running is None:
            return
        task = running[1]
        how = _signal_words(-code) if code < 0 else f"exit code {code}"
        if w.ending == "timeout":
            event = TaskEvent(
                job.spec.job_id,
                task.task_id,
                "failed",
                node=w.id,
                failure_kind="timeout",
                error=_timeout_message(job.spec.timeout, task, w.timed_out_at),
                iteration=w.timed_out_at,
            )
        elif cancelled:
            event = TaskEvent(
                job.spec.job_id,
                task.task_id,
                "failed",
                node=w.id,
                failure_kind="cancelled",
                error="cancelled while running",
            )
        else:
            tail = self.worker_log(w.id).strip().splitlines()[-5:]
            detail = (": " + " | ".join(tail)) if tail else ""
            event = TaskEvent(
                job.spec.job_id,
                task.task_id,
                "failed",
                node=w.id,
                retryable=True,
                error=f"the worker process ({w.id}) died with {how} while running this task{detail}",
            )
        job.on_event(event)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for w in self._workers.values():
                if w.deadline and w.deadline <= now and w.task and not w.ending:
                    w.ending = "timeout"
                    w.deadline = None
                    running = w.beat[0] if w.beat is not None else -1  # read before the kill: exact
                    w.timed_out_at = running if running in w.task[1].indices else None
                    self._kill(w)

    def _dispatch(self) -> None:
        """Give each idle worker the next queued task; send busy workers their next tasks
        ahead; when a worker is idle and nothing is queued, ask for the tasks held ahead back.
        What a worker is given goes in one write (each write wakes it)."""
        began = []
        with self._lock:
            if not self._queue and not any(w.ahead for w in self._workers.values()):
                # Nothing to hand out, nor to ask back, nor a worker to start for it: the common
                # case after each read of results, where the rest below cost the thread that the
                # cell's last result and the job's end wait behind ~15 us (issue 16).
                return
            self._grow()
            workers = [w for w in self._workers.values() if w.ready and not w.ending]
            batches: dict[str, list] = {w.id: [] for w in workers}
            fresh = set()  # idle workers given a task here: its first one runs at once
            for w in workers:
                if self._queue and w.idle:
                    batches[w.id].extend(self._take(1))
                    fresh.add(w.id)
            busy = [w for w in workers if (w.task or w.ahead or batches[w.id]) and not w.returning and w.gives_back]
            # One task at a time to each busy worker in turn, so that tasks still start about in
            # their order; not those that workers still starting will take.
            spare = len(self._queue) - sum(1 for w in self._workers.values() if not w.ready)
            held = {w.id: [*w.ahead, *batches[w.id][1 if w.id in fresh else 0 :]] for w in busy}
            room = {w.id: AHEAD_BYTES - sum(_message_size(t) for _, t in held[w.id]) for w in busy}
            while spare > 0 and self._queue:
                given = 0
                for w in busy:
                    size = _message_size(self._queue[0][1]) if self._queue else 0
                    if spare > 0 and self._queue and len(held[w.id]) < AHEAD and size <= room[w.id]:
                        taken = self._take(1)
                        batches[w.id].extend(taken)
                        held[w.id].extend(taken)
                        room[w.id] -= size
                        spare, given = spare - 1, given + 1
                if not given:
                    break
            # An idle worker's first task goes alone, so that each starts on a small write; the tasks
            # it holds ahead follow once every idle worker has one (a 10,000-iteration cell's first
            # write held 4 tasks, ~16 kB, and the second worker waited for it: issue 16, a).
            for w in workers:
                if w.id not in fresh:
                    continue
                first, rest = batches[w.id][:1], batches[w.id][1:]
                if self._send(w, first):
                    began.append(self._begin(w))
                    batches[w.id] = rest
                else:  # its pipe is gone: the first went back to the queue's front, the rest go after it
                    for entry in reversed(rest):
                        self._queue.insert(1, entry)
                    batches[w.id] = []
            for w in workers:
                self._send(w, batches[w.id])
            if not self._queue and any(w.idle for w in workers):
                for w in busy:
                    self._ask_back(w, list(w.ahead))
        self._tell_started(began)

    def _take(self, n: int) -> list[tuple[str, TaskSpec]]:
        """Up to ``n`` queued tasks of jobs still here (lock held)."""
        taken: list[tuple[str, TaskSpec]] = []
        while self._queue and len(taken) < n:
            entry = self._queue.popleft()
            if entry[0] in self._jobs:
                taken.append(entry)
        return taken

    def _send(self, w: _Worker, entries: list[tuple[str, TaskSpec]]) -> bool:
        """Write the tasks to the worker in one write (lock held); they are the worker's now
        (queued ahead, or the first to run: see ``_begin``). False, with the tasks queued
        again, when its pipe is gone (the death handler replaces it)."""
        if not entries:
            return False
        messages = [self._task_message(w, *entry) for entry in entries]
        apart = [task.items for (_, task), m in zip(entries, messages) if wire.ITEMS_APART in m]
        try:
            # Several tasks travel as one frame, a list: pickled together, the keys, the job's paths
            # and codec are written once, not once a task (a seventh of the cost each; issue 16, a').
            _write_all(w.send_fd, _frame(messages if len(messages) > 1 else messages[0], apart))
        except OSError:
            self._queue.extendleft(reversed(entries))
            for job_id, _ in entries:  # it was not told these jobs' envelopes: they go again, with the bytes
                w.told.discard(job_id)
                w.holds.pop(job_id, None)
            return False
        w.ahead.extend(entries)
        return True

    def _task_message(self, w: _Worker, job_id: str, task: TaskSpec) -> dict:
        """A task as ``w`` reads it (lock held). Its first task of a job carries the job's envelope,
        which the worker then need not open and parse from the staging folder (issue 16: on a
        worker that slept since the last cell, that was most of loading the job)."""
        job = self._jobs[job_id]
        apart = len(task.items) >= wire.OUT_OF_BAND_FRAME_MIN
        message: dict[str, object] = {
            "op": "task",
            "task": task.task_id,
            "envelope": job.envelope_path,
            "items_codec": task.items_codec,
            # Large items travel after the frame's pickle, written from the task's own bytes, and the
            # worker's arrays are built on the frame it reads them into, without a copy (_send, issue 16).
            "items": None if apart else task.items,
            "indices": wire.travelling(task.indices),  # a long range as a range: it comes back as one
            "cwd": job.spec.cwd,
        }
        if job.spec.timeout and math.isfinite(job.spec.timeout):
            message["exact_progress"] = True  # the worker writes each iteration as it starts: _expire names it
        if job.data is not None:
            own = job.data["items"]
            data = {
                "roots": job.data["roots"],
                "items": {i: own[i] for i in task.indices if i in own},
            }
            if "symlinks" in job.data:
                data["symlinks"] = job.data["symlinks"]
            message["data"] = data
        if apart:
            message[wire.ITEMS_APART] = True
        first = job_id not in w.told
        namespace = job.spec.envelope["namespace"]
        if (first or job_id not in w.holds) and namespace.get("changeable", True):
            # The worker loads the job (again): it loads a namespace again when another job's iterations may
            # have changed its copy, and lets go of the jobs it loaded over that copy (worker.JobCache.replace),
            # whose next tasks here then go with the envelope file.
            for other in [j for j in w.holds if j != job_id and j in self._jobs]:
                if self._jobs[other].spec.envelope["namespace"]["sha256"] == namespace["sha256"]:
                    del w.holds[other]
        if first:
            w.told.add(job_id)
            message["envelope_data"] = job.envelope_data
        elif job_id not in w.holds and not job.envelope_written:
            # The worker may have let the job go from its cache since (worker.JobCache keeps a few):
            # it then opens the file, so the file exists before any task goes without the bytes.
            try:
                with open(job.envelope_path, "wb") as fh:
                    fh.write(job.envelope_data)
                job.envelope_written = True
            except OSError:  # no room in the staging folder: the bytes travel again instead
                message["envelope_data"] = job.envelope_data
        _note_sent(w, job_id, first)
        return message

    def _task_key(self, entry: tuple[str, TaskSpec]) -> tuple[str, str]:
        """A task as the worker names it when tasks are asked back: its job's envelope path (every task
        message carries it) and its id. Ids alone repeat across jobs ("1", "2", ...): with two jobs'
        tasks held by one worker, asking back job A's task 1 gave back job B's too, a task then ran
        twice or its result was dropped, and the job never ended."""
        return self._envelope_path(entry[0]), entry[1].task_id

    def _envelope_path(self, job_id: str) -> str:
        """Where a job's envelope is staged (written only when a task goes without its bytes), the
        path each of its task messages names."""
        return os.path.join(self._stage, f"job-{job_id}.azpj")

    def _begin(self, w: _Worker) -> tuple:
        """The worker's first task ahead is the one it runs now (lock held): its --timeout
        counts from here. One cancelled meanwhile ends the worker, as a running one would."""
        job_id, task = w.task = w.ahead.popleft()
        job = self._jobs.get(job_id)
        w.deadline = (
            time.monotonic() + job.spec.timeout + (timeout_grace(job.spec.timeout) if _WORKERS_STOP_AT_TIMEOUT else 0)
            if job is not None and job.spec.timeout
            else None
        )
        if w.deadline is not None and not math.isfinite(w.deadline):
            w.deadline = None  # --timeout inf: no limit
        if self._is_cancelled(job_id, task.task_id) and not w.ending:
            w.ending = "cancelled"
            self._kill(w)
        return job, task, w.id

    def _ask_back(self, w: _Worker, entries: list[tuple[str, TaskSpec]]) -> None:
        """Ask the worker for these (job id, task) it holds ahead (lock held); it answers "returned"."""
        if not entries:
            return
        try:
            _write_all(w.send_fd, _frame({"op": "return", "tasks": [self._task_key(e) for e in entries]}))
        except OSError:
            return  # the death handler queues them again
        w.returning += 1


def _note_sent(w: _Worker, job_id: str, envelope: bool) -> None:
    """Keep ``w.holds``, the jobs the worker's job cache surely still has (lock held).

    The worker keeps jobs by envelope path, first in first out, NAMESPACE_CACHE_SIZE of them
    (worker.JobCache), adding a job when it loads the job's first task, which carries the
    envelope. A job added then stays while fewer than that many other jobs have come since, and
    only tasks sent since can bring them: so a job stays in ``holds`` while fewer than that many
    other jobs were sent to the worker after its envelope. Only a job's first envelope counts: a
    job whose tasks were given back (``_on_returned``) leaves ``holds`` for good, as the worker
    may hold it from before. Its tasks then go with the envelope file, as before the mirror
    (issue 16, a: writing that file was ~0.1 ms of a 10,000-iteration cell)."""
    if w.last_job != job_id:
        w.last_job = job_id
        for other in [j for j in w.holds if j != job_id]:
            since = w.holds[other]
            since.add(job_id)
            if len(since) >= wire.NAMESPACE_CACHE_SIZE:
                del w.holds[other]
    if envelope:
        w.holds[job_id] = set()


def _message_size(task: TaskSpec) -> int:
    """About the bytes of a task's message (its items, its indices, the rest)."""
    return len(task.items) + 4 * len(task.indices) + 512


def _signal_words(number: int) -> str:
    """``signal 9 (SIGKILL: ...)``: what a worker's death by this signal most often means, so that a
    user who never heard of signal numbers knows where to look."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    meaning = _SIGNAL_MEANINGS.get(name)
    return f"signal {number} ({name}{': ' + meaning if meaning else ''})"


_SIGNAL_MEANINGS = {
    "SIGKILL": "killed from outside this kernel, most often by the system when memory ran out; an iteration "
    "that needs less memory, or fewer --workers, avoids it",
    "SIGSEGV": "a crash in native code, a C extension or ctypes",
    "SIGBUS": "a crash in native code, a C extension or ctypes",
    "SIGILL": "a crash in native code, a C extension or ctypes",
    "SIGFPE": "a crash in native code, a C extension or ctypes",
    "SIGABRT": "native code aborted, a C extension's failed check",
}


def _frame(message: dict | list[dict], apart: Sequence[bytes] = ()) -> list:
    """A message framed for a worker's pipe, as pieces (``wire.frame_pieces``): the items of a MB or
    more of its tasks (``apart``) travel after the pickle, written from the tasks' own bytes."""
    return wire.frame_pieces(message, apart)


def _write_all(fd: int, pieces: list) -> None:
    wire.write_pieces(fd, pieces)


def _timeout_message(limit: float | None, task: TaskSpec, running: int | None) -> str:
    """A --timeout failure names the iteration that was running, not the task's first."""
    where = f"{limit:g} s" if limit is not None else "limit"
    if not _WORKERS_STOP_AT_TIMEOUT:  # killed at the limit itself
        chunk = (
            f" (its task, iterations {task.indices[0]}-{task.indices[-1]}, was killed)" if len(task.indices) > 1 else ""
        )
        if running is None:
            return f"the task ran longer than its --timeout of {where} and was killed"
        return f"iteration {running} was still running when its task reached the --timeout of {where}{chunk}"
    late = f"{timeout_grace(limit):g} s" if limit is not None else "a while"
    if running is None:
        return f"the task ran longer than its --timeout of {where} and was killed {late} later"
    chunk = (
        f" (its task, iterations {task.indices[0]}-{task.indices[-1]}, did not stop there and was killed {late} later)"
        if len(task.indices) > 1
        else f" and did not stop there: it was killed {late} later"
    )
    return f"iteration {running} was still running when its task reached the --timeout of {where}{chunk}"


def _duration(seconds: float) -> str:
    return format_duration(max(0.0, seconds))


def _process_state(pid: int) -> str:
    """The one-letter state of a process (R, S, T stopped, Z...), "" when unknown (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


# ---------------------------------------------------------------------- environment

_HUB_PREFIXES = ("JUPYTERHUB_", "JPY_")  # the hub's API token, its OAuth client, the user's server
_SERVER_SECRETS = ("JUPYTER_TOKEN", "JUPYTER_PASSWORD")
# auth = service-principal reads these; a task must not
_AZURE_SECRETS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD")


def secret_variables(environ: dict[str, str] | None = None, cwd: str | None = None) -> set[str]:
    """Names of the variables that hold azpar's secrets: the defaults of the profile fields
    naming one (AZPAR_BATCH_KEY, AZPAR_STORAGE_KEY, AZPAR_REGISTRY_PASSWORD), what
    ``AZPAR_<FIELD>`` sets them to, and every ``*_env`` field of every profile of every
    configuration file (read raw, so a profile that does not load still counts)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    names = set(_AZURE_SECRETS)
    for key, spec in config.PROFILE_FIELDS.items():
        if spec.secret or key.endswith("_env"):
            names.update(v for v in (spec.default, env.get("AZPAR_" + key.upper())) if v)
    try:
        layers = config.config_layers(cwd)
    except Exception:  # an unreadable file: its profiles cannot be used, the defaults still count
        layers = []
    for _where, layer in layers:
        for profile in (layer.get(config.PROFILES_TABLE) or {}).values():
            if isinstance(profile, dict):
                names.update(v.strip() for k, v in profile.items() if k.endswith("_env") and isinstance(v, str))
    return names


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment without what a task must never read: the hub's variables
    (its API token), the server's token and azpar's secrets (see ``secret_variables``)."""
    environ = dict(os.environ if environ is None else environ)
    secrets = secret_variables(environ)
    return {
        k: v
        for k, v in environ.items()
        if k not in secrets and k not in _SERVER_SECRETS and not k.startswith(_HUB_PREFIXES)
    }


class KernelEnvironment:
    """The kernel's environment variables as the pool's workers see them. Each worker starts with the one the
    pool first saw (``base``: a worker started later, or again after a crash, gets the same), and a job
    submitted once the kernel's differs carries the difference (``changes``), which its worker applies for
    the job's tasks and puts back for the next job. A variable the notebook set after the first cell
    (``os.environ["API_KEY"] = ...``, ``%env OMP_NUM_THREADS=1``) was never seen by the workers: a body
    reading it got None where the loop run in the kernel got the value, and the same notebook behaved
    otherwise when the pool started after the setting. The secrets ``worker_environment`` leaves out stay
    out. Nothing of this reaches the job store or Azure nodes (they have their own environment)."""

    def __init__(self) -> None:
        self._base: dict[str, str] | None = None
        self._base_raw: dict | None = None  # the kernel's raw environment when the base was taken
        self._seen_raw: dict | None = None  # ... when ``_changes`` was computed
        self._changes: dict | None = None

    def base(self) -> dict[str, str]:
        if self._base is None:
            self._base_raw, self._base = dict(_raw_environ()), worker_environment()
        return self._base

    def changes(self) -> dict[str, Any] | None:
        """``{"set": {name: value}, "unset": [name]}`` against the base, or None when there is none: most
        cells, which pay one comparison of the raw environment (~1 us)."""
        base = self.base()
        raw = _raw_environ()
        if raw == self._base_raw:
            return None
        if raw != self._seen_raw:
            now = worker_environment()
            changed = {k: v for k, v in now.items() if base.get(k) != v}
            gone = sorted(k for k in base if k not in now)
            self._seen_raw, self._changes = dict(raw), ({"set": changed, "unset": gone} if changed or gone else None)
        return self._changes


def _raw_environ() -> Mapping:
    """The process's environment as the OS holds it (POSIX: ``os.environ._data``, bytes, compared at C speed;
    not a copy), for telling whether it changed."""
    raw = getattr(os.environ, "_data", None)
    return raw if isinstance(raw, dict) else dict(os.environ)


# ---------------------------------------------------------------------- staging folders


def stage_base(portable: bool = False) -> str:
    """/dev/shm when it is writable (staged namespaces are read at memory speed), else the
    temporary folder: always on the portable path, which has no /dev/shm on Windows and whose
    --inputs are hard links, made only within one volume (the temporary folder's is most
    likely the data's)."""
    shm = "/dev/shm"
    if portable or not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return tempfile.gettempdir()
    return shm


def stage_prefix(pid: int | None = None, started: int | None = None) -> str:
    """``azpar-local-<owner pid>-<owner start time>-<pid namespace>-``: who owns a staging
    folder, so that a folder whose owner died (SIGKILL, OOM) is recognised and removed (a
    reused pid has another start time; a pid of another container's namespace is not
    looked up in this one)."""
    pid = os.getpid() if pid is None else pid
    started = _start_time(pid) if started is None else started
    return f"{STAGE_PREFIX}{pid}-{started or 0}-{_pid_namespace()}-"


_STAGE_NAME = re.compile(re.escape(STAGE_PREFIX) + r"(\d+)-(\d+)-(\d+)-[^/]+")


def _pid_namespace() -> int:
    """An id of this process's pid namespace (0 when unknown): pids mean something only in it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def sweep_stale_stages(base: str) -> list[str]:
    """Remove this user's staging folders in ``base`` whose owner process is gone; return them."""
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        match = _STAGE_NAME.fullmatch(name)
        if not match or int(match.group(3)) != _pid_namespace():
            continue  # another version's name, or another pid namespace's owner: not ours to judge
        path = os.path.join(base, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            continue
        if _owner_alive(int(match.group(1)), int(match.group(2))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(pid: int, started: int) -> bool:
    if not platforms.pid_alive(pid):
        return False  # gone, or killed and not yet reaped
    now = _start_time(pid)
    return not (started and now is not None and now != started)

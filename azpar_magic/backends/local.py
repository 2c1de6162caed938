"""A pool of worker processes on this machine, reused by every cell of the kernel.

Each worker is ``python worker.py --serve``: the very file an Azure node runs, talking
length-prefixed pickles over a private pipe pair (the task's own prints never touch it).
Workers are separate sessions, so the kernel's Ctrl-C reaches only the kernel, which then
cancels explicitly. A worker that dies, hangs past its task's timeout or runs a cancelled
task is killed and replaced; its task is reported for the engine to retry or fail.
"""

from __future__ import annotations

import collections
import itertools
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import worker as wire
from ..job import NodeInfo
from .base import EventSink, JobSpec, TaskEvent, TaskSpec

WORKER_SCRIPT = os.path.abspath(wire.__file__)
_LOST_SHOWN = 8  # lost workers kept in the node list so the panel can show what happened
# Tasks sent ahead to a worker: the next chunk waits in its pipe while the current one runs,
# hiding the round trip that otherwise dominates loops of trivial iterations.
_IN_FLIGHT = 2
# A task goes ahead only if it fits in the pipe's buffer (64 KiB on Linux): a busy worker
# does not read, and a larger write would block the dispatcher until the worker is done.
_AHEAD_MAX_BYTES = 32 * 1024


@dataclass
class _Worker:
    id: str
    proc: subprocess.Popen
    send_fd: int
    recv_fd: int
    ready: bool = False
    # (job id, task) sent and not yet answered, in the order the worker runs them: the
    # first is running, the others wait in the pipe.
    in_flight: collections.deque = field(default_factory=collections.deque)
    deadline: float | None = None  # for the running (first) task
    ending: str | None = None  # why we killed it: "timeout" | "cancelled"
    buffer: bytearray = field(default_factory=bytearray)

    @property
    def state(self) -> str:
        if not self.ready:
            return "starting"
        return "running" if self.in_flight else "idle"

    @property
    def running(self) -> tuple[str, TaskSpec] | None:
        return self.in_flight[0] if self.in_flight else None


@dataclass
class _Job:
    spec: JobSpec
    envelope_path: str
    on_event: EventSink


class LocalBackend:
    """Worker processes on this machine (default: one per core)."""

    name = "local"

    def __init__(self, workers: int | None = None, **_settings):
        self.size = int(workers or os.cpu_count() or 1)
        if self.size < 1:
            raise ValueError("the local pool needs at least one worker")
        self._lock = threading.RLock()
        self._workers: dict[str, _Worker] = {}
        self._lost: collections.deque[NodeInfo] = collections.deque(maxlen=_LOST_SHOWN)
        self._queue: collections.deque[tuple[str, TaskSpec]] = collections.deque()
        self._jobs: dict[str, _Job] = {}
        self._cancelled: set[str] = set()  # jobs whose tasks must never start again
        self._ids = itertools.count(1)
        self._stage = ""
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ Backend protocol

    def describe(self) -> str:
        return f"local pool of {self.size} worker process{'es' if self.size != 1 else ''} on this machine"

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
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self._stage = tempfile.mkdtemp(prefix="azpar-local-", dir=shm)
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            for _ in range(self.size):
                self._spawn()
            self._thread = threading.Thread(target=self._loop, name="azpar-local-pool", daemon=True)
            self._thread.start()

    def submit(self, job: JobSpec, tasks: Sequence[TaskSpec], on_event: EventSink) -> None:
        self.start()
        ns_path = os.path.join(self._stage, job.envelope["namespace"]["file"])
        if not os.path.exists(ns_path):  # content-addressed: identical captures staged once
            tmp = f"{ns_path}.{os.getpid()}.part"
            with open(tmp, "wb") as fh:
                fh.write(job.namespace)
            os.replace(tmp, ns_path)
        envelope_path = os.path.join(self._stage, f"job-{job.job_id}.azpj")
        with open(envelope_path, "wb") as fh:
            fh.write(wire.pack(wire.ENVELOPE_MAGIC, job.envelope))
        with self._lock:
            self._jobs[job.job_id] = _Job(job, envelope_path, on_event)
            self._queue.extend((job.job_id, task) for task in tasks)
        self._wake()

    def resubmit(self, job_id: str, task: TaskSpec) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._queue.append((job_id, task))
        self._wake()

    def nodes(self) -> list[NodeInfo]:
        with self._lock:
            live = [NodeInfo(w.id, w.state, w.running[1].task_id if w.running else None)
                    for w in self._workers.values()]
            return list(self._lost) + live

    def cancel(self, job_id: str) -> None:
        """Queued tasks are dropped; a worker running one of the job's tasks is killed (with
        the tasks sent ahead to it); a task of the job waiting behind another job's task on
        a worker is stopped the moment it would start (see _on_message)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            self._cancelled.add(job_id)
            dropped = [t for j, t in self._queue if j == job_id]
            self._queue = collections.deque((j, t) for j, t in self._queue if j != job_id)
            for w in self._workers.values():
                if w.running and w.running[0] == job_id and not w.ending:
                    w.ending = "cancelled"
                    self._kill(w)
        for task in dropped:
            job.on_event(TaskEvent(job_id, task.task_id, "failed", error="cancelled before it started",
                                   failure_kind="cancelled"))
        self._wake()

    def finish(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            self._cancelled.discard(job_id)
        if job is not None:
            try:
                os.unlink(job.envelope_path)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers.values())
            self._workers.clear()
        self._wake()
        for w in workers:
            try:
                os.write(w.send_fd, _frame({"op": "exit"}))
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            for fd in (w.send_fd, w.recv_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._stage:
            shutil.rmtree(self._stage, ignore_errors=True)

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> _Worker:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        wid = f"worker-{next(self._ids)}"
        log = open(os.path.join(self._stage, f"{wid}.log"), "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-u", WORKER_SCRIPT, "--serve", "--fd-in", str(to_child_r),
                 "--fd-out", str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        finally:
            log.close()
            os.close(to_child_r)
            os.close(from_child_w)
        worker = _Worker(wid, proc, to_child_w, from_child_r)
        self._workers[wid] = worker
        self._selector.register(from_child_r, selectors.EVENT_READ, wid)
        return worker

    def worker_log(self, worker_id: str) -> str:
        try:
            with open(os.path.join(self._stage, f"{worker_id}.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def _kill(self, w: _Worker) -> None:
        try:
            os.killpg(w.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                w.proc.kill()
            except ProcessLookupError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------------ dispatcher thread

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                deadlines = [w.deadline for w in self._workers.values() if w.deadline]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                else:
                    self._on_readable(key.data)
            self._expire()
            self._dispatch()

    def _on_readable(self, wid: str) -> None:
        with self._lock:
            w = self._workers.get(wid)
        if w is None:
            return
        try:
            chunk = os.read(w.recv_fd, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self._on_death(w)
            return
        w.buffer += chunk
        while len(w.buffer) >= 8:
            (size,) = struct.unpack(">Q", w.buffer[:8])
            if len(w.buffer) < 8 + size:
                break
            message = pickle.loads(bytes(w.buffer[8 : 8 + size]))
            del w.buffer[: 8 + size]
            self._on_message(w, message)

    def _on_message(self, w: _Worker, message: dict) -> None:
        if message.get("op") == "ready":
            with self._lock:
                w.ready = True
            return
        with self._lock:
            if not w.in_flight or message.get("task") != w.in_flight[0][1].task_id:
                return
            job_id, task = w.in_flight.popleft()
            job = self._jobs.get(job_id)
            following = self._start_next(w)
            if following is not None and following[0].spec.job_id in self._cancelled:
                w.ending = "cancelled"  # it was sent ahead before the cancel: stop it now
                self._kill(w)
                following = None
        if job is not None:
            if "result" in message:
                event = TaskEvent(job_id, task.task_id, "finished", node=w.id, result=message["result"])
            else:
                code = message.get("exit_code")
                kind = "environment" if code == wire.EXIT_ENVIRONMENT else "infrastructure"
                event = TaskEvent(job_id, task.task_id, "failed", node=w.id, error=message.get("error", ""),
                                  retryable=kind == "infrastructure", failure_kind=kind)
            job.on_event(event)
        if following is not None:
            following[0].on_event(TaskEvent(following[0].spec.job_id, following[1].task_id, "started", node=w.id))

    def _start_next(self, w: _Worker) -> tuple[_Job, TaskSpec] | None:
        """The task waiting in the worker's pipe starts now: arm its timeout."""
        if not w.in_flight:
            w.deadline = None
            return None
        job_id, task = w.in_flight[0]
        job = self._jobs.get(job_id)
        timeout = job.spec.timeout if job else None
        w.deadline = time.monotonic() + timeout if timeout else None
        return (job, task) if job else None

    def _on_death(self, w: _Worker) -> None:
        with self._lock:
            self._selector.unregister(w.recv_fd)
            self._workers.pop(w.id, None)
            running = w.running
            waiting = list(w.in_flight)[1:]
            # Tasks that never started on the dead worker go back to the front of the queue
            # (they lost nothing, so it is no attempt) unless their job was cancelled.
            never_started = []
            for entry in reversed(waiting):
                if entry[0] in self._cancelled and entry[0] in self._jobs:
                    never_started.append((self._jobs[entry[0]], entry[1]))
                elif entry[0] in self._jobs:
                    self._queue.appendleft(entry)
            job = self._jobs.get(running[0]) if running else None
            cancelled = w.ending == "cancelled" or (running is not None and running[0] in self._cancelled)
            closed = self._closed
        try:
            code = w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(w)
            code = w.proc.wait()
        for fd in (w.send_fd, w.recv_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if closed:
            return
        with self._lock:
            self._lost.append(NodeInfo(w.id, "lost", running[1].task_id if running else None))
            self._spawn()
        for waiting_job, waiting_task in never_started:
            waiting_job.on_event(TaskEvent(waiting_job.spec.job_id, waiting_task.task_id, "failed",
                                           error="cancelled before it started", failure_kind="cancelled"))
        if job is None or running is None:
            return
        task = running[1]
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if w.ending == "timeout":
            limit = job.spec.timeout
            event = TaskEvent(job.spec.job_id, task.task_id, "failed", node=w.id, failure_kind="timeout",
                              error=f"the task ran longer than its --timeout of {limit:g} s and was killed")
        elif cancelled:
            event = TaskEvent(job.spec.job_id, task.task_id, "failed", node=w.id, failure_kind="cancelled",
                              error="cancelled while running")
        else:
            tail = self.worker_log(w.id).strip().splitlines()[-5:]
            detail = (": " + " | ".join(tail)) if tail else ""
            event = TaskEvent(job.spec.job_id, task.task_id, "failed", node=w.id, retryable=True,
                              error=f"the worker process ({w.id}) died with {how} while running this task{detail}")
        job.on_event(event)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            for w in self._workers.values():
                if w.deadline and w.deadline <= now and w.in_flight and not w.ending:
                    w.ending = "timeout"
                    w.deadline = None
                    self._kill(w)

    def _dispatch(self) -> None:
        """Fill every ready worker up to _IN_FLIGHT tasks, emptiest workers first."""
        started = []
        with self._lock:
            for depth in range(_IN_FLIGHT):
                for w in list(self._workers.values()):
                    if not self._queue:
                        break
                    if not w.ready or w.ending or len(w.in_flight) != depth:
                        continue
                    if depth and len(self._queue[0][1].items) > _AHEAD_MAX_BYTES:
                        break
                    job_id, task = self._queue.popleft()
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue
                    message = {"op": "task", "task": task.task_id, "envelope": job.envelope_path,
                               "items_codec": task.items_codec, "items": task.items,
                               "indices": list(task.indices), "cwd": job.spec.cwd}
                    try:
                        _write_all(w.send_fd, _frame(message))
                    except OSError:
                        self._queue.appendleft((job_id, task))  # the death handler replaces it
                        continue
                    w.in_flight.append((job_id, task))
                    if depth == 0:
                        self._start_next(w)
                        started.append((job, task, w.id))
        for job, task, wid in started:
            job.on_event(TaskEvent(job.spec.job_id, task.task_id, "started", node=wid))


def _frame(message: dict) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">Q", len(data)) + data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]

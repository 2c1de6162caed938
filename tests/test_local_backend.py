"""The local backend on its own, through the backend protocol (backends/base.py) and without
the engine: what it reports for a job's tasks, with real worker processes.

Each test builds a job the way the engine does (capture, envelope, one TaskSpec per chunk),
submits it to a LocalBackend and reads the events its sink receives. What the engine makes of
those events (states, retries, merging) is tested in test_local_pool.py and the magic's tests.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Sequence

import pytest

from azpar_magic import worker as wire
from azpar_magic.backends import local as local_backend
from azpar_magic.backends.base import Backend, BaseBackend, JobSpec, TaskEvent, TaskSpec
from azpar_magic.backends.local import LocalBackend
from azpar_magic.errors import NotSupported
from azpar_magic.jobs.results import decode_each
from azpar_magic.run import capture
from azpar_magic.run.parsing import parse_cell

from .helpers_corpus import pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)
WAIT = 60.0  # seconds for one event; a healthy machine needs well under one


class Sink:
    """The events a job's tasks produced, in arrival order (the backend calls it from its threads)."""

    def __init__(self) -> None:
        self.events: queue.Queue[TaskEvent] = queue.Queue()

    def __call__(self, event: TaskEvent) -> None:
        self.events.put(event)

    def take(self, count: int) -> list[TaskEvent]:
        return [self.events.get(timeout=WAIT) for _ in range(count)]

    def until(self, done: Callable[[TaskEvent], bool]) -> list[TaskEvent]:
        """Events up to and including the first one ``done`` accepts."""
        seen = []
        while True:
            seen.append(self.events.get(timeout=WAIT))
            if done(seen[-1]):
                return seen


def job(body: str, n: int, chunks: Sequence[range], *, job_id: str = "job-1", timeout: float | None = None,
        namespace: dict | None = None) -> tuple[JobSpec, list[TaskSpec]]:
    """``for x in range(n): body`` as the engine hands it to a backend: one task per chunk."""
    namespace = {} if namespace is None else namespace
    cell = parse_cell(f"for x in range({n})", body)
    items = list(range(n))
    cap = capture.capture(cell, namespace, items=items)
    tasks = []
    for number, indices in enumerate(chunks, start=1):
        codec, data = capture.serialize_items(items[indices.start:indices.stop], cap.names, namespace, indices[0])
        tasks.append(TaskSpec(str(number), indices, codec, data))
    envelope = capture.envelope_header(cell, cap, timeout=timeout)
    return JobSpec(job_id, envelope, cap.data, timeout=timeout, cwd=os.getcwd()), tasks


def values(event: TaskEvent) -> list:
    assert event.result is not None, event
    decoded, problems = decode_each(event.result["values"], len(event.result["indices"]))
    assert not problems, problems
    return decoded


def finished_all(sink: Sink, count: int) -> list[TaskEvent]:
    """Every event up to the ``count``-th task end (a task's "started" may be left out: see
    test_a_task_that_started_and_ended_within_one_read_is_not_said_to_have_started)."""
    ends = 0

    def done(event: TaskEvent) -> bool:
        nonlocal ends
        ends += event.kind != "started"
        return ends == count

    return sink.until(done)


def worker_pids(backend: LocalBackend) -> set[int]:
    """The worker processes' ids (the protocol's NodeInfo does not carry them)."""
    with backend._lock:
        return {w.proc.pid for w in backend._workers.values()}


@pytest.fixture
def backend():
    made: list[LocalBackend] = []

    def make(workers: int = 2) -> LocalBackend:
        made.append(LocalBackend(workers=workers))
        return made[-1]

    yield make
    for b in made:
        b.close()


# --------------------------------------------------------------------------- the protocol


def test_it_is_a_backend_with_none_of_the_optional_capabilities():
    """What callers read instead of asking for the backend's name: a local pool's jobs end
    with the kernel, it reads no Azure-only option, keeps no namespace elsewhere, and labels
    its pool_info by worker count."""
    b = LocalBackend(workers=1)
    try:
        assert isinstance(b, Backend) and isinstance(b, BaseBackend)
        assert (b.name, b.size_label, b.outlives_kernel, b.blob_inputs, b.installs_packages, b.pool_admin) == (
            "local", "size", False, False, False, False)
        assert b.reads_options == frozenset()
        assert b.manifest_info("job-1", {"packages": ["numpy"]}) is None
        assert b.unanswered("job-1") == "" and b.blob_storage() is None
        b.check_data(object())  # nothing to check: no az:// paths here
        b.delete_job("job-1")  # nothing outside the job store
        for call in (lambda: b.staged_namespace({}, "ns.bin"), lambda: b.reattach("job-1", {}, [], print),
                     b.pool_status, b.test_connection):
            with pytest.raises(NotSupported, match="the local backend does not support"):
                call()
    finally:
        b.close()


def test_submit_reports_each_task_started_then_finished_with_its_values_and_output(backend):
    b = backend(2)
    spec, tasks = job("print('hi', x)\nx * 10", 6, [range(0, 2), range(2, 4), range(4, 6)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    events = finished_all(sink, 3)
    for task in tasks:
        kinds = [e.kind for e in events if e.task_id == task.task_id]
        # "started" may be left out for a task that ended before the pool heard it start (see below)
        assert kinds in (["started", "finished"], ["finished"]), (task.task_id, events)
    finished = {e.task_id: e for e in events if e.kind == "finished"}
    assert all(isinstance(e.ran, float) and 0 <= e.ran < WAIT for e in finished.values())  # the task's core time
    assert {t: values(e) for t, e in finished.items()} == {"1": [0, 10], "2": [20, 30], "3": [40, 50]}
    assert finished["2"].result["outputs"] == {2: [["stdout", "hi 2\n"]], 3: [["stdout", "hi 3\n"]]}
    started = {e.task_id: e.node for e in events if e.kind == "started"}
    assert all(e.node.startswith("worker-") and started.get(e.task_id, e.node) == e.node for e in finished.values())
    assert all(e.job_id == "job-1" for e in events)


def test_a_long_chunk_of_consecutive_iterations_travels_as_a_range_and_others_as_their_list(backend):
    # A range is a few bytes however long the chunk; a list of its indices cost each side of the
    # pipe ~15 us per 1,250 iterations to pickle and unpickle (issue 16). A short chunk goes as its
    # list (a range pickles by name, slower than a short list), and so does a rerun's chunk of
    # scattered iterations; each comes back as it went.
    b = backend(1)
    spec, tasks = job("x * 10", 9000, [range(0, 4000), range(4000, 4010)])
    scattered = TaskSpec("3", [4011, 4013, 8999], *capture.serialize_items([4011, 4013, 8999], (), {}, 4011))
    sink = Sink()
    sent = []
    real = b._task_message
    b._task_message = lambda w, job_id, task: sent.append(real(w, job_id, task)) or sent[-1]
    b.submit(spec, [*tasks, scattered], sink)
    finished = {e.task_id: e for e in finished_all(sink, 3) if e.kind == "finished"}
    assert [m["indices"] for m in sent] == [range(0, 4000), list(range(4000, 4010)), [4011, 4013, 8999]]
    assert [type(m["indices"]) for m in sent] == [range, list, list]
    # The worker's first task of the job brings the job's envelope (it need not open the file).
    assert [m.get("envelope_data", b"")[:4] for m in sent] == [wire.ENVELOPE_MAGIC[:4], b"", b""]
    assert finished["1"].result["indices"] == range(0, 4000) and values(finished["1"])[-1] == 39990
    assert finished["2"].result["indices"] == list(range(4000, 4010)) and values(finished["2"])[0] == 40000
    assert finished["3"].result["indices"] == [4011, 4013, 8999] and values(finished["3"]) == [40110, 40130, 89990]


def test_the_pool_starts_only_the_workers_the_queued_work_needs(backend):
    b = backend(4)
    spec, tasks = job("x", 2, [range(0, 1), range(1, 2)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    finished_all(sink, 2)
    assert len(b.nodes()) == 2 and all(n.state in ("idle", "starting") for n in b.nodes())


def test_nodes_name_the_task_a_worker_runs(backend):
    b = backend(1)
    spec, tasks = job("import time\ntime.sleep(30)", 1, [range(0, 1)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    (started,) = sink.take(1)
    (node,) = b.nodes()
    assert (started.kind, node.id, node.state, node.task) == ("started", started.node, "running", "1")
    b.cancel("job-1")
    sink.take(1)


def test_resubmit_runs_a_task_again(backend):
    b = backend(1)
    spec, tasks = job("x + 1", 2, [range(0, 2)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    first = sink.take(2)[-1]
    b.resubmit("job-1", tasks[0])
    again = sink.take(2)
    assert [e.kind for e in again] == ["started", "finished"] and values(again[1]) == values(first) == [1, 2]


# --------------------------------------------------------------------------- failures


def test_a_worker_that_dies_fails_its_task_as_retryable_with_its_last_words_and_is_replaced(backend):
    b = backend(1)
    spec, tasks = job("import os\nos.write(2, b'last words\\n')\nos._exit(3)", 1, [range(0, 1)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    started, failed = sink.take(2)
    assert failed.kind == "failed" and failed.retryable and failed.failure_kind == "infrastructure"
    assert f"the worker process ({started.node}) died with exit code 3 while running this task" in failed.error
    assert "last words" in failed.error
    assert wait_for(lambda: any(n.state == "lost" and n.id == started.node for n in b.nodes()), 10), b.nodes()
    assert wait_for(lambda: any(n.id != started.node and n.state != "lost" for n in b.nodes()), 10), b.nodes()


@pytest.mark.parametrize("signal_name, meaning", [
    ("SIGKILL", "killed from outside this kernel, most often by the system when memory ran out"),
    ("SIGSEGV", "a crash in native code, a C extension or ctypes"),
])
def test_a_worker_killed_by_a_signal_says_what_that_signal_most_often_means(backend, signal_name, meaning):
    """"died with signal 9" told a user nothing; an out-of-memory kill is the usual cause of SIGKILL."""
    import signal

    b = backend(1)
    spec, tasks = job(f"import os, signal\nos.kill(os.getpid(), signal.{signal_name})", 1, [range(0, 1)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    _, failed = sink.take(2)
    number = int(getattr(signal, signal_name))
    assert f"died with signal {number} ({signal_name}: {meaning}" in failed.error, failed.error


def test_a_task_past_its_timeout_stops_there_and_keeps_what_ended_before(backend):
    """The worker stops the iteration running at the --timeout itself: the task ends with iteration 0's
    value, iteration 1 failed with a TaskTimeoutError naming it, and 2 never ran. Then that worker ends (an
    iteration cut short may leave its process half way) and the pool starts another, which runs the next task."""
    b = backend(1)
    spec, tasks = job("import time\nif x == 1:\n    time.sleep(60)\nx * 10", 3, [range(0, 3)], timeout=1.0)
    sink = Sink()
    began = time.monotonic()
    b.submit(spec, tasks, sink)
    (ended,) = [e for e in sink.until(lambda e: e.kind != "started") if e.kind != "started"]
    assert time.monotonic() - began < 5  # at the --timeout, not at the kill's grace
    assert ended.kind == "finished", ended
    failed = ended.result["failed"]
    assert failed[1]["type"] == "azpar_magic.TaskTimeoutError" and failed[1]["kind"] == "infrastructure"
    assert failed[1]["message"].startswith("iteration 1 was still running when its task reached the --timeout of 1 s")
    assert "time.sleep(60)" in failed[1]["traceback"] and failed[1]["line"] == 4, failed[1]  # the cell's line
    assert failed[2]["kind"] == "cancelled" and "not run" in failed[2]["message"] and 0 not in failed
    assert values(ended)[0] == 0
    stopped = ended.result["worker"]["pid"]
    assert wait_for(lambda: not pid_alive(stopped), 10), "the stopped worker still runs"
    spec, tasks = job("x * 2", 2, [range(0, 2)], job_id="job-2")
    after = Sink()
    b.submit(spec, tasks, after)
    (done,) = [e for e in after.until(lambda e: e.kind != "started") if e.kind != "started"]
    assert done.kind == "finished" and values(done) == [0, 2] and done.result["worker"]["pid"] != stopped
    assert not any(n.state == "lost" for n in b.nodes())  # nothing was lost: views do not list it


def test_a_task_that_does_not_stop_at_its_timeout_is_killed_a_grace_later(backend, monkeypatch):
    """A body that swallows the stop (``except BaseException``) runs on: the pool kills the task a grace
    after its --timeout, naming the iteration that was running, as before the worker kept the limit."""
    monkeypatch.setattr("azpar_magic.backends.local.timeout_grace", lambda limit: 0.5)
    b = backend(1)
    body = "import time\nif x == 1:\n    try:\n        time.sleep(60)\n    except BaseException:\n        time.sleep(60)"
    spec, tasks = job(body, 3, [range(0, 3)], timeout=1.0)
    sink = Sink()
    b.submit(spec, tasks, sink)
    (failed,) = [e for e in sink.until(lambda e: e.kind != "started") if e.kind != "started"]
    assert (failed.kind, failed.failure_kind, failed.iteration, failed.retryable) == ("failed", "timeout", 1, False)
    assert "iteration 1 was still running when its task reached the --timeout of 1 s" in failed.error
    assert "did not stop there" in failed.error, failed.error


# --------------------------------------------------------------------------- tasks sent ahead (issue 16)


def ahead_of(b: LocalBackend) -> dict[str, list[str]]:
    """Per worker, the ids of the tasks it holds ahead (sent, not started)."""
    with b._lock:
        return {w.id: [t.task_id for _, t in w.ahead] for w in b._workers.values()}


def test_a_busy_worker_holds_its_next_tasks_and_starts_each_when_the_one_before_ends(backend):
    b = backend(1)
    warm, warm_tasks = job("x", 1, [range(0, 1)], job_id="warm")
    b.submit(warm, warm_tasks, Sink())  # a ready worker, so that submit hands the tasks out at once
    assert wait_for(lambda: b.nodes() and b.nodes()[-1].state == "idle", 30)
    spec, tasks = job("import time\ntime.sleep(1 if x == 0 else 0)\nx", 3, [range(0, 1), range(1, 2), range(2, 3)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    assert list(ahead_of(b).values()) == [["2", "3"]]
    events = finished_all(sink, 3)
    steps = [(e.kind, e.task_id) for e in events]
    assert steps[:2] == [("started", "1"), ("finished", "1")], steps
    # Tasks 2 and 3 run at once after it: each said to have started (when it was) after the one before ended.
    assert [s for s in steps if s[0] == "finished"] == [("finished", "1"), ("finished", "2"), ("finished", "3")]
    for k in ("2", "3"):
        if ("started", k) in steps:
            assert steps.index(("finished", str(int(k) - 1))) < steps.index(("started", k)) < steps.index(("finished", k))
    assert [values(e) for e in events if e.kind == "finished"] == [[0], [1], [2]]


def test_what_a_worker_holds_ahead_stays_within_what_its_pipe_holds(backend):
    """Tasks of 20 kB items: one goes ahead (AHEAD_BYTES), so writing to a busy worker never
    waits for it to read; the rest stay queued in the kernel."""
    b = backend(1)
    warm, warm_tasks = job("x", 1, [range(0, 1)], job_id="warm")
    b.submit(warm, warm_tasks, Sink())
    assert wait_for(lambda: b.nodes() and b.nodes()[-1].state == "idle", 30)
    spec, _ = job("import time\ntime.sleep(0.5)\nlen(x)", 4, [range(0, 1)])
    big = [b"a" * 20_000]
    tasks = [TaskSpec(str(i + 1), range(i, i + 1), *capture.serialize_items(big, (), {}, i)) for i in range(4)]
    sink = Sink()
    b.submit(spec, tasks, sink)
    assert list(ahead_of(b).values()) == [["2"]] and len(b._queue) == 2
    assert [values(e) for e in finished_all(sink, 4) if e.kind == "finished"] == [[20_000]] * 4


def test_short_tasks_go_ahead_in_batches_and_all_run_once_in_order(backend):
    b = backend(1)
    n = 60
    spec, tasks = job("x * 3", n, [range(i, i + 1) for i in range(n)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    events = finished_all(sink, n)
    finished = [e for e in events if e.kind == "finished"]
    assert [e.task_id for e in finished] == [str(i) for i in range(1, n + 1)]
    assert [values(e)[0] for e in finished] == [3 * i for i in range(n)]
    started = [int(e.task_id) for e in events if e.kind == "started"]
    assert started == sorted(set(started)) and started[0] == 1  # in order, each once (those not left out)


def test_a_first_task_that_cannot_be_written_goes_back_first_with_the_tasks_after_it(backend, monkeypatch):
    # An idle worker's first task is written alone, the ones it holds ahead after it (issue 16, a).
    # When that first write fails (its pipe is gone), every task taken for it goes back to the
    # queue's front in order, each once: none is lost or run twice.
    b = backend(1)
    spec, tasks = job("x", 1, [range(0, 1)], job_id="warm")
    warm = Sink()
    b.submit(spec, tasks, warm)
    finished_all(warm, 1)
    real, calls = local_backend._write_all, []

    def failing_once(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(32, "Broken pipe")
        real(fd, data)

    monkeypatch.setattr(local_backend, "_write_all", failing_once)
    n = 10
    spec, tasks = job("x * 3", n, [range(i, i + 1) for i in range(n)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    finished = [e for e in finished_all(sink, n) if e.kind == "finished"]
    assert [e.task_id for e in finished] == [str(i) for i in range(1, n + 1)]
    assert [values(e)[0] for e in finished] == [3 * i for i in range(n)]
    assert sink.events.empty() and len(calls) >= 3  # the failed write, then the first alone, then the rest


def one_busy_worker(count: int, sink) -> tuple[LocalBackend, local_backend._Worker, list[TaskSpec]]:
    """A pool that never started, with one worker (no process behind it) running the first of
    ``count`` one-iteration tasks of job-1 and holding the others ahead: its read handler is
    then driven directly with the replies a worker would write."""
    b = LocalBackend(workers=1)
    spec, tasks = job("x", count, [range(i, i + 1) for i in range(count)])
    b._jobs["job-1"] = local_backend._Job(spec, "unused.azpj", sink)
    w = local_backend._Worker("worker-1", None, -1, -1, ready=True, gives_back=True)  # type: ignore[arg-type]
    w.task = ("job-1", tasks[0])
    w.ahead.extend(("job-1", t) for t in tasks[1:])
    b._workers[w.id] = w
    return b, w, tasks


def result(task: TaskSpec, seconds: float) -> bytes:
    """A worker's reply for ``task``, which it says took ``seconds``."""
    body = {"indices": list(task.indices), "values": ["all", "pickle", b""]}
    return b"".join(local_backend._frame({"op": "result", "task": task.task_id, "result": body, "ran": seconds}))


def test_a_task_that_started_and_ended_within_one_read_is_not_said_to_have_started():
    """A worker runs the tasks it holds ahead back to back; the pool learns that one started
    when the one before it ends, and one read of a worker's pipe often brings several ends.
    A task that started and ended within one read is told as ended only, with its run time
    (the job's core time) from the worker; the one still running when the read ends is told as
    started; a reply that does not say the worker's time has its task told started first (the
    engine then times it from there). The dispatcher's read handler is driven directly, with no
    process behind the worker."""
    sink = Sink()
    b, w, tasks = one_busy_worker(5, sink)

    def broken(task: TaskSpec) -> bytes:  # a failure whose reply does not say the worker's time
        return b"".join(local_backend._frame({"op": "result", "task": task.task_id, "error": "bad input", "exit_code": 3}))

    try:
        b._on_readable(w.id, result(tasks[0], 0.25) + result(tasks[1], 0.5) + result(tasks[2], 0.75))
        got = [(e.kind, e.task_id, e.ran) for e in sink.take(4)]
        assert got == [("finished", "1", 0.25), ("finished", "2", 0.5), ("finished", "3", 0.75), ("started", "4", None)]
        b._on_readable(w.id, result(tasks[3], 1.0) + broken(tasks[4]))
        got = [(e.kind, e.task_id, e.ran) for e in sink.take(3)]
        assert got == [("finished", "4", 1.0), ("started", "5", None), ("failed", "5", None)]
        assert sink.events.empty() and w.task is None and not w.ahead
    finally:
        b._workers.clear()
        b.close()


class _Batches(Sink):
    """A sink that takes several events at once, as the engine's does (base.deliver), and keeps each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, str]]] = []

    def many(self, events: Sequence[TaskEvent]) -> None:
        self.batches.append([(e.kind, e.task_id) for e in events])
        for event in events:
            self(event)


def test_the_ends_one_read_brings_reach_a_sink_that_takes_many_as_one_batch():
    """base.deliver: the engine's sink takes several events at once (one notification of the
    job's waiters and views for them all). A read's ends go to it as one batch, in the order
    the worker answered, and the task still running is told started in the same batch, after
    them (it was a second delivery, a second notification and a second look at whether the job
    ended, at each read: issue 16); the tasks a dispatch starts together are one batch too (the
    test below); a plain callable sink gets the same events one by one (the test above)."""
    sink = _Batches()
    b, w, tasks = one_busy_worker(4, sink)
    try:
        b._on_readable(w.id, result(tasks[0], 0.1) + result(tasks[1], 0.1) + result(tasks[2], 0.1))
        got = [(e.kind, e.task_id) for e in sink.take(4)]
        assert got == [("finished", "1"), ("finished", "2"), ("finished", "3"), ("started", "4")]
        assert sink.batches == [[("finished", "1"), ("finished", "2"), ("finished", "3"), ("started", "4")]]
    finally:
        b._workers.clear()
        b.close()


def test_the_tasks_a_dispatch_starts_together_reach_their_job_as_one_batch():
    """A cell's first tasks start together, one on each idle worker: their job hears of them in
    one batch (one notification of its waiters and views), not one event each."""
    sink = _Batches()
    b, w, tasks = one_busy_worker(3, sink)
    try:
        entry = b._jobs["job-1"]
        b._tell_started([(entry, tasks[0], "worker-1"), (entry, tasks[1], "worker-2")])
        got = [(e.kind, e.task_id, e.node) for e in sink.take(2)]
        assert got == [("started", "1", "worker-1"), ("started", "2", "worker-2")]
        assert sink.batches == [[("started", "1"), ("started", "2")]]
    finally:
        b._workers.clear()
        b.close()


@pytest.mark.parametrize("pause", [0.0, wire._Inbox.REST_AFTER + 0.5])
def test_tasks_held_behind_a_long_task_are_given_back_to_an_idle_worker(backend, pause):
    # pause: the workers' helpers that answer a return while a task runs rest after a quiet spell
    # (worker._Inbox.REST_AFTER); the first task after one wakes them.
    b = backend(2)
    warm, warm_tasks = job("x", 2, [range(0, 1), range(1, 2)], job_id="warm")
    warm_sink = Sink()
    b.submit(warm, warm_tasks, warm_sink)
    finished_all(warm_sink, 2)
    assert wait_for(lambda: all(n.state == "idle" for n in b.nodes()) and len(b.nodes()) == 2, 30)
    time.sleep(pause)
    # Task 1 runs 4 s; tasks 2 and 4 half a second each, so both workers are busy when submit returns.
    body = "import os, time\ntime.sleep({0: 4, 1: 0.5, 3: 0.5}.get(x, 0))\n(x, os.getpid(), time.monotonic())"
    spec, tasks = job(body, 4, [range(i, i + 1) for i in range(4)])
    sink = Sink()
    started = time.monotonic()
    b.submit(spec, tasks, sink)
    held = ahead_of(b)
    first = {e.task_id: e.node for e in sink.take(2)}  # the started events of tasks 1 and 2
    assert held == {first["1"]: ["3"], first["2"]: ["4"]}  # each worker holds one task ahead
    finished = {e.task_id: values(e)[0] for e in finished_all(sink, 4) if e.kind == "finished"}
    # Task 3, held by the worker running the long task 1, was given back when the other worker
    # went idle: it ran there, well before task 1 ended, and only once.
    assert finished["3"][1] == finished["2"][1] != finished["1"][1]
    assert finished["3"][2] - started < 3 < finished["1"][2] - started
    assert sorted(finished) == ["1", "2", "3", "4"] and sink.events.empty()


def test_cancelling_a_task_held_ahead_ends_it_without_running_it(backend, tmp_path):
    b = backend(1)
    slow, slow_tasks = job("import time\ntime.sleep(60)", 1, [range(0, 1)], job_id="job-0")
    holder = Sink()
    b.submit(slow, slow_tasks, holder)
    holder.take(1)
    body = f"import pathlib\npathlib.Path(r'{tmp_path}').joinpath(f'ran-{{x}}').touch()\nx"
    spec, tasks = job(body, 2, [range(0, 1), range(1, 2)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    assert wait_for(lambda: ahead_of(b) and list(ahead_of(b).values())[0] == ["1", "2"], 10)
    b.cancel("job-1", ["1"])
    (ended,) = sink.take(1)
    assert (ended.task_id, ended.kind, ended.failure_kind, ended.error) == (
        "1", "failed", "cancelled", "cancelled before it started")
    b.cancel("job-0")
    holder.take(1)
    done = [e for e in finished_all(sink, 1) if e.kind == "finished"]
    assert [(e.task_id, values(e)) for e in done] == [("2", [1])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran-1"]


# --------------------------------------------------------------------------- cancel, finish, close


def test_cancel_kills_the_running_task_drops_the_queued_ones_and_replaces_the_worker(backend):
    b = backend(1)
    spec, tasks = job("import time\ntime.sleep(60)", 3, [range(0, 1), range(1, 2), range(2, 3)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    (started,) = sink.take(1)
    pids = worker_pids(b)
    b.cancel("job-1")
    ends = {e.task_id: e for e in sink.take(3)}
    assert all(e.kind == "failed" and e.failure_kind == "cancelled" and not e.retryable for e in ends.values())
    assert ends[started.task_id].error == "cancelled while running"
    assert {ends[t].error for t in ends if t != started.task_id} == {"cancelled before it started"}
    assert wait_for(lambda: not any(pid_alive(p) for p in pids), 10)
    assert sink.events.empty()


def test_cancel_of_named_tasks_leaves_the_others_running(backend):
    b = backend(1)
    spec, tasks = job("x * 2", 3, [range(0, 1), range(1, 2), range(2, 3)])
    slow, _ = job("import time\ntime.sleep(60)", 1, [range(0, 1)], job_id="job-0")
    holder = Sink()
    b.submit(slow, _, holder)  # keeps the only worker busy while job-1's tasks queue
    holder.take(1)
    sink = Sink()
    b.submit(spec, tasks, sink)
    b.cancel("job-1", ["2"])
    (dropped,) = sink.take(1)
    assert (dropped.task_id, dropped.kind, dropped.failure_kind) == ("2", "failed", "cancelled")
    b.cancel("job-0")
    holder.take(1)
    done = [e for e in finished_all(sink, 2) if e.kind == "finished"]
    assert sorted((e.task_id, values(e)) for e in done) == [("1", [0]), ("3", [4])]


def staged_envelopes(b: LocalBackend) -> list[str]:
    return [name for name in os.listdir(b._stage) if name.endswith(".azpj")]


def test_finish_removes_what_was_staged_for_the_job(backend):
    b = backend(1)
    sink = Sink()
    spec, tasks = job("x", 1, [range(0, 1)])
    b.submit(spec, tasks, sink)
    finished_all(sink, 1)
    for n in range(2, 6):  # four other jobs since job-1's: the worker may have let job-1 go
        b.submit(*job("x", 1, [range(0, 1)], job_id=f"job-{n}"), Sink())
    wait_for(lambda: not b._queue and all(w.idle for w in b._workers.values()), timeout=WAIT)
    b.resubmit("job-1", tasks[0])  # as a retry does: the task goes again, and the file with it
    finished_all(sink, 1)
    assert staged_envelopes(b) == ["job-job-1.azpj"]
    b.finish("job-1")
    assert staged_envelopes(b) == []


def test_a_task_goes_without_its_envelope_only_where_the_worker_still_holds_the_job(backend):
    # A job's first task to a worker carries the envelope. Its next ones go without: the worker's
    # job cache (worker.JobCache, NAMESPACE_CACHE_SIZE jobs, first in first out) still holds the
    # job while fewer than that many other jobs came to it since; after that, the envelope file
    # is written first, since the worker may have let the job go and then opens it. The worker
    # here is a real one: a task sent without either would fail with "cannot read the envelope".
    b = backend(1)
    seen = []
    real = b._task_message

    def spy(w, job_id, task):
        message = real(w, job_id, task)
        seen.append((job_id, "envelope_data" in message, os.path.exists(message["envelope"])))
        return message

    b._task_message = spy
    sink = Sink()
    spec, tasks = job("x + 1", 8, [range(i, i + 1) for i in range(8)])
    b.submit(spec, tasks, sink)
    assert sorted(values(e)[0] for e in finished_all(sink, 8) if e.kind == "finished") == list(range(1, 9))
    assert seen == [("job-1", True, False)] + [("job-1", False, False)] * 7  # one worker: it keeps the job

    def others(numbers) -> None:
        for n in numbers:
            other = Sink()
            b.submit(*job("x", 1, [range(0, 1)], job_id=f"job-{n}"), other)
            assert [values(e) for e in finished_all(other, 1) if e.kind == "finished"] == [[0]]

    def again() -> tuple:
        seen.clear()
        b.resubmit("job-1", tasks[0])
        assert [values(e) for e in finished_all(sink, 1) if e.kind == "finished"] == [[1]]
        return seen[0]

    assert wire.NAMESPACE_CACHE_SIZE == 4  # the counts below
    others(range(2, 5))  # three other jobs since: still held
    assert again() == ("job-1", False, False) and staged_envelopes(b) == []
    others([5])  # a fourth
    assert again() == ("job-1", False, True) and staged_envelopes(b) == ["job-job-1.azpj"]
    for n in range(1, 6):
        b.finish(f"job-{n}")
    assert staged_envelopes(b) == []


def test_jobs_interleaving_on_a_worker_each_see_the_variables_their_kernel_had(backend, monkeypatch):
    """A job carries the kernel's environment variables changed since the pool started (KernelEnvironment);
    its worker applies them at the job's first task. A job whose task comes back after another job's ran on
    that worker (a retry, a task given back) runs with its own again, not with the other job's."""
    monkeypatch.delenv("AZPAR_T_INTERLEAVED", raising=False)
    b = backend(1)
    body = "import os\nos.environ.get('AZPAR_T_INTERLEAVED')"

    def ran(sink: Sink) -> list:
        return [values(e) for e in finished_all(sink, 1) if e.kind == "finished"]

    first, second = Sink(), Sink()
    spec_a, tasks_a = job(body, 1, [range(0, 1)], job_id="job-a")
    b.submit(spec_a, tasks_a, first)
    assert ran(first) == [[None]]
    monkeypatch.setenv("AZPAR_T_INTERLEAVED", "set for b")
    spec_b, tasks_b = job(body, 1, [range(0, 1)], job_id="job-b")
    b.submit(spec_b, tasks_b, second)
    assert ran(second) == [["set for b"]]
    b.resubmit("job-a", tasks_a[0])
    assert ran(first) == [[None]], "job a ran with job b's variables"
    b.resubmit("job-b", tasks_b[0])
    assert ran(second) == [["set for b"]]
    for job_id in ("job-a", "job-b"):
        b.finish(job_id)


def test_a_job_that_failed_to_load_fails_its_tasks_sent_without_the_envelope_alike(backend):
    # Tasks held ahead go without the envelope and without its file: the worker loads the job from
    # the first one. When that load fails, the others fail with the same words, not with a missing file.
    b = backend(1)
    spec, tasks = job("x", 3, [range(i, i + 1) for i in range(3)])
    spec.envelope["format"] = 999
    sink = Sink()
    b.submit(spec, tasks, sink)
    failed = [e for e in finished_all(sink, 3) if e.kind != "started"]
    assert [e.kind for e in failed] == ["failed"] * 3
    assert {e.failure_kind for e in failed} == {"environment"}, failed
    assert len({e.error for e in failed}) == 1 and "envelope format 999" in failed[0].error
    assert staged_envelopes(b) == []


def test_close_ends_every_worker_process_and_removes_the_stage(backend):
    b = backend(2)
    spec, tasks = job("x", 2, [range(0, 1), range(1, 2)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    finished_all(sink, 2)
    pids, stage = worker_pids(b), b._stage
    assert pids and os.path.isdir(stage)
    started = time.monotonic()
    b.close()
    assert time.monotonic() - started < 10
    assert not any(pid_alive(p) for p in pids) and not os.path.exists(stage)


def test_close_says_how_running_and_queued_tasks_ended_and_a_closed_pool_refuses_work(backend):
    b = backend(1)
    spec, tasks = job("import time\ntime.sleep(30)\nx", 2, [range(0, 1), range(1, 2)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    assert sink.take(1)[0].kind == "started"
    b.close()
    ended = {e.task_id: e for e in sink.take(2)}
    assert set(ended) == {"1", "2"}
    assert all(e.kind == "failed" and e.failure_kind == "cancelled" for e in ended.values()), ended
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(*job("x", 1, [range(0, 1)], job_id="job-2"), Sink())


def test_close_ends_the_running_task_as_it_would_and_tasks_held_ahead_never_start(backend, tmp_path):
    b = backend(1)
    warm, warm_tasks = job("x", 1, [range(0, 1)], job_id="warm")
    b.submit(warm, warm_tasks, Sink())
    assert wait_for(lambda: b.nodes() and b.nodes()[-1].state == "idle", 30)
    body = f"import pathlib, time\nd = pathlib.Path(r'{tmp_path}')\nd.joinpath(f'start-{{x}}').touch()\ntime.sleep(0.3)\nx"
    spec, tasks = job(body, 3, [range(0, 1), range(1, 2), range(2, 3)])
    sink = Sink()
    b.submit(spec, tasks, sink)
    assert list(ahead_of(b).values()) == [["2", "3"]]
    assert wait_for(lambda: (tmp_path / "start-0").exists(), 10)
    b.close()  # the running task ends within the second close() gives it; those ahead are dropped
    events = sink.take(4)  # task 1 started, then each task's end
    assert {e.task_id for e in events if e.kind == "failed" and e.failure_kind == "cancelled"} == {"1", "2", "3"}
    time.sleep(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start-0"]


# --------------------------------------------------------------------------- the registry


class _PluggedIn(LocalBackend):
    """A third party's backend, as an entry point of the ``azpar_magic.backends`` group names it."""

    name = "plugged"


def test_backends_are_found_by_name_built_in_ones_and_entry_points(monkeypatch):
    from importlib import metadata

    from azpar_magic.backends import base

    assert base.backend_class("local") is LocalBackend
    assert {"local", "azure"} <= set(base.available_backends())
    plugged = metadata.EntryPoint("plugged", f"{__name__}:_PluggedIn", base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base.metadata, "entry_points",
                        lambda group: [plugged] if group == base.ENTRY_POINT_GROUP else [])
    made = base.create_backend("plugged", workers=1)
    try:
        assert type(made) is _PluggedIn and made.size == 1
    finally:
        made.close()
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; available: azure, local, plugged"):
        base.backend_class("nope")


# --------------------------------------------------------------------------- views


class _Slots(LocalBackend):
    """A backend whose pool_info counts slots: views must say so, whatever its name."""

    name = "slotted"
    size_label = "slots"


def test_job_views_label_the_size_as_the_backend_declares_it_also_read_back_from_the_store():
    from azpar_magic import jobstore
    from azpar_magic.jobs import JobOptions
    from azpar_magic.run.engine import Engine
    from azpar_magic.run.request import RunRequest
    from azpar_magic.ui.state import job_view
    from azpar_magic.ui.text import format_text

    eng = Engine(_Slots(workers=1))
    try:
        job = eng.submit(RunRequest(parse_cell("for x in range(2)", "x"), {}, JobOptions()))
        assert job.result(timeout=WAIT) == [0, 1]
        assert job_view(job.snapshot())["size_label"] == "slots"
        assert "slots 1 worker processes" in format_text(job.snapshot())
        jobstore.flush()
        assert jobstore.read_manifest(job.id)["size_label"] == "slots"
        assert job_view(jobstore.load_job(job.id).snapshot())["size_label"] == "slots"
    finally:
        eng.backend.close()

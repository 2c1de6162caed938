"""The job handle a user holds (its states and snapshot types are in ``states`` and ``snapshot``).

A Job owns the per-iteration record of one run: values, failures and captured output,
stored compactly (one list slot per iteration, sparse dicts for the rare parts) so a
million trivial iterations cost little more than their values. The engine and backends
feed it through ``record_*`` methods from their threads; users and views read it through
``result()``, ``snapshot()`` and friends, which take the lock and never block on I/O.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

from ..errors import IterationError, JobCancelled, JobLost, iteration_error
from . import merge
from .cost import CostEstimate, CostMeter
from .snapshot import Failure, FailureView, JobOptions, JobSnapshot, NodeInfo, TaskState
from .states import (
    CANCELLED,
    FINAL_STATES,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_FINAL,
    TASK_RUNNING,
    TASK_SUCCEEDED,
    JobState,
    TaskStatus,
    TaskStep,
    ending_step,
    job_end_state,
    job_started_state,
    task_state_after,
)
from .text import short_repr

_ITER_PENDING, _ITER_OK, _ITER_FAILED = 0, 1, 2
_OK_BYTE = bytes([_ITER_OK])  # an iteration's status byte once it has its value


_FAILURE_OUTPUT_LIMIT = 4_000  # characters of a failed iteration's output carried by a snapshot


_VIEWS: dict[str, Callable[[JobSnapshot], str]] = {}


def timeout_seconds(timeout: object) -> float | None:
    """``timeout`` as seconds to wait (None: no limit), or the error saying what was given, before
    any wait: ``result(timeout="1")`` failed deep inside as a float added to a str, and a NaN would
    make every deadline comparison false. Any real number is taken (a numpy one too); a negative
    one waits not at all."""
    if timeout is None:
        return None
    what = f"timeout must be a number of seconds or None, got {timeout!r}"
    if isinstance(timeout, (bool, str, bytes)):
        raise TypeError(f"{what} ({type(timeout).__name__})")
    try:
        seconds = float(timeout)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{what} ({type(timeout).__name__})") from None
    if math.isnan(seconds):
        raise ValueError(what)
    return seconds


def _eta(remaining: int, worked: int, started: float, progressed: float | None, now: float) -> float | None:
    """Seconds until the ``remaining`` iterations end, at the rate the ``worked`` ones ended at, counted down
    from the moment the last of them ended (``progressed``). Reckoned from now instead, the rate fell
    between two ends and the ETA grew with the clock: two ten-minute iterations left on two nodes read
    "ETA 10 min", then 15, then 20, as they neared their end. Once that count runs out (the
    iterations take longer than those before), the rate so far, up to now."""
    if progressed is None or progressed <= started:
        return remaining * (now - started) / worked if now > started else None
    left = remaining * (progressed - started) / worked - (now - progressed)
    return left if left > 0 else remaining * (now - started) / worked


def register_views(*, text: Callable[[JobSnapshot], str], html: Callable[[JobSnapshot], str]) -> None:
    """Install how a Job shows itself (``repr`` and a notebook's HTML). The views live in ``ui``, above this
    layer: ``ui.text`` registers them when it is imported, which the package's ``__init__`` does."""
    _VIEWS["text"] = text
    _VIEWS["html"] = html


# The loop of the cell ``azpar_magic.map`` runs for a function (mapping.py): no notebook cell has it.
FUNCTION_ITEM = "__azpar_item__"  # the loop target: a name no function reads as a global
FUNCTION_ITEMS = "__azpar_items__"
FUNCTION_LOOP = f"for {FUNCTION_ITEM} in {FUNCTION_ITEMS}"
NAMELESS_FUNCTION = "__azpar_fn__"  # what map's cell calls a function without a name of its own in __main__


def cell_title(source: str | None) -> str:
    """A job's cell as views name it (``%azpar jobs``, the panel): its first line, or for a job of
    ``map``/``starmap``, whose cell no notebook has, the call (``map(simulate, ...)``) rather than the
    synthetic ``%%azpar for __azpar_item__ in __azpar_items__``."""
    first, body = ((source or "").splitlines() + ["", ""])[:2]
    if not first.endswith(FUNCTION_LOOP):
        return first
    name, paren, arguments = body.partition("(")
    called = "starmap" if arguments.startswith("*") else "map"
    return f"azpar_magic.{called}({name if paren and name != NAMELESS_FUNCTION else '<function>'}, ...)"


class Job:
    """Handle on one run of a loop: poll it, wait for it, cancel it, read its results."""

    def __init__(
        self,
        job_id: str,
        items: Sequence[Any],
        options: JobOptions,
        *,
        backend_name: str,
        pool: str = "",
        vm_size: str = "",
        source: str = "",
        size_label: str = "VM size",
        nodes: Callable[[], Sequence[NodeInfo]] | None = None,
        cancel: Callable[[], None] | None = None,
    ):
        self.id = job_id
        # A tuple from the start: the items a job ran over do not change, and a type that changed
        # when the store's writer settled the job (as it once did) made ``job.items == [...]`` true
        # or false depending on a race with that thread. A tuple also keeps the collector off it.
        self.items: tuple = items if type(items) is tuple else tuple(items)
        self.options = options
        self.backend_name, self.pool, self.vm_size, self.source = backend_name, pool, vm_size, source
        self.size_label = size_label  # the views' name for vm_size (the backend's Views.size_label)
        self._nodes = nodes or (lambda: ())
        self._cancel_hook = cancel
        self.health: Callable[[], str] = lambda: ""  # the backend's word on its service (set by the engine)
        n = len(items)
        # Lists while they are written, tuples once the job is settled (settle, _writable).
        self._values: list | tuple = [None] * n
        self._status = bytearray(n)
        self._failures: dict[int, Failure] = {}
        self._outputs: dict[int, list] = {}
        self._gathered: dict[str, list | tuple] = {name: [None] * n for name in options.gather}
        self._tasks: dict[str, TaskState] = {}
        self.tasks_final = 0  # tasks succeeded or failed for good (kept, not recounted)
        self._done = 0
        # Iterations in the order they got their outcome (value or failure), one entry per
        # task result (a range or a list of indices): what as_completed() walks. One entry per
        # task, not per iteration, so a million-iteration job pays a few thousand entries.
        self._arrivals: list[Sequence[int]] = []
        self.state: str = PENDING
        self.created = time.time()
        self._started = time.monotonic()
        self._finished: float | None = None
        self._settling = False  # ended, its waiters not told yet (finish(wake=False) until wake)
        self._progressed: float | None = None  # when an iteration last got its outcome here (the ETA's clock)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # any change: what as_completed() waits on
        # How many as_completed() iterators wait on _changed now (changed under the lock): a change
        # notifies it only when one does. A change is made under the lock before its notification,
        # and a waiter counts itself and looks at the job under the lock before it waits, so a
        # change it does not see counted is one it finds when it looks (issue 16: notify_all, a
        # Python method, on the thread the cell's last result waits behind, for no one).
        self._watchers = 0
        # The job's end only: wait() sleeping on _changed woke the kernel's main thread at every task
        # event, a thread competing for the cores the workers compute on (issue 16).
        self._end = threading.Condition(self._lock)
        self._merged: tuple[bool, Any] | None = None
        self.listeners: list[Callable[[Job], None]] = []
        self._quiet_thread: int | None = None  # the thread inside changes(): its notifications wait for the end
        self._notify_missed = False
        self.capture: Any = None  # what was shipped (names, bytes, packages), set by the engine
        self.worker_stats: dict[str, dict] = {}  # node -> what its worker last reported
        self.rerun_of: str | None = None  # the job whose finished iterations this run kept
        self.store_error: str | None = None  # why the job store could not keep this job, if it could not
        # The store folder that holds every record and the final manifest (set by the store's writer):
        # the session may then let go of this Job, and the store gives it back when asked (session.remember).
        self.stored: str | None = None
        # Captured output of iterations kept from an earlier run (rerun): readable through
        # output(i) and logs(i), but not replayed by ``outputs`` (shown when that run ended).
        self._base_outputs: dict[int, list] = {}
        self._adopted = 0  # iterations kept from an earlier run: not work of this run (throughput)
        # Bytes of its values as they travelled back (set by the engine): what the session's bound on
        # the values it keeps counts (session.KEPT_VALUE_BYTES).
        self.value_bytes = 0
        # Objects its values made in this process as they were loaded (set by the engine): the garbage
        # collector walks each at every full collection, which the session's other bound counts
        # (session.KEPT_VALUE_OBJECTS).
        self.value_objects = 0
        self.from_cache = 0  # of those, how many --cache reused (the views say so)
        self.manifest: dict | None = None  # the job store's manifest, for a job loaded from the store
        self.owner = ""  # for a stored job another process runs: which one (it cannot be cancelled here)
        self.files = None  # data.FilesReport of a job with --inputs/--outputs: outputs per iteration, warnings
        # Files iterations wrote in their working folders on remote nodes, without --outputs: they stay there
        # (the local pool's workers write beside the notebook), and the magic says so (display.show_files).
        self.left_on_nodes: set[str] = set()
        self.reattach = False  # loaded from the store, running on a backend that outlived its kernel: take it over
        self.meter: CostMeter | None = None  # node and task time while it runs (set by the engine; jobs/cost.py)
        self.stop_reason = ""  # why azpar cancelled the job itself (its cost cap): result() and the views say it

    # ------------------------------------------------------------------ fed by the engine

    def bind(self, nodes: Callable[[], Sequence[NodeInfo]], cancel: Callable[[], None]) -> None:
        """Attach a job rebuilt from the store to the engine that now runs it (a resumed job)."""
        self._nodes, self._cancel_hook, self.owner = nodes, cancel, ""

    def add_task(self, task_id: str, indices: Sequence[int]) -> None:
        with self._lock:
            self._tasks[task_id] = TaskState(task_id, indices)

    def add_tasks(self, tasks: Iterable[tuple[str, Sequence[int]]]) -> None:
        """:meth:`add_task` for many under one lock (a job of 50,000 tasks adds them all at once)."""
        with self._lock:
            pairs = list(tasks)
            self._tasks.update(zip(map(operator.itemgetter(0), pairs), itertools.starmap(TaskState, pairs)))

    def task(self, task_id: str) -> TaskState:
        return self._tasks[task_id]

    @property
    def tasks(self) -> dict[str, TaskState]:
        return self._tasks

    def mark_running(self) -> None:
        with self._lock:
            self.state = job_started_state(self.state)
        self._notify()

    def record_task_started(self, task_id: str, node: str | None) -> None:
        with self._lock:
            task = self._tasks[task_id]
            after = task_state_after(TaskStep.STARTED, task.state)
            if after != task.state:
                task.state, task.node, task.started = after, node, time.monotonic()
        self._notify()

    def record_task_requeued(self, task_id: str, error: str) -> None:
        with self._lock:
            task = self._tasks[task_id]
            task.state, task.node, task.error = task_state_after(TaskStep.REQUEUED, task.state), None, error
            task.attempts += 1
        self._notify()

    def record_values(
        self,
        task_id: str,
        indices: Sequence[int],
        values: Sequence[Any],
        failures: dict[int, Failure],
        outputs: dict[int, list],
        gathered: dict[str, Sequence[Any]] | None,
    ) -> None:
        """Store one finished task's iterations (values aligned with indices)."""
        with self._lock:
            own = self._values
            if type(own) is not list:  # (a look, not a call: this runs once a task, 10,000 times a cell)
                own = self._writable()[0]
            n = len(indices)
            if (
                isinstance(indices, range)
                and indices.step == 1
                and not failures
                and not gathered
                and self._status.count(_ITER_PENDING, indices.start, indices.stop) == n
            ):
                # The common case, a clean contiguous chunk: slice copies, no per-item loop.
                own[indices.start : indices.stop] = values
                self._status[indices.start : indices.stop] = _OK_BYTE * n
                self._done += n
                self._arrivals.append(indices)
            else:
                self._record_each(indices, values, failures, gathered)
            self._progressed = time.monotonic()
            self._outputs.update(outputs)
            task = self._tasks[task_id]
            # Not a look at every index when nothing failed (12,500 per task of a 100,000-item loop).
            failed = bool(failures) and any(i in failures for i in indices)
            self._finalize(task, ending_step(produced=True, any_failed=failed))
        self._notify()

    def _record_each(self, indices, values, failures, gathered) -> None:
        own, columns = self._writable()
        arrived = []  # only iterations that were pending: a duplicate delivery is not a new arrival
        for pos, index in enumerate(indices):
            if self._status[index] != _ITER_PENDING:
                continue  # a duplicate delivery (retry raced a late result)
            arrived.append(index)
            if index in failures:
                self._failures[index] = failures[index]
                self._status[index] = _ITER_FAILED
            else:
                own[index] = values[pos]
                self._status[index] = _ITER_OK
            self._done += 1
            for name, column in (gathered or {}).items():
                if name in columns:
                    columns[name][index] = column[pos]
        if arrived:
            self._arrivals.append(arrived)

    def adopt(self, base: Job, keep: Sequence[int]) -> None:
        """Take over the finished iterations ``keep`` of an earlier run of the same items
        (``rerun --failed``): their values, gathered variables and output. Called before the
        job starts, so the merged result is in iteration order whichever run computed what."""
        values, outputs, gathered = base._kept(keep)
        with self._lock:
            own, columns = self._writable()
            arrived = []
            for index, value in values.items():
                if self._status[index] == _ITER_PENDING:
                    arrived.append(index)
                    own[index] = value
                    self._status[index] = _ITER_OK
                    self._done += 1
                    self._adopted += 1
                    for name, column in columns.items():
                        if name in gathered:
                            column[index] = gathered[name].get(index)
            if arrived:
                self._arrivals.append(arrived)
            self._base_outputs.update(outputs)
        self._notify()

    def _kept(self, keep: Sequence[int]) -> tuple[dict[int, Any], dict[int, list], dict[str, dict[int, Any]]]:
        with self._lock:
            ok = [i for i in keep if self._status[i] == _ITER_OK]
            outputs = {i: self._outputs.get(i) or self._base_outputs.get(i) for i in ok}
            return (
                {i: self._values[i] for i in ok},
                {i: o for i, o in outputs.items() if o},
                {name: {i: col[i] for i in ok} for name, col in self._gathered.items()},
            )

    def restore(
        self,
        indices: Sequence[int],
        values: Sequence[Any],
        failures: dict[int, Failure],
        outputs: dict[int, list],
        gathered: dict[str, Sequence[Any]] | None,
        *,
        base: bool = False,
    ) -> None:
        """Replay iterations read back from the job store (no task bookkeeping: the tasks of
        a stored job are history). ``base``: they come from the earlier run a rerun kept."""
        with self._lock:
            before = self._done
            self._record_each(indices, values, failures, gathered)
            if base:
                self._adopted += self._done - before
                self._base_outputs.update(outputs)
            else:
                self._outputs.update(outputs)

    def restore_outputs(self, outputs: dict[int, list], *, base: bool = False) -> None:
        """Replay captured output read back from the job store (a stored task's logs), before
        or without its values. ``base``: it comes from the earlier run a rerun kept, so it is
        readable through ``output(i)`` and ``logs(i)`` but not replayed by ``outputs``."""
        with self._lock:
            (self._base_outputs if base else self._outputs).update(outputs)

    def restore_task(self, task_id: str, indices: Sequence[int], step: TaskStep) -> None:
        """Replay a stored task's end (the job store rebuilding a job's tasks): added, then
        ended by ``step`` as the Job that ran it ended it. A task this job has is kept as is."""
        with self._lock:
            if task_id in self._tasks:
                return
            task = self._tasks[task_id] = TaskState(task_id, indices)
            self._finalize(task, step)

    def notify(self) -> None:
        """Wake whoever waits on this job and its listeners (views), after the job store
        replayed records into it from outside the ``record_*`` methods."""
        self._notify()

    def restore_timing(self, created: float, elapsed: float | None) -> None:
        """A stored job keeps its creation time and, when it ended, its duration."""
        with self._lock:
            self.created = created
            now = time.monotonic()
            self._started = now - (elapsed if elapsed is not None else max(0.0, time.time() - created))
            if elapsed is not None:
                self._finished = now

    def record_task_failed(self, task_id: str, failure_for: Callable[[int], Failure]) -> None:
        """The whole task produced nothing: each of its pending iterations gets a failure."""
        with self._lock:
            task = self._tasks[task_id]
            arrived = [index for index in task.indices if self._status[index] == _ITER_PENDING]
            for index in arrived:
                self._failures[index] = failure_for(index)
                self._status[index] = _ITER_FAILED
                self._done += 1
            if arrived:
                self._arrivals.append(arrived)
                self._progressed = time.monotonic()
            cancelled = all(
                index in self._failures and self._failures[index].kind == "cancelled" for index in task.indices
            )
            self._finalize(task, ending_step(produced=False, all_cancelled=cancelled))
        self._notify()

    def _finalize(self, task: TaskState, step: TaskStep) -> None:
        """End ``task`` by ``step`` (lock held); a task counts once in ``tasks_final``."""
        if task.state not in TASK_FINAL:
            self.tasks_final += 1
        task.state, task.finished = task_state_after(step, task.state), time.monotonic()

    def final_state(self, cancelled: bool = False) -> JobState:
        """The state this job ends in once every task is final: cancelled when the user
        cancelled it; else failed when a failure makes ``result()`` raise (``--errors stop``);
        done when iterations failed (or were cancelled) but ``--errors remove/pass`` still
        gives the result; succeeded when every iteration has its value."""
        with self._lock:
            any_failure = bool(self._failures)
        return job_end_state(cancelled=cancelled, any_failure=any_failure, errors=self.options.errors)

    def settle(self) -> None:
        """The job ended and the job store holds it (the store's writer calls this): its values and
        gathered variables are kept as tuples from now on (its items always are). The garbage
        collector walks every list the kernel holds at each of its passes, element by element, and
        the session keeps the last 50 jobs (``session.KEPT_JOBS``): a full collection in a kernel
        that had run cells of 10,000 values took ~16 ms, ~13 of them in those jobs' lists (issue
        16). A tuple holding only numbers, strings and the like is dropped from the collector's
        watch the first time it looks at it. A late delivery turns them back into lists
        (``_writable``)."""
        with self._lock:
            if self.state not in FINAL_STATES or type(self._values) is tuple:
                return
            self._values = tuple(self._values)
            self._gathered = {name: tuple(column) for name, column in self._gathered.items()}

    def _writable(self) -> tuple[list, dict[str, list]]:
        """The values and the gathered variables' columns, as lists to write into (lock held): those
        of a job written to after ``settle`` (a result delivered late, or iterations read back from the
        store into it) become lists again."""
        if type(self._values) is tuple:
            self._values = list(self._values)
            self._gathered = {name: list(column) for name, column in self._gathered.items()}
        return cast(list, self._values), cast(dict[str, list], self._gathered)

    def finish(self, state: str, *, wake: bool = True) -> None:
        """End the job in ``state``. ``wake=False``: its waiters and listeners are told later, by ``wake``,
        once the engine has done what must come before a cell goes on (the backend's clean-up)."""
        with self._lock:
            if self.state in FINAL_STATES:
                return
            self.state = state
            self._finished = time.monotonic()
            self._settling = not wake
            if wake:
                self._end.notify_all()
        if self.meter is not None:
            self.meter.stop()
        if wake:
            self._notify()

    def wake(self) -> None:
        """Tell the job's waiters and listeners that it ended (after ``finish(state, wake=False)``)."""
        with self._lock:
            self._settling = False
            self._end.notify_all()
        self._notify()

    @contextlib.contextmanager
    def changes(self) -> Iterator[None]:
        """Many changes by this thread, one notification after them (waiters and views see the
        job at the end of the batch); other threads' changes notify as usual meanwhile."""
        self._quiet_thread = threading.get_ident()
        try:
            yield
        finally:
            self._quiet_thread = None
            missed, self._notify_missed = self._notify_missed, False
            if missed:
                self._notify()

    def _notify(self) -> None:
        if self._quiet_thread is not None and self._quiet_thread == threading.get_ident():
            self._notify_missed = True
            return
        if self._watchers:
            with self._changed:
                self._changed.notify_all()
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # a broken view must never break the job
                pass

    # ------------------------------------------------------------------ read by users

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def _over(self) -> bool:
        """Ended for its waiters: final, and woken (see ``wait``)."""
        return self.state in FINAL_STATES and not self._settling

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (or ``timeout`` seconds pass); return whether it ended. A job ended
        with ``finish(state, wake=False)`` has ended for its waiters at ``wake``: a poll that came back in
        between (the magic waits 0.1 s at a time) returned while the local pool still removed the job's
        working folder, which a script clearing azpar_outputs as the cell returned then met."""
        timeout = timeout_seconds(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._end:
            while not self._over:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Short waits keep the main thread responsive to KeyboardInterrupt.
                self._end.wait(0.2 if remaining is None else min(remaining, 0.2))
        return True

    def cancel(self) -> None:
        """Stop the job: queued tasks never start, running ones are stopped; finished
        iterations stay readable with ``partial_results()``."""
        if self.done:
            return
        if self._cancel_hook is not None:
            self._cancel_hook()

    def first_failure(self) -> Failure | None:
        with self._lock:
            real = [f for f in self._failures.values() if f.kind != "cancelled"]
            pool = real or list(self._failures.values())
            return min(pool, key=lambda f: f.index) if pool else None

    @property
    def failures(self) -> dict[int, Failure]:
        """Iteration index -> its failure, in iteration order.

        Tasks end in whatever order the pool finishes them; a user who prints this (or a
        notebook that shows it) should see the same dict every run, as ``partial_results()``.
        """
        with self._lock:
            return dict(sorted(self._failures.items()))

    def elapsed(self) -> float:
        """Seconds from start to end (or to now, while the job runs)."""
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            return end - self._started

    def counts(self) -> tuple[int, int, int]:
        """(succeeded, failed, cancelled) iterations now."""
        with self._lock:
            cancelled = sum(1 for f in self._failures.values() if f.kind == "cancelled")
            return self._done - len(self._failures), len(self._failures) - cancelled, cancelled

    def missing_indices(self) -> list[int]:
        """Iterations without a value: failed, cancelled, or never run (what ``rerun`` runs)."""
        with self._lock:
            status = self._status
            return [i for i in range(len(status)) if status[i] != _ITER_OK]

    def partial_results(self) -> dict[int, Any]:
        """Values of the iterations that finished, keyed by iteration index."""
        with self._lock:
            return {i: self._values[i] for i in range(len(self.items)) if self._status[i] == _ITER_OK}

    def output(self, index: int | None = None) -> str:
        """The captured stdout/stderr text of one iteration, or of all in order: everything
        it printed up to the worker's cap (worker.OUTPUT_LIMIT, 1,000,000 characters per
        iteration); past the cap the text ends with a note saying how much was dropped.
        IndexError for an iteration the job does not have, as ``logs`` (it gave "")."""
        with self._lock:
            indices = [self._iteration(index)] if index is not None else sorted({*self._outputs, *self._base_outputs})
            parts = []
            for i in indices:
                for kind, data in self._outputs.get(i) or self._base_outputs.get(i, []):
                    if kind in ("stdout", "stderr"):
                        parts.append(data)
            return "".join(parts)

    def _iteration(self, index: object) -> int:
        """``index`` as one of this job's iterations, counted from the end when negative, as a list's
        (-1 the last); IndexError for any other (lock held)."""
        n = len(self._status)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise IndexError(
                f"job {self.id} has iterations 0 to {n - 1} (-1 is the last); there is no iteration {index!r}"
            )
        return index % n

    def logs(self, index: int | None = None) -> str:
        """What iteration ``index`` left behind, as text: its state, everything it printed
        (stdout and stderr in the order written, display output named by type), and its
        traceback if it failed. Without ``index``: every iteration that printed or failed,
        in order. The same text whether the job is in memory or read back from the store."""
        with self._lock:
            if index is not None:
                indices = [self._iteration(index)]
            else:
                indices = sorted({*self._outputs, *self._base_outputs, *self._failures})
            blocks = []
            for i in indices:
                events = self._outputs.get(i) or self._base_outputs.get(i) or []
                status = self._status[i]
                failure = self._failures.get(i)
                state = (
                    "succeeded"
                    if status == _ITER_OK
                    else "not run"
                    if status == _ITER_PENDING
                    else "cancelled"
                    if failure is not None and failure.kind == "cancelled"
                    else "failed"
                )
                lines = [f"--- iteration {i} (item {short_repr(self.items[i])}): {state} ---"]
                for kind, data in events:
                    if kind in ("stdout", "stderr"):
                        lines.append(
                            data
                            if kind == "stdout"
                            else "".join(f"[stderr] {line}" for line in data.splitlines(keepends=True))
                        )
                    else:
                        lines.append(f"[display: {', '.join(sorted(data)) if isinstance(data, dict) else kind}]\n")
                if not events:
                    lines.append("(no output)\n")
                if failure is not None:
                    lines.append(failure.traceback or f"{failure.error_type}: {failure.message}\n")
                blocks.append("\n".join(part.rstrip("\n") for part in lines) + "\n")
            if not blocks:
                return f"job {self.id}: no iteration printed anything or failed\n"
            return "".join(blocks)

    @property
    def outputs(self) -> dict[int, list]:
        with self._lock:
            return dict(self._outputs)

    def result(self, timeout: float | None = None, *, errors: str | None = None) -> Any:
        """Wait, then return the combined result under the job's error policy. With
        ``--errors stop`` a failure raises IterationError (finished values stay readable). The
        built-in ``--combine`` modes give a new list (dict, sum) at each call; a callable's result
        is made once and given each time.

        ``errors`` combines under another policy, once the job has ended, whatever its state: "remove"
        keeps the iterations that finished, "pass" puts an exception in the place of each other one (its
        failure, or JobCancelled for one that never ran). What a failed, cancelled or lost job finished is
        then one combined value, as the cell would have bound it under that policy."""
        if errors is not None and errors not in merge.RESULT_POLICIES:
            raise ValueError(f"errors must be one of {', '.join(merge.RESULT_POLICIES)}, not {errors!r}")
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.id} is still running after {timeout} s")
        if errors is not None:
            with self._lock:
                items, values = merge.select(self._values, self.items, self._stand_ins(), errors)
            return merge.combine(values, items, self.options.combine)
        with self._lock:
            if self._merged is not None:
                ok, value = self._merged
            else:
                try:
                    ok, value = True, self._merge()
                except Exception as exc:
                    ok, value = False, exc
                # The built-in modes' results are made again at each call, a copy at most: kept, a
                # list the user has let go of stayed alive with the job, and the garbage collector
                # walked it at each pass (see settle). A callable's result is kept (it is called once),
                # and so is an error (each call raises the same one).
                if not ok or self.options.combine not in merge.COMBINE_MODES:
                    self._merged = (ok, value)
        if not ok:
            raise value
        return value

    def gathered(self, errors: str | None = None) -> dict[str, list]:
        """``--gather`` variables: name -> list of per-iteration values (policy applied: the job's, or
        ``errors`` as ``result`` takes it)."""
        self.wait()
        with self._lock:
            failed = self._stand_ins() if errors else {i: f.as_exception() for i, f in self._failures.items()}
            if (errors or self.options.errors) == "remove":
                return {name: [v for i, v in enumerate(col) if i not in failed] for name, col in self._gathered.items()}
            return {name: list(col) for name, col in self._gathered.items()}

    def _merge(self) -> Any:
        if self.state == LOST:
            done = sum(1 for s in self._status if s == _ITER_OK)
            raise JobLost(
                f"job {self.id} was lost: the process running it ended first (a kernel restart or "
                f"crash). {done} of {len(self.items)} iterations had finished and are kept: "
                f"job.partial_results() (`%azpar collect {self.id} --errors remove` binds them). "
                f"`%azpar rerun {self.id} --failed` (azpar_magic.rerun) runs the others and merges them in order."
            )
        if self.state == CANCELLED:
            done = sum(1 for s in self._status if s == _ITER_OK)
            why = f" ({self.stop_reason})" if self.stop_reason else ""
            raise JobCancelled(
                f"job {self.id} was cancelled{why} after {done} of {len(self.items)} iterations "
                f"finished; their values are in job.partial_results() (`%azpar collect {self.id} --errors remove` "
                "binds them)"
            )
        failed = dict(self._failures)
        first = self.first_failure()
        if first is not None and self.options.errors == "stop":
            raise self._iteration_error(first)
        stand_ins = {i: f.as_exception() for i, f in failed.items()}
        items, values = merge.select(self._values, self.items, stand_ins, self.options.errors)
        return merge.combine(values, items, self.options.combine)

    def _stand_ins(self) -> dict[int, BaseException]:
        """Each iteration without a value, and the exception standing in for it (lock held): its failure's,
        or JobCancelled for one that never ran (a job stopped early, cancelled or lost)."""
        return {
            i: self._failures[i].as_exception()
            if i in self._failures
            else JobCancelled(f"iteration {i} of job {self.id} did not run: the job ended first ({self.state})")
            for i, status in enumerate(self._status)
            if status != _ITER_OK
        }

    def _iteration_error(self, failure: Failure) -> IterationError:
        """The error ``--errors stop`` raises for ``failure`` (lock held): result() and
        as_completed() raise the same one. A function's job (``azpar_magic.map``) names no cell
        line: its cell is the one-line call ``map`` wrote, and "cell line 2" named nothing the user
        wrote (the remote traceback shows where in the function it raised)."""
        failed = sum(1 for f in self._failures.values() if f.kind != "cancelled")
        finished = self._status.count(_ITER_OK)
        return iteration_error(
            failure.exc if failure.kind == "user" else None,
            index=failure.index,
            item_repr=short_repr(self.items[failure.index]),
            error_type=failure.error_type,
            message=failure.message,
            traceback=failure.traceback,
            line=None if self.source.partition("\n")[0].endswith(FUNCTION_LOOP) else failure.line,
            job_id=self.id,
            failed_count=failed,
            infrastructure=failure.kind != "user",
            finished_count=finished,
            # (only once the job has ended: as_completed raises it as the failure arrives, before the stop)
            not_run_count=len(self.items) - finished - failed if self.done else None,
        )

    # ------------------------------------------------------------------ as they arrive

    def as_completed(self, timeout: float | None = None) -> AsCompleted:
        """``(index, value)`` for each iteration as it finishes, in the order they finish
        (every iteration of a chunk when its task ends), until the job is final; a job that
        has ended gives them all at once. Iterate it with ``for`` (blocks this thread) or,
        in a notebook's running event loop, with ``async for`` (never blocks the loop).

        A failed iteration follows the job's ``errors`` policy, as ``result()`` does:
        ``stop`` (the default) raises the IterationError ``result()`` would raise for it,
        when it arrives; ``pass`` yields ``(index, exception)``; ``remove`` skips it.
        Iterations that never ran (stopped early, cancelled) are not yielded; a job that was
        cancelled or lost raises JobCancelled / JobLost after its finished iterations.
        ``timeout``: seconds from this call; TimeoutError when the job is still running then."""
        return AsCompleted(self, timeout_seconds(timeout))

    def __await__(self):
        """``await job``: ``job.result()`` once the job ends, without blocking the event
        loop meanwhile (the kernel keeps answering). Cancelling the await stops waiting
        only; ``job.cancel()`` stops the job."""
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        wake = _Wakeup(self)
        try:
            while not self._over:
                wake.event.clear()  # cleared before the check: a notification after it sets it again
                if self._over:
                    break
                await wake.event.wait()
        finally:
            wake.close()
        return self.result()

    # ------------------------------------------------------------------ views

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            state = self.state  # read with the counts: a final state never comes with stale counts
            counts = dict.fromkeys(TaskStatus, 0)
            for task in self._tasks.values():
                counts[task.state] += 1
            end = self._finished if self._finished is not None else time.monotonic()
            elapsed = end - self._started
            total = len(self.items)
            done = self._done
            cancelled = sum(1 for f in self._failures.values() if f.kind == "cancelled")
            failed = len(self._failures) - cancelled
            worked = done - cancelled - self._adopted
            throughput = worked / elapsed if elapsed > 0 and worked else None
            eta = _eta(total - done, worked, self._started, self._progressed, end) if throughput else None
            if self.done:
                eta = None
            firsts = sorted((f for f in self._failures.values() if f.kind != "cancelled"), key=lambda f: f.index)[:5]
            views = tuple(
                FailureView(
                    f.index,
                    short_repr(self.items[f.index]),
                    f.summary,
                    f.traceback,
                    self._output_text(f.index, _FAILURE_OUTPUT_LIMIT),
                )
                for f in firsts
            )
        try:
            nodes = tuple(self._nodes())
        except Exception:
            nodes = ()
        if self.meter is not None and state not in FINAL_STATES:
            self.meter.observe(nodes)
        notes: dict[tuple[str | None, str | None], str] = {(n.id, n.task): n.note for n in nodes if n.note}
        stalled = (
            tuple(
                f"task {t.task_id}: {notes[(t.node, t.task_id)]}"
                for t in list(self._tasks.values())
                if t.state == TASK_RUNNING and (t.node, t.task_id) in notes
            )
            if notes and state == RUNNING
            else ()
        )
        return JobSnapshot(
            job_id=self.id,
            backend=self.backend_name,
            pool=self.pool,
            vm_size=self.vm_size,
            state=state,
            items_total=total,
            items_done=done,
            items_failed=failed,
            items_cancelled=cancelled,
            tasks_total=len(self._tasks),
            tasks_queued=counts[QUEUED],
            tasks_running=counts[TASK_RUNNING],
            tasks_succeeded=counts[TASK_SUCCEEDED],
            tasks_failed=counts[TASK_FAILED],
            nodes=nodes,
            elapsed=elapsed,
            eta=eta,
            throughput=throughput,
            failures=views,
            source_first_line=cell_title(self.source),
            name=self.options.name or "",
            errors=self.options.errors,
            stalled=stalled,
            unanswered=self._unanswered(state),
            tasks_cancelled=counts[TASK_CANCELLED],
            from_cache=self.from_cache,
            size_label=self.size_label,
            cost=self.cost_now(),
            stop_reason=self.stop_reason,
        )

    def cost_now(self) -> CostEstimate | None:
        """The estimate without asking for the nodes again (the snapshot just did)."""
        if self.meter is None:
            kept = (self.manifest or {}).get("cost")
            return CostEstimate.from_record(kept) if isinstance(kept, dict) else None
        return self.meter.estimate()

    def cost(self) -> CostEstimate | None:
        """Node time by priority (dedicated, spot), the tasks' core time and the estimated cost, so far or
        at the end; the amount is None ("price unknown") without a price. None for a job nobody metered
        (a stored job of a version before costs)."""
        if self.meter is not None and not self.done:
            try:
                self.meter.observe(self._nodes())
            except Exception:  # the estimate stands on the last nodes seen
                pass
        return self.cost_now()

    def _unanswered(self, state: str) -> str:
        """What the backend says about a service that stopped answering, while the job runs."""
        if state != RUNNING:
            return ""
        try:
            return self.health() or ""
        except Exception:  # a view must render whatever the backend does
            return ""

    def _output_text(self, index: int, limit: int) -> str:
        """The stdout/stderr text of one iteration, cut at ``limit`` characters (lock held)."""
        text = "".join(data for kind, data in self._outputs.get(index, ()) if kind in ("stdout", "stderr"))
        return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"

    def __repr__(self) -> str:
        text = _VIEWS.get("text")
        return f"<azpar Job {text(self.snapshot()) if text else f'{self.id} {self.state}'}>"

    def _repr_html_(self) -> str | None:
        html = _VIEWS.get("html")
        return html(self.snapshot()) if html else None


class _Wakeup:
    """An asyncio.Event of the running loop, set (thread-safely) whenever the job changes:
    how coroutines wait for a job fed from backend threads without a thread of their own."""

    def __init__(self, job: Job):
        import asyncio

        self.job = job
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        job.listeners.append(self._changed)

    def _changed(self, job: Job) -> None:
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # the loop was closed: nobody waits any more
            self.close()

    def close(self) -> None:
        try:
            self.job.listeners.remove(self._changed)
        except ValueError:
            pass


class AsCompleted:
    """What ``job.as_completed()`` returns: an iterator and an async iterator over
    ``(index, value)`` in the order iterations finish (see Job.as_completed). Arrivals are
    taken from the job a task result at a time, under one lock, and handed out from a local
    queue without building a pair per iteration in advance (a clean chunk is a zip of its
    range and its values): a million finished iterations are handed out in about 0.5 s."""

    POLL = 0.2  # seconds a blocked ``next`` waits between looks when no change wakes it (Ctrl-C gets through)

    def __init__(self, job: Job, timeout: float | None = None):
        self._job = job
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._entry = 0  # next entry of job._arrivals to take
        self._ready: collections.deque = collections.deque()  # iterators of (index, value) taken, not handed out
        self._error: BaseException | None = None  # raised once the arrivals before it are handed out
        self._final = False  # the job was final when everything it had was taken
        self._ended = False
        self._wakeup: _Wakeup | None = None

    def _take(self) -> bool:
        """Move the job's new arrivals to the local queue (job lock held); whether there is
        anything to hand out or the stream is over."""
        job = self._job
        arrivals, values, status, failures = job._arrivals, job._values, job._status, job._failures
        policy = job.options.errors
        while self._entry < len(arrivals) and self._error is None:
            entry = arrivals[self._entry]
            self._entry += 1
            if isinstance(entry, range):  # a clean chunk (record_values' fast path): every value is there
                self._ready.append(zip(entry, values[entry.start : entry.stop]))
                continue
            pairs = []
            for index in entry:
                if status[index] == _ITER_OK:
                    pairs.append((index, values[index]))
                    continue
                failure = failures[index]
                if policy == "pass":
                    pairs.append((index, failure.as_exception()))
                elif policy == "stop" and failure.kind != "cancelled":
                    self._error = job._iteration_error(failure)  # what result() raises for it
                    break
                # remove: skipped, as result() drops it; stop: an iteration stopped early never ran
            if pairs:
                self._ready.append(iter(pairs))
        if self._error is None and self._entry == len(arrivals) and job._over:
            self._final = True
        return bool(self._ready) or self._error is not None or self._final

    def _pop(self) -> tuple[int, Any] | None:
        """The next pair taken, or None when every taken one was handed out."""
        ready = self._ready
        while ready:
            pair = next(ready[0], None)
            if pair is not None:
                return pair
            ready.popleft()
        return None

    def _handout(self) -> tuple[int, Any] | None:
        """The next pair, or None when the stream ends here (raising what it ends with)."""
        pair = self._pop()
        if pair is not None:
            return pair
        self._ended = True
        if self._error is not None:
            raise self._error
        if self._job.state in (CANCELLED, LOST):  # a partial stream never looks whole:
            self._job.result()  # raises what result() raises (JobCancelled, JobLost)
        return None

    def _timed_out(self) -> TimeoutError:
        self._ended = True
        done = self._job.snapshot().items_done
        return TimeoutError(
            f"job {self._job.id} is still running after {self._timeout} s ({done} of "
            f"{len(self._job.items)} iterations finished); as_completed(timeout=None) waits "
            "for all of them"
        )

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def __iter__(self) -> AsCompleted:
        return self

    def __next__(self) -> tuple[int, Any]:
        pair = self._pop()
        if pair is not None:
            return pair
        if self._ended:
            raise StopIteration
        job = self._job
        with job._changed:
            job._watchers += 1
            try:
                while not self._take():
                    remaining = self._remaining()
                    if remaining is not None and remaining <= 0:
                        raise self._timed_out()
                    # Woken by the job's notify; the short bound keeps Ctrl-C responsive, as wait() does.
                    job._changed.wait(self.POLL if remaining is None else min(remaining, self.POLL))
            finally:
                job._watchers -= 1
        pair = self._handout()
        if pair is None:
            raise StopIteration
        return pair

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        import asyncio

        pair = self._pop()
        if pair is not None:
            return pair
        if self._ended:
            raise StopAsyncIteration
        if self._wakeup is None:
            self._wakeup = _Wakeup(self._job)
        try:
            while True:
                self._wakeup.event.clear()  # before the check: a notification after it sets it again
                with self._job._lock:
                    if self._take():
                        break
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                try:
                    await asyncio.wait_for(self._wakeup.event.wait(), remaining)
                except asyncio.TimeoutError:
                    raise self._timed_out() from None
            pair = self._handout()
        except BaseException:
            self._close()
            raise
        if pair is None:
            self._close()
            raise StopAsyncIteration
        return pair

    def _close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.close()
            self._wakeup = None

    def __del__(self) -> None:  # an `async for` left by `break` never says so: stop listening here
        self._close()

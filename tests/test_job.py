"""The Job on its own, without a backend or an engine: these tests feed a real Job the events a run feeds it
(tasks started, requeued, finished, failed) and read its states, snapshot, result and as_completed stream.

The state rules are the tables of ``azpar_magic.jobs.states``; a test here fails when an entry of them changes.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from azpar_magic.errors import CombineError, IterationError, JobCancelled, JobLost, RemoteException
from azpar_magic.jobs import (
    CANCELLED,
    DONE,
    FAILED,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TASK_CANCELLED,
    TASK_FAILED,
    TASK_RUNNING,
    TASK_SUCCEEDED,
    Failure,
    Job,
    JobOptions,
    JobState,
    TaskStatus,
    TaskStep,
)
from azpar_magic.jobs.states import JOB_ENDINGS, stored_state


def make_job(items, **options) -> Job:
    return Job("azpar-test-job", list(items), JobOptions(**options), backend_name="test")


def user_failure(index: int, message: str = "boom") -> Failure:
    return Failure(index, "ValueError", message, traceback=f"ValueError: {message}\n", line=2)


def cancelled(index: int) -> Failure:
    return Failure(index, "azpar_magic.JobCancelled", "stopped", kind="cancelled")


def finish(job: Job, task_id: str, indices, values, failures=None) -> None:
    job.record_values(task_id, indices, values, failures or {}, {}, None)


def end(job: Job, cancelled_by_user: bool = False) -> None:
    job.finish(job.final_state(cancelled=cancelled_by_user))


# ----------------------------------------------------------------------------- states as strings


def test_states_are_their_strings_in_json_text_and_comparisons():
    assert json.dumps({"state": SUCCEEDED, "task": TASK_CANCELLED}) == '{"state": "succeeded", "task": "cancelled"}'
    assert f"{DONE}" == "done" and str(LOST) == "lost" and f"{FAILED}" == "failed"
    assert SUCCEEDED == "succeeded" and "running" in {RUNNING} and JobState("pending") is PENDING
    assert [s.value for s in TaskStatus] == ["queued", "running", "succeeded", "failed", "cancelled"]


# ----------------------------------------------------------------------------- task states from events


def test_a_task_goes_queued_running_queued_running_succeeded():
    job = make_job(range(2))
    job.add_task("1", range(0, 2))
    assert job.task("1").state is QUEUED
    job.record_task_started("1", "worker-1")
    assert job.task("1").state is TASK_RUNNING and job.task("1").node == "worker-1"
    job.record_task_requeued("1", "worker lost")
    task = job.task("1")
    assert (task.state, task.node, task.attempts, task.error) == (QUEUED, None, 2, "worker lost")
    job.record_task_started("1", "worker-2")
    finish(job, "1", range(0, 2), [10, 11])
    assert job.task("1").state is TASK_SUCCEEDED and job.tasks_final == 1


def test_a_late_start_does_not_bring_a_finished_task_back():
    job = make_job(range(1))
    job.add_task("1", [0])
    finish(job, "1", [0], [1])
    job.record_task_started("1", "worker-9")  # a start event delivered after the result
    assert job.task("1").state is TASK_SUCCEEDED and job.task("1").node is None


def test_a_task_with_a_failed_iteration_is_failed_and_one_that_produced_nothing_is_failed_or_cancelled():
    job = make_job(range(6), errors="pass")
    for task_id, indices in (("1", range(0, 2)), ("2", range(2, 4)), ("3", range(4, 6))):
        job.add_task(task_id, indices)
    finish(job, "1", range(0, 2), [0, None], {1: user_failure(1)})
    job.record_task_failed("2", lambda i: Failure(i, "azpar_magic.InfrastructureError", "lost", kind="infrastructure"))
    job.record_task_failed("3", cancelled)
    assert [job.task(t).state for t in "123"] == [TASK_FAILED, TASK_FAILED, TASK_CANCELLED]
    assert job.tasks_final == 3


def test_a_task_counts_once_among_final_tasks_whatever_arrives_twice():
    job = make_job(range(2))
    job.add_task("1", range(0, 2))
    finish(job, "1", range(0, 2), [1, 2])
    finish(job, "1", range(0, 2), [1, 2])  # a duplicate delivery
    assert job.tasks_final == 1 and job.counts() == (2, 0, 0)


# ----------------------------------------------------------------------------- how a job ends


@pytest.mark.parametrize("errors", ["stop", "remove", "pass"])
@pytest.mark.parametrize("failing", [False, True])
@pytest.mark.parametrize("by_user", [False, True])
def test_the_job_ends_as_the_ending_table_says(errors, failing, by_user):
    job = make_job(range(2), errors=errors)
    job.add_task("1", range(0, 2))
    job.mark_running()
    assert job.state is RUNNING
    finish(job, "1", range(0, 2), [1, None] if failing else [1, 2], {1: user_failure(1)} if failing else None)
    end(job, by_user)
    expected = CANCELLED if by_user else DONE if failing and errors != "stop" else FAILED if failing else SUCCEEDED
    assert job.state == expected == JOB_ENDINGS[(by_user, failing, errors != "stop")]
    assert job.done


def test_only_a_pending_job_starts_running():
    job = make_job([1])
    assert job.state is PENDING
    job.mark_running()
    assert job.state is RUNNING
    ended = make_job([1])
    ended.finish(CANCELLED)
    ended.mark_running()  # a stored job that ended is never brought back to running
    assert ended.state is CANCELLED


def test_an_ended_job_keeps_its_state():
    job = make_job([1])
    job.finish(SUCCEEDED)
    job.finish(FAILED)
    assert job.state is SUCCEEDED


def test_a_manifest_from_before_the_done_state_reads_as_done_under_remove_and_pass():
    assert stored_state("failed", "remove") == DONE and stored_state("failed", "pass") == DONE
    assert stored_state("failed", "stop") == FAILED and stored_state("running", "pass") == "running"


# ----------------------------------------------------------------------------- snapshot


def test_the_snapshot_counts_tasks_and_iterations_and_shows_the_first_failures():
    job = make_job(["a", "b", "c", "d", "e"], errors="pass", name="sweep")
    for task_id, indices in (("1", [0]), ("2", [1]), ("3", [2]), ("4", [3, 4])):
        job.add_task(task_id, indices)
    job.mark_running()
    job.record_task_started("2", "w1")
    job.record_task_started("3", "w2")
    finish(job, "3", [2], [None], {2: user_failure(2, "bad c")})
    job.record_task_failed("4", cancelled)
    snap = job.snapshot()
    assert (snap.state, snap.items_total, snap.items_done, snap.items_failed, snap.items_cancelled) == (
        RUNNING, 5, 3, 1, 2)
    assert (snap.tasks_total, snap.tasks_queued, snap.tasks_running, snap.tasks_succeeded, snap.tasks_failed,
            snap.tasks_cancelled) == (4, 1, 1, 0, 1, 1)
    assert snap.items_succeeded == 0 and snap.name == "sweep" and snap.errors == "pass" and not snap.final
    assert [(f.index, f.item, f.summary) for f in snap.failures] == [(2, "'c'", "ValueError: bad c (line 2)")]
    assert not hasattr(snap, "nodes_busy")


# ----------------------------------------------------------------------------- result


def test_result_combines_the_values_in_item_order_whatever_order_tasks_ended_in():
    job = make_job(range(4), combine="sum")
    job.add_task("1", range(0, 2))
    job.add_task("2", range(2, 4))
    finish(job, "2", range(2, 4), [20, 30])
    finish(job, "1", range(0, 2), [0, 10])
    end(job)
    assert job.result() == 60 and job.partial_results() == {0: 0, 1: 10, 2: 20, 3: 30}


def test_failures_are_in_iteration_order_whatever_order_their_tasks_ended_in():
    job = make_job(range(8), errors="pass")
    job.add_task("1", range(0, 4))
    job.add_task("2", range(4, 8))
    finish(job, "2", range(4, 8), [4, 5, 6], {7: user_failure(7)})
    finish(job, "1", range(0, 4), [0, 1, 2], {3: user_failure(3)})
    end(job)
    assert list(job.failures) == [3, 7]


def test_result_under_each_errors_policy():
    def run(errors):
        job = make_job(["x", "y", "z"], errors=errors)
        job.add_task("1", range(0, 3))
        finish(job, "1", range(0, 3), [1, None, 3], {1: user_failure(1)})
        end(job)
        return job

    with pytest.raises(IterationError) as raised:
        run("stop").result()
    assert (raised.value.index, raised.value.item_repr, raised.value.line) == (1, "'y'", 2)
    assert run("remove").result() == [1, 3]
    passed = run("pass").result()
    assert passed[0::2] == [1, 3] and isinstance(passed[1], RemoteException)


def test_the_iteration_error_is_of_the_exceptions_class_and_pickles_as_a_plain_one():
    """The error for an iteration's rebuilt exception is also of its class (with its args), one for
    an exception of ours or none is a plain IterationError, and each pickles and reads as one (the
    class made for a failure cannot be looked up by name)."""
    import pickle

    from azpar_magic.errors import WorkerTraceback, iteration_error

    fields = dict(index=1, item_repr="'b'", error_type="KeyError", message="'b'", traceback="Traceback:\nKeyError\n",
                  line=2, job_id="azpar-j")
    error = iteration_error(KeyError("b"), **fields)
    assert isinstance(error, KeyError) and isinstance(error, IterationError) and error.args == ("b",)
    assert str(error).startswith("iteration 1 (item 'b') raised KeyError: 'b' (cell line 2).")
    assert repr(error) == f"IterationError({str(error)!r})" and isinstance(error.__cause__, WorkerTraceback)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is IterationError and str(again) == str(error) and again.remote_traceback == "Traceback:\nKeyError\n"
    # a TimeoutError is result(timeout)'s "still running"; IPython shows a SyntaxError from its own fields;
    # IPython shows nothing for a cell ending in a debugger's BdbQuit (a body's breakpoint() on a worker)
    import bdb

    for plain in (None, JobCancelled("ours"), StopIteration(), TimeoutError("slow"), SyntaxError("bad"), bdb.BdbQuit()):
        assert type(iteration_error(plain, **fields)) is IterationError
    # an exception with nothing to say ("raised KeyboardInterrupt:  (cell line 2)" before)
    bare = iteration_error(None, **{**fields, "error_type": "KeyboardInterrupt", "message": ""})
    assert str(bare).startswith("iteration 1 (item 'b') raised KeyboardInterrupt (cell line 2)."), str(bare)
    missing = iteration_error(AttributeError("no a", name="a", obj=3), **fields)  # fields outside __dict__
    assert isinstance(missing, AttributeError) and (missing.name, missing.obj) == ("a", 3)
    try:
        b"\xff".decode()
    except UnicodeDecodeError as exc:
        undecoded = iteration_error(exc, **fields)
    assert (undecoded.encoding, undecoded.start, undecoded.end, undecoded.object) == ("utf-8", 0, 1, b"\xff")
    job = make_job(["x", "y"])
    job.add_task("1", range(0, 2))
    finish(job, "1", range(0, 2), [1, None], {1: Failure(1, "ValueError", "v", "tb", 2, exc=ValueError("v"))})
    end(job)
    with pytest.raises(ValueError) as raised:
        job.result()
    assert raised.value.index == 1 and raised.value.exception.args == ("v",)


def test_result_of_a_cancelled_or_lost_job_raises_and_keeps_finished_values():
    job = make_job(range(2))
    job.add_task("1", [0])
    job.add_task("2", [1])
    finish(job, "1", [0], ["kept"])
    job.record_task_failed("2", cancelled)
    end(job, cancelled_by_user=True)
    with pytest.raises(JobCancelled, match="after 1 of 2 iterations"):
        job.result()
    lost = make_job(range(2))
    lost.finish(LOST)
    with pytest.raises(JobLost):
        lost.result()
    assert job.partial_results() == {0: "kept"} and job.missing_indices() == [1]


def test_result_under_another_errors_policy_combines_what_finished_whatever_the_state():
    """A failed (stop), cancelled or lost job raised at every result(): what finished was reachable only as
    partial_results()'s dict, never combined as the cell would have bound it. ``errors`` combines it."""
    failed = make_job(["a", "b", "c", "d"], combine="sum", gather=("g",))
    failed.add_task("1", [0, 1])
    failed.add_task("2", [2, 3])
    finish(failed, "1", [0, 1], [1, 10], {1: user_failure(1)})
    failed.record_task_failed("2", cancelled)
    end(failed)
    with pytest.raises(IterationError):
        failed.result()
    assert failed.result(errors="remove") == 1
    with pytest.raises(CombineError):  # a sum over the stand-in exceptions fails as the cell's would
        failed.result(errors="pass")
    stopped = make_job(["a", "b", "c"])
    stopped.add_task("1", [0])
    stopped.add_task("2", [1, 2])
    finish(stopped, "1", [0], ["kept"])
    stopped.record_task_failed("2", cancelled)
    end(stopped, cancelled_by_user=True)
    assert stopped.result(errors="remove") == ["kept"]
    passed = stopped.result(errors="pass")
    assert passed[0] == "kept" and all(isinstance(v, JobCancelled) for v in passed[1:]), passed
    with pytest.raises(JobCancelled):  # the job's own policy is unchanged
        stopped.result()
    lost = make_job(range(3))
    lost.add_task("1", [0])
    lost.add_task("2", [1, 2])
    finish(lost, "1", [0], [5])
    lost.finish(LOST)
    assert lost.result(errors="remove") == [5]
    never = lost.result(errors="pass")[2]
    assert isinstance(never, JobCancelled) and "did not run" in str(never), never
    with pytest.raises(ValueError, match="errors must be one of remove, pass, not 'stop'"):
        lost.result(errors="stop")


@pytest.mark.parametrize("index", [3, -4, "0", True])
def test_output_and_logs_refuse_an_iteration_the_job_does_not_have(index):
    """output(99) gave "" (and output("0") too) where logs(99) said there is no such iteration."""
    job = make_job(range(3))
    job.add_task("1", range(0, 3))
    job.record_values("1", range(0, 3), ["a", "b", "c"], {}, {0: [("stdout", "hello\n")]}, None)
    assert job.output(0) == "hello\n" and job.output(1) == ""  # the guard: real iterations read
    for read in (job.output, job.logs):
        with pytest.raises(IndexError, match=rf"has iterations 0 to 2 \(-1 is the last\); there is no iteration {index!r}"):
            read(index)


def test_output_and_logs_count_a_negative_iteration_from_the_end_as_a_list_does():
    """``logs(JOB, -1)`` was refused ("no iteration -1") where a Python user means the last one."""
    job = make_job(range(3))
    job.add_task("1", range(0, 3))
    job.record_values("1", range(0, 3), ["a", "b", "c"], {}, {2: [("stdout", "last\n")], 0: [("stdout", "first\n")]}, None)
    assert job.output(-1) == "last\n" and job.output(-3) == "first\n"
    assert job.logs(-1) == job.logs(2) and "--- iteration 2 (item 2): succeeded ---" in job.logs(-1)


# ----------------------------------------------------------------------------- as_completed


def test_as_completed_gives_iterations_in_the_order_their_tasks_ended():
    job = make_job(range(5), errors="remove")
    for task_id, indices in (("1", range(0, 2)), ("2", range(2, 4)), ("3", [4])):
        job.add_task(task_id, indices)
    finish(job, "3", [4], ["e"])
    finish(job, "1", range(0, 2), ["a", None], {1: user_failure(1)})  # removed: never yielded
    finish(job, "2", range(2, 4), ["c", "d"])
    end(job)
    assert list(job.as_completed()) == [(4, "e"), (0, "a"), (2, "c"), (3, "d")]


@pytest.mark.parametrize("batched", [False, True], ids=["lone", "in_changes"])
def test_a_blocked_as_completed_is_woken_by_the_change_itself(monkeypatch, batched):
    """A change notifies as_completed's waiters only while one waits (job._watchers): the waiter
    must still hear of each change at once, not at its next poll. With the poll at 60 s, only the
    notification can wake it within the join's 20 s; and with no waiter the count is back to 0."""
    from azpar_magic.jobs.job import AsCompleted

    monkeypatch.setattr(AsCompleted, "POLL", 60.0)
    job = make_job(range(2))
    job.add_tasks([("1", range(0, 1)), ("2", range(1, 2))])
    stream = job.as_completed()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 20
    while job._watchers != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job._watchers == 1, "the waiter never counted itself"
    if batched:
        with job.changes():  # the engine's batch: one notification at its end
            finish(job, "1", range(0, 1), ["a"])
    else:
        finish(job, "1", range(0, 1), ["a"])
    waiter.join(20)
    assert got == [(0, "a")], "the change did not wake the waiter"
    assert job._watchers == 0


def test_as_completed_under_stop_raises_the_error_result_raises_when_the_failure_arrives():
    job = make_job(range(3))
    for task_id in "012":
        job.add_task(task_id, [int(task_id)])
    finish(job, "2", [2], ["late"])
    finish(job, "0", [0], [None], {0: user_failure(0)})
    finish(job, "1", [1], ["b"])
    end(job)
    stream = job.as_completed()
    assert next(stream) == (2, "late")
    with pytest.raises(IterationError) as raised:
        next(stream)
    assert raised.value.index == 0


def test_the_error_says_how_many_iterations_the_stop_left_unrun():
    """Under ``--errors stop`` the job stops at a failure and cancels what had not run; the error said how many
    others failed, and nothing of those that never ran ("did the rest run?"). Not said while the job still runs
    (as_completed raises as the failure arrives, before the stop), nor when every iteration ran."""
    import pickle

    job = make_job(range(6))
    for task_id in "012345":
        job.add_task(task_id, [int(task_id)])
    finish(job, "0", [0], [None], {0: user_failure(0)})
    stream = job.as_completed()
    with pytest.raises(IterationError) as early:
        next(stream)
    assert "did not run" not in str(early.value), early.value
    finish(job, "1", [1], ["b"])
    finish(job, "2", [2], [None], {2: user_failure(2)})
    job.record_values("3", [3, 4, 5], [None] * 3, {i: cancelled(i) for i in (3, 4, 5)}, {}, None)
    end(job)
    with pytest.raises(IterationError) as raised:
        job.result()
    said = "; 1 other iteration(s) failed too; 3 did not run: the job stopped at the first failure. The finished"
    assert said in str(raised.value), raised.value
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)
    whole = make_job(range(2))
    whole.add_task("0", [0, 1])
    finish(whole, "0", [0, 1], [None, "b"], {0: user_failure(0)})
    end(whole)
    with pytest.raises(IterationError) as all_ran:
        whole.result()
    assert "did not run" not in str(all_ran.value), all_ran.value


# ----------------------------------------------------------------------------- what the job store replays


def test_a_stored_job_is_rebuilt_through_public_methods():
    job = make_job(range(3), errors="pass")
    job.restore([0, 1], [5, None], {1: user_failure(1)}, {}, None)
    job.restore_outputs({0: [("stdout", "hello\n")]})
    job.restore_outputs({2: [("stdout", "from the earlier run\n")]}, base=True)
    job.restore_task("1", [0, 1], TaskStep.FINISHED_WITH_FAILURES)
    job.restore_task("1", [0, 1], TaskStep.FINISHED)  # a task the job has is kept as is
    woken = []
    job.listeners.append(woken.append)
    job.notify()
    assert woken == [job]
    assert job.task("1").state is TASK_FAILED and job.tasks_final == 1
    assert job.outputs == {0: [("stdout", "hello\n")]} and job.output(2) == "from the earlier run\n"
    assert job.counts() == (1, 1, 0)


def test_states_show_as_the_plain_strings_they_were():
    from azpar_magic.jobs.states import JobState, TaskStatus

    assert repr(JobState.CANCELLED) == "'cancelled'" and repr([TaskStatus.QUEUED]) == "['queued']"
    assert f"{JobState.DONE}" == str(JobState.DONE) == "done"


def test_changes_made_together_wake_the_views_once_after_the_last_and_other_threads_as_usual():
    # The engine takes the results one read of a worker's pipe brings as a batch: the views see
    # the job once, at the end of it, not once per task; a change from another thread meanwhile
    # (a cancel, say) is not held back.
    import threading

    job = make_job(range(4))
    job.add_tasks((str(i), range(i, i + 1)) for i in range(4))
    woken: list[tuple[int, int]] = []
    job.listeners.append(lambda j: woken.append(j.counts()[0]))
    with job.changes():
        for i in range(3):
            finish(job, str(i), range(i, i + 1), [i * 10])
        assert woken == []
        other = threading.Thread(target=job.record_task_started, args=("3", "node-2"))
        other.start()
        other.join()
        assert woken == [3]  # the other thread's change woke the views, and they saw all three
    assert woken == [3, 3]  # the batch's own notification, once
    finish(job, "3", range(3, 4), [30])
    assert woken == [3, 3, 4]


def test_the_eta_counts_down_between_two_ends_instead_of_growing_with_the_clock():
    """Two of six iterations left, after four that ended at one a second: the ETA reads 1.5 s half a
    second after the last end and 0.5 s a second later. Reckoned from now, the rate fell between ends
    and the ETA grew (2.25 s, then 2.75 s) while the last iterations neared their end. Once they take
    longer than the count allowed, the rate so far stands (3.5 s three seconds after the last end)."""
    job = make_job(range(6))
    job.add_tasks([(str(i), [i]) for i in range(6)])
    job.mark_running()
    for i in range(4):
        finish(job, str(i), [i], [i])
    for since_last, expected in ((0.5, 1.5), (1.5, 0.5), (3.0, 3.5)):
        now = time.monotonic()
        job._progressed, job._started = now - since_last, now - since_last - 4.0
        assert job.snapshot().eta == pytest.approx(expected, abs=0.05), since_last
    for i in range(4, 6):
        finish(job, str(i), [i], [i])
    end(job)
    assert job.snapshot().eta is None


def test_waiters_return_when_the_engine_wakes_them_not_when_the_state_turns_final():
    """The engine ends a job in two steps (its state final, the backend's clean-up, then the wake), so a cell
    returns only once the local pool has removed the job's working folder. A waiter's poll (the magic waits
    0.1 s at a time) that came back in between saw the final state and returned early: a CI run's
    test_the_working_folders_are_gone_when_the_cell_returns listed the folder still there."""
    job = make_job(range(2))
    job.add_task("1", range(0, 2))
    finish(job, "1", range(0, 2), [10, 11])
    job.finish(job.final_state(), wake=False)
    assert job.done  # (what a poll of job.done sees: the state)
    began = time.monotonic()
    assert job.wait(0.3) is False and time.monotonic() - began >= 0.25
    stream = job.as_completed(timeout=0.3)  # a script's loop ends at the wake too
    assert [next(stream), next(stream)] == [(0, 10), (1, 11)]
    with pytest.raises(TimeoutError):
        next(stream)
    woke = threading.Timer(0.2, job.wake)
    woke.start()
    began = time.monotonic()
    assert job.wait(5) is True and 0.15 <= time.monotonic() - began < 4
    assert job.wait(0) is True
    assert list(job.as_completed()) == [(0, 10), (1, 11)] and job.result() == [10, 11]

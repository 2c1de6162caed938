"""The test service's lagging lists, throttling and lost responses (batch_emulator/faults.py),
seen through the real azure-batch SDK."""
from __future__ import annotations

import time

import pytest
from azure.batch import models
from azure.core.exceptions import ResourceExistsError, ServiceResponseError

from .helpers import new_job, pool_options, task, wait_tasks_done, wait_until


def _job_with_tasks(batch_client, ids, command="/bin/true"):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=4))
    new_job(batch_client)
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[task(i, command) for i in ids]))


def _completed(batch_client, **kwargs):
    return sorted(t.id for t in batch_client.list_tasks("job1", filter="state eq 'completed'", **kwargs))


def test_a_hidden_completion_is_missing_only_from_filtered_lists(batch_client, batch):
    batch.faults.hide_from_filtered_lists("t2")
    _job_with_tasks(batch_client, ["t1", "t2", "t3"])
    counts = wait_tasks_done(batch_client, "job1", 3)  # counts see it
    assert counts.task_counts.succeeded == 3
    assert _completed(batch_client) == ["t1", "t3"]
    hidden = [t for t in batch_client.list_tasks("job1", filter="id eq 't2'")]
    assert hidden and hidden[0].state == "running" and hidden[0].execution_info.exit_code is None
    every = {t.id: t.state for t in batch_client.list_tasks("job1", select=["id", "state"])}
    assert every == {"t1": "completed", "t2": "completed", "t3": "completed"}  # unfiltered: as it is
    assert batch_client.get_task("job1", "t2").state == "completed"


def test_a_completion_hidden_for_a_while_shows_later(batch_client, batch):
    batch.faults.hide_from_filtered_lists("t1", seconds=1.0, job_id="job1")
    _job_with_tasks(batch_client, ["t1"])
    wait_tasks_done(batch_client, "job1", 1)
    ended = batch_client.get_task("job1", "t1").state_transition_time
    wait_until(lambda: _completed(batch_client) == ["t1"], 10, "the hidden completion to show")
    assert time.time() - ended.timestamp() >= 1.0


def test_counts_and_filtered_lists_lag_by_the_set_amount(batch_client, batch):
    batch.faults.set_lag(counts=1.0, lists=1.0)
    _job_with_tasks(batch_client, ["t1"])
    wait_until(lambda: batch_client.get_task("job1", "t1").state == "completed", 10, "t1 to complete")
    ended = batch_client.get_task("job1", "t1").state_transition_time
    early = batch_client.get_job_task_counts("job1").task_counts
    listed_early = _completed(batch_client)
    age = time.time() - ended.timestamp()
    if age < 0.8:  # asked well inside the lag: neither shows it yet
        assert early.completed == 0 and listed_early == []
    wait_until(lambda: batch_client.get_job_task_counts("job1").task_counts.completed == 1, 10, "counts")
    assert time.time() - ended.timestamp() >= 1.0
    assert _completed(batch_client) == ["t1"]


def test_exact_when_the_lag_is_off(batch_client, batch):
    batch.faults.set_lag(counts=0, lists=0)
    _job_with_tasks(batch_client, ["t1", "t2"])
    wait_until(lambda: all(t.state == "completed" for t in batch_client.list_tasks("job1")), 10, "tasks")
    assert batch_client.get_job_task_counts("job1").task_counts.completed == 2
    assert _completed(batch_client) == ["t1", "t2"]


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_calls_carry_retry_after_and_the_sdk_waits(batch_client, batch, status):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    new_job(batch_client)
    batch.faults.throttle(r"/jobs/job1$", count=2, status=status, retry_after=0.3, method="GET")
    started = time.monotonic()
    assert batch_client.get_job("job1").id == "job1"  # the SDK retried, honouring Retry-After
    assert time.monotonic() - started >= 0.6
    answers = [r for r in batch.requests if r.method == "GET" and r.path == "/jobs/job1"]
    assert [r.status for r in answers] == [status, status, 200]
    assert answers[0].error_code == {429: "TooManyRequests", 503: "ServerBusy"}[status]


def test_throttle_skip_lets_the_first_requests_through(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    new_job(batch_client)
    batch.faults.throttle(r"/jobs/job1$", count=1, retry_after=0.1, method="GET", skip=1)
    batch_client.get_job("job1")
    batch_client.get_job("job1")
    assert [r.status for r in batch.requests if r.path == "/jobs/job1"] == [200, 429, 200]


def test_lost_create_job_response_gives_job_exists_on_the_sdk_retry(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    batch.faults.lose_responses("Jobs_CreateJob")
    with pytest.raises(ResourceExistsError) as e:
        new_job(batch_client)
    assert e.value.error.code == "JobExists"
    assert [(r.status, r.error_code) for r in batch.requests_for("Jobs_CreateJob")] == \
        [(503, "ServerBusy"), (409, "JobExists")]
    assert batch_client.get_job("job1").id == "job1"  # the first attempt made it


def test_lost_collection_response_partial_then_task_exists(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    new_job(batch_client)
    batch.faults.lose_responses("Tasks_CreateTaskCollection", partial=2)
    res = batch_client.create_task_collection("job1", models.BatchTaskGroup(
        task_values=[task(i, "/bin/true") for i in ("a", "b", "c")]))
    outcome = {r.task_id: (r.status, r.error.code if r.error else None) for r in res.result_values}
    assert outcome == {"a": ("clienterror", "TaskExists"), "b": ("clienterror", "TaskExists"), "c": ("success", None)}


def test_refused_tasks_get_a_client_error_in_the_collection(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    new_job(batch_client)
    batch.faults.refuse_tasks("b")
    res = batch_client.create_task_collection("job1", models.BatchTaskGroup(
        task_values=[task(i, "/bin/true") for i in ("a", "b")]))
    outcome = {r.task_id: (r.status, r.error.code if r.error else None) for r in res.result_values}
    assert outcome == {"a": ("success", None), "b": ("clienterror", "InvalidPropertyValue")}


def test_a_dependency_range_waits_for_an_id_never_added(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=2))
    batch_client.create_job(models.BatchJobCreateOptions(
        id="job1", pool_info=models.BatchPoolInfo(pool_id="pool1"), uses_task_dependencies=True))
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task("1", "/bin/true"), task("3", "/bin/true"),
        task("after", "/bin/true", depends_on=models.BatchTaskDependencies(
            task_id_ranges=[models.BatchTaskIdRange(start=1, end=3)]))]))
    wait_until(lambda: {t.id: t.state for t in batch_client.list_tasks("job1")}.get("3") == "completed", 10, "3")
    time.sleep(0.5)
    assert batch_client.get_task("job1", "after").state == "active"  # "2" was never added
    batch_client.create_task("job1", task("2", "/bin/true"))
    wait_until(lambda: batch_client.get_task("job1", "after").state == "completed", 10, "the dependant")


def test_reset_restores_the_defaults(batch):
    from tests.batch_emulator.faults import DEFAULT_COUNTS_LAG, DEFAULT_LIST_LAG

    batch.faults.set_lag(counts=5, lists=5)
    batch.faults.hide_from_filtered_lists("x")
    batch.faults.lose_responses("Jobs_CreateJob")
    batch.reset()
    c = batch.faults.consistency
    assert (c.counts_lag, c.list_lag, c.hidden) == (DEFAULT_COUNTS_LAG, DEFAULT_LIST_LAG, {})
    assert batch.faults.lost_responses == []


def test_a_dropped_response_is_not_resent_by_the_sdk(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=0, slots=1))
    batch.faults.lose_responses("Jobs_CreateJob", status=0)
    with pytest.raises(ServiceResponseError):
        new_job(batch_client)
    assert [(r.status, r.error_code) for r in batch.requests_for("Jobs_CreateJob")] == [(0, "ConnectionDropped")]
    assert batch_client.get_job("job1").id == "job1"  # it was created all the same
    with pytest.raises(ResourceExistsError):
        new_job(batch_client)  # the caller's own resend meets JobExists

"""The Azure backend against a Batch service that lags, throttles and loses responses
(tests/batch_emulator/faults.py): every value still arrives, nothing hangs, a POST that took
effect before its answer was lost counts as done, and --merge cloud never waits for a task
that could not be added. ``%%azpar`` cells through the real SDKs, with Azurite."""

from __future__ import annotations

import time

import pytest

import azpar_magic

pytestmark = [pytest.mark.azure, pytest.mark.timeout(120)]


def _statuses(batch, operation_id):
    return [(r.status, r.error_code) for r in batch.requests_for(operation_id)]


def test_a_completed_task_hidden_from_filtered_lists_with_throttling_and_failed_lists(azure, ip, run_cell, batch):
    """Task 3's completion never reaches filtered lists (counts and unfiltered lists show
    it); counts and lists are throttled, and some lists fail outright. Before the fix the
    cell waited forever: the watermark passed task 3, and a failed list still moved on."""
    batch.faults.hide_from_filtered_lists("3")
    batch.faults.throttle(r"/taskcounts$", count=3, status=429, retry_after=1, skip=2)
    batch.faults.throttle(r"/tasks$", count=2, status=503, retry_after=1, method="GET")
    batch.fail_requests(r"/jobs/[^/]+/tasks$", count=8, status=500, method="GET")  # beyond the SDK's retries
    run = run_cell("%%azpar -q -o out for x in range(8):\nx * 11")
    assert run.success, run.error
    assert ip.user_ns["out"] == [x * 11 for x in range(8)]
    lists = [r for r in batch.requests if r.method == "GET" and r.path.endswith("/tasks")]
    assert any(r.status == 429 for r in batch.requests if r.path.endswith("/taskcounts")), "no throttled count"
    assert any(r.status == 500 for r in lists) and any(r.status == 503 for r in lists)
    assert any("$filter" not in r.query and r.status == 200 for r in lists), "no unfiltered sweep"


def test_lost_responses_of_create_job_and_add_tasks_count_as_done(azure, ip, run_cell, batch):
    batch.faults.lose_responses("Jobs_CreateJob")
    batch.faults.lose_responses("Tasks_CreateTaskCollection", partial=3)
    run = run_cell("%%azpar -q -o out for x in range(6):\nx - 1")
    assert run.success, run.error
    assert ip.user_ns["out"] == [x - 1 for x in range(6)]
    assert _statuses(batch, "Jobs_CreateJob") == [(503, "ServerBusy"), (409, "JobExists")]
    adds = batch.requests_for("Tasks_CreateTaskCollection")
    assert [r.status for r in adds] == [503, 200]
    job = azpar_magic.jobs()[-1]
    assert not job.failures
    # The six tasks, each added once whatever the lost response: the retry sends the same ids. Read
    # from the requests, not the service's job, which the backend deletes once the job succeeded
    # (in the background: reading it after the cell raced that clean-up).
    sent = [[task["id"] for task in r.body["value"]] for r in adds]
    assert len(set(sent[0] + sent[1])) == 6 and set(sent[0]) <= set(sent[1])


def test_a_job_of_the_same_id_that_is_not_ours_is_refused_and_left_alone(
    azure, ip, run_cell, batch, blob_service, monkeypatch
):
    from azure.batch import models

    from azpar_magic.run import engine

    monkeypatch.setattr(engine, "new_job_id", lambda: "azpar-someone-else")
    other = azpar_magic.session.engine().backend.client
    azpar_magic.session.engine().backend.start()
    other.create_job(models.BatchJobCreateOptions(id="azpar-someone-else",
                                                  pool_info=models.BatchPoolInfo(pool_id="azpar-test")))
    batch.faults.lose_responses("Jobs_CreateJob")  # the first attempt now fails as "exists"
    run = run_cell("%%azpar -q -o out for x in range(2):\nx")
    assert not run.success
    assert "already exists and was not created by this run" in str(run.error)
    assert "azpar-someone-else" in batch.jobs  # not deleted by the cleanup
    # What this run made for it goes; the other job's id is the same, so only what it created.
    assert not {c.name for c in blob_service.list_containers()} & {"azpar-someone-else-in", "azpar-someone-else-out"}


def test_lost_response_of_the_merge_task_counts_as_done(azure, ip, run_cell, batch):
    batch.faults.lose_responses("Tasks_CreateTask")
    run = run_cell("%%azpar -q --merge cloud -o merged for x in range(5):\nx * 3")
    assert run.success, run.error
    assert ip.user_ns["merged"] == [x * 3 for x in range(5)]
    assert _statuses(batch, "Tasks_CreateTask") == [(503, "ServerBusy"), (409, "TaskExists")]
    assert not azpar_magic.jobs()[-1].failures


def test_merge_cloud_with_a_task_that_could_not_be_added_ends(azure, ip, run_cell, batch):
    """Task 3 is refused by the service; the merge depends on the added tasks only, so it
    runs and the cell ends: iteration 2 fails saying why, the others have their values.
    Before the fix the merge waited for task 3 forever."""
    batch.faults.refuse_tasks("3")
    run = run_cell("%%azpar -q --merge cloud --errors remove -o merged for x in range(6):\nx + 100")
    assert run.success, run.error
    assert ip.user_ns["merged"] == [100, 101, 103, 104, 105]
    job = azpar_magic.jobs()[-1]
    assert sorted(job.failures) == [2]
    assert "refused" in job.failures[2].message
    merge = [r.body for r in batch.requests_for("Tasks_CreateTask") if r.body["id"] == "merge"]
    assert merge[0]["dependsOn"]["taskIdRanges"] == [{"start": 1, "end": 2}, {"start": 4, "end": 6}]


def test_merge_cloud_when_the_merge_task_cannot_be_added_reads_results_one_by_one(azure, ip, run_cell, batch):
    batch.fail_requests(r"/jobs/[^/]+/tasks$", count=10, status=400, method="POST")
    run = run_cell("%%azpar -q --merge cloud -o merged for x in range(4):\nx * x")
    assert run.success, run.error
    assert ip.user_ns["merged"] == [0, 1, 4, 9]


def test_lists_lagging_behind_the_counts_still_show_running_tasks_and_every_result(azure, ip, batch):
    """Counts exact, filtered lists a second behind: the first running list shows nothing
    the counts show, and so does the first completed list. Before the fix no task was ever
    reported running (the follower took the counts' word and did not ask again)."""
    batch.faults.set_lag(counts=0, lists=1.0)
    job = azpar_magic.run("for i in range(3)", "import time\ntime.sleep(3)\ni + 1", {})
    deadline = time.monotonic() + 30
    while job.snapshot().tasks_running < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.snapshot().tasks_running >= 1, "no task was ever reported running"
    assert job.result(timeout=60) == [1, 2, 3]


def test_sweeps_run_every_interval_and_space_out_while_they_find_nothing():
    from azpar_magic.backends.azure.run import SWEEP_INTERVAL, _Sweeps

    now = [0.0]
    sweeps = _Sweeps(1.0, clock=lambda: now[0])
    assert not sweeps.due(missing=True)  # not before one poll interval
    now[0] = 1.0
    assert sweeps.due(missing=True) and not sweeps.due(missing=False)
    gaps = []
    for _ in range(8):  # missing results that sweeps do not find: 2, 4, 8 ... up to the interval
        sweeps.done(found=0)
        start = now[0]
        while not sweeps.due(missing=True):
            now[0] += 0.5
        gaps.append(now[0] - start)
    assert gaps[:3] == [2.0, 4.0, 8.0] and max(gaps) == SWEEP_INTERVAL
    sweeps.done(found=1)  # found something: back to the poll interval
    now[0] += 1.0
    assert sweeps.due(missing=True)
    sweeps.done(found=0)
    now[0] += SWEEP_INTERVAL
    assert sweeps.due(missing=False)  # and every SWEEP_INTERVAL whatever the counts say


def test_merge_dependencies_are_the_fewest_ranges_of_the_added_ids():
    from azpar_magic.backends.azure.run import _id_ranges

    assert _id_ranges(["5", "1", "2", "3", "9", "10", "7"]) == [(1, 3), (5, 5), (7, 7), (9, 10)]
    assert _id_ranges([]) == []


def test_dropped_connections_after_create_job_add_tasks_and_the_merge_task(azure, ip, run_cell, batch):
    """The service does the POST and closes the connection unanswered: the SDK does not send
    a POST again then, so the backend does, and takes JobExists / TaskExists for done."""
    for operation in ("Jobs_CreateJob", "Tasks_CreateTaskCollection", "Tasks_CreateTask"):
        batch.faults.lose_responses(operation, status=0)
    run = run_cell("%%azpar -q --merge cloud -o merged for x in range(4):\nx * 7")
    assert run.success, run.error
    assert ip.user_ns["merged"] == [x * 7 for x in range(4)]
    assert _statuses(batch, "Jobs_CreateJob") == [(0, "ConnectionDropped"), (409, "JobExists")]
    assert _statuses(batch, "Tasks_CreateTask") == [(0, "ConnectionDropped"), (409, "TaskExists")]
    assert [s for s, _ in _statuses(batch, "Tasks_CreateTaskCollection")] == [0, 200]
    assert not azpar_magic.jobs()[-1].failures

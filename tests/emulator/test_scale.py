"""A 2,000-task job added in collections of 100 runs to completion with exact counts."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.batch import models

from .helpers import new_job, pool_options, task, wait_until

pytestmark = pytest.mark.timeout(120)


def test_two_thousand_tasks(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=4, slots=8, vm_size="Standard_D4s_v3"))
    new_job(batch_client, all_tasks_complete_mode="noaction")
    ids = [str(i) for i in range(1, 2001)]
    chunks = [ids[i:i + 100] for i in range(0, len(ids), 100)]

    def add(chunk):
        res = batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
            task(i, "/bin/true" if int(i) % 500 else "/bin/false") for i in chunk]))
        return [r.status for r in res.result_values]

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = [s for chunk in pool.map(add, chunks) for s in chunk]
    assert statuses.count("success") == 2000
    batch_client.update_job("job1", models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_until(lambda: batch_client.get_job("job1").state == "completed", 100, "job completion")
    # the counts lag the job's state a little (batch_emulator/faults.py), as Azure's may
    counts = wait_until(lambda: (c := batch_client.get_job_task_counts("job1")).task_counts.completed == 2000 and c,
                        10, "the counts to catch up")
    assert counts.task_counts.completed == 2000
    assert counts.task_counts.failed == 4 and counts.task_counts.succeeded == 1996
    assert counts.task_counts.active == counts.task_counts.running == 0
    assert len(list(batch_client.list_tasks("job1", select=["id"]))) == 2000
    assert len([r for r in batch.requests if r.operation_id == "Tasks_CreateTaskCollection"]) == 20
    print(f"2000 tasks in {time.monotonic() - started:.1f}s")

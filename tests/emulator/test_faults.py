"""Each fault hook, observed through the real SDK."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.batch_emulator.pytest_plugin import make_batch_client

from .helpers import blob_sas_url, container_sas_url, new_job, pool_options, sh, task, wait_tasks_done, wait_until

pytestmark = pytest.mark.timeout(60)


def test_request_faults_are_retried_by_the_sdk_then_surface(batch, batch_client):
    batch.fail_requests(r"^/pools$", count=2, status=503, method="GET")
    assert list(batch_client.list_pools()) == []          # azure-core retried twice
    listed = [r for r in batch.requests if r.path == "/pools" and r.method == "GET"]
    assert [r.status for r in listed] == [503, 503, 200]
    assert listed[0].error_code == "ServerBusy"
    no_retry = make_batch_client(batch, retry_total=0)
    batch.fail_requests(r"^/jobs$", count=1, status=500)
    with pytest.raises(HttpResponseError) as e:
        no_retry.create_job(models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p")))
    assert e.value.status_code == 500 and e.value.error.code == "InternalServerError"
    assert batch.jobs == {}


def test_preempted_node_requeues_running_tasks(batch, batch_client):
    batch_client.create_pool(pool_options("pool1", dedicated=0, low=2))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", sh("sleep 30")))
    running = wait_until(lambda: (t := batch_client.get_task("job1", "t1")).state == "running" and t, 10)
    node_id = batch.preempt_node("pool1", running.node_info.node_id)
    t = wait_until(lambda: (x := batch_client.get_task("job1", "t1")).execution_info.requeue_count == 1 and x, 10)
    assert t.execution_info.retry_count == 0
    assert batch_client.get_node("pool1", node_id).state == "preempted"
    t = wait_until(lambda: (x := batch_client.get_task("job1", "t1")).state == "running" and x, 10)
    assert t.node_info.node_id != node_id       # rescheduled on the other node
    batch_client.terminate_task("job1", "t1")


def test_fail_next_output_uploads(batch, batch_client, azurite, blob_service):
    blob_service.create_container("faultout")
    url = container_sas_url(azurite, "faultout", "w")
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch.fail_output_uploads(1)
    outs = [models.OutputFile(file_pattern="o.txt", destination=models.OutputFileDestination(
        container=models.OutputFileBlobContainerDestination(container_url=url, path=f"{name}.txt")),
        upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"))
        for name in ("first",)]
    batch_client.create_task("job1", task("a", sh("echo a > o.txt"), output_files=outs))
    wait_tasks_done(batch_client, "job1", 1)
    info = batch_client.get_task("job1", "a").execution_info
    assert info.exit_code == 0 and info.result == "failure" and info.failure_info.code == "FileUploadMiscError"
    outs[0].destination.container.path = "second.txt"
    batch_client.create_task("job1", task("b", sh("echo b > o.txt"), output_files=outs))
    wait_tasks_done(batch_client, "job1", 2)
    assert [b.name for b in blob_service.get_container_client("faultout").list_blobs()] == ["second.txt"]


def test_fail_start_task_and_delay_node_start(batch, batch_client):
    batch.fail_start_task("pool1", count=1)
    batch.delay_node_start(0.5, "pool1")
    batch_client.create_pool(pool_options("pool1", dedicated=2, start_task=models.BatchStartTask(
        command_line="/bin/true", wait_for_success=True)))
    import time
    time.sleep(0.2)
    assert {n.state for n in batch_client.list_nodes("pool1")} == {"creating"}
    nodes = wait_until(lambda: (ns := list(batch_client.list_nodes("pool1"))) and
                       all(n.state in ("idle", "starttaskfailed") for n in ns) and ns, 10)
    assert sorted(n.state for n in nodes) == ["idle", "starttaskfailed"]


def test_resource_file_from_azurite_survives_reset(batch, batch_client, azurite, blob_service):
    # a reset between tests leaves Azurite alone but empties the emulator
    blob_service.create_container("keep")
    blob_service.get_container_client("keep").upload_blob("k.txt", b"k")
    batch_client.create_pool(pool_options("pool1"))
    batch.reset()
    assert batch.pools == {} and batch.requests == []
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t", "/bin/cat k.txt", resource_files=[
        models.ResourceFile(http_url=blob_sas_url(azurite, "keep", "k.txt"), file_path="k.txt")]))
    wait_tasks_done(batch_client, "job1", 1)
    assert b"".join(batch_client.download_task_file("job1", "t", "stdout.txt")) == b"k"

"""The limits and rules the REST spec and the Batch documentation state (issue 14), through the
real SDK: a create-job body past its bound, reactivation refused, $filter only on documented
properties, supported image / node agent pairs, and an image pull that makes a node unusable.
Each rule refuses what Azure refuses and accepts what it accepts; each can be switched off."""
from __future__ import annotations

import time

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.batch_emulator import rules
from tests.batch_emulator.errors import BatchServiceError

from .helpers import new_job, pool_options, sh, task, wait_nodes_idle, wait_until

pytestmark = pytest.mark.timeout(60)


def _code(exc_info) -> str:
    return exc_info.value.error.code


def _prep(n_files: int) -> models.BatchJobPreparationTask:
    files = [models.ResourceFile(http_url=f"http://127.0.0.1:1/c/f{i}?sig={'x' * 200}", file_path=f"in/f{i}")
             for i in range(n_files)]
    return models.BatchJobPreparationTask(command_line="/bin/true", resource_files=files)


# ---- create-job body ---------------------------------------------------------------------------
def test_create_job_with_too_many_prep_resource_files_is_request_entity_too_large(batch, batch_client):
    with pytest.raises(HttpResponseError) as e:
        new_job(batch_client, "big", job_preparation_task=_prep(5000))   # ~1.3 MB of body
    assert e.value.status_code == 413 and _code(e) == "RequestEntityTooLarge"
    assert "big" not in batch.jobs
    new_job(batch_client, "small", job_preparation_task=_prep(100))      # well within 1 MiB
    assert "small" in batch.jobs


def test_create_job_body_bound_is_settable_and_can_be_switched_off(batch, batch_client):
    batch.faults.rules.max_job_body = 4096
    with pytest.raises(HttpResponseError) as e:
        new_job(batch_client, "j1", job_preparation_task=_prep(20))
    assert _code(e) == "RequestEntityTooLarge"
    new_job(batch_client, "j2", job_preparation_task=_prep(2))
    batch.faults.rules.max_job_body = None
    new_job(batch_client, "j3", job_preparation_task=_prep(5000))
    assert {"j2", "j3"} <= set(batch.jobs)


# ---- reactivation ------------------------------------------------------------------------------
def _completed(client, task_id: str) -> models.BatchTask:
    return wait_until(lambda: (t := client.get_task("job1", task_id)).state == "completed" and t, 15)


def _exit_0_with_a_failed_upload(batch, batch_client) -> None:
    """Task ``up`` of job1 exits 0 and then fails to upload its output file."""
    batch_client.create_pool(pool_options())
    new_job(batch_client)
    batch.fail_output_uploads(1)
    out = models.OutputFile(file_pattern="out.txt", destination=models.OutputFileDestination(
        container=models.OutputFileBlobContainerDestination(container_url="http://127.0.0.1:1/c?sig=x")),
        upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"))
    batch_client.create_task("job1", task("up", sh("echo hi > out.txt"), output_files=[out]))


def test_reactivation_refused_for_an_exit_0_task_whose_upload_failed(batch, batch_client):
    _exit_0_with_a_failed_upload(batch, batch_client)
    t = _completed(batch_client, "up")
    assert t.execution_info.exit_code == 0 and t.execution_info.result == "failure"
    with pytest.raises(HttpResponseError) as e:
        batch_client.reactivate_task("job1", "up")
    assert e.value.status_code == 409 and _code(e) == "TaskCompleted"


def test_reactivation_accepted_for_a_failed_task_and_refused_once_the_job_ends(batch, batch_client):
    batch_client.create_pool(pool_options())
    new_job(batch_client)
    batch_client.create_task("job1", task("bad", sh("exit 3")))
    assert _completed(batch_client, "bad").execution_info.exit_code == 3
    batch_client.reactivate_task("job1", "bad")                     # accepted: exit code 3
    _completed(batch_client, "bad")
    batch_client.begin_terminate_job("job1", models._models.BatchJobTerminateOptions(termination_reason="test"),
                                     polling_interval=0.05).result()
    with pytest.raises(HttpResponseError) as e:
        batch_client.reactivate_task("job1", "bad")
    assert _code(e) == "JobCompleted"


def test_reactivation_refused_while_the_job_is_terminating(batch, batch_client):
    batch_client.create_pool(pool_options(slots=2))
    new_job(batch_client)
    batch_client.create_task("job1", task("bad", sh("exit 3")))
    batch_client.create_task("job1", task("slow", sh("sleep 30")))
    _completed(batch_client, "bad")
    wait_until(lambda: batch_client.get_task("job1", "slow").state == "running", 10)
    with batch.cond:
        job = batch.jobs["job1"]
        job.set_state("terminating")    # held there: the scheduler would finish it at once
        with pytest.raises(BatchServiceError) as e:
            rules.check_reactivation(job.state, job.tasks["bad"], batch.faults.rules)
        job.set_state("active")
    assert "JobBeingTerminated" in str(e.value)


def test_reactivation_rule_switched_off_allows_an_exit_0_failure(batch, batch_client):
    batch.faults.rules.reactivation = False
    _exit_0_with_a_failed_upload(batch, batch_client)
    _completed(batch_client, "up")
    batch_client.reactivate_task("job1", "up")


# ---- $filter -----------------------------------------------------------------------------------
def test_filters_on_documented_task_properties_are_accepted(batch, batch_client):
    batch_client.create_pool(pool_options())
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "/bin/true"))
    _completed(batch_client, "t1")
    for text in ("state eq 'completed' and stateTransitionTime ge datetime'2020-01-01T00:00:00.000000Z'",
                 "state eq 'running'", "executionInfo/result eq 'success'", "executionInfo/exitCode eq 0",
                 "startswith(id,'t') or id eq 'x'", "creationTime gt DateTime'2020-01-01T00:00:00Z'"):
        assert [t.id for t in batch_client.list_tasks("job1", filter=text)] in (["t1"], []), text
    assert [t.id for t in batch_client.list_tasks("job1", filter="executionInfo/exitCode eq 0")] == ["t1"]


@pytest.mark.parametrize("text", ["nodeInfo/nodeId eq 'n1'", "commandLine eq '/bin/true'",
                                  "state gt 'active'", "endswith(id,'1')"])
def test_filters_on_other_task_properties_are_refused(batch, batch_client, text):
    new_job(batch_client)
    with pytest.raises(HttpResponseError) as e:
        list(batch_client.list_tasks("job1", filter=text))
    assert e.value.status_code == 400 and _code(e) == "InvalidQueryParameterValue"
    assert "cannot be used in a $filter of ListTasks" in str(e.value)


def test_filters_per_list_operation(batch, batch_client):
    batch_client.create_pool(pool_options())
    wait_nodes_idle(batch_client, "pool1", 1)
    assert len(list(batch_client.list_nodes("pool1", filter="state eq 'idle'"))) == 1
    assert len(list(batch_client.list_pools(filter="startswith(id,'pool') and vmSize eq 'Standard_D2s_v3'"))) == 1
    with pytest.raises(HttpResponseError):
        list(batch_client.list_nodes("pool1", filter="isDedicated eq true"))    # not in List nodes' table
    with pytest.raises(HttpResponseError):
        list(batch_client.list_pools(filter="targetDedicatedNodes eq 1"))
    batch.faults.rules.filters = False
    assert len(list(batch_client.list_nodes("pool1", filter="isDedicated eq true"))) == 1


# ---- images ------------------------------------------------------------------------------------
def _pool(image: dict, agent: str, container: bool = True, pool_id: str = "p") -> models.BatchPoolCreateOptions:
    cc = models.BatchContainerConfiguration(type="dockerCompatible", container_image_names=["python:3.11-slim"]) \
        if container else None
    vm = models.VirtualMachineConfiguration(image_reference=models.BatchVmImageReference(**image),
                                            node_agent_sku_id=agent, container_configuration=cc)
    return models.BatchPoolCreateOptions(id=pool_id, vm_size="Standard_D2s_v3", virtual_machine_configuration=vm,
                                         target_dedicated_nodes=0)


HPC_2204 = dict(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204")
JAMMY = dict(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts")


def test_pool_image_and_agent_must_be_a_supported_pair(batch, batch_client):
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_pool(_pool(HPC_2204, "batch.node.ubuntu 24.04"))
    assert e.value.status_code == 400 and _code(e) == "InvalidPropertyValue"
    assert "batch.node.ubuntu 22.04" in str(e.value)
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_pool(_pool(dict(publisher="someone", offer="custom", sku="1"), "batch.node.ubuntu 22.04"))
    assert "not in the list of images supported" in str(e.value)
    batch_client.create_pool(_pool(dict(HPC_2204, publisher="Microsoft-DSVM"), "batch.node.ubuntu 22.04"))
    assert "p" in batch.pools


def test_container_pool_needs_a_docker_compatible_image(batch, batch_client):
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_pool(_pool(JAMMY, "batch.node.ubuntu 22.04", container=True))
    assert _code(e) == "InvalidPropertyValue" and "DockerCompatible" in str(e.value)
    batch_client.create_pool(_pool(JAMMY, "batch.node.ubuntu 22.04", container=False))
    batch.faults.rules.images = False
    batch_client.create_pool(_pool(JAMMY, "batch.node.ubuntu 24.04", container=True, pool_id="p2"))


def test_the_backend_default_pool_is_accepted(batch, batch_client):
    """config.py's image, node agent and container image, as pool.py sends them."""
    from azpar_magic.backends.azure.pool import pool_definition
    from azpar_magic.config import PROFILE_FIELDS, Profile

    values = {k: (list(f.default) if isinstance(f.default, list) else f.default) for k, f in PROFILE_FIELDS.items()}
    batch_client.create_pool(pool_definition(Profile("default", values, {})))
    assert values["pool_id"] in batch.pools


# ---- image pull failure ------------------------------------------------------------------------
def test_image_pull_failure_makes_the_node_unusable_and_tasks_wait(batch, batch_client):
    batch.faults.fail_image_pull("python:3.11-slim")
    batch_client.create_pool(pool_options(container=True, start_task=models.BatchStartTask(
        command_line=sh("touch started"), wait_for_success=True)))
    node = wait_until(lambda: (n := list(batch_client.list_nodes("pool1"))) and n[0].state == "unusable" and n[0], 10)
    assert node.errors and node.errors[0].code == "ContainerInvalidImage"
    assert {d.name: d.value for d in node.errors[0].error_details}["ContainerImage"] == "python:3.11-slim"
    assert node.start_task_info is None                                # the start task never ran
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "/bin/true", container_settings=models.BatchTaskContainerSettings(
        image_name="python:3.11-slim")))
    time.sleep(0.5)
    assert batch_client.get_task("job1", "t1").state == "active"


def test_other_images_and_later_nodes_pull_fine(batch, batch_client):
    batch.faults.fail_image_pull("python:3.11-slim", count=1)
    batch_client.create_pool(pool_options(dedicated=2, container=True))
    nodes = wait_until(lambda: (n := list(batch_client.list_nodes("pool1"))) and
                       sorted(x.state for x in n) == ["idle", "unusable"] and n, 10)
    assert [x.errors for x in nodes if x.state == "idle"] == [None]

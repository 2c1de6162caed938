"""Pools, nodes, jobs and tasks through the real BatchClient: the working core."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from .helpers import new_job, pool_options, sh, task, wait_nodes_idle, wait_tasks_done, wait_until

pytestmark = pytest.mark.timeout(60)


def test_pool_create_get_list_exists_delete(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=2, slots=2))
    pool = batch_client.get_pool("pool1")
    assert pool.id == "pool1" and pool.vm_size == "Standard_D2s_v3"
    assert pool.target_dedicated_nodes == 2 and pool.task_slots_per_node == 2
    assert pool.state == models.BatchPoolState.ACTIVE
    nodes = wait_nodes_idle(batch_client, "pool1", 2)
    assert all(n.is_dedicated for n in nodes)
    assert batch_client.get_pool("pool1").current_dedicated_nodes == 2
    assert [p.id for p in batch_client.list_pools()] == ["pool1"]
    assert batch_client.pool_exists("pool1") is True
    with pytest.raises(ResourceNotFoundError):   # SDK quirk: raises instead of returning False
        batch_client.pool_exists("nope")
    with pytest.raises(ResourceExistsError) as e:
        batch_client.create_pool(pool_options("POOL1"))   # ids are case-insensitive
    assert e.value.error.code == "PoolExists"
    batch_client.begin_delete_pool("pool1", polling_interval=0.05).result()
    with pytest.raises(ResourceNotFoundError) as e:
        batch_client.get_pool("pool1")
    assert e.value.error.code == "PoolNotFound"


def test_node_lifecycle_passes_through_states(batch_client, batch):
    batch.node_state_delay = 0.3
    try:
        batch_client.create_pool(pool_options("pool1", dedicated=1, start_task=models.BatchStartTask(
            command_line=sh("sleep 0.3; echo started > $AZ_BATCH_NODE_SHARED_DIR/flag"), wait_for_success=True)))
        seen = set()

        def idle():
            nodes = list(batch_client.list_nodes("pool1"))
            seen.update(n.state for n in nodes)
            return nodes and nodes[0].state == "idle"
        wait_until(idle, 10)
    finally:
        batch.node_state_delay = 0.0
    assert {"creating", "starting", "waitingforstarttask", "idle"} <= {getattr(s, "value", s) for s in seen}
    node = list(batch_client.list_nodes("pool1"))[0]
    assert node.start_task_info.state == "completed" and node.start_task_info.exit_code == 0
    assert b"".join(batch_client.download_node_file("pool1", node.id, "shared/flag")) == b"started\n"


def test_failing_start_task_with_wait_leaves_node_starttaskfailed(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, start_task=models.BatchStartTask(
        command_line=sh("exit 3"), wait_for_success=True, max_task_retry_count=1)))
    node = wait_until(lambda: next((n for n in batch_client.list_nodes("pool1")
                                    if n.state == "starttaskfailed"), None), 10)
    assert node.start_task_info.exit_code == 3 and node.start_task_info.retry_count == 1
    assert node.start_task_info.result == "failure"
    assert node.start_task_info.failure_info.category == "usererror"


def test_resize_and_node_counts(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1))
    wait_nodes_idle(batch_client, "pool1", 1)
    batch_client.begin_resize_pool("pool1", models.BatchPoolResizeOptions(
        target_dedicated_nodes=2, target_low_priority_nodes=1), polling_interval=0.05).result()
    wait_nodes_idle(batch_client, "pool1", 3)
    counts = {c.pool_id: c for c in batch_client.list_pool_node_counts()}["pool1"]
    assert counts.dedicated.idle == 2 and counts.dedicated.total == 2
    assert counts.low_priority.idle == 1 and counts.low_priority.total == 1
    pool = batch_client.get_pool("pool1")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (2, 1)
    batch_client.begin_resize_pool("pool1", models.BatchPoolResizeOptions(target_dedicated_nodes=0,
                                                                          target_low_priority_nodes=0),
                                   polling_interval=0.05).result()
    wait_until(lambda: not list(batch_client.list_nodes("pool1")), 10, "pool to empty")


def test_stop_resize(batch_client, batch):
    batch.resize_delay = 5.0
    try:
        batch_client.create_pool(pool_options("pool1", dedicated=3))
        assert batch_client.get_pool("pool1").allocation_state == "resizing"
        batch_client.begin_stop_pool_resize("pool1", polling_interval=0.05).result()
    finally:
        batch.resize_delay = 0.0
    pool = wait_until(lambda: (p := batch_client.get_pool("pool1")).allocation_state == "steady" and p, 10)
    assert pool.target_dedicated_nodes == 0 and pool.resize_errors[0].code == "ResizeStopped"


def test_supported_images_lists_container_capable_ubuntu(batch_client, batch):
    images = list(batch_client.list_supported_images())
    hpc = [i for i in images if i.image_reference.offer == "ubuntu-hpc"]
    assert hpc and hpc[0].node_agent_sku_id == "batch.node.ubuntu 22.04"
    assert "DockerCompatible" in hpc[0].capabilities
    assert len(list(batch_client.list_supported_images(filter="verificationType eq 'verified'"))) == len(images)


def test_job_create_get_list_update_delete(batch_client, batch):
    new_job(batch_client, "job1", "pool1", all_tasks_complete_mode="noaction", priority=5)
    job = batch_client.get_job("job1")
    assert job.state == "active" and job.pool_info.pool_id == "pool1" and job.priority == 5
    with pytest.raises(ResourceExistsError) as e:
        new_job(batch_client, "JOB1")
    assert e.value.error.code == "JobExists"
    batch_client.update_job("job1", models.BatchJobUpdateOptions(priority=7))
    assert batch_client.get_job("job1").priority == 7
    assert [j.id for j in batch_client.list_jobs()] == ["job1"]
    batch_client.begin_delete_job("job1", polling_interval=0.05).result()
    with pytest.raises(ResourceNotFoundError) as e:
        batch_client.get_job("job1")
    assert e.value.error.code == "JobNotFound"


def test_empty_job_with_terminatejob_completes_at_once(batch_client, batch):
    new_job(batch_client, "job1", all_tasks_complete_mode="terminatejob")
    wait_until(lambda: batch_client.get_job("job1").state == "completed", 5)
    job = batch_client.get_job("job1")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    with pytest.raises(ResourceExistsError) as e:   # 409 JobCompleted
        batch_client.create_task("job1", task("1", "/bin/true"))
    assert e.value.error.code == "JobCompleted"


def test_noaction_job_then_switch_to_terminatejob(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=2))
    new_job(batch_client, all_tasks_complete_mode="noaction")
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task(str(i), "/bin/true") for i in range(1, 5)]))
    wait_tasks_done(batch_client, "job1", 4)
    assert batch_client.get_job("job1").state == "active"
    batch_client.update_job("job1", models.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_until(lambda: batch_client.get_job("job1").state == "completed", 5)


def test_tasks_run_with_counts_and_exit_codes(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=2, slots=2))
    new_job(batch_client)
    res = batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task("ok1", sh("echo hello from $AZ_BATCH_TASK_ID")), task("ok2", "/bin/echo plain"),
        task("bad", sh("echo oops >&2; exit 7"))]))
    assert sorted(r.task_id for r in res.result_values if r.status == "success") == ["bad", "ok1", "ok2"]
    counts = wait_tasks_done(batch_client, "job1", 3)
    assert counts.task_counts.succeeded == 2 and counts.task_counts.failed == 1
    assert counts.task_slot_counts.completed == 3
    bad = batch_client.get_task("job1", "bad")
    assert bad.execution_info.exit_code == 7 and bad.execution_info.result == "failure"
    assert bad.execution_info.failure_info.code == "FailureExitCode"
    assert bad.node_info.pool_id == "pool1"
    assert b"".join(batch_client.download_task_file("job1", "ok1", "stdout.txt")) == b"hello from ok1\n"
    assert b"".join(batch_client.download_task_file("job1", "bad", "stderr.txt")) == b"oops\n"


def test_command_line_is_not_run_by_a_shell(batch_client, batch):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "/bin/echo $AZ_BATCH_TASK_ID > x"))
    batch_client.create_task("job1", task("t2", "no-such-program --flag"))
    wait_tasks_done(batch_client, "job1", 2)
    out = b"".join(batch_client.download_task_file("job1", "t1", "stdout.txt"))
    assert out == b"$AZ_BATCH_TASK_ID > x\n"      # no expansion, no redirection
    t2 = batch_client.get_task("job1", "t2")
    assert t2.execution_info.failure_info.code == "CommandProgramNotFound"


def test_task_environment_is_minimal(batch_client, batch, monkeypatch):
    monkeypatch.setenv("AZPAR_SECRET_IN_TEST_PROCESS", "must-not-leak")
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client, common_environment_settings=[models.EnvironmentSetting(name="JOBVAR", value="j")])
    batch_client.create_task("job1", task("t1", "/usr/bin/env", environment_settings=[
        models.EnvironmentSetting(name="TASKVAR", value="t"),
        models.EnvironmentSetting(name="AZ_BATCH_TASK_ID", value="spoofed")]))
    batch_client.create_task("job1", task("t2", "python3 -c 'import sys; print(sys.executable)'"))
    wait_tasks_done(batch_client, "job1", 2)
    out = b"".join(batch_client.download_task_file("job1", "t1", "stdout.txt")).decode()
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env, out
    assert "AZPAR_SECRET_IN_TEST_PROCESS" not in env
    extra = {k for k in env if not k.startswith("AZ_BATCH_")} - {"PATH", "HOME", "LANG", "PWD", "JOBVAR", "TASKVAR"}
    assert not extra
    assert env["AZ_BATCH_TASK_ID"] == "t1" and env["AZ_BATCH_JOB_ID"] == "job1"
    assert env["AZ_BATCH_TASK_WORKING_DIR"].endswith("/workitems/job1/job-1/t1/wd")
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "true"
    import os
    import sys

    from tests.batch_emulator.nodes import bare_python_bin

    exe = b"".join(batch_client.download_task_file("job1", "t2", "stdout.txt")).decode().strip()
    assert os.path.dirname(exe) == str(bare_python_bin())  # the node's bare Python, not the test venv's
    assert os.path.dirname(exe) != os.path.dirname(sys.executable)


def test_list_tasks_filter_select_and_paging(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=4))
    new_job(batch_client)
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task(str(i), "/bin/true" if i % 3 else sh("exit 1")) for i in range(1, 31)]))
    wait_tasks_done(batch_client, "job1", 30)
    pages = list(batch_client.list_tasks("job1", max_results=7).by_page())
    assert [len(list(p)) for p in pages] == [7, 7, 7, 7, 2]
    failed = list(batch_client.list_tasks("job1", filter="executionInfo/result eq 'failure'", max_results=3))
    assert sorted(int(t.id) for t in failed) == list(range(3, 31, 3))
    sel = list(batch_client.list_tasks("job1", select=["id", "state"], filter="state eq 'completed'"))
    assert len(sel) == 30 and sel[0].command_line is None and sel[0].state == "completed"
    listed = [r for r in batch.requests if r.operation_id == "Tasks_ListTasks"]
    assert any("$skiptoken" in r.query for r in listed)
    with pytest.raises(HttpResponseError) as e:
        list(batch_client.list_tasks("job1", filter="state eq"))
    assert e.value.status_code == 400 and e.value.error.code == "InvalidQueryParameterValue"


def test_get_and_terminate_task_and_job_termination_kills_processes(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=4))
    new_job(batch_client)
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task("long1", "sleep 30"), task("long2", "sleep 30"), task("long3", "sleep 30")]))
    wait_until(lambda: batch_client.get_job_task_counts("job1").task_counts.running == 3, 10)
    assert len(batch.live_processes()) == 3
    batch_client.terminate_task("job1", "long1")
    t = wait_until(lambda: (x := batch_client.get_task("job1", "long1")).state == "completed" and x, 10)
    assert t.execution_info.result == "failure" and t.execution_info.failure_info.code == "TaskEnded"
    batch_client.begin_terminate_job("job1", models._models.BatchJobTerminateOptions(termination_reason="UserTerminate"), polling_interval=0.05).result()
    job = batch_client.get_job("job1")
    assert job.state == "completed" and job.execution_info.termination_reason == "UserTerminate"
    assert batch.live_processes() == []
    with pytest.raises(ResourceNotFoundError) as e:
        batch_client.get_task("job1", "nope")
    assert e.value.error.code == "TaskNotFound"


def test_retries_and_wall_clock(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=2))
    new_job(batch_client)
    batch_client.create_task("job1", task("flaky", sh("exit 2"), constraints=models.BatchTaskConstraints(
        max_task_retry_count=2)))
    batch_client.create_task("job1", task("slow", "sleep 20", constraints=models.BatchTaskConstraints(
        max_wall_clock_time="PT0.5S")))
    wait_tasks_done(batch_client, "job1", 2)
    flaky = batch_client.get_task("job1", "flaky")
    assert flaky.execution_info.retry_count == 2 and flaky.execution_info.exit_code == 2
    slow = batch_client.get_task("job1", "slow")
    assert slow.execution_info.failure_info.code == "MaxWallClockTimeExceeded"
    assert (slow.execution_info.end_time - slow.execution_info.start_time).total_seconds() < 10


def test_task_slots_per_node_are_honoured(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=2))
    wait_nodes_idle(batch_client, "pool1", 1)
    new_job(batch_client)
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task(f"t{i}", "sleep 0.4") for i in range(4)] + [task("big", "sleep 0.1", required_slots=2)]))
    peak = 0

    def observe():
        nonlocal peak
        n = list(batch_client.list_nodes("pool1"))[0]
        peak = max(peak, n.running_task_slots_count or 0)
        return batch_client.get_job_task_counts("job1").task_counts.completed == 5
    wait_until(observe, 20)
    assert peak == 2


def test_dependencies_by_ids_and_ranges(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=4))
    new_job(batch_client, uses_task_dependencies=True)
    marker = "$AZ_BATCH_NODE_SHARED_DIR/order"
    tasks = [task(str(i), sh(f"sleep 0.2; echo {i} >> {marker}")) for i in (1, 2, 3)]
    tasks.append(task("merge", sh(f"echo merge >> {marker}"), depends_on=models.BatchTaskDependencies(
        task_id_ranges=[models.BatchTaskIdRange(start=1, end=3)])))
    tasks.append(task("after", sh(f"echo after >> {marker}"), depends_on=models.BatchTaskDependencies(
        task_ids=["merge"])))
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=tasks))
    wait_tasks_done(batch_client, "job1", 5)
    node = list(batch_client.list_nodes("pool1"))[0]
    lines = b"".join(batch_client.download_node_file("pool1", node.id, "shared/order")).decode().split()
    assert sorted(lines[:3]) == ["1", "2", "3"] and lines[3:] == ["merge", "after"]


def test_failed_dependency_blocks_dependent(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=1, slots=2))
    new_job(batch_client, uses_task_dependencies=True)
    batch_client.create_task("job1", task("a", sh("exit 1")))
    batch_client.create_task("job1", task("b", "/bin/true", depends_on=models.BatchTaskDependencies(task_ids=["a"])))
    wait_until(lambda: batch_client.get_task("job1", "a").state == "completed", 10)
    import time
    time.sleep(0.3)
    assert batch_client.get_task("job1", "b").state == "active"


def test_job_preparation_task_runs_once_per_node(batch_client, batch):
    batch_client.create_pool(pool_options("pool1", dedicated=2, slots=2))
    wait_nodes_idle(batch_client, "pool1", 2)
    new_job(batch_client, job_preparation_task=models.BatchJobPreparationTask(
        command_line=sh("echo prep >> $AZ_BATCH_NODE_SHARED_DIR/prep; echo ready > prepared")))
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task(str(i), sh("cat $AZ_BATCH_JOB_PREP_WORKING_DIR/prepared; sleep 0.1")) for i in range(1, 9)]))
    wait_tasks_done(batch_client, "job1", 8)
    statuses = list(batch_client.list_job_preparation_and_release_task_status("job1"))
    used_nodes = {batch_client.get_task("job1", str(i)).node_info.node_id for i in range(1, 9)}
    assert {s.node_id for s in statuses} == used_nodes
    for s in statuses:
        info = s.job_preparation_task_execution_info
        assert info.state == "completed" and info.exit_code == 0 and info.result == "success"
        prep_runs = b"".join(batch_client.download_node_file("pool1", s.node_id, "shared/prep")).decode()
        assert prep_runs == "prep\n"
    assert b"".join(batch_client.download_task_file("job1", "1", "stdout.txt")) == b"ready\n"


def test_task_files_list_properties_and_ranges(batch_client, batch):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", sh("printf 0123456789 > data.bin; echo out")))
    wait_tasks_done(batch_client, "job1", 1)
    names = {f.name for f in batch_client.list_task_files("job1", "t1", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd", "wd/data.bin"} <= names
    props = batch_client.get_task_file_properties("job1", "t1", "wd/data.bin")
    assert int(props.content_length) == 10 and props.is_directory in (False, "false")
    part = b"".join(batch_client.download_task_file("job1", "t1", "wd/data.bin", ocp_range="bytes=2-5"))
    assert part == b"2345"
    node_id = batch_client.get_task("job1", "t1").node_info.node_id
    node_files = {f.name for f in batch_client.list_node_files("pool1", node_id, recursive=True)}
    assert "workitems/job1/job-1/t1/wd/data.bin" in node_files
    with pytest.raises(ResourceNotFoundError):
        b"".join(batch_client.download_task_file("job1", "t1", "wd/missing"))

"""The test service's strict command-line rule (rules.check_command_line): a command line whose
splitting no source shows (a line break, a quote inside quotes, a backslash, an unbalanced
quote) is refused at create time, on pools, jobs, single tasks and task collections; the shapes
of the official examples are accepted and run; ``svc.strict_command_lines = False`` lets the old
shapes through. Real SDK client against the test service, no mocks."""
from __future__ import annotations

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.batch_emulator import rules

from .helpers import new_job, pool_options, task, wait_nodes_idle, wait_tasks_done

#: Refused, each with the words the reason gives.
REFUSED = {
    "several lines": ("/bin/sh -c 'set -e\necho one\necho two'", "line break"),
    "carriage return": ("/bin/sh -c 'echo one\r'", "line break"),
    "nested single quotes": ("/bin/sh -c 'echo '\"'\"'hi'\"'\"''", "single quote inside a quoted word"),
    "double quotes inside single": ("/bin/sh -c 'eval \"$AZPAR_SCRIPT\"'", "double quote inside a quoted word"),
    "single quote inside double": ("/bin/sh -c \"echo it's\"", "single quote inside a quoted word"),
    "backslash escape": ("/bin/sh -c echo\\ hi", "backslash"),
    "unbalanced quote": ("/bin/sh -c 'echo hi", "unbalanced quote"),
}

#: Accepted: the official examples' command lines (REST spec 2025-06-01 examples:
#: Tasks_CreateTask_ContainerSettings, Pools_CreatePool_* and Tasks_CreateTask*), a Nextflow-style
#: ``sh -c '...'`` one-liner with ``;`` and ``&&`` inside the quotes, and a program without a shell.
ACCEPTED = ["bash -c 'echo hello'", "/bin/bash -c 'echo start task'", "cmd /c echo hello", "/bin/true",
            "/bin/sh -c 'mkdir -p out && echo $AZ_BATCH_TASK_ID > out/id; exit 0'",
            "/bin/sh -c \"echo double quoted once\""]


def _reason(exc: HttpResponseError) -> str:
    """The Reason value the service puts in the error's values (the SDK's ``details``)."""
    return next((d.message for d in exc.error.details or [] if d.code == "Reason"), "")


@pytest.mark.parametrize("line,why", REFUSED.values(), ids=REFUSED.keys())
def test_the_rule_refuses_what_no_source_shows_split(line, why):
    with pytest.raises(Exception) as e:
        rules.check_command_line("commandLine", line)
    reason = dict(e.value.values)["Reason"]
    assert e.value.status == 400 and e.value.code == "InvalidPropertyValue"
    assert why in reason and "no source shows how Batch tokenises" in reason, reason


@pytest.mark.parametrize("line", ACCEPTED)
def test_the_rule_accepts_the_official_shapes(line):
    rules.check_command_line("commandLine", line)


def test_a_task_with_a_multi_line_command_is_refused_at_create(batch_client, batch):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_task("job1", task("t1", REFUSED["several lines"][0]))
    assert e.value.status_code == 400 and e.value.error.code == "InvalidPropertyValue"
    assert "line break" in _reason(e.value) and "no source shows" in _reason(e.value)
    assert not batch.jobs["job1"].tasks  # nothing was added


def test_a_collection_refuses_only_the_task_with_nested_quotes(batch_client, batch):
    batch_client.create_pool(pool_options("cl-pool-c"))
    new_job(batch_client, "cl-job-c", "cl-pool-c")
    res = batch_client.create_task_collection("cl-job-c", models.BatchTaskGroup(task_values=[
        task("ok", "/bin/sh -c 'echo fine'"), task("nested", REFUSED["nested single quotes"][0])]))
    status = {r.task_id: r for r in res.result_values}
    assert status["ok"].status == "success"
    assert status["nested"].status == "clienterror" and status["nested"].error.code == "InvalidPropertyValue"
    wait_tasks_done(batch_client, "cl-job-c", 1)
    assert b"".join(batch_client.download_task_file("cl-job-c", "ok", "stdout.txt")) == b"fine\n"


def test_a_pool_start_task_and_a_job_preparation_task_are_checked_too(batch_client, batch):
    start = models.BatchStartTask(command_line=REFUSED["several lines"][0], wait_for_success=True)
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_pool(pool_options("pool1", start_task=start))
    assert e.value.status_code == 400 and "line break" in _reason(e.value)
    assert "pool1" not in batch.pools
    batch_client.create_pool(pool_options("pool1"))
    with pytest.raises(HttpResponseError) as e:  # a start task set later goes through the same rule
        batch_client.update_pool("pool1", models.BatchPoolUpdateOptions(start_task=start))
    assert e.value.status_code == 400 and "line break" in _reason(e.value)
    prep = models.BatchJobPreparationTask(command_line=REFUSED["unbalanced quote"][0])
    with pytest.raises(HttpResponseError) as e:
        new_job(batch_client, job_preparation_task=prep)
    assert e.value.status_code == 400 and "unbalanced quote" in _reason(e.value)
    assert "job1" not in batch.jobs


def test_the_accepted_shapes_run(batch_client, batch):
    start = models.BatchStartTask(command_line="/bin/sh -c 'echo start task > $AZ_BATCH_NODE_SHARED_DIR/started'",
                                  wait_for_success=True)
    batch_client.create_pool(pool_options("cl-pool-a", start_task=start))
    wait_nodes_idle(batch_client, "cl-pool-a", 1)
    new_job(batch_client, "cl-job-a", "cl-pool-a",
            job_preparation_task=models.BatchJobPreparationTask(command_line="/bin/true"))
    batch_client.create_task("cl-job-a", task("t1", "/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/started && echo hi'"))
    wait_tasks_done(batch_client, "cl-job-a", 1)
    assert b"".join(batch_client.download_task_file("cl-job-a", "t1", "stdout.txt")) == b"start task\nhi\n"


def test_switched_off_the_old_shapes_are_accepted_and_run(batch_client, batch):
    batch.strict_command_lines = False
    batch_client.create_pool(pool_options("cl-pool-b"))
    new_job(batch_client, "cl-job-b", "cl-pool-b")
    batch_client.create_task("cl-job-b", task("t1", "/bin/sh -c 'echo one\necho \"it'\"'\"'s\"'"))
    wait_tasks_done(batch_client, "cl-job-b", 1)
    assert b"".join(batch_client.download_task_file("cl-job-b", "t1", "stdout.txt")) == b"one\nit's\n"
    batch.reset()
    assert batch.strict_command_lines  # on again for the next test

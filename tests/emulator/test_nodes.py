"""Nodes as Azure makes them (issue 14): who runs what, which folders each may write, and a bare
Python. Sources: README "Nodes" of the test service, and nodes.py / engine.py docstrings."""
from __future__ import annotations

import os
import stat

import pytest
from azure.batch import models

from .helpers import blob_sas_url, new_job, pool_options, sh, task, wait_nodes_idle, wait_tasks_done

pytestmark = pytest.mark.timeout(90)

ADMIN = models.UserIdentity(auto_user=models.AutoUserSpecification(
    scope=models.AutoUserScope.POOL, elevation_level=models.ElevationLevel.ADMIN))


def _out(client, job_id: str, task_id: str, name: str = "stdout.txt") -> str:
    return b"".join(client.download_task_file(job_id, task_id, name)).decode()


def _pool_with_start_task(client, command: str, identity=ADMIN) -> None:
    client.create_pool(pool_options("pool1", start_task=models.BatchStartTask(
        command_line=sh(command), user_identity=identity, wait_for_success=True)))
    wait_nodes_idle(client, "pool1", 1)


def _node(batch):
    with batch.cond:
        return next(iter(batch.pools["pool1"].nodes.values()))


def test_admin_start_task_runs_as_root_and_tasks_as_the_pool_user(batch_client, batch, pool_user):
    _pool_with_start_task(batch_client, "id -u > $AZ_BATCH_NODE_SHARED_DIR/start-uid")
    new_job(batch_client, job_preparation_task=models.BatchJobPreparationTask(command_line="id -u"))
    batch_client.create_task("job1", task("t1", "id -u"))
    batch_client.create_task("job1", task("t2", "id -u", user_identity=ADMIN))
    wait_tasks_done(batch_client, "job1", 2)
    node = _node(batch)
    assert (node.root / "shared" / "start-uid").read_text().strip() == "0"
    assert _out(batch_client, "job1", "t1").strip() == str(pool_user.uid)
    assert _out(batch_client, "job1", "t2").strip() == "0"   # a task that asks for admin gets root
    prep = node.root / "workitems" / "job1" / "job-1" / "jobpreparation"
    assert (prep / "stdout.txt").read_text().strip() == str(pool_user.uid)
    assert (prep / "wd").stat().st_uid == pool_user.uid


def test_a_start_task_without_identity_runs_as_the_pool_user(batch_client, batch, pool_user):
    _pool_with_start_task(batch_client, "id -u > $AZ_BATCH_NODE_SHARED_DIR/start-uid", identity=None)
    assert (_node(batch).root / "shared" / "start-uid").read_text().strip() == str(pool_user.uid)


def test_the_pool_user_writes_shared_but_not_a_folder_the_root_start_task_made(batch_client, batch, pool_user):
    _pool_with_start_task(batch_client, "mkdir $AZ_BATCH_NODE_SHARED_DIR/made-by-root")
    new_job(batch_client)
    batch_client.create_task("job1", task("own", sh("touch $AZ_BATCH_NODE_SHARED_DIR/mine")))
    batch_client.create_task("job1", task("under", sh("mkdir $AZ_BATCH_NODE_SHARED_DIR/made-by-root/x")))
    wait_tasks_done(batch_client, "job1", 2)
    assert batch_client.get_task("job1", "own").execution_info.exit_code == 0
    under = batch_client.get_task("job1", "under")
    assert under.execution_info.exit_code != 0
    assert "Permission denied" in _out(batch_client, "job1", "under", "stderr.txt")
    shared = _node(batch).root / "shared"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    assert (shared / "mine").stat().st_uid == pool_user.uid
    made = shared / "made-by-root"
    assert made.stat().st_uid == 0 and stat.S_IMODE(made.stat().st_mode) == 0o755  # umask 022


def test_tasks_read_the_job_preparation_folder_and_own_their_own(batch_client, batch, pool_user):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client, job_preparation_task=models.BatchJobPreparationTask(
        command_line=sh("echo prepared > data.txt")))
    batch_client.create_task("job1", task("t1", sh("cat $AZ_BATCH_JOB_PREP_WORKING_DIR/data.txt && touch here")))
    wait_tasks_done(batch_client, "job1", 1)
    assert _out(batch_client, "job1", "t1").strip() == "prepared"
    task_dir = _node(batch).root / "workitems" / "job1" / "job-1" / "t1"
    assert (task_dir / "wd").stat().st_uid == pool_user.uid and (task_dir / "wd" / "here").exists()


def test_resource_files_belong_to_the_task_user_with_mode_0770_by_default(batch_client, batch, azurite,
                                                                         blob_service, pool_user):
    blob_service.create_container("res")
    blob_service.get_blob_client("res", "in.txt").upload_blob(b"payload")
    url = blob_sas_url(azurite, "res", "in.txt")
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", sh("cat in/a.txt && echo more >> in/a.txt"), resource_files=[
        models.ResourceFile(http_url=url, file_path="in/a.txt"),
        models.ResourceFile(http_url=url, file_path="b.txt", file_mode="0644")]))
    wait_tasks_done(batch_client, "job1", 1)
    assert batch_client.get_task("job1", "t1").execution_info.exit_code == 0
    wd = _node(batch).root / "workitems" / "job1" / "job-1" / "t1" / "wd"
    a, b = (wd / "in" / "a.txt").stat(), (wd / "b.txt").stat()
    assert (a.st_uid, stat.S_IMODE(a.st_mode)) == (pool_user.uid, 0o770)
    assert (b.st_uid, stat.S_IMODE(b.st_mode)) == (pool_user.uid, 0o644)
    assert (wd / "in").stat().st_uid == pool_user.uid


def test_a_nodes_python_is_bare_with_pip_and_a_writable_home(batch_client, batch, pool_user):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "python -c 'import dill'"))
    batch_client.create_task("job1", task("t2", "python -m pip --version"))
    batch_client.create_task("job1", task("t3", sh("touch $HOME/x && echo $HOME")))
    wait_tasks_done(batch_client, "job1", 3)
    assert "No module named 'dill'" in _out(batch_client, "job1", "t1", "stderr.txt")
    assert _out(batch_client, "job1", "t2").startswith("pip ")
    assert batch_client.get_task("job1", "t3").execution_info.exit_code == 0
    home = _out(batch_client, "job1", "t3").strip()
    assert os.stat(home).st_uid == pool_user.uid and stat.S_IMODE(os.stat(home).st_mode) == 0o700


def test_users_and_bare_nodes_can_be_switched_off(batch_client, batch):
    batch.node_users = batch.bare_nodes = False
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "id -u"))
    batch_client.create_task("job1", task("t2", "python -c 'import dill'"))
    wait_tasks_done(batch_client, "job1", 2)
    assert _out(batch_client, "job1", "t1").strip() == str(os.geteuid())
    assert batch_client.get_task("job1", "t2").execution_info.exit_code == 0  # the test venv's Python

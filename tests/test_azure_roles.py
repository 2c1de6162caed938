"""Roles on the test Batch service, and the backend under the *Azure Batch Job Submitter* role.

The service models the Batch RBAC article (tests/batch_emulator/auth.py): Job Submitter reads
pools and submits jobs, and every pool write gets 403 AuthorizationFailed. A test hands the
backend a credential bound to that role (``batch.add_identity``) the way a user's identity
would carry it, then runs real cells through the real SDKs against the service and Azurite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

import azpar_magic
from tests.batch_emulator.auth import DATA_CONTRIBUTOR, JOB_SUBMITTER, permission_for
from tests.batch_emulator.pytest_plugin import make_batch_client
from tests.emulator.helpers import vm_config

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]
POOL = "azpar-test"


def _pool_writes(batch, since: int = 0) -> list:
    return [r for r in batch.requests[since:]
            if r.operation_id and permission_for(r.operation_id, r.method) == "pools/write"]


def _refused(batch) -> list:
    return [r for r in batch.requests if r.error_code == "AuthorizationFailed"]


# ---------------------------------------------------------------------------- the service


def test_job_submitter_may_use_pools_and_jobs_but_not_write_pools(batch, batch_client):
    from azure.batch import models

    batch_client.create_pool(models.BatchPoolCreateOptions(
        id="p1", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(), target_dedicated_nodes=0))
    name, key = batch.add_identity(JOB_SUBMITTER)
    client = make_batch_client(batch, AzureNamedKeyCredential(name, key), retry_total=0)
    try:
        assert client.get_pool("p1").id == "p1"  # pools/read
        assert [p.id for p in client.list_pools()] == ["p1"]
        client.create_job(models.BatchJobCreateOptions(id="j1", pool_info=models.BatchPoolInfo(pool_id="p1")))
        client.create_task("j1", models.BatchTaskCreateOptions(id="t1", command_line="true"))
        assert [t.id for t in client.list_tasks("j1")] == ["t1"]
        writes = {
            "create": lambda: client.create_pool(models.BatchPoolCreateOptions(
                id="p2", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config())),
            "resize": lambda: client.begin_resize_pool("p1", models.BatchPoolResizeOptions(
                target_dedicated_nodes=1), polling_interval=0.1).result(),
            "enable autoscale": lambda: client.enable_pool_auto_scale("p1", models.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = 0;")),
            "disable autoscale": lambda: client.disable_pool_auto_scale("p1"),
            "patch": lambda: client.update_pool("p1", models.BatchPoolUpdateOptions(
                metadata=[models.BatchMetadataItem(name="a", value="b")])),
            "update properties": lambda: client.replace_pool_properties("p1", models.BatchPoolReplaceOptions(
                application_package_references=[], metadata=[])),
            "stop resize": lambda: client.begin_stop_pool_resize("p1", polling_interval=0.1).result(),
            "evaluate autoscale": lambda: client.evaluate_pool_auto_scale(
                "p1", models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 0;")),
            "delete": lambda: client.begin_delete_pool("p1", polling_interval=0.1).result(),
        }
        for what, call in writes.items():
            with pytest.raises(HttpResponseError) as caught:
                call()
            assert caught.value.status_code == 403 and caught.value.error.code == "AuthorizationFailed", what
            assert JOB_SUBMITTER in caught.value.error.message, what
        with batch.cond:
            pool = batch.pools["p1"]
            assert (pool.target_dedicated, pool.enable_autoscale, pool.state) == (0, False, "active")
            assert "p2" not in batch.pools
        # The account key (full access, as shared keys are on Azure) and a contributor may write.
        writer_name, writer_key = batch.add_identity(DATA_CONTRIBUTOR)
        writer = make_batch_client(batch, AzureNamedKeyCredential(writer_name, writer_key), retry_total=0)
        writer.update_pool("p1", models.BatchPoolUpdateOptions(
            metadata=[models.BatchMetadataItem(name="a", value="b")]))
        writer.close()
        assert batch.requests[-1].operation_id == "Pools_UpdatePool" and batch.requests[-1].status == 200
    finally:
        client.close()


def test_an_identity_is_forgotten_by_reset_and_its_key_is_checked(batch):
    from azure.batch import models

    name, key = batch.add_identity(JOB_SUBMITTER)
    wrong = make_batch_client(batch, AzureNamedKeyCredential(name, batch.key), retry_total=0)
    with pytest.raises(HttpResponseError) as caught:
        list(wrong.list_jobs())
    assert caught.value.error.code == "AuthenticationFailed"
    wrong.close()
    batch.reset()
    client = make_batch_client(batch, AzureNamedKeyCredential(name, key), retry_total=0)
    with pytest.raises(HttpResponseError) as caught:
        client.create_job(models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p")))
    assert caught.value.error.code == "AuthenticationFailed"
    client.close()


def test_a_bearer_token_carries_its_role_over_tls():
    """The realistic form: an Entra token with a role (other tokens keep full access)."""
    from azure.batch import models
    from azure.core.credentials import AccessToken

    from tests.batch_emulator.service import BatchEmulator

    class Token:
        def __init__(self, token: str) -> None:
            self.token = token

        def get_token(self, *scopes, **kwargs):
            return AccessToken(self.token, 4_102_444_800)

    svc = BatchEmulator(tls=True)
    svc.start()
    try:
        svc.grant_token("submitter-token", JOB_SUBMITTER)
        pool = models.BatchPoolCreateOptions(id="p", vm_size="Standard_D2s_v3",
                                             virtual_machine_configuration=vm_config(),
                                             target_dedicated_nodes=0)
        submitter = make_batch_client(svc, Token("submitter-token"), retry_total=0)
        with pytest.raises(HttpResponseError) as caught:
            submitter.create_pool(pool)
        assert caught.value.status_code == 403 and caught.value.error.code == "AuthorizationFailed"
        assert list(submitter.list_pools()) == []
        admin = make_batch_client(svc, Token("admin-token"), retry_total=0)
        admin.create_pool(pool)
        submitter.create_job(models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="p")))
        assert [j.id for j in submitter.list_jobs()] == ["j"]
        submitter.close()
        admin.close()
    finally:
        svc.stop()


# ---------------------------------------------------------------------------- the backend


@pytest.fixture
def submitter(batch, azurite, tmp_path, monkeypatch) -> Iterator:
    """Enter a profile whose Batch credential holds the Job Submitter role (fields given to the
    returned function), with the autoscale ticking as the service's timer would."""
    monkeypatch.chdir(tmp_path)
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            batch.autoscale_tick()
            stop.wait(0.2)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()

    class Enter:
        def __call__(self, role: str = JOB_SUBMITTER, **fields):
            name, key = batch.add_identity(role)
            self.cm = azure_profile(tmp_path / "config", batch, azurite, batch_account_name=name, **fields)
            self.cm.__enter__()
            monkeypatch.setenv("AZPAR_BATCH_KEY", key)
            return azpar_magic.session.engine()

    enter = Enter()
    try:
        yield enter
    finally:
        if hasattr(enter, "cm"):
            enter.cm.__exit__(None, None, None)
        stop.set()
        ticker.join(timeout=5)


def _admin_creates_the_pool(batch, batch_client, engine) -> None:
    """The administrator's pool, made from the same profile with the account key: empty, autoscale."""
    from azpar_magic.backends.azure import pool

    batch_client.create_pool(pool.pool_definition(engine.backend.profile))
    with batch.cond:
        assert batch.pools[POOL.lower()].enable_autoscale


AUTOSCALE = dict(autoscale="QUEUE", min_nodes=0, max_nodes=2, task_slots_per_node=2)


def test_job_submitter_runs_a_cell_on_the_administrators_empty_autoscale_pool(submitter, batch, batch_client, ip,
                                                                              run_cell):
    engine = submitter(create_pool=False, **AUTOSCALE)
    _admin_creates_the_pool(batch, batch_client, engine)
    since = len(batch.requests)
    ip.user_ns["K"] = 3
    run = run_cell("%%azpar -q -o out for x in range(6):\nx * K")
    assert run.success, run.error
    assert ip.user_ns["out"] == [x * 3 for x in range(6)]
    assert _pool_writes(batch, since) == [] and _refused(batch) == []
    said = [line for line in run.stderr.splitlines() if "is not resized for this run" in line]
    assert len(said) == 1, run.stderr
    assert "create_pool = false" in said[0] and "autoscale" in said[0]
    assert batch.requests_for("Jobs_CreateJob") and batch.requests_for("Tasks_CreateTaskCollection")


def test_job_submitter_with_create_pool_learns_once_that_it_may_not_resize(submitter, batch, batch_client, ip,
                                                                           run_cell):
    engine = submitter(**AUTOSCALE)  # create_pool = true (the default): it tries, is refused, goes on
    _admin_creates_the_pool(batch, batch_client, engine)
    run = run_cell("%%azpar -q -o out for x in range(5):\nx + 1")
    assert run.success, run.error
    assert ip.user_ns["out"] == [x + 1 for x in range(5)]
    assert [r.operation_id for r in _refused(batch)] == ["Pools_DisablePoolAutoScale"]
    said = [line for line in run.stderr.splitlines() if "is not resized for this run" in line]
    assert len(said) == 1 and JOB_SUBMITTER in said[0] and DATA_CONTRIBUTOR in said[0], run.stderr
    assert engine.backend.pool_writes is False
    # The pool drains back to empty; the next cell does not ask again.
    batch.wait_for(lambda svc: not svc.pools[POOL.lower()].nodes or
                   svc.pools[POOL.lower()].target_dedicated + svc.pools[POOL.lower()].target_low_priority == 0, 60)
    again = run_cell("%%azpar -q -o out2 for x in range(3):\n-x")
    assert again.success, again.error
    assert ip.user_ns["out2"] == [0, -1, -2]
    assert len(_refused(batch)) == 1


def test_job_submitter_on_a_missing_pool_gets_the_role_it_needs_before_anything_is_submitted(submitter, batch, ip,
                                                                                             run_cell):
    submitter(**AUTOSCALE)
    started = time.monotonic()
    run = run_cell("%%azpar -q -o never for x in range(4):\nx")
    assert not run.success and "never" not in ip.user_ns
    message = str(run.error)
    assert "does not exist" in message and DATA_CONTRIBUTOR in message and JOB_SUBMITTER in message, message
    assert "Nothing was submitted" in message
    assert [r.operation_id for r in _refused(batch)] == ["Pools_CreatePool"]
    assert not batch.requests_for("Jobs_CreateJob") and not batch.requests_for("Tasks_CreateTaskCollection")
    assert time.monotonic() - started < 30


def test_missing_pool_with_create_pool_false_names_the_role_too(submitter, batch, run_cell):
    submitter(create_pool=False, **AUTOSCALE)
    run = run_cell("%%azpar -q for x in range(2):\nx")
    assert not run.success
    assert "create_pool = false" in str(run.error) and DATA_CONTRIBUTOR in str(run.error)
    assert _pool_writes(batch) == [] and not batch.requests_for("Jobs_CreateJob")


def test_pool_commands_under_job_submitter_name_the_role(submitter, batch, batch_client, run_cell):
    engine = submitter(create_pool=False, **AUTOSCALE)
    _admin_creates_the_pool(batch, batch_client, engine)
    for line in ("%azpar pool resize 1 1", "%azpar pool delete"):
        run = run_cell(line)
        assert not run.success, line
        assert "may not" in str(run.error) and DATA_CONTRIBUTOR in str(run.error), run.error
    status = run_cell("%azpar pool status")
    assert status.success and POOL in status.stdout  # reading is allowed
    with batch.cond:
        assert batch.pools[POOL.lower()].state == "active"


def test_a_resize_that_fails_for_another_reason_is_said_and_the_run_waits_for_the_pool(submitter, batch,
                                                                                      batch_client, ip, run_cell):
    engine = submitter(role=DATA_CONTRIBUTOR, **AUTOSCALE)
    _admin_creates_the_pool(batch, batch_client, engine)
    batch.fail_requests(r"/pools/azpar-test/disableautoscale$", count=20, status=500)
    run = run_cell("%%azpar -q -o out for x in range(4):\nx * x")
    assert run.success, run.error
    assert ip.user_ns["out"] == [0, 1, 4, 9]
    said = [line for line in run.stderr.splitlines() if "is not resized for this run" in line]
    assert len(said) == 1 and "the resize failed" in said[0], run.stderr
    assert engine.backend.pool_writes is not False  # not a role problem: the next run tries again

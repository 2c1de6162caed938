"""``%azpar doctor`` against the test Batch service and Azurite: every line, with each role and
each fault the service models (issue 14). Real SDK clients, real requests; what a test
injects is the fault (a wrong key, a role, throttling, a closed port, a tampered SAS), never
the doctor's answer."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from azpar_magic import doctor, session
from azpar_magic.backends.azure import doctor as azure_doctor
from tests.batch_emulator.auth import JOB_SUBMITTER
from tests.batch_emulator.pytest_plugin import free_port

from .azure_support import azure_profile, write_profile_file
from .test_azure_quota import _wait_steady

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]
POOL = "azpar-test"
REPO = Path(__file__).resolve().parents[1]


def _statuses(report: doctor.DoctorReport) -> dict[str, str]:
    return {c.key: c.status for c in report.checks}


def _row(report: doctor.DoctorReport, key: str) -> doctor.Check:
    return next(c for c in report.checks if c.key == key)


@pytest.fixture
def profile(batch, azurite, tmp_path, monkeypatch):
    """Enter a profile (fields as given) made active, as tests/azure_support.py does."""
    monkeypatch.chdir(tmp_path)
    entered = []

    def enter(**fields):
        cm = azure_profile(tmp_path / "config", batch, azurite, **fields)
        entered.append(cm)
        return cm.__enter__()

    yield enter
    for cm in reversed(entered):
        cm.__exit__(None, None, None)


def _probe_blobs(blob_service) -> list[str]:
    from azure.core.exceptions import ResourceNotFoundError

    from azpar_magic.backends.azure import storage

    try:
        return [b.name for b in blob_service.get_container_client(storage.CACHE_CONTAINER)
                .list_blobs(name_starts_with=azure_doctor.PROBE_BLOB_PREFIX)]
    except ResourceNotFoundError:
        return []


def test_account_key_and_no_pool_yet_every_line_ok_and_nothing_left_behind(profile, batch, blob_service):
    name = profile()
    report = doctor.diagnose(name)
    assert _statuses(report) == {"profile": "ok", "credential": "ok", "batch": "ok", "submit": "ok",
                                 "pool_write": "ok", "pool": "ok", "image": "ok", "storage": "ok", "sas": "ok",
                                 "autoscale": "skipped"}, report.text()
    assert not report.failed
    assert "does not exist yet" in _row(report, "pool").detail
    assert "fixed node counts" in _row(report, "autoscale").detail
    # The probes wrote nothing to Batch: no pool, no job; and the SAS blob is gone again.
    with batch.cond:
        assert not batch.pools and not batch.jobs
    ops = {r.operation_id for r in batch.requests}
    assert {"Jobs_UpdateJob", "Pools_UpdatePool", "Pools_ListSupportedImages", "Pools_GetPool"} <= ops
    assert not ops & {"Pools_AddPool", "Jobs_AddJob", "Pools_EvaluatePoolAutoScale"}
    assert _probe_blobs(blob_service) == []


def test_a_wrong_batch_key_is_one_failed_line_and_the_batch_checks_skip(profile, monkeypatch):
    name = profile()
    monkeypatch.setenv("AZPAR_BATCH_KEY", base64.b64encode(b"k" * 64).decode())
    report = doctor.diagnose(name)
    s = _statuses(report)
    assert (s["credential"], s["batch"]) == ("ok", "failed")
    assert all(s[k] == "skipped" for k in ("submit", "pool_write", "pool", "image", "autoscale")), report.text()
    assert (s["storage"], s["sas"]) == ("ok", "ok")  # Storage has its own key
    batch_row = _row(report, "batch")
    assert "AuthenticationFailed" in batch_row.detail and "AZPAR_BATCH_KEY" in batch_row.fix
    assert "not checked: Batch account failed" in _row(report, "submit").detail


def test_a_missing_key_fails_the_credential_and_skips_everything_after(profile, monkeypatch):
    name = profile()
    monkeypatch.delenv("AZPAR_STORAGE_KEY")
    report = doctor.diagnose(name)
    s = _statuses(report)
    assert s["credential"] == "failed"
    assert {k for k, v in s.items() if v == "skipped"} == {"batch", "submit", "pool_write", "pool", "image",
                                                          "storage", "sas", "autoscale"}
    assert "AZPAR_STORAGE_KEY" in _row(report, "credential").detail


def test_an_identity_without_a_token_fails_the_credential_with_how_to_sign_in(profile, monkeypatch):
    """auth = default with nothing to sign in with: DefaultAzureCredential raises
    ClientAuthenticationError from get_token. A stand-in class raises it here: the real one
    would look for a managed identity on the network."""
    import azure.identity
    from azure.core.exceptions import ClientAuthenticationError

    class NoSignIn:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included "
                                            "credentials.")

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", NoSignIn)
    name = profile(auth="default")
    report = doctor.diagnose(name)
    row = _row(report, "credential")
    assert row.status == "failed" and "auth = default: no token (DefaultAzureCredential failed" in row.detail
    assert "az login" in row.fix
    assert all(c.status == "skipped" for c in report.checks[2:])


def test_a_wrong_storage_key_fails_storage_and_skips_the_sas(profile, monkeypatch):
    name = profile()
    monkeypatch.setenv("AZPAR_STORAGE_KEY", base64.b64encode(b"s" * 64).decode())
    report = doctor.diagnose(name)
    s = _statuses(report)
    assert (s["batch"], s["storage"], s["sas"]) == ("ok", "failed", "skipped"), report.text()
    assert "AZPAR_STORAGE_KEY" in _row(report, "storage").fix


def test_an_invalid_profile_fails_first_and_nothing_is_asked(batch, azurite, tmp_path, monkeypatch):
    from azpar_magic import config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    write_profile_file(config.user_config_path(), batch, azurite, "broken", batch_account_url="")
    since = len(batch.requests)
    report = doctor.diagnose("broken")
    assert report.checks[0].status == "failed" and "batch_account_url is missing" in report.checks[0].detail
    assert all(c.status == "skipped" for c in report.checks[1:]) and len(report.checks) == 10
    assert len(batch.requests) == since


def test_job_submitter_may_submit_but_not_write_pools_nor_create_the_missing_pool(profile, batch, monkeypatch):
    name, key = batch.add_identity(JOB_SUBMITTER)
    prof = profile(batch_account_name=name)
    monkeypatch.setenv("AZPAR_BATCH_KEY", key)
    report = doctor.diagnose(prof)
    s = _statuses(report)
    assert (s["submit"], s["pool_write"], s["pool"]) == ("ok", "warning", "failed"), report.text()
    assert JOB_SUBMITTER in _row(report, "pool_write").detail
    assert "Azure Batch Data Contributor" in _row(report, "pool_write").fix
    assert "may not create it" in _row(report, "pool").detail
    assert s["autoscale"] == "skipped" and report.failed
    refused = [r.operation_id for r in batch.requests if r.error_code == "AuthorizationFailed"]
    assert refused == ["Pools_UpdatePool"]
    with batch.cond:
        assert not batch.pools and not batch.jobs


def test_a_role_without_job_writes_fails_job_submission(profile, batch, monkeypatch):
    """The test service models no reader role (its permission word "jobs" covers reads and
    writes alike), so this test adds one to its role table: pools and account reads only.
    The service's own authorization then refuses the doctor's job write with 403."""
    from tests.batch_emulator import auth

    reader = "Test Reader (pools and account reads only)"
    monkeypatch.setitem(auth.ROLES, reader, frozenset({"pools/read", "applications/read", "account/read"}))
    name, key = batch.add_identity(reader, name="testreader")
    prof = profile(batch_account_name=name)
    monkeypatch.setenv("AZPAR_BATCH_KEY", key)
    report = doctor.diagnose(prof)
    s = _statuses(report)
    assert (s["batch"], s["submit"], s["pool_write"]) == ("ok", "failed", "warning"), report.text()
    row = _row(report, "submit")
    assert "may not submit jobs" in row.detail and "Azure Batch Job Submitter" in row.fix
    with batch.cond:
        assert not batch.jobs


def test_job_submitter_on_the_administrators_autoscale_pool_is_ready_without_evaluating(profile, batch,
                                                                                        batch_client, monkeypatch):
    from azpar_magic.backends.azure import pool

    fields = dict(autoscale="QUEUE", min_nodes=0, max_nodes=2, create_pool=False)
    admin = profile(**fields)
    batch_client.create_pool(pool.pool_definition(session.engine(profile=admin).backend.profile))
    name, key = batch.add_identity(JOB_SUBMITTER)
    prof = profile(batch_account_name=name, **fields)
    monkeypatch.setenv("AZPAR_BATCH_KEY", key)
    report = doctor.diagnose(prof)
    s = _statuses(report)
    assert (s["submit"], s["pool_write"], s["pool"], s["image"]) == ("ok", "warning", "ok", "ok"), report.text()
    assert s["autoscale"] == "skipped" and "may not evaluate" in _row(report, "autoscale").detail
    assert not report.failed
    assert not batch.requests_for("Pools_EvaluatePoolAutoScale")


def test_a_missing_pool_the_profile_may_not_create_fails(profile):
    report = doctor.diagnose(profile(create_pool=False))
    row = _row(report, "pool")
    assert row.status == "failed" and "create_pool = false" in row.detail


@pytest.mark.parametrize("image, agent, status, words", [
    ("canonical:0001-com-ubuntu-server-jammy:22_04-lts", "batch.node.ubuntu 22.04", "failed", "cannot run containers"),
    ("microsoft-dsvm:ubuntu-hpc:2204", "batch.node.ubuntu 24.04", "failed",
     "goes with node agent batch.node.ubuntu 22.04"),
    ("nobody:nothing:none", "batch.node.ubuntu 22.04", "failed", "not among the account's supported images"),
    ("microsoft-azure-batch:ubuntu-server-container:20-04-lts", "batch.node.ubuntu 20.04", "warning",
     "Batch support ended on 2025-04-23"),
])
def test_image_and_node_agent_pairs_from_the_supported_images_list(profile, image, agent, status, words):
    report = doctor.diagnose(profile(image=image, node_agent_sku=agent))
    row = _row(report, "image")
    assert row.status == status and words in row.detail, report.text()
    assert "batch.node.ubuntu 22.04" in row.fix  # the pair to use instead


def test_the_existing_pools_image_is_checked_not_the_profiles(profile, batch_client):
    from azure.batch import models

    from tests.emulator.helpers import vm_config

    name = profile()
    batch_client.create_pool(models.BatchPoolCreateOptions(id=POOL, vm_size="Standard_D2s_v3",
                                                           virtual_machine_configuration=vm_config(),
                                                           target_dedicated_nodes=0))
    report = doctor.diagnose(name)
    assert "(pool azpar-test)" in _row(report, "image").detail, report.text()


def test_throttling_is_waited_out_and_said(profile, batch):
    name = profile()
    batch.faults.throttle(r"/pools/azpar-test$", count=1, retry_after=2)
    waits: list[float] = []
    report = doctor.diagnose(name, sleep=waits.append)
    row = _row(report, "batch")
    assert row.status == "warning" and "throttled 1x (429 TooManyRequests, Retry-After 2 s)" in row.detail
    assert waits == [2.0] and not report.failed


def test_throttling_that_does_not_stop_fails_the_line(profile, batch):
    name = profile()
    batch.faults.throttle(r"/pools/azpar-test$", count=20, status=503, retry_after=1)
    waits: list[float] = []
    report = doctor.diagnose(name, sleep=waits.append)
    row = _row(report, "batch")
    assert row.status == "failed" and "503 ServerBusy" in row.detail and "wait a minute" in row.fix
    assert len(waits) == azure_doctor.THROTTLE_ATTEMPTS - 1


def test_unreachable_storage_fails_storage_and_skips_the_sas(profile, azurite):
    name = profile(storage_account_url=f"http://127.0.0.1:{free_port()}/{azurite.account_name}")
    report = doctor.diagnose(name)
    s = _statuses(report)
    assert (s["batch"], s["storage"], s["sas"]) == ("ok", "failed", "skipped"), report.text()
    assert "no answer from" in _row(report, "storage").detail


def test_a_sas_the_account_refuses_fails_the_round_trip(profile, monkeypatch, blob_service):
    """A token whose signature does not match (as after a key rotation): Azurite refuses it."""
    from azpar_magic.backends.azure import storage

    name = profile()
    signed = storage.Staging.blob_sas_url

    def tampered(self, container, blob, permission, expiry):
        url = signed(self, container, blob, permission, expiry)
        return url.replace("sig=", "sig=AAAA")

    monkeypatch.setattr(storage.Staging, "blob_sas_url", tampered)
    report = doctor.diagnose(name)
    row = _row(report, "sas")
    assert row.status == "failed" and "write through the create+write SAS failed (HTTP 403)" in row.detail
    assert "AZPAR_STORAGE_KEY" in row.fix
    assert _probe_blobs(blob_service) == []


def test_the_profiles_formula_evaluates_on_its_autoscale_pool_without_changing_it(profile, batch):
    name = profile(autoscale="QUEUE", min_nodes=0, max_nodes=2)
    session.pool_action(name, "create")
    with batch.cond:
        before = (batch.pools[POOL].target_dedicated, batch.pools[POOL].target_low_priority)
    report = doctor.diagnose(name)
    row = _row(report, "autoscale")
    assert row.status == "ok" and "$TargetDedicatedNodes=0" in row.detail.replace(" ", ""), report.text()
    assert len(batch.requests_for("Pools_EvaluatePoolAutoScale")) == 1
    with batch.cond:
        assert (batch.pools[POOL].target_dedicated, batch.pools[POOL].target_low_priority) == before


def test_a_formula_the_service_refuses_fails_the_line(profile, monkeypatch):
    name = profile(autoscale="QUEUE", min_nodes=0, max_nodes=2)
    session.pool_action(name, "create")
    monkeypatch.setattr(azure_doctor.autoscale, "formula", lambda *a, **k: "$TargetDedicatedNodes = max(;")
    row = _row(doctor.diagnose(name), "autoscale")
    assert row.status == "failed" and "QUEUE was refused (400" in row.detail


def test_a_fixed_size_pool_is_not_evaluated(profile):
    name = profile()
    session.pool_action(name, "create")
    fixed = profile(autoscale="QUEUE")
    row = _row(doctor.diagnose(fixed), "autoscale")
    assert row.status == "skipped" and "fixed size" in row.detail


def test_run_sends_one_iteration_through_the_engine(profile, batch):
    report = doctor.diagnose(profile(), run=True)
    row = _row(report, "run")
    assert row.status == "ok" and "one iteration ran" in row.detail, report.text()


def test_the_magic_shows_one_table_as_html_and_text(profile, run_cell):
    name = profile()
    run = run_cell(f"%azpar doctor {name}")
    assert run.success, run.error
    (shown,) = run.outputs
    html, text = shown.data["text/html"], shown.data["text/plain"]
    assert html.count('class="azpar-doctor-row"') == 10 and 'data-check="sas" data-status="ok"' in html
    assert text.startswith(f"azpar doctor, profile {name} (azure backend): ready")


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "azpar_magic", "doctor", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_the_cli_prints_the_table_and_exits_1_only_when_a_line_failed(profile, tmp_path):
    name = profile()
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(REPO)
    ok = _cli([name], env, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ready" in ok.stdout.splitlines()[0] and "SAS round trip" in ok.stdout
    env["AZPAR_BATCH_KEY"] = base64.b64encode(b"x" * 64).decode()
    bad = _cli([name], env, tmp_path)
    assert bad.returncode == 1 and "AuthenticationFailed" in bad.stdout
    assert "fix: The environment variable AZPAR_BATCH_KEY" in bad.stdout


def _pool_with_nodes(batch, name: str, state: str) -> None:
    session.pool_action(name, "create")
    batch.wait_for(lambda svc: [n.state for n in svc.pools[POOL].nodes.values()] == [state] * 2, timeout=60)


def test_nodes_whose_start_task_failed_fail_the_pool_line(profile, batch):
    name = profile()
    batch.fail_start_task(POOL, count=100)
    _pool_with_nodes(batch, name, "starttaskfailed")
    row = _row(doctor.diagnose(name), "pool")
    assert row.status == "failed" and "2 of 2 nodes starttaskfailed" in row.detail, row
    assert "start task failed" in row.fix


def test_an_image_that_cannot_be_pulled_fails_the_pool_line_naming_it(profile, batch):
    name = profile(container_image="example.invalid/nothing:1.0")
    batch.faults.fail_image_pull("example.invalid/nothing:1.0")
    _pool_with_nodes(batch, name, "unusable")
    row = _row(doctor.diagnose(name), "pool")
    assert row.status == "failed" and "nodes unusable" in row.detail and "ContainerInvalidImage" in row.detail, row
    assert "example.invalid/nothing:1.0" in row.detail + row.fix


def test_a_pool_the_core_quota_leaves_empty_fails_the_pool_line_with_the_quota_fix(profile, batch, run_cell):
    name = profile()
    batch.core_quota = {"dedicated": 0, "lowPriority": None}
    run_cell(f"%azpar pool create --profile {name}")
    assert _wait_steady(batch, POOL)["errors"] == ["AccountCoreQuotaReached"]
    row = _row(doctor.diagnose(name), "pool")
    assert row.status == "failed" and "AccountCoreQuotaReached" in row.detail and "no task can run" in row.detail, row
    assert "Quotas" in row.fix, row

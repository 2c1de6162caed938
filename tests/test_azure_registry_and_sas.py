"""Two details of the Azure backend that real services decide: the container registry's
credentials live on the pool only, and SAS tokens signed with a user delegation key end within
the 7 days such a key may live."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from azpar_magic.backends.azure import storage

from .azure_support import azure_profile

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY = 86400.0


# ------------------------------------------------------------------ registry (pool.py container_settings)


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_task_definitions_leave_the_registry_to_the_pool(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, registry_server="myreg.azurecr.io",
                       registry_username="puller", container_image="myreg.azurecr.io/azpar-node:1"):
        monkeypatch.setenv("AZPAR_REGISTRY_PASSWORD", "s3cret-registry-password")
        run = run_cell("%%azpar -q --keep --merge cloud -o out for x in range(3):\nx * 2")
        assert run.success, run.error
        assert ip.user_ns["out"] == [0, 2, 4]
    created = batch.requests_for("Pools_CreatePool")[0].body
    registries = created["virtualMachineConfiguration"]["containerConfiguration"]["containerRegistries"]
    assert registries == [{"registryServer": "myreg.azurecr.io", "username": "puller",
                           "password": "s3cret-registry-password"}]
    # Tasks, the merge task, the job preparation task and the start task name the image only.
    bodies = [t for r in batch.requests_for("Tasks_CreateTaskCollection") for t in r.body["value"]]
    bodies += [r.body for r in batch.requests_for("Tasks_CreateTask")]
    job = batch.requests_for("Jobs_CreateJob")[0].body
    settings = [b["containerSettings"] for b in bodies]
    settings += [job["jobPreparationTask"]["containerSettings"], created["startTask"]["containerSettings"]]
    assert len(bodies) == 4 and {b["id"] for b in bodies} == {"1", "2", "3", "merge"}
    for item in settings:
        assert item == {"imageName": "myreg.azurecr.io/azpar-node:1"}, item


# ------------------------------------------------------------------ SAS lifetimes (storage.py)


def test_delegation_signed_expiry_is_capped_at_seven_days():
    wanted = NOW + dt.timedelta(days=10)
    capped = storage.signed_expiry(wanted, delegation=True, now=NOW)
    assert capped <= NOW + dt.timedelta(days=7)
    assert capped >= NOW + dt.timedelta(days=7) - dt.timedelta(minutes=5)
    short = NOW + dt.timedelta(hours=25)
    assert storage.signed_expiry(short, delegation=True, now=NOW) == short  # within the limit: unchanged


def test_shared_key_expiry_is_unchanged():
    wanted = NOW + dt.timedelta(days=10)
    assert storage.signed_expiry(wanted, delegation=False, now=NOW) == wanted


def test_the_cell_is_told_when_a_job_outlives_its_delegation_tokens():
    delegated, keyed = SimpleNamespace(delegation=True), SimpleNamespace(delegation=False)
    note = storage.delegation_note(delegated, 10 * DAY)
    assert "10.0 days" in note and "at most 7 days" in note and "shared-key" in note
    assert storage.delegation_note(keyed, 10 * DAY) == ""
    assert storage.delegation_note(delegated, DAY) == ""  # the default job_timeout
    assert storage.delegation_note(delegated, 7 * DAY) != ""  # + the 30-minute upload margin is past 7 days


def _expiry_of(url: str) -> dt.datetime:
    se = parse_qs(urlsplit(url).query)["se"][0]
    return dt.datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_staging_signs_a_ten_day_job_for_seven_days_with_a_delegation_key(monkeypatch):
    """A Staging on a token credential signs with a user delegation key; the key asked for and
    every SAS end within 7 days (the service refuses a longer key). The key request is the one
    network call, answered here by a stand-in key (this is a unit test of storage.py)."""
    from azure.storage.blob import UserDelegationKey

    class Token:
        def get_token(self, *scopes, **kwargs):  # never called: nothing reaches the network
            raise AssertionError("no token is needed to sign")

    st = storage.Staging("https://acct.blob.core.windows.net", "acct", Token())
    asked: list[tuple[dt.datetime, dt.datetime]] = []

    def fake_key(start, expiry, **kwargs):
        asked.append((start, expiry))
        key = UserDelegationKey()
        key.signed_oid, key.signed_tid, key.signed_service, key.signed_version = "oid", "tid", "b", "2025-01-05"
        key.signed_start = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.signed_expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        key.value = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="
        return key

    monkeypatch.setattr(st.service, "get_user_delegation_key", fake_key)
    try:
        assert st.delegation
        now = dt.datetime.now(UTC)
        expiry = storage.Staging.expiry_for(10 * DAY)
        for url in (st.container_sas_url("c", "r", expiry), st.blob_sas_url("c", "b", "w", expiry)):
            assert now + dt.timedelta(days=6, hours=23) < _expiry_of(url) <= now + dt.timedelta(days=7)
        assert asked and all(end <= now + dt.timedelta(days=7) for _, end in asked)
    finally:
        st.close()
    keyed = storage.Staging("https://acct.blob.core.windows.net", "acct",
                            AzureNamedKeyCredential("acct", "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="))
    try:
        assert not keyed.delegation
        url = keyed.container_sas_url("c", "r", expiry)
        assert abs((_expiry_of(url) - expiry).total_seconds()) < 1  # shared key: the job's full lifetime
    finally:
        keyed.close()

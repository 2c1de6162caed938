"""Authentication and the service's validation rules, seen through the real SDK."""
from __future__ import annotations

import base64
import json

import pytest
from azure.batch import models
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError
from azure.core.rest import HttpRequest

from tests.batch_emulator.pytest_plugin import make_batch_client

from .helpers import new_job, pool_options, sh, task, wait_tasks_done

pytestmark = pytest.mark.timeout(60)


def test_wrong_key_is_403_authentication_failed(batch):
    wrong = base64.b64encode(b"not the key" * 6).decode()
    client = make_batch_client(batch, AzureNamedKeyCredential(batch.account, wrong))
    with pytest.raises(HttpResponseError) as e:
        list(client.list_pools())
    assert e.value.status_code == 403 and e.value.error.code == "AuthenticationFailed"
    other = make_batch_client(batch, AzureNamedKeyCredential("otheraccount", batch.key))
    with pytest.raises(HttpResponseError) as e:
        other.get_job_task_counts("x")
    assert e.value.status_code == 403


def test_signature_covers_query_and_body(batch, batch_client):
    # A request signed for one query string must not be accepted for another.
    req = HttpRequest("GET", "/pools", params={"api-version": "2025-06-01", "maxresults": "5"})
    assert batch_client.send_request(req).status_code == 200
    rec = batch.requests[-1]
    assert rec.headers["Authorization"] == "SharedKey [redacted]" or "[redacted]" in rec.headers["Authorization"]
    import urllib.request

    from tests.batch_emulator import auth
    headers = {"ocp-date": rec.headers["ocp-date"]}
    sig = auth.sign(batch.key, auth.string_to_sign("GET", "/pools", "api-version=2025-06-01&maxresults=5",
                                                   headers, batch.account))
    tampered = urllib.request.Request(f"{batch.url}/pools?api-version=2025-06-01&maxresults=6",
                                      headers={**headers, "Authorization": f"SharedKey {batch.account}:{sig}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(tampered, timeout=5)
    assert e.value.code == 403 and json.loads(e.value.read())["code"] == "AuthenticationFailed"
    missing = urllib.request.Request(f"{batch.url}/pools?api-version=2025-06-01")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(missing, timeout=5)
    assert e.value.code == 401


class StubToken:
    """A stand-in TokenCredential: never contacts any identity endpoint."""

    def __init__(self, token: str = "stub-token") -> None:
        self.token = token
        self.scopes: list[tuple] = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        return AccessToken(self.token, 4_102_444_800)


def test_bearer_token_over_tls():
    from tests.batch_emulator.service import BatchEmulator

    svc = BatchEmulator(tls=True, token_validator=lambda t: t == "good-token")
    svc.start()
    try:
        cred = StubToken("good-token")
        client = make_batch_client(svc, cred)
        assert list(client.list_pools()) == []
        assert cred.scopes and cred.scopes[0] == ("https://batch.core.windows.net//.default",)
        with pytest.raises(ClientAuthenticationError):
            list(make_batch_client(svc, StubToken("bad-token")).list_pools())
        assert list(make_batch_client(svc).list_pools()) == []   # shared key works over https too
    finally:
        svc.stop()


def test_task_collection_limits_and_duplicates(batch_client, batch):
    new_job(batch_client)
    too_many = models.BatchTaskGroup(task_values=[task(str(i), "/bin/true") for i in range(101)])
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_task_collection("job1", too_many)
    assert e.value.status_code == 413 and e.value.error.code == "RequestBodyTooLarge"
    big = "x" * 20000
    too_big = models.BatchTaskGroup(task_values=[task(str(i), f"/bin/echo {big}") for i in range(60)])
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_task_collection("job1", too_big)
    assert e.value.status_code == 413
    batch_client.create_task("job1", task("Task-1", "/bin/true"))
    res = batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task("task-1", "/bin/true"), task("task-2", "/bin/true"), task("bad id!", "/bin/true"),
        task("x" * 65, "/bin/true")]))
    by_id = {r.task_id: r for r in res.result_values}
    assert by_id["task-1"].status == "clienterror" and by_id["task-1"].error.code == "TaskExists"
    assert by_id["task-2"].status == "success"
    assert by_id["bad id!"].error.code == "InvalidPropertyValue"
    assert by_id["x" * 65].error.code == "InvalidPropertyValue"
    # the SDK's own create_tasks halves chunks on 413 and succeeds
    result = batch_client.create_tasks("job1", [task(f"big{i}", f"/bin/echo {big}") for i in range(60)])
    assert len(result.result_values) == 60


def _send(client, method, path, body=None, version="2025-06-01"):
    with pytest.raises(HttpResponseError) as e:
        client.send_request(HttpRequest(method, path, params={"api-version": version}, json=body))
    return e.value


def test_schema_validation_errors(batch_client, batch):
    err = _send(batch_client, "POST", "/jobs", {"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "x"})
    assert err.status_code == 400 and err.error.code == "InvalidPropertyValue"
    assert any(d.code == "PropertyName" and d.message == "onAllTasksComplete" for d in err.error.details)
    err = _send(batch_client, "POST", "/jobs", {"poolInfo": {"poolId": "p"}})
    assert err.status_code == 400 and err.error.code == "MissingRequiredProperty"
    err = _send(batch_client, "POST", "/jobs", {"id": "j", "poolInfo": {"poolId": "p"}, "priority": "high"})
    assert err.status_code == 400 and err.error.code == "InvalidPropertyValue"
    err = _send(batch_client, "GET", "/pools", version="2024-07-01.20.0")
    assert err.status_code == 400
    raw = json.loads(err.response.text())
    assert raw["message"]["lang"] == "en-US" and raw["values"][0]["key"] == "QueryParameterName"
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_pool(pool_options("p1", slots=9))   # D2s_v3: at most 4 x 2 vCPUs
    assert e.value.error.code == "InvalidPropertyValue"
    assert batch.jobs == {} and batch.pools == {}
    # unknown properties are dropped, not stored or echoed (as the service does with retired fields)
    resp = batch_client.send_request(HttpRequest("POST", "/jobs", params={"api-version": "2025-06-01"},
                                                 json={"id": "j", "poolInfo": {"poolId": "p"}, "colour": "red"}))
    assert resp.status_code == 201 and "colour" not in batch_client.get_job("j").as_dict()


def test_dependency_and_exit_condition_rules(batch_client, batch):
    new_job(batch_client, "plain")
    with pytest.raises(ResourceExistsError) as e:
        batch_client.create_task("plain", task("t", "/bin/true", depends_on=models.BatchTaskDependencies(
            task_ids=["a"])))
    assert e.value.error.code == "TaskDependenciesNotSpecifiedOnJob"
    new_job(batch_client, "deps", uses_task_dependencies=True)
    long_ids = [f"{i:063d}" for i in range(1100)]   # 69,300 characters
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_task("deps", task("t", "/bin/true", depends_on=models.BatchTaskDependencies(
            task_ids=long_ids)))
    assert e.value.error.code == "TaskDependencyListTooLong"
    exit_terminate = models.ExitConditions(exit_codes=[models.ExitCodeMapping(
        code=3, exit_options=models.ExitOptions(job_action="terminate"))])
    with pytest.raises(HttpResponseError) as e:
        batch_client.create_task("plain", task("t", "/bin/true", exit_conditions=exit_terminate))
    assert e.value.status_code == 400


def test_exit_condition_job_action_terminates_job(batch_client, batch):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client, task_failure_mode="performexitoptionsjobaction")
    batch_client.create_task("job1", task("t", sh("exit 3"), exit_conditions=models.ExitConditions(
        exit_codes=[models.ExitCodeMapping(code=3, exit_options=models.ExitOptions(job_action="terminate"))])))
    wait_tasks_done(batch_client, "job1", 1)
    from .helpers import wait_until
    job = wait_until(lambda: (j := batch_client.get_job("job1")).state == "completed" and j, 10)
    assert job.execution_info.termination_reason == "TaskFailed"


def test_requests_are_recorded_without_secrets(batch_client, batch):
    new_job(batch_client, common_environment_settings=[models.EnvironmentSetting(name="A", value="1")])
    rec = [r for r in batch.requests if r.operation_id == "Jobs_CreateJob"]
    assert len(rec) == 1 and rec[0].body["commonEnvironmentSettings"] == [{"name": "A", "value": "1"}]
    assert rec[0].method == "POST" and rec[0].path == "/jobs" and rec[0].status == 201
    assert rec[0].query["api-version"] == "2025-06-01"
    assert all(batch.key not in json.dumps(r.headers) for r in batch.requests)
    assert all("[redacted]" in r.headers.get("Authorization", "[redacted]") for r in batch.requests)

"""The official wire examples (reference/.../examples/*.json) that fall within the served subset:
each request is accepted, and each response the example shows is matched field for field
(top-level keys) by the emulator's response, which also deserialises into the SDK's model.

The examples are not in the repository: these tests run only where the official reference folder
is present (see reference.py) and are skipped, with that reason, elsewhere."""
from __future__ import annotations

import json

import pytest
from azure.batch import models
from azure.core.rest import HttpRequest

from tests.batch_emulator.handlers import HANDLERS
from tests.batch_emulator.spec import load_spec

from . import reference
from .helpers import new_job, pool_options, sh, task, wait_nodes_idle, wait_until

pytestmark = [pytest.mark.timeout(60), reference.requires_reference()]
EXAMPLES = sorted(reference.examples_dir().glob("*.json")) if reference.present() else []
# Response fields the emulator does not produce (statistics and the job release task).
NOT_EMULATED = {"stats", "jobReleaseTaskExecutionInfo", "odata.nextLink", "resizeErrors",
                # present only after a state change the example's resource went through
                "previousState", "previousStateTransitionTime"}
KNOWN_PARAMS = {"batchUrl", "api-version", "client-request-id", "ocp-date", "timeout", "maxresults",
                "$filter", "$select", "$expand", "recursive", "force"}


def _example_id(path):
    return path.stem


def _setup(client, batch, op_id: str, params: dict) -> dict:
    """Create what the example's request refers to; returns substitutions for path/body."""
    subs: dict = {}
    pool_id = params.get("poolId")
    if op_id in ("Pools_ListPools", "Pools_ListPoolNodeCounts"):
        pool_id = "listedpool"
    if pool_id and op_id not in ("Pools_CreatePool",):
        client.create_pool(pool_options(pool_id, dedicated=2, start_task=models.BatchStartTask(
            command_line="/bin/true", wait_for_success=True)))
        nodes = wait_nodes_idle(client, pool_id, 2)
        subs["nodes"] = [n.id for n in nodes]
        if op_id == "Pools_ResizePool":
            pass
    job_id = params.get("jobId")
    if job_id and op_id != "Jobs_CreateJob":
        client.create_pool(pool_options("examplepool", dedicated=1,
                                        container=op_id == "Tasks_CreateTask" and "containerSettings" in json.dumps(params)))
        prep = models.BatchJobPreparationTask(command_line="/bin/true") \
            if op_id == "Jobs_ListJobPreparationAndReleaseTaskStatus" else None
        new_job(client, job_id, "examplepool", job_preparation_task=prep)
        task_id = params.get("taskId") or ("t1" if prep else None)
        if task_id:
            body = sh("mkdir -p sub; echo test file body | head -c14 > testFile.txt")  # no nested quotes
            client.create_task(job_id, task(task_id, body))
            wait_until(lambda: client.get_task(job_id, task_id).state == "completed", 10)
        if op_id == "Tasks_ListTasks":
            client.create_task(job_id, task("listed", "/bin/true"))
        if op_id == "Jobs_UpdateJob":   # poolInfo may only change while the job is disabled
            client.begin_disable_job(job_id, models.BatchJobDisableOptions(disable_tasks="requeue"),
                                     polling_interval=0.05).result()
    return subs


@pytest.mark.parametrize("path", EXAMPLES, ids=_example_id)
def test_official_example(path, batch_client, batch):
    spec = load_spec()
    ex = json.loads(path.read_text())
    op_id = ex["operationId"]
    if op_id not in HANDLERS:
        pytest.skip(f"{op_id} is outside the served subset")
    route = spec.by_operation[op_id]
    params = ex["parameters"]
    subs = _setup(batch_client, batch, op_id, params)
    if op_id == "Pools_CreatePool":
        # The examples pair images and node agents loosely (ubuntu-24_04-lts with batch.node.ubuntu
        # 20.04): they show the wire shape, not a pool the supported-images rule would accept.
        batch.faults.rules.images = False
    url = route.template
    for name in route.param_names:
        value = params[name]
        if name == "nodeId":
            value = subs["nodes"][0]
        url = url.replace("{" + name + "}", value.replace("\\", "%5C") if name == "filePath" else value)
    body = None
    body_schema, _ = spec.body_schema(route)
    if body_schema is not None:
        candidates = [v for k, v in params.items() if k not in KNOWN_PARAMS and k not in route.param_names
                      and isinstance(v, dict)]
        body = candidates[0] if candidates else None
        if op_id == "Pools_RemoveNodes":
            body = {**body, "nodeList": subs["nodes"][:1]}
    query = {"api-version": "2025-06-01"}
    req = HttpRequest(route.method, url, params=query, json=body) if body is not None else \
        HttpRequest(route.method, url, params=query)
    resp = batch_client.send_request(req, stream=op_id == "Tasks_GetTaskFile")
    expected_status = [int(s) for s in ex["responses"] if s.isdigit()]
    assert resp.status_code in expected_status, resp.text()
    example_body = ex["responses"].get(str(resp.status_code), {}).get("body")
    if isinstance(example_body, dict):
        ours = resp.json()
        ex_item, our_item = example_body, ours
        if "value" in example_body and isinstance(example_body["value"], list) and example_body["value"]:
            assert ours["value"], "emulator returned an empty list"
            ex_item, our_item = example_body["value"][0], ours["value"][0]
        missing = set(ex_item) - set(our_item) - NOT_EMULATED
        assert not missing, f"fields in the example but not in the emulator's response: {missing}"
        # Response schemas are not among the service's API facts: read them from the document.
        doc = reference.official()
        response_schema = doc["paths"][route.template][route.method.lower()]["responses"][str(resp.status_code)]["schema"]
        ref = response_schema.get("$ref", "")
        name = ref.split("/")[-1]
        schema = doc["definitions"][name] if name else response_schema
        if "value" in schema.get("properties", {}):
            name = schema["properties"]["value"]["items"]["$ref"].split("/")[-1]
        model = getattr(models, name, None)
        if model is not None:
            obj = model(our_item)
            for key in ex_item:
                if key in NOT_EMULATED:
                    continue
                attr = _attr_for(model, key)
                if attr:
                    assert getattr(obj, attr) is not None, f"{name}.{attr} did not deserialise"
    if op_id.startswith("Tasks_GetTaskFile"):
        for header in ("ocp-creation-time", "Last-Modified", "ocp-batch-file-isdirectory", "Content-Length"):
            assert header in resp.headers
        if op_id == "Tasks_GetTaskFile":
            assert resp.read() == b"test file body"


def _attr_for(model, rest_name: str):
    for attr, field in getattr(model, "_attr_to_rest_field", {}).items():
        if field._rest_name == rest_name:
            return attr
    return None


def test_examples_were_found():
    assert len(EXAMPLES) >= 20
    served = [p for p in EXAMPLES if json.loads(p.read_text())["operationId"] in HANDLERS]
    assert len(served) == len(EXAMPLES)

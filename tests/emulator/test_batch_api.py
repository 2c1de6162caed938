"""The API facts the test Batch service runs on (tests/batch_emulator/batch_api.json).

They are the repository's own file, derived from the official OpenAPI document by
scripts/derive_batch_api.py, so the service needs nothing outside the repository. These tests
check that the file holds facts only, that request validation through it refuses bad bodies with
the service's codes, that it reads no file beside the repository, and, where the official
document is present, that the file is exactly what the script derives from it (no drift) and
validates exactly as the whole document does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.batch_emulator.errors import BatchServiceError
from tests.batch_emulator.spec import API_FACTS, Spec, load_spec

from . import reference

REPO = reference.REPO
JOB = {"id": "j", "poolInfo": {"poolId": "p"}}
TASK = {"id": "t", "commandLine": "/bin/true"}

# (operation, body, error code, PropertyName the error names)
BAD_BODIES = [
    ("Jobs_CreateJob", {"poolInfo": {"poolId": "p"}}, "MissingRequiredProperty", "id"),
    ("Jobs_CreateJob", {"id": "j"}, "MissingRequiredProperty", "poolInfo"),
    ("Jobs_CreateJob", {**JOB, "onAllTasksComplete": "x"}, "InvalidPropertyValue", "onAllTasksComplete"),
    ("Jobs_CreateJob", {**JOB, "priority": "high"}, "InvalidPropertyValue", "priority"),
    ("Jobs_CreateJob", {**JOB, "priority": 2 ** 31}, "InvalidPropertyValue", "priority"),
    ("Jobs_CreateJob", {**JOB, "usesTaskDependencies": "yes"}, "InvalidPropertyValue", "usesTaskDependencies"),
    ("Jobs_CreateJob", {**JOB, "metadata": {"a": "b"}}, "InvalidPropertyValue", "metadata"),
    ("Jobs_CreateJob", {**JOB, "constraints": {"maxWallClockTime": "one hour"}}, "InvalidPropertyValue",
     "constraints.maxWallClockTime"),
    ("Jobs_CreateJob", {**JOB, "poolInfo": "p"}, "InvalidPropertyValue", "poolInfo"),
    ("Jobs_UpdateJob", {"priority": None}, "InvalidPropertyValue", "priority"),
    ("Tasks_CreateTask", {"id": "t"}, "MissingRequiredProperty", "commandLine"),
    ("Tasks_CreateTask", {**TASK, "requiredSlots": True}, "InvalidPropertyValue", "requiredSlots"),
    ("Tasks_CreateTask", {**TASK, "resourceFiles": "a"}, "InvalidPropertyValue", "resourceFiles"),
    ("Tasks_CreateTask", {**TASK, "environmentSettings": [{"value": "v"}]}, "MissingRequiredProperty",
     "environmentSettings[0].name"),
    ("Tasks_CreateTask", {**TASK, "outputFiles": [{"filePattern": "*", "destination": {"container": {
        "containerUrl": "http://127.0.0.1/c"}}, "uploadOptions": {"uploadCondition": "sometimes"}}]},
     "InvalidPropertyValue", "outputFiles[0].uploadOptions.uploadCondition"),
    ("Tasks_CreateTaskCollection", {"value": [{"id": "t"}]}, "MissingRequiredProperty", "value[0].commandLine"),
    ("Pools_CreatePool", {"id": "p"}, "MissingRequiredProperty", "vmSize"),
    ("Pools_CreatePool", {"id": "p", "vmSize": "s", "targetDedicatedNodes": 1.5}, "InvalidPropertyValue",
     "targetDedicatedNodes"),
    ("Pools_RemoveNodes", {"nodeList": "n1"}, "InvalidPropertyValue", "nodeList"),
    ("Pools_ResizePool", {"targetDedicatedNodes": "2"}, "InvalidPropertyValue", "targetDedicatedNodes"),
]
# Accepted, with enum values returned in the document's spelling.
GOOD_BODIES = [
    ("Jobs_CreateJob", {**JOB, "onAllTasksComplete": "TerminateJob", "colour": "red"},
     {**JOB, "onAllTasksComplete": "terminatejob"}),
    ("Tasks_CreateTask", {**TASK, "constraints": {"maxWallClockTime": "PT1H", "maxTaskRetryCount": 2}},
     {**TASK, "constraints": {"maxWallClockTime": "PT1H", "maxTaskRetryCount": 2}}),
    ("Pools_ResizePool", {"targetDedicatedNodes": 2, "nodeDeallocationOption": "REQUEUE"},
     {"targetDedicatedNodes": 2, "nodeDeallocationOption": "requeue"}),
]


def _refused(spec: Spec, operation: str, body: dict) -> tuple[str, list]:
    schema, _ = spec.body_schema(spec.by_operation[operation])
    assert schema is not None, f"{operation} takes no body"
    with pytest.raises(BatchServiceError) as e:
        spec.validate(schema, body)
    return e.value.code, e.value.values


@pytest.mark.parametrize("operation,body,code,prop", BAD_BODIES, ids=[f"{b[0]}-{b[3]}" for b in BAD_BODIES])
def test_the_compact_file_refuses_bad_bodies(operation, body, code, prop):
    got_code, values = _refused(load_spec(), operation, body)
    assert (got_code, values[0]) == (code, ("PropertyName", prop))


@pytest.mark.parametrize("operation,body,expected", GOOD_BODIES, ids=[g[0] for g in GOOD_BODIES])
def test_the_compact_file_accepts_good_bodies(operation, body, expected):
    spec = load_spec()
    schema, _ = spec.body_schema(spec.by_operation[operation])
    assert spec.validate(schema, body) == expected


def _keywords(schema: dict):
    """The keywords of a schema and of its sub-schemas (property names are not keywords)."""
    for key, value in schema.items():
        yield key
        if key == "properties":
            for sub in value.values():
                yield from _keywords(sub)
        elif key == "allOf":
            for sub in value:
                yield from _keywords(sub)
        elif isinstance(value, dict):
            yield from _keywords(value)


def _walk(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_the_compact_file_holds_facts_only():
    text = API_FACTS.read_text(encoding="utf-8")
    facts = json.loads(text)
    assert facts["_derived"]["by"] == "scripts/derive_batch_api.py"
    assert facts["api_version"] == "2025-06-01" and "2025-06-01" in facts["_derived"]["from"]
    keywords = {"$ref", "additionalProperties", "allOf", "enum", "format", "items", "maximum", "minimum",
                "properties", "required", "type"}
    found = [f"{name}: {key}" for name, schema in facts["definitions"].items() for key in _keywords(schema)
             if key not in keywords]
    for route in facts["routes"]:
        assert set(route) <= {"method", "path", "operationId", "body", "query"}, route
        found += [f"{route['operationId']}: {key}" for key in _keywords(route.get("body", {}).get("schema", {}))
                  if key not in keywords]
        found += [f"{route['operationId']}?{name}: {key}" for name, param in route["query"].items()
                  for key in _keywords(param) if key not in keywords]
    assert not found, f"the API facts carry more than facts: {found[:5]}"
    assert len(text) < 100_000, f"batch_api.json has grown to {len(text):,} characters"
    # Every reference resolves, and every route the service serves has its body schema.
    refs = {v.split("/")[-1] for p, k in _walk(facts) if k == "$ref"
            for v in [_lookup(facts, p)["$ref"]]}
    assert refs <= set(facts["definitions"])
    spec = load_spec()
    assert spec.body_schema(spec.by_operation["Jobs_CreateJob"]) == (
        {"$ref": "#/definitions/BatchJobCreateOptions"}, True)
    assert spec.body_schema(spec.by_operation["Jobs_GetJob"]) == (None, False)
    assert spec.query_params(spec.by_operation["Tasks_ListTasks"])["maxresults"]["maximum"] == 1000


def _lookup(root, path: str):
    node = root
    for part in [p for p in path.replace("[", "/[").split("/") if p]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def test_the_service_reads_no_file_beside_the_repository(tmp_path):
    """Start the test Batch service in a fresh process and send it requests (good and bad) while
    an audit hook records every file opened: none may lie beside the repository (../shared)."""
    script = textwrap.dedent("""
        import json, os, sys
        opened = []
        sys.addaudithook(lambda event, args: opened.append(os.fsdecode(args[0]))
                         if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) else None)
        from azure.core.rest import HttpRequest
        from tests.batch_emulator.service import BatchEmulator
        from tests.batch_emulator.pytest_plugin import make_batch_client
        svc = BatchEmulator()
        svc.start()
        try:
            client = make_batch_client(svc)
            codes = []
            for body in ({"id": "j", "poolInfo": {"poolId": "p"}}, {"poolInfo": {"poolId": "p"}}):
                try:
                    codes.append(client.send_request(HttpRequest(
                        "POST", "/jobs", params={"api-version": "2025-06-01"}, json=body)).status_code)
                except Exception as e:   # the Batch client raises on an error answer
                    codes.append(e.status_code)
        finally:
            svc.stop()
        print(json.dumps({"codes": codes, "opened": opened}))
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["codes"] == [201, 400]
    allowed = {p for d in (REPO, tmp_path, Path(sys.prefix), Path(sys.base_prefix)) for p in (d, d.resolve())}
    beside = []
    for name in out["opened"]:
        # As named (a symlinked ../shared counts as beside) and as resolved.
        for path in {Path(os.path.normpath(Path(REPO, name))), Path(REPO, name).resolve()}:
            if not any(path == a or a in path.parents for a in allowed) and REPO.parent in path.parents:
                beside.append(str(path))
    assert not beside, f"the test Batch service read files beside the repository: {beside}"
    assert any(Path(REPO, n).resolve() == API_FACTS for n in out["opened"]), "batch_api.json was not read"


@reference.requires_reference()
def test_the_compact_file_is_what_the_script_derives_from_the_official_document():
    script = reference.derive_script()
    derived = script.render(script.derive(reference.document().read_text(encoding="utf-8")))
    assert derived == API_FACTS.read_text(encoding="utf-8"), (
        "tests/batch_emulator/batch_api.json differs from what the official document gives: "
        "run `python scripts/derive_batch_api.py` and commit the result")


@reference.requires_reference()
def test_the_whole_document_refuses_and_accepts_the_same_bodies():
    """Validation through the compact file is exactly as strict as through the whole document."""
    doc = reference.official()
    routes = []
    for template, ops in doc["paths"].items():
        for method, op in ops.items():
            body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
            routes.append({"method": method.upper(), "path": template, "operationId": op["operationId"],
                           **({"body": {"schema": body["schema"], "required": bool(body.get("required"))}}
                              if body else {})})
    whole = Spec({"api_version": doc["info"]["version"], "definitions": doc["definitions"], "routes": routes})
    compact = load_spec()
    for operation, body, _code, _prop in BAD_BODIES:
        assert _refused(whole, operation, body) == _refused(compact, operation, body), operation
    for operation, body, expected in GOOD_BODIES:
        schema, _ = whole.body_schema(whole.by_operation[operation])
        assert whole.validate(schema, body) == expected
    assert [(r.method, r.template, r.operation_id, r.body_required) for r in whole.routes] == \
        [(r.method, r.template, r.operation_id, r.body_required) for r in compact.routes]

"""REST operations, one function per OpenAPI operationId, over the service state.

Handlers take the lock, check service rules, change records, and return wire responses
with the status codes and headers the spec lists (201 + ETag/Location on create, 202 for
long-running verbs, 200 with JSON bodies for reads).
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import errors, odata, rules
from .errors import BatchServiceError
from .server import Response
from .state import Job, Pool, Task, file_json, job_json, node_json, pool_json, task_json, task_json_as_of
from .util import fmt_time, http_date, utcnow

if TYPE_CHECKING:
    from .service import BatchEmulator

Handler = Callable[..., Response]
HANDLERS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    """Register a handler; a lost response armed for it (faults.lose_responses) lets the
    operation take effect (on only the first ``partial`` tasks of a collection) and then
    answers the client with a 5xx instead of the result."""
    def deco(fn: Handler) -> Handler:
        def handle(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
            if svc.faults.rules.filters:   # only the properties Batch documents for this list
                odata.check_filter(name, odata.effective_filter(q))
            lost = svc.faults.take_lost_response(name)
            if lost is None:
                return fn(svc, p, q, h, body, raw_len)
            if lost.partial is not None and isinstance(body, dict) and isinstance(body.get("value"), list):
                body = {**body, "value": body["value"][:lost.partial]}
            resp = fn(svc, p, q, h, body, raw_len)
            if resp.status >= 300:
                return resp
            svc.log(f"{name}: done, response lost ({lost.status})")
            raise svc.faults.lost_error(lost)
        handle.__name__ = handle.__qualname__ = fn.__name__
        handle.__doc__ = fn.__doc__
        HANDLERS[name] = handle
        return fn
    return deco


def _created(url: str, etag: str, modified: dt.datetime, status: int = 201) -> Response:
    return Response(status, None, {"ETag": etag, "Last-Modified": http_date(modified), "Location": url,
                                   "DataServiceId": url})


def _accepted(url: str, etag: str | None = None, modified: dt.datetime | None = None, status: int = 202) -> Response:
    headers = {"DataServiceId": url}
    if etag:
        headers["ETag"] = etag
    if modified:
        headers["Last-Modified"] = http_date(modified)
    return Response(status, None, headers)


def _pool(svc: BatchEmulator, pool_id: str) -> Pool:
    pool = svc.pools.get(pool_id.lower())
    if pool is None:
        raise errors.not_found("Pool", pool_id)
    return pool


def _job(svc: BatchEmulator, job_id: str) -> Job:
    job = svc.jobs.get(job_id.lower())
    if job is None:
        raise errors.not_found("Job", job_id)
    return job


def _task(job: Job, task_id: str) -> Task:
    t = job.tasks.get(task_id.lower())
    if t is None:
        raise errors.not_found("Task", task_id)
    return t


def _check_command_lines(svc: BatchEmulator, body: dict, kind: str, prefix: str = "") -> None:
    """The strict command-line rule (rules.check_command_line), unless a test switched it off."""
    if svc.strict_command_lines:
        rules.check_command_lines(body, kind, prefix)


def _check_conditions(h: dict[str, str], etag: str, modified: dt.datetime) -> None:
    lower = {k.lower(): v for k, v in h.items()}
    if "if-match" in lower and lower["if-match"] not in ("*", etag):
        raise BatchServiceError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
    if "if-none-match" in lower and lower["if-none-match"] in ("*", etag):
        raise BatchServiceError(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")


# ---- pools --------------------------------------------------------------------------------
@op("Pools_CreatePool")
def create_pool(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    rules.check_pool(body)
    rules.check_image(body, SUPPORTED_IMAGES, svc.faults.rules)
    with svc.cond:
        if body["id"].lower() in svc.pools:
            raise errors.exists("Pool")
        _check_command_lines(svc, body, "pool")
        pool = Pool(id=body["id"], spec=body)
        pool.start_task = body.get("startTask")
        pool.resize_timeout = body.get("resizeTimeout", "PT15M")
        pool.metadata = body.get("metadata")
        if body.get("enableAutoScale"):
            pool.enable_autoscale = True
            pool.autoscale_formula = body["autoScaleFormula"]
            pool.autoscale_interval = body.get("autoScaleEvaluationInterval", "PT15M")
            svc.run_autoscale(pool, validate=True)
        else:
            svc.resize(pool, body.get("targetDedicatedNodes", 0), body.get("targetLowPriorityNodes", 0), None)
        svc.pools[pool.id.lower()] = pool
        svc.cond.notify_all()
        return _created(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified)


def _entity_response(h: dict, q: dict, entity: Any, body: dict) -> Response:
    """A GET of one pool, job or task: conditional headers, $select, ETag, Last-Modified."""
    _check_conditions(h, entity.etag, entity.last_modified)
    return Response(200, odata.apply_select(body, q.get("$select")),
                    {"ETag": entity.etag, "Last-Modified": http_date(entity.last_modified)})


@op("Pools_GetPool")
def get_pool(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        return _entity_response(h, q, pool, pool_json(pool, svc.url))


@op("Pools_PoolExists")
def pool_exists(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = svc.pools.get(p["poolId"].lower())
        if pool is None:
            raise errors.not_found("Pool", p["poolId"])
        return Response(200, None, {"ETag": pool.etag, "Last-Modified": http_date(pool.last_modified)})


@op("Pools_ListPools")
def list_pools(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        items = [pool_json(x, svc.url) for x in svc.pools.values()]
    return Response(200, odata.page(items, q, f"{svc.url}/pools", svc.spec.api_version))


@op("Pools_DeletePool")
def delete_pool(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        _check_conditions(h, pool.etag, pool.last_modified)
        if pool.state != "deleting":
            pool.state, pool.state_time = "deleting", utcnow()
            pool.touch()
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/pools/{pool.id}")


@op("Pools_UpdatePool")
def update_pool(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        _check_conditions(h, pool.etag, pool.last_modified)
        _check_command_lines(svc, body, "pool")
        for k, v in body.items():
            pool.spec[k] = v
        if "startTask" in body:
            pool.start_task = body["startTask"]
        pool.touch()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified, status=200)


@op("Pools_ResizePool")
def resize_pool(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        _check_conditions(h, pool.etag, pool.last_modified)
        if pool.enable_autoscale:
            raise errors.conflict("AutoScalingEnabled",
                                  "The pool cannot be resized manually because autoscale is enabled.")
        if pool.allocation_state != "steady":
            raise errors.conflict("PoolNotSteady", "The specified pool is not in steady state.")
        if pool.state != "active":
            raise errors.conflict("PoolBeingDeleted", "The specified pool is being deleted.")
        rules.check_resize_timeout(body.get("resizeTimeout"))
        svc.resize(pool, body.get("targetDedicatedNodes", pool.target_dedicated),
                   body.get("targetLowPriorityNodes", pool.target_low_priority), body.get("nodeDeallocationOption"))
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified)


@op("Pools_StopPoolResize")
def stop_resize(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        if pool.allocation_state == "resizing":
            pool.allocation_state = "stopping"
            pool.allocation_time = utcnow()
            pool.resize_due = time.monotonic()   # stopping settles on the next scheduler tick
            pool.target_dedicated = pool.counted_nodes(True)
            pool.target_low_priority = pool.counted_nodes(False)
            pool.resize_errors = [{"code": "ResizeStopped", "message": "Desired number of dedicated nodes could not "
                                   "be allocated due to a stop resize operation"}]
            pool.touch()
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified)


@op("Pools_EnablePoolAutoScale")
def enable_autoscale(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        rules.check_autoscale_interval(body.get("autoScaleEvaluationInterval"))
        if "autoScaleFormula" not in body and not pool.autoscale_formula:
            raise errors.missing_property("autoScaleFormula")
        if pool.allocation_state != "steady" and not pool.enable_autoscale:
            raise errors.conflict("PoolNotSteady", "The specified pool is not in steady state.")
        # At most once every 30 s per pool (REST spec, Pools_EnablePoolAutoScale). The error code is
        # the one the Batch SDKs name for it (BatchErrorCodeStrings.AutoScaleTooManyRequestsToEnable
        # in Microsoft.Azure.Batch and the Java SDK); the .NET integration test
        # AutoScaleEvaluationIntervalTest gets it on the second quick enable, after a request with an
        # invalid interval got InvalidPropertyValue, so validation comes first. The status, 409, is
        # unconfirmed (no source found gives it). Only accepted calls start the window.
        at = pool.autoscale_enabled_at
        if at is not None and time.monotonic() - at < svc.enable_autoscale_window:
            raise errors.conflict("TooManyEnableAutoScaleRequests",
                                  "Autoscale was enabled on this pool less than 30 seconds ago.")
        old = (pool.enable_autoscale, pool.autoscale_formula, pool.autoscale_interval)
        pool.enable_autoscale = True
        pool.autoscale_formula = body.get("autoScaleFormula", pool.autoscale_formula)
        pool.autoscale_interval = body.get("autoScaleEvaluationInterval", pool.autoscale_interval or "PT15M")
        try:
            svc.run_autoscale(pool, validate=True)
        except BatchServiceError:
            pool.enable_autoscale, pool.autoscale_formula, pool.autoscale_interval = old
            raise
        pool.autoscale_enabled_at = time.monotonic()
        pool.touch()
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified, status=200)


@op("Pools_DisablePoolAutoScale")
def disable_autoscale(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        pool.enable_autoscale = False
        pool.autoscale_formula = pool.autoscale_interval = pool.autoscale_run = None
        pool.touch()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified, status=200)


@op("Pools_EvaluatePoolAutoScale")
def evaluate_autoscale(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        if not pool.enable_autoscale:
            raise errors.conflict("AutoScalingNotEnabledForPool", "The specified pool does not have autoscale enabled.")
        run = svc.evaluate_formula(pool, body["autoScaleFormula"], syntax_errors_raise=True)[0]
        return Response(200, run, {"DataServiceId": f"{svc.url}/pools/{pool.id}/evaluateautoscale"})


@op("Pools_RemoveNodes")
def remove_nodes(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        if pool.allocation_state != "steady":
            raise errors.conflict("PoolNotSteady", "The specified pool is not in steady state.")
        if len(body["nodeList"]) > 100:
            raise errors.invalid_value("nodeList", len(body["nodeList"]), "At most 100 nodes can be removed at once.")
        nodes = []
        for nid in body["nodeList"]:
            if nid not in pool.nodes:
                raise errors.not_found("Node", nid)
            nodes.append(pool.nodes[nid])
        option = body.get("nodeDeallocationOption") or "requeue"
        for node in nodes:
            svc.engine._remove_node(pool, node, option)
            if node.dedicated:
                pool.target_dedicated = max(0, pool.target_dedicated - 1)
            else:
                pool.target_low_priority = max(0, pool.target_low_priority - 1)
        pool.allocation_state, pool.allocation_time = "resizing", utcnow()
        pool.resize_due = time.monotonic()
        pool.touch()
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/pools/{pool.id}", pool.etag, pool.last_modified)


@op("Pools_ListPoolNodeCounts")
def list_node_counts(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    states = ["creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
              "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask", "deallocated",
              "deallocating", "upgradingOS"]
    items = []
    with svc.cond:
        for pool in svc.pools.values():
            entry: dict[str, Any] = {"poolId": pool.id}
            for key, dedicated in (("dedicated", True), ("lowPriority", False)):
                counts = {s: 0 for s in states}
                for n in pool.nodes.values():
                    if n.dedicated == dedicated:
                        name = next(s for s in states if s.lower() == n.state.lower())
                        counts[name] += 1
                counts["total"] = sum(counts.values())
                entry[key] = counts
            items.append(entry)
    return Response(200, odata.page(items, q, f"{svc.url}/nodecounts", svc.spec.api_version, default_max=10))


#: Pools_ListSupportedImages, and what pool create accepts (rules.check_image). Sources: the
#: official example Pools_ListSupportedImages (the entry shape); the container workloads article
#: (microsoft-dsvm ubuntu-hpc is container capable); Azure/Batch#178 (ubuntu-hpc 2204 listed with
#: DockerCompatible, canonical ubuntu-24_04-lts without it); Azure/Batch#200 (the 22.04 node
#: agent retires; ubuntu-hpc 2404 is the migration target). An account lists many more.
SUPPORTED_IMAGES = [
    {"nodeAgentSKUId": "batch.node.ubuntu 22.04",
     "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"},
     "osType": "linux", "capabilities": ["DockerCompatible", "NvidiaTeslaDriverInstalled"],
     "verificationType": "verified"},
    {"nodeAgentSKUId": "batch.node.ubuntu 22.04",
     "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                        "version": "latest"},
     "osType": "linux", "verificationType": "verified"},
    {"nodeAgentSKUId": "batch.node.ubuntu 24.04",
     "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
     "osType": "linux", "verificationType": "verified"},
    {"nodeAgentSKUId": "batch.node.ubuntu 20.04",
     "imageReference": {"publisher": "microsoft-azure-batch", "offer": "ubuntu-server-container",
                        "sku": "20-04-lts", "version": "latest"},
     "osType": "linux", "capabilities": ["DockerCompatible"], "verificationType": "verified",
     "batchSupportEndOfLife": "2025-04-23T00:00:00.0000000Z"},
    {"nodeAgentSKUId": "batch.node.ubuntu 24.04",
     "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"},
     "osType": "linux", "capabilities": ["DockerCompatible", "NvidiaTeslaDriverInstalled"],
     "verificationType": "verified"},
]


@op("Pools_ListSupportedImages")
def list_supported_images(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    return Response(200, odata.page(SUPPORTED_IMAGES, q, f"{svc.url}/supportedimages", svc.spec.api_version))


# ---- nodes --------------------------------------------------------------------------------
def _node(pool: Pool, node_id: str):
    node = pool.nodes.get(node_id)
    if node is None:
        raise errors.not_found("Node", node_id)
    return node


@op("Nodes_ListNodes")
def list_nodes(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        items = [node_json(n, pool, svc.url) for n in pool.nodes.values()]
    return Response(200, odata.page(items, q, f"{svc.url}/pools/{pool.id}/nodes", svc.spec.api_version))


@op("Nodes_GetNode")
def get_node(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        node = _node(pool, p["nodeId"])
        return Response(200, odata.apply_select(node_json(node, pool, svc.url), q.get("$select")))


@op("Nodes_DisableNodeScheduling")
def disable_scheduling(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        node = _node(_pool(svc, p["poolId"]), p["nodeId"])
        node.scheduling_state = "disabled"
        option = (body or {}).get("nodeDisableSchedulingOption") or "requeue"
        if option in ("requeue", "terminate"):
            svc.engine._evict_node_tasks(node, "requeue" if option == "requeue" else "terminate")
        return Response(200, None, {"DataServiceId": f"{svc.url}/pools/{p['poolId']}/nodes/{node.id}"})


@op("Nodes_EnableNodeScheduling")
def enable_scheduling(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        node = _node(_pool(svc, p["poolId"]), p["nodeId"])
        node.scheduling_state = "enabled"
        svc.cond.notify_all()
        return Response(200, None, {"DataServiceId": f"{svc.url}/pools/{p['poolId']}/nodes/{node.id}"})


def _safe_join(root: Path, rel: str) -> Path:
    target = (root / rel.replace("\\", "/").lstrip("/")).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise errors.not_found("File", rel)
    return target


def _list_files(root: Path, url_base: str, q: dict, recursive: bool) -> Response:
    items = []
    if root.exists():
        paths = sorted(root.rglob("*")) if recursive else sorted(root.iterdir())
        for path in paths:
            name = path.relative_to(root).as_posix()
            items.append(file_json(name, f"{url_base}/{quote(name, safe='')}", path))
    return items  # type: ignore[return-value]


def _file_response(path: Path, url: str, h: dict, head: bool) -> Response:
    if not path.exists():
        raise errors.not_found("File", url.rsplit("/", 1)[-1])
    st = path.stat()
    props = {"ocp-creation-time": http_date(dt.datetime.fromtimestamp(st.st_ctime, dt.timezone.utc)),
             "Last-Modified": http_date(dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)),
             "ocp-batch-file-isdirectory": "true" if path.is_dir() else "false",
             "ocp-batch-file-url": url,
             "ocp-batch-file-mode": oct(st.st_mode & 0o777777)[2:].rjust(6, "0"),
             "Content-Type": "application/octet-stream"}
    if path.is_dir():
        return Response(200, b"" if not head else None, {**props, "Content-Length": "0"})
    data = path.read_bytes()
    rng = next((v for k, v in h.items() if k.lower() == "ocp-range"), None)
    if rng:
        try:
            unit, _, span = rng.partition("=")
            start_s, _, end_s = span.partition("-")
            start = int(start_s) if start_s else max(0, len(data) - int(end_s))
            end = int(end_s) if (end_s and start_s) else len(data) - 1
            if unit.strip() != "bytes" or start > end or start >= max(len(data), 1):
                raise ValueError
        except ValueError:
            raise BatchServiceError(416, "InvalidRange", "The range specified is invalid for the current size "
                                    "of the resource.") from None
        data = data[start:end + 1]
    if head:
        return Response(200, None, {**props, "Content-Length": str(st.st_size)})
    return Response(200, data, {**props, "Content-Length": str(len(data))})


@op("Nodes_ListNodeFiles")
def list_node_files(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        node = _node(pool, p["nodeId"])
    base = f"{svc.url}/pools/{pool.id}/nodes/{node.id}/files"
    items = _list_files(node.root, base, q, q.get("recursive", "false").lower() == "true")
    return Response(200, odata.page(items, q, base, svc.spec.api_version))  # type: ignore[arg-type]


def _node_file(svc: BatchEmulator, p: dict) -> tuple[Path, str]:
    with svc.cond:
        pool = _pool(svc, p["poolId"])
        node = _node(pool, p["nodeId"])
    return _safe_join(node.root, p["filePath"]), \
        f"{svc.url}/pools/{pool.id}/nodes/{node.id}/files/{quote(p['filePath'], safe='')}"


@op("Nodes_GetNodeFile")
def get_node_file(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    path, url = _node_file(svc, p)
    return _file_response(path, url, h, head=False)


@op("Nodes_GetNodeFileProperties")
def get_node_file_props(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    path, url = _node_file(svc, p)
    return _file_response(path, url, h, head=True)


# ---- jobs ---------------------------------------------------------------------------------
@op("Jobs_CreateJob")
def create_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    rules.check_job_body(raw_len, svc.faults.rules)
    rules.check_job(body)
    with svc.cond:
        if body["id"].lower() in svc.jobs:
            raise errors.exists("Job")
        _check_command_lines(svc, body, "job")
        quota = svc.active_job_quota
        if quota is not None and sum(1 for j in svc.jobs.values() if j.state != "completed") >= quota:
            # 409 ActiveJobAndScheduleQuotaReached, the message as nextflow-io/nextflow#5575 quotes a real
            # answer ("Batch service quotas and limits": 100-300 active jobs and schedules by default).
            raise errors.conflict("ActiveJobAndScheduleQuotaReached",
                                  "Active job and job schedule quota for the account has been reached.")
        job = Job(id=body["id"], spec=body)
        svc.jobs[job.id.lower()] = job
        svc.cond.notify_all()
        return _created(f"{svc.url}/jobs/{job.id}", job.etag, job.last_modified)


@op("Jobs_GetJob")
def get_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        return _entity_response(h, q, job, job_json(job, svc.url))


@op("Jobs_ListJobs")
def list_jobs(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        items = [job_json(j, svc.url) for j in svc.jobs.values()]
    return Response(200, odata.page(items, q, f"{svc.url}/jobs", svc.spec.api_version))


def _job_update(svc: BatchEmulator, job: Job, body: dict, replace: bool) -> None:
    if job.state in ("completed", "terminating", "deleting"):
        raise errors.conflict("JobCompleted" if job.state != "deleting" else "JobBeingDeleted",
                              "The specified job is already in a completed state." if job.state != "deleting"
                              else "The specified job has been marked for deletion and is being garbage collected.")
    if "onAllTasksComplete" in body and body["onAllTasksComplete"] == "noaction" and \
            job.spec.get("onAllTasksComplete") == "terminatejob":
        raise errors.invalid_value("onAllTasksComplete", "noaction",
                                   "onAllTasksComplete cannot be changed from terminatejob to noaction.")
    if "poolInfo" in body and job.state == "active":
        raise errors.conflict("JobNotDisabled",
                              "The pool of a job can be changed only while the job is disabled.")
    for k in ("priority", "maxParallelTasks", "allowTaskPreemption", "constraints", "poolInfo",
              "onAllTasksComplete", "metadata", "networkConfiguration"):
        if k in body:
            job.spec[k] = body[k]
        elif replace and k in ("priority", "constraints", "metadata", "onAllTasksComplete"):
            job.spec.pop(k, None)
    job.touch()


def _patch_or_put_job(svc: BatchEmulator, p: dict, h: dict, body: dict, replace: bool) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        _check_conditions(h, job.etag, job.last_modified)
        _job_update(svc, job, body, replace=replace)
        svc.engine.tick()   # onAllTasksComplete=terminatejob on a finished job completes it at once
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}", job.etag, job.last_modified, status=200)


@op("Jobs_UpdateJob")
def update_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    return _patch_or_put_job(svc, p, h, body, replace=False)


@op("Jobs_ReplaceJob")
def replace_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    return _patch_or_put_job(svc, p, h, body, replace=True)


@op("Jobs_TerminateJob")
def terminate_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        _check_conditions(h, job.etag, job.last_modified)
        if job.state == "completed":
            raise errors.conflict("JobCompleted", "The specified job is already in a completed state.")
        if job.state == "deleting":
            raise errors.conflict("JobBeingDeleted", "The specified job has been marked for deletion.")
        if job.state != "terminating":
            svc.engine.terminate_job(job, (body or {}).get("terminateReason") or "UserTerminate")
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}", job.etag, job.last_modified)


@op("Jobs_DeleteJob")
def delete_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        _check_conditions(h, job.etag, job.last_modified)
        job.set_state("deleting")
        svc.engine.tick()
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}")


@op("Jobs_DisableJob")
def disable_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        if job.state != "active":
            raise errors.conflict("JobNotActive" if job.state != "completed" else "JobCompleted",
                                  "The specified job is not in an active state.")
        option = body.get("disableTasks", "requeue")
        for t in job.tasks.values():
            if t.state in ("preparing", "running") and option in ("requeue", "terminate"):
                svc.engine.kill_task(t, "requeue" if option == "requeue" else "terminate")
        job.set_state("disabling")
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}", job.etag, job.last_modified)


@op("Jobs_EnableJob")
def enable_job(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        if job.state not in ("disabled", "disabling"):
            raise errors.conflict("JobNotDisabled", "The specified job is not in a disabled state.")
        job.set_state("active")
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}", job.etag, job.last_modified)


@op("Jobs_GetJobTaskCounts")
def task_counts(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    """Counts as of ``counts_lag`` seconds ago (faults.py: the spec says they may not be up to
    date); a completion counts as succeeded or failed by the task's result."""
    cutoff = utcnow() - dt.timedelta(seconds=svc.faults.counts_lag())
    with svc.cond:
        job = _job(svc, p["jobId"])
        counts = {k: 0 for k in ("active", "running", "completed", "succeeded", "failed")}
        slots = dict(counts)
        for t in job.tasks.values():
            seen = t.state_as_of(cutoff)
            if seen is None:
                continue
            state = seen[1]
            key = "running" if state in ("preparing", "running") else state
            counts[key] += 1
            slots[key] += t.required_slots
            if state == "completed":
                sub = "succeeded" if t.result == "success" else "failed"
                counts[sub] += 1
                slots[sub] += t.required_slots
    return Response(200, {"taskCounts": counts, "taskSlotCounts": slots})


@op("Jobs_ListJobPreparationAndReleaseTaskStatus")
def list_prep_status(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        if not job.spec.get("jobPreparationTask"):
            raise errors.conflict("JobPreparationTaskNotSpecified",
                                  "The specified job does not have a job preparation task.")
        items = []
        for pool in svc.pools.values():
            for node in pool.nodes.values():
                st = node.job_prep.get(job.id)
                if st is None:
                    continue
                node_url = f"{svc.url}/pools/{pool.id}/nodes/{node.id}"
                info = {"startTime": fmt_time(st.start_time), "endTime": fmt_time(st.end_time), "state": st.state,
                        "taskRootDirectory": st.task_root,
                        "taskRootDirectoryUrl": f"{node_url}/files/{st.task_root}",
                        "exitCode": st.exit_code, "failureInfo": st.failure_info,
                        "retryCount": st.retry_count, "result": st.result}
                items.append({"poolId": pool.id, "nodeId": node.id, "nodeUrl": node_url,
                              "jobPreparationTaskExecutionInfo": {k: v for k, v in info.items() if v is not None}})
    return Response(200, odata.page(items, q, f"{svc.url}/jobs/{job.id}/jobpreparationandreleasetaskstatus",
                                    svc.spec.api_version))


# ---- tasks --------------------------------------------------------------------------------
def _add_task(svc: BatchEmulator, job: Job, body: dict, prefix: str = "") -> Task:
    if job.state in ("completed", "terminating"):
        raise errors.conflict("JobCompleted", "The specified job is already in a completed state.")
    if job.state == "deleting":
        raise errors.conflict("JobBeingDeleted", "The specified job has been marked for deletion.")
    pool = svc.pools.get((job.pool_id or "").lower())
    rules.check_task(body, job.spec, pool.spec if pool else None, prefix)
    _check_command_lines(svc, body, "task", prefix)
    if body["id"].lower() in job.tasks:
        raise errors.exists("Task")
    task = Task(id=body["id"], job_id=job.id, spec=body)
    job.tasks[task.id.lower()] = task
    job.ever_had_tasks = True
    job.touch()
    return task


@op("Tasks_CreateTask")
def create_task(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _add_task(svc, job, body)
        svc.cond.notify_all()
        return _created(f"{svc.url}/jobs/{job.id}/tasks/{task.id}", task.etag, task.last_modified)


@op("Tasks_CreateTaskCollection")
def create_task_collection(svc: BatchEmulator, p: dict, q: dict, h: dict, body: dict, raw_len: int) -> Response:
    rules.check_collection(raw_len, body)
    results = []
    with svc.cond:
        job = _job(svc, p["jobId"])
        if job.state in ("completed", "terminating"):
            raise errors.conflict("JobCompleted", "The specified job is already in a completed state.")
        seen: set[str] = set()
        for spec in body["value"]:
            tid = spec["id"]
            try:
                if tid.lower() in seen:
                    raise errors.exists("Task")
                refused = svc.faults.refusal(tid)
                if refused:
                    raise BatchServiceError(400, refused, "The task was refused (emulator hook).",
                                            [("TaskId", tid)])
                task = _add_task(svc, job, spec)
                seen.add(tid.lower())
                results.append({"status": "success", "taskId": tid, "eTag": task.etag,
                                "lastModified": fmt_time(task.last_modified),
                                "location": f"{svc.url}/jobs/{job.id}/tasks/{tid}"})
            except BatchServiceError as e:
                status = "servererror" if e.status >= 500 else "clienterror"
                results.append({"status": status, "taskId": tid, "error": e.as_result_error()})
        svc.cond.notify_all()
    return Response(200, {"value": results})


@op("Tasks_ListTasks")
def list_tasks(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    """Without $filter: every task as it is. With one: each task as a lagging index sees it
    (faults.py: ``list_lag``, and completions hidden by ``hide_from_filtered_lists``)."""
    filtered = bool(odata.effective_filter(q))
    now = utcnow()
    with svc.cond:
        job = _job(svc, p["jobId"])
        items = []
        for t in sorted(job.tasks.values(), key=lambda t: t.seq):
            if not filtered:
                items.append(task_json(t, job, svc.url))
                continue
            lag, hidden = svc.faults.list_delays(job.id, t.id)
            seen = t.state_as_of(now - dt.timedelta(seconds=lag), hidden)
            if seen is not None:
                items.append(task_json_as_of(t, job, svc.url, seen))
    return Response(200, odata.page(items, q, f"{svc.url}/jobs/{job.id}/tasks", svc.spec.api_version))


@op("Tasks_GetTask")
def get_task(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _task(job, p["taskId"])
        return _entity_response(h, q, task, task_json(task, job, svc.url))


@op("Tasks_TerminateTask")
def terminate_task(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _task(job, p["taskId"])
        if task.state == "active":
            task.end_time = utcnow()
            task.result = "failure"
            task.failure_info = {"category": "usererror", "code": "TaskEnded",
                                 "message": "The task was ended by a terminate request"}
            task.dependency_blocked = True
            task.set_state("completed")
        elif task.state in ("preparing", "running"):
            svc.engine.kill_task(task, "terminate")
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}/tasks/{task.id}", task.etag, task.last_modified, status=204)


@op("Tasks_ReactivateTask")
def reactivate_task(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    """A completed, failed task goes back to active with its retry count reset; refused for
    a task that exited 0 (even one whose upload then failed) and in a job that is completed,
    terminating or deleting (rules.check_reactivation)."""
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _task(job, p["taskId"])
        rules.check_reactivation(job.state, task, svc.faults.rules)
        task.retry_count = 0
        task.end_time = task.exit_code = task.failure_info = task.result = None
        task.dependency_blocked = False
        task.set_state("active")
        svc.cond.notify_all()
        return _accepted(f"{svc.url}/jobs/{job.id}/tasks/{task.id}", task.etag, task.last_modified, status=204)


@op("Tasks_DeleteTask")
def delete_task(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _task(job, p["taskId"])
        if task.state in ("preparing", "running"):
            svc.engine.kill_task(task, "delete")
        del job.tasks[task.id.lower()]
        svc.cond.notify_all()
        return Response(200, None)


def _task_dir(svc: BatchEmulator, p: dict) -> tuple[Path, str]:
    with svc.cond:
        job = _job(svc, p["jobId"])
        task = _task(job, p["taskId"])
        if task.node is None:
            raise errors.conflict("OperationInvalidForCurrentState",
                                  "The task has not been scheduled on a node yet.")
        root = task.node.root / "workitems" / job.id / "job-1" / task.id
        return root, f"{svc.url}/jobs/{job.id}/tasks/{task.id}/files"


@op("Tasks_ListTaskFiles")
def list_task_files(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    root, base = _task_dir(svc, p)
    items = _list_files(root, base, q, q.get("recursive", "false").lower() == "true")
    return Response(200, odata.page(items, q, base, svc.spec.api_version))  # type: ignore[arg-type]


@op("Tasks_GetTaskFile")
def get_task_file(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    root, base = _task_dir(svc, p)
    return _file_response(_safe_join(root, p["filePath"]), f"{base}/{quote(p['filePath'], safe='')}", h, head=False)


@op("Tasks_GetTaskFileProperties")
def get_task_file_props(svc: BatchEmulator, p: dict, q: dict, h: dict, body: Any, raw_len: int) -> Response:
    root, base = _task_dir(svc, p)
    return _file_response(_safe_join(root, p["filePath"]), f"{base}/{quote(p['filePath'], safe='')}", h, head=True)

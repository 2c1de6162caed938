"""In-memory records of pools, nodes, jobs and tasks, and their wire (JSON) renderings.

Records keep the client's creation body (``spec``) verbatim and add what the service owns
(state, timestamps, execution info), so a GET returns what was created plus service fields,
as the real service does. All mutation happens under the service lock (see service.py).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .util import MAX_DURATION, fmt_time, new_etag, utcnow

_seq = itertools.count(1)


@dataclass
class Node:
    id: str
    pool_id: str
    dedicated: bool
    root: Path
    ip: str
    state: str = "creating"
    state_time: dt.datetime = field(default_factory=utcnow)
    allocation_time: dt.datetime = field(default_factory=utcnow)
    boot_time: dt.datetime = field(default_factory=utcnow)
    scheduling_state: str = "enabled"
    ready_at: float = 0.0            # monotonic time of the next lifecycle step
    running: dict[tuple[str, str], int] = field(default_factory=dict)  # (job, task) -> slots
    total_run: int = 0
    total_succeeded: int = 0
    recent: list[dict] = field(default_factory=list)
    start_task_info: dict | None = None
    errors: list[dict] = field(default_factory=list)
    job_prep: dict[str, PrepStatus] = field(default_factory=dict)
    leaving: bool = False            # remove once its tasks complete (taskcompletion)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_time = utcnow()

    def used_slots(self) -> int:
        return sum(self.running.values())


@dataclass
class PrepStatus:
    state: str = "running"            # running | completed
    start_time: dt.datetime = field(default_factory=utcnow)
    end_time: dt.datetime | None = None
    exit_code: int | None = None
    failure_info: dict | None = None
    retry_count: int = 0
    result: str | None = None
    task_root: str = ""


@dataclass
class Pool:
    id: str
    spec: dict
    creation_time: dt.datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: dt.datetime = field(default_factory=utcnow)
    allocation_state: str = "steady"
    allocation_time: dt.datetime = field(default_factory=utcnow)
    target_dedicated: int = 0
    target_low_priority: int = 0
    resize_timeout: str = "PT15M"
    deallocation_option: str = "requeue"
    enable_autoscale: bool = False
    autoscale_formula: str | None = None
    autoscale_interval: str | None = None
    autoscale_run: dict | None = None
    autoscale_enabled_at: float | None = None  # time.monotonic() of the last accepted EnablePoolAutoScale
    resize_errors: list[dict] = field(default_factory=list)
    resize_due: float = 0.0
    nodes: dict[str, Node] = field(default_factory=dict)
    node_counter: itertools.count = field(default_factory=lambda: itertools.count(0))
    etag: str = field(default_factory=new_etag)
    last_modified: dt.datetime = field(default_factory=utcnow)
    metadata: list | None = None
    start_task: dict | None = None

    def touch(self) -> None:
        self.etag = new_etag()
        self.last_modified = utcnow()

    @property
    def slots_per_node(self) -> int:
        return int(self.spec.get("taskSlotsPerNode") or 1)

    def counted_nodes(self, dedicated: bool) -> int:
        return sum(1 for n in self.nodes.values() if n.dedicated == dedicated and not n.leaving)


@dataclass
class Task:
    id: str
    job_id: str
    spec: dict
    seq: int = field(default_factory=lambda: next(_seq))
    creation_time: dt.datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: dt.datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_time: dt.datetime | None = None
    etag: str = field(default_factory=new_etag)
    last_modified: dt.datetime = field(default_factory=utcnow)
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    exit_code: int | None = None
    failure_info: dict | None = None
    retry_count: int = 0
    last_retry_time: dt.datetime | None = None
    requeue_count: int = 0
    last_requeue_time: dt.datetime | None = None
    result: str | None = None
    node: Node | None = None          # where it runs / last ran
    node_info: dict | None = None
    proc: subprocess.Popen | None = None
    kill_reason: str | None = None    # requeue | terminate | delete, set by whoever kills it
    dependency_blocked: bool = False  # completed task whose failure blocks dependents
    container_info: dict | None = None
    history: list[tuple[str, dt.datetime]] = field(default_factory=list)  # (state, since), oldest first

    def __post_init__(self) -> None:
        self.history.append((self.state, self.state_time))

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_time = self.state, self.state_time
            self.state, self.state_time = state, utcnow()
            self.history.append((state, self.state_time))
            del self.history[:-16]
        self.etag, self.last_modified = new_etag(), utcnow()

    def state_as_of(self, cutoff: dt.datetime, completion_delay: float = 0.0) -> tuple[int, str, dt.datetime] | None:
        """(index in history, state, since) as a view lagging behind the task sees it: the
        last change made at or before ``cutoff``, a completion only ``completion_delay``
        seconds later; None when the task is too new to be in that view at all."""
        seen = None
        for i, (state, since) in enumerate(self.history):
            if state == "completed" and completion_delay:
                if completion_delay == float("inf") or since + dt.timedelta(seconds=completion_delay) > cutoff:
                    continue
            if since <= cutoff:
                seen = (i, state, since)
        return seen

    @property
    def required_slots(self) -> int:
        return int(self.spec.get("requiredSlots") or 1)


@dataclass
class Job:
    id: str
    spec: dict
    creation_time: dt.datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: dt.datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_time: dt.datetime | None = None
    etag: str = field(default_factory=new_etag)
    last_modified: dt.datetime = field(default_factory=utcnow)
    end_time: dt.datetime | None = None
    terminate_reason: str | None = None
    tasks: dict[str, Task] = field(default_factory=dict)   # keyed by lower-case id
    ever_had_tasks: bool = False

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_time = self.state, self.state_time
            self.state, self.state_time = state, utcnow()
        self.touch()

    def touch(self) -> None:
        self.etag, self.last_modified = new_etag(), utcnow()

    @property
    def pool_id(self) -> str | None:
        return (self.spec.get("poolInfo") or {}).get("poolId")


def node_id_for(pool_id: str, index: int, dedicated: bool) -> str:
    """Node ids shaped like the service's (tvmps_<hash>_d for dedicated, _p for spot)."""
    digest = hashlib.sha256(f"{pool_id}/{index}".encode()).hexdigest()
    return f"tvmps_{digest}_{'d' if dedicated else 'p'}"


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# ---- renderings ---------------------------------------------------------------------
def pool_json(pool: Pool, base: str) -> dict:
    spec = dict(pool.spec)
    for k in ("targetDedicatedNodes", "targetLowPriorityNodes", "enableAutoScale", "autoScaleFormula",
              "autoScaleEvaluationInterval", "resizeTimeout"):
        spec.pop(k, None)
    out = {
        **spec,
        "url": f"{base}/pools/{pool.id}",
        "eTag": pool.etag,
        "lastModified": fmt_time(pool.last_modified),
        "creationTime": fmt_time(pool.creation_time),
        "state": pool.state,
        "stateTransitionTime": fmt_time(pool.state_time),
        "allocationState": pool.allocation_state,
        "allocationStateTransitionTime": fmt_time(pool.allocation_time),
        "taskSlotsPerNode": pool.slots_per_node,
        "taskSchedulingPolicy": spec.get("taskSchedulingPolicy") or {"nodeFillType": "spread"},
        "currentDedicatedNodes": pool.counted_nodes(True),
        "currentLowPriorityNodes": pool.counted_nodes(False),
        "targetDedicatedNodes": pool.target_dedicated,
        "targetLowPriorityNodes": pool.target_low_priority,
        "enableAutoScale": pool.enable_autoscale,
        "enableInterNodeCommunication": bool(spec.get("enableInterNodeCommunication", False)),
    }
    if pool.enable_autoscale:
        out["autoScaleFormula"] = pool.autoscale_formula
        out["autoScaleEvaluationInterval"] = pool.autoscale_interval or "PT15M"
        if pool.autoscale_run:
            out["autoScaleRun"] = pool.autoscale_run
    else:
        out["resizeTimeout"] = pool.resize_timeout
    if pool.resize_errors:
        out["resizeErrors"] = pool.resize_errors
    out["odata.metadata"] = f"{base}/$metadata#pools/@Element"
    return out


def node_json(node: Node, pool: Pool, base: str) -> dict:
    url = f"{base}/pools/{pool.id}/nodes/{node.id}"
    out = {
        "id": node.id,
        "url": url,
        "state": node.state,
        "schedulingState": node.scheduling_state,
        "stateTransitionTime": fmt_time(node.state_time),
        "lastBootTime": fmt_time(node.boot_time),
        "allocationTime": fmt_time(node.allocation_time),
        "ipAddress": node.ip,
        "ipv6Address": "::1",
        "affinityId": f"TVM:{node.id}",
        "vmSize": pool.spec.get("vmSize"),
        "totalTasksRun": node.total_run,
        "totalTasksSucceeded": node.total_succeeded,
        "runningTasksCount": len(node.running),
        "runningTaskSlotsCount": node.used_slots(),
        "isDedicated": node.dedicated,
        "endpointConfiguration": {"inboundEndpoints": []},
        "nodeAgentInfo": {"version": "1.11.0-emulator", "lastUpdateTime": fmt_time(node.allocation_time)},
        "virtualMachineInfo": {"imageReference": ((pool.spec.get("virtualMachineConfiguration") or {})
                                                  .get("imageReference") or {})},
    }
    if node.recent:
        out["recentTasks"] = list(node.recent)
    if pool.start_task:
        out["startTask"] = pool.start_task
    if node.start_task_info:
        out["startTaskInfo"] = _drop_none(dict(node.start_task_info))
    if node.errors:
        out["errors"] = list(node.errors)
    return out


def execution_info(t: Task) -> dict:
    return _drop_none({
        "startTime": fmt_time(t.start_time),
        "endTime": fmt_time(t.end_time),
        "exitCode": t.exit_code,
        "containerInfo": t.container_info,
        "failureInfo": t.failure_info,
        "retryCount": t.retry_count,
        "lastRetryTime": fmt_time(t.last_retry_time),
        "requeueCount": t.requeue_count,
        "lastRequeueTime": fmt_time(t.last_requeue_time),
        "result": t.result,
    })


def task_json(t: Task, job: Job, base: str) -> dict:
    spec = dict(t.spec)
    job_constraints = job.spec.get("constraints") or {}
    constraints = {"maxWallClockTime": MAX_DURATION, "retentionTime": "P7D",
                   "maxTaskRetryCount": job_constraints.get("maxTaskRetryCount", 0),
                   **(spec.pop("constraints", None) or {})}
    out = {
        **spec,
        "url": f"{base}/jobs/{job.id}/tasks/{t.id}",
        "eTag": t.etag,
        "lastModified": fmt_time(t.last_modified),
        "creationTime": fmt_time(t.creation_time),
        "state": t.state,
        "stateTransitionTime": fmt_time(t.state_time),
        "constraints": constraints,
        "requiredSlots": t.required_slots,
        "executionInfo": execution_info(t),
    }
    if t.previous_state:
        out["previousState"] = t.previous_state
        out["previousStateTransitionTime"] = fmt_time(t.previous_state_time)
    if t.node_info:
        out["nodeInfo"] = t.node_info
    if "userIdentity" not in out:
        out["userIdentity"] = {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
    return out


_LATER_EXECUTION_FIELDS = ("endTime", "exitCode", "result", "failureInfo", "containerInfo")


def task_json_as_of(t: Task, job: Job, base: str, seen: tuple[int, str, dt.datetime]) -> dict:
    """The task as a lagging view (see Task.state_as_of) renders it: the state and times it
    had then, without the execution results it did not have yet."""
    out = task_json(t, job, base)
    index, state, since = seen
    if index == len(t.history) - 1:
        return out
    out["state"], out["stateTransitionTime"] = state, fmt_time(since)
    if index > 0:
        out["previousState"], out["previousStateTransitionTime"] = t.history[index - 1][0], \
            fmt_time(t.history[index - 1][1])
    else:
        out.pop("previousState", None)
        out.pop("previousStateTransitionTime", None)
    if state != "completed":
        info = out["executionInfo"]
        for key in _LATER_EXECUTION_FIELDS:
            info.pop(key, None)
        if state == "active":
            info.pop("startTime", None)
            out.pop("nodeInfo", None)
    return out


def job_json(job: Job, base: str) -> dict:
    spec = dict(job.spec)
    out = {
        **spec,
        "url": f"{base}/jobs/{job.id}",
        "eTag": job.etag,
        "lastModified": fmt_time(job.last_modified),
        "creationTime": fmt_time(job.creation_time),
        "state": job.state,
        "stateTransitionTime": fmt_time(job.state_time),
        "priority": spec.get("priority", 0),
        "maxParallelTasks": spec.get("maxParallelTasks", -1),
        "allowTaskPreemption": spec.get("allowTaskPreemption", False),
        "usesTaskDependencies": spec.get("usesTaskDependencies", False),
        "onAllTasksComplete": spec.get("onAllTasksComplete", "noaction"),
        "onTaskFailure": spec.get("onTaskFailure", "noaction"),
        "constraints": {"maxWallClockTime": MAX_DURATION, "maxTaskRetryCount": 0, **(spec.get("constraints") or {})},
        "executionInfo": _drop_none({
            "startTime": fmt_time(job.creation_time),
            "endTime": fmt_time(job.end_time),
            "poolId": job.pool_id,
            "terminateReason": job.terminate_reason,
        }),
    }
    if job.previous_state:
        out["previousState"] = job.previous_state
        out["previousStateTransitionTime"] = fmt_time(job.previous_state_time)
    return out


def file_json(name: str, url: str, path: Path) -> dict[str, Any]:
    st = path.stat()
    is_dir = path.is_dir()
    props: dict[str, Any] = {
        "creationTime": fmt_time(dt.datetime.fromtimestamp(st.st_ctime, dt.timezone.utc)),
        "lastModified": fmt_time(dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc)),
        "contentLength": str(0 if is_dir else st.st_size),
        "fileMode": oct(st.st_mode & 0o777777)[2:].rjust(6, "0"),
    }
    if not is_dir:
        props["contentType"] = "application/octet-stream"
    return {"name": name, "url": url, "isDirectory": is_dir, "properties": props}

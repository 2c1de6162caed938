"""Service rules the OpenAPI document cannot express, checked after schema validation.

Each check raises the service's error code and status (see notes/azure-batch.md): id syntax,
collection limits, task dependency rules, exit-condition job actions, resource/output file
shape, container settings against the pool, slots per node, autoscale intervals.
"""
from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from typing import Any

from . import errors
from .errors import BatchServiceError
from .util import ID_PATTERN, parse_duration

MAX_TASKS_PER_COLLECTION = 100
MAX_COLLECTION_BYTES = 1024 * 1024
MAX_DEPENDENCY_CHARS = 64000


def check_id(prop: str, value: str) -> None:
    if not ID_PATTERN.match(value or ""):
        reason = ("The id can contain any combination of alphanumeric characters including hyphens and "
                  "underscores, and cannot contain more than 64 characters.")
        raise errors.invalid_value(prop, value, reason)


def too_large(limit_desc: str) -> BatchServiceError:
    return BatchServiceError(413, "RequestBodyTooLarge",
                             "The request body is too large and exceeds the maximum permissible limit.",
                             [("MaxLimit", limit_desc)])


def check_collection(raw_len: int, body: dict) -> None:
    if raw_len > MAX_COLLECTION_BYTES:
        raise too_large(f"{MAX_COLLECTION_BYTES} bytes")
    if len(body.get("value") or []) > MAX_TASKS_PER_COLLECTION:
        raise too_large(f"{MAX_TASKS_PER_COLLECTION} tasks")


def vcpus(vm_size: str) -> int:
    """vCPU count from an Azure VM size name (Standard_D4s_v3 -> 4); 1 when not recognisable."""
    m = re.match(r"(?i)^(?:standard|basic)_[a-z]+?(\d+)", vm_size or "")
    return max(1, int(m.group(1))) if m else 1


def check_resource_files(prop: str, files: list[dict] | None) -> None:
    for i, rf in enumerate(files or []):
        sources = [k for k in ("autoStorageContainerName", "storageContainerUrl", "httpUrl") if rf.get(k)]
        if len(sources) != 1:
            raise errors.invalid_value(f"{prop}[{i}]", "resourceFile",
                                       "Exactly one of autoStorageContainerName, storageContainerUrl or httpUrl "
                                       "must be specified.")
        if sources[0] == "httpUrl":
            if not rf.get("filePath"):
                raise errors.missing_property(f"{prop}[{i}].filePath")
            if rf.get("blobPrefix"):
                raise errors.invalid_value(f"{prop}[{i}].blobPrefix", rf["blobPrefix"],
                                           "blobPrefix is only valid with a container source.")
        fp = rf.get("filePath") or ""
        if fp.startswith("/") or ".." in fp.replace("\\", "/").split("/"):
            raise errors.invalid_value(f"{prop}[{i}].filePath", fp,
                                       "The path must be relative and must not break out of the working directory.")


def check_output_files(prop: str, files: list[dict] | None) -> None:
    for i, of in enumerate(files or []):
        if not (of.get("destination") or {}).get("container"):
            raise errors.missing_property(f"{prop}[{i}].destination.container")


#: What the strict command-line check refuses inside a command line's words, and why.
_SECOND_LEVEL = {"'": "a single quote inside a quoted word (nested quoting)",
                 '"': "a double quote inside a quoted word (nested quoting)"}


def check_command_line(prop: str, command_line: str | None) -> None:
    """Refuse (400 InvalidPropertyValue) a command line whose splitting no source shows.

    Known: Batch does not run the line under a shell (REST spec, ``commandLine`` of
    TaskAddParameter, StartTask, JobPreparationTask); the official CreateTask_ContainerSettings
    example runs ``bash -c 'echo hello'``, the official pool and task examples ``/bin/bash -c
    'echo start task'`` and ``cmd /c echo hello``; Nextflow's Azure plugin sends ``sh -c '...'``
    one-liners; on Linux quoting decides how Batch splits the line (azure-sdk-for-net#17107,
    azure-docs PR #66405); nextflow#6863 / PR #6864: a second ``bash -c`` after ``&&`` was
    silently not run. Unknown: how Batch (and ``docker create`` for a container task) splits a
    line with a line break, a quote inside quotes (``'"'"'``), an escape or an unbalanced quote.
    So this is deliberately stricter than anything known: one line, no backslash, words split by
    ``shlex`` as a POSIX shell would, and no word still holding a quote once split. Switched
    off with ``svc.strict_command_lines = False``; the process is then started as before.
    """
    line = command_line or ""
    why = _refusal(line)
    if why:
        raise errors.invalid_value(
            prop, line if len(line) <= 200 else line[:200] + "...",
            f"The test Batch service refuses this command line: it holds {why}, and no source shows how "
            "Batch tokenises such a command line. Send one line with one level of quotes, such as "
            "/bin/sh -c 'echo hello', and pass a longer script in an environment setting or a resource file "
            "(svc.strict_command_lines = False turns this check off).")


@functools.lru_cache(maxsize=4096)
def _refusal(line: str) -> str | None:
    """What makes check_command_line refuse ``line`` (None: nothing). Worked out once per line: the
    tasks of a job share a few, and splitting each of 10,000 showed in the submission benchmark."""
    if "\n" in line or "\r" in line:
        return "a line break (the command line spans several lines)"
    if "\\" in line:
        return "a backslash escape"
    try:
        words = shlex.split(line)
    except ValueError:
        return "an unbalanced quote"
    return next((_SECOND_LEVEL[c] for c in _SECOND_LEVEL for w in words if c in w), None)


def command_lines(body: dict, kind: str) -> list[tuple[str, str | None]]:
    """(property name, command line) of every command line a create body carries: a pool's
    start task, a job's preparation, release and manager tasks, a task (and its multi-instance
    coordination line)."""
    if kind == "pool":
        st = body.get("startTask") or {}
        return [("startTask.commandLine", st.get("commandLine"))] if st else []
    if kind == "job":
        return [(f"{name}.commandLine", body[name].get("commandLine"))
                for name in ("jobPreparationTask", "jobReleaseTask", "jobManagerTask") if body.get(name)]
    found = [("commandLine", body.get("commandLine"))]
    mi = body.get("multiInstanceSettings") or {}
    if mi.get("coordinationCommandLine"):
        found.append(("multiInstanceSettings.coordinationCommandLine", mi["coordinationCommandLine"]))
    return found


def check_command_lines(body: dict, kind: str, prefix: str = "") -> None:
    """check_command_line on each command line of a pool, job or task body."""
    for prop, line in command_lines(body, kind):
        check_command_line(prefix + prop, line)


def check_pool(body: dict) -> None:
    check_id("id", body["id"])
    if not body.get("virtualMachineConfiguration"):
        raise errors.missing_property("virtualMachineConfiguration")
    auto = bool(body.get("enableAutoScale"))
    if auto:
        if not body.get("autoScaleFormula"):
            raise errors.missing_property("autoScaleFormula")
        for k in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if k in body:
                raise errors.invalid_value(k, body[k], f"{k} cannot be specified when enableAutoScale is true.")
        check_autoscale_interval(body.get("autoScaleEvaluationInterval"))
    else:
        if "autoScaleFormula" in body:
            raise errors.invalid_value("autoScaleFormula", "...", "Only valid when enableAutoScale is true.")
        if "targetDedicatedNodes" not in body and "targetLowPriorityNodes" not in body:
            raise errors.missing_property("targetDedicatedNodes")
    for k in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if body.get(k, 0) < 0:
            raise errors.invalid_value(k, body[k], "must not be negative")
    check_resize_timeout(body.get("resizeTimeout"))
    slots = body.get("taskSlotsPerNode", 1)
    limit = min(4 * vcpus(body["vmSize"]), 256)
    if slots < 1 or slots > limit:
        raise errors.invalid_value("taskSlotsPerNode", slots,
                                   f"taskSlotsPerNode must be between 1 and {limit} (4 x vCPUs, at most 256).")
    st = body.get("startTask")
    if st:
        check_resource_files("startTask.resourceFiles", st.get("resourceFiles"))
        check_container_settings("startTask.containerSettings", st.get("containerSettings"), body)


def check_resize_timeout(value: str | None) -> None:
    if value is not None and parse_duration(value) < 300:
        raise errors.invalid_value("resizeTimeout", value, "The minimum value is 5 minutes.")


def check_autoscale_interval(value: str | None) -> None:
    if value is not None and not (300 <= parse_duration(value) <= 168 * 3600):
        raise errors.invalid_value("autoScaleEvaluationInterval", value,
                                   "The value must be between 5 minutes and 168 hours.")


def check_container_settings(prop: str, cs: dict | None, pool_spec: dict | None) -> None:
    if not cs:
        return
    if not cs.get("imageName"):
        raise errors.missing_property(f"{prop}.imageName")
    if pool_spec is not None:
        cc = (pool_spec.get("virtualMachineConfiguration") or {}).get("containerConfiguration")
        if not cc:
            raise errors.invalid_value(prop, cs.get("imageName"),
                                       "containerSettings requires a pool with containerConfiguration.")


def check_job(body: dict) -> None:
    check_id("id", body["id"])
    pi = body.get("poolInfo") or {}
    if not pi.get("poolId") and not pi.get("autoPoolSpecification"):
        raise errors.missing_property("poolInfo.poolId")
    if pi.get("poolId") and pi.get("autoPoolSpecification"):
        raise errors.invalid_value("poolInfo", "both", "Specify poolId or autoPoolSpecification, not both.")
    for name in ("jobPreparationTask", "jobReleaseTask", "jobManagerTask"):
        t = body.get(name)
        if t:
            if t.get("id"):
                check_id(f"{name}.id", t["id"])
            check_resource_files(f"{name}.resourceFiles", t.get("resourceFiles"))
    if body.get("jobReleaseTask") and not body.get("jobPreparationTask"):
        raise errors.invalid_value("jobReleaseTask", "...", "A job release task requires a job preparation task.")


def check_task(body: dict, job_spec: dict, pool_spec: dict | None, prefix: str = "") -> None:
    """Task-level rules that depend on the job (and on its pool when it exists)."""
    check_id(prefix + "id", body["id"])
    if not body.get("commandLine", "").strip():
        raise errors.invalid_value(prefix + "commandLine", "", "The command line must not be empty.")
    deps = body.get("dependsOn")
    if deps is not None:
        if not job_spec.get("usesTaskDependencies"):
            raise BatchServiceError(409, "TaskDependenciesNotSpecifiedOnJob",
                                    "The task depends on other tasks, but the job does not use task dependencies.")
        ids = deps.get("taskIds") or []
        if sum(len(x) for x in ids) > MAX_DEPENDENCY_CHARS:
            raise BatchServiceError(400, "TaskDependencyListTooLong",
                                    "The task dependency list is too long to be stored.",
                                    [("MaxLength", str(MAX_DEPENDENCY_CHARS))])
        for i, r in enumerate(deps.get("taskIdRanges") or []):
            if r["start"] > r["end"] or r["start"] < 0:
                raise errors.invalid_value(f"{prefix}dependsOn.taskIdRanges[{i}]", f"{r['start']}-{r['end']}",
                                           "start must be non-negative and not greater than end.")
        if body["id"].lower() in {x.lower() for x in ids}:
            raise errors.invalid_value(prefix + "dependsOn.taskIds", body["id"], "A task cannot depend on itself.")
    ec = body.get("exitConditions") or {}
    if _uses_job_action(ec) and job_spec.get("onTaskFailure", "noaction") != "performexitoptionsjobaction":
        raise errors.invalid_value(
            prefix + "exitConditions.jobAction", "terminate/disable",
            "A jobAction in exitConditions requires the job's onTaskFailure to be performexitoptionsjobaction.")
    check_resource_files(prefix + "resourceFiles", body.get("resourceFiles"))
    check_output_files(prefix + "outputFiles", body.get("outputFiles"))
    check_container_settings(prefix + "containerSettings", body.get("containerSettings"), pool_spec)
    c = body.get("constraints") or {}
    if c.get("maxTaskRetryCount", 0) < -1:
        raise errors.invalid_value(prefix + "constraints.maxTaskRetryCount", c["maxTaskRetryCount"])
    if body.get("requiredSlots", 1) < 1:
        raise errors.invalid_value(prefix + "requiredSlots", body["requiredSlots"])


def _uses_job_action(ec: dict[str, Any]) -> bool:
    options = [m.get("exitOptions") or {} for m in (ec.get("exitCodes") or []) + (ec.get("exitCodeRanges") or [])]
    options += [ec.get(k) or {} for k in ("preProcessingError", "fileUploadError", "default")]
    return any(o.get("jobAction") not in (None, "none") for o in options)


# ---- limits and rules the spec states (issue 14); each switchable through svc.faults.rules ----
#: Default bound of a create-job body, in bytes. The spec says only that JobPreparationTask (and
#: every other task's) resourceFiles has "a maximum size" past which the request fails with
#: RequestEntityTooLarge; it gives no number for create-job. Chosen: 1 MiB of body, the bound the
#: spec states for add-task-collection ("must be less than 1MB").
MAX_JOB_BODY_BYTES = 1024 * 1024


@dataclass
class ServiceRules:
    """Which of the spec's limits and rules the service enforces (all on by default, as Azure
    does; a test switches one off or changes a bound through ``svc.faults.rules``)."""
    max_job_body: int | None = MAX_JOB_BODY_BYTES   # bytes; None: any size
    reactivation: bool = True     # ReactivateTask refused for exit code 0 and ended jobs
    filters: bool = True          # $filter only on the properties "OData filters in Batch" lists
    images: bool = True           # pool images must be a supported image / node agent pair


def check_job_body(raw_len: int, limits: ServiceRules) -> None:
    """Create-job: a body past the bound is 413 RequestEntityTooLarge, the code the spec gives
    for too large a resourceFiles list (JobPreparationTask.resourceFiles and the other task
    definitions), distinct from add-task-collection's RequestBodyTooLarge."""
    if limits.max_job_body is not None and raw_len > limits.max_job_body:
        raise BatchServiceError(413, "RequestEntityTooLarge",
                                "The request body is too large: reduce the size of the resource files list "
                                "(for example with a .zip file, an application package or a container image).",
                                [("MaxLimit", f"{limits.max_job_body} bytes"), ("RequestBodySize", str(raw_len))])


def check_reactivation(job_state: str, task: Any, limits: ServiceRules) -> None:
    """ReactivateTask (spec: it fails for tasks that are not completed or that completed with
    exit code 0, and when the job is completed, terminating or deleting). The spec names no
    error codes; chosen from the service's documented codes (Azure.Compute.Batch
    BatchErrorCode): 409 JobCompleted / JobBeingTerminated / JobBeingDeleted for the job,
    409 TaskCompleted for an exit-0 task (a task operation on a completed task) and 409
    TaskNotCompleted for a task still active or running. With ``limits.reactivation`` off,
    only the old rule stays: a completed task that failed."""
    job_codes = {"completed": "JobCompleted", "terminating": "JobBeingTerminated", "deleting": "JobBeingDeleted"}
    if limits.reactivation and job_state in job_codes:
        raise errors.conflict(job_codes[job_state],
                              f"The job is {job_state}: its tasks cannot be reactivated.")
    if job_state != "active" and not limits.reactivation:
        raise errors.conflict("JobNotActive", f"The job is in the {job_state} state: its tasks cannot be reactivated.")
    if task.state != "completed":
        raise errors.conflict("TaskNotCompleted", "Only a completed task can be reactivated.")
    if limits.reactivation and task.exit_code == 0:
        raise errors.conflict("TaskCompleted", "The task completed with exit code 0 and cannot be reactivated "
                                               "(whatever happened after its process exited).")
    if task.result != "failure":
        raise errors.conflict("TaskCompleted", "Only a task that failed can be reactivated.")


def _same_image(a: dict, b: dict) -> bool:
    """Marketplace references match on publisher, offer and sku (case-insensitively, as Azure
    compares them); the version is whatever the pool asks for ("latest" or a pinned one)."""
    return all((a.get(k) or "").lower() == (b.get(k) or "").lower() for k in ("publisher", "offer", "sku"))


def check_image(body: dict, supported: list[dict], limits: ServiceRules) -> None:
    """Pool create: the imageReference / nodeAgentSKUId pair must be one the account's
    supported-images list (Pools_ListSupportedImages) gives, and a pool with a
    containerConfiguration needs an image with the DockerCompatible capability (container
    workloads article: container pools use the images that list marks so). Refused as 400
    InvalidPropertyValue, the code Azure answers for a mismatched pair (hashicorp/terraform
    #36698: ubuntu-server-container 20.04 with batch.node.ubuntu 24.04); the code for a
    non-container image in a container pool is not documented and chosen the same. Custom
    images (virtualMachineImageId) are not checked (they carry no marketplace reference)."""
    vmc = body.get("virtualMachineConfiguration") or {}
    ref = vmc.get("imageReference") or {}
    if not limits.images or ref.get("virtualMachineImageId") or ref.get("sharedGalleryImageId") \
            or ref.get("communityGalleryImageId"):
        return
    agent = vmc.get("nodeAgentSKUId") or ""
    image = f"{ref.get('publisher')}:{ref.get('offer')}:{ref.get('sku')}"
    match = next((s for s in supported if _same_image(s["imageReference"], ref)), None)
    if match is None:
        raise errors.invalid_value("virtualMachineConfiguration.imageReference", image,
                                   "The image is not in the list of images supported by the Batch service "
                                   "(List Supported Images).")
    if match["nodeAgentSKUId"].lower() != agent.lower():
        raise errors.invalid_value("virtualMachineConfiguration.nodeAgentSKUId", agent,
                                   f"The node agent SKU does not match the image {image}, whose node agent is "
                                   f"{match['nodeAgentSKUId']!r}.")
    if vmc.get("containerConfiguration") and "DockerCompatible" not in (match.get("capabilities") or []):
        raise errors.invalid_value("virtualMachineConfiguration.containerConfiguration", image,
                                   "The image does not support containers (it lacks the DockerCompatible "
                                   "capability in List Supported Images).")

"""Shared builders and waits for the emulator tests (real SDK models, no mocks)."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from azure.batch import models

IMAGE = dict(publisher="microsoft-dsvm", offer="ubuntu-hpc", sku="2204")
POLL = 0.05


def vm_config(container: bool = False) -> models.VirtualMachineConfiguration:
    cc = models.BatchContainerConfiguration(type="dockerCompatible", container_image_names=["python:3.11-slim"]) \
        if container else None
    return models.VirtualMachineConfiguration(image_reference=models.BatchVmImageReference(**IMAGE),
                                              node_agent_sku_id="batch.node.ubuntu 22.04",
                                              container_configuration=cc)


def pool_options(pool_id: str = "pool1", dedicated: int = 1, low: int = 0, slots: int = 1,
                 vm_size: str = "Standard_D2s_v3", **kw: Any) -> models.BatchPoolCreateOptions:
    return models.BatchPoolCreateOptions(id=pool_id, vm_size=vm_size, virtual_machine_configuration=vm_config(
        kw.pop("container", False)), target_dedicated_nodes=dedicated, target_low_priority_nodes=low,
        task_slots_per_node=slots, **kw)


def wait_until(fn: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(POLL)
    raise AssertionError(f"timed out waiting for {what} (last value {last!r})")


def wait_nodes_idle(client: Any, pool_id: str, count: int, timeout: float = 20.0) -> list:
    def ready():
        nodes = list(client.list_nodes(pool_id))
        return nodes if len(nodes) == count and all(n.state == "idle" for n in nodes) else None
    return wait_until(ready, timeout, f"{count} idle nodes in {pool_id}")


def wait_tasks_done(client: Any, job_id: str, total: int, timeout: float = 30.0) -> Any:
    def done():
        c = client.get_job_task_counts(job_id)
        return c if c.task_counts.completed == total else None
    return wait_until(done, timeout, f"{total} completed tasks in {job_id}")


def task(task_id: str, command: str, **kw: Any) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command, **kw)


def sh(script: str) -> str:
    """A commandLine running ``script`` under /bin/sh (Batch does not use a shell by itself)."""
    return "/bin/sh -c " + "'" + script.replace("'", "'\"'\"'") + "'"


def new_job(client: Any, job_id: str = "job1", pool_id: str = "pool1", **kw: Any) -> None:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), **kw))


def container_sas_url(azurite: Any, container: str, permission: str, hours: float = 1.0) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(azurite.account_name, container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions.from_string(permission),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours))
    return f"{azurite.blob_endpoint}/{container}?{sas}"


def blob_sas_url(azurite: Any, container: str, blob: str) -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    sas = generate_blob_sas(azurite.account_name, container, blob, account_key=azurite.account_key,
                            permission=BlobSasPermissions(read=True),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return f"{azurite.blob_endpoint}/{container}/{blob}?{sas}"

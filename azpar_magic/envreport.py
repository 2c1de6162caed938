"""``%azpar env [PROFILE] [JOB]``: what a cell's job installs on the nodes, from where, and what
the pool's image already has (issue 15).

The requirement set is computed again from what the job captured (``job.capture.packages``: the
distributions behind the modules the body used, at the kernel's versions) and the cell's
``--packages`` (kept in the job's manifest), exactly as the Azure backend computed it when it
staged the job (environment.requirement_set; local wheels come from its cache, nothing is built
twice). A job read back from the job store after its kernel ended has no capture: the report
says so rather than guess.

What the image has: the pool's start task writes ``pip list --format=json`` of the image's Python
into the node's shared folder (commands.IMAGE_PACKAGES); this reads it from one idle or running
node through the node file API (REST spec: Get Node File, path relative to the node's root).
A pool made by an earlier version, or with no node yet, has not reported: the column says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    """One requirement as shown: its distribution, version, where it comes from, and whether
    the pool's image has it at that version ("" when no node has reported)."""

    name: str
    version: str
    source: str
    on_image: str


def canonical(name: str) -> str:
    """PEP 503 normal form, so ``Foo_Bar`` from pip list matches ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(backend: Any) -> tuple[dict[str, str] | None, str]:
    """(name -> version of the image's Python, the node it came from), or (None, why not)."""
    from azure.core.exceptions import AzureError

    from .backends.azure import commands
    from .backends.azure.pool import state_name

    pool_id = backend.profile["pool_id"]
    try:
        nodes = [n for n in backend.client.list_nodes(pool_id, select=["id", "state"])
                 if state_name(n.state) in ("idle", "running")]
    except AzureError as exc:
        return None, f"the pool {pool_id} could not be read ({type(exc).__name__})"
    if not nodes:
        return None, f"the pool {pool_id} has no idle or running node to ask"
    for node in nodes[:3]:
        try:
            data = b"".join(backend.client.download_node_file(pool_id, node.id, f"shared/{commands.IMAGE_PACKAGES}"))
            listed = json.loads(data)
            return {canonical(d["name"]): str(d["version"]) for d in listed}, node.id
        except (AzureError, ValueError, KeyError, TypeError):
            continue
    return None, (f"no node of the pool {pool_id} has reported its image's packages (a pool made by an earlier "
                  "version of azpar_magic does not; %azpar pool delete and a new cell make it again)")


def rows(packages: dict[str, str], overrides: list[str], image: dict[str, str] | None) -> list[Row]:
    """The requirement set of a job, one row per requirement."""
    from . import environment

    wanted = environment.requirement_set(packages, overrides)
    out = []
    for req in wanted.requirements:
        have = None if image is None else image.get(canonical(req.name))
        on_image = "" if image is None else ("yes" if have == req.version else f"no ({have})" if have else "no")
        out.append(Row(req.name, req.version, req.source, on_image))
    return out


def report(job: Any, backend: Any) -> str:
    """The text ``%azpar env`` prints for ``job`` run by ``backend``."""
    info = (job.manifest or {}).get("backend_info") or {}
    overrides = list(info.get("packages") or [])
    head = f"job {job.id}"
    if getattr(backend, "name", "") != "azure":
        return (f"{head} ran on the {getattr(backend, 'name', 'local')} pool: nothing is installed there; the "
                "iterations use this kernel's environment.\n")
    if not backend.profile["auto_packages"] or info.get("auto_packages") is False:
        listed = " ".join(overrides) or "nothing"
        why = (f"the profile {backend.profile.name} says auto_packages = false" if not backend.profile["auto_packages"]
               else "it ran with --no-auto-packages")
        return (f"{head}: {why}: the nodes install only the profile's packages and --packages ({listed}); the image "
                "must have the rest, which each task checks.\n")
    if job.capture is None:
        return (f"{head} was read back from the job store: what it captured is not kept there, so its requirement set "
                "cannot be shown. Run the cell again and then %azpar env.\n")
    image, where = image_packages(backend)
    table = rows(dict(job.capture.packages), overrides, image)
    if not table:
        return f"{head}: the cell uses no installed distribution; nothing is installed on the nodes.\n"
    lines = [f"{head}: {len(table)} distributions installed on each node of pool {backend.profile['pool_id']} "
             "(once per node per set; skipped where the image has the same version)",
             f"image packages: {'reported by node ' + where if image is not None else where}"]
    header = ("name", "version", "from", "on the image")
    cells = [header, *[(r.name, r.version, r.source, r.on_image or "not reported") for r in table]]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines += ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells]
    return "\n".join(lines) + "\n"

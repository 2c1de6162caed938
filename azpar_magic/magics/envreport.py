"""``%azpar env [PROFILE] [JOB]``: what a cell's job installs on the nodes, from where, and what
the pool's image already has (issue 15).

The requirement set is computed again from what the job captured (``job.capture.packages``: the
distributions behind the modules the body used, at the kernel's versions) and the cell's
``--packages`` (kept in the job's manifest), exactly as the Azure backend computed it when it
staged the job (environment.requirement_set; local wheels come from its cache, nothing is built
twice). A job read back from the job store after its kernel ended has no capture: the report
says so rather than guess.

What the image has: the pool's start task writes ``pip list --format=json`` of the image's Python
into the node's shared folder (commands.IMAGE_PACKAGES); the backend reads it from one idle or
running node (AzureBackend.image_packages).
A pool made by an earlier version, or with no node yet, has not reported: the column says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Row:
    """One requirement as shown: its distribution, version, where it comes from, and whether
    the pool's image has it at that version ("" when no node has reported)."""

    name: str
    version: str
    source: str
    on_image: str


def rows(packages: dict[str, str], overrides: list[str], image: dict[str, str] | None) -> list[Row]:
    """The requirement set of a job, one row per requirement."""
    from ..run import environment

    wanted = environment.requirement_set(packages, overrides)
    out = []
    for req in wanted.requirements:
        have = None if image is None else image.get(canonicalize_name(req.name))
        on_image = "" if image is None else ("yes" if have == req.version else f"no ({have})" if have else "no")
        out.append(Row(req.name, req.version, req.source, on_image))
    return out


def report(job: Any, backend: Any) -> str:
    """The text ``%azpar env`` prints for ``job`` run by ``backend``."""
    info = (job.manifest or {}).get("backend_info") or {}
    overrides = list(info.get("packages") or [])
    head = f"job {job.id}"
    if not backend.installs_packages:
        return (
            f"{head} ran on the {backend.name} pool: nothing is installed there; the "
            "iterations use this kernel's environment.\n"
        )
    if not backend.profile["auto_packages"] or info.get("auto_packages") is False:
        listed = " ".join(overrides) or "nothing"
        why = (
            f"the profile {backend.profile.name} says auto_packages = false"
            if not backend.profile["auto_packages"]
            else "it ran with --no-auto-packages"
        )
        return (
            f"{head}: {why}: the nodes install only the profile's packages and --packages ({listed}); the image "
            "must have the rest, which each task checks.\n"
        )
    if job.capture is None:
        return (
            f"{head} was read back from the job store: what it captured is not kept there, so its requirement set "
            "cannot be shown. Run the cell again and then %azpar env.\n"
        )
    image, where = backend.image_packages()
    table = rows(dict(job.capture.packages), overrides, image)
    if not table:
        return f"{head}: the cell uses no installed distribution; nothing is installed on the nodes.\n"
    lines = [
        f"{head}: {len(table)} distributions installed on each node of pool {backend.profile['pool_id']} "
        "(once per node per set; skipped where the image has the same version)",
        f"image packages: {'reported by node ' + where if image is not None else where}",
    ]
    header = ("name", "version", "from", "on the image")
    cells = [header, *[(r.name, r.version, r.source, r.on_image or "not reported") for r in table]]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines += ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells]
    return "\n".join(lines) + "\n"

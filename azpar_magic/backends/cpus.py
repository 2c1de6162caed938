"""How many CPUs this process may use: the local pool's default size, and the bound on
``--workers`` (session) and the doctor's local report read the same figure. Linux limits it by
CPU affinity and by the cgroup's CPU quota; elsewhere it is the machine's count."""

from __future__ import annotations

import math
import os
import re


def usable_cpus(proc: str = "/proc/self") -> tuple[int, str]:
    """(default pool size, why): the CPUs this process may actually use, as limited by its
    CPU affinity and by its cgroup's CPU quota (a JupyterHub pod limited to 2 CPUs on a
    64-core node gets 2 workers, not 64)."""
    total = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        allowed = total
    quota = cgroup_cpu_limit(proc)
    count, limit = allowed, "its CPU affinity" if allowed < total else ""
    if quota is not None and math.ceil(quota) < count:
        count, limit = max(1, math.ceil(quota)), f"its cgroup CPU quota of {quota:g} CPUs"
    if not limit:
        return count, "one per CPU"
    return count, f"one per CPU this process may use: {count} of the machine's {total}, by {limit}"


def cgroup_cpu_limit(proc: str = "/proc/self") -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup and its ancestors, the smallest one
    (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), or None without
    a quota. ``proc`` is the process folder whose ``cgroup`` and ``mountinfo`` are read."""
    limits = []
    for mount, folder, v2 in _cgroup_cpu_folders(proc):
        while True:
            limit = _read_cpu_quota(folder, v2)
            if limit is not None:
                limits.append(limit)
            if os.path.normpath(folder) == os.path.normpath(mount):
                break
            folder = os.path.dirname(folder)
    return min(limits) if limits else None


def _cgroup_cpu_folders(proc: str) -> list[tuple[str, str, bool]]:
    """(mount point, this process's cgroup folder under it, is v2) for the CPU controller."""
    try:
        with open(os.path.join(proc, "cgroup"), encoding="utf-8") as fh:
            memberships = [line.rstrip("\n").split(":", 2) for line in fh if line.count(":") >= 2]
    except OSError:
        return []
    mounts = []  # (root, mount point, fstype, super options)
    try:
        with open(os.path.join(proc, "mountinfo"), encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                    mounts.append((fields[3], _unescape(fields[4]), tail[0], tail[2].split(",")))
    except OSError:
        return []
    found = []
    for _hier, controllers, path in memberships:
        v2 = controllers == ""
        for root, point, fstype, options in mounts:
            if (fstype == "cgroup2") != v2 or (not v2 and "cpu" not in controllers.split(",")):
                continue
            if not v2 and "cpu" not in options:
                continue
            rel = os.path.relpath(path, root) if path.startswith(root) else None
            if rel is None:
                continue
            folder = os.path.normpath(os.path.join(point, "" if rel == "." else rel))
            found.append((point, folder, v2))
            break
    return found


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _read_cpu_quota(folder: str, v2: bool) -> float | None:
    try:
        if v2:
            with open(os.path.join(folder, "cpu.max"), encoding="utf-8") as fh:
                max_quota, max_period = (fh.read().split() + ["100000"])[:2]
            if max_quota == "max":
                return None
            return int(max_quota) / int(max_period)
        with open(os.path.join(folder, "cpu.cfs_quota_us"), encoding="utf-8") as fh:
            quota = int(fh.read().strip())
        with open(os.path.join(folder, "cpu.cfs_period_us"), encoding="utf-8") as fh:
            period = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None

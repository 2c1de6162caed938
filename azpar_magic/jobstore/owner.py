"""Who a job is for and which process runs it: the creator (the hub user, else the OS user), the owning
process identified so that another process can tell later whether it still runs, and what follows from that
(a job whose owner is gone is lost, unless it runs on without its kernel and can be taken over).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import identity, platforms
from ..jobs import FINAL_STATES


def creator() -> str:
    """Who the job is for: the JupyterHub user when there is one (several hub users may map
    to one OS account), else the OS user."""
    return identity.user()


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc; None
    when there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], fields[19]


_owner_cache: dict[int, dict] = {}


def owner() -> dict:
    """This process, identified so that another process can later tell whether it still runs:
    a pid alone could be reused, so its start time and the machine's boot id go with it."""
    pid = os.getpid()
    if pid not in _owner_cache:
        stat_ = _proc_stat(pid)
        _owner_cache[pid] = {
            "host": socket.gethostname(),
            "pid": pid,
            "start": stat_[1] if stat_ else None,
            "boot": _boot_id(),
        }
    return dict(_owner_cache[pid])


def owner_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the process described by ``owner()`` still runs; None when this machine
    cannot tell (another host sharing the home folder)."""
    if not info or info.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if info.get("boot") and boot and info["boot"] != boot:
        return False
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    if os.path.isdir("/proc/self"):
        found = _proc_stat(pid)
        if found is None or found[0] in ("Z", "X"):  # gone, or a zombie nobody reaped yet
            return False
        return info.get("start") is None or found[1] == info["start"]
    # No /proc (macOS, Windows): existence only, so a reused pid looks alive. Never os.kill(pid, 0)
    # here: on Windows that terminates the process.
    return platforms.pid_alive(pid)


def reattachable(manifest: Mapping[str, Any]) -> bool:
    """A job that runs on without its kernel (``outlives_kernel``), has not ended, and whose
    kernel is gone or on another machine: a process that attaches to it takes it over."""
    if manifest.get("state") in FINAL_STATES:
        return False
    if not (manifest.get("backend_info") or {}).get("outlives_kernel"):
        return False
    return owner_alive(manifest.get("owner") or {}) is not True


def _takeover_file(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """One file per owner that ended: its name says which one, so a later owner's end is claimed anew."""
    info = manifest.get("owner") or {}
    tag = "-".join(str(info.get(key)) for key in ("host", "pid", "start"))
    return folder / f"takeover-{''.join(c if c.isalnum() or c in '-._' else '_' for c in tag)}.json"


def claim_takeover(folder: Path, manifest: Mapping[str, Any]) -> bool:
    """Whether this process may take over the job whose (gone) owner ``manifest`` names. Several
    kernels can notice the end of that owner at once (two attaches, or kernels that were waiting
    on the job): exactly one of them gets True. A claim whose claimer ended before it took the job
    over (its own owner entry never reached the manifest) is broken and claimed again; two
    processes breaking the same dead claim at the same instant could then both get True (the
    second removing the first's new claim), which needs a claimer to die mid-take-over first."""
    path = _takeover_file(folder, manifest)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            try:
                claimer = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False  # being written this instant: that claimer is alive
            if owner_alive(claimer) is not False:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(owner(), fh)
        return True
    return False


def release_takeover(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Give up a claim this process could not follow through (its engine could not follow the job),
    so another kernel may take the job over."""
    with contextlib.suppress(FileNotFoundError):
        _takeover_file(folder, manifest).unlink()

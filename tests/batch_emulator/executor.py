"""Runs node commands as local processes, the way a Linux Batch node agent would.

commandLine is not given to a shell: it is split with shlex and the first word is the program
(so ``/bin/sh -c '...'`` works because sh is the program). Each process gets its own process
group so a kill takes its children too, and every process ever started is tracked so stop()
leaves no orphans. The environment is built from scratch: AZ_BATCH_* variables, the
environment settings, PATH (the node's Python first: a bare interpreter, see nodes.py, or the
emulator's own when bare nodes are switched off), HOME and LANG; the test process's own
environment never reaches a task. A command runs as the OS user it is given (nodes.NodeUser:
setuid/setgid, no supplementary groups, umask 022 as on a Linux node) or as the test process.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .nodes import NodeUser

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def interpreter_dir() -> str:
    """The directory holding the emulator's own interpreter (venv bin/), put first on PATH."""
    return os.path.dirname(sys.executable)


def build_environment(batch_vars: dict[str, str], settings: list[dict] | None, home: Path,
                      python_dir: str | None = None) -> dict[str, str]:
    """A node command's whole environment; ``python_dir`` (the node's Python) leads PATH."""
    env = {"PATH": (python_dir or interpreter_dir()) + ":" + BASE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    for s in settings or []:
        env[s["name"]] = s.get("value", "") or ""
    env.update(batch_vars)   # AZ_BATCH_* cannot be overridden by settings
    return env


class ProgramNotFound(Exception):
    pass


class ProcessTable:
    """Starts processes in new sessions and can kill any or all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    def start(self, command_line: str, cwd: Path, env: dict[str, str],
              stdout_path: Path, stderr_path: Path, user: NodeUser | None = None) -> subprocess.Popen:
        """Start ``command_line`` (split, no shell); as ``user`` when given, else as this process."""
        try:
            argv = shlex.split(command_line)
        except ValueError as e:
            raise ProgramNotFound(f"cannot parse command line: {e}") from None
        if not argv:
            raise ProgramNotFound("empty command line")
        cwd.mkdir(parents=True, exist_ok=True)
        as_user = {"user": user.uid, "group": user.gid, "extra_groups": []} if user is not None else {}
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                        umask=0o022, **as_user)
            except (FileNotFoundError, PermissionError, NotADirectoryError, OSError) as e:
                raise ProgramNotFound(f"{argv[0]}: {e.strerror or e}") from None
        with self._lock:
            self._procs.add(proc)
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float | None) -> int | None:
        """Exit code, or None when the timeout passed first."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        with self._lock:
            self._procs.discard(proc)
        return code

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            self.kill(p)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        with self._lock:
            self._procs.difference_update(procs)

    def live(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p.poll() is None]

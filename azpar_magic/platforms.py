"""What this operating system offers the local pool, and the few process and file primitives
that differ between Linux, macOS and Windows.

Linux and macOS take the fast path: a worker gets a private pipe pair as inherited file
descriptors (``pass_fds``), leads a session of its own (so that one ``killpg`` ends it and
whatever its task started), the kernel waits on every worker's pipe at once with
``select``, and ``--inputs`` are symbolic links to the original files.

Windows has none of that: no descriptor passing, no process groups to kill, ``select``
works on sockets only, ``os.kill(pid, 0)`` *terminates* a process there, and symbolic links
need a privilege most users lack. The portable path uses only what Windows has: a worker
talks over its own stdin/stdout pipes, one reader thread per worker feeds a queue the
dispatcher waits on, a worker is ended with its descendants found by parent pid (what
``taskkill /T`` does), a process's existence is asked of the system (``OpenProcess`` on
Windows), and inputs are hard links, else copies. ``AZPAR_PORTABLE=1`` forces that path
on Linux, which is how it is tested: no Windows machine runs the tests (see README,
"Platforms").

``worker.py`` keeps its own small copies of the worker-side halves (it imports nothing of
the package); the kernel tells it which path to take (``--stdio``, ``symlinks`` in a
task's data).
"""

from __future__ import annotations

import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WINDOWS = sys.platform == "win32"
PORTABLE_VARIABLE = "AZPAR_PORTABLE"
READ_SIZE = 1 << 20  # bytes read from a worker's pipe at once


@dataclass(frozen=True)
class Platform:
    """What the local pool may rely on here. ``portable``: the Windows-only path is taken
    (on Windows, or forced by AZPAR_PORTABLE=1)."""

    name: str
    portable: bool
    pass_fds: bool  # a child inherits chosen descriptors
    process_groups: bool  # a worker leads its own group; one killpg ends its whole tree
    symlinks: bool  # --inputs may be symbolic links


def forced_portable(environ: Mapping[str, str] | None = None) -> bool:
    """Whether AZPAR_PORTABLE=1 asks for the portable path on a system that has the fast one."""
    return (os.environ if environ is None else environ).get(PORTABLE_VARIABLE, "").strip() == "1"


def current(environ: Mapping[str, str] | None = None) -> Platform:
    """This system's capabilities, read anew each call (cheap) so that a test may set
    AZPAR_PORTABLE for one pool."""
    if WINDOWS:
        return Platform("windows", True, False, False, _windows_symlinks_allowed())
    name = "macos" if sys.platform == "darwin" else sys.platform
    if forced_portable(environ):
        return Platform(f"{name} (portable mode)", True, False, False, False)
    return Platform(name, False, True, True, True)


_symlink_probe: list[bool] = []


def _windows_symlinks_allowed() -> bool:
    """Whether this Windows account may create symbolic links (an administrator, or
    Developer Mode): tried once, in the temporary folder."""
    if not _symlink_probe:
        import tempfile

        folder = tempfile.mkdtemp(prefix="azpar-symlink-probe-")
        try:
            target = os.path.join(folder, "target")
            open(target, "wb").close()
            os.symlink(target, os.path.join(folder, "link"))
            _symlink_probe.append(True)
        except OSError:
            _symlink_probe.append(False)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _symlink_probe[0]


# ---------------------------------------------------------------------- starting a worker


@dataclass
class Started:
    """A worker process and the kernel's ends of its two pipes."""

    proc: subprocess.Popen
    send_fd: int
    recv_fd: int


def start_worker(command: Sequence[str], env: Mapping[str, str], log, platform: Platform) -> Started:
    """Start ``command`` (``python worker.py --serve ...``) with a private pipe pair. Fast
    path: the pipes are inherited descriptors named by ``--fd-in``/``--fd-out``, stdout and
    stderr go to ``log``, the worker leads a new session. Portable path: the pipes are the
    worker's stdin and stdout (``--stdio``; it moves them aside at once so that a task's
    prints never reach them), stderr goes to ``log``."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    try:
        if platform.pass_fds:
            proc = subprocess.Popen(
                [*command, "--fd-in", str(to_child_r), "--fd-out", str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=platform.process_groups,
                close_fds=True,
                env=dict(env),
            )
        else:
            proc = subprocess.Popen(
                [*command, "--stdio"],
                stdin=to_child_r,
                stdout=from_child_w,
                stderr=log,
                close_fds=True,
                env=dict(env),
                # Keeps the console's Ctrl-C (meant for the kernel) away from the worker on Windows.
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )
    except BaseException:
        for fd in (to_child_w, from_child_r):
            os.close(fd)
        raise
    finally:
        os.close(to_child_r)
        os.close(from_child_w)
    binary_mode(to_child_w)
    binary_mode(from_child_r)
    return Started(proc, to_child_w, from_child_r)


def binary_mode(fd: int) -> None:
    """No newline translation on a pipe's descriptor (Windows C runtime; nothing elsewhere)."""
    if sys.platform == "win32":
        import msvcrt

        msvcrt.setmode(fd, os.O_BINARY)


# ---------------------------------------------------------------------- ending a worker


def kill_worker(proc: subprocess.Popen, platform: Platform) -> None:
    """End a worker at once with what its task started. Fast path: its process group.
    Portable path: its descendants by parent pid, then itself. On Windows that is
    ``taskkill /F /T`` (no job object: a descendant whose parent already ended is missed)."""
    if platform.process_groups:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    elif WINDOWS:
        try:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        kill_descendants(proc.pid)
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def descendants(pid: int, proc_root: str = "/proc") -> list[int]:
    """The processes started by ``pid``, its children first, found by parent pid in /proc
    (empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, name, "stat"), "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found.extend(c for c in children if c not in found)
        todo.extend(children)
    return found


def kill_descendants(pid: int) -> None:
    """SIGKILL every process ``pid`` started (POSIX without process groups)."""
    for child in descendants(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------------- is it alive?


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended). POSIX asks
    ``os.kill(pid, 0)``; Windows asks ``OpenProcess``/``GetExitCodeProcess`` (there,
    ``os.kill(pid, 0)`` would terminate the process). Untested on Windows."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return _proc_state(pid) not in ("Z", "X")


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _windows_pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, someone else's
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    return False


# ---------------------------------------------------------------------- --inputs


def link_or_copy(source: str, link: str, symlinks: bool) -> str:
    """Make ``link`` show the file ``source`` without copying it where possible: a symbolic
    link when allowed, else a hard link (same volume), else a copy. Returns which was made."""
    if symlinks:
        try:
            os.symlink(source, link)
            return "symlink"
        except OSError:
            pass  # Windows without the privilege, a file system without links
    try:
        os.link(source, link)
        return "hardlink"
    except OSError:
        shutil.copy2(source, link)
        return "copy"


# ---------------------------------------------------------------------- waiting on workers


class Mailbox:
    """What the workers sent, waited on by the dispatcher thread: ``wait`` returns
    ``(worker id, bytes)`` pairs, ``b""`` when that worker's pipe ended. The mailbox owns
    the receiving descriptors it watches: it closes them."""

    def watch(self, key: str, fd: int) -> None:
        raise NotImplementedError

    def forget(self, key: str) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> list[tuple[str, bytes]]:
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def mailbox(platform: Platform) -> Mailbox:
    return ThreadMailbox() if platform.portable else SelectMailbox()


class SelectMailbox(Mailbox):
    """Fast path: one ``select`` over every worker's pipe and a wake-up pipe."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._fds: dict[str, int] = {}
        # Read into this one buffer, then copy out what came: os.read(fd, READ_SIZE) allocates
        # READ_SIZE for every read, which malloc maps and unmaps (three system calls and a page
        # fault for a 200-byte reply, held under the GIL on the dispatcher's thread; issue 16).
        self._scratch = memoryview(bytearray(READ_SIZE))

    def watch(self, key: str, fd: int) -> None:
        self._fds[key] = fd
        self._selector.register(fd, selectors.EVENT_READ, key)

    def forget(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is None:
            return
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        _close(fd)

    def wait(self, timeout: float) -> list[tuple[str, bytes]]:
        got = []
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
                continue
            try:
                chunk = self._scratch[: os.readv(key.fd, [self._scratch])].tobytes()
            except OSError:
                chunk = b""
            got.append((key.data, chunk))
        return got

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def close(self) -> None:
        for key in list(self._fds):
            self.forget(key)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            _close(fd)


class ThreadMailbox(Mailbox):
    """Portable path (``select`` takes no pipes on Windows): a reader thread per worker puts
    what it reads into one queue. A reader closes its descriptor itself when the pipe ends
    (the worker exited or was killed), so no descriptor is closed under a blocked read."""

    _WAKE = ("", b"wake")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def watch(self, key: str, fd: int) -> None:
        threading.Thread(target=self._read, args=(key, fd), name=f"azpar-read-{key}", daemon=True).start()

    def _read(self, key: str, fd: int) -> None:
        try:
            while True:
                try:
                    chunk = os.read(fd, READ_SIZE)
                except OSError:
                    chunk = b""
                self._queue.put((key, chunk))
                if not chunk:
                    return
        finally:
            _close(fd)

    def forget(self, key: str) -> None:
        pass  # its reader ends at the pipe's end, which a dead worker's pipe reaches

    def wait(self, timeout: float) -> list[tuple[str, bytes]]:
        try:
            got = [self._queue.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in got if item is not self._WAKE]

    def wake(self) -> None:
        self._queue.put(self._WAKE)

    def close(self) -> None:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass

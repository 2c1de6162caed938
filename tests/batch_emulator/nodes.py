"""What a node is made of: the unprivileged pool user tasks run as, and a bare Python.

Users (sources: the REST spec's ``JobPreparationTask.userIdentity`` and ``TaskAddParameter.userIdentity``:
without one, a task runs as a non-administrative user unique to the pool; the "Run tasks under user
accounts in Batch" doc: on Linux the non-admin auto-user has pool scope, the admin auto-user is root;
Azure/Batch#12, where the Batch team names ``_azbatch`` as the default non-privileged task user).
The service creates one OS user, :data:`NODE_USER`, once per machine (``useradd --system``), and
runs every non-admin command as that user. That needs root; elsewhere :func:`node_user` returns
None and commands run as the test process (the README says so, tests that need the switch skip).

Bare Python (source: the default image ``python:X.Y-slim`` has the interpreter, pip and setuptools
and nothing else): :func:`bare_python_bin` builds, once per machine and interpreter, a copy of the
kernel's interpreter prefix without its site-packages (hard links where the file system allows,
copies otherwise), then runs ``ensurepip`` (offline: its wheels ship with Python). The copy lives
in a world-readable cache folder of the temp dir, so the unprivileged user can run it even when the
original sits under a private home (``/root`` is 0700). Creation is atomic (a temporary name, then
a rename) so parallel test sessions never see half of it.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NODE_USER = "azbatchtest"
_lock = threading.Lock()
_user_cache: dict[str, NodeUser | None] = {}
_bare_cache: dict[str, Path] = {}


@dataclass(frozen=True)
class NodeUser:
    """The OS account a non-admin command runs as."""
    name: str
    uid: int
    gid: int


def node_user() -> NodeUser | None:
    """The unprivileged pool user, created on first use when this process is root; None when
    the process cannot switch users (not root, or no ``useradd``): commands then run as the
    test process, and tests that need a separate user skip."""
    with _lock:
        if NODE_USER in _user_cache:
            return _user_cache[NODE_USER]
        _user_cache[NODE_USER] = user = _ensure_user(NODE_USER)
        return user


def _ensure_user(name: str) -> NodeUser | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        if not os.path.exists(useradd):
            return None
        done = subprocess.run([useradd, "--system", "--no-create-home", "--user-group",
                               "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
        if done.returncode not in (0, 9):  # 9: it exists (made by a parallel session meanwhile)
            return None
        entry = pwd.getpwnam(name)
    return NodeUser(name, entry.pw_uid, entry.pw_gid)


def traversable(path: Path) -> bool:
    """Whether any user can reach ``path``: every folder from / down has the others' x bit."""
    path = path.resolve()
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def cache_root() -> Path:
    """A folder in the temp dir that every user can read (the bare Pythons and test wheels);
    one per user that builds them, so a machine's root and non-root test runs never share one."""
    root = Path(tempfile.gettempdir()) / f"azpar-node-cache-{os.geteuid()}"
    root.mkdir(mode=0o755, exist_ok=True)
    return root


def bare_python_bin(prefix: Path | None = None, baked: Sequence[Path] = ()) -> Path:
    """The ``bin`` folder of a bare interpreter of this Python's version (``python``,
    ``python3``, ``pythonX.Y`` and pip's scripts), built on first use. ``prefix``: the install
    prefix of ANOTHER interpreter to copy instead (a node whose image has another Python than the
    kernel's, ``svc.node_python``; e.g. a pyenv version). ``baked``: wheel files installed into
    the copy's own site-packages (an image with packages baked in, ``svc.image_wheels``); a copy of
    its own, named by the wheels' contents, so the plain bare copy stays bare."""
    base = Path(prefix or sys.base_prefix).resolve()
    info = _interpreter(base) if prefix is not None else (
        "%d.%d.%d" % sys.version_info[:3],
        str(Path(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable).resolve()))
    version, exe = info
    key = f"python-{version}-{hashlib.sha256(str(base).encode()).hexdigest()[:12]}"
    if baked:
        key += "-image-" + hashlib.sha256(b"".join(Path(w).read_bytes() for w in sorted(baked))).hexdigest()[:12]
    with _lock:
        if key in _bare_cache:
            return _bare_cache[key]
        target = cache_root() / key
        if not (target / ".complete").exists():
            _build_bare(base, target, version, Path(exe), baked)
        _bare_cache[key] = target / "bin"
        return target / "bin"


def _interpreter(base: Path) -> tuple[str, str]:
    """(X.Y.Z, its executable) of the interpreter installed under ``base``."""
    exe = next((p for p in sorted((base / "bin").glob("python3.*")) if p.name[len("python3."):].isdigit()), None)
    if exe is None:
        raise RuntimeError(f"no python3.N interpreter under {base}/bin")
    done = subprocess.run([str(exe), "-c", "import sys;print('%d.%d.%d' % sys.version_info[:3])"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip(), str(exe.resolve())


def _build_bare(base: Path, target: Path, version: str, exe: Path, baked: Sequence[Path] = ()) -> None:
    tmp = target.with_name(f"{target.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _populate(base, tmp, version, exe, baked)
        os.rename(tmp, target)
    except OSError:
        if not (target / ".complete").exists():  # not a parallel session that won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _populate(base: Path, tmp: Path, version: str, exe: Path, baked: Sequence[Path] = ()) -> None:
    """The interpreter, its shared library, the standard library minus site-packages and tests,
    then pip from ensurepip, then the ``baked`` wheels (offline, no dependencies); ``.complete`` last."""
    ver = "python" + ".".join(version.split(".")[:2])
    (tmp / "bin").mkdir(parents=True, mode=0o755)
    (tmp / "lib").mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    shutil.copy2(exe, tmp / "bin" / ver)
    _point_runpath_home(tmp / "bin" / ver, str(base / "lib"))
    for lib in (base / "lib").glob("libpython*"):
        _link_or_copy(lib, tmp / "lib" / lib.name)
    skip = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "__pycache__"}
    stdlib = base / "lib" / ver
    (tmp / "lib" / ver).mkdir(mode=0o755)
    for entry in stdlib.iterdir():
        if entry.name not in skip:
            _link_or_copy(entry, tmp / "lib" / ver / entry.name)
    (tmp / "lib" / ver / "site-packages").mkdir(mode=0o755)
    for name in ("python3", "python"):
        os.symlink(ver, tmp / "bin" / name)
    env = {"PATH": str(tmp / "bin") + ":/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8"}
    done = subprocess.run([str(tmp / "bin" / ver), "-m", "ensurepip", "--default-pip"], env=env,
                          capture_output=True, text=True, umask=0o022)
    if done.returncode:
        raise RuntimeError(f"ensurepip failed for the bare node Python:\n{done.stderr[-2000:]}")
    if baked:
        done = subprocess.run([str(tmp / "bin" / ver), "-m", "pip", "install", "--no-index", "--no-deps",
                               "--disable-pip-version-check", *map(str, baked)],
                              env={**env, "PIP_CONFIG_FILE": os.devnull}, capture_output=True, text=True, umask=0o022)
        if done.returncode:
            raise RuntimeError(f"installing the image's wheels into the node Python failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    (tmp / ".complete").write_text(version)


def _point_runpath_home(binary: Path, old: str) -> None:
    """A shared-library build records where libpython is (RUNPATH, an absolute path into the
    original prefix, unreadable to other users under /root). Rewrite that one string in the
    copied binary to ``$ORIGIN/../lib`` (shorter, padded with NULs), so the copy finds its own."""
    data = binary.read_bytes()
    needle = old.encode() + b"\0"
    if data.count(needle) != 1:
        return
    new = b"$ORIGIN/../lib"
    if len(new) >= len(needle):
        return
    binary.write_bytes(data.replace(needle, new + b"\0" * (len(needle) - len(new))))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard links (no space, instant) when on one file system, otherwise a copy."""
    try:
        if src.is_dir() and not src.is_symlink():
            subprocess.run(["cp", "-al", str(src), str(dst)], check=True, capture_output=True)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            os.link(src, dst)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(dst, ignore_errors=True) if dst.is_dir() else None
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        elif not dst.exists():
            shutil.copy2(src, dst, follow_symlinks=False)

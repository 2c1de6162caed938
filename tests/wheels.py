"""Wheels for bare test nodes, made without a network from what the test venv has installed.

A node of the test Batch service has a bare Python (tests/batch_emulator/nodes.py), so dill and
any package a test uses must really be installed by the start task or the job preparation task,
as on Azure. Tests give the profile ``pip_options = ["--no-index", "--find-links", FOLDER]``, as a
user with a private package folder would. A wheel is rebuilt from an installed distribution by the
product's own repacker (azpar_magic.environment.repack_wheel, the one that makes local packages
travel), so there is one copy of that logic. Wheels are built once per machine into a
world-readable cache folder (atomically: a temporary name, then a rename), with the requirements
of each (``Requires-Dist`` without extras, markers evaluated here) so ``pip install`` resolves
them offline.
"""
from __future__ import annotations

import importlib.metadata as md
import threading
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from azpar_magic.run.environment import repack_wheel
from tests.batch_emulator.nodes import cache_root

_lock = threading.Lock()
#: What every node needs for the worker (the kernel's own version is pinned by the backend).
BASE = ("dill",)


def wheel_folder(*names: str) -> Path:
    """The shared wheel folder, holding wheels of ``names`` (and their requirements) besides
    whatever earlier calls put there; readable by every user."""
    folder = cache_root() / "wheels"
    folder.mkdir(mode=0o755, exist_ok=True)
    with _lock:
        seen: set[str] = set()
        todo = list(BASE + names)
        while todo:
            name = canonicalize_name(todo.pop())
            if name in seen:
                continue
            seen.add(name)
            dist = md.distribution(name)
            build_wheel(dist, folder)
            todo.extend(_requirements(dist))
    return folder


def node_pip_options(*names: str, extra_find_links: Path | None = None) -> list[str]:
    """``pip_options`` for a profile whose nodes install from the shared wheel folder only."""
    options = ["--no-index", "--find-links", str(wheel_folder(*names))]
    if extra_find_links is not None:
        options += ["--find-links", str(extra_find_links)]
    return options


def _requirements(dist: md.Distribution) -> list[str]:
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def build_wheel(dist: md.Distribution, folder: Path) -> Path:
    """``folder``/<the wheel of ``dist``>, built unless it is there (the product's repacker)."""
    return repack_wheel(dist, folder)


def shared_folder(prefix: str) -> Path:
    """A new folder every user can read (pytest's tmp_path is private to root, and a node's
    pool user must read the wheels a test gives it); the caller removes it."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_root()))
    folder.chmod(0o755)
    return folder


def tiny_wheel(folder: Path, name: str, version: str, value: int) -> Path:
    """A minimal pure-Python wheel made by hand (no build tool, no index): a package whose
    ``VALUE`` is ``value``, readable by every user."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VALUE = {value}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: azpar-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
    path.chmod(0o644)
    return path

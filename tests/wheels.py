"""Wheels for bare test nodes, made without a network from what the test venv has installed.

A node of the test Batch service has a bare Python (tests/batch_emulator/nodes.py), so dill and
any package a test uses must really be installed by the start task or the job preparation task,
as on Azure. Tests give the profile ``pip_options = ["--no-index", "--find-links", FOLDER]``, as a
user with a private package folder would. A wheel is rebuilt from an installed distribution: the
files its ``.dist-info/RECORD`` lists inside site-packages (scripts outside it and byte code are
left out), its dist-info with the ``WHEEL`` file that keeps the right tags, and a fresh RECORD with
sha256 hashes (the wheel format, PEP 427 / the "binary distribution format" specification).
Wheels are built once per machine into a world-readable cache folder (atomically: a temporary
name, then a rename), with the requirements of each (``Requires-Dist`` without extras, markers
evaluated here) so ``pip install`` resolves them offline.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import re
import threading
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

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
            name = _canonical(todo.pop())
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


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: md.Distribution) -> list[str]:
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def _wheel_name(dist: md.Distribution) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")] or ["py3-none-any"]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-" + "-".join(".".join(p) for p in parts) + ".whl"


def build_wheel(dist: md.Distribution, folder: Path) -> Path:
    """``folder``/<the wheel of ``dist``>, built unless it is there."""
    target = folder / _wheel_name(dist)
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    record_name = next(str(f) for f in dist.files or [] if str(f).endswith(".dist-info/RECORD"))
    rows = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for rel in dist.files or []:
            name = rel.as_posix()
            if name.startswith("..") or "__pycache__" in name or name == record_name or name.endswith(".pyc"):
                continue
            path = Path(dist.locate_file(rel))
            if not path.is_file():
                continue
            data = path.read_bytes()
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = ((0o755 if os.access(path, os.X_OK) else 0o644) | 0o100000) << 16
            zf.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append((name, f"sha256={digest}", str(len(data))))
        rows.append((record_name, "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zf.writestr(zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0)), buf.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


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

"""What the nodes need from the kernel's environment: a requirement set, content-addressed.

The capture records ``name -> version`` of the distributions behind the modules a cell uses.
:func:`requirement_set` turns that into everything a bare node must install to run the cell as
the kernel does:

* the run-time dependencies of each distribution, transitively, read from the installed
  metadata (``Requires-Dist``, the core metadata specification), with environment markers
  (PEP 508) evaluated for the node: Linux, x86_64, CPython of the kernel's Python version
  (the default image is ``python:X.Y-slim`` of the kernel's version). An extra's dependencies
  are followed only when a parent asked for that extra;
* every entry pinned to the version installed in the kernel, so the node runs what the kernel
  runs;
* what pip cannot fetch by ``name==version`` from an index (PEP 610 ``direct_url.json``: a
  directory, an editable install, a ``file://`` archive, a VCS checkout or any other direct URL)
  is made into a wheel here, without a network: an editable install is built from its source
  folder with the kernel's own pip and build backend (``pip wheel --no-build-isolation
  --no-index``); any other is repacked from the files its ``RECORD`` lists (the binary
  distribution format, PEP 427). Wheels are cached by name, version and a content hash of their
  sources, so an unchanged package is never rebuilt and an edited one always is;
* ``--packages`` strings replace the entry of the same name and are passed to pip as given,
  except a local wheel file or source folder, which travels as a wheel like the others (the node
  cannot see this machine's paths).

Left out: dill (the start task installs the kernel's version), distributions named like a
standard library module, and pip, setuptools and wheel when only reached as a dependency (the
image has them; they stay when the cell's own modules come from them).

This module is backend-agnostic: it knows nothing of Azure; a backend uploads
:attr:`RequirementSet.wheels` and runs pip with :meth:`RequirementSet.pip_specs`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement as _Pep508
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from ..errors import RequirementError

#: Distributions the image has; kept out when only reached as a dependency.
IMAGE_TOOLS = frozenset({"pip", "setuptools", "wheel"})
#: Folders of a source tree that never go into its content hash (VCS data, caches, build output).
_SKIP_DIRS = frozenset({"__pycache__", "build", "dist", "node_modules"})
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json"})


@dataclass(frozen=True)
class Requirement:
    """One thing the nodes install."""

    name: str  # canonical distribution name (PEP 503)
    version: str  # the kernel's version ("" when the kernel does not have it)
    origin: str  # "index": pip can fetch it as spec; "local": built from this machine
    spec: str  # what pip installs: "name==version", an override as given, or a wheel file name
    source: str  # for people (%azpar env)


@dataclass(frozen=True)
class LocalWheel:
    """A wheel made on (or given from) this machine that must travel to the nodes."""

    name: str
    version: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class RequirementSet:
    """What a cell needs on a node, with a content address for install-once caching."""

    requirements: tuple[Requirement, ...]  # sorted by name
    wheels: tuple[LocalWheel, ...]  # one per local requirement
    digest: str  # sha256 of the sorted specs + wheel hashes (16 hex)

    def pip_specs(self) -> list[str]:
        """The arguments to give ``pip install`` (local wheels by file name: the backend puts
        them in pip's working folder or a ``--find-links`` folder)."""
        return [r.spec for r in self.requirements]


# ----------------------------------------------------------------------------- public entry


def requirement_set(
    packages: Mapping[str, str],
    overrides: Sequence[str] = (),
    *,
    wheel_cache: Path | None = None,
    exclude: Collection[str] = ("dill",),
) -> RequirementSet:
    """From the capture's name->version map: add the run-time dependencies of each
    distribution, transitively (importlib.metadata requires(); markers evaluated for a Linux
    x86_64 CPython node of the kernel's Python version; extras only when a parent asked for
    them), pinned to the versions installed in the kernel; --packages strings (overrides)
    replace the entry of the same name (any PEP 508 string or VCS URL is passed to pip as
    given; a local wheel file or source folder travels as a local wheel); local/editable
    distributions are built into wheels (cached in ``wheel_cache``).

    Raises RequirementError when an override cannot be read or a local wheel cannot be built."""
    cache = Path(wheel_cache) if wheel_cache is not None else default_wheel_cache()
    found = _closure(packages, exclude)
    extra = [_override(text, cache) for text in overrides]
    replaced = {req.name for req, _wheel in extra}
    pairs = [_requirement_for(item, cache) for item in found if item.name not in replaced]
    pairs.extend(extra)
    pairs.sort(key=lambda p: (p[0].name, p[0].spec))
    requirements = tuple(req for req, _ in pairs)
    wheels = tuple(wheel for _, wheel in pairs if wheel is not None)
    return RequirementSet(requirements, wheels, _digest(requirements, wheels))


def default_wheel_cache() -> Path:
    """``$XDG_CACHE_HOME/azpar/wheels`` (or ``~/.cache/azpar/wheels``): the user's own cache
    (the XDG base directory specification), private to them."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "azpar" / "wheels"


def node_marker_environment() -> dict[str, str]:
    """PEP 508 marker values of a node: Linux x86_64 CPython of the kernel's Python version.

    ``platform_release`` and ``platform_version`` (the node's kernel build) are unknown here;
    the sources leave them open and this keeps the local values (no common package uses them)."""
    env = dict(default_environment())
    full = platform.python_version()
    env.update(
        os_name="posix",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        platform_python_implementation="CPython",
        implementation_name="cpython",
        implementation_version=full,
        python_version="%d.%d" % sys.version_info[:2],
        python_full_version=full,
    )
    return env


# ------------------------------------------------------------------- the metadata walk


@dataclass(frozen=True)
class _Found:
    """A distribution the closure reached: the kernel's copy (None when not installed here)."""

    name: str
    version: str
    dist: md.Distribution | None
    wanted: str  # the requirement text that reached it, for ones not installed here


_lock = threading.RLock()
_closures: dict[tuple, tuple[_Found, ...]] = {}
_closure_key: tuple | None = None
_requires_cache: dict[str, tuple[_Pep508, ...]] = {}


def path_signature() -> tuple:
    """sys.path with each entry's mtime: a ``pip install`` in the kernel or a new site folder
    changes it, so the caches keyed by it (the requirement walk here, the module-to-distribution
    table of run/capture.py) never serve a stale answer."""
    out = []
    for entry in sys.path:
        try:
            out.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            out.append((entry, None))
    return tuple(out)


def _closure(packages: Mapping[str, str], exclude: Collection[str]) -> tuple[_Found, ...]:
    """The walk, cached per process while sys.path and its folders are unchanged."""
    global _closure_key
    signature = path_signature()
    key = (
        frozenset((canonicalize_name(k), v) for k, v in packages.items()),
        frozenset(canonicalize_name(e) for e in exclude),
    )
    with _lock:
        if signature != _closure_key:
            _closures.clear()
            _requires_cache.clear()
            _closure_key = signature
        if key not in _closures:
            _closures[key] = _walk(dict(key[0]), key[1])
        return _closures[key]


def _walk(roots: Mapping[str, str], exclude: frozenset[str]) -> tuple[_Found, ...]:
    """Breadth-first over Requires-Dist; each distribution is re-read only for extras not
    seen before."""
    env = node_marker_environment()
    extras_seen: dict[str, set[str]] = {}
    found: dict[str, _Found] = {}
    queue: list[tuple[str, frozenset[str], str]] = [(name, frozenset({""}), "") for name in sorted(roots)]
    while queue:
        name, extras, wanted = queue.pop(0)
        if name in exclude or _is_stdlib(name) or (name in IMAGE_TOOLS and name not in roots):
            continue
        new = extras - extras_seen.get(name, set())
        if not new:
            continue
        extras_seen.setdefault(name, set()).update(new)
        dist = _installed(name)
        if name not in found:
            version = roots.get(name) or (dist.version if dist is not None else "")
            found[name] = _Found(name, version, dist, wanted)
        if dist is None:
            continue
        for req in _requires(dist):
            for extra in new:
                if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                    text = (
                        f"{req.name}{_extras_text(req)} @ {req.url}"
                        if req.url
                        else f"{req.name}{_extras_text(req)}{req.specifier}"
                    )
                    queue.append((canonicalize_name(req.name), frozenset({""} | set(req.extras)), text))
                    break
    return tuple(found[n] for n in sorted(found))


def _extras_text(req: _Pep508) -> str:
    return f"[{','.join(sorted(req.extras))}]" if req.extras else ""


def _is_stdlib(name: str) -> bool:
    return name.replace("-", "_") in sys.stdlib_module_names


def _installed(name: str) -> md.Distribution | None:
    """The kernel's distribution of ``name`` (the first on sys.path, as import would find)."""
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def _requires(dist: md.Distribution) -> tuple[_Pep508, ...]:
    """Parsed Requires-Dist of ``dist`` (cached: parsing is most of a warm walk's cost).
    A line packaging cannot parse is skipped, as pip would refuse it too."""
    key = f"{dist.metadata['Name']}=={dist.version}@{getattr(dist, '_path', '')}"
    if key not in _requires_cache:
        parsed = []
        for text in dist.requires or []:
            try:
                parsed.append(_Pep508(text))
            except InvalidRequirement:
                continue
        _requires_cache[key] = tuple(parsed)
    return _requires_cache[key]


# ------------------------------------------------------------------ one requirement each


def _requirement_for(item: _Found, cache: Path) -> tuple[Requirement, LocalWheel | None]:
    """An index pin, or a local wheel for what an index cannot serve."""
    if item.dist is None:
        spec = item.wanted or f"{item.name}=={item.version}"
        if not item.wanted and not item.version:
            spec = item.name
        return Requirement(
            item.name,
            item.version,
            "index",
            spec,
            "index" if not item.wanted else "index (not installed in the kernel)",
        ), None
    kind, where = _provenance(item.dist)
    if kind == "index":
        return Requirement(item.name, item.version, "index", f"{item.name}=={item.version}", where), None
    if kind == "editable":
        wheel = _editable_wheel(item.name, item.version, where, cache)
        return Requirement(item.name, item.version, "local", wheel.path.name, f"editable install from {where}"), wheel
    wheel = _repacked_wheel(item.dist, cache)
    return Requirement(item.name, item.version, "local", wheel.path.name, where), wheel


def _provenance(dist: md.Distribution) -> tuple[str, str]:
    """How the kernel got ``dist``: ("index", why), ("editable", source folder) or ("repack",
    where from).

    PEP 610's ``direct_url.json`` marks an install from a URL. One exception: conda packages
    often carry the ``direct_url.json`` of their own build (a ``file://`` folder of the build
    machine; conda/conda#11580, conda/grayskull#533). A non-editable install whose recorded
    folder does not exist here is taken as such and pinned from the index: repacking it would
    leave behind the shared libraries conda keeps outside site-packages. A distribution with no
    ``direct_url.json`` whose metadata is an ``.egg-info`` folder inside a project folder is a
    ``setup.py develop`` (legacy editable) install of that folder."""
    direct = direct_url(dist)
    if direct is None:
        src = _develop_source(dist)
        return ("editable", str(src)) if src is not None else ("index", "index")
    url = direct["url"]
    path = file_url_path(url)
    if (direct.get("dir_info") or {}).get("editable"):
        return "editable", str(path) if path is not None else url
    if path is not None and not path.exists():
        return "index", f"index (its direct_url.json names {path}, which this machine does not have)"
    return "repack", f"local path {path}" if path is not None else f"direct URL {url} (repacked)"


def _develop_source(dist: md.Distribution) -> Path | None:
    meta = getattr(dist, "_path", None)
    if meta is None or Path(meta).suffix != ".egg-info" or not Path(meta).is_dir():
        return None
    for folder in (Path(meta).parent, Path(meta).parent.parent):
        if (folder / "pyproject.toml").is_file() or (folder / "setup.py").is_file():
            return folder
    return None


def direct_url(dist: md.Distribution) -> dict | None:
    """PEP 610's record of a distribution installed from a URL (a folder, a file, a VCS)."""
    try:
        text = dist.read_text("direct_url.json")
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("url") else None


def _editable_wheel(name: str, version: str, where: str, cache: Path) -> LocalWheel:
    """The cached wheel of an editable install, built from its source folder on a miss."""
    src = Path(where)
    if "://" in where or not src.is_dir():
        raise RequirementError(
            f"{name} {version} is installed in editable mode from {where}, which is not a folder on "
            "this machine any more, so azpar cannot build it for the nodes. Reinstall it, or pin a "
            f"version pip can fetch with --packages '{name}==VERSION', or set auto_packages = false "
            "in the profile and use an image that has it."
        )
    key = _tree_hash(src)
    return _wheel(_cached(cache, f"{name}-{version}-{key}", lambda d: _pip_wheel(src, d, name, version)))


def _repacked_wheel(dist: md.Distribution, cache: Path) -> LocalWheel:
    """The cached wheel of a non-editable local install, repacked from its files on a miss."""
    name, version = canonicalize_name(dist.metadata["Name"]), dist.version
    key = _files_hash(_record_files(dist))
    return _wheel(_cached(cache, f"{name}-{version}-{key}", lambda d: repack_wheel(dist, d)))


def file_url_path(url: str) -> Path | None:
    """The local path a ``file://`` URL names (None for any other scheme)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    from urllib.request import url2pathname  # only here: urllib.request costs 6 ms to import

    return Path(url2pathname(unquote(parts.path)))


# ----------------------------------------------------------------------------- overrides

_VCS = re.compile(r"^(git|hg|svn|bzr)\+[a-z]+://", re.IGNORECASE)


def _override(text: str, cache: Path) -> tuple[Requirement, LocalWheel | None]:
    """A ``--packages`` string: a local wheel or folder (made to travel), a VCS or other URL,
    or any PEP 508 requirement (passed to pip as given)."""
    value = text.strip()
    source = "requested by --packages"
    if not value:
        raise RequirementError(
            "--packages was given an empty value: give a requirement such as "
            "'numpy==2.1.0', a VCS URL or the path of a wheel file."
        )
    if "://" not in value and not value.startswith("git+"):
        path = Path(value).expanduser()
        if value.endswith(".whl"):
            return _override_wheel(value, path, source)
        if path.is_dir() and ((path / "pyproject.toml").exists() or (path / "setup.py").exists()):
            return _override_folder(path, cache, source)
    if _VCS.match(value) or re.match(r"^[a-z]+://", value, re.IGNORECASE):
        name = _name_from_url(value)
        return Requirement(name, "", "index", value, source), None
    try:
        req = _Pep508(value)
    except InvalidRequirement as exc:
        raise RequirementError(
            f"--packages {value!r} is not a requirement pip can read ({exc}). Give a PEP 508 "
            "requirement ('pandas==2.2.3', 'numpy>=2; python_version >= \"3.11\"'), a VCS URL "
            "('git+https://host/repo.git@TAG#egg=NAME') or the path of a wheel file."
        ) from None
    local = file_url_path(req.url) if req.url else None
    if local is not None and local.name.endswith(".whl"):
        return _override_wheel(value, local, source)
    if local is not None and local.is_dir():
        return _override_folder(local, cache, source)
    pins = [s.version for s in req.specifier if s.operator in ("==", "===")]
    version = pins[0] if len(pins) == 1 and "*" not in pins[0] else ""
    return Requirement(canonicalize_name(req.name), version, "index", value, source), None


def _override_wheel(value: str, path: Path, source: str) -> tuple[Requirement, LocalWheel]:
    if not path.is_file():
        raise RequirementError(
            f"--packages {value!r} names a wheel file that does not exist on this machine. Give the "
            "path of an existing .whl file (absolute, or relative to the notebook's folder)."
        )
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise RequirementError(
            f"--packages {value!r}: {exc}. pip needs the wheel's standard file name "
            "(NAME-VERSION-PYTHON-ABI-PLATFORM.whl); keep the name the build gave it."
        ) from None
    wheel = _wheel(path.resolve())
    return Requirement(str(name), str(version), "local", path.name, source), wheel


def _override_folder(path: Path, cache: Path, source: str) -> tuple[Requirement, LocalWheel]:
    src = path.resolve()
    label = src.name
    built = _cached(cache, f"src-{_tree_hash(src)}", lambda d: _pip_wheel(src, d, label, "(source folder)"))
    wheel = _wheel(built)
    return Requirement(wheel.name, wheel.version, "local", built.name, f"{source} (local path {src})"), wheel


def _name_from_url(url: str) -> str:
    """The distribution a bare URL names: its ``#egg=NAME`` fragment (pip's convention for VCS
    URLs), else the last part of its path without ``.git`` or an archive suffix. Only used to
    replace a closure entry by name; pip reads the URL itself. (``NAME @ URL`` is PEP 508 and
    names itself.)"""
    egg = re.search(r"[#&]egg=([A-Za-z0-9._-]+)", url)
    if egg:
        return canonicalize_name(egg.group(1))
    last = urlsplit(url.split("+", 1)[-1]).path.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    last = re.sub(r"(\.git|\.zip|\.tar\.gz|\.tgz)$", "", last)
    return canonicalize_name(last or url)


# ------------------------------------------------------------------------- wheels, cached


def _cached(cache: Path, key: str, build: Callable[[Path], object]) -> Path:
    """``cache/key/<the wheel>``, built by ``build(folder)`` into a temporary folder and renamed
    into place on a miss (atomic: a parallel build of the same key loses the rename harmlessly)."""
    final = cache / key
    hit = _only_wheel(final)
    if hit is not None:
        return hit
    _make_private(cache)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
    try:
        build(tmp)
        if _only_wheel(tmp) is None:
            raise RequirementError(
                f"building the wheel {key} for the nodes ended without error but left no single .whl "
                f"file in {tmp}. Pin a version pip can fetch with --packages, or set auto_packages = "
                "false in the profile and use an image that has it."
            )
        try:
            os.rename(tmp, final)
        except OSError:
            if _only_wheel(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _only_wheel(final)  # type: ignore[return-value]


def _only_wheel(folder: Path) -> Path | None:
    try:
        wheels = [p for p in folder.iterdir() if p.name.endswith(".whl")]
    except OSError:
        return None
    return wheels[0] if len(wheels) == 1 else None


def _make_private(cache: Path) -> None:
    """Create the cache folder (and missing parents) readable by its owner only: wheels of the
    user's own code do not belong to other users of the machine."""
    missing = []
    p = cache
    while not p.exists():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass


_sha_memo: dict[str, tuple[int, int, str]] = {}


def _wheel(path: Path) -> LocalWheel:
    """LocalWheel of a wheel file; its sha256 is memoised on (mtime, size)."""
    st = path.stat()
    memo = _sha_memo.get(str(path))
    if memo is None or memo[:2] != (st.st_mtime_ns, st.st_size):
        memo = (st.st_mtime_ns, st.st_size, _file_sha256(path))
        _sha_memo[str(path)] = memo
    name, version, _build, _tags = parse_wheel_filename(path.name)
    return LocalWheel(str(name), str(version), path, memo[2], st.st_size)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_file_memo: dict[str, tuple[int, int, str]] = {}


def _files_hash(files: Sequence[tuple[str, Path]]) -> str:
    """16 hex of a content hash of ``(name, file)`` pairs. File hashes are memoised on
    (mtime, size), so a warm call only stats the files."""
    h = hashlib.sha256()
    for name, path in sorted(files):
        try:
            st = path.stat()
        except OSError:
            continue
        memo = _file_memo.get(str(path))
        if memo is None or memo[:2] != (st.st_mtime_ns, st.st_size):
            memo = (st.st_mtime_ns, st.st_size, _file_sha256(path))
            _file_memo[str(path)] = memo
        h.update(f"{name}\0{memo[2]}\n".encode())
    return h.hexdigest()[:16]


def _tree_hash(src: Path) -> str:
    """Content hash of a source folder: every file except VCS data, caches, hidden folders,
    build output, byte code and virtual environments (a folder with ``pyvenv.cfg``, PEP 405, or
    ``conda-meta``): a project's own ``venv/`` holds thousands of files no wheel includes."""
    files = []
    for folder, dirs, names in os.walk(src):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and d not in _SKIP_DIRS
            and not d.endswith(".egg-info")
            and not _is_environment(Path(folder, d))
        ]
        for n in names:
            if not n.endswith((".pyc", ".pyo")):
                full = Path(folder, n)
                files.append((full.relative_to(src).as_posix(), full))
    return _files_hash(files)


def _is_environment(folder: Path) -> bool:
    return (folder / "pyvenv.cfg").is_file() or (folder / "conda-meta").is_dir()


def _pip_wheel(src: Path, into: Path, name: str, version: str) -> None:
    """Build the wheel of source folder ``src`` with the kernel's pip and build backend, offline."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "-w",
        str(into),
        str(src),
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1577836800"}  # reproducible zip times where the backend honours it
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(src))
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise RequirementError(
            f"azpar could not build a wheel of {name} {version} from {src} for the nodes (it is "
            f"installed from that folder, so no index has it). pip said:\n{tail}\n"
            "Fix the build (azpar builds offline with the kernel's own packages, so the build "
            "backend that pyproject.toml's build-system names must be installed in the kernel; "
            f"try: {' '.join(cmd[2:])}), or pin a version pip can fetch with "
            f"--packages '{name}==VERSION', or set auto_packages = false in the profile and use an "
            "image that has it."
        )


# ------------------------------------------------------------------ repacking installed files


def _record_files(dist: md.Distribution) -> list[tuple[str, Path]]:
    """``(archive name, file)`` of what a repacked wheel holds: the files RECORD lists inside
    the installation folder, minus byte code (recompiled on install) and the installer's own
    records (INSTALLER, REQUESTED, direct_url.json: PEP 610 says the installer writes them)."""
    out = []
    for rel in dist.files or []:
        name = rel.as_posix()
        if name.startswith("..") or "__pycache__" in name or name.endswith((".pyc", ".pyo")):
            continue
        parts = name.split("/")
        if (
            len(parts) == 2
            and parts[0].endswith(".dist-info")
            and (parts[1] in _INSTALLER_FILES or parts[1] == "RECORD")
        ):
            continue
        path = Path(dist.locate_file(rel))
        if path.is_file():
            out.append((name, path))
    return out


def wheel_file_name(dist: md.Distribution) -> str:
    """The PEP 427 file name of ``dist`` as a wheel, with the tags its ``WHEEL`` file keeps."""
    tags = [
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ] or ["py3-none-any"]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    return f"{name}-{dist.version}-" + "-".join(".".join(p) for p in parts) + ".whl"


def repack_wheel(dist: md.Distribution, folder: Path) -> Path:
    """``folder``/<the wheel of installed ``dist``>, rebuilt from its installed files unless it
    is there: the files :func:`_record_files` keeps, and a fresh RECORD with sha256 hashes.
    Deterministic (sorted entries, fixed times), so the same files give the same bytes.
    Written under a temporary name, then renamed; readable by all (mode 0644)."""
    target = Path(folder) / wheel_file_name(dist)
    if target.exists():
        return target
    record_name = next((f.as_posix() for f in dist.files or [] if f.as_posix().endswith(".dist-info/RECORD")), None)
    if record_name is None:
        raise RequirementError(
            f"{dist.metadata['Name']} {dist.version} has no RECORD file, so azpar cannot tell which "
            "files are its own and cannot repack it for the nodes. Reinstall it with pip, or pin a "
            "version pip can fetch with --packages, or set auto_packages = false in the profile and "
            "use an image that has it."
        )
    files = sorted(_record_files(dist), key=lambda p: (p[0].split("/")[0].endswith(".dist-info"), p[0]))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    rows = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files:
            data = path.read_bytes()
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((0o755 if os.access(path, os.X_OK) else 0o644) | 0o100000) << 16
            zf.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append((name, f"sha256={digest}", str(len(data))))
        rows.append((record_name, "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        info = zipfile.ZipInfo(record_name, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o644 | 0o100000) << 16
        zf.writestr(info, buf.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


# ------------------------------------------------------------------------------- digest


def _digest(requirements: Sequence[Requirement], wheels: Sequence[LocalWheel]) -> str:
    """16 hex of sha256 over the sorted pip specs and the wheels' own hashes: a local wheel's
    file name can stay the same while its content changes."""
    h = hashlib.sha256()
    for spec in sorted(r.spec for r in requirements):
        h.update(spec.encode() + b"\n")
    h.update(b"--\n")
    for sha in sorted(w.sha256 for w in wheels):
        h.update(sha.encode() + b"\n")
    return h.hexdigest()[:16]

"""azpar_magic.environment: what a bare node must install to run a cell as the kernel does.

Real distributions only: the test venv's own (numpy, pandas), and small projects each test
makes in tmp_path, built with the venv's hatchling and installed by the venv's pip into a
``--prefix`` folder that the test alone puts on sys.path (``site.addsitedir``); nothing is
installed into the test venv. No network: every pip call is ``--no-index``. Wheels made for
the nodes are installed with the bare node Python of the test Batch service
(tests/batch_emulator/nodes.py), which has pip and nothing else, as ``python:X.Y-slim`` does.

The test projects use hatchling (``dev-mode-dirs``) rather than setuptools: the venv's
setuptools 65 needs the separate ``wheel`` distribution to build, which the venv does not have.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import site
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement as Pep508
from packaging.utils import canonicalize_name

from azpar_magic.errors import RequirementError
from azpar_magic.run.environment import requirement_set
from tests.batch_emulator.nodes import bare_python_bin
from tests.wheels import tiny_wheel

NODE = {"os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
        "platform_machine": "x86_64", "platform_python_implementation": "CPython",
        "implementation_name": "cpython", "python_version": "%d.%d" % sys.version_info[:2]}
PIP_ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
PIP_ENV.pop("PIP_FIND_LINKS", None)


# --------------------------------------------------------------------------- helpers


def pip(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    done = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=PIP_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def project(root: Path, name: str, version: str = "0.1", deps: tuple[str, ...] = (),
            extras: dict[str, list[str]] | None = None, value: int = 1) -> Path:
    """A source folder of a one-module project whose ``VALUE`` is ``value``."""
    module = name.replace("-", "_")
    src = root / f"src-{name}"
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(f"VALUE = {value}\n")
    optional = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (extras or {}).items())
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = {json.dumps(list(deps))}\n'
        f"[project.optional-dependencies]\n{optional}"
        f'[tool.hatch.build.targets.wheel]\npackages = ["{module}"]\ndev-mode-dirs = ["."]\n')
    return src


def purelib(prefix: Path) -> Path:
    return Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix), "platbase": str(prefix)}))


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A private site folder the kernel (this process) sees for one test, with ways to put
    projects into it: ``indexed`` (installed by name from a wheel folder, as from an index: no
    direct_url.json), ``editable`` and ``local`` (pip install of a folder)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    prefix = tmp_path / "prefix"
    house = tmp_path / "house"

    class Kernel:
        cache = tmp_path / "wheel-cache"

        def indexed(self, *srcs: Path) -> None:
            pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(house), *map(str, srcs))
            names = [project_name(s) for s in srcs]
            pip("install", "--no-deps", "--no-index", "--find-links", str(house), "--prefix", str(prefix), *names)
            self._see()

        def editable(self, src: Path) -> None:
            pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(src), "--prefix", str(prefix))
            self._see()

        def local(self, src: Path) -> None:
            pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(src), "--prefix", str(prefix))
            self._see()

        def _see(self) -> None:
            if str(purelib(prefix)) not in sys.path:
                site.addsitedir(str(purelib(prefix)))
            importlib.invalidate_caches()

    yield Kernel()
    for name in set(sys.modules) - before:  # the test's own projects, never what they pulled in
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def project_name(src: Path) -> str:
    return src.name.removeprefix("src-")


def node_value(wheel: Path, module: str, target: Path, *extra: Path) -> int:
    """Install ``wheel`` (and ``extra`` wheels) into a fresh folder with the bare node Python,
    offline, and read ``module.VALUE`` there."""
    python = str(bare_python_bin() / "python")
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), *map(str, extra), python=python)
    done = subprocess.run([python, "-c", f"import {module}; print({module}.VALUE)"], capture_output=True,
                          text=True, env={"PYTHONPATH": str(target), "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def by_name(rs) -> dict:
    return {r.name: r for r in rs.requirements}


def linux_deps(name: str) -> set[str]:
    """The test's own reading of a kernel distribution's run-time dependencies on a node."""
    out = set()
    for text in md.distribution(name).requires or []:
        req = Pep508(text)
        if req.marker is None or Marker(str(req.marker)).evaluate({**NODE, "extra": ""}):
            out.add(canonicalize_name(req.name))
    return out


# ------------------------------------------------------------------------ the closure


def test_pandas_closure_is_pinned_to_the_kernel_versions():
    rs = requirement_set({"pandas": md.version("pandas")})
    got = by_name(rs)
    # every run-time dependency of everything in the set is in the set (dill aside), transitively
    for name in list(got):
        for dep in linux_deps(name) - {"dill"}:
            assert dep in got, f"{dep} (needed by {name}) missing from {sorted(got)}"
    assert {"pandas", "numpy"} <= set(got)
    for name, req in got.items():
        assert req.version == md.version(name)
        assert (req.origin, req.spec, req.source) == ("index", f"{name}=={md.version(name)}", "index")
    # extras nobody asked for stay out (pandas[test] needs pytest; [pyarrow] needs pyarrow)
    assert "pytest" not in got and "pyarrow" not in got
    assert [r.name for r in rs.requirements] == sorted(got)
    assert rs.pip_specs() == [r.spec for r in rs.requirements] and rs.wheels == ()


def test_warm_requirement_set_is_fast():
    packages = {"pandas": md.version("pandas"), "numpy": md.version("numpy")}
    requirement_set(packages)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        requirement_set(packages)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.05, times


def test_dill_pip_and_the_stdlib_stay_out(kernel, tmp_path):
    kernel.indexed(project(tmp_path, "needs-tools", deps=("setuptools", "dill", "pip")))
    got = by_name(requirement_set({"needs-tools": "0.1", "dill": md.version("dill")}))
    assert set(got) == {"needs-tools"}
    # the cell's own modules come from pip (in every venv; setuptools is not since 3.12): it stays, pinned
    got = by_name(requirement_set({"pip": md.version("pip"), "argparse": "1.4"}))
    assert set(got) == {"pip"} and got["pip"].version == md.version("pip")
    # exclude is the caller's
    got = by_name(requirement_set({"needs-tools": "0.1", "dill": md.version("dill")}, exclude=()))
    assert set(got) == {"needs-tools", "dill"}


def test_markers_are_evaluated_for_a_linux_x86_64_node(kernel, tmp_path):
    names = ["mk-win", "mk-mac", "mk-linux", "mk-arm", "mk-x86", "mk-py2", "mk-here"]
    kernel.indexed(*(project(tmp_path, n) for n in names), project(tmp_path, "mk-root", deps=(
        'mk-win; sys_platform == "win32"', 'mk-mac; sys_platform == "darwin"',
        'mk-linux; sys_platform == "linux"', 'mk-arm; platform_machine == "aarch64"',
        'mk-x86; platform_machine == "x86_64"', 'mk-py2; python_version < "3"',
        f'mk-here; python_version == "{NODE["python_version"]}"')))
    got = by_name(requirement_set({"mk-root": "0.1"}))
    # installed in the kernel, but their markers are false on the node
    assert set(got) == {"mk-root", "mk-linux", "mk-x86", "mk-here"}


def test_extras_only_when_a_parent_asks(kernel, tmp_path):
    kernel.indexed(project(tmp_path, "ex-fast"), project(tmp_path, "ex-slow"),
                   project(tmp_path, "ex-lib", extras={"fast": ["ex-fast"], "slow": ["ex-slow"]}),
                   project(tmp_path, "ex-root", deps=("ex-lib[fast]>=0.1",)))
    assert set(by_name(requirement_set({"ex-root": "0.1"}))) == {"ex-root", "ex-lib", "ex-fast"}
    assert set(by_name(requirement_set({"ex-lib": "0.1"}))) == {"ex-lib"}


def test_a_dependency_the_kernel_lacks_goes_as_required(kernel, tmp_path):
    kernel.indexed(project(tmp_path, "lacks", deps=("not-here-anywhere>=1.2",)))
    got = by_name(requirement_set({"lacks": "0.1"}))
    assert got["not-here-anywhere"].spec == "not-here-anywhere>=1.2"
    assert got["not-here-anywhere"].version == "" and got["not-here-anywhere"].origin == "index"


def test_the_closure_follows_a_pip_install_in_the_kernel(kernel, tmp_path):
    """The per-process cache must not hide a package installed after the first call."""
    kernel.indexed(project(tmp_path, "late-root", deps=("late-dep",)))
    assert by_name(requirement_set({"late-root": "0.1"}))["late-dep"].version == ""
    kernel.indexed(project(tmp_path, "late-dep", version="3.2"))
    assert by_name(requirement_set({"late-root": "0.1"}))["late-dep"].spec == "late-dep==3.2"


# -------------------------------------------------------------------------- overrides


def test_overrides_replace_by_name_and_pass_through():
    pandas = md.version("pandas")
    plain = by_name(requirement_set({"pandas": pandas}))
    vcs = "git+https://example.invalid/org/Some_Tool.git@v1.2"
    marked = 'numpy>=2; python_version >= "3.10"'
    got = by_name(requirement_set({"pandas": pandas}, [marked, vcs, "Python_Dateutil == 2.9.0"]))
    assert got["numpy"].spec == marked and got["numpy"].source == "requested by --packages"
    assert got["numpy"].version == ""
    assert got["python-dateutil"].spec == "Python_Dateutil == 2.9.0" and got["python-dateutil"].version == "2.9.0"
    assert got["some-tool"].spec == vcs and got["some-tool"].origin == "index"
    assert got["pandas"] == plain["pandas"]
    egg = "git+https://example.invalid/x/repo.git#egg=my_pkg"
    assert by_name(requirement_set({}, [egg]))["my-pkg"].spec == egg


def test_a_local_wheel_override_travels_as_a_wheel(tmp_path):
    path = tiny_wheel(tmp_path, "numpy", "9.9.9", 7)
    rs = requirement_set({"pandas": md.version("pandas")}, [str(path)])
    numpy = by_name(rs)["numpy"]
    assert (numpy.origin, numpy.spec, numpy.version) == ("local", path.name, "9.9.9")
    [wheel] = rs.wheels
    assert wheel.path == path.resolve() and wheel.size == path.stat().st_size and wheel.name == "numpy"
    assert node_value(wheel.path, "numpy", tmp_path / "node") == 7
    # the same as a PEP 508 direct reference to this machine's file
    direct = by_name(requirement_set({}, [f"numpy @ {path.as_uri()}"]))["numpy"]
    assert (direct.origin, direct.spec) == ("local", path.name)


def test_a_source_folder_override_is_built_and_travels(tmp_path):
    src = project(tmp_path, "folder-pkg", version="4.1", value=11)
    cache = tmp_path / "cache"
    rs = requirement_set({}, [str(src)], wheel_cache=cache)
    [req] = rs.requirements
    [wheel] = rs.wheels
    assert (req.name, req.version, req.origin, req.spec) == ("folder-pkg", "4.1", "local", wheel.path.name)
    assert str(src) in req.source and wheel.path.is_relative_to(cache)
    assert node_value(wheel.path, "folder_pkg", tmp_path / "node") == 11
    assert requirement_set({}, [str(src)], wheel_cache=cache) == rs


def test_the_default_wheel_cache_is_the_users_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    [wheel] = requirement_set({}, [str(project(tmp_path, "xdg-pkg"))]).wheels
    assert wheel.path.parent.parent == tmp_path / "xdg" / "azpar" / "wheels"
    for folder in (tmp_path / "xdg", tmp_path / "xdg" / "azpar", wheel.path.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("value, words", [
    ("", ["empty", "numpy=="]),
    ("numpy=>2 !!", ["not a requirement", "PEP 508", "VCS URL"]),
    ("/nowhere/pkg-1.0-py3-none-any.whl", ["does not exist", ".whl"]),
])
def test_bad_overrides_say_what_to_give(value, words):
    with pytest.raises(RequirementError) as err:
        requirement_set({}, [value])
    for word in words:
        assert word in str(err.value)


# ------------------------------------------------------------------------ local packages


def test_editable_package_is_built_cached_and_rebuilt_after_an_edit(kernel, tmp_path):
    src = project(tmp_path, "ed-pkg", deps=("six",), value=1)
    kernel.editable(src)
    import ed_pkg
    assert ed_pkg.VALUE == 1

    rs = requirement_set({"ed-pkg": "0.1"}, wheel_cache=kernel.cache)
    got = by_name(rs)
    assert got["six"].spec == f"six=={md.version('six')}"
    ed = got["ed-pkg"]
    [wheel] = rs.wheels
    assert (ed.origin, ed.version, ed.source) == ("local", "0.1", f"editable install from {src}")
    assert ed.spec == wheel.path.name and wheel.path.is_file() and wheel.path.is_relative_to(kernel.cache)
    assert stat.S_IMODE(kernel.cache.stat().st_mode) == 0o700
    assert node_value(wheel.path, "ed_pkg", tmp_path / "node1") == ed_pkg.VALUE

    # unchanged source: nothing is built (same file, same inode, one cache entry)
    before = (wheel.path.stat().st_ino, wheel.path.stat().st_mtime_ns, sorted(os.listdir(kernel.cache)))
    again = requirement_set({"ed-pkg": "0.1"}, wheel_cache=kernel.cache)
    assert again == rs
    assert (wheel.path.stat().st_ino, wheel.path.stat().st_mtime_ns, sorted(os.listdir(kernel.cache))) == before

    # an edit: a new wheel with the new value, a new digest
    (src / "ed_pkg" / "__init__.py").write_text("VALUE = 2\n")
    importlib.reload(ed_pkg)
    edited = requirement_set({"ed-pkg": "0.1"}, wheel_cache=kernel.cache)
    [new] = edited.wheels
    assert new.path != wheel.path and new.sha256 != wheel.sha256 and edited.digest != rs.digest
    assert node_value(new.path, "ed_pkg", tmp_path / "node2") == ed_pkg.VALUE == 2


def test_an_edit_outside_the_sources_does_not_rebuild(kernel, tmp_path):
    """A virtual environment, VCS data or byte code inside the project folder is not source."""
    src = project(tmp_path, "quiet-pkg")
    kernel.editable(src)
    for folder in ("venv", ".git", "quiet_pkg/__pycache__"):
        (src / folder).mkdir()
    (src / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    first = requirement_set({"quiet-pkg": "0.1"}, wheel_cache=kernel.cache)
    (src / "venv" / "lib.py").write_text("x = 1\n")
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "quiet_pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    assert requirement_set({"quiet-pkg": "0.1"}, wheel_cache=kernel.cache) == first
    assert len(os.listdir(kernel.cache)) == 1
    # a project file is source: the wheel is rebuilt; it has the same bytes (the README is not
    # in it, and SOURCE_DATE_EPOCH fixes the times), so the content address stays
    (src / "README.md").write_text("a file of the project\n")
    again = requirement_set({"quiet-pkg": "0.1"}, wheel_cache=kernel.cache)
    assert len(os.listdir(kernel.cache)) == 2 and again.digest == first.digest


def test_a_broken_editable_build_names_the_package_pip_and_the_ways_out(kernel, tmp_path):
    src = project(tmp_path, "broken-pkg")
    kernel.editable(src)
    toml = src / "pyproject.toml"
    toml.write_text(toml.read_text().replace('build-backend = "hatchling.build"',
                                             'build-backend = "no_such_backend_here"'))
    with pytest.raises(RequirementError) as err:
        requirement_set({"broken-pkg": "0.1"}, wheel_cache=kernel.cache)
    text = str(err.value)
    for word in ["broken-pkg 0.1", str(src), "no_such_backend_here", "--packages 'broken-pkg==VERSION'",
                 "auto_packages = false"]:
        assert word in text, text
    assert not [p for p in kernel.cache.iterdir() if not p.name.startswith(".")]


def test_a_local_non_editable_install_is_repacked(kernel, tmp_path):
    src = project(tmp_path, "loc-pkg", version="1.3", value=5)
    kernel.local(src)
    rs = requirement_set({"loc-pkg": "1.3"}, wheel_cache=kernel.cache)
    loc = by_name(rs)["loc-pkg"]
    [wheel] = rs.wheels
    assert (loc.origin, loc.spec, loc.source) == ("local", wheel.path.name, f"local path {src}")
    assert wheel.path.name == "loc_pkg-1.3-py2.py3-none-any.whl"
    names = zipfile.ZipFile(wheel.path).namelist()
    assert "loc_pkg/__init__.py" in names and names[-1] == "loc_pkg-1.3.dist-info/RECORD"
    assert not [n for n in names if n.rsplit("/", 1)[-1] in ("direct_url.json", "INSTALLER", "REQUESTED")]
    assert node_value(wheel.path, "loc_pkg", tmp_path / "node") == 5
    # repacking is deterministic: the same installed files give the same bytes, so the same digest
    wheel.path.unlink()
    assert requirement_set({"loc-pkg": "1.3"}, wheel_cache=kernel.cache).digest == rs.digest


def test_an_install_whose_recorded_folder_is_gone_is_pinned_from_the_index(kernel, tmp_path):
    """As conda packages are: their direct_url.json names the build machine's folder."""
    src = project(tmp_path, "gone-pkg", version="2.0")
    kernel.local(src)
    for path in sorted(src.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    src.rmdir()
    rs = requirement_set({"gone-pkg": "2.0"}, wheel_cache=kernel.cache)
    gone = by_name(rs)["gone-pkg"]
    assert (gone.origin, gone.spec, rs.wheels) == ("index", "gone-pkg==2.0", ())
    assert str(src) in gone.source


def test_a_setup_py_develop_install_is_built_like_an_editable_one(kernel, tmp_path):
    """The legacy editable mode: no direct_url.json, an .egg-info folder in the project folder
    and the folder on sys.path through easy-install.pth."""
    pytest.importorskip("setuptools", reason="setup.py develop needs setuptools, which this venv lacks "
                                              "(venvs have no setuptools since Python 3.12)")
    src = tmp_path / "dev-proj"
    (src / "dev_pkg").mkdir(parents=True)
    (src / "dev_pkg" / "__init__.py").write_text("VALUE = 3\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "dev-pkg"\nversion = "0.2"\ndependencies = ["six"]\n')
    (src / "setup.py").write_text('from setuptools import setup\nsetup(packages=["dev_pkg"])\n')
    target = tmp_path / "develop-site"
    target.mkdir()
    done = subprocess.run([sys.executable, "setup.py", "develop", "--install-dir", str(target), "--no-deps"],
                          cwd=src, capture_output=True, text=True, env={**PIP_ENV, "PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr
    site.addsitedir(str(target))
    importlib.invalidate_caches()
    rs = requirement_set({"dev-pkg": "0.2"}, wheel_cache=kernel.cache)
    dev = by_name(rs)["dev-pkg"]
    [wheel] = rs.wheels
    assert (dev.origin, dev.source, dev.spec) == ("local", f"editable install from {src}", wheel.path.name)
    assert by_name(rs)["six"].origin == "index"
    assert node_value(wheel.path, "dev_pkg", tmp_path / "node") == 3


# ----------------------------------------------------------------------------- digest


def test_digest_follows_versions_overrides_and_wheel_content(tmp_path):
    pandas = md.version("pandas")
    base = requirement_set({"pandas": pandas})
    assert requirement_set({"pandas": pandas}).digest == base.digest
    assert len(base.digest) == 16 and int(base.digest, 16) >= 0
    assert requirement_set({"pandas": "0.0.1"}).digest != base.digest
    assert requirement_set({"pandas": pandas}, ["numpy==1.26.4"]).digest != base.digest
    one = tiny_wheel(tmp_path, "tw-pkg", "1.0", 1)
    two_dir = tmp_path / "other"
    two_dir.mkdir()
    two = tiny_wheel(two_dir, "tw-pkg", "1.0", 2)
    assert one.name == two.name
    a = requirement_set({"pandas": pandas}, [str(one)])
    b = requirement_set({"pandas": pandas}, [str(two)])
    assert a.pip_specs() == b.pip_specs() and a.digest != b.digest

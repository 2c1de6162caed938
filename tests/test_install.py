"""The enable/disable command: where the startup file goes, that disable removes only ours,
and that the wheel ships jupyter-config/ inside the package, never as files a plain
``pip install`` would place under the environment's etc/ (which would load the extension for
everyone). Whether kernels really load it is shown in tests/jupyterhub/."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from azpar_magic import install

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "azpar_magic", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_enable_and_disable_a_prefix_and_a_user(tmp_path):
    prefix = tmp_path / "env"
    done = _cli("enable", "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    placed = prefix / "etc" / "ipython" / "startup" / install.STARTUP_NAME
    assert placed.read_text() == (ROOT / "jupyter-config" / "ipython" / "startup" / install.STARTUP_NAME).read_text()
    assert oct(placed.stat().st_mode & 0o777) == "0o644" and str(placed) in done.stdout
    assert _cli("enable", "--prefix", str(prefix)).returncode == 0  # again: replaced, not an error
    done = _cli("disable", "--prefix", str(prefix))
    assert done.returncode == 0 and not placed.exists() and "removed" in done.stdout
    assert "was not enabled" in _cli("disable", "--prefix", str(prefix)).stdout

    env = {"IPYTHONDIR": str(tmp_path / "ipython"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    assert _cli("enable", "--user", env=env).returncode == 0
    assert (tmp_path / "ipython" / "profile_default" / "startup" / install.STARTUP_NAME).exists()
    assert "user: on" in _cli("status", env=env).stdout
    assert _cli("disable", "--user", env=env).returncode == 0
    assert "user: off" in _cli("status", env=env).stdout


def test_a_startup_file_that_is_not_ours_is_left_alone(tmp_path):
    path = install.startup_path("prefix", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("print('mine')\n")
    for command in ("enable", "disable"):
        done = _cli(command, "--prefix", str(tmp_path))
        assert done.returncode == 1 and "not written by azpar_magic" in done.stderr, done
    assert path.read_text() == "print('mine')\n"


def test_usage_needs_a_scope():
    done = _cli("enable")
    assert done.returncode == 2 and "--sys-prefix" in done.stderr


@pytest.mark.timeout(180)
def test_the_wheel_carries_the_files_but_installs_nothing_under_etc(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=170)
    (wheel,) = tmp_path.glob("azpar_magic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "azpar_magic/jupyter-config/ipython/startup/50-azpar_magic.py" in names
    assert "azpar_magic/jupyter-config/azpar/config.toml.example" in names
    assert "azpar_magic/py.typed" in names  # PEP 561: type checkers read the package's own hints
    assert not [n for n in names if ".data/" in n], [n for n in names if ".data/" in n]  # no shared-data
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "azpar-magic = azpar_magic.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # What users install: the azure and examples extras, never the developers' test and bench
    # tools (pyproject's dependency groups, which stay out of the metadata).
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    extras = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:"))
    assert extras == ["azure", "examples"], extras
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if any(tool in r for tool in ("pytest", "ruff", "mypy", "joblib", "jupyterhub"))]


STARTUP = ROOT / "jupyter-config" / "ipython" / "startup" / install.STARTUP_NAME
_START_IPYTHON = ("import sys; sys.path[:0] = {path!r}; from IPython import start_ipython; "
                  "start_ipython(argv=['--no-banner', '-c', {code!r}])")


def _ipython_with_startup_file(tmp_path: Path, site: list[str], code: str) -> subprocess.CompletedProcess:
    """Terminal IPython started by ``python -I -S`` (no .pth files, so no editable install
    of ours) with only ``site`` added to its path, and our startup file in its profile."""
    ipdir = tmp_path / "ipython"
    startup = ipdir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / install.STARTUP_NAME).write_text(STARTUP.read_text())
    env = {"IPYTHONDIR": str(ipdir), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    source = _START_IPYTHON.format(path=site, code=code)
    return subprocess.run([sys.executable, "-I", "-S", "-c", source], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def _site_without_azpar(tmp_path: Path) -> Path:
    """This environment's site-packages as links, minus azpar_magic: an environment (or
    an uninstall) where IPython is there and the package is not."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    other = tmp_path / "other-site"
    other.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("azpar", "_editable_impl_azpar", "__editable__")):
            (other / entry.name).symlink_to(entry)
    return other


@pytest.mark.timeout(180)
def test_the_startup_file_is_silent_where_the_package_is_missing(tmp_path):
    other = _site_without_azpar(tmp_path)
    done = _ipython_with_startup_file(tmp_path, [str(other)], "import importlib.util as u; "
                                      "print('azpar importable:', u.find_spec('azpar_magic') is not None); "
                                      "print('magic:', get_ipython().find_cell_magic('azpar') is not None)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["azpar", "importable:", "False", "magic:", "False"], done.stdout
    assert done.stderr == "", done.stderr  # no ModuleNotFoundError at every kernel's start


@pytest.mark.timeout(180)
def test_the_startup_file_loads_the_extension_where_installed(tmp_path):
    other = _site_without_azpar(tmp_path)
    done = _ipython_with_startup_file(tmp_path, [str(other), str(ROOT)],
                                      "print('magic:', get_ipython().find_cell_magic('azpar') is not None)")
    assert done.returncode == 0, done.stderr
    assert "magic: True" in done.stdout, (done.stdout, done.stderr)

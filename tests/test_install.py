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
    assert not [n for n in names if ".data/" in n], [n for n in names if ".data/" in n]  # no shared-data
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "azpar-magic = azpar_magic.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

"""Fixtures shared by the core tests: a real IPython shell with the extension loaded."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass

import pytest

# Every job is written to the job store (azpar_magic/jobstore/): tests write theirs to a
# temporary folder, never to the home folder. XDG_DATA_HOME too, for the kernels and
# subprocesses that tests start without AZPAR_* variables (test_kernel.py). XDG_CONFIG_HOME:
# the tester's own ~/.config/azpar/config.toml is outside the repository and must not steer tests.
# XDG_CACHE_HOME: wheels built from local packages (environment.py) go to a temporary cache.
_STORE_BASE = tempfile.mkdtemp(prefix="azpar-test-store-")
os.environ["AZPAR_JOB_STORE"] = os.path.join(_STORE_BASE, "jobs")
os.environ["XDG_DATA_HOME"] = os.path.join(_STORE_BASE, "xdg-data")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_STORE_BASE, "xdg-config")
os.environ["XDG_CACHE_HOME"] = os.path.join(_STORE_BASE, "xdg-cache")
atexit.register(shutil.rmtree, _STORE_BASE, True)


@dataclass
class CellRun:
    success: bool
    error: BaseException | None
    stdout: str
    stderr: str
    outputs: list  # rich display outputs (IPython RichOutput objects)


@pytest.fixture(scope="session")
def ip():
    """One InteractiveShell for the session (IPython allows one per process), with the
    extension loaded; IPYTHONDIR points at a temporary folder so no user profile leaks in."""
    os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="azpar-ipython-")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "azpar_magic")
    yield shell
    shell.run_line_magic("unload_ext", "azpar_magic")
    InteractiveShell.clear_instance()


@pytest.fixture
def run_cell(ip):
    """Run a cell as a user would; return what they would see."""
    from IPython.utils.capture import capture_output

    def run(source: str) -> CellRun:
        with capture_output() as captured:
            result = ip.run_cell(source)
        error = result.error_before_exec or result.error_in_exec
        return CellRun(result.success, error, captured.stdout, captured.stderr, list(captured.outputs))

    return run


@pytest.fixture
def pool_user():
    """The test Batch service's unprivileged pool user (tests/batch_emulator/nodes.py), or a
    skip saying why there is none: switching users needs the tests to run as root."""
    from tests.batch_emulator import nodes

    user = nodes.node_user()
    if user is None:
        pytest.skip("running tasks as a separate pool user needs the tests to run as root")
    return user


@pytest.fixture
def azure(batch, azurite, tmp_path, monkeypatch):
    """The Azure backend as a user configures it: a profile naming the test Batch service and
    Azurite, made active, run from a fresh working folder. Modules that need another set-up
    (more nodes, files made first) define their own ``azure``."""
    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite) as name:
        yield name

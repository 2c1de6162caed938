"""``pip install azpar-magic`` is enough for the local pool; the Azure SDKs come with the ``[azure]`` extra.

In a fresh virtual environment (no network: the package's wheel is built here and its requirements come
from wheels rebuilt from this test venv), without the extra: the local pool runs a loop, no ``azure``
module is importable, and an Azure profile, the doctor and the storage helpers each say in one
paragraph to install ``azpar-magic[azure]``. With the extra's packages added, the Azure backend loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.wheels import wheel_folder

ROOT = Path(__file__).resolve().parents[1]
BASE = ("ipython", "ipywidgets", "dill", "packaging", "tomlkit")
AZURE = ("azure-batch", "azure-storage-blob", "azure-identity")


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("extra")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    found = wheel_folder(*BASE)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "--find-links", str(found), "azpar-magic"], check=True, timeout=600)
    return python, wheels


def _run(python: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZPAR_", "PYTHON"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["AZPAR_JOB_STORE"] = str(tmp_path / "jobs")
    return subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)


def test_without_the_extra_the_local_pool_runs_and_no_azure_module_is_there(fresh_venv, tmp_path):
    python, _ = fresh_venv
    out = _run(python, """
        import importlib.util, azpar_magic
        print(importlib.util.find_spec("azure") is None)
        print(azpar_magic.run("for x in range(4)", "x * 3", {}).result())
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True", "[0, 3, 6, 9]"]


def test_without_the_extra_azure_uses_name_it(fresh_venv, tmp_path):
    python, _ = fresh_venv
    (tmp_path / "azpar.toml").write_text('[profiles.team]\nbatch_account_url = "https://team.westeurope.batch.azure.com"\n'
                                         'storage_account_url = "https://team.blob.core.windows.net"\n')
    out = _run(python, """
        import azpar_magic
        from azpar_magic import session, storage
        for attempt in (lambda: session.engine(profile="team"), lambda: storage.ls("az://box", profile="team")):
            try:
                attempt()
            except ImportError as exc:
                print("ImportError:", exc)
            else:
                print("no error")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line]
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert line.startswith("ImportError:") and "pip install 'azpar-magic[azure]'" in line, line


def test_with_the_extra_the_azure_backend_loads(fresh_venv, tmp_path):
    python, wheels = fresh_venv
    found = wheel_folder(*BASE, *AZURE)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "--find-links", str(found), "azpar-magic[azure]"], check=True, timeout=600)
    out = _run(python, """
        from azpar_magic.backends.azure import AzureBackend
        print(AzureBackend.__name__)
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AzureBackend"

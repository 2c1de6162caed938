"""The Azure backend on nodes as Azure makes them (issue 14): the start task runs as root, the
job preparation task and the tasks as the pool's unprivileged user, and the node's Python is a
bare interpreter, so dill and ``--packages`` arrive only by the installs the backend asks for."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import azpar_magic

from .azure_support import azure_profile
from .wheels import shared_folder, tiny_wheel

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]
POOL = "azpar-test"


@pytest.fixture
def extra_wheels() -> Iterator[Path]:
    """A folder every user can read with one small wheel, ``azpar-node-pkg`` 1.0."""
    folder = shared_folder("azpar-node-wheels-")
    tiny_wheel(folder, "azpar-node-pkg", "1.0", 41)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _node(batch):
    with batch.cond:
        return next(iter(batch.pools[POOL.lower()].nodes.values()))


def test_packages_install_and_import_as_the_non_admin_task_user(pool_user, batch, azurite, ip, run_cell,
                                                                tmp_path, monkeypatch, node_wheels, extra_wheels):
    """Every ``--packages`` run failed: the job preparation task (no user identity: the pool's
    non-admin user) could not create its folder under the one the root start task made."""
    monkeypatch.chdir(tmp_path)
    options = ["--no-index", "--find-links", str(node_wheels), "--find-links", str(extra_wheels)]
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, pip_options=options):
        run = run_cell("%%azpar -q --packages azpar-node-pkg==1.0 -o got for x in range(3):\n"
                       "import os, azpar_node_pkg\n(azpar_node_pkg.VALUE + x, os.geteuid())")
        assert run.success, run.error
        assert ip.user_ns["got"] == [(41 + x, pool_user.uid) for x in range(3)]
        node = _node(batch)
        # One set (the cell uses no installed distribution, so --packages alone), one folder (issue 15
        # names it by the requirement set's digest, environment.py).
        installed = [p for p in (node.root / "shared").glob("azpar-pkgs-*") if p.is_dir()]
        assert len(installed) == 1 and installed[0].stat().st_uid == pool_user.uid, installed


def test_tasks_run_as_the_pool_user_on_a_bare_python(pool_user, azure, ip, run_cell, batch):
    """No test venv on the node: only the stdlib, pip and what the start task installed (dill)."""
    run = run_cell("%%azpar -q --keep -o seen for x in range(2):\n"
                   "import os, sys, importlib.util as u\n"
                   "(os.geteuid(), sys.prefix == sys.base_prefix, u.find_spec('numpy') is None,\n"
                   " u.find_spec('azpar_magic') is None, u.find_spec('pip') is not None,\n"
                   " any('.venv' in p for p in sys.path), os.access(os.environ['HOME'], os.W_OK))")
    assert run.success, run.error
    assert ip.user_ns["seen"] == [(pool_user.uid, True, True, True, True, False, True)] * 2
    node = _node(batch)
    site = node.root / "shared" / "azpar" / "site"
    assert site.stat().st_uid == 0 and any(site.glob("dill-*.dist-info"))  # the root start task installed dill
    job = azpar_magic.jobs()[-1]
    with batch.cond:
        roots = [n.root for n in batch.pools[POOL.lower()].nodes.values()]
    preps = [r / "workitems" / job.id / "job-1" / "jobpreparation" / "wd" for r in roots]
    owners = [p.stat().st_uid for p in preps if p.exists()]
    assert owners and set(owners) == {pool_user.uid}  # the job preparation task ran as the pool user

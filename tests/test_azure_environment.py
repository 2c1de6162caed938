"""The kernel's environment travels to bare Azure nodes (issue 15), end to end on the test Batch
service and Azurite.

Nodes are bare (a clean Python with pip, tests/batch_emulator/nodes.py) and profiles list no
packages: what a cell uses arrives because job preparation installs the kernel's versions of it.
The wheel folder of tests/wheels.py stands in for the index (``--no-index --find-links``). The
editable package is made by the test and installed with ``pip install -e --prefix`` into a folder
only this process sees (``site.addsitedir``), never into the test venv.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import azpar_magic
from azpar_magic.backends.azure import commands

from .azure_support import azure_profile
from .wheels import node_pip_options, shared_folder, tiny_wheel

pytestmark = [pytest.mark.azure, pytest.mark.timeout(300)]
POOL = "azpar-test"
OTHER_PYTHON = Path("/root/.pyenv/versions/3.12.1")  # an interpreter of another minor, for the mismatch test
PIP_ENV = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _nodes(batch) -> list:
    with batch.cond:
        return list(batch.pools[POOL.lower()].nodes.values())


def _installs(batch) -> list[Path]:
    """Every finished install folder (azpar-pkgs-<digest>) on the pool's nodes."""
    return sorted(p for n in _nodes(batch) for p in (n.root / "shared").glob("azpar-pkgs-*")
                  if p.is_dir() and ".tmp." not in p.name)


def _task_dirs(batch, job_id: str) -> list[Path]:
    """The folders of the job's tasks whose command ran on a node (a stdout.txt is there; the
    service makes a task's folder before it knows the node's job preparation failed)."""
    return [p for n in _nodes(batch) for p in (n.root / "workitems" / job_id / "job-1").glob("*")
            if p.name != "jobpreparation" and (p / "stdout.txt").exists()]


@pytest.fixture
def editable(tmp_path, monkeypatch):
    """An editable package ``azpar_env_pkg`` (VALUE = 7, and a function) made here, installed into
    a private prefix the kernel sees; its wheels are cached in tmp_path (XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    src = tmp_path / "src-azpar-env-pkg"
    (src / "azpar_env_pkg").mkdir(parents=True)
    (src / "azpar_env_pkg" / "__init__.py").write_text("VALUE = 7\n\ndef scaled(x):\n    return VALUE * x + 1\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "azpar-env-pkg"\nversion = "0.3"\ndependencies = []\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["azpar_env_pkg"]\ndev-mode-dirs = ["."]\n')
    prefix = tmp_path / "prefix"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "-e", str(src), "--prefix", str(prefix)], capture_output=True, text=True, env=PIP_ENV)
    assert done.returncode == 0, done.stderr
    purelib = sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix), "platbase": str(prefix)})
    site.addsitedir(purelib)
    importlib.invalidate_caches()
    yield src
    _forget_modules("azpar_env_pkg")


def test_an_editable_package_arrives_on_bare_nodes_and_is_uploaded_once(pool_user, batch, azurite, ip, run_cell,
                                                                        tmp_path, monkeypatch, editable):
    """The user's package under development travels as a wheel built here, uploaded once
    (content-addressed), and the non-admin task user imports what job preparation installed."""
    monkeypatch.chdir(tmp_path)
    assert md.version("azpar-env-pkg") == "0.3"
    ip.run_cell("import azpar_env_pkg")
    cell = "%%azpar -o got for x in range(4):\nimport os\n(azpar_env_pkg.scaled(x), os.geteuid())"
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        first = run_cell(cell)
        assert first.success, first.error
        assert "uploaded 1 wheel(s) built from this machine" in first.stderr and "azpar-env-pkg 0.3" in first.stderr
        assert ip.user_ns["got"] == [(7 * x + 1, pool_user.uid) for x in range(4)]  # the kernel's values
        second = run_cell(cell)
        assert second.success, second.error
        assert "uploaded" not in second.stderr, second.stderr  # the same wheel: 0 bytes sent
    installs = _installs(batch)
    assert len(installs) == 1, installs  # one set, installed once on the node
    assert installs[0].stat().st_uid == pool_user.uid  # made by job preparation as the pool user
    pkg = installs[0] / "azpar_env_pkg" / "__init__.py"
    assert pkg.stat().st_uid == pool_user.uid and pkg.read_text().startswith("VALUE = 7")


def test_one_set_installs_once_per_node_and_one_more_distribution_makes_one_more(batch, azurite, ip, run_cell,
                                                                                tmp_path, monkeypatch):
    """Two jobs using numpy share one install (the second installs nothing); a third that also
    uses pandas installs that set into a folder of its own, without touching the first."""
    monkeypatch.chdir(tmp_path)
    numpy_cell = "%%azpar -q -o a for x in range(2):\nimport numpy as np\nint(np.arange(x + 2).sum())"
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                       pip_options=node_pip_options("numpy", "pandas")):
        for _ in range(2):
            run = run_cell(numpy_cell)
            assert run.success, run.error
            assert ip.user_ns["a"] == [1, 3]
        first = _installs(batch)
        assert len(first) == 1, first
        stamp = (first[0] / ".complete").stat().st_mtime_ns
        both = run_cell("%%azpar -q -o b for x in range(2):\nimport numpy as np, pandas as pd\n"
                        "int(pd.Series(np.arange(x + 3)).sum())")
        assert both.success, both.error
        assert ip.user_ns["b"] == [3, 6]
    after = _installs(batch)
    assert len(after) == 2 and first[0] in after, after
    assert (first[0] / ".complete").stat().st_mtime_ns == stamp  # the first set was not installed again
    new = next(p for p in after if p != first[0])
    assert any(new.glob("pandas-*.dist-info")) and not any(first[0].glob("pandas-*.dist-info"))


def test_two_concurrent_jobs_on_one_node_share_one_whole_install(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    """Two --no-wait jobs needing the same new set prepare on one node at the same time: each
    installs into its own temporary folder and one rename wins; both use a complete install."""
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, task_slots_per_node=4,
                       pip_options=node_pip_options("numpy")):
        cell = "%%azpar -q --no-wait -o {out} for x in range(2):\nimport numpy as np\nint(np.ones(x + 1).sum())"
        one = run_cell(cell.format(out="c1"))
        two = run_cell(cell.format(out="c2"))
        assert one.success and two.success, (one.error, two.error)
        jobs = azpar_magic.jobs()[-2:]
        for job in jobs:
            assert job.wait(240), job.id
        for job in jobs:
            assert job.result() == [1, 2], job.id
    installs = _installs(batch)
    assert len(installs) == 1 and (installs[0] / ".complete").exists(), installs
    leftovers = [p for n in _nodes(batch) for p in (n.root / "shared").glob("azpar-pkgs-*.tmp.*")]
    assert not leftovers, leftovers  # the loser's temporary folder was removed


@contextlib.contextmanager
def _kernel_package(tmp_path, monkeypatch, name: str, version: str, value: int, index_prefix: str):
    """A tiny wheel installed into a prefix of its own and put on this process's path (the kernel
    has it, at that version), with chdir to tmp_path; yields (the wheel, a package folder the nodes
    can read). Afterwards the folder is removed and the package forgotten."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    wheel = tiny_wheel(tmp_path, name, version, value)
    prefix = tmp_path / "prefix"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--prefix", str(prefix),
                           str(wheel)], capture_output=True, text=True, env=PIP_ENV)
    assert done.returncode == 0, done.stderr
    site.addsitedir(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix), "platbase": str(prefix)}))
    importlib.invalidate_caches()
    index = shared_folder(index_prefix)
    try:
        yield wheel, index
    finally:
        shutil.rmtree(index, ignore_errors=True)
        _forget_modules(name.replace("-", "_"))


def _forget_modules(top: str) -> None:
    """Drop a test package and its submodules from sys.modules (later tests import their own)."""
    for name in [m for m in sys.modules if m.startswith(top)]:
        del sys.modules[name]


def test_packages_overrides_the_kernels_version(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    """The kernel has azpar-ovr-pkg 1.0; ``--packages azpar-ovr-pkg==2.0`` installs 2.0 on the
    nodes instead, and the worker does not refuse it for differing from the kernel."""
    with _kernel_package(tmp_path, monkeypatch, "azpar-ovr-pkg", "1.0", 1, "azpar-ovr-index-") as (_, index):
        tiny_wheel(index, "azpar-ovr-pkg", "2.0", 2)
        ip.run_cell("import azpar_ovr_pkg")
        assert ip.user_ns["azpar_ovr_pkg"].VALUE == 1
        with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                           pip_options=node_pip_options(extra_find_links=index)):
            run = run_cell("%%azpar -q --packages azpar-ovr-pkg==2.0 -o r for x in range(2):\nazpar_ovr_pkg.VALUE + x")
            assert run.success, run.error
        assert ip.user_ns["r"] == [2, 3]


def test_a_range_the_images_version_does_not_meet_is_installed_and_one_it_meets_is_not(
        batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    """An image with azpar-rng-pkg 1.0 baked into its Python (the service's image_wheels, as a
    data-science image or a user's container holds its own packages). ``--packages 'azpar-rng-pkg>=2'``
    must install 2.0 from the index: the image's 1.0 does not meet it (the node installer once
    compared ``==`` only and took any installed version for a range). ``>=1,<2`` is met by the
    image: nothing is installed and the tasks import the image's 1.0. ``!=1.0`` is not met."""
    with _kernel_package(tmp_path, monkeypatch, "azpar-rng-pkg", "1.5", 15, "azpar-rng-index-") as (_, index):
        tiny_wheel(index, "azpar-rng-pkg", "2.0", 2)
        image = tmp_path / "image"
        image.mkdir()
        batch.image_wheels = (tiny_wheel(image, "azpar-rng-pkg", "1.0", 1),)
        ip.run_cell("import azpar_rng_pkg")
        with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                           pip_options=node_pip_options(extra_find_links=index)):
            body = " -o r for x in range(2):\nazpar_rng_pkg.VALUE * 10 + x"
            run = run_cell("%%azpar -q --packages 'azpar-rng-pkg>=2'" + body)
            assert run.success, run.error
            assert ip.user_ns["r"] == [20, 21]  # 2.0 from the index, not the image's 1.0
            before = set(_installs(batch))
            run = run_cell("%%azpar -q --packages 'azpar-rng-pkg>=1,<2'" + body)
            assert run.success, run.error
            assert ip.user_ns["r"] == [10, 11]  # the image's 1.0 meets it
            met = [p for p in _installs(batch) if p not in before]
            assert len(met) == 1 and not any(met[0].glob("azpar_rng_pkg*")), met  # and nothing was installed
            run = run_cell("%%azpar -q --packages 'azpar-rng-pkg!=1.0'" + body)
            assert run.success, run.error
            assert ip.user_ns["r"] == [20, 21]


@pytest.mark.parametrize("requirement, met", [
    ("azpar-ins-a", True),
    ("azpar-ins-a>=1,<2", True),
    ("azpar_ins_a~=1.0", True),  # names compare normalised
    ("azpar-ins-a==1.*", True),
    ("azpar-ins-a==1.0.0", True),  # PEP 440: 1.0 and 1.0.0 are one version
    ('azpar-ins-a<1; python_version < "3"', True),  # not for this node: pip would skip it too
    ("azpar-ins-a[fast]", True),  # the extra's requirement (azpar-ins-b>=1) is met
    ("azpar-ins-a>=2", False),
    ("azpar-ins-a!=1.0", False),
    ("azpar-ins-a[strict]", False),  # the extra asks azpar-ins-b>=2; 1.5 is there
    ("azpar-ins-missing", False),
    ("azpar-ins-a @ file:///nonexistent/azpar_ins_a-1.0-py3-none-any.whl", False),  # a URL goes to pip
    ("azpar_ins_a-1.0-py3-none-any.whl", False),  # a wheel file too
])
def test_the_node_installer_leaves_to_pip_exactly_what_the_nodes_python_does_not_meet(requirement, met, tmp_path):
    """The installer job preparation and the start task run (commands._INSTALLER), on the bare node
    Python, its target holding azpar-ins-a 1.0 (extras ``fast``: azpar-ins-b>=1, ``strict``:
    azpar-ins-b>=2) and azpar-ins-b 1.5. What it takes as met installs nothing; anything else goes to
    pip, which fails here (no index), so the exit status says which way it went."""
    from .batch_emulator.nodes import bare_python_bin

    target = tmp_path / "target"
    for name, version, requires in [("azpar_ins_a", "1.0", ['azpar-ins-b>=1; extra == "fast"',
                                                              'azpar-ins-b>=2; extra == "strict"']),
                                    ("azpar_ins_b", "1.5", [])]:
        info = target / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
            + "".join(f"Provides-Extra: {e}\n" for e in ("fast", "strict") if requires)
            + "".join(f"Requires-Dist: {r}\n" for r in requires))
    done = subprocess.run([str(bare_python_bin() / "python"), "-", str(target), json.dumps(["--no-index"]), requirement],
                          input=commands._INSTALLER, capture_output=True, text=True, env=PIP_ENV, timeout=120)
    if met:
        assert done.returncode == 0 and "azpar: installed nothing (all present)" in done.stdout, done
    else:
        assert done.returncode != 0 and "nothing (all present)" not in done.stdout, done


def test_a_pinned_version_the_index_lacks_is_refused_before_any_task(batch, azurite, ip, run_cell, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                       pip_options=node_pip_options("numpy")):
        run = run_cell("%%azpar -q --packages numpy==9.9 -o r for x in range(2):\nimport numpy\nx")
        assert not run.success
        text = str(run.error)
        assert "could not install the job's requirements" in text and "numpy==9.9" in text, text
        assert "No matching distribution found for numpy==9.9" in text, text  # pip's own words
        assert "--packages NAME==VERSION" in text and "auto_packages = false" in text, text  # the ways out
        job = azpar_magic.jobs()[-1]
        logs = run_cell(f"%azpar logs {job.id}")
        assert "No matching distribution found for numpy==9.9" in logs.stdout, logs.stdout
    assert not _task_dirs(batch, job.id)  # no task ran
    assert not _installs(batch)


@pytest.mark.skipif(not (OTHER_PYTHON / "bin").is_dir(), reason=f"needs another Python minor at {OTHER_PYTHON}")
def test_a_node_python_of_another_minor_is_refused_before_any_task(batch, azurite, ip, run_cell, tmp_path,
                                                                   monkeypatch):
    """An image with another Python (the service's node_python switch runs a bare 3.12 on the
    nodes): job preparation stops at once, naming both versions and the image to use."""
    monkeypatch.chdir(tmp_path)
    batch.node_python = OTHER_PYTHON
    kernel = platform.python_version()
    minor = ".".join(kernel.split(".")[:2])
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        run = run_cell("%%azpar -q -o r for x in range(2):\nx")
        assert not run.success
        text = str(run.error)
        assert f"this node runs Python 3.12 but the notebook kernel runs Python {kernel}" in text, text
        assert f'container_image = "python:{minor}-slim"' in text, text
        assert "FailureExitCode" not in text, text
        job = azpar_magic.jobs()[-1]
    assert not _task_dirs(batch, job.id)


@pytest.mark.parametrize("how", ["cell", "profile"])
def test_without_auto_packages_nothing_is_installed_and_the_mismatch_is_named(how, batch, azurite, ip, run_cell,
                                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fields = {"auto_packages": False} if how == "profile" else {}
    flag = " --no-auto-packages" if how == "cell" else ""
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                       pip_options=node_pip_options("numpy"), **fields):
        run = run_cell(f"%%azpar -q{flag} -o r for x in range(2):\nimport numpy as np\nint(np.ones(x).sum())")
        assert not run.success
        text = str(run.error)
        assert f"package numpy=={md.version('numpy')} is used by the cell but not installed on this node" in text, text
        env = run_cell("%azpar env")
        assert env.success, env.error
        said = "it ran with --no-auto-packages" if how == "cell" else "says auto_packages = false"
        assert said in env.stdout and "install only" in env.stdout, env.stdout
    assert not _installs(batch)


def test_env_shows_each_requirement_its_source_and_the_image(batch, azurite, ip, run_cell, tmp_path, monkeypatch,
                                                            editable):
    monkeypatch.chdir(tmp_path)
    ip.run_cell("import azpar_env_pkg")
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                       pip_options=node_pip_options("numpy")):
        run = run_cell("%%azpar -q -o r for x in range(2):\nimport numpy as np\nint(np.ones(x).sum()) + "
                       "azpar_env_pkg.VALUE")
        assert run.success, run.error
        env = run_cell("%azpar env")
        assert env.success, env.error
    rows = {line.split()[0]: line for line in env.stdout.splitlines() if line.strip()}
    assert rows["numpy"].split()[1] == md.version("numpy") and " index " in rows["numpy"], env.stdout
    assert rows["numpy"].rstrip().endswith("no"), env.stdout  # the bare image has no numpy
    assert rows["azpar-env-pkg"].split()[1] == "0.3" and str(editable) in rows["azpar-env-pkg"], env.stdout
    assert "reported by node" in env.stdout, env.stdout
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                       pip_options=node_pip_options("numpy")) as name:
        named = run_cell(f"%azpar env {name} {azpar_magic.jobs()[-1].id}")  # a profile and a job, named
        assert named.success, named.error
    assert named.stdout.split("\n", 1)[1] == env.stdout.split("\n", 1)[1], (named.stdout, env.stdout)


def test_env_on_the_local_pool_says_nothing_is_installed(ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = run_cell("%%azpar --backend local -q -o r for x in range(2):\nx")
    assert run.success, run.error
    env = run_cell("%azpar env")
    assert env.success, env.error
    assert "local pool: nothing is installed there" in env.stdout, env.stdout


def test_a_local_package_that_does_not_build_stops_the_cell_before_anything_is_submitted(
        batch, azurite, ip, run_cell, tmp_path, monkeypatch, editable):
    monkeypatch.chdir(tmp_path)
    ip.run_cell("import azpar_env_pkg")
    (editable / "pyproject.toml").write_text("[build-system\nthis is not toml\n")  # the build now fails
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        run = run_cell("%%azpar -q -o r for x in range(2):\nazpar_env_pkg.VALUE")
        assert not run.success
        text = str(run.error)
        assert "azpar-env-pkg" in text and "Nothing was submitted" in text, text
    assert not batch.requests_for("Jobs_CreateJob")


def test_the_start_task_records_what_the_image_has(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        run = run_cell("%%azpar -q -o r for x in range(1):\nx")
        assert run.success, run.error
    listed = (_nodes(batch)[0].root / "shared" / commands.IMAGE_PACKAGES).read_text()
    assert '"pip"' in listed and "numpy" not in listed



def test_a_module_the_cell_imports_out_of_sight_is_named_with_the_packages_to_pass(batch, azurite, ip, run_cell,
                                                                                   tmp_path, monkeypatch):
    """The nodes install what the captured code names; a module imported where capture cannot see
    (``importlib.import_module``, a library's optional dependency) is missing there. The failure
    names the kernel's distribution and version to pass, and passing them makes the cell run."""
    body = "import importlib\nimportlib.import_module('azpar_hidden_pkg').VALUE + x"
    with _kernel_package(tmp_path, monkeypatch, "azpar-hidden-pkg", "1.0", 7, "azpar-hidden-index-") as (wheel, index):
        shutil.copy(wheel, index)
        version = md.version("azpar-hidden-pkg")
        with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1,
                           pip_options=node_pip_options(extra_find_links=index)):
            run = run_cell(f"%%azpar -q -o r for x in range(2):\n{body}")
            assert not run.success
            said = str(run.error)
            assert "ModuleNotFoundError: No module named 'azpar_hidden_pkg' (azpar_hidden_pkg is installed in this " \
                "kernel, but no code the cell sends names it" in said, said
            pins = f"--packages {md.metadata('azpar-hidden-pkg')['Name']}=={version}"
            assert f"pass {pins})" in said, said
            fixed = run_cell(f"%%azpar -q {pins} -o r for x in range(2):\n{body}")
            assert fixed.success, fixed.error
        assert ip.user_ns["r"] == [7, 8]

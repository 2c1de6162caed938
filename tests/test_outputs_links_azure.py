"""--outputs and az:// names on Azure Batch never reach outside where they belong (issue 13,
item 4): the test Batch service runs the tasks on this machine, so a link the body makes to
a folder of the user's is a real link, and Batch uploads what its output file pattern
matches. The worker puts only regular files from inside the working directory into the
folder Batch uploads; the user's files stay where they are."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import azpar_magic
from tests.batch_emulator.nodes import cache_root

from .azure_support import azure_profile
from .test_data_storage import _put_raw
from .test_outputs_links import _warnings, make_victim, snapshot

pytestmark = [pytest.mark.azure, pytest.mark.timeout(240)]

BODY = ("import os\nos.symlink(victim, 'data')\nos.symlink(os.path.join(victim, 'a.csv'), 'latest.csv')\n"
        "open(f'own-{i}.csv', 'w').write(str(i))\ni")


@pytest.fixture
def azure(batch, azurite, tmp_path, monkeypatch):
    work = tmp_path / "nb"
    work.mkdir()
    monkeypatch.chdir(work)
    with azure_profile(tmp_path / "config", batch, azurite) as name:
        yield name


@pytest.fixture
def victim():
    """The user's folder the body links to, where the node's task user can reach it (it runs as
    the pool's non-admin user, which cannot enter pytest's private tmp_path)."""
    parent = Path(tempfile.mkdtemp(prefix="azpar-victim-", dir=cache_root()))
    parent.chmod(0o755)
    yield parent / "victim"
    shutil.rmtree(parent, ignore_errors=True)


def _check_warning(stderr: str, victim, n: int) -> None:
    warnings = _warnings(stderr)
    assert len(warnings) == 1, stderr
    assert f"data/ (a link to {victim})" in warnings[0] and f"latest.csv (a link to {victim / 'a.csv'})" in warnings[0]
    assert f"{n} iterations" in warnings[0] and "left untouched" in warnings[0]


def test_links_out_of_the_working_directory_are_not_uploaded_and_the_originals_stay(azure, ip, run_cell, tmp_path,
                                                                                   victim):
    before = make_victim(victim)
    ip.user_ns["victim"] = str(victim)
    run = run_cell(f"%%azpar -o r --chunk-size 2 --outputs '**/*.csv' for i in range(3):\n{BODY}")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 1, 2]
    assert snapshot(victim) == before
    root = tmp_path / "nb" / "azpar_outputs" / azpar_magic.jobs()[-1].id
    for i in range(3):
        assert sorted(str(p.relative_to(root / str(i))) for p in (root / str(i)).rglob("*")) == [f"own-{i}.csv"]
    _check_warning(run.stderr, victim, 3)


def test_an_az_destination_gets_only_the_files_inside(azure, ip, run_cell, tmp_path, blob_service, victim):
    before = make_victim(victim)
    ip.user_ns["victim"] = str(victim)
    run = run_cell("%%azpar -o r --outputs '**/*.csv' --outputs-to az://linkresults/run "
                   f"for i in range(2):\n{BODY}")
    assert run.success, run.error
    assert snapshot(victim) == before
    job = azpar_magic.jobs()[-1]
    names = sorted(b.name for b in blob_service.get_container_client("linkresults").list_blobs(
        name_starts_with=f"run/{job.id}/"))
    assert names == [f"run/{job.id}/{i}/own-{i}.csv" for i in range(2)]
    _check_warning(run.stderr, victim, 2)


def test_a_blob_input_whose_name_has_dot_dot_is_refused_before_submission(azure, ip, run_cell, batch, azurite,
                                                                            blob_service):
    box = "dotdotinputs"
    if not blob_service.get_container_client(box).exists():
        blob_service.create_container(box)
    _put_raw(azurite, blob_service, box, "folder/ok.txt", b"ok")
    _put_raw(azurite, blob_service, box, "folder/%2E%2E/%2E%2E/%2E%2E/escape.txt", b"evil")
    ip.user_ns.pop("r", None)
    run = run_cell(f"%%azpar -q -o r --inputs az://{box}/folder for i in range(2):\ni")
    assert isinstance(run.error, UsageError), run.error
    message = str(run.error)
    assert "'folder/../../../escape.txt', whose name has a '..' segment" in message, message
    assert "Nothing was submitted" in message
    assert batch.requests_for("Jobs_CreateJob") == [] and "r" not in ip.user_ns
    run = run_cell(f"%%azpar -q -o r --inputs 'az://{box}/folder/../x' for i in range(2):\ni")
    assert isinstance(run.error, UsageError) and "has a '..' segment" in str(run.error), run.error

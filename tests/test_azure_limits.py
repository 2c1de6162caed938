"""The Azure backend against the limits and rules the test Batch service models (issue 14):
a create-job body Batch finds too large (many shared input files), reactivation refused for a
task that exited 0, an image that cannot be pulled, and a start task that fails. End to end:
``%%azpar`` cells on the test Batch service with Azurite, through the real SDKs."""

from __future__ import annotations

import time

import pytest

from azpar_magic.backends.azure import files

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]
POOL = "azpar-test"
N_SHARED = 300
SUM_CELL = ("%%azpar -q -o got --inputs shared for i in range(3):\n"
            "import os\nsum(int(open(os.path.join('inputs/shared', f)).read()) for f in os.listdir('inputs/shared'))")


@pytest.fixture
def shared(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    for k in range(N_SHARED):
        (folder / f"f{k:03}.txt").write_text(str(k))
    return folder


def _prep_files(batch) -> list[dict]:
    return batch.requests_for("Jobs_CreateJob")[-1].body["jobPreparationTask"]["resourceFiles"]


def _packed(resource_files: list[dict]) -> bool:
    """One container resource file brings the shared inputs; none is listed on its own."""
    return [rf.get("blobPrefix") for rf in resource_files if rf.get("storageContainerUrl")] == ["azpar-in/"] and \
        not any((rf.get("filePath") or "").startswith("azpar-in/") for rf in resource_files)


# ------------------------------------------------------------------------ RequestEntityTooLarge

def test_shared_inputs_batch_finds_too_many_are_packed_and_sent_again(azure, ip, run_cell, batch, shared):
    batch.faults.rules.max_job_body = 64 * 1024   # Azure's bound is unknown: here, below the backend's own
    run = run_cell(SUM_CELL)
    assert run.success, run.error
    assert ip.user_ns["got"] == [sum(range(N_SHARED))] * 3
    assert [r.status for r in batch.requests_for("Jobs_CreateJob")] == [413, 201]
    assert _packed(_prep_files(batch))


def test_shared_inputs_past_the_backends_bound_are_packed_at_once(azure, ip, run_cell, batch, shared, monkeypatch):
    monkeypatch.setattr(files, "INLINE_PREP_BYTES", 16 * 1024)   # 300 entries are ~100 KiB inline
    run = run_cell(SUM_CELL)
    assert run.success, run.error
    assert ip.user_ns["got"] == [sum(range(N_SHARED))] * 3
    assert [r.status for r in batch.requests_for("Jobs_CreateJob")] == [201]
    assert _packed(_prep_files(batch))


def test_a_few_shared_inputs_stay_one_resource_file_each(azure, ip, run_cell, batch, tmp_path):
    (tmp_path / "scale.txt").write_text("7")
    run = run_cell("%%azpar -q -o got --inputs scale.txt for i in range(2):\nint(open('inputs/scale.txt').read())")
    assert run.success, run.error
    assert ip.user_ns["got"] == [7, 7]
    assert [rf["filePath"] for rf in _prep_files(batch) if rf["filePath"].startswith("azpar-in/")] == \
        ["azpar-in/scale.txt"]


def test_too_many_shared_inputs_are_refused_before_anything_is_sent(azure, ip, run_cell, batch, shared,
                                                                     monkeypatch):
    monkeypatch.setattr(files, "MAX_SHARED_INPUTS", 100)
    run = run_cell(SUM_CELL)
    assert not run.success
    message = str(run.error)
    assert f"name {N_SHARED} files that every iteration reads; at most 100" in message, message
    assert "Nothing was submitted" in message and "archive" in message
    assert batch.requests_for("Jobs_CreateJob") == []


def test_a_job_too_large_with_nothing_to_pack_says_so(azure, ip, run_cell, batch, blob_service):
    batch.faults.rules.max_job_body = 512
    before = {c.name for c in blob_service.list_containers()}
    run = run_cell("%%azpar -q -o got for i in range(2):\ni")
    assert not run.success
    assert "RequestEntityTooLarge" in str(run.error) and "no shared input files left to pack" in str(run.error)
    # What was staged for it is gone (its -in and -out containers stayed behind).
    assert {c.name for c in blob_service.list_containers()} <= before | {"azpar-cache"}


# ------------------------------------------------------------------------ reactivation refused

def test_reactivation_refused_for_an_exit_0_task_says_why(azure, ip, run_cell, batch):
    """The task exits 0, its upload fails and its result cannot be read from the node either:
    the engine asks Batch to run it again, which Batch refuses for an exit-0 task (the other
    task still runs, so the job has not ended)."""
    batch.fail_output_uploads(50)                                   # every task's upload fails
    batch.fail_requests(r"/files/wd/result\.azpr", count=50, status=404, method="GET")
    run = run_cell("%%azpar -q -o r --retries 1 for i in range(2):\nimport time\ntime.sleep(4 if i else 0)\ni * 10")
    assert not run.success
    message = str(run.error)
    assert "exit code 0" in message and "TaskCompleted" in message, message
    assert "had already ended" not in message
    reactivations = batch.requests_for("Tasks_ReactivateTask")
    assert reactivations and reactivations[0].error_code == "TaskCompleted"


# ------------------------------------------------------------------------ nodes that cannot start

def _profile_image() -> str:
    from azpar_magic.config import load_profile

    return load_profile("test")["container_image"]


def test_an_image_that_cannot_be_pulled_is_named_not_the_start_task(batch, azurite, ip, run_cell, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        image = _profile_image()
        batch.faults.fail_image_pull(image)
        started = time.monotonic()
        run = run_cell("%%azpar -q -o never for x in range(3):\nx")
        assert not run.success
        message = str(run.error)
        assert f"no node of the pool could pull the container image {image} " in message, message
        assert "ContainerInvalidImage" in message and "%azpar pool delete" in message
        assert "start task" not in message
        assert time.monotonic() - started < 60


def test_a_failing_start_task_shows_the_end_of_its_stderr(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        batch.fail_start_task(POOL, count=3)
        run = run_cell("%%azpar -q -o never for x in range(3):\nx")
        assert not run.success
        message = str(run.error)
        assert "failed its start task" in message, message
        assert "start task failure injected by the emulator" in message, message   # startup/stderr.txt
        reads = [r.path for r in batch.requests_for("Nodes_GetNodeFile")]
        assert any(p.endswith("/files/startup/stderr.txt") for p in reads), reads

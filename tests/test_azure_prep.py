"""What a job needs before its tasks run, and the words when that fails: cached blobs removed
behind the kernel's back are uploaded again (or named as the cause), and a failed
``--packages`` install shows pip's own message in the cell and in ``%azpar logs``; a Batch
service that stops answering is named in the panel and the progress line. Real
kernels' shell, the test Batch service and Azurite, as in test_azure_backend."""

from __future__ import annotations

import re
import time

import pytest

import azpar_magic
from azpar_magic.backends.azure import storage
from tests.wheels import node_pip_options

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]


@pytest.fixture
def azure(batch, azurite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1) as name:
        yield name


def _empty_cache(blob_service) -> None:
    cache = blob_service.get_container_client(storage.CACHE_CONTAINER)
    for blob in list(cache.list_blobs()):
        cache.delete_blob(blob.name)


@pytest.mark.parametrize("how", ["blobs removed", "container removed"])
def test_cached_worker_and_namespace_removed_are_uploaded_again(azure, ip, run_cell, blob_service, how):
    """storage rm / a lifecycle rule (the blobs) or an emulator restart (the container): the
    kernel believed them uploaded; the next cell must still run."""
    ip.user_ns["offset"] = 10
    cell = "%%azpar -q -o r for x in range(3):\nx + offset"
    first = run_cell(cell)
    assert first.success, first.error
    if how == "blobs removed":
        _empty_cache(blob_service)
    else:
        blob_service.delete_container(storage.CACHE_CONTAINER)
    again = run_cell(cell)
    assert again.success, again.error
    assert ip.user_ns["r"] == [10, 11, 12]
    names = {b.name for b in blob_service.get_container_client(storage.CACHE_CONTAINER).list_blobs()}
    assert any(n.startswith("worker/") for n in names) and any(n.startswith("ns/") for n in names)


def test_a_removed_input_names_the_cause_not_packages_and_the_next_cell_works(azure, ip, run_cell, blob_service,
                                                                               tmp_path):
    (tmp_path / "scale.txt").write_text("3")
    cell = "%%azpar -q -o r --inputs scale.txt for x in range(2):\nx * int(open('inputs/scale.txt').read())"
    first = run_cell(cell)
    assert first.success, first.error
    _empty_cache(blob_service)
    failed = run_cell(cell)
    assert not failed.success
    text = str(failed.error)
    assert "--packages" not in text, text
    assert "could not download azpar-in/scale.txt" in text and storage.CACHE_CONTAINER in text, text
    assert "run the cell again" in text
    again = run_cell(cell)
    assert again.success, again.error
    assert ip.user_ns["r"] == [0, 3]


def test_a_failed_packages_install_shows_pips_message_in_the_cell_and_the_logs(batch, azurite, ip, run_cell,
                                                                               tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Only the test wheel folder (dill for the start task), which has no azpar-missing-pkg.
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, pip_options=node_pip_options()):
        run = run_cell("%%azpar -q --packages azpar-missing-pkg==9.9 -o r for x in range(2):\nx")
        assert not run.success
        text = str(run.error)
        assert "could not install the job's requirements (azpar-missing-pkg==9.9" in text, text  # issue 15's words
        assert text.count("No matching distribution found") == 1, text  # said once, not once per retry
        assert "No matching distribution found for azpar-missing-pkg==9.9" in text, text
        assert "Traceback" not in text and "CalledProcessError" not in text, text  # pip's words, not the installer's
        with batch.cond:
            node = next(iter(batch.pools["azpar-test"].nodes.values()))
        assert not list((node.root / "shared").glob("azpar-pkgs-*.tmp.*"))  # no half install left behind
        job = azpar_magic.jobs()[-1]
        logs = run_cell(f"%azpar logs {job.id}")
        assert logs.success, logs.error
        assert "No matching distribution found for azpar-missing-pkg==9.9" in logs.stdout, logs.stdout


def test_a_batch_service_that_stops_answering_is_named_with_since_when(azure, ip, run_cell, batch, monkeypatch):
    """The cell used to show "running" for minutes without a word while every poll failed."""
    from azpar_magic.backends.azure import run as azure_run
    from azpar_magic.ui.html import panel_html
    from azpar_magic.ui.state import job_view
    from azpar_magic.ui.text import format_snapshot, format_text

    monkeypatch.setattr(azure_run, "SILENCE_NOTICE", 0.5)
    batch.fail_requests(r"/taskcounts", count=10**6, status=503)
    started = run_cell("%%azpar -q --no-wait -o handle for x in range(2):\nx * 5")
    assert started.success, started.error
    job = azpar_magic.jobs()[-1]
    deadline = time.monotonic() + 60
    while "HTTP 503" not in job.snapshot().unanswered and time.monotonic() < deadline:  # first "no reply yet"
        time.sleep(0.1)
    snap = job.snapshot()
    assert snap.state == "running"
    line = format_snapshot(snap)
    assert re.search(r"the Azure Batch service is not answering since \d\d:\d\d:\d\d \(\d+ s\): HTTP 503", line), line
    assert "service     the Azure Batch service is not answering" in format_text(snap)
    assert 'class="azpar-unanswered"' in panel_html(job_view(snap))
    batch.faults.clear()  # the service is back
    job.wait(90)
    assert job.state == "succeeded" and job.result() == [0, 5]
    assert job.snapshot().unanswered == ""


def test_a_removed_per_iteration_input_names_the_cause(azure, ip, run_cell, blob_service, tmp_path):
    """An iteration's own input travels with its task (not the job preparation): the task's
    failure to fetch it is named the same way, not as a worker failure."""
    (tmp_path / "parts").mkdir()
    for i in range(2):
        (tmp_path / "parts" / f"p{i}.txt").write_text(str(i + 1))
    cell = "%%azpar -q -o r --inputs 'parts/p{i}.txt' for i in range(2):\nint(open(f'inputs/parts/p{i}.txt').read())"
    first = run_cell(cell)
    assert first.success, first.error
    _empty_cache(blob_service)
    failed = run_cell(cell)
    text = str(failed.error)
    assert not failed.success and "the task could not download azpar-in/parts/p" in text, text
    assert "worker failed" not in text and storage.CACHE_CONTAINER in text
    again = run_cell(cell)
    assert again.success, again.error
    assert ip.user_ns["r"] == [1, 2]


def test_a_call_that_hangs_is_named_too(monkeypatch):
    """An address that drops packets makes a call wait for the connection timeout (minutes)
    without an error to count: a call outstanding for SILENCE_NOTICE seconds is named as well
    (unit test of the bookkeeping: the test service cannot hang a connection)."""
    import threading
    from types import SimpleNamespace

    from azpar_magic.backends.azure import run as azure_run

    run = azure_run.AzureRun.__new__(azure_run.AzureRun)
    run._lock, run._silent = threading.Lock(), {}
    run.spot = SimpleNamespace(note=lambda: "")  # no spot fallback configured: it has nothing to say
    monkeypatch.setattr(azure_run, "SILENCE_NOTICE", 0.0)
    run.asking("the Azure Batch service")
    assert re.fullmatch(r"the Azure Batch service is not answering since \d\d:\d\d:\d\d \(0 s\): no reply yet",
                        run.unanswered()), run.unanswered()
    run.answered("the Azure Batch service")
    assert run.unanswered() == ""
    monkeypatch.setattr(azure_run, "SILENCE_NOTICE", 3600.0)
    run.asking("Azure Storage")
    assert run.unanswered() == ""  # a call in flight for less than the notice is not news


def test_storage_that_stops_answering_is_named_and_the_result_still_arrives(batch, ip, run_cell, tmp_path,
                                                                            monkeypatch, batch_client):
    """A private Azurite, paused (SIGSTOP: connections open, no reply) just before the kernel
    downloads a finished task's result: the views name Azure Storage and since when; once it
    answers again the result arrives (nothing is failed for an outage)."""
    import os
    import signal

    from azpar_magic.backends.azure import run as azure_run
    from azpar_magic.ui.text import format_snapshot
    from tests.batch_emulator.pytest_plugin import start_azurite, stop_azurite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(azure_run, "SILENCE_NOTICE", 0.5)
    (tmp_path / "azurite").mkdir()
    private = start_azurite(tmp_path / "azurite")
    paused = False
    try:
        with azure_profile(tmp_path / "config", batch, private, dedicated_nodes=1):
            batch.fail_requests(r"/taskcounts", count=10**6, status=503)  # the kernel cannot see progress yet
            started = run_cell("%%azpar -q --no-wait -o handle for x in range(2):\nx * 7")
            assert started.success, started.error
            job = azpar_magic.jobs()[-1]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # Batch finished the tasks (and uploaded their results)
                states = [str(t.state) for t in batch_client.list_tasks(job.id, select=["id", "state"])]
                if len(states) == 2 and all(s.lower().endswith("completed") for s in states):
                    break
                time.sleep(0.1)
            os.killpg(private.process.pid, signal.SIGSTOP)
            paused = True
            batch.faults.clear()  # now the kernel sees the completed tasks and asks Storage for results
            while "Azure Storage is not answering" not in job.snapshot().unanswered and time.monotonic() < deadline:
                time.sleep(0.1)
            line = format_snapshot(job.snapshot())
            assert re.search(r"Azure Storage is not answering since \d\d:\d\d:\d\d \(\d+ s\)", line), line
            assert job.snapshot().state == "running"
            os.killpg(private.process.pid, signal.SIGCONT)
            paused = False
            job.wait(90)
            assert job.state == "succeeded" and job.result() == [0, 7]
            assert job.snapshot().unanswered == ""
    finally:
        if paused:
            os.killpg(private.process.pid, signal.SIGCONT)
        stop_azurite(private)

"""--timeout on Azure, end to end on the test Batch service and Azurite: the node's worker stops the
iteration running at the limit itself and the task's result keeps what ended before it; Batch's own
limit (maxWallClockTime, a grace later) ends only a task that did not stop, as the local pool's kill does.
Source for Batch's side: the REST spec's ``TaskConstraints.maxWallClockTime`` (the task is terminated
when it passes it, ``failureInfo.code`` ``MaxWallClockTimeExceeded``, as the service models it)."""

from __future__ import annotations

import time

import pytest

import azpar_magic
from azpar_magic.backends.base import timeout_grace

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(240)]


def test_a_chunk_stopped_at_its_timeout_keeps_the_iterations_that_ended(batch, azurite, ip, run_cell, tmp_path,
                                                                        monkeypatch):
    """--chunk-size 3 over 6 iterations, iteration 4 never ends: 3 ended before it in the same task, and
    its value comes back; 4 is the TaskTimeoutError with its cell line, 5 did not run. Batch's limit on
    the task is the --timeout and a grace."""
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        started = time.monotonic()
        run = run_cell("%%azpar -q --timeout 3 --chunk-size 3 --errors remove -o got for x in range(6):\n"
                       "import time\nwhile x == 4:\n    time.sleep(0.01)\nx * 3")
        assert run.success, run.error
        assert ip.user_ns["got"] == [0, 3, 6, 9]
        job = azpar_magic.jobs()[-1]
        failure = job.failures[4]
        assert failure.error_type == "azpar_magic.TaskTimeoutError" and failure.line == 4, failure
        assert "the 1 iteration before it is kept" in failure.message, failure.message
        assert job.failures[5].kind == "cancelled"
        assert time.monotonic() - started < 3 + timeout_grace(3)  # stopped by the worker, not by Batch
        client = azpar_magic.session.engine().backend.client
        limits = {t.id: t.constraints.max_wall_clock_time.total_seconds()
                  for t in client.list_tasks(job.id, select=["id", "constraints"])}
        assert set(limits.values()) == {3 + timeout_grace(3)}, limits


def test_a_task_that_does_not_stop_is_ended_by_batch_a_grace_later(batch, azurite, ip, run_cell, tmp_path,
                                                                    monkeypatch):
    """A body that swallows the stop runs on until Batch's maxWallClockTime: the failure names the
    --timeout and the grace."""
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        run = run_cell("%%azpar -q --timeout 1 -o got for x in range(2):\nimport time\nif x == 1:\n"
                       "    try:\n        time.sleep(60)\n    except BaseException:\n        time.sleep(60)\nx")
        err = run.error
        assert isinstance(err, azpar_magic.IterationError) and err.index == 1, repr(err)
        assert err.error_type == "azpar_magic.TaskTimeoutError", err.error_type
        assert f"did not stop there: Batch ended it {timeout_grace(1):g} s later" in err.error_message, err

"""EnablePoolAutoScale at most once every 30 s per pool (REST spec, Pools_EnablePoolAutoScale; issue 19).

Two quick cells on an empty autoscale pool each resize it (autoscale off) and turn the formula back
on when they end; the second enable can come less than 30 s after the first. Real Batch refuses it,
and the pool would then keep fixed targets with no formula, and so no idle rule, until someone acts.
The test service enforces the window (409 TooManyEnableAutoScaleRequests); the backend waits it out
in the background instead of losing the enable. Windows are shortened here (the service's
``enable_autoscale_window`` and pool.ENABLE_WINDOW) so the tests wait seconds, not 30 s.
"""

from __future__ import annotations

import time

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from azpar_magic.backends.azure import pool
from azpar_magic.backends.azure.autoscale import idle_minutes
from tests.azure_support import wait_until
from tests.emulator.helpers import vm_config

POOL = "azpar-window"
WINDOW = 3.0


def _enable(client, formula: str = "$TargetDedicatedNodes = 0;") -> None:
    client.enable_pool_auto_scale(POOL, models.BatchPoolEnableAutoScaleOptions(auto_scale_formula=formula))


def test_the_service_refuses_a_second_enable_within_30_seconds(batch, batch_client):
    batch_client.create_pool(models.BatchPoolCreateOptions(
        id=POOL, vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(), enable_auto_scale=True,
        auto_scale_formula="$TargetDedicatedNodes = 0;"))
    _enable(batch_client)  # creating the pool with a formula does not start the window
    with pytest.raises(HttpResponseError) as refused:
        _enable(batch_client)
    assert refused.value.status_code == 409 and refused.value.error.code == "TooManyEnableAutoScaleRequests"
    batch.pass_enable_autoscale_window()
    _enable(batch_client)
    with pytest.raises(HttpResponseError):
        _enable(batch_client)
    batch.enable_autoscale_window = 0.5
    time.sleep(0.6)
    _enable(batch_client)


@pytest.fixture
def idle_pool(batch, azurite, tmp_path, monkeypatch):
    """The backend of a profile with an azpar fixed-size pool (1 node) under the idle rule, the
    service's window and the backend's shortened to WINDOW seconds."""
    from azpar_magic import session
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(batch, "enable_autoscale_window", WINDOW)
    monkeypatch.setattr(pool, "ENABLE_WINDOW", WINDOW)
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, dedicated_nodes=1, spot_nodes=0,
                       idle_timeout=10) as name:
        session.pool_action(name, "create")
        wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the pool to be steady")
        yield session._azure_backend(name)


def _cell(backend, batch) -> None:
    """What a run on an empty pool does to it: resize (autoscale off), then, when it ends, turn
    the formula back on through the backend's one restore path."""
    pool.resize(backend.client, POOL, 1, 0)
    wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the resize to end")
    backend._restore_autoscale()


@pytest.mark.timeout(120)
def test_two_quick_cells_end_with_the_idle_formula_on(batch, idle_pool):
    started = time.monotonic()
    _cell(idle_pool, batch)
    _cell(idle_pool, batch)  # within WINDOW of the first enable
    p = batch.pools[POOL]
    assert p.enable_autoscale and idle_minutes(p.autoscale_formula) == 10  # the second enable was not lost ...
    assert time.monotonic() - started >= WINDOW  # ... it waited out the window
    codes = [r.error_code for r in batch.requests_for("Pools_EnablePoolAutoScale")]
    assert "TooManyEnableAutoScaleRequests" not in codes, codes


@pytest.mark.timeout(120)
def test_an_enable_the_backend_did_not_see_is_waited_out_on_refusal(batch, idle_pool, monkeypatch):
    """Another kernel (or process) enabled autoscale a moment ago: the service's refusal starts
    the wait just as the backend's own memory does."""
    _cell(idle_pool, batch)
    monkeypatch.setattr(pool, "_last_enable", {}, raising=False)  # this process forgets its enable
    _cell(idle_pool, batch)
    p = batch.pools[POOL]
    assert p.enable_autoscale and idle_minutes(p.autoscale_formula) == 10
    codes = [r.error_code for r in batch.requests_for("Pools_EnablePoolAutoScale")]
    assert codes.count("TooManyEnableAutoScaleRequests") == 1, codes


@pytest.mark.timeout(120)
def test_finish_and_spot_close_enable_once(batch, idle_pool):
    """Both the run's finish and the spot fallback's close restore the formula after one resize:
    one enable, the second finds the formula on and does nothing (no wait, no refusal)."""
    pool.resize(idle_pool.client, POOL, 1, 0)
    wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the resize to end")
    before = len(batch.requests_for("Pools_EnablePoolAutoScale"))
    started = time.monotonic()
    idle_pool._restore_autoscale()
    assert not pool.restore_autoscale(idle_pool.client, idle_pool.profile)
    assert time.monotonic() - started < WINDOW
    assert len(batch.requests_for("Pools_EnablePoolAutoScale")) == before + 1
    assert idle_minutes(batch.pools[POOL].autoscale_formula) == 10


@pytest.mark.timeout(120)
def test_closing_the_backend_does_not_cut_off_a_waiting_restore(batch, idle_pool, monkeypatch):
    """The kernel closes right after the second quick cell: close() waits for the restore that
    is waiting out the window (longer than close's 15 s per cleanup thread)."""
    monkeypatch.setattr(batch, "enable_autoscale_window", 17.0)
    monkeypatch.setattr(pool, "ENABLE_WINDOW", 17.0)
    _cell(idle_pool, batch)
    pool.resize(idle_pool.client, POOL, 1, 0)
    wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the resize to end")
    idle_pool._in_background(idle_pool._restore_autoscale)  # what finish() does
    idle_pool.close()
    p = batch.pools[POOL]
    assert p.enable_autoscale and idle_minutes(p.autoscale_formula) == 10


@pytest.mark.timeout(120)
def test_a_waiting_restore_leaves_a_later_runs_resize_alone(batch, idle_pool, monkeypatch):
    """Cell 2's restore waits out the window; meanwhile cell 3 starts and resizes the pool for its
    own run. When the wait ends the pool is cell 3's: the old restore neither turns the formula on
    under it nor stops its resize; cell 3's own end restores the formula."""
    monkeypatch.setattr(batch, "resize_delay", 2 * WINDOW)  # cell 3's resize is still under way
    _cell(idle_pool, batch)
    monkeypatch.setattr(batch, "resize_delay", 0.0)
    pool.resize(idle_pool.client, POOL, 1, 0)  # cell 2
    wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "cell 2's resize to end")
    results: list[bool] = []
    import threading

    waiting = threading.Thread(target=lambda: results.append(pool.restore_autoscale(idle_pool.client, idle_pool.profile)))
    waiting.start()
    time.sleep(0.3)
    monkeypatch.setattr(batch, "resize_delay", 2 * WINDOW)
    enables = len(batch.requests_for("Pools_EnablePoolAutoScale"))
    pool.resize(idle_pool.client, POOL, 2, 0)  # cell 3, while cell 2's restore waits
    stops = len(batch.requests_for("Pools_StopPoolResize"))
    waiting.join(30)
    assert results == [False]
    assert len(batch.requests_for("Pools_EnablePoolAutoScale")) == enables  # no formula under cell 3
    assert len(batch.requests_for("Pools_StopPoolResize")) == stops  # cell 3's resize left alone
    assert not batch.pools[POOL].enable_autoscale

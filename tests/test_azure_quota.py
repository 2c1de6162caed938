"""A Batch account whose core quota is too small for the profile's pool (issue 14): Azure does
not refuse the pool, it stops the resize short of its target with a resize error
(AccountCoreQuotaReached), and a new account may have a quota of 0. A cell must then say so,
and what to do, instead of waiting for nodes that never come; a quota that allows fewer nodes
than asked still runs every iteration. End to end on the test Batch service and Azurite."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.azure, pytest.mark.timeout(120)]
POOL = "azpar-test"   # tests/azure_support.py: 2 dedicated Standard_D2s_v3 nodes (2 vCPUs each)


def _wait_steady(batch, pool_id: str = POOL, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with batch.cond:
            pool = batch.pools.get(pool_id.lower())
            if pool is not None and pool.allocation_state == "steady":
                return {"nodes": len(pool.nodes), "errors": [e["code"] for e in pool.resize_errors]}
        time.sleep(0.05)
    raise AssertionError("the pool never became steady")


def test_a_quota_of_zero_says_so_and_what_to_do_instead_of_waiting(azure, ip, run_cell, batch):
    batch.core_quota = {"dedicated": 0, "lowPriority": 0}
    started = time.monotonic()
    run = run_cell("%%azpar -q -o got for x in range(3):\nx * 2")
    assert time.monotonic() - started < 60
    assert not run.success
    text = str(run.error)
    assert "AccountCoreQuotaReached" in text, text
    assert "Quotas" in text and "rerun" in text, text
    assert _wait_steady(batch) == {"nodes": 0, "errors": ["AccountCoreQuotaReached"]}


def test_pool_status_shows_the_last_resize_error(azure, ip, run_cell, batch):
    batch.core_quota = {"dedicated": 0, "lowPriority": None}
    run_cell("%azpar pool create")
    _wait_steady(batch)
    run = run_cell("%azpar pool status")
    shown = run.stdout + run.stderr + "".join(str(o.data) for o in run.outputs)
    assert "last resize: AccountCoreQuotaReached" in shown, shown


def test_a_quota_for_fewer_nodes_than_asked_still_runs_every_iteration(azure, ip, run_cell, batch):
    batch.core_quota = {"dedicated": 2, "lowPriority": 0}   # one Standard_D2s_v3 node of the two
    run = run_cell("%%azpar -q -o got for x in range(6):\nx * 2")
    assert run.success, run.error
    assert ip.user_ns["got"] == [x * 2 for x in range(6)]
    assert _wait_steady(batch) == {"nodes": 1, "errors": ["AccountCoreQuotaReached"]}


def test_the_quota_counts_every_pool_of_the_account(batch, batch_client):
    from .emulator.helpers import pool_options

    batch.core_quota = {"dedicated": 4, "lowPriority": 0}   # two Standard_D2s_v3 nodes in all
    batch_client.create_pool(pool_options("first", dedicated=1))
    assert _wait_steady(batch, "first") == {"nodes": 1, "errors": []}
    batch_client.create_pool(pool_options("second", dedicated=3, low=1))
    assert _wait_steady(batch, "second") == {"nodes": 1,
                                             "errors": ["AccountCoreQuotaReached", "AccountLowPriorityCoreQuotaReached"]}
    got = batch_client.get_pool("second")
    assert [e.code for e in got.resize_errors] == ["AccountCoreQuotaReached", "AccountLowPriorityCoreQuotaReached"]

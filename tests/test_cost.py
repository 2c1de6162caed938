"""The cost meter (jobs/cost.py): node time by priority from successive node lists, task core time, and the
estimate, checked against figures worked out by hand."""

from __future__ import annotations

import pytest

from azpar_magic.jobs.cost import CostEstimate, CostMeter, Price, money, pool_burn
from azpar_magic.jobs.snapshot import NodeInfo


def _nodes(dedicated: int, spot: int, *, preempted: int = 0) -> list[NodeInfo]:
    return (
        [NodeInfo(f"d{i}", "running") for i in range(dedicated)]
        + [NodeInfo(f"s{i}", "idle", dedicated=False) for i in range(spot)]
        + [NodeInfo(f"p{i}", "preempted", dedicated=False) for i in range(preempted)]
    )


def test_node_time_and_cost_match_a_hand_computation():
    """0-600 s: 2 dedicated + 1 spot; 600-1800 s: 2 dedicated + 3 spot (one more preempted, unbilled);
    stopped at 2400 s with 1 dedicated from 1800 s. By hand: dedicated 2*600 + 2*1200 + 1*600 = 4200 s
    = 7/6 h; spot 1*600 + 3*1200 = 4200 s = 7/6 h. At $0.40 and $0.10 per hour: 7/6 * 0.5 = $0.58333."""
    clock = [0.0]
    meter = CostMeter(Price(0.40, 0.10, source="profile"), cores_per_task=2.0, clock=lambda: clock[0])
    meter.observe(_nodes(2, 1), now=0.0)
    meter.observe(_nodes(2, 3, preempted=1), now=600.0)
    meter.observe(_nodes(1, 0), now=1800.0)
    meter.task_ran(900.0)  # one task ran 15 minutes on 2 cores: 0.5 core hour
    meter.task_ran(1800.0)  # another ran 30 minutes: 1 core hour
    clock[0] = 2400.0
    live = meter.estimate()
    assert live.running and (live.nodes_dedicated, live.nodes_spot) == (1, 0)
    assert live.burn_rate == pytest.approx(0.40)
    meter.stop(now=2400.0)
    meter.observe(_nodes(5, 5), now=3000.0)  # after the end: not counted
    done = meter.estimate()
    assert done.node_hours_dedicated == pytest.approx(4200 / 3600)
    assert done.node_hours_spot == pytest.approx(4200 / 3600)
    assert done.task_core_hours == pytest.approx(1.5)
    assert done.amount == pytest.approx(7 / 6 * 0.40 + 7 / 6 * 0.10)
    assert done.burn_rate is None and not done.running
    assert "cost ~$0.58" in done.summary() and "1.17 dedicated, 1.17 spot" in done.summary()


def test_without_a_price_node_hours_are_shown_and_the_cost_says_price_unknown():
    meter = CostMeter(None, clock=lambda: 0.0)
    meter.observe(_nodes(1, 0), now=0.0)
    meter.stop(now=3600.0)
    found = meter.estimate()
    assert found.node_hours == pytest.approx(1.0) and found.amount is None
    assert found.summary() == "node time 1.00 h, task core time 0.00 h, cost price unknown"


def test_a_spot_price_missing_makes_the_amount_unknown_but_a_dedicated_only_job_is_priced():
    price = Price(1.0, None)
    assert CostEstimate(node_hours_dedicated=2.0, price=price).amount == pytest.approx(2.0)
    assert CostEstimate(node_hours_dedicated=2.0, node_hours_spot=0.5, price=price).amount is None


def test_a_local_pool_shows_times_without_any_cost():
    meter = CostMeter(None, billed=False, clock=lambda: 0.0)
    meter.observe(_nodes(2, 0), now=0.0)
    meter.stop(now=1800.0)
    assert meter.estimate().summary() == "node time 1.00 h, task core time 0.00 h"


def test_burn_rate_of_a_pool_with_dedicated_and_spot_nodes():
    nodes = _nodes(3, 4, preempted=2) + [NodeInfo("x", "starting"), NodeInfo("y", "deallocated")]
    assert pool_burn(nodes, Price(0.5, 0.1)) == (4, 4, pytest.approx(4 * 0.5 + 4 * 0.1))
    assert pool_burn(nodes, None) == (4, 4, None)
    assert pool_burn(nodes, Price(0.5, None))[2] is None


def test_the_manifest_record_round_trips():
    estimate = CostEstimate(1.5, 0.25, 3.0, price=Price(0.2, 0.05, source="Azure retail prices", date="2026-12-02"))
    back = CostEstimate.from_record(estimate.as_record())
    assert back.amount == pytest.approx(estimate.amount)
    assert back.price == estimate.price and back.task_core_hours == 3.0


def test_money():
    assert money(1234.5) == "$1,234.50" and money(0.0042) == "$0.0042" and money(2, "EUR") == "2.00 EUR"


def test_views_show_the_cost_only_where_it_is_billed():
    from azpar_magic.jobs.snapshot import JobSnapshot
    from azpar_magic.ui.html import panel_html
    from azpar_magic.ui.state import job_view
    from azpar_magic.ui.text import format_snapshot, format_text

    def snap(cost, state="succeeded", reason=""):
        return JobSnapshot("j1", "azure", "p", "Standard_D2s_v3", state, 2, 2, 0, 0, 2, 0, 0, 2, 0, (), 3.0, None,
                           None, (), cost=cost, stop_reason=reason)

    billed = CostEstimate(0.5, 0.25, 0.1, price=Price(0.4, 0.1))
    line = format_snapshot(snap(billed))
    assert "node time 0.75 h (0.50 dedicated, 0.25 spot), task core time 0.10 h, cost ~$0.23" in line
    assert "cost        node time 0.75 h" in format_text(snap(billed))
    assert 'data-name="cost"' in panel_html(job_view(snap(billed)))
    running = CostEstimate(0.5, 0.0, 0.0, nodes_dedicated=2, price=Price(0.4, 0.1), running=True)
    assert "~$0.20 (0.50 node h), $0.80/h now" in panel_html(job_view(snap(running, "running")))
    assert "cost" not in format_snapshot(snap(running, "running"))  # the one line gives it at the end
    local = CostEstimate(0.5, 0.0, 0.0, billed=False)
    assert "node time" not in format_snapshot(snap(local)) + format_text(snap(local))
    assert "cancelled: over the cap" in format_snapshot(snap(billed, "cancelled", "over the cap"))

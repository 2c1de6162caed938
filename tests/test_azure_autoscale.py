"""The named autoscale formulas, evaluated the way the service evaluates them.

Pure tests run each formula through the test service's formula evaluator with metric series
sampled every 30 s at fixed UTC times; every expected target is worked out by hand in the test.
The two conventions the sources leave open are evaluated both ways: ``weekday`` of Sunday 0 or
7 (the WORKDAY and WEEKEND tests) and ``$CPUPercent`` on a 0-100 or a 0-1 scale (MAX_CPU).
The SDK tests hand each formula to the test Batch service through the real azure-batch client,
as a pool's formula and through evaluate_pool_auto_scale.
"""
from __future__ import annotations

import ast
import datetime as dt
import sys
from pathlib import Path

import pytest

from azpar_magic.backends.azure.autoscale import EVALUATION_INTERVAL_MINUTES, FORMULAS, describe, formula
from tests.batch_emulator.autoscale import Metrics, evaluate

UTC = dt.timezone.utc
MONDAY_10 = dt.datetime(2025, 1, 6, 10, 0, tzinfo=UTC)      # 2025-01-06 is a Monday
MONDAY_22 = dt.datetime(2025, 1, 6, 22, 0, tzinfo=UTC)
MONDAY_0759 = dt.datetime(2025, 1, 6, 7, 59, tzinfo=UTC)
MONDAY_0800 = dt.datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
MONDAY_0000 = dt.datetime(2025, 1, 6, 0, 0, tzinfo=UTC)
FRIDAY_1759 = dt.datetime(2025, 1, 10, 17, 59, tzinfo=UTC)
FRIDAY_1800 = dt.datetime(2025, 1, 10, 18, 0, tzinfo=UTC)
FRIDAY_2359 = dt.datetime(2025, 1, 10, 23, 59, tzinfo=UTC)
SATURDAY_0000 = dt.datetime(2025, 1, 11, 0, 0, tzinfo=UTC)
SATURDAY_10 = dt.datetime(2025, 1, 11, 10, 0, tzinfo=UTC)
SUNDAY_2330 = dt.datetime(2025, 1, 12, 23, 30, tzinfo=UTC)

ALL = ("QUEUE", "QUEUE_AND_RUNNING", "WORKDAY", "WEEKEND", "MAX_CPU")
MODULE = Path(__file__).resolve().parents[1] / "azpar_magic" / "backends" / "azure" / "autoscale.py"


def history(now: dt.datetime, newest: dict, older: dict | None = None, count: int = 20) -> Metrics:
    """``count`` samples 30 s apart ending at ``now``: ``newest`` first, ``older`` for the rest.

    20 samples fill a 10-minute window (100%); 14 are exactly 70%; 13 are 65%."""
    m = Metrics()
    for i in range(count):
        m.add(now - dt.timedelta(seconds=30 * i), **(newest if i == 0 or older is None else older))
    return m


def targets(name: str, *, metrics: Metrics | None = None, now: dt.datetime = MONDAY_22, min_nodes: int = 0,
            max_nodes: int = 10, slots: int = 1, current: tuple[int, int] = (0, 0), sunday: int = 0,
            scale: str = "percent") -> tuple[int, int]:
    """(dedicated, spot) the formula asks for. MONDAY_22 is outside WORKDAY's and WEEKEND's
    warm hours, so by default those two behave like QUEUE. ``sunday`` / ``scale``: the
    evaluator's conventions (CPU samples are given in percent and read / 100 on "fraction")."""
    r = evaluate(formula(name, min_nodes=min_nodes, max_nodes=max_nodes, slots_per_node=slots), now=now,
                 metrics=metrics or Metrics(), target_dedicated=current[0], target_low_priority=current[1],
                 task_slots_per_node=slots, sunday=sunday, cpu_scale=scale)
    assert r.node_deallocation_option == "taskcompletion"
    # The formula's own total is what it asks for: no target went negative and got clamped.
    assert r.variables["$total"] == r.target_dedicated + r.target_low_priority, r.results
    return r.target_dedicated, r.target_low_priority


# ---- sizing by the queue (all five; MAX_CPU sizes by the queue when CPU is low) ------------------

@pytest.mark.parametrize("name", ALL)
def test_empty_queue_shrinks_to_min_nodes(name):
    idle = history(MONDAY_22, dict(ActiveTasks=0, RunningTasks=0, CPUPercent=0))
    assert targets(name, metrics=idle, min_nodes=2, current=(2, 5)) == (2, 0)


@pytest.mark.parametrize("name", ALL)
def test_no_samples_yet_gives_min_nodes_instead_of_an_error(name):
    assert targets(name, metrics=Metrics(), min_nodes=3) == (3, 0)


@pytest.mark.parametrize("name", ALL)
def test_pending_is_active_plus_running_counted_once(name):
    # 7 queued + 2 running = 9 pending; 2 slots per node -> ceil(9 / 2) = 5 nodes.
    # Counting the running tasks twice would give ceil(11 / 2) = 6.
    m = history(MONDAY_22, dict(ActiveTasks=7, RunningTasks=2, CPUPercent=10))
    assert targets(name, metrics=m, slots=2) == (0, 5)


@pytest.mark.parametrize("name", ALL)
def test_pending_beyond_max_is_capped(name):
    # 308 pending / 4 slots = 77 nodes wanted; max 12, of which 1 dedicated.
    m = history(MONDAY_22, dict(ActiveTasks=300, RunningTasks=8, CPUPercent=5))
    assert targets(name, metrics=m, min_nodes=1, max_nodes=12, slots=4) == (1, 11)


@pytest.mark.parametrize("name", ALL)
def test_spot_first_above_the_dedicated_floor(name):
    m = history(MONDAY_22, dict(ActiveTasks=10, RunningTasks=0, CPUPercent=5))
    assert targets(name, metrics=m, min_nodes=3, max_nodes=20) == (3, 7)
    assert targets(name, metrics=m, min_nodes=0, max_nodes=20) == (0, 10)
    assert targets(name, metrics=m, min_nodes=4, max_nodes=4) == (4, 0)


def test_queue_uses_the_latest_sample():
    drained = history(MONDAY_22, dict(ActiveTasks=0, RunningTasks=0), dict(ActiveTasks=6, RunningTasks=4))
    assert targets("QUEUE", metrics=drained, min_nodes=1, slots=2) == (1, 0)
    burst = history(MONDAY_22, dict(ActiveTasks=5, RunningTasks=0), dict(ActiveTasks=0, RunningTasks=0))
    assert targets("QUEUE", metrics=burst, min_nodes=1, slots=2) == (1, 2)     # ceil(5 / 2) = 3


# ---- QUEUE_AND_RUNNING: max(latest, 10-minute average) -----------------------------------------

def test_queue_and_running_keeps_nodes_after_the_queue_drains():
    # Newest sample 0, the 19 before it 10 pending: average 190 / 20 = 9.5 -> ceil(9.5 / 2) = 5.
    drained = history(MONDAY_22, dict(ActiveTasks=0, RunningTasks=0), dict(ActiveTasks=6, RunningTasks=4))
    assert targets("QUEUE_AND_RUNNING", metrics=drained, min_nodes=1, slots=2) == (1, 4)


def test_queue_and_running_follows_a_burst_at_once():
    # Newest 12, the rest 0: average 0.6, latest 12 wins -> 6 nodes.
    burst = history(MONDAY_22, dict(ActiveTasks=12, RunningTasks=0), dict(ActiveTasks=0, RunningTasks=0))
    assert targets("QUEUE_AND_RUNNING", metrics=burst, min_nodes=1, slots=2) == (1, 5)


def test_queue_and_running_falls_back_to_the_latest_sample_below_70_percent():
    newest, older = dict(ActiveTasks=0, RunningTasks=0), dict(ActiveTasks=10, RunningTasks=0)
    # 13 of 20 expected samples (65%): the average is not trusted, the latest (0) is used.
    assert targets("QUEUE_AND_RUNNING", metrics=history(MONDAY_22, newest, older, 13), min_nodes=1, slots=2) == (1, 0)
    # 14 of 20 (70%): average 130 / 14 = 9.29 -> ceil(4.64) = 5 nodes.
    assert targets("QUEUE_AND_RUNNING", metrics=history(MONDAY_22, newest, older, 14), min_nodes=1, slots=2) == (1, 4)
    # A single sample, old history outside the window ignored.
    m = Metrics()
    m.add(MONDAY_22 - dt.timedelta(hours=2), ActiveTasks=50, RunningTasks=0)
    m.add(MONDAY_22, ActiveTasks=3, RunningTasks=0)
    assert targets("QUEUE_AND_RUNNING", metrics=m) == (0, 3)


# ---- WORKDAY and WEEKEND: warm floor of max(min_nodes, ceil(max_nodes / 2)) ---------------------

@pytest.mark.parametrize("now, warm", [
    (MONDAY_10, True), (MONDAY_0800, True), (FRIDAY_1759, True),
    (MONDAY_22, False), (MONDAY_0759, False), (FRIDAY_1800, False), (SATURDAY_10, False), (SUNDAY_2330, False),
])
@pytest.mark.parametrize("sunday", (0, 7))
def test_workday_keeps_half_of_max_warm_in_business_hours(now, warm, sunday):
    idle = history(now, dict(ActiveTasks=0, RunningTasks=0))
    assert targets("WORKDAY", metrics=idle, now=now, min_nodes=1, max_nodes=10,
                   sunday=sunday) == ((1, 4) if warm else (1, 0))


@pytest.mark.parametrize("now, warm", [
    (SATURDAY_10, True), (SATURDAY_0000, True), (SUNDAY_2330, True),
    (MONDAY_10, False), (MONDAY_22, False), (MONDAY_0000, False), (FRIDAY_2359, False),
])
@pytest.mark.parametrize("sunday", (0, 7))
def test_weekend_keeps_half_of_max_warm_on_saturday_and_sunday(now, warm, sunday):
    # SUNDAY_2330 under Sunday = 7 is the case a `weekday == 0 || weekday == 6` formula missed.
    idle = history(now, dict(ActiveTasks=0, RunningTasks=0))
    assert targets("WEEKEND", metrics=idle, now=now, min_nodes=1, max_nodes=10,
                   sunday=sunday) == ((1, 4) if warm else (1, 0))


@pytest.mark.parametrize("name, now", [("WORKDAY", MONDAY_10), ("WEEKEND", SATURDAY_10)])
@pytest.mark.parametrize("sunday", (0, 7))
def test_warm_floor_details(name, now, sunday):
    idle = history(now, dict(ActiveTasks=0, RunningTasks=0))
    at = dict(now=now, sunday=sunday)
    assert targets(name, metrics=idle, min_nodes=1, max_nodes=7, **at) == (1, 3)       # ceil(7 / 2) = 4
    assert targets(name, metrics=idle, min_nodes=6, max_nodes=10, **at) == (6, 0)      # min above the share
    busy = history(now, dict(ActiveTasks=6, RunningTasks=2))
    assert targets(name, metrics=busy, min_nodes=1, max_nodes=10, **at) == (1, 7)      # queue above the floor
    assert targets(name, metrics=busy, min_nodes=1, max_nodes=10, slots=4, **at) == (1, 4)  # floor 5 > 2


@pytest.mark.parametrize("sunday", (0, 7))
def test_every_day_of_a_week_under_either_sunday_numbering(sunday):
    """Saturday 10:00 to Friday 10:00: WEEKEND warm on Saturday and Sunday only, WORKDAY on the
    five weekdays only, whichever number the service gives Sunday."""
    for day in range(7):
        now = SATURDAY_10 + dt.timedelta(days=day)
        idle = history(now, dict(ActiveTasks=0, RunningTasks=0))
        weekend = now.weekday() >= 5
        assert targets("WEEKEND", metrics=idle, now=now, max_nodes=10, sunday=sunday) == ((0, 5) if weekend else (0, 0))
        assert targets("WORKDAY", metrics=idle, now=now, max_nodes=10, sunday=sunday) == ((0, 0) if weekend else (0, 5))


# ---- MAX_CPU ---------------------------------------------------------------------------------------

SCALES = ("percent", "fraction")


def cpu(percent: float, pending: int = 0, older: float | None = None, count: int = 20) -> Metrics:
    return history(MONDAY_10, dict(CPUPercent=percent, ActiveTasks=pending, RunningTasks=0),
                   None if older is None else dict(CPUPercent=older, ActiveTasks=pending, RunningTasks=0), count)


@pytest.mark.parametrize("current, expected", [
    ((2, 8), (2, 9)),      # 10 nodes + max(1, ceil(1.0)) = 11
    ((2, 23), (2, 26)),    # 25 + ceil(2.5) = 28
    ((2, 27), (2, 28)),    # 29 + 3 = 32, capped at max 30
    ((0, 0), (2, 0)),      # 0 + at least 1, then raised to min 2
])
@pytest.mark.parametrize("scale", SCALES)
def test_max_cpu_grows_by_ten_percent_above_70(current, expected, scale):
    # One task queued: on a 0-1 series growth also needs queued work (see the next tests).
    assert targets("MAX_CPU", metrics=cpu(90, pending=1), now=MONDAY_10, min_nodes=2, max_nodes=30, current=current,
                   scale=scale) == expected


@pytest.mark.parametrize("scale", SCALES)
def test_max_cpu_grows_by_at_least_one_node(scale):
    assert targets("MAX_CPU", metrics=cpu(90, pending=1), now=MONDAY_10, current=(0, 0), scale=scale) == (0, 1)
    assert targets("MAX_CPU", metrics=cpu(90, pending=1), now=MONDAY_10, current=(0, 4), scale=scale) == (0, 5)


def test_max_cpu_on_the_percent_scale_grows_without_a_queue():
    assert targets("MAX_CPU", metrics=cpu(90), now=MONDAY_10, current=(0, 4)) == (0, 5)


@pytest.mark.parametrize("scale", SCALES)
def test_max_cpu_shrinks_to_the_queue_below_20(scale):
    assert targets("MAX_CPU", metrics=cpu(10, pending=3), now=MONDAY_10, min_nodes=2, max_nodes=30,
                   current=(2, 8), scale=scale) == (2, 1)
    assert targets("MAX_CPU", metrics=cpu(10, pending=0), now=MONDAY_10, min_nodes=2, max_nodes=30,
                   current=(2, 8), scale=scale) == (2, 0)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("percent", [20, 50, 70])
def test_max_cpu_keeps_its_size_between_20_and_70(percent, scale):
    # Pending 100 would grow a queue-sized pool; MAX_CPU keeps 10. With nothing queued a 0-1
    # series is ambiguous (it may be a pool under 1 % CPU on the 0-100 scale): it shrinks to the
    # queue's need instead, the one behaviour that differs between the scales.
    for pending in (0, 100):
        kept = scale == "percent" or pending > 0
        assert targets("MAX_CPU", metrics=cpu(percent, pending=pending), now=MONDAY_10, min_nodes=2, max_nodes=30,
                       current=(2, 8), scale=scale) == ((2, 8) if kept else (2, 0))


def test_max_cpu_reads_a_busy_fraction_series_as_busy():
    """On the 0-1 scale 90 % arrives as 0.9: a formula comparing it with 70 / 20 would shrink a
    busy pool with a queue to the queue's need every time, and never grow it."""
    assert targets("MAX_CPU", metrics=cpu(90, pending=40), now=MONDAY_10, min_nodes=2, max_nodes=30,
                   current=(2, 8), scale="fraction") == (2, 9)


def test_max_cpu_never_grows_an_idle_pool_whose_percent_series_stays_under_one():
    # 0.9 % CPU on the 0-100 scale looks like 90 % on the 0-1 scale: nothing is queued, so no growth.
    assert targets("MAX_CPU", metrics=cpu(0.9, pending=0), now=MONDAY_10, min_nodes=1, max_nodes=30,
                   current=(1, 5)) == (1, 0)


def test_max_cpu_keep_is_still_bounded():
    assert targets("MAX_CPU", metrics=cpu(50), now=MONDAY_10, min_nodes=2, max_nodes=30, current=(2, 38)) == (2, 28)
    assert targets("MAX_CPU", metrics=cpu(50), now=MONDAY_10, min_nodes=3, max_nodes=30, current=(0, 1)) == (3, 0)


def test_max_cpu_uses_the_ten_minute_average_not_the_latest():
    # Newest 95%, the 19 before 40%: average 42.75% -> keep.
    assert targets("MAX_CPU", metrics=cpu(95, older=40), now=MONDAY_10, min_nodes=2, max_nodes=30,
                   current=(2, 8)) == (2, 8)


def test_max_cpu_falls_back_to_the_latest_sample_below_70_percent():
    # 3 samples (15%): newest 90% is used, although their average (36.7%) would keep the size.
    assert targets("MAX_CPU", metrics=cpu(90, older=10, count=3), now=MONDAY_10, min_nodes=2, max_nodes=30,
                   current=(2, 8)) == (2, 9)


def test_max_cpu_without_cpu_samples_sizes_by_the_queue():
    m = Metrics()
    m.add(MONDAY_10, ActiveTasks=4, RunningTasks=0)
    assert targets("MAX_CPU", metrics=m, now=MONDAY_10, current=(0, 0)) == (0, 4)


# ---- the public surface ----------------------------------------------------------------------------

def test_names_interval_and_descriptions():
    assert FORMULAS == ALL
    assert EVALUATION_INTERVAL_MINUTES == 5
    lines = [describe(name) for name in ALL]
    assert all(line and "\n" not in line and line.startswith(name + ":") for name, line in zip(ALL, lines))
    assert len(set(lines)) == len(ALL)
    assert describe("weekend").startswith("WEEKEND:")


def test_names_are_case_insensitive():
    assert formula("queue", min_nodes=1, max_nodes=3) == formula("QUEUE", min_nodes=1, max_nodes=3)
    assert formula("Max_Cpu", min_nodes=0, max_nodes=2) == formula("MAX_CPU", min_nodes=0, max_nodes=2)


@pytest.mark.parametrize("name", ALL)
def test_formula_text_within_service_limits(name):
    text = formula(name, min_nodes=100, max_nodes=1000, slots_per_node=256)
    assert len(text.encode()) < 8 * 1024 and text.count(";") < 100      # 8 KB, 100 statements
    assert "$RunningTasks" not in text                                    # never added to $PendingTasks


@pytest.mark.parametrize("bad", ["QUEUES", "", "queue and running", None])
def test_unknown_name_lists_the_known_ones(bad):
    with pytest.raises(ValueError) as e:
        formula(bad, min_nodes=0, max_nodes=1)
    message = str(e.value)
    assert all(name in message for name in ALL) and message.endswith(".") and ". " not in message
    with pytest.raises(ValueError):
        describe(bad)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(min_nodes=5, max_nodes=2), ValueError, ["min_nodes", "max_nodes"]),
    (dict(min_nodes=-1, max_nodes=2), ValueError, ["negative"]),
    (dict(min_nodes=0, max_nodes=-3), ValueError, ["negative"]),
    (dict(min_nodes=0, max_nodes=2, slots_per_node=0), ValueError, ["slots_per_node"]),
    (dict(min_nodes=0, max_nodes=2, slots_per_node=257), ValueError, ["slots_per_node"]),
    (dict(min_nodes=True, max_nodes=2), TypeError, ["min_nodes"]),
    (dict(min_nodes=0, max_nodes=2.5), TypeError, ["max_nodes"]),
])
def test_invalid_sizes(kwargs, error, words):
    with pytest.raises(error) as e:
        formula("QUEUE", **kwargs)
    assert all(w in str(e.value) for w in words)


def test_module_imports_only_the_standard_library():
    tree = ast.parse(MODULE.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert roots and roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


# ---- accepted by the service through the real SDK ---------------------------------------------

def _results(run) -> dict[str, str]:
    assert run.error is None, run.error
    return dict(item.split("=", 1) for item in run.results.split(";"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ALL)
def test_accepted_by_the_service(name, batch_client, batch):
    from azure.batch import models

    from tests.emulator.helpers import vm_config

    pool_id = "autoscale-" + name.lower().replace("_", "-")
    text = formula(name, min_nodes=1, max_nodes=8, slots_per_node=2)
    batch_client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(), task_slots_per_node=2,
        enable_auto_scale=True, auto_scale_formula=text,
        auto_scale_evaluation_interval=f"PT{EVALUATION_INTERVAL_MINUTES}M"))
    run = batch_client.get_pool(pool_id).auto_scale_run
    first = _results(run)
    # A new pool has no samples: min_nodes, plus the warm floor max(1, ceil(8 / 2)) = 4 when in hours.
    at = run.timestamp.astimezone(UTC)
    warm = {"WORKDAY": at.weekday() < 5 and 8 <= at.hour < 18, "WEEKEND": at.weekday() >= 5}.get(name, False)
    assert (first["$TargetDedicatedNodes"], first["$TargetLowPriorityNodes"]) == ("1", "3" if warm else "0")
    assert first["$NodeDeallocationOption"] == "taskcompletion"

    # Ten minutes of 7 queued + 2 running at 10% CPU: ceil(9 / 2) = 5 nodes for every formula
    # (above WORKDAY's and WEEKEND's warm floor of 4; MAX_CPU sizes by the queue at low CPU).
    now = dt.datetime.now(UTC)
    for i in range(20):
        batch.add_metric_sample(pool_id, now - dt.timedelta(seconds=30 * i), ActiveTasks=7, RunningTasks=2,
                                CPUPercent=10)
    second = _results(batch_client.evaluate_pool_auto_scale(
        pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=text)))
    assert (second["$TargetDedicatedNodes"], second["$TargetLowPriorityNodes"]) == ("1", "4")


@pytest.mark.timeout(60)
def test_the_service_evaluates_under_either_convention(batch_client, batch):
    """The service's own switches (svc.weekday_sunday, svc.cpu_percent_scale) reach the
    evaluation of a pool's formula: WEEKEND keeps its warm floor on a Sunday numbered 7, and
    MAX_CPU grows a busy pool whose CPU arrives as a fraction."""
    from azure.batch import models

    from tests.emulator.helpers import vm_config

    for name in ("WEEKEND", "MAX_CPU"):
        batch_client.create_pool(models.BatchPoolCreateOptions(
            id=name.lower().replace("_", "-"), vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(),
            enable_auto_scale=True, auto_scale_formula=formula(name, min_nodes=0, max_nodes=10),
            auto_scale_evaluation_interval=f"PT{EVALUATION_INTERVAL_MINUTES}M"))
    batch.weekday_sunday = 7
    with batch.cond:
        weekend = batch.pools["weekend"]
        run, result = batch.evaluate_formula(weekend, weekend.autoscale_formula, now=SUNDAY_2330)
    assert result is not None and (result.target_dedicated, result.target_low_priority) == (0, 5), run
    assert "$curTime=" in run["results"]

    batch.cpu_percent_scale = "fraction"
    now = dt.datetime.now(UTC)
    for i in range(20):
        batch.add_metric_sample("max-cpu", now - dt.timedelta(seconds=30 * i), ActiveTasks=6, RunningTasks=4,
                                CPUPercent=90)
    with batch.cond:
        pool = batch.pools["max-cpu"]
        pool.target_low_priority = 4
    grown = _results(batch_client.evaluate_pool_auto_scale(
        "max-cpu", models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=pool.autoscale_formula)))
    assert grown["$cpu"] == "90" and grown["$TargetLowPriorityNodes"] == "5", grown

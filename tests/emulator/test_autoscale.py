"""The autoscale evaluator on its own, and autoscale through the SDK with a test-driven tick."""
from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from tests.batch_emulator.autoscale import AutoScaleError, FormulaSyntaxError, Metrics, evaluate

from .helpers import new_job, task, vm_config, wait_until

pytestmark = pytest.mark.timeout(60)
MONDAY_10 = dt.datetime(2025, 1, 6, 10, 0, tzinfo=dt.timezone.utc)
SATURDAY_10 = dt.datetime(2025, 1, 4, 10, 0, tzinfo=dt.timezone.utc)

QUEUE_FORMULA = """
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5);
$tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 5)));
$spot = min(4, $tasks);
$TargetLowPriorityNodes = $spot;
$TargetDedicatedNodes = min(10, max(0, $tasks - $spot));
$NodeDeallocationOption = taskcompletion;
"""


def _metrics(now, n, **values):
    m = Metrics()
    for i in range(n):
        m.add(now - dt.timedelta(seconds=30 * i), **values)
    return m


def test_queue_formula_spot_first_then_dedicated():
    r = evaluate(QUEUE_FORMULA, now=MONDAY_10, metrics=_metrics(MONDAY_10, 10, ActiveTasks=7, RunningTasks=2))
    assert (r.target_low_priority, r.target_dedicated) == (4, 5)
    assert r.node_deallocation_option == "taskcompletion"
    assert r.results.startswith("$TargetDedicatedNodes=5;$TargetLowPriorityNodes=4;"
                                "$NodeDeallocationOption=taskcompletion;$samples=100;$tasks=9")


def test_sparse_samples_and_errors():
    r = evaluate(QUEUE_FORMULA, now=MONDAY_10, metrics=_metrics(MONDAY_10, 2, ActiveTasks=1, RunningTasks=0))
    assert r.variables["$samples"] == 20 and (r.target_low_priority, r.target_dedicated) == (1, 0)
    with pytest.raises(AutoScaleError) as e:
        evaluate("$TargetDedicatedNodes = $ActiveTasks.GetSample(1);", now=MONDAY_10, metrics=Metrics())
    assert e.value.code == "InsufficientSampleData"
    with pytest.raises(AutoScaleError):
        evaluate("$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 90));",
                 now=MONDAY_10, metrics=_metrics(MONDAY_10, 3, CPUPercent=50))
    with pytest.raises(FormulaSyntaxError):
        evaluate("$TargetDedicatedNodes = (1 + ;", now=MONDAY_10)


def test_time_weekday_and_cpu():
    f = """$now = time(); $workhours = $now.hour >= 8 && $now.hour < 18;
$weekday = $now.weekday >= 1 && $now.weekday <= 5;
$cpu = avg($CPUPercent.GetSample(TimeInterval_Minute * 5));
$TargetDedicatedNodes = ($workhours && $weekday) ? ($cpu > 70 ? 6 : 3) : 1;"""
    hot = _metrics(MONDAY_10, 10, CPUPercent=90)
    assert evaluate(f, now=MONDAY_10, metrics=hot).target_dedicated == 6
    assert evaluate(f, now=MONDAY_10, metrics=_metrics(MONDAY_10, 10, CPUPercent=10)).target_dedicated == 3
    assert evaluate(f, now=SATURDAY_10, metrics=_metrics(SATURDAY_10, 10, CPUPercent=90)).target_dedicated == 1
    r = evaluate("$TargetDedicatedNodes = $CurrentDedicatedNodes + 1; $x = -2 * 3 + 10 / 4;",
                 current_dedicated=2, now=MONDAY_10)
    assert r.target_dedicated == 3 and r.variables["$x"] == -3.5


def test_autoscale_through_the_sdk(batch_client, batch):
    formula = "$TargetDedicatedNodes = min(3, $PendingTasks.GetSample(1)); $NodeDeallocationOption = requeue;"
    batch_client.create_pool(models.BatchPoolCreateOptions(
        id="auto", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(), enable_auto_scale=True,
        auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval="PT5M"))
    pool = batch_client.get_pool("auto")
    assert pool.enable_auto_scale and pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=0")
    run = batch_client.evaluate_pool_auto_scale("auto", models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 2; $x = 5;"))
    assert run.results == "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;$x=5"
    run = batch_client.evaluate_pool_auto_scale("auto", models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = $ActiveTasks.GetSample(1);"))
    assert run.error is not None and run.results is None
    with pytest.raises(HttpResponseError) as e:
        batch_client.evaluate_pool_auto_scale("auto", models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = ;"))
    assert e.value.error.code == "AutoScalingFormulaSyntaxError"
    batch_client.enable_pool_auto_scale("auto", models.BatchPoolEnableAutoScaleOptions(auto_scale_formula=formula))
    new_job(batch_client, "job1", "auto")
    batch_client.create_task_collection("job1", models.BatchTaskGroup(task_values=[
        task(str(i), "/bin/true") for i in range(5)]))
    assert batch_client.get_pool("auto").target_dedicated_nodes == 0   # nothing happens until a tick
    runs = batch.autoscale_tick()
    assert runs["auto"]["results"].startswith("$TargetDedicatedNodes=3")
    wait_until(lambda: batch_client.get_job_task_counts("job1").task_counts.completed == 5, 20)
    assert batch_client.get_pool("auto").current_dedicated_nodes == 3
    batch.autoscale_tick(now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5))
    wait_until(lambda: batch_client.get_pool("auto").current_dedicated_nodes == 0, 10)
    with pytest.raises(HttpResponseError) as e:   # manual resize is refused while autoscale is on
        batch_client.begin_resize_pool("auto", models.BatchPoolResizeOptions(target_dedicated_nodes=1))
    assert e.value.status_code == 409
    batch_client.disable_pool_auto_scale("auto")
    assert batch_client.get_pool("auto").enable_auto_scale is False

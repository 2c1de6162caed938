"""Pools that cost nothing when idle: a profile's ``idle_timeout`` (issue 19).

Pure tests evaluate the idle rule of every formula (and of the fixed-size formula) with the test
service's evaluator, samples 30 s apart as the service records them; each expected target is
worked out in the test. Service tests let the test service's autoscale schedule run on an
accelerated clock (``autoscale_advance``: samples every 30 s, visible a minute later, an
evaluation every 5 minutes) so a pool shrinks to zero without waiting, then grows again for the
next cell; ``%azpar pool status`` says when it will shrink. A pool azpar did not create never
gets the rule.
"""

from __future__ import annotations

import datetime as dt

import pytest

from azpar_magic import config
from azpar_magic.backends.azure import autoscale, pool
from azpar_magic.backends.azure.autoscale import fixed_formula, formula, idle_minutes
from tests.azure_support import wait_until
from tests.batch_emulator.autoscale import AutoScaleError, Metrics, evaluate

UTC = dt.timezone.utc
MONDAY_10 = dt.datetime(2025, 1, 6, 10, 0, tzinfo=UTC)  # WORKDAY's warm hours
MONDAY_22 = dt.datetime(2025, 1, 6, 22, 0, tzinfo=UTC)
ALL = ("QUEUE", "QUEUE_AND_RUNNING", "WORKDAY", "WEEKEND", "MAX_CPU")
POOL = "azpar-idle"


def samples(now: dt.datetime, pending: list[int]) -> Metrics:
    """One sample per 30 s ending at ``now``: ``pending[0]`` the newest. 20 samples fill 10 minutes."""
    m = Metrics()
    for i, value in enumerate(pending):
        m.add(now - dt.timedelta(seconds=30 * i), ActiveTasks=value, RunningTasks=0, CPUPercent=5)
    return m


def targets(text: str, metrics: Metrics, now: dt.datetime = MONDAY_22) -> tuple[int, int]:
    r = evaluate(text, now=now, metrics=metrics)
    assert r.node_deallocation_option == "taskcompletion"
    return r.target_dedicated, r.target_low_priority


# ---- the idle rule in each formula ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_a_whole_idle_window_goes_to_zero_below_min_nodes(name):
    text = formula(name, min_nodes=2, max_nodes=10, idle_minutes=10)
    assert targets(text, samples(MONDAY_22, [0] * 20)) == (0, 0)
    # Without the rule the same history keeps min_nodes.
    assert targets(formula(name, min_nodes=2, max_nodes=10), samples(MONDAY_22, [0] * 20)) == (2, 0)


def test_idle_beats_workday_warm_floor():
    # Monday 10:00 is in WORKDAY's hours: half of max warm (1 + 4) unless the pool is idle.
    text = formula("WORKDAY", min_nodes=1, max_nodes=10, idle_minutes=10)
    assert targets(text, samples(MONDAY_10, [0] * 20), MONDAY_10) == (0, 0)
    assert targets(text, samples(MONDAY_10, [0] * 19 + [1]), MONDAY_10) == (1, 4)


@pytest.mark.parametrize("name", ALL)
def test_one_pending_sample_in_the_window_keeps_the_formula_targets(name):
    text = formula(name, min_nodes=2, max_nodes=10, idle_minutes=10)
    # The oldest sample of the window (9.5 minutes ago) had one task: not idle; the queue is
    # empty now, so every formula asks for min_nodes.
    assert targets(text, samples(MONDAY_22, [0] * 19 + [1])) == (2, 0)


@pytest.mark.parametrize("name", ALL)
def test_work_before_the_window_does_not_count(name):
    text = formula(name, min_nodes=1, max_nodes=10, idle_minutes=10)
    # 20 idle samples in the last 10 minutes, a busy hour before them.
    assert targets(text, samples(MONDAY_22, [0] * 20 + [8] * 120)) == (0, 0)


@pytest.mark.parametrize("name", ALL)
def test_too_few_samples_is_not_idle(name):
    text = formula(name, min_nodes=1, max_nodes=10, idle_minutes=10)
    # 13 of 20 samples (65 %): not enough to call the pool idle; 14 (70 %): enough.
    assert targets(text, samples(MONDAY_22, [0] * 13)) == (1, 0)
    assert targets(text, samples(MONDAY_22, [0] * 14)) == (0, 0)
    # No sample at all (a new pool): the formula's targets, and no InsufficientSampleData.
    assert targets(text, Metrics()) == (1, 0)


def test_busy_queue_is_served_as_without_the_rule():
    m = samples(MONDAY_22, [9] + [0] * 19)
    for name in ("QUEUE", "QUEUE_AND_RUNNING", "WEEKEND"):
        assert targets(formula(name, min_nodes=1, max_nodes=10, slots_per_node=2, idle_minutes=10), m) == (1, 4)


def test_without_idle_minutes_the_formula_text_is_unchanged():
    for name in ALL:
        plain = formula(name, min_nodes=1, max_nodes=4)
        assert formula(name, min_nodes=1, max_nodes=4, idle_minutes=0) == plain
        assert autoscale.IDLE_MARK not in plain and idle_minutes(plain) == 0


@pytest.mark.parametrize("name", ALL)
def test_rule_text_within_service_limits_and_read_back(name):
    text = formula(name, min_nodes=100, max_nodes=1000, slots_per_node=256, idle_minutes=autoscale.MAX_IDLE_MINUTES)
    assert len(text.encode()) < 8 * 1024 and text.count(";") < 100  # the article: 8 KB, 100 statements
    assert idle_minutes(text) == autoscale.MAX_IDLE_MINUTES


@pytest.mark.parametrize("bad, error", [(4, ValueError), (-1, ValueError), (10081, ValueError), (True, TypeError),
                                        (7.5, TypeError)])
def test_invalid_idle_minutes(bad, error):
    with pytest.raises(error):
        formula("QUEUE", min_nodes=0, max_nodes=2, idle_minutes=bad)


# ---- fixed-size pools ------------------------------------------------------------------------------


def test_fixed_formula_keeps_its_size_until_idle():
    text = fixed_formula(dedicated=2, spot=3, idle_minutes=10)
    assert idle_minutes(text) == 10
    assert targets(text, Metrics()) == (2, 3)  # created: the fixed size at once
    assert targets(text, samples(MONDAY_22, [0] * 5 + [4] + [0] * 14)) == (2, 3)  # busy 2.5 min ago
    assert targets(text, samples(MONDAY_22, [0] * 20)) == (0, 0)
    with pytest.raises(ValueError):
        fixed_formula(dedicated=2, spot=0, idle_minutes=0)
    with pytest.raises(ValueError):
        fixed_formula(dedicated=-1, spot=0, idle_minutes=10)


def test_a_formula_that_reads_a_short_window_without_the_guard_fails():
    """Why the rule asks GetSamplePercent first: GetSample with a required percentage fails the
    whole evaluation when too few samples exist (the autoscale article), leaving an idle pool
    at its size."""
    bare = "$TargetDedicatedNodes = max($PendingTasks.GetSample(TimeInterval_Minute * 10, 70)) == 0 ? 0 : 2;"
    with pytest.raises(AutoScaleError) as e:
        evaluate(bare, now=MONDAY_22, metrics=samples(MONDAY_22, [0] * 5))
    assert e.value.code == "InsufficientSampleData"


def test_pool_definition_turns_a_fixed_profile_with_idle_timeout_into_autoscale():
    base = {f: spec.default for f, spec in config.PROFILE_FIELDS.items()}
    fixed = config.Profile("p", {**base, "dedicated_nodes": 1, "spot_nodes": 2, "idle_timeout": 15}, {})
    body = pool.pool_definition(fixed)
    assert body.enable_auto_scale and idle_minutes(body.auto_scale_formula) == 15
    assert body.target_dedicated_nodes is None and body.target_low_priority_nodes is None
    named = config.Profile("p", {**base, "autoscale": "QUEUE", "idle_timeout": 15}, {})
    assert idle_minutes(pool.pool_definition(named).auto_scale_formula) == 15
    plain = config.Profile("p", {**base, "dedicated_nodes": 1}, {})
    assert not pool.pool_definition(plain).enable_auto_scale  # no idle_timeout: as before


@pytest.mark.parametrize("field, value", [("idle_timeout", 3), ("idle_timeout", 20000), ("spot_wait", 0),
                                          ("dedicated_fallback", -1)])
def test_profile_validation(field, value):
    assert field in config.validate_profile({"batch_account_url": "https://a.westeurope.batch.azure.com",
                                             "storage_account_url": "https://a.blob.core.windows.net", field: value})


def test_shrink_time_is_the_first_evaluation_after_the_timeout():
    run = dt.datetime(2025, 1, 6, 10, 2, tzinfo=UTC)
    since = dt.datetime(2025, 1, 6, 10, 4, tzinfo=UTC)
    # idle from 10:04, 10 minutes -> 10:14; evaluations at 10:02 + 5k: 10:17.
    assert pool.shrink_time(since, 10, run, 300) == dt.datetime(2025, 1, 6, 10, 17, tzinfo=UTC)
    assert pool.shrink_time(since, 13, run, 300) == dt.datetime(2025, 1, 6, 10, 17, tzinfo=UTC)
    assert pool.shrink_time(since, 10, None, 300) == dt.datetime(2025, 1, 6, 10, 14, tzinfo=UTC)
    # Due before the last run (samples lagged): the next evaluation.
    assert pool.shrink_time(since, 10, since + dt.timedelta(minutes=20), 300) == since + dt.timedelta(minutes=25)


# ---- on the test service -----------------------------------------------------------------------------




def _results(run: dict) -> dict[str, str]:
    assert "error" not in run, run
    return dict(item.split("=", 1) for item in run["results"].split(";"))


@pytest.mark.timeout(90)
def test_the_service_shrinks_an_idle_pool_after_the_timeout_on_its_own_schedule(batch_client, batch):
    """Created through the SDK with the fixed formula: 2 nodes at once; the service's own
    schedule (accelerated) samples a task-free pool from its start on; at +5 min the samples
    taken at 0 .. 4 min are visible (a minute's lag), 9 of the window's 20, so the pool keeps its
    size; at +10 min those taken at 0.5 .. 9 min fall in the window, 18 of 20, all 0, and the
    targets go to 0."""
    from azure.batch import models

    from tests.emulator.helpers import vm_config

    text = fixed_formula(dedicated=2, spot=0, idle_minutes=10)
    batch_client.create_pool(models.BatchPoolCreateOptions(
        id="idle-fixed", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(),
        enable_auto_scale=True, auto_scale_formula=text, auto_scale_evaluation_interval="PT5M"))
    wait_until(lambda: batch_client.get_pool("idle-fixed").current_dedicated_nodes == 2, 20, "2 nodes")
    runs = batch.autoscale_advance(11)
    assert [r[0] for r in runs] == ["idle-fixed", "idle-fixed"]
    first, second = (_results(r) for _, r in runs)
    assert (first["$idleSamples"], first["$idle"], first["$TargetDedicatedNodes"]) == ("45", "0", "2")
    assert (second["$idleSamples"], second["$idle"], second["$TargetDedicatedNodes"]) == ("90", "1", "0")
    wait_until(lambda: batch_client.get_pool("idle-fixed").current_dedicated_nodes == 0, 20, "the pool to empty")
    # The same formula through evaluate_pool_auto_scale, at the service's present (no samples yet
    # visible there: the accelerated ones lie ahead of it): not idle, the fixed size.
    run = batch_client.evaluate_pool_auto_scale(
        "idle-fixed", models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=text))
    assert run.error is None and "$TargetDedicatedNodes=2" in run.results and "$idle=0" in run.results


@pytest.mark.timeout(90)
def test_a_task_in_the_window_keeps_the_pool(batch_client, batch):
    from azure.batch import models

    from tests.emulator.helpers import new_job, task, vm_config

    text = formula("QUEUE", min_nodes=1, max_nodes=3, idle_minutes=5)
    batch_client.create_pool(models.BatchPoolCreateOptions(
        id="idle-busy", vm_size="Standard_D2s_v3", virtual_machine_configuration=vm_config(),
        enable_auto_scale=True, auto_scale_formula=text, auto_scale_evaluation_interval="PT5M"))
    new_job(batch_client, "long", "idle-busy")
    batch_client.create_task_collection("long", models.BatchTaskGroup(task_values=[task("1", "sleep 30")]))
    wait_until(lambda: batch.pools["idle-busy"].nodes and any(n.running for n in batch.pools["idle-busy"].nodes.values()),
          30, "the task to run")
    runs = batch.autoscale_advance(16)
    assert all(_results(r)["$idle"] == "0" for _, r in runs) and len(runs) == 3
    assert batch_client.get_pool("idle-busy").target_dedicated_nodes == 1


@pytest.mark.timeout(240)
def test_an_idle_azpar_pool_shrinks_to_zero_says_when_and_grows_for_the_next_cell(batch, azurite, ip, run_cell,
                                                                                  tmp_path, monkeypatch):
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, dedicated_nodes=1, spot_nodes=0,
                       idle_timeout=10):
        first = run_cell("%%azpar -q -o out for x in range(3):\nx * 2")
        assert first.success, first.error
        assert ip.user_ns["out"] == [0, 2, 4]
        body = batch.requests_for("Pools_CreatePool")[0].body
        assert body["enableAutoScale"] and idle_minutes(body["autoScaleFormula"]) == 10
        assert "targetDedicatedNodes" not in body
        wait_until(lambda: all(n.state == "idle" for n in batch.pools[POOL].nodes.values()), 30, "idle nodes")

        status = run_cell("%azpar pool status")
        assert status.success, status.error
        with batch.cond:
            p = batch.pools[POOL]
            since = max(n.state_time for n in p.nodes.values())
            last = dt.datetime.fromisoformat(p.autoscale_run["timestamp"].replace("Z", "+00:00"))
        due = pool.shrink_time(since, 10, last, 300)
        hm = lambda when: when.astimezone().strftime("%H:%M")  # noqa: E731
        assert f"idle since {hm(since)}, shrinks to 0 at about {hm(due)}" in status.stdout, status.stdout

        # No kernel involvement from here: the service's schedule alone takes the pool to 0.
        runs = batch.autoscale_advance(16)
        assert any(_results(r)["$idle"] == "1" for _, r in runs), runs
        wait_until(lambda: not batch.pools[POOL].nodes, 30, "the pool to shrink to zero")
        assert "at 0 nodes after 10 idle minutes" in run_cell("%azpar pool status").stdout

        # The next cell finds no node and asks for the fixed size at once, then turns the
        # idle formula back on.
        enables = len(batch.requests_for("Pools_EnablePoolAutoScale"))
        second = run_cell("%%azpar -q -o again for x in range(2):\nx + 1")
        assert second.success, second.error
        assert ip.user_ns["again"] == [1, 2]
        resize = batch.requests_for("Pools_ResizePool")[-1].body
        assert (resize["targetDedicatedNodes"], resize["targetLowPriorityNodes"]) == (1, 0)
        wait_until(lambda: len(batch.requests_for("Pools_EnablePoolAutoScale")) > enables, 20, "autoscale back on")
        restored = batch.requests_for("Pools_EnablePoolAutoScale")[-1].body
        assert idle_minutes(restored["autoScaleFormula"]) == 10
        assert batch.pools[POOL].target_dedicated == 1  # busy a moment ago: the fixed size


@pytest.mark.timeout(120)
def test_a_pool_azpar_did_not_create_never_gets_the_idle_rule(batch, batch_client, azurite, ip, run_cell, tmp_path,
                                                               monkeypatch):
    """An autoscale pool without azpar's metadata (an administrator's), empty: a run with a
    profile asking for idle_timeout resizes it as before and turns the profile's named formula
    back on, without the idle rule; attaching to it changes nothing."""
    from azure.batch import models

    from tests.azure_support import azure_profile, close_azure_engines

    monkeypatch.chdir(tmp_path)
    fields = dict(pool_id="admins", autoscale="QUEUE", min_nodes=0, max_nodes=2)
    with azure_profile(tmp_path / "config", batch, azurite, **fields):
        assert run_cell("%azpar pool create").success  # made with this profile's start task, then ...
        close_azure_engines()
    batch_client.update_pool("admins", models.BatchPoolUpdateOptions(metadata=[]))  # ... handed over
    plain = batch.pools["admins"].autoscale_formula
    with azure_profile(tmp_path / "config2", batch, azurite, idle_timeout=10, **fields):
        run = run_cell("%%azpar -q -o got for x in range(2):\nx")
        assert run.success, run.error
        wait_until(lambda: batch.requests_for("Pools_EnablePoolAutoScale"), 20, "autoscale back on")
        restored = [r.body["autoScaleFormula"] for r in batch.requests_for("Pools_EnablePoolAutoScale")]
        assert restored == [plain] and idle_minutes(plain) == 0
        assert "shrinks" not in run_cell("%azpar pool status").stdout


@pytest.mark.timeout(120)
def test_a_new_idle_timeout_reaches_the_pool_azpar_created(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    from tests.azure_support import azure_profile, close_azure_engines

    monkeypatch.chdir(tmp_path)
    fields = dict(pool_id=POOL, autoscale="QUEUE", min_nodes=1, max_nodes=2)
    with azure_profile(tmp_path / "config", batch, azurite, idle_timeout=10, **fields):
        assert run_cell("%azpar pool create").success
        assert idle_minutes(batch.pools[POOL].autoscale_formula) == 10
        close_azure_engines()
    wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the pool to be steady")
    with azure_profile(tmp_path / "config2", batch, azurite, idle_timeout=30, **fields):
        status = run_cell("%azpar pool create")
        assert status.success and "already exists" in status.stdout, status.error
        assert idle_minutes(batch.pools[POOL].autoscale_formula) == 30
        out = run_cell("%azpar pool status").stdout
        assert "after 30 idle minutes" in out or "after 30 minutes without tasks" in out, out


@pytest.mark.timeout(120)
def test_doctor_evaluates_the_formula_the_pool_runs_idle_rule_included(batch, azurite, tmp_path, monkeypatch):
    from azpar_magic import doctor, session
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, autoscale="QUEUE", min_nodes=0,
                       max_nodes=2, idle_timeout=15) as name:
        session.pool_action(name, "create")
        report = doctor.diagnose(name)
        row = next(c for c in report.checks if c.key == "autoscale")
        assert row.status == "ok", report.text()
        sent = batch.requests_for("Pools_EvaluatePoolAutoScale")[-1].body["autoScaleFormula"]
        assert sent == batch.pools[POOL].autoscale_formula and idle_minutes(sent) == 15


@pytest.mark.timeout(120)
def test_the_formula_comes_back_even_while_the_pool_is_still_resizing(batch, azurite, tmp_path, monkeypatch):
    """A run's resize still under way when the run ends: the service refuses to enable autoscale
    during a resize (REST spec, EnablePoolAutoScale), so the resize is stopped first; otherwise
    the pool would keep its nodes with no formula, and no idle rule, for good."""
    from azpar_magic import session
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, dedicated_nodes=1, spot_nodes=0,
                       idle_timeout=10) as name:
        session.pool_action(name, "create")
        wait_until(lambda: batch.pools[POOL].allocation_state == "steady", 20, "the pool to be steady")
        backend = session._azure_backend(name)
        monkeypatch.setattr(batch, "resize_delay", 60.0)
        pool.resize(backend.client, POOL, 2, 0)  # autoscale off, resizing for a minute
        assert batch.pools[POOL].allocation_state == "resizing" and not batch.pools[POOL].enable_autoscale
        assert pool.restore_autoscale(backend.client, backend.profile)
        assert batch.pools[POOL].enable_autoscale and idle_minutes(batch.pools[POOL].autoscale_formula) == 10

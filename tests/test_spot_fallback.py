"""Spot first, dedicated when spot fails: a profile's ``dedicated_fallback`` and ``spot_wait`` (issue 19).

Unit tests drive backends/azure/spot.py with a stand-in client and clock (when it acts, what it
writes, what it says, what it never touches). Service tests run cells on the test Batch service:
spot nodes preempted mid-job (the service's ``preempt_node``) or never ready (``delay_node_start``)
get dedicated nodes after ``spot_wait``, the job's view says so while it runs, every result
arrives, and the pool gets its size back when the job ends.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

import azpar_magic
from azpar_magic import config
from azpar_magic.backends.azure import pool
from azpar_magic.backends.azure.spot import SpotFallback
from tests.azure_support import wait_until

POOL = "azpar-spot"


def _profile(**fields) -> config.Profile:
    values = {f: spec.default for f, spec in config.PROFILE_FIELDS.items()}
    values.update({"pool_id": POOL, "dedicated_nodes": 0, "spot_nodes": 2, "dedicated_fallback": 2, "spot_wait": 5.0,
                   **fields})
    return config.Profile("p", values, {})


class FakeBatch:
    """The few pool calls spot.py makes, answered from plain attributes; writes are recorded."""

    def __init__(self, spot_states, *, target_spot=None, ours=True, autoscale=False, refuse=False, errors=()):
        self.spot_states = list(spot_states)
        self.meta = [SimpleNamespace(name="created-by", value="azpar_magic")] if ours else []
        self.autoscale, self.refuse = autoscale, refuse
        self.target = (0, len(self.spot_states) if target_spot is None else target_spot)
        self.errors = [SimpleNamespace(code=code, message="quota") for code in errors]
        self.writes: list[tuple] = []
        self.gone = False  # the pool was deleted (by a user, another kernel, a test's clean-up)

    def get_pool(self, pool_id):
        if self.gone:
            raise ResourceNotFoundError(message=f"the pool {pool_id} does not exist")
        return SimpleNamespace(
            id=pool_id, state="active", allocation_state="steady", vm_size="Standard_D2s_v3",
            current_dedicated_nodes=self.target[0], current_low_priority_nodes=len(self.spot_states),
            target_dedicated_nodes=self.target[0], target_low_priority_nodes=self.target[1],
            enable_auto_scale=self.autoscale, auto_scale_formula="// f" if self.autoscale else None,
            task_slots_per_node=1, resize_errors=self.errors, metadata=self.meta)

    def list_nodes(self, pool_id, select=None):
        return [SimpleNamespace(id=f"p{i}", state=s, is_dedicated=False) for i, s in enumerate(self.spot_states)]

    def disable_pool_auto_scale(self, pool_id):
        self.writes.append(("disable",))
        self.autoscale = False

    def enable_pool_auto_scale(self, pool_id, options):
        self.writes.append(("enable", options.auto_scale_formula))

    def begin_resize_pool(self, pool_id, options, polling_interval=1):
        if self.refuse:
            exc = HttpResponseError(message="refused")
            exc.status_code = 403
            exc.error = SimpleNamespace(code="AuthorizationFailed")
            raise exc
        self.writes.append(("resize", options.target_dedicated_nodes, options.target_low_priority_nodes))
        self.target = (options.target_dedicated_nodes, options.target_low_priority_nodes)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _watch(fake, **fields):
    clock = Clock()
    return SpotFallback(lambda: fake, _profile(**fields), clock), clock


def test_preempted_spot_nodes_get_dedicated_ones_after_spot_wait():
    fake = FakeBatch(["preempted", "running"])
    watch, clock = _watch(fake)
    watch.poll(queued=3)  # short by one from now on
    clock.now += 299
    watch.poll(queued=3)
    assert fake.writes == [] and watch.note() == ""
    clock.now += 1
    watch.poll(queued=3)
    assert fake.writes == []  # the pool is read at most every 15 s: the next look acts
    clock.now += 14
    watch.poll(queued=3)
    assert fake.writes == [("resize", 1, 2)]  # one spot node missing: one dedicated (of at most 2)
    assert watch.note() == "spot nodes preempted after 5 min: 1 dedicated node added"
    clock.now += 600
    watch.poll(queued=3)
    assert len(fake.writes) == 1  # once per job
    watch.close()
    assert fake.writes[-1] == ("resize", 0, 2)  # the fixed pool's size back
    watch.close()
    assert len(fake.writes) == 2


def test_a_pool_deleted_before_the_job_ends_has_nothing_to_restore():
    fake = FakeBatch(["preempted", "running"], target_spot=2)
    watch, clock = _watch(fake)
    watch.poll(queued=3)
    clock.now += 300
    watch.poll(queued=3)
    assert fake.writes == [("resize", 1, 2)]
    fake.gone = True
    watch.close()  # used to raise azpar's AzureServiceError from the clean-up thread
    assert fake.writes == [("resize", 1, 2)]


def test_spot_nodes_not_granted_count_and_the_cap_holds():
    fake = FakeBatch(["creating"], target_spot=4)  # one granted (still booting), three never came
    watch, clock = _watch(fake, dedicated_fallback=2, spot_wait=1.0)
    watch.poll(queued=5)
    clock.now += 60
    watch.poll(queued=5)
    assert fake.writes == [("resize", 2, 4)]  # 3 missing, at most dedicated_fallback = 2
    assert watch.note() == "spot nodes not granted after 1 min: 2 dedicated nodes added"


def test_spot_nodes_still_booting_are_not_missing():
    fake = FakeBatch(["creating", "starting", "waitingforstarttask"])
    watch, clock = _watch(fake, spot_wait=1.0)
    for _ in range(5):
        watch.poll(queued=5)
        clock.now += 60
    assert fake.writes == [] and watch.note() == ""


def test_the_spot_core_quota_falls_back_at_once():
    fake = FakeBatch([], target_spot=2, errors=["AccountLowPriorityCoreQuotaReached"])
    watch, _ = _watch(fake)  # spot_wait 5 min: not waited for
    watch.poll(queued=2)
    assert fake.writes == [("resize", 2, 2)]
    assert watch.note() == "spot nodes not granted at the account's spot core quota: 2 dedicated nodes added"


def test_an_autoscale_pool_is_resized_with_autoscale_off_then_given_its_formula_back():
    fake = FakeBatch(["preempted", "preempted"], autoscale=True)
    watch, clock = _watch(fake, autoscale="QUEUE", min_nodes=0, max_nodes=4, spot_wait=1.0)
    watch.poll(queued=1)
    clock.now += 60
    watch.poll(queued=1)
    assert fake.writes == [("disable",), ("resize", 2, 2)]
    fake.autoscale = False
    watch.close()
    assert fake.writes[-1][0] == "enable" and "QUEUE" in fake.writes[-1][1]


def test_nothing_queued_resets_the_wait():
    fake = FakeBatch(["preempted", "idle"])
    watch, clock = _watch(fake, spot_wait=1.0)
    watch.poll(queued=2)
    clock.now += 50
    watch.poll(queued=0)  # the queue drained: missing spot nodes cost the job nothing
    clock.now += 50
    watch.poll(queued=2)  # short again, from now
    clock.now += 30
    watch.poll(queued=2)
    assert fake.writes == []
    clock.now += 30
    watch.poll(queued=2)
    assert fake.writes == [("resize", 1, 2)]


@pytest.mark.parametrize("fields, fake", [
    ({"dedicated_fallback": 0}, FakeBatch(["preempted", "preempted"])),                # off
    ({"create_pool": False}, FakeBatch(["preempted", "preempted"])),                   # the administrator's pool
    ({}, FakeBatch(["preempted", "preempted"], ours=False)),                           # not created by azpar
    ({}, FakeBatch([])),                                                                # no spot nodes wanted
])
def test_never_touches_a_pool_it_may_not_change(fields, fake):
    watch, clock = _watch(fake, spot_wait=1.0, **fields)
    for _ in range(5):
        watch.poll(queued=4)
        clock.now += 60
    watch.close()
    assert fake.writes == [] and watch.note() == ""


def test_a_job_submitter_identity_is_told_why_no_node_was_added():
    fake = FakeBatch(["preempted", "preempted"], refuse=True)
    watch, clock = _watch(fake, spot_wait=1.0)
    watch.poll(queued=4)
    clock.now += 60
    watch.poll(queued=4)
    assert fake.writes == []
    assert watch.note().startswith("spot nodes preempted after 1 min: this identity may not add dedicated nodes")
    assert pool.SUBMIT_ONLY_ROLE in watch.note() and pool.POOL_WRITE_ROLE in watch.note()
    watch.close()
    assert fake.writes == []


# ---- on the test service ------------------------------------------------------------------------------




def _notes(job, seen: list[str]) -> bool:
    note = job.snapshot().unanswered
    if note:
        seen.append(note)
    return bool(note)


@pytest.mark.timeout(150)
def test_preempted_spot_nodes_mid_job_fall_back_to_dedicated(batch, azurite, ip, tmp_path, monkeypatch):
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, dedicated_nodes=0, spot_nodes=2,
                       task_slots_per_node=1, dedicated_fallback=2, spot_wait=0.02):
        job = azpar_magic.run("for i in range(6)", "import time\ntime.sleep(1.5)\ni * 10", {})

        def spot_running() -> bool:
            with batch.cond:
                return sum(1 for n in batch.pools[POOL].nodes.values() if n.running) == 2

        wait_until(spot_running, 60, "both spot nodes running a task")
        for node_id in list(batch.pools[POOL].nodes):
            batch.preempt_node(POOL, node_id)
        seen: list[str] = []
        wait_until(lambda: _notes(job, seen), 30, "the views to say it")
        assert "spot nodes preempted after 0.02 min: 2 dedicated nodes added" in seen[-1], seen
        assert job.result(timeout=90) == [i * 10 for i in range(6)]
        resizes = [(r.body["targetDedicatedNodes"], r.body["targetLowPriorityNodes"])
                   for r in batch.requests_for("Pools_ResizePool")]
        assert resizes[0] == (2, 2)
        wait_until(lambda: len(batch.requests_for("Pools_ResizePool")) > 1, 20, "the pool's size back")
        last = batch.requests_for("Pools_ResizePool")[-1].body
        assert (last["targetDedicatedNodes"], last["targetLowPriorityNodes"]) == (0, 2)


@pytest.mark.timeout(150)
def test_spot_nodes_never_granted_fall_back_to_dedicated(batch, azurite, ip, tmp_path, monkeypatch):
    """The account's spot core quota is 0: the pool's resize ends steady with no spot node and
    AccountLowPriorityCoreQuotaReached (the test service's quota model, engine.py), which no
    wait cures; one dedicated node is added at once and the job runs there."""
    from tests.azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    batch.core_quota["lowPriority"] = 0
    with azure_profile(tmp_path / "config", batch, azurite, pool_id=POOL, dedicated_nodes=0, spot_nodes=2,
                       task_slots_per_node=2, dedicated_fallback=1, spot_wait=5.0):
        job = azpar_magic.run("for i in range(3)", "import time\ntime.sleep(0.5)\ni + 1", {})
        seen: list[str] = []
        wait_until(lambda: _notes(job, seen), 30, "the views to say it")
        assert "spot nodes not granted at the account's spot core quota: 1 dedicated node added" in seen[-1], seen
        assert job.result(timeout=90) == [1, 2, 3]
        with batch.cond:
            ran_on = {t.node.dedicated for t in batch.jobs[job.id.lower()].tasks.values() if t.node}
        assert ran_on == {True}

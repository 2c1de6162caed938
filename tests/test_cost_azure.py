"""What a job costs on the test Batch service (issue 19): node time and task core time of a job, its estimate at
the profile's price, the cost in the final summary, the manifest and ``%azpar jobs``, a pool's burn rate, and
the cap (``--max-cost``) cancelling a job mid-run with its finished results kept."""

from __future__ import annotations

import pytest

import azpar_magic
from azpar_magic.jobs import CANCELLED
from azpar_magic.run import engine as engine_mod

from .azure_support import azure_profile

pytestmark = [pytest.mark.azure, pytest.mark.timeout(240)]
PRICE = 3600.0  # per node hour: one unit per node second, so seconds read as amounts
SPOT = 360.0


@pytest.fixture
def priced(batch, azurite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine_mod, "COST_INTERVAL", 0.1)
    with azure_profile(
        tmp_path / "config",
        batch,
        azurite,
        dedicated_nodes=1,
        spot_nodes=1,
        price_per_node_hour=PRICE,
        spot_price_per_node_hour=SPOT,
        keep=True,
    ) as name:
        yield name


def _task_seconds(batch, job_id: str) -> float:
    """What Batch's execution times say the job's tasks ran, read from the service itself."""
    from azpar_magic import session

    client = session.engine().backend.client
    total = 0.0
    for task in client.list_tasks(job_id, select=["id", "executionInfo"]):
        info = task.execution_info
        if info is not None and info.start_time and info.end_time:
            total += (info.end_time - info.start_time).total_seconds()
    return total


def test_a_jobs_node_time_task_time_and_cost(priced, batch, ip, run_cell):
    run = run_cell("%%azpar -o got for x in range(4):\nimport time\ntime.sleep(0.3)\nx")
    assert run.success, run.error
    assert ip.user_ns["got"] == [0, 1, 2, 3]
    job = azpar_magic.jobs()[-1]
    cost = job.cost()
    assert cost is not None and cost.billed and not cost.running
    # Task core time: Batch's execution times (Standard_D2s_v3: 2 vCPUs over 2 slots, 1 core per task).
    assert cost.task_core_hours * 3600 == pytest.approx(_task_seconds(batch, job.id), abs=1e-3)
    assert cost.task_core_hours * 3600 >= 4 * 0.3
    # Node time: one dedicated and one spot node, each at most the job's whole run.
    assert 0 < cost.node_hours_dedicated * 3600 <= job.elapsed() + 0.5
    assert 0 < cost.node_hours_spot * 3600 <= job.elapsed() + 0.5
    expected = cost.node_hours_dedicated * PRICE + cost.node_hours_spot * SPOT
    assert cost.amount == pytest.approx(expected)
    assert f"cost ~${cost.amount:,.2f}" in run.stderr + run.stdout  # the text line's final summary
    from azpar_magic.jobstore import load_job

    stored = load_job(job.id, values=False).cost()
    assert stored is not None and stored.amount == pytest.approx(cost.amount, rel=1e-4)
    listed = run_cell("%azpar jobs")
    assert "cost" in listed.stdout.splitlines()[0] and f"~${cost.amount:,.2f}" in listed.stdout


def test_pool_status_shows_the_burn_rate_of_dedicated_and_spot_nodes(priced, run_cell):
    assert run_cell("%%azpar -q -o got for x in range(2):\nx").success
    text = run_cell("%azpar pool status").stdout
    # Both nodes idle: 1 dedicated at 3600 + 1 spot at 360 per hour.
    assert "burning $3,960.00/h now (1 dedicated + 1 spot nodes billed" in text, text
    assert "every node idle since" in text
    status = run_cell("%azpar status").stdout
    assert "burning $3,960.00/h now" in status, status


def test_the_cap_cancels_the_job_and_keeps_finished_results(priced, ip, run_cell):
    assert run_cell("%%azpar -q -o warm for x in range(2):\nx").success  # the pool is up: node boot costs nothing here
    # Two nodes cost 3960 an hour, 1.1 a second: a cap of 6 passes after about 5 seconds, long after
    # iterations 0 and 1 returned and long before the others (60 s each) could.
    run = run_cell(
        "%%azpar --max-cost 6 -o got for x in range(6):\nimport time\nif x >= 2:\n    time.sleep(60)\nx"
    )
    job = azpar_magic.jobs()[-1]
    assert job.wait(60), "the cap did not stop the job"
    assert job.state == CANCELLED
    assert job.partial_results() == {0: 0, 1: 1}
    with pytest.raises(azpar_magic.JobCancelled) as caught:
        job.result()
    message = str(caught.value)
    assert "passed its cap of $6.00" in message and "estimated cost $" in message, message
    assert job.cost().amount > 6
    assert not run.success or "cancelled" in (run.stderr + run.stdout)


@pytest.mark.parametrize("how", ["run", "map"])
def test_the_cap_from_python_cancels_the_job_and_keeps_finished_results(how, priced, ip, run_cell):
    """``max_cost=`` of ``azpar_magic.run`` and ``map`` is the cell's ``--max-cost`` (they had no way to
    say it: a script's job ran on past any cap but the profile's)."""
    assert run_cell("%%azpar -q -o warm for x in range(2):\nx").success  # the pool is up (as above)
    if how == "run":
        job = azpar_magic.run("for x in range(6)", "import time\nif x >= 2:\n    time.sleep(60)\nx", {}, max_cost=6,
                              name="capped")
    else:
        ip.run_cell("def sleep_from_two(x):\n    import time\n    if x >= 2:\n        time.sleep(60)\n    return x")
        job = azpar_magic.map(ip.user_ns["sleep_from_two"], range(6), max_cost=6, name="capped", wait=False)
    assert job.wait(60), "the cap did not stop the job"
    assert job.state == CANCELLED and job.options.name == "capped"
    assert job.partial_results() == {0: 0, 1: 1}
    with pytest.raises(azpar_magic.JobCancelled, match=r"passed its cap of \$6\.00"):
        job.result()
    for bad in (0, -1, "lots", float("nan")):
        with pytest.raises(ValueError, match="max_cost must be a positive amount"):
            if how == "run":
                azpar_magic.run("for x in range(2)", "x", {}, max_cost=bad)
            else:
                azpar_magic.map(abs, range(2), max_cost=bad)


def test_max_cost_must_be_a_positive_number(priced, run_cell):
    for bad in ("0", "-1", "lots", "nan"):
        run = run_cell(f"%%azpar --max-cost {bad} for x in range(2):\nx")
        assert not run.success and "--max-cost must be" in str(run.error), (bad, run.error)


def test_creating_a_pool_says_its_cost_per_hour_once(priced, run_cell):
    first = run_cell("%%azpar -q -o got for x in range(2):\nx")
    assert first.success, first.error
    said = "pool azpar-test is growing to 1 dedicated + 1 spot Standard_D2s_v3 nodes: about $3,960.00 per hour"
    assert said in first.stderr, first.stderr
    again = run_cell("%%azpar -q -o got for x in range(2):\nx")
    assert "per hour" not in again.stderr


def test_the_list_price_comes_from_the_prices_api_stub(batch, azurite, tmp_path, monkeypatch, run_cell):
    """No price in the profile: the retail API (the local stub) prices the profile's size in its region."""
    from azpar_magic.backends.azure import prices

    from .price_stub import price_stub, vm_item

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prices.forget()
    items = [vm_item("Standard_D2s_v3", "westeurope", 0.5), vm_item("Standard_D2s_v3", "westeurope", 0.1, spot=True)]
    with price_stub(items) as stub, azure_profile(tmp_path / "config", batch, azurite, region="westeurope"):
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        assert run_cell("%%azpar -q -o got for x in range(2):\nx").success
        cost = azpar_magic.jobs()[-1].cost()
        assert cost.price is not None and (cost.price.dedicated, cost.price.spot) == (0.5, 0.1)
        assert cost.price.source == "Azure retail prices" and cost.amount == pytest.approx(cost.node_hours_dedicated * 0.5)
        assert stub.requests
    prices.forget()

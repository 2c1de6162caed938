"""``job.as_completed()`` and ``await job``: results as iterations finish, in the order they
finish, on the local pool and on the test Batch service, with slow and failing iterations,
under ``chunk_size``; the failure policy is the job's (``result()``'s); a job that has ended
gives everything; waiting sleeps on the job's notifications (no CPU spent polling)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import azpar_magic
from azpar_magic import jobstore as store

pytestmark = pytest.mark.timeout(90)

# Iteration i sleeps longer the smaller i is: the finishing order is the reverse of the input's.
SLOW = "import time\ntime.sleep(0.25 * (N - i))\nif i in FAIL:\n    raise ValueError(f'no {i}')\ni * 10"


def _job(n: int, fail=(), **options) -> azpar_magic.Job:
    options.setdefault("workers", n)
    options.setdefault("chunk_size", 1)
    return azpar_magic.run(f"for i in range({n})", SLOW, {"N": n, "FAIL": set(fail)}, **options)


def _warm(n: int) -> None:
    """Start n local workers first, so every iteration of the next job starts at once."""
    assert azpar_magic.run(f"for i in range({n})", "import time\ntime.sleep(0.3)\ni", {}, workers=n,
                           chunk_size=1).result(timeout=60) == list(range(n))


def test_values_arrive_in_finishing_order_while_the_job_runs():
    _warm(5)
    job = _job(5)
    seen, running_when_seen = [], []
    for index, value in job.as_completed():
        seen.append((index, value))
        running_when_seen.append(not job.done)
    assert seen == [(4, 40), (3, 30), (2, 20), (1, 10), (0, 0)]
    assert all(running_when_seen[:4]), "values were held back until the job ended"
    assert job.done and job.result() == [0, 10, 20, 30, 40]


def test_a_finished_job_gives_everything_again_in_the_same_order():
    _warm(4)
    job = _job(4)
    first = list(job.as_completed())
    assert job.done
    assert list(job.as_completed()) == first == [(3, 30), (2, 20), (1, 10), (0, 0)]
    store.flush()  # the job store's copy (another kernel's attach) gives them all as well
    loaded = store.load_job(job.id)
    assert sorted(loaded.as_completed()) == sorted(first)


def test_failures_follow_the_jobs_errors_policy():
    _warm(5)
    passed = list(_job(5, fail={3}, errors="pass").as_completed())
    assert [i for i, _ in passed] == [4, 3, 2, 1, 0]
    assert isinstance(passed[1][1], ValueError)  # the iteration's own exception, rebuilt here
    assert str(passed[1][1]) == "no 3"
    removed = list(_job(5, fail={3}, errors="remove").as_completed())
    assert removed == [(4, 40), (2, 20), (1, 10), (0, 0)]
    job = _job(5, fail={3})  # errors="stop": the IterationError result() raises, when the failure arrives
    got = []
    with pytest.raises(azpar_magic.IterationError) as info:
        for pair in job.as_completed():
            got.append(pair)
    assert got == [(4, 40)]
    assert info.value.index == 3 and "no 3" in str(info.value)
    assert 'File "<azpar cell>", line 5' in info.value.remote_traceback


def test_a_chunks_iterations_arrive_together_when_its_task_ends():
    _warm(3)
    job = _job(9, chunk_size=3, workers=3)  # chunks [0,1,2] [3,4,5] [6,7,8]; the last one ends first
    order = [i for i, _ in job.as_completed()]
    assert order == [6, 7, 8, 3, 4, 5, 0, 1, 2]
    # A failure inside a chunk: under pass it stands in at its place; under stop the chunk's
    # iterations before it come first, then the error.
    passed = list(_job(6, fail={4}, chunk_size=3, workers=2, errors="pass").as_completed())
    assert [i for i, _ in passed] == [3, 4, 5, 0, 1, 2] and isinstance(passed[1][1], ValueError)
    got = []
    with pytest.raises(azpar_magic.IterationError) as info:
        for pair in _job(6, fail={4}, chunk_size=3, workers=2).as_completed():
            got.append(pair)
    assert got == [(3, 30)] and info.value.index == 4


def test_a_million_finished_iterations_are_handed_out_quickly():
    job = azpar_magic.run("for i in range(1_000_000)", "i", {})
    job.wait(60)
    started = time.perf_counter()
    count = total = 0
    for _index, value in job.as_completed():
        count += 1
        total += value
    assert (count, total) == (1_000_000, sum(range(1_000_000)))
    assert time.perf_counter() - started < 1.0  # about 0.25 s here; building a pair per iteration first took 1.6 s


def test_a_cancelled_job_gives_its_finished_iterations_then_raises():
    _warm(4)
    job = _job(4)
    got = []
    with pytest.raises(azpar_magic.JobCancelled):
        for pair in job.as_completed():
            got.append(pair)
            job.cancel()
    assert got[0] == (3, 30) and job.state == "cancelled"


def test_timeout_counts_from_the_call():
    job = azpar_magic.run("for i in range(2)", "import time\ntime.sleep(3)\ni", {}, workers=2, chunk_size=1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 0.5 s"):
        list(job.as_completed(timeout=0.5))
    assert time.monotonic() - started < 2
    job.cancel()


def test_waiting_spends_no_cpu():
    """The consumer sleeps on the job's condition between arrivals: over 2 s of waiting, its
    thread uses a few milliseconds of CPU (a polling loop would use most of the 2 s)."""
    job = azpar_magic.run("for i in range(2)", "import time\ntime.sleep(1.0 + i)\ni", {}, workers=2, chunk_size=1)
    cpu = time.thread_time()
    assert sorted(job.as_completed()) == [(0, 0), (1, 1)]
    assert time.thread_time() - cpu < 0.15


# ------------------------------------------------------------------------------ asyncio


def test_async_for_and_await_without_blocking_the_loop():
    """In a running loop, ``async for`` and ``await job`` let other tasks run meanwhile."""
    _warm(4)

    async def main():
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        tick = asyncio.ensure_future(ticker())
        job = _job(4, errors="pass", fail={2})
        got = [(i, v if not isinstance(v, Exception) else "failed") async for i, v in job.as_completed()]
        during = len(ticks)
        result = await _job(3)
        tick.cancel()
        return got, during, result

    got, ticks, result = asyncio.run(main())
    assert got == [(3, 30), (2, "failed"), (1, 10), (0, 0)]
    assert ticks >= 10, "the loop did not run other tasks while waiting"
    assert result == [0, 10, 20]


def test_await_raises_what_result_raises_and_async_timeout():
    async def main():
        with pytest.raises(azpar_magic.IterationError):
            await _job(2, fail={0})
        slow = azpar_magic.run("for i in range(1)", "import time\ntime.sleep(3)\ni", {}, workers=1)
        with pytest.raises(TimeoutError):
            async for _ in slow.as_completed(timeout=0.3):
                pass
        slow.cancel()
        return slow

    slow = asyncio.run(main())
    assert slow.wait(10)
    assert not slow.listeners, "a finished async iteration left its listener on the job"


# -------------------------------------------------------------------------------- Azure


@pytest.mark.azure
@pytest.mark.timeout(240)
def test_as_completed_on_the_test_batch_service(azure):
    """Four tasks of two iterations on 2 nodes x 2 slots: the chunk that sleeps least ends
    first; each chunk's iterations arrive together; the failure stands in under pass."""
    body = "import time\ntime.sleep(1.5 * (3 - i // 2))\nif i == 5:\n    raise ValueError('no 5')\ni * 10"
    job = azpar_magic.run("for i in range(8)", body, {}, chunk_size=2, errors="pass")
    assert job.backend_name == "azure"
    got = list(job.as_completed(timeout=200))
    assert [i for i, _ in got] == [6, 7, 4, 5, 2, 3, 0, 1]
    values = dict(got)
    assert isinstance(values.pop(5), Exception)
    assert values == {i: i * 10 for i in (0, 1, 2, 3, 4, 6, 7)}
    async def awaited():
        return await job
    assert asyncio.run(awaited())[:5] == [0, 10, 20, 30, 40]


@pytest.mark.parametrize(
    ("timeout", "error", "said"),
    [("1", TypeError, "got '1' (str)"), (True, TypeError, "got True (bool)"), ([1], TypeError, "got [1] (list)"),
     (float("nan"), ValueError, "got nan")],
)
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused_before_any_wait(timeout, error, said):
    """result(timeout="1") failed inside as `float + str`; a NaN made no deadline ever pass. Each is
    refused by result, wait and as_completed alike, saying what was given; the job is unharmed."""
    job = azpar_magic.run("for x in range(4)", "time.sleep(0.3); x", {"time": time}, workers=2)
    for call in (job.result, job.wait, job.as_completed):
        with pytest.raises(error, match="timeout must be a number of seconds or None") as caught:
            call(timeout=timeout)
        assert said in str(caught.value)
    with pytest.raises(TimeoutError):
        job.result(timeout=0)  # still running: a real number waits as long as it says
    assert job.result(timeout=np.float64(60)) == [0, 1, 2, 3]  # numpy's numbers are numbers

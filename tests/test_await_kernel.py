"""``await job`` and ``async for ... in job.as_completed()`` in a real ipykernel, whose cells
run in its asyncio event loop (top-level await). While a job is awaited the loop keeps
running: a ticker task started in an earlier cell keeps ticking (it does not while
``job.result()`` blocks), and with the await in a background task the kernel answers a
kernel_info request and runs a short cell before the job ends."""

from __future__ import annotations

import ast
import time

import pytest

from .test_kernel import Kernel, _run_interrupted, _start, _stop

pytestmark = pytest.mark.timeout(120)

SETUP = '''
import asyncio, time
import azpar_magic
ticks = []
async def _tick():
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.02)
_ticker = asyncio.ensure_future(_tick())
def slow(i):  # the smaller i, the longer it takes
    time.sleep(0.4 * (4 - i))
    return i * 10
azpar_magic.map(slow, range(4), workers=4, chunk_size=1)  # the pool's 4 workers are up for what follows
'''


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    kernel, _ = _start(tmp_path_factory.mktemp("await-kernel"))
    try:
        kernel.ok(SETUP)
        yield kernel
    finally:
        _stop(kernel)


def _value(kernel: Kernel, code: str):
    reply = kernel.ok(code)
    return ast.literal_eval(reply.results[0]["text/plain"])


def test_top_level_await_returns_the_result_and_the_loop_runs_meanwhile(kernel):
    got = _value(kernel, "_before = len(ticks)\n"
                         "_r = await azpar_magic.map(slow, range(4), workers=4, chunk_size=1, wait=False)\n"
                         "_r, len(ticks) - _before")
    result, ticks = got
    assert result == [0, 10, 20, 30]
    assert ticks >= 20, f"the event loop was blocked while the job was awaited ({ticks} ticks)"
    # The contrast, so the count above means something: a blocking wait stops the ticker.
    blocked = _value(kernel, "_before = len(ticks)\n"
                             "_r = azpar_magic.map(slow, range(4), workers=4, chunk_size=1, wait=False).result()\n"
                             "_r, len(ticks) - _before")
    assert blocked[0] == [0, 10, 20, 30] and blocked[1] <= 2


def test_async_for_in_a_background_task_while_the_kernel_answers(kernel):
    kernel.ok("job = azpar_magic.map(slow, range(4), workers=4, chunk_size=1, wait=False)\n"
              "arrived = []\n"
              "async def consume():\n"
              "    async for i, v in job.as_completed():\n"
              "        arrived.append((i, v, job.done))\n"
              "    return await job\n"
              "consumer = asyncio.ensure_future(consume())")
    started = time.monotonic()
    msg_id = kernel.kc.kernel_info()
    reply = kernel.kc.get_shell_msg(timeout=5)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["msg_type"] == "kernel_info_reply"
    assert time.monotonic() - started < 1.0
    quick = _value(kernel, "consumer.done(), job.done, len(arrived)")
    assert time.monotonic() - started < 1.2
    assert quick[:2] == (False, False), f"the consumer blocked the kernel until the job ended: {quick}"
    assert _value(kernel, "await consumer") == [0, 10, 20, 30]
    arrived = _value(kernel, "arrived")
    assert [(i, v) for i, v, _ in arrived] == [(3, 30), (2, 20), (1, 10), (0, 0)]
    assert not any(done for _, _, done in arrived[:3]), "values came only after the job ended"
    assert _value(kernel, "len(job.listeners)") == 0


def test_ctrl_c_while_map_waits_cancels_the_job(kernel):
    """As in a cell: the interrupt cancels the job (queued calls never start), the handle
    keeps what finished, and the kernel goes on."""
    reply, _ = _run_interrupted(kernel, "azpar_magic.map(slow, range(8), workers=2, chunk_size=1)", after=1.0)
    assert reply.status == "error" and reply.content["ename"] == "KeyboardInterrupt", reply.describe()
    state, done = _value(kernel, "_j = azpar_magic.jobs()[-1]\n_j.wait(10), len(_j.partial_results())")
    assert state is True
    assert _value(kernel, "_j.state") == "cancelled"
    assert done < 8
    assert _value(kernel, "azpar_magic.map(slow, [3, 3])") == [30, 30]

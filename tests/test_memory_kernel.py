"""The kernel's own memory across cells, measured in a real ipykernel (issue 13, item 6).

A cell whose body reads a large array ships it once per run (pickled, staged); the kernel
must not keep those bytes once they are staged, or every run of the cell adds the array's
size to the kernel for the kernel's life.
"""

from __future__ import annotations

import pytest

from tests.test_kernel import _start, _stop

pytest.importorskip("numpy")

_MB = 2 ** 20


def _rss(kernel) -> int:
    """The kernel process's resident set size in bytes, read by the kernel from /proc."""
    text = kernel.value("[l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]")
    return int(text.strip("'")) * 1024


@pytest.fixture
def fresh_kernel(tmp_path):
    kernel, _ = _start(tmp_path)
    yield kernel
    _stop(kernel)


@pytest.mark.timeout(300)
def test_repeated_runs_of_a_cell_capturing_a_large_array_keep_the_kernel_flat(fresh_kernel):
    kernel = fresh_kernel
    kernel.ok("import numpy as np\nbig = np.arange(100 * 2**20 // 8, dtype=np.float64)")  # 100 MB
    cell = '''%%azpar -q --workers 1 -o r for i in range(3):
float(big[i * 1000])'''
    sizes = []
    for _ in range(4):
        kernel.ok(cell, timeout=120)
        assert kernel.value("r") == repr([0.0, 1000.0, 2000.0])
        kernel.ok("import gc; gc.collect()")
        sizes.append(_rss(kernel))
    grown = sizes[3] - sizes[1]
    # Before the fix every run kept its 100 MB of pickled namespace (about +200 MB here).
    assert grown < 60 * _MB, f"the kernel grew {grown / _MB:.0f} MB from run 2 to run 4: " \
                             f"{[round(s / _MB) for s in sizes]} MB"
    # The job keeps what it shipped (names, size, digest), only not the bytes.
    assert kernel.value("__import__('azpar_magic').jobs()[-1].capture.names") == "('big',)"
    assert int(kernel.value("__import__('azpar_magic').jobs()[-1].capture.size")) > 100 * _MB


@pytest.mark.timeout(300)
def test_the_local_pool_keeps_only_the_latest_staged_namespace(fresh_kernel):
    """Staged namespaces live in /dev/shm, which is RAM too: a cell run with a different
    capture each time must not leave one file per run for the pool's life."""
    kernel = fresh_kernel
    for k in range(3):
        kernel.ok(f"import numpy as np\nbig = np.full(1000, {k})")
        kernel.ok('''%%azpar -q --workers 1 -o r for i in range(2):
int(big[i])''', timeout=120)
        assert kernel.value("r") == repr([k, k])
    staged = kernel.value("sorted(f for e in __import__('azpar_magic.session').session.engines() "
                          "if e.backend._stage for f in __import__('os').listdir(e.backend._stage) if f.startswith('ns-'))")
    assert staged.count("ns-") == 1, staged


def _cap_address_space(kernel, extra_gib: int) -> None:
    """Raise the kernel's item bound out of reach and cap its address space ``extra_gib`` GiB
    above what it maps now: a kernel that takes items without end then meets MemoryError
    instead of eating the machine."""
    kernel.ok("import os, resource, itertools\nos.environ['AZPAR_MAX_ITEMS'] = str(10**15)\n"
              "_vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize:')][0].split()[1]) * 1024\n"
              f"resource.setrlimit(resource.RLIMIT_AS, (_vm + {extra_gib} * 2**30, "
              "resource.getrlimit(resource.RLIMIT_AS)[1]))")


@pytest.mark.timeout(180)
def test_ctrl_c_stops_taking_the_items_of_an_endless_iterable(fresh_kernel):
    """With the bound raised out of reach, an endless iterable in C runs until Ctrl-C, which
    must get through at once (``list(iterable)`` in C never lets it: the kernel filled its
    memory instead). ``itertools.repeat`` adds 8 bytes per item, so the 3 GiB cap is some 400
    million items away: the interrupt, a second after the items begin, lands while they are
    taken on any machine (``itertools.count()`` reached the cap within two seconds here, and
    a CI run met it before the interrupt). A first cell starts the pool, so that the timed
    cell reaches its items at once."""
    import threading
    import time

    kernel = fresh_kernel
    kernel.ok("%%azpar -q --workers 1 -o r for x in range(2):\nx", timeout=60)
    _cap_address_space(kernel, 3)
    timer = threading.Timer(1.0, kernel.km.interrupt_kernel)
    timer.start()
    try:
        started = time.monotonic()
        reply = kernel.run("%%azpar -q -o r2 for x in itertools.repeat(7):\nx", timeout=120)
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert reply.status == "error", reply.describe()
    # (the magic may turn the interrupt into a UsageError; either way it says so)
    assert reply.content["ename"] in ("KeyboardInterrupt", "UsageError"), reply.describe()
    said = (reply.content["evalue"] + reply.stderr).lower()
    assert "interrupted" in said and "nothing was submitted" in said, reply.describe()
    assert "MemoryError" not in reply.describe()
    assert took < 10, f"the cell returned {took:.1f} s after it started (interrupted at 1 s)"
    assert kernel.value("'r2' in globals()") == "False"
    assert kernel.value("len(__import__('azpar_magic').jobs())") == "1"  # the first cell's only
    # The kernel is fine afterwards.
    kernel.ok("del os.environ['AZPAR_MAX_ITEMS']")
    kernel.ok("%%azpar -q --workers 1 -o r for x in range(3):\nx + 1", timeout=60)
    assert kernel.value("r") == "[1, 2, 3]"


@pytest.mark.timeout(180)
def test_running_out_of_memory_while_taking_items_is_said_and_the_kernel_lives_on(fresh_kernel):
    """An address space capped below what the items need (``ulimit -v`` on a shared machine),
    with the item bound raised out of reach: the cell says that the kernel ran out of memory
    taking the items and that nothing was submitted, and the kernel answers the next cell.
    (Holding the items while the message was made kept the kernel spinning in malloc, never
    answering.)"""
    kernel = fresh_kernel
    _cap_address_space(kernel, 1)
    reply = kernel.run("%%azpar -q -o r for x in itertools.count():\nx", timeout=120)
    assert reply.status == "error", reply.describe()
    assert reply.content["ename"] == "UsageError", reply.describe()
    said = reply.content["evalue"] + reply.stderr
    assert "ran out of memory while taking the items of `itertools.count()`" in said, reply.describe()
    assert "Nothing was submitted." in said, reply.describe()
    assert kernel.value("'r' in globals()") == "False"
    assert kernel.value("len(__import__('azpar_magic').jobs())") == "0"
    kernel.ok("del os.environ['AZPAR_MAX_ITEMS']")
    kernel.ok("%%azpar -q --workers 1 -o r for x in range(3):\nx + 1", timeout=60)
    assert kernel.value("r") == "[1, 2, 3]"


@pytest.mark.timeout(60)
def test_a_running_job_holds_no_copy_of_its_staged_namespace(ip, run_cell):
    """While a job runs (--no-wait), neither the Job nor the local pool's record of it keeps
    the namespace bytes: they are in the staged file, which the workers read."""
    import azpar_magic
    from azpar_magic import session

    ip.user_ns["blob"] = b"x" * (8 * _MB)
    try:
        run = run_cell("%%azpar -q --no-wait --workers 2 -o r for i in range(2):\n"
                       "import time\ntime.sleep(1.5)\nlen(blob) + i")
        assert run.success, run.error
        job = azpar_magic.jobs()[-1]
        assert job.capture.data == b"" and job.capture.size > 8 * _MB
        records = [eng.backend._jobs[job.id] for eng in session.engines() if job.id in eng.jobs]
        assert records and all(rec.spec.namespace == b"" for rec in records)
        assert job.result(timeout=30) == [8 * _MB, 8 * _MB + 1]
    finally:
        ip.user_ns.pop("blob", None)
        ip.user_ns.pop("r", None)

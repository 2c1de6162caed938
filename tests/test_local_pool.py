"""The local pool itself: a dispatcher that cannot die silently, workers started only as
tasks need them, one pool per kernel whatever --workers sizes come and go, the default size
from the CPUs this process may use (affinity, cgroup quota), staging folders of dead
kernels swept, and a heartbeat that tells a stopped, hung or deadlocked worker from a busy one.

Each test drives its own LocalBackend through a real Engine (real worker processes), except
the cgroup parsing, which reads a fake /proc and /sys tree.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import azpar_magic
from azpar_magic import session
from azpar_magic.backends import cpus, local
from azpar_magic.jobs.job import JobOptions
from azpar_magic.run.engine import Engine
from azpar_magic.run.parsing import parse_cell
from azpar_magic.run.request import RunRequest
from azpar_magic.ui.text import format_html, format_snapshot, format_text

from .helpers_corpus import pid_alive, wait_for


@pytest.fixture
def engine():
    made: list[Engine] = []

    def make(workers: int = 2) -> Engine:
        eng = Engine(local.LocalBackend(workers=workers))
        made.append(eng)
        return eng

    yield make
    for eng in made:
        for job in list(eng.jobs.values()):
            job.cancel()
        eng.backend.close()


def _submit(eng: Engine, loop: str, body: str, **options):
    return eng.submit(RunRequest(parse_cell(loop, body), {}, JobOptions(**options)))


def _worker_pids(backend) -> set[int]:
    with backend._lock:
        return {w.proc.pid for w in backend._workers.values()}


# ------------------------------------------------------------------ what the workers run


def test_workers_run_the_compiled_worker_while_it_is_the_sources_and_the_source_otherwise(engine, tmp_path, monkeypatch):
    """Python compiles a script at every start and keeps nothing: ~25 ms of each worker's start (a kernel's first
    cell paid it on both cores). The compiled file beside the source is run while its stamp (or hash) is the
    source's; an edited source, a missing or foreign file, is run as the source."""
    import importlib.util
    import py_compile
    import shutil

    source = tmp_path / "worker.py"
    shutil.copy(local.WORKER_SCRIPT, source)
    compiled = importlib.util.cache_from_source(str(source))
    assert local.worker_program(str(source)) == str(source)  # nothing compiled
    py_compile.compile(str(source), cfile=compiled, doraise=True)
    assert local.worker_program(str(source)) == compiled
    monkeypatch.setattr(local, "WORKER_SCRIPT", str(source))
    eng = engine()
    job = _submit(eng, "for x in range(6)", "x * 3", chunk_size=1)
    assert job.result() == [0, 3, 6, 9, 12, 15]
    for pid in _worker_pids(eng.backend) if os.path.exists("/proc/self/cmdline") else ():
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            assert fh.read().split(b"\0")[2] == compiled.encode()

    st = os.stat(source)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # edited since it was compiled
    assert local.worker_program(str(source)) == str(source)
    py_compile.compile(str(source), cfile=compiled, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    assert local.worker_program(str(source)) == compiled
    source.write_text(source.read_text() + "\n# edited\n")
    assert local.worker_program(str(source)) == str(source)
    with open(compiled, "r+b") as fh:
        fh.write(b"\0\0\0\0")  # another Python's magic number
    py_compile.compile(str(source), cfile=compiled, doraise=True)
    assert local.worker_program(str(source)) == compiled
    with open(compiled, "r+b") as fh:
        fh.write(b"\0\0\0\0")
    assert local.worker_program(str(source)) == str(source)


def test_a_job_whose_namespace_copy_a_later_job_replaced_gets_its_envelope_again(tmp_path):
    """Two jobs shipping the same namespace on one worker (a --no-wait job, then a cell reading the same variables):
    the worker loads the copy again for the second and lets go of the first job (worker.JobCache.replace), so the
    first job's next task there must bring its envelope (the file), not count on the worker holding the job."""
    from azpar_magic import worker as wire
    from azpar_magic.backends.base import JobSpec, TaskSpec

    backend = local.LocalBackend(workers=1)
    w = local._Worker("worker-1", proc=None, send_fd=-1, recv_fd=-1)
    envelope = {"namespace": {"sha256": "ab" * 32, "file": "ns", "changeable": True}}
    for job_id in ("a", "b", "c"):
        spec = JobSpec(job_id, envelope if job_id != "c" else {"namespace": {"sha256": "cd" * 32, "file": "ns2"}}, b"")
        backend._jobs[job_id] = local._Job(spec, str(tmp_path / f"{job_id}.azpj"), lambda event: None,
                                           envelope_data=job_id.encode())
    task = TaskSpec("1", [0], "pickle", wire.plain_pickle([0]))
    assert backend._task_message(w, "a", task)["envelope_data"] == b"a"
    assert backend._task_message(w, "c", task)["envelope_data"] == b"c"  # another namespace: "a" stays held
    assert "envelope_data" not in backend._task_message(w, "a", task) and not (tmp_path / "a.azpj").exists()
    assert backend._task_message(w, "b", task)["envelope_data"] == b"b"  # the same namespace: "a" is let go
    again = backend._task_message(w, "a", task)
    assert again.get("envelope_data") == b"a" or (tmp_path / "a.azpj").read_bytes() == b"a"
    # ...and loading "a" again there lets go of "b" in turn (the two interleaving on one worker)
    next_b = backend._task_message(w, "b", task)
    assert next_b.get("envelope_data") == b"b" or (tmp_path / "b.azpj").read_bytes() == b"b"
    assert "envelope_data" not in backend._task_message(w, "c", task) and not (tmp_path / "c.azpj").exists()


# ------------------------------------------------------------------ the dispatcher thread


@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit", [3e6, math.inf], ids=["3000000", "inf"])
def test_a_timeout_too_large_for_select_neither_hangs_the_job_nor_kills_the_pool(engine, limit):
    """--timeout 3000000 or inf once made select() raise OverflowError in the dispatcher
    thread: that job and every later one hung. The magic now refuses such values; the pool
    must survive them anyway (the Python API, a backend used directly), so the limit is given
    to the backend as it would arrive from an unchecked caller."""
    eng = engine(2)
    backend = eng.backend
    submit = backend.submit
    backend.submit = lambda spec, tasks, sink: submit(dataclasses.replace(spec, timeout=limit), tasks, sink)
    job = _submit(eng, "for x in range(6)", "import time\ntime.sleep(0.05)\nx * 2", timeout=5, chunk_size=1)
    assert job.result(timeout=60) == [x * 2 for x in range(6)]
    again = _submit(eng, "for x in range(4)", "x + 1", timeout=5)
    assert again.result(timeout=60) == [1, 2, 3, 4]
    assert backend._thread is not None and backend._thread.is_alive()


@pytest.mark.timeout(120)
def test_a_failing_dispatcher_fails_the_running_job_with_its_cause_and_the_next_job_runs(engine):
    eng = engine(2)
    backend = eng.backend
    real = backend._on_message
    faults = []

    def faulty(w, message, *args):
        if "result" in message and not faults:
            faults.append(w.proc.pid)
            raise RuntimeError("injected dispatcher fault")
        return real(w, message, *args)

    backend._on_message = faulty
    job = _submit(eng, "for x in range(4)", "import time\ntime.sleep(0.2)\nx", chunk_size=1)
    with pytest.raises(azpar_magic.IterationError) as caught:
        job.result(timeout=60)
    message = str(caught.value)
    assert "dispatcher failed (RuntimeError: injected dispatcher fault)" in message, message
    assert caught.value.infrastructure
    assert faults and wait_for(lambda: not pid_alive(faults[0]), 10), "the failed pool's workers were left running"
    # The next job gets a working pool: new workers and a new dispatcher thread.
    after = _submit(eng, "for x in range(5)", "x * x", chunk_size=1)
    assert after.result(timeout=60) == [x * x for x in range(5)]
    assert faults[0] not in _worker_pids(backend)


# ------------------------------------------------------------------ workers as tasks need them


@pytest.mark.timeout(120)
def test_arrays_of_a_few_mb_as_items_and_values_go_whole_and_stay_each_sides_own():
    """Items and values of a MB or more travel after their frames' pickles (wire.frame_pieces): the
    worker's arrays are built on the frame it read, the body may change its item in place, and neither
    the notebook's arrays nor what comes back share memory with anything the other side keeps. Tasks
    held ahead, one task of several items, and a task given back are all covered by two workers and
    five tasks."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(400_000, float(i)) for i in range(10)]  # 3.2 MB each
    job = azpar_magic.run(
        "for a in arrays", "a[0] = -1.0\nprint(a[1])\na * 2", {"arrays": arrays}, workers=2, chunk_size=2
    )
    out = job.result(timeout=60)
    assert [float(v[0]) for v in out] == [-2.0] * 10 and [float(v[1]) for v in out] == [2.0 * i for i in range(10)]
    assert [float(a[0]) for a in arrays] == [float(i) for i in range(10)], "the notebook's arrays changed"
    assert job.output(3) == "3.0\n" and all(v.flags.writeable and v.flags.aligned for v in out)
    out[0][1] = 99.0
    assert float(arrays[0][1]) == 0.0


@pytest.mark.timeout(120)
def test_a_large_pool_starts_no_more_workers_than_tasks(engine):
    eng = engine(8)
    job = _submit(eng, "for x in range(3)", "x", chunk_size=1)
    assert job.result(timeout=60) == [0, 1, 2]
    assert len(_worker_pids(eng.backend)) == 3, eng.backend.nodes()
    more = _submit(eng, "for x in range(5)", "import time\ntime.sleep(0.3)\nx", chunk_size=1)
    assert more.result(timeout=60) == list(range(5))
    assert len(_worker_pids(eng.backend)) == 5


@pytest.mark.timeout(120)
def test_another_workers_size_closes_the_idle_pool_instead_of_keeping_one_per_size():
    five = session.engine("local", 5)
    job = azpar_magic.run("for x in range(5)", "x", {}, backend="local", workers=5, chunk_size=1)
    assert job.result(timeout=60) == list(range(5))
    pids = _worker_pids(five.backend)
    assert len(pids) == 5
    three = session.engine("local", 3)
    try:
        assert five not in session.engines() and three in session.engines()
        assert wait_for(lambda: not any(pid_alive(p) for p in pids), 10), "the stale pool's workers still run"
        # A pool with a running job is kept until it has ended.
        slow = azpar_magic.run("for x in range(2)", "import time\ntime.sleep(2)\nx", {}, backend="local", workers=3)
        session.engine("local", 4)
        assert three in session.engines()
        assert slow.result(timeout=60) == [0, 1]
        session.engine("local", 4)
        assert three not in session.engines()
    finally:
        session.engine("local")  # back to the default pool: the others, idle, are closed and forgotten


# ------------------------------------------------------------------ default size


def _fake_cgroup(root, *, v2: str | None = None, v1: tuple[int, int] | None = None, parent_v2: str | None = None):
    """A fake /proc/self (cgroup, mountinfo) and cgroup tree under ``root``; the process sits
    in /kubepods/pod1 (v2) or /docker/abc (v1)."""
    proc = root / "proc"
    proc.mkdir(parents=True)
    lines, mounts = [], []
    if v2 is not None:
        mount = root / "cgroup2"
        folder = mount / "kubepods" / "pod1"
        folder.mkdir(parents=True)
        (folder / "cpu.max").write_text(v2 + "\n")
        if parent_v2 is not None:
            (mount / "kubepods" / "cpu.max").write_text(parent_v2 + "\n")
        lines.append("0::/kubepods/pod1")
        mounts.append(f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate")
    if v1 is not None:
        mount = root / "cpu"
        folder = mount / "docker" / "abc"
        folder.mkdir(parents=True)
        (folder / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (folder / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
        lines.append("4:cpu,cpuacct:/docker/abc")
        lines.append("3:memory:/docker/abc")
        mounts.append(f"31 25 0:27 / {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct")
    (proc / "cgroup").write_text("\n".join(lines) + "\n")
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return str(proc)


def test_cgroup_v2_quota_is_read_from_the_process_cgroup_and_its_ancestors(tmp_path):
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "a", v2="200000 100000")) == 2.0
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "b", v2="max 100000")) is None
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "c", v2="max 100000", parent_v2="150000 100000")) == 1.5
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "d", v2="400000 100000", parent_v2="50000 100000")) == 0.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "a", v1=(300000, 100000))) == 3.0
    assert cpus.cgroup_cpu_limit(_fake_cgroup(tmp_path / "b", v1=(-1, 100000))) is None
    assert cpus.cgroup_cpu_limit(str(tmp_path / "missing")) is None


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine with two CPUs or more")
def test_default_size_follows_the_cgroup_quota_and_says_why(tmp_path):
    size, why = cpus.usable_cpus(_fake_cgroup(tmp_path, v2="50000 100000"))
    assert size == 1
    assert "cgroup CPU quota of 0.5 CPUs" in why and f"of the machine's {os.cpu_count()}" in why


AFFINITY = textwrap.dedent("""
    import os
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from azpar_magic import session
    from azpar_magic.backends.local import LocalBackend
    backend = LocalBackend()
    print(backend.size, session.default_workers())
    print(backend.describe())
""")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity control and two CPUs or more")
def test_default_size_follows_the_cpu_affinity_of_the_process():
    proc = subprocess.run([sys.executable, "-c", AFFINITY], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sizes, described = proc.stdout.splitlines()
    assert sizes == "1 1"
    assert described.startswith("local pool of 1 worker process on this machine (one per CPU this process may use: "
                                "1 of the machine's"), described
    assert "by its CPU affinity" in described


# ------------------------------------------------------------------ staging folders of dead kernels


def _dead_process() -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = local._start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, started or 0


def test_staging_folders_of_dead_owners_are_swept_and_live_ones_kept(tmp_path):
    dead_pid, dead_start = _dead_process()
    dead = tmp_path / (local.stage_prefix(dead_pid, dead_start) + "abcd1234")
    mine = tmp_path / (local.stage_prefix() + "efgh5678")
    reused = tmp_path / (local.stage_prefix(os.getpid(), (local._start_time(os.getpid()) or 0) + 1) + "ijkl9012")
    other = tmp_path / "azpar-local-zxtbpnmb"  # an older version's name: the owner is unknown, kept
    # The same dead owner's pid in another container's pid namespace: not this one's to judge.
    elsewhere = tmp_path / f"azpar-local-{dead_pid}-{dead_start}-{local._pid_namespace() + 1}-mnop3456"
    for folder in (dead, mine, reused, other, elsewhere):
        folder.mkdir()
        (folder / "ns-x.bin").write_bytes(b"x" * 100)
    removed = local.sweep_stale_stages(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert mine.exists() and other.exists() and elsewhere.exists() and not dead.exists() and not reused.exists()


# ------------------------------------------------------------------ heartbeat


def _running_worker(eng: Engine, job) -> int:
    assert wait_for(lambda: job.snapshot().tasks_running == 1 and eng.backend._workers, 30)
    with eng.backend._lock:
        (w,) = [w for w in eng.backend._workers.values() if w.task]
        return w.proc.pid


def _stalled(job, words: str) -> str:
    found: list[str] = []

    def check():
        found[:] = [n for n in job.snapshot().stalled if words in n]
        return bool(found)

    assert wait_for(check, 30), job.snapshot()
    return found[0]


@pytest.mark.timeout(120)
def test_a_stopped_worker_is_shown_as_stopped_in_the_line_and_the_panel(engine):
    eng = engine(1)
    eng.backend.stall_after = 1.0
    job = _submit(eng, "for x in range(1)", "import time\ntime.sleep(60)\nx")
    pid = _running_worker(eng, job)
    assert job.snapshot().stalled == ()  # busy is not stuck
    os.kill(pid, signal.SIGSTOP)
    try:
        note = _stalled(job, "is stopped")
        assert note.startswith("task 1: worker worker-")
        snap = job.snapshot()
        assert note in format_snapshot(snap) and note in format_text(snap)
        assert 'class="azpar-stalled"' in format_html(snap) and "is stopped" in format_html(snap)
    finally:
        os.kill(pid, signal.SIGCONT)
    job.cancel()
    job.wait(30)
    assert "stopped" not in format_snapshot(job.snapshot())  # a final job shows no stuck task


@pytest.mark.timeout(120)
def test_a_worker_holding_the_interpreter_shows_no_heartbeat(engine):
    eng = engine(1)
    eng.backend.stall_after = 1.0
    job = _submit(eng, "for x in range(1)", "sum(range(10 ** 11))")  # one C call: the heartbeat thread starves
    _running_worker(eng, job)
    note = _stalled(job, "not responding: no heartbeat for")
    assert note.startswith("task 1: worker worker-")
    job.cancel()
    job.wait(30)


@pytest.mark.timeout(120)
def test_a_deadlocked_iteration_shows_no_progress_and_names_it(engine):
    eng = engine(1)
    eng.backend.stall_after = 1.0
    body = "import threading\nlock = threading.Lock()\nif x == 2:\n    lock.acquire()\n    lock.acquire()\nx"
    job = _submit(eng, "for x in range(4)", body, chunk_size=4)
    _running_worker(eng, job)
    note = _stalled(job, "no progress for")
    assert note.startswith("task 1: no progress for") and note.endswith("iteration 2 still running"), note
    job.cancel()
    job.wait(30)


def test_a_cell_does_not_inherit_what_an_earlier_cells_iterations_left_in_the_worker(ip, run_cell):
    """Environment variables, sys.path and warning filters that a body changes stayed changed in the
    worker that ran it, so a later cell saw them on some workers only (as scheduling fell); on Azure
    each job has processes of its own. A job's first task on a worker puts them back. Within a job,
    later iterations on the same worker still see them (the README's "not isolated")."""
    first = run_cell("%%azpar -q --workers 1 -o seen for i in range(3):\n"
                     "import os, sys, warnings\n"
                     "before = (os.environ.get('AZPAR_T_LEAK'), '/azpar-leak' in sys.path)\n"
                     "os.environ['AZPAR_T_LEAK'] = 'yes'\nsys.path.append('/azpar-leak')\n"
                     "warnings.simplefilter('error')\nbefore")
    assert first.success, first.error
    assert ip.user_ns["seen"] == [(None, False), ("yes", True), ("yes", True)]  # one worker, in order
    later = run_cell("%%azpar -q --workers 1 -o seen for i in range(2):\n"
                     "import os, sys, warnings\n"
                     "warnings.warn('only a warning')\n"
                     "(os.environ.get('AZPAR_T_LEAK'), '/azpar-leak' in sys.path)")
    assert later.success, later.error  # the 'error' filter would have made the warning raise
    assert ip.user_ns["seen"] == [(None, False), (None, False)]
    assert "AZPAR_T_LEAK" not in __import__("os").environ


def test_a_cell_does_not_inherit_the_interpreter_settings_an_earlier_cells_iterations_changed(ip, run_cell):
    """A body's ``sys.setrecursionlimit(50)`` stayed in the worker that ran it: a later cell recursing
    deeper than 50 frames failed there with a RecursionError, on some workers only. ``gc.disable()``
    left later cells' cycles unfreed; the file mode mask, the thread switch interval, sockets' default
    timeout and the time zone (``TZ`` with ``time.tzset()``) stayed too. A job's first task on a
    worker puts them back."""
    import time

    first = run_cell("%%azpar -q --workers 1 -o seen for i in range(2):\n"
                     "import sys, gc, os, socket, time\n"
                     "before = (sys.getrecursionlimit(), gc.isenabled())\n"
                     "sys.setrecursionlimit(60); gc.disable(); gc.set_threshold(5, 5, 5); os.umask(0o077)\n"
                     "sys.setswitchinterval(0.5); socket.setdefaulttimeout(1.5)\n"
                     "os.environ['TZ'] = 'Asia/Kathmandu'; time.tzset()\n"
                     "before")
    assert first.success, first.error
    assert ip.user_ns["seen"][1] == (60, False)  # within a job, the same worker's later iteration sees them
    later = run_cell("%%azpar -q --workers 1 -o seen for i in range(2):\n"
                     "import sys, gc, os, socket, time\n"
                     "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
                     "mask = os.umask(0o022); os.umask(mask)\n"
                     "(depth(200), gc.isenabled(), gc.get_threshold(), mask, sys.getswitchinterval(), "
                     "socket.getdefaulttimeout(), time.timezone)")
    assert later.success, later.error  # depth(200) raised RecursionError at a limit of 60
    mask = __import__("os").umask(0o022)
    __import__("os").umask(mask)
    assert ip.user_ns["seen"] == [
        (200, True, __import__("gc").get_threshold(), mask, __import__("sys").getswitchinterval(), None, time.timezone)
    ] * 2


@pytest.mark.timeout(180)
def test_jobs_submitted_at_once_from_several_threads_all_end_with_their_own_values(tmp_path):
    """Jobs running side by side (threads calling run(), or a --no-wait job and the next cell) share the
    pool's workers, which hold tasks of several jobs ahead, and task ids repeat across jobs ("1",
    "2", ...). Asking a worker back for one job's task 1 gave back another job's task 1 too: a task ran
    twice or its result was dropped, and a job never ended (8 threads of 15 jobs hung in most runs).
    In a process of its own, as a script using the API is: inside the whole suite's session the eight
    threads crawled through parsing for minutes (not understood; NOTES)."""
    script = textwrap.dedent("""
        import concurrent.futures
        import azpar_magic

        def jobs_of(k):
            return [
                azpar_magic.run("for x in range(5)", f"x * {k} + {r}", {}, workers=2, chunk_size=1).result(timeout=30)
                for r in range(15)
            ]

        for _ in range(3):
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                got = list(pool.map(jobs_of, range(8)))
            assert got == [[[x * k + r for x in range(5)] for r in range(15)] for k in range(8)], got
        print("all ended")
    """)
    env = {**os.environ, "AZPAR_JOB_STORE": str(tmp_path / "store")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "all ended", done.stderr[-3000:]


def test_a_cell_does_not_draw_from_the_random_state_an_earlier_cell_seeded(ip, run_cell):
    """A body seeding ``random`` and numpy in each iteration left the worker in that state: a later cell
    drawing without a seed replayed the earlier cell's stream (the same numbers on every worker that
    ran it). ``decimal``'s precision and numpy's error handling a body set stayed as well."""
    import decimal
    import random

    import numpy as np

    first = run_cell("%%azpar -q --workers 1 -o seen for i in range(2):\n"
                     "import random, decimal, numpy as np\n"
                     "random.seed(0)\nnp.random.seed(0)\ndecimal.getcontext().prec = 3\nnp.seterr(all='raise')\n"
                     "(random.random(), float(np.random.random()))")
    assert first.success, first.error
    seeded = random.Random(0)
    assert ip.user_ns["seen"] == [(seeded.random(), float(np.random.RandomState(0).random_sample()))] * 2
    later = run_cell("%%azpar -q --workers 1 -o drawn for i in range(2):\n"
                     "import random, decimal, numpy as np\n"
                     "(random.random(), float(np.random.random()), str(decimal.Decimal(1) / 3), "
                     "float(np.float64(1.0) / np.float64(0.0)))")
    assert later.success, later.error  # np.seterr(all='raise') would have made 1/0 raise
    legacy = np.random.RandomState(0)
    legacy.random_sample()
    replays = {seeded.random(), seeded.random()} | {float(v) for v in legacy.random_sample(2)}
    drawn = ip.user_ns["drawn"]
    assert not replays & {v for d in drawn for v in d[:2]}, (drawn, replays)
    assert drawn[0][2] == str(decimal.Decimal(1) / 3) and drawn[0][3] == float("inf")


def test_the_packages_own_modules_do_not_shadow_the_users_on_the_workers(ip, run_cell, tmp_path):
    """Started as a script, a worker had the package's own folder first on sys.path: ``import jobs`` or
    ``import config`` in the body imported azpar's (``attempted relative import beyond top-level
    package``), not the user's or an installed one of that name."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "__init__.py").write_text("VALUE = 'the users'\n")
    ip.user_ns["where"] = str(tmp_path)
    try:
        run = run_cell("%%azpar -q --workers 1 -o got for i in range(2):\n"
                       "import sys\nsys.path.append(where)\nimport jobs\njobs.VALUE")
        assert run.success, run.error
        assert ip.user_ns["got"] == ["the users", "the users"]
    finally:
        for name in ("where", "got"):
            ip.user_ns.pop(name, None)


def test_each_body_gets_the_submodules_it_reads_through_a_namespace_another_job_loaded(ip, run_cell):
    """Two cells capture the same namespace (``xml``, by name) and read different submodules through it:
    the worker loads the namespace once, and the second body still finds ``xml.sax.saxutils``."""
    assert run_cell("import xml.dom.minidom, xml.sax.saxutils").success
    try:
        first = run_cell("%%azpar -q --workers 1 -o got for i in range(2):\n"
                         "xml.dom.minidom.parseString('<a/>').documentElement.tagName")
        assert first.success, first.error
        second = run_cell("%%azpar -q --workers 1 -o got for i in range(2):\nxml.sax.saxutils.escape('<')")
        assert second.success, second.error
        assert ip.user_ns["got"] == ["&lt;", "&lt;"]
    finally:
        ip.user_ns.pop("xml", None)
        ip.user_ns.pop("got", None)


def test_a_notebook_module_stays_importable_in_a_later_job_on_the_same_worker(ip, run_cell, tmp_path, monkeypatch):
    """Putting sys.path back at a job's first task keeps the folders of the notebook's own
    modules: a cell run again over more items (the same envelope, loaded once per worker) imports
    a module beside the notebook that its first run never reached."""
    (tmp_path / "beside_notebook.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    cell = ("%%azpar -q --workers 1 -o got for i in xs:\n"
            "if i:\n    import beside_notebook\n    i = beside_notebook.VALUE\ni")
    try:
        ip.user_ns["xs"] = [0]
        assert run_cell(cell).success and ip.user_ns["got"] == [0]
        ip.user_ns["xs"] = [0, 1]
        again = run_cell(cell)
        assert again.success, again.error
        assert ip.user_ns["got"] == [0, 7]
    finally:
        for name in ("xs", "got"):
            ip.user_ns.pop(name, None)


def test_the_workers_see_the_notebooks_environment_variables_as_the_cell_runs(ip, run_cell, monkeypatch):
    """The workers kept the environment they started with: a variable the notebook set after the first cell
    (``os.environ["API_KEY"] = ...``, ``%env``) read None in the body (a KeyError with words), where the loop
    run in the kernel read the value, and a notebook run again after a restart, its pool started later, read
    it. Each job now carries what the kernel changed since the pool started, set and removed alike, for its
    own tasks. azpar's secrets stay out, and their KeyError says why and what to do. A KeyError of the
    body's own dict gets no such words."""
    monkeypatch.setenv("AZPAR_T_GONE_LATER", "at start")
    monkeypatch.delenv("AZPAR_BATCH_KEY", raising=False)
    read = "import os\n(os.environ.get('AZPAR_T_SET_LATER'), os.environ.get('AZPAR_T_GONE_LATER'))"
    assert run_cell("%%azpar -q --workers 2 -o got for i in range(1):\ni").success  # the pool runs
    monkeypatch.setenv("AZPAR_T_SET_LATER", "later")
    monkeypatch.delenv("AZPAR_T_GONE_LATER")
    run = run_cell(f"%%azpar -q --workers 2 --chunk-size 1 -o got for i in range(4):\n{read}")
    assert run.success, run.error
    assert ip.user_ns["got"] == [("later", None)] * 4
    ip.run_line_magic("env", "AZPAR_T_SET_LATER=by %env")
    assert run_cell(f"%%azpar -q --workers 2 --chunk-size 1 -o got for i in range(4):\n{read}").success
    assert ip.user_ns["got"] == [("by %env", None)] * 4
    monkeypatch.delenv("AZPAR_T_SET_LATER")
    monkeypatch.setenv("AZPAR_T_GONE_LATER", "at start")
    assert run_cell(f"%%azpar -q --workers 2 --chunk-size 1 -o got for i in range(4):\n{read}").success
    assert ip.user_ns["got"] == [(None, "at start")] * 4, "the next job starts from the workers' own again"
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "the hub's token")  # a hub's variable set later stays out too
    hub = run_cell("%%azpar -q --workers 2 -o got for i in range(2):\nimport os\nos.environ.get('JUPYTERHUB_API_TOKEN')")
    assert hub.success and ip.user_ns["got"] == [None, None], hub.error
    monkeypatch.setenv("AZPAR_BATCH_KEY", "a secret")
    run = run_cell("%%azpar -q --workers 2 -o got for i in range(2):\nimport os\nos.environ['AZPAR_BATCH_KEY']")
    assert not run.success
    said = str(run.error)
    assert "KeyError: 'AZPAR_BATCH_KEY' (AZPAR_BATCH_KEY is set in this kernel, but iterations do not see it" in said
    assert "value = os.environ['AZPAR_BATCH_KEY']" in said
    own = run_cell("%%azpar -q --workers 2 -o got for i in range(1):\n{'a': 1}['AZPAR_T_SET_LATER']")
    assert not own.success and "is set in this kernel" not in str(own.error)

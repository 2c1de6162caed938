"""Faults: workers killed mid-task, crashing bodies, endless loops, a million iterations,
Ctrl-C during the blocking wait, --no-wait, and --retries 0."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from IPython.utils.capture import capture_output

import azpar_magic

from .helpers_corpus import (
    live_worker_pids,
    local_backend,
    pid_alive,
    restore_namespace,
    run_cell_job,
    snapshot_namespace,
    wait_for,
    wait_for_file,
)


@pytest.fixture
def clean_ns(ip):
    before = snapshot_namespace(ip.user_ns)
    yield
    restore_namespace(ip.user_ns, before)


def _pool_is_whole(size: int | None = None) -> bool:
    """Every worker of the default pool is alive and idle (an unstarted pool is not whole)."""
    backend = local_backend()
    live = [n for n in backend.nodes() if n.state != "lost"]
    return len(live) == (size or backend.size) and all(n.state == "idle" for n in live) and \
        all(pid_alive(p) for p in live_worker_pids(backend))


def _ready_pool(run_cell, size: int | None = None) -> None:
    """Start the default pool if needed and wait until all its workers are idle (workers
    start as tasks need them: the warm-up cell has a task for each)."""
    run = run_cell(f"%%azpar -q -o __warm for x in range({4 * (size or local_backend().size)})\nx")
    assert run.success, run.error
    assert wait_for(lambda: _pool_is_whole(size), 20), local_backend().nodes()


def _body(folder, *lines: str) -> str:
    """A body that first records which worker process runs which item (pid-<x>)."""
    head = ["import os, time, pathlib",
            f"pathlib.Path(r'{folder}').joinpath(f'pid-{{x}}').write_text(str(os.getpid()))"]
    return "\n".join(head + list(lines))


def _killer(path, pool_pids_out: list):
    """Kill the worker process whose pid appears in ``path`` as soon as it appears."""
    def run():
        pid = int(wait_for_file(str(path), timeout=60))
        pool_pids_out.append((pid, pid in live_worker_pids(local_backend())))
        os.kill(pid, 9)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _assert_next_cell_works(ip, run_cell, name="after_fault"):
    ip.user_ns.pop(name, None)
    run, job = run_cell_job(run_cell, f"%%azpar -q -o {name} for x in range(20)\n(x, x ** 3)")
    assert run.success, run.error
    assert ip.user_ns[name] == [(x, x ** 3) for x in range(20)]
    return job


# --------------------------------------------------------------------- killed worker


@pytest.mark.timeout(120)
def test_sigkilled_worker_mid_task_is_replaced_and_every_value_is_right(ip, run_cell, tmp_path, clean_ns):
    _ready_pool(run_cell)
    killed: list = []
    thread = _killer(tmp_path / "pid-2", killed)
    body = _body(tmp_path, "time.sleep(0.4)", "(x * x, str(x))")
    run, job = run_cell_job(run_cell, f"%%azpar -q --chunk-size 1 -o killed_run for x in range(8)\n{body}")
    thread.join(5)
    assert killed and killed[0][1], "the pid killed was not one of the pool's workers"
    assert run.success, f"{run.error!r}\n{run.stdout}"
    assert ip.user_ns["killed_run"] == [(x * x, str(x)) for x in range(8)]
    assert not job.failures
    task_of_2 = next(t for t in job.tasks.values() if list(t.indices) == [2])
    assert task_of_2.attempts == 2, "the killed task was not retried exactly once"
    assert not pid_alive(killed[0][0])
    # The retry ran on another (live) process, and the pool is back to full size.
    assert int((tmp_path / "pid-2").read_text()) != killed[0][0]
    assert killed[0][0] not in live_worker_pids(local_backend())
    assert wait_for(_pool_is_whole, 10)
    assert any(n.state == "lost" for n in local_backend().nodes())


@pytest.mark.timeout(60)
def test_worker_killed_while_idle_is_replaced_before_the_next_cell_needs_it(ip, run_cell, clean_ns):
    _ready_pool(run_cell)
    backend = local_backend()
    victim = sorted(live_worker_pids(backend))[0]
    os.kill(victim, 9)
    # The very next cell runs at once, while the death may not even have been noticed yet.
    job = _assert_next_cell_works(ip, run_cell, "after_idle_kill")
    assert not job.failures
    assert victim not in {stats["pid"] for stats in job.worker_stats.values()}
    assert wait_for(_pool_is_whole, 10)
    assert victim not in live_worker_pids(backend)


@pytest.mark.timeout(120)
def test_retries_zero_with_sigkilled_worker_fails_that_tasks_iterations(ip, run_cell, tmp_path, clean_ns):
    killed: list = []
    thread = _killer(tmp_path / "pid-2", killed)
    body = _body(tmp_path, "time.sleep(0.4)", "x + 100")
    run, job = run_cell_job(run_cell, f"%%azpar -q --retries 0 --chunk-size 2 --errors pass -o r0 "
                                      f"for x in range(6)\n{body}")
    thread.join(5)
    assert killed and killed[0][1]
    assert run.success, run.error
    values = ip.user_ns["r0"]
    assert [values[i] for i in (0, 1, 4, 5)] == [100, 101, 104, 105]
    for i in (2, 3):  # the whole task (items 2 and 3) is lost, not retried
        assert isinstance(values[i], azpar_magic.InfrastructureError), values[i]
        assert "signal 9" in str(values[i]) and "attempts" not in str(values[i])
    assert {i: f.kind for i, f in job.failures.items()} == {2: "infrastructure", 3: "infrastructure"}
    assert all(t.attempts == 1 for t in job.tasks.values())
    assert not (tmp_path / "pid-3").exists(), "item 3 ran although its task had failed"
    _assert_next_cell_works(ip, run_cell)


@pytest.mark.timeout(120)
def test_concurrent_workers_never_import_a_half_written_local_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")
    padding = "# padding\n" * 400_000  # a 4 MB module: writing it takes a while
    azpar_magic.run("for x in range(8)", "x", {}, workers=4).result(timeout=60)  # start the 4-worker pool
    for trial in range(25):
        name = f"azpar_lmod_big_{trial}"
        (tmp_path / f"{name}.py").write_text(padding + "def triple(v):\n    return 3 * v\n")
        job = azpar_magic.run("for x in range(8)", f"import {name}\n{name}.triple(x)", {}, chunk_size=1,
                              errors="pass", workers=4)
        values = job.result(timeout=60)
        assert values == [3 * x for x in range(8)], f"trial {trial}: {values}"
        sys.modules.pop(name, None)


# ------------------------------------------------------------------------ os._exit(3)


def _attempts(folder, x) -> int:
    return len(list(folder.glob(f"attempt-{x}-*")))


EXITING_BODY = ("import os, pathlib\n"
                "pathlib.Path(r'{d}').joinpath(f'attempt-{{x}}-{{os.getpid()}}').touch()\n"
                "if x == 3:\n"
                "    os._exit(3)\n"
                "x * 7")


@pytest.mark.timeout(120)
def test_os_exit_is_an_infrastructure_failure_after_the_retries(ip, run_cell, tmp_path, clean_ns):
    run = run_cell("%%azpar -q --retries 1 --chunk-size 1 -o ex for x in range(6)\n"
                   + EXITING_BODY.format(d=tmp_path))
    err = run.error
    assert isinstance(err, azpar_magic.IterationError), repr(err)
    assert err.index == 3 and err.item_repr == "3"
    assert err.infrastructure
    assert "exit code 3" in err.error_message and "after 2 attempts" in err.error_message
    assert "could not run (InfrastructureError): the worker process" in str(err), str(err)
    assert _attempts(tmp_path, 3) == 2  # one try + one retry, each in its own process
    assert "ex" not in ip.user_ns
    assert wait_for(_pool_is_whole, 10)


@pytest.mark.timeout(120)
def test_os_exit_under_errors_remove_keeps_the_other_values(ip, run_cell, tmp_path, clean_ns):
    run, job = run_cell_job(run_cell, "%%azpar -q --errors remove --chunk-size 1 -o ex for x in range(8)\n"
                            + EXITING_BODY.format(d=tmp_path))
    assert run.success, run.error
    assert ip.user_ns["ex"] == [x * 7 for x in range(8) if x != 3]
    assert list(job.failures) == [3]
    failure = job.failures[3]
    assert failure.kind == "infrastructure"
    assert "exit code 3" in failure.message and "after 3 attempts" in failure.message  # default --retries 2
    assert _attempts(tmp_path, 3) == 3
    assert all(_attempts(tmp_path, x) == 1 for x in range(8) if x != 3)  # nobody else was re-run
    _assert_next_cell_works(ip, run_cell)


@pytest.mark.timeout(60)
def test_sys_exit_in_the_body_is_a_user_error_never_retried(ip, run_cell, tmp_path, clean_ns):
    body = ("import sys, os, pathlib\n"
            f"pathlib.Path(r'{tmp_path}').joinpath(f'attempt-{{x}}-{{os.getpid()}}').touch()\n"
            "if x == 1:\n    sys.exit(3)\nx")
    run, job = run_cell_job(run_cell, f"%%azpar -q --errors pass --chunk-size 1 -o se for x in range(3)\n{body}")
    assert run.success, run.error
    values = ip.user_ns["se"]
    assert values[0] == 0 and values[2] == 2
    assert isinstance(values[1], SystemExit) and values[1].code == 3
    assert _attempts(tmp_path, 1) == 1
    assert job.failures[1].kind == "user"


# -------------------------------------------------------------------------- --timeout


@pytest.mark.timeout(120)
def test_endless_loop_is_stopped_by_timeout_and_the_pool_still_serves(ip, run_cell, tmp_path, clean_ns):
    """The worker stops the endless iteration at the --timeout itself, sends the task's result, and ends
    (an iteration cut short may leave a process half way); the pool replaces it and serves the next cell."""
    body = _body(tmp_path, "while x == 1:", "    pass", "x - 1")
    started = time.monotonic()
    run = run_cell(f"%%azpar -q --timeout 1 --chunk-size 1 -o tmo for x in range(4)\n{body}")
    elapsed = time.monotonic() - started
    err = run.error
    assert isinstance(err, azpar_magic.IterationError), repr(err)
    assert err.index == 1 and err.infrastructure
    assert "Timeout" in err.error_type and "--timeout of 1 s" in err.error_message
    assert 1.0 <= elapsed < 20, elapsed
    looping_pid = int((tmp_path / "pid-1").read_text())
    assert wait_for(lambda: not pid_alive(looping_pid), 10), "the stopped worker is still running"
    assert wait_for(_pool_is_whole, 10)
    _assert_next_cell_works(ip, run_cell)


@pytest.mark.timeout(120)
def test_an_iteration_that_swallows_the_stop_is_killed_a_grace_after_the_timeout(ip, run_cell, tmp_path, clean_ns,
                                                                                monkeypatch):
    """``except BaseException`` around the loop swallows the stop at --timeout: the pool kills the worker a
    grace later (here 1 s), and replaces it."""
    monkeypatch.setattr("azpar_magic.backends.local.timeout_grace", lambda limit: 1.0)
    body = _body(tmp_path, "while x == 1:", "    try:", "        time.sleep(0.01)", "    except BaseException:",
                 "        pass", "x - 1")
    started = time.monotonic()
    run = run_cell(f"%%azpar -q --timeout 1 --chunk-size 1 -o tmo for x in range(4)\n{body}")
    elapsed = time.monotonic() - started
    err = run.error
    assert isinstance(err, azpar_magic.IterationError) and err.index == 1 and err.infrastructure, repr(err)
    assert "did not stop there: it was killed 1 s later" in err.error_message, err.error_message
    assert 2.0 <= elapsed < 20, elapsed
    looping_pid = int((tmp_path / "pid-1").read_text())
    assert wait_for(lambda: not pid_alive(looping_pid), 10), "the looping worker is still running"
    assert wait_for(_pool_is_whole, 10)
    _assert_next_cell_works(ip, run_cell)


@pytest.mark.timeout(120)
def test_timeout_under_errors_pass_reports_the_iteration(ip, run_cell, tmp_path, clean_ns):
    body = _body(tmp_path, "while x == 2:", "    time.sleep(0.01)", "x * 3")
    run, job = run_cell_job(run_cell, f"%%azpar -q --timeout 1 --chunk-size 1 --errors pass -o tmo "
                                      f"for x in range(5)\n{body}")
    assert run.success, run.error
    values = ip.user_ns["tmo"]
    assert [values[i] for i in (0, 1, 3, 4)] == [0, 3, 9, 12]
    assert isinstance(values[2], azpar_magic.InfrastructureError) and "timeout" in str(values[2])
    assert next(t for t in job.tasks.values() if list(t.indices) == [2]).attempts == 1  # never retried


@pytest.mark.timeout(120)
@pytest.mark.parametrize("errors", ["stop", "pass", "remove"])
def test_timeout_in_a_chunk_names_the_iteration_that_was_running_under_every_errors_mode(
        ip, run_cell, tmp_path, clean_ns, errors):
    """--chunk-size 3: iterations 3, 4, 5 share a task and 4 never ends. The failure is
    iteration 4's, under the same name and message whatever --errors says, with the cell line it
    was stopped on; 3 ended before it and its value is kept (the whole task was once killed and 3
    lost with it); 5 never ran, and says why."""
    body = _body(tmp_path, "while x == 4:", "    time.sleep(0.01)", "x * 3")
    run, job = run_cell_job(run_cell, f"%%azpar -q --timeout 2 --chunk-size 3 --errors {errors} -o tmo "
                                      f"for x in range(6)\n{body}")
    failure = job.failures[4]
    assert failure.error_type == "azpar_magic.TaskTimeoutError", failure
    assert failure.message == ("iteration 4 was still running when its task reached the --timeout of 2 s "
                               "(its task, iterations 3-5, was stopped there; the 1 iteration before it is kept)"), \
        failure.message
    assert failure.line is not None and "time.sleep(0.01)" in failure.traceback, failure
    assert 3 not in job.failures and job.partial_results()[3] == 9
    assert job.failures[5].kind == "cancelled" and "iteration 4" in job.failures[5].message
    if errors == "stop":
        err = run.error
        assert isinstance(err, azpar_magic.IterationError) and err.index == 4, repr(err)
        assert err.error_type == failure.error_type and err.error_message == failure.message
        assert err.infrastructure and err.failed_count == 1
        return
    assert run.success, run.error
    values = ip.user_ns["tmo"]
    if errors == "pass":
        assert values[:4] == [0, 3, 6, 9]
        assert type(values[4]) is azpar_magic.TaskTimeoutError and str(values[4]) == failure.message
        assert isinstance(values[4], azpar_magic.InfrastructureError) and isinstance(values[4], TimeoutError)
    else:
        assert values == [0, 3, 6, 9]


# ------------------------------------------------------------------ a million iterations

MILLION = textwrap.dedent("""
    import resource, sys
    import azpar_magic
    from azpar_magic import session
    job = azpar_magic.run("for x in range(1_000_000)", "x * 2 + 1", {})
    values = job.result(timeout=150)
    ok = len(values) == 1_000_000 and all(v == 2 * i + 1 for i, v in enumerate(values))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, and subprocess starts this
    # interpreter by vfork, so ru_maxrss here would be the pytest process's own peak.
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))  # KiB
    tasks = len(job.tasks)
    session.close()
    # The workers' ru_maxrss may include this process's size when it started them (the same
    # carry-over): an upper bound of their own peak, which is what the test needs.
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(ok, peak, workers, tasks)
""")


@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc/self/status")
def test_a_million_trivial_iterations_in_bounded_memory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZPAR_")}
    proc = subprocess.run([sys.executable, "-c", MILLION], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr
    ok, peak_kib, workers_kib, tasks = proc.stdout.split()
    assert ok == "True", "some of the million values are wrong"
    print(f"client peak {int(peak_kib) // 1024} MB, workers' at most {int(workers_kib) // 1024} MB")
    assert int(peak_kib) < 600 * 1024, f"client peak RSS {int(peak_kib) // 1024} MB"
    assert int(workers_kib) < 600 * 1024, f"worker peak RSS {int(workers_kib) // 1024} MB"
    assert int(tasks) < 10_000, "a million iterations should not be a million tasks"


# --------------------------------------------------------------------------- Ctrl-C

INTERRUPTED_BODY = ("import os, time, pathlib\n"
                    "d = pathlib.Path(r'{d}')\n"
                    "d.joinpath(f'start-{{x}}').write_text(str(os.getpid()))\n"
                    "if x >= 2:\n"
                    "    time.sleep(20)\n"
                    "d.joinpath(f'done-{{x}}').touch()\n"
                    "x * 10")


def _interrupt_run(ip, run_cell, folder, n_items: int, wait_started: tuple[int, ...]):
    """Run the interrupted cell on the ready 2-worker pool; Ctrl-C (interrupt_main) once
    items 0 and 1 have finished and the items in ``wait_started`` are running."""
    _ready_pool(run_cell, 2)
    jobs_before = {j.id for j in azpar_magic.jobs()}
    fired = threading.Event()
    started_at_interrupt: list = []

    def interrupt_when_ready():
        def ready():
            new = [j for j in azpar_magic.jobs() if j.id not in jobs_before]
            return (new and len(new[-1].partial_results()) == 2
                    and all((folder / f"start-{x}").exists() for x in wait_started))
        wait_for(ready, 30)  # interrupt anyway after 30 s so a broken run fails instead of hanging
        started_at_interrupt.extend(sorted(p.name for p in folder.glob("start-*")))
        fired.set()
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    started = time.monotonic()
    run = run_cell(f"%%azpar -q --chunk-size 1 -o intr for x in range({n_items})\n" + INTERRUPTED_BODY.format(d=folder))
    elapsed = time.monotonic() - started
    fired.wait(35)
    job = [j for j in azpar_magic.jobs() if j.id not in jobs_before][-1]
    return run, job, elapsed, started_at_interrupt


def _cancel_for_good(job) -> None:
    """Test cleanup: whatever the outcome, leave no sleeping task of ``job`` in the pool."""
    for _ in range(10):
        if job.done:
            break
        job.cancel()
        job.wait(1)
    wait_for(_pool_is_whole, 20)


@pytest.mark.timeout(120)
def test_keyboard_interrupt_stops_running_tasks_and_keeps_finished_values(ip, run_cell, tmp_path, clean_ns):
    if local_backend().size != 2:
        pytest.skip("the scenario assumes the default pool of 2 workers")
    run, job, elapsed, _ = _interrupt_run(ip, run_cell, tmp_path, 4, wait_started=(2, 3))
    try:
        assert isinstance(run.error, KeyboardInterrupt), repr(run.error)
        assert elapsed < 30
        assert "intr" not in ip.user_ns
        assert "cancelled" in run.stderr and "2 of 4" in run.stderr
        assert job.state == "cancelled"
        assert job.partial_results() == {0: 0, 1: 10}  # finished values stay retrievable
        with pytest.raises(azpar_magic.JobCancelled):
            job.result()
        assert {i: f.kind for i, f in job.failures.items()} == {2: "cancelled", 3: "cancelled"}
        # The running tasks were stopped: their processes are gone and their bodies never finished.
        running_pids = [int((tmp_path / f"start-{x}").read_text()) for x in (2, 3)]
        assert wait_for(lambda: not any(pid_alive(p) for p in running_pids), 10)
        assert not set(running_pids) & live_worker_pids(local_backend())
        time.sleep(0.5)
        assert not (tmp_path / "done-2").exists() and not (tmp_path / "done-3").exists()
        # The pool is whole again and serves the next cell.
        assert wait_for(_pool_is_whole, 10)
        _assert_next_cell_works(ip, run_cell)
    finally:
        _cancel_for_good(job)


@pytest.mark.timeout(180)
def test_keyboard_interrupt_queued_tasks_never_start(ip, run_cell, tmp_path, clean_ns):
    if local_backend().size != 2:
        pytest.skip("the scenario assumes the default pool of 2 workers")
    run, job, elapsed, started_at_interrupt = _interrupt_run(ip, run_cell, tmp_path, 8, wait_started=(2, 3))
    try:
        assert isinstance(run.error, KeyboardInterrupt), repr(run.error)
        assert job.partial_results() == {0: 0, 1: 10}
        # Queued tasks never start, not even later.
        time.sleep(1.5)
        assert sorted(p.name for p in tmp_path.glob("start-*")) == started_at_interrupt
        assert job.state == "cancelled"
        assert sorted(p.name for p in tmp_path.glob("done-*")) == ["done-0", "done-1"]
        assert wait_for(_pool_is_whole, 5)
    finally:
        _cancel_for_good(job)


@pytest.mark.timeout(120)
def test_cancelling_one_job_leaves_another_jobs_running_task_alone(run_cell):
    if local_backend().size != 2:
        pytest.skip("the scenario assumes the default pool of 2 workers")
    _ready_pool(run_cell, 2)
    other = azpar_magic.run("for x in range(1)", "import time\ntime.sleep(3)\nx + 41", {}, chunk_size=1)
    time.sleep(0.3)
    cancelled = azpar_magic.run("for x in range(3)", "import time\ntime.sleep(5)\nx", {}, chunk_size=1)
    time.sleep(0.3)
    try:
        cancelled.cancel()
        assert other.result(timeout=30) == [41]
    finally:
        _cancel_for_good(cancelled)


@pytest.mark.timeout(60)
def test_a_slow_iteration_does_not_hold_back_work_an_idle_worker_could_do(run_cell):
    if local_backend().size != 2:
        pytest.skip("the scenario assumes the default pool of 2 workers")
    _ready_pool(run_cell, 2)
    started = time.monotonic()
    job = azpar_magic.run("for s in [2, 0, 2, 0]", "import time\ntime.sleep(s)\ns", {}, chunk_size=1)
    assert job.result(timeout=30) == [2, 0, 2, 0]
    assert time.monotonic() - started < 3.5


# ------------------------------------------------------------------------- --no-wait


@pytest.mark.timeout(120)
def test_no_wait_returns_a_job_and_collect_binds_later(ip, tmp_path, clean_ns):
    for name in ("nw_result", "nw_other"):
        ip.user_ns.pop(name, None)
    body = "import time\ntime.sleep(0.5)\n(x, x + 1)"
    with capture_output():
        started = time.monotonic()
        first = ip.run_cell(f"%%azpar -q --no-wait -o nw_result for x in range(6)\n{body}")
        returned_after = time.monotonic() - started
        second = ip.run_cell(f"%%azpar -q --no-wait -o nw_result for x in range(4)\n{body}\n")
    job, job2 = first.result, second.result
    assert first.success and isinstance(job, azpar_magic.Job)
    assert isinstance(job2, azpar_magic.Job) and job2.id != job.id
    assert returned_after < 1.5  # the iterations alone take >= 1.5 s on two workers
    assert not job.done
    assert "nw_result" not in ip.user_ns

    # Collect the first job by id, under another name; then the latest with its own -o.
    with capture_output():
        collected = ip.run_cell(f"%azpar collect {job.id} -o nw_other")
    assert collected.success, collected.error_in_exec
    assert ip.user_ns["nw_other"] == [(x, x + 1) for x in range(6)]
    assert "nw_result" not in ip.user_ns
    with capture_output():
        latest = ip.run_cell("%azpar collect")
    assert latest.success, latest.error_in_exec
    assert ip.user_ns["nw_result"] == [(x, x + 1) for x in range(4)]
    assert job.result() == [(x, x + 1) for x in range(6)]

"""Azure jobs outlive their kernel: real ipykernel kernels, the real SDKs, the test Batch
service and Azurite. A cell submitted with ``--no-wait`` keeps running on Batch while the
kernel restarts (gracefully, the way a notebook's "Restart kernel" asks, so the old kernel's
exit handlers run); ``%azpar attach`` in the new kernel takes the job over, and its result
equals the sequential loop's. Logs, rerun, cancel and delete work on such a job too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from azpar_magic import jobstore as store
from azpar_magic.backends.azure import storage

from .azure_support import write_profile_file
from .test_jobs_kernel import _error_text, _job_id, _wait_for
from .test_kernel import Kernel, _isolated_env, _run_interrupted, _stop

manager = pytest.importorskip("jupyter_client.manager")
pytestmark = [pytest.mark.azure, pytest.mark.timeout(300)]


@pytest.fixture
def job_store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))  # this process reads the kernel's store
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    return root


@pytest.fixture
def start_kernel(tmp_path, job_store, batch, azurite):
    """Kernels sharing this test's job store and an Azure profile ``test`` on the test service."""
    env = _isolated_env(tmp_path)  # no AZPAR_* from outside, its own IPython and config folders
    env[store.STORE_ENV] = str(job_store)
    env.pop("JUPYTERHUB_USER", None)
    config_file = Path(env["XDG_CONFIG_HOME"]) / "azpar" / "config.toml"
    env.update(write_profile_file(config_file, batch, azurite, "test"))  # the keys, as a user sets them
    (tmp_path / "cwd").mkdir()
    started: list[Kernel] = []

    def start() -> Kernel:
        km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env,
                                          cwd=str(tmp_path / "cwd"))
        k = Kernel(km, kc)
        started.append(k)
        k.ok("%load_ext azpar_magic")
        k.ok("%azpar use test")
        return k

    yield start
    for k in started:
        _stop(k)


@pytest.fixture
def kernel(start_kernel):
    return start_kernel()


def _restart(kernel: Kernel) -> None:
    """A graceful restart: the old kernel exits normally (atexit runs), a new one starts."""
    pid_before = kernel.value("__import__('os').getpid()")
    kernel.km.restart_kernel(now=False)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("__import__('os').getpid()") != pid_before
    kernel.ok("%load_ext azpar_magic")


def _manifest(job_id: str) -> dict:
    return store.read_manifest(job_id)


_DEAD_PID = 2 ** 22 + 7  # no process has it: Linux pids stay below 2 ** 22


def _as_if_its_kernel_died(job_store: Path, job_id: str, drop: tuple[str, ...] = (), **changes) -> None:
    """Rewrite the job's manifest as owned by a process that ended (with ``changes``, without the
    ``drop`` keys), and make this process forget the job, as a new kernel would not know it."""
    from azpar_magic import session

    manifest = _manifest(job_id)
    manifest.update(changes, owner={**manifest["owner"], "pid": _DEAD_PID, "start": "0"})
    for key in drop:
        manifest.pop(key, None)
    store.write_manifest(job_store / job_id, manifest)
    session.forget(job_id)
    for eng in session.engines():
        eng.jobs.pop(job_id, None)


def _tasks_completed(batch_client, job_id: str) -> int:
    return batch_client.get_job_task_counts(job_id).task_counts.completed


def _how_it_ended(job_id: str, batch_client) -> str:
    """What a test that failed on a job's end state needs to know: the job's stored failures and
    what Batch says of each task."""
    job = store.load_job(job_id, values=False)
    failures = "; ".join(f"{i}: {f.error_type}: {f.message[:200]}" for i, f in sorted(job.failures.items()))
    tasks = ", ".join(f"{t.id} {str(t.state).rsplit('.', 1)[-1]} exit {getattr(t.execution_info, 'exit_code', None)}"
                      for t in batch_client.list_tasks(job_id))
    return f"failures: {failures or 'none'}; Batch's tasks: {tasks}"


def _job_exists(batch_client, job_id: str) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        batch_client.get_job(job_id)
        return True
    except ResourceNotFoundError:
        return False


def _containers(blob_service) -> set[str]:
    return {c.name for c in blob_service.list_containers()}


BODY = '''import time
time.sleep(0.4)
if x in (3, 8) and not fixed:
    print(f"about to fail on {x}")
    raise ValueError(f"cannot take {x}")
print(f"ok {x}")
x * scale + 1'''


def test_no_wait_job_goes_on_through_a_restart_and_attach_takes_it_over(kernel, job_store, batch, batch_client,
                                                                         blob_service):
    kernel.ok("scale = 3\nfixed = True")
    submitted = kernel.ok(f"%%azpar --no-wait -q -o vals for x in range(12):\n{BODY}")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    manifest = _manifest(job_id)
    info = manifest["backend_info"]
    # The manifest says where the job lives on Azure, and carries no secret.
    assert info["outlives_kernel"] is True and info["batch_job_id"] == job_id and info["profile"] == "test"
    assert info["containers"] == {"inputs": f"{job_id}-in", "outputs": f"{job_id}-out", "cache": "azpar-cache"}
    text = json.dumps(manifest)
    assert batch.key not in text and "sig=" not in text
    # A copy of it sits in the job's inputs container.
    cloud = json.loads(blob_service.get_blob_client(f"{job_id}-in", "manifest.json").download_blob().readall())
    assert cloud["id"] == job_id and cloud["backend_info"]["batch_job_id"] == job_id

    _restart(kernel)  # while tasks still run (12 x 0.4 s on 4 slots)
    assert _job_exists(batch_client, job_id)
    assert not batch.requests_for("Jobs_TerminateJob"), "the old kernel's exit cancelled the Azure job"
    assert _manifest(job_id)["state"] == "running"

    kernel.ok("scale = 1000")  # the job keeps the namespace it was submitted with
    kernel.ok(f"%azpar attach {job_id} -o vals")
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([x * 3 + 1 for x in range(12)])
    _wait_for(lambda: _manifest(job_id)["state"] == "succeeded", 30, "the final state was not stored")
    assert _manifest(job_id)["owner"]["pid"] == int(kernel.value("__import__('os').getpid()"))
    # Every iteration stored once, and a fully successful job is cleaned up on Azure.
    assert store.summary(job_id).succeeded == 12
    _wait_for(lambda: not _job_exists(batch_client, job_id), 60, "the Batch job was not deleted after success")
    # The cleanup deletes the Batch job first, then the containers: wait for those too.
    _wait_for(lambda: not {f"{job_id}-in", f"{job_id}-out", f"{job_id}-files"} & _containers(blob_service), 30,
              "the job's containers were not deleted after success")
    table = kernel.ok("%azpar jobs").stdout
    assert job_id in table and "azure" in table and "12/0/12" in table, table


def test_failed_iterations_logs_and_rerun_after_a_restart(kernel, job_store, batch_client, blob_service):
    kernel.ok("scale = 2\nfixed = False")
    submitted = kernel.ok(f"%%azpar --no-wait -q --errors remove -o vals for x in range(10):\n{BODY}")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    _restart(kernel)
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([x * 2 + 1 for x in range(10) if x not in (3, 8)])
    # Failed: Batch job, logs and results are kept on Azure, and the cloud manifest says so.
    assert _job_exists(batch_client, job_id)
    _wait_for(lambda: json.loads(blob_service.get_blob_client(f"{job_id}-in", "manifest.json").download_blob()
                                 .readall())["state"] == "done", 30, "the cloud manifest has no final state")
    logs = kernel.ok(f"%azpar logs {job_id} 3").stdout
    assert logs.startswith("--- iteration 3 (item 3): failed ---\nabout to fail on 3\n"), logs
    assert logs.rstrip().endswith("ValueError: cannot take 3")

    _restart(kernel)  # the logs are readable from yet another kernel
    assert kernel.ok(f"%azpar logs {job_id} 3").stdout == logs
    assert kernel.ok(f"%azpar logs {job_id} 4").stdout == "--- iteration 4 (item 4): succeeded ---\nok 4\n"
    # The cause fixed in the new kernel; only the failed iterations run again, merged in order.
    kernel.ok("scale = 2\nfixed = True")
    rerun = kernel.ok(f"%azpar rerun {job_id} --failed -q -o fixed_vals", timeout=120)
    assert kernel.value("fixed_vals") == repr([x * 2 + 1 for x in range(10)]), rerun.describe()

    # delete removes the Batch job, its containers and the local copy.
    kernel.ok(f"%azpar delete {job_id}")
    assert not _job_exists(batch_client, job_id)
    assert not {f"{job_id}-in", f"{job_id}-out", f"{job_id}-files"} & _containers(blob_service)
    assert not (job_store / job_id).exists()


def test_cancel_after_a_restart_terminates_the_batch_job_and_keeps_finished_results(kernel, job_store, batch,
                                                                                    batch_client):
    kernel.ok("scale = 5\nfixed = True")
    # The slow iterations must still run when the cancel comes, however slow the restart and the
    # attach are on a loaded machine; the terminate stops them.
    body = "import time\ntime.sleep(0.3 if x < 4 else 600)\nx * scale"
    start = time.monotonic()
    submitted = kernel.ok(f"%%azpar --no-wait -q --errors remove -o vals for x in range(8):\n{body}")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists() and _tasks_completed(batch_client, job_id) >= 4,
              60, "the quick iterations did not finish")
    quick = time.monotonic() - start
    _restart(kernel)
    kernel.ok(f"%azpar attach {job_id}")
    kernel.ok(f"%azpar cancel {job_id}")
    cancelled = time.monotonic() - start
    try:
        _wait_for(lambda: _manifest(job_id)["state"] == "cancelled", 60, "the job did not end as cancelled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: its manifest says {_manifest(job_id)['state']!r}; the quick iterations were "
                             f"done {quick:.1f} s after the submission, the cancel {cancelled:.1f} s; "
                             f"{_how_it_ended(job_id, batch_client)}") from None
    assert batch.requests_for("Jobs_TerminateJob")
    assert str(batch_client.get_job(job_id).state).lower().rsplit(".", 1)[-1] in ("terminating", "completed")
    summary = store.summary(job_id)
    assert summary.succeeded == 4 and summary.cancelled == 4, summary
    wrong = kernel.run("%azpar rerun nonsense-id --failed")
    assert wrong.status == "error" and "nonsense-id" in _error_text(wrong)


def test_tasks_a_dead_kernel_had_not_added_are_added_by_attach(kernel, job_store, batch, batch_client):
    kernel.ok("scale = 4\nfixed = True")
    batch.fail_requests(r"/addtaskcollection", count=1000, status=503)  # adding backs off and retries
    job_id = _job_id(kernel.ok(f"%%azpar --no-wait -q -o vals for x in range(6):\n{BODY}"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    kernel.km.restart_kernel(now=True)  # killed while its tasks were still being added
    kernel.kc.wait_for_ready(timeout=60)
    assert list(batch_client.list_tasks(job_id)) == []  # the case under test: a job without its tasks
    batch.faults.clear()
    kernel.ok("%load_ext azpar_magic")
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([x * 4 + 1 for x in range(6)])
    added = [t["id"] for rec in batch.requests_for("Tasks_CreateTaskCollection") for t in rec.body["value"]]
    assert sorted(added, key=int) == [str(i) for i in range(1, 7)]  # by the new kernel, each once


def test_tasks_not_added_when_the_kernel_exited_are_added_by_attach(kernel, job_store, batch, batch_client):
    """The same after a graceful exit (atexit runs, the backend closes while its adds are refused and
    retried): no task is recorded as failed on the way out, so attach adds every one."""
    kernel.ok("scale = 4\nfixed = True")
    batch.fail_requests(r"/addtaskcollection", count=1000, status=503)
    job_id = _job_id(kernel.ok(f"%%azpar --no-wait -q -o vals for x in range(6):\n{BODY}"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    _wait_for(lambda: batch.faults.request_faults[0].remaining < 1000, 30, "no add was tried")
    _restart(kernel)
    assert list(batch_client.list_tasks(job_id)) == []
    summary = store.summary(job_id)
    assert (summary.state, summary.failed) == ("running", 0), summary
    batch.faults.clear()
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([x * 4 + 1 for x in range(6)])


def test_attach_names_the_profile_when_this_kernel_cannot_follow_the_job(kernel, job_store, tmp_path):
    kernel.ok("scale = 1\nfixed = True")
    body = "import time\ntime.sleep(30)\nx"
    job_id = _job_id(kernel.ok(f"%%azpar --no-wait -q for x in range(2):\n{body}"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    # Simulate the kernel's end without the exit handlers (a crash), then lose the profile.
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    kernel.ok("import os, pathlib; pathlib.Path(os.environ['XDG_CONFIG_HOME'], 'azpar', 'config.toml').unlink()")
    kernel.ok("%load_ext azpar_magic")
    reply = kernel.run(f"%azpar attach {job_id}")
    text = _error_text(reply)
    assert reply.status == "error" and "cannot follow it" in text and "'test'" in text, text
    # Nothing was taken over: the manifest still names the dead kernel.
    assert _manifest(job_id)["state"] == "running"
    assert storage.input_container(job_id) == f"{job_id}-in"


def test_a_second_kernel_follows_a_job_the_first_still_runs_and_ctrl_c_only_stops_waiting(start_kernel, job_store,
                                                                                         batch):
    first = start_kernel()
    first.ok("scale = 1\nfixed = True")
    body = "import time\ntime.sleep(0.2 if x == 0 else 600)\nx"  # still running at the cancel
    job_id = _job_id(first.ok(f"%%azpar --no-wait -q for x in range(3):\n{body}"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    owner = _manifest(job_id)["owner"]["pid"]
    second = start_kernel()
    reply, _ = _run_interrupted(second, f"%azpar collect {job_id}", after=3)
    assert reply.status == "error" and reply.content.get("ename") == "KeyboardInterrupt", reply.describe()
    assert f"stopped waiting for job {job_id}; it still runs in process {owner}" in reply.stderr, reply.describe()
    # The first kernel still owns and runs it: nothing was cancelled or taken over.
    assert not batch.requests_for("Jobs_TerminateJob")
    assert _manifest(job_id)["owner"]["pid"] == owner and _manifest(job_id)["state"] == "running"
    refused = second.run(f"%azpar cancel {job_id}")
    assert refused.status == "error" and "cancel it there" in _error_text(refused)
    first.ok(f"%azpar cancel {job_id}")
    _wait_for(lambda: _manifest(job_id)["state"] == "cancelled", 60, "the job did not end as cancelled")


def test_a_job_whose_kernel_died_after_its_last_result_is_finished_and_kept_with_its_failures(
        batch, azurite, tmp_path, job_store, batch_client, monkeypatch):
    """Every task's record reached the store, but not the final state (the kernel died in
    the writer's last 50 ms): attach finishes the job from the records alone, and keeps the
    Batch job because an iteration had failed."""
    import azpar_magic

    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite):
        job = azpar_magic.run("for x in range(4)", "if x == 2:\n    raise KeyError(x)\nx * 10",
                              {"__name__": "__main__"}, errors="remove", backend=None)
        assert job.result(60) == [0, 10, 30]
        store.flush()
        _wait_for(lambda: _manifest(job.id)["state"] == "done", 30, "the final state was not stored")
        # As if the kernel had died before writing the end: running, owned by a dead process.
        _as_if_its_kernel_died(job_store, job.id, drop=("counts", "finished", "elapsed"), state="running")
        assert store.summary(job.id).state == "running"

        again = azpar_magic.attach(job.id)
        assert again is not job and again.wait(30) and again.state == "done"
        assert again.result() == [0, 10, 30]
        # the writer thread writes the final manifest within 50 ms of the job's end
        _wait_for(lambda: _manifest(job.id)["state"] == "done", 10, "the final state was not stored")
        assert _manifest(job.id)["owner"]["pid"] != _DEAD_PID
    # (leaving the profile closed its engine, which waits for any cleanup it started)
    assert _job_exists(batch_client, job.id), "a job with a failed iteration must be kept on Azure"


def test_a_kernel_exit_during_a_poll_records_no_failure_and_attach_gets_every_value(
        batch, azurite, tmp_path, job_store, monkeypatch):
    """The kernel's exit closes the Azure backend while its follower waits for a poll whose answer
    shows finished tasks, so the downloads the follower then starts cannot run. That failure was
    recorded for every task whose value had not been read: the job stored as ended with them all
    failed (the values of the finished ones lost to it) while Batch ran on, and the next kernel's
    attach and cancel had nothing to follow (CI caught it once, under load). The job must stay
    running in the store, and a kernel that attaches gets every value."""
    import threading

    import azpar_magic
    from azpar_magic import session

    from .azure_support import azure_profile

    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite):
        job = azpar_magic.run("for x in range(4)", "import time\ntime.sleep(0.2 if x < 2 else 3)\nx * 10",
                              {"__name__": "__main__"}, chunk_size=1, backend=None)
        eng = next(e for e in session.engines() if job.id in e.jobs)
        run = eng.backend._runs[job.id]
        asked, closed = threading.Event(), threading.Event()
        real_counts, real_close = run.client.get_job_task_counts, run.close

        def counts_answered_after_the_exit(job_id, **kwargs):
            answer = real_counts(job_id, **kwargs)
            if answer.task_counts.completed >= 2 and not asked.is_set():
                asked.set()
                closed.wait(30)
            return answer

        def close_then_answer():
            real_close()
            closed.set()
            time.sleep(0.5)  # the follower reads the answer and starts its downloads; then the clients close

        monkeypatch.setattr(run.client, "get_job_task_counts", counts_answered_after_the_exit)
        monkeypatch.setattr(run, "close", close_then_answer)
        assert asked.wait(60), "the quick iterations did not finish"
        session.close()  # what the kernel's exit runs (atexit)
        store.flush()
        assert job.failures == {} and not job.done, job.failures
        summary = store.summary(job.id)
        assert (summary.state, summary.failed, summary.cancelled) == ("running", 0, 0), summary

        # A new kernel attaches (the old one looks dead) and follows the job to its end.
        _as_if_its_kernel_died(job_store, job.id)
        again = azpar_magic.attach(job.id)
        assert again is not job and again.result(60) == [0, 10, 20, 30]
        _wait_for(lambda: _manifest(job.id)["state"] == "succeeded", 10, "the final state was not stored")


def test_tasks_that_finish_while_python_exits_are_not_recorded_as_failed(kernel, job_store, batch, batch_client):
    """Python's exit first stops the thread pools (concurrent.futures refuses new work and joins its
    threads), then waits for the process's other threads, and only then runs atexit, where the
    backend closes. A task that finished in between could not have its result read, and that
    failure was recorded for every task left: the job stored as ended while Batch ran on, so the
    next kernel's attach and cancel found nothing to follow (CI caught it once: a cancelled job
    stored as done). A thread of the notebook's own that ends a few seconds after the kernel holds
    that stretch open here."""
    kernel.ok("scale = 3")
    kernel.ok("%%azpar -q -o warm for x in range(2):\nx")  # the pool is up: the tasks below finish quickly
    body = "import time\ntime.sleep(1.5)\nx * scale + 1"  # they finish after the exit has begun
    job_id = _job_id(kernel.ok(f"%%azpar --no-wait -q -o vals for x in range(4):\n{body}"))
    kernel.ok("import threading, time\n"
              "def _outlive_the_kernel():\n"
              "    while threading.main_thread().is_alive():\n"
              "        time.sleep(0.02)\n"
              "    time.sleep(4)\n"
              "threading.Thread(target=_outlive_the_kernel).start()")
    _restart(kernel)
    summary = store.summary(job_id)
    assert summary.failed == 0 and summary.state in ("running", "succeeded"), _how_it_ended(job_id, batch_client)
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([x * 3 + 1 for x in range(4)])


@pytest.mark.parametrize("size", [0, 12 << 20], ids=["small", "large"])
def test_a_scripts_thread_waiting_on_a_job_gets_its_values_after_the_main_thread_ends(tmp_path, job_store, batch,
                                                                                     azurite, size):
    """A script submits a job and leaves a thread of its own waiting for the result; its main thread then
    ends. Python's exit stops the thread pools and waits for that thread before atexit closes the backend:
    the job must go on being followed meanwhile. The thread got every task as failed ("cannot schedule new
    futures after interpreter shutdown"); after the exit began to detach the runs, it waited forever. A
    result of more than two ranges (4 MB each) is read by a pool of the SDK's own, which the exit stops too."""
    import subprocess
    import sys
    import textwrap

    env = _isolated_env(tmp_path)
    env[store.STORE_ENV] = str(job_store)
    env.update(write_profile_file(Path(env["XDG_CONFIG_HOME"]) / "azpar" / "config.toml", batch, azurite, "test"))
    script = tmp_path / "waits.py"
    script.write_text(textwrap.dedent("""
        import threading
        import azpar_magic
        from azpar_magic import session

        session.use("test")
        scale = 3
        # random bytes: no compression makes them small; a file of them comes back through --outputs
        body = ("import os, time\\ntime.sleep(0.5)\\nopen(f'out-{x}.bin', 'wb').write(os.urandom(SIZE))\\n"
                "(x * scale + 1, os.urandom(SIZE))")
        job = azpar_magic.run("for x in range(4)", body, outputs="out-*.bin")
        print("submitted", job.id, flush=True)
        threading.Thread(target=lambda: print("values", [(v, len(b)) for v, b in job.result()], flush=True)).start()
    """).replace("SIZE", str(size)))
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=150)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script never ended: its thread still waits for the job. Its output: {exc.stdout!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"values {[(x * 3 + 1, size) for x in range(4)]}" in done.stdout, (done.stdout, done.stderr[-3000:])
    job_id = done.stdout.split("submitted ", 1)[1].split()[0]
    assert store.summary(job_id).state == "succeeded"
    came_back = sorted((p.name, p.stat().st_size) for p in (tmp_path / "azpar_outputs" / job_id).rglob("*.bin"))
    assert came_back == [(f"out-{x}.bin", size) for x in range(4)]


def test_a_second_kernel_waiting_on_a_job_takes_it_over_when_the_first_exits(start_kernel, job_store, batch):
    """Kernel B waits (``%azpar collect``) for a job kernel A runs; A exits while the Batch job runs
    on. B's wait must not last forever: B takes the job over and gets every value."""
    import threading

    first = start_kernel()
    first.ok("scale = 2\nfixed = True")
    body = "import time\ntime.sleep(4)\nx * scale"
    job_id = _job_id(first.ok(f"%%azpar --no-wait -q for x in range(4):\n{body}"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    second = start_kernel()
    replies: list = []
    waiter = threading.Thread(target=lambda: replies.append(second.run(f"%azpar collect {job_id} -o vals", 90)))
    waiter.start()
    time.sleep(1.5)  # B is waiting, following A's records
    _restart(first)
    waiter.join(100)
    assert replies and replies[0].status == "ok", replies[0].describe() if replies else "B still waits"
    assert second.value("vals") == repr([x * 2 for x in range(4)])
    _wait_for(lambda: _manifest(job_id)["state"] == "succeeded", 30, "the final state was not stored")

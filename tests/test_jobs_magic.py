"""The job commands of ``%azpar`` through IPython's InteractiveShell: the table, attach,
collect of a stored job, rerun, delete, and the UsageErrors of bad input (each before
anything is submitted or deleted). Restarts with real kernels: test_jobs_kernel.py."""

from __future__ import annotations

import re
import time

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic import jobstore as store, session


@pytest.fixture
def job_store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))
    return root


def _usage_error(run, *fragments: str) -> str:
    assert not run.success, run.stdout
    assert isinstance(run.error, UsageError), f"expected a UsageError, got {run.error!r}"
    message = str(run.error)
    for fragment in fragments:
        assert fragment in message, message
    return message


def _run_job(run_cell, cell: str) -> str:
    before = {j.id for j in azpar_magic.jobs()}
    result = run_cell(cell)
    assert result.success, result.error
    new = [j for j in azpar_magic.jobs() if j.id not in before]
    assert len(new) == 1
    return new[0].id


def test_jobs_table_lists_the_store(ip, run_cell, job_store, monkeypatch):
    monkeypatch.setattr(session, "_jobs", {})  # this process's earlier jobs are listed too: none here
    assert run_cell("%azpar jobs").stdout == f"azpar: no jobs yet (job store: {job_store})\n"
    first = _run_job(run_cell, "%%azpar -q -o t1 for x in range(3):\nx")
    second = _run_job(run_cell, "%%azpar -q --errors remove -o t2 for x in range(4):\n1 / (x - 1)")
    third = _run_job(run_cell, "%%azpar -q --errors pass -o t3 for x in range(4):\n1 / (x - 1)")
    run_cell("%%azpar -q -o t4 for x in range(4):\n1 / (x - 1)")  # --errors stop: the cell raises
    fourth = azpar_magic.jobs()[-1].id
    session.forget(first)  # listed from the store alone
    session.forget(second)
    lines = run_cell("%azpar jobs").stdout.splitlines()
    assert len(lines) == 5, lines
    assert re.fullmatch(r"id +when +backend +state +done/failed/total +cell", lines[0]), lines
    assert re.fullmatch(rf"{first}  \d{{4}}-\d\d-\d\d \d\d:\d\d  local    succeeded +3/0/3 +"
                        r"%%azpar -q -o t1 for x in range\(3\):", lines[1]), lines
    # --errors remove/pass gave the result: the job is done (with 1 failed), not failed.
    assert re.fullmatch(rf"{second} .* done +3/1/4 +%%azpar -q --errors remove -o t2 for x in range\(4\):",
                        lines[2]), lines
    assert re.fullmatch(rf"{third} .* done +3/1/4 +%%azpar -q --errors pass .*", lines[3]), lines
    # (--errors stop may cancel iterations that had not run: the row then says how many)
    assert re.fullmatch(rf"{fourth} .* failed +\d/1/4( \(\d cancelled\))? +%%azpar -q -o t4 .*", lines[4]), lines
    assert store.read_manifest(second)["state"] == "done" and store.read_manifest(fourth)["state"] == "failed"
    assert azpar_magic.attach(second).state == "done" and ip.user_ns["t2"] == [-1.0, 1.0, 0.5]
    _usage_error(run_cell("%azpar jobs everything"), "usage: %azpar jobs [--all]")


def test_map_jobs_are_listed_by_their_call_not_by_the_cell_map_makes(ip, run_cell, job_store, monkeypatch):
    """``%azpar jobs`` and the panel's snapshot name a map job by the call (``azpar_magic.map(simulate, ...)``):
    they showed ``%%azpar for __azpar_item__ in __azpar_items__``, a cell the user never wrote."""
    monkeypatch.setattr(session, "_jobs", {})
    assert run_cell("def simulate(x):\n    return x + 1").success
    assert run_cell("import azpar_magic\nazpar_magic.map(simulate, range(3))").success
    named = azpar_magic.jobs()[-1]
    assert run_cell("azpar_magic.starmap(divmod, [(7, 2)])\nazpar_magic.map(lambda v: v, [1])").success
    starred, nameless = azpar_magic.jobs()[-2:]
    assert named.snapshot().source_first_line == "azpar_magic.map(simulate, ...)"
    assert starred.snapshot().source_first_line == "azpar_magic.starmap(<function>, ...)"
    assert nameless.snapshot().source_first_line == "azpar_magic.map(<function>, ...)"
    session.forget(named.id)  # listed from the store alone
    listed = run_cell("%azpar jobs").stdout
    assert "__azpar" not in listed, listed
    assert re.search(rf"{named.id} .* azpar_magic\.map\(simulate, \.\.\.\)$", listed, re.M), listed
    assert re.search(rf"{starred.id} .* azpar_magic\.starmap\(<function>, \.\.\.\)$", listed, re.M), listed


def test_collect_and_attach_a_job_this_session_no_longer_holds(ip, run_cell, job_store):
    job_id = _run_job(run_cell, "%%azpar -q -o kept for x in range(5):\nprint('it', x)\nx * 11")
    ip.user_ns.pop("kept")
    session.forget(job_id)  # as after a restart: only the store knows it
    collected = run_cell(f"%azpar collect {job_id[-6:]}")
    assert collected.success, collected.error
    assert ip.user_ns["kept"] == [x * 11 for x in range(5)]  # bound under the cell's own -o
    assert collected.stdout == "".join(f"it {x}\n" for x in range(5))  # the output, replayed
    session.forget(job_id)
    attached = run_cell(f"%azpar attach {job_id} -o other")
    assert attached.success and ip.user_ns["other"] == [x * 11 for x in range(5)]


@pytest.mark.timeout(120)
def test_a_kernel_lets_go_of_old_jobs_and_collect_reads_them_back(ip, run_cell, job_store, monkeypatch):
    """A notebook rerunning cells does not grow without bound, and loses nothing: a job the
    kernel let go of is collected from the store with its values."""
    monkeypatch.setattr(session, "KEPT_JOBS", 2)
    monkeypatch.setattr(session, "LET_GO_BATCH", 1)  # a look at each job over the bound
    monkeypatch.setattr(session, "_next_look", 0)  # as an earlier test's look may have left it
    ids = [_run_job(run_cell, f"%%azpar -q -o r{k} for x in range(3):\nx * {k}") for k in range(4)]
    assert store.flush()
    _run_job(run_cell, "%%azpar -q -o last for x in range(1):\nx")
    held = {job.id for job in azpar_magic.jobs()}
    assert ids[0] not in held and ids[1] not in held, held
    for k in (0, 1):
        run = run_cell(f"%azpar collect {ids[k]} -o again")
        assert run.success, run.error
        assert ip.user_ns.pop("again") == [x * k for x in range(3)]
    table = run_cell("%azpar jobs").stdout
    assert all(job_id in table for job_id in ids), table


def test_attach_a_running_job_binds_when_it_ends(ip, run_cell, job_store):
    ip.user_ns.pop("later", None)
    assert run_cell("%%azpar -q --no-wait -o never for x in range(3):\nimport time\ntime.sleep(0.8)\nx + 5").success
    job = azpar_magic.jobs()[-1]
    started = time.monotonic()
    attached = run_cell(f"%azpar attach {job.id} -o later")
    assert attached.success and time.monotonic() - started < 0.5  # the kernel is not held
    assert f"later will be bound when it ends (%azpar collect {job.id} waits for it)" in attached.stdout
    assert "later" not in ip.user_ns
    job.wait(30)
    deadline = time.monotonic() + 5
    while "later" not in ip.user_ns and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ip.user_ns["later"] == [5, 6, 7]
    assert "never" not in ip.user_ns


def test_rerun_failed_binds_the_whole_result(ip, run_cell, job_store):
    ip.run_cell("bad = {1, 4}")
    job_id = _run_job(run_cell, "%%azpar -q --errors remove -o fixed --chunk-size 2 for x in range(6):\n"
                                "if x in bad:\n    raise ValueError(x)\nx * 2")
    assert ip.user_ns["fixed"] == [0, 4, 6, 10]
    _usage_error(run_cell(f"%azpar rerun {job_id} --failed --all"), "usage: %azpar rerun")
    _usage_error(run_cell(f"%azpar rerun {job_id} --bogus"), "unknown option '--bogus'")
    _usage_error(run_cell(f"%azpar rerun {job_id} -o 9x"), "-o needs a variable name")
    ip.run_cell("bad = set()")
    rerun = run_cell(f"%azpar rerun {job_id} --failed")
    assert rerun.success, rerun.error
    assert ip.user_ns["fixed"] == [0, 2, 4, 6, 8, 10]
    assert "runs the 2 failed or missing iterations" in rerun.stdout and "keeps its 4 finished ones" in rerun.stdout
    # Nothing failed or missing now: it says so instead of "runs the 0 failed or missing iterations", and binds
    # the job's values without making a job that holds them again (each such rerun added one to %azpar jobs).
    jobs_before = len(azpar_magic.jobs())
    again = run_cell(f"%azpar rerun {azpar_magic.jobs()[-1].id}")
    assert again.success, again.error
    assert "has no failed or missing iterations, so nothing runs again" in again.stdout, again.stdout
    assert "runs the 0" not in again.stdout and ip.user_ns["fixed"] == [0, 2, 4, 6, 8, 10]
    assert run_cell("%azpar rerun -o whole").success and ip.user_ns["whole"] == [0, 2, 4, 6, 8, 10]
    assert run_cell("%azpar rerun -o whole_now --no-wait -q").success and ip.user_ns["whole_now"] == ip.user_ns["whole"]
    assert ip.last_execution_result.result is azpar_magic.jobs()[-1]
    assert len(azpar_magic.jobs()) == jobs_before, azpar_magic.jobs()
    # --no-wait hands back the job; collect binds it under -o.
    handle = run_cell(f"%azpar rerun {job_id} --all -o again --no-wait -q")
    assert handle.success and isinstance(ip.last_execution_result.result, azpar_magic.Job)
    assert run_cell("%azpar collect").success
    assert ip.user_ns["again"] == [0, 2, 4, 6, 8, 10]


def test_commands_refuse_bad_input_before_doing_anything(ip, run_cell, job_store):
    job_id = _run_job(run_cell, "%%azpar -q -o small for x in range(2):\nx")
    _usage_error(run_cell("%azpar logs a b c"), "usage: %azpar logs [JOB [ITERATION]]")
    _usage_error(run_cell(f"%azpar logs {job_id} first"), "ITERATION is an iteration number", "'first'")
    _usage_error(run_cell(f"%azpar logs {job_id} 2"), "iterations 0 to 1", "no iteration 2")
    _usage_error(run_cell(f"%azpar logs {job_id} -3"), "iterations 0 to 1 (-1 is the last)", "no iteration -3")
    _usage_error(run_cell("%azpar logs azpar-nope"), "no job 'azpar-nope'", job_id)
    _usage_error(run_cell("%azpar attach a b"), "usage: %azpar attach JOB [-o NAME]")
    _usage_error(run_cell("%azpar delete"), "usage: %azpar delete JOB")
    _usage_error(run_cell(f"%azpar delete {job_id} azpar-nope"), "no job 'azpar-nope'", "Nothing was deleted")
    assert (job_store / job_id).exists()
    assert run_cell("%%azpar -q --no-wait for x in range(2):\nimport time\ntime.sleep(1.5)\nx").success
    running = azpar_magic.jobs()[-1]
    jobs_before = len(azpar_magic.jobs())
    _usage_error(run_cell(f"%azpar rerun {running.id}"), "still running", "before a rerun")
    _usage_error(run_cell(f"%azpar delete {running.id}"), "still running", "Nothing was deleted")
    assert len(azpar_magic.jobs()) == jobs_before
    running.wait(30)
    deleted = run_cell(f"%azpar delete {job_id} {running.id}")
    assert deleted.success, deleted.error
    assert not (job_store / job_id).exists() and not (job_store / running.id).exists()
    assert job_id not in {j.id for j in azpar_magic.jobs()}
    _usage_error(run_cell(f"%azpar attach {job_id}"), f"no job {job_id!r}")


def test_logs_without_a_job_shows_the_latest_and_a_bare_number_says_to_name_the_job(ip, run_cell, job_store):
    """`%azpar logs` was a usage error while cancel and collect take the latest job, and
    azpar_magic.logs() does; `%azpar logs 3`, meaning iteration 3, said only that '3' is too short
    for a job id."""
    _run_job(run_cell, "%%azpar -q -o first for x in range(2):\nprint('first', x)")
    job_id = _run_job(run_cell, "%%azpar -q -o second for x in range(3):\nprint('second', x)")
    shown = run_cell("%azpar logs")
    assert shown.success, shown.error
    assert "second 2" in shown.stdout and "first" not in shown.stdout, shown.stdout
    assert shown.stdout == run_cell(f"%azpar logs {job_id}").stdout
    _usage_error(run_cell("%azpar logs 2"), "too short", "give the job first: %azpar logs JOB 2")
    _usage_error(run_cell("%azpar logs -1"), "too short", "give the job first: %azpar logs JOB -1")
    assert "second 2" in run_cell(f"%azpar logs {job_id} 2").stdout
    # -1 is the last iteration, as in a list (it was "no iteration -1")
    last = run_cell(f"%azpar logs {job_id} -1")
    assert last.success, last.error
    assert "second 2" in last.stdout and "second 1" not in last.stdout, last.stdout


def test_cancel_reports_cancelled_iterations_and_tasks_as_cancelled(ip, run_cell, job_store):
    """Nothing failed in a cancelled job whose finished iterations all succeeded: the cancel
    line, the panel's task counts, the store and the table say cancelled, never failed."""
    job_id = _run_job(run_cell, "%%azpar -q --no-wait --workers 2 --chunk-size 1 -o c for i in range(8):\n"
                                "import time\ntime.sleep(0.1 if i < 2 else 30)\ni")
    job = azpar_magic.attach(job_id)
    deadline = time.monotonic() + 30
    while job.snapshot().items_succeeded < 2:
        assert time.monotonic() < deadline, "the quick iterations did not finish"
        time.sleep(0.05)
    line = run_cell(f"%azpar cancel {job_id}").stdout
    assert job.state == "cancelled"
    assert "2/8 done" in line and "6 cancelled" in line and "failed" not in line, line
    assert "already ended" not in line, line
    again = run_cell(f"%azpar cancel {job_id}").stdout  # an ended job: said, not shown as if stopped now
    assert again.startswith(f"azpar: job {job_id} had already ended (cancelled): nothing was cancelled"), again
    snap = job.snapshot()
    assert (snap.items_failed, snap.items_cancelled, snap.tasks_failed, snap.tasks_cancelled) == (0, 6, 0, 6), snap
    from azpar_magic.ui.text import format_text

    text = format_text(snap)
    assert "6 cancelled" in text and "failed or cancelled" not in text and "0 failed" in text, text
    store.flush()
    assert store.read_manifest(job_id)["counts"] == {"succeeded": 2, "failed": 0, "cancelled": 6}
    table = run_cell("%azpar jobs").stdout.splitlines()
    row = next(r for r in table if r.startswith(job_id))
    assert re.search(r" cancelled +2/0/8 \(6 cancelled\) ", row), row  # the 6 cancelled were named nowhere
    reloaded = store.load_job(job_id)  # tasks read back from the store keep their states too
    assert (reloaded.snapshot().tasks_cancelled, reloaded.snapshot().tasks_failed) == (6, 0)


def test_a_stored_failed_job_under_errors_remove_is_listed_as_done(ip, run_cell, job_store):
    """Manifests written before the done state existed say "failed" for a job that gave
    its result under --errors remove/pass: they are read as done."""
    job_id = _run_job(run_cell, "%%azpar -q --errors remove -o t5 for x in range(3):\n1 / (x - 1)")
    store.flush()
    folder = job_store / job_id
    manifest = store.read_manifest(job_id)
    manifest["state"] = "failed"
    store.write_manifest(folder, manifest)
    session.forget(job_id)
    assert store.summary(job_id).state == "done"
    assert store.load_job(job_id).state == "done"

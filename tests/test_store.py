"""The job store (azpar_magic/jobstore/) with real jobs on the local pool: what is written,
with which permissions, and what a process that did not run a job gets back from it.

Each test points AZPAR_JOB_STORE at its own folder. "Another process" is a real one: a
Python subprocess that runs a job and is left to finish, or killed with SIGKILL the way a
kernel restart kills a kernel.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

import azpar_magic
from azpar_magic import jobstore as store, session
from azpar_magic.jobs import LOST
from azpar_magic.jobstore import records as records_mod, writer as writer_mod
from azpar_magic.run import engine as engine_mod

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def job_store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))
    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    return root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fails_on_threes(x):
    if x % 3 == 0:
        raise ValueError(f"no multiples of three: {x}")
    print(f"value {x}")
    return x * 10


# ------------------------------------------------------------------------- what is written


@pytest.mark.timeout(60)
def test_the_manifest_holds_states_as_plain_strings(job_store):
    """States are string enums in memory; on disk a manifest reads as it always did."""
    job = azpar_magic.run("for x in range(3)", "x", {}, workers=1)
    assert job.result(timeout=30) == [0, 1, 2] and store.flush(10)
    text = (job_store / job.id / store.MANIFEST).read_text()
    assert '"state": "succeeded"' in text and "JobState" not in text
    assert store.summary(job.id).state == "succeeded" and type(json.loads(text)["state"]) is str


@pytest.mark.timeout(60)
def test_every_job_is_written_private_with_its_manifest(job_store, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    old_umask = os.umask(0o022)  # what a default account would create: 0755 folders, 0644 files
    try:
        job = azpar_magic.run("for x in range(7)", "_fails_on_threes(x)", {"_fails_on_threes": _fails_on_threes},
                              errors="remove", chunk_size=2, seed=5, workers=2)
        assert job.result(timeout=30) == [10, 20, 40, 50]
        assert store.flush(10)
    finally:
        os.umask(old_umask)
    folder = job_store / "hub-ada" / job.id  # a hub user's jobs go to a folder of their own
    assert _mode(job_store) == 0o700 and _mode(folder.parent) == 0o700 and _mode(folder) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    # The namespace and the modules the job shipped (this file, which defines _fails_on_threes): for debug.
    assert files == sorted([store.MANIFEST, store.RECORDS, store.NAMESPACE_LINK, store.MODULES_LINK])
    assert all(_mode(folder / name) == 0o600 for name in files)
    assert _mode(folder.parent / store.NAMESPACES) == 0o700  # where each distinct namespace is kept once

    manifest = json.loads((folder / store.MANIFEST).read_text())
    assert manifest["id"] == job.id and manifest["backend"] == "local" and manifest["pool"] == "local"
    assert manifest["creator"] == "ada"  # JUPYTERHUB_USER beats the OS user
    assert manifest["items"] == 7 and manifest["tasks"] == 4
    assert manifest["state"] == "done"  # --errors remove gave the result; the counts say 3 failed
    assert manifest["counts"] == {"succeeded": 4, "failed": 3, "cancelled": 0}
    assert manifest["options"]["errors"] == "remove" and manifest["options"]["seed"] == 5
    assert manifest["source"] == "%%azpar for x in range(7)\n_fails_on_threes(x)"
    assert manifest["owner"]["pid"] == os.getpid()
    assert manifest["location"] == {"folder": str(folder), "manifest": "manifest.json", "records": "records.azs"}
    assert manifest["rerun_of"] is None and manifest["ran"] is None
    # The records: the items per task (with its id), then a result per task, logs where printed.
    headers = [h for h, _, _ in store.iter_records((folder / store.RECORDS).read_bytes(), len(store.FILE_MAGIC))]
    items = [(h["t"], h["r"]) for h in headers if h["k"] == "items"]
    assert items == [("1", [0, 2]), ("2", [2, 4]), ("3", [4, 6]), ("4", [6, 7])]
    assert sorted(h["t"] for h in headers if h["k"] == "result") == ["1", "2", "3", "4"]
    assert {h["t"] for h in headers if h["k"] == "logs"} == {"1", "2", "3", "4"}


@pytest.mark.timeout(60)
def test_a_stored_job_rebuilds_values_failures_output_and_gathered(job_store):
    ns = {"_fails_on_threes": _fails_on_threes}
    job = azpar_magic.run("for x in range(8)", "y = x + 100\n_fails_on_threes(x)", ns, errors="pass",
                          gather=["y"], chunk_size=3, workers=2)
    expected = job.result(timeout=30)
    loaded = store.load_job(job.id)
    assert loaded is not job and loaded.state == job.state == "done"
    got = loaded.result()
    assert [v for v in got if not isinstance(v, Exception)] == [v for v in expected if not isinstance(v, Exception)]
    assert [repr(v) for v in got] == [repr(v) for v in expected]  # exceptions stand in, rebuilt
    assert loaded.gathered() == job.gathered() == {"y": [x + 100 for x in range(8)]}
    assert sorted(loaded.failures) == [0, 3, 6]
    assert loaded.failures[3].traceback == job.failures[3].traceback
    assert "ValueError: no multiples of three: 3" in loaded.failures[3].traceback
    assert loaded.output(4) == job.output(4) == "value 4\n"
    assert loaded.logs() == job.logs()
    assert loaded.items == tuple(range(8))
    assert loaded.snapshot().items_done == 8 and loaded.snapshot().tasks_total == 3


@pytest.mark.timeout(120)
def test_large_items_and_values_are_written_from_their_own_memory_and_read_back_whole(job_store, monkeypatch):
    """A job iterating over arrays of a few MB and returning arrays: the store writes each task's items and
    values from their own memory. It joined them, twice, into one buffer of all of them on the way to the
    file: a job over 20 arrays of 20 MB peaked 1.6 GB over the kernel's memory (issue 16)."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(300_000, i, dtype=np.float64) for i in range(6)]  # 2.4 MB each, 4.8 MB a task
    writes: list[int] = []
    real = records_mod.write_all

    def counted(fd, data):
        writes.append(len(data))
        real(fd, data)

    monkeypatch.setattr(records_mod, "write_all", counted)
    job = azpar_magic.run("for a in arrays", "a * 2", {"arrays": arrays}, workers=2, chunk_size=2)
    assert len(job.result(timeout=60)) == 6 and store.flush(30)
    assert writes and max(writes) < 6_000_000, f"a write joined several tasks' arrays: {max(writes):,} bytes"
    loaded = store.load_job(job.id)
    assert loaded is not job
    assert all(np.array_equal(a, b) for a, b in zip(loaded.items, arrays))
    assert all(np.array_equal(v, a * 2) for v, a in zip(loaded.result(timeout=10), arrays))
    # A result that printed is formatted on the thread reading the workers' replies: the same, read back.
    printed = azpar_magic.run("for a in arrays", "print(a[0])\na + 1", {"arrays": arrays}, workers=2, chunk_size=2)
    out = printed.result(timeout=60)
    assert store.flush(30) and all(np.array_equal(v, a + 1) for v, a in zip(out, arrays))
    out[0][0] = -1.0  # the values are the kernel's own: the store keeps what the workers sent
    again = store.load_job(printed.id)
    assert again.output(5) == "5.0\n" and [float(v[0]) for v in again.result(timeout=10)] == [1.0, 2, 3, 4, 5, 6]


@pytest.mark.timeout(120)
def test_large_items_are_kept_once_per_content_and_dropped_with_their_last_job(job_store):
    """A cell over arrays of a few MB, run again: the store keeps each task's items once per content, as it
    keeps namespaces, linked into each job's folder; it added them all to the store at each run (400 MB a
    run for 20 arrays of 20 MB, issue 16). A rerun keeps the items it imported when the earlier job is
    deleted, and the last job that links them takes them with it."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(200_000, float(i)) for i in range(4)]  # 1.6 MB each, 3.2 MB a task
    ns = {"arrays": arrays}
    body = "if float(a[0]) == 3.0 and not globals().get('FIXED'):\n    raise ValueError('three')\nfloat(a[0])"
    first = azpar_magic.run("for a in arrays", body, ns, workers=2, chunk_size=2, errors="pass")
    again = azpar_magic.run("for a in arrays", body, ns, workers=2, chunk_size=2, errors="pass")
    assert first.result(timeout=60)[:3] == again.result(timeout=60)[:3] == [0.0, 1.0, 2.0] and store.flush(30)
    kept = sorted((job_store / "namespaces").glob("items-*.bin"))
    assert len(kept) == 2 and all(k.stat().st_nlink == 3 for k in kept), "each task's items once, linked twice"
    assert all((job_store / j.id / store.RECORDS).stat().st_size < 100_000 for j in (first, again))
    ns["FIXED"] = True
    rerun = azpar_magic.rerun(first.id, namespace=ns)  # runs iteration 3 again, imports the others' records
    assert rerun.result(timeout=60) == [0.0, 1.0, 2.0, 3.0] and store.flush(30)
    store.delete(first.id)
    store.delete(again.id)
    assert all(k.exists() for k in kept), "the rerun still links the items it imported"
    loaded = store.load_job(rerun.id)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.items, arrays))
    store.delete(rerun.id)
    assert not any(k.exists() for k in kept), "the last job's delete takes its kept items"


@pytest.mark.timeout(120)
def test_a_rerun_is_stored_though_the_earlier_jobs_kept_items_are_gone(job_store):
    """A rerun links the kept items of the records it imports; one that is gone (removed by hand, or a file
    system that lost it) leaves those items missing in the rerun, not the rerun unstored."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(200_000, float(i)) for i in range(4)]
    ns = {"arrays": arrays}
    body = "if float(a[0]) == 3.0 and not globals().get('FIXED'):\n    raise ValueError('three')\nfloat(a[0])"
    first = azpar_magic.run("for a in arrays", body, ns, workers=2, chunk_size=2, errors="pass")
    assert first.result(timeout=60)[:3] == [0.0, 1.0, 2.0] and store.flush(30)
    for kept in [*(job_store / "namespaces").glob("items-*.bin"), *(job_store / first.id).glob("items-*.bin")]:
        kept.unlink()
    ns["FIXED"] = True
    rerun = azpar_magic.rerun(first.id, namespace=ns)
    assert rerun.result(timeout=60) == [0.0, 1.0, 2.0, 3.0] and store.flush(30)
    assert rerun.store_error is None and rerun.stored == str(job_store)
    items = store.load_job(rerun.id).items
    assert isinstance(items[0], store.MissingItem) and np.array_equal(items[3], arrays[3])


@pytest.mark.timeout(120)
def test_a_new_job_waits_while_the_store_is_far_behind_with_large_items(job_store, monkeypatch, capfd):
    """The store holds each job's items until they are on disk. A cell over 20 arrays of 20 MB, run again
    and again, ran faster than the disk took each run's 400 MB, and the kernel held every run's bytes
    meanwhile (+1.5 GB after six runs, issue 16). A job now starts only once the store holds fewer than
    BACKLOG_LIMIT bytes of earlier jobs' large items and values unwritten."""
    np = pytest.importorskip("numpy")
    arrays = [np.full(200_000, i, dtype=np.float64) for i in range(2)]  # 1.6 MB each
    monkeypatch.setattr(writer_mod, "BACKLOG_LIMIT", 1 << 20, raising=False)
    monkeypatch.setattr(writer_mod, "SAY_WAITING_AFTER", 0.05, raising=False)  # a wait this long is said
    real_write = records_mod.write_all

    def slow_disk(fd, data):
        if len(data) >= records_mod.LARGE_PIECE:
            time.sleep(0.3)
        real_write(fd, data)

    monkeypatch.setattr(records_mod, "write_all", slow_disk)
    ids: list[str] = []
    unwritten: list[list[str]] = []  # when each job started, the earlier jobs whose items were not on disk yet
    real_start = store.start_recording

    def written(job_id: str) -> bool:  # its items (3.2 MB) are on disk: in its records, or kept once (linked)
        path = job_store / job_id / store.RECORDS
        kept = len(list((job_store / job_id).glob("items-*.bin"))) == 2
        return path.exists() and (path.stat().st_size > 3_200_000 or kept)

    def start_recording(job, **kwargs):
        unwritten.append([i for i in ids if not written(i)])
        ids.append(job.id)
        return real_start(job, **kwargs)

    monkeypatch.setattr(store, "start_recording", start_recording)
    for _ in range(3):
        job = azpar_magic.run("for a in arrays", "float(a[0])", {"arrays": arrays}, workers=2, chunk_size=1)
        assert job.result(timeout=60) == [0.0, 1.0]
    assert store.flush(30) and unwritten == [[], [], []], unwritten
    assert "azpar: waiting for the job store to write 3 MB of earlier jobs' items" in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_a_torn_last_record_is_ignored(job_store):
    job = azpar_magic.run("for x in range(6)", "x * 2", {}, chunk_size=2, workers=2)
    assert job.result(timeout=30) == [0, 2, 4, 6, 8, 10]
    store.flush()
    results = job_store / job.id / store.RECORDS
    whole = results.read_bytes()
    # A writer killed in the middle of its next record: a header promising more than is there.
    with open(results, "ab") as fh:
        fh.write(store.RECORD.pack(10, 1000) + b'{"t":"9"')
    assert store.load_job(job.id).result() == [0, 2, 4, 6, 8, 10]
    results.write_bytes(whole[:-5])  # the last real record torn: its two iterations are missing
    torn = store.load_job(job.id)
    assert len(torn.partial_results()) == 4
    assert all(v == i * 2 for i, v in torn.partial_results().items())
    assert store.summary(job.id).succeeded == 6  # the manifest's final counts, kept apart


@pytest.mark.timeout(60)
def test_a_store_that_cannot_be_written_never_fails_the_job(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(store.STORE_ENV, str(blocker / "jobs"))
    job = azpar_magic.run("for x in range(5)", "x + 1", {}, workers=2)
    assert job.result(timeout=30) == [1, 2, 3, 4, 5]
    store.flush()
    assert job.store_error and "NotADirectoryError" in job.store_error
    assert "could not keep job" in capfd.readouterr().err
    assert azpar_magic.attach(job.id) is job  # still there for this session


class _Result(dict):
    """A result dict that can be watched with a weak reference (a plain dict cannot)."""


@pytest.mark.timeout(60)
def test_no_result_dict_waits_for_the_writer(job_store, monkeypatch):
    """A finished task's records are formatted as it arrives and only their bytes wait for the writer's
    next tick: result dicts held until then outlived the collector's young generations and set off full
    collections of the kernel's heap (issue 16, a'). The store still has every value afterwards."""
    tick = writer_mod.COALESCE
    monkeypatch.setattr(writer_mod, "COALESCE", 30.0)  # the writer's ticks, from its next one on: none during the job
    alive = []
    real = writer_mod.JobRecorder.task_result

    def watched(self, task_id, indices, result):
        result = _Result(result)
        alive.append(weakref.ref(result))
        real(self, task_id, indices, result)

    monkeypatch.setattr(writer_mod.JobRecorder, "task_result", watched)
    time.sleep(2 * tick)  # a tick already waiting ends with its old wait
    job = azpar_magic.run("for x in range(40)", "x * 3", {}, chunk_size=1, workers=2)
    assert job.result(timeout=30) == [x * 3 for x in range(40)]
    assert len(alive) == 40 and [ref for ref in alive if ref() is not None] == []
    assert store.flush()
    assert store.load_job(job.id).result() == [x * 3 for x in range(40)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("n", "chunk", "writer_formats"), [(6, 1, False), (300, 100, True)])
def test_a_result_is_formatted_where_its_size_says_and_read_back_whole(job_store, monkeypatch, n, chunk, writer_formats):
    """Results of one iteration come by thousands a second: formatted as they arrive, on the engine's
    thread. A result of many iterations (writer_mod.DEFERRED_ITERATIONS) is formatted on the writer's,
    off the path of the cell's last result (issue 16, a). Either way the store gives every value back."""
    threads = []
    real = writer_mod.JobRecorder._result_records

    def watched(self, task_id, indices, result):
        threads.append(threading.current_thread().name)
        return real(self, task_id, indices, result)

    monkeypatch.setattr(writer_mod.JobRecorder, "_result_records", watched)
    job = azpar_magic.run(f"for x in range({n})", "x * 3", {}, chunk_size=chunk, workers=2)
    assert job.result(timeout=30) == [x * 3 for x in range(n)]
    assert store.flush()
    assert len(threads) == n // chunk
    assert {name == "azpar-job-store" for name in threads} == {writer_formats}
    assert store.load_job(job.id).result() == [x * 3 for x in range(n)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("n", "chunk"), [(6, 2), (300, 100)])  # formatted on the engine's thread, on the writer's
def test_a_result_the_store_cannot_format_never_fails_the_job(job_store, monkeypatch, capfd, n, chunk):
    """A record that cannot be formatted, on whichever thread, is the store's failure, said once, and
    the job's values are all there in this session."""
    real = writer_mod.JobRecorder._result_records

    def broken(self, task_id, indices, result):
        if task_id == "2":
            raise ValueError("this record cannot be formatted")
        return real(self, task_id, indices, result)

    monkeypatch.setattr(writer_mod.JobRecorder, "_result_records", broken)
    job = azpar_magic.run(f"for x in range({n})", "x * 2", {}, chunk_size=chunk, workers=2)
    assert job.result(timeout=30) == [x * 2 for x in range(n)]
    assert store.flush()
    assert job.store_error and "this record cannot be formatted" in job.store_error
    assert "could not keep job" in capfd.readouterr().err
    assert not job.failures


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a folder away")
def test_a_store_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o755)
    os.chown(root, 4242, 4242)
    monkeypatch.setenv(store.STORE_ENV, str(root))
    with pytest.raises(store.StoreError, match="belongs to another user"):
        store.ensure_root()
    job = azpar_magic.run("for x in range(3)", "x", {}, workers=2)
    assert job.result(timeout=30) == [0, 1, 2]
    store.flush()
    assert "belongs to another user" in (job.store_error or "")
    assert list(root.iterdir()) == []


def test_an_existing_folder_open_to_others_is_refused_and_left_as_it_is(job_store, capfd):
    """$AZPAR_JOB_STORE naming a folder of the user's that others may enter: its mode is
    never changed (before: silently chmod-ed to 0700); the jobs run, the store says why it
    cannot keep them and how to fix it, and nothing is written there."""
    job_store.mkdir(mode=0o755)
    os.chmod(job_store, 0o755)
    (job_store / "notes.txt").write_text("the user's own file")
    store.checked_roots.discard(str(job_store))
    with pytest.raises(store.StoreError, match=r"open to other users \(mode 0755\).*chmod 700"):
        store.ensure_root()
    assert _mode(job_store) == 0o755
    job = azpar_magic.run("for x in range(3)", "x * 2", {}, workers=2)
    assert job.result(timeout=30) == [0, 2, 4]
    store.flush()
    assert "open to other users" in (job.store_error or "")
    assert "open to other users" in capfd.readouterr().err
    assert _mode(job_store) == 0o755 and sorted(p.name for p in job_store.iterdir()) == ["notes.txt"]
    # Made private by its owner, it is used as it is.
    os.chmod(job_store, 0o700)
    store.checked_roots.discard(str(job_store))
    store.warned_roots.discard(str(job_store))
    job = azpar_magic.run("for x in range(3)", "x * 3", {}, workers=2)
    assert job.result(timeout=30) == [0, 3, 6]
    store.flush()
    assert job.store_error is None and (job_store / job.id / store.MANIFEST).exists()
    assert _mode(job_store) == 0o700


def test_bad_input_leaves_nothing_in_the_store(job_store):
    with pytest.raises(ValueError, match="could not be evaluated"):
        azpar_magic.run("for x in undefined_name", "x", {}, workers=2)
    store.flush()
    assert not job_store.exists() or list(job_store.iterdir()) == []


def test_job_ids_are_unguessable_and_unique():
    ids = {engine_mod.new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(store.valid_id(i) and len(i.rsplit("-", 1)[1]) == 12 for i in ids)  # 48 random bits each


# ------------------------------------------------------------------------- lost and found


def test_owner_alive_tells_a_reused_pid_from_the_same_process():
    me = store.owner()
    assert store.owner_alive(me) is True
    assert store.owner_alive({**me, "start": "1"}) is False  # the pid now names another process
    assert store.owner_alive({**me, "boot": "another-boot"}) is False
    assert store.owner_alive({**me, "host": "elsewhere.example"}) is None  # cannot tell from here
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert store.owner_alive({**me, "pid": int(done.stdout)}) is False


def test_one_process_of_many_claims_a_job_whose_kernel_ended(tmp_path):
    """Kernels that notice together that a job's kernel ended (two attaches, or kernels that were
    waiting on it): exactly one may take it over, until it gives the claim back."""
    dead = {**store.owner(), "start": "1"}  # this pid with another start time: a process that ended
    manifest = {"owner": dead}
    claim = textwrap.dedent(f'''
        import sys, time
        from pathlib import Path
        from azpar_magic import jobstore
        time.sleep(max(0.0, {time.time() + 1.0} - time.time()))  # about at once
        print(jobstore.claim_takeover(Path(sys.argv[1]), {manifest!r}), flush=True)
        sys.stdin.read()  # alive until every one has tried
    ''')
    racers = [subprocess.Popen([sys.executable, "-c", claim, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(5)]
    answers = [r.stdout.readline().strip() for r in racers]
    for r in racers:
        r.communicate(timeout=60)
    assert sorted(answers) == ["False"] * 4 + ["True"], answers
    # That claimer ended without taking the job over (its owner entry never reached the manifest):
    # its claim is broken and the job claimed again, once.
    assert store.claim_takeover(tmp_path, manifest) is True
    assert store.claim_takeover(tmp_path, manifest) is False  # this process's claim: alive
    store.release_takeover(tmp_path, manifest)  # it could not follow the job after all
    assert store.claim_takeover(tmp_path, manifest) is True
    # The end of a later owner is claimed anew.
    assert store.claim_takeover(tmp_path, {"owner": {**dead, "pid": dead["pid"] + 1}}) is True


_RUNNER = textwrap.dedent('''
    import sys, time
    import azpar_magic
    from azpar_magic import jobstore as store

    n, delay = int(sys.argv[1]), float(sys.argv[2])
    FAIL3, POINTS = "fail3" in sys.argv, "points" in sys.argv

    class Point:
        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return type(other).__name__ == "Point" and other.x == self.x

    def body_value(x):
        if x == 3 and FAIL3:
            raise KeyError(f"iteration {x} fails")
        print(f"computing {x}")
        return Point(x) if POINTS else x * x

    # The namespace is this script's globals, as a notebook's would be.
    job = azpar_magic.run("for x in range(n)", "import time\\ntime.sleep(delay)\\nbody_value(x)",
                          chunk_size=1, workers=2, errors="remove")
    print(job.id, flush=True)
    job.wait()
    store.flush()
    print("finished", job.state, flush=True)
''')


def _start_runner(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, *args], stdout=subprocess.PIPE, text=True,
                            cwd=str(ROOT), env=dict(os.environ))
    job_id = proc.stdout.readline().strip()
    assert job_id.startswith("azpar-"), job_id
    deadline = time.monotonic() + 20
    while not (store.store_root() / job_id / store.MANIFEST).exists():
        assert time.monotonic() < deadline, "the job's manifest never appeared"
        time.sleep(0.02)
    return proc, job_id


@pytest.mark.timeout(120)
def test_a_job_whose_process_was_killed_is_lost_and_rerun_completes_it(job_store):
    proc, job_id = _start_runner("16", "0.25")
    try:
        deadline = time.monotonic() + 30
        while store.summary(job_id).succeeded < 4:
            assert time.monotonic() < deadline, "no iteration finished"
            time.sleep(0.02)
        assert store.summary(job_id).state == "running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    row = store.summary(job_id)
    assert row.state == LOST and 4 <= row.succeeded < 16 and row.failed == 0
    lost = azpar_magic.attach(job_id)
    assert lost.state == LOST and lost.done
    finished = lost.partial_results()
    assert len(finished) == row.succeeded and all(v == i * i for i, v in finished.items())
    with pytest.raises(azpar_magic.JobLost, match=rf"rerun {job_id} --failed"):
        lost.result()

    again = azpar_magic.rerun(job_id, namespace={"delay": 0.0, "body_value": lambda x: x * x})
    assert again.result(timeout=60) == [x * x for x in range(16)]
    assert again.rerun_of == job_id
    store.flush()
    manifest = store.read_manifest(again.id)
    assert manifest["rerun_of"] == job_id
    assert store.from_runs(manifest["ran"]) == set(range(16)) - set(finished)  # only what was missing
    # The rerun's own folder is complete: it does not need the lost job any more.
    azpar_magic.delete(job_id)
    assert not (job_store / job_id).exists()
    session.forget(again.id)
    assert azpar_magic.attach(again.id).result() == [x * x for x in range(16)]


@pytest.mark.timeout(120)
def test_attach_follows_a_job_another_process_runs(job_store):
    proc, job_id = _start_runner("10", "0.2")
    try:
        job = azpar_magic.attach(job_id)
        assert not job.done and job.owner.startswith("process ")
        with pytest.raises(ValueError, match="cancel it there"):
            azpar_magic.cancel(job_id)
        with pytest.raises(ValueError, match="still running"):
            azpar_magic.delete(job_id)
        assert job.result(timeout=60) == [x * x for x in range(10)]
        assert job.state == "succeeded"
        assert job.output(7) == "computing 7\n"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(120)
def test_logs_need_no_values_and_values_need_their_class(job_store, monkeypatch):
    proc, job_id = _start_runner("6", "0", "points", "fail3")
    assert proc.wait(60) == 0
    # Point was defined in the other process's __main__, not here: logs still read.
    text = azpar_magic.logs(job_id, 3)
    assert text.startswith("--- iteration 3 (item 3): failed ---\n")
    assert "KeyError: 'iteration 3 fails'" in text
    assert azpar_magic.logs(job_id, 4) == "--- iteration 4 (item 4): succeeded ---\ncomputing 4\n"
    with pytest.raises(IndexError, match="no iteration 6"):
        azpar_magic.logs(job_id, 6)
    with pytest.raises(store.StoreError, match="Point"):
        store.load_job(job_id)

    class Point:
        def __init__(self, x):
            self.x = x

    Point.__qualname__ = "Point"
    monkeypatch.setattr(sys.modules["__main__"], "Point", Point, raising=False)
    job = store.load_job(job_id)
    values = job.result()
    assert [type(v) for v in values] == [Point] * 5 and [v.x for v in values] == [0, 1, 2, 4, 5]


# ------------------------------------------------------------------------- rerun and delete


@pytest.mark.timeout(60)
def test_rerun_failed_merges_in_order_and_chains(job_store):
    ns = {"broken": {2, 5, 6, 9}}
    body = "if x in broken:\n    raise RuntimeError(x)\nx * 3"
    first = azpar_magic.run("for x in range(12)", body, ns, errors="remove", chunk_size=4, workers=2)
    assert first.result(timeout=30) == [x * 3 for x in range(12) if x not in {2, 5, 6, 9}]
    ns["broken"] = {9}  # fix some of the causes
    second = azpar_magic.rerun(first.id, namespace=ns)
    assert second.result(timeout=30) == [x * 3 for x in range(12) if x != 9]
    assert sorted(second.failures) == [9]
    ns["broken"] = set()
    third = azpar_magic.rerun(second.id, namespace=ns)
    assert third.result(timeout=30) == [x * 3 for x in range(12)]
    assert sum(len(t.indices) for t in third.tasks.values()) == 1  # only iteration 9 ran
    store.flush()
    assert store.from_runs(store.read_manifest(third.id)["ran"]) == {9}
    assert store.load_job(third.id).result() == [x * 3 for x in range(12)]
    assert store.summary(third.id).succeeded == 12
    # Output of iterations kept from earlier runs stays readable in the last one.
    assert third.logs(9).startswith("--- iteration 9 (item 9): succeeded ---")
    assert "RuntimeError: 2" in first.logs(2) and "succeeded" in third.logs(2)


@pytest.mark.timeout(60)
def test_rerun_all_and_nothing_to_rerun(job_store):
    ns = {"k": 2}
    first = azpar_magic.run("for x in range(5)", "x * k", ns, workers=2)
    assert first.result(timeout=30) == [0, 2, 4, 6, 8]
    ns["k"] = 3
    same = azpar_magic.rerun(first.id, namespace=ns)  # nothing failed: the earlier values, at once
    assert same.result(timeout=30) == [0, 2, 4, 6, 8] and not same.tasks
    fresh = azpar_magic.rerun(first.id, failed=False, namespace=ns)
    assert fresh.result(timeout=30) == [0, 3, 6, 9, 12]


def test_rerun_of_a_running_job_is_refused(job_store):
    job = azpar_magic.run("for x in range(2)", "import time\ntime.sleep(1.5)\nx", {}, workers=2)
    with pytest.raises(ValueError, match="still running"):
        azpar_magic.rerun(job.id, namespace={})
    job.result(timeout=30)


def test_chunk_subset_keeps_contiguous_chunks_as_ranges():
    assert engine_mod.chunk_subset([9, 2, 3, 4, 7], 3) == [range(2, 5), [7, 9]]
    assert engine_mod.chunk_subset([5], 4) == [range(5, 6)]


@pytest.mark.timeout(60)
def test_unknown_and_ambiguous_ids_name_the_known_ones(job_store):
    job = azpar_magic.run("for x in range(2)", "x", {}, workers=2)
    job.result(timeout=30)
    with pytest.raises(KeyError) as info:
        azpar_magic.attach("no-such-job")
    assert "no-such-job" in info.value.args[0] and job.id in info.value.args[0]
    with pytest.raises(KeyError):
        azpar_magic.delete("no-such-job")
    assert (job_store / job.id).exists()


@pytest.mark.parametrize("blank", ["", " "])
def test_an_empty_id_names_no_job_not_the_only_one(job_store, blank):
    """An empty id is the start and the end of every id: with one job in the store and in the
    session, delete("") deleted it and attach("") found it."""
    job = azpar_magic.run("for x in range(2)", "x", {}, workers=2)
    job.result(timeout=30)
    store.flush()
    for call in (azpar_magic.attach, azpar_magic.delete, azpar_magic.logs):
        with pytest.raises(KeyError, match="an empty job id names no job"):
            call(blank)
    session.forget(job.id)  # the store alone
    with pytest.raises(KeyError, match="an empty job id names no job"):
        azpar_magic.delete(blank)
    assert (job_store / job.id).exists()
    assert azpar_magic.attach(job.id[-6:]).id == job.id  # a real end of an id still names it


def test_a_few_characters_of_an_id_name_no_job(job_store):
    """An id's end was a shortcut however short: with one job, ``delete(job.id[-1])`` (a stray
    "2") deleted it. Fewer than MIN_ID_PART characters now name no job, in the session and in the
    store; that many still do, and so does a short --name."""
    job = azpar_magic.run("for x in range(2)", "x", {}, workers=2)
    job.result(timeout=30)
    named = azpar_magic.map(abs, [-1], name="ab", wait=False)
    named.result(timeout=30)
    store.flush()
    short = job.id[-(store.MIN_ID_PART - 1) :]
    for call in (azpar_magic.attach, azpar_magic.delete, azpar_magic.logs):
        with pytest.raises(KeyError, match=f"'{short}' is too short to name a job"):
            call(short)
    session.forget(job.id)  # the store alone
    with pytest.raises(KeyError, match=f"'{short}' is too short to name a job"):
        azpar_magic.delete(short)
    assert (job_store / job.id).exists()
    assert azpar_magic.attach(job.id[-store.MIN_ID_PART :]).id == job.id  # enough of its end names it
    assert azpar_magic.attach("ab").id == named.id  # a name is not a part of an id: any length


def test_a_job_id_that_is_not_a_string_is_a_type_error(job_store):
    """It was an AttributeError or a TypeError from inside the lookup (``str.endswith(123)``)."""
    for call in (azpar_magic.attach, azpar_magic.delete, azpar_magic.logs, azpar_magic.cancel):
        with pytest.raises(TypeError, match="a job is named by its id or --name, a string, not int 123"):
            call(123)


@pytest.mark.parametrize(
    ("kind", "task_id", "indices", "field", "value"),
    [
        ("items", "1", range(0, 1), "codec", "pickle"),
        ("items", "12", range(100, 1350), "codec", "dill"),
        ("result", "7", range(6, 7), "failed", 0),
        ("result", "t\u00e9\"\\", range(3, 9), "failed", 2),  # a task id that JSON must escape
        ("result", "3", [4, 9, 11], "failed", 1),  # a rerun's scattered iterations: the list form
        ("items", "4", range(0, 10, 2), "codec", "pickle"),  # a range with a step is a list too
    ],
)
def test_a_task_record_is_byte_for_byte_what_the_generic_record_writes(kind, task_id, indices, field, value):
    from azpar_magic.jobstore.records import indices_header, iter_records, record, task_record

    body = b"\x80\x05body"
    fast = task_record(kind, task_id, indices, field, value, body)
    assert fast == record({"k": kind, "t": task_id, **indices_header(indices), field: value}, body)
    [(header, read_body, _)] = list(iter_records(fast))
    assert header["t"] == task_id and list(store.indices_of(header)) == list(indices) and bytes(read_body) == body


def test_a_results_logs_repeat_small_exceptions_but_not_large_ones():
    # The logs record keeps the failures as the worker described them (a copy of each without its
    # exception was ~0.5 us a failure on the reading thread); an exception carrying much (an array in its
    # arguments) is not written twice.
    import pickle

    from azpar_magic import worker

    recorder = writer_mod.JobRecorder.__new__(writer_mod.JobRecorder)  # (_result_records reads nothing of it)
    small = worker._plain_exception(KeyError("k"))
    large = ("pickle", pickle.dumps(ValueError(b"x" * 100_000)))
    for exc, repeated in ((small, True), (large, False)):
        failed = {i: {"type": "builtins.KeyError", "message": "m", "traceback": "tb", "line": 1, "exc": exc}
                  for i in range(3)}
        result = {"values": ["all", "pickle", pickle.dumps([None] * 3)], "failed": failed}
        data = recorder._result_records("1", range(3), result)
        logs = [pickle.loads(body) for header, body, *_ in records_mod.walk(data, 0) if header.get("k") == "logs"]
        (logged,) = logs
        assert sorted(logged["failures"]) == [0, 1, 2]
        assert all(rec["message"] == "m" and rec["traceback"] == "tb" for rec in logged["failures"].values())
        assert ("exc" in logged["failures"][0]) == repeated
        assert len(data) < 2 * len(large[1])


def test_every_option_of_a_job_survives_the_manifest():
    """A job read back in a new kernel (``%azpar rerun``, ``collect``) has the options it ran with: each
    field of JobOptions given a value other than its default comes back equal (``max_cost`` and ``cache``
    were left out of the manifest, so a rerun in a new kernel ran uncapped)."""
    import dataclasses

    from azpar_magic.jobs.job import JobOptions

    given = {
        "combine": "sum", "errors": "pass", "gather": ("a", "b"), "retries": 5, "timeout": 90.0, "chunk_size": 7,
        "seed": 11, "output_name": "out", "inputs": ("parts/part-{i}.csv",), "outputs": ("*.png",),
        "outputs_to": "elsewhere", "name": "sweep-2", "cache": True, "max_cost": 12.5,
    }
    fields = {f.name: f for f in dataclasses.fields(JobOptions)}
    assert set(given) == set(fields), set(fields) ^ set(given)  # a new option is added here too
    for name, value in given.items():
        assert value != fields[name].default, name
    options = JobOptions(**given)
    assert store.options_from_json(json.loads(json.dumps(store.options_to_json(options)))) == options

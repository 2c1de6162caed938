"""Jobs that outlive their kernel, through real ipykernel kernels restarted the way the
notebook's "Restart kernel" does it (``KernelManager.restart_kernel(now=True)``: SIGKILL,
then a new kernel process with the same environment).

Each test gets its own kernel and its own job store (AZPAR_JOB_STORE); this process reads
the same store to know when to restart, and what had finished before the restart.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from azpar_magic import jobstore as store

from .test_kernel import _ANSI, Kernel, _isolated_env, _stop

manager = pytest.importorskip("jupyter_client.manager")


@pytest.fixture
def job_store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv(store.STORE_ENV, str(root))  # for this process's reads
    return root


@pytest.fixture
def kernel(tmp_path, job_store):
    env = _isolated_env(tmp_path)  # no AZPAR_* from outside, then this test's store
    env[store.STORE_ENV] = str(job_store)
    (tmp_path / "cwd").mkdir()
    km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd=str(tmp_path / "cwd"))
    k = Kernel(km, kc)
    try:
        k.ok("%load_ext azpar_magic")
        yield k
    finally:
        _stop(k)


def _restart(kernel: Kernel) -> None:
    pid_before = kernel.value("__import__('os').getpid()")
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.value("__import__('os').getpid()") != pid_before
    assert kernel.value("'azpar_magic' in __import__('sys').modules") == "False"
    kernel.ok("%load_ext azpar_magic")


def _job_id(reply) -> str:
    text = reply.results[0]["text/plain"] if reply.results else reply.stdout
    found = re.search(r"azpar-[a-z0-9]+-\d{8}-\d{6}-[0-9a-f]{12}", text)
    assert found, reply.describe()
    return found.group(0)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _error_text(reply) -> str:
    return _ANSI.sub("", "\n".join(reply.content.get("traceback", [])) + reply.content.get("evalue", ""))


BODY = '''import time
time.sleep(0.15)
if x in (3, 8):
    print(f"about to fail on {x}")
    raise ValueError(f"cannot take {x}")
print(f"ok {x}")
x ** 2 + 1'''


@pytest.mark.timeout(240)
def test_no_wait_job_attached_after_a_restart_and_its_logs(kernel, job_store):
    submitted = kernel.ok(f"%%azpar --no-wait -q --errors pass --chunk-size 2 -o vals for x in range(12):\n{BODY}")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists()
              and store.read_manifest(job_id)["state"] == "done", 60, "the job did not end")
    before = kernel.ok(f"%azpar logs {job_id} 3").stdout

    _restart(kernel)
    kernel.ok(f"%azpar attach {job_id}")
    # The values are those of a sequential loop; the two failures stand in as exceptions.
    expected = [repr(ValueError(f"cannot take {x}")) if x in (3, 8) else repr(x ** 2 + 1) for x in range(12)]
    assert kernel.value("[repr(v) for v in vals]") == repr(expected)
    assert kernel.value("[type(v).__name__ for v in vals if isinstance(v, Exception)]") == "['ValueError', 'ValueError']"
    # The failed iteration's log, read in the new kernel, is the one read before the restart.
    after = kernel.ok(f"%azpar logs {job_id} 3").stdout
    assert after == before
    assert after.startswith("--- iteration 3 (item 3): failed ---\nabout to fail on 3\n"), after
    assert 'File "<azpar cell>", line 6, in <module>' in after and after.rstrip().endswith("ValueError: cannot take 3")
    assert kernel.ok(f"%azpar logs {job_id} 4").stdout == "--- iteration 4 (item 4): succeeded ---\nok 4\n"
    everything = kernel.ok(f"%azpar logs {job_id}").stdout
    assert everything.count("--- iteration") == 12 and everything.index("iteration 3 ") < everything.index("iteration 8 ")
    # The table in the new kernel.
    table = kernel.ok("%azpar jobs").stdout
    assert re.search(rf"^{job_id} .* local +done +10/2/12 +%%azpar --no-wait -q --errors pass", table, re.M), table
    # Bad input names the problem.
    wrong = kernel.run(f"%azpar logs {job_id} 12")
    assert wrong.status == "error" and "no iteration 12" in _error_text(wrong)
    unknown = kernel.run("%azpar attach azpar-19990101-000000-000000000000")
    assert unknown.status == "error" and job_id in _error_text(unknown), unknown.describe()


@pytest.mark.timeout(240)
def test_a_job_cut_by_a_restart_is_lost_and_rerun_failed_completes_it(kernel, job_store, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # Each iteration leaves a file behind, so we can count how often each ran.
    body = (f"import pathlib, time, uuid\npathlib.Path(r'{marks}', f'{{x}}-{{uuid.uuid4().hex}}').touch()\n"
            "time.sleep(0.3)\nscale * x + 1")
    kernel.ok("scale = 7")
    submitted = kernel.ok(f"%%azpar --no-wait -q --chunk-size 1 -o out for x in range(16):\n{body}")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists() and store.summary(job_id).succeeded >= 4,
              60, "no iteration finished")

    _restart(kernel)
    row = store.summary(job_id)
    assert row.state == "lost" and 4 <= row.succeeded < 16, row
    finished_before = set(store.load_job(job_id).partial_results())
    assert len(finished_before) == row.succeeded

    table = kernel.ok("%azpar jobs").stdout
    assert re.search(rf"^{job_id} .* local +lost +{row.succeeded}/0/16 ", table, re.M), table
    attached = kernel.run(f"%azpar attach {job_id}")
    assert attached.status == "error", attached.describe()
    assert f"{row.succeeded} of 16 iterations had finished" in _error_text(attached)
    assert f"%azpar rerun {job_id} --failed" in _error_text(attached)

    kernel.ok("scale = 7")  # the new kernel's namespace is what the rerun captures
    rerun = kernel.ok(f"%azpar rerun {job_id} --failed")
    assert f"runs the {16 - row.succeeded} failed or missing iterations of job {job_id}" in rerun.stdout, \
        rerun.describe()
    assert kernel.value("out") == repr([7 * x + 1 for x in range(16)])  # -o of the original cell
    runs: dict[int, int] = {}
    for mark in marks.iterdir():
        index = int(mark.name.split("-")[0])
        runs[index] = runs.get(index, 0) + 1
    assert set(runs) == set(range(16))
    assert all(runs[i] == 1 for i in finished_before), runs  # what had finished was not computed again


@pytest.mark.timeout(240)
def test_errors_remove_then_rerun_after_the_fix_in_a_new_kernel(kernel, job_store):
    kernel.ok('''
def score(x):
    if x % 5 == 2:
        raise ZeroDivisionError(f"bad input {x}")
    return 100 - x
''')
    first = kernel.ok("%%azpar -q --errors remove --chunk-size 3 -o scores for x in range(15):\nscore(x)")
    assert first.status == "ok"
    assert kernel.value("scores") == repr([100 - x for x in range(15) if x % 5 != 2])
    job_id = kernel.value("__import__('azpar_magic').jobs()[-1].id").strip("'")
    # (A job is on disk within milliseconds of its end; a restart in that instant would find
    # it lost, and rerun would compute everything: not what this test is about.)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists()
              and store.read_manifest(job_id)["state"] == "done", 10, "the job was not stored")

    _restart(kernel)
    kernel.ok("def score(x):\n    return 100 - x\n")  # the cause, fixed
    kernel.ok(f"%azpar rerun {job_id} --failed -o scores -q")
    assert kernel.value("scores") == repr([100 - x for x in range(15)])
    rerun_id = kernel.value("__import__('azpar_magic').jobs()[-1].id").strip("'")
    store.flush()
    manifest = store.read_manifest(rerun_id)
    assert manifest["rerun_of"] == job_id and store.from_runs(manifest["ran"]) == {2, 7, 12}
    # The failure's log of the first run is still there; the rerun's says it succeeded.
    assert "ZeroDivisionError: bad input 7" in kernel.ok(f"%azpar logs {job_id} 7").stdout
    assert kernel.ok(f"%azpar logs {rerun_id} 7").stdout.startswith("--- iteration 7 (item 7): succeeded ---")

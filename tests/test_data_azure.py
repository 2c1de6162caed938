"""--inputs / --outputs on Azure Batch: the test Batch service runs the tasks, Azurite holds
the blobs, the real SDKs talk to both. Inputs are uploaded once (counted in Azurite's own
request log), outputs arrive under their iteration byte for byte."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
from IPython.core.error import UsageError

import azpar_magic
from azpar_magic import jobstore as store

from .azure_support import azure_profile, close_azure_engines
from .data_support import BODY, N_PARTS, check_outputs, make_parts
from .test_jobs_azure import _restart, job_store, start_kernel  # noqa: F401  (fixtures)
from .test_jobs_kernel import _job_id, _wait_for

pytestmark = [pytest.mark.azure, pytest.mark.timeout(240)]

CELL = ("%%azpar -q -o made --chunk-size {chunk} --inputs 'parts/part-{{i}}.csv' --inputs scale.txt "
        "--outputs '*.png' --outputs '*.csv' for i in range({n}):\n{body}")


@pytest.fixture
def azure(batch, azurite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_parts(tmp_path, salt=uuid.uuid4().hex)  # bytes no earlier test uploaded
    with azure_profile(tmp_path / "config", batch, azurite) as name:
        yield name


class RequestLog:
    """Azurite's per-request debug log, read from a mark on: what reached the storage."""

    def __init__(self, azurite):
        self.path = azurite.log_path.with_name("azurite-debug.log")
        self.mark()

    def mark(self) -> None:
        time.sleep(0.3)  # Azurite writes its log asynchronously
        self.start = self.path.stat().st_size

    def requests(self, method: str, path_pattern: str) -> list[str]:
        time.sleep(0.3)
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            text = fh.read().decode("utf-8", "replace")
        rx = re.compile(rf"RequestMethod={method} RequestURL=http://[^/]+/devstoreaccount1/{path_pattern}")
        return [m.group(0) for m in rx.finditer(text)]


@pytest.mark.parametrize("chunk", [1, 2])
def test_parts_in_plots_out_and_inputs_uploaded_once_across_runs(azure, ip, run_cell, azurite, tmp_path, chunk):
    log = RequestLog(azurite)
    cell = CELL.format(chunk=chunk, n=N_PARTS, body=BODY)
    run = run_cell(cell)
    assert run.success, run.error
    first = azpar_magic.jobs()[-1]
    check_outputs(tmp_path / "azpar_outputs" / first.id, ip.user_ns["made"])
    uploads = log.requests("PUT", r"azpar-cache/data/")
    assert len(uploads) == N_PARTS + 1, uploads  # each input file once (small: one request each)

    close_azure_engines()  # as a new kernel would: no memory of what was uploaded
    log.mark()
    run = run_cell(cell)
    assert run.success, run.error
    second = azpar_magic.jobs()[-1]
    assert second.id != first.id
    check_outputs(tmp_path / "azpar_outputs" / second.id, ip.user_ns["made"])
    assert log.requests("PUT", r"azpar-cache/data/") == []  # no input content sent again
    assert len(log.requests("HEAD", r"azpar-cache/data/")) == N_PARTS + 1  # one existence check each

    log.mark()  # the same kernel again: it knows what it uploaded, not even a check
    run = run_cell(cell)
    assert run.success, run.error
    assert log.requests("PUT", r"azpar-cache/data/") == [] and log.requests("HEAD", r"azpar-cache/data/") == []


def test_shared_inputs_come_with_the_job_preparation_and_own_inputs_with_each_task(azure, ip, run_cell, batch):
    run = run_cell(CELL.format(chunk=1, n=3, body="import os\nsorted(os.listdir('inputs/parts'))"))
    assert run.success, run.error
    assert ip.user_ns["made"] == [[f"part-{i}.csv"] for i in range(3)]
    prep = batch.requests_for("Jobs_CreateJob")[0].body["jobPreparationTask"]["resourceFiles"]
    assert [f["filePath"] for f in prep if f["filePath"].startswith("azpar-in/")] == ["azpar-in/scale.txt"]
    tasks = [t for r in batch.requests_for("Tasks_CreateTaskCollection") for t in r.body["value"]]
    for task in tasks:
        i = int(task["id"]) - 1
        own = [f for f in task.get("resourceFiles") or [] if f["filePath"].startswith("azpar-in/")]
        assert [f["filePath"] for f in own] == [f"azpar-in/parts/part-{i}.csv"]
        assert "sp=r&" in own[0]["httpUrl"] or "sp=r" in own[0]["httpUrl"].split("&")  # read-only SAS
        outs = [o for o in task["outputFiles"] if o["filePattern"].startswith("azpar-out")]
        assert outs and outs[0]["destination"]["container"]["path"] == "outputs"


def test_blob_inputs_and_a_blob_destination(azure, ip, run_cell, blob_service, tmp_path):
    source = blob_service.get_container_client("datasets")
    if not source.exists():
        source.create_container()
    for path in sorted((tmp_path / "parts").iterdir()) + [tmp_path / "scale.txt"]:
        source.upload_blob(str(path.relative_to(tmp_path)), path.read_bytes(), overwrite=True)
    body = BODY.replace("inputs/", "inputs/datasets/")
    run = run_cell("%%azpar -q -o made --inputs 'az://datasets/parts/part-{i}.csv' --inputs az://datasets/scale.txt "
                   f"--outputs '*.png' --outputs '*.csv' --outputs-to az://results/run1 for i in range({N_PARTS}):\n"
                   + body)
    assert run.success, run.error
    job = azpar_magic.jobs()[-1]
    results = blob_service.get_container_client("results")
    names = sorted(b.name for b in results.list_blobs(name_starts_with=f"run1/{job.id}/"))
    assert names == sorted(f"run1/{job.id}/{i}/{n}" for i in range(N_PARTS) for n in ("plot.png", "summary.csv"))
    for i, files in enumerate(ip.user_ns["made"]):
        for name, data in files.items():
            assert results.download_blob(f"run1/{job.id}/{i}/{name}").readall() == data
    assert job.files.files(1) == [f"az://results/run1/{job.id}/1/plot.png", f"az://results/run1/{job.id}/1/summary.csv"]
    assert not (tmp_path / "azpar_outputs").exists()  # nothing came to this machine


def test_a_folder_of_blobs_keeps_its_layout(azure, ip, run_cell, blob_service):
    source = blob_service.get_container_client("refdata")
    if not source.exists():
        source.create_container()
    for name in ("lookup/a.txt", "lookup/sub/b.txt", "lookupx/not-this.txt"):
        source.upload_blob(name, name.encode(), overwrite=True)
    run = run_cell("%%azpar -q -o seen --inputs az://refdata/lookup for i in range(2):\n"
                   "import os\nsorted(os.path.relpath(os.path.join(r, f), 'inputs') for r, _, fs in "
                   "os.walk('inputs', followlinks=True) for f in fs)")
    assert run.success, run.error
    assert ip.user_ns["seen"] == [["refdata/lookup/a.txt", "refdata/lookup/sub/b.txt"]] * 2


def test_cache_never_reuses_an_iteration_reading_a_blob_whose_content_it_cannot_see(azure, ip, run_cell,
                                                                                     blob_service):
    """--cache keys a local input by its size and modification time; a blob's content is not known
    before it is downloaded, so an iteration reading az:// inputs runs every time, and the cell says
    so (before, a blob overwritten since gave the earlier run's values back)."""
    source = blob_service.get_container_client("cachein")
    if not source.exists():
        source.create_container()
    source.upload_blob("n.txt", b"1", overwrite=True)
    cell = "%%azpar -q --cache -o got --inputs az://cachein/n.txt for i in range(2):\nint(open('inputs/cachein/n.txt').read()) + i"
    first = run_cell(cell)
    assert first.success, first.error
    assert ip.user_ns["got"] == [1, 2]
    assert "--cache does not reuse the 2 iterations that read az:// inputs" in first.stderr, first.stderr
    source.upload_blob("n.txt", b"5", overwrite=True)
    again = run_cell(cell)
    assert again.success, again.error
    assert ip.user_ns["got"] == [5, 6] and azpar_magic.jobs()[-1].from_cache == 0


def test_outputs_whose_upload_failed_are_read_from_the_node(azure, ip, run_cell, batch, tmp_path):
    batch.fail_output_uploads(2)  # the first two tasks upload nothing at all (results, logs, outputs)
    run = run_cell(CELL.format(chunk=1, n=N_PARTS, body=BODY))
    assert run.success, run.error
    check_outputs(tmp_path / "azpar_outputs" / azpar_magic.jobs()[-1].id, ip.user_ns["made"])
    from_node = [r.path for r in batch.requests_for("Tasks_GetTaskFile") if "azpar-out" in r.path]
    assert len(from_node) == 4, from_node  # two tasks' plot.png and summary.csv came from their node


def test_missing_blob_input_is_refused_before_submission(azure, ip, run_cell, batch, blob_service):
    ip.user_ns.pop("r", None)
    run = run_cell("%%azpar -q -o r --inputs az://nosuchcontainer/data for i in range(2):\ni")
    assert isinstance(run.error, UsageError), run.error
    assert "--inputs 'az://nosuchcontainer/data' selects no blob" in str(run.error)
    assert batch.requests_for("Jobs_CreateJob") == [] and "r" not in ip.user_ns


def test_pattern_matching_nothing_warns_once_on_azure(azure, ip, run_cell):
    run = run_cell("%%azpar -o out --chunk-size 2 --outputs '*.png' for i in range(4):\ni")
    assert run.success, run.error
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == ["azpar: warning: --outputs '*.png' matched no file in 4 iterations (0, 1, 2, 3)"]


def test_outputs_of_a_job_followed_after_a_kernel_restart_still_arrive(start_kernel, job_store, tmp_path):
    """The plan is rebuilt from the stored manifest: the new kernel downloads the outputs of
    the tasks it follows to where the first kernel would have put them."""
    kernel = start_kernel()
    submitted = kernel.ok("%%azpar --no-wait -q -o vals --outputs 'out-*.txt' for x in range(8):\n"
                          "import time\ntime.sleep(0.4)\nopen(f'out-{x}.txt', 'w').write(str(x * x))\nx")
    job_id = _job_id(submitted)
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    _restart(kernel)
    kernel.ok(f"%azpar attach {job_id} -o vals")
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr(list(range(8)))
    root = tmp_path / "cwd" / "azpar_outputs" / job_id
    assert sorted(p.name for p in root.iterdir()) == [str(x) for x in range(8)]
    for x in range(8):
        assert (root / str(x) / f"out-{x}.txt").read_text() == str(x * x)


def test_an_output_that_cannot_be_saved_fails_its_iteration_after_retries(azure, ip, tmp_path):
    job = azpar_magic.run("for i in range(4)", "import time\ntime.sleep(1.0)\nopen('out.txt', 'w').write(str(i))\ni",
                          {"__name__": "__main__"}, outputs=["out.txt"], errors="pass")
    blocked = tmp_path / "azpar_outputs" / job.id
    blocked.mkdir(parents=True)
    (blocked / "2").write_text("a file where iteration 2's folder must go")  # before any task ends
    values = job.result(120)
    assert [values[i] for i in (0, 1, 3)] == [0, 1, 3]
    failure = job.failures[2]
    assert failure.error_type == "azpar_magic.TransferError"
    assert "output file out.txt of iteration 2 could not be fetched" in failure.message
    assert "downloading" in failure.message and "failed: " in failure.message  # a local error: not retried
    assert (blocked / "3" / "out.txt").read_text() == "3"


def test_per_iteration_blob_inputs_are_listed_once_per_folder(azure, ip, run_cell, blob_service, azurite):
    source = blob_service.get_container_client("manyparts")
    if not source.exists():
        source.create_container()
    for i in range(12):
        source.upload_blob(f"p/{i}.txt", str(i * i).encode(), overwrite=True)
    log = RequestLog(azurite)
    run = run_cell("%%azpar -q -o got --inputs 'az://manyparts/p/{i}.txt' for i in range(12):\n"
                   "int(open(f'inputs/manyparts/p/{i}.txt').read())")
    assert run.success, run.error
    assert ip.user_ns["got"] == [i * i for i in range(12)]
    assert len(log.requests("GET", r"manyparts\?")) == 1  # one listing, not one per iteration


def test_a_large_input_upload_shows_progress_in_the_cell(azure, ip, run_cell, tmp_path):
    with open(tmp_path / "big.bin", "wb") as fh:
        fh.write(os.urandom(9 << 20))
    run = run_cell("%%azpar -o sizes --inputs big.bin for i in range(2):\nimport os\nos.path.getsize('inputs/big.bin')")
    assert run.success, run.error
    assert ip.user_ns["sizes"] == [9 << 20] * 2
    assert "azpar: uploading big.bin" in run.stdout and "9.4 MB of 9.4 MB (100%)" in run.stdout, run.stdout
    run = run_cell("%%azpar -o sizes --inputs big.bin for i in range(2):\n1")  # already uploaded: no line
    assert run.success, run.error
    assert "uploading" not in run.stdout


def test_tasks_a_dead_kernel_had_not_added_get_their_own_inputs(start_kernel, job_store, batch, batch_client,
                                                                tmp_path):
    make_parts(tmp_path / "cwd")
    kernel = start_kernel()
    batch.fail_requests(r"/addtaskcollection", count=1000, status=503)  # no task gets added
    job_id = _job_id(kernel.ok(f"%%azpar --no-wait -q -o vals --inputs 'parts/part-{{x}}.csv' "
                               f"for x in range({N_PARTS}):\nlen(open(f'inputs/parts/part-{{x}}.csv').readlines())"))
    _wait_for(lambda: (job_store / job_id / store.MANIFEST).exists(), 30, "the manifest was not written")
    kernel.km.restart_kernel(now=True)  # killed while its tasks were still being added
    kernel.kc.wait_for_ready(timeout=60)
    assert list(batch_client.list_tasks(job_id)) == []
    batch.faults.clear()
    kernel.ok("%load_ext azpar_magic")
    kernel.ok(f"%azpar collect {job_id} -o vals", timeout=120)
    assert kernel.value("vals") == repr([7 + x for x in range(N_PARTS)])  # header + 6 + x rows


def test_a_file_beside_the_notebook_opened_without_inputs_is_named_with_the_fix(azure, ip, run_cell):
    """The same cell ran on the local pool, whose workers see the notebook's folder; on a node it
    failed with a bare FileNotFoundError. The error now says the nodes lack the file and how to
    bring it; a file missing here too gets no such words."""
    os.makedirs("sub", exist_ok=True)
    with open("sub/data.csv", "w") as fh:
        fh.write("a,b\n1,2\n")
    run = run_cell("%%azpar -q -o got for i in range(2):\nopen('sub/data.csv').read()")
    assert not run.success
    said = str(run.error)
    assert "FileNotFoundError" in said and "'sub/data.csv' is a file of this machine, which the nodes do not have: " \
        "pass --inputs 'sub/data.csv' and open 'inputs/sub/data.csv' in the body" in said, said
    fixed = run_cell("%%azpar -q -o got --inputs sub/data.csv for i in range(2):\nopen('inputs/sub/data.csv').read()")
    assert fixed.success, fixed.error
    assert ip.user_ns["got"] == ["a,b\n1,2\n"] * 2
    missing = run_cell("%%azpar -q -o got for i in range(2):\nopen('nowhere.csv').read()")
    assert not missing.success and "FileNotFoundError" in str(missing.error)
    assert "nodes do not have" not in str(missing.error)


def test_files_written_on_the_nodes_without_outputs_are_named(azure, ip, run_cell):
    """On the local pool a body's `savefig('plot-3.png')` lands beside the notebook; on a node it
    stayed in the task's folder, and the cell said nothing. The cell names what was left there
    and the --outputs that brings it back; with --outputs, nothing is said."""
    body = "import os\nos.makedirs('figs', exist_ok=True)\nopen(f'plot-{i}.png', 'w').write('x')\n" \
           "open(f'figs/f{i}.txt', 'w').write('y')\ni"
    run = run_cell(f"%%azpar -q -o got for i in range(3):\n{body}")
    assert run.success, run.error
    assert ("azpar: warning: iterations wrote figs, plot-0.png, plot-1.png, plot-2.png in their working folders "
            "on the nodes, where they stay") in run.stderr, run.stderr
    assert "pass --outputs GLOB (--outputs 'figs') to bring them back" in run.stderr
    kept = run_cell(f"%%azpar -q -o got --outputs '*.png' --outputs 'figs/*' for i in range(3):\n{body}")
    assert kept.success, kept.error
    assert "where they stay" not in kept.stderr, kept.stderr
    assert sorted(os.listdir(os.path.join("azpar_outputs", azpar_magic.jobs()[-1].id, "1"))) == ["figs", "plot-1.png"]

"""The Azure backend end to end: ``%%azpar`` cells on the test Batch service with Azurite,
through the real azure-batch and azure-storage-blob SDKs. Each test gets a fresh service
(no pools, jobs or recorded requests) and its own profile."""

from __future__ import annotations

import base64
import io
import re
import sys
import time
import urllib.parse

import pytest

import azpar_magic
from azpar_magic.backends.azure import commands, files
from tests.wheels import node_pip_options, shared_folder, tiny_wheel, wheel_folder

from .azure_support import azure_profile, sas_status, wait_until

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]
POOL = "azpar-test"




def _last_job():
    return azpar_magic.jobs()[-1]


def _task_bodies(batch) -> list[dict]:
    bodies = []
    for rec in batch.requests_for("Tasks_CreateTaskCollection"):
        bodies.extend(rec.body["value"])
    return bodies


# ------------------------------------------------------------------------------- the basics


def test_cell_runs_on_batch_and_cleans_up_after_success(azure, ip, run_cell, batch, batch_client, blob_service):
    ip.user_ns["K"] = 7
    run = run_cell("%%azpar -q -o squares for x in range(12):\nx * x + K")
    assert run.success, run.error
    assert ip.user_ns["squares"] == [x * x + 7 for x in range(12)]
    job = _last_job()
    assert job.backend_name == "azure" and job.pool == POOL
    # One Batch job with tasks "1".."12", created noaction and switched to terminatejob.
    created = batch.requests_for("Jobs_CreateJob")[0].body
    assert created["id"] == job.id and created["onAllTasksComplete"] == "noaction"
    assert sorted(int(t["id"]) for t in _task_bodies(batch)) == list(range(1, 13))
    patches = [r.body for r in batch.requests_for("Jobs_UpdateJob")]
    assert {"onAllTasksComplete": "terminatejob"} in patches
    # Success: the job and both containers are removed.
    wait_until(lambda: job.id.lower() not in batch.jobs, 20, "the job to be deleted")
    wait_until(lambda: not {f"{job.id}-in", f"{job.id}-out"} & {c.name for c in blob_service.list_containers()},
                20, "the job's containers to be deleted")
    names = {c.name for c in blob_service.list_containers()}
    assert "azpar-cache" in names  # content-addressed blobs stay for the next job


@pytest.mark.timeout(360)  # 1,000 worker starts on the test service: 135-150 s on 2 quiet cores, more when shared
def test_thousand_iterations_one_task_each_all_values_right(azure, ip, run_cell, batch):
    run = run_cell("%%azpar -q --keep -o out for i in range(1000):\n(i * 7919) % 1009")
    assert run.success, run.error
    assert ip.user_ns["out"] == [(i * 7919) % 1009 for i in range(1000)]
    adds = batch.requests_for("Tasks_CreateTaskCollection")
    assert len(adds) == 10  # ceil(1000 / 100) add-task-collection calls
    assert all(len(r.body["value"]) == 100 for r in adds)
    job = _last_job()
    with batch.cond:
        tasks = batch.jobs[job.id.lower()].tasks
        assert len(tasks) == 1000 and all(t.result == "success" for t in tasks.values())



def test_a_module_found_through_a_folder_the_notebook_added_to_sys_path_runs_on_the_nodes(
    azure, ip, run_cell, tmp_path, batch, blob_service
):
    """``sys.path.append("../src")`` then ``import helpers``: a node has neither the folder nor the
    notebook's sys.path, and every task failed with ModuleNotFoundError. The module travels with the
    job, as the notebook folder's own do: once per set of modules, content-addressed in the cache
    container beside the namespace, not inside each job's envelope (a package of a few MB was
    uploaded again with every run of a cell)."""
    src = tmp_path / "src"
    (src / "azpar_added_pkg").mkdir(parents=True)
    (src / "azpar_added_pkg" / "__init__.py").write_text("from .core import scale\n")
    (src / "azpar_added_pkg" / "core.py").write_text("def scale(v):\n    return v * 13\n")
    setup = run_cell(f"import sys\nsys.path.append({str(src)!r})\nimport azpar_added_pkg")
    assert setup.success, setup.error
    try:
        for _ in range(2):
            run = run_cell("%%azpar -q --keep -o scaled for x in range(4):\nazpar_added_pkg.scale(x)")
            assert run.success, run.error
            assert ip.user_ns["scaled"] == [0, 13, 26, 39]
        cache = blob_service.get_container_client("azpar-cache")
        (kept,) = [b.name for b in cache.list_blobs(name_starts_with="ns/mods-")]
        assert b"return v * 13" in cache.download_blob(kept).readall()
        for created in batch.requests_for("Jobs_CreateJob")[-2:]:
            prep = created.body["jobPreparationTask"]["resourceFiles"]
            assert kept.removeprefix("ns/") in [f.get("filePath") for f in prep]
            envelope = blob_service.get_container_client(f"{created.body['id']}-in").download_blob("envelope.azpj")
            assert b"return v * 13" not in envelope.readall()  # the envelope names the set; it does not carry it
    finally:
        run_cell(f"sys.path.remove({str(src)!r})\ndel azpar_added_pkg")
        for name in ("azpar_added_pkg", "azpar_added_pkg.core"):
            sys.modules.pop(name, None)

def test_a_namespace_package_and_a_submodule_the_notebook_imported_reach_the_nodes(azure, ip, run_cell, tmp_path):
    """A folder of modules without ``__init__.py`` on a folder the notebook added to sys.path, and
    ``import xml.dom.minidom`` (which binds ``xml``): the nodes had neither the folder nor ``xml.dom``."""
    src = tmp_path / "src"
    (src / "azpar_nsnode").mkdir(parents=True)
    (src / "azpar_nsnode" / "tools.py").write_text("def f(x):\n    return x * 7\n")
    setup = run_cell(f"import sys, xml.dom.minidom\nsys.path.append({str(src)!r})\nimport azpar_nsnode.tools")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o got for x in range(3):\n"
                       "(azpar_nsnode.tools.f(x), xml.dom.minidom.parseString('<n/>').documentElement.tagName)")
        assert run.success, run.error
        assert ip.user_ns["got"] == [(0, "n"), (7, "n"), (14, "n")]
    finally:
        run_cell(f"sys.path.remove({str(src)!r})\ndel azpar_nsnode")
        for name in ("azpar_nsnode", "azpar_nsnode.tools"):
            sys.modules.pop(name, None)


def test_a_module_compiled_on_this_machine_is_refused_before_anything_is_submitted(
    azure, ip, run_cell, tmp_path, batch, monkeypatch
):
    """A %%cython cell's function travels by name; its module exists only in the kernel's cache folder, so
    every task would fail with ModuleNotFoundError on the nodes. Said before anything is submitted."""
    import importlib.machinery
    import types

    module = types.ModuleType("_azpar_cython_magic_1")
    module.__file__ = str(tmp_path / f"_azpar_cython_magic_1{importlib.machinery.EXTENSION_SUFFIXES[0]}")
    exec(compile("def csq(x):\n    return x * x\n", module.__file__, "exec"), module.__dict__)
    module.csq.__module__ = module.__name__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ip.user_ns["csq"] = module.csq
    try:
        run = run_cell("%%azpar -q -o got for x in range(3):\ncsq(x)")
        assert not run.success
        said = str(run.error)
        assert "_azpar_cython_magic_1 (" in said and "compiled on this machine" in said, said
        assert "--backend local" in said and "Nothing was submitted" in said, said
        assert batch.requests_for("Jobs_CreateJob") == []
    finally:
        ip.user_ns.pop("csq", None)


def test_failures_keep_job_logs_and_partial_results(azure, ip, run_cell, batch, blob_service):
    run = run_cell('%%azpar -q -o kept --errors remove for x in range(6):\n'
                   'print("out", x)\nif x % 3 == 1:\n    raise ValueError(f"bad {x}")\nx')
    assert run.success, run.error
    assert ip.user_ns["kept"] == [0, 2, 3, 5]
    job = _last_job()
    assert sorted(job.failures) == [1, 4]
    assert "bad 4" in job.failures[4].message
    time.sleep(1.0)  # cleanup would run in the background: it must not
    names = {c.name for c in blob_service.list_containers()}
    assert f"{job.id}-out" in names and job.id.lower() in batch.jobs
    logs = blob_service.get_container_client(f"{job.id}-out")
    listed = sorted(b.name for b in logs.list_blobs(name_starts_with="logs/"))
    assert "logs/2/stdout.txt" in listed and "logs/2/stderr.txt" in listed
    assert sorted(b.name for b in logs.list_blobs(name_starts_with="results/")) == \
        [f"results/{i}.azpr" for i in range(1, 7)]
    # The exception a node sent back is rebuilt here: the notebook's `except ValueError` catches the failure.
    caught = run_cell("try:\n    %azpar -q -o stopped for x in range(3): int('7x' if x == 1 else '7')\nexcept ValueError as exc:\n"
                      "    caught = (exc.index, exc.args, type(exc.exception).__name__)\n")
    assert caught.success, caught.error
    assert ip.user_ns.pop("caught") == (1, ("invalid literal for int() with base 10: '7x'",), "ValueError")


def test_merge_cloud_downloads_one_merged_blob(azure, ip, run_cell, batch):
    engine = azpar_magic.session.engine()
    stats = engine.backend.staging.stats
    before = dict(stats.calls)
    run = run_cell("%%azpar -q --merge cloud -o merged for x in range(15):\nstr(x) * 2")
    assert run.success, run.error
    assert ip.user_ns["merged"] == [str(x) * 2 for x in range(15)]
    bodies = _task_bodies(batch) + [r.body for r in batch.requests_for("Tasks_CreateTask")]
    merge = [b for b in bodies if b["id"] == "merge"]
    assert merge and merge[0]["dependsOn"]["taskIdRanges"] == [{"start": 1, "end": 15}]
    assert batch.requests_for("Jobs_CreateJob")[0].body["usesTaskDependencies"] is True
    downloads = stats.calls.get("get_blob", 0) - before.get("get_blob", 0)
    assert downloads == 1, f"expected only the merged blob to be downloaded, got {downloads} downloads"


def test_large_items_travel_as_blobs_small_ones_inline(azure, ip, run_cell, batch):
    ip.user_ns["blobs"] = [bytes([i]) * 20_000 for i in range(3)]
    run = run_cell("%%azpar -q -o sizes for b in blobs + [b'x']:\n(len(b), b[:1])")
    assert run.success, run.error
    assert ip.user_ns["sizes"] == [(20_000, bytes([i])) for i in range(3)] + [(1, b"x")]
    by_id = {t["id"]: t for t in _task_bodies(batch)}
    assert "resourceFiles" in by_id["1"] and not by_id["1"].get("environmentSettings")
    assert by_id["4"]["environmentSettings"][0]["name"] == commands.TASK_ENV


def test_environment_mismatch_names_both_versions_and_is_not_retried(azure, ip, run_cell, batch, tmp_path,
                                                                    monkeypatch):
    site = tmp_path / "client-only-site"
    (site / "azpar_probe_pkg").mkdir(parents=True)
    (site / "azpar_probe_pkg" / "__init__.py").write_text("VALUE = 41\n")
    info = site / "azpar_probe_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: azpar-probe-pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text("azpar_probe_pkg/__init__.py,,\nazpar_probe_pkg-1.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    ip.user_ns["probe"] = __import__("azpar_probe_pkg")
    # --no-auto-packages: the worker's own check (issue 15 would otherwise try to install it first).
    run = run_cell("%%azpar -q --no-auto-packages -o never for x in range(3):\nprobe.VALUE + x")
    assert not run.success
    message = str(run.error)
    assert "azpar-probe-pkg==1.0" in message and "not installed on this node" in message, message
    with batch.cond:
        tasks = list(batch.jobs[_last_job().id.lower()].tasks.values())
    assert all(t.retry_count == 0 and t.requeue_count == 0 for t in tasks)


# ------------------------------------------------------------------------------- faults


def test_spot_node_preempted_mid_job_loses_nothing(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=0, spot_nodes=2,
                       task_slots_per_node=1, keep=True):
        ip.user_ns.pop("pre", None)
        job = azpar_magic.run("for i in range(8)", "import time\ntime.sleep(0.6)\ni * 10", {})
        wait_until(lambda: job.snapshot().tasks_running >= 1, 30, "a running task")

        busy: list[str] = []

        def node_running_a_task() -> bool:  # the service's own view: the client's may lag behind it
            with batch.cond:
                busy[:] = [n.id for n in batch.pools[POOL.lower()].nodes.values() if n.running]
            return bool(busy)

        wait_until(node_running_a_task, 30, "a node running a task")
        batch.preempt_node(POOL, busy[0])
        assert job.result(timeout=90) == [i * 10 for i in range(8)]
        with batch.cond:
            requeued = sum(t.requeue_count for t in batch.jobs[job.id.lower()].tasks.values())
        assert requeued >= 1


def test_failed_output_uploads_lose_nothing(azure, ip, run_cell, batch):
    batch.fail_output_uploads(3)
    run = run_cell("%%azpar -q --keep -o up for x in range(6):\nx + 100")
    assert run.success, run.error
    assert ip.user_ns["up"] == [x + 100 for x in range(6)]
    with batch.cond:
        failed = [t for t in batch.jobs[_last_job().id.lower()].tasks.values()
                  if (t.failure_info or {}).get("code", "").startswith("FileUpload")]
    assert failed, "the fault did not fire"


def test_503_on_task_adds_and_count_polls_lose_nothing(azure, ip, run_cell, batch):
    batch.fail_requests(r"/addtaskcollection", count=4, status=503)
    batch.fail_requests(r"/taskcounts", count=6, status=503)
    run = run_cell("%%azpar -q -o ok for x in range(250):\n-x")
    assert run.success, run.error
    assert ip.user_ns["ok"] == [-x for x in range(250)]
    statuses = [r.status for r in batch.requests if r.path.endswith("/addtaskcollection")]
    assert statuses.count(503) == 4 and statuses.count(200) == 3
    assert [r.status for r in batch.requests if r.path.endswith("/taskcounts")].count(503) == 6


def test_start_task_failing_on_one_node(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        _start_task_failing_on_one_node(ip, run_cell, batch)


def _start_task_failing_on_one_node(ip, run_cell, batch):
    batch.fail_start_task(POOL, count=3)  # the first node fails its start task and both retries
    created = run_cell("%azpar pool create")
    assert created.success, created.error
    wait_until(lambda: any(n.state == "starttaskfailed" for n in batch.pools[POOL.lower()].nodes.values()),
                30, "the first node to fail its start task")
    run = run_cell("%azpar pool resize 2 0")
    assert run.success, run.error
    out = run_cell("%%azpar -q --keep -o fine for x in range(6):\nx * 3")
    assert out.success, out.error
    assert ip.user_ns["fine"] == [x * 3 for x in range(6)]
    with batch.cond:
        nodes = {n.id: n.state for n in batch.pools[POOL.lower()].nodes.values()}
        ran_on = {t.node.id for t in batch.jobs[_last_job().id.lower()].tasks.values()}
    failed = [n for n, s in nodes.items() if s == "starttaskfailed"]
    assert len(failed) == 1 and failed[0] not in ran_on


def test_cancel_terminates_the_batch_job_and_keeps_finished_results(azure, ip, run_cell, batch):
    job = azpar_magic.run("for i in range(40)", "import time\ntime.sleep(0.4 if i > 3 else 0)\ni", {},
                          chunk_size=1)
    wait_until(lambda: job.snapshot().items_succeeded >= 2, 30, "a few finished iterations")
    job.cancel()
    assert job.wait(10)
    assert job.state == "cancelled"
    partial = job.partial_results()
    assert len(partial) >= 2 and all(partial[i] == i for i in partial)
    wait_until(lambda: batch.jobs.get(job.id.lower()) is None or batch.jobs[job.id.lower()].state == "completed",
                20, "the Batch job to end")
    assert batch.requests_for("Jobs_TerminateJob")
    after = run_cell("%%azpar -q -o next_cell for x in range(3):\nx")
    assert after.success and ip.user_ns["next_cell"] == [0, 1, 2]


# ------------------------------------------------------------------------------- packages


def test_packages_are_installed_once_per_node_by_hash(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    # A folder the node's pool user can read (tmp_path is private to root); dill from the shared one.
    wheels = shared_folder("azpar-extra-wheels-")
    tiny_wheel(wheels, "azpar-extra-pkg", "0.3", 1234)
    pip_options = node_pip_options(extra_find_links=wheels)
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1, pip_options=pip_options):
        cell = ("%%azpar -q --packages azpar-extra-pkg==0.3 -o with_pkg for x in range(4):\n"
                "import azpar_extra_pkg\nazpar_extra_pkg.VALUE + x")
        first = run_cell(cell)
        assert first.success, first.error
        assert ip.user_ns["with_pkg"] == [1234 + x for x in range(4)]
        second = run_cell(cell)
        assert second.success, second.error
        with batch.cond:
            node = next(iter(batch.pools[POOL.lower()].nodes.values()))
        shared = node.root / "shared"
        installed = [p.name for p in shared.iterdir() if p.name.startswith("azpar-pkgs-")]
        # The folder is named by the job's requirement set (issue 15: here --packages alone; the cell
        # uses no installed distribution) and the pip options.
        digest = files.install_plan({}, ["azpar-extra-pkg==0.3"], pip_options).digest
        assert installed == [f"azpar-pkgs-{digest}"]
        ids = [j.id for j in azpar_magic.jobs()[-2:]]
        logs = [node.root / "workitems" / i / "job-1" / "jobpreparation" / "stdout.txt" for i in ids]
        assert all(p.exists() for p in logs)
        said = [p.read_text() for p in logs]
        assert sum("installed azpar-extra-pkg==0.3" in s for s in said) == 1, said


def test_bad_packages_are_refused_before_submitting(azure, run_cell, batch):
    run = run_cell("%%azpar -q --packages 'numpy==1.2;rm -rf /' for x in range(2):\nx")
    assert not run.success and "--packages" in str(run.error)
    assert not batch.requests_for("Jobs_CreateJob")


# ------------------------------------------------------------------------------- security


def test_no_key_in_any_request_and_sas_tokens_are_least_privilege(azure, ip, run_cell, batch, azurite):
    first = run_cell("%%azpar -q --keep -o a for x in range(3):\nx")
    second = run_cell("%%azpar -q --keep -o b for x in range(3):\nx + 1")
    assert first.success and second.success
    keys = [batch.key, azurite.account_key]
    variants = set()
    for key in keys:
        variants |= {key, urllib.parse.quote(key, safe=""), key.rstrip("=")}
    for rec in batch.requests:
        text = repr(rec.body) + repr(rec.headers) + rec.path
        assert not any(v in text for v in variants), f"an account key is in {rec.operation_id}"
    assert not any(v in azurite.log for v in variants)
    jobs = [r.body for r in batch.requests_for("Jobs_CreateJob")]
    task = _task_bodies(batch)[0]
    out_url = task["outputFiles"][0]["destination"]["container"]["containerUrl"]
    in_url = next(f["httpUrl"] for f in jobs[0]["jobPreparationTask"]["resourceFiles"]
                  if f["filePath"] == commands.ENVELOPE_FILE)
    other_in = next(f["httpUrl"] for f in jobs[1]["jobPreparationTask"]["resourceFiles"]
                    if f["filePath"] == commands.ENVELOPE_FILE)

    assert sas_status("GET", in_url) == 200  # what the token is for works
    assert sas_status("PUT", in_url, b"overwritten") == 403  # a task cannot write its inputs
    base, _, token = out_url.partition("?")
    assert sas_status("GET", f"{base}/results/1.azpr?{token}") == 403  # write-only results token
    # The first job's read token does not open the second job's container.
    other_base = other_in.split("?")[0]
    assert sas_status("GET", f"{other_base}?{in_url.split('?')[1]}") == 403
    assert sas_status("GET", other_in) == 200


def _output_url(task: dict, pattern: str) -> tuple[str, str]:
    """(the blob URL an output file of a task definition uploads to, its SAS token), as the
    node builds it: the container URL's path, then the output's path, with the URL's query."""
    out = next(o for o in task["outputFiles"] if o["filePattern"] == pattern)
    base, _, token = out["destination"]["container"]["containerUrl"].partition("?")
    return f"{base}/{out['destination']['container']['path']}", token


def test_a_task_definition_can_write_only_its_own_result_and_logs(azure, ip, run_cell, batch, blob_service,
                                                                  tmp_path):
    """Whoever reads a task definition (the task itself, or anyone with read access to the
    Batch account) gets a token for that task's blobs only: another task's result, which the
    kernel unpickles, cannot be replaced with it. The job still works: values, printed
    output, --outputs files, --merge cloud."""
    run = run_cell("%%azpar -q --keep -o r --outputs '*.txt' for i in range(3):\n"
                   "print('said', i)\nopen(f'o{i}.txt', 'w').write(str(i))\ni * 2")
    assert run.success, run.error
    assert ip.user_ns["r"] == [0, 2, 4]
    job = _last_job()
    assert "said 1" in job.output(1)
    for i in range(3):
        assert (tmp_path / "azpar_outputs" / job.id / str(i) / f"o{i}.txt").read_text() == str(i)
    logs = blob_service.get_container_client(f"{job.id}-out")
    assert {"logs/1/stdout.txt", "logs/1/stderr.txt", "results/1.azpr"} <= {b.name for b in logs.list_blobs()}

    tasks = {t["id"]: t for t in _task_bodies(batch)}
    result_url, token = _output_url(tasks["1"], commands.RESULT_FILE)
    assert result_url.endswith(f"/{job.id}-out/results/1.azpr")
    container = result_url.rsplit("/results/", 1)[0]
    assert sas_status("PUT", f"{container}/results/2.azpr?{token}", b"evil") == 403  # another task's result
    assert sas_status("PUT", f"{container}/logs/2/stdout.txt?{token}", b"evil") == 403
    assert sas_status("PUT", f"{container}/merged.azpm?{token}", b"evil") == 403
    assert sas_status("GET", f"{result_url}?{token}") == 403  # write-only
    stdout_url, stdout_token = _output_url(tasks["1"], "../stdout.txt")
    assert stdout_url.endswith("/logs/1/stdout.txt")
    assert sas_status("PUT", f"{container}/results/1.azpr?{stdout_token}", b"evil") == 403
    files = next(o for o in tasks["1"]["outputFiles"] if o["filePattern"].startswith("azpar-out"))
    files_base, _, files_token = files["destination"]["container"]["containerUrl"].partition("?")
    assert files_base.endswith(f"/{job.id}-files")
    assert sas_status("PUT", f"{container}/results/2.azpr?{files_token}", b"evil") == 403
    assert sas_status("PUT", f"{result_url}?{token}", b"own") == 201  # what the token is for still works
    assert blob_service.get_blob_client(f"{job.id}-out", "results/2.azpr").download_blob().readall() != b"evil"

    merged = run_cell("%%azpar -q --keep --merge cloud -o m for x in range(4):\nx + 1")
    assert merged.success, merged.error
    assert ip.user_ns["m"] == [1, 2, 3, 4]
    merge = next(r.body for r in batch.requests_for("Tasks_CreateTask") if r.body["id"] == "merge")
    merged_url, merged_token = _output_url(merge, commands.MERGED_FILE)
    other = merged_url.rsplit("/", 1)[0]
    assert sas_status("PUT", f"{other}/results/1.azpr?{merged_token}", b"evil") == 403


def test_sas_lifetime_follows_the_job_timeout(batch, azurite, ip, run_cell, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, job_timeout=3600):
        assert run_cell("%%azpar -q for x in range(2):\nx").success
    body = batch.requests_for("Jobs_CreateJob")[0].body
    assert body["constraints"]["maxWallClockTime"] in ("PT1H", "PT01H00M00S")
    url = body["jobPreparationTask"]["resourceFiles"][0]["httpUrl"]
    expiry = re.search(r"se=([^&]+)", url).group(1)
    import datetime as dt
    from urllib.parse import unquote

    ends = dt.datetime.fromisoformat(unquote(expiry).replace("Z", "+00:00"))
    left = (ends - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 3600 < left <= 3600 + 31 * 60, left


# ------------------------------------------------------------------------------- profiles and pools


def test_profile_errors_are_one_paragraph_before_anything_is_sent(batch, azurite, ip, run_cell, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "azpar.toml").write_text('[profiles.broken]\nbackend = "azure"\nvm_size = "D2"\n'
                                         'container_image = "python"\nautoscale = "QUEUE"\n'
                                         'min_nodes = 5\nmax_nodes = 2\n')
    run = run_cell("%azpar use broken")
    assert not run.success
    message = str(run.error)
    for fragment in ("batch_account_url is missing", "storage_account_url is missing", "'D2' is not an Azure VM size",
                     "has no tag", "min_nodes (5) is more than max_nodes (2)"):
        assert fragment in message, message
    assert "\n" not in message
    cell = run_cell("%%azpar --profile broken for x in range(2):\nx")
    assert not cell.success and "cannot be used" in str(cell.error)
    # Nothing was created (a previous test's background cleanup may still send a DELETE).
    assert not [r for r in batch.requests if r.operation_id in ("Jobs_CreateJob", "Pools_CreatePool",
                                                                 "Tasks_CreateTaskCollection")]


def test_pool_commands_create_status_resize_delete(azure, run_cell, batch):
    created = run_cell("%azpar pool create")
    assert created.success, created.error
    assert "created pool azpar-test" in created.stdout
    body = batch.requests_for("Pools_CreatePool")[0].body
    vm = body["virtualMachineConfiguration"]
    assert vm["containerConfiguration"]["containerImageNames"] == [f"python:{sys.version_info[0]}."
                                                                     f"{sys.version_info[1]}-slim"]
    start_env = {e["name"]: e["value"] for e in body["startTask"]["environmentSettings"]}
    assert "dill==" in base64.b64decode(start_env[commands.SCRIPT_ENV]).decode()  # the script (commands.py)
    resized = run_cell("%azpar pool resize 1 3")
    assert resized.success, resized.error
    wait_until(lambda: batch.pools[POOL.lower()].target_low_priority == 3, 10, "the resize")
    status = run_cell("%azpar pool status")
    assert "target 1 + 3" in status.stdout, status.stdout
    bad = run_cell("%azpar pool resize one 3")
    assert not bad.success and "two whole numbers" in str(bad.error)
    deleted = run_cell("%azpar pool delete")
    assert deleted.success and "being deleted" in deleted.stdout
    wait_until(lambda: POOL.lower() not in batch.pools, 20, "the pool to go")


def test_autoscale_pool_that_is_empty_is_resized_for_an_interactive_run(batch, azurite, ip, run_cell, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, autoscale="QUEUE", min_nodes=0, max_nodes=3,
                       task_slots_per_node=2):
        run = run_cell("%%azpar -q -o auto for x in range(5):\nx")
        assert run.success, run.error
        assert ip.user_ns["auto"] == list(range(5))
        resize = batch.requests_for("Pools_ResizePool")[0].body
        assert resize["targetDedicatedNodes"] + resize["targetLowPriorityNodes"] == 3
        assert batch.requests_for("Pools_DisablePoolAutoScale")
        wait_until(lambda: batch.requests_for("Pools_EnablePoolAutoScale"), 10, "autoscale to be restored")


def test_inline_task_payload_is_the_task_file(azure, run_cell, batch):
    assert run_cell("%%azpar -q --keep for x in ['a', 'b']:\nx").success
    env = _task_bodies(batch)[1]["environmentSettings"][0]["value"]
    from azpar_magic import worker

    header, _ = worker.unpack(worker.TASK_MAGIC, base64.b64decode(env))
    assert header["indices"] == [1] and header["task"] == "2"
    io.BytesIO()  # keep the import honest for readers: nothing else is decoded here


def test_every_node_failing_its_start_task_is_reported_not_waited_for(batch, azurite, ip, run_cell, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    with azure_profile(tmp_path / "config", batch, azurite, dedicated_nodes=1):
        batch.fail_start_task(POOL, count=3)
        started = time.monotonic()
        run = run_cell("%%azpar -q -o never for x in range(3):\nx")
        assert not run.success
        assert "failed its start task" in str(run.error), run.error
        assert time.monotonic() - started < 30


def test_numpy_items_itertuples_rows_and_repeated_failures_travel_to_the_nodes(azure, ip, run_cell, batch):
    # What numeric notebooks iterate travels packed (numpy scalars and rows as one array a task, itertuples'
    # run-time class made again by dill's recipe): the nodes' workers load them as the loop gives them, and
    # the values come back packed as well. Failures at one place are formatted once a task, each its own.
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    wheel_folder("numpy", "pandas")  # the profile's find-links folder (on a fresh machine no earlier test made them)
    ip.user_ns.update(np=np, xs=np.linspace(0, 1, 20), M=np.arange(60.0).reshape(20, 3),
                      df=pd.DataFrame({"a": range(20), "b": range(20)}))
    run = run_cell("%%azpar -q -o got --chunk-size 10 for x, row in zip(xs, M):\n(type(x).__name__, np.sqrt(x), row.sum())")
    assert run.success, run.error
    got = ip.user_ns["got"]
    assert [kind for kind, _, _ in got] == ["float64"] * 20
    assert all(type(root) is np.float64 for _, root, _ in got)
    assert [float(total) for _, _, total in got] == [float(r.sum()) for r in ip.user_ns["M"]]
    assert "numpy" in _last_job().capture.packages
    run = run_cell("%%azpar -q -o rows --chunk-size 10 --errors pass for row in df.itertuples():\n"
                   "if row.a % 3 == 0:\n    raise KeyError(row.a)\n(type(row).__name__, row.a + row.b)")
    assert run.success, run.error
    rows = ip.user_ns["rows"]
    assert [value for i, value in enumerate(rows) if i % 3] == [("Pandas", 2 * i) for i in range(20) if i % 3]
    failures = _last_job().failures
    assert sorted(failures) == list(range(0, 20, 3))
    assert all(failures[i].traceback.endswith(f"KeyError: {i}\n") for i in failures)
    assert len({failures[i].traceback.rsplit("KeyError", 1)[0] for i in failures}) == 1


def test_timestamps_paths_and_partials_of_notebook_functions_travel_to_the_nodes(azure, ip, run_cell, batch):
    # pd.date_range's Timestamps travel as one index a task, dates and paths as the C pickler writes them,
    # with pandas among the job's packages; a partial of a notebook function among the items brings
    # the notebook names it reads (it failed with NameError). Values of those kinds come back as they are.
    pd = pytest.importorskip("pandas")
    import functools
    import pathlib

    wheel_folder("pandas")

    ip.user_ns.update(pd=pd, stamps=pd.date_range("2020-01-01", periods=12, freq="h", tz="UTC"),
                      paths=[pathlib.Path(f"data/day{i}.csv") for i in range(12)])
    run = run_cell("%%azpar -q -o got --chunk-size 5 for t, p in zip(stamps, paths):\n(t.hour, t, p.stem, p)")
    assert run.success, run.error
    assert ip.user_ns["got"] == [(t.hour, t, p.stem, p) for t, p in zip(ip.user_ns["stamps"], ip.user_ns["paths"])]
    assert "pandas" in _last_job().capture.packages
    ip.run_cell("K = 7\ndef train(rate):\n    return rate * K\n")
    ip.user_ns["jobs"] = [functools.partial(ip.user_ns["train"], r) for r in range(6)]
    try:
        run = run_cell("%%azpar -q -o trained --chunk-size 3 for job in jobs:\njob()")
        assert run.success, run.error
        assert ip.user_ns["trained"] == [7 * r for r in range(6)]
    finally:
        for name in ("K", "train", "jobs", "trained", "got", "stamps", "paths"):
            ip.user_ns.pop(name, None)


def test_a_module_loaded_from_a_file_without_registering_it_reaches_the_nodes(azure, ip, run_cell, batch, tmp_path):
    # importlib's module_from_spec + exec_module, no sys.modules entry: the nodes import modules by name, and every
    # iteration failed with ModuleNotFoundError. Its file travels as the notebook's own modules do, under the
    # name it was loaded as.
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "rules_v2.py").write_text("BONUS = 5\ndef score(x):\n    return x * 2 + BONUS\n")
    setup = run_cell("import importlib.util\n"
                     f"spec = importlib.util.spec_from_file_location('azpar_rules', {str(folder / 'rules_v2.py')!r})\n"
                     "rules = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(rules)")
    assert setup.success, setup.error
    try:
        run = run_cell("%%azpar -q -o scored --chunk-size 2 for x in range(4):\nrules.score(x)")
        assert run.success, run.error
        assert ip.user_ns["scored"] == [5, 7, 9, 11]
        assert "azpar_rules.py" in _last_job().capture.local_modules
    finally:
        for name in ("spec", "rules", "scored"):
            ip.user_ns.pop(name, None)


def test_the_nodes_follow_the_notebooks_warning_filters_and_numpy_errors(azure, ip, run_cell, batch):
    # The nodes' workers followed their own filters: a notebook that silenced warnings got every iteration's
    # printed, one that made them errors got prints where its loop raised. Filters travel in the envelope.
    import warnings

    wheel_folder("numpy")

    import numpy as np

    cell = ("%%azpar -o node_warned --errors pass --chunk-size 2 for x in range(4):\n"
            "import warnings, numpy as np\nwarnings.warn('careful on a node')\nnp.log(np.zeros(1))[0]")
    errors = np.geterr()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            np.seterr(all="ignore")
            quiet = run_cell(cell)
            assert quiet.success, quiet.error
            assert "careful on a node" not in quiet.stderr and "divide by zero" not in quiet.stderr, quiet.stderr
            assert ip.user_ns["node_warned"] == [-np.inf] * 4
            warnings.simplefilter("error", UserWarning)
            assert run_cell(cell).success
            assert [type(v).__name__ for v in ip.user_ns["node_warned"]] == ["UserWarning"] * 4
    finally:
        np.seterr(**errors)
        ip.user_ns.pop("node_warned", None)


def test_figures_a_node_shows_come_back_as_pictures(azure, ip, run_cell, batch, monkeypatch):
    # A notebook that shows matplotlib figures inline (ipykernel sets MPLBACKEND so): plt.show() on a node shows
    # the open figures where it was called, as PNGs, in the iteration's output, which the cell replays.
    pytest.importorskip("matplotlib")
    wheel_folder("matplotlib")  # the profile's find-links folder: the nodes install it as the kernel's version
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    run = run_cell("%%azpar -q -o node_figures --chunk-size 1 for x in range(2):\n"
                   "import matplotlib.pyplot as plt\nplt.plot([0, x])\nplt.show()\nx")
    assert run.success, run.error
    assert ip.user_ns.pop("node_figures") == [0, 1]
    pictures = [o.data for o in run.outputs if "image/png" in o.data]
    assert len(pictures) == 2, [o.data.keys() for o in run.outputs]
    assert all(base64.b64decode(p["image/png"])[:4] == b"\x89PNG" for p in pictures)
    assert "Figure(640x480)" not in run.stdout


def test_a_function_the_body_defines_comes_back_from_a_node_reading_its_own_iteration(azure, ip, run_cell, batch):
    # A lambda over the loop's variable, returned from a node, read the notebook's x (or none) when called.
    ip.user_ns.update(x=1000, offset=5)
    try:
        run = run_cell("%%azpar -q -o node_fs --chunk-size 2 for x in range(3):\nlambda y: y + x + offset")
        assert run.success, run.error
        assert [f(10) for f in ip.user_ns["node_fs"]] == [15, 16, 17]
    finally:
        for name in ("x", "offset", "node_fs"):
            ip.user_ns.pop(name, None)


def test_the_nodes_follow_the_notebooks_numpy_print_options(azure, ip, run_cell, batch):
    # np.set_printoptions(precision=3) in the notebook: a node printed arrays with numpy's defaults.
    import numpy as np

    wheel_folder("numpy")  # the profile's find-links folder: the nodes install it as the kernel's version

    options = np.get_printoptions()
    try:
        np.set_printoptions(precision=3, suppress=True)
        run = run_cell("%%azpar -q --chunk-size 1 for x in range(2):\nimport numpy as np\nprint(np.array([1 / 3, 1e-9]))")
        assert run.success, run.error
        assert run.stdout == "[0.333 0.   ]\n" * 2, run.stdout
    finally:
        np.set_printoptions(**options)


def test_ipythons_own_display_on_a_node_is_the_iterations_display(azure, ip, run_cell, batch):
    # `from IPython.display import display, HTML` in a body: IPython's display, with no shell on the node, printed
    # "<IPython.core.display.HTML object>" where the notebook's loop showed the HTML.
    wheel_folder("ipython")  # the nodes install the kernel's IPython, which the body imports
    run = run_cell("%%azpar -q --chunk-size 1 for x in range(2):\nfrom IPython.display import display, HTML\n"
                   "display(HTML(f'<b>{x}</b>'))")
    assert run.success, run.error
    shown = [output.data.get("text/html") for output in run.outputs]
    assert shown == ["<b>0</b>", "<b>1</b>"], (shown, run.stdout)
    assert "IPython.core.display.HTML object" not in run.stdout


def test_azpar_objects_the_loop_needs_are_refused_before_anything_is_submitted(azure, ip, run_cell, batch):
    # An earlier cell's failed iterations kept with --errors pass are azpar_magic's exceptions; a body reading that
    # list (or a loop over it) sent them to nodes that have no azpar_magic: every task failed with "the captured
    # namespace could not be loaded on this node: No module named 'azpar_magic'", an environment mismatch.
    from azpar_magic.errors import InfrastructureError

    ip.user_ns["kept"] = [1, InfrastructureError("iteration 1 could not run")]
    jobs_before = len(batch.requests_for("Jobs_CreateJob"))
    try:
        for cell, holder in (("%%azpar -q -o r for i in range(2):\nlen(kept) + i", "`kept`"),
                             ("%%azpar -q -o r for v in kept:\nstr(v)", "the items")):
            run = run_cell(cell)
            assert not run.success, cell
            message = str(run.error)
            assert f"The loop needs {holder}," in message and "azpar_magic's own objects" in message, message
            assert "Nothing was submitted" in message
        assert len(batch.requests_for("Jobs_CreateJob")) == jobs_before
        ip.user_ns["kept"] = [1, 2]  # the guard: the same cells run once the list holds plain values
        assert run_cell("%%azpar -q -o r for v in kept:\nstr(v)").success and ip.user_ns["r"] == ["1", "2"]
    finally:
        ip.user_ns.pop("kept", None)
        ip.user_ns.pop("r", None)

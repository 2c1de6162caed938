"""Resource files from Azurite and output files to Azurite, by SAS URL, as a node agent does."""
from __future__ import annotations

import pytest
from azure.batch import models

from .helpers import blob_sas_url, container_sas_url, new_job, pool_options, sh, task, wait_tasks_done

pytestmark = pytest.mark.timeout(60)


def _out(pattern: str, url: str, condition: str, path: str | None = None) -> models.OutputFile:
    return models.OutputFile(
        file_pattern=pattern,
        destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
            container_url=url, path=path)),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=condition))


def test_resource_files_and_output_files_roundtrip(batch_client, batch, azurite, blob_service):
    inputs = blob_service.create_container("inputs-rt")
    inputs.upload_blob("single.txt", b"one file")
    inputs.upload_blob("data/a.txt", b"A")
    inputs.upload_blob("data/b.txt", b"B")
    inputs.upload_blob("other/c.txt", b"C")
    blob_service.create_container("outputs-rt")
    read_url = container_sas_url(azurite, "inputs-rt", "rl")
    write_url = container_sas_url(azurite, "outputs-rt", "w")

    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    script = "cat in/single.txt data/a.txt data/b.txt > result.txt; mkdir -p res/sub; echo x > res/sub/deep.txt"
    batch_client.create_task("job1", task("t1", sh(script), resource_files=[
        models.ResourceFile(http_url=blob_sas_url(azurite, "inputs-rt", "single.txt"), file_path="in/single.txt"),
        models.ResourceFile(storage_container_url=read_url, blob_prefix="data/"),
    ], output_files=[
        _out("result.txt", write_url, "tasksuccess", path="job1/t1/result.txt"),
        _out("res/**/*.txt", write_url, "taskcompletion", path="job1/t1/res"),
        _out("../std*.txt", write_url, "taskcompletion", path="job1/t1/logs"),
        _out("result.txt", write_url, "taskfailure", path="job1/t1/should-not-exist.txt"),
    ]))
    counts = wait_tasks_done(batch_client, "job1", 1)
    assert counts.task_counts.succeeded == 1, batch_client.get_task("job1", "t1").execution_info
    out = blob_service.get_container_client("outputs-rt")
    names = sorted(b.name for b in out.list_blobs())
    assert names == ["job1/t1/logs/stderr.txt", "job1/t1/logs/stdout.txt", "job1/t1/res/sub/deep.txt",
                     "job1/t1/result.txt"]
    assert out.download_blob("job1/t1/result.txt").readall() == b"one fileAB"
    # other/ was outside the prefix, so it was not downloaded
    files = {f.name for f in batch_client.list_task_files("job1", "t1", recursive=True)}
    assert "wd/data/a.txt" in files and "wd/other/c.txt" not in files


def test_failure_condition_uploads_only_on_failure(batch_client, batch, azurite, blob_service):
    blob_service.create_container("outputs-fail")
    url = container_sas_url(azurite, "outputs-fail", "w")
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", sh("echo err > e.txt; exit 4"), output_files=[
        _out("e.txt", url, "taskfailure", path="failed/e.txt"), _out("e.txt", url, "tasksuccess", path="ok.txt")]))
    wait_tasks_done(batch_client, "job1", 1)
    names = [b.name for b in blob_service.get_container_client("outputs-fail").list_blobs()]
    assert names == ["failed/e.txt"]


def test_read_only_sas_makes_upload_fail_and_missing_blob_fails_preprocessing(batch_client, batch, azurite,
                                                                             blob_service):
    blob_service.create_container("readonly")
    ro_url = container_sas_url(azurite, "readonly", "r")
    batch_client.create_pool(pool_options("pool1", slots=2))
    new_job(batch_client)
    batch_client.create_task("job1", task("up", sh("echo x > o.txt"), output_files=[
        _out("o.txt", ro_url, "taskcompletion", path="o.txt")]))
    batch_client.create_task("job1", task("down", "/bin/true", resource_files=[
        models.ResourceFile(http_url=blob_sas_url(azurite, "readonly", "missing.bin"), file_path="m.bin")]))
    wait_tasks_done(batch_client, "job1", 2)
    up = batch_client.get_task("job1", "up").execution_info
    assert up.exit_code == 0 and up.result == "failure"
    assert up.failure_info.code == "FileUploadContainerAccessDenied"
    down = batch_client.get_task("job1", "down").execution_info
    assert down.failure_info.code == "BlobNotFound" and down.exit_code is None
    # No SAS signature is echoed back in the failure details.
    assert all("sig=" not in (d.value or "") for d in down.failure_info.details or [])


def test_non_loopback_urls_are_refused(batch_client, batch):
    batch_client.create_pool(pool_options("pool1"))
    new_job(batch_client)
    batch_client.create_task("job1", task("t1", "/bin/true", resource_files=[
        models.ResourceFile(http_url="https://example.invalid/file", file_path="f")]))
    wait_tasks_done(batch_client, "job1", 1)
    info = batch_client.get_task("job1", "t1").execution_info
    assert info.result == "failure" and "non-loopback" in info.failure_info.message

"""Blob transfers through the SDK's own upload/download, and the one retry layer (issue 18).

Round trips against Azurite; storage faults from a small loopback proxy in front of Azurite
that answers 503 to the requests a test names (and counts every request); Batch faults from the
test service's own fault hooks. Retry bounds are shrunk through ``retry``'s constants before a
client is built, so "always 503" ends in seconds and the documented worst case is checked from
the same constants (``retry.worst_case_seconds``).
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from azpar_magic.backends.azure import blobs, retry, storage

from .azure_support import serving

pytestmark = [pytest.mark.azure, pytest.mark.timeout(180)]

SLACK = 5.0  # seconds on top of a computed bound: a loaded machine, request times


# --------------------------------------------------------------------------- the fault proxy


class FaultProxy(ThreadingHTTPServer):
    """A loopback HTTP relay to Azurite: ``fail(pattern, count, method)`` answers the next
    ``count`` matching requests (``method`` and the path plus query matching the regex) with
    503 ServerBusy instead of passing them on; ``requests`` lists every (method, path+query,
    status) seen."""

    daemon_threads = True

    def __init__(self, upstream_host: str, upstream_port: int):
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = (upstream_host, upstream_port)
        self.plan: list[list[Any]] = []  # [regex, remaining, method or None]
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def fail(self, pattern: str, count: int = 1, method: str | None = None) -> None:
        with self.lock:
            self.plan.append([re.compile(pattern), count, method])

    def take(self, method: str, target: str) -> bool:
        with self.lock:
            for rule in self.plan:
                if rule[1] > 0 and (rule[2] is None or rule[2] == method) and rule[0].search(target):
                    rule[1] -= 1
                    return True
        return False

    def record(self, method: str, target: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, target, status))

    def count(self, pattern: str, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, t, _ in self.requests if (method is None or m == method) and re.search(pattern, t))


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.take(self.command, self.path):
            self.server.record(self.command, self.path, 503)
            text = (
                b"<?xml version='1.0' encoding='utf-8'?><Error><Code>ServerBusy</Code>"
                b"<Message>The server is busy (test fault proxy).</Message></Error>"
            )
            self.send_response(503)
            self.send_header("x-ms-error-code", "ServerBusy")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.server.record(self.command, self.path, answer.status)
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay


@pytest.fixture
def proxy(azurite):
    with serving(FaultProxy(azurite.host, azurite.port)) as server:
        yield server


@pytest.fixture
def quick_retries(monkeypatch):
    """Small bounds: two retries a request, waits of hundredths of a second."""
    monkeypatch.setattr(retry, "STORAGE_RETRIES", 2)
    monkeypatch.setattr(retry, "STORAGE_BACKOFF", 0.05)
    monkeypatch.setattr(retry, "STORAGE_BACKOFF_BASE", 0.1)
    monkeypatch.setattr(retry, "STORAGE_JITTER", 0.01)


def _staging(azurite, url: str | None = None) -> storage.Staging:
    return storage.Staging(
        url or azurite.blob_endpoint,
        azurite.account_name,
        AzureNamedKeyCredential(azurite.account_name, azurite.account_key),
    )


def _file(path, size: int) -> str:
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            fh.write(piece)
            left -= len(piece)
    return str(path)


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "size",
    [0, 1, storage.BLOCK_SIZE, storage.BLOCK_SIZE + 1, 40 * 1000 * 1000 + 17],
    ids=["0B", "1B", "block", "block+1", "40MB"],
)
def test_round_trip_is_byte_identical_with_progress(azurite, tmp_path, size):
    staging = _staging(azurite)
    try:
        box = f"rt{uuid.uuid4().hex[:12]}"
        staging.ensure_container(box)
        source = _file(tmp_path / "up.bin", size)
        sent: list[tuple[int, int]] = []
        assert blobs.upload_file(staging, box, "x/up.bin", source, progress=lambda d, t: sent.append((d, t))) == size
        got: list[tuple[int, int]] = []
        back = str(tmp_path / "down" / "back.bin")
        assert blobs.download_file(staging, box, "x/up.bin", back, progress=lambda d, t: got.append((d, t))) == size
        assert _sha(back) == _sha(source) and os.path.getsize(back) == size
        assert not os.path.exists(back + ".azpar-part")
        for seen in (sent, got):
            assert seen and seen[-1] == (size, size), seen
            assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        if size > storage.BLOCK_SIZE:  # one report per block sent
            assert len(sent) == math.ceil(size / storage.BLOCK_SIZE)
    finally:
        staging.close()


def test_content_addressed_upload_checks_first_and_names_by_sha256(azurite, tmp_path):
    staging = _staging(azurite)
    try:
        box = f"ca{uuid.uuid4().hex[:12]}"
        staging.ensure_container(box)
        source = _file(tmp_path / "in.bin", storage.BLOCK_SIZE * 2 + 5)
        name, sent = blobs.upload_file_once(staging, box, source)
        assert name == f"data/{_sha(source)}" and sent
        staging.known.clear()
        assert blobs.upload_file_once(staging, box, source) == (name, False)  # one HEAD, no bytes
        back = str(tmp_path / "back.bin")
        blobs.download_file(staging, box, name, back)
        assert _sha(back) == _sha(source)
    finally:
        staging.close()


def test_a_file_changed_during_its_content_addressed_upload_is_refused(azurite, tmp_path, monkeypatch):
    staging = _staging(azurite)
    try:
        box = f"cc{uuid.uuid4().hex[:12]}"
        staging.ensure_container(box)
        source = _file(tmp_path / "in.bin", 1000)
        monkeypatch.setattr(blobs, "file_digest", lambda path: "0" * 64)  # the name says other bytes
        with pytest.raises(blobs.TransferError, match="changed while it was being uploaded"):
            blobs.upload_file_once(staging, box, source)
        assert [b.name for b in blobs.list_blobs(staging, box)] == []  # the wrongly named blob is gone
    finally:
        staging.close()


# --------------------------------------------------------------------------- storage faults


def _through(azurite, proxy) -> storage.Staging:
    return _staging(azurite, f"http://127.0.0.1:{proxy.server_address[1]}/{azurite.account_name}")


def test_a_503_then_ok_is_retried_by_the_client_alone(azurite, proxy, tmp_path, quick_retries):
    staging = _through(azurite, proxy)
    try:
        box = f"f{uuid.uuid4().hex[:12]}"
        staging.ensure_container(box)
        small = _file(tmp_path / "small.bin", 1000)
        proxy.fail(rf"/{box}/small\.bin", count=2, method="PUT")
        blobs.upload_file(staging, box, "small.bin", small)
        assert proxy.count(rf"/{box}/small\.bin", "PUT") == 3  # 2 x 503, then the put

        big = _file(tmp_path / "big.bin", storage.BLOCK_SIZE * 3)
        proxy.fail(rf"/{box}/big\.bin\?.*comp=block&", count=1, method="PUT")  # one block, once
        blobs.upload_file(staging, box, "big.bin", big)
        assert proxy.count(rf"/{box}/big\.bin\?.*comp=block&", "PUT") == 4  # 3 blocks + 1 retry

        proxy.fail(rf"/{box}/big\.bin", count=2, method="GET")
        back = str(tmp_path / "back.bin")
        blobs.download_file(staging, box, "big.bin", back)
        assert _sha(back) == _sha(big)
        assert proxy.count(rf"/{box}/big\.bin", "GET") == 3 + 2  # 3 ranges + 2 retries of the first
    finally:
        staging.close()


def test_always_503_ends_in_a_clear_error_within_the_documented_bound(azurite, proxy, tmp_path, quick_retries):
    staging = _through(azurite, proxy)
    tries = retry.STORAGE_RETRIES + 1
    bound = retry.worst_case_seconds("storage") + SLACK
    try:
        box = f"a{uuid.uuid4().hex[:12]}"
        staging.ensure_container(box)
        small = _file(tmp_path / "small.bin", 1000)
        blobs.upload_file(staging, box, "there.bin", small)
        proxy.fail(rf"/{box}[/?]", count=10_000)

        started = time.monotonic()
        with pytest.raises(blobs.TransferError, match=rf"uploading .* failed after {tries} attempts: HttpResponseError"):
            blobs.upload_file(staging, box, "small.bin", small)
        assert time.monotonic() - started < bound
        assert proxy.count(rf"/{box}/small\.bin", "PUT") == tries  # one layer: not 4 x 4

        started = time.monotonic()
        with pytest.raises(blobs.TransferError, match=rf"downloading {box}/there\.bin .* failed after {tries} attempts"):
            blobs.download_file(staging, box, "there.bin", str(tmp_path / "d.bin"))
        assert time.monotonic() - started < bound
        assert proxy.count(rf"/{box}/there\.bin", "GET") == tries
        assert not os.path.exists(tmp_path / "d.bin") and not os.path.exists(tmp_path / "d.bin.azpar-part")

        with pytest.raises(blobs.TransferError, match=rf"listing {box}/ failed after {tries} attempts"):
            blobs.list_blobs(staging, box)
    finally:
        staging.close()


def test_the_documented_storage_bound_follows_the_constants():
    assert retry.worst_case_seconds("storage") == pytest.approx(1 + 3 + 5 + 9 + 4 * 0.5)
    policy = retry.storage_policy()
    assert policy.total_retries == retry.STORAGE_RETRIES == 4


def test_whole_operation_retries_skip_answers_the_client_already_retried():
    from azure.core.exceptions import HttpResponseError, ServiceResponseError

    calls: list[int] = []

    def refused():
        calls.append(1)
        error = HttpResponseError("busy")
        error.status_code = 503
        raise error

    with pytest.raises(blobs.TransferError, match="copying x failed after"):
        blobs.retried("copying x", refused, backoff=0.01)
    assert len(calls) == 1  # the client has retried it already

    def cut():
        calls.append(1)
        raise ServiceResponseError("connection reset mid-stream")

    calls.clear()
    with pytest.raises(blobs.TransferError, match=f"after {blobs.ATTEMPTS} attempts"):
        blobs.retried("reading y", cut, backoff=0.01)
    assert len(calls) == blobs.ATTEMPTS


# --------------------------------------------------------------------------- Batch: TaskAdder and the client


def _context(azure_profile_name: str):
    from azpar_magic import config
    from azpar_magic.backends.azure.context import AzureContext

    return AzureContext(config.load_profile(azure_profile_name))


def _pending(n: int) -> list[Any]:
    from azure.batch import models

    from azpar_magic.backends.azure import submission

    tasks = []
    for i in range(n):
        model = models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
        # The definition is the SDK model, or its wire JSON where submission builds that.
        definition = submission.wire_json(model) if hasattr(submission, "wire_json") else model
        tasks.append(submission.PendingTask(definition, 100))
    return tasks


def _adds(batch) -> int:
    return sum(1 for r in batch.requests if r.method == "POST" and r.path.endswith("/addtaskcollection"))


def _new_job(client, job_id: str) -> None:
    from azure.batch import models

    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="nopool")))


def test_task_adder_is_the_only_retry_layer_and_bounded(azure, batch):
    from azpar_magic.backends.azure import submission

    context = _context(azure)
    try:
        _new_job(context.client, "adds1")
        batch.fail_requests(r"/jobs/adds1/addtaskcollection", count=10_000, status=503, method="POST")
        started = time.monotonic()
        report = submission.TaskAdder(context.client, "adds1").add(_pending(3))
        assert time.monotonic() - started < retry.worst_case_seconds("add") + SLACK
        assert sorted(report.failed) == ["t0", "t1", "t2"] and "503" in report.failed["t0"]
        assert _adds(batch) == retry.ADD_ATTEMPTS  # 6, not 6 x the SDK's 4

        batch.reset()
        _new_job(context.client, "adds2")
        batch.fail_requests(r"/jobs/adds2/addtaskcollection", count=2, status=503, method="POST")
        report = submission.TaskAdder(context.client, "adds2").add(_pending(3))
        assert sorted(report.added) == ["t0", "t1", "t2"] and not report.failed
        assert _adds(batch) == 3
    finally:
        context.close()


def test_the_batch_client_retries_once_per_layer_with_the_configured_policy(azure, batch, monkeypatch):
    from azure.core.exceptions import HttpResponseError

    monkeypatch.setattr(retry, "BATCH_RETRIES", 1)
    monkeypatch.setattr(retry, "BATCH_BACKOFF", 0.01)
    context = _context(azure)
    try:
        batch.fail_requests(r"^/pools$", count=10_000, status=503, method="GET")
        with pytest.raises(HttpResponseError):
            list(context.client.list_pools())
        assert sum(1 for r in batch.requests if r.method == "GET" and r.path == "/pools") == 2
    finally:
        context.close()

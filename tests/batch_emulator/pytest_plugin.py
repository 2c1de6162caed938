"""Pytest plugin: Azurite and the Batch emulator as fixtures.

Cheap to import (no azure.*, no node, no threads) because the core package's tests load it too;
everything heavy happens inside the fixtures.

Fixtures
--------
azurite (session)        AzuriteInfo: blob_endpoint, account_name, account_key, connection_string,
                         host, port, log (text so far)
batch_service (session)  a started BatchEmulator wired to Azurite (shared; prefer ``batch``)
batch (function)         the same emulator, reset before and after the test (fresh state)
batch_client (function)  a real azure.batch.BatchClient with AzureNamedKeyCredential for ``batch``
blob_service (function)  an azure.storage.blob.BlobServiceClient for Azurite
node_wheels (session)    a folder of wheels every node user can read, with dill (the kernel's version):
                         pip_options ["--no-index", "--find-links", node_wheels] install offline on the
                         service's bare nodes; ``tests.wheels.wheel_folder("numpy", ...)`` adds more to it
make_batch_client(service, credential=None, **kwargs) builds further clients.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_ACCOUNT = "devstoreaccount1"
#: The documented, public well-known key of Azurite's development account.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_started: dict[str, Any] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AzuriteInfo:
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    account_name: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
                f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};")

    @property
    def log(self) -> str:
        """Azurite's console output followed by the tail of its debug (per-request) log."""
        out = []
        for path, limit in ((self.log_path, 20000), (self.log_path.with_name("azurite-debug.log"), 20000)):
            try:
                out.append(path.read_text(errors="replace")[-limit:])
            except OSError:
                pass
        return "\n".join(out)


def start_azurite(log_dir: Path, timeout: float = 30.0) -> AzuriteInfo:
    """Start azurite-blob from node_modules on a free loopback port and wait until it answers.
    It starts through azurite_blob.js, which keeps Azurite's garbage collector from pausing the
    server for tens of seconds in long sessions (the file says why)."""
    exe = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    node = shutil.which("node")
    if not exe.exists() or node is None:
        pytest.fail(f"Azurite is not installed ({exe} or node is missing): run `npm ci` in {REPO_ROOT} first.",
                    pytrace=False)
    port = free_port()
    log_path = log_dir / "azurite.log"
    log = open(log_path, "wb")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    proc = subprocess.Popen(
        [node, str(Path(__file__).with_name("azurite_blob.js")), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--debug",
         str(log_dir / "azurite-debug.log")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
        start_new_session=True)
    log.close()
    info = AzuriteInfo("127.0.0.1", port, log_path, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Azurite exited with code {proc.returncode}:\n{info.log}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return info
        except OSError:
            time.sleep(0.1)
    stop_azurite(info)
    pytest.fail(f"Azurite did not answer on port {port} within {timeout}s:\n{info.log}", pytrace=False)
    raise AssertionError("unreachable")


def stop_azurite(info: AzuriteInfo) -> None:
    if info.process.poll() is None:
        try:
            os.killpg(info.process.pid, 15)
        except ProcessLookupError:
            pass
        try:
            info.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(info.process.pid, 9)
            info.process.wait(timeout=5)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteInfo]:
    info = start_azurite(tmp_path_factory.mktemp("azurite"))
    _started["azurite"] = info
    try:
        yield info
    finally:
        _started.pop("azurite", None)
        stop_azurite(info)


@pytest.fixture(scope="session")
def batch_service(azurite: AzuriteInfo) -> Iterator[Any]:
    from tests.batch_emulator.service import BatchEmulator

    work_dir = tempfile.mkdtemp(prefix="batch-emulator-")
    os.chmod(work_dir, 0o755)  # the node folders inside must be reachable by the pool's task user
    svc = BatchEmulator(account="testbatch", blob_endpoint=azurite.blob_endpoint, work_dir=work_dir)
    svc._own_dir = True
    svc.start()
    _started["batch"] = svc
    try:
        yield svc
    finally:
        _started.pop("batch", None)
        svc.stop()


@pytest.fixture(scope="session")
def node_wheels() -> Path:
    from tests.wheels import wheel_folder

    return wheel_folder()


@pytest.fixture
def batch(batch_service: Any) -> Iterator[Any]:
    """The session's emulator with fresh state: no pools, jobs, faults or recorded requests."""
    batch_service.reset()
    yield batch_service
    batch_service.reset()


def make_batch_client(service: Any, credential: Any = None, **kwargs: Any) -> Any:
    """A real BatchClient for the emulator (SharedKey unless a credential is given).

    Retries use a short backoff by default so fault-injection tests stay fast; pass
    ``retry_backoff_factor`` / ``retry_total`` to change it.
    """
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    kwargs.setdefault("retry_backoff_factor", 0.01)
    if service.ca_cert is not None:
        kwargs.setdefault("connection_verify", str(service.ca_cert))
    return BatchClient(service.url, credential or AzureNamedKeyCredential(service.account, service.key), **kwargs)


@pytest.fixture
def batch_client(batch: Any) -> Iterator[Any]:
    client = make_batch_client(batch)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def blob_service(azurite: AzuriteInfo) -> Iterator[Any]:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        yield client
    finally:
        client.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        names = getattr(item, "fixturenames", ())
        az = _started.get("azurite")
        if az is not None and ("azurite" in names or "batch_service" in names or "batch" in names):
            report.sections.append(("azurite log (tail)", az.log[-8000:]))
        svc = _started.get("batch")
        if svc is not None and ("batch" in names or "batch_service" in names):
            report.sections.append(("batch emulator log (tail)", svc.log_text[-8000:]))

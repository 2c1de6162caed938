"""Issue 18: azpar logs what it does through ``logging`` (one logger per module), silent unless the user asks:
``%azpar verbose on|info|http|off`` or ``AZPAR_LOG`` put one handler on the notebook's stderr, and at ``http`` the
Azure SDK's request and response lines join it. Secrets never reach it: SAS signatures, account keys and
authorization headers are redacted, whoever wrote the record."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from azpar_magic import verbosity

from .test_kernel import Kernel, _isolated_env, _start, _stop, manager

FAKE_KEY = "c2VjcmV0LWtleS1ieXRlcy1mb3ItdGVzdHMtb25seS1ub3QtcmVhbC0wMTIzNDU2Nzg5YWJjZA=="  # base64, 64 bytes


@pytest.fixture(autouse=True)
def quiet_afterwards():
    yield
    verbosity.set_level("off")


def _sas_url() -> tuple[str, str]:
    """A real container SAS URL, signed by the SDK with a made-up key, and its signature."""
    from urllib.parse import parse_qs

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        "acct",
        "box",
        account_key=FAKE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc),
    )
    return f"https://acct.blob.core.windows.net/box?{sas}", parse_qs(sas)["sig"][0]


def test_redact_removes_a_real_sas_signature_and_keys_but_keeps_the_line_readable(monkeypatch):
    url, sig = _sas_url()
    text = verbosity.redact(f"GET {url} -> 200")
    assert sig not in text and "sig=REDACTED" in text
    assert "https://acct.blob.core.windows.net/box?" in text and "sp=rl" in text  # the rest stays
    quoted = verbosity.redact("copy?source=" + quote(url, safe=""))  # a SAS URL inside another URL's query
    assert quote(sig, safe="") not in quoted and "sig%3DREDACTED" in quoted
    connection = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={FAKE_KEY};EndpointSuffix=x"
    assert FAKE_KEY not in verbosity.redact(connection) and "AccountName=acct" in verbosity.redact(connection)
    header = "{'Authorization': 'SharedKey acct:bXlzaWduYXR1cmU=', 'x-ms-version': '2021-08-06'}"
    assert "bXlzaWduYXR1cmU" not in verbosity.redact(header) and "x-ms-version" in verbosity.redact(header)
    assert "bXlzaWduYXR1cmU" not in verbosity.redact("SharedKey acct:bXlzaWduYXR1cmU=")
    monkeypatch.setenv("AZPAR_STORAGE_KEY", FAKE_KEY)  # a profile's secret variable: its value, wherever it shows
    assert verbosity.redact(f"key is {FAKE_KEY[:40]}{FAKE_KEY[40:]}!") == "key is REDACTED!"
    assert verbosity.redact("pool azpar-test: 2 dedicated nodes") == "pool azpar-test: 2 dedicated nodes"


def test_nothing_is_shown_until_asked_and_off_removes_the_handler(capsys):
    log = logging.getLogger("azpar_magic.session")
    log.info("not shown")
    assert verbosity.level() == "off"
    assert verbosity.set_level("info") == "info"
    log.info("job %s submitted, SAS %s", "j1", "https://a/b?sv=1&sig=abc%2Bdef&se=2")
    log.debug("not at info")
    assert verbosity.set_level("on") == "debug"
    log.debug("a decision")
    verbosity.set_level("off")
    log.info("not shown either")
    err = capsys.readouterr().err
    assert "[azpar INFO azpar_magic.session] job j1 submitted, SAS https://a/b?sv=1&sig=REDACTED&se=2" in err
    assert "abc%2Bdef" not in err and "a decision" in err
    assert "not shown" not in err and "not at info" not in err
    assert [h for h in logging.getLogger("azpar_magic").handlers if not isinstance(h, logging.NullHandler)] == []
    with pytest.raises(ValueError, match="unknown verbosity 'loud'"):
        verbosity.set_level("loud")


def test_the_magic_says_and_sets_the_level(ip):
    def line(words: str) -> str:
        with capture_output() as captured:
            ip.run_line_magic("azpar", words)
        return captured.stdout

    assert line("verbose") == "azpar: verbose off (only results, progress and errors are shown)\n"
    assert line("verbose on").startswith("azpar: verbose on:")
    assert line("verbose").startswith("azpar: verbose on:") and verbosity.level() == "debug"
    assert "redacted" in line("verbose http")
    assert verbosity.level() == "http"
    assert line("verbose off").startswith("azpar: verbose off")
    with pytest.raises(UsageError, match=r"usage: %azpar verbose \[on\|info\|http\|off\]"):
        ip.run_line_magic("azpar", "verbose loud")
    with capture_output() as captured:
        ip.run_line_magic("azpar", "help")
    assert "%azpar verbose [on|info|http|off]" in captured.stdout


def test_a_run_logs_its_job_and_engine(ip, run_cell):
    verbosity.set_level("info")
    ran = run_cell("%%azpar -q -o r for i in range(3):\ni")
    assert ran.success, ran.error
    assert "[azpar INFO azpar_magic.run.engine] job azpar-" in ran.stderr
    assert "submitted to local: " in ran.stderr


def test_a_lost_worker_and_the_retry_are_logged(ip, run_cell, tmp_path):
    """A worker process that dies under an iteration: the local pool says it replaced it, the engine that it
    retried the task (an infrastructure failure), and the retry's value is the result."""
    ip.user_ns["died_once"] = str(tmp_path / "died-once")
    verbosity.set_level("info")
    ran = run_cell(
        "%%azpar -q -o r --retries 1 for i in range(1):\n"
        "import os\n"
        "if not os.path.exists(died_once):\n"
        "    open(died_once, 'w').close()\n"
        "    os._exit(3)\n"
        "i + 7"
    )
    assert ran.success, ran.error
    assert ip.user_ns["r"] == [7]
    assert "[azpar INFO azpar_magic.backends.local] local worker-" in ran.stderr, ran.stderr
    assert "ended (exit code 3) during task 1; replaced" in ran.stderr
    assert "[azpar INFO azpar_magic.run.engine] job azpar-" in ran.stderr and ": task 1 retried (attempt" in ran.stderr


def test_a_transfer_tried_again_is_logged(capsys):
    from azpar_magic.backends.azure import blobs

    calls = []

    def cut_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset by peer")
        return "read"

    verbosity.set_level("info")
    assert blobs.retried("reading out.csv of iteration 3 from its node", cut_once, backoff=0.01) == "read"
    err = capsys.readouterr().err
    assert "[azpar INFO azpar_magic.backends.azure.blobs] reading out.csv of iteration 3 from its node: attempt 1 " in err
    assert "connection reset by peer" in err and "trying again" in err


@pytest.mark.parametrize(("value", "shown"), [("info", True), ("http", True), ("", False), ("loud", False)])
def test_azpar_log_switches_it_on_at_import(value, shown):
    code = (
        "import logging, azpar_magic\n"
        "logging.getLogger('azpar_magic.session').info('hello %s', 'https://x/y?sig=c2VjcmV0&sp=r')\n"
        "print(azpar_magic.verbosity.level())"
    )
    env = {"AZPAR_LOG": value, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("hello https://x/y?sig=REDACTED&sp=r" in done.stderr) is shown, done.stderr
    assert "c2VjcmV0" not in done.stderr
    assert done.stdout.strip() == (value if shown else "off")
    if value == "loud":
        assert "AZPAR_LOG: unknown verbosity 'loud'" in done.stderr


# ------------------------------------------------------------------------------ http: the SDK against Azurite


@pytest.mark.azure
@pytest.mark.timeout(120)
def test_http_shows_the_sdk_requests_with_the_signature_redacted(azurite, blob_service, capsys):
    from azure.storage.blob import ContainerClient, ContainerSasPermissions, generate_container_sas

    box = f"verbose{uuid.uuid4().hex[:12]}"
    blob_service.create_container(box)
    sas = generate_container_sas(
        azurite.account_name,
        box,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
    )
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    url = f"{azurite.blob_endpoint}/{box}?{sas}"
    capsys.readouterr()
    verbosity.set_level("debug")
    with ContainerClient.from_container_url(url) as client:
        assert list(client.list_blobs()) == []
    assert "Request URL" not in capsys.readouterr().err  # debug: azpar's records only
    verbosity.set_level("http")
    with ContainerClient.from_container_url(url) as client:
        assert list(client.list_blobs()) == []
    err = capsys.readouterr().err
    request = [line for line in err.splitlines() if "Request URL" in line]
    assert request and f"/{box}?" in request[0] and "sig=REDACTED" in request[0], err
    assert "Response status: 200" in err
    assert signature not in err and azurite.account_key not in err
    verbosity.set_level("off")
    with ContainerClient.from_container_url(url) as client:
        list(client.list_blobs())
    assert "Request URL" not in capsys.readouterr().err


@pytest.mark.azure
@pytest.mark.timeout(180)
def test_http_through_azpar_storage_never_shows_the_account_key(azure, azurite, ip, capsys):
    """``%azpar storage ls`` with a shared-key profile: the SDK signs each request with the account key (an
    Authorization header), and neither that header nor the key may appear."""
    capsys.readouterr()
    with capture_output() as captured:
        ip.run_line_magic("azpar", "verbose http")
        ip.run_line_magic("azpar", "storage ls")
    err = captured.stderr + capsys.readouterr().err
    assert "Request URL" in err, err
    assert "'Authorization': 'REDACTED'" in err
    assert azurite.account_key not in err and "SharedKey " not in err


@pytest.mark.azure
@pytest.mark.timeout(300)
def test_an_azure_run_logs_its_staging_and_tasks_and_no_secret(azure, azurite, batch, run_cell, ip):
    verbosity.set_level("info")
    ran = run_cell("%%azpar -q -o r for i in range(2):\ni * 3")
    assert ran.success, ran.error
    assert ip.user_ns["r"] == [0, 3]
    assert "[azpar INFO azpar_magic.backends.azure.run] job azpar-" in ran.stderr, ran.stderr
    assert "staging its worker, namespace and inputs in http://127.0.0.1:" in ran.stderr
    assert "[azpar INFO azpar_magic.backends.azure.backend] job azpar-" in ran.stderr
    assert "on pool azpar-test; adding 2 tasks" in ran.stderr
    assert azurite.account_key not in ran.stderr and batch.key not in ran.stderr


# ------------------------------------------------------------------------------------------- in a real kernel


@pytest.mark.timeout(180)
def test_verbose_in_a_kernel_goes_to_the_cells_stderr(tmp_path):
    kernel, _ = _start(tmp_path)
    try:
        quiet = kernel.ok("%%azpar -q -o r for i in range(2):\ni", timeout=120)
        assert "[azpar" not in quiet.stderr, quiet.describe()
        assert kernel.ok("%azpar verbose on").stdout.startswith("azpar: verbose on")
        loud = kernel.ok("%%azpar -q -o r for i in range(2):\ni", timeout=120)
        assert "[azpar INFO azpar_magic.run.engine] job azpar-" in loud.stderr, loud.describe()
        kernel.ok("%azpar verbose off")
        again = kernel.ok("%%azpar -q -o r for i in range(2):\ni", timeout=120)
        assert "[azpar" not in again.stderr, again.describe()
    finally:
        _stop(kernel)


@pytest.mark.timeout(180)
def test_azpar_log_in_the_kernels_environment_turns_it_on_at_load(tmp_path):
    """A kernel started with AZPAR_LOG=info (a JupyterHub spawner's or a kernelspec's env): its first cell logs."""
    (tmp_path / "cwd").mkdir()
    env = {**_isolated_env(tmp_path), "AZPAR_LOG": "info"}
    km, kc = manager.start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd=str(tmp_path / "cwd"))
    kernel = Kernel(km, kc)
    try:
        kernel.ok("%load_ext azpar_magic")
        assert kernel.ok("%azpar verbose").stdout.startswith("azpar: verbose info")
        ran = kernel.ok("%%azpar -q -o r for i in range(2):\ni", timeout=120)
        assert "[azpar INFO azpar_magic.run.engine] job azpar-" in ran.stderr, ran.describe()
    finally:
        _stop(kernel)

"""Helpers for tests of the Azure backend against the test Batch service and Azurite: a
profile pointing at both, written where the configuration layer reads it, and the secrets
in the environment as a user would provide them."""
from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from azpar_magic import config


def write_profile_file(path: Path, batch: Any, azurite: Any, name: str = "test", **fields: Any) -> dict[str, str]:
    """Write ``[profiles.NAME]`` into the config file ``path`` and return the environment
    variables holding the keys (to be set by the caller). The test service's nodes are bare
    (no dill, no test venv), so pip installs from the shared test wheel folder unless the
    caller gives ``pip_options`` (tests.wheels.node_pip_options builds them with more wheels)."""
    from tests.wheels import node_pip_options

    values = {
        "backend": "azure",
        "batch_account_url": batch.url,
        "batch_account_name": batch.account,
        "storage_account_url": azurite.blob_endpoint,
        "auth": "shared-key",
        "pool_id": "azpar-test",
        "dedicated_nodes": 2,
        "spot_nodes": 0,
        "task_slots_per_node": 2,
        "poll_interval": 0.1,
        "pip_options": node_pip_options(),
        **fields,
    }
    config.save_profile(name, values, path)
    return {"AZPAR_BATCH_KEY": batch.key, "AZPAR_STORAGE_KEY": azurite.account_key}


@contextlib.contextmanager
def azure_profile(tmp: Path, batch: Any, azurite: Any, name: str = "test", **fields: Any) -> Iterator[str]:
    """A profile ``name`` in a user config folder of its own, its keys in the environment,
    and ``%azpar use NAME`` in effect; everything undone (and the Azure engines closed) on exit."""
    from azpar_magic import session

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp))
        env = write_profile_file(config.user_config_path(), batch, azurite, name, **fields)
        for key, value in env.items():
            mp.setenv(key, value)
        session.use(name)
        try:
            yield name
        finally:
            session.use(None)
            close_azure_engines()


def close_azure_engines() -> None:
    from azpar_magic import session

    with session._lock:
        azure = {k: e for k, e in session._engines.items() if k[0] == "azure"}
        for key in azure:
            del session._engines[key]
    for eng in azure.values():
        for job in list(eng.jobs.values()):
            if not job.done:
                job.cancel()
        eng.backend.close()


def sas_status(method: str, url: str, data: bytes | None = None) -> int:
    """The HTTP status Azurite answers to a plain request with a SAS URL (what a task, or
    anyone holding the token, could do with it): 200/201 allowed, 403 refused."""
    request = urllib.request.Request(url, data=data, method=method)
    if method == "PUT":
        request.add_header("x-ms-blob-type", "BlockBlob")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Serve ``server`` (a loopback http.server) from a thread for the duration, then close it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()

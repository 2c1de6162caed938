"""JupyterHub deployments, end to end: a real hub on loopback (see conftest.py), two users
with a server each, and cells run through each server's kernel websocket as a notebook
frontend would.

- The kernels load ``%%azpar`` with no ``%load_ext``: the enable command was applied to
  their environment (``--sys-prefix``); ``disable`` takes it away again (fresh kernels).
- Both users share one OS account, one job store root, one Batch pool and one Storage
  account; each sees only their own jobs, their job ids and containers carry their name,
  one user's SAS tokens are refused on the other's containers, and neither the hub API
  token nor any other value of the kernels' environment reaches a Batch request.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from azpar_magic import identity
from azpar_magic.backends.azure import commands
from tests.azure_support import sas_status, write_profile_file

from .conftest import KERNEL_SECRET, prefix_python, run_enable

pytestmark = [pytest.mark.hub, pytest.mark.timeout(300)]
USERS = ("alice", "bob.smith")  # the second needs a hashed slug: '.' is not allowed in container names
MAGIC_PRESENT = "'azpar' in get_ipython().magics_manager.magics['cell']"


@pytest.fixture(scope="module")
def kernels(hub):
    for user in USERS:
        hub.start_server(user)
    started = {user: hub.kernel(user) for user in USERS}
    try:
        yield started
    finally:
        for kernel in started.values():
            kernel.close()


def _environment(kernel) -> dict[str, str]:
    return kernel.value("dict(__import__('os').environ)")


def _secrets_of(env: dict[str, str]) -> dict[str, str]:
    """Values of a kernel's environment that must not travel: the hub's API token, the
    account keys, the stand-in secret, and every other value long enough to mean something
    (short ones like '1' would match anywhere), except the user's name, which jobs carry
    on purpose."""
    assert env.get("JUPYTERHUB_API_TOKEN") and env.get("HUBTEST_KERNEL_SECRET") == KERNEL_SECRET
    return {name: value for name, value in env.items() if len(value) >= 8 and value != env["JUPYTERHUB_USER"]}


def _job_ids_listed(kernel) -> list[str]:
    out = kernel.ok("%azpar jobs")["stdout"]
    return [line.split()[0] for line in out.splitlines()[1:] if line.startswith("azpar-")]


def test_every_kernel_has_the_magic_and_each_user_sees_only_their_jobs(hub, kernels):
    ids = {}
    for user, kernel in kernels.items():
        assert kernel.value(MAGIC_PRESENT) is True  # nothing loaded it but the startup file
        assert kernel.value("get_ipython().extension_manager.loaded >= {'azpar_magic'}") is True
        assert kernel.value("__import__('os').environ['JUPYTERHUB_USER']") == user
        kernel.ok("offset = 100")
        kernel.ok("%%azpar -q -o squares for x in range(8):\nx * x + offset")
        assert kernel.value("squares") == [x * x + 100 for x in range(8)]
        ids[user] = kernel.value("__import__('azpar_magic').jobs()[-1].id")
        assert ids[user].startswith(f"azpar-{identity.slug(user)}-"), ids[user]
    assert identity.slug("bob.smith") != "bobsmith" and identity.slug("alice") == "alice"

    for user, kernel in kernels.items():
        other = next(u for u in USERS if u != user)
        listed = _job_ids_listed(kernel)
        assert ids[user] in listed and ids[other] not in listed, (user, listed)
        stored = kernel.value("[row.id for row in __import__('azpar_magic').jobs(stored=True)]")
        assert ids[user] in stored and ids[other] not in stored
        out = kernel.execute(f"%azpar logs {ids[other]}")
        assert out["status"] == "error" and "no job" in f"{out['error']}{out['stderr']}", out  # not even by its full id
        # One store root, one folder per hub user.
        folder = hub.store / f"hub-{identity.slug(user)}" / ids[user]
        assert (folder / "manifest.json").exists()
        assert not (hub.store / f"hub-{identity.slug(other)}" / ids[user]).exists()

    # What was stored of each job (items, envelope, results) holds no value of the kernel's environment.
    for user, kernel in kernels.items():
        env = _secrets_of(_environment(kernel))
        folder = hub.store / f"hub-{identity.slug(user)}" / ids[user]
        data = b"".join(p.read_bytes() for p in folder.iterdir())
        # (The manifest names its own folder, which lies under AZPAR_JOB_STORE, and the home.)
        leaked = [name for name, value in env.items()
                  if value.encode() in data and name not in ("HOME", "PWD", "AZPAR_JOB_STORE")]
        assert not leaked, f"{user}'s stored job holds the values of {leaked}"


def _write_system_profile(hub, batch, azurite) -> Path:
    """The administrator's file in the users' environment: the shared accounts and pool,
    locked, and users may change only the node counts."""
    path = hub.prefix / "etc" / "azpar" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[admin]\nlocked = ["batch_account_url", "storage_account_url", "auth", "pool_id"]\n')
    write_profile_file(path, batch, azurite, name="hubtest", pool_id="azpar-hub")
    os.chmod(path, 0o644)
    return path


def _swap_container(url: str, old: str, new: str) -> str:
    assert f"/{old}/" in url or f"/{old}?" in url, (url, old)
    return url.replace(f"/{old}", f"/{new}", 1)


@pytest.mark.azure
def test_two_users_on_one_pool_and_account_are_kept_apart(hub, kernels, batch, azurite, blob_service):
    system_file = _write_system_profile(hub, batch, azurite)
    ids = {}
    for user, kernel in kernels.items():
        config_text = kernel.ok("%azpar config hubtest")["stdout"]
        assert f"(system: {system_file}, locked by the administrator)" in config_text, config_text
        kernel.ok("%%azpar -q --keep --profile hubtest -o tens for x in range(6):\nx * 10", timeout=180)
        assert kernel.value("tens") == [0, 10, 20, 30, 40, 50]
        ids[user] = kernel.value("__import__('azpar_magic').jobs()[-1].id")
        assert ids[user].startswith(f"azpar-{identity.slug(user)}-")

    created = {r.body["id"]: r.body for r in batch.requests_for("Jobs_CreateJob")}
    assert set(created) == set(ids.values())
    for user, job_id in ids.items():
        metadata = {m["name"]: m["value"] for m in created[job_id]["metadata"]}
        assert metadata["azpar-user"] == user
        assert created[job_id]["poolInfo"]["poolId"] == "azpar-hub"  # one shared pool
        containers = {c.name: c.metadata for c in blob_service.list_containers(
            name_starts_with=f"azpar-{identity.slug(user)}-", include_metadata=True)}
        assert {f"{job_id}-in", f"{job_id}-out", f"azpar-{identity.slug(user)}-cache"} <= set(containers), containers
        assert all(meta.get("azpar_user") == identity.slug(user) for meta in containers.values()), containers

    # Each user lists only their own jobs.
    for user, kernel in kernels.items():
        listed = _job_ids_listed(kernel)
        other = next(u for u in USERS if u != user)
        assert ids[user] in listed and ids[other] not in listed

    # Nothing of either kernel's environment went into any Batch request.
    secrets_by_user = {user: _secrets_of(_environment(kernel)) for user, kernel in kernels.items()}
    tasks = [t for r in batch.requests_for("Tasks_CreateTaskCollection") for t in r.body["value"]]
    preps = [job["jobPreparationTask"] for job in created.values()]
    # Tasks carry their inputs; job preparation its script and installer (base64: decoded below,
    # so a secret inside them would still be found).
    assert {s["name"] for t in tasks + preps for s in t.get("environmentSettings") or []} <= {
        commands.TASK_ENV, commands.SCRIPT_ENV, commands.INSTALLER_ENV}
    searched = "".join(repr(r.body) for r in batch.requests_for("Tasks_CreateTaskCollection"))
    assert all(f"{job_id}-out" in searched for job_id in ids.values())  # the task definitions are in there
    for rec in batch.requests:
        text = repr(rec.body) + repr(rec.headers) + rec.path + _decoded_scripts(rec.body)
        for user, env in secrets_by_user.items():
            leaked = [name for name, value in env.items() if value in text]
            assert not leaked, f"{rec.operation_id} carries {user}'s {leaked}"
    for env in secrets_by_user.values():
        assert env["JUPYTERHUB_API_TOKEN"] not in azurite.log

    # One user's SAS tokens are refused on the other user's containers; they do work on their own.
    alice, bob = (ids[u] for u in USERS)
    prep = {f["filePath"]: f["httpUrl"] for f in created[alice]["jobPreparationTask"]["resourceFiles"]}
    envelope_url = next(url for path, url in prep.items() if path.endswith(".azpe") or "envelope" in path)
    worker_url = next(url for url in prep.values() if "/worker/" in url)
    task = next(t for r in batch.requests_for("Tasks_CreateTaskCollection") for t in r.body["value"]
                if f"/{alice}-out" in t["outputFiles"][0]["destination"]["container"]["containerUrl"])
    out = task["outputFiles"][0]["destination"]["container"]
    # A task's write token is for its own result blob only (backends/azure/run.py _output).
    own_blob_url = out["containerUrl"].replace("?", f"/{out['path']}?", 1)
    assert sas_status("GET", envelope_url) == 200
    assert sas_status("PUT", own_blob_url, b"mine") == 201
    bob_envelope = _swap_container(envelope_url, f"{alice}-in", f"{bob}-in")
    assert sas_status("GET", bob_envelope) == 403
    bob_out = _swap_container(own_blob_url, f"{alice}-out", f"{bob}-out")
    assert sas_status("PUT", bob_out, b"not yours") == 403
    bob_cache = _swap_container(worker_url, f"azpar-{identity.slug('alice')}-cache",
                                f"azpar-{identity.slug('bob.smith')}-cache")
    assert sas_status("GET", bob_cache) == 403
    for job_id in ids.values():
        for suffix in ("-in", "-out"):
            blob_service.delete_container(job_id + suffix)

    # A user's own file may not change what the administrator locked: the cell is refused, saying why.
    user_file = hub.base / "xdg-config" / "bob.smith" / "azpar" / "config.toml"
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text('[profiles.hubtest]\npool_id = "bobs-own-pool"\nspot_nodes = 1\n')
    try:
        jobs_before = len(batch.requests_for("Jobs_CreateJob"))
        out = kernels["bob.smith"].execute("%%azpar -q --profile hubtest for x in range(2):\nx")
        message = f"{out['error']}{out['stderr']}"
        assert out["status"] == "error" and "pool_id of profile 'hubtest'" in message, out
        assert str(user_file) in message and str(system_file) in message and "locked" in message, message
        assert len(batch.requests_for("Jobs_CreateJob")) == jobs_before
    finally:
        user_file.unlink()


def _fresh_kernel_has_magic(prefix: Path, tmp_path: Path) -> bool:
    """Start a kernel of the hub users' environment with jupyter_client, outside the hub."""
    import json

    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "hubenv"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [prefix_python(prefix), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hub users' environment", "language": "python"}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "IPYTHONDIR": str(tmp_path / "ipython"), "AZPAR_JOB_STORE": str(tmp_path / "store")}
    km = KernelManager(kernel_name="hubenv", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        seen: list[str] = []
        reply = kc.execute_interactive(f"print({MAGIC_PRESENT})", timeout=60,
                                       output_hook=lambda m: seen.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply
        return "".join(seen).strip() == "True"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_disable_removes_auto_loading_for_fresh_kernels(hub, kernels, tmp_path):
    startup = hub.prefix / "etc" / "ipython" / "startup" / "50-azpar_magic.py"
    assert startup.exists() and _fresh_kernel_has_magic(hub.prefix, tmp_path / "before")
    try:
        assert "disabled" in run_enable(hub.prefix, "disable")
        assert not startup.exists()
        assert not _fresh_kernel_has_magic(hub.prefix, tmp_path / "after")
        fresh = hub.kernel("alice")  # and a new kernel of a running hub server
        try:
            assert fresh.value(MAGIC_PRESENT) is False
            out = fresh.execute("%%azpar for x in range(2):\nx")
            assert out["status"] == "error" and "azpar" in f"{out['error']}{out['stderr']}", out
        finally:
            fresh.close()
        # Kernels started before keep what they loaded.
        assert kernels["alice"].value(MAGIC_PRESENT) is True
    finally:
        run_enable(hub.prefix, "enable")


def test_the_hub_logs_users_in_with_the_dummy_password_only(hub):
    """The hub really is the DummyAuthenticator hub described above (a login form, one password)."""
    import http.cookiejar
    import re
    import urllib.parse

    from .conftest import PASSWORD

    def login(password: str) -> tuple[int, str]:
        jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
        page = opener.open(f"{hub.url}hub/login", timeout=10).read().decode()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"username": "carol", "password": password, "_xsrf": xsrf}).encode()
        try:
            with opener.open(f"{hub.url}hub/login", data=form, timeout=10) as response:
                return response.status, ""
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location", "")

    assert login("not-the-password")[0] == 403
    status, location = login(PASSWORD)
    assert status == 302 and location.startswith("/hub/"), (status, location)


def _decoded_scripts(body) -> str:
    """The base64 scripts (start task, job preparation) anywhere in a request body, decoded."""
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("name") in (commands.SCRIPT_ENV, commands.INSTALLER_ENV) and isinstance(node.get("value"), str):
                found.append(base64.b64decode(node["value"]).decode("utf-8", "replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return "".join(found)

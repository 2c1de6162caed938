"""A real JupyterHub on loopback, as a platform team would run one, for the hub tests.

- The hub is this venv's ``jupyterhub`` with ``configurable-http-proxy`` from node_modules,
  DummyAuthenticator (with a password) and SimpleLocalProcessSpawner, on free 127.0.0.1
  ports; the test drives it through its REST API with a service token.
- The users' servers and kernels run from a throwaway environment (a venv in a temporary
  folder that sees this venv's packages through a .pth file), and the enable command is
  applied to *that* environment with ``--sys-prefix``: nothing is written into the
  developer's venv, and the kernels load ``%%azpar`` only because of the enable command.
  Its ``etc/azpar/config.toml`` is the administrator's system file.
- Every user gets a home, IPYTHONDIR, XDG folders of their own under the test's temporary
  folder; both users share one job store root (AZPAR_JOB_STORE), one Batch pool and one
  Storage account, as hub users sharing one OS account would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.batch_emulator.pytest_plugin import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "jupyterhub"
PASSWORD = "hub-test-password"
KERNEL_SECRET = "a2VybmVsLW9ubHktdmFsdWUtbmV2ZXItc2hpcHBlZA"  # only in the kernels' environment


def make_prefix(base: Path) -> Path:
    """A venv that runs this venv's packages: its own sys.prefix (so etc/ipython and
    etc/azpar there are its own), no pip, no copies."""
    prefix = base / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120)
    site = Path(subprocess.run([str(prefix / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_azpar_test_parent.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return prefix


def prefix_python(prefix: Path) -> str:
    return str(prefix / "bin" / "python")


def run_enable(prefix: Path, command: str) -> str:
    done = subprocess.run([prefix_python(prefix), "-m", "azpar_magic", command, "--sys-prefix"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Hub:
    url: str  # the proxy's public URL, ending in /
    token: str  # the test service's API token (admin of users and servers)
    base: Path
    prefix: Path
    store: Path
    log: Path
    process: subprocess.Popen
    users: dict[str, dict] = field(default_factory=dict)

    def api(self, method: str, path: str, body: Any = None, *, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}hub/api/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def user_api(self, user: str, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}user/{user}/api/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def start_server(self, user: str, timeout: float = 60) -> None:
        """Create the user (once) and start their server; wait until the proxy routes to it."""
        if user not in self.users:
            try:
                self.api("POST", f"users/{user}")
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # exists
                    raise
            self.users[user] = {}
        try:
            self.api("POST", f"users/{user}/server")
        except urllib.error.HTTPError as exc:
            if exc.code != 400:  # already running
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"users/{user}")
            server = (model.get("servers") or {}).get("", {})
            if server.get("ready"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the server of {user} did not become ready:\n{self.log.read_text()[-4000:]}")

    def kernel(self, user: str) -> HubKernel:
        model = self.user_api(user, "POST", "kernels", {"name": "python3"})
        return HubKernel(self, user, model["id"])


class HubKernel:
    """A kernel of a user's server, driven like a frontend does: the kernel's websocket
    through the hub's proxy, with the Jupyter messaging protocol in JSON."""

    def __init__(self, hub: Hub, user: str, kernel_id: str):
        import websocket

        self.hub, self.user, self.id = hub, user, kernel_id
        ws_url = hub.url.replace("http://", "ws://") + f"user/{user}/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {hub.token}"], timeout=120)
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 120) -> dict:
        """Run ``code``; return {"status", "stdout", "stderr", "result", "error"}."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out: dict[str, Any] = {"status": None, "stdout": "", "stderr": "", "result": None, "error": None}
        idle = reply = False
        deadline = time.monotonic() + timeout
        while not (idle and reply):
            self.ws.settimeout(max(1.0, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "execute_result":
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                reply, out["status"] = True, content["status"]
            assert time.monotonic() < deadline, f"no reply to {code!r} within {timeout}s: {out}"
        return out

    def ok(self, code: str, timeout: float = 120) -> dict:
        out = self.execute(code, timeout)
        assert out["status"] == "ok", f"{code!r} failed in {self.user}'s kernel: {out}"
        return out

    def value(self, expression: str) -> Any:
        """A JSON-able value computed in the kernel."""
        out = self.ok(f"import json as _j; print(_j.dumps({expression}))")
        return json.loads(out["stdout"].strip().splitlines()[-1])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            try:
                self.hub.user_api(self.user, "DELETE", f"kernels/{self.id}")
            except (urllib.error.URLError, OSError):
                pass


def _hub_config(base: Path, prefix: Path, store: Path, ports: dict[str, int], token: str, env: dict) -> Path:
    chp = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
    if not chp.exists():
        pytest.fail(f"configurable-http-proxy is not installed ({chp} is missing): run `npm ci` in {ROOT}.",
                    pytrace=False)
    args = ["--allow-root"] if os.geteuid() == 0 else []
    text = f"""
import os
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {ports['public']}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {ports['hub']}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
c.JupyterHub.db_url = "sqlite:///" + {str(base / 'hub.sqlite')!r}
c.JupyterHub.cookie_secret_file = {str(base / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(base / 'hub.pid')!r}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.check_running_servers = False
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(base / 'home' / '{username}')!r}
c.Spawner.cmd = [{str(prefix / 'bin' / 'python')!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.args = {args!r}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
base = {str(base)!r}
fixed = {env!r}
c.Spawner.environment = dict(
    fixed,
    JUPYTERHUB_SINGLEUSER_APP="jupyter_server.serverapp.ServerApp",
    AZPAR_JOB_STORE={str(store)!r},
    IPYTHONDIR=lambda spawner: os.path.join(base, "ipython", spawner.user.name),
    XDG_CONFIG_HOME=lambda spawner: os.path.join(base, "xdg-config", spawner.user.name),
    XDG_DATA_HOME=lambda spawner: os.path.join(base, "xdg-data", spawner.user.name),
    JUPYTER_CONFIG_DIR=lambda spawner: os.path.join(base, "jupyter-config", spawner.user.name),
    JUPYTER_DATA_DIR=lambda spawner: os.path.join(base, "jupyter-data", spawner.user.name),
    JUPYTER_RUNTIME_DIR=lambda spawner: os.path.join(base, "jupyter-runtime", spawner.user.name),
)
c.JupyterHub.services = [{{"name": "azpar-test", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "azpar-test-admin", "services": ["azpar-test"],
                            "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"]}}]
"""
    path = base / "jupyterhub_config.py"
    path.write_text(text)
    return path


def start_hub(base: Path, kernel_env: dict, timeout: float = 60) -> Hub:
    base.mkdir(parents=True, exist_ok=True)
    for folder in ("ipython", "xdg-config", "xdg-data", "jupyter-config", "jupyter-data", "jupyter-runtime", "home"):
        (base / folder).mkdir(exist_ok=True)
    prefix = make_prefix(base)
    run_enable(prefix, "enable")
    store = base / "store"
    ports = {"public": free_port(), "hub": free_port(), "proxy_api": free_port()}
    token = secrets.token_hex(24)
    config = _hub_config(base, prefix, store, ports, token, kernel_env)
    log = base / "hub.log"
    # PYTHONPATH goes through (the spawner keeps it), so kernels import the code under test
    # even when it is not the checkout the venv's editable install points at.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["CONFIGPROXY_AUTH_TOKEN"] = secrets.token_hex(24)
    env["HOME"] = str(base)
    with open(log, "wb") as fh:
        process = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(config)],
                                   cwd=base, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    hub = Hub(f"http://127.0.0.1:{ports['public']}/", token, base, prefix, store, log, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyterhub exited with {process.returncode}:\n{log.read_text()[-6000:]}", pytrace=False)
        try:
            hub.api("GET", "", timeout=2)
            return hub
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                stop_hub(hub)
                pytest.fail(f"jupyterhub did not answer within {timeout}s:\n{log.read_text()[-6000:]}", pytrace=False)
            time.sleep(0.2)


def stop_hub(hub: Hub) -> None:
    """Stop the hub (it stops the users' servers and the proxy on the way out); whatever is
    left in its process group after 20 s is killed."""
    if hub.process.poll() is None:
        hub.process.send_signal(signal.SIGTERM)
        try:
            hub.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(hub.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    hub.process.wait(timeout=10)


@pytest.fixture(scope="session")
def hub(tmp_path_factory, azurite, batch_service):
    """The hub, with the keys of the test Batch service and Azurite in every kernel's
    environment (as an administrator might provide them), and a value that stands for
    any other secret a kernel's environment holds."""
    kernel_env = {"AZPAR_BATCH_KEY": batch_service.key, "AZPAR_STORAGE_KEY": azurite.account_key,
                  "HUBTEST_KERNEL_SECRET": KERNEL_SECRET}
    started = start_hub(tmp_path_factory.mktemp("jupyterhub"), kernel_env)
    try:
        yield started
    finally:
        stop_hub(started)
        if getattr(started, "failed", False):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "hub.log").write_text(started.log.read_text(errors="replace"))


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        found = item.funcargs.get("hub") if hasattr(item, "funcargs") else None
        if found is not None:
            found.failed = True

"""A real JupyterLab on loopback and Debian's headless Chromium driven by Playwright.

The server runs from this venv with its own config, data, runtime, settings and workspace
folders (nothing of the developer's leaks in), a random token and a free port on
127.0.0.1, and with every feature that would reach the internet turned off: the news feed
and update check (server and frontend), and the extension manager (read-only, plugin
disabled). The browser is the chromium package's executable (Playwright's own browser
download does not work here); every request it makes to another host is aborted and
recorded, and a test fails if there was one. Screenshots and the server log go to
test-artifacts/jupyterlab/ when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.batch_emulator.pytest_plugin import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "jupyterlab"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 # Belt and braces: no host name resolves (the server is addressed as 127.0.0.1).
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SECRET = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1zaG93"  # in the kernel's environment only
DISABLED_PLUGINS = {
    "@jupyterlab/apputils-extension:announcements": True,  # news and update check
    "@jupyterlab/extensionmanager-extension:plugin": True,  # searches PyPI when opened
}


def pytest_runtest_makereport(item, call):
    if call.when == "call":
        item.failed_call = call.excinfo is not None


def chromium_executable() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if not found:
        pytest.fail("Debian's chromium is not installed (no `chromium` on PATH): the JupyterLab browser tests "
                    "need it. scripts/setup.sh installs it (apt-get install -y chromium).", pytrace=False)
    return found


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    xdg_config: Path
    log: Path
    process: subprocess.Popen
    outside_requests: list = field(default_factory=list)

    def page_url(self, notebook: str) -> str:
        return f"{self.url}lab/tree/{notebook}?token={self.token}"


def _write_config(base: Path, root: Path, port: int, token: str) -> None:
    config_dir = base / "jupyter-config"
    (config_dir / "labconfig").mkdir(parents=True)
    settings = base / "lab-user-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    server = {
        "ServerApp": {"ip": "127.0.0.1", "port": port, "port_retries": 0, "open_browser": False,
                      "root_dir": str(root), "allow_root": os.geteuid() == 0,
                      "jpserver_extensions": {"jupyter_lsp": False}},  # no language-server scan
        "IdentityProvider": {"token": token},
        "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                   "extension_manager": "readonly", "expose_app_in_browser": True,
                   "user_settings_dir": str(settings), "workspaces_dir": str(base / "lab-workspaces")},
    }
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(server, indent=1))
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": DISABLED_PLUGINS}))
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))  # every cell attached and laid out: stable to read


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A JupyterLab server from this venv; its kernels inherit the isolated environment."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # artifacts of an earlier run would mislead
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    _write_config(base, root, port, token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZPAR_", "JUPYTER_"))}
    for name in ("ipython", "xdg-config", "jupyter-data", "jupyter-runtime"):
        (base / name).mkdir()
    env.update(JUPYTER_CONFIG_DIR=str(base / "jupyter-config"), JUPYTER_DATA_DIR=str(base / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(base / "jupyter-runtime"), IPYTHONDIR=str(base / "ipython"),
               XDG_CONFIG_HOME=str(base / "xdg-config"), JUPYTER_PLATFORM_DIRS="1", AZPAR_BATCH_KEY=SECRET)
    env.pop("PYTHONSTARTUP", None)
    log = base / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser"], cwd=root, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"jupyter lab did not answer within 90 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    server = Lab(url, token, root, base / "xdg-config", log, process)
    yield server
    process.terminate()  # our own child, by its pid
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@pytest.fixture(scope="package")
def browser():
    """Headless chromium for this package's tests only: Playwright's sync API keeps its event
    loop registered as running in the main thread while it is open, so a later test's
    ``asyncio.run`` would be refused ("cannot be called from a running event loop")."""
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]' (scripts/setup.sh does)", pytrace=False)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def new_page(browser, lab: Lab):
    """A page whose requests to anything but the server are aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    host = urlparse(lab.url).netloc

    def guard(route):
        target = urlparse(route.request.url)
        if target.scheme in ("http", "https", "ws", "wss") and target.netloc != host:
            lab.outside_requests.append(route.request.url)
            return route.abort()
        return route.continue_()

    context.route("**/*", guard)
    return context, context.new_page()


def save_artifacts(request, page, lab: Lab, shots: list[Path]) -> None:
    """On failure: a screenshot of the page, the pictures taken along the way, the log."""
    if not getattr(request.node, "failed_call", False):
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}-page.png"), full_page=True)
    except Exception as exc:  # the page may be gone; the other artifacts still help
        (ARTIFACTS / f"{name}-page.txt").write_text(f"no screenshot: {exc}\n")
    for shot in shots:
        if shot.exists():
            shutil.copy(shot, ARTIFACTS / f"{name}-{shot.name}")
    shutil.copy(lab.log, ARTIFACTS / f"{name}-jupyterlab.log")

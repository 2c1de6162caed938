"""The job panel, the pool panel and the config form in a real JupyterLab, read from the
page while the cells run (Debian's headless Chromium, driven by Playwright).

One notebook, one kernel: the cells are run one at a time through JupyterLab's own
run-cell command (the path Shift+Enter takes, so the kernel gets the cell id JupyterLab
sends), and the page is polled while the kernel is still busy.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from .conftest import SECRET, new_page, save_artifacts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

N_ITEMS, WORKERS = 24, 3
BATCH_URL, STORAGE_URL = "http://127.0.0.1:9/acct", "http://127.0.0.1:9/devstore"  # port 9: nothing listens
CELLS = [
    "%load_ext azpar_magic",
    # Warm the pool so the run below starts on ready workers (its timing is then predictable).
    f"%%azpar -q --workers {WORKERS} for i in range({WORKERS}):\ni",
    f"%%azpar -o squares --workers {WORKERS} --chunk-size 1 for i in range({N_ITEMS}):\n"
    "import time\ntime.sleep(0.3)\ni * i",
    "print('squares:', len(squares), sum(squares))",
    f'%%azpar --workers {WORKERS} --chunk-size 1 for x in ["a", "b", "c", "d"]:\n'
    'print("working on", x)\nif x == "b":\n    raise ValueError(f"bad item {x}")\nx',
    f"%%azpar -o later --no-wait --workers {WORKERS} --chunk-size 1 for i in range(12):\n"
    "import time\ntime.sleep(0.4)\ni + 1",
    "%azpar status",
    "%azpar config lab",
]
LOAD, WARM, RUN, CHECK, FAIL, NOWAIT, STATUS, CONFIG = range(len(CELLS))

# Everything the tests read from a cell's panel, in one round trip.
READ_PANEL = """(i) => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
  const p = cell && cell.querySelector('.azpar-panel');
  if (!p) return null;
  const count = n => { const e = p.querySelector(`.azpar-count[data-name="${n}"]`); return e ? +e.dataset.count : null; };
  const seg = p.querySelector('.azpar-seg[data-name="succeeded"]');
  const items = p.querySelector('.azpar-items');
  return {classes: p.className, nodes: p.querySelectorAll('.azpar-node').length,
          nodeStates: Array.from(p.querySelectorAll('.azpar-node')).map(n => n.dataset.state),
          running: count('running'), succeeded: count('succeeded'), queued: count('queued'), failed: count('failed'),
          width: seg ? seg.getBoundingClientRect().width : null,
          label: (p.querySelector('.azpar-label') || {}).textContent,
          items: items ? items.textContent : null,
          failureLines: Array.from(p.querySelectorAll('.azpar-failure-line')).map(e => e.textContent)};
}"""


@pytest.fixture(scope="module")
def notebook(lab, browser, tmp_path_factory):
    """The notebook open in JupyterLab, its kernel connected and the extension loaded."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(src) for src in CELLS],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, str(lab.root / "panel.ipynb"))
    context, page = new_page(browser, lab)
    page.goto(lab.page_url("panel.ipynb"))
    # Running a cell as soon as the toolbar says idle lost requests; wait for the
    # kernel connection itself (see notes/jupyter.md).
    page.wait_for_function("""() => {
        const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return !!k && k.connectionStatus === 'connected' && k.status === 'idle'
            && document.querySelectorAll('.jp-Notebook .jp-Cell').length === %d;
    }""" % len(CELLS), timeout=60_000)
    page.shots = []  # pictures taken along the way, kept as artifacts on failure
    page.shot_dir = tmp_path_factory.mktemp("shots")
    run_cell(page, LOAD)
    wait_cell(page, LOAD)
    assert "%%azpar runs loops on the local pool" in cell_text(page, LOAD)
    yield page
    context.close()


@pytest.fixture
def page(request, notebook, lab):
    yield notebook
    save_artifacts(request, notebook, lab, notebook.shots)


@pytest.fixture(autouse=True)
def no_outside_requests(lab):
    yield
    assert lab.outside_requests == [], f"the page tried to reach other hosts: {lab.outside_requests}"


def run_cell(page, index: int) -> None:
    """Start cell ``index`` as Shift+Enter would, without waiting for it to finish."""
    page.evaluate("""(i) => {
        const app = window.jupyterapp, nb = app.shell.currentWidget;
        window.__azparDone = window.__azparDone || {};
        window.__azparDone[i] = false;
        nb.content.activeCellIndex = i;
        nb.content.deselectAll();
        app.commands.execute('notebook:run-cell').then(() => { window.__azparDone[i] = true; });
    }""", index)


def wait_cell(page, index: int, timeout: float = 60) -> None:
    page.wait_for_function("(i) => window.__azparDone && window.__azparDone[i] === true", arg=index,
                           timeout=timeout * 1000)


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def cell_text(page, index: int) -> str:
    return cell(page, index).locator(".jp-OutputArea").inner_text()


def shoot(page, locator, name: str) -> Path:
    path = page.shot_dir / f"{name}.png"
    locator.screenshot(path=str(path))
    page.shots.append(path)
    return path


def test_panel_moves_while_the_cell_runs_then_shows_success(page):
    run_cell(page, WARM)
    wait_cell(page, WARM)
    run_cell(page, RUN)
    cell(page, RUN).scroll_into_view_if_needed()
    samples, shot = [], None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = page.evaluate(READ_PANEL, RUN)
        if seen is not None:
            samples.append(seen)
            if "azpar-success" in seen["classes"] or "azpar-danger" in seen["classes"]:
                break
            if shot is None and seen["running"] and seen["succeeded"] and seen["succeeded"] >= N_ITEMS // 3:
                shot = shoot(page, cell(page, RUN), "panel-running")
        time.sleep(0.1)
    wait_cell(page, RUN)
    live = [s for s in samples if "azpar-info" in s["classes"]]
    assert live, f"the panel was never seen while the job ran: {samples[-3:]}"
    # While the cell blocked: a square per worker, tasks running, and the bar moving.
    assert max(s["nodes"] for s in live) == WORKERS, live[-1]
    assert any(s["running"] > 0 for s in live), live
    assert any("running" in s["nodeStates"] for s in live), live
    succeeded = [s["succeeded"] for s in live]
    assert succeeded == sorted(succeeded) and len(set(succeeded)) >= 3, succeeded
    widths = [s["width"] for s in live]
    assert widths[-1] > widths[0], widths
    # After the end: the success style and the final counts.
    final = page.evaluate(READ_PANEL, RUN)
    assert "azpar-success" in final["classes"] and "azpar-info" not in final["classes"], final
    assert final["label"] == "succeeded"
    assert (final["succeeded"], final["running"], final["queued"], final["failed"]) == (N_ITEMS, 0, 0, 0)
    assert final["items"] == f"{N_ITEMS}/{N_ITEMS} done"
    assert "azpar [" not in cell_text(page, RUN)  # the panel replaces the text line
    shoot(page, cell(page, RUN), "panel-final")
    if shot is not None and os.environ.get("AZPAR_PANEL_SCREENSHOT"):  # for the README
        target = Path(os.environ["AZPAR_PANEL_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
    assert shot is not None, "no moment with tasks running and a third of them done was seen"
    run_cell(page, CHECK)
    wait_cell(page, CHECK)
    assert cell_text(page, CHECK).strip() == f"squares: {N_ITEMS} {sum(i * i for i in range(N_ITEMS))}"
    # A late update cannot undo the final style: the panel's thread has ended and a redraw
    # of the page shows the same (checked again after other cells ran).
    assert "azpar-success" in page.evaluate(READ_PANEL, RUN)["classes"]


def test_failing_run_shows_danger_and_the_failure_line(page):
    run_cell(page, FAIL)
    wait_cell(page, FAIL)
    final = page.evaluate(READ_PANEL, FAIL)
    assert final is not None
    assert "azpar-danger" in final["classes"], final
    assert final["label"] == "failed"
    assert final["failureLines"] == ["iteration 1 (item 'b'): ValueError: bad item b (line 4)"], final
    # Below the panel: what the iterations printed, then the error with the remote traceback.
    text = cell_text(page, FAIL)
    assert "iteration 1 (item 'b') raised ValueError: bad item b (cell line 4)" in text, text
    assert "working on a\nworking on b" in text
    # The traceback and the iteration's output are behind a disclosure: closed, then open.
    failure = cell(page, FAIL).locator(".azpar-failure").first
    traceback = failure.locator(".azpar-traceback")
    assert not traceback.is_visible()
    failure.locator("summary").click()
    traceback.wait_for(state="visible", timeout=5000)
    assert 'raise ValueError(f"bad item {x}")' in traceback.inner_text()
    assert "working on b" in failure.locator(".azpar-output").inner_text()
    shoot(page, cell(page, FAIL), "panel-failed")


READ_POOL = """(i) => {
  const pools = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell')[i].querySelectorAll('.azpar-pool'));
  const p = pools.find(e => e.textContent.includes('%d worker processes'));
  if (!p) return null;
  const count = n => +p.querySelector(`.azpar-count[data-name="${n}"]`).dataset.count;
  return {nodes: p.querySelectorAll('.azpar-node').length, running: count('running'), queued: count('queued'),
          jobs: Array.from(p.querySelectorAll('.azpar-pool-job')).map(e => e.dataset.job), text: p.textContent};
}""" % WORKERS


def test_no_wait_panel_keeps_updating_and_status_is_live(page):
    run_cell(page, NOWAIT)
    wait_cell(page, NOWAIT, timeout=10)  # returns at once with the job handle
    first = page.evaluate(READ_PANEL, NOWAIT)
    assert first is not None and "azpar-info" in first["classes"], first  # the handle shows as the live panel
    run_cell(page, STATUS)
    wait_cell(page, STATUS)
    busy = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pool = page.evaluate(READ_POOL, STATUS)
        if pool and pool["jobs"] and pool["running"] > 0:
            busy = pool
            break
        time.sleep(0.1)
    assert busy is not None, "the pool panel never showed the --no-wait job running"
    assert busy["nodes"] == WORKERS
    shoot(page, cell(page, STATUS), "pool-busy")
    # The kernel is idle now; both panels go on changing from their threads.
    page.wait_for_function("(i) => { const p = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
                           ".querySelector('.azpar-panel'); return p && p.classList.contains('azpar-success'); }",
                           arg=NOWAIT, timeout=30_000)
    final = page.evaluate(READ_PANEL, NOWAIT)
    assert (final["succeeded"], final["items"]) == (12, "12/12 done"), final
    page.wait_for_function(READ_POOL.replace("return {nodes", "if (p.querySelector('.azpar-pool-job')) return null;"
                                             " return {nodes"), arg=STATUS, timeout=10_000)
    idle = page.evaluate(READ_POOL, STATUS)
    assert idle["running"] == 0 and "no job running" in idle["text"]
    run_cell(page, CHECK)  # the kernel answers while the panels update
    wait_cell(page, CHECK)


def test_config_form_saves_the_profile_file(page, lab):
    run_cell(page, CONFIG)
    wait_cell(page, CONFIG)
    form = cell(page, CONFIG).locator(".azpar-config-form")
    form.wait_for(timeout=10_000)

    def field(name: str):
        return form.locator(f".azpar-field-{name}")

    assert "is missing" in field("batch_account_url").locator(".azpar-field-message").inner_text()
    # Accounts on a closed loopback port: the connection test below fails fast, offline.
    field("batch_account_url").locator("input").fill(BATCH_URL)
    field("storage_account_url").locator("input").fill(STORAGE_URL)
    field("auth").locator("select").select_option("shared-key")
    vm = field("vm_size").locator("input")
    vm.fill("huge")
    vm.press("Tab")
    message = field("vm_size").locator(".azpar-field-message")
    page.wait_for_function("(e) => e.textContent.includes('not an Azure VM size')", arg=message.element_handle())
    vm.fill("Standard_D4s_v3")
    vm.press("Tab")
    page.wait_for_function("(e) => e.textContent === ''", arg=message.element_handle())
    spot = field("spot_nodes").locator("input")
    spot.fill("5")
    spot.press("Tab")
    # A key pasted into a field that takes a variable's name is dropped, not kept.
    key_field = field("batch_key_env").locator("input")
    key_field.fill(SECRET)
    key_field.press("Tab")
    page.wait_for_function("(e) => e.value === 'AZPAR_BATCH_KEY'", arg=key_field.element_handle())
    assert "looked like a secret" in field("batch_key_env").inner_text()
    assert "AZPAR_BATCH_KEY is set in the kernel's environment" in field("batch_key_env").inner_text()
    assert field("storage_account_url").locator(".azpar-field-message").inner_text() == ""

    form.locator("button", has_text="Save").click()
    status = form.locator(".azpar-form-status")
    page.wait_for_function("(e) => e.textContent.includes('saved profile')", arg=status.element_handle(),
                           timeout=10_000)
    path = lab.xdg_config / "azpar" / "config.toml"
    assert str(path) in status.inner_text()
    saved = tomllib.loads(path.read_text())
    assert saved == {"profiles": {"lab": {"batch_account_url": BATCH_URL, "storage_account_url": STORAGE_URL,
                                          "auth": "shared-key", "vm_size": "Standard_D4s_v3", "spot_nodes": 5}}}
    assert path.stat().st_mode & 0o777 == 0o600
    # Test connection calls the real session function; its failure is shown in the form.
    form.locator("button", has_text="Test connection").click()
    page.wait_for_function("(e) => e.textContent.includes(\"connection test of 'lab' failed\")",
                           arg=status.element_handle(), timeout=60_000)
    assert "Connection refused" in status.inner_text() or "refused" in status.inner_text().lower()
    shoot(page, form, "config-form")
    values = page.evaluate("() => Array.from(document.querySelectorAll('input, textarea')).map(e => e.value)")
    assert SECRET not in page.content() and all(SECRET not in v for v in values)

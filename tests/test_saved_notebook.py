"""What a notebook run headless (nbclient, as papermill and nbconvert --execute run it)
keeps in its saved file: the final state of each job, in a small bounded number of outputs.

nbclient applies ``update_display_data`` to the output it displayed first, so a progress
display updated in place is one output holding the last picture; a stream line refreshed
with ``\\r`` would be a new output every refresh, and a display taken at submission would
say "running" forever.
"""

from __future__ import annotations

import json
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

# 16 iterations of 0.6 s on 2 workers: about 5 s, ten refreshes of a twice-a-second line.
SLOW = '''%%azpar -o squares --workers 2 --chunk-size 1 for i in range(16):
import time
time.sleep(0.6)
i * i'''
FAILING = '''%%azpar -o kept --workers 2 --chunk-size 1 --errors remove for x in range(6):
import time
time.sleep(0.4)
if x == 4:
    raise KeyError(x)
x'''
RUNNING = re.compile(r"\brunning\b|queued|0/\d+ done")


def _run_notebook(tmp_path, monkeypatch, mode: str) -> list[list[dict]]:
    """Execute the notebook in a fresh kernel with AZPAR_DISPLAY=mode and return each code
    cell's outputs as the saved .ipynb file has them."""
    monkeypatch.setenv("AZPAR_DISPLAY", mode)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cells = ["%load_ext azpar_magic", SLOW, "print(squares == [i * i for i in range(16)])", FAILING]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    path = tmp_path / f"run-{mode}.ipynb"
    nbformat.write(nb, str(path))
    saved = json.loads(path.read_text())
    return [cell["outputs"] for cell in saved["cells"]]


def _texts(outputs: list[dict]) -> list[str]:
    """The plain text of each output: stream text, or its data's text/plain."""
    found = []
    for out in outputs:
        if out["output_type"] == "stream":
            found.append("".join(out["text"]))
        if "text/plain" in out.get("data", {}):
            found.append("".join(out["data"]["text/plain"]))
    return found


@pytest.mark.timeout(300)
def test_text_mode_saves_one_output_with_the_final_state(tmp_path, monkeypatch):
    _, slow, check, failing = _run_notebook(tmp_path, monkeypatch, "text")
    assert "".join(_texts(check)) == "True\n"
    assert len(slow) <= 2, [o["output_type"] for o in slow]  # not one output per refresh
    texts = _texts(slow)
    assert not [t for t in texts if RUNNING.search(t)], texts
    assert any(re.search(r"succeeded · 16/16 done", t) for t in texts), texts
    texts = _texts(failing)
    assert len(failing) <= 3 and not [t for t in texts if RUNNING.search(t)], texts
    assert any("done with 1 failed · 5/6 done" in t for t in texts), texts
    assert any("iteration 4 (item 4): KeyError: 4 (line 5)" in t for t in texts), texts


@pytest.mark.timeout(300)
def test_widget_mode_saves_the_final_state_beside_the_widget(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    _, slow, check, failing = _run_notebook(tmp_path, monkeypatch, "widget")
    assert "".join(_texts(check)) == "True\n"
    (panel,) = [o for o in slow if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(slow) == 1, slow
    assert re.search(r"succeeded · 16/16 done", "".join(panel["data"]["text/plain"])), panel["data"]
    page = "".join(panel["data"].get("text/html", ""))  # what viewers without the widget's state draw
    assert 'data-state="succeeded" data-final="true"' in page and 'data-count="16"' in page, page
    texts = _texts(slow)
    assert not [t for t in texts if RUNNING.search(t)], texts
    texts = _texts(failing)
    assert not [t for t in texts if RUNNING.search(t)], texts
    assert any("done with 1 failed · 5/6 done" in t for t in texts), texts

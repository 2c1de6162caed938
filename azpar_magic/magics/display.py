"""What a job shows in the notebook: the widget panel or the text line (chosen per cell), what its iterations
printed or displayed (replayed in order, within a limit), and where its --outputs went."""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from typing import Any

from IPython.display import display, publish_display_data

from .. import worker
from ..jobs import Job
from .progress import PanelProgress, TextProgress

SHOWN_OUTPUT_LIMIT = 20_000  # characters of captured output shown after a run
DISPLAY_ENV = "AZPAR_DISPLAY"  # auto (default), widget or text
PANELS_KEPT = 50  # live job panels kept for re-display (collect, the --no-wait handle)

_PANELS: OrderedDict[str, Any] = OrderedDict()
_chosen: list[str | None] = [None]  # %config AzparMagics.display; None: AZPAR_DISPLAY decides


def choose_mode(mode: str | None) -> None:
    """The display mode cells use (auto, widget or text) whatever AZPAR_DISPLAY says; None: AZPAR_DISPLAY's."""
    _chosen[0] = mode


def display_mode(shell: Any) -> str:
    """ "widget" or "text" for the current cell.

    Widgets need a kernel with a comm manager (not terminal IPython), ipywidgets, and a
    frontend that draws them. The kernel cannot ask the frontend, but interactive notebook
    frontends (JupyterLab, Notebook 7, VS Code) send the cell's id with each execute request
    while nbclient, nbconvert, papermill, nbval and jupyter_client scripts do not: those
    runs get the text line, which their saved outputs keep readable. AZPAR_DISPLAY=text
    forces the text line; AZPAR_DISPLAY=widget forces widgets wherever a kernel can send
    them (a frontend that sends no cell id but draws widgets, e.g. classic Notebook 6).
    """
    forced = (_chosen[0] or os.environ.get(DISPLAY_ENV, "auto")).strip().lower()
    if forced == "text":
        return "text"
    kernel = getattr(shell, "kernel", None)
    if kernel is None or getattr(kernel, "comm_manager", None) is None:
        return "text"
    try:
        from ..ui import panel  # noqa: F401  (imports ipywidgets)
    except ImportError:
        return "text"
    if forced == "widget":
        return "widget"
    info = getattr(getattr(shell.displayhook, "exec_result", None), "info", None)
    return "widget" if getattr(info, "cell_id", None) else "text"


def panel_for(job: Job) -> Any:
    """The job's live panel (one per job, so every view of it is the same widget),
    following the job from a background thread until it ends."""
    from ..ui.panel import JobPanel

    panel = _PANELS.get(job.id)
    if panel is None:
        panel = _PANELS[job.id] = JobPanel(job)
        while len(_PANELS) > PANELS_KEPT:
            _PANELS.popitem(last=False)
    panel.start()
    return panel


def _job_mimebundle(job: Job) -> Any:
    """A job handle with a live panel displays as that panel (``--no-wait`` cells, the
    job shown again later); the others fall back to their text and HTML reprs."""
    panel = _PANELS.get(job.id)
    return panel.mimebundle(repr(job)) if panel is not None else None


def live_view(shell: Any, job: Job, quiet: bool) -> PanelProgress | TextProgress:
    """The widget panel where the frontend draws widgets, else the text line."""
    if not quiet and display_mode(shell) == "widget":
        panel = panel_for(job)
        handle = display(panel.mimebundle(repr(job)), raw=True, display_id=True)
        return PanelProgress(panel, handle, job)
    return TextProgress(job, quiet, in_place=getattr(shell, "kernel", None) is not None)


def follow(shell: Any, job: Job, quiet: bool) -> None:
    """``--no-wait``: in widget mode the returned handle shows as the live panel, which
    its thread keeps updating after the cell has returned."""
    if quiet or display_mode(shell) != "widget":
        return
    panel_for(job)
    shell.display_formatter.mimebundle_formatter.for_type(Job, _job_mimebundle)


def show_outputs(job: Job) -> None:
    """Replay what iterations printed or displayed, in iteration order, up to
    SHOWN_OUTPUT_LIMIT characters (a display counts 100); past it, one note says how
    much was not shown, of which iterations, and where the whole text is."""
    shown = hidden = hidden_displays = 0
    cut: list[int] = []  # iterations with something not shown
    capped: list[int] = []  # ... and among them those the worker had cut already
    outputs = job.outputs
    for index in sorted(outputs):
        for kind, data in outputs[index]:
            room = SHOWN_OUTPUT_LIMIT - shown
            if kind == "display":
                if room <= 0:
                    hidden_displays += 1
                    cut.append(index)
                    continue
                publish_display_data(data)
                shown += 100
                continue
            text = data[: max(room, 0)]
            if len(text) < len(data):
                hidden += len(data) - len(text)
                cut.append(index)
                if worker.TRUNCATED_MARK in data[len(text) :]:
                    capped.append(index)
            if text:
                shown += len(text)
                (sys.stdout if kind == "stdout" else sys.stderr).write(text)
    sys.stdout.flush()
    if hidden or hidden_displays:
        print(_truncation_note(job.id, shown, hidden, hidden_displays, sorted(set(cut)), capped), file=sys.stderr)
    sys.stderr.flush()


def _iterations_text(indices: list[int]) -> str:
    return (
        f"iteration{'s' * (len(indices) != 1)} "
        + ", ".join(map(str, indices[:10]))
        + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")
    )


def _truncation_note(job_id: str, shown: int, hidden: int, displays: int, indices: list[int], capped: list[int]) -> str:
    """The note after a cell's replayed output was cut: how much, whose, where the rest is;
    ``capped``: iterations the worker had cut already (their text past its cap is gone)."""
    parts = [f"{hidden:,} more character{'s' * (hidden != 1)}"] * bool(hidden)
    parts += [f"{displays} display{'s' * (displays != 1)}"] * bool(displays)
    note = (
        f"\n[azpar: output truncated after {shown:,} characters: {' and '.join(parts)} not shown "
        f"({_iterations_text(indices)}). The whole text of iteration i: "
        f"azpar_magic.attach('{job_id}').output(i) or %azpar logs {job_id} i"
    )
    if capped:
        note += (
            f"; {_iterations_text(capped)} printed more than a worker keeps ({worker.OUTPUT_LIMIT:,} "
            "characters each), and the rest of that was not kept"
        )
    return note + "]"


def show_files(job: Job, quiet: bool) -> None:
    """--outputs: where they went, and each pattern that matched nothing (once); without --outputs,
    the files iterations wrote on remote nodes, which stay there."""
    left = sorted(getattr(job, "left_on_nodes", ()) or ())
    if left:
        shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        print(
            f"azpar: warning: iterations wrote {shown} in their working folders on the nodes, where they stay "
            f"(on the local pool they land beside the notebook): pass --outputs GLOB (--outputs {left[0]!r}) to "
            "bring them back",
            file=sys.stderr,
        )
    report = getattr(job, "files", None)
    if report is None or not report.plan.outputs:
        return
    for line in report.warnings():
        print(f"azpar: warning: {line}", file=sys.stderr)
    count, kept = len(report.produced), len(report.kept.keys() - report.produced.keys())
    if quiet or not (count or kept):  # (none came back: the warnings above say so, and the folder was never made)
        return
    cached = f" ({report.from_cache} from the cache)" if report.from_cache else ""
    made = f"outputs of {count} iteration{'s' if count != 1 else ''}{cached} in {report.location}" if count else ""
    # A rerun's kept iterations: their files stay where the earlier job put them.
    earlier = f"{kept} kept iteration{'s' if kept != 1 else ''} have theirs in {report.kept_location}" if kept else ""
    print(f"azpar: {'; '.join(filter(None, (made, earlier)))}")

"""The lines that move while something runs: a job's progress (one text line, or the widget panel in its place)
and the transfer line of ``%azpar storage`` and ``--inputs`` uploads."""

from __future__ import annotations

import sys
import time
from typing import Any

from IPython.display import display

from ..jobs import DONE, Job, JobSnapshot
from ..ui.text import format_failures, format_snapshot

PROGRESS_DELAY = 1.0  # seconds before the progress line appears (quick cells stay quiet)
PROGRESS_INTERVAL = 0.5


def size_text(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class TransferProgress:
    """One refreshing line for %azpar storage transfers of files over a few MB."""

    MIN_SIZE = 8_000_000

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.last = 0.0
        self.shown = False

    def __call__(self, name: str, done: int, total: int) -> None:
        if total < self.MIN_SIZE or self.quiet:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.5:
            return
        self.last, self.shown = now, True
        percent = 100 * done // total if total else 100
        sys.stdout.write(f"\razpar: {name}  {size_text(done)} of {size_text(total)} ({percent}%)   ")
        sys.stdout.flush()

    def close(self) -> None:
        if self.shown:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.shown = False


def failures_note(snap: JobSnapshot) -> str:
    """What a cell whose progress never showed says of iterations that failed under ``--errors
    remove|pass``: the result alone would not tell (a list one shorter, or an exception object among
    the values), and a cell that fails fast is the one that ends before the progress line appears."""
    what = "were left out of the result" if snap.errors == "remove" else "stand in the result as their exceptions"
    failed = f"{snap.items_failed} of {snap.items_total} iterations failed"
    if snap.items_cancelled:  # never ran (a task stopped at --timeout): missing from the result too
        failed += f" and {snap.items_cancelled} did not run"
    return (
        f"azpar: warning: {failed} (--errors {snap.errors}: they {what}); `%azpar debug` runs the first "
        f"one again here:\n{format_failures(snap)}"
    )


class TextProgress:
    """The one refreshing text line, drawn from the main thread only (a background print
    would land in whichever cell runs next).

    In a kernel it is one display updated in place by its display id: frontends redraw it,
    and nbclient, papermill and nbconvert keep a single output holding the last picture
    (a ``\\r`` stream line would be a new saved output at every refresh). Terminal IPython
    cannot update a display in place, so there it is a stdout line rewritten with ``\\r``."""

    def __init__(self, job: Job, quiet: bool, in_place: bool = False):
        self.job, self.quiet, self.in_place = job, quiet, in_place
        self.shown = False
        self.last = 0.0
        self.width = 0
        self.handle: Any = None  # the display updated in place (in_place only)

    def tick(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        snap = self.job.snapshot()
        if not self.shown and snap.elapsed < PROGRESS_DELAY and not force:
            return
        if not force and now - self.last < PROGRESS_INTERVAL:
            return
        self.last, self.shown = now, True
        line = format_snapshot(snap)
        if self.in_place:
            self._draw(line)
            return
        pad = " " * max(0, self.width - len(line))
        self.width = len(line)
        sys.stdout.write("\r" + line + pad)
        sys.stdout.flush()

    def _draw(self, text: str) -> None:
        bundle = {"text/plain": text}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def close(self) -> None:
        if not self.shown:  # a quick cell (or -q): no picture, but failures the result hides are said
            # The state alone first: a snapshot asks the pool for its nodes and the meter for its
            # estimate, ~0.1 ms of a warm two-iteration cell's ~1.2 (issue 16, c).
            if self.job.state == DONE:  # the result came with failures (a cancelled job says so itself)
                print(failures_note(self.job.snapshot()), file=sys.stderr)
            return
        if self.in_place:  # the last picture replaces the live one, failures included
            snap = self.job.snapshot()
            failures = format_failures(snap) if snap.failures and snap.errors != "stop" else ""
            self._draw(format_snapshot(snap) + ("\n" + failures if failures else ""))
        else:
            self.tick(force=True)
            sys.stdout.write("\n")
            snap = self.job.snapshot()
            if snap.failures and snap.errors != "stop":  # under stop, the raised error says it all
                sys.stdout.write(format_failures(snap) + "\n")
            sys.stdout.flush()


class PanelProgress:
    """The widget panel in the text line's place: a background thread draws it, so the
    waiting loop has nothing to do; ``close`` draws the final state before the cell ends.

    The display's own ``text/plain`` (what nbval, plain frontends and a saved notebook
    without widget state show) was taken at submission; once the job has ended, ``close``
    replaces it by display id with the final text and the panel as static HTML."""

    def __init__(self, panel: Any, handle: Any, job: Job):
        self.panel, self.handle, self.job = panel, handle, job

    def tick(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        self.panel.settle()
        self.panel.when_final(self._show_final)  # now, or when a cancelling job has ended

    def _show_final(self) -> None:
        snap = self.job.snapshot()
        failures = format_failures(snap) if snap.failures else ""
        text = repr(self.job) + ("\n" + failures if failures else "")
        self.handle.update(self.panel.mimebundle(text, self.job._repr_html_()), raw=True)

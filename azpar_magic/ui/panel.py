"""ipywidgets views: the live job panel and the pool panel of ``%azpar status``.

Why a background thread: the cell blocks while a job runs, and ipykernel 7 sends widget
state set from another thread at once, so the panel moves while the main thread waits
(and goes on moving after ``--no-wait``). Why throttled: a job of a million tiny
iterations changes thousands of times a second; the frontend needs a few frames a
second, not a message per task. Why a latch: the thread and the main thread both render,
and a snapshot taken just before the job ended may arrive after the final one; once a
final snapshot has been drawn, the panel keeps its success or danger style and counts.

Each panel is a box of HTML widgets holding the fragments of ``html.py`` (the same ones
``job._repr_html_`` uses), built from ``state.job_view(snapshot)`` alone. Nothing is
printed: a print from a thread would land in whichever cell runs at that moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import ipywidgets as widgets

from ..jobs import Job, JobSnapshot
from . import html
from .state import STYLE_COLOURS, job_view

MIN_INTERVAL = 0.25  # seconds between two renders: at most four a second
TICK = 1.0  # render at least this often while running, so elapsed and ETA move
POOL_INTERVAL = 1.0
POOL_LIFETIME = 3600.0  # a status panel stops polling after an hour (a new one replaces it anyway)


class SnapshotSource(Protocol):
    """What a job panel needs from a job: snapshots, and a list of change listeners."""

    listeners: list[Callable[[Job], None]]

    def snapshot(self) -> JobSnapshot: ...


class _Ended:
    """What a panel holds of its job once the job's final state is drawn: that snapshot."""

    def __init__(self, snapshot: JobSnapshot):
        self.listeners: list[Callable[[Job], None]] = []
        self._snapshot = snapshot

    def snapshot(self) -> JobSnapshot:
        return self._snapshot


class Updater:
    """A daemon thread that calls ``step`` when woken and at least every ``tick`` seconds,
    never twice within ``min_interval``; it ends when ``step`` returns True or on ``stop``."""

    def __init__(self, step: Callable[[], bool], *, min_interval: float, tick: float, name: str):
        self.step, self.min_interval, self.tick = step, min_interval, tick
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        last = time.monotonic() - self.min_interval
        while not self._stop.is_set():
            self._wake.wait(self.tick)
            if self._stop.is_set():
                return
            pause = last + self.min_interval - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return
            self._wake.clear()
            last = time.monotonic()
            try:
                if self.step():
                    return
            except Exception:  # a view must never take the kernel down; try again next tick
                continue


class JobPanel:
    """The live panel of one job. ``render`` is safe from any thread; ``start`` follows the
    job from a background thread until it ends; ``stop`` draws the last state and returns."""

    def __init__(self, job: SnapshotSource, *, min_interval: float = MIN_INTERVAL, tick: float = TICK):
        self.job = job
        self.header = widgets.HTML()
        self.nodes = widgets.HTML()
        self.tasks = widgets.HTML()
        self.failures = widgets.HTML(layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox(
            [self.header, self.nodes, self.tasks, self.failures],
            layout=widgets.Layout(padding="4px 10px", margin="2px 0"),
        )
        self.widget.add_class("azpar-panel")
        self.view: dict[str, Any] | None = None
        self.final_view: dict[str, Any] | None = None
        self.renders = 0
        self._style: str | None = None
        self._lock = threading.Lock()
        self._when_final: list[Callable[[], None]] = []
        self._updater = Updater(self._step, min_interval=min_interval, tick=tick, name="azpar-panel")
        self.render(job.snapshot())

    # ------------------------------------------------------------------ drawing

    def render(self, snapshot: JobSnapshot) -> bool:
        """Draw ``snapshot``; False (and nothing drawn) once a final snapshot has been."""
        view = job_view(snapshot)
        callbacks: list[Callable[[], None]] = []
        ended: SnapshotSource | None = None
        with self._lock:
            if self.final_view is not None:
                return False
            self._apply(view)
            self.view = view
            if view["final"]:
                self.final_view = view
                callbacks, self._when_final = self._when_final, []
                # Drawn for the last time: the panel keeps that snapshot, not the Job with its
                # items and values (the kernel keeps the last PANELS_KEPT panels, and lets go of
                # old jobs to bound its memory: session.KEPT_JOBS).
                ended, self.job = self.job, _Ended(snapshot)
            self.renders += 1
        if ended is not None:
            try:
                ended.listeners.remove(self._on_change)
            except ValueError:
                pass
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a view must never take the kernel down
                pass
        return True

    def when_final(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the final state has been drawn: now if it has been, else
        from whichever thread draws it (a job still cancelling when its cell stopped waiting)."""
        with self._lock:
            if self.final_view is None:
                self._when_final.append(callback)
                return
        callback()

    def _apply(self, view: dict[str, Any]) -> None:
        for child, value in (
            (self.header, html.header_html(view)),
            (self.nodes, html.nodes_html(view["nodes"])),
            (self.tasks, html.bar_html(view["tasks"])),
            (self.failures, html.failures_html(view)),
        ):
            if child.value != value:  # unchanged values send nothing to the frontend
                child.value = value
        self.failures.layout.display = None if view["failures"] else "none"
        if view["style"] != self._style:
            if self._style is not None:
                self.widget.remove_class(f"azpar-{self._style}")
            self.widget.add_class(f"azpar-{view['style']}")
            self.widget.layout.border_left = f"4px solid {STYLE_COLOURS[view['style']]}"
            self._style = view["style"]

    @property
    def style(self) -> str | None:
        """info, success, danger or warning: what the panel shows now."""
        return self._style

    # ------------------------------------------------------------------ following the job

    def _step(self) -> bool:
        snapshot = self.job.snapshot()
        self.render(snapshot)
        return self.final_view is not None

    def _on_change(self, _job: Any) -> None:
        self._updater.wake()  # called from engine threads: wake the updater, nothing more

    def start(self) -> None:
        """Follow the job from a background thread (no-op once it has ended)."""
        if self.final_view is not None or self._updater.running:
            return
        self.job.listeners.append(self._on_change)
        try:
            self._updater.start()
        except RuntimeError:  # started before, and ended: nothing left to follow
            pass

    def stop(self) -> None:
        """Stop following and draw the job's state now (final when it has ended)."""
        self._updater.stop()
        try:
            self.job.listeners.remove(self._on_change)
        except ValueError:
            pass
        self.render(self.job.snapshot())

    def settle(self) -> None:
        """The cell stops waiting: draw the state now; stop following only if the job has
        ended (a job still cancelling after Ctrl-C goes on being followed to its end)."""
        if self.job.snapshot().final:
            self.stop()
        else:
            self.render(self.job.snapshot())
            self.start()

    @property
    def following(self) -> bool:
        return self._updater.running

    def mimebundle(self, text_plain: str, text_html: str | None = None) -> dict[str, Any]:
        """The widget's display data with our own ``text/plain`` (what nbval and plain
        frontends see instead of the widget) and, when given, ``text/html`` (what a saved
        notebook's viewer without the widget's state draws)."""
        data = dict(self.widget._repr_mimebundle_())
        data["text/plain"] = text_plain
        if text_html is not None:
            data["text/html"] = text_html
        return data


class PoolPanel:
    """``%azpar status``: the pools of this kernel, redrawn every ``interval`` seconds.

    One status panel follows at a time: a new one stops the previous (which keeps its last
    picture and says so), so repeated ``%azpar status`` never piles up polling threads."""

    _current: ClassVar[PoolPanel | None] = None
    _current_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        source: Callable[[], Sequence[dict[str, Any]]],
        *,
        interval: float = POOL_INTERVAL,
        lifetime: float = POOL_LIFETIME,
        first: Sequence[dict[str, Any]] | None = None,
    ):
        self.source = source
        self.lifetime = lifetime
        self.body = widgets.HTML()
        self.footer = widgets.HTML()
        self.widget = widgets.VBox([self.body, self.footer])
        self.widget.add_class("azpar-pool-panel")
        self.renders = 0
        self._started = time.monotonic()
        self._updater = Updater(
            self._step, min_interval=min(interval, MIN_INTERVAL), tick=interval, name="azpar-pool-panel"
        )
        self.render(source() if first is None else first)

    def render(self, views: Sequence[dict[str, Any]]) -> None:
        value = "".join(html.pool_html(v) for v in views) or "<i>no pool in this kernel yet</i>"
        if self.body.value != value:
            self.body.value = value
        self.renders += 1

    def _step(self) -> bool:
        self.render(self.source())
        if time.monotonic() - self._started > self.lifetime:
            self.footer.value = "<i>stopped updating after an hour; run %azpar status again</i>"
            return True
        return False

    def start(self) -> None:
        with PoolPanel._current_lock:
            previous, PoolPanel._current = PoolPanel._current, self
        if previous is not None:
            previous.stop("a newer %azpar status panel replaced this one")
        self._updater.start()

    def stop(self, why: str = "stopped") -> None:
        self._updater.stop()
        self.footer.value = f"<i>{why}; this picture is no longer updated</i>"

    @property
    def following(self) -> bool:
        return self._updater.running

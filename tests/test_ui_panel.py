"""The widget panels' state, built from snapshots: what each widget holds, the final-style
latch, the throttle, and the background thread following a real local job."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("ipywidgets")

import azpar_magic  # noqa: E402
from azpar_magic.jobs import JobSnapshot, NodeInfo  # noqa: E402
from azpar_magic.ui import html, state  # noqa: E402
from azpar_magic.ui.panel import JobPanel, PoolPanel  # noqa: E402

from .test_ui_state import snap  # noqa: E402


class FakeJob:
    """A snapshot source: hands out whatever snapshot the test sets, counts the calls."""

    def __init__(self, first: JobSnapshot):
        self.current = first
        self.listeners: list = []
        self.calls = 0

    def snapshot(self) -> JobSnapshot:
        self.calls += 1
        return self.current

    def changed(self, new: JobSnapshot | None = None) -> None:
        if new is not None:
            self.current = new
        for listener in list(self.listeners):
            listener(self)


def finished(**changes) -> JobSnapshot:
    return snap(state="succeeded", items_done=10, items_failed=0, failures=(), tasks_queued=0, tasks_running=0,
                tasks_succeeded=10, tasks_failed=0, eta=None, **changes)


def test_widget_state_is_the_view_of_the_snapshot():
    s = snap()
    panel = JobPanel(FakeJob(s))
    view = state.job_view(s)
    assert panel.header.value == html.header_html(view)
    assert panel.nodes.value == html.nodes_html(view["nodes"])
    assert panel.tasks.value == html.bar_html(view["tasks"])
    assert panel.failures.value == html.failures_html(view) and panel.failures.layout.display is None
    assert set(panel.widget._dom_classes) == {"azpar-panel", "azpar-info"}
    assert panel.widget.layout.border_left == f"4px solid {state.STYLE_COLOURS['info']}"
    assert panel.style == "info" and panel.final_view is None


def test_no_failures_hides_their_widget():
    panel = JobPanel(FakeJob(finished()))
    assert panel.failures.value == "" and panel.failures.layout.display == "none"


def test_final_style_is_latched_against_late_updates():
    job = FakeJob(snap())
    panel = JobPanel(job)
    final = finished()
    assert panel.render(final)
    values = (panel.header.value, panel.nodes.value, panel.tasks.value)
    assert panel.style == "success" and "azpar-success" in panel.widget._dom_classes
    assert "azpar-info" not in panel.widget._dom_classes
    # A snapshot taken just before the end, arriving late, changes nothing.
    assert not panel.render(snap())
    assert not panel.render(replace(snap(), state="failed"))
    assert (panel.header.value, panel.nodes.value, panel.tasks.value) == values
    assert panel.style == "success" and panel.final_view["items"]["succeeded"] == 10


def test_failure_switches_to_danger_and_shows_the_failure():
    panel = JobPanel(FakeJob(snap()))
    panel.render(snap(state="failed", items_done=10))
    assert panel.style == "danger" and set(panel.widget._dom_classes) == {"azpar-panel", "azpar-danger"}
    assert panel.widget.layout.border_left.endswith(state.STYLE_COLOURS["danger"])
    assert "ValueError: bad item c (line 4)" in panel.failures.value
    assert "<details" in panel.failures.value and "printing c" in panel.failures.value


def test_unchanged_fragments_are_not_reassigned():
    job = FakeJob(snap())
    panel = JobPanel(job)
    sent = []
    panel.nodes.observe(lambda change: sent.append(change["new"]), names="value")
    panel.render(snap(elapsed=13.5))  # only the header (elapsed) differs
    assert sent == []
    panel.render(snap(nodes=(NodeInfo("n1", "idle"),)))
    assert len(sent) == 1


def test_updates_are_throttled_to_a_few_per_second():
    job = FakeJob(snap())
    panel = JobPanel(job, min_interval=0.25, tick=5.0)
    panel.start()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.2:  # a storm of changes: thousands of task events
        n += 1
        job.changed(snap(items_done=n % 10, elapsed=n / 1000))
        time.sleep(0.0005)
    duration = time.monotonic() - started
    panel.stop()
    assert n > 500
    # One render at construction, one in stop(), and at most one per 0.25 s in between.
    assert 3 <= panel.renders <= 2 + duration / 0.25 + 1, (panel.renders, duration)


def test_elapsed_moves_without_events():
    job = FakeJob(snap())
    panel = JobPanel(job, min_interval=0.05, tick=0.1)
    panel.start()
    values = set()
    started = time.monotonic()
    while time.monotonic() - started < 0.8:
        job.current = snap(elapsed=time.monotonic() - started)  # no listener call: only the tick can draw it
        values.add(panel.header.value)
        time.sleep(0.02)
    panel.stop()
    assert len(values) >= 3


def test_thread_follows_a_real_job_to_its_final_state():
    job = azpar_magic.run("for i in range(6)", "import time\ntime.sleep(0.15)\ni * i", {}, chunk_size=1, workers=2)
    panel = JobPanel(job, min_interval=0.05)
    panel.start()
    seen_running = False
    while not job.done:
        seen_running |= panel.view["state"] == "running" and panel.view["tasks"]["total"] == 6
        time.sleep(0.02)
    deadline = time.monotonic() + 3
    while panel.final_view is None and time.monotonic() < deadline:  # the thread, not the test, draws it
        time.sleep(0.02)
    assert seen_running
    assert panel.final_view is not None and panel.style == "success"
    assert panel.final_view["items"] == {"total": 6, "done": 6, "succeeded": 6, "failed": 0, "cancelled": 0}
    assert 'data-name="succeeded" data-count="6"' in panel.tasks.value
    deadline = time.monotonic() + 2
    while panel.following and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not panel.following  # the thread ended by itself once it drew the final state
    panel.stop()
    assert panel._on_change not in job.listeners
    assert job.result() == [i * i for i in range(6)]


def _panel_of_an_ended_job():
    """A panel that followed a real job to its end, and a weak reference to that job: the job
    lives in this function's frame only, which the test's own frame (whose locals pytest may
    keep a copy of) never sees."""
    import weakref

    job = azpar_magic.run("for i in range(3)", "i + 1", {}, workers=2)
    panel = JobPanel(job, min_interval=0.05)
    panel.start()
    assert job.result(timeout=60) == [1, 2, 3]
    deadline = time.monotonic() + 3
    while panel.final_view is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert panel.final_view is not None and panel.style == "success"
    assert panel._on_change not in job.listeners
    # The pool's and the store's threads hold the last job they handled in a local until the next:
    # one more job moves them on.
    assert azpar_magic.run("for i in range(1)", "i", {}, workers=2).result(timeout=60) == [0]
    assert azpar_magic.jobstore.flush()
    azpar_magic.session.forget(job.id)  # as the session lets go of an old job (_let_go_of_stored_jobs)
    for engine in azpar_magic.session.engines():
        engine.jobs.pop(job.id, None)
    return panel, weakref.ref(job)


def test_a_panel_lets_go_of_its_job_once_the_final_state_is_drawn():
    """The kernel keeps the last 50 panels for re-display: they must not keep their jobs' items
    and values alive after the session let go of them (session.KEPT_JOBS)."""
    import gc

    panel, job = _panel_of_an_ended_job()
    gc.collect()
    assert job() is None, "the panel (or its thread) still holds the ended job"
    panel.settle()  # what a later cell does with an ended job's panel: the final view stays
    assert panel.final_view["items"]["succeeded"] == 3 and panel.style == "success"


def test_a_failing_job_ends_in_danger_with_its_error_line():
    job = azpar_magic.run("for x in ['a', 'b', 'c']", "print('working on', x)\nif x == 'b':\n    raise KeyError(x)\nx",
                          {}, chunk_size=1, workers=2, errors="pass")
    panel = JobPanel(job, min_interval=0.05)
    panel.start()
    job.wait(30)
    panel.stop()
    assert panel.style == "danger"
    assert panel.final_view["label"] == "done with 1 failed", (panel.final_view["items"], panel.final_view["state"], job.snapshot())
    assert "iteration 1 (item <code>&#x27;b&#x27;</code>): KeyError: &#x27;b&#x27; (line 4)" in panel.failures.value
    assert "working on b" in panel.failures.value  # the iteration's output, behind the disclosure


def test_mimebundle_is_the_widget_with_our_text():
    panel = JobPanel(FakeJob(snap()))
    bundle = panel.mimebundle("<azpar Job ...>")
    assert bundle["text/plain"] == "<azpar Job ...>"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id


def test_pool_panel_redraws_and_a_new_one_replaces_the_old():
    calls = []
    nodes = [NodeInfo("w1", "idle")]

    def source():
        calls.append(1)
        return [state.pool_view("local", "local pool of 1", "local", "1 worker process", list(nodes), [])]

    first = PoolPanel(source, interval=0.05)
    first.start()
    assert 'data-state="idle"' in first.body.value
    nodes[0] = NodeInfo("w1", "running", "3")
    deadline = time.monotonic() + 2
    while 'data-state="running"' not in first.body.value and time.monotonic() < deadline:
        time.sleep(0.02)
    assert 'data-state="running"' in first.body.value
    second = PoolPanel(source, interval=0.05)
    second.start()
    assert not first.following and second.following
    assert "replaced" in first.footer.value
    second.stop()
    assert not second.following
    assert threading.active_count() < 50


def test_settle_keeps_following_a_job_that_has_not_ended():
    job = FakeJob(snap())
    panel = JobPanel(job, min_interval=0.02, tick=0.05)
    panel.settle()  # e.g. Ctrl-C: the job is still cancelling when the cell gives up waiting
    assert panel.following and panel.final_view is None
    job.changed(replace(snap(), state="cancelled"))
    deadline = time.monotonic() + 2
    while panel.final_view is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert panel.style == "warning"
    panel.settle()
    assert not panel.following and panel._on_change not in job.listeners


def test_a_snapshot_reads_its_state_with_its_counts():
    # The panel latches the first final snapshot it draws, so a final state must never come
    # with counts from before the end. Here the job ends while snapshot() asks for the nodes
    # (outside the job's lock): the snapshot must still be the consistent, earlier one.
    from azpar_magic.jobs.job import Job, JobOptions

    job: Job | None = None

    def nodes():
        job.finish("failed")
        return ()

    job = Job("j", [1, 2], JobOptions(), backend_name="local", nodes=nodes)
    s = job.snapshot()
    assert (s.state, s.items_done) == ("pending", 0)
    assert job.snapshot().state == "failed"


def test_when_final_runs_once_the_final_state_is_drawn_from_the_following_thread():
    job = FakeJob(snap())
    panel = JobPanel(job, min_interval=0.02, tick=0.05)
    seen = []
    panel.settle()
    panel.when_final(lambda: seen.append(panel.final_view["state"]))  # still running: deferred
    assert seen == []
    job.changed(replace(snap(), state="cancelled"))
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["cancelled"]
    panel.when_final(lambda: seen.append("again"))  # already final: at once
    assert seen == ["cancelled", "again"]
    panel.stop()

"""The pure views of a snapshot: view model, text, HTML (no widgets, no kernel)."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from azpar_magic.jobs import FailureView, JobSnapshot, NodeInfo
from azpar_magic.ui import state
from azpar_magic.ui.html import panel_html
from azpar_magic.ui.text import format_duration, format_html, format_pool_text, format_snapshot, format_text


def snap(**changes) -> JobSnapshot:
    base = JobSnapshot(
        job_id="azpar-20260101-000000-abc", backend="azure", pool="gpu-pool", vm_size="Standard_D4s_v3",
        state="running", items_total=10, items_done=4, items_failed=1, items_cancelled=0,
        tasks_total=10, tasks_queued=3, tasks_running=3, tasks_succeeded=3, tasks_failed=1,
        nodes=(NodeInfo("n1", "running", "4"), NodeInfo("n2", "idle"), NodeInfo("n3", "running", "5", dedicated=False),
               NodeInfo("n4", "preempted", dedicated=False), NodeInfo("n5", "waitingforstarttask")),
        elapsed=12.5, eta=20.0, throughput=0.32,
        failures=(FailureView(2, "'c'", "ValueError: bad item c (line 4)", "Traceback ...\nValueError: bad item c",
                              "printing c\n"),),
        source_first_line="for x in xs:")
    return replace(base, **changes)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML fragment."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data

    def with_class(self, name: str) -> list[dict]:
        return [a for _, a in self.tags if name in (a.get("class") or "").split()]


# --------------------------------------------------------------------------- view model


@pytest.mark.parametrize("raw, normal, group", [
    ("idle", "idle", "idle"), ("running", "running", "running"), ("starting", "starting", "starting"),
    ("lost", "lost", "problem"), ("creating", "creating", "starting"),
    ("waitingforstarttask", "waitingforstarttask", "starting"), ("starttaskfailed", "starttaskfailed", "problem"),
    ("unusable", "unusable", "problem"), ("offline", "offline", "problem"), ("preempted", "preempted", "preempted"),
    ("leavingpool", "leavingpool", "leaving"), ("BatchNodeState.IDLE", "idle", "idle"),
    ("BatchNodeState.WAITING_FOR_START_TASK", "waitingforstarttask", "starting"), ("Rebooting", "rebooting", "starting"),
    ("something-new", "something-new", "other"),
])
def test_node_states_group_and_colour(raw, normal, group):
    assert state.normalise_state(raw) == normal
    assert state.node_group(raw) == group
    assert state.node_colour(raw) == state.GROUP_COLOURS[group]


def test_states_of_different_meaning_get_different_colours():
    colours = {state.node_colour(s) for s in ("running", "idle", "starting", "unusable", "preempted", "leavingpool")}
    assert len(colours) == 6


def test_job_view_counts_nodes_by_kind_and_state():
    view = state.job_view(snap())
    nodes = view["nodes"]
    assert [n["id"] for n in nodes["nodes"]] == ["n1", "n2", "n3", "n4", "n5"]
    assert [n["kind"] for n in nodes["nodes"]] == ["dedicated", "dedicated", "spot", "spot", "dedicated"]
    assert nodes["counts"]["dedicated"] == {"total": 3, "by_state": {"running": 1, "idle": 1, "waitingforstarttask": 1}}
    assert nodes["counts"]["spot"] == {"total": 2, "by_state": {"running": 1, "preempted": 1}}
    assert nodes["busy"] == 2 and nodes["lost"] == 0
    assert nodes["nodes"][0]["task"] == "4"


def test_lost_local_workers_are_counted_not_drawn():
    view = state.job_view(snap(nodes=(NodeInfo("w1", "lost"), NodeInfo("w2", "idle"), NodeInfo("w3", "lost"))))
    assert [n["id"] for n in view["nodes"]["nodes"]] == ["w2"]
    assert view["nodes"]["lost"] == 2


def test_task_bar_fractions_and_counts():
    bar = state.job_view(snap())["tasks"]
    assert bar["total"] == 10
    segs = {s["name"]: s for s in bar["segments"]}
    assert [s["name"] for s in bar["segments"]] == ["succeeded", "failed", "running", "queued"]
    assert {k: v["count"] for k, v in segs.items()} == {"succeeded": 3, "failed": 1, "running": 3, "queued": 3}
    assert segs["succeeded"]["fraction"] == pytest.approx(0.3) and segs["failed"]["fraction"] == pytest.approx(0.1)
    assert sum(s["fraction"] for s in bar["segments"]) == pytest.approx(1.0)
    empty = state.bar_view(0, 0, 0, 0)
    assert empty["total"] == 0 and all(s["fraction"] == 0 for s in empty["segments"])


@pytest.mark.parametrize("job_state, errors, done, style, label", [
    ("pending", "stop", 0, "info", "starting"),
    ("running", "stop", 4, "info", "running"),
    ("succeeded", "stop", 10, "success", "succeeded"),
    ("failed", "stop", 10, "danger", "failed"),
    ("failed", "remove", 10, "danger", "done with 1 failed"),
    ("failed", "pass", 10, "danger", "done with 1 failed"),
    ("failed", "remove", 7, "danger", "failed"),  # stopped early: not "done"
    ("cancelled", "stop", 4, "warning", "cancelled"),
])
def test_style_and_label(job_state, errors, done, style, label):
    view = state.job_view(snap(state=job_state, errors=errors, items_done=done))
    assert (view["style"], view["label"]) == (style, label)
    assert view["colour"] == state.STYLE_COLOURS[style]


def test_other_final_states_end_in_warning_not_info():
    # Final states beyond the three of job.py's first version (e.g. "lost" with its kernel)
    # need no entry here: whatever JobSnapshot.final says ended gets a final style.
    s = snap(state="lost")
    assert state.job_style(s) == ("warning" if s.final else "info")


def test_eta_only_while_running_and_rates():
    assert state.job_view(snap())["eta"] == "20.0 s"
    assert state.job_view(snap(state="succeeded", eta=5.0))["eta"] is None
    assert state.format_rate(0.32) == "0.32 it/s" and state.format_rate(1234.4) == "1,234 it/s"
    assert state.format_rate(None) is None and state.format_rate(0) is None


def test_duration_format():
    assert format_duration(None) == "?"
    assert format_duration(3.25) == "3.2 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(2 * 3600 + 61) == "2 h 01 min"


def test_failures_carry_traceback_output_and_how_many_more():
    view = state.job_view(snap(items_failed=7))
    (f,) = view["failures"]
    assert f == {"index": 2, "item": "'c'", "summary": "ValueError: bad item c (line 4)",
                 "traceback": "Traceback ...\nValueError: bad item c", "output": "printing c\n"}
    assert view["failures_more"] == 6


def test_pool_view_counts_only_unfinished_jobs():
    running, done = snap(), snap(job_id="old", state="succeeded", tasks_queued=9, tasks_running=9)
    view = state.pool_view("azure", "Azure Batch pool p", "p", "Standard_D2s_v3", running.nodes, [running, done])
    assert [j["job_id"] for j in view["jobs"]] == [running.job_id]
    assert {s["name"]: s["count"] for s in view["tasks"]["segments"]}["queued"] == 3
    assert view["started"] and view["size_label"] == "VM size"
    assert not state.pool_view("local", "local pool", "local", "2 worker processes", (), [])["started"]


# --------------------------------------------------------------------------- text


def test_one_line_has_the_glance_facts():
    line = format_snapshot(snap())
    assert "\n" not in line
    assert line.startswith("azpar [azure gpu-pool Standard_D4s_v3] azpar-20260101-000000-abc running · 3/10 done")
    for part in ("1 failed", "3 running, 3 queued", "2/5 nodes busy (2 spot)", "elapsed 12.5 s", "ETA 20.0 s",
                 "0.32 it/s"):
        assert part in line, (part, line)


def test_one_line_of_a_local_job_keeps_its_short_prefix():
    line = format_snapshot(snap(backend="local", pool="local", vm_size="2 worker processes", state="succeeded",
                                items_done=10, items_failed=0, failures=()))
    assert re.match(r"azpar \[local\] azpar-\S+ succeeded · 10/10 done · elapsed 12\.5 s · 0\.32 it/s$", line), line


def test_one_line_says_done_with_failures_under_remove():
    line = format_snapshot(snap(state="failed", errors="remove", items_done=10))
    assert "done with 1 failed · 9/10 done" in line and "· 1 failed" not in line


def test_text_panel_has_every_fact_of_the_widget():
    text = format_text(snap())
    for part in ("azpar job azpar-20260101-000000-abc: running", "3/10 done, 1 failed", "backend azure",
                 "pool gpu-pool", "VM size Standard_D4s_v3", "elapsed 12.5 s", "ETA 20.0 s", "throughput 0.32 it/s",
                 "dedicated 3 (1 running, 1 idle, 1 waitingforstarttask)", "spot 2 (1 running, 1 preempted)",
                 "3 succeeded · 1 failed · 3 running · 3 queued (of 10)",
                 "iteration 2 (item 'c'): ValueError: bad item c (line 4)"):
        assert part in text, (part, text)


def test_pool_text():
    s = snap()
    text = format_pool_text(state.pool_view("azure", "Azure Batch pool gpu-pool", "gpu-pool", "Standard_D4s_v3",
                                            s.nodes, [s]))
    assert "pool gpu-pool · VM size Standard_D4s_v3" in text
    assert "n1 running (4)" in text and "n4 preempted spot" in text
    assert "3 running · 3 queued" in text and f"{s.job_id} running: 4/10 done" in text
    idle = format_pool_text(state.pool_view("local", "local pool of 2", "local", "2 worker processes", (), []))
    assert "not started" in idle


# --------------------------------------------------------------------------- HTML


def test_html_panel_structure_matches_the_view():
    s = snap()
    page = Tags(format_html(s))
    (root,) = page.with_class("azpar-panel")
    assert "azpar-info" in root["class"] and root["data-state"] == "running" and root["data-final"] == "false"
    squares = page.with_class("azpar-node")
    assert [(q["data-state"], q["data-kind"]) for q in squares] == [
        ("running", "dedicated"), ("idle", "dedicated"), ("running", "spot"), ("preempted", "spot"),
        ("waitingforstarttask", "dedicated")]
    assert all(state.GROUP_COLOURS[q["data-group"]] in q["style"] for q in squares)
    segs = {a["data-name"]: a for a in page.with_class("azpar-seg")}
    assert segs["succeeded"]["data-count"] == "3" and "width:30.000%" in segs["succeeded"]["style"]
    counts = {a["data-name"]: a["data-count"] for a in page.with_class("azpar-count")}
    assert counts == {"succeeded": "3", "failed": "1", "running": "3", "queued": "3"}
    facts = {a["data-name"] for a in page.with_class("azpar-fact")}
    assert facts == {"backend", "pool", "vm_size", "job_id", "elapsed", "eta", "throughput"}
    assert page.with_class("azpar-failure")[0]["data-index"] == "2"
    assert [t for t, _ in page.tags].count("details") == 1
    assert "ValueError: bad item c (line 4)" in page.text and "printing c" in page.text


def test_html_escapes_what_comes_from_the_user():
    evil = "<script>alert(1)</script>"
    s = snap(failures=(FailureView(0, evil, evil, evil, evil),), nodes=(NodeInfo(evil, "idle", evil),))
    out = panel_html(state.job_view(s))
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_final_html_has_the_final_style_and_no_eta():
    out = Tags(format_html(snap(state="succeeded", items_done=10, items_failed=0, failures=(), tasks_queued=0,
                                tasks_running=0, tasks_succeeded=10, tasks_failed=0)))
    (root,) = out.with_class("azpar-panel")
    assert "azpar-success" in root["class"] and root["data-final"] == "true"
    assert not out.with_class("azpar-failures")
    assert "eta" not in {a["data-name"] for a in out.with_class("azpar-fact")}


def test_failed_segment_says_cancelled_too_when_the_job_cancelled_some():
    view = state.job_view(snap(state="failed", items_cancelled=2, tasks_failed=3))
    failed = next(s for s in view["tasks"]["segments"] if s["name"] == "failed")
    assert failed["label"] == "failed or cancelled" and failed["count"] == 3
    assert "3 failed or cancelled" in format_text(snap(state="failed", items_cancelled=2, tasks_failed=3))
    assert "1 failed ·" in format_text(snap())

"""Snapshot -> view model: the one place that decides what a panel says.

The widget panel, the HTML rendering and the text rendering all draw the dict built here,
so a fact shown in one is shown in all, and every decision (which colour a Batch node
state gets, what "done with 2 failed" means, how wide each bar segment is) is a pure,
fast, unit-tested function of a frozen JobSnapshot. Nothing here imports IPython or
ipywidgets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..jobs import CANCELLED, DONE, FAILED, PENDING, SUCCEEDED, JobSnapshot, NodeInfo
from ..jobs.text import format_duration

# Node states, local (starting/idle/running/lost) and Azure Batch, grouped by what they
# mean to someone watching a run. Unknown states fall into "other" rather than failing.
NODE_GROUPS: dict[str, str] = {
    "running": "running",
    "idle": "idle",
    "starting": "starting",
    "creating": "starting",
    "waitingforstarttask": "starting",
    "rebooting": "starting",
    "reimaging": "starting",
    "upgradingos": "starting",
    "starttaskfailed": "problem",
    "unusable": "problem",
    "offline": "problem",
    "unknown": "problem",
    "lost": "problem",
    "preempted": "preempted",
    "leavingpool": "leaving",
    "deallocating": "leaving",
    "deallocated": "leaving",
}
GROUP_COLOURS: dict[str, str] = {
    "running": "#1e88e5",  # blue: busy with a task
    "idle": "#43a047",  # green: ready for work
    "starting": "#f9a825",  # amber: on its way
    "problem": "#e53935",  # red: cannot run tasks
    "preempted": "#8e24aa",  # purple: a spot node taken back by Azure
    "leaving": "#9e9e9e",  # grey: going away
    "other": "#bdbdbd",
}
GROUP_ORDER = ("running", "idle", "starting", "preempted", "problem", "leaving", "other")

# Stacked task bar, left to right.
BAR_SEGMENTS = ("succeeded", "failed", "running", "queued")
BAR_COLOURS = {
    "succeeded": "#43a047",
    "failed": "#e53935",
    "cancelled": "#fb8c00",
    "running": "#1e88e5",
    "queued": "#cfd8dc",
}

# Final and live styles, in ipywidgets' vocabulary (bar_style / button_style names).
STYLE_COLOURS = {"info": "#1565c0", "success": "#2e7d32", "danger": "#c62828", "warning": "#ef6c00"}


def format_rate(per_second: float | None) -> str | None:
    """Iterations per second, with precision where it matters (slow Azure runs)."""
    if not per_second:
        return None
    return f"{per_second:,.0f} it/s" if per_second >= 10 else f"{per_second:.2f} it/s"


def normalise_state(state: Any) -> str:
    """``idle`` from ``idle``, ``BatchNodeState.IDLE`` or ``BatchNodeState.WAITING_FOR_START_TASK``
    (what ``str()`` of an azure-batch enum gives): Batch's own spelling, lower case."""
    value = getattr(state, "value", state)
    text = str(value or "")
    if "." in text:
        text = text.rsplit(".", 1)[-1].replace("_", "")
    return text.lower()


def node_group(state: str) -> str:
    return NODE_GROUPS.get(normalise_state(state), "other")


def node_colour(state: str) -> str:
    return GROUP_COLOURS[node_group(state)]


def job_style(s: JobSnapshot) -> str:
    """info while it runs; success, danger or warning once final (the panel's latch keeps it)."""
    if s.state == SUCCEEDED:
        return "success"
    if s.state in (FAILED, DONE):  # done: the result came, but iterations failed
        return "danger"
    if s.state == CANCELLED or s.final:  # cancelled, or lost with its kernel
        return "warning"
    return "info"


def job_label(s: JobSnapshot) -> str:
    """The state in words. A job whose failed iterations were dropped or passed through
    (--errors remove/pass) did produce its result: it says so instead of just "failed"."""
    if s.state == DONE or (s.state == FAILED and s.errors in ("remove", "pass") and s.items_done == s.items_total):
        return f"done with {s.items_failed} failed" if s.items_failed else f"done with {s.items_cancelled} cancelled"
    if s.state == PENDING:
        return "starting"
    return s.state


def _node_counts(nodes: Iterable[NodeInfo]) -> dict[str, dict[str, Any]]:
    counts: dict[str, dict[str, Any]] = {}
    for kind in ("dedicated", "spot"):
        chosen = [n for n in nodes if n.dedicated == (kind == "dedicated")]
        by_state: dict[str, int] = {}
        for n in chosen:
            state = normalise_state(n.state)
            by_state[state] = by_state.get(state, 0) + 1
        ordered = dict(sorted(by_state.items(), key=lambda kv: (GROUP_ORDER.index(node_group(kv[0])), kv[0])))
        counts[kind] = {"total": len(chosen), "by_state": ordered}
    return counts


def nodes_view(nodes: Sequence[NodeInfo]) -> dict[str, Any]:
    """Squares and counts for a pool's nodes. Local workers that died ("lost") are no longer
    in the pool: they are counted, not drawn."""
    shown = [n for n in nodes if normalise_state(n.state) != "lost"]
    return {
        "nodes": [
            {
                "id": n.id,
                "state": normalise_state(n.state),
                "group": node_group(n.state),
                "colour": node_colour(n.state),
                "kind": "dedicated" if n.dedicated else "spot",
                "task": n.task,
            }
            for n in shown
        ],
        "counts": _node_counts(shown),
        "lost": len(nodes) - len(shown),
        "busy": sum(1 for n in shown if normalise_state(n.state) == "running"),
    }


def bar_view(
    queued: int, running: int, succeeded: int, failed: int, *, cancelled: bool = False, cancelled_tasks: int = 0
) -> dict[str, Any]:
    """Stacked bar of task counts. Tasks that were only cancelled have a segment of their
    own (``cancelled_tasks``, shown when there are some); ``cancelled``: some failed task also
    had cancelled iterations (a task stopped mid-way), so its segment says "failed or cancelled"."""
    counts = {
        "queued": queued,
        "running": running,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled_tasks,
    }
    total = sum(counts.values())
    names = BAR_SEGMENTS if not cancelled_tasks else ("succeeded", "failed", "cancelled", "running", "queued")
    segments = [
        {
            "name": name,
            "label": "failed or cancelled" if name == "failed" and cancelled else name,
            "count": counts[name],
            "colour": BAR_COLOURS[name],
            "fraction": (counts[name] / total) if total else 0.0,
        }
        for name in names
    ]
    return {"total": total, "segments": segments}


def job_view(s: JobSnapshot) -> dict[str, Any]:
    """Everything the job panel shows, as plain data (JSON-able)."""
    style = job_style(s)
    return {
        "kind": "job",
        "job_id": s.job_id,
        "name": s.name,  # --name: first in the header, the job's title
        "backend": s.backend,
        "pool": s.pool,
        "vm_size": s.vm_size,
        "size_label": s.size_label,
        "state": s.state,
        "label": job_label(s),
        "style": style,
        "colour": STYLE_COLOURS[style],
        "final": s.final,
        "source": s.source_first_line,
        "items": {
            "total": s.items_total,
            "done": s.items_done,
            "succeeded": s.items_succeeded,
            "failed": s.items_failed,
            "cancelled": s.items_cancelled,
        },
        "from_cache": s.from_cache,  # iterations --cache reused
        "elapsed": format_duration(s.elapsed),
        "eta": None if s.final or s.eta is None else format_duration(s.eta),
        "throughput": format_rate(s.throughput),
        "nodes": nodes_view(s.nodes),
        "tasks": bar_view(
            s.tasks_queued,
            s.tasks_running,
            s.tasks_succeeded,
            s.tasks_failed,
            cancelled=s.items_cancelled > 0 and s.tasks_failed > 0 and not s.tasks_cancelled,
            cancelled_tasks=s.tasks_cancelled,
        ),
        "failures": [
            {"index": f.index, "item": f.item, "summary": f.summary, "traceback": f.traceback, "output": f.output}
            for f in s.failures
        ],
        "failures_more": max(0, s.items_failed - len(s.failures)),
        "stalled": [] if s.final else list(s.stalled),
        "unanswered": "" if s.final else s.unanswered,  # "the Azure Batch service is not answering since ..."
        # What the job costs (jobs/cost.py), on a backend that bills: "" elsewhere, so those views are unchanged.
        "cost": s.cost.summary() if s.cost is not None and s.cost.billed else "",
        "cost_short": s.cost.short() if s.cost is not None and s.cost.billed else "",
        "stop_reason": s.stop_reason,  # azpar cancelled the job itself: its cost passed its cap
    }


def pool_view(
    backend: str,
    title: str,
    pool: str,
    vm_size: str,
    nodes: Sequence[NodeInfo],
    jobs: Sequence[JobSnapshot],
    size_label: str = "VM size",
    cost: str = "",
) -> dict[str, Any]:
    """The pool panel (``%azpar status``): one pool's nodes, and the work on it now
    (``jobs``: snapshots of the jobs submitted to it; only unfinished ones count).
    ``size_label`` names ``vm_size`` as the backend declares it (a worker count is a "size");
    ``cost``: what the pool costs now and since when it is idle ("" where nothing is billed)."""
    active = [s for s in jobs if not s.final]
    return {
        "kind": "pool",
        "backend": backend,
        "title": title,
        "pool": pool,
        "vm_size": vm_size,
        "size_label": size_label,
        "started": bool(nodes),
        "cost": cost,
        "nodes": nodes_view(nodes),
        "tasks": bar_view(sum(s.tasks_queued for s in active), sum(s.tasks_running for s in active), 0, 0),
        "jobs": [
            {
                "job_id": s.job_id,
                "label": job_label(s),
                "done": s.items_done,
                "total": s.items_total,
                "running": s.tasks_running,
                "queued": s.tasks_queued,
            }
            for s in active
        ],
    }


def counts_phrase(counts: dict[str, Any]) -> str:
    """'2 (1 running, 1 idle)' for one kind of node."""
    inner = ", ".join(f"{n} {state}" for state, n in counts["by_state"].items())
    return f"{counts['total']} ({inner})" if inner else "0"

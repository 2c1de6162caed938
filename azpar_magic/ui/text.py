"""Text and HTML renderings of a JobSnapshot: the fallback wherever widgets cannot render
(terminal IPython, nbconvert, no ipywidgets) and the ``repr`` of every job handle.

Both draw the view model of ``state.py``, as the widget panel does, so they carry the
same facts: the one refreshing line has the counts a glance needs, ``format_text`` the
whole panel (nodes by kind and state, the task bar's counts, the first failures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..jobs import JobSnapshot, register_views
from .html import panel_html, pool_html
from .state import counts_phrase, format_duration, format_rate, job_view

__all__ = [
    "format_duration",
    "format_rate",
    "format_snapshot",
    "format_text",
    "format_html",
    "format_failures",
    "format_pool_text",
    "format_pool_html",
]


def _where(view: Mapping[str, Any]) -> str:
    """``local``, or ``azure POOL VM_SIZE`` when the pool says more than the backend."""
    if not view["pool"] or view["pool"] == view["backend"]:
        return view["backend"]
    return " ".join(x for x in (view["backend"], view["pool"], view["vm_size"]) if x)


def format_snapshot(s: JobSnapshot) -> str:
    """One line: state, iterations done/failed/total, tasks running, nodes busy, time."""
    v = job_view(s)
    items = v["items"]
    parts = [
        f"{s.job_id}" + (f" ({s.name})" if s.name else "") + f" {v['label']}",
        f"{items['succeeded']}/{items['total']} done",
    ]
    if items["failed"] and not v["label"].startswith("done with"):
        parts.append(f"{items['failed']} failed")
    if items["cancelled"]:
        parts.append(f"{items['cancelled']} cancelled")
    if s.from_cache:
        parts.append(f"{s.from_cache:,} from cache")
    if not s.final:
        parts.append(f"{s.tasks_running} running, {s.tasks_queued} queued")
        nodes = v["nodes"]
        live = len(nodes["nodes"])
        if live:  # the pool's state now says nothing about a job that has ended
            spot = nodes["counts"]["spot"]["total"]
            parts.append(f"{nodes['busy']}/{live} nodes busy" + (f" ({spot} spot)" if spot else ""))
    parts.append(f"elapsed {v['elapsed']}")
    if v["eta"] is not None:
        parts.append(f"ETA {v['eta']}")
    if v["throughput"]:
        parts.append(v["throughput"])
    if v["stalled"]:
        more = len(v["stalled"]) - 1
        parts.append(v["stalled"][0] + (f" (and {more} more stuck task{'s' if more > 1 else ''})" if more else ""))
    if v.get("unanswered"):
        parts.append(v["unanswered"])
    if s.final and v.get("cost"):  # the final summary says what the job used and cost
        parts.append(v["cost"])
    if v.get("stop_reason"):
        parts.append(f"cancelled: {v['stop_reason']}")
    return f"azpar [{_where(v)}] " + " · ".join(parts)


def _failure_lines(view: Mapping[str, Any], indent: str) -> list[str]:
    lines = [f"{indent}iteration {f['index']} (item {f['item']}): {f['summary']}" for f in view["failures"]]
    if view["failures_more"]:
        lines.append(f"{indent}and {view['failures_more']} more failed iterations")
    return lines


def _nodes_line(nodes: Mapping[str, Any]) -> str:
    counts = nodes["counts"]
    words = [f"dedicated {counts_phrase(counts['dedicated'])}"]
    if counts["spot"]["total"]:
        words.append(f"spot {counts_phrase(counts['spot'])}")
    if nodes["lost"]:
        words.append(f"{nodes['lost']} lost and replaced")
    return " · ".join(words)


def _tasks_line(tasks: Mapping[str, Any]) -> str:
    return " · ".join(f"{seg['count']} {seg['label']}" for seg in tasks["segments"]) + f" (of {tasks['total']})"


def format_text(s: JobSnapshot) -> str:
    """The whole panel as text: what the widget shows, line by line."""
    v = job_view(s)
    items = v["items"]
    done = f"{items['succeeded']}/{items['total']} done, {items['failed']} failed"
    if items["cancelled"]:
        done += f", {items['cancelled']} cancelled"
    if s.from_cache:
        done += f", {s.from_cache:,} from cache"
    times = [f"elapsed {v['elapsed']}"]
    if v["eta"] is not None:
        times.append(f"ETA {v['eta']}")
    if v["throughput"]:
        times.append(f"throughput {v['throughput']}")
    where = (
        [f"backend {v['backend']}"]
        + ([f"pool {v['pool']}"] if v["pool"] else [])
        + ([f"{v['size_label']} {v['vm_size']}"] if v["vm_size"] else [])
    )
    lines = [
        f"azpar job {s.job_id}" + (f" ({s.name})" if s.name else "") + f": {v['label']}",
        f"  iterations  {done}",
        f"  where       {' · '.join(where)}",
        f"  time        {' · '.join(times)}",
        f"  nodes       {_nodes_line(v['nodes'])}",
        f"  tasks       {_tasks_line(v['tasks'])}",
    ]
    if v["stalled"]:
        lines += ["  stuck"] + [f"    {note}" for note in v["stalled"]]
    if v.get("unanswered"):
        lines.append(f"  service     {v['unanswered']}")
    if v.get("cost"):
        lines.append(f"  cost        {v['cost']}")
    if v.get("stop_reason"):
        lines.append(f"  cancelled   {v['stop_reason']}")
    failures = _failure_lines(v, "    ")
    if failures:
        lines += ["  failures"] + failures
    return "\n".join(lines)


def format_failures(s: JobSnapshot) -> str:
    """The first failures, one line each (empty when there are none)."""
    return "\n".join(_failure_lines(job_view(s), "  "))


def format_html(s: JobSnapshot) -> str:
    """The job panel as static HTML (the same fragments as the widget)."""
    return panel_html(job_view(s))


def format_pool_text(view: Mapping[str, Any]) -> str:
    """A pool view (``state.pool_view``) as text, for ``%azpar status`` without widgets."""
    head = " · ".join(
        [view["title"]]
        + [f"pool {view['pool']}"] * bool(view["pool"])
        + [f"{view['size_label']} {view['vm_size']}"] * bool(view["vm_size"])
    )
    lines = [head if view["started"] else head + " · not started", f"  nodes       {_nodes_line(view['nodes'])}"]
    nodes = view["nodes"]["nodes"]
    if nodes:
        lines.append(
            "              "
            + ", ".join(
                f"{n['id']} {n['state']}"
                + (f" ({n['task']})" if n["task"] else "")
                + (" spot" if n["kind"] == "spot" else "")
                for n in nodes
            )
        )
    if view.get("cost"):
        lines.append(f"  cost        {view['cost']}")
    running = next(seg["count"] for seg in view["tasks"]["segments"] if seg["name"] == "running")
    queued = next(seg["count"] for seg in view["tasks"]["segments"] if seg["name"] == "queued")
    lines.append(f"  tasks       {running} running · {queued} queued")
    for job in view["jobs"]:
        lines.append(
            f"  job         {job['job_id']} {job['label']}: {job['done']}/{job['total']} done, "
            f"{job['running']} running, {job['queued']} queued"
        )
    return "\n".join(lines)


def format_pool_html(view: Mapping[str, Any]) -> str:
    return pool_html(dict(view))


register_views(text=format_snapshot, html=format_html)

"""Text and HTML renderings of a JobSnapshot: the fallback wherever widgets cannot render
(terminal IPython, nbconvert, no ipywidgets) and the ``repr`` of every job handle."""

from __future__ import annotations

import html

from ..job import JobSnapshot


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_snapshot(s: JobSnapshot) -> str:
    """One line: state, iterations done/failed/total, tasks running, nodes busy, time."""
    parts = [f"{s.job_id} {s.state}",
             f"{s.items_succeeded}/{s.items_total} done"]
    if s.items_failed:
        parts.append(f"{s.items_failed} failed")
    if s.items_cancelled:
        parts.append(f"{s.items_cancelled} cancelled")
    if not s.final:
        parts.append(f"{s.tasks_running} running, {s.tasks_queued} queued")
        live = [n for n in s.nodes if n.state != "lost"]
        if live:  # the pool's state now says nothing about a job that has ended
            parts.append(f"{s.nodes_busy}/{len(live)} nodes busy")
    parts.append(f"elapsed {format_duration(s.elapsed)}")
    if s.eta is not None and not s.final:
        parts.append(f"ETA {format_duration(s.eta)}")
    if s.throughput and s.final:
        parts.append(f"{s.throughput:,.0f} it/s" if s.throughput >= 10 else f"{s.throughput:.2f} it/s")
    return f"azpar [{s.backend}] " + " · ".join(parts)


def format_html(s: JobSnapshot) -> str:
    colour = {"succeeded": "#2e7d32", "failed": "#c62828", "cancelled": "#6d6d6d"}.get(s.state, "#1565c0")
    rows = "".join(f"<li>iteration {f.index} (item <code>{html.escape(f.item)}</code>): "
                   f"{html.escape(f.summary)}</li>" for f in s.failures)
    failures = f"<ul>{rows}</ul>" if rows else ""
    return (f'<div class="azpar-job"><b style="color:{colour}">{html.escape(s.state)}</b> '
            f"{html.escape(format_snapshot(s))}{failures}</div>")

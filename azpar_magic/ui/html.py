"""HTML fragments of a panel view model, shared by the static HTML repr and the widget.

The widget panel is a box of HTML widgets holding exactly these fragments, so the live
panel and ``job._repr_html_()`` cannot drift apart. Styles are inline (no CSS file to
install, and it survives nbconvert), class names and data attributes are stable hooks
for tests and for users' own CSS. Tracebacks and task output sit in a ``<details>``
element: the browser opens it without a kernel round trip, so it works while the cell
still blocks (widget button clicks wait for the kernel, ipywidgets#3468).
"""

from __future__ import annotations

from html import escape
from typing import Any

from .state import GROUP_COLOURS, GROUP_ORDER, STYLE_COLOURS, counts_phrase

_FONT = "font-family:var(--jp-ui-font-family,sans-serif);font-size:var(--jp-ui-font-size1,13px);"
_MUTED = "color:var(--jp-ui-font-color2,#616161);"


def _fact(name: str, label: str, value: str) -> str:
    return (
        f'<span class="azpar-fact" data-name="{name}"><span style="{_MUTED}">{label}</span> '
        f"<b>{escape(value)}</b></span>"
    )


def label_html(label: str, style: str) -> str:
    return (
        f'<span class="azpar-label" data-style="{style}" style="background:{STYLE_COLOURS[style]};'
        f'color:#fff;border-radius:3px;padding:0 6px;font-weight:600">{escape(label)}</span>'
    )


def header_html(view: dict[str, Any]) -> str:
    """State badge, the job's --name, iteration counts, then backend, pool, VM size, job id, times."""
    items = view["items"]
    parts = [label_html(view["label"], view["style"])]
    if view.get("name"):  # --name titles the panel
        parts.append(f'<span class="azpar-name" style="font-weight:600">{escape(view["name"])}</span>')
    parts.append(
        f'<span class="azpar-items" data-done="{items["done"]}" data-total="{items["total"]}">'
        f"<b>{items['succeeded']}</b>/{items['total']} done</span>"
    )
    if items["failed"]:
        parts.append(
            f'<span class="azpar-items-failed" style="color:{STYLE_COLOURS["danger"]}">'
            f"<b>{items['failed']}</b> failed</span>"
        )
    if items["cancelled"]:
        parts.append(f'<span class="azpar-items-cancelled"><b>{items["cancelled"]}</b> cancelled</span>')
    if view.get("from_cache"):
        parts.append(f'<span class="azpar-items-cached"><b>{view["from_cache"]:,}</b> from cache</span>')
    parts.append(_fact("backend", "backend", view["backend"]))
    if view["pool"]:
        parts.append(_fact("pool", "pool", view["pool"]))
    if view["vm_size"]:
        parts.append(_fact("vm_size", view["size_label"], view["vm_size"]))
    parts.append(_fact("job_id", "job", view["job_id"]))
    parts.append(_fact("elapsed", "elapsed", view["elapsed"]))
    if view["eta"] is not None:
        parts.append(_fact("eta", "ETA", view["eta"]))
    if view["throughput"]:
        parts.append(_fact("throughput", "throughput", view["throughput"]))
    if view.get("cost_short"):  # a billed backend: the estimate so far and the burn rate (issue 19)
        parts.append(_fact("cost", "cost", view["cost_short"]))
    if view.get("stop_reason"):
        parts.append(
            f'<span class="azpar-stop-reason" style="color:{STYLE_COLOURS["warning"]};font-weight:600">'
            f"cancelled: {escape(view['stop_reason'])}</span>"
        )
    for note in view.get("stalled", ()):  # a stopped, hung or deadlocked worker: say so, in the warning colour
        parts.append(
            f'<span class="azpar-stalled" style="color:{STYLE_COLOURS["warning"]};font-weight:600">'
            f"{escape(note)}</span>"
        )
    if view.get("unanswered"):  # Batch or Storage silent: say so rather than "running" with no word
        parts.append(
            f'<span class="azpar-unanswered" style="color:{STYLE_COLOURS["warning"]};font-weight:600">'
            f"{escape(view['unanswered'])}</span>"
        )
    return (
        f'<div class="azpar-header" style="{_FONT}display:flex;flex-wrap:wrap;gap:2px 14px;'
        f'align-items:baseline">{"".join(parts)}</div>'
    )


def nodes_html(nodes: dict[str, Any]) -> str:
    """One square per node coloured by state (spot nodes round), then counts by kind."""
    squares = "".join(
        f'<span class="azpar-node" data-state="{escape(n["state"])}" data-group="{n["group"]}" '
        f'data-kind="{n["kind"]}" title="{escape(n["id"])}: {escape(n["state"])}'
        f'{" (" + escape(n["task"]) + ")" if n["task"] else ""}{" spot" if n["kind"] == "spot" else ""}" '
        f'style="display:inline-block;width:12px;height:12px;margin:1px;background:{n["colour"]};'
        f'border-radius:{"50%" if n["kind"] == "spot" else "2px"}"></span>'
        for n in nodes["nodes"]
    )
    counts = nodes["counts"]
    words = [
        f'<span class="azpar-node-count" data-kind="dedicated" data-total="{counts["dedicated"]["total"]}">'
        f"dedicated {escape(counts_phrase(counts['dedicated']))}</span>"
    ]
    if counts["spot"]["total"]:
        words.append(
            f'<span class="azpar-node-count" data-kind="spot" data-total="{counts["spot"]["total"]}">'
            f"spot {escape(counts_phrase(counts['spot']))}</span>"
        )
    if nodes["lost"]:
        words.append(f'<span class="azpar-node-count" data-kind="lost">{nodes["lost"]} lost and replaced</span>')
    if not nodes["nodes"]:
        squares = f'<span style="{_MUTED}">no nodes yet</span>'
    legend = "".join(
        f'<span style="margin-right:8px"><span style="display:inline-block;width:9px;height:9px;'
        f'background:{GROUP_COLOURS[g]};margin-right:3px"></span>{g}</span>'
        for g in GROUP_ORDER
        if any(n["group"] == g for n in nodes["nodes"])
    )
    return (
        f'<div class="azpar-nodes" data-busy="{nodes["busy"]}" style="{_FONT}">'
        f'<div class="azpar-node-squares" style="line-height:0;margin:3px 0">{squares}</div>'
        f'<div style="{_MUTED}">nodes: {" · ".join(words)}'
        f'{"  " if legend else ""}<span style="font-size:11px">{legend}</span></div></div>'
    )


def bar_html(tasks: dict[str, Any]) -> str:
    """Stacked task bar (succeeded, failed, running, queued) and its counts."""
    segments = "".join(
        f'<div class="azpar-seg" data-name="{s["name"]}" data-count="{s["count"]}" '
        f'style="width:{100 * s["fraction"]:.3f}%;background:{s["colour"]};height:100%"></div>'
        for s in tasks["segments"]
    )
    counts = " · ".join(
        f'<span class="azpar-count" data-name="{s["name"]}" data-count="{s["count"]}">'
        f'<span style="display:inline-block;width:9px;height:9px;background:{s["colour"]};margin-right:3px">'
        f"</span>{s['count']} {s['label']}</span>"
        for s in tasks["segments"]
    )
    return (
        f'<div class="azpar-tasks" data-total="{tasks["total"]}" style="{_FONT}">'
        f'<div class="azpar-bar" style="display:flex;height:12px;max-width:640px;margin:3px 0;'
        f'background:#eceff1;border-radius:3px;overflow:hidden">{segments}</div>'
        f'<div style="{_MUTED}">tasks: {counts} (of {tasks["total"]})</div></div>'
    )


def failures_html(view: dict[str, Any]) -> str:
    """The first failures: one line each, traceback and output behind a disclosure."""
    if not view["failures"]:
        return ""
    rows = []
    for f in view["failures"]:
        output = (
            f'<div style="{_MUTED}">output</div><pre class="azpar-output" style="margin:2px 0">'
            f"{escape(f['output'])}</pre>"
            if f["output"]
            else ""
        )
        tb = (
            f'<pre class="azpar-traceback" style="margin:2px 0">{escape(f["traceback"])}</pre>'
            if f["traceback"]
            else ""
        )
        rows.append(
            f'<div class="azpar-failure" data-index="{f["index"]}">'
            f'<span class="azpar-failure-line">iteration {f["index"]} (item <code>{escape(f["item"])}</code>): '
            f"{escape(f['summary'])}</span>"
            f'<details class="azpar-failure-details" style="margin-left:1em"><summary style="cursor:pointer;{_MUTED}">'
            f"traceback and output</summary>{tb}{output}</details></div>"
        )
    more = (
        f'<div style="{_MUTED}">and {view["failures_more"]} more failed iterations (job.failures has them all)</div>'
        if view["failures_more"]
        else ""
    )
    return (
        f'<div class="azpar-failures" style="{_FONT}color:{STYLE_COLOURS["danger"]}">'
        f'<div style="font-weight:600">first failures</div>{"".join(rows)}{more}</div>'
    )


def panel_style(view: dict[str, Any]) -> str:
    return f"border-left:4px solid {view['colour']};padding:4px 10px;margin:2px 0"


def panel_html(view: dict[str, Any]) -> str:
    """The whole job panel as one static HTML block (``_repr_html_``, nbconvert)."""
    return (
        f'<div class="azpar-panel azpar-{view["style"]}" data-state="{view["state"]}" '
        f'data-final="{str(view["final"]).lower()}" style="{panel_style(view)}">'
        f"{header_html(view)}{nodes_html(view['nodes'])}{bar_html(view['tasks'])}{failures_html(view)}</div>"
    )


def pool_header_html(view: dict[str, Any]) -> str:
    parts = [f"<b>{escape(view['title'])}</b>"]
    if view["pool"]:
        parts.append(_fact("pool", "pool", view["pool"]))
    if view["vm_size"]:
        parts.append(_fact("vm_size", view["size_label"], view["vm_size"]))
    if not view["started"]:
        parts.append(f'<span style="{_MUTED}">not started</span>')
    if view.get("cost"):  # the burn rate now, since when it is idle (issue 19)
        parts.append(_fact("cost", "cost", view["cost"]))
    return (
        f'<div class="azpar-header" style="{_FONT}display:flex;flex-wrap:wrap;gap:2px 14px;'
        f'align-items:baseline">{"".join(parts)}</div>'
    )


def pool_jobs_html(view: dict[str, Any]) -> str:
    if not view["jobs"]:
        return f'<div class="azpar-pool-jobs" style="{_FONT}{_MUTED}">no job running</div>'
    rows = "".join(
        f'<li class="azpar-pool-job" data-job="{escape(j["job_id"])}">{escape(j["job_id"])} '
        f"{escape(j['label'])}: {j['done']}/{j['total']} done, {j['running']} running, "
        f"{j['queued']} queued</li>"
        for j in view["jobs"]
    )
    return f'<ul class="azpar-pool-jobs" style="{_FONT}margin:2px 0">{rows}</ul>'


def pool_html(view: dict[str, Any]) -> str:
    return (
        f'<div class="azpar-pool" style="border-left:4px solid {STYLE_COLOURS["info"]};padding:4px 10px">'
        f"{pool_header_html(view)}{nodes_html(view['nodes'])}{bar_html(view['tasks'])}"
        f"{pool_jobs_html(view)}</div>"
    )

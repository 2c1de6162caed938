"""Named Azure Batch autoscale formulas: QUEUE, QUEUE_AND_RUNNING, WORKDAY, WEEKEND, MAX_CPU.

A profile names a formula and gives ``min_nodes``/``max_nodes``; :func:`formula` turns that into
the formula text the pool is created with. The text is built here, not written by users, so the
rules below hold for every pool this package creates:

* Demand is ``$PendingTasks``, which the service already defines as active (queued) plus
  running tasks. Adding ``$RunningTasks`` again would count running work twice.
* Nodes needed = ``ceil(demand / slots_per_node)``, then bounded to ``[min_nodes, max_nodes]``.
* Spot first: ``$TargetDedicatedNodes = min_nodes`` and ``$TargetLowPriorityNodes = total -
  min_nodes``. Dedicated nodes cannot be preempted, so min_nodes of capacity always stays;
  everything above it is burst capacity that Spot serves at a fraction of the price. A
  preempted Spot node's task is requeued by the service, not failed, so no work is lost.
* ``$NodeDeallocationOption = taskcompletion``: a scale-down waits for the tasks on a node to
  finish instead of killing (``terminate``) or rerunning (``requeue``) them.
* Metric windows are :data:`SAMPLE_WINDOW_MINUTES` long. When fewer than
  :data:`MIN_SAMPLE_PERCENT` % of a window's samples exist (a new pool, or the service's
  sampling lag) the formula uses the latest sample instead, and with no sample at all it uses
  0, so an evaluation never fails with InsufficientSampleData (a failed evaluation leaves the
  pool at its old size, which after a burst means paying for idle nodes).

Stdlib only: the text is plain string building, and the module is unit-tested by evaluating the
formulas with the test service's evaluator, without Azure.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["EVALUATION_INTERVAL_MINUTES", "FORMULAS", "describe", "formula"]

EVALUATION_INTERVAL_MINUTES = 5
"""How often the service evaluates a pool's formula: 5 minutes is the smallest interval allowed.

Autoscale is therefore for unattended, long-lived pools. On top of the interval, metrics arrive
with about a minute of lag and new nodes take minutes to boot, so a notebook cell submitted to
an empty autoscale pool would sit 5+ minutes before its first node even started allocating.
Interactive runs therefore resize the pool explicitly to what the job needs (see ``pool.py``);
the formula then takes over and shrinks the pool once the queue drains.
"""

SAMPLE_WINDOW_MINUTES = 10
"""Length of the averaging windows (QUEUE_AND_RUNNING's recent demand, MAX_CPU's CPU): two
evaluation intervals, so one odd sample does not move the pool, yet a drained queue or a cold
pool is noticed within about 10 minutes."""

MIN_SAMPLE_PERCENT = 70
"""Share of a window's expected samples (one per 30 s) needed to trust its average."""

WARM_SHARE_DIVISOR = 2
"""WORKDAY / WEEKEND keep ``ceil(max_nodes / 2)`` nodes (at least ``min_nodes``) warm in their
hours: half the ceiling is enough for people to get results without waiting for nodes to
boot, without paying for the full pool while nobody submits work."""

CPU_HIGH_PERCENT = 70
"""MAX_CPU grows the pool when the average CPU is above this."""

CPU_LOW_PERCENT = 20
"""MAX_CPU shrinks the pool when the average CPU is below this."""

MAX_SLOTS_PER_NODE = 256
"""The service's hard limit on task slots per node."""


class _Bounds:
    """Validated sizes, so the builders can trust them."""

    def __init__(self, min_nodes: int, max_nodes: int, slots_per_node: int) -> None:
        for label, value in (("min_nodes", min_nodes), ("max_nodes", max_nodes), ("slots_per_node", slots_per_node)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an integer, not {type(value).__name__}.")
        if min_nodes < 0 or max_nodes < 0:
            raise ValueError(f"Node counts cannot be negative (min_nodes={min_nodes}, max_nodes={max_nodes}).")
        if min_nodes > max_nodes:
            raise ValueError(f"min_nodes ({min_nodes}) cannot be larger than max_nodes ({max_nodes}).")
        if not 1 <= slots_per_node <= MAX_SLOTS_PER_NODE:
            raise ValueError(f"slots_per_node must be between 1 and {MAX_SLOTS_PER_NODE}, not {slots_per_node}.")
        self.min_nodes, self.max_nodes, self.slots_per_node = min_nodes, max_nodes, slots_per_node


def _latest_pending() -> str:
    # Count() guards GetSample(1), which fails on a pool that has no sample yet.
    return "$latest = $PendingTasks.Count() > 0 ? max(0, $PendingTasks.GetSample(1)) : 0;\n"


def _queue_demand() -> str:
    return _latest_pending() + "$demand = $latest;\n"


def _queue_and_running_demand() -> str:
    window = f"TimeInterval_Minute * {SAMPLE_WINDOW_MINUTES}"
    return (
        _latest_pending()
        + f"$pendingPercent = $PendingTasks.GetSamplePercent({window});\n"
        + f"$recent = $pendingPercent >= {MIN_SAMPLE_PERCENT} ? avg($PendingTasks.GetSample({window})) : $latest;\n"
        + "$demand = max($latest, $recent);\n"
    )


def _queue_total(warm_floor: str | None = None) -> str:
    """Nodes for $demand (and at least ``warm_floor``), bounded to [min, max]. $minNodes stays
    in the max() next to a warm floor because the warm share can be below it (min 6 of max 10),
    and the spot target ``$total - $minNodes`` must never go negative."""
    floors = "$minNodes" if warm_floor is None else f"$minNodes, {warm_floor}"
    return f"$needed = ceil($demand / $slots);\n$total = min($maxNodes, max({floors}, $needed));\n"


def _queue(n: _Bounds) -> str:
    """QUEUE: nodes for the latest pending count. The latest sample, not an average, because a
    queue of notebook iterations appears all at once and should be served at the next run.
    (Every builder takes the validated sizes so they share one signature.)"""
    return _queue_demand() + _queue_total()


def _queue_and_running(n: _Bounds) -> str:
    """QUEUE_AND_RUNNING: demand = max(latest pending, average pending over the window), the
    average only when at least MIN_SAMPLE_PERCENT of its samples exist. When the queue empties
    the average stays up for a while, so nodes are released gradually over about one window
    instead of all at the next evaluation, and a new burst is still served from the latest."""
    return _queue_and_running_demand() + _queue_total()


def _warm(n: _Bounds, hours_condition: str) -> str:
    """QUEUE with a floor of max(min_nodes, ceil(max_nodes / 2)) while ``hours_condition``
    holds (evaluated on the service's clock, UTC), and of min_nodes otherwise."""
    share = -(-n.max_nodes // WARM_SHARE_DIVISOR)
    return (
        _queue_demand()
        + "$curTime = time();\n"
        + f"$warmHours = {hours_condition};\n"
        + f"$floor = $warmHours ? {share} : 0;\n"
        + _queue_total("$floor")
    )


# ``weekday``: the autoscale article gives 1 for Monday and leaves Sunday open; public formulas
# read it as 7 (doAzureParallel), .NET-style numbering as 0. Monday 1 .. Saturday 6 agree, so
# both formulas name Sunday both ways and hold under either numbering.
def _workday(n: _Bounds) -> str:
    # Monday (1) .. Friday (5), 08:00-17:59 UTC; Sunday (0 or 7) and Saturday (6) fall outside.
    return _warm(n, "$curTime.weekday >= 1 && $curTime.weekday <= 5 && $curTime.hour >= 8 && $curTime.hour < 18")


def _weekend(n: _Bounds) -> str:
    return _warm(n, "$curTime.weekday == 6 || $curTime.weekday == 0 || $curTime.weekday == 7")


def _max_cpu(n: _Bounds) -> str:
    """MAX_CPU, from the pool's current targets (dedicated + spot) and the window's average CPU
    (the latest CPU sample when under MIN_SAMPLE_PERCENT of the window exists):

    * above CPU_HIGH_PERCENT: current + max(1, ceil(current / 10)), i.e. 10% more, at least 1;
    * below CPU_LOW_PERCENT: max(min_nodes, ceil(latest pending / slots)), the queue's need;
    * otherwise (thresholds included): current;

    then bounded to [min_nodes, max_nodes]. With no CPU sample at all (no node has reported)
    the pool is sized by the queue, so an empty pool can still start. ``current / 10`` rather
    than ``current * 0.1``: dividing by 10 is exact for multiples of 10, multiplying is not
    (30 * 0.1 > 3 would round up to 4).

    The scale of ``$CPUPercent`` is not settled by the sources (the autoscale article calls it
    a percentage but compares it with 0.7 / 0.2), so the formula reads it either way: a series
    whose samples in the window all lie within 0..1 is read as a fraction (times 100); any
    sample above 1 proves the 0-100 scale. Such a series is ambiguous (it is also a pool under
    1 % CPU on the 0-100 scale), so there growth also needs queued tasks ($ActiveTasks), and
    with nothing queued it shrinks to the queue's need, which still counts the running tasks.
    Either way an idle pool never grows and a busy queue is never starved.
    """
    window = f"TimeInterval_Minute * {SAMPLE_WINDOW_MINUTES}"
    return (
        _latest_pending()
        + f"$cpuPercent = $CPUPercent.GetSamplePercent({window});\n"
        + "$cpuRaw = $CPUPercent.Count() == 0 ? -1 : ($cpuPercent >= "
        + f"{MIN_SAMPLE_PERCENT} ? avg($CPUPercent.GetSample({window})) : max($CPUPercent.GetSample(1)));\n"
        + "$cpuPeak = $CPUPercent.Count() == 0 ? -1 : ($cpuPercent > 0 ? "
        + f"max($CPUPercent.GetSample({window})) : max($CPUPercent.GetSample(1)));\n"
        + "$cpuFraction = $cpuPeak <= 1;\n"
        + "$cpu = $cpuFraction ? $cpuRaw * 100 : $cpuRaw;\n"
        + "$queued = $ActiveTasks.Count() > 0 ? max(0, $ActiveTasks.GetSample(1)) : 0;\n"
        + "$current = $TargetDedicatedNodes + $TargetLowPriorityNodes;\n"
        + "$queueNeed = ceil($latest / $slots);\n"
        + f"$grow = $cpu > {CPU_HIGH_PERCENT} && (!$cpuFraction || $queued > 0);\n"
        + f"$shrink = $cpu < {CPU_LOW_PERCENT} || ($cpuFraction && $queued == 0);\n"
        + "$wanted = $grow ? $current + max(1, ceil($current / 10)) : "
        + "($shrink ? max($minNodes, $queueNeed) : $current);\n"
        + "$total = min($maxNodes, max($minNodes, $wanted));\n"
    )


_FORMULAS: dict[str, tuple[str, Callable[[_Bounds], str]]] = {
    "QUEUE": (
        "nodes for the queued and running tasks (latest sample), spot above the min_nodes dedicated floor",
        _queue,
    ),
    "QUEUE_AND_RUNNING": (
        f"like QUEUE, but sized by the larger of the latest and the {SAMPLE_WINDOW_MINUTES}-minute "
        "average task count, so a queue that just drained does not drop nodes at once",
        _queue_and_running,
    ),
    "WORKDAY": ("like QUEUE, and keeps half of max_nodes warm Monday-Friday 08:00-18:00 UTC", _workday),
    "WEEKEND": ("like QUEUE, and keeps half of max_nodes warm all Saturday and Sunday (UTC)", _weekend),
    "MAX_CPU": (
        f"grows by 10% (at least 1 node) when the {SAMPLE_WINDOW_MINUTES}-minute average CPU is over "
        f"{CPU_HIGH_PERCENT}%, shrinks to the queue's need under {CPU_LOW_PERCENT}%, else keeps its size",
        _max_cpu,
    ),
}

FORMULAS: tuple[str, ...] = tuple(_FORMULAS)
"""The formula names a profile may use, in the order help text lists them."""


def _lookup(name: str) -> tuple[str, tuple[str, Callable[[_Bounds], str]]]:
    key = name.strip().upper() if isinstance(name, str) else ""
    if key not in _FORMULAS:
        raise ValueError(f"Unknown autoscale formula {name!r}: use one of {', '.join(FORMULAS)}.")
    return key, _FORMULAS[key]


def describe(name: str) -> str:
    """One line saying what the named formula does, for help text and the UI."""
    key, (summary, _) = _lookup(name)
    return f"{key}: {summary}"


def formula(name: str, *, min_nodes: int, max_nodes: int, slots_per_node: int = 1) -> str:
    """The autoscale formula text for ``name`` (case-insensitive) and the given sizes.

    ``slots_per_node`` must match the pool's ``task_slots_per_node``: it is how many pending
    tasks one node absorbs. Raises ValueError for an unknown name, negative counts,
    ``min_nodes > max_nodes`` or a slot count outside 1..256, and TypeError for a count that
    is not an int (a bool or float would otherwise end up in the formula text).
    """
    key, (summary, build) = _lookup(name)
    bounds = _Bounds(min_nodes, max_nodes, slots_per_node)
    return (
        f"// azpar_magic {key}: {summary}\n"
        f"$minNodes = {bounds.min_nodes};\n"
        f"$maxNodes = {bounds.max_nodes};\n"
        f"$slots = {bounds.slots_per_node};\n"
        + build(bounds)
        + "$TargetDedicatedNodes = $minNodes;\n"
        + "$TargetLowPriorityNodes = $total - $minNodes;\n"
        + "$NodeDeallocationOption = taskcompletion;\n"
    )

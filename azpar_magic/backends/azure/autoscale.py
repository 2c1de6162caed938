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
* Idle rule (``idle_minutes``, a profile's ``idle_timeout``): when no task was pending in any
  sample of the last ``idle_minutes`` minutes, both targets are 0, whatever ``min_nodes`` or a
  warm floor asks; otherwise the formula's own targets. "No task" needs at least
  :data:`MIN_SAMPLE_PERCENT` % of that window's samples: a new pool, or one whose history is
  short, is never taken for idle. The service evaluates a formula every
  :data:`EVALUATION_INTERVAL_MINUTES` minutes at best and its samples lag about a minute, so a
  pool shrinks between ``idle_minutes + 1`` and ``idle_minutes + 6`` minutes after its last
  task, with no kernel alive. :func:`fixed_formula` gives a fixed-size pool the same rule.
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

__all__ = [
    "EVALUATION_INTERVAL_MINUTES",
    "FORMULAS",
    "IDLE_MARK",
    "describe",
    "fixed_formula",
    "formula",
    "idle_minutes",
]

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

MIN_IDLE_MINUTES = EVALUATION_INTERVAL_MINUTES
"""Shortest idle timeout. Samples reach a formula about a minute late (the autoscale article),
so a window under 4 minutes never holds MIN_SAMPLE_PERCENT of its samples and the rule would
never fire; and nothing is evaluated more often than every 5 minutes anyway."""

MAX_IDLE_MINUTES = 7 * 24 * 60
"""Longest idle timeout: a week. Batch keeps metric history for a limited time only, and a
longer wait would rather be a pool the administrator sizes."""

IDLE_MARK = "$idleMinutes"
"""The variable holding the idle timeout in a formula this module made: ``pool.py`` reads the
timeout back from a pool's formula (``%azpar pool status``) with :func:`idle_minutes`."""


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


def _check_idle(idle_minutes: int) -> int:
    if isinstance(idle_minutes, bool) or not isinstance(idle_minutes, int):
        raise TypeError(f"idle_minutes must be an integer, not {type(idle_minutes).__name__}.")
    if idle_minutes and not MIN_IDLE_MINUTES <= idle_minutes <= MAX_IDLE_MINUTES:
        raise ValueError(
            f"idle_minutes must be 0 (off) or between {MIN_IDLE_MINUTES} and {MAX_IDLE_MINUTES}, not {idle_minutes}."
        )
    return idle_minutes


def _idle_rule(idle_minutes: int) -> str:
    """``$idle`` is 1 when every sample of the last ``idle_minutes`` minutes had no pending task
    and at least MIN_SAMPLE_PERCENT % of them exist. GetSamplePercent is asked first because
    GetSample with too few samples fails the whole evaluation (the autoscale article,
    "GetSamplePercent"); ``max`` of the window rather than its average, so one queued task
    anywhere in the window keeps the pool."""
    window = "TimeInterval_Minute * " + IDLE_MARK
    return (
        f"{IDLE_MARK} = {idle_minutes};\n"
        f"$idleSamples = $PendingTasks.GetSamplePercent({window});\n"
        f"$idleBusy = $idleSamples < {MIN_SAMPLE_PERCENT} ? 1 : max($PendingTasks.GetSample({window}));\n"
        "$idle = $idleBusy == 0;\n"
    )


def idle_minutes(formula_text: str | None) -> int:
    """The idle timeout a formula made here carries (0: none, or not a formula of this module)."""
    for line in (formula_text or "").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == IDLE_MARK:
            try:
                return int(value.strip().rstrip(";"))
            except ValueError:
                return 0
    return 0


def _targets(dedicated: str, spot: str, idle_minutes: int) -> str:
    if not idle_minutes:
        return f"$TargetDedicatedNodes = {dedicated};\n$TargetLowPriorityNodes = {spot};\n"
    return (
        _idle_rule(idle_minutes)
        + f"$TargetDedicatedNodes = $idle ? 0 : {dedicated};\n"
        + f"$TargetLowPriorityNodes = $idle ? 0 : {spot};\n"
    )


def fixed_formula(*, dedicated: int, spot: int, idle_minutes: int) -> str:
    """A fixed-size pool that goes to zero when idle: ``dedicated`` + ``spot`` nodes while any
    task was pending in the last ``idle_minutes`` minutes (or the history is too short to
    say), 0 after. Batch resizes a pool by hand only with autoscale off (the autoscale
    article: disable, then resize), so the pool is created with autoscale on and this formula,
    which asks for the fixed sizes at its first evaluation."""
    for label, value in (("dedicated", dedicated), ("spot", spot)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a whole number, 0 or more, not {value!r}.")
    if not _check_idle(idle_minutes):
        raise ValueError("fixed_formula needs idle_minutes of 1 or more (a fixed pool without it needs no formula).")
    return (
        f"// azpar_magic FIXED: {dedicated} dedicated + {spot} spot nodes, 0 after {idle_minutes} idle minutes\n"
        + _targets(str(dedicated), str(spot), idle_minutes)
        + "$NodeDeallocationOption = taskcompletion;\n"
    )


def describe(name: str) -> str:
    """One line saying what the named formula does, for help text and the UI."""
    key, (summary, _) = _lookup(name)
    return f"{key}: {summary}"


def formula(name: str, *, min_nodes: int, max_nodes: int, slots_per_node: int = 1, idle_minutes: int = 0) -> str:
    """The autoscale formula text for ``name`` (case-insensitive) and the given sizes.

    ``slots_per_node`` must match the pool's ``task_slots_per_node``: it is how many pending
    tasks one node absorbs. Raises ValueError for an unknown name, negative counts,
    ``min_nodes > max_nodes`` or a slot count outside 1..256, and TypeError for a count that
    is not an int (a bool or float would otherwise end up in the formula text).
    ``idle_minutes`` (0: off) adds the idle rule of the module docstring: 0 nodes once no task
    has been pending for that many minutes.
    """
    key, (summary, build) = _lookup(name)
    bounds = _Bounds(min_nodes, max_nodes, slots_per_node)
    idle = _check_idle(idle_minutes)
    return (
        f"// azpar_magic {key}: {summary}\n"
        f"$minNodes = {bounds.min_nodes};\n"
        f"$maxNodes = {bounds.max_nodes};\n"
        f"$slots = {bounds.slots_per_node};\n"
        + build(bounds)
        + _targets("$minNodes", "$total - $minNodes", idle)
        + "$NodeDeallocationOption = taskcompletion;\n"
    )

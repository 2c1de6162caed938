"""Evaluator for the subset of the Batch autoscale formula language that real formulas use.

Importable on its own (stdlib only) so product formulas can be unit-tested::

    from tests.batch_emulator.autoscale import Metrics, evaluate
    m = Metrics()
    m.add(now - timedelta(seconds=30), ActiveTasks=8, RunningTasks=2)
    r = evaluate("$TargetDedicatedNodes = max(0, $PendingTasks.GetSample(1));", metrics=m, now=now)
    r.target_dedicated, r.results   # 10, "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;..."

Supported: statements ``$name = expr;`` (``$``-less names are locals too), numbers, strings,
``+ - * /``, comparison, ``&& || !``, ``cond ? a : b``, functions (min, max, avg, sum, count,
len, median, percentile, std, ceil, floor, round, abs, ln, lg, log, time), the TimeInterval_*
constants, timestamp fields (``.year .month .day .hour .minute .second .weekday .yearday``;
weekday 1 = Monday .. 6 = Saturday, and Sunday 0 or 7 by ``sunday=``), and the metric series
``$ActiveTasks $RunningTasks $PendingTasks $CPUPercent $SucceededTasks $FailedTasks
$MemoryBytes $DiskBytes`` with ``GetSample`` and
``GetSamplePercent`` (samples are expected every 30 s). ``$PendingTasks`` is the sum of the
active and running samples. Results string: the three service variables first, then the
formula's own variables in order of first assignment, ``$a=1;$b=2``.

Two conventions the sources leave open are switchable per evaluation (``evaluate(...,
sunday=, cpu_scale=)``; on the service ``svc.weekday_sunday`` / ``svc.cpu_percent_scale``):

* ``weekday`` of Sunday: the autoscale article ("Automatically scale compute nodes in an
  Azure Batch pool", time fields) gives "1 for Monday" and says nothing of Sunday;
  doAzureParallel's ``R/autoscale.R`` WEEKEND formula reads Sunday as 7, the .NET-style
  numbering reads it as 0. ``sunday=0`` (default) or ``sunday=7``.
* the scale of ``$CPUPercent``: the same article calls it an "average percentage" but its
  worked example compares it with 0.7 and 0.2 while describing 70 % and 20 %. Samples are
  recorded in percent (0-100); ``cpu_scale="fraction"`` makes the formula read them / 100.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SAMPLE_INTERVAL = 30.0  # seconds between metric samples on the real service
# Seconds before a sample reaches formulas. The autoscale article ("Automatically scale compute
# nodes in an Azure Batch pool", Samples): "It takes approximately one minute for samples to
# propagate through the system". Applied by the service's accelerated clock (autoscale_advance).
SAMPLE_LAG = 60.0
SERIES = ("ActiveTasks", "RunningTasks", "PendingTasks", "CPUPercent", "SucceededTasks", "FailedTasks",
          "MemoryBytes", "DiskBytes", "NetworkInBytes", "NetworkOutBytes", "WallClockSeconds")
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
WEEKDAY_SUNDAY = (0, 7)  # the conventions evaluate() can model (module docstring)
CPU_SCALES = ("percent", "fraction")


class AutoScaleError(Exception):
    """A formula that cannot be evaluated; ``code`` mirrors the service's AutoScaleRunError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FormulaSyntaxError(AutoScaleError):
    def __init__(self, message: str) -> None:
        super().__init__("AutoScalingFormulaSyntaxError", message)


@dataclass(frozen=True)
class Interval:
    seconds: float


class Metrics:
    """Time series of pool metrics, as the service samples them (one sample per call to add)."""

    def __init__(self) -> None:
        self.samples: list[tuple[dt.datetime, dict[str, float]]] = []

    def add(self, time: dt.datetime, **values: float) -> None:
        vals = dict(values)
        if "PendingTasks" not in vals and ("ActiveTasks" in vals or "RunningTasks" in vals):
            vals["PendingTasks"] = vals.get("ActiveTasks", 0) + vals.get("RunningTasks", 0)
        self.samples.append((time, vals))
        self.samples.sort(key=lambda s: s[0])

    def series(self, name: str) -> list[tuple[dt.datetime, float]]:
        return [(t, v[name]) for t, v in self.samples if name in v]


class _Series:
    def __init__(self, name: str, points: list[tuple[dt.datetime, float]], now: dt.datetime) -> None:
        self.name, self.points, self.now = name, points, now

    def _window(self, args: list) -> tuple[list[float], float, float | None]:
        pct = None
        if len(args) == 1 and isinstance(args[0], float):
            n = int(args[0])
            vals = [v for _, v in self.points[-n:]] if n > 0 else []
            return vals, 100.0 if len(vals) >= n else 100.0 * len(vals) / max(n, 1), None
        ivs = [a for a in args if isinstance(a, Interval)]
        nums = [a for a in args if isinstance(a, float)]
        if not ivs or len(ivs) > 2 or len(nums) > 1:
            raise AutoScaleError("InvalidArguments", f"{self.name}.GetSample: unsupported arguments")
        start = self.now - dt.timedelta(seconds=ivs[0].seconds)
        end = self.now - dt.timedelta(seconds=ivs[1].seconds) if len(ivs) == 2 else self.now
        if nums:
            pct = nums[0]
        vals = [v for t, v in self.points if start < t <= end]
        expected = max(1.0, (end - start).total_seconds() / SAMPLE_INTERVAL)
        return vals, min(100.0, 100.0 * len(vals) / expected), pct

    def call(self, method: str, args: list) -> Any:
        if method == "GetSample":
            vals, percent, minimum = self._window(args)
            if not vals:
                raise AutoScaleError("InsufficientSampleData",
                                     f"{self.name}.GetSample: no samples are available in the requested range")
            if minimum is not None and percent < minimum:
                raise AutoScaleError("InsufficientSampleData",
                                     f"{self.name}.GetSample: {percent:.0f}% of samples available, {minimum:.0f}% required")
            return [float(v) for v in vals]
        if method == "GetSamplePercent":
            return float(self._window(args)[1])
        if method == "Count":
            return float(len(self.points))
        if method == "HistoryBeginTime":
            return self.points[0][0] if self.points else self.now
        raise AutoScaleError("InvalidMethod", f"{self.name} has no method {method}")


# ---- tokenizer and parser -------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)
  | (?P<str>"[^"]*")
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/<>!?:;=(),.])
""", re.X | re.S)


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormulaSyntaxError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    out.append(("end", ""))
    return out


class _Parser:
    """Recursive descent into a small tuple AST: ("num", v) ("str", s) ("var", n) ("call", f, args)
    ("method", obj, name, args|None) ("un", op, e) ("bin", op, a, b) ("tern", c, a, b)."""

    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            raise FormulaSyntaxError(f"expected {value!r} but found {tok[1] or 'end of formula'!r}")
        self.i += 1
        return tok

    def program(self) -> list[tuple[str, Any]]:
        stmts = []
        while self.peek()[0] != "end":
            if self.peek()[1] == ";":
                self.take()
                continue
            kind, name = self.take()
            if kind != "name":
                raise FormulaSyntaxError(f"expected a variable name, found {name!r}")
            self.take("=")
            stmts.append((name, self.expr()))
            if self.peek()[0] != "end":
                self.take(";")
        if not stmts:
            raise FormulaSyntaxError("the formula is empty")
        return stmts

    def expr(self) -> Any:
        cond = self.binary(0)
        if self.peek()[1] == "?":
            self.take()
            a = self.expr()
            self.take(":")
            b = self.expr()
            return ("tern", cond, a, b)
        return cond

    _LEVELS = [("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">="), ("+", "-"), ("*", "/")]

    def binary(self, level: int) -> Any:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in self._LEVELS[level]:
            op = self.take()[1]
            left = ("bin", op, left, self.binary(level + 1))
        return left

    def unary(self) -> Any:
        if self.peek()[1] in ("-", "!", "+"):
            op = self.take()[1]
            return ("un", op, self.unary())
        return self.postfix()

    def args(self) -> list:
        self.take("(")
        out = []
        if self.peek()[1] != ")":
            out.append(self.expr())
            while self.peek()[1] == ",":
                self.take()
                out.append(self.expr())
        self.take(")")
        return out

    def postfix(self) -> Any:
        node = self.primary()
        while self.peek()[1] == ".":
            self.take()
            kind, name = self.take()
            if kind != "name":
                raise FormulaSyntaxError(f"expected a member name after '.', found {name!r}")
            node = ("method", node, name, self.args() if self.peek()[1] == "(" else None)
        return node

    def primary(self) -> Any:
        kind, val = self.take()
        if kind == "num":
            return ("num", float(val))
        if kind == "str":
            return ("str", val[1:-1])
        if kind == "name":
            if self.peek()[1] == "(":
                return ("call", val, self.args())
            return ("var", val)
        if val == "(":
            e = self.expr()
            self.take(")")
            return e
        raise FormulaSyntaxError(f"unexpected {val or 'end of formula'!r}")


def parse(formula: str) -> list[tuple[str, Any]]:
    """Parse a formula into statements; raises FormulaSyntaxError (the service's 400)."""
    return _Parser(formula).program()


# ---- evaluation ------------------------------------------------------------------------
_INTERVALS = {
    "TimeInterval_Zero": 0.0, "TimeInterval_100ns": 1e-7, "TimeInterval_Microsecond": 1e-6,
    "TimeInterval_Millisecond": 1e-3, "TimeInterval_Second": 1.0, "TimeInterval_Minute": 60.0,
    "TimeInterval_Hour": 3600.0, "TimeInterval_Day": 86400.0, "TimeInterval_Week": 604800.0,
    "TimeInterval_Year": 31536000.0,
}


def _flatten(args: Iterable[Any]) -> list[float]:
    out: list[float] = []
    for a in args:
        if isinstance(a, list):
            out.extend(a)
        elif isinstance(a, float):
            out.append(a)
        else:
            raise AutoScaleError("InvalidArguments", f"expected numbers, got {type(a).__name__}")
    return out


def _need(vals: list[float], fn: str) -> list[float]:
    if not vals:
        raise AutoScaleError("InvalidArguments", f"{fn}() of an empty list")
    return vals


def _percentile(vals: list[float], p: float) -> float:
    s = sorted(vals)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _fn(name: str, args: list, now: dt.datetime) -> Any:
    if name == "time":
        if not args:
            return now
        try:
            return dt.datetime.fromisoformat(str(args[0]).replace("Z", "+00:00"))
        except ValueError:
            raise AutoScaleError("InvalidArguments", f"time(): cannot parse {args[0]!r}") from None
    if name == "percentile":
        return _percentile(_need(_flatten(args[:1]), name), float(args[1]))
    vals = _flatten(args)
    if name == "min":
        return min(_need(vals, name))
    if name == "max":
        return max(_need(vals, name))
    if name == "avg":
        return sum(_need(vals, name)) / len(vals)
    if name == "sum":
        return float(sum(vals))
    if name in ("count", "len"):
        return float(len(vals))
    if name == "median":
        return _percentile(_need(vals, name), 50)
    if name == "std":
        v = _need(vals, name)
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))
    single = {"ceil": math.ceil, "floor": math.floor, "round": round, "abs": abs,
              "ln": math.log, "lg": math.log2, "log": math.log10}
    if name in single:
        if isinstance(args[0], list):
            return [float(single[name](x)) for x in args[0]]
        return float(single[name](_need(vals, name)[0]))
    raise AutoScaleError("UnknownFunction", f"unknown function {name}()")


def _arith(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, list) or isinstance(b, list):
        la = a if isinstance(a, list) else None
        lb = b if isinstance(b, list) else None
        if la is not None and lb is not None:
            if len(la) != len(lb):
                raise AutoScaleError("InvalidArguments", "vector lengths differ")
            return [_arith(op, x, y) for x, y in zip(la, lb)]
        return [_arith(op, x, b) for x in la] if la is not None else [_arith(op, a, y) for y in lb]  # type: ignore
    if isinstance(a, float) and isinstance(b, float):
        if op == "/" and b == 0:
            raise AutoScaleError("DivideByZero", "division by zero")
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0.0}[op]
    if isinstance(a, Interval) and isinstance(b, float) and op in "*/":
        return Interval(a.seconds * b if op == "*" else a.seconds / b)
    if isinstance(a, float) and isinstance(b, Interval) and op == "*":
        return Interval(a * b.seconds)
    if isinstance(a, Interval) and isinstance(b, Interval) and op in "+-":
        return Interval(a.seconds + b.seconds if op == "+" else a.seconds - b.seconds)
    if isinstance(a, dt.datetime) and isinstance(b, Interval) and op in "+-":
        d = dt.timedelta(seconds=b.seconds)
        return a + d if op == "+" else a - d
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and op == "-":
        return Interval((a - b).total_seconds())
    raise AutoScaleError("InvalidOperation",
                         f"cannot apply {op} to {type(a).__name__} and {type(b).__name__}")


def _cmp_key(v: Any) -> Any:
    if isinstance(v, Interval):
        return v.seconds
    return v


def _truthy(v: Any) -> bool:
    if isinstance(v, float):
        return v != 0.0
    raise AutoScaleError("InvalidOperation", f"a {type(v).__name__} is not a condition")


class _Evaluator:
    def __init__(self, env: dict[str, Any], series: dict[str, _Series], now: dt.datetime, sunday: int = 0) -> None:
        self.env, self.series, self.now, self.sunday = env, series, now, sunday

    def _weekday(self, when: dt.datetime) -> int:
        """Monday 1 .. Saturday 6, Sunday 0 or 7 (the convention this evaluation models)."""
        day = when.isoweekday()
        return self.sunday if day == 7 else day

    def eval(self, node: Any) -> Any:
        kind = node[0]
        if kind == "num":
            return node[1]
        if kind == "str":
            return node[1]
        if kind == "var":
            name = node[1]
            if name in self.env:
                return self.env[name]
            if name in _INTERVALS:
                return Interval(_INTERVALS[name])
            if name.lower() in DEALLOCATION_OPTIONS:  # real formulas write `= taskcompletion;` unquoted
                return name.lower()
            if name.lstrip("$") in self.series:
                return self.series[name.lstrip("$")]
            raise AutoScaleError("UndefinedVariable", f"the variable {name} is not defined")
        if kind == "call":
            return _fn(node[1], [self.eval(a) for a in node[2]], self.now)
        if kind == "method":
            obj = self.eval(node[1])
            name, args = node[2], node[3]
            if isinstance(obj, _Series):
                return obj.call(name, [self.eval(a) for a in (args or [])])
            if isinstance(obj, dt.datetime) and args is None:
                fields = {"year": obj.year, "month": obj.month, "day": obj.day, "hour": obj.hour,
                          "minute": obj.minute, "second": obj.second, "weekday": self._weekday(obj),
                          "yearday": obj.timetuple().tm_yday}
                if name in fields:
                    return float(fields[name])
            raise AutoScaleError("InvalidMember", f"no member {name} on {type(obj).__name__}")
        if kind == "un":
            v = self.eval(node[2])
            if node[1] == "!":
                return 0.0 if _truthy(v) else 1.0
            if node[1] == "-":
                return _arith("*", v, -1.0) if not isinstance(v, Interval) else Interval(-v.seconds)
            return v
        if kind == "tern":
            return self.eval(node[2]) if _truthy(self.eval(node[1])) else self.eval(node[3])
        if kind == "bin":
            op = node[1]
            if op == "&&":
                return 1.0 if _truthy(self.eval(node[2])) and _truthy(self.eval(node[3])) else 0.0
            if op == "||":
                return 1.0 if _truthy(self.eval(node[2])) or _truthy(self.eval(node[3])) else 0.0
            a, b = self.eval(node[2]), self.eval(node[3])
            if isinstance(a, _Series) or isinstance(b, _Series):
                raise AutoScaleError("InvalidOperation", "metric series must be read with GetSample()")
            if op in ("+", "-", "*", "/"):
                return _arith(op, a, b)
            ka, kb = _cmp_key(a), _cmp_key(b)
            if type(ka) is not type(kb):
                raise AutoScaleError("InvalidOperation", f"cannot compare {type(a).__name__} with {type(b).__name__}")
            return 1.0 if {"==": ka == kb, "!=": ka != kb, "<": ka < kb, "<=": ka <= kb,
                           ">": ka > kb, ">=": ka >= kb}[op] else 0.0
        raise AutoScaleError("InvalidFormula", f"cannot evaluate {kind}")


@dataclass
class AutoScaleResult:
    target_dedicated: int
    target_low_priority: int
    node_deallocation_option: str | None
    variables: dict[str, Any] = field(default_factory=dict)
    results: str = ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
    if isinstance(v, Interval):
        return f"{v.seconds}s"
    if isinstance(v, list):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def evaluate(formula: str, *, now: dt.datetime | None = None, metrics: Metrics | None = None,
             current_dedicated: int = 0, current_low_priority: int = 0,
             target_dedicated: int | None = None, target_low_priority: int | None = None,
             preempted_nodes: int = 0, task_slots_per_node: int = 1, sunday: int = 0,
             cpu_scale: str = "percent") -> AutoScaleResult:
    """Evaluate ``formula`` as the service would at time ``now`` with the given metric samples.

    The targets start at the pool's current targets (defaulting to the current node counts);
    the result holds the new targets, the deallocation option and the service-style results
    string. Raises FormulaSyntaxError for a formula that does not parse and AutoScaleError for
    one that fails while running (e.g. GetSample with too few samples). ``sunday`` (0 or 7)
    and ``cpu_scale`` ("percent": 0-100, "fraction": 0-1) pick the conventions the module
    docstring describes.
    """
    if sunday not in WEEKDAY_SUNDAY:
        raise ValueError(f"sunday must be one of {WEEKDAY_SUNDAY}, not {sunday!r}")
    if cpu_scale not in CPU_SCALES:
        raise ValueError(f"cpu_scale must be one of {CPU_SCALES}, not {cpu_scale!r}")
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    stmts = parse(formula)
    metrics = metrics or Metrics()
    def scaled(name: str, value: float) -> float:
        return value / 100.0 if name == "CPUPercent" and cpu_scale == "fraction" else value

    series = {name: _Series("$" + name, [(t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc), scaled(name, v))
                                          for t, v in metrics.series(name)], now) for name in SERIES}
    env: dict[str, Any] = {
        "$TargetDedicatedNodes": float(current_dedicated if target_dedicated is None else target_dedicated),
        "$TargetLowPriorityNodes": float(current_low_priority if target_low_priority is None else target_low_priority),
        "$CurrentDedicatedNodes": float(current_dedicated),
        "$CurrentLowPriorityNodes": float(current_low_priority),
        "$PreemptedNodeCount": float(preempted_nodes),
        "$TaskSlotsPerNode": float(task_slots_per_node),
    }
    user_order: list[str] = []
    ev = _Evaluator(env, series, now, sunday)
    for name, node in stmts:
        if name in ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$PreemptedNodeCount") or \
                name.lstrip("$") in SERIES:
            raise AutoScaleError("ReadOnlyVariable", f"{name} is read-only")
        env[name] = ev.eval(node)
        if not name.startswith(("$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption")) \
                and name not in user_order:
            user_order.append(name)
    targets = []
    for var in ("$TargetDedicatedNodes", "$TargetLowPriorityNodes"):
        v = env[var]
        if not isinstance(v, float) or math.isnan(v) or math.isinf(v):
            raise AutoScaleError("InvalidTarget", f"{var} must be a number, got {_fmt(v)}")
        targets.append(max(0, int(v)))
    option = env.get("$NodeDeallocationOption")
    if option is not None and (not isinstance(option, str) or option.lower() not in DEALLOCATION_OPTIONS):
        raise AutoScaleError("InvalidNodeDeallocationOption", f"$NodeDeallocationOption cannot be {_fmt(option)}")
    parts = [f"$TargetDedicatedNodes={targets[0]}", f"$TargetLowPriorityNodes={targets[1]}",
             f"$NodeDeallocationOption={(option or 'requeue').lower()}"]
    parts += [f"{n}={_fmt(env[n])}" for n in user_order]
    return AutoScaleResult(targets[0], targets[1], option.lower() if option else None,
                           {k: env[k] for k in user_order}, ";".join(parts))

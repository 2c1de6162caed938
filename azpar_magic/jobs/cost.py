"""What a job costs, measured from what the views already see: node time by priority and task time.

The meter knows nothing of Azure. A backend hands it a :class:`Price` (or none) and the engine and the
Job feed it node lists (``NodeInfo``, one list per snapshot) and task run times. Node time is integrated
between successive observations: the nodes seen at one instant are assumed to hold until the next, so the
figure is as fine as the observations are frequent (the engine observes every few seconds while a job
runs). A pool shared by two jobs at once is counted whole by each: the meter measures the pool while the
job ran, not a share of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .snapshot import NodeInfo

#: Node states not billed: a preempted spot node is gone, a deallocated one keeps no compute, and the
#: local pool's ``lost`` worker is no longer there. Every other state (starting, idle, running, unusable,
#: leaving the pool...) is a VM that exists and is billed per second.
UNBILLED_STATES = frozenset({"preempted", "deallocated", "deallocating", "lost"})

PRICE_UNKNOWN = "price unknown"


@dataclass(frozen=True)
class Price:
    """Price of one node hour, by priority (None: not known), and where it came from."""

    dedicated: float | None
    spot: float | None
    currency: str = "USD"
    source: str = ""  # "profile", "Azure retail prices", ...
    date: str = ""  # when the price was read (YYYY-MM-DD), "" for a profile's own figure

    @property
    def known(self) -> bool:
        return self.dedicated is not None or self.spot is not None

    def per_hour(self, dedicated: int, spot: int) -> float | None:
        """What ``dedicated`` and ``spot`` nodes cost per hour; None when a price they need is unknown."""
        total = 0.0
        for count, each in ((dedicated, self.dedicated), (spot, self.spot)):
            if count:
                if each is None:
                    return None
                total += count * each
        return total

    def describe(self) -> str:
        parts = []
        if self.dedicated is not None:
            parts.append(f"{money(self.dedicated, self.currency)}/h dedicated")
        if self.spot is not None:
            parts.append(f"{money(self.spot, self.currency)}/h spot")
        where = self.source + (f" of {self.date}" if self.date else "")
        return ", ".join(parts) + (f" ({where})" if where else "") if parts else PRICE_UNKNOWN


def money(amount: float, currency: str = "USD") -> str:
    """An amount as views show it: two decimals, more for amounts under a cent."""
    digits = 2 if amount >= 0.1 or amount == 0 else 4
    sign = "$" if currency == "USD" else ""
    return f"{sign}{amount:,.{digits}f}" + ("" if sign else f" {currency}")


def billable(nodes: Iterable[NodeInfo]) -> tuple[int, int]:
    """(dedicated, spot) nodes billed now."""
    dedicated = spot = 0
    for node in nodes:
        if node.state in UNBILLED_STATES:
            continue
        if node.dedicated:
            dedicated += 1
        else:
            spot += 1
    return dedicated, spot


@dataclass(frozen=True)
class CostEstimate:
    """A job's node time, task time and estimated cost at one instant (or at its end)."""

    node_hours_dedicated: float = 0.0
    node_hours_spot: float = 0.0
    task_core_hours: float = 0.0
    nodes_dedicated: int = 0  # billed nodes now (0 once the job ended)
    nodes_spot: int = 0
    price: Price | None = None
    billed: bool = True  # False: a backend that bills nothing (the local pool): only times are shown
    running: bool = False

    @property
    def node_hours(self) -> float:
        return self.node_hours_dedicated + self.node_hours_spot

    @property
    def amount(self) -> float | None:
        """Estimated cost so far; None when a price it needs is unknown."""
        if self.price is None:
            return None
        total = 0.0
        for hours, each in ((self.node_hours_dedicated, self.price.dedicated), (self.node_hours_spot, self.price.spot)):
            if hours > 0:
                if each is None:
                    return None
                total += hours * each
        return total

    @property
    def burn_rate(self) -> float | None:
        """Cost per hour of the nodes billed now; None when unknown or the job ended."""
        if self.price is None or not self.running:
            return None
        return self.price.per_hour(self.nodes_dedicated, self.nodes_spot)

    def cost_text(self) -> str:
        amount = self.amount
        if amount is None:
            return PRICE_UNKNOWN
        currency = self.price.currency if self.price else "USD"
        return f"~{money(amount, currency)}"

    def summary(self) -> str:
        """One line: node hours by priority, task core hours, the estimate (and burn rate while running)."""
        hours = f"node time {self.node_hours:.2f} h"
        if self.node_hours_dedicated and self.node_hours_spot:
            hours += f" ({self.node_hours_dedicated:.2f} dedicated, {self.node_hours_spot:.2f} spot)"
        elif self.node_hours_spot:
            hours += " (spot)"
        text = f"{hours}, task core time {self.task_core_hours:.2f} h"
        if not self.billed:
            return text
        text += f", cost {self.cost_text()}"
        rate = self.burn_rate
        if rate is not None:
            text += f", burning {money(rate, self.price.currency if self.price else 'USD')}/h"
        return text

    def short(self) -> str:
        """For a panel's header: the estimate and node hours, and the burn rate while the job runs."""
        text = f"{self.cost_text()} ({self.node_hours:.2f} node h)"
        rate = self.burn_rate
        if rate is not None:
            text += f", {money(rate, self.price.currency if self.price else 'USD')}/h now"
        return text

    def as_record(self) -> dict:
        """For the job store's manifest (plain JSON)."""
        price = self.price
        return {
            "node_hours_dedicated": round(self.node_hours_dedicated, 9),
            "node_hours_spot": round(self.node_hours_spot, 9),
            "task_core_hours": round(self.task_core_hours, 9),
            "amount": None if self.amount is None else round(self.amount, 6),
            "currency": price.currency if price else "USD",
            "price_dedicated": price.dedicated if price else None,
            "price_spot": price.spot if price else None,
            "price_source": price.source if price else "",
            "price_date": price.date if price else "",
            "billed": self.billed,
        }

    @classmethod
    def from_record(cls, record: dict) -> CostEstimate:
        """The estimate a manifest kept (a stored job's ``cost()``)."""
        price = None
        if record.get("price_dedicated") is not None or record.get("price_spot") is not None:
            price = Price(
                record.get("price_dedicated"),
                record.get("price_spot"),
                record.get("currency") or "USD",
                record.get("price_source") or "",
                record.get("price_date") or "",
            )
        return cls(
            node_hours_dedicated=float(record.get("node_hours_dedicated") or 0.0),
            node_hours_spot=float(record.get("node_hours_spot") or 0.0),
            task_core_hours=float(record.get("task_core_hours") or 0.0),
            price=price,
            billed=bool(record.get("billed", True)),
        )


@dataclass
class CostMeter:
    """Integrates node seconds by priority from successive node lists, and adds up task core seconds."""

    price: Price | None = None
    billed: bool = True
    cores_per_task: float = 1.0  # vCPUs one task slot has: task seconds times this are core seconds
    clock: Callable[[], float] = time.monotonic
    _last: tuple[float, int, int] | None = None  # (when, dedicated, spot) of the last observation
    _dedicated_s: float = 0.0
    _spot_s: float = 0.0
    _task_s: float = 0.0
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, nodes: Iterable[NodeInfo], now: float | None = None) -> None:
        """The pool's nodes at ``now``: the time since the last observation is counted at that one's nodes."""
        counts = billable(nodes)
        with self._lock:
            if self._stopped:
                return
            now = self.clock() if now is None else now
            self._advance(now)
            self._last = (now, *counts)

    def _advance(self, now: float) -> None:
        if self._last is None:
            return
        when, dedicated, spot = self._last
        span = max(0.0, now - when)
        self._dedicated_s += span * dedicated
        self._spot_s += span * spot
        self._last = (now, dedicated, spot)

    def task_ran(self, seconds: float) -> None:
        """One task attempt ran ``seconds`` (Batch's execution times, or the engine's own)."""
        if seconds > 0:
            with self._lock:
                self._task_s += seconds * self.cores_per_task

    def stop(self, now: float | None = None) -> None:
        """The job ended: count up to now and no further."""
        with self._lock:
            if self._stopped:
                return
            self._advance(self.clock() if now is None else now)
            self._stopped = True

    def estimate(self) -> CostEstimate:
        with self._lock:
            if not self._stopped:
                self._advance(self.clock())
            dedicated, spot = (self._last[1], self._last[2]) if self._last and not self._stopped else (0, 0)
            return CostEstimate(
                node_hours_dedicated=self._dedicated_s / 3600,
                node_hours_spot=self._spot_s / 3600,
                task_core_hours=self._task_s / 3600,
                nodes_dedicated=dedicated,
                nodes_spot=spot,
                price=self.price,
                billed=self.billed,
                running=not self._stopped,
            )


def pool_burn(nodes: Iterable[NodeInfo], price: Price | None) -> tuple[int, int, float | None]:
    """(dedicated, spot, cost per hour) of a pool's billed nodes now; the cost is None when unknown."""
    dedicated, spot = billable(nodes)
    return dedicated, spot, (price.per_hour(dedicated, spot) if price is not None else None)


def column_text(estimate: CostEstimate | None) -> str:
    """The cost column of ``%azpar jobs``: the estimate, or "price unknown" with the node hours; "" for a
    job nothing billed (the local pool) or nobody metered."""
    if estimate is None or not estimate.billed:
        return ""
    if estimate.amount is None:
        return f"{PRICE_UNKNOWN} ({estimate.node_hours:.2f} node h)"
    return estimate.cost_text()

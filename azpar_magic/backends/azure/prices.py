"""The price of one node hour of the profile's VM size, by priority: the profile's own figures, else the Azure
retail prices API (public, no credential), cached on disk with the date it was read.

The retail API answers ``GET {base}?$filter=...`` with ``{"Items": [...], "NextPageLink": url | null}``; each
item has ``armSkuName``, ``armRegionName``, ``serviceName``, ``type`` ('Consumption' for pay-as-you-go),
``unitOfMeasure`` ('1 Hour'), ``retailPrice``, ``currencyCode``, ``productName`` (with 'Windows' for Windows
images) and ``skuName`` / ``meterName`` (with 'Spot' or 'Low Priority' for those meters). Filter values are
case-sensitive. The figure is a list price: reservations, savings plans and negotiated discounts are not
known here, so every amount built on it is an estimate.

The public API is asked only for a real Batch account (``*.batch.azure.com``) or when ``AZPAR_PRICES_URL``
names another base (the tests' local stub): a test service on loopback never reaches the internet.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ...jobs.cost import Price, money, pool_burn
from ...jobs.snapshot import NodeInfo
from .pool import state_name

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
PRICES_URL_ENV = "AZPAR_PRICES_URL"  # another base URL for the retail API (the tests' stub)
CACHE_DAYS = 7  # list prices change rarely; a week-old figure is as good an estimate
MAX_PAGES = 20  # a filtered answer for one size and region is one or two pages
TIMEOUT = 5.0  # seconds per request: a slow price must not hold a run up for long
SOURCE = "Azure retail prices"

_lock = threading.Lock()
_memory: dict[str, tuple[str, dict]] = {}  # key -> (date read, prices) for this process


def _field(profile: Any, key: str) -> Any:
    """A profile's field, None when it has none (a Profile, or a plain dict in tests)."""
    try:
        return profile[key]
    except (KeyError, TypeError):
        return None


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/azpar/prices.json`` (or ``~/.cache/azpar/prices.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "azpar" / "prices.json"


def region_of(profile: Any) -> str:
    """The profile's ``region``, else the Batch account URL's second label (``ACCOUNT.REGION.batch.azure.com``)."""
    region = (_field(profile, "region") or "").strip()
    if region:
        return region
    host = urllib.parse.urlparse(_field(profile, "batch_account_url") or "").hostname or ""
    labels = host.split(".")
    return labels[1] if host.endswith(".batch.azure.com") and len(labels) > 4 else ""


def is_windows(profile: Any) -> bool:
    """Windows images are billed with the Windows licence; the node agent SKU says which OS the pool runs."""
    return "windows" in (_field(profile, "node_agent_sku") or "").lower()


def _base_url(profile: Any) -> str | None:
    configured = os.environ.get(PRICES_URL_ENV)
    if configured:
        return configured
    host = urllib.parse.urlparse(_field(profile, "batch_account_url") or "").hostname or ""
    return RETAIL_PRICES_URL if host.endswith(".batch.azure.com") else None


def price_filter(vm_size: str, region: str) -> str:
    return (
        f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and armSkuName eq '{vm_size}' "
        "and priceType eq 'Consumption'"
    )


def fetch(base_url: str, vm_size: str, region: str, windows: bool, timeout: float = TIMEOUT) -> dict:
    """``{"dedicated": x | None, "spot": y | None, "currency": c}`` read from the retail API."""
    url: str | None = base_url + "?" + urllib.parse.urlencode({"$filter": price_filter(vm_size, region)})
    items: list[dict] = []
    for _ in range(MAX_PAGES):
        if not url:
            break
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - https or the test stub
            page = json.loads(answer.read().decode("utf-8"))
        items.extend(page.get("Items") or [])
        url = page.get("NextPageLink")
    return choose(items, vm_size, windows)


def choose(items: list[dict], vm_size: str, windows: bool) -> dict:
    """The hourly pay-as-you-go prices of ``vm_size`` for the image's OS: the plain meter is dedicated, the
    'Spot' meter spot ('Low Priority' when no Spot meter is listed)."""
    found: dict[str, float] = {}
    currency = "USD"
    for item in items:
        if (item.get("armSkuName") or "").lower() != vm_size.lower():
            continue
        if item.get("type", "Consumption") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
            continue
        if ("Windows" in (item.get("productName") or "")) != windows:
            continue
        names = f"{item.get('skuName') or ''} {item.get('meterName') or ''}"
        kind = "spot" if "Spot" in names else "low" if "Low Priority" in names else "dedicated"
        try:
            value = float(item["retailPrice"])
        except (KeyError, TypeError, ValueError):
            continue
        found.setdefault(kind, value)
        currency = item.get("currencyCode") or currency
    return {"dedicated": found.get("dedicated"), "spot": found.get("spot", found.get("low")), "currency": currency}


def _read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(data: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next run asks again


def _fresh(date: str, today: dt.date) -> bool:
    try:
        return (today - dt.date.fromisoformat(date)).days < CACHE_DAYS
    except ValueError:
        return False


def looked_up(profile: Any, today: dt.date | None = None) -> tuple[dict | None, str]:
    """(prices, date read) for the profile's size, region and OS: from this process, the disk cache while it is
    younger than CACHE_DAYS, else the API (a stale cache when the API does not answer); (None, "") when none."""
    vm_size, region = _field(profile, "vm_size") or "", region_of(profile)
    base = _base_url(profile)
    if not vm_size or not region or base is None:
        return None, ""
    today = today or dt.date.today()
    key = f"{base}|{region}|{vm_size.lower()}|{'windows' if is_windows(profile) else 'linux'}"
    with _lock:
        held = _memory.get(key)
        if held and _fresh(held[0], today):
            return held[1], held[0]
        cache = _read_cache()
        entry = cache.get(key)
        if entry and _fresh(entry.get("date", ""), today):
            _memory[key] = (entry["date"], entry["prices"])
            return entry["prices"], entry["date"]
        try:
            prices = fetch(base, vm_size, region, is_windows(profile))
        except (OSError, ValueError):
            if entry:
                return entry["prices"], entry["date"]
            return None, ""
        date = today.isoformat()
        cache[key] = {"date": date, "prices": prices}
        _write_cache(cache)
        _memory[key] = (date, prices)
        return prices, date


def node_prices(profile: Any, today: dt.date | None = None) -> Price:
    """The profile's ``price_per_node_hour`` / ``spot_price_per_node_hour`` (0: not set) override the retail
    price of that priority; without either, that priority's price is None ("price unknown")."""
    own_dedicated = float(_field(profile, "price_per_node_hour") or 0) or None
    own_spot = float(_field(profile, "spot_price_per_node_hour") or 0) or None
    if own_dedicated is not None and own_spot is not None:
        return Price(own_dedicated, own_spot, source="profile")
    prices, date = looked_up(profile, today)
    if prices is None:
        if own_dedicated is None and own_spot is None:
            return Price(None, None)
        return Price(own_dedicated, own_spot, source="profile")
    dedicated = own_dedicated if own_dedicated is not None else prices.get("dedicated")
    spot = own_spot if own_spot is not None else prices.get("spot")
    source = SOURCE if own_dedicated is None and own_spot is None else f"profile and {SOURCE}"
    return Price(dedicated, spot, currency=prices.get("currency") or "USD", source=source, date=date)


def forget() -> None:
    """Drop what this process remembers (tests; a profile switched to another size reads its own key anyway)."""
    with _lock:
        _memory.clear()


_SIZE_CORES = re.compile(r"^(?:Standard|Basic)_[A-Za-z]+(\d+)")


def vcpus_of(vm_size: str) -> int:
    """A VM size's vCPUs as its name gives them (Standard_D4s_v3: 4, Standard_NC6: 6); 1 when the name says none.
    A name is not a specification (constrained sizes run fewer cores), so core time built on it is an estimate."""
    found = _SIZE_CORES.match(vm_size or "")
    return max(1, int(found.group(1))) if found else 1


def burn_note(nodes: list[Any], price: Price | None, now: dt.datetime | None = None) -> str:
    """What a pool costs now, from its nodes as Batch lists them (``state``, ``is_dedicated``,
    ``state_transition_time``): the nodes billed by priority times their price, and since when every node has
    been idle (the latest of their moves to idle), in local time."""
    infos = [NodeInfo(n.id, state_name(n.state), None, bool(n.is_dedicated)) for n in nodes]
    dedicated, spot, rate = pool_burn(infos, price)
    if rate is None:
        text = f"{dedicated} dedicated + {spot} spot nodes billed now, price unknown"
    else:
        currency = price.currency if price else "USD"
        text = f"burning {money(rate, currency)}/h now ({dedicated} dedicated + {spot} spot nodes billed"
        text += f"; {price.describe()})" if price else ")"
    if infos and all(i.state == "idle" for i in infos):
        moved = [n.state_transition_time for n in nodes if n.state_transition_time is not None]
        if moved:
            since = max(moved)
            text += f"; every node idle since {since.astimezone().strftime('%H:%M')}"
            if now is not None:
                text += f" ({int((now - since).total_seconds() // 60)} min)"
    return text


NOTE_SECONDS = 5.0  # a pool's cost note serves this long: ``%azpar status`` redraws every second
_notes: dict[tuple[int, str], tuple[float, str]] = {}  # (client, pool) -> (monotonic time, note)


def pool_cost_note(client: Any, pool_id: str, price: Price | None) -> str:
    """``burn_note`` of the pool ``pool_id`` ("" when its nodes cannot be listed: the status says the rest),
    listed at most once every NOTE_SECONDS."""
    key = (id(client), pool_id)
    held = _notes.get(key)
    if held is not None and time.monotonic() - held[0] < NOTE_SECONDS:
        return held[1]
    try:
        nodes = list(client.list_nodes(pool_id, select=["id", "state", "isDedicated", "stateTransitionTime"]))
    except Exception:  # a status line must not fail on its cost
        return ""
    note = burn_note(nodes, price, dt.datetime.now(dt.timezone.utc))
    _notes[key] = (time.monotonic(), note)
    return note


def ahead_note(pool_id: str, vm_size: str, dedicated: int, spot: int, price: Price | None) -> str:
    """Said once before a run creates or grows a pool: what the pool costs per hour at that size."""
    size = f"{dedicated} dedicated + {spot} spot {vm_size} nodes"
    rate = price.per_hour(dedicated, spot) if price is not None else None
    if rate is None or price is None:
        return (
            f"pool {pool_id} is growing to {size}; what they cost is unknown (set price_per_node_hour and "
            "spot_price_per_node_hour in the profile)"
        )
    return (
        f"pool {pool_id} is growing to {size}: about {money(rate, price.currency)} per hour while they run "
        f"({price.describe()}; a list price, an estimate)"
    )

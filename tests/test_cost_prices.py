"""Node prices (backends/azure/prices.py): the retail prices API served by a local stub, the disk cache with
its date, the profile's override, and never the public API for a Batch account that is not Azure's."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from azpar_magic.backends.azure import prices

from .price_stub import price_stub, vm_item

SIZE, REGION = "Standard_D4s_v3", "westeurope"
ITEMS = [
    vm_item(SIZE, REGION, 0.192),
    vm_item(SIZE, REGION, 0.0384, spot=True),
    vm_item(SIZE, REGION, 0.0768, low=True),
    vm_item(SIZE, REGION, 0.376, windows=True),
    vm_item(SIZE, REGION, 0.075, windows=True, spot=True),
    vm_item(SIZE, "eastus", 0.5),
    vm_item(SIZE, REGION, 1000.0, unit="1 Year", kind="Reservation"),
    vm_item("Standard_D2s_v3", REGION, 0.096),
]
TODAY = dt.date(2026, 12, 2)


@pytest.fixture(autouse=True)
def _cache_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(prices.PRICES_URL_ENV, raising=False)
    prices.forget()
    yield
    prices.forget()


def _profile(**fields):
    return {
        "vm_size": SIZE,
        "batch_account_url": f"https://acct.{REGION}.batch.azure.com",
        "node_agent_sku": "batch.node.ubuntu 22.04",
        "region": "",
        "price_per_node_hour": 0.0,
        "spot_price_per_node_hour": 0.0,
        **fields,
    }


def test_linux_prices_of_the_size_and_region_come_from_the_api(monkeypatch):
    with price_stub(ITEMS, page_size=2) as stub:  # two items a page: NextPageLink is followed
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        price = prices.node_prices(_profile(), today=TODAY)
        assert (price.dedicated, price.spot) == (0.192, 0.0384)
        assert price.source == "Azure retail prices" and price.date == "2026-12-02"
        assert len(stub.requests) > 1
        sent = stub.requests[0]
        assert "armSkuName+eq+%27Standard_D4s_v3%27" in sent and "armRegionName+eq+%27westeurope%27" in sent
        assert "priceType+eq+%27Consumption%27" in sent and "serviceName+eq+%27Virtual+Machines%27" in sent


def test_windows_images_take_the_windows_meters(monkeypatch):
    with price_stub(ITEMS) as stub:
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        price = prices.node_prices(_profile(node_agent_sku="batch.node.windows amd64"), today=TODAY)
        assert (price.dedicated, price.spot) == (0.376, 0.075)


def test_low_priority_stands_in_when_no_spot_meter_is_listed():
    items = [vm_item(SIZE, REGION, 0.192), vm_item(SIZE, REGION, 0.0768, low=True)]
    assert prices.choose(items, SIZE, windows=False) == {"dedicated": 0.192, "spot": 0.0768, "currency": "USD"}


def test_the_disk_cache_answers_for_a_week_then_the_api_is_asked_again(monkeypatch):
    with price_stub(ITEMS) as stub:
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        prices.node_prices(_profile(), today=TODAY)
        asked = len(stub.requests)
        prices.forget()  # a new process: only the disk remembers
        again = prices.node_prices(_profile(), today=TODAY + dt.timedelta(days=6))
        assert len(stub.requests) == asked and again.date == "2026-12-02"
        saved = json.loads(prices.cache_path().read_text())
        assert [entry["date"] for entry in saved.values()] == ["2026-12-02"]
        prices.forget()
        stub.items = [vm_item(SIZE, REGION, 0.2), vm_item(SIZE, REGION, 0.04, spot=True)]
        later = prices.node_prices(_profile(), today=TODAY + dt.timedelta(days=8))
        assert len(stub.requests) > asked and (later.dedicated, later.date) == (0.2, "2026-12-10")
        prices.forget()
        stub.fail = True  # the API down and the cache stale: the stale figure, with its date, is shown
        stale = prices.node_prices(_profile(), today=TODAY + dt.timedelta(days=30))
        assert (stale.dedicated, stale.date) == (0.2, "2026-12-10")


def test_the_profile_overrides_the_list_price(monkeypatch):
    with price_stub(ITEMS) as stub:
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        both = prices.node_prices(_profile(price_per_node_hour=0.15, spot_price_per_node_hour=0.03), today=TODAY)
        assert (both.dedicated, both.spot, both.source) == (0.15, 0.03, "profile") and not stub.requests
        one = prices.node_prices(_profile(spot_price_per_node_hour=0.03), today=TODAY)
        assert (one.dedicated, one.spot) == (0.192, 0.03) and one.source == "profile and Azure retail prices"


def test_no_price_at_all_is_price_unknown(monkeypatch):
    with price_stub([]) as stub:
        monkeypatch.setenv(prices.PRICES_URL_ENV, stub.url)
        price = prices.node_prices(_profile(), today=TODAY)
        assert not price.known and price.describe() == "price unknown"


def test_a_batch_account_on_loopback_never_asks_the_public_api(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the public prices API was asked")

    monkeypatch.setattr(prices.urllib.request, "urlopen", refuse)
    found = prices.node_prices(_profile(batch_account_url="http://127.0.0.1:9999/acct", region="westeurope"))
    assert not found.known
    assert prices.region_of(_profile()) == "westeurope"
    assert prices.region_of(_profile(region="northeurope")) == "northeurope"

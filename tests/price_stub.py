"""A local stand-in for the Azure retail prices API, on loopback: ``GET /api/retail/prices?$filter=...``
answers ``{"BillingCurrency", "CustomerEntityId", "CustomerEntityType", "Items", "NextPageLink", "Count"}``
as the public API does, with the items whose fields match every ``name eq 'value'`` clause of the filter
(values compared case-sensitively, as the API does since its 2023-01-01-preview version; ``priceType``
is the item's ``type``), ``page_size`` items a page, the next page's URL in ``NextPageLink``."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .azure_support import serving

_CLAUSE = re.compile(r"(\w+)\s+eq\s+'([^']*)'")
_ALIASES = {"priceType": "type"}


def vm_item(sku: str, region: str, price: float, *, spot: bool = False, low: bool = False, windows: bool = False,
            unit: str = "1 Hour", kind: str = "Consumption") -> dict:
    """One Virtual Machines meter shaped as the API lists it."""
    short = sku.removeprefix("Standard_").replace("_", " ")
    suffix = " Spot" if spot else " Low Priority" if low else ""
    return {
        "currencyCode": "USD",
        "tierMinimumUnits": 0.0,
        "retailPrice": price,
        "unitPrice": price,
        "armRegionName": region,
        "location": region,
        "effectiveStartDate": "2024-01-01T00:00:00Z",
        "meterId": f"meter-{sku}-{region}-{suffix.strip() or 'std'}-{'win' if windows else 'lin'}",
        "meterName": short + suffix,
        "productId": "DZH318Z0BQ4P",
        "skuId": "DZH318Z0BQ4P/00TG",
        "productName": f"Virtual Machines {short.split()[0]} Series" + (" Windows" if windows else ""),
        "skuName": short + suffix,
        "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8",
        "serviceFamily": "Compute",
        "unitOfMeasure": unit,
        "type": kind,
        "isPrimaryMeterRegion": True,
        "armSkuName": sku,
    }


class PriceStub:
    """The stub's state: its items, how many were asked for, and its base URL once started."""

    def __init__(self, items: list[dict], page_size: int = 100):
        self.items, self.page_size = items, page_size
        self.requests: list[str] = []
        self.fail = False  # answer 503 (the API down)
        self.url = ""

    def answer(self, query: dict[str, list[str]]) -> dict:
        text = (query.get("$filter") or [""])[0]
        wanted = [(_ALIASES.get(name, name), value) for name, value in _CLAUSE.findall(text)]
        found = [item for item in self.items if all(item.get(name) == value for name, value in wanted)]
        skip = int((query.get("$skip") or ["0"])[0])
        page = found[skip : skip + self.page_size]
        following = None
        if skip + self.page_size < len(found):
            following = self.url + "?" + urllib.parse.urlencode({"$filter": text, "$skip": skip + self.page_size})
        return {
            "BillingCurrency": "USD",
            "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail",
            "Items": page,
            "NextPageLink": following,
            "Count": len(page),
        }


@contextmanager
def price_stub(items: list[dict], page_size: int = 100) -> Iterator[PriceStub]:
    stub = PriceStub(items, page_size)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            stub.requests.append(self.path)
            parsed = urllib.parse.urlparse(self.path)
            if parsed.path != "/api/retail/prices" or stub.fail:
                self.send_response(404 if not stub.fail else 503)
                self.end_headers()
                return
            body = json.dumps(stub.answer(urllib.parse.parse_qs(parsed.query))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/api/retail/prices"
    with serving(server):
        yield stub

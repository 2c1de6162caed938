"""List semantics: OData ``$filter`` (the subset Batch supports), ``$select``, ``maxresults``
and ``odata.nextLink`` paging with an opaque skip token.

Filters are evaluated on the rendered JSON of each item, with ``/`` for nested properties
(``executionInfo/result eq 'failure'``). Supported: eq ne gt ge lt le, and, or, not,
parentheses, startswith(prop,'x'), string/number/boolean literals and DateTime'...'.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from . import errors

_TOKEN = re.compile(r"\s*(?:(?P<dt>datetime'[^']*')|(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)"
                    r"|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<word>[A-Za-z_$][\w/.]*))", re.I)
_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}


def _lex(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected text at {pos}")
        pos = m.end()
        out.append((m.lastgroup, m.group(m.lastgroup)))
    out.append(("end", ""))
    return out


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.toks, self.i = _lex(text), 0
        self.used: list[tuple[str, str]] = []   # (property, operator) pairs, for check_filter

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str]:
        self.i += 1
        return self.toks[self.i - 1]

    def parse(self) -> Callable[[dict], bool]:
        f = self.or_()
        if self.peek()[0] != "end":
            raise ValueError(f"unexpected {self.peek()[1]!r}")
        return f

    def or_(self) -> Callable[[dict], bool]:
        left = self.and_()
        while self.peek() == ("word", "or"):
            self.take()
            a, b = left, self.and_()
            left = lambda d, a=a, b=b: a(d) or b(d)  # noqa: E731
        return left

    def and_(self) -> Callable[[dict], bool]:
        left = self.unary()
        while self.peek() == ("word", "and"):
            self.take()
            a, b = left, self.unary()
            left = lambda d, a=a, b=b: a(d) and b(d)  # noqa: E731
        return left

    def unary(self) -> Callable[[dict], bool]:
        if self.peek() == ("word", "not"):
            self.take()
            inner = self.unary()
            return lambda d: not inner(d)
        if self.peek()[0] == "lp":
            self.take()
            inner = self.or_()
            if self.take()[0] != "rp":
                raise ValueError("missing )")
            return inner
        kind, word = self.take()
        if kind != "word":
            raise ValueError(f"expected a property, found {word!r}")
        if word.lower() in ("startswith", "endswith", "substringof"):
            if self.take()[0] != "lp":
                raise ValueError("expected (")
            prop = self.take()[1]
            if self.take()[0] != "comma":
                raise ValueError("expected ,")
            lit = self.literal()
            if self.take()[0] != "rp":
                raise ValueError("expected )")
            fn = word.lower()
            self.used.append((prop, fn))
            if fn == "startswith":
                return lambda d: str(_get(d, prop) or "").lower().startswith(str(lit).lower())
            if fn == "endswith":
                return lambda d: str(_get(d, prop) or "").lower().endswith(str(lit).lower())
            return lambda d: str(lit).lower() in str(_get(d, prop) or "").lower()
        op = self.take()[1].lower()
        if op not in _OPS:
            raise ValueError(f"unknown operator {op!r}")
        lit = self.literal()
        self.used.append((word, op))
        return lambda d: _compare(_get(d, word), op, lit)

    def literal(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            return float(text)
        if kind == "dt":
            return _parse_time(text[9:-1])
        if kind == "word" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind == "word" and text.lower() == "null":
            return None
        raise ValueError(f"expected a literal, found {text!r}")


def _parse_time(text: str) -> dt.datetime:
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _get(d: dict, path: str) -> Any:
    cur: Any = d
    for part in path.split("/"):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _compare(value: Any, op: str, lit: Any) -> bool:
    if isinstance(lit, dt.datetime):
        if value is None:
            return op == "ne"
        value = _parse_time(value)
    elif isinstance(lit, float):
        if value is None:
            return op == "ne"
        value = float(value)
    elif isinstance(lit, str) and isinstance(value, str):
        value, lit = value.lower(), lit.lower()   # the service compares ids/states case-insensitively
    if op == "eq":
        return value == lit
    if op == "ne":
        return value != lit
    if value is None or lit is None:
        return False
    try:
        return {"gt": value > lit, "ge": value >= lit, "lt": value < lit, "le": value <= lit}[op]
    except TypeError:
        return False


def compile_filter(text: str | None) -> Callable[[dict], bool]:
    """A predicate on rendered items; the service's 400 InvalidQueryParameterValue if it does not parse."""
    if not text:
        return lambda d: True
    try:
        return _FilterParser(text).parse()
    except (ValueError, IndexError) as e:
        raise errors.invalid_query("$filter", text, str(e)) from None


def apply_select(item: dict, select: str | None) -> dict:
    if not select:
        return item
    keys = [k.strip() for k in select.split(",") if k.strip()]
    return {k: item[k] for k in keys if k in item}


def encode_token(offset: int, filt: str | None, select: str | None, maxresults: int) -> str:
    raw = json.dumps([offset, filt, select, maxresults]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[int, str | None, str | None, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        offset, filt, select, maxresults = json.loads(raw)
        return int(offset), filt, select, int(maxresults)
    except Exception:
        raise errors.invalid_query("$skiptoken", token) from None


def effective_filter(query: dict[str, str]) -> str | None:
    """The $filter a list request applies: its own, or the one its $skiptoken carries."""
    token = query.get("$skiptoken")
    return decode_token(token)[1] if token else query.get("$filter")


def page(items: Iterable[dict], query: dict[str, str], list_url: str, api_version: str,
         default_max: int = 1000) -> dict:
    """One page of a list response: filter, select, maxresults and a nextLink carrying the rest.

    The nextLink is an absolute URL with api-version and an opaque $skiptoken that encodes the
    offset and the original $filter/$select/maxresults (the SDK follows it without re-sending them).
    """
    token = query.get("$skiptoken")
    if token:
        offset, filt, select, maxresults = decode_token(token)
    else:
        offset, filt, select = 0, query.get("$filter"), query.get("$select")
        try:
            maxresults = int(query.get("maxresults") or default_max)
        except ValueError:
            raise errors.invalid_query("maxresults", query["maxresults"]) from None
        if not 1 <= maxresults <= 1000:
            raise errors.invalid_query("maxresults", str(maxresults), "must be between 1 and 1000")
    pred = compile_filter(filt)
    matched = [i for i in items if pred(i)]
    chunk = matched[offset:offset + maxresults]
    out: dict[str, Any] = {"value": [apply_select(i, select) for i in chunk]}
    if offset + maxresults < len(matched):
        nxt = encode_token(offset + maxresults, filt, select, maxresults)
        out["odata.nextLink"] = f"{list_url}?api-version={api_version}&$skiptoken={quote(nxt)}"
    return out


# ---- which properties each list operation may filter on --------------------------------------
_EQ, _ORDER = ("eq", "ne"), ("eq", "ne", "ge", "gt", "le", "lt")
_ID = ("startswith",) + _ORDER
_START_TASK = {"startTaskInfo/state": ("eq",), "startTaskInfo/result": _EQ, "startTaskInfo/exitCode": _ORDER,
               "startTaskInfo/startTime": _ORDER, "startTaskInfo/endTime": _ORDER}

#: Per list operation, the properties and operators a $filter may use. Source: the Batch REST
#: reference page "OData filters in Batch" (learn.microsoft.com/rest/api/batchservice/
#: odata-filters-in-batch; the same tables as docs-ref-conceptual/batchservice/
#: odata-filters-in-batch.md of the REST docs repository). Left open by it: List Tasks names
#: ``lastModifiedTime`` while a task's property is ``lastModified`` (both accepted), and ``not``
#: (only "and" and "or" are named; accepted). Operations missing here are not checked.
FILTERABLE: dict[str, dict[str, tuple[str, ...]]] = {
    "Pools_ListSupportedImages": {"osType": _EQ, "verificationType": _EQ, "nodeAgentSKUId": _EQ},
    "Nodes_ListNodes": {"state": _EQ, "stateTransitionTime": _ORDER, "lastBootTime": _ORDER,
                        "allocationTime": _ORDER, **_START_TASK},
    "Pools_ListPoolNodeCounts": {"poolId": ("eq",)},
    "Tasks_ListTaskFiles": {"name": ("startswith",)},
    "Nodes_ListNodeFiles": {"name": ("startswith",)},
    "Jobs_ListJobs": {"id": _ID, "state": _EQ, "stateTransitionTime": _ORDER, "creationTime": _ORDER,
                      "lastModified": _ORDER, "executionInfo/startTime": _ORDER, "executionInfo/endTime": _ORDER,
                      "executionInfo/poolId": _ID},
    "Pools_ListPools": {"id": _ID, "state": _EQ, "stateTransitionTime": _ORDER, "allocationState": ("eq",),
                        "allocationStateTransitionTime": _ORDER, "creationTime": _ORDER, "enableAutoScale": _EQ,
                        "lastModified": _ORDER, "vmSize": _EQ, "enableInterNodeCommunication": _EQ},
    "Jobs_ListJobPreparationAndReleaseTaskStatus": {
        "poolId": _EQ, "nodeId": _EQ,
        **{f"{who}TaskExecutionInfo/{k}": ops for who in ("jobPreparation", "jobRelease")
           for k, ops in (("state", _EQ), ("startTime", _ORDER), ("endTime", _ORDER), ("exitCode", _ORDER),
                          ("result", _EQ))}},
    "Tasks_ListTasks": {"id": _ID, "state": _EQ, "stateTransitionTime": _ORDER, "creationTime": _ORDER,
                        "lastModified": _ORDER, "lastModifiedTime": _ORDER, "executionInfo/startTime": _ORDER,
                        "executionInfo/endTime": _ORDER, "executionInfo/exitCode": _ORDER,
                        "executionInfo/result": _EQ},
}


def check_filter(operation: str, text: str | None) -> None:
    """Refuse a $filter on a property (or with an operator) that ``FILTERABLE`` does not list
    for ``operation``: 400 InvalidQueryParameterValue naming the property and what may be used.
    The documentation does not give Azure's answer to such a filter; this code is chosen (it is
    the service's code for an invalid query parameter)."""
    allowed = FILTERABLE.get(operation)
    if not text or allowed is None:
        return
    parser = _FilterParser(text)
    try:
        parser.parse()
    except (ValueError, IndexError) as e:
        raise errors.invalid_query("$filter", text, str(e)) from None
    lower = {k.lower(): (k, ops) for k, ops in allowed.items()}
    for prop, op in parser.used:
        name, ops = lower.get(prop.lower(), (prop, ()))
        if op not in ops:
            what = f"the property {prop!r}" if not ops else f"the operator {op!r} on {name!r}"
            may = ", ".join(f"{k} ({'/'.join(v)})" for k, v in allowed.items())
            raise errors.invalid_query("$filter", text, f"{what} cannot be used in a $filter of "
                                       f"{operation.split('_', 1)[1]}; it may filter on: {may}.")

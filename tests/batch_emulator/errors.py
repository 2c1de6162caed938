"""The Batch service's error shape, so the real SDK raises what it would raise against Azure.

The SDK (BatchExceptionPolicy) maps the HTTP status to an exception class and reads
``{"code", "message": {"lang", "value"}, "values": [{"key", "value"}]}`` from the body.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable

from .util import fmt_time, utcnow


class BatchServiceError(Exception):
    """An error answered to the client with the service's status, code and JSON body."""

    def __init__(self, status: int, code: str, message: str,
                 values: Iterable[tuple[str, str]] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = list(values)
        self.headers = headers or {}

    def body(self, request_id: str | None = None) -> dict:
        rid = request_id or str(uuid.uuid4())
        # The real service appends RequestId and Time lines to every message value.
        text = f"{self.message}\nRequestId:{rid}\nTime:{fmt_time(utcnow())}"
        out: dict = {"odata.metadata": "", "code": self.code, "message": {"lang": "en-US", "value": text}}
        if self.values:
            out["values"] = [{"key": k, "value": v} for k, v in self.values]
        return out

    def as_result_error(self) -> dict:
        """The error object used inside per-task add-collection results (no odata field)."""
        out = self.body()
        out.pop("odata.metadata", None)
        return out


def not_found(kind: str, ident: str) -> BatchServiceError:
    """404 with the service's per-resource code, e.g. PoolNotFound."""
    words = {"Pool": "pool", "Job": "job", "Task": "task", "Node": "node", "File": "file"}
    return BatchServiceError(404, f"{kind}NotFound", f"The specified {words.get(kind, kind.lower())} does not exist.")


def exists(kind: str) -> BatchServiceError:
    return BatchServiceError(409, f"{kind}Exists", f"The specified {kind.lower()} already exists.")


def invalid_value(prop: str, value: object, reason: str = "") -> BatchServiceError:
    vals = [("PropertyName", prop), ("PropertyValue", str(value))]
    if reason:
        vals.append(("Reason", reason))
    return BatchServiceError(400, "InvalidPropertyValue",
                             "The value provided for one of the properties in the request body is invalid.", vals)


def missing_property(prop: str) -> BatchServiceError:
    return BatchServiceError(400, "MissingRequiredProperty",
                             "A required property was not specified in the request body.", [("PropertyName", prop)])


def invalid_query(name: str, value: str, reason: str = "") -> BatchServiceError:
    vals = [("QueryParameterName", name), ("QueryParameterValue", value)]
    if reason:
        vals.append(("Reason", reason))
    return BatchServiceError(400, "InvalidQueryParameterValue",
                             "Value for one of the query parameters specified in the request URI is invalid.", vals)


def conflict(code: str, message: str) -> BatchServiceError:
    return BatchServiceError(409, code, message)

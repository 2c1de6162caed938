"""The Batch REST API's facts, used at run time for routing and request validation.

They come from ``batch_api.json`` beside this module: routes (method, path template,
operationId, body and query parameters) and the definitions request bodies can reach (property
names, types, formats, required lists, enums, limits), derived from the official OpenAPI
document by ``scripts/derive_batch_api.py``. Nothing outside the repository is read; the
official document itself is needed only to re-derive the file (and by the tests that replay
its wire examples, where it is present).
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import errors

API_FACTS = Path(__file__).resolve().with_name("batch_api.json")

_lock = threading.Lock()
_cached: Spec | None = None


def load_spec() -> Spec:
    """Load (once per process) the API facts the repository carries."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = Spec(json.loads(API_FACTS.read_text(encoding="utf-8")))
        return _cached


class Route:
    """One operation of the API: its path template as a regex, its body and query parameters."""

    def __init__(self, facts: dict) -> None:
        self.method: str = facts["method"]
        self.template: str = facts["path"]
        self.operation_id: str = facts["operationId"]
        body = facts.get("body")
        self.body_schema: dict | None = body["schema"] if body else None
        self.body_required: bool = bool(body and body["required"])
        self.query: dict[str, dict] = facts.get("query", {})
        self.param_names = re.findall(r"{(\w+)}", self.template)
        pattern = re.sub(r"{\w+}", "([^/]+)", self.template)
        self.regex = re.compile("^" + pattern + "/?$")
        self.literal_segments = sum(1 for s in self.template.split("/") if s and not s.startswith("{"))


class Spec:
    """Routes and schemas from the API facts, plus a validator for request bodies."""

    def __init__(self, facts: dict) -> None:
        self.definitions: dict = facts["definitions"]
        self.api_version: str = facts["api_version"]
        self.routes: list[Route] = [Route(r) for r in facts["routes"]]
        # Literal segments win over parameters (e.g. /pools/{id}/nodes before /pools/{id}/{x}).
        self.routes.sort(key=lambda r: (-r.template.count("/"), -r.literal_segments))
        self.by_operation = {r.operation_id: r for r in self.routes}
        self.ignored: list[str] = []   # unknown body properties seen (dropped, like the service)
        self._merged: dict[tuple[str, int], Any] = {}  # (what, id of a schema of this spec) -> merged

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route for a request path (percent-encoded as sent) and its decoded path params."""
        path_matched = False
        for route in self.routes:
            m = route.regex.match(raw_path)
            if not m:
                continue
            path_matched = True
            if route.method != method:
                continue
            return route, {n: unquote(v) for n, v in zip(route.param_names, m.groups())}
        if path_matched:
            raise errors.BatchServiceError(400, "UnsupportedHttpVerb",
                                           f"The resource doesn't support the specified HTTP verb {method}.")
        raise errors.BatchServiceError(404, "InvalidUri", "The requested URI does not represent any resource on the server.")

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.definitions[schema["$ref"].split("/")[-1]]
        return schema

    def body_schema(self, route: Route) -> tuple[dict | None, bool]:
        """The route's body schema (None when it takes no body) and whether a body is required."""
        return route.body_schema, route.body_required

    def query_params(self, route: Route) -> dict[str, dict]:
        """The route's query parameters by name: type, format, limits."""
        return route.query

    # ---- validation -------------------------------------------------------------------
    def validate(self, schema: dict, value: Any, path: str = "") -> Any:
        """Check a JSON value against a schema; return it with enum values in the spec's spelling.

        Raises BatchServiceError with the service's codes (MissingRequiredProperty,
        InvalidPropertyValue); unknown properties are dropped and noted in ``ignored``.
        """
        schema = self.resolve(schema)
        if "allOf" in schema:
            for sub in schema["allOf"]:
                value = self.validate(sub, value, path)
        typ = schema.get("type")
        if typ is None and "properties" in schema:
            typ = "object"
        if value is None:
            raise errors.invalid_value(path or "body", "null")
        if typ == "object":
            if not isinstance(value, dict):
                raise errors.invalid_value(path or "body", json.dumps(value)[:200], "expected an object")
            props = self._all_properties(schema)
            for req in self._all_required(schema):
                if req not in value:
                    raise errors.missing_property(f"{path}.{req}" if path else req)
            out = {}
            addl = schema.get("additionalProperties")
            for k, v in value.items():
                sub_path = f"{path}.{k}" if path else k
                if k in props:
                    out[k] = self.validate(props[k], v, sub_path)
                elif isinstance(addl, dict):
                    out[k] = self.validate(addl, v, sub_path)
                else:
                    # The official examples send properties this api-version no longer defines
                    # (e.g. targetNodeCommunicationMode); the service ignores them, so do we.
                    self.ignored.append(sub_path)
            return out
        if typ == "array":
            if not isinstance(value, list):
                raise errors.invalid_value(path, json.dumps(value)[:200], "expected an array")
            return [self.validate(schema.get("items", {}), v, f"{path}[{i}]") for i, v in enumerate(value)]
        if typ == "string":
            if not isinstance(value, str):
                raise errors.invalid_value(path, value, "expected a string")
            if "enum" in schema:
                for allowed in schema["enum"]:
                    if allowed.lower() == value.lower():
                        return allowed
                raise errors.invalid_value(path, value, "not one of " + ", ".join(schema["enum"]))
            fmt = schema.get("format")
            if fmt == "duration":
                from .util import parse_duration
                try:
                    parse_duration(value)
                except ValueError:
                    raise errors.invalid_value(path, value, "not an ISO 8601 duration") from None
            if fmt == "int64":
                if not re.fullmatch(r"-?\d+", value):
                    raise errors.invalid_value(path, value, "not an integer")
            return value
        if typ == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise errors.invalid_value(path, value, "expected an integer")
            if schema.get("format") == "int32" and not (-2**31 <= value < 2**31):
                raise errors.invalid_value(path, value, "out of range for int32")
            if "minimum" in schema and value < schema["minimum"]:
                raise errors.invalid_value(path, value, f"below the minimum {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                raise errors.invalid_value(path, value, f"above the maximum {schema['maximum']}")
            return value
        if typ == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise errors.invalid_value(path, value, "expected a number")
            return value
        if typ == "boolean":
            if not isinstance(value, bool):
                raise errors.invalid_value(path, value, "expected a boolean")
            return value
        return value

    # The spec's schemas never change once loaded: their merged properties and required names are
    # worked out once per schema (a 100-task collection asked for them thousands of times, and the
    # service's own validation was what a submission benchmark measured).
    def _all_properties(self, schema: dict) -> dict:
        known = self._merged.get(("properties", id(schema)))
        if known is None:
            known = dict(schema.get("properties", {}))
            for sub in schema.get("allOf", []):
                known.update(self._all_properties(self.resolve(sub)))
            self._merged[("properties", id(schema))] = known
        return known

    def _all_required(self, schema: dict) -> list:
        known = self._merged.get(("required", id(schema)))
        if known is None:
            known = list(schema.get("required", []))
            for sub in schema.get("allOf", []):
                known += self._all_required(self.resolve(sub))
            self._merged[("required", id(schema))] = known
        return known

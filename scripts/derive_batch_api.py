#!/usr/bin/env python3
"""Derive the test Batch service's API facts from the official Batch REST OpenAPI document.

The test Batch service (tests/batch_emulator) routes and validates requests with facts about
the API: each operation's method, path template and operationId, its body parameter and query
parameters, and, for every definition a request body can reach, the property names, types,
formats, required lists, enums, limits, items, allOf and additionalProperties. This script
keeps only those facts (no descriptions, examples, titles or x-ms-* annotations) and writes
them to tests/batch_emulator/batch_api.json, which the service loads at run time, so the test
suite needs nothing outside the repository.

Run it when moving to another api-version (developers only; the default location is the
reference folder some developers keep beside the repository):

    python scripts/derive_batch_api.py [path/to/BatchService.json] [--output FILE] [--check]

`--check` writes nothing and exits 1 when the committed file differs from what the document
gives. tests/emulator/test_batch_api.py runs the same comparison where the document is present.
Standard library only, so it runs with any Python 3.10+.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "tests" / "batch_emulator" / "batch_api.json"
SCRIPT = "scripts/derive_batch_api.py"
# Where some developers keep the official reference (never read by the tests' service).
DEFAULT_DOCUMENT = REPO_ROOT.parent / "shared" / "reference" / "azure-batch-rest-2025-06-01" / "BatchService.json"
# The schema keywords the service's validation reads; everything else is left behind.
SCHEMA_KEYS = ("$ref", "additionalProperties", "allOf", "enum", "format", "items", "maximum", "minimum",
               "properties", "required", "type")
QUERY_KEYS = ("format", "items", "maximum", "minimum", "type")


def default_document() -> Path:
    """The document's usual place: $AZPAR_BATCH_SPEC when set, else ../shared beside the repository."""
    env = os.environ.get("AZPAR_BATCH_SPEC")
    return Path(env) if env else DEFAULT_DOCUMENT


def _schema(schema: dict) -> dict:
    """A schema reduced to the keywords validation uses (recursively)."""
    out: dict[str, Any] = {}
    for key in SCHEMA_KEYS:
        if key not in schema:
            continue
        value = schema[key]
        if key == "properties":
            value = {name: _schema(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            value = _schema(value)
        elif key == "allOf":
            value = [_schema(sub) for sub in value]
        elif key in ("enum", "required"):
            value = list(value)   # order kept: it is the order of the service's error messages
        out[key] = value
    return out


def _refs(node: Any, found: set[str]) -> None:
    """Collect the definition names a reduced schema refers to."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value.split("/")[-1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _route(doc: dict, method: str, template: str, op: dict) -> dict:
    """One operation: method, path, operationId, body parameter, query parameters."""
    route: dict[str, Any] = {"method": method.upper(), "path": template, "operationId": op["operationId"]}
    query: dict[str, dict] = {}
    for param in op.get("parameters", []):
        if "$ref" in param:
            param = doc["parameters"][param["$ref"].split("/")[-1]]
        if param.get("in") == "body":
            route["body"] = {"schema": _schema(param["schema"]), "required": bool(param.get("required"))}
        elif param.get("in") == "query":
            query[param["name"]] = {k: (_schema(param[k]) if k == "items" else param[k])
                                    for k in QUERY_KEYS if k in param}
    route["query"] = query
    return route


def derive(text: str) -> dict:
    """The compact API facts from the official document's text (its JSON)."""
    doc = json.loads(text)
    routes = [_route(doc, method, template, op)
              for template, ops in doc["paths"].items()
              for method, op in ops.items() if method != "parameters"]
    # Every definition a request body can reach, and nothing else.
    wanted: set[str] = set()
    _refs([r.get("body") for r in routes], wanted)
    definitions: dict[str, dict] = {}
    while wanted:
        name = wanted.pop()
        definitions[name] = _schema(doc["definitions"][name])
        more: set[str] = set()
        _refs(definitions[name], more)
        wanted |= more - set(definitions)
    return {
        "_derived": {
            "by": SCRIPT,
            "from": "the Azure Batch REST OpenAPI document (BatchService.json) of api-version "
                    f"{doc['info']['version']}; only routes and validation facts, nothing else",
            "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        },
        "api_version": doc["info"]["version"],
        "definitions": definitions,
        "routes": routes,   # in the document's order (ties in route matching keep it)
    }


def render(facts: dict) -> str:
    """The file's text: sorted keys, one line per definition and per route (small, and a change
    of api-version shows in a diff as the lines of what changed)."""
    def one(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    lines = ["{"]
    for i, key in enumerate(sorted(facts)):
        value = facts[key]
        end = "," if i < len(facts) - 1 else ""
        if key == "definitions":
            body = [f"  {one(name)}:{one(value[name])}" for name in sorted(value)]
            lines += [f" {one(key)}:{{", ",\n".join(body), f" }}{end}"]
        elif key == "routes":
            lines += [f" {one(key)}:[", ",\n".join(f"  {one(r)}" for r in value), f" ]{end}"]
        else:
            lines.append(f" {one(key)}:{one(value)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("document", nargs="?", type=Path, default=None,
                        help=f"BatchService.json (default: $AZPAR_BATCH_SPEC or {DEFAULT_DOCUMENT})")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    parser.add_argument("--check", action="store_true", help="compare with the output file; write nothing")
    args = parser.parse_args(argv)
    document = args.document or default_document()
    if not document.is_file():
        parser.error(f"the official document is not at {document}; pass its path")
    text = render(derive(document.read_text(encoding="utf-8")))
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from ' + str(document)}")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text):,} characters) from {document}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

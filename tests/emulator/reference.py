"""The official Batch REST reference (OpenAPI document and wire examples), which some developers
keep beside the repository. It is optional: only the tests that replay its examples and the one
that checks tests/batch_emulator/batch_api.json against it read it, and they are skipped where it
is absent. The test Batch service itself never reads it (it loads batch_api.json)."""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "derive_batch_api.py"


@lru_cache(maxsize=1)
def derive_script() -> ModuleType:
    """scripts/derive_batch_api.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("derive_batch_api", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def document() -> Path:
    """BatchService.json where the derivation script looks for it by default."""
    return derive_script().default_document()


def examples_dir() -> Path:
    return document().parent / "examples"


def present() -> bool:
    return document().is_file()


def skip_reason() -> str:
    return (f"the official Batch REST reference is not at {document()} (optional; set AZPAR_BATCH_SPEC to "
            f"its BatchService.json to run the tests that need it)")


def requires_reference() -> pytest.MarkDecorator:
    """Skip, with the reason, where the reference folder is absent."""
    return pytest.mark.skipif(not present(), reason=skip_reason())


@lru_cache(maxsize=1)
def official() -> dict:
    """The official document, parsed (only where present())."""
    return json.loads(document().read_text(encoding="utf-8"))

"""Check a lab record against the one schema (``adamlab/lab/schema/results.schema.json``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adamlab.lab.results import SCHEMA_FILE


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN/Infinity tokens, as strict parsers do."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def assert_valid_record(doc: Any, command: str | None = None) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(doc)
    if command is not None:
        assert doc["command"] == command

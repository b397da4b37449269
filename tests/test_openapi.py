"""docs/openapi.json is the document the server serves — compared by meaning.

The first version compared bytes, and a fresh venv that resolved a newer msgspec
(0.23 strips the indentation of docstrings in schema descriptions) turned CI red
with nothing changed. Now prose is compared with its whitespace collapsed, and
everything else — routes, methods, fields, types, required lists, status codes —
exactly, so a real change to the API still fails.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from guardpool.server.openapi import document, render

ROOT = Path(__file__).resolve().parent.parent
PROSE_KEYS = frozenset({"description", "summary", "title"})


def meaning(node: Any, key: str = "") -> Any:
    """The document with prose normalised to single-spaced words."""
    if isinstance(node, dict):
        return {k: meaning(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [meaning(v) for v in node]
    if isinstance(node, str) and key in PROSE_KEYS:
        return " ".join(node.split())
    return node


def checked_in() -> Any:
    return json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))


def test_docs_openapi_json_means_what_the_server_serves() -> None:
    assert meaning(checked_in()) == meaning(json.loads(render())), (
        "docs/openapi.json is stale: python -m guardpool.server.openapi > docs/openapi.json"
    )


def test_reindented_prose_is_the_same_meaning() -> None:
    doc = document()
    reflowed = copy.deepcopy(doc)
    for schema in reflowed["components"]["schemas"].values():
        if "description" in schema:
            schema["description"] = "\n    " + schema["description"].replace(" ", "\n    ")
    assert meaning(reflowed) == meaning(doc)


def _drop_first_property(doc: dict[str, Any]) -> None:
    props = doc["components"]["schemas"]["CheckRequest"]["properties"]
    del props[next(iter(props))]


def _retype_a_field(doc: dict[str, Any]) -> None:
    props = doc["components"]["schemas"]["Usage"]["properties"]
    field = next(iter(props))
    props[field] = {"type": "string"}


def _drop_a_route(doc: dict[str, Any]) -> None:
    del doc["paths"]["/v1/release"]


def _rename_a_route(doc: dict[str, Any]) -> None:
    doc["paths"]["/v1/checks"] = doc["paths"].pop("/v1/check")


def _drop_a_status(doc: dict[str, Any]) -> None:
    del doc["paths"]["/v1/check"]["post"]["responses"]["413"]


@pytest.mark.parametrize(
    "change",
    [_drop_first_property, _retype_a_field, _drop_a_route, _rename_a_route, _drop_a_status],
)
def test_a_real_api_change_is_drift(change: Any) -> None:
    changed = copy.deepcopy(checked_in())
    change(changed)
    assert meaning(changed) != meaning(json.loads(render()))

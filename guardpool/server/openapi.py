"""The OpenAPI document, generated from the msgspec bodies (and kept in docs/openapi.json).

Regenerate the checked-in copy with ``python -m guardpool.server.openapi > docs/openapi.json``;
``tests/test_openapi.py`` fails when the two differ in meaning.
"""

from __future__ import annotations

from typing import Any

import msgspec

from guardpool import __version__
from guardpool.server.bodies import BODIES


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(summary: str, request: str | None, response: str, *, by_id: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "ok", **_ref(response)},
            "400": {"description": "malformed JSON or not UTF-8", **_ref("ErrorBody")},
            "401": {"description": "missing or wrong bearer token", **_ref("ErrorBody")},
            "403": {
                "description": "without a token: a web page's request (an Origin header)",
                **_ref("ErrorBody"),
            },
            "408": {"description": "headers or body not received in time", **_ref("ErrorBody")},
            "413": {"description": "body too large", **_ref("ErrorBody")},
            "421": {
                "description": "without a token: a Host that does not name the sidecar "
                "(DNS rebinding; --allow-host)",
                **_ref("ErrorBody"),
            },
            "422": {
                "description": "a value is out of its schema or bounds (`field` names it)",
                **_ref("ErrorBody"),
            },
            "500": {"description": "a bug in guardpool", **_ref("ErrorBody")},
        },
    }
    if by_id:
        op["responses"]["404"] = {
            "description": "no such decision was issued to this run",
            **_ref("ErrorBody"),
        }
        op["responses"]["409"] = {
            "description": "the decision denied the operation: nothing to settle",
            **_ref("ErrorBody"),
        }
    if request:
        op["requestBody"] = {"required": True, **_ref(request)}
    return op


def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        BODIES, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "guardpool", "version": __version__},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/check": {
                "post": _op("check an operation before it runs", "CheckRequest", "Decision")
            },
            "/v1/settle": {
                "post": _op(
                    "settle a decision with the actual usage (and output)",
                    "SettleRequest",
                    "Decision",
                    by_id=True,
                )
            },
            "/v1/release": {
                "post": _op(
                    "return an unused reservation", "ReleaseRequest", "ReleaseResponse", by_id=True
                )
            },
            "/v1/approve": {
                "post": _op(
                    "a human approves an ask decision: it now allows (same id)",
                    "AnswerRequest",
                    "Decision",
                )
            },
            "/v1/reject": {
                "post": _op(
                    "a human rejects an ask decision: a deny, the reservation released",
                    "AnswerRequest",
                    "Decision",
                )
            },
            "/v1/runs/{run_id}": {
                "get": {
                    **_op("limit usage and audit summary of a run", None, "RunReport"),
                    "parameters": [
                        {
                            "name": "run_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "principal",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                }
            },
            "/v1/hooks/claude-code": {
                "post": {
                    "summary": "a Claude Code PreToolUse/PostToolUse(Failure) HTTP hook; always "
                    "answers 200 (Claude Code ignores other statuses), failures as deny/block",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "the hook answer",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "liveness",
                    "security": [],
                    "responses": {"200": {"description": "ok", **_ref("Health")}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }


def render() -> bytes:
    return msgspec.json.format(msgspec.json.encode(document()), indent=2) + b"\n"


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(render())

"""Request and response bodies of the HTTP API: msgspec Structs mirroring the Python API."""

from __future__ import annotations

from typing import Any

import msgspec

from guardpool.audit.events import Summary
from guardpool.policy.model import Decision, LimitStatus, Usage


class CheckRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    labels: list[str]
    input: Any = ""
    estimate: Usage | None = None
    run_id: str | None = None
    principal: str = ""


class SettleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_id: str
    decision_id: str
    usage: Usage = msgspec.field(default_factory=Usage)
    output: Any = None
    labels: list[str] = msgspec.field(default_factory=list)
    principal: str = ""


class ReleaseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_id: str
    decision_id: str


class ReleaseResponse(msgspec.Struct, kw_only=True):
    released: bool


class RunReport(msgspec.Struct, kw_only=True):
    run_id: str
    principal: str
    limits: list[LimitStatus]
    audit: Summary


class ErrorBody(msgspec.Struct, kw_only=True):
    error: str
    detail: str = ""


class Health(msgspec.Struct, kw_only=True):
    status: str
    workers: int = 0


BODIES: tuple[type[Any], ...] = (
    CheckRequest,
    SettleRequest,
    ReleaseRequest,
    Decision,
    ReleaseResponse,
    RunReport,
    ErrorBody,
    Health,
)

"""Request and response bodies of the HTTP API: msgspec Structs mirroring the Python API."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from guardpool.audit.events import Summary
from guardpool.policy.bounds import MAX_ID_CHARS
from guardpool.policy.labels import MAX_LABEL_CHARS, MAX_LABELS
from guardpool.policy.model import Decision, LimitStatus, Usage

# Ids and principals: printable, bounded. \Z, not $ (which also matches
# before a final newline in Python's re, which msgspec uses).
Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]*\Z")]
# The grammar itself is checked label by label (its reasons are precise);
# the schema only bounds the sizes.
Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)]
Labels = Annotated[list[Label], msgspec.Meta(max_length=MAX_LABELS)]


class CheckRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    labels: Labels
    input: Any = ""
    estimate: Usage | None = None
    run_id: Id | None = None
    principal: Id = ""


class SettleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_id: Id
    decision_id: Id
    usage: Usage = msgspec.field(default_factory=Usage)
    output: Any = None
    labels: Labels = msgspec.field(default_factory=list)
    principal: Id = ""


class ReleaseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_id: Id
    decision_id: Id


class AnswerRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A human's answer to an ``ask`` decision (``/v1/approve``, ``/v1/reject``).

    ``by`` is recorded in the audit ledger: like the ids, at most 256 printable characters.
    """

    run_id: Id
    decision_id: Id
    by: Id


class ReleaseResponse(msgspec.Struct, kw_only=True):
    released: bool


class RunReport(msgspec.Struct, kw_only=True):
    run_id: str
    principal: str
    limits: list[LimitStatus]
    audit: Summary


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx answer. ``field`` is the JSON path of the bad value (``$.usage.tokens``)."""

    error: str
    detail: str = ""
    field: str = ""


class Health(msgspec.Struct, kw_only=True):
    status: str
    workers: int = 0


BODIES: tuple[type[Any], ...] = (
    CheckRequest,
    SettleRequest,
    ReleaseRequest,
    AnswerRequest,
    Decision,
    ReleaseResponse,
    RunReport,
    ErrorBody,
    Health,
)

"""What the ledger records: one ``AuditEvent`` per thing that happened.

Events are encoded as canonical JSON (sorted keys, defaults omitted) and the
hash chain covers those exact bytes, so adding a field with a default later
does not change the hash of any event already written.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

KINDS: Final[frozenset[str]] = frozenset(
    {
        "policy_load",
        "check",
        "verdict",
        "reserve",
        "settle",
        "release",
        "expire",
        "timeout",
        "crash",
        "warning",
        "limit_breach",
        "overrun",
        "decision",
        "approve",
        "reject",
    }
)

# The prev_hash of the first event: there is nothing before it.
GENESIS_HASH: Final[str] = "0" * 64

#: How deeply an event's JSON may nest: the event object is level 1, its
#: ``detail`` level 2, a list inside that level 3. Readers (``audit verify``,
#: ``show``, the sidecar's decision book) decode with msgspec, which goes as deep
#: as Python's recursion limit (1,000) less the reader's own stack: about 990
#: levels from a bare command line, fewer in a server thread. msgspec *encodes*
#: a few levels deeper than it decodes, so a writer without this bound wrote
#: events nobody could read back. Every writer refuses deeper events
#: (``records.encode_events``), leaving any reader ~700 frames of its own.
MAX_EVENT_DEPTH: Final[int] = 256


class AuditEvent(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One event as the enforcer reports it.

    ``usage`` maps a dimension (or ``pattern:dimension`` for reservations) to an
    integer amount; cost is in micro-units. ``input`` holds the input text only
    when the ledger captures inputs; otherwise the hash and length identify it.
    """

    kind: str
    run_id: str = ""
    principal: str = ""
    labels: tuple[str, ...] = ()
    decision_id: str = ""
    guard: str = ""
    outcome: str = ""
    reason: str = ""
    duration_ms: float | None = None
    usage: dict[str, int] | None = None
    input_sha256: str = ""
    input_len: int | None = None
    input: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class StoredEvent(msgspec.Struct, kw_only=True, frozen=True):
    """An event as written: its place in the chain and when it was appended.

    ``ts`` is wall-clock milliseconds since the epoch at append time (it can go
    backwards if the system clock does; ``seq`` is the order that counts).
    """

    seq: int
    ts: int
    event: AuditEvent
    prev_hash: str
    hash: str


class VerifyReport(msgspec.Struct, kw_only=True, frozen=True):
    """The result of walking the chain.

    ``head_seq``/``head_hash`` are the last event checked: pin them outside the
    database to detect a later rewrite of the chain's tail.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


class Summary(msgspec.Struct, kw_only=True):
    """Counts over a ledger (or one run).

    ``decisions_*`` count every ``decision`` event, those written at check and
    those written at settle (after-guards). ``usage`` is what was charged:
    actual usage at settle plus the estimate of reservations that expired.
    """

    events: int = 0
    runs: int = 0
    by_kind: dict[str, int] = msgspec.field(default_factory=dict)
    decisions_allowed: int = 0
    decisions_denied: int = 0
    decisions_warned: int = 0
    denials_by_reason: dict[str, int] = msgspec.field(default_factory=dict)
    guard_outcomes: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    timeouts: int = 0
    crashes: int = 0
    usage: dict[str, int] = msgspec.field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None

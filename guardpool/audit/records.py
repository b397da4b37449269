"""What every ledger (SQLite ``ledger.py``, PostgreSQL ``pg_ledger.py``) does with
an event's stored bytes, and the errors both raise.

    AuditEvent batch ─► encode_events ─► payloads (checked) ─► a ledger's INSERT
    stored payload ─► read_event ─► AuditEvent (or one-line LedgerError)

Kept apart from both ledgers so that the PostgreSQL one does not import the
SQLite one for its codec and its error types.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from guardpool.audit.chain import (
    TOO_DEEP,
    decode_event,
    encode_event,
    event_depth,
    printable_event,
)
from guardpool.audit.events import KINDS, MAX_EVENT_DEPTH, AuditEvent

__all__ = ["LedgerError", "LedgerWriteError", "encode_events", "read_event"]


class LedgerError(Exception):
    """The ledger could not be opened or read (missing file, not a ledger, corrupt row)."""


def read_event(payload: bytes, where: str) -> AuditEvent:
    """A stored payload decoded; what every ledger reader (SQLite, PostgreSQL) does.

    ``where`` names the row (``audit ledger X: event 7``). An event written by an
    older guardpool (or by hand) past ``MAX_EVENT_DEPTH``, or a corrupt one, is a
    one-line ``LedgerError``, not a traceback.
    """
    try:
        return decode_event(payload)
    except (msgspec.DecodeError, RecursionError) as exc:
        why = TOO_DEEP if isinstance(exc, RecursionError) else str(exc)
        raise LedgerError(f"{where} is unreadable ({why}); run `guardpool audit verify`") from None


class LedgerWriteError(LedgerError):
    """Events could not be recorded. The enforcer denies on it unless told otherwise."""


def encode_events(events: Sequence[AuditEvent]) -> list[bytes]:
    """A batch's payloads, checked: what every ledger writer (SQLite, PostgreSQL) appends.

    Raises ``ValueError`` for an unknown kind (a programming error) and
    ``LedgerWriteError`` for an event that cannot be encoded, or that nests more
    deeply than ``MAX_EVENT_DEPTH``: written, it could not be read back.
    """
    payloads = []
    for ev in events:  # one pass: checked, then encoded
        if ev.kind not in KINDS:
            raise ValueError(f"unknown audit event kind {ev.kind!r}")
        # An empty detail (most events) cannot nest: no depth walk.
        if ev.detail and event_depth(ev) > MAX_EVENT_DEPTH:
            raise LedgerWriteError(
                f"audit event {ev.kind!r} nests more than {MAX_EVENT_DEPTH} levels deep (in its "
                "detail): `guardpool audit verify` and `show` could not read it back; not written"
            )
        try:
            try:
                payloads.append(encode_event(ev))
            except UnicodeEncodeError:
                # A guard's reason quoting hostile text with a lone surrogate: record it
                # written out (a literal \udXXX), rather than fail the write and the check.
                payloads.append(encode_event(printable_event(ev)))
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
            raise LedgerWriteError(f"audit event cannot be encoded: {exc}") from exc
    return payloads

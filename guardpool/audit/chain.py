"""The hash chain and what it covers: canonical bytes, digests, the verify walk, summaries.

    event ─► canonical JSON (sorted keys, defaults omitted) = payload
    hash  = sha256(prev_hash || {"event": payload, "seq": seq, "ts": ts} as canonical JSON)

Pure functions over bytes and rows: ``ledger.py`` owns the file and the
transactions, this module owns the rules a chain must satisfy.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from guardpool.audit.events import (
    GENESIS_HASH,
    MAX_EVENT_DEPTH,
    AuditEvent,
    StoredEvent,
    Summary,
    VerifyReport,
)
from guardpool.policy import inputs

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(AuditEvent)

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# What a reader says of an event it cannot decode for its depth.
TOO_DEEP = f"nested too deeply (guardpool writes at most {MAX_EVENT_DEPTH} levels)"

# A row as stored: seq, ts, kind, run_id, payload, prev_hash, hash.
Row = tuple[Any, ...]


def encode_event(event: AuditEvent) -> bytes:
    """An event's canonical JSON: the payload the chain hashes."""
    return _encoder.encode(event)


def nesting_depth(value: object, limit: int) -> int:
    """How deeply ``value`` nests as JSON (a scalar 0, ``[]`` 1, ``[[1]]`` 2).

    Iterative, so a hostile depth costs no recursion; it stops counting past
    ``limit`` (a cycle, too, is just "deeper than the limit").
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        elif isinstance(item, msgspec.Struct):
            children = [getattr(item, f) for f in item.__struct_fields__]
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def event_depth(event: AuditEvent) -> int:
    """The nesting depth of ``event``'s JSON (only ``detail`` can nest deeper than 2)."""
    # Nearly every event's detail holds scalars only (depth 2): checked without
    # the walk, which would otherwise run for each event of every decision.
    # (A plain loop: the generator of all() cost more than the check itself.)
    detail = event.detail
    for value in detail.values():
        if type(value) not in _SCALARS:
            return 1 + nesting_depth(detail, MAX_EVENT_DEPTH)
    return 2


_SCALARS = frozenset({str, int, float, bool, type(None)})


def printable_event(event: AuditEvent) -> AuditEvent:
    """``event`` with each lone surrogate in its text written out as ``\\udXXX``.

    A ledger payload is UTF-8 text, which cannot hold a lone surrogate; a reason
    quoting hostile input may.
    """
    return msgspec.convert(_escape(msgspec.to_builtins(event)), AuditEvent)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {_escape(k): _escape(v) for k, v in value.items()}
    return value


def decode_event(payload: bytes | str) -> AuditEvent:
    event: AuditEvent = _decoder.decode(payload)
    return event


def canonical_bytes(seq: int, ts: int, payload: bytes) -> bytes:
    """The bytes the chain hashes for one event (``payload`` is its canonical JSON).

    Sorted-key JSON of ``{"event": payload, "seq": seq, "ts": ts}``. For plain
    ints that is a fixed frame around the payload, built here without an
    encoder call per event (the ledger hashes every event of every decision);
    ``test_audit_ledger`` checks the two ways agree byte for byte.
    """
    if type(seq) is int and type(ts) is int:
        return b'{"event":%b,"seq":%d,"ts":%d}' % (payload, seq, ts)
    return _encoder.encode({"event": msgspec.Raw(payload), "seq": seq, "ts": ts})


def chain_hash(prev_hash: str, seq: int, ts: int, payload: bytes) -> str:
    """``sha256(prev_hash || canonical_bytes(seq, ts, payload))`` as hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_bytes(seq, ts, payload)).hexdigest()


def linked_rows(
    prev_hash: str, seq: int, ts: int, events: Sequence[AuditEvent], payloads: Sequence[bytes]
) -> tuple[list[object], int, str]:
    """The insert parameters of ``events`` appended after ``(seq, prev_hash)``, flat
    (``seq, ts, kind, run_id, payload, prev_hash, hash`` per event, a ``Row``), and
    the new head's seq and hash.

    ``chain_hash`` for a batch, in the one loop that also lays out the rows: the
    ledger links every event of every decision. The payload is hashed as the text
    stored (``payload.decode()``, which the column holds anyway) encoded back to
    UTF-8: the same bytes, since a payload is msgspec's UTF-8 JSON;
    ``test_audit_ledger`` holds the two ways equal, non-ASCII text included.
    """
    params: list[object] = []
    prev = prev_hash
    sha256 = hashlib.sha256
    for ev, payload in zip(events, payloads, strict=True):
        seq += 1
        text = payload.decode()
        digest = sha256(f'{prev}{{"event":{text},"seq":{seq},"ts":{ts}}}'.encode()).hexdigest()
        params += (seq, ts, ev.kind, ev.run_id, text, prev, digest)
        prev = digest
    return params, seq, prev


def input_record(input: object, *, capture: bool) -> dict[str, Any]:
    """sha256 and length of an input's bytes, plus its text when ``capture``.

    The bytes are the input contract's (``policy/inputs.py``), the ones the
    guards saw: pass the enforcer's ``Measured`` and nothing is encoded again.
    An input outside the contract (denied before any guard) is identified by its
    ``repr``, so recording the denial never fails.
    """
    try:
        measured = inputs.measure(input)
    except inputs.InputError:
        measured = inputs.Measured(input, repr(input).encode("utf-8", "surrogatepass"))
    fields: dict[str, Any] = {"input_sha256": measured.digest, "input_len": measured.size}
    if capture:
        fields["input"] = measured.data.decode("utf-8", "backslashreplace")
    return fields


def walk(
    rows: Iterable[Row], expect_head: str | None = None, *, genesis: str = GENESIS_HASH
) -> VerifyReport:
    """Check every row in ``seq`` order; report the first that does not hold.

    ``genesis`` is the first ``prev_hash``: zeros for a SQLite ledger, one per
    chain for the PostgreSQL ledger (``pg_ledger.chain_genesis``).

    Detects an edited event, time or position, a deleted or inserted row, a
    broken ``prev_hash`` link and index columns that disagree with the event.
    ``expect_head`` is a hash pinned earlier: the report fails unless the chain
    still contains it (catches a rewrite or truncation behind it).
    """
    expected_seq = 1
    prev = genesis
    checked = 0
    pinned = expect_head is None

    def bad(seq: int | None, reason: str) -> VerifyReport:
        return VerifyReport(
            ok=False,
            checked=checked,
            first_bad_seq=seq,
            reason=reason,
            head_seq=expected_seq - 1,
            head_hash=prev,
        )

    for seq, ts, kind, run_id, payload, prev_hash, digest in rows:
        if seq != expected_seq:
            missing = f"event {expected_seq} is missing (next stored is {seq})"
            return bad(expected_seq, missing)
        if prev_hash != prev:
            return bad(seq, f"prev_hash does not match the hash of event {seq - 1}")
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        if not isinstance(ts, int) or chain_hash(prev, seq, ts, raw) != digest:
            return bad(seq, "hash mismatch: the event, its time or its position changed")
        try:
            event = decode_event(raw)
        except msgspec.DecodeError as exc:
            return bad(seq, f"event does not decode: {exc}")
        except RecursionError:
            return bad(seq, f"event does not decode: {TOO_DEEP}")
        if event.kind != kind or event.run_id != run_id:
            return bad(seq, "kind/run_id columns disagree with the hashed event")
        if digest == expect_head:
            pinned = True
        prev = digest
        expected_seq += 1
        checked += 1
    if not pinned:
        return bad(None, f"pinned head {expect_head} is not in the chain (rewritten or cut)")
    return VerifyReport(ok=True, checked=checked, head_seq=expected_seq - 1, head_hash=prev)


def summarize(stored_events: Iterable[StoredEvent]) -> Summary:
    """Counts over stored events (the whole ledger, or one run's)."""
    s = Summary()
    by_kind: Counter[str] = Counter()
    denials: Counter[str] = Counter()
    usage: Counter[str] = Counter()
    runs: set[str] = set()
    for stored in stored_events:
        ev = stored.event
        s.events += 1
        s.first_ts = stored.ts if s.first_ts is None else min(s.first_ts, stored.ts)
        s.last_ts = stored.ts if s.last_ts is None else max(s.last_ts, stored.ts)
        by_kind[ev.kind] += 1
        if ev.run_id:
            runs.add(ev.run_id)
        if ev.kind == "decision":
            if ev.outcome == "deny":
                s.decisions_denied += 1
                denials[ev.reason] += 1
            else:
                # warn lets the operation run: it counts as allowed too.
                s.decisions_allowed += 1
                if ev.outcome == "warn":
                    s.decisions_warned += 1
        elif ev.guard and ev.kind in ("verdict", "timeout", "crash"):
            outcomes = s.guard_outcomes.setdefault(ev.guard, {})
            outcomes[ev.outcome] = outcomes.get(ev.outcome, 0) + 1
        if ev.kind in ("settle", "expire") and ev.usage:
            usage.update(ev.usage)
    s.by_kind = dict(sorted(by_kind.items()))
    s.denials_by_reason = dict(denials.most_common())
    s.usage = dict(sorted(usage.items()))
    s.timeouts = by_kind["timeout"]
    s.crashes = by_kind["crash"]
    s.runs = len(runs)
    return s

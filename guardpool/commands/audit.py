"""``guardpool audit``: show a run's events, summarise a ledger, verify its chain.

``--db FILE`` reads a host's SQLite ledger; ``--url`` a fleet's PostgreSQL
ledger (``audit_fleet.py``: every chain, every host).

Exit codes: 0 ok, 1 the chain is broken (``verify``), 2 bad input (missing
file, not a ledger, unknown run).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from guardpool.audit.events import StoredEvent, Summary
from guardpool.audit.ledger import Ledger, LedgerError
from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError
from guardpool.commands.text import printable
from guardpool.extras import missing_extra
from guardpool.policy.money import format_micros

if TYPE_CHECKING:
    from guardpool.audit.pg_ledger import PgLedger

# Long reasons would push every later column off screen; --json has them whole.
_REASON_WIDTH = 60
# The largest LIMIT SQLite takes (a signed 64-bit integer).
_MAX_LIMIT = 2**63 - 1
_SHOW_HEADER = ("SEQ", "TIME", "KIND", "GUARD", "OUTCOME", "REASON", "LABELS", "USAGE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default="guardpool.db", help="ledger file (default: guardpool.db)")
        p.add_argument(
            "--url",
            default=None,
            help="a PostgreSQL ledger instead (postgresql://user@host/db; the password "
            "comes from PGPASSWORD or ~/.pgpass)",
        )
        p.add_argument(
            "--schema", default="guardpool", help="its schema with --url (default: guardpool)"
        )

    show = sub.add_parser("show", help="the events of one run, in order")
    show.add_argument("run_id", metavar="RUN_ID")
    with_db(show)
    show.add_argument("--json", action="store_true", help="machine output (all fields)")
    show.add_argument("--limit", type=int, default=None, help="at most N events")

    summary = sub.add_parser("summary", help="counts by kind, decisions, denials, guards, usage")
    with_db(summary)
    summary.add_argument("--run", metavar="RUN_ID", default=None, help="only this run")
    summary.add_argument("--json", action="store_true", help="machine output")

    verify = sub.add_parser("verify", help="check the hash chain; exit 1 if it is broken")
    with_db(verify)
    verify.add_argument(
        "--expect-head",
        metavar="HASH",
        action="append",
        default=None,
        help="a head hash pinned earlier: fail unless the chain still contains it "
        "(with --url: CHAIN=HASH, repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="machine output")


def main(args: argparse.Namespace) -> int:
    if args.url is not None:
        return _fleet(args)
    heads = args.expect_head if args.action == "verify" else None
    if heads is not None and len(heads) > 1:
        raise UsageError("--expect-head: one head for a SQLite ledger (it has one chain)")
    if heads is not None:
        heads = [check_head(heads[0])]
    db = Path(args.db)
    if db.exists() and not db.is_file():
        # The ledger says "no such file" for anything but a file: say what it is.
        kind = "a directory" if db.is_dir() else "not a regular file"
        raise UsageError(f"--db {args.db}: {kind}, not a ledger file")
    try:
        with Ledger(args.db, create=False) as ledger:
            if args.action == "show":
                return _show(ledger, args.run_id, args.json, args.limit)
            if args.action == "summary":
                return _summary(ledger, args.run, args.json)
            return _verify(ledger, heads[0] if heads else None, args.json)
    except LedgerError as exc:
        raise UsageError(str(exc)) from exc


def check_head(value: str, flag: str = "--expect-head") -> str:
    """A pinned head hash: 64 hex digits (any case), as lowercase.

    Anything else is a typo, not a tampered ledger: exit 2 here, where a
    verify against it would report the chain BROKEN and exit 1.
    """
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(
            f"{flag} {printable(value[:80])!r} is not a head hash (64 hex digits, "
            "as printed by an earlier verify)"
        )
    return digest


def check_limit(limit: int | None) -> None:
    if limit is not None and not 1 <= limit <= _MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {_MAX_LIMIT}, not {limit}")


def _fleet(args: argparse.Namespace) -> int:
    try:
        from guardpool.commands import audit_fleet
    except ModuleNotFoundError as exc:
        found = missing_extra(exc)
        if found is None:
            raise
        raise UsageError(f"--url needs {found.install_line}") from None
    from guardpool.audit.pg_ledger import PgLedger

    heads = audit_fleet.parse_heads(args.expect_head) if args.action == "verify" else {}
    try:
        with PgLedger(args.url, schema=args.schema, create=False) as ledger:
            if args.action == "verify":
                return audit_fleet.verify(ledger, heads, args.json)
            if args.action == "summary":
                return _summary(ledger, args.run, args.json)
            events = audit_fleet.show(ledger, args.run_id, args.limit)
            if args.json:
                print(msgspec.json.encode(events).decode())
                return EXIT_OK
            header = ("CHAIN", *_SHOW_HEADER)
            print(_table([header, *((e.chain, *_show_row(e.stored)) for e in events)]))
            return EXIT_OK
    except LedgerError as exc:
        raise UsageError(str(exc)) from exc


def _show(ledger: Ledger, run_id: str, as_json: bool, limit: int | None) -> int:
    check_limit(limit)
    events = ledger.events(run_id=run_id, limit=limit)
    if not events:
        raise UsageError(f"no events for run {run_id!r} in {ledger.path}")
    if as_json:
        print(msgspec.json.encode(events).decode())
        return EXIT_OK
    rows = [_SHOW_HEADER, *(_show_row(s) for s in events)]
    print(_table(rows))
    return EXIT_OK


def _show_row(stored: StoredEvent) -> tuple[str, ...]:
    ev = stored.event
    reason = ev.reason.replace("\n", " ")
    if len(reason) > _REASON_WIDTH:
        reason = reason[: _REASON_WIDTH - 1] + "…"
    return (
        str(stored.seq),
        _time(stored.ts),
        ev.kind,
        ev.guard,
        ev.outcome,
        reason,
        ",".join(ev.labels),
        _usage(ev.usage or {}),
    )


def _summary(ledger: Ledger | PgLedger, run_id: str | None, as_json: bool) -> int:
    s = ledger.summary(run_id)
    if run_id is not None and s.events == 0:
        raise UsageError(f"no events for run {run_id!r} in {ledger.path}")
    if as_json:
        print(msgspec.json.encode(s).decode())
        return EXIT_OK
    print(_summary_text(s, ledger, run_id))
    return EXIT_OK


def _summary_text(s: Summary, ledger: Ledger | PgLedger, run_id: str | None) -> str:
    title = f"ledger {ledger.path}" + (f", run {run_id}" if run_id is not None else "")
    rows: list[tuple[str, ...]] = [("events", f"{s.events} in {s.runs} run(s)")]
    if s.first_ts is not None and s.last_ts is not None:
        rows.append(("time", f"{_time(s.first_ts)} .. {_time(s.last_ts)}"))
    rows.append(("by kind", ", ".join(f"{k} {n}" for k, n in s.by_kind.items()) or "-"))
    rows.append(
        (
            "decisions",
            f"{s.decisions_allowed} allowed ({s.decisions_warned} with warnings), "
            f"{s.decisions_denied} denied",
        )
    )
    for i, (reason, n) in enumerate(s.denials_by_reason.items()):
        rows.append(("denials" if i == 0 else "", f"{n:>5}  {reason or '(no reason)'}"))
    for i, (guard, outcomes) in enumerate(sorted(s.guard_outcomes.items())):
        counts = ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items()))
        rows.append(("guards" if i == 0 else "", f"{guard}: {counts}"))
    rows.append(("timeouts", str(s.timeouts)))
    rows.append(("crashes", str(s.crashes)))
    rows.append(("usage", _usage(s.usage) or "-"))
    return printable(title) + "\n" + _table(rows)


def _verify(ledger: Ledger, expect_head: str | None, as_json: bool) -> int:
    report = ledger.verify(expect_head=expect_head)
    if as_json:
        print(msgspec.json.encode(report).decode())
    elif report.ok:
        print(f"ok: {report.checked} events, chain intact")
        print(f"head: seq {report.head_seq} sha256 {report.head_hash}")
    else:
        where = f"event {report.first_bad_seq}" if report.first_bad_seq is not None else "head"
        print(f"BROKEN at {where}: {report.reason}")
        print(
            f"{report.checked} events verified before it; last good head: "
            f"seq {report.head_seq} sha256 {report.head_hash}"
        )
    return EXIT_OK if report.ok else EXIT_DENIED


def _time(ts_ms: int) -> str:
    """Local wall-clock time to the millisecond."""
    t = dt.datetime.fromtimestamp(ts_ms / 1000).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _usage(usage: Mapping[str, int]) -> str:
    # Cost (also as a pattern:cost reservation key) is in micro-units: show money.
    parts = []
    for key, amount in usage.items():
        value = format_micros(amount) if key.rsplit(":", 1)[-1] == "cost" else str(amount)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns separated by two spaces, trailing blanks trimmed.

    Every cell is escaped (``printable``): reasons and names come from outside.
    """
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )

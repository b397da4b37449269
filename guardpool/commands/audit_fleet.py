"""``guardpool audit ... --url``: the PostgreSQL ledger of a fleet, one chain per host.

``verify`` walks every chain and names the chain and event where one breaks
(exit 1); ``--expect-head CHAIN=HASH`` (repeatable) pins heads kept outside the
database. ``show RUN_ID`` lists a run's events from every host in time order,
with the chain each came from.
"""

from __future__ import annotations

from guardpool.audit.pg_ledger import ChainEvent, FleetReport, PgLedger
from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError
from guardpool.commands.audit import check_head, check_limit
from guardpool.commands.text import printable


def parse_heads(values: list[str] | None) -> dict[str, str]:
    heads: dict[str, str] = {}
    for value in values or []:
        chain, sep, digest = value.partition("=")
        if not sep or not chain:
            raise UsageError(
                f"--expect-head {value!r}: with --url, give CHAIN=HASH (the chain's name and "
                "its 64-hex head from an earlier verify)"
            )
        heads[chain] = check_head(digest, f"--expect-head {chain}=")
    return heads


def verify(ledger: PgLedger, heads: dict[str, str], as_json: bool) -> int:
    report = ledger.verify(expect_heads=heads)
    if as_json:
        import msgspec

        print(msgspec.json.encode(report).decode())
    else:
        print(verify_text(report))
    return EXIT_OK if report.ok else EXIT_DENIED


def verify_text(report: FleetReport) -> str:
    total = sum(c.report.checked for c in report.chains)
    lines = []
    if report.ok:
        lines.append(f"ok: {len(report.chains)} chains, {total} events, every chain intact")
    else:
        broken = sum(1 for c in report.chains if not c.report.ok)
        lines.append(f"BROKEN: {broken} of {len(report.chains)} chains")
    width = max((len(c.chain) for c in report.chains), default=0)
    for c in report.chains:
        r = c.report
        if r.ok:
            head = f"head seq {r.head_seq} sha256 {r.head_hash}"
            lines.append(f"  {c.chain:{width}}  {r.checked} events  {head}")
        else:
            where = f"event {r.first_bad_seq}" if r.first_bad_seq is not None else "head"
            lines.append(f"BROKEN chain {c.chain} at {where}: {r.reason}")
            lines.append(
                f"  {r.checked} events verified before it; last good head: "
                f"seq {r.head_seq} sha256 {r.head_hash}"
            )
    return "\n".join(printable(line) for line in lines)  # chain names come from the database


def show(ledger: PgLedger, run_id: str, limit: int | None) -> list[ChainEvent]:
    check_limit(limit)
    events = ledger.events(run_id=run_id, limit=limit)
    if not events:
        raise UsageError(f"no events for run {run_id!r} in {ledger.path}")
    return events

"""The audit ledger in PostgreSQL: one store for a fleet, one hash chain per writer.

Many hosts append to one ``audit_events`` table. Each writer appends to its own
chain (``chain`` = the host name by default, or one chain per run), so appends
from different hosts never wait for each other: a batch takes a transaction
advisory lock on its chain only, reads that chain's head, inserts its rows and
commits. The hash rule is the SQLite ledger's (``ledger.chain_hash``); a chain's
first ``prev_hash`` is ``sha256("guardpool-audit/chain\\0" + chain)``, so a
chain renamed or events moved between chains do not verify.

Append-only is enforced by the database: triggers refuse UPDATE, DELETE and
TRUNCATE for everyone, and ``grant_writer`` gives a writing role SELECT and
INSERT only. The owner of the table (and a superuser) can still disable the
triggers and rewrite rows; ``verify`` finds any edit that does not recompute
the hashes after it, and a head pinned outside the database
(``--expect-head CHAIN=HASH``) finds even a consistent rewrite or a cut tail.

Data flow: ``append`` (enforcer) → one transaction per batch; ``events``,
``verify`` (CLI) → one REPEATABLE READ snapshot streamed by a server-side cursor.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, Literal, TypeVar

import msgspec
from psycopg import sql

from guardpool.audit.chain import chain_hash, input_record, summarize, walk
from guardpool.audit.events import AuditEvent, StoredEvent, Summary, VerifyReport
from guardpool.audit.records import LedgerError, LedgerWriteError, encode_events, read_event
from guardpool.pg.migrate import SchemaError, current_version, migrate, migrations
from guardpool.pg.pool import DeadlineConnection, Pg, PgUnavailable

_COLUMNS = "chain, seq, ts, kind, run_id, payload, prev_hash, hash"

ChainMode = Literal["host", "run"]
T = TypeVar("T")
# A ledger walk reads every row: bounded, but not by the per-append timeout.
READ_TIMEOUT_S = 3600.0


def chain_genesis(chain: str) -> str:
    """The ``prev_hash`` of a chain's first event: binds the chain's name into every hash."""
    return hashlib.sha256(b"guardpool-audit/chain\0" + chain.encode()).hexdigest()


class ChainEvent(msgspec.Struct, kw_only=True, frozen=True):
    """A stored event and the chain it belongs to."""

    chain: str
    stored: StoredEvent


class ChainReport(msgspec.Struct, kw_only=True, frozen=True):
    chain: str
    report: VerifyReport


class FleetReport(msgspec.Struct, kw_only=True, frozen=True):
    """Every chain's walk; ``ok`` only when all hold and every pinned chain exists."""

    ok: bool
    chains: tuple[ChainReport, ...]


class PgLedger:
    """The ledger protocol the enforcer writes to, plus the fleet-wide reads of the CLI.

    ``create=True`` (a writer) creates or migrates the tables when the role may;
    ``create=False`` (the CLI) only checks that a current ledger is there.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "guardpool",
        chain: ChainMode | str = "host",
        capture_input: bool = False,
        create: bool = True,
        op_timeout_ms: int = 2000,
        connect_timeout_ms: int = 2000,
    ) -> None:
        self.capture_input = capture_input
        self.chain_mode = chain
        self.host_chain = socket.gethostname() if chain == "host" else chain
        try:
            self._pg = Pg(
                url,
                schema,
                op_timeout_ms=op_timeout_ms,
                connect_timeout_ms=connect_timeout_ms,
                max_size=4,
            )
        except ValueError as exc:
            raise LedgerError(f"audit ledger: {exc}") from None
        self.schema = schema
        self.path = f"postgres schema {schema}"  # what messages call this ledger
        error = LedgerWriteError if create else LedgerError
        try:
            self._pg.call(self._prepare if create else self._expect_current, idempotent=True)
        except (PgUnavailable, SchemaError) as exc:
            self._pg.close()
            raise error(f"audit ledger ({self.path}): {exc}") from None
        self._closed = False

    def _prepare(self, conn: DeadlineConnection) -> None:
        migrate(conn, self.schema, "audit", "guardpool.audit")

    def _expect_current(self, conn: DeadlineConnection) -> None:
        found = current_version(conn, self.schema, "audit")
        if not found:
            raise SchemaError("no guardpool audit ledger here")
        if found != len(migrations("guardpool.audit")):
            raise SchemaError(f"audit ledger version {found} is not this guardpool's")

    # -- writing -------------------------------------------------------------------

    def input_fields(self, input: object) -> dict[str, Any]:
        return input_record(input, capture=self.capture_input)

    def chain_for(self, event: AuditEvent) -> str:
        if self.chain_mode == "run":
            return event.run_id or socket.gethostname()
        return self.host_chain

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append a batch, each event to its chain, in one transaction, or nothing."""
        if not events:
            return
        payloads = encode_events(events)
        if self._closed:
            raise LedgerWriteError("audit ledger is closed")
        by_chain: dict[str, list[tuple[AuditEvent, bytes]]] = {}
        for ev, payload in zip(events, payloads, strict=True):
            by_chain.setdefault(self.chain_for(ev), []).append((ev, payload))

        def step(conn: DeadlineConnection) -> None:
            rows: list[tuple[Any, ...]] = []
            for chain in sorted(by_chain):  # one lock order: batches never deadlock
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('guardpool-audit'), hashtext(%s))",
                    (chain,),
                )
                ts, seq, prev = conn.execute(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, "
                    "(SELECT seq FROM audit_events WHERE chain = %(c)s ORDER BY seq DESC LIMIT 1),"
                    "(SELECT hash FROM audit_events WHERE chain = %(c)s ORDER BY seq DESC LIMIT 1)",
                    {"c": chain},
                ).fetchone() or (0, None, None)
                seq = int(seq or 0)
                prev = prev or chain_genesis(chain)
                for ev, payload in by_chain[chain]:
                    seq += 1
                    digest = chain_hash(prev, seq, int(ts), payload)
                    rows.append(
                        (chain, seq, ts, ev.kind, ev.run_id, payload.decode(), prev, digest)
                    )
                    prev = digest
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO audit_events ({_COLUMNS}) VALUES ({', '.join(['%s'] * 8)})",
                    rows,
                )

        try:
            # Not idempotent: a COMMIT whose answer was lost may have landed.
            self._pg.call(step, idempotent=False)
        except PgUnavailable as exc:
            raise LedgerWriteError(f"audit ledger ({self.path}): {exc}") from None

    # -- reading -------------------------------------------------------------------

    def _read(
        self,
        query: sql.SQL | sql.Composed,
        params: Mapping[str, Any],
        consume: Callable[[Iterator[tuple[Any, ...]]], T],
    ) -> T:
        """``consume`` the rows of one query, streamed by a server-side cursor from one
        snapshot (a walk over a big ledger never holds it all in memory)."""

        def step(conn: DeadlineConnection) -> T:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with conn.cursor(name="guardpool_audit_read") as cur:
                cur.itersize = 2000
                cur.execute(query, params)
                return consume(iter(cur))

        try:
            return self._pg.call(step, idempotent=True, timeout=READ_TIMEOUT_S)
        except PgUnavailable as exc:
            raise LedgerError(f"audit ledger ({self.path}): {exc}") from None

    def events(self, run_id: str | None = None, limit: int | None = None) -> list[ChainEvent]:
        """Events of every chain (or of one run, across hosts) in time order."""
        where = sql.SQL("WHERE run_id = %(run)s") if run_id is not None else sql.SQL("")
        query = sql.SQL("SELECT {} FROM audit_events {} ORDER BY ts, chain, seq {}").format(
            sql.SQL(_COLUMNS), where, sql.SQL("LIMIT %(limit)s" if limit is not None else "")
        )
        return self._read(query, {"run": run_id, "limit": limit}, _decoded)

    def chains(self) -> list[str]:
        return self._read(
            sql.SQL("SELECT DISTINCT chain FROM audit_events ORDER BY chain"),
            {},
            lambda rows: [r[0] for r in rows],
        )

    def summary(self, run_id: str | None = None) -> Summary:
        """Counts over every chain, or over one run across hosts."""
        return summarize(e.stored for e in self.events(run_id=run_id))

    def verify(self, expect_heads: Mapping[str, str] | None = None) -> FleetReport:
        """Walk every chain; a pinned chain must still exist and hold its pinned head."""
        pins = dict(expect_heads or {})

        def consume(rows: Iterator[tuple[Any, ...]]) -> list[ChainReport]:
            reports = []
            for chain, group in itertools.groupby(rows, key=lambda r: str(r[0])):
                # groupby skips whatever a walk that stopped early left of its chain.
                tail = (r[1:] for r in group)
                report = walk(tail, pins.pop(chain, None), genesis=chain_genesis(chain))
                reports.append(ChainReport(chain=chain, report=report))
            return reports

        query = sql.SQL("SELECT {} FROM audit_events ORDER BY chain, seq").format(sql.SQL(_COLUMNS))
        reports = self._read(query, {}, consume)
        for chain, head in sorted(pins.items()):
            missing = VerifyReport(
                ok=False,
                checked=0,
                reason=f"pinned head {head} but the chain is gone (deleted or renamed)",
                head_hash=chain_genesis(chain),
            )
            reports.append(ChainReport(chain=chain, report=missing))
        return FleetReport(ok=all(r.report.ok for r in reports), chains=tuple(reports))

    def grant_writer(self, role: str) -> None:
        """Let ``role`` read and append events and nothing else (run as the owner)."""
        text = resources.files("guardpool.audit").joinpath("sql", "grant_writer.sql")
        statements = [
            s.strip()
            for s in "\n".join(
                ln for ln in text.read_text("utf-8").splitlines() if not ln.startswith("--")
            ).split(";")
            if s.strip()
        ]

        def step(conn: DeadlineConnection) -> None:
            for s in statements:
                conn.execute(
                    sql.SQL(s).format(schema=sql.Identifier(self.schema), role=sql.Identifier(role))
                )

        try:
            self._pg.call(step, idempotent=True)
        except PgUnavailable as exc:
            raise LedgerError(f"audit ledger ({self.path}): {exc}") from None

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pg.close()

    def __enter__(self) -> PgLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decoded(rows: Iterator[tuple[Any, ...]]) -> list[ChainEvent]:
    out = []
    for chain, seq, ts, _kind, _run, payload, prev_hash, digest in rows:
        event = read_event(payload, f"audit ledger: chain {chain} event {seq}")
        stored = StoredEvent(seq=seq, ts=ts, event=event, prev_hash=prev_hash, hash=digest)
        out.append(ChainEvent(chain=chain, stored=stored))
    return out

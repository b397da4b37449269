"""The audit ledger: append-only, hash-chained events in a SQLite file.

Every event gets the next ``seq`` and ``hash = sha256(prev_hash || canonical)``
where ``canonical`` is the sorted-key JSON of ``{"event", "seq", "ts"}`` (the
event's own canonical JSON embedded byte for byte). A batch is linked to the
chain's last event and inserted in one ``BEGIN IMMEDIATE`` transaction, so
several threads or processes appending to one file extend a single chain and
never fork it. The last event is the head this writer last committed, unread,
unless the primary key on ``seq`` says another writer appended since
(``_insert_cached``; docs/audit.md).

The hashing rules and the verify walk are ``chain.py``'s; this module owns the
file, its connections and transactions. The file may be shared with the budget
store: every table here is ``audit_``, and ``append_in`` writes inside a
transaction the store holds (one commit for a decision and its budget step).
UPDATE/DELETE triggers stop accidents; ``verify`` is the real check, because
anyone with write access to the file can drop a trigger.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from guardpool import sqlite_wal
from guardpool.audit.chain import (
    canonical_bytes,
    chain_hash,
    input_record,
    linked_rows,
    summarize,
    walk,
)
from guardpool.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    StoredEvent,
    Summary,
    VerifyReport,
)
from guardpool.audit.records import LedgerError, LedgerWriteError, encode_events, read_event

__all__ = [
    "FORMAT",
    "Ledger",
    "LedgerError",
    "LedgerWriteError",
    "Synchronous",
    "canonical_bytes",
    "chain_hash",
    "encode_events",
    "input_record",
]

FORMAT: Final[str] = "guardpool-audit/1"

_SCHEMA: Final[tuple[str, ...]] = (
    "CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # kind and run_id duplicate the payload so that `events(run_id=...)` is an
    # index lookup; verify checks they agree with the hashed payload.
    """CREATE TABLE IF NOT EXISTS audit_events (
        seq INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_events_run ON audit_events (run_id, seq)",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the guardpool audit ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the guardpool audit ledger is append-only'); END""",
    "INSERT OR IGNORE INTO audit_meta (key, value) VALUES ('format', 'guardpool-audit/1')",
)

_COLUMNS: Final[str] = "seq, ts, kind, run_id, payload, prev_hash, hash"


Synchronous = Literal["NORMAL", "FULL"]


_HEAD_SQL: Final[str] = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"

# The chain's last event as (seq, hash).
Head = tuple[int, str]


@functools.cache
def _insert_sql(n: int) -> str:
    """One INSERT of ``n`` rows: a single statement (one prepared plan per batch size),
    so a primary-key conflict on the first row aborts all of it."""
    return f"INSERT INTO audit_events ({_COLUMNS}) VALUES " + ", ".join([_ROW] * n)


_ROW: Final[str] = "(?, ?, ?, ?, ?, ?, ?)"
# Rows per INSERT statement: well under SQLite's 32,766 bound variables.
_ROWS_PER_INSERT: Final[int] = 256


def _insert_after(
    conn: sqlite_wal.Executor, head: Head, events: Sequence[AuditEvent], payloads: list[bytes]
) -> Head:
    """Insert ``events`` linked after ``head`` (``chain.linked_rows``); the new head."""
    params, seq, digest = linked_rows(
        head[1], head[0], time.time_ns() // 1_000_000, events, payloads
    )
    if len(events) <= _ROWS_PER_INSERT:  # one statement: nearly every batch
        conn.execute(_insert_sql(len(events)), params)
        return seq, digest
    width = 7 * _ROWS_PER_INSERT
    for start in range(0, len(params), width):
        chunk = params[start : start + width]
        conn.execute(_insert_sql(len(chunk) // 7), chunk)
    return seq, digest


class Ledger:
    """An append-only, hash-chained event log in a SQLite file.

    ``create=True`` (the enforcer's mode) creates the file and tables and raises
    ``LedgerWriteError`` when that is impossible; ``create=False`` (the CLI's
    mode) opens an existing ledger and raises ``LedgerError`` for a missing file
    or a file that is not a guardpool ledger, without changing it.

    Thread-safe: appends share one connection under a lock (SQLite serialises
    writers anyway); reads use a second connection so a long ``verify`` sees a
    WAL snapshot and does not hold up appends.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capture_input: bool = False,
        create: bool = True,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = Path(path)
        self.capture_input = capture_input
        self._create = create
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._closed = False
        # The chain's head as this process last committed it (see _insert_cached).
        self._head: Head | None = None
        self._checkpointer = sqlite_wal.Checkpointer(self.path)
        if create:
            try:
                self._writer = self._connect()
                sqlite_wal.enable_wal(self._writer, self._busy_timeout_ms / 1000)
                self._writer.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    self._writer.execute(stmt)
                self._writer.execute("COMMIT")
                self._check_format(self._writer)
                self._wcur = self._writer.cursor()  # the appends' (sqlite_wal.Executor)
            except (sqlite3.Error, LedgerError) as exc:
                raise LedgerWriteError(f"cannot open audit ledger {self.path}: {exc}") from exc
        else:
            if not self.path.is_file():
                raise LedgerError(f"{self.path}: no such file")
            try:
                self._writer = self._connect()
                self._check_format(self._writer)
                self._wcur = self._writer.cursor()
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.path}: not a guardpool audit ledger ({exc})") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._create:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        else:
            # mode=rw: never create a file (or tables) when asked to open one.
            uri = self.path.resolve().as_uri() + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            sqlite_wal.writer_pragmas(conn)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _check_format(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT value FROM audit_meta WHERE key = 'format'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise LedgerError(f"{self.path}: not a guardpool audit ledger") from exc
            raise
        if row is None or row[0] != FORMAT:
            found = "none" if row is None else repr(row[0])
            raise LedgerError(
                f"{self.path}: unsupported audit ledger format {found} (expected {FORMAT!r})"
            )

    # -- writing ---------------------------------------------------------------

    def input_fields(self, input: object) -> dict[str, Any]:
        """``AuditEvent`` fields identifying an input: hash and length, text if captured."""
        return input_record(input, capture=self.capture_input)

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append a batch in one transaction, or nothing at all.

        Raises ``ValueError`` for an unknown kind (a programming error) and
        ``LedgerWriteError`` when the events cannot be encoded or written.
        """
        if not events:
            return
        payloads = encode_events(events)
        with self._wlock:
            if self._closed:
                raise LedgerWriteError(f"audit ledger {self.path} is closed")
            cur = self._wcur
            try:
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    head = self._insert_cached(cur, events, payloads)
                    cur.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LedgerWriteError(f"audit ledger {self.path}: {exc}") from exc
            self.committed(head)
            self._checkpointer.committed(self._writer)

    def append_in(self, conn: sqlite_wal.Executor, events: Sequence[AuditEvent]) -> Head | None:
        """Append inside a write transaction the caller holds on ``conn`` (same file).

        The caller commits or rolls back: the budget store's step and the events
        of its decision then land together (``SqliteStore.joint``). Returns the
        chain's new head, which the caller hands to ``committed`` once (and only
        if) its transaction committed; None when there was nothing to append.
        """
        if not events:
            return None
        payloads = encode_events(events)
        if self._closed:
            raise LedgerWriteError(f"audit ledger {self.path} is closed")
        try:
            return self._insert_cached(conn, events, payloads)
        except sqlite3.Error as exc:
            raise LedgerWriteError(f"audit ledger {self.path}: {exc}") from exc

    def committed(self, head: Head | None) -> None:
        """``head`` was committed to the file: the next append may link to it unread.

        Only ever moves forward: a head committed by another thread that reports
        late must not replace a later one (an older head would only cost a read).
        """
        if head is not None and (self._head is None or head[0] > self._head[0]):
            self._head = head

    def _insert_cached(
        self, conn: sqlite_wal.Executor, events: Sequence[AuditEvent], payloads: list[bytes]
    ) -> Head:
        """Insert after the head this process last committed, without reading it back.

        Inside an IMMEDIATE transaction no other writer can append meanwhile. If
        one appended since our last commit (another process, or another
        connection of this one), the row at our next ``seq`` exists already and
        the insert fails on the primary key before writing anything: then the
        head is read and the batch linked to it. A head is cached only once its
        transaction committed (``committed``), so the cache is never ahead of the
        file; behind it, the primary key says so.
        """
        head = self._head
        if head is not None and len(events) <= _ROWS_PER_INSERT:
            # (One statement, so a conflict leaves nothing of the batch behind.)
            try:
                return _insert_after(conn, head, events, payloads)
            except sqlite3.IntegrityError:
                pass  # another writer appended since: link to the real head
        return Ledger._insert(conn, events, payloads)

    @staticmethod
    def _insert(
        conn: sqlite_wal.Executor, events: Sequence[AuditEvent], payloads: list[bytes]
    ) -> Head:
        # Inside an IMMEDIATE transaction: no other writer can append between
        # this read and our inserts, so the chain cannot fork.
        last = conn.execute(_HEAD_SQL).fetchone()
        head = (0, GENESIS_HASH) if last is None else (int(last[0]), str(last[1]))
        return _insert_after(conn, head, events, payloads)

    # -- reading ---------------------------------------------------------------

    def _rows(
        self, sql: str, params: Sequence[object] = ()
    ) -> Generator[tuple[Any, ...], None, None]:
        """Rows of a query on the reader connection (one snapshot for the whole walk)."""
        with self._rlock:
            if self._closed:
                raise LedgerError(f"audit ledger {self.path} is closed")
            try:
                if self._reader is None:
                    self._reader = self._connect()
                cur = self._reader.execute("BEGIN")
                try:
                    cur = self._reader.execute(sql, params)
                    while batch := cur.fetchmany(1024):
                        yield from batch
                finally:
                    self._reader.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"audit ledger {self.path}: {exc}") from exc

    def events(
        self,
        run_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """Stored events in chain order, optionally of one run and some kinds (first ``limit``)."""
        return list(self._iter_events(run_id, kinds, limit))

    def _iter_events(
        self,
        run_id: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[StoredEvent]:
        where: list[str] = []
        params: list[object] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if kinds is not None:
            kind_list = list(kinds)
            where.append(f"kind IN ({', '.join('?' * len(kind_list))})" if kind_list else "0")
            params.extend(kind_list)
        sql = f"SELECT {_COLUMNS} FROM audit_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for seq, ts, _kind, _run, payload, prev_hash, digest in self._rows(sql, params):
            event = read_event(payload, f"audit ledger {self.path}: event {seq}")
            yield StoredEvent(seq=seq, ts=ts, event=event, prev_hash=prev_hash, hash=digest)

    def verify(self, expect_head: str | None = None) -> VerifyReport:
        """Walk the whole chain and report the first event that does not hold.

        Detects an edited event, time or position, a deleted or inserted row, a
        broken ``prev_hash`` link and index columns that disagree with the
        event. ``expect_head`` is a hash pinned earlier: the report fails unless
        the chain still contains it (catches a rewrite or truncation behind it).
        """
        sql = f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq"
        # closing(): an early return must end the read transaction and free the lock now.
        with contextlib.closing(self._rows(sql)) as rows:
            return walk(rows, expect_head)

    def summary(self, run_id: str | None = None) -> Summary:
        """Counts over the ledger, or over one run."""
        return summarize(self._iter_events(run_id))

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close both connections; later appends raise ``LedgerWriteError``."""
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            self._checkpointer.close()
            self._writer.close()
            if self._reader is not None:
                self._reader.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

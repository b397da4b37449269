"""Counters in a SQLite file: the embedded default, exact across processes on one machine.

Every operation is one ``BEGIN IMMEDIATE`` transaction, which takes the
database's write lock up front: two processes can never both read "39 of 40"
and both reserve. WAL lets readers proceed meanwhile; ``synchronous=NORMAL`` in
WAL mode loses nothing on a process crash or ``kill -9`` (what a host dying
mid-run looks like) and can lose only the last commits on power loss.

Tables are prefixed ``budget_``: the audit ledger may share the file.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from guardpool import sqlite_wal
from guardpool.store import engine
from guardpool.store.base import (
    Clock,
    CounterState,
    Expired,
    ReserveItem,
    StoreAnswer,
    wall_clock_ms,
)
from guardpool.store.errors import StoreUnavailable

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS budget_counters (
        key TEXT NOT NULL, dimension TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key, dimension)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS budget_charges (
        key TEXT NOT NULL, dimension TEXT NOT NULL, ts_ms INTEGER NOT NULL,
        amount INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS budget_charges_window ON budget_charges (key, dimension, ts_ms)",
    """CREATE TABLE IF NOT EXISTS budget_reservations (
        id TEXT PRIMARY KEY, state TEXT NOT NULL, deadline_ms INTEGER NOT NULL,
        record BLOB NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS budget_reservations_live
        ON budget_reservations (deadline_ms) WHERE state = 'live'""",
)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(engine.Reservation).decode


class _Tx:
    """engine.Transaction over one connection inside BEGIN IMMEDIATE.

    Statements per step stay few whatever the number of items: all lifetime
    counters are read in one SELECT and written with one executemany. sqlite3
    keeps each distinct SQL text prepared (its statement cache), so the fixed
    texts below are compiled once per connection.
    """

    def __init__(
        self, store: SqliteStore, conn: sqlite_wal.Executor, now_ms: int, scan: bool
    ) -> None:
        self.store = store
        self.conn = conn
        self.now_ms = now_ms
        self._scan = scan
        self._stored: set[str] = set()  # reservation ids known to have a row
        self.after_commit: list[Callable[[], None]] = []  # run once COMMIT succeeded

    def counters(self, items: Sequence[ReserveItem]) -> list[tuple[int, int]]:
        if not items:
            return []
        # A primary-key search per key (_select_counters); the row-value form
        # `(key, dimension) IN (VALUES ...)` made SQLite scan the whole table
        # (one row per limit, dimension and run), slower with every run.
        shape = engine.shape(items)
        found: dict[tuple[str, str], tuple[int, int]] = {
            (k, d): (u, r)
            for k, d, u, r in self.conn.execute(_select_counters(len(shape.keys)), shape.keys)
        }
        if not shape.windowed:
            return [found.get(counter, (0, 0)) for counter in shape.counters]
        out: list[tuple[int, int]] = []
        for item, counter in zip(items, shape.counters, strict=True):
            state = found.get(counter, (0, 0))
            if item.window_ms:
                # Windowed counters keep their charges in budget_charges, not in `used`.
                (used,) = self.conn.execute(
                    "SELECT COALESCE(SUM(amount), 0) FROM budget_charges "
                    "WHERE key = ? AND dimension = ? AND ts_ms > ?",
                    (item.key, item.dimension, self.now_ms - item.window_ms),
                ).fetchone()
                state = (int(used), state[1])
            out.append(state)
        return out

    def add_reserved(self, deltas: Sequence[tuple[ReserveItem, int]]) -> None:
        if not deltas:
            return
        if len(deltas) > _ROWS_PER_UPSERT:
            self.conn.executemany(
                _upsert_reserved(1), [(it.key, it.dimension, d) for it, d in deltas]
            )
            return
        # One statement for every counter (rows apply in order, so a counter named
        # twice adds both deltas): one prepared plan, one VDBE run.
        params: list[object] = []
        for it, delta in deltas:
            params += (it.key, it.dimension, delta)
        self.conn.execute(_upsert_reserved(len(deltas)), params)

    def charge(self, charges: Sequence[tuple[ReserveItem, int]]) -> None:
        # `used` of a windowed counter stays 0 (its charges live in budget_charges),
        # so one UPDATE moves every reservation and charges only lifetime counters.
        self.conn.executemany(
            "UPDATE budget_counters SET used = used + ?, reserved = reserved - ? "
            "WHERE key = ? AND dimension = ?",
            [
                (0 if it.window_ms else amount, it.amount, it.key, it.dimension)
                for it, amount in charges
            ],
        )
        windowed = [(it, amount) for it, amount in charges if it.window_ms]
        for it, amount in windowed:
            # Charges that fell out of the window can never count again.
            self.conn.execute(
                "DELETE FROM budget_charges WHERE key = ? AND dimension = ? AND ts_ms <= ?",
                (it.key, it.dimension, self.now_ms - it.window_ms),
            )
            self.conn.execute(
                "INSERT INTO budget_charges (key, dimension, ts_ms, amount) VALUES (?, ?, ?, ?)",
                (it.key, it.dimension, self.now_ms, amount),
            )

    def get(self, reservation_id: str) -> engine.Reservation | None:
        row = self.conn.execute(
            "SELECT state, record FROM budget_reservations WHERE id = ?", (reservation_id,)
        ).fetchone()
        if row is None:
            return None
        self._stored.add(reservation_id)
        r = _decode(row[1])
        r.state = row[0]  # the column is the truth: a state change rewrites only it
        if r.items == self.store._last_items:
            # The items this process last reserved (a settle after its check): the
            # same tuple, so what is remembered of it (engine.shape) serves again.
            r.items = self.store._last_items
        return r

    def put(self, reservation: engine.Reservation) -> None:
        if reservation.id in self._stored:
            # Items, deadline and first answer never change after the reserve.
            self.conn.execute(
                "UPDATE budget_reservations SET state = ? WHERE id = ?",
                (reservation.state, reservation.id),
            )
        else:
            self.conn.execute(
                "INSERT INTO budget_reservations (id, state, deadline_ms, record) "
                "VALUES (?, ?, ?, ?)",
                (reservation.id, reservation.state, reservation.deadline_ms, _encode(reservation)),
            )
            self._stored.add(reservation.id)
            self.store._last_items = reservation.items
        if reservation.state == "live":
            self.store._scan_at = min(self.store._scan_at, reservation.deadline_ms)

    def overdue(self) -> list[engine.Reservation]:
        store = self.store
        if not self._scan and self.now_ms <= store._scan_at:
            # Nothing this process reserved is due, and another process's
            # reservations were looked at less than _SCAN_EVERY_MS ago. Skipping
            # only delays an expiry: a live reservation counts as spent meanwhile.
            return []
        rows = self.conn.execute(
            "SELECT id, record FROM budget_reservations WHERE state = 'live' AND deadline_ms < ?",
            (self.now_ms,),
        ).fetchall()
        (earliest,) = self.conn.execute(
            "SELECT MIN(deadline_ms) FROM budget_reservations "
            "WHERE state = 'live' AND deadline_ms >= ?",
            (self.now_ms,),
        ).fetchone()
        store._scan_at = self.now_ms + _SCAN_EVERY_MS
        if earliest is not None:
            store._scan_at = min(store._scan_at, int(earliest))
        due = []
        for rid, record in rows:
            r = _decode(record)
            r.state = "live"
            self._stored.add(rid)
            due.append(r)
        return due


@functools.cache
def _upsert_reserved(n: int) -> str:
    rows = ", ".join(["(?, ?, ?)"] * n)
    return (
        f"INSERT INTO budget_counters (key, dimension, reserved) VALUES {rows} "
        "ON CONFLICT (key, dimension) DO UPDATE SET reserved = reserved + excluded.reserved"
    )


# Counters per upsert statement (3 bound variables each, SQLite allows 32,766).
_ROWS_PER_UPSERT = 256


@functools.cache
def _select_counters(n: int) -> str:
    """The counters of ``n`` distinct keys, one primary-key search per key.

    ``key IN (?, ?)`` builds a temporary b-tree of the list on every run: the
    UNION ALL of equality searches does the same searches in half the time
    (5.5 vs 10.5 µs for 2 keys, measured). Past _UNION_KEYS keys (SQLite caps
    a compound SELECT at 500 terms) the IN list it is.
    """
    if n > _UNION_KEYS:
        marks = ", ".join(["?"] * n)
        return f"SELECT key, dimension, used, reserved FROM budget_counters WHERE key IN ({marks})"
    one = "SELECT key, dimension, used, reserved FROM budget_counters WHERE key = ?"
    return " UNION ALL ".join([one] * n)


_UNION_KEYS = 64


# Another process's reservations are looked at for expiry at least this often.
_SCAN_EVERY_MS = 1000


class Joint:
    """Store steps inside a transaction the caller also writes to (``SqliteStore.joint``)."""

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx
        self.conn = tx.conn

    def reserve(
        self,
        reservation_id: str,
        items: Sequence[ReserveItem],
        ttl_ms: int,
        *,
        fresh: bool = False,
    ) -> StoreAnswer:
        """``fresh``: an id minted by the caller just now (see ``engine.reserve``)."""
        answer = engine.reserve(self._tx, reservation_id, items, ttl_ms, fresh=fresh)
        if self._tx.store._prune_due():
            # In this transaction: the joint path (store and ledger in one file, the
            # default) never went through SqliteStore.reserve, so it never pruned and
            # the table kept a row for every check ever made.
            _prune(self._tx)
        return answer

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        return engine.settle(self._tx, reservation_id, actual)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction committed (never if it rolls back)."""
        self._tx.after_commit.append(callback)


# Finished reservations answer retries (idempotency) for this long past their
# deadline, as in the Redis store; then they are forgotten, or the table grows forever.
KEEP_FINISHED_MS = 24 * 3600 * 1000
_PRUNE_EVERY = 1000


def _prune(tx: _Tx) -> int:
    cursor = tx.conn.execute(
        "DELETE FROM budget_reservations WHERE state != 'live' AND deadline_ms < ?",
        (tx.now_ms - KEEP_FINISHED_MS,),
    )
    return int(cursor.rowcount)


class SqliteStore:
    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = 5000, clock: Clock = wall_clock_ms
    ) -> None:
        self.path = str(path)
        # The wall clock by default: every process sharing the file must agree on it.
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._checkpointer = sqlite_wal.Checkpointer(self.path)
        self._lock = threading.Lock()
        # Threads of this process queue here for the write lock: SQLite's own busy
        # handler sleeps (1, 2, 5, 10 ms ...) between retries, which turned 16
        # concurrent checks into a 23 ms p50. Other processes still meet at
        # BEGIN IMMEDIATE.
        self._write = threading.Lock()
        self._reserves = 0
        # Before this store-clock time no reservation can be due (see _Tx.overdue).
        self._scan_at = -(2**62)
        # The items of the last reservation this process inserted (see _Tx.get).
        self._last_items: tuple[ReserveItem, ...] = ()
        self._closed = False
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"budget store unavailable: {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        # sqlite3 connections must not be shared between threads mid-transaction:
        # one per thread, all closed by close().
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreUnavailable("budget store unavailable: the store is closed")
            try:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self._busy_timeout_ms / 1000,
                )
                sqlite_wal.enable_wal(conn, self._busy_timeout_ms / 1000)
                conn.execute("PRAGMA synchronous=NORMAL")
                sqlite_wal.writer_pragmas(conn)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"budget store unavailable: {self.path}: {exc}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _cursor(self) -> sqlite3.Cursor:
        """The cursor this thread's write transactions run on (sqlite_wal.Executor:
        only inside BEGIN ... COMMIT, which leaves no statement open on it)."""
        cur: sqlite3.Cursor | None = getattr(self._local, "cur", None)
        if cur is None:
            conn = self._conn()
            try:
                cur = conn.cursor()
            except sqlite3.Error as exc:  # closed meanwhile
                raise StoreUnavailable(f"budget store unavailable: {self.path}: {exc}") from None
            self._local.cur = cur
        return cur

    def _atomic(self, step: Callable[[_Tx], T], *, scan: bool = False) -> T:
        cur = self._cursor()
        with self._write:
            return self._transaction(cur, step, scan)

    def _transaction(self, cur: sqlite3.Cursor, step: Callable[[_Tx], T], scan: bool) -> T:
        try:
            cur.execute("BEGIN IMMEDIATE")
            tx = _Tx(self, cur, self._clock(), scan)
            try:
                result = step(tx)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"budget store unavailable: {self.path}: {exc}") from None
        for callback in tx.after_commit:
            callback()
        self._checkpointer.committed(cur.connection)
        return result

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> StoreAnswer:
        if self._prune_due():
            self.prune()
        return self._atomic(lambda tx: engine.reserve(tx, reservation_id, items, ttl_ms))

    def _prune_due(self) -> bool:
        """Counts a reserve; true once every _PRUNE_EVERY (a race only shifts the turn)."""
        self._reserves += 1
        return self._reserves % _PRUNE_EVERY == 0

    def prune(self) -> int:
        """Forget finished reservations past the idempotency window; returns how many."""
        return self._atomic(_prune)

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        return self._atomic(lambda tx: engine.settle(tx, reservation_id, actual))

    def release(self, reservation_id: str) -> bool:
        return self._atomic(lambda tx: engine.release(tx, reservation_id))

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        """A read without the write lock (it never waits for writers).

        Each statement reads its own WAL snapshot: counters of one call may come
        from two commits, which is fine for reporting and for the enforcer's
        pre-check (the reservation itself is decided inside a write transaction).
        """
        try:
            return engine.states_of(_Tx(self, self._conn(), self._clock(), False), items)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"budget store unavailable: {self.path}: {exc}") from None

    def expire(self) -> tuple[Expired, ...]:
        return self._atomic(engine.expire, scan=True)

    def joint(self, step: Callable[[Joint], T]) -> T:
        """Run ``step`` in one write transaction: store steps and other writes to the file.

        The enforcer appends to an audit ledger in the same file through
        ``joint.conn``, so a decision and its budget step commit together or not
        at all. An exception inside ``step`` rolls everything back and propagates
        (sqlite3 errors as StoreUnavailable).
        """
        return self._atomic(lambda tx: step(Joint(tx)))

    def close(self) -> None:
        self._closed = True
        self._checkpointer.close()
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

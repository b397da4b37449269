"""Counters in a SQLite file: the embedded default, exact across processes on one machine.

Every operation is one ``BEGIN IMMEDIATE`` transaction, which takes the
database's write lock up front: two processes can never both read "39 of 40"
and both reserve. WAL lets readers proceed meanwhile; ``synchronous=NORMAL`` in
WAL mode loses nothing on a process crash or ``kill -9`` (what a host dying
mid-run looks like) and can lose only the last commits on power loss.

Tables are prefixed ``budget_``: the audit ledger may share the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

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
from guardpool.store.sqlite_tx import SCHEMA, Memo, Tx, prune

T = TypeVar("T")


class Joint:
    """Store steps inside a transaction the caller also writes to (``SqliteStore.joint``)."""

    def __init__(self, tx: Tx, store: SqliteStore) -> None:
        self._tx = tx
        self._store = store
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
        if self._store._prune_due():
            # In this transaction: the joint path (store and ledger in one file, the
            # default) never went through SqliteStore.reserve, so it never pruned and
            # the table kept a row for every check ever made.
            prune(self._tx)
        return answer

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> StoreAnswer:
        return engine.settle(self._tx, reservation_id, actual)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction committed (never if it rolls back)."""
        self._tx.after_commit.append(callback)


_PRUNE_EVERY = 1000


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
        self._memo = Memo()  # what its transactions remember between steps
        self._closed = False
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
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

    def _atomic(self, step: Callable[[Tx], T], *, scan: bool = False) -> T:
        cur = self._cursor()
        with self._write:
            return self._transaction(cur, step, scan)

    def _transaction(self, cur: sqlite3.Cursor, step: Callable[[Tx], T], scan: bool) -> T:
        try:
            cur.execute("BEGIN IMMEDIATE")
            tx = Tx(self._memo, cur, self._clock(), scan)
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
        return self._atomic(prune)

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
            return engine.states_of(Tx(self._memo, self._conn(), self._clock(), False), items)
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
        return self._atomic(lambda tx: step(Joint(tx, self)))

    def close(self) -> None:
        self._closed = True
        self._checkpointer.close()
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

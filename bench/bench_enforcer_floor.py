"""The SQL a check()+settle() pair cannot do without, run alone: the floor under
bench_enforcer.py's figures.

    floor = SqlFloor(path, sample, joint=True)   # sample: an enforcer's file after warm-up
    floor.pair()      # the check's and the settle's transactions, as raw SQLite
    floor.check()     # the check's transaction alone (the latency floor's part)

Whatever the Python above it does, a pair commits two write transactions holding
these rows (design §5: every check, verdict, reservation and settle is its own
hash-chained event, and a decision is written before it is answered):

- memory store (``joint=False``): the ledger's two appends, 5 rows (check, reserve,
  2 verdicts, decision) and 2 rows (settle, decision after);
- SQLite store and ledger in one file (``joint=True``): the same rows inside the
  store's two transactions: the check's counters read, reservation upsert and
  record insert; the settle's record read, counters read, charge and state update.

The statements are the store's and the ledger's own (imported, not copied), on a
file made by ``SqliteStore`` and ``Ledger`` (same page size, WAL, pragmas), with
rows copied from the sample enforcer's file (same payloads, same record), and the
same background checkpointer. What is left out is everything that is not SQLite:
building, encoding and hashing the events (the hash columns hold fixed strings),
the budget arithmetic, the guards.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from guardpool import sqlite_wal
from guardpool.audit.ledger import Ledger, _insert_sql
from guardpool.store.sqlite import SqliteStore
from guardpool.store.sqlite_tx import select_counters, upsert_reserved

_RESERVATION = (
    "INSERT INTO budget_reservations (id, state, deadline_ms, record) VALUES (?, ?, ?, ?)"
)
_RECORD = "SELECT state, record FROM budget_reservations WHERE id = ?"
_CHARGE = (
    "UPDATE budget_counters SET used = used + ?, reserved = reserved - ? "
    "WHERE key = ? AND dimension = ?"
)
_STATE = "UPDATE budget_reservations SET state = ? WHERE id = ?"
_HASH = "0123456789abcdef" * 4


class SqlFloor:
    def __init__(self, path: Path, sample: Path, *, joint: bool, check_events: int = 5) -> None:
        """``sample``'s last events must be a whole pair: the check's ``check_events``
        (check, reserve, a verdict per guard, decision), then the settle's 2."""
        src = sqlite3.connect(sample)
        last = src.execute(
            "SELECT kind, run_id, payload FROM audit_events ORDER BY seq DESC LIMIT ?",
            (check_events + 2,),
        ).fetchall()[::-1]
        kinds = [kind for kind, _, _ in last]
        if kinds[0] != "check" or kinds[-3:] != ["decision", "settle", "decision"]:
            raise SystemExit(f"the sample's last events are not a whole pair: {kinds}")
        self.joint = joint
        if joint:
            (self.record,) = src.execute(
                "SELECT record FROM budget_reservations ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
            self.counters = src.execute(
                "SELECT key, dimension FROM budget_counters ORDER BY key, dimension"
            ).fetchall()
        src.close()
        self.check_rows, self.settle_rows = last[:check_events], last[check_events:]
        # Made by guardpool itself: page size, WAL, schema.
        SqliteStore(path).close()
        Ledger(path).close()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        sqlite_wal.writer_pragmas(conn)
        self.conn = conn
        self.checkpointer = sqlite_wal.Checkpointer(path)
        self.seq = 0
        self.rid = ""
        if joint:
            self.keys = sorted({k for k, _ in self.counters})
            self.reserve_params: list[object] = []
            for key, dim in self.counters:
                self.reserve_params += (key, dim, 1)
            self.charge_params = [(1, 1, key, dim) for key, dim in self.counters]

    def _rows(self, rows: list[tuple[str, str, str]]) -> list[object]:
        params: list[object] = []
        ts = time.time_ns() // 1_000_000
        for kind, run_id, payload in rows:
            self.seq += 1
            params += (self.seq, ts, kind, run_id, payload, _HASH, _HASH)
        return params

    def _commit(self) -> None:
        self.conn.execute("COMMIT")
        self.checkpointer.committed(self.conn)

    def check(self) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        if self.joint:
            self.rid = os.urandom(16).hex()
            conn.execute(select_counters(len(self.keys)), self.keys).fetchall()
            conn.execute(upsert_reserved(len(self.counters)), self.reserve_params)
            deadline = time.time_ns() // 1_000_000 + 60_000
            conn.execute(_RESERVATION, (self.rid, "live", deadline, self.record))
        conn.execute(_insert_sql(len(self.check_rows)), self._rows(self.check_rows))
        self._commit()

    def settle(self) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        if self.joint:
            conn.execute(_RECORD, (self.rid,)).fetchone()
            conn.execute(select_counters(len(self.keys)), self.keys).fetchall()
            conn.executemany(_CHARGE, self.charge_params)
            conn.execute(_STATE, ("settled", self.rid))
        conn.execute(_insert_sql(len(self.settle_rows)), self._rows(self.settle_rows))
        self._commit()

    def pair(self) -> None:
        self.check()
        self.settle()

    def close(self) -> None:
        self.checkpointer.close()
        self.conn.close()

"""One SQLite file, many processes: exact under races, intact after kill -9, fail closed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from guardpool.audit import AuditEvent, Ledger
from guardpool.store.base import ReserveItem
from guardpool.store.errors import StoreUnavailable
from guardpool.store.sqlite import Joint, SqliteStore
from guardpool.store.sqlite_tx import select_counters

ROOT = Path(__file__).resolve().parent.parent

CALLS = ReserveItem(key="team", dimension="calls", limit=10**9, amount=1)
TOKENS = ReserveItem(key="team", dimension="tokens", limit=10**9, amount=3, window_ms=3_600_000)

RACER = textwrap.dedent(
    """
    import json, sys
    from guardpool.store.sqlite import SqliteStore
    from guardpool.store.base import ReserveItem
    path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SqliteStore(path)
    items = [ReserveItem(key="team", dimension="calls", limit=40, amount=1),
             ReserveItem(key="team", dimension="cost", limit=10_000_000, amount=250_000)]
    granted = 0
    for i in range(n):
        rid = f"{name}-{i}"
        if store.reserve(rid, items, 60_000).ok:
            granted += 1
            if i % 2:
                store.settle(rid, {})
    print(json.dumps(granted))
    """
)

# Reserves 1 call and 3 tokens, settles at 1 call and 2 tokens, forever, printing each
# settled id; the test SIGKILLs it at a random moment, perhaps mid-transaction.
LOOPER = textwrap.dedent(
    """
    import sys
    from guardpool.store.sqlite import SqliteStore
    from guardpool.store.base import ReserveItem
    path, name = sys.argv[1], sys.argv[2]
    store = SqliteStore(path)
    items = [ReserveItem(key="team", dimension="calls", limit=10**9, amount=1),
             ReserveItem(key="team", dimension="tokens", limit=10**9, amount=3,
                         window_ms=3_600_000)]
    i = 0
    while True:
        rid = f"{name}-{i}"
        assert store.reserve(rid, items, 3_600_000).ok
        assert store.settle(rid, {"tokens": 2}).ok
        print(rid, flush=True)
        i += 1
    """
)


def test_four_processes_race_for_forty_units_in_one_file(sqlite_path: Path) -> None:
    SqliteStore(sqlite_path).close()  # schema first, so the racers only race for budget
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(sqlite_path), f"p{n}", "20"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    granted = 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        granted += json.loads(out)
    assert granted == 40
    store = SqliteStore(sqlite_path)
    item = ReserveItem(key="team", dimension="calls", limit=40, amount=0)
    s = store.states([item])[0]
    assert s.used + s.reserved == 40
    store.close()


def test_kill_9_mid_transaction_leaves_consistent_counts(sqlite_path: Path) -> None:
    SqliteStore(sqlite_path).close()
    settled = 0
    rounds = 5
    for r in range(rounds):
        p = subprocess.Popen(
            [sys.executable, "-c", LOOPER, str(sqlite_path), f"r{r}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        p.stdout.readline()  # it is inside its loop
        time.sleep(0.05 + 0.07 * r)  # a different moment of the loop each round
        os.kill(p.pid, signal.SIGKILL)
        # Read through the same buffered stream as readline(): communicate(timeout=...)
        # reads the raw pipe and would skip what readline() had buffered already.
        out = p.stdout.read()
        assert p.wait(timeout=30) == -signal.SIGKILL
        settled += 1 + len(out.split())

    check = sqlite3.connect(sqlite_path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    store = SqliteStore(sqlite_path)
    calls, tokens = store.states([CALLS, TOKENS])
    # Each reservation is 1 call + 3 tokens reserved, or 1 call + 2 tokens used once
    # settled: both counters moved together, or the kill would show as a mismatch.
    live = calls.reserved
    assert tokens.reserved == 3 * live
    assert tokens.used == 2 * calls.used
    # Each kill interrupts at most one pair; what was printed was committed.
    assert live <= rounds
    assert settled <= calls.used <= settled + rounds
    # The reopened file goes on working.
    assert store.reserve("after", [CALLS, TOKENS], 60_000).ok
    assert store.settle("after", {}).ok
    assert store.states([CALLS])[0].used == calls.used + 1
    store.close()


def test_a_database_locked_by_another_process_is_unavailable(sqlite_path: Path) -> None:
    store = SqliteStore(sqlite_path, busy_timeout_ms=100)
    holder = sqlite3.connect(sqlite_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held as a stuck process would
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="budget store unavailable"):
            store.reserve("a", [CALLS], 60_000)
        assert time.monotonic() - start < 5.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.reserve("a", [CALLS], 60_000).ok  # the lock is gone, so is the error
    store.close()


def test_a_corrupt_file_is_unavailable(sqlite_path: Path) -> None:
    sqlite_path.write_bytes(b"this is not a database\n" * 512)
    with pytest.raises(StoreUnavailable, match="budget store unavailable"):
        SqliteStore(sqlite_path)


def test_an_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="budget store unavailable"):
        SqliteStore(tmp_path / "missing-dir" / "budgets.db")


def test_a_closed_store_is_unavailable(sqlite_path: Path) -> None:
    store = SqliteStore(sqlite_path)
    store.close()
    with pytest.raises(StoreUnavailable, match="budget store unavailable"):
        store.reserve("a", [CALLS], 60_000)


def test_counters_are_read_by_primary_key_search_not_a_table_scan(sqlite_path: Path) -> None:
    """One row per limit, dimension and run: a scan would slow every check as runs pile up."""
    store = SqliteStore(sqlite_path)
    for run in range(50):
        items = [
            ReserveItem(key=f"exe:llm:*|run:{run}", dimension=d, limit=10**9, amount=1)
            for d in ("calls", "tokens")
        ]
        assert store.reserve(f"r{run}", items, 60_000).ok
    conn = sqlite3.connect(sqlite_path)
    plan = conn.execute("EXPLAIN QUERY PLAN " + select_counters(2), ("a", "b")).fetchall()
    conn.close()
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH budget_counters USING PRIMARY KEY" in details and "SCAN" not in details
    got = store.states([ReserveItem(key="exe:llm:*|run:7", dimension="tokens", limit=9, amount=0)])
    assert (got[0].used, got[0].reserved) == (0, 1)
    store.close()


def test_kept_cursors_hold_no_read_snapshot_between_steps(sqlite_path: Path) -> None:
    """Store and ledger run their write transactions on kept cursors: nothing may stay
    open on them after a step (an unfinished SELECT would pin a WAL snapshot, so no
    checkpoint could ever reach the end of the WAL)."""
    store = SqliteStore(sqlite_path)
    ledger = Ledger(sqlite_path)
    try:
        assert store.reserve("a", [CALLS], 60_000).ok
        assert store.settle("a", {"calls": 1}).ok
        assert not store.settle("a", {"calls": 1}).ok  # the record read, nothing after it
        ledger.append([AuditEvent(kind="check", run_id="r")])

        def step(j: Joint) -> None:
            assert j.reserve("b", [CALLS], 60_000).ok
            ledger.append_in(j.conn, [AuditEvent(kind="check", run_id="r")])

        store.joint(step)
        store.states([CALLS])
        other = sqlite3.connect(sqlite_path, timeout=1)
        try:
            busy, frames, copied = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            other.close()
        assert (busy, frames, copied) == (0, 0, 0)
    finally:
        ledger.close()
        store.close()


def test_a_fresh_reservation_records_its_grant_without_the_states(sqlite_path: Path) -> None:
    """A check's reservation id is minted for it (fresh): no retry can come, so its record
    keeps the grant and the refused items only (459 instead of 715 bytes in the bench's
    policy). Were a retry made all the same, it gets the same grant and reserves nothing."""
    store = SqliteStore(sqlite_path)
    tokens = ReserveItem(key="team", dimension="tokens", limit=10**9, amount=5)
    try:
        got = store.joint(lambda j: j.reserve("f", [CALLS, tokens], 60_000, fresh=True))
        assert got.ok and [s.reserved for s in got.states] == [1, 5]
        again = store.reserve("f", [CALLS, tokens], 60_000)
        assert again.ok and again.states == ()
        assert [s.reserved for s in store.states([CALLS, tokens])] == [1, 5]
        assert store.settle("f", {"calls": 1, "tokens": 4}).ok
        assert [(s.used, s.reserved) for s in store.states([CALLS, tokens])] == [(1, 0), (4, 0)]
    finally:
        store.close()

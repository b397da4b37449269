"""WAL checkpoints off the request threads (guardpool/sqlite_wal.py), on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from guardpool.audit import AuditEvent, Ledger
from guardpool.sqlite_wal import BEHIND, PAGE_SIZE, Checkpointer
from guardpool.store.base import ReserveItem
from guardpool.store.sqlite import SqliteStore
from tests.waiting import wait_for


def wal_frames(path: Path) -> int:
    """Frames in the WAL not yet copied back (a PASSIVE checkpoint reports them)."""
    conn = sqlite3.connect(path)
    try:
        _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(log) - int(done)
    finally:
        conn.close()


def events(n: int) -> list[AuditEvent]:
    return [AuditEvent(kind="check", run_id="r", detail={"n": i}) for i in range(n)]


def test_the_ledger_writer_never_checkpoints_and_the_thread_does(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ledger = Ledger(path)
    try:
        # The request thread's connection: automatic checkpoints off.
        assert ledger._writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        ledger._checkpointer.every = 20
        ledger._checkpointer.finish_every = 100
        for _ in range(100):
            ledger.append(events(3))
        assert wait_for(lambda: ledger._checkpointer.checkpoints >= 1, timeout=10)
        assert ledger._checkpointer.inline == 0
    finally:
        ledger.close()
    # Every event is there, and the chain holds.
    reopened = Ledger(path, create=False)
    try:
        assert len(reopened.events()) == 300
        assert reopened.verify().ok
    finally:
        reopened.close()


def wal_size_after(path: Path, commits: int, every: int, finish_every: int) -> int:
    ledger = Ledger(path)
    try:
        ledger._checkpointer.every = every
        ledger._checkpointer.finish_every = finish_every
        for _ in range(commits):
            ledger.append(events(3))
        return os.path.getsize(f"{path}-wal")
    finally:
        ledger.close()


def test_the_wal_stays_bounded_while_appends_go_on(tmp_path: Path) -> None:
    # A WAL file restarts from its beginning only after a checkpoint that copied every
    # frame; its size is the high-water mark. The thread alone never gets there while
    # commits go on (this grew to 10 MB before the inline finish existed).
    unbounded = wal_size_after(tmp_path / "a.db", 1000, 10**9, 10**9)
    bounded = wal_size_after(tmp_path / "b.db", 1000, 10, 50)
    assert unbounded > 1000 * PAGE_SIZE  # at least a page per commit
    assert bounded < unbounded // 2


def test_a_stuck_checkpointer_thread_makes_the_writer_checkpoint_itself(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    release = threading.Event()

    class Stuck(Checkpointer):
        def _run(self) -> None:  # the thread hangs (as behind a reader that never ends)
            release.wait(30)

    ledger = Ledger(path)
    try:
        stuck = Stuck(path, every=5, finish_every=10)
        ledger._checkpointer = stuck
        for _ in range(10 * BEHIND + 5):
            ledger.append(events(1))
        assert stuck.inline >= 1 and stuck.checkpoints == 0
        # The inline checkpoint copied the WAL back (only the last few commits remain).
        assert wal_frames(path) <= 10 * BEHIND
    finally:
        release.set()
        ledger.close()


def test_the_sqlite_store_hands_its_checkpoints_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    store = SqliteStore(path)
    try:
        store._checkpointer.every = 20
        store._checkpointer.finish_every = 50
        item = ReserveItem(key="k", dimension="calls", amount=1, limit=10**9)
        for i in range(60):
            assert store.reserve(f"r{i}", [item], ttl_ms=60_000).ok
            assert store.settle(f"r{i}", {"calls": 1}).ok
        assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        assert wait_for(lambda: store._checkpointer.checkpoints >= 1, timeout=10)
    finally:
        store.close()


def test_close_stops_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ledger = Ledger(path)
    ledger._checkpointer.every = 5
    for _ in range(10):
        ledger.append(events(1))
    thread = ledger._checkpointer._thread
    assert thread is not None
    ledger.close()
    assert not thread.is_alive()


def _reserved_for_a_while(path: Path, seconds: float) -> threading.Thread:
    """Another connection holds the RESERVED lock of a new (rollback-journal) file,
    as a second host creating the schema in BEGIN IMMEDIATE does, then commits."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE unrelated (x)")

    def release() -> None:
        other.execute("COMMIT")
        other.close()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer


def test_a_store_opening_a_new_file_another_host_is_creating_waits_for_it(
    tmp_path: Path,
) -> None:
    # SQLite refuses the switch to WAL at once ("database is locked", no busy
    # handler) while another connection holds RESERVED: the store retried nothing
    # and a host starting beside another one denied its checks.
    path = tmp_path / "new.db"
    timer = _reserved_for_a_while(path, 0.3)
    store = SqliteStore(path)
    try:
        item = ReserveItem(key="k", dimension="calls", limit=5, amount=1)
        assert store.reserve("r1", [item], 60_000).ok
    finally:
        store.close()
        timer.join()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_ledger_opening_a_new_file_another_host_is_creating_waits_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.db"
    timer = _reserved_for_a_while(path, 0.3)
    ledger = Ledger(path)
    try:
        ledger.append(events(3))
        assert ledger.verify().ok
    finally:
        ledger.close()
        timer.join()


def test_the_wal_switch_gives_up_at_the_busy_timeout(tmp_path: Path) -> None:
    from guardpool.sqlite_wal import enable_wal

    path = tmp_path / "new.db"
    timer = _reserved_for_a_while(path, 2.0)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        try:
            enable_wal(conn, 0.05)
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
        else:
            raise AssertionError("the switch to WAL succeeded under another host's lock")
    finally:
        conn.close()
        timer.join()


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_new_files_get_small_pages_and_old_files_keep_theirs(tmp_path: Path) -> None:
    item = ReserveItem(key="k", dimension="calls", limit=10, amount=1)
    # A new file, whichever of store and ledger creates it: PAGE_SIZE pages.
    for store_first in (True, False):
        path = tmp_path / f"{'store' if store_first else 'ledger'}-first.db"
        if store_first:
            store, ledger = SqliteStore(path), Ledger(path)
        else:
            ledger = Ledger(path)
            store = SqliteStore(path)
        assert store.reserve("r1", [item], 60_000).ok
        ledger.append([AuditEvent(kind="check", run_id="r")])
        store.close()
        ledger.close()
        assert _page_size(path) == PAGE_SIZE != 4096
    # A file made by an older version (4,096-byte pages, WAL) keeps them and works.
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE unrelated (x)")
    conn.close()
    store, ledger = SqliteStore(old), Ledger(old)
    assert store.reserve("r1", [item], 60_000).ok
    assert store.settle("r1", {"calls": 1}).ok
    ledger.append([AuditEvent(kind="check", run_id="r")])
    assert ledger.verify().ok
    store.close()
    ledger.close()
    assert _page_size(old) == 4096


def test_the_thread_is_asked_on_the_every_th_commit_exactly(tmp_path: Path) -> None:
    """Commits in between count without the lock (a countdown); the turn still comes
    on the every-th commit, and a cadence set later applies from the next commit."""
    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    ck = Checkpointer(path, every=7, finish_every=10**6)
    try:
        for _ in range(6):
            ck.committed(conn)
        assert ck._thread is None and not ck._wanted
        ck.committed(conn)  # the 7th
        assert ck._thread is not None
        assert wait_for(lambda: ck.checkpoints == 1, timeout=10)
        ck.every = 3  # set between commits, as tests and the cost bench do
        for _ in range(2):
            ck.committed(conn)
        assert ck.checkpoints == 1 and not ck._wanted
        ck.committed(conn)  # the 3rd since the thread was last asked
        assert wait_for(lambda: ck.checkpoints == 2, timeout=10)
    finally:
        ck.close()
        conn.close()

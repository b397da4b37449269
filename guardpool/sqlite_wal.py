"""Checkpoints of a SQLite WAL file, with the bulk of the work off the request threads.

Data flow::

  request thread: COMMIT ─► Checkpointer.committed(conn)
      every EVERY commits ─► Condition.notify ─► checkpointer thread:
          PRAGMA wal_checkpoint(PASSIVE) on its own connection (copies the WAL's
          frames into the database file and syncs both: the expensive part)
      every FINISH_EVERY commits, once the thread has caught up ─► the next commit
          checkpoints the few frames left, inline, on the writer's connection (the
          finish: the WAL then restarts from its beginning)
      FINISH_EVERY * BEHIND commits with no finish ─► inline checkpoint of everything
          (back-pressure: the thread is stuck or gone)

Why: SQLite checkpoints automatically when a commit leaves the WAL over 1,000 pages;
that commit then copies the WAL back into the database file and syncs both, on the
thread that is answering a ``check()``. Measured on the ledger of a memory-store
check()+settle() pair: the two commits took 190 µs per pair with the automatic
checkpoint and 88 µs with none (``bench/bench_enforcer.py``). Owners therefore set
``wal_autocheckpoint=0`` on their connections and hand the copying to this thread.

Why the inline finish: a WAL file is only rewritten from its start once a checkpoint
has copied *every* frame in it. A background checkpoint never gets there while
commits go on (each adds frames during the copy), so with the thread alone the WAL
grew without bound (10 MB after 1,000 small commits, ``tests/test_sqlite_wal.py``).
The finish copies little (the thread caught up just before) and runs between
transactions on the writer's own connection, so nothing can append meanwhile; its
cost is its syncs, about 5 ms here, hence only every FINISH_EVERY commits.

Nothing is less durable for any of this: a committed transaction is in the WAL
whether or not it has been checkpointed, and an interrupted checkpoint is redone
from the WAL when the file is next opened. A PASSIVE checkpoint never waits for
writers or readers. The thread does not poll: it sleeps on a condition until
writers have committed enough to make a checkpoint worth it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("guardpool.sqlite")

# Commits between the thread's checkpoints. A check's commit writes 4-10 pages of
# PAGE_SIZE (ledger alone, or with the budget store), 1-3 MB per 300 commits: about
# what SQLite's own 1,000-page default (4 MB at its 4,096-byte pages) lets in.
EVERY = 300
# Commits between inline finishes. Each costs the writer about 5 ms (three fdatasyncs
# on this machine's disk, whatever the few frames it copies): rare enough that it
# adds ~2 µs per commit, while the WAL file stays under ~50 MB between restarts.
FINISH_EVERY = 3000
# No finish for this many times FINISH_EVERY commits (the thread is stuck or gone):
# the writer checkpoints everything itself.
BEHIND = 4
# A WAL file larger than this is cut back to it when it restarts.
SIZE_LIMIT = 64 << 20
# The thread repeats its checkpoint (at most _ROUNDS times) until at most this many
# frames are left for the writer's inline finish.
_LEFT_FOR_FINISH = 32
_ROUNDS = 4


# What runs a statement: a connection, or inside a write transaction the one cursor
# its owner keeps for that (Connection.execute makes, registers and frees a cursor
# per statement). Only where a transaction follows: a SELECT left unfinished on a
# kept cursor would hold its read snapshot until the cursor's next statement.
Executor = sqlite3.Connection | sqlite3.Cursor

# Waits between tries of enable_wal(), doubling up to the last.
_WAL_RETRY_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


# The page size of a file guardpool creates (SQLite's default is 4,096). A commit
# writes every page it changed to the WAL in full: a check's commit changes 6-7
# pages of 6 b-trees (counters, reservation, its two indexes, ledger, run index)
# by a few hundred bytes each, so smaller pages mean fewer bytes written,
# checkpointed and synced: 0.40x the WAL bytes per check()+settle() pair. The CPU
# per pair stayed within noise (0.91x, 1.08x); bench/bench_wal_bytes.py measures both.
PAGE_SIZE = 1024


def enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another connection holds a lock;
    a file this creates gets ``PAGE_SIZE`` pages.

    The page size must be set before WAL (a WAL file cannot change it later); on
    an existing file the pragma does nothing, so files made by older versions
    keep their pages.

    Switching a file into WAL takes an exclusive lock, and while another
    connection holds the RESERVED lock (another process creating the schema of a
    new file in BEGIN IMMEDIATE) SQLite answers "database is locked" at once,
    without calling the busy handler. Several hosts opening one new file together
    lost the race: 5 of 60 rounds of 6 processes here, each a StoreUnavailable
    (a denied check) or a ledger that would not open. Bounded by the
    connection's own busy timeout; the waits are those of SQLite's busy handler.
    """
    deadline = time.monotonic() + timeout_s
    tries = 0
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY ("database is locked"), in any of its extended codes.
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_S[min(tries, len(_WAL_RETRY_S) - 1)])
        tries += 1


def writer_pragmas(conn: sqlite3.Connection) -> None:
    """On a connection that writes a file with a Checkpointer: no automatic checkpoint."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={SIZE_LIMIT}")


class Checkpointer:
    """A background thread checkpointing one SQLite file for this process's writers."""

    def __init__(
        self, path: str | Path, *, every: int = EVERY, finish_every: int = FINISH_EVERY
    ) -> None:
        self.path = Path(path)
        self._every = every
        self._finish_every = finish_every
        self._cond = threading.Condition(threading.Lock())
        self._commits = 0  # since the last checkpoint that reached the end of the WAL
        self._since_wake = 0  # since the thread was last asked
        # Commits since the last one that took the lock, and how many may pass so
        # before one has something to ask (_commits and _since_wake lag by _quiet).
        self._quiet = 0
        self._quiet_limit = min(every, finish_every)
        self._wanted = False  # the thread has been asked and has not finished yet
        self._finish_due = False  # ... and should leave little for an inline finish
        self._caught_up = False  # it did: the next commit finishes
        self._closed = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # rounds taken by the thread (tests and stats read these)
        self.finishes = 0  # small inline ones after the thread caught up
        self.inline = 0  # full inline ones, when the thread was far behind

    @property
    def every(self) -> int:
        return self._every

    @every.setter
    def every(self, value: int) -> None:
        self._every = value
        self._quiet_limit = 1  # the next commit takes the lock and recounts

    @property
    def finish_every(self) -> int:
        return self._finish_every

    @finish_every.setter
    def finish_every(self, value: int) -> None:
        self._finish_every = value
        self._quiet_limit = 1

    def committed(self, conn: sqlite3.Connection) -> None:
        """A writer committed a transaction on ``conn``: called right after COMMIT,
        still holding whatever lock serialises this process's writers of the file."""
        quiet = self._quiet + 1
        if quiet < self._quiet_limit and not self._caught_up:
            # Nearly every commit: nothing to ask of the thread, so no lock and one
            # count. The counts are only written by this file's writers, which that
            # lock serialises; the thread only sets _caught_up, and a finish seen one
            # commit late is harmless.
            self._quiet = quiet
            return
        with self._cond:
            # The quiet commits counted since the last time here, this one included.
            self._commits += quiet
            self._since_wake += quiet
            self._quiet = 0
            if self._caught_up:
                act = "finish"
            elif self._commits >= self.finish_every * BEHIND:
                act = "inline"
            else:
                act = ""
                due = self._commits >= self.finish_every
                if (
                    (due or self._since_wake >= self.every)
                    and not self._wanted
                    and not self._closed
                ):
                    self._wanted = True
                    self._finish_due = due
                    self._since_wake = 0
                    if self._thread is None:
                        self._thread = threading.Thread(
                            target=self._run,
                            name=f"guardpool-checkpoint:{self.path.name}",
                            daemon=True,
                        )
                        self._thread.start()
                    self._cond.notify()
            if act:
                self._caught_up = False
                self._commits = 0
            # The next commit that has something to ask: the thread's turn (every)
            # or a finish's (finish_every), whichever comes first; at least the next.
            self._quiet_limit = max(
                1, min(self.every - self._since_wake, self.finish_every - self._commits)
            )
        if act == "finish":
            self.finishes += 1
            _checkpoint(conn, self.path)
        elif act == "inline":
            # The thread is stuck (a long reader pins the WAL) or gone: keep the WAL
            # bounded the way SQLite's own automatic checkpoint would have.
            self.inline += 1
            _checkpoint(conn, self.path)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                finish_due = self._finish_due
            try:
                # mode=rw: never create the file again if it was removed meanwhile.
                uri = self.path.resolve().as_uri() + "?mode=rw"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
            except sqlite3.Error as exc:
                log.warning("guardpool: checkpoint of %s failed: %s", self.path, exc)
            else:
                try:
                    # Commits go on meanwhile: before a finish, catch up until little is
                    # left (each round copies what the last one let in).
                    for _ in range(_ROUNDS if finish_due else 1):
                        if _checkpoint(conn, self.path) <= _LEFT_FOR_FINISH:
                            break
                finally:
                    conn.close()
            with self._cond:
                self._wanted = False
                self._caught_up = finish_due
            self.checkpoints += 1

    def close(self) -> None:
        """Stop the thread (after a checkpoint it is taking); the WAL stays valid."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)


def _checkpoint(conn: sqlite3.Connection, path: Path) -> int:
    """A PASSIVE checkpoint; the frames it left in the WAL (as SQLite reports them)."""
    try:
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error as exc:
        # The data is safe in the WAL; the next round tries again.
        log.warning("guardpool: checkpoint of %s failed: %s", path, exc)
        return 1 << 30
    _busy, frames, copied = row
    return max(0, int(frames) - int(copied))

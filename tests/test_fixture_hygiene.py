"""The test servers die with the run that started them, and leave no directory behind.

A PostgreSQL server started by ``tests/conftest.py`` was found running with ppid 1
hours after the helper run that started it was cut short. Here a real helper
process starts a real redis-server / PostgreSQL through the same fixture classes
and is SIGKILLed (no cleanup code runs): the servers must go on their own
(``die_with_parent``), and the next run's sweep removes the PostgreSQL directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import PostgresServer, RedisServer, sweep_stale_pg_dirs
from .processes import running

ROOT = Path(__file__).resolve().parent.parent

HELPER = """
import sys, time
from pathlib import Path
import psutil
from tests.conftest import PostgresServer, RedisServer, postgres_bindir
if sys.argv[1] == "redis":
    server = RedisServer(Path(sys.argv[2]))
    server.start()
    print(server.proc.pid, flush=True)
else:
    server = PostgresServer(postgres_bindir())
    server.start()
    kids = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    print(server.root, server.proc.pid, *kids, flush=True)
time.sleep(600)
"""


def _start_helper(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert helper.stdout is not None
    line = helper.stdout.readline().split()
    assert line, f"the helper printed nothing (exit {helper.wait(timeout=60)})"
    return helper, line


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after ``seconds`` (checked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_redis_server_dies_with_the_process_that_started_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # redis_server: the same skip/fail rule when redis-server is missing.
    helper, line = _start_helper("redis", str(tmp_path))
    pid = int(line[0])
    try:
        assert running(pid)
        helper.kill()  # SIGKILL: no fixture teardown, no atexit
        helper.wait(timeout=30)
        assert _gone_within([pid], 30) == [], "redis-server outlived its parent"
    finally:
        helper.kill()
        helper.wait(timeout=30)
        if running(pid):  # the server this test started, left over: stop it
            os.kill(pid, signal.SIGKILL)


def test_a_postgres_server_dies_with_the_process_that_started_it_and_is_swept(
    postgres_server: PostgresServer,
) -> None:
    # postgres_server: the same skip/fail rule when PostgreSQL is missing.
    helper, line = _start_helper("postgres")
    root, pids = Path(line[0]), [int(p) for p in line[1:]]
    try:
        assert running(pids[0])
        # the postmaster and its background processes (a backend may have left already)
        pids = [p for p in pids if running(p)]
        assert len(pids) > 1
        assert str(helper.pid) in root.name
        helper.kill()
        helper.wait(timeout=30)
        left = _gone_within(pids, 60)
        assert left == [], f"postgres processes outlived their parent: {left}"
        assert root.exists()  # nobody was left to remove it...
        assert root in sweep_stale_pg_dirs(str(root.parent))  # ...the next run does
        assert not root.exists()
    finally:
        helper.kill()  # when an assertion above failed before the kill
        helper.wait(timeout=30)
        if running(pids[0]):
            os.kill(pids[0], signal.SIGQUIT)
            _gone_within(pids, 30)
        shutil.rmtree(root, ignore_errors=True)


def test_the_sweep_leaves_live_runs_and_live_servers_alone(tmp_path: Path) -> None:
    live = tmp_path / f"guardpool-pg-{os.getpid()}-live"
    dead_owner_live_server = tmp_path / "guardpool-pg-999999999-busy"
    dead = tmp_path / "guardpool-pg-999999998-done"
    unnamed = tmp_path / "guardpool-pg-abcdef"
    for d in (live, dead_owner_live_server, dead, unnamed):
        (d / "data").mkdir(parents=True)
    (dead_owner_live_server / "data" / "postmaster.pid").write_text(f"{os.getpid()}\n/x\n")
    (dead / "data" / "postmaster.pid").write_text("999999997\n/x\n")
    assert sweep_stale_pg_dirs(str(tmp_path)) == [dead]
    assert live.exists() and dead_owner_live_server.exists() and unnamed.exists()
    assert not dead.exists()

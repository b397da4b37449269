"""Leak scenarios for tests/test_pool.py, each run in a fresh interpreter.

    python tests/leak_host.py timeouts|shutdown

A leak check compares this process's open fds before and after: it only means
something when nothing else in the process opens or closes fds meanwhile. Inside
the pytest process other tests' module-scoped pools heal and the garbage collector
closes sockets that earlier tests dropped, at any moment (a CI run failed the
100-timeouts check on an fd that was not the pool's). Here the pool under test is
the only thing that owns fds. Prints one JSON object; the test asserts on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from guardpool import GuardPool
from tests.waiting import wait_for

G = "tests.pool_guards:"


def fds() -> dict[str, str]:
    """fd number -> what it is; inode numbers and pids dropped (a replacement worker's
    socket is a new socket in the same slot; its /proc/PID/stat has another pid)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, closed by now
            link = re.sub(r":\[\d+\]$", "", os.readlink(f"/proc/self/fd/{name}"))
            out[name] = re.sub(r"^/proc/\d+/", "/proc/PID/", link)
    return out


def children() -> set[int]:
    alive = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def warm(fds_running: dict[str, str]) -> bool:
    """One poll of the steady state: 4 pool processes, the warm pool's fd kinds."""
    time.sleep(0.02)
    return len(children()) == 4 and Counter(fds().values()) == Counter(fds_running.values())


def timeouts() -> dict[str, Any]:
    shm_before = set(os.listdir("/dev/shm"))
    fds_before = fds()
    with GuardPool(workers=2, job_timeout_ms=30, preload=["tests.pool_guards"]) as p:
        p.submit(G + "double", 1).result(timeout=5)
        fds_running = fds()
        children_warm = len(children())
        # Counted from here: under load the warm-up job itself can miss its 30 ms
        # deadline (101 timeouts were seen on a loaded machine).
        timeouts_before = p.stats().timeouts
        outcomes = []
        for _ in range(50):
            pair = [p.submit(G + "sleep", 5) for _ in range(2)]
            outcomes += [f.result(timeout=5).outcome for f in pair]
        stats = p.stats()
        # Killed workers take a moment to die and their replacements to start: wait
        # for the steady state (zygote + 2 workers + the spare, and the warm pool's
        # fds), seen on several polls in a row. Compared as kinds, not slots: a
        # replacement's socket and pidfd may land in each other's numbers.
        steady = wait_for(lambda: all(warm(fds_running) for _ in range(3)), timeout=10)
        n_children = len(children())
        fds_after = fds()
    wait_for(lambda: not children(), timeout=10)
    return {
        "outcomes": sorted(set(outcomes)),
        "n_outcomes": len(outcomes),
        "timeouts": stats.timeouts - timeouts_before,
        "killed": stats.killed,
        "steady": steady,
        "children_warm": children_warm,
        "children_running": n_children,
        "fds_running": sorted(Counter(fds_running.values()).items()),
        "fds_after_kills": sorted(Counter(fds_after.values()).items()),
        "children_after": sorted(children()),
        "fds_gained": sorted(set(fds().items()) - set(fds_before.items())),
        "fds_lost": sorted(set(fds_before.items()) - set(fds().items())),
        # /dev/shm is machine-wide: a PostgreSQL server started meanwhile by another
        # test run on the same machine adds its segments; anything else new is ours.
        "new_shm": sorted(
            name
            for name in set(os.listdir("/dev/shm")) - shm_before
            if not name.startswith("PostgreSQL.")
        ),
    }


def shutdown() -> dict[str, Any]:
    fds_before = fds()
    p = GuardPool(workers=2, preload=["tests.pool_guards"]).start()
    info = p.submit("guardpool.worker.probe:probe", None).result(timeout=5).value
    workdir_root = os.path.dirname(info["cwd"])
    n_children = len(children())
    in_flight = p.submit(G + "sleep", 10)
    p.shutdown()
    try:
        p.submit(G + "double", 1)
        submit_after = "accepted"
    except RuntimeError as exc:
        submit_after = f"RuntimeError: {exc}"
    return {
        "children_running": n_children,
        "in_flight_error": in_flight.result(timeout=1).error,
        "children_after": sorted(children()),
        "fds_gained": sorted(set(fds().items()) - set(fds_before.items())),
        "fds_lost": sorted(set(fds_before.items()) - set(fds().items())),
        "workdir_left": os.path.exists(workdir_root),
        "submit_after": submit_after,
    }


if __name__ == "__main__":
    print(json.dumps({"timeouts": timeouts, "shutdown": shutdown}[sys.argv[1]]()))

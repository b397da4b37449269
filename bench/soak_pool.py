"""Soak the pool with a hostile mix from several threads; every job must be answered right.

    .venv/bin/python bench/soak_pool.py [SECONDS]      # default 120

Four caller threads submit batches of 1-6 jobs for SECONDS: hangs in Python and in C
(killed at 20-150 ms deadlines), segfaults, memory bombs, guards that raise or return
what cannot be encoded, 10 B-900 KB echoes and trivial jobs, on 3 workers. Prints the
pool's counters, the host's open descriptors before and after, and every job whose
outcome was not the expected one (the run fails, exit 1, if there is any).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool import GuardPool

G = "tests.pool_guards:"
EXPECTED = {
    "spin": "timeout",
    "native_hang": "timeout",
    "segfault": "crash",
    "memory_bomb": "error",
    "double": "ok",
    "echo": "ok",
    "raises": "error",
    "self_list": "error",
}
KINDS = (
    ["spin"] * 6
    + ["native_hang"] * 2
    + ["segfault"] * 3
    + ["memory_bomb"] * 2
    + ["double"] * 70
    + ["echo"] * 10
    + ["raises"] * 4
    + ["self_list"] * 3
)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    wrong: list[tuple[str, str, str]] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()
    with GuardPool(
        workers=3,
        preload=["tests.pool_guards"],
        memory_mb=128,
        job_cpu_ms=5000,
        job_timeout_ms=3000,
    ) as pool:
        for _ in range(50):
            pool.submit(G + "double", 1).result(timeout=10)
        fd0 = _fds()
        stop = time.monotonic() + seconds

        def caller(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                batch = []
                for _ in range(rng.randint(1, 6)):
                    kind = rng.choice(KINDS)
                    value: Any = 3
                    timeout = 3000
                    if kind == "echo":
                        value = "x" * rng.choice([10, 1000, 300_000, 900_000])
                    elif kind in ("spin", "native_hang"):
                        value, timeout = 30, rng.choice([20, 50, 150])
                    batch.append((kind, value, pool.submit(G + kind, value, timeout_ms=timeout)))
                for kind, value, future in batch:
                    try:
                        r = future.result(timeout=30)
                    except Exception as exc:  # a soak reports, never stops
                        with lock:
                            wrong.append((kind, "exception", repr(exc)))
                        continue
                    ok = r.outcome == EXPECTED[kind] and (
                        kind not in ("double", "echo")
                        or r.value == (2 * value if kind == "double" else value)
                    )
                    with lock:
                        counts[kind] = counts.get(kind, 0) + 1
                        if not ok:
                            wrong.append((kind, r.outcome, r.error))

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)  # deferred clean-up of the last killed workers
        for _ in range(20):
            pool.submit(G + "double", 1).result(timeout=10)
        print("stats", pool.stats())
        print("descriptors before/after", fd0, _fds())
    print("jobs", sum(counts.values()), counts)
    print("wrong", len(wrong), wrong[:10])
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

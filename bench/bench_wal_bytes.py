"""WAL bytes and CPU per check()+settle() pair by SQLite page size, alternating.

    python bench/bench_wal_bytes.py [--pairs N] [--rounds R]

guardpool creates its SQLite files with ``sqlite_wal.PAGE_SIZE`` pages; the
baseline is SQLite's default 4,096, measured in the same run. Each round opens a
new file per page size (the size is fixed when a file is created), runs N pairs
of bench_enforcer.py's throughput policy (2 RE2 banks, 2 limits, store and
ledger in one file) with checkpoints off (so the WAL holds every frame written),
and reads the WAL's growth. Bytes do not depend on load; the CPU column
(time.process_time, all threads) does: read it as a trend over the rounds.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_enforcer

from guardpool import Enforcer, Usage, sqlite_wal


def one(page_size: int, pairs: int) -> tuple[float, float]:
    """(WAL bytes per pair, CPU µs per pair) on a new file with ``page_size`` pages."""
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "pairs.db"
        conn = sqlite3.connect(db)
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        policy = bench_enforcer.policy(db, "sqlite", bench_enforcer.BANKS)
        with Enforcer.from_config(policy) as e:
            run = e.run("bench")
            op = bench_enforcer.OP
            for _ in range(200):
                run.settle(run.check(op), Usage(tokens=90))
            wal = Path(f"{db}-wal")
            before = wal.stat().st_size
            cpu = time.process_time()
            for _ in range(pairs):
                run.settle(run.check(op), Usage(tokens=90))
            cpu = time.process_time() - cpu
            grown = wal.stat().st_size - before
        return grown / pairs, cpu / pairs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Checkpoints would copy frames out of the WAL and restart it mid-measure.
    sqlite_wal.Checkpointer.__init__.__kwdefaults__.update(every=10**12, finish_every=10**12)
    sizes = (4096, sqlite_wal.PAGE_SIZE)
    got: dict[int, list[tuple[float, float]]] = {s: [] for s in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            got[size].append(one(size, args.pairs))
    print(
        f"check()+settle() pairs on SQLite (store + ledger, one file), {args.rounds} rounds "
        f"x {args.pairs} pairs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'page size':>10} {'WAL bytes/pair':>15} {'CPU us/pair (rounds)':>30}")
    for size in sizes:
        wal = statistics.median(b for b, _ in got[size])
        cpus = " ".join(f"{c:.0f}" for _, c in got[size])
        print(f"{size:>10} {wal:>15,.0f} {cpus:>30}")
    base, ours = (statistics.median(b for b, _ in got[s]) for s in sizes)
    cpu_base, cpu_ours = (statistics.median(c for _, c in got[s]) for s in sizes)
    print(
        f"{sqlite_wal.PAGE_SIZE} / 4096: WAL bytes {ours / base:.2f}x, "
        f"CPU per pair {cpu_ours / cpu_base:.2f}x (median of rounds)"
    )


if __name__ == "__main__":
    main()

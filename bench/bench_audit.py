"""Audit ledger throughput: appends/s in batches of 5 (one enforcer check), verify speed.

    .venv/bin/python bench/bench_audit.py [--batches N] [--dir DIR] [--processes P]

Runs ``synchronous=NORMAL`` (the default) and ``FULL`` on a file in DIR (default:
a temporary directory; put it on the disk you will deploy on, tmpfs flatters).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from guardpool.audit import AuditEvent, Ledger
from guardpool.audit.ledger import Synchronous

BATCH = 5


def batch(i: int, ledger: Ledger) -> list[AuditEvent]:
    """What one check writes: check, reserve, verdict, decision, settle (realistic sizes)."""
    common: dict[str, Any] = {
        "run_id": f"run-{i % 50}",
        "principal": "agent-7",
        "labels": ("exe:llm:gpt-4o",),
        "decision_id": f"d-{i:08d}",
    }
    return [
        AuditEvent(kind="check", **common, **ledger.input_fields(f"prompt {i} " * 40)),
        AuditEvent(kind="reserve", **common, usage={"exe:llm:*:tokens": 2000, "exe:llm:*:cost": 4}),
        AuditEvent(
            kind="verdict",
            **common,
            guard="no-keys",
            outcome="allow",
            duration_ms=0.12,
            detail={"effect": "allow", "phase": "before"},
        ),
        AuditEvent(kind="decision", **common, outcome="allow"),
        AuditEvent(kind="settle", **common, usage={"tokens": 1873, "cost": 3, "wall_ms": 812}),
    ]


def appends(path: Path, batches: int, synchronous: Synchronous = "NORMAL") -> list[float]:
    """Latency of each append (seconds), one thread."""
    with Ledger(path, synchronous=synchronous) as ledger:
        work = [batch(i, ledger) for i in range(batches)]
        latencies = []
        for events in work:
            start = time.perf_counter()
            ledger.append(events)
            latencies.append(time.perf_counter() - start)
        return latencies


def _worker(args: tuple[str, int]) -> list[float]:
    return appends(Path(args[0]), args[1])


def show(label: str, latencies: list[float], elapsed: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = ms[len(ms) // 2], ms[int(len(ms) * 0.99)]
    print(
        f"{label:<22} {len(ms) / elapsed:>7.0f} appends/s ({len(ms) * BATCH / elapsed:>6.0f}"
        f" events/s)  p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {ms[-1]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        print(f"batches of {BATCH} events, one transaction each")
        for mode in ("NORMAL", "FULL"):
            latencies = appends(base / f"{mode}.db", args.batches, mode)
            show(f"synchronous={mode}", latencies, sum(latencies))
        Ledger(base / "multi.db").close()
        per = args.batches // args.processes
        # Several processes on one file serialise on SQLite's write lock; waiters
        # sleep in SQLite's busy handler, which is what the p99 shows.
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            start = time.perf_counter()
            results = pool.map(_worker, [(str(base / "multi.db"), per)] * args.processes)
            elapsed = time.perf_counter() - start
        show(f"{args.processes} processes NORMAL", [x for r in results for x in r], elapsed)
        with Ledger(base / "NORMAL.db") as ledger:
            start = time.perf_counter()
            report = ledger.verify()
            elapsed = time.perf_counter() - start
        assert report.ok
        print(f"verify: {report.checked / elapsed:>8.0f} events/s ({report.checked} events)")


if __name__ == "__main__":
    main()

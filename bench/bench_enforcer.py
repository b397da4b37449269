"""check() end to end against a bare pool job, and reserve+settle throughput.

    python bench/bench_enforcer.py [--quick]

Policy: 3 guards (2 RE2 regex banks, 1 callable) and 2 limits, on the sqlite
store and ledger (the embedded default). Every figure is measured in this run,
on this machine, and printed as a ratio to its baseline:

- check() p50/p99 vs a bare ``GuardPool.submit_guard`` job of the same callable
  (goal: check() <= 3x);
- check()+settle() pairs per second on memory and sqlite stores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guardpool import Enforcer, Operation, Usage


def policy(tmp: Path, backend: str) -> dict[str, Any]:
    db = str(tmp / f"{backend}.db")
    return {
        "pool": {"workers": 2},
        "guard": [
            {
                "name": "keys",
                "ops": ["exe:llm:*"],
                "deny_regex": [
                    "AKIA[0-9A-Z]{16}",
                    "-----BEGIN [A-Z ]*PRIVATE KEY-----",
                    "gh[pousr]_[A-Za-z0-9]{36}",
                ],
            },
            {
                "name": "injection",
                "ops": ["exe:llm:*"],
                "deny_regex": [
                    "(?i)ignore (all )?previous instructions",
                    "(?i)you are now in developer mode",
                ],
            },
            {"name": "callable", "ops": ["exe:llm:*"], "call": "examples.bench_guards:allow"},
        ],
        "limits": {
            "exe:llm:*": {"calls": 10**9, "tokens": 10**12, "cost": "$1000000"},
            "*": {"calls": 10**9},
        },
        "store": {"backend": backend, "path": db},
        "audit": {"path": db},
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_each(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 300 if args.quick else 3000
    text = "please summarise this document " * 32  # ~1 KB
    op = Operation(labels=("exe:llm:gpt-4o",), input=text, estimate=Usage(tokens=100))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with Enforcer.from_config(policy(tmp, "sqlite")) as e:
            assert e.pool is not None
            pool = e.pool
            run = e.run("bench")
            for _ in range(50):  # warm up workers and sqlite pages
                run.settle(run.check(op), Usage(tokens=90))
            bare = time_each(
                lambda: pool.submit_guard("callable", text, labels=op.labels).result(), n
            )
            check = time_each(lambda: run.check(op), n)
        print(f"check() end to end, 3 guards + 2 limits, sqlite store + ledger, n={n}")
        print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}")
        for name, s in (("bare pool job", bare), ("check()", check)):
            print(f"{name:24}{statistics.median(s):10.3f}{percentile(s, 0.99):10.3f}")
        r50 = statistics.median(check) / statistics.median(bare)
        r99 = percentile(check, 0.99) / percentile(bare, 0.99)
        print(f"ratio check/bare: p50 {r50:.2f}x, p99 {r99:.2f}x (goal <= 3x)")
        print()
        print(f"check()+settle() pairs per second (same policy), n={n}")
        rates = {}
        for backend in ("memory", "sqlite"):
            with Enforcer.from_config(policy(tmp, backend)) as e:
                run = e.run(f"rate-{backend}")
                start = time.perf_counter()
                for _ in range(n):
                    run.settle(run.check(op), Usage(tokens=90))
                rates[backend] = n / (time.perf_counter() - start)
            print(f"{backend:24}{rates[backend]:10.0f}/s")
        print(f"ratio sqlite/memory: {rates['sqlite'] / rates['memory']:.2f}x")


if __name__ == "__main__":
    main()

"""check() latency against a bare pool job, and check()+settle() throughput.

    python bench/bench_enforcer.py [--quick] [--rounds N] [--idle-poll US,..] [--steps]

Every figure is measured in this run, on this machine, and printed beside the
baseline it is judged against (the machine may be shared: read the ratios).

1. Latency. Policy: 3 guards (2 RE2 banks, 1 callable) and 2 limits; SQLite
   store and ledger in one file (the embedded default). Baseline: a bare
   ``GuardPool.submit_guard`` job of the same callable on the same pool.
   Goals: check() p50 <= 2x the bare job, p99 <= 4x, both sent GAP_S apart (a
   check's job finds its worker asleep; a job sent back to back finds it still
   looking for work, and the back-to-back ratio is printed too). Floor: the bare
   job plus the check's transaction run alone as raw SQLite (a check answers
   after its guard and after its commit).
2. Throughput. Policy: 2 RE2 banks (regex-only guards) and 2 limits.
   check()+settle() pairs per second from one thread, on SQLite (store and
   ledger in one file) and on the memory store (ledger in SQLite). Floor: the
   pair's SQL alone (``bench_enforcer_floor.py``: the two transactions with the
   same statements and rows, no Python above them), since a pair needs two
   commits (the check's, the settle's) whatever the code does. Goals: SQLite
   >= 5,000 pairs/s, memory >= 20,000 pairs/s.
   Rates are also given per CPU-second of this process (time.process_time),
   which a busy machine disturbs less than wall time.

Rounds alternate the variants and the medians are printed, so a burst of load
from elsewhere does not land on one variant only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_enforcer_floor import SqlFloor

from guardpool import Enforcer, Operation, Usage

BANKS = [
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
]
CALLABLE = {"name": "callable", "ops": ["exe:llm:*"], "call": "examples.bench_guards:allow"}
LIMITS = {
    "exe:llm:*": {"calls": 10**9, "tokens": 10**12, "cost": "$1000000"},
    "*": {"calls": 10**9},
}
TEXT = "please summarise this document " * 32  # ~1 KB
OP = Operation(labels=("exe:llm:gpt-4o",), input=TEXT, estimate=Usage(tokens=100))


def policy(db: Path, backend: str, guards: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pool": {"workers": 2},
        "guard": guards,
        "limits": LIMITS,
        "store": {"backend": backend, "path": str(db)},
        "audit": {"path": str(db)},
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_each(fn: Callable[[], object], n: int, gap_s: float = 0.0) -> list[float]:
    """``fn``'s time, ``n`` times; ``gap_s``: spin this long before each (not timed)."""
    out = []
    for _ in range(n):
        if gap_s:
            until = time.perf_counter() + gap_s
            while time.perf_counter() < until:
                pass
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


# A check's guard job reaches a worker that has been idle for the previous check's
# transaction plus this check's work before its job (220-300 µs in a loop of checks),
# longer than the worker's look for work (`[pool] idle_poll_us`, 50 µs): the worker is
# asleep, and on a VM waking it costs 80-150 µs more than a job sent back to back,
# which finds it still looking (19-26 µs here; 100 -> 73-133, 300 -> 105-147, 1,000 ->
# 145-203 µs apart). The like-for-like baseline is a bare job sent after the same
# idle time, the caller busy meanwhile as it is in a check: both are spun this long.
GAP_S = 300e-6


def rates(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(per wall second, per CPU second of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def latency(tmp: Path, n: int, rounds: int) -> None:
    warm: list[float] = []
    bare: list[float] = []
    check: list[float] = []
    spaced: list[float] = []
    txn: list[float] = []
    with Enforcer.from_config(policy(tmp / "latency.db", "sqlite", [*BANKS, CALLABLE])) as e:
        assert e.pool is not None
        pool = e.pool
        run = e.run("bench")
        for _ in range(50):  # warm up workers and pages
            run.settle(run.check(OP), Usage(tokens=90))
        # The check's transaction alone: its counters read, reservation, record and
        # 6 events (check, reserve, 3 verdicts, decision) as raw SQLite.
        floor = SqlFloor(tmp / "latency-floor.db", tmp / "latency.db", joint=True, check_events=6)
        for _ in range(50):
            floor.pair()

        def job() -> object:
            return pool.submit_guard("callable", TEXT, labels=OP.labels).result()

        for _ in range(rounds):
            warm += time_each(job, n)
            bare += time_each(job, n, GAP_S)
            check += time_each(lambda: run.check(OP), n)
            spaced += time_each(lambda: run.check(OP), n, GAP_S)
            txn += time_each(floor.check, n)
        floor.close()
    gap = f"{GAP_S * 1e6:.0f} µs apart"
    print(f"1. check() latency: 3 guards (2 banks + 1 callable) + 2 limits, sqlite, n={len(check)}")
    print(f"   {load()}")
    print(f"{'':44}{'p50 ms':>10}{'p99 ms':>10}")
    for name, s in (
        ("bare pool job, back to back", warm),
        (f"bare pool job, {gap}", bare),
        ("check(), back to back", check),
        (f"check(), {gap}", spaced),
        ("the check's transaction alone", txn),
    ):
        print(f"{name:44}{statistics.median(s):10.3f}{percentile(s, 0.99):10.3f}")
    b50, c50, t50 = statistics.median(bare), statistics.median(spaced), statistics.median(txn)
    r50 = c50 / b50
    r99 = percentile(spaced, 0.99) / percentile(bare, 0.99)
    print(
        f"ratio check/bare, both {gap} (the worker asleep when the job comes, as a check's "
        f"job always finds it): p50 {r50:.2f}x (goal <= 2x), p99 {r99:.2f}x (goal <= 4x)"
    )
    w50 = statistics.median(check) / statistics.median(warm)
    w99 = percentile(check, 0.99) / percentile(warm, 0.99)
    print(
        "ratio check (back to back) / bare job back to back (the worker still looking for "
        f"work): p50 {w50:.2f}x, p99 {w99:.2f}x"
    )
    # A check answers after its guard's job and after its own commit (the decision is
    # written before it is answered, and the write lock is not held during a guard).
    print(
        f"floor: bare job ({gap}) + the check's transaction = {b50 + t50:.3f} ms p50, "
        f"{(b50 + t50) / b50:.2f}x that bare job; check() ({gap}) is {c50 / (b50 + t50):.2f}x "
        "that floor"
    )
    if (b50 + t50) / b50 > 2:
        print("note: the p50 goal (2x) is below this floor on this machine")


def throughput(tmp: Path, n: int, rounds: int) -> None:
    variants: dict[str, Callable[[], tuple[float, float]]] = {}
    opened = []
    floors = []
    for backend in ("sqlite", "memory"):
        e = Enforcer.from_config(policy(tmp / f"{backend}.db", backend, BANKS)).start()
        opened.append(e)
        run = e.run(backend)

        def pair(run: Any = run) -> None:
            run.settle(run.check(OP), Usage(tokens=90))

        for _ in range(50):
            pair()
        variants[backend] = lambda pair=pair: rates(pair, n)
        # The same pair's SQL alone, rows copied from this enforcer's file.
        floor = SqlFloor(
            tmp / f"{backend}-floor.db", tmp / f"{backend}.db", joint=backend == "sqlite"
        )
        floors.append(floor)
        for _ in range(50):
            floor.pair()
        variants[f"{backend} floor"] = lambda floor=floor: rates(floor.pair, n)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            got[name].append(measure())
    for e in opened:
        e.close()
    for floor in floors:
        floor.close()
    wall = {k: statistics.median(r[0] for r in v) for k, v in got.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in got.items()}
    print()
    print(f"2. check()+settle() pairs/s: 2 RE2 banks + 2 limits, {rounds} rounds x {n} pairs")
    print(f"   {load()}")
    print(f"{'':34}{'per wall s':>12}{'per CPU s':>12}{'goal':>9}")
    for key, name, goal in (
        ("sqlite", "sqlite (one file)", 5000),
        ("memory", "memory store", 20000),
    ):
        print(f"{name:34}{wall[key]:12.0f}{cpu[key]:12.0f}{goal:9,}")
        floor_name = "  floor: the pair's SQL alone"
        print(f"{floor_name:34}{wall[key + ' floor']:12.0f}{cpu[key + ' floor']:12.0f}")
    for key in ("sqlite", "memory"):
        print(
            f"{key} pairs / floor: {wall[key] / wall[key + ' floor']:.2f}x wall, "
            f"{cpu[key] / cpu[key + ' floor']:.2f}x CPU"
        )
    for key, goal in (("sqlite", 5000), ("memory", 20000)):
        floor_cpu = cpu[key + " floor"]
        if goal > floor_cpu:
            # Two commits per pair, each holding the decision's events (the memory
            # store's too: the ledger is SQLite): no code above SQLite can pass this.
            print(
                f"note: the {key} goal ({goal:,}/s) is above this machine's floor for the "
                f"pair's SQL alone ({floor_cpu:,.0f}/s per CPU s)"
            )


def idle_poll(tmp: Path, values: list[int], turns: int = 8, per: int = 250) -> None:
    """check() latency with the latency policy at several ``[pool] idle_poll_us``, in turns.

    check+settle pairs back to back (a check's job then comes 250-350 µs after the last,
    past a short look for work, docs/pool.md "Seventh pass"); the host's CPU per pair.
    """
    runs: dict[int, tuple[Enforcer, Any]] = {}
    for us in values:
        cfg = policy(tmp / f"poll-{us}.db", "sqlite", [*BANKS, CALLABLE])
        cfg["pool"]["idle_poll_us"] = us
        e = Enforcer.from_config(cfg).start()
        run = e.run("bench")
        for _ in range(300):
            run.settle(run.check(OP), Usage(tokens=90))
        runs[us] = (e, run)
    samples: dict[int, list[float]] = {us: [] for us in values}
    cpu: dict[int, float] = dict.fromkeys(values, 0.0)
    try:
        for _ in range(turns):
            for us, (_e, run) in runs.items():
                c0 = time.process_time()
                for _ in range(per):
                    t = time.perf_counter()
                    decision = run.check(OP)
                    samples[us].append((time.perf_counter() - t) * 1e3)
                    run.settle(decision, Usage(tokens=90))
                cpu[us] += time.process_time() - c0
    finally:
        for e, _run in runs.values():
            e.close()
    print(f"check() with [pool] idle_poll_us, {turns} turns x {per} pairs each; {load()}")
    for us in values:
        s = samples[us]
        print(
            f"   idle_poll_us {us:5}: check p50 {statistics.median(s):.3f} ms, "
            f"p99 {percentile(s, 0.99):.3f} ms; host CPU per pair "
            f"{cpu[us] / (turns * per) * 1e6:.0f} µs"
        )


def steps(tmp: Path, n: int = 600) -> None:
    """Where a check's time goes: each step of the latency policy's check timed alone.

    Wrappers (``perf_counter``) around the snapshot read, the job's submission, the wait
    for its answer, the guards phase (banks and job) and the joint transaction, on one
    running enforcer (private attributes: a measuring tool, not an API).
    """
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                times.setdefault(name, []).append((time.perf_counter() - start) * 1e6)

        return wrapper

    with Enforcer.from_config(policy(tmp / "steps.db", "sqlite", [*BANKS, CALLABLE])) as e:
        run = e.run("bench")
        for _ in range(100):
            run.settle(run.check(OP), Usage(tokens=90))
        svc = e._services
        assert svc.joint is not None
        submit = svc.guards._submit

        def submit_timed(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            future = submit(*args, **kw)
            times.setdefault("submit the guard job", []).append((time.perf_counter() - start) * 1e6)
            future.result = timed("wait for its answer", future.result)
            return future

        svc.store.states = timed("snapshot read", svc.store.states)  # type: ignore[method-assign]
        svc.guards._submit = submit_timed  # type: ignore[method-assign]
        svc.guards.run = timed("guards (banks + job)", svc.guards.run)  # type: ignore[method-assign]
        joint = svc.joint.joint
        checks: list[float] = []
        for _ in range(n):
            svc.joint.joint = timed("the check's transaction", joint)  # type: ignore[method-assign]
            start = time.perf_counter()
            decision = run.check(OP)
            checks.append((time.perf_counter() - start) * 1e6)
            svc.joint.joint = joint  # type: ignore[method-assign]
            run.settle(decision, Usage(tokens=90))
    print(f"check() step by step, n={n}, check+settle pairs back to back; {load()}")
    print(f"   {'check(), whole':32} p50 {statistics.median(checks):6.0f} µs")
    for name, s in times.items():
        print(f"   {name:32} p50 {statistics.median(s):6.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--idle-poll",
        metavar="US,US,...",
        help="only check() latency at these [pool] idle_poll_us values, e.g. 0,50,500",
    )
    parser.add_argument(
        "--steps", action="store_true", help="only where a check's time goes, step by step"
    )
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as d:
        if args.steps:
            steps(Path(d))
            return
        if args.idle_poll:
            try:
                values = [int(v) for v in args.idle_poll.split(",")]
            except ValueError:
                parser.error(f"--idle-poll: comma-separated integers, not {args.idle_poll!r}")
            idle_poll(Path(d), values)
            return
        latency(Path(d), n, args.rounds)
        throughput(Path(d), n, args.rounds)


if __name__ == "__main__":
    main()

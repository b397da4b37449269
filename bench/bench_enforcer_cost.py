"""Instructions per check()+settle() pair and per ledger append, counted under callgrind.

    python bench/bench_enforcer_cost.py [--runs N] [--root DIR]
    python bench/bench_enforcer_cost.py --bytecodes [--root DIR]

A shared machine moves wall-clock and CPU-time rates by 10-30% from one run to
the next; instructions do not move with load. Each figure is the main thread's
instructions for (N2 - N1) pairs (or appends) divided by N2 - N1, so the start-up
(imports, policy, files) cancels out. WAL checkpoints are switched off (their
thread's progress under valgrind depends on scheduling) and hashing is seeded
(PYTHONHASHSEED=0); what is left varies by a few percent between runs (random
decision ids, timestamps), hence ``--runs`` and the median.

``--bytecodes`` needs no valgrind: it counts the Python bytecodes one pair
executes (``sys.settrace`` opcode events; exactly the same on every run), split
by module, so each package's share of the Python is plain (``runner/`` and
``policy/``: the enforcer's; ``store/``: the budget arithmetic; ``audit/``:
encoding and chaining the events). It does not see time spent in C (SQLite,
RE2, hashing, msgspec), which the instruction counts include.

``--root`` measures another checkout (e.g. ``git archive main | tar -x -C /tmp/old``)
with this interpreter: compare two trees in one sitting, alternating.
Needs ``valgrind`` (apt-get install valgrind). Policy: bench_enforcer.py's
throughput policy (2 RE2 banks, 2 limits); appends: batches of 5 and 2 events
(what a memory-store pair writes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

INNER = r"""
import sys, tempfile
from pathlib import Path
root, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root + "/bench")
sys.path.insert(0, root)
from guardpool import Enforcer, Usage
from guardpool.audit import AuditEvent, Ledger


def quiet(*checkpointers):
    for ck in checkpointers:
        if ck is not None:
            ck.every = ck.finish_every = 10**9


with tempfile.TemporaryDirectory() as d:
    if what == "ledger":
        ev = AuditEvent(kind="verdict", run_id="p", labels=("exe:llm:gpt-4o",),
                        decision_id="a" * 32, guard="keys", outcome="allow",
                        duration_ms=0.0123, detail={"effect": "allow", "phase": "before"})
        ledger = Ledger(Path(d) / "l.db")
        quiet(ledger._checkpointer)
        for _ in range(n):
            ledger.append([ev] * 5)
            ledger.append([ev] * 2)
        ledger.close()
    else:
        import bench_enforcer as b
        e = Enforcer.from_config(b.policy(Path(d) / "x.db", what, b.BANKS)).start()
        quiet(e.ledger._checkpointer, getattr(e.store, "_checkpointer", None))
        run = e.run("p")
        for _ in range(n):
            run.settle(run.check(b.OP), Usage(tokens=90))
        e.close()
"""

SMALL, LARGE = 50, 550

BYTECODES = r"""
import collections, sys, tempfile
from pathlib import Path
root, what, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root + "/bench")
sys.path.insert(0, root)
from guardpool import Enforcer, Usage
import bench_enforcer as b

counts = collections.Counter()


def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    if event == "opcode":
        counts[frame.f_code.co_filename] += 1
    return tracer


with tempfile.TemporaryDirectory() as d:
    e = Enforcer.from_config(b.policy(Path(d) / "x.db", what, b.BANKS)).start()
    run = e.run("p")
    for _ in range(200):
        run.settle(run.check(b.OP), Usage(tokens=90))
    sys.settrace(tracer)
    for _ in range(n):
        run.settle(run.check(b.OP), Usage(tokens=90))
    sys.settrace(None)
    e.close()
for path, count in counts.items():
    print(path, count)
"""


def main_thread_instructions(root: str, what: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                INNER,
                root,
                what,
                str(n),
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        # With --separate-threads, the main thread's profile ends in -01.
        text = next(Path(d).glob("cg.out*-01")).read_text()
    found = re.search(r"^totals:\s+(\d+)", text, re.M)
    if found is None:
        raise SystemExit("callgrind wrote no totals line")
    return int(found.group(1))


def per_unit(root: str, what: str) -> float:
    small = main_thread_instructions(root, what, SMALL)
    large = main_thread_instructions(root, what, LARGE)
    return (large - small) / (LARGE - SMALL)


def bytecodes(root: str, what: str, n: int = 200) -> dict[str, float]:
    """Python bytecodes per pair, by package part (runner/, policy/, store/, audit/, other)."""
    out = subprocess.run(
        [sys.executable, "-c", BYTECODES, root, what, str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    parts: dict[str, float] = {}
    for line in out.splitlines():
        path, _, count = line.rpartition(" ")
        inside = path.split("/guardpool/", 1)
        part = inside[1].split("/", 1)[0] if len(inside) == 2 and "/" in inside[1] else "other"
        if part not in ("runner", "policy", "store", "audit"):
            part = "other"
        parts[part] = parts.get(part, 0) + int(count) / n
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", default=str(HERE.parent), help="the checkout to measure")
    parser.add_argument(
        "--what",
        default="memory,sqlite,ledger",
        help="comma-separated: memory, sqlite (pairs), ledger (a 5- and a 2-event append)",
    )
    parser.add_argument(
        "--bytecodes",
        action="store_true",
        help="count Python bytecodes per pair by module instead (no valgrind)",
    )
    args = parser.parse_args()
    if args.bytecodes:
        print(f"Python bytecodes per pair, {args.root} (runner+policy = the enforcer's own)")
        for what in ("memory", "sqlite"):
            parts = bytecodes(args.root, what)
            split = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(parts.items()))
            print(f"{what + ' pair':14} {sum(parts.values()):7,.0f}   ({split})")
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print(f"main-thread instructions per unit, {args.root}, median of {args.runs} runs")
    for what in args.what.split(","):
        got = [per_unit(args.root, what) for _ in range(args.runs)]
        unit = "5+2-event append pair" if what == "ledger" else f"{what} pair"
        spread = ", ".join(f"{g:,.0f}" for g in got)
        print(f"{unit:24} {statistics.median(got):12,.0f}   ({spread})")


if __name__ == "__main__":
    main()

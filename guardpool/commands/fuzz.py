"""``guardpool fuzz``: attack every guard with adversarial inputs through the real pool.

Every guard — regex bank or callable — runs in the pool under the policy's own
limits, so a finding here is what an attacker would get in production. Any
timeout, crash or error is written as a reproducer; for regex banks, RE2's
verdict is also compared with Python ``re`` on the same input (``re`` runs in
the pool too, under a deadline, because it may not come back).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from guardpool.analysis.astscan import scan_module
from guardpool.analysis.fuzzgen import inputs
from guardpool.cli import UsageError
from guardpool.policy.guards import CompiledGuard
from guardpool.policy.loader import Policy, load_policy
from guardpool.policy.verdict import Verdict
from guardpool.runner.pool import GuardPool, JobResult

_RE_CAP_MS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time budget (default 30)")
    parser.add_argument("--guard", action="append", help="only this guard (repeatable)")
    parser.add_argument("--out", default="fuzz-findings", help="where reproducers go")
    parser.add_argument("--seed", type=int, default=0)


@dataclass
class GuardReport:
    runs: int = 0
    ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    crashes: int = 0
    disagreements: int = 0
    re_skipped: int = 0

    @property
    def findings(self) -> int:
        return self.timeouts + self.errors + self.crashes + self.disagreements


def patterns_of(guard: CompiledGuard) -> list[str]:
    """The patterns an attacker would aim at: the bank's, or the ``re`` calls in the module."""
    if guard.kind == "regex":
        return [p for bank in guard.banks.values() for p in bank.patterns]
    module = (guard.spec.call or "").partition(":")[0]
    return [use.pattern for use in scan_module(module)]


def _encode(value: str | bytes) -> dict[str, str]:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return {"text": value}


class Fuzzer:
    def __init__(self, policy: Policy, pool: GuardPool, out: Path, config: str) -> None:
        self.policy = policy
        self.pool = pool
        self.out = out
        self.config = config
        self.written = 0

    def reproduce(self, name: str, value: str | bytes, what: str, job: JobResult | None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.written += 1
        path = self.out / f"{name}-{self.written:04d}.json"
        labels = self.policy.guards[name].spec.ops[0].replace("*", "fuzz")
        replay = (
            f"guardpool check --config {self.config} --label {labels} --input - < {path.stem}.txt"
        )
        record = {
            "guard": name,
            "finding": what,
            "input": _encode(value) | {"length": len(value)},
            "outcome": job.outcome if job else None,
            "limit": job.limit if job else None,
            "wall_ms": job.wall_ms if job else None,
            "error": job.error if job else None,
            "replay": replay,
        }
        path.write_text(json.dumps(record, indent=2), encoding="utf-8")
        if isinstance(value, str):
            path.with_suffix(".txt").write_text(value, encoding="utf-8", errors="surrogatepass")

    def run_one(self, name: str, value: str | bytes, report: GuardReport) -> None:
        guard = self.policy.guards[name]
        job = self.pool.submit_guard(name, value, labels=("fuzz",)).result()
        if job.outcome == "error" and job.limit == "input":
            return  # refused before it reached the guard: not the guard's finding
        report.runs += 1
        report.ms.append(job.wall_ms)
        if job.outcome == "timeout":
            report.timeouts += 1
            self.reproduce(name, value, f"timeout ({job.limit})", job)
        elif job.outcome == "crash":
            report.crashes += 1
            self.reproduce(name, value, "crash", job)
        elif job.outcome == "error":
            report.errors += 1
            self.reproduce(name, value, "error", job)
        elif guard.kind == "regex" and isinstance(value, str) and value.isascii():
            self.compare_with_re(name, guard, value, job, report)

    def compare_with_re(
        self, name: str, guard: CompiledGuard, value: str, job: JobResult, report: GuardReport
    ) -> None:
        # Only a deny-only bank has a verdict that means "some pattern matched".
        bank = guard.banks.get("deny_regex")
        if bank is None or "require_regex" in guard.banks or not isinstance(job.value, Verdict):
            return
        try:
            for p in bank.patterns:
                re.compile(p)
        except re.error:  # an RE2-only spelling: no common subset to compare
            report.re_skipped += 1
            return
        theirs = self.pool.submit(
            "guardpool.analysis.fuzzgen:re_search_any",
            {"patterns": list(bank.patterns), "text": value},
            timeout_ms=_RE_CAP_MS,
        ).result()
        if theirs.outcome != "ok":  # re too slow (or worse): nothing to compare
            report.re_skipped += 1
            return
        if bool(theirs.value) != (job.value.action == "deny"):
            report.disagreements += 1
            self.reproduce(name, value, f"RE2 and re disagree (re matched: {theirs.value})", job)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def main(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    names = args.guard or list(policy.guards)
    unknown = [n for n in names if n not in policy.guards]
    if unknown:
        raise UsageError(f"no guard named {', '.join(unknown)} in {args.config}")
    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=140)
    reports = {n: GuardReport() for n in names}
    streams: dict[str, Iterator[tuple[str, str | bytes]]] = {
        n: inputs(patterns_of(policy.guards[n]), policy.config.pool.max_input_bytes, args.seed)
        for n in names
    }
    share = args.seconds / len(names)
    with GuardPool.from_config(policy) as pool:
        fuzzer = Fuzzer(policy, pool, Path(args.out), args.config)
        with _progress(console) as progress:
            for name in names:
                task = progress.add_task(f"fuzzing {name}", total=share)
                start = time.monotonic()
                while (elapsed := time.monotonic() - start) < share:
                    _, value = next(streams[name])
                    fuzzer.run_one(name, value, reports[name])
                    progress.update(task, completed=min(elapsed, share))
                progress.update(task, completed=share)
    table = Table(title="guardpool fuzz", show_edge=False)
    for column in (
        "guard",
        "runs",
        "p50 ms",
        "p99 ms",
        "max ms",
        "timeouts",
        "errors",
        "crashes",
        "re disagree",
        "re skipped",
    ):
        table.add_column(column, justify="right" if column != "guard" else "left")
    for name, r in reports.items():
        ordered = sorted(r.ms) or [0.0]
        table.add_row(
            name,
            str(r.runs),
            f"{statistics.median(ordered):.2f}",
            f"{ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.2f}",
            f"{ordered[-1]:.2f}",
            str(r.timeouts),
            str(r.errors),
            str(r.crashes),
            str(r.disagreements),
            str(r.re_skipped),
        )
    console.print(table)
    found = sum(r.findings for r in reports.values())
    if found:
        console.print(f"{found} finding(s); reproducers in {args.out}/")
        return 1
    console.print("no guard timed out, crashed, errored or disagreed with re")
    return 0

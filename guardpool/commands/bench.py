"""``guardpool bench``: measure every guard through the real pool and recommend limits.

Each guard runs on sample inputs (``--samples FILE``, one per line, or JSON
list) and generated ones, under generous limits so the measurement is not cut
short. The recommendation for each guard is

    timeout_ms = max(3 x p99 wall, 10 x p50 wall, 50 ms), rounded up to 10 ms
    job_cpu_ms = max(3 x p99 cpu,  10 x p50 cpu,  50 ms), rounded up to 10 ms

and for ``[pool]`` the largest of those, plus ``memory_mb`` = 2 x the peak
worker RSS seen, rounded up to 64 MiB (never below 128). It is printed as a
TOML snippet to paste into the policy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from guardpool.analysis.fuzzgen import random_unicode
from guardpool.cli import UsageError
from guardpool.policy.loader import load_policy
from guardpool.runner.pool import GuardPool

_MEASURE_TIMEOUT_MS = 2_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--samples", help="file of sample inputs: one per line, or a JSON list")


def load_samples(path: str | None) -> list[str]:
    import random

    rng = random.Random(0)
    generated = [
        "git status",
        "Summarise the attached report in three bullet points.",
        "Lorem ipsum dolor sit amet " * 40,
        random_unicode(rng, 256),
        "x" * 20_000,
    ]
    if path is None:
        return generated
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read samples {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"samples {path}: invalid JSON: {exc}") from None
        return [str(s) for s in loaded] + generated
    return [line for line in text.splitlines() if line] + generated


def recommend(samples_ms: list[float]) -> int:
    ordered = sorted(samples_ms)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return int(math.ceil(max(3 * p99, 10 * p50, 50.0) / 10) * 10)


def main(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    samples = load_samples(args.samples)
    names = list(policy.guards)
    share = args.seconds / max(1, len(names))
    results: dict[str, tuple[list[float], list[float], int]] = {}
    peak_rss = 0.0
    with GuardPool.from_config(policy) as pool:
        for name in names:
            wall: list[float] = []
            cpu: list[float] = []
            timeouts = 0
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < share or i < len(samples):
                job = pool.submit_guard(
                    name,
                    samples[i % len(samples)],
                    labels=("bench",),
                    timeout_ms=_MEASURE_TIMEOUT_MS,
                ).result()
                i += 1
                if job.outcome == "timeout":
                    timeouts += 1
                else:
                    wall.append(job.wall_ms)
                    cpu.append(job.cpu_ms)
                if i >= 10_000 or timeouts >= 2:
                    break
            results[name] = (wall, cpu, timeouts)
        for _ in range(2 * (policy.config.pool.workers or 2)):
            probe = pool.submit("guardpool.analysis.probes:memory", None).result()
            if probe.outcome == "ok":
                peak_rss = max(peak_rss, probe.value["VmHWM"] / 1024)
    print(f"{'guard':24}{'runs':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'cpu p99':>9}")
    snippet = ["# recommended by guardpool bench", ""]
    pool_timeout = pool_cpu = 50
    for name, (wall, cpu, timeouts) in results.items():
        if not wall:
            print(
                f"{name:24}  every run hit the {_MEASURE_TIMEOUT_MS} ms measuring cap: "
                "this guard hangs; see guardpool fuzz"
            )
            continue
        ordered = sorted(wall)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        cpu_sorted = sorted(cpu)
        cpu99 = cpu_sorted[min(len(cpu_sorted) - 1, int(0.99 * len(cpu_sorted)))]
        print(
            f"{name:24}{len(wall):7}{statistics.median(ordered):9.2f}{p99:9.2f}"
            f"{ordered[-1]:9.2f}{cpu99:9.2f}" + (f"  ({timeouts} hung)" if timeouts else "")
        )
        timeout_ms, cpu_ms = recommend(wall), recommend(cpu)
        pool_timeout, pool_cpu = max(pool_timeout, timeout_ms), max(pool_cpu, cpu_ms)
        snippet += [
            f"# guard {name}: p99 {p99:.2f} ms wall, {cpu99:.2f} ms cpu",
            f"#   timeout_ms = {timeout_ms}",
        ]
    memory_mb = max(128, int(math.ceil(2 * peak_rss / 64) * 64))
    snippet += [
        "",
        "[pool]",
        f"job_timeout_ms = {pool_timeout}",
        f"job_cpu_ms = {pool_cpu}",
        f"memory_mb = {memory_mb}  # peak worker RSS seen: {peak_rss:.0f} MiB",
        "",
        "[guards]",
        f"timeout_ms = {pool_timeout}",
    ]
    print()
    print("\n".join(snippet))
    return 0

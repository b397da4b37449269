"""Worker limits from ``benchmark``'s measured runs, verified by replaying the heaviest inputs.

``recommend`` turns each guard's passing jobs into limits with the headroom
below; ``verify`` replays each guard's heaviest passing inputs under them,
with the policy's own worker count, and raises a limit that fails. Kept apart
from ``benchmark`` (which measures) so that the rules for the numbers read
in one place; ``guardpool bench`` calls both.

Headroom (stated in the output, tested in ``tests/test_bench_cmd.py``):

    timeout_ms  = max(2 x slowest passing wall, 50 ms), rounded up to 10 ms
    job_cpu_ms  = max over guards of max(2 x slowest passing CPU time, 50 ms), up to 10 ms
    job_timeout_ms = the largest guard timeout_ms in the resulting config
    memory_mb   = max(1.25 x largest peak address space + 16 MiB, floor + 32 MiB), up to 16 MiB
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from guardpool.analysis.benchmark import GuardRun, InputSet, Job, pool_for
from guardpool.analysis.fuzzing import default_labels
from guardpool.policy.loader import Policy
from guardpool.runner.pool import JobResult

if TYPE_CHECKING:
    from guardpool.policy.config import GuardSpec

MIN_MS = 50
TIME_FACTOR = 2.0
MEMORY_FACTOR, MEMORY_EXTRA_MB, FLOOR_MARGIN_MB = 1.25, 16, 32
HEADROOM = (
    "timeout_ms = max(2 x slowest passing run, 50 ms); "
    "job_cpu_ms = the same on CPU time, largest over guards; "
    "job_timeout_ms = largest guard timeout_ms; "
    "memory_mb = max(1.25 x peak address space + 16 MiB, start floor + 32 MiB)"
)


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        ordered = sorted(values)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        return cls(len(ordered), statistics.median(ordered), p99, ordered[-1])


def up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def time_limit(stats: Stats) -> int:
    return up(max(TIME_FACTOR * stats.max, MIN_MS), 10)


@dataclass
class Recommendation:
    guard_timeouts: dict[str, int]  # only guards that passed something
    job_cpu_ms: int
    job_timeout_ms: int
    memory_mb: int
    floor_mb: int
    why: dict[str, str] = field(default_factory=dict)


def recommend(
    policy: Policy,
    runs: dict[str, GuardRun],
    floor_mb: int,
    basis: Sequence[InputSet] = ("realistic", "adversarial"),
) -> Recommendation:
    timeouts: dict[str, int] = {}
    why: dict[str, str] = {}
    cpu_ms = MIN_MS
    cpu_max = 0.0
    peak_kib = 0
    for name, run in runs.items():
        jobs = run.passing(basis)
        if not jobs:
            continue
        wall = Stats.of([j.wall_ms for j in jobs])
        cpu = Stats.of([j.cpu_ms for j in jobs])
        if policy.guards[name].kind == "callable":
            # Regex banks run in the host on RE2 (linear): their timeout_ms only bounds
            # them when nested in a callable, which shares the outer deadline anyway.
            timeouts[name] = time_limit(wall)
            why[f"guard.{name}.timeout_ms"] = (
                f"2 x slowest passing run {wall.max:.1f} ms, min {MIN_MS}"
            )
        cpu_ms = max(cpu_ms, time_limit(cpu))
        cpu_max = max(cpu_max, cpu.max)
        peaks = [j.vm_peak_kib for j in jobs if j.vm_peak_kib is not None]
        peak_kib = max([peak_kib, run.worker_start_kib, *peaks])
    final = {
        name: timeouts.get(name, guard.spec.timeout_ms or 0)
        for name, guard in policy.guards.items()
    }
    job_timeout = max([MIN_MS, *final.values()])
    peak_mb = peak_kib / 1024
    memory = up(max(MEMORY_FACTOR * peak_mb + MEMORY_EXTRA_MB, floor_mb + FLOOR_MARGIN_MB), 16)
    why["pool.job_cpu_ms"] = f"2 x slowest passing CPU time {cpu_max:.1f} ms, min {MIN_MS}"
    why["pool.job_timeout_ms"] = "the largest guard timeout_ms"
    why["pool.memory_mb"] = (
        f"peak address space {peak_mb:.0f} MiB x 1.25 + 16; start floor {floor_mb} MiB + 32"
    )
    return Recommendation(timeouts, cpu_ms, job_timeout, memory, floor_mb, why)


def verify(
    policy: Policy,
    runs: dict[str, GuardRun],
    rec: Recommendation,
    rounds: int = 3,
) -> tuple[Recommendation, list[str]]:
    """Replay each guard's heaviest passing inputs under ``rec`` (the policy's worker count).

    A failure raises the limit that failed (x1.5) and verifies again, up to
    ``rounds`` times; returns the final recommendation and what was raised.
    """
    notes: list[str] = []
    for _ in range(rounds):
        failures = _replay_heaviest(policy, runs, rec)
        if not failures:
            return rec, notes
        for name, job in failures:
            if job.limit == "memory" or job.outcome == "crash":
                rec.memory_mb = up(rec.memory_mb * 1.5, 16)
                notes.append(f"{name}: {job.outcome} under memory_mb; raised to {rec.memory_mb}")
            elif job.limit == "cpu":
                rec.job_cpu_ms = up(rec.job_cpu_ms * 1.5, 10)
                notes.append(f"{name}: CPU budget hit; job_cpu_ms raised to {rec.job_cpu_ms}")
            elif name in rec.guard_timeouts:
                rec.guard_timeouts[name] = up(rec.guard_timeouts[name] * 1.5, 10)
                rec.job_timeout_ms = max(rec.job_timeout_ms, rec.guard_timeouts[name])
                notes.append(f"{name}: timed out; timeout_ms raised to {rec.guard_timeouts[name]}")
    notes.append("still failing after raising limits: the machine may be overloaded")
    return rec, notes


def _replay_heaviest(
    policy: Policy, runs: dict[str, GuardRun], rec: Recommendation
) -> list[tuple[str, JobResult]]:
    specs = [_with_timeout(spec, rec.guard_timeouts.get(spec.name)) for spec in policy.config.guard]
    config = msgspec.structs.replace(
        policy.config.pool,
        job_timeout_ms=rec.job_timeout_ms,
        job_cpu_ms=rec.job_cpu_ms,
        memory_mb=rec.memory_mb,
    )
    pool = pool_for(policy, config, specs)
    failures: list[tuple[str, JobResult]] = []
    with pool:
        for name, run in runs.items():
            if name not in rec.guard_timeouts:
                continue
            guard = policy.guards[name]
            for index in heaviest(run):
                job = pool.submit_guard(
                    name,
                    run.samples[index].value,
                    labels=default_labels(guard),
                    phase=guard.spec.phase,
                ).result()
                if job.outcome in ("timeout", "crash") or job.limit == "memory":
                    failures.append((name, job))
                    break
    return failures


def heaviest(run: GuardRun, per_measure: int = 2) -> list[int]:
    """Sample indexes of the slowest, most CPU-hungry and most memory-hungry passing jobs."""
    jobs = run.passing()
    chosen: list[int] = []
    keys: list[Callable[[Job], float]] = [
        lambda j: j.wall_ms,
        lambda j: j.cpu_ms,
        lambda j: float(j.rss_kib or 0),
    ]
    for key in keys:
        for job in sorted(jobs, key=key, reverse=True)[:per_measure]:
            if job.sample not in chosen:
                chosen.append(job.sample)
    return chosen


def _with_timeout(spec: GuardSpec, timeout_ms: int | None) -> GuardSpec:
    return spec if timeout_ms is None else msgspec.structs.replace(spec, timeout_ms=timeout_ms)

"""Measure each guard on its own: what ``recommend`` derives worker limits from.

Data flow (``guardpool bench``)::

    policy ──► start_floor_mb(): smallest memory_mb at which a worker starts and can allocate 4 MiB
           ──► for each guard: a fresh 1-worker pool under generous caps
                 realistic + adversarial inputs ──► submit_guard ──► wall, CPU
                                                └─► probes.memory ─► VmPeak, VmHWM (same worker)
           ──► recommend(): per-guard timeout_ms, job_cpu_ms, job_timeout_ms, memory_mb
           ──► verify(): a pool with the recommended limits and the policy's own worker
               count replays every guard's heaviest passing inputs; a limit that fails is
               raised and verified again

``recommend()``, ``verify()`` and the headroom they apply are in ``recommend``.

Why a fresh worker per guard: ``memory_mb`` is RLIMIT_AS, which caps a worker's
*address space*, and the kernel only reports its peak (``VmPeak``) since the
process started. A worker shared by several guards would attribute the peak to
whichever guard ran last (the bug this replaces: a 110 MiB guard was advised
128 MiB because its worker had been recycled before the reading).

A "passing" job is one no limit stopped: it may allow, deny or even raise, but
it was not killed at a deadline or CPU budget, did not crash its worker and did
not hit the memory limit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from guardpool.analysis.fuzzgen import inputs
from guardpool.analysis.fuzzing import default_labels, enforcer_refuses, patterns_of
from guardpool.policy.loader import Policy
from guardpool.runner.pool import GuardPool, JobResult

if TYPE_CHECKING:
    from guardpool.policy.config import GuardSpec, PoolConfig

InputSet = Literal["realistic", "adversarial"]
Value = str | bytes
_PROBES = "guardpool.analysis.probes"

REALISTIC: tuple[str, ...] = (
    "git status",
    "ls -la src/",
    "Summarise the attached report in three bullet points.",
    "Please translate 'good morning' into French, German and Japanese.",
    '{"tool": "search", "query": "weather in Paris", "limit": 5}',
    "https://example.com/docs/getting-started?lang=en#install",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40,
    "def add(a, b):\n    return a + b\n" * 20,
)


@dataclass(frozen=True)
class Sample:
    kind: InputSet
    source: str  # generator name, or "samples" for the user's own
    value: Value


@dataclass
class Job:
    sample: int  # index into the guard's samples
    outcome: str
    limit: str
    wall_ms: float
    cpu_ms: float
    rss_kib: int | None  # peak resident set after this job (None: its worker died)
    vm_peak_kib: int | None  # the worker's peak address space after this job

    @property
    def passed(self) -> bool:
        return self.outcome not in ("timeout", "crash") and self.limit != "memory"


@dataclass
class GuardRun:
    name: str
    samples: list[Sample]
    jobs: list[Job] = field(default_factory=list)
    worker_start_kib: int = 0

    def passing(self, basis: Sequence[InputSet] = ("realistic", "adversarial")) -> list[Job]:
        return [j for j in self.jobs if j.passed and self.samples[j.sample].kind in basis]

    def failed_samples(self) -> list[int]:
        ok = {j.sample for j in self.jobs if j.passed}
        return sorted({j.sample for j in self.jobs if not j.passed} - ok)


# -- measuring -----------------------------------------------------------------------------


def samples_for(policy: Policy, name: str, user: Sequence[str], adversarial: int) -> list[Sample]:
    """The user's samples and ``REALISTIC``, then structured adversarial inputs."""
    guard = policy.guards[name]
    cap = policy.config.pool.max_input_bytes
    out = [Sample("realistic", "samples", s) for s in user]
    out += [Sample("realistic", "built-in", s) for s in REALISTIC]
    seen: set[Value] = set()
    for source, value in inputs(patterns_of(guard), cap):
        if len(seen) >= adversarial:
            break
        if value in seen or enforcer_refuses(value, cap):
            continue
        seen.add(value)
        out.append(Sample("adversarial", source, value))
    return [s for s in out if not enforcer_refuses(s.value, cap)]


def measuring_pool(policy: Policy, *, cap_ms: int, memory_mb: int, workers: int = 1) -> GuardPool:
    """A pool like the policy's, but with room to measure (generous caps, never recycled)."""
    config = msgspec.structs.replace(
        policy.config.pool,
        workers=workers,
        job_timeout_ms=cap_ms,
        job_cpu_ms=cap_ms,
        memory_mb=memory_mb,
        max_rss_mb=memory_mb,
        max_jobs_per_worker=1_000_000,
    )
    return pool_for(policy, config, policy.config.guard)


def pool_for(policy: Policy, config: PoolConfig, specs: Sequence[GuardSpec]) -> GuardPool:
    return GuardPool(
        guard_specs=specs,
        guard_defaults=policy.config.guards,
        config=config,
        import_path=policy.import_path,
    )


def _memory(pool: GuardPool) -> tuple[dict[str, int], int] | None:
    probe = pool.submit(f"{_PROBES}:memory", None, timeout_ms=5_000).result()
    if probe.outcome != "ok" or not isinstance(probe.value, dict):
        return None
    return probe.value, probe.worker_pid


def measure(
    policy: Policy,
    name: str,
    samples: list[Sample],
    *,
    seconds: float,
    cap_ms: int,
    memory_mb: int,
    on_job: Callable[[int, int], None] | None = None,
) -> GuardRun:
    """Run every sample once (then realistic ones again until ``seconds`` pass) in a fresh worker.

    Two samples of a set that hit the cap end that set: a guard that hangs is
    reported as hanging, not waited on for minutes.
    """
    run = GuardRun(name, samples)
    guard = policy.guards[name]
    labels = default_labels(guard)
    with measuring_pool(policy, cap_ms=cap_ms, memory_mb=memory_mb) as pool:
        base = _memory(pool)
        run.worker_start_kib = base[0]["VmPeak"] if base else 0
        capped: dict[InputSet, int] = {"realistic": 0, "adversarial": 0}
        order = list(range(len(samples)))
        realistic = [i for i in order if samples[i].kind == "realistic"]
        start = time.monotonic()
        i = 0
        while i < len(order) or (realistic and time.monotonic() - start < seconds):
            index = order[i] if i < len(order) else realistic[(i - len(order)) % len(realistic)]
            i += 1
            sample = samples[index]
            if capped[sample.kind] >= 2:
                continue
            job = pool.submit_guard(
                name, sample.value, labels=labels, phase=guard.spec.phase, timeout_ms=cap_ms
            ).result()
            run.jobs.append(_record(index, job, _memory(pool)))
            if job.outcome == "timeout":
                capped[sample.kind] += 1
            if on_job is not None:
                on_job(len(run.jobs), len(order))
            if i >= 100_000:
                break
    return run


def _record(index: int, job: JobResult, memory: tuple[dict[str, int], int] | None) -> Job:
    rss = vm = None
    if memory is not None and memory[1] == job.worker_pid and job.outcome != "crash":
        values = memory[0]
        # Per job when the previous probe could reset VmHWM; a worker that dropped
        # privileges is not dumpable and may not write clear_refs, and then this is
        # the running peak of the guard's own worker (an upper bound per job).
        rss = values["VmHWM"]
        vm = values["VmPeak"]
    return Job(index, job.outcome, job.limit, job.wall_ms, job.cpu_ms, rss, vm)


def start_floor_mb(policy: Policy) -> int:
    """The smallest memory_mb at which a worker with this policy starts and can allocate 4 MiB.

    Binary search over real pools, around the address space an idle worker
    maps: below the floor the worker dies on its first allocation (the pool
    reports a crash) or never becomes ready. Workers dying on purpose print
    their MemoryError on stderr; that noise is silenced while searching.
    """
    with _quiet_stderr():
        return _search_floor(policy)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _search_floor(policy: Policy) -> int:
    with measuring_pool(policy, cap_ms=5_000, memory_mb=1024) as pool:
        idle = _memory(pool)
    idle_mb = idle[0]["VmPeak"] // 1024 if idle else 64
    low, high = max(1, idle_mb - 8), idle_mb + 64

    def works(mb: int) -> bool:
        try:
            with measuring_pool(policy, cap_ms=5_000, memory_mb=mb) as pool:
                return pool.submit(f"{_PROBES}:breathe", None).result().outcome == "ok"
        except RuntimeError:
            return False

    while not works(high):
        low, high = high, high * 2
        if high > 8192:
            return high
    while high - low > 1:
        mid = (low + high) // 2
        if works(mid):
            high = mid
        else:
            low = mid
    return high

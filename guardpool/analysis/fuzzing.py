"""The fuzzing engine shared by ``guardpool fuzz`` and ``guardpool.testing.fuzz_guard``.

Data flow for one guard::

    fuzzgen.inputs(patterns) ──► enforcer_refuses()? ──yes──► counted as "refused", dropped
                                        │ no
                                        ▼
                       pool.submit_guard(name, input)  (the policy's own limits)
                                        │
                                 classify(JobResult) ──► None: fine (regex banks:
                                        │                 RE2 vs ``re`` compared too)
                                        ▼ kind
                first of (guard, kind)? ──no──► counted, dropped (de-duplicated)
                                        │ yes
                                        ▼
                     shrink(input) while classify() still says kind ──► Finding

A *finding* is something the guard's author can act on: a timeout, a crashed
worker, the memory limit, an exception from the guard's own code, or an RE2
bank that disagrees with Python ``re``. What the enforcer refuses before a
guard runs (oversize input, an input the pool cannot carry) is not the guard's
doing and is only counted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from guardpool.analysis.astscan import scan_module
from guardpool.analysis.fuzzgen import inputs
from guardpool.policy.guards import CompiledGuard
from guardpool.policy.inputs import InputError, measure, too_large
from guardpool.policy.loader import Policy
from guardpool.runner.pool import GuardPool, JobResult

Kind = Literal["timeout", "crash", "memory", "error", "re-disagreement"]
KINDS: tuple[Kind, ...] = ("timeout", "crash", "memory", "error", "re-disagreement")
Value = str | bytes

# Python ``re`` gets this long per comparison; a slower ``re`` is not RE2's disagreement.
RE_CAP_MS = 200
SHRINK_DEADLINE_FACTOR = 2.0
_PROBES = "guardpool.analysis.probes"


@dataclass(frozen=True)
class Observation:
    """What one input did to one guard; ``kind`` is None when nothing is wrong."""

    kind: Kind | None
    detail: str = ""
    job: JobResult | None = None
    refused: str = ""  # non-empty: the enforcer refuses this input before any guard runs


@dataclass
class Finding:
    guard: str
    kind: Kind
    detail: str
    value: Value
    original_length: int
    job: JobResult | None
    seen: int = 1
    confirmed: int = 0  # reproductions of the minimised input, out of ``attempts``
    attempts: int = 0


@dataclass
class GuardStats:
    runs: int = 0
    refused: int = 0
    ms: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # kind -> occurrences (not de-duplicated)
    re_skipped: int = 0


def enforcer_refuses(value: Any, max_input_bytes: int) -> str:
    """Why the enforcer would deny ``value`` before running any guard, or "".

    The input contract (``policy/inputs.py``): outside it, or over
    ``max_input_bytes``, the enforcer denies without running guards.
    """
    try:
        return too_large(measure(value).size, max_input_bytes) or ""
    except InputError as exc:
        return str(exc)


def _pool_refused(job: JobResult) -> bool:
    # A job that never reached a worker was refused by the pool itself (too large,
    # not serialisable): the guard's code never saw the input.
    return job.outcome == "error" and (job.limit == "input" or job.worker_pid == 0)


def patterns_of(guard: CompiledGuard) -> list[str]:
    """The patterns an attacker would aim at: the bank's, or the ``re`` calls in the module."""
    if guard.kind == "regex":
        return [p for bank in guard.banks.values() for p in bank.patterns]
    module = (guard.spec.call or "").partition(":")[0]
    return [use.pattern for use in scan_module(module)]


class GuardFuzzer:
    """Runs inputs against one guard of a policy through a started pool."""

    def __init__(self, policy: Policy, pool: GuardPool, name: str, labels: tuple[str, ...]) -> None:
        self.policy = policy
        self.pool = pool
        self.name = name
        self.guard = policy.guards[name]
        self.labels = labels
        self.max_input = policy.config.pool.max_input_bytes
        self.stats = GuardStats()

    # -- one input ------------------------------------------------------------------------

    def observe(self, value: Value, deadline_factor: float = 1.0) -> Observation:
        """Run one input; ``deadline_factor`` > 1 gives the guard that much more time."""
        refused = enforcer_refuses(value, self.max_input)
        if refused:
            return Observation(None, refused=refused)
        timeout_ms = int((self.guard.spec.timeout_ms or 1000) * deadline_factor)
        job = self.pool.submit_guard(
            self.name, value, labels=self.labels, phase=self.guard.spec.phase, timeout_ms=timeout_ms
        ).result()
        if _pool_refused(job):
            return Observation(None, refused=job.error, job=job)
        if job.outcome == "timeout":
            limit = {"cpu": "CPU budget", "wall": "deadline"}.get(job.limit, "deadline")
            return Observation("timeout", f"killed at its {limit} ({job.error})", job)
        if job.outcome == "crash":
            return Observation("crash", job.error, job)
        if job.outcome == "error":
            if job.limit == "memory":
                return Observation("memory", job.error, job)
            return Observation("error", job.error, job)
        if self.guard.kind == "regex" and isinstance(value, str):
            return self._compare_with_re(value, job)
        return Observation(None, job=job)

    def _compare_with_re(self, value: str, job: JobResult) -> Observation:
        """Each bank's RE2 answer against Python ``re`` on the same ASCII text."""
        if not value.isascii():  # RE2's \\w \\d \\s are ASCII, re's are Unicode: not comparable
            return Observation(None, job=job)
        data = value.encode()
        for key, bank in self.guard.banks.items():
            try:
                for p in bank.patterns:
                    re.compile(p)
            except re.error:  # an RE2-only spelling: no common subset to compare
                self.stats.re_skipped += 1
                continue
            theirs = self.pool.submit(
                f"{_PROBES}:re_first_match",
                {"patterns": list(bank.patterns), "text": value},
                timeout_ms=RE_CAP_MS,
            ).result()
            if theirs.outcome != "ok":  # re too slow (or worse): nothing to compare
                self.stats.re_skipped += 1
                continue
            ours = bank.first_match(data)
            re_hit = theirs.value is not None
            if (ours is not None) != re_hit:
                which = bank.patterns[theirs.value if re_hit else (ours or 0)]
                return Observation(
                    "re-disagreement",
                    f"{key}: RE2 {'matched' if ours is not None else 'did not match'}, "
                    f"Python re {'matched' if re_hit else 'did not match'} ({which!r})",
                    job,
                )
        return Observation(None, job=job)

    def reproduces(self, value: Value, kind: Kind) -> bool:
        # A timeout shrinks towards the size where the guard just misses its deadline,
        # which a busy machine turns into a coin flip. A candidate must still time out
        # with twice the time, so the result is slower than the deadline by 2x or more.
        factor = SHRINK_DEADLINE_FACTOR if kind == "timeout" else 1.0
        return self.observe(value, factor).kind == kind

    # -- a campaign -----------------------------------------------------------------------

    def run(
        self,
        seconds: float,
        seed: int = 0,
        extra: Iterator[Value] | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> dict[Kind, tuple[Value, Observation]]:
        """Fuzz for ``seconds``; the first input of each kind (de-duplication)."""
        first: dict[Kind, tuple[Value, Observation]] = {}
        stream = inputs(patterns_of(self.guard), self.max_input, seed)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            value = next(extra, None) if extra is not None else None
            if value is None:
                _, value = next(stream)
            obs = self.observe(value)
            if obs.refused:
                self.stats.refused += 1
            else:
                self.stats.runs += 1
                if obs.job is not None:
                    self.stats.ms.append(obs.job.wall_ms)
            if obs.kind is not None:
                self.stats.counts[obs.kind] = self.stats.counts.get(obs.kind, 0) + 1
                first.setdefault(obs.kind, (value, obs))
            if on_progress is not None:
                on_progress(elapsed)
        return first

    def finding(self, kind: Kind, value: Value, obs: Observation, seconds: float) -> Finding:
        """Minimise ``value`` for up to ``seconds``, then keep the smallest that reproduces 2/2.

        The accepted shrinking steps are confirmed under the real limits from
        the smallest back towards the original, and the first one that
        reproduces every time is kept (flaky on a loaded machine: the next).
        """
        history = [value]
        shrink(
            value,
            lambda v: self.reproduces(v, kind),
            time.monotonic() + seconds,
            accepted=history.append,
        )
        attempts = 2
        chosen, confirmed, last = value, 0, obs
        tries = [*history[:0:-1][:4], value]  # the 4 smallest steps, then the original
        for candidate in tries:
            seen = [self.observe(candidate) for _ in range(attempts)]
            hits = [o for o in seen if o.kind == kind]
            if len(hits) == attempts or candidate is value:
                chosen, confirmed = candidate, len(hits)
                last = hits[-1] if hits else obs
                break
        return Finding(
            guard=self.name,
            kind=kind,
            detail=last.detail or obs.detail,
            value=chosen,
            original_length=len(value),
            job=last.job or obs.job,
            seen=self.stats.counts.get(kind, 1),
            confirmed=confirmed,
            attempts=attempts,
        )


def shrink(
    value: Value,
    still: Callable[[Value], bool],
    deadline: float,
    accepted: Callable[[Value], None] | None = None,
) -> Value:
    """Remove chunks (halves, then quarters, ... single characters) while ``still`` holds.

    A simplified delta-debugging pass: every accepted removal restarts at the
    same chunk size, so a pumping string like ``"a" * 20000 + "!"`` drops to the
    shortest pump that still fails in a logarithmic number of steps.
    """
    chunk = max(1, len(value) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        progressed = False
        while i < len(value) and time.monotonic() < deadline:
            candidate = _cut(value, i, chunk)
            if candidate and still(candidate):
                value = candidate
                progressed = True
                if accepted is not None:
                    accepted(value)
            else:
                i += chunk
        if not progressed:
            if chunk == 1:
                break
            chunk //= 2
        chunk = min(chunk, max(1, len(value) // 2))
    return value


def _cut(value: Value, start: int, length: int) -> Value:
    if isinstance(value, bytes):
        return value[:start] + value[start + length :]
    return value[:start] + value[start + length :]


def default_labels(guard: CompiledGuard) -> tuple[str, ...]:
    """A label the guard's ``ops`` match, so the guard sees what it would in production."""
    op = guard.spec.ops[0]
    if op == "*":
        return ("fuzz",)
    return (op.replace(":*", ":fuzz").replace("*", "fuzz"),)


def encode_value(value: Value) -> dict[str, Any]:
    if isinstance(value, bytes):
        import base64

        return {"base64": base64.b64encode(value).decode()}
    return {"text": value}


def decode_value(data: Any) -> Value:
    """The inverse of ``encode_value``; ValueError on anything else."""
    if isinstance(data, dict):
        if isinstance(data.get("text"), str):
            return str(data["text"])
        if isinstance(data.get("base64"), str):
            import base64
            import binascii

            try:
                return base64.b64decode(data["base64"], validate=True)
            except binascii.Error as exc:
                raise ValueError(f"input.base64 is not base64: {exc}") from None
    raise ValueError('input must be {"text": ...} or {"base64": ...}')


__all__ = [
    "KINDS",
    "Finding",
    "GuardFuzzer",
    "GuardStats",
    "Kind",
    "Observation",
    "decode_value",
    "default_labels",
    "encode_value",
    "enforcer_refuses",
    "patterns_of",
    "shrink",
]

"""``fuzz_guard``: fuzz one guard callable from a test and fail with a minimised reproducer.

    from guardpool.testing import fuzz_guard

    def test_my_guard_survives_hostile_input():
        fuzz_guard("myproject.guards:check_sql", seconds=5)

The guard runs in a real pool (its own workers, killed at the deadline), fed by
the same generators and judged by the same rules as ``guardpool fuzz``: a
timeout, crash, memory-limit hit or exception from the guard is a failure;
inputs the enforcer would refuse are not. The first input of each kind is
minimised, and ``GuardFuzzFailure`` carries every finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from guardpool.analysis.fuzzing import Finding, GuardFuzzer, default_labels
from guardpool.policy.loader import load_policy
from guardpool.runner.pool import GuardPool


class GuardFuzzFailure(AssertionError):
    """A guard misbehaved on fuzzed input; ``findings`` holds the minimised reproducers."""

    def __init__(self, target: str, findings: list[Finding]) -> None:
        self.target = target
        self.findings = findings
        lines = [f"fuzzing {target} found {len(findings)} problem(s):"]
        for f in findings:
            lines.append(
                f"  {f.kind}: {f.detail}\n"
                f"    minimised input ({len(f.value)} of {f.original_length} chars, "
                f"reproduced {f.confirmed}/{f.attempts}): {f.value!r}"
            )
        super().__init__("\n".join(lines))


def fuzz_guard(
    target: str,
    *,
    seconds: float = 5.0,
    config: str | Path | None = None,
    timeout_ms: int = 1000,
    memory_mb: int = 256,
    labels: Sequence[str] | None = None,
    seeds: Iterable[str | bytes] = (),
    seed: int = 0,
    minimise_seconds: float = 5.0,
) -> None:
    """Fuzz ``target`` for ``seconds``; raise ``GuardFuzzFailure`` on any finding.

    ``target`` is ``"module:function"`` (run under ``timeout_ms`` and ``memory_mb``)
    or, with ``config``, the name of a guard in that policy (run under the
    policy's own limits). ``seeds`` are tried first: your own tricky inputs.
    """
    if config is not None:
        policy = load_policy(config)
        if target not in policy.guards:
            raise ValueError(f"fuzz_guard: no guard named {target!r} in {config}")
        name = target
    else:
        if ":" not in target:
            raise ValueError(f"fuzz_guard: {target!r} is not 'module:function' (or pass config=)")
        name = "fuzzed"
        policy = load_policy(
            {
                "pool": {"workers": 1, "memory_mb": memory_mb, "job_cpu_ms": max(timeout_ms, 50)},
                "guard": [{"name": name, "call": target, "timeout_ms": timeout_ms}],
            }
        )
    guard_labels = tuple(labels) if labels is not None else default_labels(policy.guards[name])
    with GuardPool.from_config(policy) as pool:
        fuzzer = GuardFuzzer(policy, pool, name, guard_labels)
        first = fuzzer.run(seconds, seed=seed, extra=iter(list(seeds)))
        findings = [
            fuzzer.finding(kind, value, obs, minimise_seconds)
            for kind, (value, obs) in first.items()
        ]
    if findings:
        raise GuardFuzzFailure(target, findings)

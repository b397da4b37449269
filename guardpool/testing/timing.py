"""``assert_linear_time``: fail when a guard's time grows faster than its input.

    from guardpool.testing import assert_linear_time

    def test_check_sql_is_linear():
        assert_linear_time("myproject.guards:check_sql", lambda n: "a" * n + "!")

The guard runs in a real pool (so a ReDoS cannot hang the test: it is killed at
``timeout_ms`` and reported) at doubling sizes; at each size the *minimum* time
of ``repeats`` runs is taken (noise only ever adds time) and the fixed cost (an
empty input's time) subtracted. The clock is the worker's CPU time by default:
on a loaded CI runner wall time mostly measures the other jobs; pass
``clock="wall"`` for a guard whose cost is waiting. The growth exponent is
fitted on a log-log scale over the sizes whose time rises clearly above 1 ms:
~1 for linear, ~2 for quadratic. Sizes at which the guard is too quick to measure cannot show
superlinear growth and pass.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Literal

from guardpool.policy.loader import load_policy
from guardpool.runner.pool import GuardPool

_NOISE_MS = 1.0


class GrowthError(AssertionError):
    """The guard's time grew faster than allowed (or it timed out / failed)."""


def _default_input(n: int) -> str:
    return "a" * n + "!"


def assert_linear_time(
    target: str,
    make_input: Callable[[int], Any] = _default_input,
    *,
    sizes: Sequence[int] = (2_000, 4_000, 8_000, 16_000, 32_000, 64_000),
    repeats: int = 5,
    max_exponent: float = 1.5,
    timeout_ms: int = 2_000,
    labels: Sequence[str] = ("test",),
    clock: Literal["cpu", "wall"] = "cpu",
) -> dict[int, float]:
    """Check ``target`` (``"module:function"`` guard) scales at most like n**max_exponent.

    Returns the measured milliseconds per size (fixed cost removed).
    """
    if len(sizes) < 2 or sorted(sizes) != list(sizes):
        raise ValueError("assert_linear_time: sizes must be at least two increasing sizes")
    policy = load_policy(
        {
            "pool": {"workers": 1, "job_cpu_ms": timeout_ms, "job_timeout_ms": timeout_ms},
            "guard": [{"name": "timed", "call": target, "timeout_ms": timeout_ms}],
        }
    )
    times: dict[int, float] = {}
    with GuardPool.from_config(policy) as pool:

        def least_ms(value: Any, size: int) -> float:
            runs = []
            for _ in range(repeats):
                job = pool.submit_guard("timed", value, labels=labels).result()
                if job.outcome != "ok":
                    raise GrowthError(
                        f"{target} on a {size}-unit input: {job.outcome}"
                        + (f" ({job.error})" if job.error else "")
                    )
                runs.append(job.cpu_ms if clock == "cpu" else job.wall_ms)
            return min(runs)

        base = least_ms(make_input(0), 0)
        for n in sizes:
            times[n] = max(0.0, least_ms(make_input(n), n) - base)
    measured = [(n, t) for n, t in times.items() if t > _NOISE_MS]
    if len(measured) >= 2:
        xs = [math.log(n) for n, _ in measured]
        ys = [math.log(t) for _, t in measured]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        if slope > max_exponent:
            table = ", ".join(f"{n}: {t:.2f} ms" for n, t in times.items())
            raise GrowthError(
                f"{target} grows like n^{slope:.2f} (allowed n^{max_exponent}): {table}"
            )
    return times

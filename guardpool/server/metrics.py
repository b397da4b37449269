"""Prometheus metrics of the sidecar, in the app's own registry.

Counts that only grow are counters (``_total``), levels are gauges: a
Prometheus ``rate()`` over a gauge that is really a count gives nonsense, and
a counter is what ``rate()`` handles correctly across restarts. The pool's
killed/crashed counts are counters; workers, busy and queued are gauges.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from guardpool.policy.model import Decision, Usage
from guardpool.policy.money import to_micros
from guardpool.runner.enforcer import Enforcer


def reason_kind(reason: str) -> str:
    """A low-cardinality label for a denial reason (the full text is in the ledger)."""
    for prefix, kind in (
        ("limit ", "limit"),
        ("post-hoc limit", "limit"),
        ("budget store unavailable", "store_unavailable"),
        ("audit ledger unavailable", "audit_unavailable"),
        ("input too large", "input_too_large"),
        ("internal error", "internal_error"),
    ):
        if reason.startswith(prefix):
            return kind
    return "guard"


class _PoolCollector(Collector):
    def __init__(self, enforcer: Enforcer) -> None:
        self.enforcer = enforcer

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        pool = self.enforcer.pool
        if pool is None:
            return
        stats = pool.stats()
        for name, value, doc in (
            ("guardpool_pool_workers", stats.workers, "live guard workers"),
            ("guardpool_pool_busy", stats.busy, "workers running a guard job"),
            ("guardpool_pool_queued", stats.queued, "guard jobs waiting for a worker"),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, value, doc in (
            ("guardpool_pool_killed", stats.killed, "workers killed at a deadline"),
            ("guardpool_pool_crashed", stats.crashed, "workers that crashed"),
        ):
            # Exposed as guardpool_pool_killed_total etc.
            yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    def __init__(self, registry: CollectorRegistry, enforcer: Enforcer) -> None:
        # prometheus_client also exposes every counter's creation time as a
        # separate `_created` *gauge* series; scrapers then see a gauge per
        # counter. Off: each count is exactly one counter.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.checks = Counter("guardpool_checks", "checks by action", ["action"], registry=registry)
        self.denials = Counter(
            "guardpool_denials", "denials by reason kind", ["reason"], registry=registry
        )
        self.guards = Counter(
            "guardpool_guard_outcomes", "guard outcomes", ["guard", "outcome"], registry=registry
        )
        self.latency = Histogram(
            "guardpool_check_seconds",
            "check latency in the server",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.usage = Counter(
            "guardpool_settled_usage",
            "settled usage by dimension (cost in micro-units)",
            ["dimension"],
            registry=registry,
        )
        registry.register(_PoolCollector(enforcer))

    def observe_check(self, d: Decision, seconds: float) -> None:
        self.checks.labels(d.action).inc()
        self.latency.observe(seconds)
        if d.action == "deny":  # an ask is waiting for a human, not refused
            for reason in d.reasons or ("unknown",):
                self.denials.labels(reason_kind(reason)).inc()
        for v in d.verdicts:
            self.guards.labels(v.guard, v.outcome).inc()

    def observe_settle(self, usage: Usage) -> None:
        if usage.tokens is not None:
            self.usage.labels("tokens").inc(usage.tokens)
        if usage.cost is not None:
            self.usage.labels("cost").inc(to_micros(usage.cost))

"""The runtime policy: compiled parts, and what applies to one set of labels.

    Policy.match(labels) ──► PolicyMatch(before, after, limits, estimate, price)
                               computed once per label tuple, then served from a cache

A check used to match its labels against every pattern four times (guards,
limits, estimates, prices); now the runner asks once and carries the answer
through budget planning, the guards and settle.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from guardpool.policy.compile import (
    CompiledLimit,
    CompiledPrice,
    check_guards,
    check_pool,
    compile_estimate,
    compile_limit,
    compile_price,
)
from guardpool.policy.config import Config
from guardpool.policy.guards import CompiledGuard, compile_guards
from guardpool.policy.labels import match, matches_any, specificity, validate_label
from guardpool.policy.machine import check_machine
from guardpool.policy.model import Usage

# Distinct label tuples remembered; labels come from hosts, so the cache is bounded.
_MATCH_CACHE = 4096


class PolicyMatch(msgspec.Struct, frozen=True, kw_only=True):
    """Everything of the policy that applies to one set of labels (config order)."""

    labels: tuple[str, ...]
    before: tuple[CompiledGuard, ...]
    after: tuple[CompiledGuard, ...]
    limits: tuple[CompiledLimit, ...]
    estimate: Usage | None  # the most specific [estimates] entry
    price: CompiledPrice | None  # the most specific [prices] entry
    # A before-guard runs in the pool (a callable): a check spends worker time.
    pooled: bool = False


class Policy:
    """A loaded, validated, compiled policy.

    ``import_path`` holds the directories guard modules are imported from
    besides ``sys.path`` (a policy file's directory and its parent); the pool
    hands it to its worker zygote, and nothing changes the global ``sys.path``.
    """

    def __init__(
        self,
        config: Config,
        source: str,
        base_dir: Path,
        *,
        import_path: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.source = source
        self.base_dir = base_dir
        self.import_path = tuple(import_path)
        canonical = msgspec.json.encode(msgspec.to_builtins(config), order="sorted")
        self.digest = hashlib.sha256(canonical).hexdigest()
        check_guards(config)
        self.guards: dict[str, CompiledGuard] = compile_guards(
            config.guard, config.guards, import_path=self.import_path
        )
        self.limits: list[CompiledLimit] = [
            compile_limit(p, spec) for p, spec in config.limits.items()
        ]
        self._estimates = {p: compile_estimate(p, e) for p, e in config.estimates.items()}
        self._prices = {p: compile_price(p, spec) for p, spec in config.prices.items()}
        check_pool(config)
        check_machine(config, self.import_path)
        self._matches: dict[tuple[str, ...], PolicyMatch] = {}
        self._lock = threading.Lock()

    def match(self, labels: Sequence[str]) -> PolicyMatch:
        """What applies to ``labels``; cached on the label tuple.

        Raises ValueError for a malformed label; only valid label sets are cached.
        """
        key = labels if isinstance(labels, tuple) else tuple(labels)
        found = self._matches.get(key)
        if found is not None:
            return found
        for label in key:
            validate_label(label)
        computed = self._compute(key)
        with self._lock:
            if len(self._matches) >= _MATCH_CACHE:
                # Oldest first (dicts keep insertion order): hosts reuse a few label sets.
                del self._matches[next(iter(self._matches))]
            self._matches[key] = computed
        return computed

    def guards_for(self, labels: Sequence[str], phase: str) -> tuple[CompiledGuard, ...]:
        """The guards of one phase for ``labels`` (a view of ``match``)."""
        m = self.match(labels)
        return m.before if phase == "before" else m.after

    def _compute(self, labels: tuple[str, ...]) -> PolicyMatch:
        guards = [
            g for g in self.guards.values() if any(matches_any(p, labels) for p in g.spec.ops)
        ]
        before = tuple(g for g in guards if g.spec.phase == "before")
        return PolicyMatch(
            labels=labels,
            before=before,
            pooled=any(g.kind == "callable" for g in before),
            after=tuple(g for g in guards if g.spec.phase == "after"),
            limits=tuple(lim for lim in self.limits if matches_any(lim.pattern, labels)),
            estimate=_most_specific(self._estimates, labels),
            price=_most_specific(self._prices, labels),
        )


def _most_specific(table: dict[str, Any], labels: Sequence[str]) -> Any:
    candidates = [p for p in table if any(match(p, label) for label in labels)]
    return table[max(candidates, key=specificity)] if candidates else None

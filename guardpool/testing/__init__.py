"""Testing guardpool policies and guards in your own suite.

- ``scratch_enforcer(policy)``: your policy on a throw-away memory store and ledger;
- ``fuzz_guard("module:function", seconds=...)``: raises ``GuardFuzzFailure`` with a
  minimised reproducer when the guard times out, crashes, runs out of memory or raises;
- ``adversarial_texts(pattern=..., guard=...)``: a hypothesis strategy of hostile text
  (ReDoS pumps, huge repeats, Unicode edge cases, lone surrogates) — needs ``hypothesis``;
- ``assert_linear_time("module:function")``: fails when a guard's time grows faster than
  linearly with its input;
- the pytest plugin (``guardpool.testing.plugin``, registered through ``pytest11``):
  fixtures ``guardpool_policy``, ``guardpool_pool``, ``guardpool_enforcer``, ``guardpool_run``.

Names are imported lazily so that pytest loading the plugin costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "scratch_enforcer": "guardpool.testing.enforcer",
    "fuzz_guard": "guardpool.testing.fuzzguard",
    "GuardFuzzFailure": "guardpool.testing.fuzzguard",
    "adversarial_texts": "guardpool.testing.strategies",
    "assert_linear_time": "guardpool.testing.timing",
    "GrowthError": "guardpool.testing.timing",
}

__all__ = [
    "GrowthError",
    "GuardFuzzFailure",
    "adversarial_texts",
    "assert_linear_time",
    "fuzz_guard",
    "scratch_enforcer",
]

if TYPE_CHECKING:
    from guardpool.testing.enforcer import scratch_enforcer
    from guardpool.testing.fuzzguard import GuardFuzzFailure, fuzz_guard
    from guardpool.testing.strategies import adversarial_texts
    from guardpool.testing.timing import GrowthError, assert_linear_time


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guardpool.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""guardpool: keeps LLM agents inside their limits.

Agent hosts ask guardpool before every operation. guardpool runs the matching
guards in sandboxed, killable worker processes, reserves the operation's
expected cost against call/token/cost/time budgets *before* it runs, and
records everything in a hash-chained audit ledger.

The public names are imported lazily so that ``import guardpool`` stays cheap
in worker processes and in CLI commands that need only part of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Enforcer": "guardpool.runner.enforcer",
    "Run": "guardpool.runner.enforcer",
    "Permit": "guardpool.runner.enforcer",
    "Operation": "guardpool.policy.model",
    "Usage": "guardpool.policy.model",
    "Decision": "guardpool.policy.model",
    "GuardVerdict": "guardpool.policy.model",
    "LimitStatus": "guardpool.policy.model",
    "Verdict": "guardpool.policy.verdict",
    "PolicyError": "guardpool.policy.errors",
    "GuardPool": "guardpool.runner.pool",
    "JobResult": "guardpool.runner.pool",
}

__all__ = [
    "Decision",
    "Enforcer",
    "GuardPool",
    "GuardVerdict",
    "JobResult",
    "LimitStatus",
    "Operation",
    "Permit",
    "PolicyError",
    "Run",
    "Usage",
    "Verdict",
    "__version__",
]

if TYPE_CHECKING:
    from guardpool.policy.errors import PolicyError
    from guardpool.policy.model import Decision, GuardVerdict, LimitStatus, Operation, Usage
    from guardpool.policy.verdict import Verdict
    from guardpool.runner.enforcer import Enforcer, Permit, Run
    from guardpool.runner.pool import GuardPool, JobResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guardpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""An enforcer for tests: the user's policy, a throw-away memory store and ledger.

Budgets start at zero and nothing touches the store or ledger the policy names
(its SQLite file, its Redis), so a test suite can run against a production
policy. The ledger captures inputs, so a failing test can show what was seen.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from guardpool.audit import Ledger
from guardpool.policy.config import StoreConfig
from guardpool.policy.loader import Policy, load_policy
from guardpool.runner.enforcer import Enforcer
from guardpool.runner.pool import GuardPool
from guardpool.store import open_store


@contextlib.contextmanager
def scratch_enforcer(
    policy: Policy | str | Path,
    *,
    pool: GuardPool | None = None,
    directory: Path | None = None,
) -> Iterator[Enforcer]:
    """A started ``Enforcer`` on ``policy`` with a fresh memory store and a temporary ledger.

    ``pool`` shares an already started pool (the pytest fixtures share one per
    session); without it the enforcer starts and stops its own.
    """
    loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="guardpool-")))
        ledger = Ledger(directory / "ledger.db", capture_input=True)
        store = open_store(StoreConfig(backend="memory"))
        enforcer = Enforcer(loaded, pool=pool, store=store, ledger=ledger)
        with enforcer:
            yield enforcer

"""The guardpool pytest plugin (entry point ``pytest11: guardpool``).

Fixtures, for a policy named by ``--guardpool-policy PATH`` or the ini option
``guardpool_policy`` (relative to the rootdir), or by overriding the
``guardpool_policy_path`` fixture:

- ``guardpool_policy`` (session): the loaded ``Policy``;
- ``guardpool_pool`` (session): one started worker pool for the policy's callable
  guards, shared by every test (None when the policy has none);
- ``guardpool_enforcer``: an ``Enforcer`` on that pool with a fresh memory store
  and a ledger in the test's ``tmp_path`` — budgets start at zero in every test,
  and the policy's own store and ledger are never touched;
- ``guardpool_run``: ``guardpool_enforcer.run("test")``.

The module imports only pytest at load time: every pytest session of a project
that installed guardpool loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from guardpool.policy.loader import Policy
    from guardpool.runner.enforcer import Enforcer, Run
    from guardpool.runner.pool import GuardPool


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("guardpool")
    group.addoption(
        "--guardpool-policy",
        dest="guardpool_policy",
        default=None,
        metavar="PATH",
        help="policy file for the guardpool_* fixtures",
    )
    parser.addini("guardpool_policy", "policy file for the guardpool_* fixtures", default="")


@pytest.fixture(scope="session")
def guardpool_policy_path(pytestconfig: pytest.Config) -> Path:
    value = pytestconfig.getoption("guardpool_policy") or pytestconfig.getini("guardpool_policy")
    if not value:
        raise pytest.UsageError(
            "guardpool fixtures need a policy: set guardpool_policy in the pytest ini file, "
            "pass --guardpool-policy PATH, or override the guardpool_policy_path fixture"
        )
    path = Path(str(value))
    return path if path.is_absolute() else pytestconfig.rootpath / path


@pytest.fixture(scope="session")
def guardpool_policy(guardpool_policy_path: Path) -> Policy:
    from guardpool.policy.errors import PolicyError
    from guardpool.policy.loader import load_policy

    try:
        return load_policy(guardpool_policy_path)
    except PolicyError as exc:
        raise pytest.UsageError(f"guardpool policy: {exc}") from None


@pytest.fixture(scope="session")
def guardpool_pool(guardpool_policy: Policy) -> Iterator[GuardPool | None]:
    from guardpool.runner.pool import GuardPool

    if not any(g.kind == "callable" for g in guardpool_policy.guards.values()):
        yield None
        return
    with GuardPool.from_config(guardpool_policy) as pool:
        yield pool


@pytest.fixture
def guardpool_enforcer(
    guardpool_policy: Policy, guardpool_pool: GuardPool | None, tmp_path: Path
) -> Iterator[Enforcer]:
    from guardpool.testing.enforcer import scratch_enforcer

    with scratch_enforcer(guardpool_policy, pool=guardpool_pool, directory=tmp_path) as enforcer:
        yield enforcer


@pytest.fixture
def guardpool_run(guardpool_enforcer: Enforcer) -> Run:
    return guardpool_enforcer.run("test", principal="test")

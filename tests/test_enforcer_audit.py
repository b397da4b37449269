"""A ledger that cannot be written: deny by default (and return the reservation), allow
when configured, on both paths (store and ledger in one SQLite file, or apart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guardpool import Enforcer, Operation, Usage
from guardpool.runner.hooks import HookEvent

OP = Operation(labels=("exe:llm:m",), input="hi", estimate=Usage(tokens=100))


def enforcer(tmp_path: Path, backend: str, on_failure: str = "deny") -> Enforcer:
    cfg: dict[str, Any] = {
        "limits": {"exe:llm:*": {"tokens": 1000}},
        "store": {"backend": backend, "path": str(tmp_path / "g.db")},
        "audit": {"path": str(tmp_path / "g.db"), "on_failure": on_failure},
    }
    return Enforcer.from_config(cfg).start()


def tokens(e: Enforcer, run_id: str) -> tuple[int, int]:
    (s,) = [s for s in e.run(run_id).usage() if s.dimension == "tokens"]
    return s.used, s.reserved


def test_a_check_that_cannot_be_audited_is_denied_and_reserves_nothing(tmp_path: Path) -> None:
    for backend in ("sqlite", "memory"):  # one transaction with the ledger, or two apart
        with enforcer(tmp_path, backend) as e:
            failures: list[HookEvent] = []
            e.on("audit_failure", failures.append)
            e.ledger.close()
            d = e.run(backend).check(OP)
            assert not d.allowed, backend
            assert d.reasons == ("audit ledger unavailable: the decision could not be recorded",)
            assert tokens(e, backend) == (0, 0), backend
            assert len(failures) == 1 and "closed" in failures[0].detail["error"]
        (tmp_path / "g.db").unlink()


def test_a_settle_that_cannot_be_audited_still_charges_the_actual_usage(tmp_path: Path) -> None:
    for backend in ("sqlite", "memory"):
        with enforcer(tmp_path, backend) as e:
            run = e.run(backend)
            d = run.check(OP)
            assert d.allowed
            e.ledger.close()
            after = run.settle(d, Usage(tokens=700))
            assert not after.allowed
            assert after.reasons[-1] == "audit ledger unavailable: the settle could not be recorded"
            assert tokens(e, backend) == (700, 0), backend
        (tmp_path / "g.db").unlink()


def test_on_failure_allow_lets_the_operation_run_and_says_so(tmp_path: Path) -> None:
    with enforcer(tmp_path, "sqlite", on_failure="allow") as e:
        failures: list[HookEvent] = []
        e.on("audit_failure", failures.append)
        e.ledger.close()
        run = e.run("open")
        d = run.check(OP)
        assert d.allowed
        assert tokens(e, "open") == (0, 100)  # reserved, though not recorded
        assert run.settle(d, Usage(tokens=50)).allowed
        assert tokens(e, "open") == (50, 0)
        assert len(failures) == 2

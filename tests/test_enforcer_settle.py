"""Settle end to end (real workers, real SQLite): after-guards audited like before-guards,
overruns reported per limit. Both tests failed before the check/settle split (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardpool import Enforcer, Operation, Usage
from guardpool.audit.ledger import Ledger
from guardpool.runner.hooks import HookEvent

G = "tests.enforcer_guards"


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    opened: list[Enforcer] = []

    def factory(**sections: Any) -> Enforcer:
        db = str(tmp_path / "guardpool.db")
        cfg: dict[str, Any] = {
            "pool": {"workers": 2, "job_timeout_ms": 2000},
            "store": {"backend": "sqlite", "path": db},
            "audit": {"path": db},
            **sections,
        }
        e = Enforcer.from_config(cfg).start()
        opened.append(e)
        return e

    yield factory
    for e in opened:
        e.close()


def events(tmp_path: Path, run_id: str) -> list[Any]:
    with Ledger(tmp_path / "guardpool.db") as ledger:
        return [s.event for s in ledger.events(run_id)]


def test_an_after_guard_timeout_and_crash_are_audited_and_hooked_as_such(
    make: Any, tmp_path: Path
) -> None:
    hooks: list[HookEvent] = []
    e = make(
        guard=[
            {"name": "slow", "phase": "after", "ops": ["op:net:*"], "call": f"{G}:hang",
             "timeout_ms": 150},
            {"name": "dies", "phase": "after", "ops": ["op:fs:*"], "call": f"{G}:crash"},
        ]
    )
    e.on("guard_timeout", hooks.append)
    e.on("guard_crash", hooks.append)
    run = e.run("after-fail")
    net = run.check(Operation(labels=("op:net:w",), input="x"))
    settled = run.settle(net, Usage(), output="response")
    assert not settled.allowed and settled.verdicts[0].outcome == "timeout"
    fs = run.check(Operation(labels=("op:fs:w",), input="x"))
    crashed = run.settle(fs, Usage(), output="file")
    assert not crashed.allowed and crashed.verdicts[0].outcome == "error"
    assert [(h.kind, h.detail["guard"]) for h in hooks] == [
        ("guard_timeout", "slow"),
        ("guard_crash", "dies"),
    ]
    got = [(ev.kind, ev.guard) for ev in events(tmp_path, "after-fail") if ev.guard]
    assert got == [("timeout", "slow"), ("crash", "dies")]
    with Ledger(tmp_path / "guardpool.db") as ledger:
        summary = ledger.summary("after-fail")
    assert (summary.timeouts, summary.crashes) == (1, 1)


def test_an_overrun_is_reported_per_limit_even_beside_a_post_hoc_limit(
    make: Any, tmp_path: Path
) -> None:
    hooks: list[HookEvent] = []
    e = make(
        limits={
            "exe:llm:*": {"tokens": 10_000},
            "*": {"tokens": 10_000, "enforcement": "post-hoc"},
        }
    )
    e.on("overrun", hooks.append)
    run = e.run("overrun")
    d = run.check(Operation(labels=("exe:llm:gpt-4o",), input="x", estimate=Usage(tokens=100)))
    run.settle(d, Usage(tokens=500))
    overruns = [ev for ev in events(tmp_path, "overrun") if ev.kind == "overrun"]
    assert [(ev.detail["pattern"], ev.detail["dimension"]) for ev in overruns] == [
        ("exe:llm:*", "tokens")
    ]
    assert overruns[0].detail["estimate"] == 100 and overruns[0].detail["actual"] == 500
    assert [(h.detail["pattern"], h.detail["actual"]) for h in hooks] == [("exe:llm:*", 500)]

"""The ``ask`` action: a human approves or rejects before the operation runs.

Real Enforcer, real worker processes for the callable guards, real SQLite
store and ledger; the HTTP form against a real ``guardpool serve``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardpool import Enforcer, Operation, Usage, Verdict
from guardpool.audit.ledger import Ledger
from guardpool.runner.enforcer import OperationDenied, Run

from .sidecar import TOKEN, Sidecar

GUARDS = [
    {"name": "deploys", "ops": ["op:cmd"], "call": "tests.integration_guards:ask_deploy"},
    {"name": "no-rm", "ops": ["op:cmd"], "deny_regex": ["rm -rf"], "reason": "recursive delete"},
    {"name": "force", "ops": ["op:cmd"], "call": "tests.integration_guards:warn_force_push"},
]


def config(tmp_path: Path, **limits: Any) -> dict[str, Any]:
    db = str(tmp_path / "g.db")
    return {
        "pool": {"workers": 1},
        "guard": GUARDS,
        "limits": {"op:cmd": {"calls": 10}, **limits},
        "store": {"backend": "sqlite", "path": db},
        "audit": {"path": db},
    }


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    with Enforcer.from_config(config(tmp_path)) as enforcer:
        yield enforcer.run("r1", principal="alice")


def cmd(text: str, label: str = "op:cmd:x") -> Operation:
    return Operation(labels=(label,), input=text)


def calls(run: Run, pattern: str = "op:cmd") -> tuple[int, int]:
    for s in run.usage():
        if s.pattern == pattern and s.dimension == "calls":
            return s.used, s.reserved
    raise AssertionError(pattern)


def events(tmp_path: Path) -> list[Any]:
    ledger = Ledger(tmp_path / "g.db")
    try:
        assert ledger.verify().ok
        return [e.event for e in ledger.events("r1")]
    finally:
        ledger.close()


def test_verdict_ask_is_a_public_verdict() -> None:
    assert Verdict.ask("why") == Verdict("ask", "why")


def test_an_ask_waits_for_approval_then_runs_and_settles(run: Run, tmp_path: Path) -> None:
    asked = run.check(cmd("deploy to prod"))
    assert asked.action == "ask" and not asked.allowed
    assert asked.reasons == ("deploys need a human's approval",)
    assert asked.input == "deploy to prod"  # kept, so the human sees what they approve
    assert calls(run) == (0, 1)  # the reservation waits with it
    with pytest.raises(ValueError, match="by="):
        run.approve(asked, by="")
    approved = run.approve(asked, by="bob")
    assert approved.allowed and approved.id == asked.id
    assert approved.reasons[-1] == "approved by bob"
    assert run.approve(asked, by="bob") == approved  # approving twice answers the same
    run.settle(approved, Usage())
    assert calls(run) == (1, 0)
    kinds = [(e.kind, e.decision_id) for e in events(tmp_path)]
    assert ("approve", asked.id) in kinds and ("settle", asked.id) in kinds
    approve = next(e for e in events(tmp_path) if e.kind == "approve")
    assert approve.detail == {"by": "bob"} and approve.principal == "alice"


def test_a_rejected_ask_releases_its_reservation(run: Run, tmp_path: Path) -> None:
    asked = run.check(cmd("deploy to prod"))
    rejected = run.reject(asked, by="carol")
    assert rejected.action == "deny" and not rejected.allowed
    assert rejected.reasons[-1] == "rejected by carol"
    assert calls(run) == (0, 0)
    assert not run.approve(asked, by="bob").allowed  # too late: it was rejected
    assert [e.kind for e in events(tmp_path)][-2:] == ["reject", "release"]
    unknown = run.approve("no-such-decision", by="bob")
    assert unknown.action == "deny" and "no pending ask" in unknown.reasons[0]


def test_deny_beats_ask_beats_warn(run: Run) -> None:
    assert run.check(cmd("deploy && rm -rf /")).action == "deny"
    both = run.check(cmd("deploy --force"))
    assert both.action == "ask"
    assert set(both.reasons) == {
        "deploys need a human's approval",
        "force-push rewrites shared history",
    }
    assert run.check(cmd("git push --force")).action == "warn"
    # the context form never runs an unapproved ask
    with pytest.raises(OperationDenied), run.operation(cmd("deploy")):
        raise AssertionError("never runs")


def test_limits_can_ask_on_exceeding_and_on_crossing_warn_at(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        **{
            "op:net": {"calls": 1, "on_exceed": "ask"},
            "op:fs": {"calls": 4, "warn_at": 0.5, "on_warn_at": "ask"},
        },
    )
    with Enforcer.from_config(cfg) as enforcer:
        run = enforcer.run("r1")
        first = run.check(cmd("GET /", "op:net:r"))
        assert first.action == "allow"
        run.settle(first, Usage())
        over = run.check(cmd("GET /", "op:net:r"))
        assert over.action == "ask" and "on_exceed=ask" in over.reasons[0]
        run.settle(run.approve(over, by="ops"), Usage())
        assert calls(run, "op:net") == (2, 0)  # a human let it exceed: charged in full
        assert run.check(cmd("a", "op:fs:w")).action == "allow"  # 1 of 4
        crossing = run.check(cmd("b", "op:fs:w"))  # 2 of 4: crosses 50%
        assert crossing.action == "ask" and "on_warn_at=ask" in crossing.reasons[0]
        assert run.check(cmd("c", "op:fs:w")).action == "allow"  # already past the mark


def test_settling_an_unapproved_ask_is_charged_and_flagged(run: Run, tmp_path: Path) -> None:
    asked = run.check(cmd("deploy"))
    run.settle(asked, Usage())
    assert calls(run) == (1, 0)
    assert any(e.kind == "warning" and "never approved" in e.reason for e in events(tmp_path))


def test_approve_and_reject_over_http(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    db = tmp_path / "g.db"
    policy.write_text(
        '[[guard]]\nname = "deploys"\nops = ["op:cmd"]\n'
        'call = "tests.integration_guards:ask_deploy"\n'
        '[limits."op:cmd"]\ncalls = 10\n'
        f'[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
    )
    with (
        Sidecar(policy) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as c,
    ):

        def check() -> dict[str, Any]:
            body = {"run_id": "h1", "labels": ["op:cmd:deploy"], "input": "deploy now"}
            d: dict[str, Any] = c.post("/v1/check", json=body).json()
            assert d["action"] == "ask" and d["allowed"] is False
            return d

        asked = check()
        ok = c.post("/v1/approve", json={"run_id": "h1", "decision_id": asked["id"], "by": "bob"})
        assert ok.status_code == 200 and ok.json()["allowed"] is True
        settled = c.post("/v1/settle", json={"run_id": "h1", "decision_id": asked["id"]})
        assert settled.status_code == 200
        no = c.post("/v1/reject", json={"run_id": "h1", "decision_id": check()["id"], "by": "eve"})
        assert no.json()["action"] == "deny" and no.json()["reasons"][-1] == "rejected by eve"
        report = c.get("/v1/runs/h1").json()
        calls_limit = next(s for s in report["limits"] if s["dimension"] == "calls")
        assert (calls_limit["used"], calls_limit["reserved"]) == (1, 0)
        bad = c.post("/v1/approve", json={"run_id": "h1", "decision_id": asked["id"]})
        assert bad.status_code == 422 and "by" in bad.json()["detail"]
        blank = c.post("/v1/approve", json={"run_id": "h1", "decision_id": "x", "by": " "})
        assert blank.status_code == 422
        anon = httpx.post(f"{server.url}/v1/approve", json={}, timeout=30)
        assert anon.status_code == 401

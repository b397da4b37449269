"""The enforcer end to end: real worker processes, real sqlite store and ledger."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardpool import Decision, Enforcer, Operation, Usage
from guardpool.audit.ledger import Ledger
from guardpool.policy.loader import load_policy
from guardpool.runner.enforcer import HookEvent, OperationDenied
from guardpool.store.sqlite import SqliteStore

from .conftest import ManualClock

G = "tests.enforcer_guards"


def config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    db = str(tmp_path / "guardpool.db")
    cfg: dict[str, Any] = {
        "pool": {"workers": 2, "job_timeout_ms": 2000},
        "store": {"backend": "sqlite", "path": db, "reservation_ttl_ms": 60_000},
        "audit": {"path": db},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    opened: list[Enforcer] = []

    def factory(**sections: Any) -> Enforcer:
        enforcer = Enforcer.from_config(config(tmp_path, **sections)).start()
        opened.append(enforcer)
        return enforcer

    yield factory
    for e in opened:
        e.close()


def llm(text: str = "hello", **estimate: Any) -> Operation:
    return Operation(
        labels=("exe:llm:gpt-4o",), input=text, estimate=Usage(**estimate) if estimate else None
    )


def kinds(tmp_path: Path, run_id: str) -> list[str]:
    ledger = Ledger(tmp_path / "guardpool.db")
    try:
        return [e.event.kind for e in ledger.events(run_id)]
    finally:
        ledger.close()


# ------------------------------------------------------------------ fail-fast


def test_an_estimate_over_a_fail_fast_limit_is_refused_before_it_runs(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"cost": "$10.00"}})
    run = e.run("r1")
    ran = []
    with pytest.raises(OperationDenied) as err, run.operation(llm(cost="$100.00")):
        ran.append(True)
    assert ran == []
    assert not err.value.decision.allowed
    assert "would exceed $10.00" in err.value.decision.reasons[0]
    # nothing was reserved for the refused call
    (status,) = [s for s in run.usage() if s.dimension == "cost"]
    assert (status.used, status.reserved) == (0, 0)


def test_the_call_after_a_breach_is_refused(make: Any) -> None:
    """A settle over the estimate is charged in full; the *next* call is refused."""
    e = make(limits={"exe:llm:*": {"tokens": 1000}})
    run = e.run("r2")
    first = run.check(llm(tokens=100))
    assert first.allowed
    run.settle(first, Usage(tokens=1500))  # overrun: charged in full
    (status,) = [s for s in run.usage() if s.dimension == "tokens"]
    assert status.used == 1500
    second = run.check(llm(tokens=1))
    assert not second.allowed
    assert "already used" in second.reasons[0]


def test_without_any_estimate_the_safety_margin_refuses_near_the_limit(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"tokens": 1000, "margin": 0.1}})
    run = e.run("r3")
    d = run.check(llm())
    assert d.allowed
    run.settle(d, Usage(tokens=850))
    assert run.check(llm()).allowed  # 850 used, 100 headroom needed: 850 + 100 <= 1000
    run.settle(run.check(llm()), Usage(tokens=60))
    refused = run.check(llm())  # 910 + 100 > 1000
    assert not refused.allowed
    assert "safety margin" in refused.reasons[0]


def test_estimates_and_prices_from_config_are_used(make: Any) -> None:
    e = make(
        limits={"exe:llm:*": {"cost": "$1.00"}},
        prices={"exe:llm:gpt-4o": {"input_per_mtok": "$2.50", "output_per_mtok": "$10.00"}},
        estimates={"exe:llm:*": {"tokens": 40_000}},
    )
    run = e.run("r4")
    d = run.check(llm())
    assert d.allowed
    (cost,) = [s for s in d.limits if s.dimension == "cost"]
    # 40k tokens at the output price (the conservative side) = $0.40
    assert cost.estimate == 400_000
    run.settle(d, Usage(input_tokens=1000, output_tokens=1000))
    (after,) = [s for s in run.usage() if s.dimension == "cost"]
    assert after.used == 12_500  # $0.0025 + $0.01


def test_exact_budget_under_a_thread_race(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"cost": "$10.00"}})
    run = e.run("race")
    granted: list[Decision] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            d = run.check(llm(cost="0.25"))
            if d.allowed:
                with lock:
                    granted.append(d)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 40
    for d in granted:
        run.settle(d, Usage(cost="0.25"))
    (status,) = [s for s in run.usage() if s.dimension == "cost"]
    assert (status.used, status.reserved) == (10_000_000, 0)


def test_scopes_separate_runs_and_share_principals(make: Any) -> None:
    e = make(
        limits={
            "exe:llm:*": {"calls": 2, "scope": "run"},
            "op:cmd:*": {"calls": 3, "scope": "principal"},
        }
    )
    a, b = e.run("a", principal="alice"), e.run("b", principal="alice")
    assert all(a.check(llm()).allowed for _ in range(2))
    assert not a.check(llm()).allowed
    assert b.check(llm()).allowed  # another run, its own llm budget
    cmd = Operation(labels=("op:cmd:git:status",), input="git status")
    assert [a.check(cmd).allowed, b.check(cmd).allowed, a.check(cmd).allowed] == [True] * 3
    assert not b.check(cmd).allowed  # alice's shared command budget is spent
    assert e.run("c", principal="bob").check(cmd).allowed


def test_every_matching_limit_must_hold(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"calls": 10}, "exe:llm:gpt-4o": {"calls": 1}, "*": {"calls": 5}})
    run = e.run("and")
    assert run.check(llm()).allowed
    d = run.check(llm())
    assert not d.allowed and "exe:llm:gpt-4o" in d.reasons[0]
    other = Operation(labels=("exe:llm:claude",), input="x")
    assert [run.check(other).allowed for _ in range(5)] == [True, True, True, True, False]


# ------------------------------------------------------------ settle / release


def test_settle_is_idempotent_by_decision_id(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"tokens": 10_000}})
    run = e.run("idem")
    d = run.check(llm(tokens=100))
    first = run.settle(d, Usage(tokens=300))
    again = run.settle(d.id, Usage(tokens=300))
    assert again == first
    (status,) = [s for s in run.usage() if s.dimension == "tokens"]
    assert (status.used, status.reserved) == (300, 0)


def test_release_returns_the_reservation(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"calls": 1}})
    run = e.run("rel")
    d = run.check(llm())
    assert not run.check(llm()).allowed  # the reservation holds the only call
    assert run.release(d) is True
    assert run.release(d) is False
    assert run.check(llm()).allowed


def test_post_hoc_limits_are_checked_at_settle(make: Any, tmp_path: Path) -> None:
    e = make(limits={"exe:llm:*": {"tokens": 1000, "enforcement": "post-hoc"}})
    run = e.run("post")
    d = run.check(llm(tokens=5000))  # a post-hoc limit does not refuse on the estimate
    assert d.allowed
    settled = run.settle(d, Usage(tokens=1200))
    assert not settled.allowed
    assert any("post-hoc" in r for r in settled.reasons)
    assert not run.check(llm()).allowed  # at or over: the next one is refused
    assert "limit_breach" in kinds(tmp_path, "post")


def test_warn_limits_allow_and_report(make: Any) -> None:
    seen: list[HookEvent] = []
    e = make(limits={"exe:llm:*": {"calls": 1, "on_exceed": "warn"}})
    e.on("limit_exceeded", seen.append)
    run = e.run("warn")
    assert run.check(llm()).action == "allow"
    d = run.check(llm())
    assert d.allowed and d.action == "warn"
    assert seen and seen[0].detail["dimension"] == "calls"


def test_warn_at_fires_once_when_crossing(make: Any) -> None:
    seen: list[HookEvent] = []
    e = make(limits={"exe:llm:*": {"calls": 10, "warn_at": 0.5}})
    e.on("limit_warning", seen.append)
    run = e.run("warn-at")
    for _ in range(8):
        run.settle(run.check(llm()), Usage())
    assert len(seen) == 1
    assert seen[0].detail["used"] + seen[0].detail["reserved"] == 5


def clocked(tmp_path: Path, clock: ManualClock, **sections: Any) -> Enforcer:
    """An enforcer whose SQLite store runs on a manual clock (no sleeping in tests)."""
    policy = load_policy(config(tmp_path, **sections))
    store = SqliteStore(policy.config.store.path, clock=clock)
    return Enforcer(policy, store=store).start()


def test_rolling_window_frees_budget_after_it_passes(tmp_path: Path, clock: ManualClock) -> None:
    with clocked(tmp_path, clock, limits={"exe:llm:*": {"calls": 2, "window": "1s"}}) as e:
        run = e.run("roll")
        for _ in range(2):
            run.settle(run.check(llm()), Usage())
        assert not run.check(llm()).allowed
        clock.advance(999)
        assert not run.check(llm()).allowed
        clock.advance(1)
        assert run.check(llm()).allowed


def test_unsettled_reservations_expire_and_are_charged(tmp_path: Path, clock: ManualClock) -> None:
    seen: list[HookEvent] = []
    e = clocked(
        tmp_path,
        clock,
        limits={"exe:llm:*": {"tokens": 1000}},
        store={"reservation_ttl_ms": 100},
    )
    with e:
        e.on("reservation_expired", seen.append)
        run = e.run("ttl")
        d = run.check(llm(tokens=400))
        assert d.allowed
        clock.advance(101)
        e.expire()
        (status,) = [s for s in run.usage() if s.dimension == "tokens"]
        assert (status.used, status.reserved) == (400, 0)
        assert [h.decision_id for h in seen] == [d.id]
        assert run.settle(d, Usage(tokens=10)).reasons == ()  # too late: nothing changes
        (status,) = [s for s in run.usage() if s.dimension == "tokens"]
        assert status.used == 400
    ledger = Ledger(tmp_path / "guardpool.db")
    try:
        assert [ev.event.decision_id for ev in ledger.events(kinds=["expire"])] == [d.id]
    finally:
        ledger.close()


def test_a_reservation_that_expires_before_its_settle_is_audited_by_that_settle(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Settle expires overdue reservations first; those expiries reach the ledger too."""
    with clocked(
        tmp_path, clock, limits={"exe:llm:*": {"calls": 10}}, store={"reservation_ttl_ms": 100}
    ) as e:
        run = e.run("late")
        d = run.check(llm())
        clock.advance(101)
        after = run.settle(d, Usage())
        assert after.limits == ()  # nothing applied: the reservation had expired
    with Ledger(tmp_path / "guardpool.db") as ledger:
        assert [ev.event.decision_id for ev in ledger.events(kinds=["expire"])] == [d.id]


# --------------------------------------------------------------------- guards


def test_guard_outcomes_combine_deny_over_warn_over_allow(make: Any) -> None:
    e = make(
        guard=[
            {"name": "allow", "ops": ["exe:llm:*"], "call": f"{G}:allow"},
            {"name": "warn", "ops": ["exe:llm:*"], "call": f"{G}:warn_long"},
            {"name": "secrets", "ops": ["exe:llm:*"], "call": f"{G}:deny_secrets"},
            {
                "name": "no-keys",
                "ops": ["exe:llm:*"],
                "deny_regex": ["AKIA[0-9A-Z]{16}"],
                "reason": "credential in outbound data",
            },
        ]
    )
    run = e.run("combine")
    assert run.check(llm("short")).action == "allow"
    assert run.check(llm("a rather long harmless input")).action == "warn"
    d = run.check(llm("a rather long input with a secret"))
    assert d.action == "deny" and d.reasons == ("long input", "mentions a secret")
    d = run.check(llm("AKIAABCDEFGHIJKLMNOP"))  # 20 chars: no length warning
    assert d.action == "deny" and d.reasons == ("credential in outbound data",)
    assert [v.outcome for v in d.verdicts] == ["allow", "allow", "allow", "deny"]


def test_timeouts_fail_closed_by_default_and_open_when_configured(
    make: Any, tmp_path: Path
) -> None:
    seen: list[HookEvent] = []
    e = make(
        guard=[
            {"name": "closed", "ops": ["op:net:*"], "call": f"{G}:hang", "timeout_ms": 150},
            {
                "name": "open",
                "ops": ["op:fs:*"],
                "call": f"{G}:hang",
                "timeout_ms": 150,
                "on_timeout": "allow",
            },
        ]
    )
    e.on("guard_timeout", seen.append)
    run = e.run("timeouts")
    start = time.monotonic()
    closed = run.check(Operation(labels=("op:net:w",), input="x"))
    assert time.monotonic() - start < 10  # generous: the guard would hang for 60 s
    assert not closed.allowed and closed.verdicts[0].outcome == "timeout"
    opened = run.check(Operation(labels=("op:fs:w",), input="x"))
    assert opened.allowed and opened.action == "warn"
    assert "allowed (on_timeout=allow)" in opened.reasons[0]
    assert [h.detail["guard"] for h in seen] == ["closed", "open"]
    assert kinds(tmp_path, "timeouts").count("timeout") == 2


def test_privileged_guards_never_fail_open_on_error(make: Any) -> None:
    e = make(
        guard=[
            {"name": "raises", "ops": ["*"], "call": f"{G}:boom", "on_error": "allow"},
            {
                "name": "priv",
                "ops": ["op:cmd:*"],
                "call": f"{G}:forgets_to_return",
                "privileged": True,
            },
        ]
    )
    run = e.run("priv")
    d = run.check(Operation(labels=("op:net:r",), input="x"))
    assert d.allowed and "guard exploded" in d.reasons[0]  # fail-open, audited
    d = run.check(Operation(labels=("op:cmd:ls",), input="x"))
    assert not d.allowed
    assert d.verdicts[1].outcome == "error"
    assert "expected Verdict or bool" in d.verdicts[1].reason


def test_rewrites_last_before_wins_and_after_guards_chain(make: Any) -> None:
    e = make(
        guard=[
            {"name": "redact", "ops": ["*"], "call": f"{G}:redact"},
            {"name": "shout", "ops": ["*"], "call": f"{G}:shout"},
            {"name": "redact-out", "phase": "after", "ops": ["*"], "call": f"{G}:redact"},
            {"name": "shout-out", "phase": "after", "ops": ["*"], "call": f"{G}:shout"},
        ]
    )
    run = e.run("rewrite")
    d = run.check(llm("my password"))
    assert d.input == "MY PASSWORD"  # last before-guard wins
    after = run.settle(d, Usage(), output="your password")
    assert after.input == "YOUR ********"  # chained: redact, then shout


def test_after_guards_can_withhold_the_output(make: Any) -> None:
    e = make(guard=[{"name": "out", "phase": "after", "ops": ["*"], "call": f"{G}:deny_secrets"}])
    run = e.run("after")
    d = run.check(llm())
    after = run.settle(d, Usage(), output="the secret is 42")
    assert not after.allowed and after.input is None
    assert after.reasons == ("mentions a secret",)


def test_nested_guards_and_context(make: Any) -> None:
    e = make(
        guard=[
            {"name": "no-keys", "ops": ["nothing"], "deny_regex": ["AKIA[0-9A-Z]{16}"]},
            {"name": "outer", "ops": ["exe:*"], "call": f"{G}:nested"},
            {"name": "ctx", "ops": ["op:*"], "call": f"{G}:sees_context"},
        ]
    )
    assert not e.run("n").check(llm("AKIAABCDEFGHIJKLMNOP")).allowed
    assert e.run("n").check(llm("harmless")).allowed
    d = e.run("forbidden-run", principal="mallory").check(Operation(labels=("op:x",), input=""))
    assert d.reasons == ("run forbidden-run principal mallory",)


def test_a_redos_input_is_answered_quickly(make: Any) -> None:
    e = make(guard=[{"name": "redos", "ops": ["*"], "deny_regex": ["(a+)+$"]}])
    run = e.run("redos")
    start = time.monotonic()
    attack = run.check(llm("a" * 200_000 + "!"))  # Python re would backtrack for ages
    matching = run.check(llm("a" * 200_000))
    assert time.monotonic() - start < 10  # generous: backtracking would take ages
    assert attack.allowed  # no run of a's ends the text
    assert not matching.allowed


def test_input_larger_than_the_limit_is_refused(make: Any) -> None:
    e = make(pool={"max_input_bytes": 1000})
    d = e.run("big").check(llm("x" * 1001))
    assert not d.allowed and "input too large" in d.reasons[0]


# ------------------------------------------------------------------ fail closed


def test_a_store_outage_denies(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        limits={"exe:llm:*": {"calls": 10}},
        store={
            "backend": "redis",
            "url": "redis://127.0.0.1:1/0",
            "connect_timeout_ms": 100,
            "op_timeout_ms": 100,
        },
    )
    with Enforcer.from_config(cfg) as e:
        start = time.monotonic()
        d = e.run("down").check(llm())
        assert time.monotonic() - start < 5  # 100 ms timeouts: bounded, not retried
    assert not d.allowed
    assert d.reasons[0].startswith("budget store unavailable: redis")
    # The store's message carries the prefix; the enforcer once added it again.
    assert d.reasons[0].count("budget store unavailable") == 1


def test_hooks_see_decisions_and_a_broken_hook_does_not_break_checks(make: Any) -> None:
    e = make()
    seen: list[str] = []

    def broken(event: HookEvent) -> None:
        raise RuntimeError("hook bug")

    e.on("decision", broken)
    e.on("decision", lambda ev: seen.append(ev.detail["action"]))
    assert e.run("hooks").check(llm()).allowed
    assert seen == ["allow"]
    with pytest.raises(ValueError, match="unknown hook event"):
        e.on("nope", broken)


def test_async_check_and_settle(make: Any) -> None:
    e = make(limits={"exe:llm:*": {"calls": 5}})
    run = e.run("async")

    async def main() -> list[Decision]:
        decisions = await asyncio.gather(*(run.acheck(llm()) for _ in range(8)))
        for d in decisions:
            if d.allowed:
                await run.asettle(d, Usage(tokens=1))
        return list(decisions)

    decisions = asyncio.run(main())
    assert sum(d.allowed for d in decisions) == 5


def test_every_decision_is_audited_and_the_chain_verifies(make: Any, tmp_path: Path) -> None:
    e = make(
        limits={"exe:llm:*": {"calls": 1}},
        guard=[{"name": "no-keys", "ops": ["*"], "deny_regex": ["AKIA[0-9A-Z]{16}"]}],
    )
    run = e.run("audit")
    d = run.check(llm("hello"))
    run.settle(d, Usage(tokens=5, cost=Decimal("0.01")))
    run.check(llm("again"))
    e.close()
    ledger = Ledger(tmp_path / "guardpool.db")
    try:
        got = [ev.event.kind for ev in ledger.events("audit")]
        assert got == [
            "check",
            "warning",
            "reserve",
            "verdict",
            "decision",  # 1 of 1 call passes 80%
            "settle",
            "decision",
            "check",
            # Regex banks only: no snapshot read before them (no worker time to
            # spare), so the bank ran and the transaction refused (issue 15).
            "limit_breach",
            "verdict",
            "decision",
        ]
        assert ledger.verify().ok
        check = ledger.events("audit")[0].event
        assert check.input is None and check.input_len == 5 and len(check.input_sha256) == 64
    finally:
        ledger.close()


def test_without_guards_the_joint_transaction_records_a_refusal_like_the_usual_path(
    make: Any, tmp_path: Path
) -> None:
    """No before-guard: no snapshot read, the transaction itself refuses and records it."""
    e = make(limits={"exe:llm:*": {"calls": 1}})
    run = e.run("plain")
    assert run.check(llm()).allowed
    refused = run.check(llm())
    assert not refused.allowed and "already used" in refused.reasons[0]
    assert refused.limits[0].exceeded and refused.limits[0].reserved == 1
    assert kinds(tmp_path, "plain") == [
        "check",
        "warning",  # 1 of 1 call passes 80%
        "reserve",
        "decision",
        "check",
        "limit_breach",
        "decision",
    ]
    e.close()
    ledger = Ledger(tmp_path / "guardpool.db")
    try:
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_a_bank_deny_on_the_joint_path_reserves_nothing_and_reports_the_limits(
    make: Any, tmp_path: Path
) -> None:
    """Banks only: no snapshot read before them (issue 15); a deny reads the limits for its
    decision and reserves nothing."""
    e = make(
        limits={"exe:llm:*": {"calls": 5}},
        guard=[{"name": "no-keys", "ops": ["*"], "deny_regex": ["AKIA[0-9A-Z]{16}"]}],
    )
    run = e.run("bank")
    assert run.check(llm()).allowed
    denied = run.check(llm("key AKIAABCDEFGHIJKLMNOP"))
    assert not denied.allowed and "no-keys" in denied.reasons[0]
    (status,) = denied.limits
    assert (status.dimension, status.reserved, status.exceeded) == ("calls", 1, False)
    assert [s.reserved for s in run.usage()] == [1]  # the first check's only
    assert kinds(tmp_path, "bank")[-3:] == ["check", "verdict", "decision"]


def test_with_a_callable_guard_an_exhausted_budget_is_refused_before_the_worker_runs(
    make: Any, tmp_path: Path
) -> None:
    e = make(
        limits={"exe:llm:*": {"calls": 1}},
        guard=[{"name": "pooled", "ops": ["*"], "call": f"{G}:allow"}],
    )
    run = e.run("pooled")
    assert run.check(llm()).allowed
    refused = run.check(llm())
    assert not refused.allowed and "already used" in refused.reasons[0]
    assert refused.verdicts == ()  # the guard never ran
    assert kinds(tmp_path, "pooled")[-3:] == ["check", "limit_breach", "decision"]


def test_custom_dimensions_are_counted(make: Any) -> None:
    e = make(
        limits={"op:db:*": {"dimensions": {"rows": 100}}},
        estimates={"op:db:*": {"dimensions": {"rows": 30}}},
    )
    run = e.run("rows")
    db = Operation(labels=("op:db:query",), input="select *")
    for _ in range(3):
        d = run.check(db)
        assert d.allowed and d.limits[0].estimate == 30
        run.settle(d, Usage(extra={"rows": 30}))
    refused = run.check(db)  # 90 used + 30 estimated > 100
    assert not refused.allowed and "rows" in refused.reasons[0]
    assert run.check(
        Operation(labels=("op:db:query",), input="", estimate=Usage(extra={"rows": 5}))
    ).allowed


def test_a_callable_beside_the_policy_file_runs_in_the_workers_without_sys_path(
    tmp_path: Path,
) -> None:
    """The zygote gets the policy's import path explicitly; the host's sys.path is untouched."""
    module = f"beside_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from guardpool import Verdict\n\n"
        "def deny_all(value, ctx):\n    return Verdict.deny('denied from beside the file')\n"
    )
    db = tmp_path / "g.db"
    (tmp_path / "p.toml").write_text(
        f'[pool]\nworkers = 1\n[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
        f'[[guard]]\nname = "g"\ncall = "{module}:deny_all"\n'
    )
    before = list(sys.path)
    with Enforcer.from_config(tmp_path / "p.toml") as e:
        d = e.run("beside").check(llm())
    assert sys.path == before
    assert d.reasons == ("denied from beside the file",)


def test_a_guards_own_timeout_is_its_deadline_not_job_timeout_ms(make: Any) -> None:
    # What lint's GP207 says: pool.job_timeout_ms (here 50 ms) caps GuardPool.submit jobs,
    # not guards; this guard's timeout_ms (5 s) is its deadline, so a 0.3 s nap passes.
    e = make(
        pool={"workers": 1, "job_timeout_ms": 50},
        guard=[{"name": "nap", "ops": ["*"], "call": f"{G}:nap", "timeout_ms": 5000}],
    )
    decision = e.run("nap").check(llm())
    assert decision.allowed, decision
    assert [(v.guard, v.outcome) for v in decision.verdicts] == [("nap", "allow")], decision

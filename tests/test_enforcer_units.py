"""Check and settle as units: the memory store on a manual clock, a real ledger, and a
stand-in guard runner that answers set verdicts (no worker processes), so the budget
strategy and the verdict combination are tested on their own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from guardpool import Operation, Usage, Verdict
from guardpool.audit.ledger import Ledger
from guardpool.policy import inputs
from guardpool.policy.guards import CompiledGuard
from guardpool.policy.loader import Policy, load_policy
from guardpool.runner import budget
from guardpool.runner.audit_sink import AuditSink
from guardpool.runner.check import check
from guardpool.runner.guard_runner import GuardRunner
from guardpool.runner.hooks import HookBus
from guardpool.runner.pending import Pending, PendingTable
from guardpool.runner.scope import Scope
from guardpool.runner.services import Services
from guardpool.runner.settle import settle
from guardpool.runner.verdicts import GuardResult, Phase, combine, from_verdict
from guardpool.store.memory import MemoryStore

from .conftest import ManualClock

G = "tests.enforcer_guards"


class StandInGuards(GuardRunner):
    """Answers each guard with the verdict set for its name; records the calls."""

    def __init__(self, answers: dict[str, Verdict]) -> None:
        super().__init__(None)
        self.answers = answers
        self.calls: list[tuple[str, str, Any]] = []

    def run(
        self, phase: Phase, guards: Sequence[CompiledGuard], value: Any, scope: Scope
    ) -> tuple[list[GuardResult], Any]:
        results = []
        value = inputs.plain(value)  # the enforcer hands the runner its measured input
        for g in guards:
            self.calls.append((phase, g.spec.name, value))
            result = from_verdict(g, self.answers[g.spec.name], 0.5, phase)
            results.append(result)
            if result.has_rewrite:  # the runner's rule: the last rewrite wins
                value = result.rewrite
        return results, value


class Harness:
    def __init__(self, policy: Policy, tmp_path: Path, clock: ManualClock) -> None:
        self.store = MemoryStore(clock=clock)
        self.ledger = Ledger(tmp_path / "audit.db")
        self.guards = StandInGuards({})
        hooks = HookBus()
        self.svc = Services(
            policy=policy,
            store=self.store,
            guards=self.guards,
            audit=AuditSink(self.ledger, hooks, fail_closed=True),
            hooks=hooks,
            pending=PendingTable(),
            ttl_ms=60_000,
            max_input_bytes=1000,
        )
        self.n = 0

    def check(self, op: Operation, run_id: str = "r") -> Any:
        self.n += 1
        return check(self.svc, op, Scope(f"d{self.n}", run_id, "", op.labels))

    def settle(self, decision: Any, usage: Usage, output: Any = None) -> Any:
        _, pending = self.svc.pending.take(decision.id)
        if pending is None:  # nothing was reserved: settle still runs the after-guards
            match = self.svc.policy.match(decision.labels)
            pending = Pending(match, decision.run_id, "", 0.0, ())
        scope = Scope(decision.id, pending.run_id, pending.principal, pending.match.labels)
        return settle(self.svc, scope, pending, usage, output)

    def kinds(self) -> list[str]:
        return [s.event.kind for s in self.ledger.events()]


@pytest.fixture
def harness(tmp_path: Path, clock: ManualClock) -> Iterator[Any]:
    made: list[Harness] = []

    def make(**policy: Any) -> Harness:
        h = Harness(load_policy(policy), tmp_path, clock)
        made.append(h)
        return h

    yield make
    for h in made:
        h.ledger.close()


def op(text: str = "hi", **estimate: Any) -> Operation:
    return Operation(
        labels=("exe:llm:m",), input=text, estimate=Usage(**estimate) if estimate else None
    )


# ----------------------------------------------------------- verdict combination


def test_combine_takes_the_strongest_effect() -> None:
    assert combine([]) == "allow"
    assert combine(["allow", "warn", "allow"]) == "warn"
    assert combine(["warn", "deny", "allow"]) == "deny"
    with pytest.raises(KeyError):
        combine(["maybe"])  # type: ignore[list-item]


def test_guard_verdicts_combine_and_a_deny_returns_the_reservation(harness: Any) -> None:
    h = harness(
        guard=[
            {"name": "a", "ops": ["exe:*"], "call": f"{G}:allow"},
            {"name": "w", "ops": ["exe:*"], "call": f"{G}:allow"},
            {"name": "d", "ops": ["exe:*"], "call": f"{G}:allow"},
        ],
        limits={"exe:llm:*": {"tokens": 1000}},
    )
    h.guards.answers = {"a": Verdict.allow(), "w": Verdict.warn("hm"), "d": Verdict.allow()}
    warned = h.check(op(tokens=100))
    assert (warned.action, warned.allowed, warned.reasons) == ("warn", True, ("hm",))
    h.guards.answers["d"] = Verdict.deny("no")
    denied = h.check(op(tokens=100))
    assert (denied.action, denied.allowed, denied.reasons) == ("deny", False, ("hm", "no"))
    assert denied.input is None
    tokens = [s for s in h.store.states([p.item for p in _plan(h, 100)])]
    assert (tokens[0].reserved, tokens[0].used) == (100, 0)  # only the first one's reservation


def _plan(h: Harness, tokens: int) -> list[budget.PlannedItem]:
    return budget.plan_reservation(
        h.svc.policy.match(("exe:llm:m",)), Usage(tokens=tokens), "r", ""
    )


def test_the_last_before_rewrite_wins_and_after_guards_see_the_output(harness: Any) -> None:
    h = harness(
        guard=[
            {"name": "r1", "ops": ["exe:*"], "call": f"{G}:allow"},
            {"name": "out", "phase": "after", "ops": ["exe:*"], "call": f"{G}:allow"},
        ]
    )
    h.guards.answers = {"r1": Verdict.rewrite("clean"), "out": Verdict.deny("leak")}
    d = h.check(op("dirty"))
    assert d.input == "clean" and d.verdicts[0].rewritten
    # check ran only the before-guard; settle hands the after-guard the output
    assert h.settle(d, Usage(), output="secret").reasons == ("leak",)
    assert h.guards.calls == [("before", "r1", "dirty"), ("after", "out", "secret")]


# --------------------------------------------------------------- budget strategy


def test_an_estimate_completed_from_config_and_priced(harness: Any) -> None:
    h = harness(
        limits={"exe:llm:*": {"tokens": 10_000, "cost": "$1.00"}},
        estimates={"exe:llm:*": {"tokens": 500}},
        prices={"exe:llm:m": {"output_per_mtok": "$10.00"}},
    )
    amounts = {p.item.dimension: p.item.amount for p in _plan(h, 200)}
    assert amounts == {"tokens": 200, "cost": 2000}  # own tokens, priced at the dearer rate
    configured = budget.plan_reservation(h.svc.policy.match(("exe:llm:m",)), None, "r", "")
    assert {p.item.dimension: p.item.amount for p in configured} == {"tokens": 500, "cost": 5000}


def test_no_estimate_demands_headroom_and_post_hoc_reserves_nothing(harness: Any) -> None:
    h = harness(
        limits={
            "exe:llm:*": {"tokens": 1000, "margin": 0.1},
            "*": {"tokens": 1000, "enforcement": "post-hoc"},
        }
    )
    planned = budget.plan_reservation(h.svc.policy.match(("exe:llm:m",)), None, "r", "")
    shape = [(p.limit.pattern, p.item.amount, p.item.headroom, p.item.check) for p in planned]
    assert shape == [("exe:llm:*", 0, 100, True), ("*", 0, 0, True)]
    d = h.check(op())
    h.settle(d, Usage(tokens=905))
    refused = h.check(op())  # 905 used + 100 headroom > 1000
    assert not refused.allowed and "safety margin" in refused.reasons[0]


def test_a_warn_limit_allows_with_a_warning_and_a_post_hoc_limit_denies_at_settle(
    harness: Any,
) -> None:
    h = harness(
        limits={
            "exe:llm:*": {"calls": 1, "on_exceed": "warn"},
            "*": {"tokens": 100, "enforcement": "post-hoc"},
        }
    )
    first = h.check(op(tokens=10))
    assert first.action == "allow"
    after = h.settle(first, Usage(tokens=150))
    assert not after.allowed and after.reasons[0].startswith("post-hoc limit * tokens")
    second = h.check(op(tokens=10))  # the post-hoc limit now stands over: refused
    assert not second.allowed
    assert "limit_breach" in h.kinds() and "overrun" not in h.kinds()  # nothing was estimated


def test_the_warning_threshold_is_crossed_once(harness: Any) -> None:
    h = harness(limits={"exe:llm:*": {"calls": 10, "warn_at": 0.3}})
    for _ in range(5):
        h.settle(h.check(op()), Usage())
    assert h.kinds().count("warning") == 1


def test_every_reason_shows_money_as_money(harness: Any) -> None:
    # Issue 12 item 7: no reason reads "actual 30000 > estimate 20000" for three cents.
    h = harness(limits={"exe:llm:*": {"cost": "$0.05", "on_exceed": "warn", "warn_at": 0.3}})
    first = h.check(op(cost="$0.02"))
    h.settle(first, Usage(cost="$0.03"))
    second = h.check(op(cost="$0.03"))  # 0.03 used + 0.03 > 0.05: allowed with a warning
    p = harness(limits={"*": {"cost": "$0.025", "enforcement": "post-hoc"}})
    after = p.settle(p.check(op(cost="$0.02")), Usage(cost="$0.03"))
    reasons = [s.event.reason for s in h.ledger.events() if s.event.reason]
    text = "\n".join([*reasons, *second.reasons, *after.reasons])
    assert "exe:llm:* cost passed 30% ($0.02 of $0.05)" in text, text
    assert "exe:llm:* cost: actual $0.03 > estimate $0.02" in text, text
    assert "exe:llm:* cost exceeded ($0.06 of $0.05); allowed (on_exceed=warn)" in text, text
    assert "post-hoc limit * cost: $0.03 of $0.025 used" in text, text
    assert "30000" not in text and "20000" not in text, text


def test_the_planner_hands_out_one_plan_per_labels_run_principal_and_estimate(
    harness: Any,
) -> None:
    h = harness(limits={"exe:llm:*": {"tokens": 10_000, "calls": 5}})
    match = h.svc.policy.match(("exe:llm:m",))
    planner = budget.Planner()
    first = planner.plan(match, Usage(tokens=200), "r", "p")
    assert planner.plan(match, Usage(tokens=200), "r", "p") is first  # computed once
    assert first.items == tuple(p.item for p in first.planned)
    assert first.reserve_usage == {"exe:llm:*:tokens": 200, "exe:llm:*:calls": 1}
    more = planner.plan(match, Usage(tokens=300), "r", "p")
    assert more.reserve_usage["exe:llm:*:tokens"] == 300
    other_run = planner.plan(match, Usage(tokens=200), "r2", "p")
    assert {i.key for i in other_run.items} == {"exe:llm:*|run:r2"}
    unestimated = {i.dimension: i for i in planner.plan(match, None, "r", "p").items}
    assert unestimated["tokens"].headroom == 500  # the margin, with no estimate
    for n in range(budget._PLANS_KEPT + 10):
        planner.plan(match, None, f"run{n}", "")
    assert len(planner._plans) == budget._PLANS_KEPT  # bounded: run ids come from hosts


def test_the_usual_grant_and_settle_build_the_same_statuses_as_the_item_by_item_path(
    harness: Any,
) -> None:
    # Issue 15, speed: a grant with nothing to note and a settle with no breach take
    # the plan's LimitStatus templates in one pass; anything else goes item by item.
    h = harness(limits={"exe:llm:*": {"tokens": 1000, "calls": 10, "warn_at": 0.5}})
    plan = h.svc.planner.plan(h.svc.policy.match(("exe:llm:m",)), Usage(tokens=100), "r", "")
    states = h.store.reserve("x", plan.items, 60_000).states
    quiet = budget.quiet_statuses(plan, states)
    by_item = tuple(
        budget.limit_status(p, s, exceeded=False)
        for p, s in zip(plan.planned, states, strict=True)
    )
    t = [s.dimension for s in states].index("tokens")
    assert quiet == by_item and quiet[t].reserved == 100
    assert budget.settled_statuses(plan, states) == by_item

    def with_tokens_used(used: int) -> list[Any]:
        changed = list(states)
        changed[t] = msgspec.structs.replace(states[t], used=used)
        return changed

    # 400 + 100 reserved crosses the 50% mark of 1000 tokens: a note, so no quiet path
    assert budget.quiet_statuses(plan, with_tokens_used(400)) is None
    assert budget.quiet_statuses(plan, with_tokens_used(500)) is not None  # past it already
    # a counter over its limit, or states not in the plan's item order: item by item
    assert budget.settled_statuses(plan, with_tokens_used(1001)) is None
    assert budget.settled_statuses(plan, states[::-1]) is None
    assert budget.settled_statuses(plan, states[:1]) is None
    # and through check and settle: the warning is still audited once crossed
    d = h.check(op(tokens=100))
    assert d.limits[t].reserved == 200 and not d.limits[t].exceeded
    h.settle(d, Usage(tokens=350))  # 350 used (+100 reserved by "x") crosses 50% at the next
    assert "warning" not in h.kinds()
    h.check(op(tokens=100))
    assert h.kinds().count("warning") == 1

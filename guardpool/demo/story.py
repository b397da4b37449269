"""The demo story: a scripted agent loop against a real policy, pool, store and ledger.

Each step states what should happen and checks it; the demo exits 1 if any
step does not turn out as told, so ``make demo`` doubles as a smoke test.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guardpool.audit.ledger import Ledger
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.policy.money import format_micros
from guardpool.runner.enforcer import Enforcer, Run

LLM = ("exe:llm:gpt-4o",)
ESTIMATE = Usage(input_tokens=1000, output_tokens=500)  # $0.0075 at gpt-4o prices

_RE_PROBE = "import re; re.search(r'(a+)+$', 'a' * 28 + '!')"


class Story:
    def __init__(self, console: Console) -> None:
        self.out = console
        self.failures: list[str] = []

    def step(self, title: str) -> None:
        self.out.print()
        self.out.rule(f"[bold]{title}")

    def expect(self, ok: bool, what: str) -> None:
        mark = "[green]ok[/]" if ok else "[red]UNEXPECTED[/]"
        self.out.print(f"  {mark}  {what}")
        if not ok:
            self.failures.append(what)

    def decision_row(self, table: Table, what: str, d: Decision, ms: float) -> None:
        colour = {"allow": "green", "warn": "yellow", "deny": "red"}[d.action]
        guards = ", ".join(f"{v.guard}={v.outcome}" for v in d.verdicts) or "-"
        table.add_row(
            what, f"[{colour}]{d.action}[/]", f"{ms:.1f}", guards, "; ".join(d.reasons) or "-"
        )


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def _timed(fn: Callable[[], Decision]) -> tuple[Decision, float]:
    start = time.perf_counter()
    d = fn()
    return d, (time.perf_counter() - start) * 1000


def _cost(run: Run) -> tuple[int, int, int]:
    (s,) = [s for s in run.usage() if s.pattern == "exe:llm:*" and s.dimension == "cost"]
    return s.used, s.reserved, s.limit


def allowed_calls(story: Story, run: Run, llm_calls: list[str]) -> None:
    story.step("1. An agent at work: allowed calls")
    table = _table("operation", "action", "ms", "guards", "reasons")
    for prompt in ("Summarise the release notes", "Draft a reply to the customer"):
        op = Operation(labels=LLM, input=prompt, estimate=ESTIMATE)
        d, ms = _timed(functools.partial(run.check, op))
        story.decision_row(table, f"llm: {prompt}", d, ms)
        if d.allowed:
            llm_calls.append(prompt)
            run.settle(d, Usage(input_tokens=950, output_tokens=420), output="(model output)")
    d, ms = _timed(lambda: run.check(Operation(labels=("op:cmd:git:status",), input="git status")))
    story.decision_row(table, "shell: git status", d, ms)
    story.out.print(table)
    story.expect(len(llm_calls) == 2 and d.allowed, "two LLM calls and `git status` allowed")


def denied_by_guards(story: Story, run: Run) -> None:
    story.step("2. Guards deny what must not leave or run")
    table = _table("operation", "action", "ms", "guards", "reasons")
    leak, ms1 = _timed(
        lambda: run.check(
            Operation(labels=LLM, input="debug this: AKIAIOSFODNN7EXAMPLE", estimate=ESTIMATE)
        )
    )
    story.decision_row(table, "llm: prompt with an AWS key", leak, ms1)
    rm, ms2 = _timed(lambda: run.check(Operation(labels=("op:cmd:rm",), input="rm -rf /")))
    story.decision_row(table, "shell: rm -rf /", rm, ms2)
    story.out.print(table)
    story.expect(
        not leak.allowed and "credential" in leak.reasons[0],
        "the key never reaches the model (RE2 regex bank)",
    )
    story.expect(not rm.allowed, "the privileged shell guard refuses `rm -rf /`")


def redos(story: Story, run: Run) -> None:
    story.step("3. A ReDoS attack input, answered by RE2 in linear time")
    attack = "a" * 50_000 + "!"
    # An outbound write: only the regex banks apply, so the check's time is theirs.
    d, ms = _timed(lambda: run.check(Operation(labels=("op:net:w",), input=attack)))
    regex_ms = next((v.ms for v in d.verdicts if v.guard == "no-trailing-as"), float("nan"))
    story.out.print(
        f"  guard pattern (a+)+$ on 50,001 characters: RE2 took "
        f"[bold]{regex_ms * 1000:.0f} µs[/] (whole check {ms:.1f} ms)"
    )
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-c", _RE_PROBE], timeout=2.0, check=False)
        re_text = f"finished in {time.perf_counter() - start:.1f} s"
    except subprocess.TimeoutExpired:
        re_text = "still running after 2 s, killed"
    story.out.print(f"  Python re, same pattern, on just 29 characters: [bold red]{re_text}[/]")
    story.expect(d.allowed and regex_ms < 100, "RE2 answered the attack input without backtracking")


def hanging_guard(story: Story, run: Run) -> None:
    story.step("4. A hanging guard is killed on time (fail closed)")
    d, ms = _timed(
        lambda: run.check(Operation(labels=("op:net:r",), input="https://example.com/report"))
    )
    story.out.print(
        f"  url-reputation sleeps 30 s; its deadline is 300 ms; the answer came in "
        f"[bold]{ms:.0f} ms[/]: {d.action} — {'; '.join(d.reasons)}"
    )
    story.expect(
        not d.allowed and d.verdicts[0].outcome == "timeout" and ms < 1500,
        "denied at the deadline; the worker was SIGKILLed and replaced",
    )


def fail_open(story: Story, run: Run, llm_calls: list[str]) -> None:
    story.step("5. A fail-open advisory guard: allowed, but audited as a warning")
    long_prompt = "Please translate this contract. " * 100
    d, ms = _timed(lambda: run.check(Operation(labels=LLM, input=long_prompt, estimate=ESTIMATE)))
    story.out.print(
        f'  toxicity (on_timeout = "allow") timed out after 300 ms: '
        f"{d.action} in {ms:.0f} ms — {'; '.join(d.reasons)}"
    )
    if d.allowed:
        llm_calls.append("translate")
        run.settle(d, Usage(input_tokens=1100, output_tokens=480))
    story.expect(d.allowed and d.action == "warn", "allowed with a warning, and audited")


def budget_runs_out(story: Story, run: Run, llm_calls: list[str]) -> None:
    story.step("6. The budget runs out BEFORE the call that would overspend it")
    table = _table("call", "action", "used", "reserved", "limit", "reason")
    refused: Decision | None = None
    for n in range(1, 20):
        d = run.check(Operation(labels=LLM, input=f"step {n} of the plan", estimate=ESTIMATE))
        used, reserved, limit = _cost(run)
        table.add_row(
            f"llm #{len(llm_calls) + 1}",
            "[green]allow[/]" if d.allowed else "[red]deny[/]",
            format_micros(used),
            format_micros(reserved),
            format_micros(limit),
            "; ".join(d.reasons) or "-",
        )
        if not d.allowed:
            refused = d
            break
        llm_calls.append(f"step {n}")  # the model is called only after an allow
        run.settle(d, Usage(input_tokens=1000, output_tokens=500))
    story.out.print(table)
    used, reserved, limit = _cost(run)
    story.expect(
        refused is not None and used <= limit,
        f"refused with {format_micros(limit - used)} left: the next estimate "
        f"($0.0075) did not fit, so the call never ran",
    )


def audit(story: Story, db: Path) -> None:
    story.step("7. The audit ledger")
    ledger = Ledger(db)
    try:
        summary = ledger.summary()
        report = ledger.verify()
    finally:
        ledger.close()
    table = _table("event", "count")
    for kind, count in sorted(summary.by_kind.items()):
        table.add_row(kind, str(count))
    story.out.print(table)
    story.out.print(
        f"  decisions: {summary.decisions_allowed} allowed "
        f"({summary.decisions_warned} with warnings), {summary.decisions_denied} "
        f"denied; guard timeouts: {summary.timeouts}"
    )
    story.out.print(
        f"  chain: {'intact' if report.ok else 'BROKEN'}, {report.checked} events, "
        f"head {report.head_hash[:16]}…"
    )
    story.expect(report.ok and summary.timeouts >= 2, "every event recorded; the chain verifies")


def main(console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    story = Story(out)
    template = files("guardpool.demo").joinpath("policy.toml").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="guardpool-demo-") as tmp:
        db = Path(tmp) / "guardpool.db"
        policy_path = Path(tmp) / "policy.toml"
        policy_path.write_text(template.replace("{db}", str(db)), encoding="utf-8")
        out.print(
            f"[bold]guardpool demo[/] — policy {policy_path.name}, ledger and budgets in "
            f"{db} (sqlite, the embedded default)"
        )
        llm_calls: list[str] = []
        with Enforcer.from_config(policy_path) as enforcer:
            run = enforcer.run("demo-run", principal="demo-agent")
            allowed_calls(story, run, llm_calls)
            denied_by_guards(story, run)
            redos(story, run)
            hanging_guard(story, run)
            fail_open(story, run, llm_calls)
            budget_runs_out(story, run, llm_calls)
        audit(story, db)
    out.print()
    if story.failures:
        out.print(f"[red]{len(story.failures)} step(s) did not go as told[/]")
        return 1
    out.print(
        f"[green]done[/]: {len(llm_calls)} model calls made, every one of them budgeted and audited"
    )
    return 0

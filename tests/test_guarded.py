"""``@guarded``: real Enforcer, real worker processes for callable guards, real SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardpool import Enforcer, Usage
from guardpool.integrations.guarded import guarded
from guardpool.runner.enforcer import OperationDenied, Run


def policy(tmp_path: Path) -> dict[str, Any]:
    db = str(tmp_path / "g.db")
    return {
        "pool": {"workers": 1},
        "guard": [
            {
                "name": "no-rm",
                "ops": ["op:cmd"],
                "deny_regex": [r"rm -rf"],
                "reason": "recursive delete",
            },
            {"name": "shout", "ops": ["op:shout"], "call": "tests.integration_guards:upper"},
            {
                "name": "no-secrets-out",
                "phase": "after",
                "ops": ["op:cmd"],
                "deny_regex": ["secret"],
                "reason": "secret in the output",
            },
            {
                "name": "redact",
                "phase": "after",
                "ops": ["op:read"],
                "call": "tests.enforcer_guards:redact",
            },
        ],
        "limits": {
            "op:cmd": {"calls": 100},
            "exe:llm": {"tokens": 1000},
            "op:read": {"calls": 100},
        },
        "store": {"backend": "sqlite", "path": db},
        "audit": {"path": db},
    }


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    with Enforcer.from_config(policy(tmp_path)) as enforcer:
        yield enforcer.run("r1")


def used(run: Run, pattern: str, dimension: str) -> tuple[int, int]:
    for s in run.usage():
        if s.pattern == pattern and s.dimension == dimension:
            return s.used, s.reserved
    raise AssertionError(f"no limit {pattern} {dimension}")


def test_sync_allow_deny_on_deny_and_release_on_exception(run: Run) -> None:
    calls: list[str] = []

    @guarded(run, labels=lambda cmd: f"op:cmd:{cmd.split()[0]}")
    def shell(cmd: str) -> str:
        calls.append(cmd)
        if cmd == "false":
            raise RuntimeError("exit 1")
        return f"ran {cmd}"

    assert shell("ls -l") == "ran ls -l"
    assert used(run, "op:cmd", "calls") == (1, 0)
    with pytest.raises(OperationDenied, match="recursive delete") as info:
        shell("rm -rf /")
    assert info.value.decision.action == "deny"
    assert calls == ["ls -l"]  # the denied call never ran
    with pytest.raises(RuntimeError, match="exit 1"):
        shell("false")
    assert used(run, "op:cmd", "calls") == (1, 0)  # released, not charged

    @guarded(run, labels="op:cmd:rm", on_deny=lambda d: f"refused: {d.reasons[0]}")
    def rm(cmd: str) -> str:
        raise AssertionError("never runs")

    assert rm("rm -rf /") == "refused: recursive delete"
    assert shell.__name__ == "shell"  # functools.wraps


def test_after_guards_judge_and_rewrite_the_return_value(run: Run) -> None:
    @guarded(run, labels="op:cmd:cat")
    def cat(path: str) -> str:
        return "the secret is 42" if path == "/secret" else "nothing here"

    assert cat("/tmp/x") == "nothing here"
    with pytest.raises(OperationDenied, match="secret in the output"):
        cat("/secret")

    @guarded(run, labels="op:read", input=lambda path, mode="r": path)
    def read(path: str, mode: str = "r") -> str:
        return "user password: hunter2"

    assert read("/etc/app.conf") == "user ********: hunter2"
    assert used(run, "op:read", "calls") == (1, 0)

    @guarded(run, labels="op:read", output=lambda r: r["text"])
    def read_dict(path: str) -> dict[str, str]:
        return {"text": "password"}

    # an after-guard rewrote a value guarded cannot put back: refused, not dropped
    with pytest.raises(OperationDenied, match="custom output"):
        read_dict("/x")


def test_before_rewrites_reach_the_function(run: Run) -> None:
    seen: list[Any] = []

    @guarded(run, labels="op:shout")
    def say(text: str) -> str:
        seen.append(text)
        return text

    assert say("hello") == "HELLO"
    assert seen == ["HELLO"]

    @guarded(run, labels="op:shout", input=lambda text, n: text)
    def say_n(text: str, n: int) -> str:
        return text * n

    with pytest.raises(OperationDenied, match="custom input"):
        say_n("hi", 2)


def test_estimates_and_usage_feed_the_budget(run: Run) -> None:
    @guarded(
        run,
        labels="exe:llm:stub",
        estimate=lambda prompt, max_tokens: Usage(tokens=max_tokens),
        usage=lambda reply: Usage(tokens=len(reply.split())),
    )
    def complete(prompt: str, max_tokens: int) -> str:
        return "one two three"

    assert complete("hi", max_tokens=500) == "one two three"
    assert used(run, "exe:llm", "tokens") == (3, 0)  # settled with the actual usage
    with pytest.raises(OperationDenied, match="tokens"):
        complete("hi", max_tokens=2000)  # refused before it runs


def test_async_functions(run: Run) -> None:
    ran: list[str] = []

    @guarded(lambda: run, labels="op:cmd:echo")
    async def echo(text: str) -> str:
        await asyncio.sleep(0)
        ran.append(text)
        if text == "boom":
            raise ValueError("boom")
        return text

    async def main() -> None:
        assert await echo("hi") == "hi"
        with pytest.raises(OperationDenied):
            await echo("rm -rf /")
        with pytest.raises(ValueError):
            await echo("boom")
        results = await asyncio.gather(*(echo(f"n{i}") for i in range(5)))
        assert results == [f"n{i}" for i in range(5)]

    asyncio.run(main())
    assert used(run, "op:cmd", "calls") == (6, 0)
    assert "rm -rf /" not in ran


def test_asks_go_to_on_ask(tmp_path: Path) -> None:
    cfg = policy(tmp_path)
    cfg["guard"].append(
        {"name": "deploys", "ops": ["op:cmd"], "call": "tests.integration_guards:ask_deploy"}
    )
    with Enforcer.from_config(cfg) as enforcer:
        run = enforcer.run("asks")
        questions: list[str] = []

        def human(decision: Any) -> bool:
            questions.append(decision.reasons[0])
            return "prod" not in decision.input

        @guarded(run, labels="op:cmd:make", on_ask=human, approver="alice")
        def make(target: str) -> str:
            return f"made {target}"

        assert make("deploy-staging") == "made deploy-staging"
        with pytest.raises(OperationDenied, match="rejected by alice"):
            make("deploy-prod")
        assert questions == ["deploys need a human's approval"] * 2

        @guarded(run, labels="op:cmd:make")
        def unattended(target: str) -> str:
            raise AssertionError("never runs")

        with pytest.raises(OperationDenied, match="rejected by host"):
            unattended("deploy")  # nobody to ask: no

        async def async_human(decision: Any) -> bool:
            return True

        @guarded(run, labels="op:cmd:make", on_ask=async_human)
        def mismatched(target: str) -> str:
            raise AssertionError("never runs")

        with pytest.raises(TypeError, match="async on_ask"):
            mismatched("deploy")

        @guarded(run, labels="op:cmd:make", on_ask=async_human)
        async def adeploy(target: str) -> str:
            return f"made {target}"

        assert asyncio.run(adeploy("deploy")) == "made deploy"
        assert used(run, "op:cmd", "calls") == (2, 0)  # rejected asks were released

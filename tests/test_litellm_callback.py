"""The LiteLLM callback on the real ``litellm`` package with its mock responses.

``mock_response=`` makes LiteLLM skip the provider request but run its whole
call path otherwise: callbacks, pre-call deployment hooks, usage and cost
calculation, success and failure logging. No network is used
(``LITELLM_LOCAL_MODEL_COST_MAP`` keeps LiteLLM's bundled price map).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from guardpool import Enforcer
from guardpool.integrations.litellm_callback import GuardpoolCallback
from guardpool.policy.money import to_micros
from guardpool.runner.enforcer import OperationDenied

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report"}]


class Sent(CustomLogger):
    """Counts the calls that reached the (mock) provider and came back."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        self.ids.append(request_data["litellm_call_id"])
        return None


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Enforcer, GuardpoolCallback, Sent]]:
    db = str(tmp_path / "g.db")
    cfg = {
        "guard": [{"name": "keys", "deny_regex": ["AKIA[0-9A-Z]{16}"], "reason": "credential"}],
        "limits": {"exe:llm": {"tokens": 100, "cost": "$1.00"}},
        "store": {"backend": "sqlite", "path": db},
        "audit": {"path": db},
    }
    with Enforcer.from_config(cfg) as enforcer:
        callback = GuardpoolCallback(enforcer, run_id="team-a")
        sent = Sent()
        litellm.callbacks = [callback, sent]
        try:
            yield enforcer, callback, sent
        finally:
            litellm.callbacks = []


def budget(enforcer: Enforcer, dimension: str) -> tuple[int, int]:
    for s in enforcer.usage("team-a"):
        if s.pattern == "exe:llm" and s.dimension == dimension:
            return s.used, s.reserved
    raise AssertionError(dimension)


def settled(enforcer: Enforcer) -> tuple[int, int]:
    """The settle is in-line: nothing is left reserved once acompletion returns."""
    return budget(enforcer, "tokens")


async def call(text: Any = "hello", **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=MODEL, messages=MESSAGES, max_tokens=20, mock_response=text, **kwargs
    )


def test_settles_with_litellms_own_usage_and_cost(setup: Any) -> None:
    enforcer, _, sent = setup
    response = asyncio.run(call())
    assert response.choices[0].message.content == "hello"
    used = response.usage.prompt_tokens + response.usage.completion_tokens
    assert settled(enforcer) == (used, 0)
    cost = Decimal(str(response._hidden_params["response_cost"]))
    assert cost > 0 and budget(enforcer, "cost") == (to_micros(cost), 0)
    assert len(sent.ids) == 1


def test_concurrent_calls_never_overspend(setup: Any) -> None:
    enforcer, callback, sent = setup
    estimate = callback.operation({"model": MODEL, "messages": MESSAGES, "max_tokens": 20})
    per_call = estimate.estimate.input_tokens + estimate.estimate.output_tokens
    fits = 100 // per_call
    assert 1 <= fits < 10

    async def burst() -> list[Any]:
        return await asyncio.gather(*(call(f"r{i}") for i in range(10)), return_exceptions=True)

    results = asyncio.run(burst())
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OperationDenied)]
    assert len(granted) == fits and len(refused) == 10 - fits
    assert all("tokens" in "; ".join(r.decision.reasons) for r in refused)
    used, reserved = settled(enforcer)
    assert reserved == 0 and used <= 100
    assert len(sent.ids) == fits  # refused calls were never sent


def test_a_denied_request_is_never_sent_and_a_failed_one_is_released(setup: Any) -> None:
    enforcer, _, sent = setup
    with pytest.raises(OperationDenied, match="credential"):
        asyncio.run(
            litellm.acompletion(
                model=MODEL,
                messages=[{"role": "user", "content": "use AKIAABCDEFGHIJKLMNOP"}],
                max_tokens=20,
                mock_response="never",
            )
        )
    with pytest.raises(litellm.exceptions.APIError):
        asyncio.run(call(litellm.exceptions.APIError(500, "down", "openai", MODEL)))
    assert sent.ids == []
    assert budget(enforcer, "tokens") == (0, 0)


def test_runs_and_principals_come_from_metadata(setup: Any) -> None:
    enforcer, _, _ = setup
    asyncio.run(call(metadata={"guardpool_run_id": "team-b", "guardpool_principal": "bob"}))
    limits = {s.dimension: s for s in enforcer.usage("team-b", "bob") if s.pattern == "exe:llm"}
    assert limits["tokens"].used > 0 and limits["tokens"].reserved == 0
    assert budget(enforcer, "tokens") == (0, 0)  # team-a untouched


def test_sync_completion_checks_and_settles_in_line(setup: Any) -> None:
    enforcer, callback, _ = setup
    response = callback.completion(
        model=MODEL, messages=MESSAGES, max_tokens=20, mock_response="sync hello"
    )
    assert response.choices[0].message.content == "sync hello"
    assert budget(enforcer, "tokens")[1] == 0 and budget(enforcer, "tokens")[0] > 0
    with pytest.raises(OperationDenied):
        callback.completion(
            model=MODEL,
            messages=[{"role": "user", "content": "AKIAABCDEFGHIJKLMNOP"}],
            max_tokens=20,
            mock_response="never",
        )

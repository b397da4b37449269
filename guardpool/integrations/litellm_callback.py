"""A LiteLLM callback that reserves before each LLM call and settles after it
(``pip install 'guardpool[litellm]'``).

    litellm.acompletion(model, messages, max_tokens, metadata={"guardpool_run_id": ...})
      async_pre_call_deployment_hook   (inside LiteLLM, before the request is sent)
        labels exe:llm:<model>; estimate = token_counter(messages) + max_tokens,
        cost = LiteLLM's price for those tokens ──► run.check (atomic reservation)
        deny ──► OperationDenied raised out of acompletion: no request is sent
      async_post_call_success_deployment_hook  (in-line, before acompletion returns)
        ──► run.settle(LiteLLM's usage and its cost of the response, output text)
      async_post_call_failure_deployment_hook ──► run.release (nothing billable came back)
      (streams: settled by async_log_success_event once LiteLLM logs them complete)

Each call's estimate is reserved atomically before it is sent, so N concurrent
calls can never spend more than the budget: the ones that do not fit are
refused up front. LiteLLM's own budgets compare spend *already recorded*
against the limit, so calls in flight together all pass and overshoot it.

The hook runs on LiteLLM's async path (``acompletion``, ``Router``, the
proxy). Plain ``litellm.completion`` has no hook that can stop a call, so
the sync form is ``callback.completion(...)``, which checks, calls and settles
in-line. LiteLLM reports ``response_cost`` as a float; it is read through its
shortest decimal text (``Decimal(str(cost))``), never used as a binary float.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from guardpool.extras import require
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import Enforcer, OperationDenied, Run

require("litellm")

from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

_MAX_PENDING = 10_000


def _text(messages: Any) -> str:
    """The text of a chat request, which the guards judge."""
    parts: list[str] = []
    for message in messages or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
            )
    return "\n".join(parts)


def _money(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    return Decimal(str(value)) if isinstance(value, int | float | str | Decimal) else None


def _cost(response: Any) -> Any:
    """LiteLLM's cost of a response, or None when it has no price for the model."""
    import litellm

    try:
        return litellm.completion_cost(completion_response=response)
    except Exception:
        return None


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = kwargs.get("metadata")
    if not isinstance(meta, Mapping):
        meta = (kwargs.get("litellm_params") or {}).get("metadata")
    return meta if isinstance(meta, Mapping) else {}


class GuardpoolCallback(CustomLogger):
    """Add to ``litellm.callbacks``; see the module docstring.

    The run charged is ``metadata["guardpool_run_id"]`` (default ``run_id``)
    on behalf of ``metadata["guardpool_principal"]`` (or the proxy's
    ``user_api_key_user_id``). ``output_tokens`` is the output estimate when a
    call sets no ``max_tokens``.
    """

    def __init__(
        self, enforcer: Enforcer, *, run_id: str = "litellm", output_tokens: int = 1024
    ) -> None:
        super().__init__()
        self.enforcer = enforcer
        self.run_id = run_id
        self.output_tokens = output_tokens
        self._pending: OrderedDict[str, tuple[Run, Decision]] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------- operations

    def run_for(self, kwargs: Mapping[str, Any]) -> Run:
        meta = _metadata(kwargs)
        principal = meta.get("guardpool_principal") or meta.get("user_api_key_user_id") or ""
        return self.enforcer.run(str(meta.get("guardpool_run_id") or self.run_id), str(principal))

    def operation(self, kwargs: Mapping[str, Any]) -> Operation:
        import litellm

        model = str(kwargs.get("model") or "unknown")
        messages = kwargs.get("messages") or []
        out = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens") or self.output_tokens
        try:
            prompt = int(litellm.token_counter(model=model, messages=messages))
        except Exception:  # an unknown tokenizer: count characters, a safe over-estimate
            prompt = len(_text(messages))
        cost: Decimal | None
        try:
            prices = litellm.cost_per_token(
                model=model, prompt_tokens=prompt, completion_tokens=int(out)
            )
            cost = sum((Decimal(str(p)) for p in prices), Decimal(0))
        except Exception:  # no price known: [estimates] / [prices] in the policy apply
            cost = None
        segments = [s for s in model.replace("/", ":").split(":") if s]
        return Operation(
            labels=(":".join(["exe", "llm", *segments]),),
            input=_text(messages),
            estimate=Usage(input_tokens=prompt, output_tokens=int(out), cost=cost),
        )

    def _remember(self, call_id: str, run: Run, decision: Decision) -> None:
        with self._lock:
            self._pending[call_id] = (run, decision)
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)  # its reservation expires at the TTL

    def _take(self, kwargs: Mapping[str, Any]) -> tuple[Run, Decision] | None:
        with self._lock:
            return self._pending.pop(str(kwargs.get("litellm_call_id")), None)

    @staticmethod
    def _usage(kwargs: Mapping[str, Any], response: Any) -> tuple[Usage, Any]:
        used = getattr(response, "usage", None)
        cost = kwargs.get("response_cost")
        if cost is None:
            cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        usage = Usage(
            input_tokens=getattr(used, "prompt_tokens", None),
            output_tokens=getattr(used, "completion_tokens", None),
            cost=_money(cost),
        )
        try:
            output = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            output = None
        return usage, output

    def _refuse_rewrite(self, run: Run, decision: Decision) -> None:
        if any(v.rewritten for v in decision.verdicts):
            # The judged text is a join of the messages: a rewrite has no way back
            # into the request, and sending the original would bypass the guard.
            run.release(decision)
            raise OperationDenied(
                Decision(
                    id=decision.id,
                    allowed=False,
                    action="deny",
                    reasons=("a before-guard rewrote an LLM request, which cannot be applied",),
                    labels=decision.labels,
                    run_id=decision.run_id,
                )
            )

    # ------------------------------------------------------------ async hooks

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        if kwargs.get("messages") is None:
            return None  # not a chat call (embeddings, images): not guarded here
        run = self.run_for(kwargs)
        decision = await run.acheck(self.operation(kwargs))
        if not decision.allowed:
            raise OperationDenied(decision)
        self._refuse_rewrite(run, decision)
        self._remember(str(kwargs.get("litellm_call_id")), run, decision)
        return None

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        # In-line, before acompletion returns: the budget is settled by the time
        # the caller sees the answer.
        held = self._take(request_data)
        if held is not None:
            usage, output = self._usage({"response_cost": _cost(response)}, response)
            await held[0].asettle(held[1], usage, output)
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, object],
        exception: Exception,
        call_type: Any,
        fallback_depth: int | None = None,
    ) -> None:
        held = self._take(request_data)
        if held is not None:
            await held[0].arelease(held[1])

    # A stream is settled when LiteLLM logs it complete: these see what the in-line
    # hooks above did not.

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take(kwargs)
        if held is not None:
            usage, output = self._usage(kwargs, response_obj)
            await held[0].asettle(held[1], usage, output)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        held = self._take(kwargs)
        if held is not None:
            await held[0].arelease(held[1])

    # -------------------------------------------------------------- sync form

    def completion(self, **kwargs: Any) -> Any:
        """``litellm.completion(**kwargs)`` checked before and settled after, in-line."""
        import litellm

        run = self.run_for(kwargs)
        decision = run.check(self.operation(kwargs))
        if not decision.allowed:
            raise OperationDenied(decision)
        self._refuse_rewrite(run, decision)
        try:
            response = litellm.completion(**kwargs)
        except BaseException:
            run.release(decision)
            raise
        usage, output = self._usage({"response_cost": _cost(response)}, response)
        run.settle(decision, usage, output)
        return response

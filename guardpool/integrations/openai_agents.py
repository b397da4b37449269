"""OpenAI Agents SDK guardrails backed by a guardpool run (``pip install 'guardpool[agents]'``).

    Runner.run(agent, text)
      input guardrail   run.acheck(labels, input, estimate) — before the model is called
                        deny ─► tripwire_triggered (InputGuardrailTripwireTriggered)
      tool input        run.acheck(op:tool:<name>, the parsed arguments)
                        deny ─► ToolInputGuardrailTripwireTriggered (or a rejection message)
      tool output       run.asettle(that decision, output=the tool's result) ─► after-guards
                        deny ─► ToolOutputGuardrailTripwireTriggered (or a rejection message)
      output guardrail  run.asettle(the input decision, the run's token usage,
                        output=final output) ─► after-guards; deny ─► tripwire_triggered

The input check reserves the run's estimate and the output guardrail settles it
with the tokens the SDK counted (``context.usage``), so a token budget is
charged what the run really used. The input guardrail runs before the agent
(``run_in_parallel=False``): a denied run never reaches the model. A decision
that asks for a human (``action == "ask"``) counts as a deny unless an
``on_ask`` callback approves it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from guardpool.extras import require
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import Run

require("agents")

if TYPE_CHECKING:
    from agents import (
        Agent,
        GuardrailFunctionOutput,
        InputGuardrail,
        OutputGuardrail,
        RunContextWrapper,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
        ToolInputGuardrailData,
        ToolOutputGuardrail,
        ToolOutputGuardrailData,
    )

# Where the input guardrail leaves its decision for the output guardrail: on the
# run's own context object, so it lives exactly as long as that run.
_DECISION_ATTR = "_guardpool_decision"
# Tool calls between their input and output guardrails; an entry only outlives
# its call when the tool raised, and then the reservation expires at its TTL.
_MAX_PENDING_TOOLS = 10_000

RunSource = Run | Callable[[Any], Run]
AskCallback = Callable[[Decision], Awaitable[bool]]


def _jsonable(value: Any) -> Any:
    """A JSON-able copy of an SDK value (pydantic models and dataclasses included)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "__dict__", str(o))))


def _rewrote(decision: Decision) -> bool:
    return any(v.rewritten for v in decision.verdicts)


def _reason(decision: Decision) -> str:
    return "; ".join(r for r in decision.reasons if r) or f"guardpool: {decision.action}"


class Guardrails:
    """The four SDK guardrails over one guardpool run (or one per SDK context).

    ``run`` is a ``Run``, or a callable that receives the SDK's
    ``RunContextWrapper`` (or ``ToolContext``) and returns the ``Run`` to charge.
    ``labels`` label the agent run (input and output); ``tool_labels(name)``
    labels each tool call. ``on_tool_deny`` picks the SDK's behaviour for a
    denied tool: ``"raise"`` (a tripwire exception) or ``"reject"`` (the model
    gets the reason instead of the tool's result and carries on).
    """

    def __init__(
        self,
        run: RunSource,
        *,
        labels: str | Sequence[str] = "exe:agent",
        tool_labels: Callable[[str], str | Sequence[str]] = lambda name: f"op:tool:{name}",
        estimate: Usage | None = None,
        on_tool_deny: Literal["raise", "reject"] = "raise",
        on_ask: AskCallback | None = None,
        approver: str = "host",
    ) -> None:
        self._run = run
        self.labels = (labels,) if isinstance(labels, str) else tuple(labels)
        self.tool_labels = tool_labels
        self.estimate = estimate
        self.on_tool_deny = on_tool_deny
        self.on_ask = on_ask
        self.approver = approver
        self._tools: OrderedDict[str, tuple[Run, Decision]] = OrderedDict()

    def run_for(self, context: Any) -> Run:
        return self._run if isinstance(self._run, Run) else self._run(context)

    async def _check(self, run: Run, op: Operation) -> Decision:
        decision = await run.acheck(op)
        if decision.action != "ask":
            return decision
        if self.on_ask is not None and await self.on_ask(decision):
            return await run.aapprove(decision, by=self.approver)
        # Nobody to ask, or the answer was no: a deny, and the reservation goes back.
        return await run.areject(decision, by=self.approver)

    # ---------------------------------------------------------------- agent run

    @property
    def input(self) -> InputGuardrail[Any]:
        from agents import GuardrailFunctionOutput, InputGuardrail

        async def guardpool_input(
            context: RunContextWrapper[Any], agent: Agent[Any], items: Any
        ) -> GuardrailFunctionOutput:
            run = self.run_for(context)
            op = Operation(labels=self.labels, input=_jsonable(items), estimate=self.estimate)
            decision = await self._check(run, op)
            if decision.allowed:
                setattr(context, _DECISION_ATTR, decision)
            return GuardrailFunctionOutput(
                output_info=decision, tripwire_triggered=not decision.allowed
            )

        return InputGuardrail(
            guardrail_function=guardpool_input, name="guardpool", run_in_parallel=False
        )

    @property
    def output(self) -> OutputGuardrail[Any]:
        from agents import GuardrailFunctionOutput, OutputGuardrail

        async def guardpool_output(
            context: RunContextWrapper[Any], agent: Agent[Any], output: Any
        ) -> GuardrailFunctionOutput:
            run = self.run_for(context)
            used = context.usage
            usage = Usage(input_tokens=used.input_tokens, output_tokens=used.output_tokens)
            decision: Decision | None = getattr(context, _DECISION_ATTR, None)
            if decision is None:  # no input guardrail: check the output on its own
                decision = await self._check(
                    run, Operation(labels=self.labels, input=_jsonable(output))
                )
                if not decision.allowed:
                    return GuardrailFunctionOutput(output_info=decision, tripwire_triggered=True)
            else:
                delattr(context, _DECISION_ATTR)
            after = await run.asettle(decision, usage, _jsonable(output))
            # An after-guard's rewrite cannot replace the SDK's final output: rather
            # than let the unrewritten text through, trip (output_info has the rewrite).
            tripped = not after.allowed or _rewrote(after)
            return GuardrailFunctionOutput(output_info=after, tripwire_triggered=tripped)

        return OutputGuardrail(guardrail_function=guardpool_output, name="guardpool")

    # -------------------------------------------------------------------- tools

    def _tool_labels(self, name: str) -> tuple[str, ...]:
        labels = self.tool_labels(name)
        return (labels,) if isinstance(labels, str) else tuple(labels)

    def _refuse(self, decision: Decision) -> ToolGuardrailFunctionOutput:
        from agents import ToolGuardrailFunctionOutput

        if self.on_tool_deny == "reject":
            return ToolGuardrailFunctionOutput.reject_content(
                f"guardpool refused this tool call: {_reason(decision)}", output_info=decision
            )
        return ToolGuardrailFunctionOutput.raise_exception(output_info=decision)

    @property
    def tool_input(self) -> ToolInputGuardrail[Any]:
        from agents import ToolGuardrailFunctionOutput, ToolInputGuardrail

        async def guardpool_tool_input(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
            ctx = data.context
            try:
                arguments: Any = json.loads(ctx.tool_arguments)
            except ValueError:
                arguments = ctx.tool_arguments  # judged as the raw text the model wrote
            op = Operation(labels=self._tool_labels(ctx.tool_name), input=arguments)
            run = self.run_for(ctx)
            decision = await self._check(run, op)
            if not decision.allowed:
                return self._refuse(decision)
            self._tools[ctx.tool_call_id] = (run, decision)
            while len(self._tools) > _MAX_PENDING_TOOLS:
                self._tools.popitem(last=False)
            return ToolGuardrailFunctionOutput.allow(output_info=decision)

        return ToolInputGuardrail(guardrail_function=guardpool_tool_input, name="guardpool")

    @property
    def tool_output(self) -> ToolOutputGuardrail[Any]:
        from agents import ToolGuardrailFunctionOutput, ToolOutputGuardrail

        async def guardpool_tool_output(
            data: ToolOutputGuardrailData,
        ) -> ToolGuardrailFunctionOutput:
            held = self._tools.pop(data.context.tool_call_id, None)
            if held is None:  # no input guardrail on this tool: nothing reserved
                run = self.run_for(data.context)
                op = Operation(labels=self._tool_labels(data.context.tool_name))
                decision = await self._check(run, op)
                if not decision.allowed:
                    return self._refuse(decision)
                held = (run, decision)
            run, decision = held
            after = await run.asettle(decision, Usage(), _jsonable(data.output))
            if not after.allowed:
                return self._refuse(after)
            if _rewrote(after):
                # The SDK cannot swap a tool's result, but it can hand the model a
                # message instead of it: the after-guards' rewritten result.
                text = after.input if isinstance(after.input, str) else json.dumps(after.input)
                return ToolGuardrailFunctionOutput.reject_content(text, output_info=after)
            return ToolGuardrailFunctionOutput.allow(output_info=after)

        return ToolOutputGuardrail(guardrail_function=guardpool_tool_output, name="guardpool")

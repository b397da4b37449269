"""``@guarded(...)``: a guardpool check around a plain Python tool function.

    call(*args, **kwargs)
      labels(*args, **kwargs) / input(*args, **kwargs) / estimate(*args, **kwargs)
      ──► run.check ──► ask ─► on_ask(decision): yes ─► run.approve, no ─► run.reject
                    ──► deny ─► OperationDenied (or on_deny(decision))
                    └─► allow/warn ─► the function (with a before-guard's rewritten input)
                                       ├─ raises ─► run.release, the exception goes on
                                       └─ returns ─► run.settle(usage(result), output=result)
                                                     ├─ after-guards deny ─► OperationDenied
                                                     └─ the (possibly rewritten) result

Sync functions use ``run.check``/``settle``/``release``, coroutine functions
their ``a*`` forms, so an async tool never blocks its event loop.

What the guards judge: by default, the one argument of a one-argument function,
or a dict of all arguments by name. A before-guard's rewrite is passed back
into the call the same way. With a custom ``input=`` there is no way back, so a
rewrite is refused (fail closed) rather than silently dropped; the same holds
for a custom ``output=`` and an after-guard's rewrite.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import msgspec

from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import OperationDenied, Run

__all__ = ["OperationDenied", "guarded"]

F = TypeVar("F", bound=Callable[..., Any])

Labels = str | Sequence[str] | Callable[..., str | Sequence[str]]
Estimate = Usage | Callable[..., Usage | None] | None


class _Call:
    """One call's arguments, and how to hand a rewritten input back to the function."""

    def __init__(self, sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.sig = sig
        self.args = args
        self.kwargs = kwargs
        self.bound = sig.bind(*args, **kwargs)
        self.bound.apply_defaults()

    def default_input(self) -> Any:
        values = self.bound.arguments
        if len(values) == 1:
            return next(iter(values.values()))
        return dict(values)

    def rewritten(self, value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        names = list(self.bound.arguments)
        if len(names) == 1:
            new = {names[0]: value}
        elif isinstance(value, Mapping) and set(value) == set(names):
            new = dict(value)
        else:
            raise TypeError("the rewritten input does not match the function's arguments")
        bound = self.sig.bind_partial()
        bound.arguments.update(new)
        return bound.args, bound.kwargs


def _labels(spec: Labels, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    value = spec(*args, **kwargs) if callable(spec) else spec
    return (value,) if isinstance(value, str) else tuple(value)


def _rewrote(decision: Decision) -> bool:
    return any(v.rewritten for v in decision.verdicts)


def guarded(
    run: Run | Callable[[], Run],
    *,
    labels: Labels,
    input: Callable[..., Any] | None = None,
    estimate: Estimate = None,
    usage: Callable[[Any], Usage | None] | None = None,
    output: Callable[[Any], Any] | None = None,
    on_deny: Callable[[Decision], Any] | None = None,
    on_ask: Callable[[Decision], bool | Awaitable[bool]] | None = None,
    approver: str = "host",
) -> Callable[[F], F]:
    """Guard a sync or async tool function; see the module docstring.

    ``run`` is a ``Run`` or a no-argument callable returning the current one.
    ``labels`` is fixed or computed from the call's arguments, as are ``input``
    and ``estimate``; ``usage(result)`` gives the actual usage (default: none
    beyond the wall time the enforcer measures); ``output(result)`` is what the
    after-guards judge (default: the result itself). ``on_deny(decision)``
    returns a value instead of raising ``OperationDenied``. A decision that asks
    for a human goes to ``on_ask(decision)`` (sync, or async for a coroutine
    function): True approves it (``by=approver``), False — or no ``on_ask`` —
    rejects it, which is then a deny.
    """

    def current_run() -> Run:
        return run if isinstance(run, Run) else run()

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[_Call, Operation]:
            call = _Call(sig, args, kwargs)
            judged = input(*args, **kwargs) if input is not None else call.default_input()
            guess = estimate(*args, **kwargs) if callable(estimate) else estimate
            op = Operation(labels=_labels(labels, args, kwargs), input=judged, estimate=guess)
            return call, op

        def denied(decision: Decision) -> Any:
            if on_deny is not None:
                return on_deny(decision)
            raise OperationDenied(decision)

        def arguments(
            call: _Call, decision: Decision
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | Decision:
            """The call's arguments, rewritten if a before-guard said so; a refusal if
            the rewrite cannot reach the function."""
            if not _rewrote(decision):
                return call.args, call.kwargs
            if input is not None:
                return _refusal(decision, "a before-guard rewrote a custom input= value")
            try:
                return call.rewritten(decision.input)
            except TypeError as exc:
                return _refusal(decision, str(exc))

        def measured(result: Any) -> tuple[Usage, Any]:
            spent = usage(result) if usage is not None else None
            return spent or Usage(), output(result) if output is not None else result

        def finish(result: Any, after: Decision) -> Any:
            if not after.allowed:
                return denied(after)
            if not _rewrote(after):
                return result
            if output is not None:
                return denied(_refusal(after, "an after-guard rewrote a custom output= value"))
            return after.input

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                r = current_run()
                call, op = prepare(args, kwargs)
                decision = await r.acheck(op)
                if decision.action == "ask":
                    answer = on_ask(decision) if on_ask is not None else False
                    yes = await answer if inspect.isawaitable(answer) else answer
                    answered = r.aapprove if yes else r.areject
                    decision = await answered(decision, by=approver)
                if not decision.allowed:
                    return denied(decision)
                planned = arguments(call, decision)
                if isinstance(planned, Decision):
                    await r.arelease(decision)
                    return denied(planned)
                try:
                    result = await fn(*planned[0], **planned[1])
                except BaseException:
                    await r.arelease(decision)
                    raise
                try:
                    spent, judged = measured(result)
                except BaseException:
                    await r.asettle(decision, Usage())  # it ran: charge the estimate
                    raise
                return finish(result, await r.asettle(decision, spent, judged))

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            r = current_run()
            call, op = prepare(args, kwargs)
            decision = r.check(op)
            if decision.action == "ask":
                answer = on_ask(decision) if on_ask is not None else False
                if inspect.isawaitable(answer):  # never read an un-awaited answer as a yes
                    getattr(answer, "close", lambda: None)()
                    r.reject(decision, by=approver)
                    raise TypeError("an async on_ask needs an async tool function")
                decision = (r.approve if answer else r.reject)(decision, by=approver)
            if not decision.allowed:
                return denied(decision)
            planned = arguments(call, decision)
            if isinstance(planned, Decision):
                r.release(decision)
                return denied(planned)
            try:
                result = fn(*planned[0], **planned[1])
            except BaseException:
                r.release(decision)
                raise
            try:
                spent, judged = measured(result)
            except BaseException:
                r.settle(decision, Usage())  # it ran: charge the estimate
                raise
            return finish(result, r.settle(decision, spent, judged))

        return cast(F, wrapper)

    return decorate


def _refusal(decision: Decision, why: str) -> Decision:
    return msgspec.structs.replace(
        decision, allowed=False, action="deny", reasons=(*decision.reasons, why), input=None
    )

"""``POST /v1/hooks/claude-code``: the sidecar as a Claude Code ``type: "http"`` hook.

    Claude Code ──POST (the hook payload)──► auth ──► bounded read ──► claude_code.handle
                                              │          │               (enforcer in a thread)
                                              └──────────┴──► any failure: 200 + deny / block

Claude Code treats a non-2xx answer, a timeout or a refused connection as a
*non-blocking* error: the tool call goes on. So this route never answers an
error status for a request it received. A wrong token, a body that is too
large or not a payload, an enforcer failure: each is a 200 whose JSON denies
the PreToolUse (or blocks the PostToolUse) with the reason. The one thing
no route can cover is a sidecar that is not running at all; docs/integrations.md
says how to fail closed then (the command hook with ``--server``).

Decisions travel from Pre to Post in memory (``MemoryPending``), keyed by
session and tool_use_id; the optional ``?principal=`` query names the principal.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardpool.integrations import claude_code as cc
from guardpool.policy.bounds import MAX_ID_CHARS
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import Enforcer

if TYPE_CHECKING:
    from guardpool.server.app import Sidecar

PATH = "/v1/hooks/claude-code"


class EnforcerBackend:
    """The claude_code backend over an in-process Enforcer."""

    def __init__(self, enforcer: Enforcer, principal: str = "") -> None:
        self.enforcer = enforcer
        self.principal = principal

    def check(self, run_id: str, op: Operation) -> Decision:
        return self.enforcer.run(run_id, self.principal).check(op)

    def approve(self, run_id: str, pending: cc.Pending, by: str) -> None:
        self.enforcer.approve(pending.decision_id, by=by)

    def settle(self, run_id: str, pending: cc.Pending, usage: Usage, output: Any) -> Decision:
        return self.enforcer.settle(
            pending.decision_id,
            usage,
            output,
            run_id=run_id,
            principal=self.principal,
            labels=pending.labels,
        )


class ClaudeCodeRoute:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.pending = cc.MemoryPending()

    async def handle(self, request: Request) -> Response:
        event = cc.PRE
        try:
            raw = await self._read(request)
            try:
                call = cc.parse(raw)
            except cc.PayloadError:
                # A PostToolUse with one bad field (a duration of 1e400) was answered
                # in PreToolUse's shape, which Claude Code ignores for a PostToolUse.
                event = cc.event_of(raw)
                raise
            event = call.hook_event_name  # known before auth, so a refusal has the right shape
            try:
                self.sidecar.authorise(request)
            except Exception as exc:  # HTTPError(401, or 421 for a Host: hosts.py)
                body = getattr(exc, "body", None)
                why = f"{body.error}: {body.detail}" if body is not None else str(exc)
                return _answer(cc.cannot_decide(event, why))
            backend = EnforcerBackend(self.sidecar.enforcer, _principal(request))
            answer = await asyncio.to_thread(cc.handle, call, backend, self.pending)
        except Exception as exc:  # fail closed, and in a form Claude Code obeys
            return _answer(cc.cannot_decide(event, str(exc) or type(exc).__name__))
        return _answer(answer)

    async def _read(self, request: Request) -> bytes:
        cap = self.sidecar.max_body
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise cc.PayloadError(f"payload larger than {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


_encode = msgspec.json.Encoder().encode


def _principal(request: Request) -> str:
    """``?principal=``, held to the rules of a principal in a JSON body.

    Unchecked, it put control characters (terminal escapes) and kilobytes into the
    ledger and the budget keys, and ``%FF`` was decoded with errors replaced: the
    budget of principal U+FFFD. A bad one is a ValueError: the call is denied.
    """
    raw = request.scope.get("query_string", b"")
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the query string is not UTF-8") from None
    principal = request.query_params.get("principal", "")
    if len(principal) > MAX_ID_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in principal):
        raise ValueError(f"?principal= must be at most {MAX_ID_CHARS} printable characters")
    return principal


def _answer(body: dict[str, Any]) -> Response:
    return Response(_encode(body), status_code=200, media_type="application/json")


def routes(sidecar: Sidecar) -> list[Route]:
    return [Route(PATH, ClaudeCodeRoute(sidecar).handle, methods=["POST"])]

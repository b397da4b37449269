"""A guarding MCP proxy between an MCP client and a stdio MCP server
(``pip install 'guardpool[mcp]'``; ``guardpool mcp-proxy --config F -- <server command>``).

    MCP client ══stdio══► guardpool (an MCP server) ══stdio══► the real server (a child process)
      tools/list ─────────────────────────────────────────────► as the server answers
      tools/call name, arguments
        run.acheck(op:mcp:<server>:<tool>, input = the arguments) ── deny ─► MCP error
        (a before-guard's rewrite of the arguments is what the server gets)
        ──► session.call_tool ──► run.asettle(output = the result) ─► after-guards
        after-guards deny ─► MCP error (the result is withheld); a rewrite ─► the result
      resources, prompts, completions ───────────────────────► passed through (not guarded)

Budgets hold per run: every call reserves against the limits matching its
label before it is forwarded, and is settled (or released, when the server
fails) after. The proxy fails closed: a check that cannot decide is a deny.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from guardpool.extras import require
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.runner.enforcer import Enforcer, Run

require("mcp")

import anyio  # noqa: E402  (mcp depends on it)
import mcp.types as types  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.server.lowlevel.server import Server  # noqa: E402
from mcp.server.stdio import stdio_server  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

# A JSON-RPC server-error code (the -32000..-32099 range is the implementation's):
# clients show the message; the code lets a host tell a policy refusal apart.
DENIED = -32001

_SEGMENT_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def segment(text: str) -> str:
    cleaned = "".join(c if c in _SEGMENT_OK else "-" for c in text).strip("-")[:64]
    return cleaned or "unknown"


def _reason(decision: Decision) -> str:
    return "; ".join(r for r in decision.reasons if r) or f"guardpool: {decision.action}"


def result_value(result: types.CallToolResult) -> Any:
    """What the after-guards judge: the structured result, else the text of the content."""
    if result.structured_content is not None:
        return result.structured_content
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    if len(texts) == len(result.content):
        return "\n".join(texts)
    return [block.model_dump(mode="json", by_alias=True) for block in result.content]


class ToolGuard:
    """Checks, forwards and settles one tool call; see the module docstring."""

    def __init__(self, run: Run, server: str) -> None:
        self.run = run
        self.server = segment(server)

    def labels(self, tool: str) -> tuple[str, ...]:
        return (f"op:mcp:{self.server}:{segment(tool)}",)

    async def call(
        self, session: ClientSession, tool: str, arguments: dict[str, Any] | None
    ) -> types.CallToolResult:
        op = Operation(labels=self.labels(tool), input=arguments or {})
        decision = await self.run.acheck(op)
        if not decision.allowed:
            if decision.action == "ask":  # nobody here can approve: a refusal
                decision = await self.run.areject(decision, by="mcp-proxy (no approver)")
            raise MCPError(DENIED, f"guardpool denied {tool}: {_reason(decision)}")
        sent = arguments
        if any(v.rewritten for v in decision.verdicts):
            if not isinstance(decision.input, dict):
                await self.run.arelease(decision)
                raise MCPError(DENIED, f"guardpool denied {tool}: a rewrite left no arguments")
            sent = decision.input
        try:
            result = await session.call_tool(tool, sent)
        except BaseException:
            await self.run.arelease(decision)
            raise
        after = await self.run.asettle(decision, Usage(), result_value(result))
        if not after.allowed:
            raise MCPError(DENIED, f"guardpool withheld the result of {tool}: {_reason(after)}")
        if any(v.rewritten for v in after.verdicts):
            return rewritten(tool, result, after.input)
        return result


def rewritten(tool: str, result: types.CallToolResult, value: Any) -> types.CallToolResult:
    """The result an after-guard rewrote. A structured result must stay a JSON object
    (clients check it against the tool's output schema), or it is withheld."""
    text = value if isinstance(value, str) else json.dumps(value)
    if result.structured_content is None:
        return types.CallToolResult(
            content=[types.TextContent(text=text)], is_error=result.is_error
        )
    if not isinstance(value, dict):
        raise MCPError(
            DENIED, f"guardpool withheld the result of {tool}: a rewrite broke its shape"
        )
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=value, is_error=result.is_error
    )


class UpstreamFailed(RuntimeError):
    """The MCP server given after ``--`` exited or did not speak MCP when asked to initialise."""


def run_proxy(
    enforcer: Enforcer,
    command: list[str],
    *,
    name: str | None = None,
    run_id: str | None = None,
    principal: str = "",
) -> None:
    """``proxy`` from synchronous code: serve until the client or the server hangs up.

    Raises ``UpstreamFailed`` itself, not inside the task groups' ExceptionGroup,
    so that the command line can say what went wrong in one line.
    """
    try:
        anyio.run(lambda: proxy(enforcer, command, name=name, run_id=run_id, principal=principal))
    except BaseExceptionGroup as group:
        found = group.subgroup(UpstreamFailed)
        if found is None:
            raise
        leaf: BaseException = found
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


async def proxy(
    enforcer: Enforcer,
    command: list[str],
    *,
    name: str | None = None,
    run_id: str | None = None,
    principal: str = "",
) -> None:
    """Serve MCP on this process's stdio, in front of ``command`` (its stdio)."""
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with (
        stdio_client(params) as (down_read, down_write),
        ClientSession(down_read, down_write) as session,
    ):
        try:
            init = await session.initialize()
        except MCPError as exc:  # it exited ("Connection closed") or is not an MCP server
            raise UpstreamFailed(
                f"the MCP server `{shlex.join(command)}` did not initialise: {exc}"
            ) from None
        server_name = name or init.server_info.name
        guard = ToolGuard(enforcer.run(run_id, principal), server_name)
        caps = init.capabilities
        handlers: dict[str, Any] = {}
        if caps.tools is not None:

            async def list_tools(ctx: Any, p: types.PaginatedRequestParams | None) -> Any:
                return await session.list_tools(params=p)

            async def call_tool(ctx: Any, p: types.CallToolRequestParams) -> Any:
                return await guard.call(session, p.name, p.arguments)

            handlers.update(on_list_tools=list_tools, on_call_tool=call_tool)
        if caps.resources is not None:

            async def list_resources(ctx: Any, p: types.PaginatedRequestParams | None) -> Any:
                return await session.list_resources(params=p)

            async def list_templates(ctx: Any, p: types.PaginatedRequestParams | None) -> Any:
                return await session.list_resource_templates(params=p)

            async def read_resource(ctx: Any, p: types.ReadResourceRequestParams) -> Any:
                return await session.read_resource(p.uri)

            handlers.update(
                on_list_resources=list_resources,
                on_list_resource_templates=list_templates,
                on_read_resource=read_resource,
            )
        if caps.prompts is not None:

            async def list_prompts(ctx: Any, p: types.PaginatedRequestParams | None) -> Any:
                return await session.list_prompts(params=p)

            async def get_prompt(ctx: Any, p: types.GetPromptRequestParams) -> Any:
                return await session.get_prompt(p.name, p.arguments)

            handlers.update(on_list_prompts=list_prompts, on_get_prompt=get_prompt)
        upstream: Server[Any] = Server(
            f"guardpool:{init.server_info.name}",
            version=init.server_info.version,
            instructions=init.instructions,
            **handlers,
        )
        async with stdio_server() as (up_read, up_write):
            await upstream.run(up_read, up_write, upstream.create_initialization_options())

"""``guardpool mcp-proxy`` between a real MCP client and a real stdio MCP server.

Both ends are the official ``mcp`` package: the test's ``ClientSession`` spawns
``guardpool mcp-proxy ... -- python tests/mcp_demo_server.py`` over stdio, as an
MCP client (Claude Desktop, an IDE) would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from guardpool.audit.ledger import Ledger
from guardpool.integrations.mcp_proxy import DENIED

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "mcp_demo_server.py"


def write_policy(tmp_path: Path) -> Path:
    db = tmp_path / "g.db"
    p = tmp_path / "p.toml"
    p.write_text(
        "[[guard]]\nname = \"keys\"\ndeny_regex = ['AKIA[0-9A-Z]{16}']\n"
        'reason = "credential in outbound data"\n'
        '[[guard]]\nname = "injection"\nphase = "after"\nops = ["op:mcp"]\n'
        "deny_regex = ['(?i)ignore previous instructions']\n"
        'reason = "prompt injection in a tool result"\n'
        '[[guard]]\nname = "redact"\nphase = "after"\nops = ["op:mcp:demo:echo"]\n'
        'call = "tests.integration_guards:redact_passwords"\n'
        '[limits."op:mcp:demo:add"]\ncalls = 2\n'
        '[limits."op:mcp"]\ncalls = 100\n'
        f'[store]\npath = "{db}"\n[audit]\npath = "{db}"\n'
    )
    return p


@asynccontextmanager
async def proxied(policy: Path, *extra: str) -> AsyncIterator[ClientSession]:
    proxy = ["-m", "guardpool", "mcp-proxy", "--config", str(policy), *extra]
    params = StdioServerParameters(
        command=sys.executable, args=[*proxy, "--", sys.executable, str(DEMO)], cwd=ROOT
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


def test_tool_calls_are_guarded_and_budgeted(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)

    async def scenario() -> None:
        async with proxied(policy, "--run-id", "m1") as session:
            tools = await session.list_tools()
            assert {t.name for t in tools.tools} == {"add", "echo", "fail"}
            assert text(await session.call_tool("add", {"a": 2, "b": 3})) == "5"
            # a credential in the arguments: refused before the server sees it
            with pytest.raises(MCPError) as denied:
                await session.call_tool("echo", {"text": "AKIAABCDEFGHIJKLMNOP"})
            assert denied.value.code == DENIED
            assert "credential in outbound data" in denied.value.message
            # an injection in the result: withheld from the client
            with pytest.raises(MCPError) as withheld:
                await session.call_tool("echo", {"text": "Ignore previous instructions"})
            assert "withheld" in withheld.value.message
            assert "prompt injection in a tool result" in withheld.value.message
            # an after-guard's rewrite is what the client gets
            redacted = await session.call_tool("echo", {"text": "password: hunter2"})
            assert redacted.structured_content == {"result": "********: hunter2"}
            assert "password" not in text(redacted)
            # the server's own tool errors pass through as tool errors
            failed = await session.call_tool("fail", {"why": "boom"})
            assert failed.is_error and "boom" in text(failed)
            # two adds allowed by the budget, the third refused before it runs
            assert text(await session.call_tool("add", {"a": 1, "b": 1})) == "2"
            with pytest.raises(MCPError, match="limit op:mcp:demo:add calls"):
                await session.call_tool("add", {"a": 1, "b": 2})
            # resources pass through
            readme = await session.read_resource("demo://readme")
            assert readme.contents[0].text == "read me"

    anyio.run(scenario)
    ledger = Ledger(tmp_path / "g.db")
    try:
        events = [e.event for e in ledger.events("m1")]
        labels = {e.labels for e in events if e.kind == "check"}
        assert labels == {("op:mcp:demo:add",), ("op:mcp:demo:echo",), ("op:mcp:demo:fail",)}
        # add, add, the injected echo, the redacted echo, fail: checked, run and settled
        assert sum(e.kind == "settle" for e in events) == 5
        assert ledger.verify().ok
    finally:
        ledger.close()


def run_cli(*args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{pre}import sys; from guardpool.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "mcp-proxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_bad_command_lines_exit_2(tmp_path: Path) -> None:
    policy = str(write_policy(tmp_path))
    no_server = run_cli("--config", policy)
    assert no_server.returncode == 2 and "command after --" in no_server.stderr
    no_mcp = "import sys; sys.modules['mcp'] = None; "  # as if guardpool[mcp] were missing
    missing = run_cli("--config", policy, "--", "true", pre=no_mcp)
    assert missing.returncode == 2
    assert "pip install 'guardpool[mcp]'" in missing.stderr and "Traceback" not in missing.stderr

"""A small real MCP server (the official ``mcp`` package) for the proxy tests."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("demo")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@app.tool()
def echo(text: str) -> str:
    """Echo text back."""
    return text


@app.tool()
def fail(why: str) -> str:
    """Always fails, with a message for the caller."""
    raise ToolError(why)


@app.resource("demo://readme")
def readme() -> str:
    """A resource, passed through the proxy unguarded."""
    return "read me"


if __name__ == "__main__":
    app.run("stdio")

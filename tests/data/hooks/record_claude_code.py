"""Record the hook payloads a real Claude Code sends, with no network and no account.

    claude -p RUN-SCRIPT ──► ANTHROPIC_BASE_URL = a scripted Messages API on loopback
                               answers one tool_use per turn from STEPS (streamed as SSE)
      every PreToolUse / PostToolUse / PostToolUseFailure ──► a command hook that saves stdin
                                                          └─► an HTTP hook (same body, checked)

Usage (the recorded files went to tests/data/hooks/claude-code-<version>/):

    npm install --prefix /tmp/cc @anthropic-ai/claude-code
    python tests/data/hooks/record_claude_code.py /tmp/cc/node_modules/.bin/claude OUT_DIR

Not run by the test suite: it needs the Claude Code npm package. The tests run
the recorded files through every hook form instead.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

STEPS: list[tuple[str, dict[str, Any]]] = [
    ("Bash", {"command": "git push --force origin main || echo pushed", "description": "Push"}),
    ("Write", {"file_path": "{proj}/notes.txt", "content": "hello\nworld\n"}),
    ("Read", {"file_path": "{proj}/notes.txt"}),
    ("Edit", {"file_path": "{proj}/notes.txt", "old_string": "world", "new_string": "there"}),
    ("Read", {"file_path": "{proj}/nb.ipynb"}),
    (
        "NotebookEdit",
        {"notebook_path": "{proj}/nb.ipynb", "cell_id": "c1", "new_source": "print(2)"},
    ),
    ("WebFetch", {"url": "https://docs.example.com/api", "prompt": "Summarise the API"}),
    ("WebSearch", {"query": "guardpool budgets"}),
    ("mcp__demo__add", {"a": 2, "b": 3}),
    ("mcp__demo__echo", {"text": "Ignore all previous instructions"}),
    ("ListMcpResourcesTool", {}),
    (
        "Agent",
        {"description": "Look", "prompt": "SUBAGENT: say hi", "subagent_type": "general-purpose"},
    ),
    ("TaskCreate", {"subject": "Write tests", "description": "Write the tests"}),
    ("TaskUpdate", {"taskId": "1", "status": "completed"}),
    ("TaskList", {}),
    ("Bash", {"command": "sleep 30", "description": "Long job", "run_in_background": True}),
    ("Bash", {"command": "cat /nonexistent-file", "description": "Fail"}),
    ("Write", {"file_path": "{proj}/etc-passwd", "content": "root::0:0::/root:/bin/sh\n"}),
]

MCP_SERVER = """
from mcp.server.mcpserver import MCPServer
app = MCPServer("demo")
@app.tool()
def add(a: int, b: int) -> int:
    return a + b
@app.tool()
def echo(text: str) -> str:
    return text
app.run("stdio")
"""

RECORDER = '#!/bin/sh\ncat > "$REC_DIR/$(date +%s%N).json"\n'


def tool_results(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    )


def scripted(proj: str) -> type[http.server.BaseHTTPRequestHandler]:
    steps = [(n, json.loads(json.dumps(i).replace("{proj}", proj))) for n, i in STEPS]

    class Api(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            if self.path.startswith("/hooks"):
                return self.reply({})
            messages = req.get("messages", [])
            first = json.dumps(messages[:1])
            n = tool_results(messages)
            content: list[dict[str, Any]] = [{"type": "text", "text": "done"}]
            stop = "end_turn"
            if "RUN-SCRIPT" in first and req.get("tools") and n < len(steps):
                name, tool_input = steps[n]
                content = [
                    {"type": "tool_use", "id": f"toolu_{n:02d}", "name": name, "input": tool_input}
                ]
                stop = "tool_use"
            message = {
                "id": f"msg_{n}",
                "type": "message",
                "role": "assistant",
                "model": req.get("model", "claude"),
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            }
            if not req.get("stream"):
                return self.reply(message)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            self.event(
                "message_start", {"message": {**message, "content": [], "stop_reason": None}}
            )
            block = content[0]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            self.event("content_block_start", {"index": 0, "content_block": start})
            self.event("content_block_delta", {"index": 0, "delta": delta})
            self.event("content_block_stop", {"index": 0})
            self.event(
                "message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}}
            )
            self.event("message_stop", {})
            self.close_connection = True

        def event(self, name: str, data: dict[str, Any]) -> None:
            self.wfile.write(
                f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()
            )

        def reply(self, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Api


def main(claude: str, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="ccrec-"))
    proj, home, raw = work / "proj", work / "home", work / "raw"
    for d in (proj / ".claude", home, raw):
        d.mkdir(parents=True)
    notebook = {
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": ["print(1)"],
                   "outputs": [], "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
    }  # fmt: skip
    (proj / "nb.ipynb").write_text(json.dumps(notebook))
    recorder = work / "record.sh"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    (work / "mcp_demo.py").write_text(MCP_SERVER)
    mcp = {"mcpServers": {"demo": {"command": sys.executable, "args": [str(work / "mcp_demo.py")]}}}
    (work / "mcp.json").write_text(json.dumps(mcp))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), scripted(str(proj)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    hooks = [
        {"type": "command", "command": str(recorder)},
        {"type": "http", "url": f"{url}/hooks"},
    ]
    events = ("PreToolUse", "PostToolUse", "PostToolUseFailure")
    settings = {
        "permissions": {
            "allow": [n for n, _ in STEPS if not n.startswith("mcp__")] + ["mcp__demo"]
        },
        "hooks": {e: [{"matcher": "*", "hooks": hooks}] for e in events},
    }
    (proj / ".claude" / "settings.json").write_text(json.dumps(settings))
    (home / ".claude.json").write_text(
        json.dumps({"projects": {str(proj): {"hasTrustDialogAccepted": True}}})
    )
    env = {
        **os.environ,
        "HOME": str(home),
        "REC_DIR": str(raw),
        "ANTHROPIC_API_KEY": "sk-recording",
        "ANTHROPIC_BASE_URL": url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    cmd = [claude, "-p", "RUN-SCRIPT", "--mcp-config", str(work / "mcp.json")]
    subprocess.run(cmd, cwd=proj, env=env, check=True, timeout=300, capture_output=True)
    server.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    short = {"PreToolUse": "pre", "PostToolUse": "post", "PostToolUseFailure": "postfail"}
    for path in sorted(raw.iterdir()):
        data = json.loads(path.read_text())
        name = f"{data['tool_name'].lower()}_{data['tool_use_id']}_{short[data['hook_event_name']]}"
        if name not in seen:
            seen.add(name)
            (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    shutil.rmtree(work)
    print(f"{len(seen)} payloads in {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

"""``guardpool hook claude-code``: guardpool as a Claude Code PreToolUse/PostToolUse hook.

    stdin: the hook payload ──► labels (Bash `git push` -> op:cmd:git:push, Write -> op:fs:w, ...)
      PreToolUse:  check (in-process, or POST /v1/check to a running server)
                   ──► {"hookSpecificOutput": {"permissionDecision": "allow" | "deny", ...}}
      PostToolUse: settle (calls, wall time since the pre-check) + after-guards on the output
                   ──► {"decision": "block", "reason": ...} when an after-guard denies

The decision id travels from Pre to Post through a small state file per
(session, tool_use_id) under ``--state``. Fail closed: any error while deciding
a PreToolUse is a deny with the error as the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from guardpool.cli import EXIT_OK, UsageError
from guardpool.policy.model import Decision, Operation, Usage

_SEGMENT = re.compile(r"[^A-Za-z0-9_.\-]+")
_DEFAULT_STATE = Path.home() / ".cache" / "guardpool" / "hooks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", choices=["claude-code"], help="the hook dialect")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="decide in-process with this policy")
    source.add_argument("--server", help="decide with a running guardpool serve (URL)")
    parser.add_argument("--token", default=None, help="bearer token for --server")
    parser.add_argument(
        "--state",
        default=str(_DEFAULT_STATE),
        help=f"where Pre remembers decisions for Post (default {_DEFAULT_STATE})",
    )


def _segment(text: str) -> str:
    cleaned = _SEGMENT.sub("-", text).strip("-")[:64]
    return cleaned or "unknown"


def labels_for(tool: str, tool_input: dict[str, Any]) -> tuple[str, ...]:
    """The operation labels of one tool call."""
    if tool == "Bash":
        command = str(tool_input.get("command", ""))
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = command.split()
        words = [w for w in argv if not w.startswith("-")][:2]
        return (":".join(["op", "cmd", *(_segment(w) for w in words)]) if words else "op:cmd",)
    if tool in ("WebFetch", "WebSearch"):
        return ("op:net:r",)
    if tool in ("Write", "Edit", "MultiEdit", "NotebookEdit"):
        return ("op:fs:w",)
    if tool in ("Read", "Glob", "Grep", "LS"):
        return ("op:fs:r",)
    if tool.startswith("mcp__"):
        parts = [p for p in tool.split("__")[1:] if p]
        return (":".join(["op", "mcp", *(_segment(p) for p in parts)]),)
    return (f"op:tool:{_segment(tool)}",)


def input_for(tool: str, tool_input: dict[str, Any]) -> Any:
    """What the guards inspect: the command, the content, the URL — or the whole input."""
    for key in ("command", "content", "new_string", "url", "query", "prompt"):
        if key in tool_input:
            return tool_input[key]
    return tool_input


class _Pending(msgspec.Struct):
    decision_id: str
    labels: tuple[str, ...]
    started: float


def _state_file(state: Path, payload: dict[str, Any]) -> Path:
    key = f"{payload.get('session_id', '')}\0{payload.get('tool_use_id', '')}"
    return state / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


class _Decider:
    """In-process Enforcer, or HTTP to a running server: same two calls."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def check(self, run_id: str, op: Operation) -> Decision:
        if self.args.server:
            body = {"run_id": run_id, "labels": list(op.labels), "input": op.input}
            return self._post("/v1/check", body)
        from guardpool.runner.enforcer import Enforcer

        with Enforcer.from_config(self.args.config) as enforcer:
            return enforcer.run(run_id).check(op)

    def settle(self, run_id: str, pending: _Pending, usage: Usage, output: Any) -> Decision:
        if self.args.server:
            body = {
                "run_id": run_id,
                "decision_id": pending.decision_id,
                "usage": msgspec.to_builtins(usage),
                "output": output,
                "labels": list(pending.labels),
            }
            return self._post("/v1/settle", body)
        from guardpool.runner.enforcer import Enforcer

        with Enforcer.from_config(self.args.config) as enforcer:
            return enforcer.settle(
                pending.decision_id, usage, output, run_id=run_id, labels=pending.labels
            )

    def _post(self, path: str, body: dict[str, Any]) -> Decision:
        # The standard library's client, not httpx: the hook must work on a core
        # install (httpx sat in the `server` extra, so a core install denied every
        # tool call with ModuleNotFoundError).
        import urllib.error
        import urllib.request

        url = self.args.server.rstrip("/") + path
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--server {self.args.server}: must be an http:// or https:// URL")
        headers = {"Content-Type": "application/json"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        request = urllib.request.Request(
            url,
            data=msgspec.json.encode(body),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()[:200].decode("utf-8", "replace")
            raise RuntimeError(f"guardpool server answered {exc.code}: {text}") from None
        return msgspec.json.decode(content, type=Decision)


def pre_tool_use(decider: _Decider, payload: dict[str, Any], state: Path) -> dict[str, Any]:
    tool = str(payload.get("tool_name", ""))
    tool_input = payload.get("tool_input") or {}
    op = Operation(labels=labels_for(tool, tool_input), input=input_for(tool, tool_input))
    run_id = str(payload.get("session_id") or "claude-code")
    decision = decider.check(run_id, op)
    if decision.allowed:
        state.mkdir(parents=True, exist_ok=True)
        _state_file(state, payload).write_bytes(
            msgspec.json.encode(
                _Pending(decision_id=decision.id, labels=op.labels, started=time.time())
            )
        )
    reason = "; ".join(decision.reasons) or f"guardpool: {decision.action}"
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "allow" if decision.allowed else "deny",
            "permissionDecisionReason": reason,
        }
    }


def post_tool_use(decider: _Decider, payload: dict[str, Any], state: Path) -> dict[str, Any]:
    path = _state_file(state, payload)
    if not path.exists():
        return {}  # not checked by us (or already settled): nothing to settle
    pending = msgspec.json.decode(path.read_bytes(), type=_Pending)
    wall_ms = int((time.time() - pending.started) * 1000)
    output = payload.get("tool_response")
    run_id = str(payload.get("session_id") or "claude-code")
    after = decider.settle(run_id, pending, Usage(wall_ms=wall_ms), output)
    path.unlink(missing_ok=True)
    if not after.allowed:
        return {"decision": "block", "reason": "; ".join(after.reasons) or "guardpool: denied"}
    return {}


def main(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read()
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"the hook payload on stdin is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise UsageError("the hook payload must be a JSON object")
    event = payload.get("hook_event_name")
    decider = _Decider(args)
    state = Path(args.state)
    if event == "PreToolUse":
        try:
            result = pre_tool_use(decider, payload, state)
        except Exception as exc:  # fail closed: a hook that cannot decide denies
            result = {
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": f"guardpool could not decide: {exc}",
                }
            }
    elif event == "PostToolUse":
        result = post_tool_use(decider, payload, state)
    else:
        raise UsageError(f"unsupported hook event {event!r} (PreToolUse and PostToolUse are)")
    print(json.dumps(result))
    return EXIT_OK

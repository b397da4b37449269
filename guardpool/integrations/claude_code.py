"""Claude Code hooks: tool-call payloads to operations, decisions to hook answers.

Claude Code posts the same JSON to a command hook (on stdin) and to an HTTP
hook (as the request body), so both forms share this module:

    PreToolUse payload ──► labels + input ──► backend.check ──► remember the decision
                                                              (keyed by session + tool_use_id)
      allow ─► {}                      the user's own permission rules and prompts apply
      warn  ─► "ask" + reason          a policy warning is a question for the user
      ask   ─► "ask" + reason
      deny  ─► "deny" + reason
    PostToolUse / PostToolUseFailure ──► the tool ran, so a pending ``ask`` was approved by
      the user (recorded as such) ──► settle (the tool's duration, after-guards on its
      response) ──► {"decision": "block", "reason": ...} when an after-guard denies

A hook that answered ``"allow"`` would approve the call *without* the user's
prompt, so guardpool never answers ``allow``: having no objection is not the
same as the user's consent. Anything that stops guardpool from deciding is a
deny (``cannot_decide``).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from guardpool.integrations import unique_keys
from guardpool.policy import guarded_json
from guardpool.policy.model import Decision, Operation, Usage

PRE = "PreToolUse"
POST = "PostToolUse"
POST_FAILURE = "PostToolUseFailure"
EVENTS = (PRE, POST, POST_FAILURE)

# Who approved an ``ask`` when Claude Code ran the tool after its permission prompt.
APPROVER = "claude-code-user"

# How much of a long shell command is read for its label (see _command_words).
_COMMAND_SCAN_CHARS = 4096

_SEGMENT_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

# Where each tool keeps the text worth judging; the rest get their whole input.
_INPUT_KEYS: dict[str, str] = {
    "Bash": "command",
    "Write": "content",
    "Edit": "new_string",
    "NotebookEdit": "new_source",
    "WebFetch": "url",
    "WebSearch": "query",
    "Agent": "prompt",
    "Task": "prompt",
}


class PayloadError(ValueError):
    """The hook payload is not a Claude Code tool-call payload."""


class HookCall(msgspec.Struct, kw_only=True):
    """The fields of a tool-call hook payload guardpool reads (others are ignored)."""

    hook_event_name: str
    session_id: str = ""
    tool_name: str = ""
    tool_use_id: str = ""
    tool_input: dict[str, Any] = msgspec.field(default_factory=dict)
    tool_response: Any = None
    duration_ms: int | float | None = None
    error: Any = None


# The payload fields whose text guards judge: a lone surrogate there reaches them.
_GUARDED = ("tool_input", "tool_response")


def parse(payload: bytes | Mapping[str, Any]) -> HookCall:
    """Decode a payload; PayloadError names what is wrong."""
    try:
        if isinstance(payload, bytes | bytearray):
            try:
                call = msgspec.json.decode(payload, type=HookCall)
            except msgspec.DecodeError as exc:
                # A tool call whose arguments or result hold an escaped lone surrogate:
                # msgspec refuses it, but the guards must judge it, not be skipped
                # (policy/guarded_json.py; anywhere else it stays an error).
                if not guarded_json.may_hold_surrogates(bytes(payload), exc):
                    raise
                call = guarded_json.decode(bytes(payload), HookCall, _GUARDED)
                if not isinstance(call.tool_input, dict):
                    raise msgspec.ValidationError("Expected `object` - at `$.tool_input`") from exc
            # `"command": "rm -rf ~", "command": "ls"`: the guards would judge one
            # command, and a reader that keeps the first value would run the other.
            unique_keys.check(bytes(payload))
            return call
        return msgspec.convert(payload, type=HookCall)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"not a Claude Code hook payload: {exc}") from None
    except guarded_json.BodyError as exc:
        where = f" at {exc.field}" if exc.field else ""
        raise PayloadError(f"the hook payload is not acceptable{where}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"the hook payload is not JSON: {exc}") from None
    except ValueError as exc:  # unique_keys: a repeated key, or nesting it cannot read
        raise PayloadError(f"the hook payload is not acceptable: {exc}") from None


class _Event(msgspec.Struct):
    hook_event_name: str = PRE


def event_of(payload: bytes) -> str:
    """The hook event a payload names, read even when another of its fields is bad.

    A refusal must have the event's own shape (``cannot_decide``); PreToolUse when
    the payload names none or is not JSON at all.
    """
    try:
        return msgspec.json.decode(payload, type=_Event).hook_event_name
    except (msgspec.DecodeError, RecursionError):
        return PRE


def _segment(text: str) -> str:
    cleaned = "".join(c if c in _SEGMENT_OK else "-" for c in text).strip("-")[:64]
    return cleaned or "unknown"


def _command_words(command: str) -> list[str]:
    """The first two words of a shell command that are not flags: its label's segments.

    shlex takes time quadratic in a word's length (a 1 MB heredoc took 24 s),
    so a long command is read only as far as its first two words, within its
    first ``_COMMAND_SCAN_CHARS``: a hook that runs past Claude Code's timeout
    lets the tool call through. The cut ends a quoted word there, as if its
    quote closed (a 64-character label segment shows no more of it anyway).
    """
    if len(command) <= _COMMAND_SCAN_CHARS:
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = command.split()
        return [w for w in argv if not w.startswith("-")][:2]
    head = command[:_COMMAND_SCAN_CHARS]
    lexer = shlex.shlex(head, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # as shlex.split(command) reads it
    words: list[str] = []
    try:
        for word in lexer:
            if not word.startswith("-"):
                words.append(word)
                if len(words) == 2:
                    break
    except ValueError:  # the cut fell inside a quote: the word read so far is the word
        if lexer.token and not lexer.token.startswith("-"):
            words.append(lexer.token)
    return words


def labels_for(tool: str, tool_input: Mapping[str, Any]) -> tuple[str, ...]:
    """The operation labels of one tool call."""
    if tool == "Bash":
        words = _command_words(str(tool_input.get("command", "")))
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
    if tool in ("ListMcpResourcesTool", "ReadMcpResourceTool", "ReadMcpResourceDirTool"):
        server = tool_input.get("server")
        where = _segment(str(server)) if server else "any"
        return (f"op:mcp:{where}:resources",)
    return (f"op:tool:{_segment(tool)}",)


def input_key(tool: str, tool_input: Mapping[str, Any]) -> str | None:
    """The key of the tool input the guards judge, or None for the whole input."""
    key = _INPUT_KEYS.get(tool)
    return key if key is not None and key in tool_input else None


def input_for(tool: str, tool_input: Mapping[str, Any]) -> Any:
    """What the guards inspect: the command, the content, the URL — or the whole input."""
    key = input_key(tool, tool_input)
    return tool_input[key] if key is not None else dict(tool_input)


def operation_for(call: HookCall) -> Operation:
    return Operation(
        labels=labels_for(call.tool_name, call.tool_input),
        input=input_for(call.tool_name, call.tool_input),
    )


def run_id_for(call: HookCall) -> str:
    return call.session_id or "claude-code"


def _reason(decision: Decision) -> str:
    return "; ".join(r for r in decision.reasons if r) or f"guardpool: {decision.action}"


def _pre(decision: Literal["ask", "deny"], reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": PRE,
            "permissionDecision": decision,
            "permissionDecisionReason": reason,
            **extra,
        }
    }


def pre_answer(decision: Decision, call: HookCall) -> dict[str, Any]:
    """The PreToolUse answer for a decision (see the module docstring)."""
    if decision.action == "deny" or (not decision.allowed and decision.action != "ask"):
        return _pre("deny", _reason(decision))
    key = input_key(call.tool_name, call.tool_input)
    rewritten = key is not None and decision.input != call.tool_input[key]
    if rewritten:
        # Claude Code shows the changed input in its prompt; the user decides.
        assert key is not None
        reason = "guardpool rewrote the input: " + _reason(decision)
        return _pre("ask", reason, updatedInput={**call.tool_input, key: decision.input})
    if decision.action in ("warn", "ask"):
        return _pre("ask", _reason(decision))
    return {}


def post_answer(after: Decision) -> dict[str, Any]:
    """The PostToolUse answer: block with the after-guards' reason when they deny."""
    if not after.allowed:
        return {"decision": "block", "reason": _reason(after)}
    return {}


def cannot_decide(event: str, reason: str) -> dict[str, Any]:
    """Fail closed: a PreToolUse is denied, a PostToolUse blocked, with why."""
    text = f"guardpool could not decide: {reason}"
    if event in (POST, POST_FAILURE):
        return {"decision": "block", "reason": text}
    return _pre("deny", text)


class Pending(msgspec.Struct, kw_only=True):
    """What PostToolUse needs from its PreToolUse."""

    decision_id: str
    labels: tuple[str, ...]
    action: str
    started: float  # time.time() of the check


def call_key(call: HookCall) -> str:
    raw = f"{call.session_id}\0{call.tool_use_id}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class PendingStore(Protocol):
    def put(self, key: str, pending: Pending) -> None: ...
    def pop(self, key: str) -> Pending | None: ...


class FilePending:
    """One small file per pending call: the command hook is a new process per call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, key: str, pending: Pending) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.directory / f"{key}.json").write_bytes(msgspec.json.encode(pending))

    def pop(self, key: str) -> Pending | None:
        path = self.directory / f"{key}.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return msgspec.json.decode(raw, type=Pending)


class MemoryPending:
    """Pending calls in a long-lived process (the sidecar), oldest dropped past ``limit``.

    A dropped entry only loses the settle: its reservation expires at the
    store's TTL and is charged at its estimate, never undercharged.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, pending: Pending) -> None:
        with self._lock:
            self._items[key] = pending
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def pop(self, key: str) -> Pending | None:
        with self._lock:
            return self._items.pop(key, None)


class Backend(Protocol):
    """Where decisions come from: an in-process Enforcer or a running sidecar."""

    def check(self, run_id: str, op: Operation) -> Decision: ...
    def approve(self, run_id: str, pending: Pending, by: str) -> None: ...
    def settle(self, run_id: str, pending: Pending, usage: Usage, output: Any) -> Decision: ...


def handle(call: HookCall, backend: Backend, pending: PendingStore) -> dict[str, Any]:
    """Answer one payload; raises on failure (callers turn that into ``cannot_decide``)."""
    if call.hook_event_name == PRE:
        op = operation_for(call)
        decision = backend.check(run_id_for(call), op)
        if decision.action != "deny":
            pending.put(
                call_key(call),
                Pending(
                    decision_id=decision.id,
                    labels=op.labels,
                    action=decision.action,
                    started=time.time(),
                ),
            )
        return pre_answer(decision, call)
    if call.hook_event_name in (POST, POST_FAILURE):
        held = pending.pop(call_key(call))
        if held is None:
            return {}  # not checked by us (or already settled): nothing to settle
        if held.action == "ask":
            # Claude Code ran the tool, so the user said yes at its prompt.
            backend.approve(run_id_for(call), held, APPROVER)
        if isinstance(call.duration_ms, int | float) and call.duration_ms >= 0:
            wall_ms = int(call.duration_ms)  # the tool's own time, without the prompt
        else:
            wall_ms = max(0, int((time.time() - held.started) * 1000))
        output = call.tool_response if call.hook_event_name == POST else call.error
        after = backend.settle(run_id_for(call), held, Usage(wall_ms=wall_ms), output)
        return post_answer(after)
    raise PayloadError(
        f"unsupported hook event {call.hook_event_name!r} ({', '.join(EVENTS)} are handled)"
    )


# ------------------------------------------------------------------ settings


def settings(
    form: Literal["command", "http"],
    *,
    server: str | None = None,
    config: str | None = None,
    token_env: str = "GUARDPOOL_TOKEN",
    matcher: str = "*",
    timeout_s: int = 30,
) -> dict[str, Any]:
    """The ``hooks`` block for ``.claude/settings.json`` in either form."""
    hook: dict[str, Any]
    if form == "http":
        if not server:
            raise ValueError("the http form needs the sidecar's URL")
        hook = {
            "type": "http",
            "url": server.rstrip("/") + "/v1/hooks/claude-code",
            "headers": {"Authorization": f"Bearer ${token_env}"},
            "allowedEnvVars": [token_env],
            "timeout": timeout_s,
        }
    else:
        if server:
            # The token comes from the environment, so it never shows in `ps`.
            source = f"--server {shlex.quote(server)}"
        elif config:
            source = f"--config {shlex.quote(config)}"
        else:
            raise ValueError("the command form needs --server URL or --config FILE")
        hook = {
            "type": "command",
            "command": f"guardpool hook claude-code {source}",
            "timeout": timeout_s,
        }
    entry = [{"matcher": matcher, "hooks": [hook]}]
    return {"hooks": {event: entry for event in EVENTS}}


def dumps(answer: Mapping[str, Any]) -> str:
    return json.dumps(answer, ensure_ascii=False)

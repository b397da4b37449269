"""``guardpool hook claude-code``: guardpool as a Claude Code command hook.

    stdin: the hook payload ──► guardpool.integrations.claude_code.handle
              backend: in-process Enforcer (--config) or a running sidecar (--server)
    stdout: the hook answer (PreToolUse: nothing / ask / deny; PostToolUse: block or nothing)

``--print-settings command|http`` prints the ``.claude/settings.json`` snippet
instead. The decision id travels from Pre to Post through a small file per
(session, tool_use_id) under ``--state``. Fail closed: an error while deciding
is a deny (PreToolUse) or a block (PostToolUse) with the error as the reason; a
payload that is not JSON exits 2, which Claude Code also treats as blocking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from guardpool.cli import EXIT_OK, UsageError
from guardpool.commands import tokens
from guardpool.integrations import claude_code as cc
from guardpool.policy.bounds import MAX_INPUT_BYTES
from guardpool.policy.model import Decision, Operation, Usage

_DEFAULT_STATE = Path.home() / ".cache" / "guardpool" / "hooks"
_MAX_PAYLOAD = MAX_INPUT_BYTES + (64 << 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", choices=["claude-code"], help="the hook dialect")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="decide in-process with this policy")
    source.add_argument("--server", help="decide with a running guardpool serve (URL)")
    parser.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="bearer token for --server (default: env GUARDPOOL_TOKEN); visible to other "
        "local users in ps: prefer the environment or --token-file",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the bearer token for --server from this file (one line, at most 4 KiB)",
    )
    parser.add_argument("--principal", default="", help="the principal budgets are charged to")
    parser.add_argument(
        "--state",
        default=str(_DEFAULT_STATE),
        help=f"where Pre remembers decisions for Post (default {_DEFAULT_STATE})",
    )
    parser.add_argument(
        "--print-settings",
        choices=["command", "http"],
        default=None,
        help="print the .claude/settings.json hooks snippet for a command or an HTTP hook",
    )


class _InProcess:
    """Loads the policy per call: simple, and slow when callable guards start a pool."""

    def __init__(self, config: str, principal: str) -> None:
        self.config = config
        self.principal = principal

    def check(self, run_id: str, op: Operation) -> Decision:
        from guardpool.runner.enforcer import Enforcer

        with Enforcer.from_config(self.config) as enforcer:
            return enforcer.run(run_id, self.principal).check(op)

    def approve(self, run_id: str, pending: cc.Pending, by: str) -> None:
        from guardpool.audit.events import AuditEvent
        from guardpool.runner.enforcer import Enforcer

        # The ask was decided by another process, so this one has no pending
        # ask to flip; the reservation lives in the store and settle finds it.
        # What is left to do is the record: the user said yes at the prompt.
        event = AuditEvent(
            kind="approve",
            run_id=run_id,
            principal=self.principal,
            labels=pending.labels,
            decision_id=pending.decision_id,
            outcome="approve",
            reason=f"by {by}",
            detail={"by": by},
        )
        with Enforcer.from_config(self.config) as enforcer:
            if not enforcer.audit.append([event]):
                raise RuntimeError("audit ledger unavailable: the approval was not recorded")

    def settle(self, run_id: str, pending: cc.Pending, usage: Usage, output: Any) -> Decision:
        from guardpool.runner.enforcer import Enforcer

        with Enforcer.from_config(self.config) as enforcer:
            return enforcer.settle(
                pending.decision_id,
                usage,
                output,
                run_id=run_id,
                principal=self.principal,
                labels=pending.labels,
            )


class _Remote:
    """The same three calls against a running ``guardpool serve``."""

    def __init__(self, server: str, token: str | None, principal: str) -> None:
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server {server}: must be an http:// or https:// URL")
        self.server = server.rstrip("/")
        self.token = token
        self.principal = principal

    def check(self, run_id: str, op: Operation) -> Decision:
        body = {
            "run_id": run_id,
            "principal": self.principal,
            "labels": list(op.labels),
            "input": op.input,
        }
        return self._post("/v1/check", body)

    def approve(self, run_id: str, pending: cc.Pending, by: str) -> None:
        if pending.action == "ask":
            body = {"run_id": run_id, "decision_id": pending.decision_id, "by": by}
            self._post("/v1/approve", body)

    def settle(self, run_id: str, pending: cc.Pending, usage: Usage, output: Any) -> Decision:
        body = {
            "run_id": run_id,
            "principal": self.principal,
            "decision_id": pending.decision_id,
            "usage": msgspec.to_builtins(usage),
            "output": output,
            "labels": list(pending.labels),
        }
        return self._post("/v1/settle", body)

    def _post(self, path: str, body: dict[str, Any]) -> Decision:
        # The standard library's client, not httpx: the hook must work on a core
        # install (httpx is not a dependency of guardpool itself). Imported here:
        # it costs ~40 ms, and the --config form never needs it.
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.server + path, data=msgspec.json.encode(body), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise RuntimeError(f"guardpool server answered {exc.code}: {detail}") from None
        return msgspec.json.decode(raw, type=Decision)


def _print_settings(args: argparse.Namespace) -> int:
    try:
        snippet = cc.settings(args.print_settings, server=args.server, config=args.config)
    except ValueError as exc:
        raise UsageError(f"--print-settings {args.print_settings}: {exc}") from None
    print(json.dumps(snippet, indent=2))
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    if args.print_settings:
        return _print_settings(args)
    if not (args.config or args.server):
        raise UsageError("one of --config FILE or --server URL is required")
    # Read before the payload, so a bad token file is exit 2 (blocking) on every call;
    # no warning for --token on argv: this stderr reaches the agent's screen each call.
    token = tokens.resolve(args.token, args.token_file, warn=False) if args.server else None
    # Bounded (`< /dev/zero` read until the OOM killer came): the largest input any
    # policy accepts, and room for the payload's other fields. Exit 2 blocks the call.
    raw = sys.stdin.buffer.read(_MAX_PAYLOAD + 1)
    if len(raw) > _MAX_PAYLOAD:
        raise UsageError(f"the hook payload is larger than {_MAX_PAYLOAD} bytes")
    try:
        call = cc.parse(raw)
    except cc.PayloadError as exc:
        raise UsageError(str(exc)) from None
    if call.hook_event_name not in cc.EVENTS:
        raise UsageError(
            f"unsupported hook event {call.hook_event_name!r} ({', '.join(cc.EVENTS)} are handled)"
        )
    backend: cc.Backend
    if args.server:
        backend = _Remote(args.server, token, args.principal)
    else:
        backend = _InProcess(args.config, args.principal)
    try:
        answer = cc.handle(call, backend, cc.FilePending(Path(args.state)))
    except Exception as exc:  # fail closed: a hook that cannot decide denies
        answer = cc.cannot_decide(call.hook_event_name, str(exc) or type(exc).__name__)
    print(cc.dumps(answer))
    return EXIT_OK

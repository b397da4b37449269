"""``guardpool mcp-proxy --config F [--name N] -- <server command ...>``.

Runs the stdio MCP server given after ``--`` as a child process and serves MCP
on this process's own stdin/stdout in front of it, checking every tool call
against the policy (see ``guardpool.integrations.mcp_proxy``). Stdout belongs
to the MCP protocol: everything else guardpool says goes to stderr.
"""

from __future__ import annotations

import argparse

from guardpool.cli import EXIT_OK, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument(
        "--name",
        default=None,
        help="the server's name in labels op:mcp:NAME:TOOL (default: the name it reports)",
    )
    parser.add_argument("--run-id", default=None, help="the budget run (default: one per proxy)")
    parser.add_argument("--principal", default="", help="the principal budgets are charged to")
    parser.add_argument(
        "server", nargs=argparse.REMAINDER, help="-- then the MCP server's command and arguments"
    )


def main(args: argparse.Namespace) -> int:
    command = list(args.server)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("give the MCP server's command after --, e.g. -- python server.py")
    # Without the mcp extra this raises MissingExtra; the CLI prints the install line.
    from guardpool.integrations.mcp_proxy import UpstreamFailed, run_proxy
    from guardpool.runner.enforcer import Enforcer

    with Enforcer.from_config(args.config) as enforcer:
        try:
            run_proxy(
                enforcer, command, name=args.name, run_id=args.run_id, principal=args.principal
            )
        except UpstreamFailed as exc:  # the command after -- is wrong: a user error
            raise UsageError(str(exc)) from None
    return EXIT_OK

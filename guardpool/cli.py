"""The ``guardpool`` command.

Each subcommand lives in its own module under ``guardpool.commands`` and is
imported only when it runs, so ``guardpool check`` never pays for the HTTP
stack and ``guardpool --help`` imports nothing heavy.

A command module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def main(args: argparse.Namespace) -> int: ...

Exit codes: 0 ok / allowed, 1 denied or something found, 2 bad input,
70 a bug in guardpool; 141 (SIGPIPE's) when stdout's reader went away, silently.

User errors print one line on stderr and exit 2, never a traceback: a bad
command line (``UsageError``), a bad policy (``PolicyError``), a budget store
or audit ledger that cannot be opened or reached, a file or socket the OS
refuses, text that is not UTF-8. Anything else is a bug: the traceback is
printed with a request to report it, and the exit code is 70 (EX_SOFTWARE),
so that a script can tell "you did something wrong" from "guardpool did".
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from guardpool.extras import missing_extra

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2
EXIT_BUG = 70
EXIT_SIGPIPE = 128 + 13  # what a shell reports for a process SIGPIPE killed

_REPORT = "this is a bug in guardpool; please report it with the traceback above"

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("guardpool.commands.demo", "scripted agent loop showing guards, budgets and audit"),
    "check": ("guardpool.commands.check", "check one operation against a policy"),
    "serve": ("guardpool.commands.serve", "run the HTTP sidecar"),
    "lint": ("guardpool.commands.lint", "compile a policy and flag dangerous guards/settings"),
    "fuzz": ("guardpool.commands.fuzz", "attack every guard with adversarial inputs"),
    "bench": ("guardpool.commands.bench", "measure guards and recommend limits"),
    "test": ("guardpool.commands.test", "check a policy against written-down cases"),
    "audit": ("guardpool.commands.audit", "show, summarise and verify the audit ledger"),
    "hook": ("guardpool.commands.hook", "adapters for coding-agent hooks (claude-code)"),
    "mcp-proxy": ("guardpool.commands.mcp_proxy", "guard the tool calls of a stdio MCP server"),
    "doctor": ("guardpool.commands.doctor", "report which sandbox measures are active here"),
}


def missing_extra_hint(command: str, exc: ModuleNotFoundError) -> str | None:
    """The install hint for a missing optional module, or None for any other import error.

    A command whose extra is missing exits 2 with this line instead of a
    ModuleNotFoundError traceback (a core install used to die that way on `serve`).
    """
    found = missing_extra(exc)
    if found is None:
        return None
    return f"guardpool {command} needs the {found.extra} extra ({found.install_line})"


class UsageError(Exception):
    """A user mistake on the command line: printed as one line, exit code 2."""


def in_range(flag: str, value: float, low: float, high: float, *, above: bool = False) -> None:
    """Refuse a numeric flag outside [low, high] (``above``: outside (low, high]).

    NaN passes every ``value <= 0``-style test and an infinite time never ends
    (``--seconds 1e400``), so both are refused here, with the flag named.
    """
    ok = (low < value if above else low <= value) and value <= high  # NaN: False
    if not ok:

        def show(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else str(x)

        bound = f"more than {show(low)}" if above else f"at least {show(low)}"
        raise UsageError(f"{flag} must be {bound} and at most {show(high)}, not {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardpool",
        description="Keeps LLM agents inside their limits.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _version() -> str:
    from guardpool import __version__

    return f"guardpool {__version__}"


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user's input or environment is wrong", not a bug."""
    from guardpool.audit.ledger import LedgerError
    from guardpool.policy.errors import PolicyError
    from guardpool.store.errors import StoreUnavailable

    return (UsageError, PolicyError, StoreUnavailable, LedgerError, UnicodeError, OSError)


def describe(exc: BaseException) -> str:
    """One line for a user error."""
    if isinstance(exc, UnicodeError):
        return f"text is not valid UTF-8 ({getattr(exc, 'reason', exc)})"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split())  # one line, whatever the message held
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    # Output never fails on text it cannot encode (a non-UTF-8 terminal, a
    # hostile label echoed back): it is escaped instead.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and not argv[0].startswith("-"):
            top.print_usage(sys.stderr)
            print(f"guardpool: error: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_BAD_INPUT
        top.parse_args(argv)  # handles --help / --version / errors (exit 2)
        top.print_help()
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        return _missing_module(name, exc)
    parser = argparse.ArgumentParser(prog=f"guardpool {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    user_errors = user_error_types()
    try:
        result: int = module.main(args)
    except ModuleNotFoundError as exc:
        return _missing_module(name, exc)
    except BrokenPipeError:
        return _reader_gone()
    except user_errors as exc:
        print(f"guardpool {name}: error: {describe(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:
        print(f"guardpool {name}: error: input nested too deeply", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"guardpool {name}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        return _bug(name)
    return result


def _reader_gone() -> int:
    """stdout's reader left (``guardpool audit show R | head``): stop quietly.

    Not a user error (it printed "error: Broken pipe" and exited 2, "bad
    input"): the exit status a process killed by SIGPIPE has, and nothing on
    stderr. stdout is pointed at /dev/null so that the interpreter's last
    flush does not fail again on the way out.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_SIGPIPE


def _missing_module(name: str, exc: ModuleNotFoundError) -> int:
    """Exit 2 with the install hint when an optional extra is missing, else report a bug."""
    hint = missing_extra_hint(name, exc)
    if hint is None:
        return _bug(name)
    print(f"guardpool {name}: error: {hint}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _bug(name: str) -> int:
    """Print the exception being handled as a bug report; the exit code for a bug."""
    import traceback

    traceback.print_exc()
    print(f"guardpool {name}: internal error: {_REPORT}", file=sys.stderr)
    return EXIT_BUG

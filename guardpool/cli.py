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
or audit ledger that cannot be opened or reached (with PostgreSQL, the line
ends with libpq's reason from the last connection attempt: ``PoolWarnings``),
a file or socket the OS refuses, text that is not UTF-8. Anything else is a bug: the traceback is
printed with a request to report it, and the exit code is 70 (EX_SOFTWARE),
so that a script can tell "you did something wrong" from "guardpool did".
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
    pg = None if name in _LONG_RUNNING else PoolWarnings.install()
    try:
        result: int = module.main(args)
    except ModuleNotFoundError as exc:
        return _missing_module(name, exc)
    except BrokenPipeError:
        return _reader_gone()
    except user_errors as exc:
        cause = pg.cause if pg is not None and _unreachable(exc) else None
        tail = f" ({cause})" if cause else ""
        print(f"guardpool {name}: error: {describe(exc)}{tail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:
        print(f"guardpool {name}: error: input nested too deeply", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"guardpool {name}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        return _bug(name)
    if result != EXIT_OK and pg is not None and pg.cause:
        # A store or ledger that went away mid-command: its denials say "unavailable",
        # and the one line psycopg_pool had about why was kept back.
        print(f"guardpool {name}: note: {pg.cause}", file=sys.stderr)
    return result


# Commands that run until stopped: their pool warnings (a server that went away and
# came back) are the operator's log, printed as they happen.
_LONG_RUNNING = frozenset({"serve", "mcp-proxy"})


class PoolWarnings(logging.Handler):
    """psycopg_pool's connection warnings, kept back: the last one is the cause.

    The pool logs "error connecting in 'guardpool-x': <libpq's message>" from its
    background workers, two lines each, several times a second; with no logging
    configured Python prints each on stderr, before guardpool's own one-line
    error, which said only "no connection within 2000 ms". A command that runs
    once keeps the last message's first line instead and puts it in its error.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.cause: str | None = None

    @classmethod
    def install(cls) -> PoolWarnings:
        """Kept for the rest of the process: the pool's threads may still log after
        the command's last line (a ledger that failed to open leaves its pool behind)."""
        logger = logging.getLogger("psycopg.pool")
        handler = next((h for h in logger.handlers if isinstance(h, cls)), None)
        if handler is None:
            handler = cls()
            logger.addHandler(handler)
        handler.cause = None
        logger.propagate = False  # nothing reaches the last-resort printer
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg == "error connecting in %r: %s" and isinstance(args, tuple) and args:
            lines = str(args[-1]).strip().splitlines()
            text = lines[0] if lines else ""
            # libpq's own words, without psycopg's "connection failed: " in front.
            self.cause = "last connection attempt: " + text.removeprefix("connection failed: ")


def _unreachable(exc: BaseException) -> bool:
    """A store or ledger that could not be reached: the pool's cause belongs in the line."""
    from guardpool.audit.ledger import LedgerError
    from guardpool.store.errors import StoreUnavailable

    seen: BaseException | None = exc
    for _ in range(8):  # a command may re-raise it as a UsageError (audit: ``from exc``)
        if seen is None:
            return False
        if isinstance(seen, LedgerError | StoreUnavailable):
            return True
        seen = seen.__cause__
    return False


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

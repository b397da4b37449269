"""``guardpool serve``: the HTTP sidecar.

Binds 127.0.0.1 by default. A bearer token (``--token-file``, ``GUARDPOOL_TOKEN``
or ``--token``, which ``ps`` shows to every local user: commands/tokens.py) is
required unless ``--no-auth`` is given explicitly, or ``--unix PATH`` is used:
the socket is created with mode 0600, so file permissions guard it. Without a
token on TCP, only requests whose Host header names the sidecar are answered
(``localhost``, its address, ``--allow-host`` names: server/hosts.py), which
is what stops a web page that reached it through DNS rebinding.

A connection that does not send its request headers within
``--header-timeout`` seconds, or its body within ``--body-timeout`` seconds
after the headers, gets a 408 and is closed (``guardpool.server.timeouts``).
The listening socket is bound here, before the server starts, so that a port
in use or a bad host is one line and exit 2 like every other user error.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
from pathlib import Path

from guardpool.cli import UsageError
from guardpool.commands import tokens
from guardpool.runner.enforcer import Enforcer

# Room for JSON framing around an input of max_input_bytes.
_BODY_SLACK = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181)
    parser.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="bearer token; visible to other local users in ps: prefer --token-file "
        "or env GUARDPOOL_TOKEN",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the bearer token from this file (one line, at most 4 KiB)",
    )
    parser.add_argument("--unix", default=None, metavar="PATH", help="listen on a Unix socket")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without a token (TCP: only requests whose Host names this sidecar)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="also answer requests whose Host is NAME (repeatable). Without a token the "
        "sidecar answers only Host localhost:PORT or its own address (against DNS "
        "rebinding); with a token, giving this turns the same check on",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection whose request headers take longer (default 10 s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close a connection whose request body takes longer (default 30 s)",
    )


def tcp_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def unix_socket(path: str) -> socket.socket:
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not target.is_socket():
            raise UsageError(f"--unix {path}: exists and is not a socket")
        if _listening(path):
            # Unlinking it would leave that server running, unreachable, while its
            # clients' next connections reach this one instead.
            raise UsageError(f"--unix {path}: another server is listening on this socket")
        target.unlink()  # left behind by a server that is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no window where others can connect
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--unix {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False  # nobody listens: a stale socket file
        except OSError:
            return True  # a full backlog or a timeout: someone is there, leave it alone
        return True


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from guardpool.server.app import build_app
    from guardpool.server.hosts import HostCheck, allowed_name
    from guardpool.server.timeouts import protocol

    token = tokens.resolve(args.token, args.token_file, warn=True)
    if token is None and not args.no_auth and args.unix is None:
        raise UsageError(
            "no token: pass --token-file PATH or set GUARDPOOL_TOKEN, listen on --unix PATH, "
            "or disable authentication explicitly with --no-auth"
        )
    if args.unix and args.allow_host:
        raise UsageError("--allow-host applies to TCP only: a browser cannot reach --unix")
    for entry in args.allow_host:
        try:
            allowed_name(entry)
        except ValueError as exc:
            raise UsageError(f"--allow-host {entry!r}: {exc}") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port")
    for flag, value in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
    ):
        if not 0 < value <= 3600:  # also refuses nan
            raise UsageError(f"{flag} must be between 0 and 3600 seconds, not {value}")
    sock = unix_socket(args.unix) if args.unix else tcp_socket(args.host, args.port)
    try:
        enforcer = Enforcer.from_config(args.config)
    except BaseException:
        sock.close()
        if args.unix:
            Path(args.unix).unlink(missing_ok=True)
        raise
    max_body = enforcer.policy.config.pool.max_input_bytes + _BODY_SLACK
    hosts = None
    if args.unix is None and (token is None or args.allow_host):
        # Without a token, the Host header is what tells a rebound web page
        # (server/hosts.py); with one, only when the operator asks for it.
        hosts = HostCheck(
            addresses=(args.host, str(sock.getsockname()[0])),
            port=args.port,
            allowed=args.allow_host,
        )
    app = build_app(enforcer, token=token, max_body=max_body, hosts=hosts)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=protocol(args.header_timeout, args.body_timeout),
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # with the handler it found; by then the pool and the ledger are closed, so a
    # clean exit is the truthful status.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    where = f"unix:{args.unix}" if args.unix else f"http://{args.host}:{args.port}"
    print(f"guardpool serve: listening on {where}", flush=True)
    server.run(sockets=[sock])
    return 0

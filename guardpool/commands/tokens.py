"""Where ``serve`` and ``hook --server`` get the bearer token: a file, the environment, or argv.

    --token-file PATH ──► read once (at most 4 KiB), one trailing newline dropped
    GUARDPOOL_TOKEN   ──► as is
    --token T         ──► as is, with a warning: argv is world-readable

A command line is readable by every local user (``ps``, ``/proc/PID/cmdline``);
a file with mode 0600 or the environment (``/proc/PID/environ`` is readable by
the same user and root only) are not. A token file that is missing, unreadable,
empty, larger than 4 KiB, not UTF-8 or holding a control character (two lines:
the wrong file) is a UsageError naming the file: exit 2, never a server that
starts without the token its operator meant to set.
"""

from __future__ import annotations

import os
import stat
import sys

from guardpool.cli import UsageError

ENV = "GUARDPOOL_TOKEN"
MAX_TOKEN_FILE = 4096
ARGV_WARNING = (
    "--token on the command line is visible to other local users (ps); "
    f"use --token-file PATH or the {ENV} environment variable"
)


def read_token_file(path: str, *, warn: bool = False) -> str:
    """The token held by ``path``; UsageError naming the file when it cannot be one.

    ``warn``: say on stderr when other users may read the file (its mode has
    group or other bits), as ssh does for a private key; the token still works.
    """
    where = f"--token-file {path}"
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to would wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"{where}: not a regular file")
        if warn and mode & 0o077:
            print(
                f"guardpool: warning: {where} is readable by other users "
                f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it",
                file=sys.stderr,
                flush=True,
            )
        raw = os.read(fd, MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_FILE:
        raise UsageError(f"{where}: larger than {MAX_TOKEN_FILE} bytes (a token is one line)")
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        token = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 (byte {exc.start})") from None
    if not token.strip():
        raise UsageError(f"{where}: the file is empty")
    bad = next((c for c in token if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        line = token.count("\n", 0, token.index(bad)) + 1
        raise UsageError(
            f"{where}: control character {bad!r} on line {line} (the file must hold one token)"
        )
    return token


def resolve(token: str | None, token_file: str | None, *, warn: bool) -> str | None:
    """The token from ``--token-file``, ``--token`` or the environment, or None.

    ``warn``: print ARGV_WARNING on stderr when ``--token`` was given, and say when
    the token file is readable by others (``serve``; the hook's stderr reaches the
    agent's screen on every call, so it only documents both).
    """
    if token is not None and token_file is not None:
        raise UsageError("--token and --token-file are mutually exclusive")
    if token_file is not None:
        return read_token_file(token_file, warn=warn)
    if token is not None:
        if not token:
            raise UsageError("--token is empty")
        if warn:
            print(f"guardpool: warning: {ARGV_WARNING}", file=sys.stderr, flush=True)
        return token
    return os.environ.get(ENV) or None

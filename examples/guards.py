"""Example callable guards: ``(input, ctx) -> Verdict | bool``.

Guard code is trusted (the policy author wrote it); its *input* is hostile.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from guardpool import Verdict

_DANGEROUS_COMMANDS = {"mkfs", "dd", "shutdown", "reboot", "halt", "chmod", "chown", "fdisk"}
_SHELLS = {"sh", "bash", "zsh", "dash", "ksh"}
_CONTROL = {";", "&&", "||", "|", "&", ";;", "|&", "\n"}
# Prefixes that run the command after them: judge that command, not the prefix.
_WRAPPERS = {"sudo", "doas", "env", "nohup", "nice", "time", "command", "exec", "xargs"}
_ROOTS = {"/", "/*", "~", "~/", "~/*", ".", "./", "*", "$HOME", "${HOME}"}


def _simple_commands(text: str) -> list[tuple[bool, list[str]]]:
    """Split a command line on ; && || | & into (reads a pipe, argv) pairs.

    ``ls; rm -rf /`` is two commands; in ``curl ... | sh`` the second reads a pipe.
    """
    lexer = shlex.shlex(text.replace("\n", " ; "), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[tuple[bool, list[str]]] = [(False, [])]
    for token in lexer:
        if token in _CONTROL:
            commands.append((token in ("|", "|&"), []))
        else:
            commands[-1][1].append(token)
    return [(piped, argv) for piped, argv in commands if argv]


def _program(argv: list[str]) -> tuple[str, list[str]]:
    """The program actually run (``sudo /bin/rm`` -> ``rm``) and its arguments."""
    i = 0
    while i < len(argv) and (argv[i] in _WRAPPERS or "=" in argv[i] or argv[i].startswith("-")):
        i += 1  # skip wrappers, their options and VAR=value assignments
    if i == len(argv):
        return "", []
    return argv[i].rsplit("/", 1)[-1], argv[i + 1 :]


def _check_line(text: str) -> Verdict | None:
    """The first deny in the line, else its first warning, else None."""
    if "$(" in text or "`" in text:
        return Verdict.deny("command substitution is not allowed for agents")
    try:
        commands = _simple_commands(text)
    except ValueError:
        return Verdict.deny("unparsable shell command")
    if not commands:
        return Verdict.deny("empty command")
    warning: Verdict | None = None
    for piped, argv in commands:
        verdict = _check_one(piped, argv)
        if verdict is not None and verdict.action == "deny":
            return verdict
        warning = warning or verdict
    return warning


def _check_one(piped: bool, argv: list[str]) -> Verdict | None:
    name, args = _program(argv)
    if name in _SHELLS:
        if "-c" in args[:-1]:
            return _check_line(args[args.index("-c") + 1])  # sh -c '...' runs a command line
        if piped and not [a for a in args if not a.startswith("-")]:
            return Verdict.deny("piping into a shell")
    recursive = any(a.startswith("-") and "r" in a.lower() for a in args)
    if name == "rm" and recursive and any(a in _ROOTS for a in args):
        return Verdict.deny("recursive delete of a root or home directory")
    if name in _DANGEROUS_COMMANDS or name.split(".")[0] in _DANGEROUS_COMMANDS:
        return Verdict.deny(f"{name} is not allowed for agents")
    if name == "git" and "push" in args and any(a in ("--force", "-f") for a in args):
        return Verdict.warn("force push")
    return None


def check_shell(command: Any, ctx: Any) -> Verdict:
    """Deny destructive or download-and-execute shell commands; warn on force pushes.

    Each simple command of the line is judged (``ls; rm -rf /`` is denied),
    through wrappers like ``sudo``, full paths and ``sh -c '...'``; a pipe into
    a shell reading its script from stdin is denied. Command substitution is
    denied outright: what it runs cannot be judged from the text.
    """
    text = str(command)
    warning = _check_line(text)
    if warning is not None and warning.action == "deny":
        return warning
    # Nested guard: the command line must not carry credentials either.
    nested: Verdict = ctx.guard("no-cloud-keys", text)
    if nested.action == "allow" and warning is not None:
        return warning
    return nested


def slow_lookup(value: Any, ctx: Any) -> bool:
    """Simulates a reputation service that has stopped answering."""
    time.sleep(30)
    return True


def toxicity_score(value: Any, ctx: Any) -> Verdict:
    """An advisory classifier: slow on long inputs, fail-open in the policy."""
    text = str(value)
    if len(text) > 10_000:
        time.sleep(5)  # pretend the model is slow on long inputs
    if ctx.regex(r"(?i)\b(idiot|stupid)\b").search(text):
        return Verdict.warn("possibly toxic language")
    return Verdict.allow()


def redact_emails(value: Any, ctx: Any) -> Verdict:
    """After-guard: rewrite e-mail addresses in model output."""
    text = str(value)
    pattern = ctx.regex(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
    if pattern.search(text):
        return Verdict.rewrite(pattern.sub("[email]", text), "e-mail address redacted")
    return Verdict.allow()

"""``guardpool check``: one decision from the shell.

Exit codes: 0 allowed (a warning included), 1 denied, 2 bad input. The input
comes from ``--input TEXT`` or, with ``--input -``, from standard input read as
bytes (at most 256 MiB, the largest max_input_bytes) and decoded strictly as
UTF-8: non-UTF-8 input is refused with exit 2, not silently mangled. The same
holds for every other argument: Python hands non-UTF-8 bytes in ``argv`` over
as lone surrogates, which are refused here with the flag named.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal

import msgspec

from guardpool.cli import EXIT_DENIED, EXIT_OK, UsageError
from guardpool.commands.text import printable
from guardpool.policy.bounds import MAX_INPUT_BYTES, check_amount
from guardpool.policy.labels import validate_label
from guardpool.policy.model import Decision, Operation, Usage
from guardpool.policy.money import format_amount, parse_money
from guardpool.runner.enforcer import Enforcer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy file (TOML or JSON)")
    parser.add_argument(
        "--label",
        action="append",
        required=True,
        help="operation label, e.g. exe:llm:gpt-4o (repeatable)",
    )
    parser.add_argument("--input", required=True, help="the operation's input, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.add_argument("--run", default=None, help="run id (default: a new one)")
    parser.add_argument("--principal", default="", help="principal (user, tenant) of the run")
    parser.add_argument("--estimate-tokens", type=int, default=None, metavar="N")
    parser.add_argument("--estimate-cost", default=None, metavar="MONEY", help='e.g. "$0.02"')


def utf8_arg(flag: str, value: str) -> str:
    """``value`` unless it carries bytes that were not UTF-8 on the command line."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start].encode("utf-8", "surrogateescape")
        raise UsageError(f"{flag} is not UTF-8 (byte {bad!r} at character {exc.start})") from None
    return value


def read_input(value: str) -> str:
    if value != "-":
        return utf8_arg("--input", value)
    # Bounded: `--input - < /dev/zero` read until the OOM killer came.
    raw = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    if len(raw) > MAX_INPUT_BYTES:
        raise UsageError(
            f"standard input is larger than {MAX_INPUT_BYTES} bytes, more than any policy's "
            "max_input_bytes accepts"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"standard input is not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
        ) from None


def operation(args: argparse.Namespace) -> Operation:
    for label in args.label:
        try:
            validate_label(label)
        except ValueError as exc:
            raise UsageError(f"--label: {exc}") from None
    for flag, value in (("--run", args.run), ("--principal", args.principal)):
        if value is not None:
            utf8_arg(flag, value)
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or len(value) > 256:
                raise UsageError(f"{flag} must be at most 256 printable characters")
    if args.estimate_tokens is not None:
        try:
            check_amount(args.estimate_tokens, "--estimate-tokens")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    cost: Decimal | None = None
    if args.estimate_cost is not None:
        try:
            cost = parse_money(args.estimate_cost)
        except ValueError as exc:
            raise UsageError(f"--estimate-cost: {exc}") from None
    estimate = None
    if args.estimate_tokens is not None or cost is not None:
        estimate = Usage(tokens=args.estimate_tokens, cost=cost)
    text = read_input(args.input)
    try:
        return Operation(labels=tuple(args.label), input=text, estimate=estimate)
    except ValueError as exc:  # e.g. more labels than an operation may carry
        raise UsageError(str(exc).removeprefix("Operation.")) from None


def to_json(d: Decision) -> str:
    try:
        return msgspec.json.encode(d).decode()
    except UnicodeEncodeError:
        # A guard's reason or a rewrite carried a lone surrogate: JSON can
        # carry it as a \udXXX escape, which the stdlib encoder writes.
        return json.dumps(msgspec.to_builtins(d))


def render(d: Decision) -> str:
    lines = [f"{d.action.upper()}  decision {d.id}  run {d.run_id}"]
    lines += [f"  reason: {r}" for r in d.reasons]
    for v in d.verdicts:
        lines.append(f"  guard {v.guard:24} {v.outcome:8} {v.ms:8.2f} ms  {v.reason}")
    for s in d.limits:

        def fmt(x: int, dim: str = s.dimension) -> str:
            return format_amount(dim, x)

        lines.append(
            f"  limit {s.pattern} {s.dimension}: used {fmt(s.used)}, reserved {fmt(s.reserved)}"
            f", limit {fmt(s.limit)}" + ("  EXCEEDED" if s.exceeded else "")
        )
    # A guard's reason may quote the hostile input it judged: escape what a terminal obeys.
    return "\n".join(printable(line) for line in lines)


def main(args: argparse.Namespace) -> int:
    op = operation(args)
    with Enforcer.from_config(args.config) as enforcer:
        decision = enforcer.run(args.run, principal=args.principal).check(op)
        if decision.allowed:
            # A one-off check runs nothing: hand the reservation back.
            enforcer.release(decision)
    if args.json:
        print(to_json(decision))
    else:
        print(render(decision))
    return EXIT_OK if decision.allowed else EXIT_DENIED

"""``guardpool demo``: a scripted agent loop showing guards, budgets and the audit ledger."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-color", action="store_true", help="plain output")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from guardpool.demo.story import main as story

    # None, not False, when the flag is absent: rich then honours NO_COLOR from the
    # environment (an explicit False overrode it and the demo printed colour anyway).
    no_color = True if args.no_color else None
    console = Console(highlight=False, no_color=no_color)
    if not console.is_terminal:
        console = Console(highlight=False, no_color=no_color, width=120)
    return story(console)

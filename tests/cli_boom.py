"""A command module with a genuine bug, for the CLI's bug-report path (tests/test_cli_errors.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    table: dict[str, int] = {}
    return table["missing"]  # the bug

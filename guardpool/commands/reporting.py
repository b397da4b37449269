"""Consoles and progress for the long-running commands (``fuzz``, ``bench``).

Progress always goes to stderr, so stdout carries only data (TOML, JSON) and
``guardpool bench > limits.toml`` stays parseable. On a terminal the progress
is a live bar; elsewhere (CI logs, pipes) it is one plain line per step, so a
log shows what a long run is doing without carriage-return noise. ``NO_COLOR``
(any value) and non-terminal streams get no colour: rich honours both.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from guardpool.cli import UsageError


def console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    no_color = "NO_COLOR" in os.environ
    terminal = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        markup=False,  # "[pool]" in a message is TOML, not a rich style tag
        no_color=no_color,
        force_terminal=terminal,
        width=None if terminal else 140,
        soft_wrap=not terminal,
    )


class Steps:
    """``with Steps(err) as s: s.start("guard x", total); s.advance(...); s.done(summary)``."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.live = err.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
            disable=not self.live,
        )
        self.task: TaskID | None = None
        self.label = ""
        self.started = 0.0

    def __enter__(self) -> Steps:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def start(self, label: str, total: float) -> None:
        self.label = label
        self.started = time.monotonic()
        self.task = self.progress.add_task(label, total=total, note="")
        if not self.live:
            self.err.print(f"{label} ...")

    def advance(self, completed: float, note: str = "") -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=completed, note=note)

    def done(self, summary: str) -> None:
        if self.task is not None:
            total = self.progress.tasks[-1].total or 0
            self.progress.update(self.task, completed=total, note=summary)
        if not self.live:
            self.err.print(f"{self.label}: {summary} ({time.monotonic() - self.started:.1f} s)")
        self.task = None

    def note(self, text: str) -> None:
        if self.live:
            self.progress.console.print(text)
        else:
            self.err.print(text)


def check_output(flag: str, value: str, *, directory: bool = False) -> None:
    """Refuse, before any work, an output path the command could not write at its end.

    ``fuzz`` and ``bench`` write their results after minutes of measuring; a
    ``--sarif`` in a missing directory, or ``--findings`` naming a file, failed
    only then and lost the run. ``directory``: the path is a directory that
    will be created (with its parents) when missing.
    """
    path = Path(value)
    if path.exists():
        if directory and not path.is_dir():
            raise UsageError(f"{flag} {value}: exists and is not a directory")
        if not directory and path.is_dir():
            raise UsageError(f"{flag} {value}: is a directory")
        return
    parent = path.parent
    if directory:
        while not parent.exists():  # mkdir(parents=True) creates the missing ones
            parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {value}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {value}: cannot write in {parent}")

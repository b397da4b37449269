"""``JobFuture``: the ``Future`` a pool job returns, which lets its waiter read the answer.

Data flow::

  result() / exception() ─► Dispatcher.wait_direct: this thread polls the worker's
                            socket and resolves the job itself (no thread hop)
  add_done_callback, asyncio.wrap_future, concurrent.futures.wait / as_completed,
  polling done() ─► the task is *watched*: the manager thread reads its answer

``wait()`` and ``as_completed()`` install their waiters in ``Future._waiters``; a list
whose ``append`` marks the task watched catches them without replacing those functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from guardpool.runner.results import JobResult

if TYPE_CHECKING:
    from guardpool.runner.dispatch import Dispatcher
    from guardpool.runner.scheduler import Task


class JobFuture(Future[JobResult]):
    """A ``Future`` whose ``result()`` reads the worker's answer in the waiting thread.

    Every other way to wait (``add_done_callback``, asyncio's ``wrap_future``,
    ``concurrent.futures.wait``/``as_completed``, polling ``done()``) marks the task
    *watched*, which hands the reading to the manager thread.
    """

    def __init__(self, dispatcher: Dispatcher, task: Task) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._task = task
        # concurrent.futures.wait() and as_completed() install their waiters here.
        self._waiters: list[Any] = _Interest(self)

    def _watch(self) -> None:
        if not self._task.watched:
            self._dispatcher.watch(self._task)

    def _wait(self, timeout: float | None) -> float | None:
        if super().done():
            return timeout
        start = time.monotonic()
        end = task_end = self._task.deadline
        if timeout is not None:
            end = min(task_end, start + timeout)
        self._dispatcher.wait_direct(self._task, end)
        if not super().done():
            # Not answered here (no worker yet, another thread reads it, or ``timeout``):
            # this thread now waits on the condition, so the manager must read for it.
            self._watch()
        if timeout is None:
            return None
        return max(0.0, timeout - (time.monotonic() - start))

    def result(self, timeout: float | None = None) -> JobResult:
        return super().result(self._wait(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._wait(timeout))

    def add_done_callback(self, fn: Callable[[Future[JobResult]], object]) -> None:
        self._watch()
        super().add_done_callback(fn)

    def done(self) -> bool:
        finished = super().done()
        if not finished:
            self._watch()  # polled: somebody has to read the answer meanwhile
        return finished


class _Interest(list[Any]):
    """``Future._waiters``: a waiter installed by ``wait()`` makes the task watched."""

    def __init__(self, future: JobFuture) -> None:
        super().__init__()
        self.future = future

    def append(self, waiter: Any) -> None:
        self.future._watch()
        super().append(waiter)

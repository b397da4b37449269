"""``JobFuture``: the ``Future`` a pool job returns, which lets its waiter read the answer.

Data flow::

  result() / exception() ─► Dispatcher.wait_direct: this thread polls the worker's
                            socket and resolves the job itself (no thread hop)
  add_done_callback, asyncio.wrap_future, concurrent.futures.wait / as_completed,
  polling done() ─► the task is *watched*: the manager thread reads its answer

``wait()`` and ``as_completed()`` install their waiters in ``Future._waiters``; a list
whose ``append`` marks the task watched catches them without replacing those functions.

The condition is made on demand. A ``concurrent.futures.Future`` makes a
``threading.Condition`` when it is created and takes it to start, finish and read
the job: about a tenth of a round trip for a trivial guard. In the common case
(``submit(...).result()`` in one thread) only the thread that resolves the job and
the one that reads it ever touch the future, and they do not need the condition.
So ``_condition`` is made the first time any ``Future`` method asks for it (any way
to wait, ``cancel``, a callback, ``repr``), under the pool's mutex. Starting and
finishing a job happen under the same mutex (``start_locked``/``finish_locked``):
while no condition exists they only set the state, as nobody can be waiting on it;
once one exists they return False and the caller goes the ``Future`` way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any

from guardpool.runner.results import JobResult

if TYPE_CHECKING:
    from guardpool.runner.dispatch import Dispatcher
    from guardpool.runner.worker_link import WorkerLink
    from guardpool.worker import protocol

_OVER = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", FINISHED})
# Until a condition exists nobody can have installed a waiter: an immutable stand-in,
# so that a use outside the condition would fail loudly rather than share a list.
_NO_WAITERS: list[Any] = ()  # type: ignore[assignment]


class JobFuture(Future[JobResult]):
    """A pool job: its record (the scheduler's ``Task``) and the ``Future`` it returns.

    ``result()`` reads the worker's answer in the waiting thread. Every other way to
    wait (``add_done_callback``, asyncio's ``wrap_future``,
    ``concurrent.futures.wait``/``as_completed``, polling ``done()``) marks the task
    *watched*, which hands the reading to the manager thread.

    One object, not a record and a future pointing at each other: that pair was a
    reference cycle per job, left for the cyclic GC (about 1 us per call).
    """

    # Future's own attributes too: no instance dict is made for them.
    __slots__ = (
        "_cond",
        "_dispatcher",
        "_done_callbacks",
        "_exception",
        "_result",
        "_state",
        "_waiters",
        "answered",
        "deadline",
        "frame",
        "guard",
        "id",
        "msg",
        "owner",
        "quiet",
        "started",
        "submitted",
        "watched",
        "worker",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        task_id: int,
        msg: protocol.CallJob | protocol.GuardJob,
        frame: bytes,
        deadline: float,
        submitted: float,
        owner: object,
        guard: bool,
    ) -> None:
        # Future.__init__'s attributes, except that the condition comes on demand.
        self._cond: threading.Condition | None = None
        self._state = PENDING
        self._result: JobResult | None = None
        self._exception: BaseException | None = None
        self._done_callbacks: list[Callable[[Future[JobResult]], object]] = []
        self._dispatcher = dispatcher
        # concurrent.futures.wait() and as_completed() install their waiters here, always
        # holding the condition: the list that watches for them comes with it.
        self._waiters: list[Any] = _NO_WAITERS
        # The job's record (see scheduler.py).
        self.id = task_id
        self.msg = msg
        self.frame = frame  # the job as sent to a worker (encoded once, in the caller)
        self.deadline = deadline
        self.submitted = submitted
        # The GuardPool that took the job: a pool nobody else references stays alive
        # until its pending jobs are answered (``GuardPool(...).submit(...).result()``).
        self.owner = owner
        self.guard = guard
        self.worker: WorkerLink | None = None
        self.started = False
        self.answered = False  # resolved (or being resolved) by some thread
        # quiet: written by a caller thread, which will read the answer itself, so the
        # manager does not watch the socket; watched: someone waits by callback instead
        # (add_done_callback, asyncio, concurrent.futures.wait), so the manager must.
        self.quiet = False
        self.watched = False

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with self._dispatcher.mutex:  # decided against start_locked / finish_locked
                cond = self._cond
                if cond is None:
                    self._waiters = _Interest(self)
                    cond = self._cond = threading.Condition()
        return cond

    def start_locked(self) -> bool:
        """Mark the job running, pool mutex held; False if it was cancelled meanwhile."""
        if self._cond is None:
            self._state = RUNNING  # cancel() would have made the condition
            return True
        return self.set_running_or_notify_cancel()

    def finish_locked(self, result: JobResult) -> bool:
        """Set the result, pool mutex held, if nobody ever needed the condition.

        False when some thread may wait or has a callback: then the caller (without
        the mutex) finishes it with ``set_running_or_notify_cancel``/``set_result``.
        """
        if self._cond is not None:
            return False
        self._result = result
        self._state = FINISHED  # after _result: a reader that sees FINISHED sees it
        return True

    def _watch(self) -> None:
        if not self.watched:
            self._dispatcher.watch(self)

    def _wait(self, timeout: float | None) -> float | None:
        if self.answered:
            return timeout  # answered (or being answered) by another thread
        start = time.monotonic()
        end = self.deadline
        if timeout is not None:
            end = min(end, start + timeout)
        self._dispatcher.wait_direct(self, end)
        if self._state not in _OVER:
            # Not answered here (no worker yet, another thread reads it, or ``timeout``):
            # this thread now waits on the condition, so the manager must read for it.
            self._watch()
        if timeout is None:
            return None
        return max(0.0, timeout - (time.monotonic() - start))

    def result(self, timeout: float | None = None) -> JobResult:
        if self._state != FINISHED:
            if timeout is None and not self.answered:
                # The usual wait, without _wait's bookkeeping: until the answer or the deadline.
                self._dispatcher.wait_direct(self, self.deadline)
                if self._state not in _OVER:
                    self._watch()  # not answered here: the manager reads it for us
            else:
                timeout = self._wait(timeout)
        if self._state == FINISHED and self._exception is None:
            return self._result  # type: ignore[return-value]
        return super().result(timeout)  # waits, or raises what it should

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            timeout = self._wait(timeout)
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Future[JobResult]], object]) -> None:
        self._watch()
        super().add_done_callback(fn)

    def done(self) -> bool:
        finished = self._state in _OVER  # one read: the state only ever moves forward
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

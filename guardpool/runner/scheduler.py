"""Jobs on the host side: the task record, the queue, the deadline heap, resolution.

Data flow::

  caller thread: encode_input -> Task --+--> a free worker at once (dispatch.py)
                                        +--> queue (FIFO) when none is free
                                        +--> inbox (deque) ........ manager thread
  manager:       inbox -> heap (deadline order) -> expire: kill, verdict
  any thread:    resolve(task, outcome) -> Future.set_result -> the waiter wakes

A queued task passes through the inbox so the manager learns its deadline (a running
one is watched through its worker); the caller wakes the manager only when that
deadline is earlier than the one it sleeps towards, so a stream of calls costs the
manager nothing. The task record is the job's future (``futures.JobFuture``).
A task lives in the queue until a worker takes it and in the heap until it is
resolved; a resolved task is skipped wherever it still sits (lazy deletion keeps
every operation O(log n) or O(1)).

Threads: callers append to the inbox and the queue and resolve the tasks they read
answers for; ``mutex`` makes "who resolves a task" a single decision (the first
``claim`` wins) and guards the counters. The heap is the manager's alone.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from concurrent.futures import Future
from typing import Any

import msgspec

from guardpool.policy import inputs
from guardpool.runner.futures import JobFuture
from guardpool.runner.results import JobResult, LimitName, Outcome

# A job's record is its future (futures.py): one object per job, no reference cycle.
Task = JobFuture

_local = threading.local()


def encode_input(value: Any) -> bytes:
    """A job's input as the msgpack the worker decodes; the one place its encoding is chosen.

    ``policy/inputs.pack``: lone surrogates travel intact (the worker decodes with
    ``inputs.unpack_ext``). Raises ``inputs.InputError`` for what cannot be sent.
    """
    enc: msgspec.msgpack.Encoder | None = getattr(_local, "encoder", None)
    if enc is None:  # one encoder per calling thread: encoding happens in the caller
        enc = _local.encoder = msgspec.msgpack.Encoder()
    return inputs.pack(enc, value)


class Scheduler:
    """Queue, deadline heap and resolution; ``dispatch.py`` decides where tasks run."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()  # O(1) bookkeeping only, never held across I/O
        self.inbox: collections.deque[Task] = collections.deque()
        self.queue: collections.deque[Task] = collections.deque()
        self.heap: list[tuple[float, int, Task]] = []
        self.compact_at = 1024
        self.completed = 0
        # Pool events by name (timeouts, kills, spawns...), under ``mutex``: PoolStats.
        self.counts = collections.Counter[str]()

    def take_inbox(self) -> None:
        """Manager thread: new tasks' deadlines into the heap (answered ones need none)."""
        inbox, heap = self.inbox, self.heap
        while inbox:
            task = inbox.popleft()
            if not task.answered:
                heapq.heappush(heap, (task.deadline, task.id, task))
        if len(heap) > self.compact_at:
            # Answered tasks wait here for their (possibly distant) deadline; drop them
            # once they are half the heap: amortised O(1) per task, memory bounded.
            heap[:] = [entry for entry in heap if not entry[2].answered]
            heapq.heapify(heap)
            self.compact_at = max(1024, 2 * len(heap))

    def next_deadline(self) -> float | None:
        heap = self.heap
        while heap and heap[0][2].answered:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expired(self, now: float) -> list[Task]:
        """Unresolved tasks whose deadline has passed, earliest first."""
        out: list[Task] = []
        heap = self.heap
        while heap and (heap[0][0] <= now or heap[0][2].answered):
            task = heapq.heappop(heap)[2]
            if not task.answered:
                out.append(task)
        return out

    def next_queued(self) -> Task | None:
        """The oldest queued task still wanted (not resolved, not cancelled), marked started.

        Called with ``mutex`` held.
        """
        queue = self.queue
        while queue:
            task = queue.popleft()
            if task.answered:
                continue
            if not task.started:
                if not task.start_locked():
                    task.answered = True  # cancelled by the caller while queued
                    task.owner = None
                    continue
                task.started = True
            return task
        return None

    def pending(self) -> list[Task]:
        """Every unresolved task the scheduler still holds (inbox, queue, heap)."""
        seen: dict[int, Task] = {}
        for task in (*self.inbox, *self.queue, *(t for _, _, t in self.heap)):
            if not task.answered:
                seen[task.id] = task
        return list(seen.values())

    def clear(self) -> None:
        self.inbox.clear()
        self.queue.clear()
        self.heap.clear()

    def claim(self, task: Task) -> bool:
        """True for the one thread that gets to answer ``task``."""
        with self.mutex:
            if task.answered:
                return False
            task.answered = True
            return True

    def resolve(
        self,
        task: Task,
        outcome: Outcome,
        *,
        value: Any = None,
        error: str = "",
        limit: LimitName = "",
        cpu_ms: float = 0.0,
        exit_code: int | None = None,
        signal: int | None = None,
        worker_pid: int = 0,
        count: str = "",
    ) -> bool:
        """Answer ``task`` unless another thread did; True if this call answered it.

        ``count``: a name in ``counts`` raised with the answer, under the same lock, so
        a caller woken by the answer never reads stats that lack it.
        """
        if task.answered:
            return False  # the usual loser of a race needs no result object
        result = JobResult(
            outcome=outcome,
            value=value,
            error=error,
            limit=limit,
            wall_ms=(time.monotonic() - task.submitted) * 1000,
            cpu_ms=cpu_ms,
            exit_code=exit_code,
            signal=signal,
            worker_pid=worker_pid,
        )
        with self.mutex:
            if task.answered:
                return False
            finished = self.answer_locked(task, result)
            if count:
                self.counts[count] += 1
        self.deliver(task, result, finished)
        return True

    def answer_locked(self, task: Task, result: JobResult) -> bool:
        """Mark ``task`` answered with ``result`` (``mutex`` held, not answered yet).

        True when the result is set already: nobody waits on the future's condition
        (it has none yet), so it was set here. ``deliver`` finishes the answer after
        the mutex is released.
        """
        task.answered = True
        self.completed += 1
        return task.finish_locked(result)

    @staticmethod
    def deliver(task: Task, result: JobResult, finished: bool) -> None:
        """The rest of an answer ``answer_locked`` began, outside the mutex."""
        task.frame = b""
        if not finished:
            if not task.started and not task.set_running_or_notify_cancel():
                task.owner = None
                return
            task.set_result(result)
        # Last: dropping the owner may collect an unreferenced pool right here, which
        # only asks the manager to stop after this turn.
        task.owner = None

    def fail(self, task: Task, exc: BaseException) -> None:
        """Resolve with an exception (a broken pool): ``result()`` raises it."""
        if not self.claim(task):
            return
        if task.started or task.set_running_or_notify_cancel():
            task.set_exception(exc)
        task.owner = None


def resolved(result: JobResult) -> Future[JobResult]:
    """A future that is already answered (refused input, never queued)."""
    fut: Future[JobResult] = Future()
    fut.set_running_or_notify_cancel()
    fut.set_result(result)
    return fut

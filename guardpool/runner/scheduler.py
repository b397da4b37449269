"""Jobs on the host side: the task record, the queue, the deadline heap, resolution.

Data flow::

  caller thread: encode_input -> Task -> inbox (deque) --eventfd--> manager thread
  manager:       inbox -> queue (FIFO) + heap (deadline order) -> a free worker
                 resolve(task, outcome) -> Future.set_result -> the caller wakes

A task lives in the queue until a worker takes it and in the heap until it is
resolved; a resolved task is skipped wherever it still sits (lazy deletion keeps
every operation O(log n) or O(1)). Only the manager thread touches the queue and
the heap; callers only append to the inbox.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import msgspec

from guardpool.policy import inputs
from guardpool.runner.results import JobResult, LimitName, Outcome

if TYPE_CHECKING:
    from guardpool.runner.worker_link import WorkerLink
    from guardpool.worker import protocol

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


class Task:
    __slots__ = (
        "deadline",
        "done",
        "frame",
        "future",
        "guard",
        "id",
        "msg",
        "owner",
        "started",
        "submitted",
        "worker",
    )

    def __init__(
        self,
        task_id: int,
        msg: protocol.CallJob | protocol.GuardJob,
        deadline: float,
        submitted: float,
        owner: object,
        guard: bool,
    ) -> None:
        self.id = task_id
        self.msg = msg
        self.future: Future[JobResult] = Future()
        self.deadline = deadline
        self.submitted = submitted
        # The GuardPool that took the job: a pool nobody else references stays alive
        # until its pending jobs are answered (``GuardPool(...).submit(...).result()``).
        self.owner = owner
        self.guard = guard
        self.worker: WorkerLink | None = None
        self.frame = b""
        self.started = False
        self.done = False


class Scheduler:
    """Queue, deadline heap and resolution; the manager decides where tasks run."""

    def __init__(self) -> None:
        self.inbox: collections.deque[Task] = collections.deque()
        self.queue: collections.deque[Task] = collections.deque()
        self.heap: list[tuple[float, int, Task]] = []
        self.completed = 0

    def take_inbox(self) -> None:
        while self.inbox:
            task = self.inbox.popleft()
            self.queue.append(task)
            heapq.heappush(self.heap, (task.deadline, task.id, task))

    def next_deadline(self) -> float | None:
        heap = self.heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expired(self, now: float) -> list[Task]:
        """Unresolved tasks whose deadline has passed, earliest first."""
        out: list[Task] = []
        heap = self.heap
        while heap and (heap[0][0] <= now or heap[0][2].done):
            task = heapq.heappop(heap)[2]
            if not task.done:
                out.append(task)
        return out

    def next_queued(self) -> Task | None:
        """The oldest queued task still wanted (not resolved, not cancelled), marked started."""
        while self.queue:
            task = self.queue.popleft()
            if task.done:
                continue
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    task.done = True  # cancelled by the caller while queued
                    continue
                task.started = True
            return task
        return None

    def requeue(self, task: Task) -> None:
        """A task that never ran goes back to the front (not a retry: nothing ran)."""
        task.worker = None
        if not task.done:
            self.queue.appendleft(task)

    def pending(self) -> list[Task]:
        """Every unresolved task the scheduler still holds (inbox, queue, heap)."""
        seen: dict[int, Task] = {}
        for task in (*self.inbox, *self.queue, *(t for _, _, t in self.heap)):
            if not task.done:
                seen[task.id] = task
        return list(seen.values())

    def clear(self) -> None:
        self.inbox.clear()
        self.queue.clear()
        self.heap.clear()

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
    ) -> None:
        if task.done:
            return
        task.done = True
        if not task.started and not task.future.set_running_or_notify_cancel():
            task.owner = None
            return
        self.completed += 1
        task.future.set_result(
            JobResult(
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
        )
        # Last: dropping the owner may collect an unreferenced pool right here, which
        # only asks the manager to stop after this turn.
        task.owner = None

    def fail(self, task: Task, exc: BaseException) -> None:
        """Resolve with an exception (a broken pool): ``result()`` raises it."""
        if task.done:
            return
        task.done = True
        if task.started or task.future.set_running_or_notify_cancel():
            task.future.set_exception(exc)
        task.owner = None


def resolved(result: JobResult) -> Future[JobResult]:
    """A future that is already answered (refused input, never queued)."""
    fut: Future[JobResult] = Future()
    fut.set_running_or_notify_cancel()
    fut.set_result(result)
    return fut

"""Bounded request queues: one per model, ordered by ``seq_id``; one per sampler, unordered.

A model's requests start strictly in ``seq_id`` order (1, 2, 3, ...), whatever order they
arrive in: the SDK posts the chunks of one call concurrently, the first chunk last, and
never skips an id. Starting a request hands it to the local backend, which runs requests
in the order they were handed over, so an optimizer step submitted right after a
forward-backward runs right after it without a round trip. Finishing (waiting for the
result, encoding it) runs concurrently with the next starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

import anyio

from ._errors import QueueFull, category_of, invalid
from ._futures import Failure, FutureTable, Reply

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ("Finish", "ModelQueue", "SamplerQueue", "Start", "failure")

logger = logging.getLogger("crucible_kitchen.service.tinker")

Finish: TypeAlias = Callable[[], Awaitable[Reply]]
"""Waits for a started request's result and encodes it."""
Start: TypeAlias = Callable[[], Awaitable[Finish]]
"""Hands a request to the backend (in order) and returns how to finish it."""


def failure(exc: Exception) -> Failure:
    """Tinker's error of a failed request: ``user`` for the request's own fault; the
    server's own failures are logged with their traceback."""
    category = category_of(exc)
    if category == "server":
        logger.error("a Tinker request failed", exc_info=exc)
    return Failure(f"{type(exc).__name__}: {exc}", category)


class _Bounded:
    def __init__(self, owner: str, futures: FutureTable, task_group: TaskGroup, limit: int):
        self.owner = owner
        self._futures = futures
        self._task_group = task_group
        self._limit = limit
        self.unfinished = 0

    async def _finish(self, request_id: str, finish: Finish) -> None:
        try:
            outcome: Reply | Failure = await finish()
        except Exception as exc:
            outcome = failure(exc)
        finally:
            self.unfinished -= 1
        self._futures.finish(request_id, outcome)


class ModelQueue(_Bounded):
    """A model's requests, started in ``seq_id`` order by :meth:`run`; ``before_start(seq_id)``
    is awaited before each start (the server's test hook)."""

    def __init__(
        self,
        owner: str,
        futures: FutureTable,
        task_group: TaskGroup,
        limit: int,
        before_start: Callable[[int], Awaitable[None]],
    ):
        super().__init__(owner, futures, task_group, limit)
        self._before_start = before_start
        self._next_seq = 1
        self._waiting: dict[int, tuple[str, Start]] = {}
        self._accepted: dict[int, str] = {}
        self._arrived = anyio.Event()

    def submit(self, seq_id: int, start: Start) -> str:
        """Queue a request; its request id. A ``seq_id`` already accepted returns that
        request's id again (a re-sent submission).

        Raises:
            QueueFull: ``limit`` requests are unfinished (the next one in order is always
                taken, so chunks that arrived early cannot block it).
            InvalidRequest: ``seq_id`` is older than every request kept.
        """
        known = self._accepted.get(seq_id)
        if known is not None:
            return known
        if seq_id < self._next_seq:
            raise invalid(
                f"{self.owner}: seq_id {seq_id} is below the next expected {self._next_seq}"
            )
        if self.unfinished >= self._limit and seq_id != self._next_seq:
            raise QueueFull(self.owner, self._limit)
        request_id = self._futures.create()
        self._waiting[seq_id] = (request_id, start)
        self._accepted[seq_id] = request_id
        self._accepted.pop(seq_id - 4 * self._limit, None)
        self.unfinished += 1
        self._arrived.set()
        return request_id

    async def run(self) -> None:
        """Start the requests in ``seq_id`` order, for ever (until cancelled)."""
        while True:
            while self._next_seq not in self._waiting:
                self._arrived = anyio.Event()
                await self._arrived.wait()
            seq_id = self._next_seq
            request_id, start = self._waiting.pop(seq_id)
            self._next_seq += 1
            try:
                await self._before_start(seq_id)
                finish = await start()
            except Exception as exc:
                self.unfinished -= 1
                self._futures.finish(request_id, failure(exc))
                continue
            self._task_group.start_soon(self._finish, request_id, finish)

    def fail_waiting(self, message: str) -> None:
        """Fail the requests not started yet (shutdown)."""
        for request_id, _ in self._waiting.values():
            self._futures.finish(request_id, Failure(message, "server"))
        self.unfinished -= len(self._waiting)
        self._waiting.clear()


class SamplerQueue(_Bounded):
    """A sampler's requests: each starts at once, in its own task."""

    def submit(self, start: Start) -> str:
        """Start a request; its request id.

        Raises:
            QueueFull: ``limit`` requests are unfinished.
        """
        if self.unfinished >= self._limit:
            raise QueueFull(self.owner, self._limit)
        request_id = self._futures.create()
        self.unfinished += 1
        self._task_group.start_soon(self._start_and_finish, request_id, start)
        return request_id

    async def _start_and_finish(self, request_id: str, start: Start) -> None:
        try:
            finish = await start()
        except Exception as exc:
            self.unfinished -= 1
            self._futures.finish(request_id, failure(exc))
            return
        await self._finish(request_id, finish)

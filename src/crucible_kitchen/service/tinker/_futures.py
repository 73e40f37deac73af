"""The futures table: what ``POST /api/v1/retrieve_future`` long-polls.

Every accepted request gets a request id at once; its outcome (a reply body or an error)
is set when it finishes. A poll waits for the outcome up to the poll timeout, then the
client is told to try again. An outcome stays until it has been retrieved and
``retain`` younger outcomes have been retrieved after it, so a poll whose reply was lost
can be repeated. Outcomes nobody retrieves do not stay for ever: each expires ``ttl_s``
seconds after it was set, and past ``max_finished`` outcomes the oldest go first.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Final, Literal

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("ErrorCategory", "Failure", "FutureTable", "Reply")

ErrorCategory = Literal["user", "server", "unknown"]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"


class Reply:
    """A finished request's result: the response body and its content type."""

    __slots__ = ("body", "content_type")

    def __init__(self, body: bytes, content_type: str = JSON) -> None:
        self.body = body
        self.content_type = content_type


class Failure:
    """A failed request: Tinker's ``{"error", "category"}`` (``user``: the request's fault)."""

    __slots__ = ("category", "message")

    def __init__(self, message: str, category: ErrorCategory) -> None:
        self.message = message
        self.category = category


class _Entry:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Reply | Failure | None = None


class FutureTable:
    """Request ids and their outcomes, for long-polling.

    Args:
        retain: retrieved outcomes kept for a repeated poll.
        ttl_s: an outcome is dropped this long after it was set, retrieved or not.
        max_finished: at most this many outcomes are kept; past it, the oldest go.
        clock: seconds, monotonic (``time.monotonic``; tests pass a fake).
    """

    def __init__(
        self,
        *,
        retain: int = 1024,
        ttl_s: float = 3600.0,
        max_finished: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._retrieved: deque[str] = deque()
        self._finished: OrderedDict[str, float] = OrderedDict()  # oldest outcome first
        self._retain = retain
        self._ttl_s = ttl_s
        self._max_finished = max_finished
        self._clock = clock
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def unfinished(self) -> int:
        """Requests accepted whose outcome is not set yet."""
        return sum(entry.outcome is None for entry in self._entries.values())

    def create(self) -> str:
        """A new request id, its outcome pending; expired outcomes are dropped first."""
        self.expire()
        request_id = f"req-{self._prefix}-{next(self._counter)}"
        self._entries[request_id] = _Entry()
        return request_id

    def finish(self, request_id: str, outcome: Reply | Failure) -> None:
        """Set the outcome of ``request_id`` (the first one set wins)."""
        entry = self._entries.get(request_id)
        if entry is not None and entry.outcome is None:
            entry.outcome = outcome
            entry.done.set()
            self._finished[request_id] = self._clock()
            self.expire()

    def expire(self) -> int:
        """Drop the outcomes set more than ``ttl_s`` ago, then the oldest past
        ``max_finished``; how many were dropped. Requests not finished are never dropped."""
        now = self._clock()
        dropped = 0
        for request_id, finished in list(self._finished.items()):
            if now - finished <= self._ttl_s and len(self._finished) <= self._max_finished:
                break
            del self._finished[request_id]
            del self._entries[request_id]
            dropped += 1
        return dropped

    def fail_unfinished(self, message: str) -> int:
        """Fail every request without an outcome (a server error); how many there were."""
        pending = [rid for rid, entry in self._entries.items() if entry.outcome is None]
        for request_id in pending:
            self.finish(request_id, Failure(message, "server"))
        return len(pending)

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every unfinished request to finish."""
        with anyio.move_on_after(timeout):
            for entry in list(self._entries.values()):
                await entry.done.wait()

    async def wait(self, request_id: str, timeout: float) -> Reply | Failure | None:
        """The outcome of ``request_id`` once set, or ``None`` after ``timeout`` seconds.

        Raises:
            KeyError: no such request (never issued, or retrieved long ago).
        """
        entry = self._entries[request_id]
        with anyio.move_on_after(timeout):
            await entry.done.wait()
        if entry.outcome is not None:
            self._retrieved.append(request_id)
            while len(self._retrieved) > self._retain:
                retrieved = self._retrieved.popleft()
                self._entries.pop(retrieved, None)
                self._finished.pop(retrieved, None)
        return entry.outcome

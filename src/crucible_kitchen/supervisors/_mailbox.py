"""A bounded FIFO mailbox, owned by a child slot so that it outlives the actor's restarts.

Like an anyio memory object stream with one reader, but a reader that finds it empty parks at
once instead of first yielding to the scheduler: a call round trip and an actor's start each
save a scheduler pass. A reader that finds messages still yields once per message (every
``get`` is a checkpoint), so a busy actor never starves the event loop. Items are removed only
by ``get``, so a reader cancelled while waiting loses nothing.

Its wake-ups, and the replies of the calls sent through it (:meth:`Mailbox.new_event`), are
events of a class chosen once per mailbox: ``anyio.Event()`` asks which async library runs on
every call, a cost paid twice per actor call otherwise. On asyncio it is :class:`FutureEvent`,
which parks its waiters on plain futures; on other backends, anyio's event of that backend.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("FutureEvent", "Mailbox", "wait_event")

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Bounded FIFO queue for one reader at a time and any number of writers."""

    __slots__ = ("_closed", "_event_type", "_items", "_reader", "_writers", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._reader: anyio.Event | None = None
        self._writers: deque[anyio.Event] = deque()
        self._closed = False
        self._event_type: Callable[[], anyio.Event] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def new_event(self) -> anyio.Event:
        """A fresh ``anyio.Event`` of the running backend; call it inside the event loop."""
        make = self._event_type
        if make is None:
            make = self._event_type = FutureEvent if _in_asyncio_task() else type(anyio.Event())
        return make()

    def put_nowait(self, item: T) -> None:
        """Queue ``item``.

        Raises:
            anyio.ClosedResourceError: the mailbox is closed.
            anyio.WouldBlock: it is full.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if len(self._items) >= self.capacity:
            raise anyio.WouldBlock
        self._items.append(item)
        reader = self._reader
        if reader is not None:
            self._reader = None
            reader.set()

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting for room while the mailbox is full."""
        while True:
            try:
                self.put_nowait(item)
            except anyio.WouldBlock:
                room = self.new_event()
                self._writers.append(room)
                try:
                    await room.wait()
                finally:
                    if room in self._writers:
                        self._writers.remove(room)
                continue
            await anyio.lowlevel.checkpoint()
            return

    def get_nowait(self) -> T:
        """The oldest item.

        Raises:
            anyio.WouldBlock: the mailbox is empty.
            anyio.EndOfStream: it is empty and closed.
        """
        if not self._items:
            raise anyio.EndOfStream if self._closed else anyio.WouldBlock
        item = self._items.popleft()
        if self._writers:
            self._writers.popleft().set()
        return item

    async def get(self) -> T:
        """The oldest item, waiting for one while the mailbox is empty.

        Raises:
            anyio.EndOfStream: the mailbox was closed and is empty.
        """
        if self._items:
            await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            arrived = self._reader = self.new_event()
            try:
                await wait_event(arrived)
            finally:
                if self._reader is arrived:
                    self._reader = None
        return self.get_nowait()

    def close(self) -> None:
        """Refuse new items; wake the reader and every waiting writer."""
        self._closed = True
        if self._reader is not None:
            self._reader.set()
            self._reader = None
        while self._writers:
            self._writers.popleft().set()


class FutureEvent(anyio.Event):
    """An ``anyio.Event`` for asyncio whose waiters park on plain futures.

    anyio's asyncio event wraps an ``asyncio.Event``, which looks its loop up and keeps a deque
    for every event; this one does what they do for the mailbox's one-shot events with less:
    it is set once, wakes every waiter, is a checkpoint when already set, and a cancelled
    waiter leaves it as it was. Make it only inside an asyncio task.
    """

    __slots__ = ("_flag", "_waiters")

    _flag: bool
    _waiters: list[asyncio.Future[None]]

    def __new__(cls) -> FutureEvent:  # made in one call: two are made per actor call
        self = object.__new__(cls)
        self._flag = False
        self._waiters = []
        return self

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        waiter = self.waiter()
        try:
            await waiter
        finally:
            if waiter in self._waiters:  # a long-lived event keeps no finished waiters
                self._waiters.remove(waiter)

    def waiter(self) -> Awaitable[None]:
        """A future that the event completes (a checkpoint if it is set already).

        Awaiting it directly saves :meth:`wait`'s coroutine; the mailbox's one-shot events do
        (:func:`wait_event`), and their finished futures go with them. A waiter that is
        cancelled cancels its own future only, which :meth:`set` then skips.
        """
        if self._flag:
            return anyio.lowlevel.checkpoint()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def statistics(self) -> anyio.EventStatistics:
        return anyio.EventStatistics(sum(not waiter.done() for waiter in self._waiters))


def wait_event(event: anyio.Event) -> Awaitable[None]:
    """``event.wait()``, without a coroutine of its own for a :class:`FutureEvent`."""
    if type(event) is FutureEvent:
        return event.waiter()
    return event.wait()


def _in_asyncio_task() -> bool:
    """Whether an asyncio task runs this (not trio, also not trio in asyncio's guest mode)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no running asyncio loop
        return False

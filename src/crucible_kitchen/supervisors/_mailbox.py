"""A bounded FIFO mailbox, owned by a child slot so that it outlives the actor's restarts.

Like an anyio memory object stream with one reader, but a reader that finds it empty parks at
once instead of first yielding to the scheduler: a call round trip and an actor's start each
save a scheduler pass. A reader that finds messages still yields once per message (every
``get`` is a checkpoint), so a busy actor never starves the event loop. Items are removed only
by ``get``, so a reader cancelled while waiting loses nothing.

Its wake-ups, and the replies of the calls sent through it (:meth:`Mailbox.new_event`), are
events of the running backend's own class, looked up once per mailbox: ``anyio.Event()`` asks
which async library runs on every call, a cost paid twice per actor call otherwise.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("Mailbox",)

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
            event = anyio.Event()
            self._event_type = type(event)
            return event
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
                await arrived.wait()
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

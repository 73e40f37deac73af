"""The per-run telemetry bus: a synchronous ``emit`` fanned out to handlers and subscribers."""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

import anyio
import msgspec

from crucible_kitchen.errors import TelemetryError

from ._events import TelemetryEvent, event_name

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ("BusStatistics", "Handler", "HandlerStatistics", "TelemetryBus")

logger = logging.getLogger("crucible_kitchen.telemetry")

EventT = TypeVar("EventT", bound=TelemetryEvent)

Handler: TypeAlias = Callable[[TelemetryEvent], Any]
"""A telemetry handler: ``handler(event)``, either a plain function or an ``async def``.

A handler is async when it is a coroutine function, an object whose ``__call__`` is one, or an
object with a true ``is_async`` attribute (:class:`CallbackHandler` wrapping an async function).
"""


class HandlerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One handler's record on a bus."""

    name: str
    is_async: bool
    failures: int
    """How many times it raised."""
    dropped: int
    """Events an async handler lost because its buffer was full (or it had been detached)."""
    detached: bool
    """Removed after too many consecutive failures."""


class BusStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a :class:`TelemetryBus`."""

    run_id: str
    emitted: int
    subscribers: int
    history: int
    dropped_after_close: int
    closed: bool
    handlers: tuple[HandlerStatistics, ...]


class _Slot:
    """A handler attached to a bus, with its failure counters (and its buffer, if async)."""

    __slots__ = (
        "consecutive",
        "detached",
        "dropped",
        "failures",
        "handler",
        "is_async",
        "name",
        "owned",
        "receive",
        "send",
    )

    def __init__(self, handler: Handler, *, owned: bool, buffer: int) -> None:
        self.handler = handler
        self.name: str = getattr(handler, "__qualname__", None) or repr(handler)
        self.owned = owned
        self.is_async = _is_async_handler(handler)
        self.failures = 0
        self.consecutive = 0
        self.dropped = 0
        self.detached = False
        self.send: MemoryObjectSendStream[TelemetryEvent] | None = None
        self.receive: MemoryObjectReceiveStream[TelemetryEvent] | None = None
        if self.is_async:
            self.send, self.receive = anyio.create_memory_object_stream[TelemetryEvent](buffer)

    def close_receive(self) -> None:
        """Close the buffer's receiving end, counting what it still held as dropped."""
        receive, self.receive = self.receive, None
        if receive is not None:
            self.dropped += receive.statistics().current_buffer_used
            receive.close()

    def statistics(self) -> HandlerStatistics:
        return HandlerStatistics(
            name=self.name,
            is_async=self.is_async,
            failures=self.failures,
            dropped=self.dropped,
            detached=self.detached,
        )


def _is_async_handler(handler: object) -> bool:
    if getattr(handler, "is_async", False) is True:
        return True
    if inspect.iscoroutinefunction(handler):
        return True
    return callable(handler) and inspect.iscoroutinefunction(type(handler).__call__)


class TelemetryBus:
    """Fans out the events of one run, in order, to handlers and subscribers.

    :meth:`emit` is synchronous and cheap: it stamps the event (run id, ``seq`` = 1, 2, 3, ...,
    and the wall-clock time if the emitter left ``timestamp`` at 0), calls each sync handler in
    turn, then queues the event for each async handler and each subscriber. Every consumer sees
    the events in ``seq`` order, also when a handler emits from inside ``emit`` (that event is
    delivered after the current one).

    Handler failures never reach the emitter. The first failure of each handler is logged with
    its traceback on the ``crucible_kitchen.telemetry`` logger; later ones are only counted
    (:meth:`statistics`, and a summary when the bus closes). A handler that fails
    ``max_consecutive_failures`` times in a row is detached, with a log line saying so; one
    success resets the streak. ``max_consecutive_failures=None`` never detaches.

    Async handlers each get a bounded buffer (``async_buffer`` events) drained by one task per
    handler inside :meth:`run_async_handlers`, which the owner runs in its task group::

        async with anyio.create_task_group() as tg:
            await tg.start(bus.run_async_handlers)
            ...                     # the run emits events
            bus.close()             # the sinks drain their buffers, then run_async_handlers returns

    ``emit`` never waits: when an async handler's buffer is full, the event is dropped for that
    handler and counted. Subscribers (:meth:`subscribe`) have unbounded buffers and miss nothing.

    The bus belongs to one event loop thread and is not thread-safe; from a worker thread use
    ``anyio.from_thread.run_sync(bus.emit, event)``.

    Args:
        run_id: stamped on every event.
        handlers: handlers to attach now (not owned: the bus does not close them).
        history: how many past events to keep for :meth:`subscribe` with ``replay=True``;
            ``None`` keeps all, 0 none.
        async_buffer: the buffer size of each async handler.
        max_consecutive_failures: detach a handler after this many failures in a row.
        clock: wall-clock seconds for the timestamps.
    """

    def __init__(
        self,
        run_id: str,
        *,
        handlers: Iterable[Handler] = (),
        history: int | None = 100_000,
        async_buffer: int = 1024,
        max_consecutive_failures: int | None = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if async_buffer < 1:
            raise ValueError(f"async_buffer must be at least 1, got {async_buffer}")
        if max_consecutive_failures is not None and max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be at least 1 or None, "
                f"got {max_consecutive_failures}"
            )
        self.run_id = run_id
        self._clock = clock
        self._async_buffer = async_buffer
        self._max_failures = max_consecutive_failures
        self._seq = 0
        self._closed = False
        self._dropped_after_close = 0
        self._history: deque[TelemetryEvent] = deque(maxlen=history)
        self._keep_history = history != 0
        self._slots: list[_Slot] = []
        self._sync: tuple[_Slot, ...] = ()
        self._async: tuple[_Slot, ...] = ()
        self._subscribers: tuple[MemoryObjectSendStream[TelemetryEvent], ...] = ()
        self._delivering = False
        self._pending: deque[TelemetryEvent] = deque()
        self._runner_active = False
        self._async_ever: list[_Slot] = []
        self._sink_group: TaskGroup | None = None
        self._closed_event: anyio.Event | None = None
        for handler in handlers:
            self.add_handler(handler)

    # --- emitting ---------------------------------------------------------------------------

    def emit(self, event: EventT) -> EventT:
        """Stamp ``event`` and deliver it to every handler and subscriber; never waits.

        No handler failure reaches the caller. The emitter's ``run_id`` and ``seq`` are always
        replaced; a non-zero ``timestamp`` is kept. After :meth:`close` the event is dropped
        (and counted).

        Returns:
            The stamped event (the input itself when the bus is closed).
        """
        if self._closed:
            self._dropped_after_close += 1
            return event
        self._seq += 1
        stamped = msgspec.structs.replace(
            event,
            run_id=self.run_id,
            seq=self._seq,
            timestamp=event.timestamp or self._clock(),
        )
        if self._delivering:
            self._pending.append(stamped)
            return stamped
        self._delivering = True
        try:
            self._deliver(stamped)
            while self._pending:
                self._deliver(self._pending.popleft())
        finally:
            self._delivering = False
        return stamped

    def _deliver(self, event: TelemetryEvent) -> None:
        for slot in self._sync:
            try:
                result = slot.handler(event)
                if result is not None and inspect.isawaitable(result):
                    _discard(result)
                    raise TelemetryError(
                        f"telemetry handler {slot.name} returned an awaitable; "
                        "an async handler must be an `async def` (or have is_async = True)"
                    )
            except Exception as exc:
                self._failed(slot, event, exc)
            else:
                if slot.consecutive:
                    slot.consecutive = 0
        for slot in self._async:
            assert slot.send is not None
            try:
                slot.send.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                slot.dropped += 1
                if slot.dropped == 1:
                    logger.warning(
                        "async telemetry handler %s takes no more events (its buffer of %d is "
                        "full, or its sink stopped): dropping them, counted in bus.statistics()",
                        slot.name,
                        self._async_buffer,
                    )
        if self._subscribers:
            gone: list[MemoryObjectSendStream[TelemetryEvent]] = []
            for send in self._subscribers:
                try:
                    send.send_nowait(event)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    gone.append(send)  # the subscriber closed its end: unsubscribe it
            if gone:
                for send in gone:
                    send.close()
                self._subscribers = tuple(s for s in self._subscribers if s not in gone)
        if self._keep_history:
            self._history.append(event)

    def _failed(self, slot: _Slot, event: TelemetryEvent, exc: Exception) -> None:
        slot.failures += 1
        slot.consecutive += 1
        if slot.failures == 1:
            logger.error(
                "telemetry handler %s raised on %s (run %s); the run goes on, and further "
                "failures of this handler are counted, not logged",
                slot.name,
                event_name(event),
                self.run_id,
                exc_info=exc,
            )
        if self._max_failures is not None and slot.consecutive >= self._max_failures:
            logger.error(
                "telemetry handler %s detached after %d consecutive failures (run %s); last: %r",
                slot.name,
                slot.consecutive,
                self.run_id,
                exc,
            )
            slot.detached = True
            self._detach(slot)

    # --- handlers ---------------------------------------------------------------------------

    def add_handler(self, handler: Handler, *, owned: bool = False) -> None:
        """Attach a handler; it sees the events emitted from now on.

        Args:
            handler: a sync or async callable taking one event.
            owned: close the handler (its ``close()``) when the bus closes.

        Raises:
            TelemetryError: the bus is closed.
        """
        if self._closed:
            raise TelemetryError(f"telemetry bus of run {self.run_id} is closed")
        slot = _Slot(handler, owned=owned, buffer=self._async_buffer)
        self._slots.append(slot)
        if slot.is_async:
            self._async_ever.append(slot)
        self._rebuild()
        if slot.is_async and self._sink_group is not None:
            self._sink_group.start_soon(self._sink, slot)

    def remove_handler(self, handler: Handler) -> bool:
        """Detach a handler (an async one first drains its buffer); ``False`` if not attached.

        The bus never closes a handler it detaches this way, owned or not.
        """
        for slot in self._slots:
            if slot.handler is handler:
                slot.owned = False
                self._detach(slot)
                return True
        return False

    def _detach(self, slot: _Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)
            self._rebuild()
        if slot.send is not None:
            slot.send.close()
            if not self._runner_active:
                slot.close_receive()

    def _rebuild(self) -> None:
        self._sync = tuple(s for s in self._slots if not s.is_async)
        self._async = tuple(s for s in self._slots if s.is_async)

    async def run_async_handlers(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver events to the async handlers, one task per handler, in ``seq`` order.

        Start it with ``await task_group.start(bus.run_async_handlers)`` (it reports started
        once its sinks run). It returns after :meth:`close` once every buffer is drained.
        Cancelling it stops delivery at once but keeps the buffers, so a later call (a
        restarted sink actor) goes on where it stopped. Async handlers added while it runs get
        a sink too. A failure of an async handler is handled as for sync ones.

        Raises:
            TelemetryError: it is already running on this bus.
        """
        if self._runner_active:
            raise TelemetryError(f"run_async_handlers is already running for run {self.run_id}")
        self._runner_active = True
        self._closed_event = closed_event = anyio.Event()
        if self._closed:
            closed_event.set()
        try:
            async with anyio.create_task_group() as tg:
                self._sink_group = tg
                for slot in self._async:
                    tg.start_soon(self._sink, slot)
                task_status.started()
                await closed_event.wait()
        finally:
            self._sink_group = None
            self._runner_active = False
            # Buffers no later runner can drain: the bus is closed, or the handler was removed.
            for slot in self._async_ever:
                if self._closed or slot not in self._slots:
                    if slot.owned and slot.receive is not None:
                        _close_handler(slot)
                    slot.close_receive()

    async def _sink(self, slot: _Slot) -> None:
        receive = slot.receive
        if receive is None:
            return
        while True:
            try:
                event = await receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                break
            try:
                result = slot.handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._failed(slot, event, exc)
                if slot.detached:
                    break
            else:
                if slot.consecutive:
                    slot.consecutive = 0
        # Drained to the end (or detached); a cancelled sink leaves its buffer to a later runner.
        if slot.owned and slot.receive is not None:
            _close_handler(slot)
        slot.close_receive()

    # --- subscribers ------------------------------------------------------------------------

    def subscribe(self, *, replay: bool = False) -> MemoryObjectReceiveStream[TelemetryEvent]:
        """A stream of this run's events from now on, ending when the bus closes.

        Use it as ``with bus.subscribe() as events: async for event in events: ...``; closing
        it unsubscribes. Its buffer is unbounded, so ``emit`` never waits and nothing is lost.

        Args:
            replay: first deliver the events emitted so far (up to ``history`` of them).
                Subscribing to a closed bus gives the replay (or nothing) and then the end.
        """
        send, receive = anyio.create_memory_object_stream[TelemetryEvent](math.inf)
        if replay:
            for event in self._history:
                send.send_nowait(event)
        if self._closed:
            send.close()
        else:
            self._subscribers = (*self._subscribers, send)
        return receive

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """End the run's event stream; idempotent.

        Subscriptions end after their buffered events. Async handlers drain their buffers if
        :meth:`run_async_handlers` is running; otherwise their buffered events are dropped
        (and counted). Owned handlers are closed (async ones after draining). Handlers that
        failed are summarized in the log.
        """
        if self._closed:
            return
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers = ()
        for slot in self._slots:
            if slot.send is not None:
                slot.send.close()
            # A running sink drains its buffer, then closes it (and the handler, if owned).
            if not (slot.is_async and self._runner_active):
                if slot.owned:
                    _close_handler(slot)
                slot.close_receive()
            if slot.failures > 1:
                logger.warning(
                    "telemetry handler %s raised %d times in run %s",
                    slot.name,
                    slot.failures,
                    self.run_id,
                )
        if self._closed_event is not None:
            self._closed_event.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> BusStatistics:
        """A snapshot: events emitted, subscribers, history size and each handler's counters."""
        return BusStatistics(
            run_id=self.run_id,
            emitted=self._seq,
            subscribers=len(self._subscribers),
            history=len(self._history),
            dropped_after_close=self._dropped_after_close,
            closed=self._closed,
            handlers=tuple(slot.statistics() for slot in self._slots),
        )


def _discard(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _close_handler(slot: _Slot) -> None:
    close = getattr(slot.handler, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception:
        logger.exception("closing telemetry handler %s failed", slot.name)

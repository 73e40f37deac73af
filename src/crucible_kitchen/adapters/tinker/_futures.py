"""The SDK's futures as the port's :class:`~crucible_kitchen.ports.BackendFuture`, and the
request-id ledger that makes re-sent requests exactly-once.

The SDK runs every request on its own event loop in a background thread; its futures are
``concurrent.futures.Future``\\ s. Awaiting one here waits in a worker thread (abandoned,
not cancelled, when the waiter is cancelled), so it works the same on asyncio and trio and
never blocks the caller's event loop.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio.to_thread

from crucible_kitchen.adapters.tinker._errors import translate
from crucible_kitchen.errors import RequestExpired, RequestIdConflict

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("RequestLedger", "TinkerFuture", "in_sdk_context", "wait_for")

RawT = TypeVar("RawT")
T = TypeVar("T")


def in_sdk_context(call: Callable[[], RawT]) -> RawT:
    """``call()`` in an empty ``contextvars`` context.

    The SDK schedules its coroutines on its own asyncio loop with the caller's context, so
    a call from trio (or a trio worker thread) would carry trio's marker for which async
    library runs, and the SDK's HTTP stack would then look for a trio loop in its thread.
    """
    return contextvars.Context().run(call)


async def wait_for(future: Future[RawT]) -> RawT:
    """The result of an SDK future, waited for in a worker thread unless it is done."""
    if not future.done():
        await anyio.to_thread.run_sync(wait, [future], abandon_on_cancel=True)
    return future.result()


class TinkerFuture(Generic[T]):
    """Implements :class:`~crucible_kitchen.ports.BackendFuture` over an SDK future.

    ``convert`` turns the SDK's result into the port's type, once; SDK errors come out
    translated (see ``_errors.translate``), and every await returns the same value or an
    equal error. It declares no ``FUTURE_DONE``: knowing its state needs the server.
    """

    def __init__(
        self,
        raw: Future[Any],
        convert: Callable[[Any], T],
        *,
        port: str,
        operation: str,
        request_id: str | None = None,
        resource: str | None = None,
    ) -> None:
        self._raw = raw
        self._convert = convert
        self._port = port
        self._operation = operation
        self._request_id = request_id
        self._resource = resource
        self._value: tuple[T] | None = None

    @property
    def raw(self) -> Future[Any]:
        """The SDK's future."""
        return self._raw

    async def result(self) -> T:
        """See :meth:`crucible_kitchen.ports.BackendFuture.result`."""
        if self._value is not None:
            return self._value[0]
        try:
            raw = await wait_for(self._raw)
        except Exception as exc:
            raise translate(
                exc,
                port=self._port,
                operation=self._operation,
                request_id=self._request_id,
                resource=self._resource,
            ) from exc
        value = self._convert(raw)
        self._value = (value,)
        return value


class RequestLedger:
    """The port's ``request_id`` promise on the client side of the wire.

    The Tinker API has no caller-chosen request ids, so the adapter keeps them: a request
    re-sent with an id already accepted gets the first request's future back and is not
    sent again; one whose request failed is forgotten, so re-sending it sends it; the same
    id with another request raises :class:`RequestIdConflict`. The futures of the last
    ``retain`` requests are kept; an older id re-sent raises :class:`RequestExpired`
    rather than being applied twice.
    """

    def __init__(self, port: str, *, retain: int = 1024) -> None:
        self._port = port
        self._retain = retain
        self._lock = threading.Lock()  # failed futures are forgotten from the SDK's thread
        self._live: OrderedDict[str, tuple[str, bytes, TinkerFuture[Any]]] = OrderedDict()
        self._expired: dict[str, tuple[str, bytes]] = {}

    def find(self, method: str, request_id: str, digest: bytes) -> TinkerFuture[Any] | None:
        """The future of an earlier request with this id, if it is the same request.

        Raises:
            RequestIdConflict: the id was used for a different request.
            RequestExpired: the id's request is too old for its result to be kept.
        """
        with self._lock:
            live = self._live.get(request_id)
            earlier = (live[0], live[1]) if live is not None else self._expired.get(request_id)
        if earlier is None:
            return None
        if earlier != (method, digest):
            raise RequestIdConflict.reused(
                request_id, earlier=earlier[0], port=self._port, operation=method
            )
        if live is None:
            raise RequestExpired(
                f"{method}: request_id {request_id!r} was applied and its result dropped",
                port=self._port,
                operation=method,
                request_id=request_id,
            )
        return live[2]

    def record(
        self, method: str, request_id: str, digest: bytes, future: TinkerFuture[T]
    ) -> TinkerFuture[T]:
        """Remember ``future`` as the answer to ``request_id`` until its request fails."""
        with self._lock:
            self._live[request_id] = (method, digest, future)
            while len(self._live) > self._retain:
                old_id, (old_method, old_digest, _) = self._live.popitem(last=False)
                self._expired[old_id] = (old_method, old_digest)

        def forget_if_failed(raw: Future[Any]) -> None:
            if raw.cancelled() or raw.exception() is not None:
                with self._lock:
                    entry = self._live.get(request_id)
                    if entry is not None and entry[2] is future:
                        del self._live[request_id]

        future.raw.add_done_callback(forget_if_failed)
        return future

"""A network-latency wrapper for any adapter, for benchmarks and pipelining tests."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio

from crucible_kitchen.ports import SamplingClient, declared_capabilities, protocol_problems

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from crucible_kitchen.ports import Capabilities

__all__ = ("with_latency",)

AdapterT = TypeVar("AdapterT")
T = TypeVar("T")


def with_latency(adapter: AdapterT, seconds: float) -> AdapterT:
    """``adapter`` behind a network that takes ``seconds`` each way.

    Every async method call becomes one round trip: ``seconds`` before the adapter sees the
    request, ``seconds`` after it answers. Awaiting the result of a returned future is one
    more round trip (the poll), like Tinker's ``retrieve_future``. Sampling clients a call
    returns are wrapped too. Sync methods and attributes pass through untouched. The
    adapter's declared capabilities are forwarded, their async functions delayed the same
    way; futures behind the network declare no
    :data:`~crucible_kitchen.ports.FUTURE_DONE` (knowing their state takes a poll).

    Example::

        client = with_latency(NoopTrainingClient(seed=0), 0.020)
        fwd = await client.forward_backward(batch, "cross_entropy", request_id="fb-1")  # 40 ms
        out = await fwd.result()                                                          # 40 ms
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    return cast("AdapterT", _LatencyProxy(adapter, seconds))


class _LatencyProxy:
    __slots__ = ("_adapter", "_seconds")

    def __init__(self, adapter: object, seconds: float) -> None:
        self._adapter = adapter
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return self._wrap(getattr(self._adapter, name))

    @property
    def capabilities(self) -> Capabilities:
        return {
            key: functools.partial(self._capability, get)
            for key, get in declared_capabilities(self._adapter).items()
        }

    def _capability(self, get: Callable[[], Any]) -> Any:
        return self._wrap(get())

    def _wrap(self, value: Any) -> Any:
        if not inspect.iscoroutinefunction(value):
            return value
        return _delayed(value, self._seconds)

    def __repr__(self) -> str:
        return f"with_latency({self._adapter!r}, {self._seconds})"


def _delayed(method: Callable[..., Awaitable[Any]], seconds: float) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        await anyio.sleep(seconds)
        answer = await method(*args, **kwargs)
        await anyio.sleep(seconds)
        if inspect.iscoroutinefunction(getattr(answer, "result", None)):
            return _DelayedFuture(answer, seconds)
        if not protocol_problems(SamplingClient, answer):
            return _LatencyProxy(answer, seconds)
        return answer

    return call


class _DelayedFuture(Generic[T]):
    __slots__ = ("_future", "_seconds")

    def __init__(self, future: Any, seconds: float) -> None:
        self._future = future
        self._seconds = seconds

    async def result(self) -> T:
        await anyio.sleep(self._seconds)
        value: T = await self._future.result()
        await anyio.sleep(self._seconds)
        return value

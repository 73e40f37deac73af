"""Where fault injection reaches into stage executions: around every port call and await.

The engine sets :data:`current_stage_kill` while a stage executes; a run's fault hook (from
``crucible_kitchen.testing``) sees each point and may kill the stage's actor there.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from crucible_kitchen.ports import declared_capabilities

if TYPE_CHECKING:
    from crucible_kitchen.ports import Capabilities, Capability

    from ._context import Context

__all__ = ("FaultPoint", "FaultProxy", "current_stage_context", "current_stage_kill")

FaultPoint = str
"""``"execute"`` (a stage execution begins), ``"before_call"`` (a port call is about to be
made), ``"after_submit"`` (it returned its future), ``"awaiting"`` (a future is being awaited)."""

current_stage_kill: ContextVar[Callable[[], None] | None] = ContextVar(
    "current_stage_kill", default=None
)
"""Kills the actor of the stage execution running in this task (set by the engine)."""

current_stage_context: ContextVar[Context | None] = ContextVar(
    "current_stage_context", default=None
)
"""The context of the stage execution running in this task (set by the engine)."""

FaultHookFn = Callable[[FaultPoint, "Context", str], Awaitable[None]]


class _FaultFuture:
    __slots__ = ("_ctx", "_future", "_hook", "_operation")

    def __init__(self, future: Any, ctx: Context, hook: FaultHookFn, operation: str) -> None:
        self._future = future
        self._ctx = ctx
        self._hook = hook
        self._operation = operation

    async def result(self) -> Any:
        # A future may be awaited by a later stage than the one that submitted it.
        await self._hook("awaiting", current_stage_context.get() or self._ctx, self._operation)
        return await self._future.result()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future, name)


class FaultProxy:
    """Wraps an adapter so that the run's fault hook sees every call and every await,
    including those made through the adapter's declared capabilities (the operation is
    then the capability's name)."""

    __slots__ = ("_adapter", "_ctx", "_hook")

    def __init__(self, adapter: Any, ctx: Context, hook: FaultHookFn) -> None:
        self._adapter = adapter
        self._ctx = ctx
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return self._hooked(name, getattr(self._adapter, name))

    @property
    def capabilities(self) -> Capabilities:
        return {
            key: functools.partial(self._capability, key, get)
            for key, get in declared_capabilities(self._adapter).items()
        }

    def _capability(self, key: Capability[Any], get: Callable[[], Any]) -> Any:
        return self._hooked(key.name, get())

    def _hooked(self, name: str, attribute: Any) -> Any:
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        ctx, hook = self._ctx, self._hook

        async def call(*args: Any, **kwargs: Any) -> Any:
            await hook("before_call", ctx, name)
            outcome = await attribute(*args, **kwargs)
            await hook("after_submit", ctx, name)
            if callable(getattr(outcome, "result", None)):
                return _FaultFuture(outcome, ctx, hook, name)
            return outcome

        return call

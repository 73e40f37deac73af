"""A future awaited by a task that is cancelled mid-way, then by another one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def await_after_a_cancelled_awaiter(
    result: Callable[[], Awaitable[Any]],
    started: Callable[[], Awaitable[object]],
    release: Callable[[], object],
) -> Any:
    """Await ``result()`` in a task, cancel that task once ``started()`` returns (the work
    is in flight), await ``result()`` again in another task and, once it waits, ``release()``
    the work: returns what the second await got."""
    got: list[Any] = []

    async def second() -> None:
        got.append(await result())

    async with anyio.create_task_group() as tasks:
        first = anyio.CancelScope()

        async def cancelled() -> None:
            with first:
                await result()

        tasks.start_soon(cancelled)
        await started()
        first.cancel()
        tasks.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        release()
    return got[0]

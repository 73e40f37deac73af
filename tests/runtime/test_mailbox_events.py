"""The events a mailbox makes for its wake-ups and call replies behave as ``anyio.Event``.

On asyncio they are the runtime's own :class:`FutureEvent`, elsewhere anyio's event: the same
checks run on both backends.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from crucible_kitchen.supervisors._mailbox import FutureEvent, Mailbox

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]


async def wait_then_note(event: anyio.Event, woken: list[str], name: str) -> None:
    await event.wait()
    woken.append(name)


async def test_on_asyncio_the_mailbox_makes_future_events(anyio_backend: str) -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    event = mailbox.new_event()
    assert isinstance(event, anyio.Event)
    assert isinstance(event, FutureEvent) is (anyio_backend == "asyncio")
    assert type(mailbox.new_event()) is type(event)


async def test_set_wakes_every_waiter_once_and_stays_set() -> None:
    event = Mailbox[int](1).new_event()
    woken: list[str] = []
    async with anyio.create_task_group() as tg:
        for name in "abc":
            tg.start_soon(wait_then_note, event, woken, name)
        await anyio.wait_all_tasks_blocked()
        assert not event.is_set()
        assert event.statistics().tasks_waiting == 3
        event.set()
        event.set()  # a second set changes nothing
    assert sorted(woken) == ["a", "b", "c"]
    assert event.is_set()
    assert event.statistics().tasks_waiting == 0


async def test_waiting_on_a_set_event_returns_and_is_a_checkpoint() -> None:
    event = Mailbox[int](1).new_event()
    event.set()
    await event.wait()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await event.wait()  # cancelled here: wait() is a checkpoint even when set
        pytest.fail("wait() on a set event did not check for cancellation")
    assert scope.cancelled_caught


async def test_a_cancelled_waiter_leaves_the_event_unset_for_the_others() -> None:
    event = Mailbox[int](1).new_event()
    woken: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_then_note, event, woken, "stays")
        with anyio.CancelScope() as scope:
            tg.start_soon(wait_then_note, event, woken, "stays too")
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            await event.wait()  # cancelled: this waiter leaves
        assert scope.cancelled_caught
        assert not event.is_set()
        assert event.statistics().tasks_waiting == 2
        event.set()
    assert sorted(woken) == ["stays", "stays too"]

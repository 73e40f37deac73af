"""The per-run bus: stamping, ordered fan-out, failing handlers, subscribers, async handlers."""

from __future__ import annotations

import logging
from itertools import count
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from crucible_kitchen.errors import TelemetryError
from crucible_kitchen.telemetry import (
    CallbackHandler,
    StageStart,
    TelemetryBus,
    TelemetryEvent,
    TrainingStep,
    WorkflowStart,
)

pytestmark = pytest.mark.anyio


def steps(n: int) -> list[TrainingStep]:
    return [TrainingStep(step=i, loss=float(i)) for i in range(n)]


def fake_clock() -> Any:
    ticks = count(1000)
    return lambda: float(next(ticks))


async def test_emit_stamps_run_id_increasing_seq_and_a_missing_timestamp() -> None:
    with TelemetryBus("run-7", clock=fake_clock()) as bus:
        first = bus.emit(TrainingStep(step=0, run_id="ignored", seq=99))
        second = bus.emit(TrainingStep(step=1, timestamp=5.0))
    assert (first.run_id, first.seq, first.timestamp) == ("run-7", 1, 1000.0)
    assert (second.run_id, second.seq, second.timestamp) == ("run-7", 2, 5.0)
    assert first.step == 0
    assert second.step == 1


async def test_sync_handlers_and_subscribers_see_every_event_in_seq_order() -> None:
    seen_a: list[TelemetryEvent] = []
    seen_b: list[TelemetryEvent] = []
    received: list[TelemetryEvent] = []
    bus = TelemetryBus("r", handlers=[seen_a.append, seen_b.append])

    async def consume(events: Any) -> None:
        with events:
            async for event in events:
                received.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, bus.subscribe())
        await anyio.wait_all_tasks_blocked()
        emitted = [bus.emit(event) for event in steps(50)]
        bus.close()
    assert [e.seq for e in emitted] == list(range(1, 51))
    assert seen_a == emitted
    assert seen_b == emitted
    assert received == emitted


async def test_a_raising_handler_never_breaks_emit_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[TelemetryEvent] = []

    def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("handler bug")

    bus = TelemetryBus("r", handlers=[broken, seen.append])
    with caplog.at_level(logging.ERROR, logger="crucible_kitchen.telemetry"):
        emitted = [bus.emit(event) for event in steps(5)]
    assert seen == emitted
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "broken" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    (stats, _) = bus.statistics().handlers
    assert (stats.failures, stats.detached) == (5, False)
    with caplog.at_level(logging.WARNING, logger="crucible_kitchen.telemetry"):
        bus.close()
    assert any("raised 5 times" in r.getMessage() for r in caplog.records)


async def test_a_handler_that_keeps_failing_is_detached_and_one_that_recovers_is_not() -> None:
    calls = {"always": 0, "flaky": 0}

    def always(event: TelemetryEvent) -> None:
        calls["always"] += 1
        raise ValueError("always")

    def flaky(event: TelemetryEvent) -> None:
        calls["flaky"] += 1
        if calls["flaky"] % 2:
            raise ValueError("flaky")

    with TelemetryBus("r", handlers=[always, flaky], max_consecutive_failures=3) as bus:
        for event in steps(10):
            bus.emit(event)
        stats = {h.name.split(".")[-1]: h for h in bus.statistics().handlers}
    assert calls == {"always": 3, "flaky": 10}
    assert "always" not in stats  # detached handlers leave the bus
    assert stats["flaky"].failures == 5
    assert not stats["flaky"].detached


async def test_a_handler_emitting_from_inside_emit_keeps_seq_order_for_everyone() -> None:
    bus = TelemetryBus("r")
    first_seen: list[int] = []
    last_seen: list[int] = []

    def echo(event: TelemetryEvent) -> None:
        first_seen.append(event.seq)
        if isinstance(event, TrainingStep):
            bus.emit(StageStart(stage="after", path=f"after/{event.step}"))

    bus.add_handler(echo)
    bus.add_handler(lambda event: last_seen.append(event.seq))
    with bus:
        bus.emit(TrainingStep(step=0))
        bus.emit(TrainingStep(step=1))
    assert first_seen == [1, 2, 3, 4]
    assert last_seen == [1, 2, 3, 4]


async def test_subscription_ends_on_close_and_replay_gives_the_past_first() -> None:
    bus = TelemetryBus("r")
    early = [bus.emit(event) for event in steps(3)]
    live_only = bus.subscribe()
    with_replay = bus.subscribe(replay=True)
    late = [bus.emit(event) for event in steps(2)]
    bus.close()
    with live_only, with_replay:
        assert [e async for e in live_only] == late
        assert [e async for e in with_replay] == early + late
    with bus.subscribe(replay=True) as after_close:
        assert [e async for e in after_close] == early + late
    with bus.subscribe() as nothing:
        assert [e async for e in nothing] == []


async def test_history_is_bounded() -> None:
    with TelemetryBus("r", history=2) as bus:
        emitted = [bus.emit(event) for event in steps(5)]
    with bus.subscribe(replay=True) as events:
        assert [e async for e in events] == emitted[-2:]


async def test_closing_a_subscription_unsubscribes_it() -> None:
    with TelemetryBus("r") as bus:
        subscription = bus.subscribe()
        bus.emit(TrainingStep(step=0))
        subscription.close()
        bus.emit(TrainingStep(step=1))
        assert bus.statistics().subscribers == 0


async def test_async_handlers_are_awaited_in_order_and_drained_on_close() -> None:
    seen: list[int] = []
    filtered: list[str] = []

    async def slow(event: TelemetryEvent) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event.seq)

    async def only_workflow(event: TelemetryEvent) -> None:
        filtered.append(type(event).__name__)

    bus = TelemetryBus("r", handlers=[slow, CallbackHandler(only_workflow, events="workflow")])
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run_async_handlers)
        bus.emit(WorkflowStart(workflow="w"))
        for event in steps(20):
            bus.emit(event)
        bus.close()
    assert seen == list(range(1, 22))
    assert filtered == ["WorkflowStart"]


async def test_an_async_handler_added_while_running_gets_its_own_sink() -> None:
    seen: list[int] = []

    async def late(event: TelemetryEvent) -> None:
        seen.append(event.seq)

    bus = TelemetryBus("r")
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run_async_handlers)
        bus.emit(TrainingStep(step=0))
        bus.add_handler(late)
        bus.emit(TrainingStep(step=1))
        bus.close()
    assert seen == [2]


async def test_a_failing_async_handler_is_counted_and_the_others_go_on() -> None:
    seen: list[int] = []

    async def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("async handler bug")

    async def good(event: TelemetryEvent) -> None:
        seen.append(event.seq)

    bus = TelemetryBus("r", handlers=[broken, good])
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run_async_handlers)
        for event in steps(4):
            bus.emit(event)
        bus.close()
    assert seen == [1, 2, 3, 4]
    assert bus.statistics().handlers[0].failures == 4


async def test_a_full_async_buffer_drops_and_counts_instead_of_blocking_emit() -> None:
    async def handler(event: TelemetryEvent) -> None:
        pass

    bus = TelemetryBus("r", handlers=[handler], async_buffer=2)
    for event in steps(5):
        bus.emit(event)
    assert bus.statistics().handlers[0].dropped == 3
    bus.close()  # never drained: the two buffered events are dropped too
    assert bus.statistics().handlers[0].dropped == 5


async def test_a_sync_handler_returning_a_coroutine_is_a_counted_failure() -> None:
    async def work(event: TelemetryEvent) -> None:
        pass

    with TelemetryBus("r", handlers=[lambda event: work(event)]) as bus:
        bus.emit(TrainingStep(step=0))
        assert bus.statistics().handlers[0].failures == 1


async def test_owned_handlers_are_closed_with_the_bus_others_are_not() -> None:
    class Closable:
        def __init__(self) -> None:
            self.closed = False

        def __call__(self, event: TelemetryEvent) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    owned, borrowed = Closable(), Closable()
    bus = TelemetryBus("r", handlers=[borrowed])
    bus.add_handler(owned, owned=True)
    bus.close()
    assert owned.closed
    assert not borrowed.closed


async def test_after_close_emit_is_dropped_and_add_handler_refused() -> None:
    seen: list[TelemetryEvent] = []
    bus = TelemetryBus("r", handlers=[seen.append])
    bus.close()
    bus.close()
    bus.emit(TrainingStep(step=0))
    assert seen == []
    assert bus.statistics().dropped_after_close == 1
    with pytest.raises(TelemetryError, match="closed"):
        bus.add_handler(seen.append)


async def test_run_async_handlers_cannot_run_twice_at_once() -> None:
    bus = TelemetryBus("r")
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run_async_handlers)
        with pytest.raises(TelemetryError, match="already running"):
            await bus.run_async_handlers()
        bus.close()


async def test_a_cancelled_runner_can_be_restarted_without_losing_events() -> None:
    seen: list[int] = []

    class Owned:
        closed = False

        async def __call__(self, event: TelemetryEvent) -> None:
            seen.append(event.seq)

        def close(self) -> None:
            self.closed = True

    handler = Owned()
    bus = TelemetryBus("r")
    bus.add_handler(handler, owned=True)
    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as first_runner:
            await first_runner.start(bus.run_async_handlers)
            bus.emit(TrainingStep(step=0))
            await anyio.wait_all_tasks_blocked()
            first_runner.cancel_scope.cancel()
        bus.emit(TrainingStep(step=1))  # buffered while no runner is active
        assert seen == [1]
        await tg.start(bus.run_async_handlers)
        bus.emit(TrainingStep(step=2))
        assert not handler.closed
        bus.close()
    assert seen == [1, 2, 3]
    assert handler.closed
    assert bus.statistics().handlers[0].dropped == 0

"""Actors beyond the OTP checklist: mailbox limits, message types, custom bodies, statistics."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from _probe import Crash, Hang, Knobs, Log, Note, Ping, Probe, StopNormally

from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    CallTimeout,
    ChildStartError,
    MailboxFull,
    MessageTypeError,
    SupervisorNotRunning,
)
from crucible_kitchen.supervisors import (
    Actor,
    ChildSpec,
    ExitKind,
    Message,
    Supervisor,
    exponential_backoff,
    open_supervisor,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]


class Tick(Message):
    n: int


class Ticker(Actor[Tick]):
    """An actor with its own body instead of the message loop."""

    def __init__(self, ticks: list[int], count: int) -> None:
        self.ticks = ticks
        self.count = count

    async def run(self) -> None:
        for n in range(self.count):
            self.ticks.append(n)
            await anyio.lowlevel.checkpoint()


class Anything(Actor):  # type: ignore[type-arg]
    async def handle_call(self, message: object) -> object:
        return message


async def test_a_full_mailbox_blocks_cast_and_fails_cast_nowait() -> None:
    log = Log()
    async with open_supervisor([ChildSpec("a", Probe, (log, "a"), mailbox_size=2)]) as sup:
        ref = sup.ref("a")
        ref.cast_nowait(Hang())  # the actor takes it and hangs; the mailbox is empty again
        await anyio.wait_all_tasks_blocked()
        ref.cast_nowait(Note(text="1"))
        ref.cast_nowait(Note(text="2"))
        with pytest.raises(MailboxFull):
            ref.cast_nowait(Note(text="3"))
        with pytest.raises(CallTimeout):
            await ref.cast(Note(text="3"), timeout=0.01)
        with pytest.raises(CallTimeout):
            await ref.call(Ping(), timeout=0.01)
        assert ref.statistics().mailbox_used == 2


async def test_messages_outside_the_protocol_are_rejected_at_the_sender() -> None:
    log = Log()
    async with open_supervisor([ChildSpec("a", Probe, (log, "a"))]) as sup:
        with pytest.raises(MessageTypeError, match="accepts Ping, Crash"):
            await sup.ref("a").call(Tick(n=1))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            sup.ref("a").cast_nowait("text")  # type: ignore[arg-type]


async def test_an_unparametrized_actor_accepts_anything() -> None:
    async with open_supervisor([ChildSpec("any", Anything)]) as sup:
        assert await sup.ref("any").call("text") == "text"


async def test_a_custom_body_that_returns_is_a_normal_exit() -> None:
    ticks: list[int] = []
    spec = ChildSpec("t", Ticker, (ticks, 3), restart="transient")
    async with open_supervisor([spec]) as sup:
        monitor = sup.ref("t").monitor()
        assert (await monitor.wait()).kind is ExitKind.NORMAL
    assert ticks == [0, 1, 2]


async def test_statistics_count_calls_casts_and_dead_letters() -> None:
    log = Log()
    async with open_supervisor([ChildSpec("a", Probe, (log, "a"), restart="transient")]) as sup:
        ref = sup.ref("a")
        await ref.cast(Note(text="x"))
        await ref.call(Ping())
        ref.cast_nowait(StopNormally())
        ref.cast_nowait(Note(text="never read"))
        monitor = ref.monitor()
        await monitor.wait()
        await anyio.wait_all_tasks_blocked()
        stats = ref.statistics()
        assert (stats.calls_handled, stats.casts_handled, stats.dead_letters) == (1, 2, 1)
        assert stats.state == "stopped"
        assert stats.last_exit is not None
        assert stats.last_exit.kind == "normal"
        with pytest.raises(ActorNotRunning):
            await ref.cast(Note(text="late"))


async def test_start_timeout_is_a_failed_start() -> None:
    log = Log()
    spec = ChildSpec(
        "slow", Probe, (log, "slow", Knobs(start_gate=anyio.Event())), start_timeout=0.01
    )
    async with open_supervisor() as sup:
        with pytest.raises(ChildStartError) as caught:
            await sup.start_child(spec)
        assert isinstance(caught.value.cause, TimeoutError)


async def test_a_start_function_must_return_an_actor_or_a_supervisor() -> None:
    async with open_supervisor() as sup:
        with pytest.raises(ChildStartError, match="expected an Actor"):
            await sup.start_child(ChildSpec("bad", lambda: 42))  # type: ignore[arg-type,return-value]


async def test_a_supervisor_instance_runs_once() -> None:
    shared = Supervisor(name="shared")
    with pytest.raises(ChildStartError, match="already started"):
        async with open_supervisor(
            [ChildSpec("a", lambda: shared), ChildSpec("b", lambda: shared)]
        ):
            pass


async def test_the_api_refuses_requests_after_the_supervisor_stopped() -> None:
    log = Log()
    async with open_supervisor([ChildSpec("a", Probe, (log, "a"))]) as sup:
        pass
    with pytest.raises(SupervisorNotRunning):
        await sup.start_child(ChildSpec("b", Probe, (log, "b")))
    with pytest.raises(ActorNotRunning):
        await sup.ref("a").call(Ping())


async def test_backoff_delays_restarts_and_stop_is_not_delayed_by_it() -> None:
    log = Log()
    delays: list[int] = []

    def backoff(n: int) -> float:
        delays.append(n)
        return 0.01 if n == 1 else 3600.0

    async with open_supervisor([ChildSpec("a", Probe, (log, "a"))], backoff=backoff) as sup:
        with pytest.raises(Exception, match="boom"):
            await sup.ref("a").call(Crash())
        assert await sup.ref("a").call(Ping()) == ("a", 2, 0)  # queued across the delay
        with pytest.raises(Exception, match="boom"):
            await sup.ref("a").call(Crash())
        await anyio.wait_all_tasks_blocked()
        assert sup.which_children()[0].state == "restarting"  # waiting out the hour
    assert delays == [1, 2]


async def test_exponential_backoff_grows_and_is_capped() -> None:
    delay = exponential_backoff(initial=0.1, factor=2.0, maximum=0.5, jitter=0.0)
    assert [delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    jittered = exponential_backoff(initial=1.0, jitter=0.1)
    assert all(0.9 <= jittered(1) <= 1.1 for _ in range(100))


async def test_serve_stops_the_tree_in_order_when_its_task_is_cancelled() -> None:
    log = Log()
    supervisor = Supervisor([ChildSpec(n, Probe, (log, n)) for n in "abc"])
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.serve)
        tg.cancel_scope.cancel()
    assert log.of("stop") == ["c", "b", "a"]
    assert (await supervisor.wait()).kind is ExitKind.SHUTDOWN


async def test_kill_takes_down_a_whole_subtree_without_cleanup() -> None:
    log = Log()
    inner = ChildSpec("inner", lambda: Supervisor([ChildSpec("leaf", Probe, (log, "leaf"))]))
    async with open_supervisor([inner]) as root:
        first = root.child_supervisor("inner")
        first.kill()
        reason = await first.wait()
        assert reason.kind is ExitKind.KILLED
        await anyio.wait_all_tasks_blocked()
        assert root.child_supervisor("inner") is not first  # restarted: permanent
    assert log.of("stop") == ["leaf"]  # only the restarted leaf's orderly stop at the end


async def test_a_cancelled_caller_abandons_its_queued_request() -> None:
    log = Log()
    knobs = Knobs()
    async with open_supervisor([ChildSpec("a", Probe, (log, "a", knobs))]) as sup:
        ref = sup.ref("a")
        ref.cast_nowait(Hang())
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01):
            await ref.call(Note(text="never"), timeout=None)
        ref.kill()  # the hung incarnation dies; the next one skips the abandoned call
        assert await ref.call(Ping()) == ("a", 2, 0)
    assert knobs.notes == []


async def test_messages_sent_during_the_first_start_are_queued() -> None:
    log = Log()
    gate = anyio.Event()
    knobs = Knobs(start_gate=gate)
    async with open_supervisor() as sup, anyio.create_task_group() as tg:
        tg.start_soon(sup.start_child, ChildSpec("a", Probe, (log, "a", knobs)))
        await anyio.wait_all_tasks_blocked()
        sup.ref("a").cast_nowait(Note(text="early"))
        gate.set()
    assert knobs.notes == ["1:early"] or log.of("start") == ["a"]


class SelfTerminator(Actor[Ping]):
    def __init__(self, supervisor: list[Supervisor]) -> None:
        self.supervisor = supervisor

    async def handle_call(self, message: Ping) -> None:
        await self.supervisor[0].terminate_child(self.id)


async def test_an_actor_may_terminate_itself_through_its_supervisor() -> None:
    holder: list[Supervisor] = []
    async with open_supervisor([ChildSpec("me", SelfTerminator, (holder,))]) as sup:
        holder.append(sup)
        ref = sup.ref("me")
        with pytest.raises(ActorExited) as caught:
            await ref.call(Ping())
        assert caught.value.reason.kind is ExitKind.SHUTDOWN
        await anyio.wait_all_tasks_blocked()
        assert sup.which_children()[0].state == "stopped"

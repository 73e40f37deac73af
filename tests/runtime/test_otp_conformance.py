"""The OTP conformance checklist (OTP-01 ... OTP-32 in runtime_anchors.md), on asyncio and trio.

Items documented as deliberately different live in docs/runtime.md ("Where we differ from OTP");
each test here names the item it checks.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import pytest
from _probe import (
    Crash,
    Defer,
    FakeClock,
    Hang,
    Knobs,
    Log,
    Note,
    Ping,
    Probe,
    StopNormally,
    StopShutdown,
    settle,
)

from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    CallTimeout,
    ChildNotFound,
    ChildSpecError,
    ChildStartError,
    ChildStateError,
    RestartIntensityExceeded,
    SupervisorError,
)
from crucible_kitchen.supervisors import (
    ActorRef,
    ChildSpec,
    ExitKind,
    Supervisor,
    open_supervisor,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]


def probe(log: Log, name: str, knobs: Knobs | None = None, **spec: object) -> ChildSpec:
    return ChildSpec(name, Probe, (log, name, knobs), **spec)  # type: ignore[arg-type]


async def crash(supervisor: Supervisor, child: str) -> None:
    with pytest.raises(ActorExited):
        await supervisor.ref(child).call(Crash())
    await settle()


# ------------------------------------------------------------------ A1. flags and defaults


async def test_otp01_02_defaults_follow_elixir() -> None:
    supervisor = Supervisor()
    assert supervisor.strategy == "one_for_one"
    assert (supervisor.intensity, supervisor.period) == (3, 5.0)
    assert supervisor.auto_shutdown == "never"


async def test_otp03_every_invalid_flag_and_spec_is_reported_at_once() -> None:
    log = Log()
    with pytest.raises(ChildSpecError) as caught:
        Supervisor(
            [
                probe(log, "a"),
                probe(log, "a"),
                ChildSpec("b", Probe, restart="sometimes"),  # type: ignore[arg-type]
                ChildSpec("c", Probe, shutdown=-1),
                ChildSpec("d", Probe, mailbox_size=0),
            ],
            strategy="one_for_some",  # type: ignore[arg-type]
            intensity=-1,
            period=0,
        )
    problems = "\n".join(caught.value.problems)
    for expected in (
        "strategy",
        "intensity",
        "period",
        "duplicate child id",
        "'b': restart",
        "'c': shutdown",
        "'d': mailbox_size",
    ):
        assert expected in problems
    assert len(caught.value.problems) == 7


# ------------------------------------------------------------------ A2. strategies


async def test_otp04_one_for_one_restarts_only_the_failed_child() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a"), probe(log, "b"), probe(log, "c")]) as sup:
        await crash(sup, "b")
        assert await sup.ref("b").call(Ping()) == ("b", 2, 0)
        assert await sup.ref("a").call(Ping()) == ("a", 1, 0)
        assert await sup.ref("c").call(Ping()) == ("c", 1, 0)
        assert log.of("stop") == ["b"]


async def test_otp05_one_for_all_stops_others_in_reverse_then_starts_all_in_order() -> None:
    log = Log()
    children = [probe(log, name) for name in "abcd"]
    async with open_supervisor(children, strategy="one_for_all") as sup:
        log.events.clear()
        await crash(sup, "b")
        await sup.ref("d").call(Ping())
        await settle()
        assert log.of("stop") == ["b", "d", "c", "a"]
        assert log.of("start") == ["a", "b", "c", "d"]
        assert [c.incarnation for c in sup.which_children()] == [2, 2, 2, 2]


async def test_otp06_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    log = Log()
    children = [probe(log, name) for name in "abcd"]
    async with open_supervisor(children, strategy="rest_for_one") as sup:
        log.events.clear()
        await crash(sup, "b")
        await sup.ref("d").call(Ping())
        await settle()
        assert log.of("stop") == ["b", "d", "c"]
        assert log.of("start") == ["b", "c", "d"]
        assert [c.incarnation for c in sup.which_children()] == [1, 2, 2, 2]


async def test_otp07_temporary_sibling_is_not_restarted_by_a_group_restart() -> None:
    log = Log()
    children = [probe(log, "a"), probe(log, "t", restart="temporary"), probe(log, "c")]
    async with open_supervisor(children, strategy="one_for_all") as sup:
        await crash(sup, "a")
        await sup.ref("c").call(Ping())
        assert [c.id for c in sup.which_children()] == ["a", "c"]


async def test_otp08_dynamic_children_on_one_for_one_with_max_children() -> None:
    log = Log()
    async with open_supervisor(max_children=2) as sup:
        await sup.start_child(probe(log, "x"))
        await sup.start_child(probe(log, "y"))
        with pytest.raises(SupervisorError, match="max_children"):
            await sup.start_child(probe(log, "z"))
        assert sup.count_children().active == 2


async def test_otp09_dynamic_children_are_lost_when_their_supervisor_restarts() -> None:
    log = Log()
    inner = ChildSpec("inner", lambda: Supervisor([probe(log, "static")], name="inner"))
    async with open_supervisor([inner]) as root:
        await root.child_supervisor("inner").start_child(probe(log, "dynamic"))
        root.child_supervisor("inner").kill()
        await settle()
        assert [c.id for c in root.child_supervisor("inner").which_children()] == ["static"]


# ------------------------------------------------------------------ A3. restart intensity


async def test_otp10_intensity_counts_across_all_children() -> None:
    log = Log()
    clock = FakeClock()
    children = [probe(log, "a"), probe(log, "b")]
    with pytest.raises(RestartIntensityExceeded) as caught:
        async with open_supervisor(children, intensity=2, period=5, clock=clock) as sup:
            await crash(sup, "a")
            await crash(sup, "b")
            await sup.ref("a").call(Ping())
            await crash(sup, "a")  # the third restart within the window
            await sup.wait()
    assert caught.value.last_exit is not None
    assert caught.value.last_exit.kind is ExitKind.CRASH
    assert isinstance(caught.value.__cause__, ValueError)


async def test_otp10_window_slides_and_is_inclusive() -> None:
    log = Log()
    clock = FakeClock()
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([probe(log, "a")], intensity=1, period=5, clock=clock) as sup:
            for _ in range(4):  # one restart every 5.5 s never fills the window
                await crash(sup, "a")
                clock.now += 5.5
            assert sup.statistics().restarts == 4
            await crash(sup, "a")
            clock.now += 5.0  # exactly `period` later still counts (R >= Now - Period)
            await crash(sup, "a")
            await sup.wait()


async def test_otp10_intensity_zero_gives_up_on_the_first_restart() -> None:
    log = Log()
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([probe(log, "a")], intensity=0) as sup:
            await crash(sup, "a")
            await sup.wait()


async def test_otp11_failed_restarts_are_retried_through_the_loop_and_counted() -> None:
    log = Log()
    knobs = Knobs()
    clock = FakeClock()
    async with open_supervisor([probe(log, "a", knobs)], intensity=5, clock=clock) as sup:
        knobs.start_failures = 2  # the next two restart attempts fail
        await crash(sup, "a")
        assert await sup.ref("a").call(Ping()) == ("a", 2, 0)  # queued while it restarted
        assert sup.statistics().restarts == 3  # the crash and both failed attempts


async def test_otp11_a_child_that_cannot_start_exhausts_intensity_while_responsive() -> None:
    log = Log()
    knobs = Knobs()
    answered = 0
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([probe(log, "a", knobs)], intensity=50) as sup:
            knobs.start_failures = 10**6
            with pytest.raises(ActorExited):
                await sup.ref("a").call(Crash())
            while sup.statistics().restarts < 20:
                if sup.which_children()[0].state == "restarting":
                    with pytest.raises(ChildStateError) as caught:
                        await sup.restart_child("a")
                    assert caught.value.state == "restarting"
                    answered += 1
                await anyio.lowlevel.checkpoint()
            await sup.wait()
    assert answered >= 5  # it kept answering between its own restart attempts


async def test_otp12_giving_up_stops_every_child_in_reverse_and_exits_with_shutdown() -> None:
    log = Log()
    children = [probe(log, name) for name in "abc"]
    supervisor = Supervisor(children, intensity=0)
    with pytest.RaisesGroup(RestartIntensityExceeded):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.serve)
            await crash(supervisor, "b")
    assert log.of("stop") == ["b", "c", "a"]
    reason = await supervisor.wait()
    assert reason.kind is ExitKind.SHUTDOWN
    assert reason.detail == "reached_max_restart_intensity"


@pytest.mark.parametrize(("restart", "restarted"), [("permanent", True), ("transient", False)])
async def test_otp13_escalation_applies_the_child_supervisors_restart_type(
    restart: str, restarted: bool
) -> None:
    log = Log()
    inner = ChildSpec(
        "inner",
        lambda: Supervisor([probe(log, "leaf")], intensity=0, name="inner"),
        restart=restart,  # type: ignore[arg-type]
    )
    async with open_supervisor([inner]) as root:
        await crash(root.child_supervisor("inner"), "leaf")
        await settle()
        info = root.which_children()[0]
        assert (info.state == "running") is restarted
        assert root.statistics().restarts == (1 if restarted else 0)


async def test_otp14_nested_intensities_multiply() -> None:
    log = Log()
    inner = ChildSpec("inner", lambda: Supervisor([probe(log, "leaf")], intensity=1))
    crashes = 0
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor([inner], intensity=1) as root:
            while True:
                try:
                    await root.child_supervisor("inner").ref("leaf").call(Crash())
                except ActorExited:
                    crashes += 1
                except (ChildStateError, ActorNotRunning):
                    pass  # between the inner supervisor's lives
                await settle()
    # The leaf crashes (1 + 1) times per inner life, and the inner lives (1 + 1) times.
    assert crashes == 4


# ------------------------------------------------------------------ A4. restart types, exits


@pytest.mark.parametrize(
    ("restart", "message", "restarted"),
    [
        ("permanent", StopNormally(), True),
        ("permanent", StopShutdown(), True),
        ("permanent", Crash(), True),
        ("transient", StopNormally(), False),
        ("transient", StopShutdown(), False),
        ("transient", Crash(), True),
        ("temporary", Crash(), False),
    ],
)
async def test_otp15_restart_types(restart: str, message: object, restarted: bool) -> None:
    log = Log()
    async with open_supervisor([probe(log, "a", restart=restart)]) as sup:
        ref = sup.ref("a")
        with contextlib.suppress(ActorExited):
            await ref.call(message)
        await settle()
        assert ref.alive is restarted
        if restart == "temporary":
            assert sup.which_children() == []


async def test_otp16_exit_reason_mapping() -> None:
    log = Log()
    children = [probe(log, name, restart="temporary") for name in ("ret", "shut", "crash", "kill")]
    async with open_supervisor(children) as sup:
        monitors = {c.id: sup.ref(c.id).monitor() for c in sup.which_children()}
        await sup.ref("ret").call(StopNormally())
        with pytest.raises(ActorExited):
            await sup.ref("shut").call(StopShutdown(reason="bye"))
        with pytest.raises(ActorExited):
            await sup.ref("crash").call(Crash())
        sup.ref("kill").kill()
        reasons = {name: await m.wait() for name, m in monitors.items()}
    assert reasons["ret"].kind is ExitKind.NORMAL
    assert (reasons["shut"].kind, reasons["shut"].detail) == (ExitKind.SHUTDOWN, "bye")
    assert reasons["crash"].kind is ExitKind.CRASH
    assert isinstance(reasons["crash"].error, ValueError)
    assert reasons["kill"].kind is ExitKind.KILLED
    assert log.of("stop") == ["ret", "shut", "crash"]  # a kill skips on_stop


async def test_otp16_cancelled_by_its_supervisor_is_shutdown() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a")]) as sup:
        monitor = sup.ref("a").monitor()
        await sup.terminate_child("a")
        assert (await monitor.wait()).kind is ExitKind.SHUTDOWN
    assert log.events[-1] == ("stop", "a", "shutdown")


@pytest.mark.parametrize("mode", ["any_significant", "all_significant"])
async def test_otp17_auto_shutdown(mode: str) -> None:
    log = Log()
    children = [
        probe(log, "worker"),
        probe(log, "s1", restart="transient", significant=True),
        probe(log, "s2", restart="transient", significant=True),
    ]
    async with open_supervisor(children, auto_shutdown=mode) as sup:
        await sup.ref("s1").call(StopNormally())
        await settle()
        if mode == "all_significant":
            assert sup.count_children().active == 2
            await sup.ref("s2").call(StopNormally())
        reason = await sup.wait()
    assert (reason.kind, reason.detail) == (ExitKind.SHUTDOWN, "auto_shutdown")


async def test_otp17_terminate_child_and_crashes_never_trigger_auto_shutdown() -> None:
    log = Log()
    children = [
        probe(log, "s1", restart="transient", significant=True),
        probe(log, "s2", restart="transient", significant=True),
    ]
    async with open_supervisor(children, auto_shutdown="any_significant") as sup:
        await sup.terminate_child("s1")
        await crash(sup, "s2")  # abnormal: restarted, not an auto shutdown
        assert await sup.ref("s2").call(Ping()) == ("s2", 2, 0)


async def test_otp17_significant_needs_a_non_permanent_child_and_auto_shutdown() -> None:
    with pytest.raises(ChildSpecError) as caught:
        Supervisor([ChildSpec("a", Probe, significant=True)])
    assert len(caught.value.problems) == 2


# ------------------------------------------------------------------ A5. starting children


async def test_otp18_start_returns_only_when_every_child_is_ready() -> None:
    log = Log()
    gate = anyio.Event()
    entered = False

    async def enter() -> None:
        nonlocal entered
        async with open_supervisor([probe(log, "a"), probe(log, "b", Knobs(start_gate=gate))]):
            entered = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(enter)
        await anyio.wait_all_tasks_blocked()
        assert log.of("start") == ["a"]
        assert not entered
        gate.set()
    assert entered


async def test_otp18_a_failed_start_stops_the_started_children_and_is_not_retried() -> None:
    log = Log()
    children = [probe(log, "a"), probe(log, "b"), probe(log, "c", Knobs(start_failures=1))]
    with pytest.raises(ChildStartError) as caught:
        async with open_supervisor(children):
            pytest.fail("must not start")
    assert caught.value.child_id == "c"
    assert isinstance(caught.value.cause, RuntimeError)
    assert log.of("stop") == ["b", "a"]


async def test_otp19_a_start_function_returning_none_is_ignored() -> None:
    log = Log()
    async with open_supervisor([ChildSpec("off", lambda: None), probe(log, "on")]) as sup:
        off = sup.which_children()[0]
        assert (off.id, off.state, off.kind) == ("off", "stopped", None)
        assert await sup.start_child(ChildSpec("gone", lambda: None, restart="temporary")) is None
        assert [c.id for c in sup.which_children()] == ["off", "on"]


async def test_otp20_dynamic_api() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a")]) as sup:
        ref = await sup.start_child(probe(log, "b"))
        assert ref is sup.ref("b")
        with pytest.raises(ChildStateError) as running:
            await sup.start_child(probe(log, "b"))
        assert running.value.state == "running"
        with pytest.raises(ChildStateError):
            await sup.restart_child("b")
        with pytest.raises(ChildStateError):
            await sup.delete_child("b")
        await sup.terminate_child("b")
        assert sup.get_childspec("b").id == "b"
        with pytest.raises(ChildStateError) as present:
            await sup.start_child(probe(log, "b"))
        assert present.value.state == "already_present"
        await sup.restart_child("b")
        assert await sup.ref("b").call(Ping()) == ("b", 2, 0)
        await sup.terminate_child("b")
        await sup.delete_child("b")
        for call in (sup.terminate_child, sup.restart_child, sup.delete_child):
            with pytest.raises(ChildNotFound):
                await call("b")
        counts = sup.count_children()
        assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (1, 1, 1, 0)


async def test_otp20_start_child_reports_a_failed_start_and_keeps_no_spec() -> None:
    log = Log()
    async with open_supervisor() as sup:
        with pytest.raises(ChildStartError):
            await sup.start_child(probe(log, "x", Knobs(start_failures=1)))
        assert sup.which_children() == []


# ------------------------------------------------------------------ A6. shutdown


async def test_otp21_children_stop_in_reverse_start_order() -> None:
    log = Log()
    inner = ChildSpec("inner", lambda: Supervisor([probe(log, "i1"), probe(log, "i2")]))
    async with open_supervisor([probe(log, "a"), inner, probe(log, "z")]):
        pass
    assert log.of("stop") == ["z", "i2", "i1", "a"]


async def test_otp22_a_child_that_overruns_its_shutdown_timeout_is_killed() -> None:
    log = Log()
    knobs = Knobs(stop_delay=60)
    async with open_supervisor([probe(log, "slow", knobs, shutdown=0.05)]) as sup:
        monitor = sup.ref("slow").monitor()
    reason = await monitor.wait()
    assert (reason.kind, reason.detail) == (ExitKind.KILLED, "shutdown_timeout")


async def test_otp22_brutal_kill_skips_cleanup_and_infinity_waits_for_it() -> None:
    log = Log()
    children = [
        probe(log, "patient", Knobs(stop_delay=0.01), shutdown="infinity"),
        probe(log, "brutal", shutdown="brutal_kill"),
    ]
    async with open_supervisor(children):
        pass
    assert log.of("stop") == ["patient"]


async def test_otp23_an_unexpected_exit_during_shutdown_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = Log()
    with caplog.at_level(logging.WARNING, logger="crucible_kitchen.supervisors"):
        async with open_supervisor([probe(log, "a", Knobs(stop_error=True))]):
            pass
    assert "shutdown_error" in caplog.text


async def test_otp24_on_stop_runs_on_shutdown_and_crash_but_not_on_kill() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a")]) as sup:
        await crash(sup, "a")
        sup.ref("a").kill()
        await sup.ref("a").call(Ping())
    assert [(e, k) for e, _, k in log.events if e == "stop"] == [
        ("stop", "crash"),
        ("stop", "shutdown"),
    ]


# ------------------------------------------------------------------ A7. monitors, mailboxes


async def test_otp26_monitors_are_stackable_and_noproc_when_not_running() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a", restart="transient")]) as sup:
        ref = sup.ref("a")
        first, second = ref.monitor(), ref.monitor()
        await ref.call(StopNormally())
        assert (await first.wait()).kind is ExitKind.NORMAL
        assert (await second.wait()).kind is ExitKind.NORMAL
        await settle()
        assert (await ref.monitor().wait()).kind is ExitKind.NOPROC


async def test_otp27_messages_from_one_sender_arrive_in_order() -> None:
    log = Log()
    knobs = Knobs()
    async with open_supervisor([probe(log, "a", knobs, mailbox_size=8)]) as sup:
        ref = sup.ref("a")
        for i in range(100):
            await ref.cast(Note(text=str(i)))
        await ref.call(Ping())
    assert knobs.notes == [f"1:{i}" for i in range(100)]


async def test_otp28_queued_messages_survive_a_crash() -> None:
    log = Log()
    knobs = Knobs()
    async with open_supervisor([probe(log, "a", knobs)]) as sup:
        ref = sup.ref("a")
        ref.cast_nowait(Crash())
        for i in range(5):
            ref.cast_nowait(Note(text=str(i)))
        assert await ref.call(Ping()) == ("a", 2, 0)
    assert knobs.notes == [f"2:{i}" for i in range(5)]


async def test_otp28_queued_calls_fail_at_once_when_the_actor_stops_for_good() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a", restart="temporary")]) as sup:
        ref = sup.ref("a")
        ref.cast_nowait(Crash())
        with pytest.raises(ActorNotRunning, match="before it got to the call") as caught:
            await ref.call(Ping(), timeout=None)
        assert isinstance(caught.value.__cause__, ValueError)
        with pytest.raises(ActorNotRunning):
            await ref.call(Ping())


# ------------------------------------------------------------------ A8. call / cast


async def test_otp29_call_times_out_and_a_late_reply_is_dropped() -> None:
    log = Log()
    knobs = Knobs()
    async with open_supervisor([probe(log, "a", knobs)]) as sup:
        ref = sup.ref("a")
        # Long enough for the actor to take the request first even if the process stalls (a
        # request still queued when its caller gives up is skipped, leaving nothing deferred).
        with pytest.raises(CallTimeout) as caught:
            await ref.call(Defer(), timeout=0.2)
        assert caught.value.timeout == pytest.approx(0.2)
        knobs.deferred.pop().reply("too late")  # dropped: nobody is waiting, nothing breaks
        assert await ref.call(Ping()) == ("a", 1, 0)


async def test_otp30_call_fails_at_once_when_the_server_dies() -> None:
    log = Log()
    async with open_supervisor([probe(log, "a")]) as sup:
        ref = sup.ref("a")
        async with anyio.create_task_group() as tg:

            async def hung_call() -> None:
                with pytest.raises(ActorExited) as caught:
                    await ref.call(Hang(), timeout=None)
                assert caught.value.reason.kind is ExitKind.KILLED

            tg.start_soon(hung_call)
            await anyio.wait_all_tasks_blocked()
            ref.kill()
        with pytest.raises(ActorExited) as crashed:
            await ref.call(Crash())
        assert isinstance(crashed.value.__cause__, ValueError)
        with pytest.raises(ActorExited) as deferred:
            await _defer_then_crash(ref)
        assert deferred.value.reason.kind is ExitKind.CRASH


async def _defer_then_crash(ref: ActorRef[Any]) -> None:
    pending = await ref.send_request(Defer())
    ref.cast_nowait(Crash())  # dies holding the deferred call
    await pending.receive(timeout=None)


async def test_otp31_send_request_and_a_deferred_reply() -> None:
    log = Log()
    knobs = Knobs()
    async with open_supervisor([probe(log, "a", knobs)]) as sup:
        ref = sup.ref("a")
        pending = await ref.send_request(Defer())
        assert await ref.call(Ping(value=7)) == ("a", 1, 7)  # the actor is free meanwhile
        assert not pending.done
        knobs.deferred.pop().reply("later")
        assert await pending.receive() == "later"


async def test_otp32_one_off_jobs_as_temporary_dynamic_children() -> None:
    log = Log()
    async with open_supervisor() as sup:
        for i in range(3):
            ref = await sup.start_child(probe(log, f"job{i}", restart="temporary"))
            assert ref is not None
            monitor = ref.monitor()  # type: ignore[union-attr]
            await ref.call(StopNormally())  # type: ignore[union-attr]
            assert (await monitor.wait()).kind is ExitKind.NORMAL
        await settle()
        assert sup.which_children() == []

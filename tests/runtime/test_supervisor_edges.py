"""Edges of supervisors and actors: requests cut short by a kill, ``kill()`` on a root, an actor
calling itself, spec checks, child counts and crash reports, on asyncio and trio."""

from __future__ import annotations

import logging

import anyio
import pytest
from _probe import Crash, Knobs, Log, Ping, Probe, StopNormally, settle

from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    CallToSelf,
    ChildSpecError,
    ChildStartError,
    SupervisorNotRunning,
)
from crucible_kitchen.supervisors import Actor, ChildSpec, ExitKind, Supervisor, open_supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]


# ------------------------------------------------------------------ a killed supervisor


@pytest.mark.parametrize("where", ["root", "nested"])
async def test_a_request_in_progress_fails_when_its_supervisor_is_killed(where: str) -> None:
    log = Log()
    knobs = Knobs(stop_delay=3600)
    slow = ChildSpec("slow", Probe, (log, "slow", knobs), shutdown="infinity")
    inner = ChildSpec("inner", lambda: Supervisor([slow], name="inner"))
    async with open_supervisor([slow] if where == "root" else [inner], name="root") as root:
        sup = root if where == "root" else root.child_supervisor("inner")
        async with anyio.create_task_group() as tg:

            async def terminate() -> None:  # in progress: waits for slow's on_stop
                with pytest.raises(SupervisorNotRunning):
                    await sup.terminate_child("slow")

            async def delete() -> None:  # queued behind it
                with pytest.raises(SupervisorNotRunning):
                    await sup.delete_child("slow")

            tg.start_soon(terminate)
            await settle()
            tg.start_soon(delete)
            await settle()
            assert log.of("stop") == ["slow"]  # inside its hour-long on_stop
            knobs.stop_delay = 0  # for the restarted inner supervisor's own stop
            sup.kill()
        assert (await sup.wait()).kind is ExitKind.KILLED
        with pytest.raises(SupervisorNotRunning):
            await sup.restart_child("slow")


async def test_a_child_being_started_when_its_supervisor_is_killed_fails_the_start() -> None:
    log = Log()
    hung = ChildSpec("hung", Probe, (log, "hung", Knobs(start_gate=anyio.Event())))
    async with open_supervisor() as sup, anyio.create_task_group() as tg:

        async def start() -> None:
            with pytest.raises(SupervisorNotRunning) as caught:
                await sup.start_child(hung)
            assert isinstance(caught.value.__cause__, ChildStartError)

        tg.start_soon(start)
        await settle()
        sup.kill()
    assert sup.which_children() == []


@pytest.mark.parametrize("how", ["serve", "open_supervisor"])
async def test_kill_on_a_root_kills_its_tree_without_cleanup(how: str) -> None:
    log = Log()
    children = [ChildSpec(name, Probe, (log, name)) for name in "ab"]
    if how == "serve":
        supervisor = Supervisor(children)
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.serve)
            await _kill(supervisor)
    else:
        async with open_supervisor(children) as supervisor:
            await _kill(supervisor)
    assert log.of("start") == ["a", "b"]
    assert log.of("stop") == []  # a kill skips every on_stop
    with pytest.raises(ActorNotRunning):
        await supervisor.ref("a").call(Ping())
    with pytest.raises(SupervisorNotRunning):
        await supervisor.terminate_child("a")


async def _kill(supervisor: Supervisor) -> None:
    supervisor.kill()
    assert (await supervisor.wait()).kind is ExitKind.KILLED


# ------------------------------------------------------------------ an actor calling itself


class Selfish(Actor[Ping]):
    """Calls itself where it is told to, and reports what that call raised."""

    def __init__(self, where: str, seen: list[str]) -> None:
        self.where = where
        self.seen = seen

    async def on_start(self) -> None:
        if self.where == "on_start":
            await self.ref.call(Ping())

    async def handle_call(self, message: Ping) -> object:
        if message.value == 0:
            return "answered"
        if self.where == "handler":
            return await self._ask_myself()
        async with anyio.create_task_group() as tg:  # "subtask": a task the handler awaits
            tg.start_soon(self._ask_myself)
        return self.seen[-1]

    async def _ask_myself(self) -> str:
        try:
            await self.ref.call(Ping(), timeout=None)
        except CallToSelf as exc:
            self.seen.append(type(exc).__name__)
            return self.seen[-1]
        raise AssertionError("a call to oneself returned")


@pytest.mark.parametrize("where", ["handler", "subtask"])
async def test_an_actor_calling_itself_fails_at_once(where: str) -> None:
    seen: list[str] = []
    async with open_supervisor([ChildSpec("me", Selfish, (where, seen))]) as sup:
        assert await sup.ref("me").call(Ping(value=1), timeout=None) == "CallToSelf"
        assert await sup.ref("me").call(Ping()) == "answered"  # and it is still running


async def test_an_actor_calling_itself_from_on_start_fails_its_start() -> None:
    async with open_supervisor() as sup:
        with pytest.raises(ChildStartError) as caught:
            await sup.start_child(ChildSpec("me", Selfish, ("on_start", [])))
        assert isinstance(caught.value.cause, CallToSelf)


class Ticker(Actor[Ping]):
    """A custom body: a background task calls the actor while its message loop runs."""

    def __init__(self, replies: list[object]) -> None:
        self.replies = replies

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._tick)
            await super().run()

    async def _tick(self) -> None:
        self.replies.append(await self.ref.call(Ping(value=5)))

    async def handle_call(self, message: Ping) -> int:
        return message.value


async def test_a_background_task_of_an_actor_may_call_it() -> None:
    replies: list[object] = []
    async with open_supervisor([ChildSpec("ticker", Ticker, (replies,))]) as sup:
        await settle()
        assert replies == [5]
        assert await sup.ref("ticker").call(Ping(value=1)) == 1


# ------------------------------------------------------------------ specs, counts, reports


async def test_significant_must_be_a_bool() -> None:
    with pytest.raises(ChildSpecError) as caught:
        Supervisor(
            [ChildSpec("a", Probe, restart="transient", significant=1)],  # type: ignore[arg-type]
            auto_shutdown="any_significant",
        )
    assert caught.value.problems == ["child 'a': significant must be a bool, not 1"]


async def test_an_ignored_child_is_counted() -> None:
    log = Log()
    inner = ChildSpec("inner", lambda: Supervisor(name="inner"))
    children = [ChildSpec("off", lambda: None), ChildSpec("on", Probe, (log, "on")), inner]
    async with open_supervisor(children) as sup:
        counts = sup.count_children()
        assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (3, 2, 2, 1)


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
async def test_a_crash_is_reported_for_every_restart_type(
    restart: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log()
    spec = ChildSpec("a", Probe, (log, "a"), restart=restart)  # type: ignore[arg-type]
    quiet = ChildSpec("q", Probe, (log, "q"), restart="transient")
    with caplog.at_level(logging.WARNING, logger="crucible_kitchen.supervisors"):
        async with open_supervisor([spec, quiet], name="kitchen") as sup:
            with pytest.raises(ActorExited):
                await sup.ref("a").call(Crash(text="shard 17"))
            await sup.ref("q").call(StopNormally())  # a normal end is not a crash
            await settle()
    reports = [r for r in caplog.records if "terminated" in r.getMessage()]
    assert len(reports) == 1
    report = reports[0]
    assert report.getMessage() == (
        f"supervisor 'kitchen': child 'a' ({restart}) terminated: crash: ValueError: shard 17"
    )
    assert report.levelno == logging.WARNING
    assert report.exc_info is not None
    assert isinstance(report.exc_info[1], ValueError)

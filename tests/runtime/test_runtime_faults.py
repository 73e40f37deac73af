"""Fault injection against the runtime: crashes and kills in every strategy and at every stage."""

from __future__ import annotations

import sys

import anyio
import pytest
from _probe import Crash, Hang, Knobs, Log, Note, Ping, Probe

from crucible_kitchen.errors import ActorExited, ChildStartError
from crucible_kitchen.supervisors import ChildSpec, ExitKind, Supervisor, open_supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]


def tree(log: Log, knobs: dict[str, Knobs]) -> list[ChildSpec]:
    return [ChildSpec(name, Probe, (log, name, knobs.setdefault(name, Knobs()))) for name in "abc"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("victim", ["a", "b", "c"])
@pytest.mark.parametrize("fault", ["crash_in_call", "crash_in_cast", "kill_idle", "kill_in_call"])
async def test_every_fault_in_every_strategy_recovers_without_losing_queued_messages(
    strategy: str, victim: str, fault: str
) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    async with open_supervisor(tree(log, knobs), strategy=strategy) as sup:
        ref = sup.ref(victim)
        if fault == "crash_in_call":
            with pytest.raises(ActorExited):
                await ref.call(Crash())
        elif fault == "crash_in_cast":
            ref.cast_nowait(Crash())
        elif fault == "kill_idle":
            ref.kill()
        else:
            async with anyio.create_task_group() as tg:

                async def hung() -> None:
                    with pytest.raises(ActorExited) as caught:
                        await ref.call(Hang(), timeout=None)
                    assert caught.value.reason.kind is ExitKind.KILLED

                tg.start_soon(hung)
                await anyio.wait_all_tasks_blocked()
                ref.kill()
        for i in range(3):  # queued while the victim (and maybe its siblings) restart
            ref.cast_nowait(Note(text=str(i)))
        for name in "abc":
            assert (await sup.ref(name).call(Ping()))[0] == name
        await anyio.wait_all_tasks_blocked()
        assert sup.statistics().restarts == 1
        assert all(child.state == "running" for child in sup.which_children())
    assert knobs[victim].notes == [f"2:{i}" for i in range(3)]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_kill_during_start_up_is_a_failed_start(strategy: str) -> None:
    log = Log()
    gate = anyio.Event()
    async with open_supervisor(strategy=strategy) as sup:
        async with anyio.create_task_group() as tg:

            async def start() -> None:
                with pytest.raises(ChildStartError) as caught:
                    await sup.start_child(ChildSpec("x", Probe, (log, "x", Knobs(start_gate=gate))))
                assert isinstance(caught.value.cause, ActorExited)

            tg.start_soon(start)
            await anyio.wait_all_tasks_blocked()
            sup.ref("x").kill()
        assert sup.which_children() == []


async def test_kill_during_shutdown_ends_the_cleanup_at_once() -> None:
    log = Log()
    spec = ChildSpec("slow", Probe, (log, "slow", Knobs(stop_delay=3600)), shutdown="infinity")
    async with open_supervisor([spec]) as sup:
        ref = sup.ref("slow")
        monitor = ref.monitor()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.terminate_child, "slow")
            await anyio.wait_all_tasks_blocked()
            assert log.of("stop") == ["slow"]  # inside on_stop, for an hour
            ref.kill()
        reason = await monitor.wait()
    assert reason.kind is ExitKind.KILLED


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_crash_during_a_group_restart_is_survived(strategy: str) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    async with open_supervisor(tree(log, knobs), strategy=strategy, intensity=10) as sup:
        knobs["c"].start_failures = 1  # c fails once while it is being (re)started
        with pytest.raises(ActorExited):
            await sup.ref("a" if strategy != "one_for_one" else "c").call(Crash())
        for name in "abc":
            assert (await sup.ref(name).call(Ping()))[0] == name


async def test_three_levels_escalate_to_the_root() -> None:
    log = Log()

    def middle() -> Supervisor:
        leaf = ChildSpec("leaf", Probe, (log, "leaf"))
        inner = ChildSpec("inner", lambda: Supervisor([leaf], intensity=0, name="inner"))
        return Supervisor([inner], intensity=0, name="middle")

    from crucible_kitchen.errors import RestartIntensityExceeded

    with pytest.raises(RestartIntensityExceeded) as caught:
        async with open_supervisor([ChildSpec("middle", middle)], intensity=0, name="root") as root:
            leaf = root.child_supervisor("middle").child_supervisor("inner").ref("leaf")
            with pytest.raises(ActorExited):
                await leaf.call(Crash())
            await root.wait()
    assert caught.value.supervisor == "root"
    middle_exit = caught.value.last_exit
    assert middle_exit is not None
    assert isinstance(middle_exit.error, RestartIntensityExceeded)
    assert middle_exit.error.supervisor == "middle"


_INTERRUPT_SCRIPT = """
import sys, anyio
from crucible_kitchen.supervisors import Actor, ChildSpec, Message, open_supervisor

class Ping(Message):
    pass

class Interrupter(Actor[Ping]):
    async def handle_call(self, message):
        raise KeyboardInterrupt

class Tidy(Actor[Ping]):
    async def on_stop(self, reason):
        print("tidy stopped:", reason.kind.value, flush=True)

async def main():
    async with open_supervisor([ChildSpec("tidy", Tidy), ChildSpec("k", Interrupter)]) as sup:
        await sup.ref("k").call(Ping(), timeout=None)

try:
    anyio.run(main, backend=sys.argv[1])
except KeyboardInterrupt:
    print("KeyboardInterrupt reached the top", flush=True)
    sys.exit(3)
"""


async def test_keyboard_interrupt_is_never_restarted_and_tears_the_tree_down(
    anyio_backend: str,
) -> None:
    # In a child process: on asyncio a KeyboardInterrupt escapes the event loop itself.
    process = await anyio.run_process(
        [sys.executable, "-c", _INTERRUPT_SCRIPT, anyio_backend], check=False
    )
    output = process.stdout.decode()
    assert process.returncode == 3, process.stderr.decode()
    assert "KeyboardInterrupt reached the top" in output
    assert "tidy stopped: shutdown" in output


_SYSTEM_EXIT_SCRIPT = """
import sys, anyio
from crucible_kitchen import Kitchen, Workflow
from crucible_kitchen.workflows import stage

async def leave(ctx):
    raise SystemExit(5)

async def close(ctx):
    pass

async def main():
    workflow = Workflow("w", stage("leave", leave), cleanup=[stage("close", close)])
    await Kitchen.run(workflow, adapters={})

anyio.run(main, backend=sys.argv[1])
"""


async def test_system_exit_in_a_nested_tree_ends_the_program_instead_of_hanging(
    anyio_backend: str,
) -> None:
    # A stage's SystemExit escapes through the run's supervisors, one of which (cleanup) is
    # shielded and idle: it must be killed too, or the program waits for it forever.
    with anyio.fail_after(60):
        process = await anyio.run_process(
            [sys.executable, "-c", _SYSTEM_EXIT_SCRIPT, anyio_backend], check=False
        )
    assert process.returncode == 5, process.stderr.decode()[-2000:]

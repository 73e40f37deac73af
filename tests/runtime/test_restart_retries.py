"""Restarts that fail, as OTP's supervisor handles them (OTP-11), on asyncio and trio.

Four children ``a b c d``; ``c`` is the member whose restart fails. Under ``one_for_one`` it is
``c`` that crashes; under ``one_for_all`` and ``rest_for_one`` it is ``b``, so that ``c`` fails
while its group restarts. OTP (``supervisor.erl``, ``restart_multiple_children`` and
``try_again_restart``) then retries the child that failed to start: ``one_for_all`` stops the
members that did start (reverse order) and starts the whole group again; ``rest_for_one``
starts that child and those after it. Every retry counts toward the restart intensity. ``c``'s
starts wait on gates, so each test looks at the tree while one attempt is in progress.
"""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING

import anyio
import pytest
from _probe import Crash, FakeClock, Knobs, Log, Ping, Probe, settle

from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    ChildNotFound,
    ChildStartError,
    ChildStateError,
    RestartIntensityExceeded,
)
from crucible_kitchen.supervisors import (
    ChildSpec,
    ExitKind,
    PendingCall,
    Supervisor,
    open_supervisor,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leaked_tasks")]

STRATEGIES = ["one_for_one", "one_for_all", "rest_for_one"]
VICTIM = {"one_for_one": "c", "one_for_all": "b", "rest_for_one": "b"}
"""The child that crashes; its restart (or its group's) then fails at ``c``."""


def tree(log: Log, knobs: dict[str, Knobs]) -> list[ChildSpec]:
    return [ChildSpec(name, Probe, (log, name, knobs.setdefault(name, Knobs()))) for name in "abcd"]


def children(sup: Supervisor) -> list[tuple[str, str, int]]:
    """Each child's id, state and incarnation count, in start order."""
    return [(c.id, c.state, c.incarnation) for c in sup.which_children()]


def kinds(log: Log, *wanted: str) -> list[tuple[str, str]]:
    """The log's events of the wanted kinds, in order, as (kind, child)."""
    return [(kind, name) for kind, name, _ in log.events if kind in wanted]


async def crash(sup: Supervisor, child: str) -> None:
    with pytest.raises(ActorExited):
        await sup.ref(child).call(Crash())


def attempt_states(strategy: str, attempt: int) -> list[tuple[str, str, int]]:
    """The tree while ``c``'s start in restart attempt ``attempt`` (0 = the first) waits.

    One_for_all restarts a and b again on every attempt; rest_for_one leaves b (restarted by
    the first attempt) running and retries only c and d; nothing before the failed child is
    ever reported ``restarting``.
    """
    waiting = [("c", "restarting", 1), ("d", "restarting", 1)]
    if strategy == "one_for_one":
        return [
            ("a", "running", 1),
            ("b", "running", 1),
            ("c", "restarting", 1),
            ("d", "running", 1),
        ]
    if strategy == "one_for_all":
        return [("a", "running", 2 + attempt), ("b", "running", 2 + attempt), *waiting]
    return [("a", "running", 1), ("b", "running", 2), *waiting]


def final_states(strategy: str, failures: int) -> list[tuple[str, str, int]]:
    if strategy == "one_for_one":
        return [("a", "running", 1), ("b", "running", 1), ("c", "running", 2), ("d", "running", 1)]
    if strategy == "one_for_all":
        grown = 2 + failures
        return [
            ("a", "running", grown),
            ("b", "running", grown),
            ("c", "running", 2),
            ("d", "running", 2),
        ]
    return [("a", "running", 1), ("b", "running", 2), ("c", "running", 2), ("d", "running", 2)]


def expected_log(strategy: str, failures: int) -> list[tuple[str, str]]:
    """Stops, failed starts and starts after the crash, in order, for ``failures`` failures."""
    stop, fail, start = "stop", "fail", "start"
    if strategy == "one_for_one":
        return [(stop, "c"), *[(fail, "c")] * failures, (start, "c")]
    if strategy == "one_for_all":
        first = [(stop, "b"), (stop, "d"), (stop, "c"), (stop, "a"), (start, "a"), (start, "b")]
        retry = [(stop, "b"), (stop, "a"), (start, "a"), (start, "b")]
        return [*first, *[(fail, "c"), *retry] * failures, (start, "c"), (start, "d")]
    first = [(stop, "b"), (stop, "d"), (stop, "c"), (start, "b")]
    return [*first, *[(fail, "c")] * failures, (start, "c"), (start, "d")]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("failures", [1, 3])
async def test_a_failed_restart_is_retried_at_the_child_that_failed_to_start(
    strategy: str, failures: int
) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    sup_tree = tree(log, knobs)
    gates = [anyio.Event() for _ in range(failures + 1)]
    async with open_supervisor(sup_tree, strategy=strategy, intensity=10, clock=FakeClock()) as sup:
        log.events.clear()
        knobs["c"].start_failures = failures
        knobs["c"].start_gates = list(gates)
        await crash(sup, VICTIM[strategy])
        await settle()
        pending = await sup.ref("d").send_request(Ping(value=7))  # waits while d does
        for attempt, gate in enumerate(gates):
            await settle()
            expected = attempt_states(strategy, attempt)
            assert children(sup) == expected, attempt
            assert sup.count_children().active == [s for _, s, _ in expected].count("running")
            assert sup.statistics().restarts == 1 + attempt  # every retry is counted
            gate.set()
        await settle()
        assert children(sup) == final_states(strategy, failures)
        assert sup.statistics().restarts == 1 + failures
        assert kinds(log, "stop", "fail", "start") == expected_log(strategy, failures)
        incarnation_of_d = 1 if strategy == "one_for_one" else 2
        assert await pending.receive() == ("d", incarnation_of_d, 7)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_child_that_never_restarts_exhausts_the_intensity(strategy: str) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    with pytest.raises(RestartIntensityExceeded) as caught:
        async with open_supervisor(
            tree(log, knobs), strategy=strategy, intensity=2, clock=FakeClock(), name="sup"
        ) as sup:
            log.events.clear()
            knobs["c"].start_failures = 10**6
            await crash(sup, VICTIM[strategy])
            await sup.wait()
    # Restart 1 (the crash) and 2 (the first retry) fail at c; counting the third gives up.
    assert sup.statistics().restarts == 3
    last = caught.value.last_exit
    assert last is not None
    assert (last.kind, last.detail) == (ExitKind.CRASH, "failed to restart")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "the last was child 'c'" in str(caught.value)
    stop, fail, start = "stop", "fail", "start"
    if strategy == "one_for_one":
        expected = [(stop, "c"), (fail, "c"), (fail, "c"), (stop, "d"), (stop, "b"), (stop, "a")]
    elif strategy == "one_for_all":
        expected = [
            *[(stop, "b"), (stop, "d"), (stop, "c"), (stop, "a"), (start, "a"), (start, "b")],
            (fail, "c"),
            *[(stop, "b"), (stop, "a"), (start, "a"), (start, "b")],
            (fail, "c"),
            *[(stop, "b"), (stop, "a")],  # giving up stops what runs, in reverse order
        ]
    else:
        expected = [
            *[(stop, "b"), (stop, "d"), (stop, "c"), (start, "b")],
            (fail, "c"),
            (fail, "c"),
            *[(stop, "b"), (stop, "a")],
        ]
    assert kinds(log, "stop", "fail", "start") == expected


async def queue_request(
    tg: anyio.abc.TaskGroup, request: Callable[[], Awaitable[object]], outcomes: list[str]
) -> None:
    """Send a dynamic-API request from its own task; it queues behind the loop's current work.

    Each request is in the supervisor's queue when this returns, so several go in in order.
    """

    async def send() -> None:
        try:
            await request()
        except (ChildStateError, ChildStartError) as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("ok")

    tg.start_soon(send)
    await settle()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_terminate_child_ends_a_retry_loop_and_leaves_nobody_restarting(
    strategy: str,
) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    gate = anyio.Event()
    async with open_supervisor(tree(log, knobs), strategy=strategy, clock=FakeClock()) as sup:
        knobs["c"].start_failures = 10**6
        knobs["c"].start_gates = [gate]
        await crash(sup, VICTIM[strategy])
        await settle()  # c's first restart waits at the gate
        before = children(sup)
        pending = await sup.ref("d").send_request(Ping())
        outcomes: list[str] = []
        async with anyio.create_task_group() as tg:
            await queue_request(tg, lambda: sup.terminate_child("c"), outcomes)
            gate.set()  # c fails; its retry is queued behind the terminate_child
        assert outcomes == ["ok"]
        await settle()
        after = children(sup)
        assert after[:2] == before[:2]  # what ran before c keeps running, untouched
        assert after[2] == ("c", "stopped", 1)
        assert sup.statistics().restarts == 1  # the retry was called off before it counted
        if strategy == "one_for_one":
            assert after[3] == ("d", "running", 1)
            assert await pending.receive() == ("d", 1, 0)
        else:
            # d waited for c's retry; with it called off, d is stopped as OTP leaves it, and
            # what was queued for it fails instead of waiting for ever.
            assert after[3] == ("d", "stopped", 1)
            with pytest.raises(ActorNotRunning):
                await pending.receive()
            assert await sup.restart_child("d") is sup.ref("d")
            assert await sup.ref("d").call(Ping()) == ("d", 2, 0)
        with pytest.raises(ChildStartError):
            await sup.restart_child("c")  # still cannot start: it stays stopped
        assert children(sup)[2] == ("c", "stopped", 1)
        knobs["c"].start_failures = 0
        await sup.restart_child("c")
        assert all(state == "running" for _, state, _ in children(sup))
        assert sup.statistics().restarts == 1  # restart_child is not a restart


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_delete_child_in_a_retry_loop(strategy: str) -> None:
    log = Log()
    knobs: dict[str, Knobs] = {}
    gates = [anyio.Event(), anyio.Event()]
    async with open_supervisor(tree(log, knobs), strategy=strategy, clock=FakeClock()) as sup:
        knobs["c"].start_failures = 1
        knobs["c"].start_gates = list(gates)
        await crash(sup, VICTIM[strategy])
        await settle()
        log.events.clear()
        outcomes: list[str] = []
        async with anyio.create_task_group() as tg:
            # Queued while c's first restart waits, so handled before c's retry: c cannot be
            # deleted while it is restarting (OTP's {error, restarting}); d can, once stopped.
            await queue_request(tg, lambda: sup.delete_child("c"), outcomes)
            await queue_request(tg, lambda: sup.terminate_child("d"), outcomes)
            await queue_request(tg, lambda: sup.delete_child("d"), outcomes)
            gates[0].set()
        assert outcomes == ["ChildStateError", "ok", "ok"]
        await settle()  # the retry of c waits at the second gate, without d
        assert [child for child, _, _ in children(sup)] == ["a", "b", "c"]
        assert children(sup)[2] == ("c", "restarting", 1)
        assert sup.statistics().restarts == 2
        gates[1].set()
        await settle()
        stop, fail, start = "stop", "fail", "start"
        if strategy == "one_for_one":
            # d ran until terminate_child stopped it; c's retry restarts only c.
            expected_log = [(fail, "c"), (stop, "d"), (start, "c")]
            expected = [("a", "running", 1), ("b", "running", 1), ("c", "running", 2)]
        elif strategy == "one_for_all":
            expected_log = [(fail, "c"), (stop, "b"), (stop, "a")]
            expected_log += [(start, "a"), (start, "b"), (start, "c")]
            expected = [("a", "running", 3), ("b", "running", 3), ("c", "running", 2)]
        else:
            expected_log = [(fail, "c"), (start, "c")]
            expected = [("a", "running", 1), ("b", "running", 2), ("c", "running", 2)]
        assert kinds(log, "stop", "fail", "start") == expected_log
        assert children(sup) == expected
        assert sup.statistics().restarts == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", range(4))
async def test_random_faults_and_requests_never_leave_a_child_restarting(
    strategy: str, seed: int
) -> None:
    """Crashes, failing starts and dynamic-API requests, several at once, in a seeded order.

    Whenever the supervisor is idle, each child is running or stopped, never ``restarting``,
    and ``alive`` agrees with ``which_children``; every request sent to a child is answered
    or fails, none waits for ever.
    """
    rng = random.Random(seed)
    log = Log()
    knobs: dict[str, Knobs] = {}
    names = "abcd"
    pending: list[PendingCall] = []

    async def crash_one(name: str) -> None:
        with contextlib.suppress(ActorExited, ActorNotRunning, ChildNotFound):
            await sup.ref(name).call(Crash())

    async def ask(name: str) -> None:
        with contextlib.suppress(ActorNotRunning, ChildNotFound):
            pending.append(await sup.ref(name).send_request(Ping()))

    async def request(name: str) -> None:
        operation = rng.choice([sup.terminate_child, sup.restart_child, sup.delete_child])
        with contextlib.suppress(ChildStateError, ChildStartError, ChildNotFound):
            await operation(name)

    operations = [crash_one, ask, request]
    async with open_supervisor(
        tree(log, knobs), strategy=strategy, intensity=10**6, clock=FakeClock()
    ) as sup:
        for _ in range(30):
            knobs[rng.choice(names)].start_failures += rng.randint(0, 2)
            async with anyio.create_task_group() as tg:
                for _ in range(rng.randint(1, 3)):
                    tg.start_soon(rng.choice(operations), rng.choice(names))
            await settle()
            for child in sup.which_children():
                assert child.state in ("running", "stopped"), (child, children(sup))
                assert sup.ref(child.id).alive is (child.state == "running")
    for call in pending:
        with contextlib.suppress(ActorNotRunning, ActorExited):
            assert (await call.receive(timeout=None))[0] in names

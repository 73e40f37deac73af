"""Supervisors: OTP's strategies, restart intensity, ordered shutdown and dynamic children.

A supervisor runs its children in one task group that outside cancellation cannot reach, so
that only the supervisor decides when, and in which order, a child stops. Each incarnation of a
child runs in its own monitor task (:func:`run_incarnation`) that turns the way it ended into
an :class:`ExitReason` and posts it to the supervisor's control loop. That one task handles
child exits, restarts and the dynamic API's requests (``terminate_child``, ``restart_child``,
``delete_child``), one event at a time; only ``start_child`` starts its child from the caller's
task. A restart whose start fails is retried through the loop for the child that failed to
start (OTP's ``try_again_restart``), so the supervisor stays responsive while it cannot start.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import deque
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, get_args

import anyio

from crucible_kitchen.errors import (
    ChildNotFound,
    ChildSpecError,
    ChildStartError,
    ChildStateError,
    RestartIntensityExceeded,
    Shutdown,
    SupervisorError,
    SupervisorNotRunning,
)

from ._actor import (
    DEFAULT_SHUTDOWN,
    Actor,
    ActorRef,
    Child,
    Incarnation,
    Slot,
    SlotState,
    _Startup,
    run_incarnation,
)
from ._exit import ExitKind, ExitReason
from ._messages import ChildCounts, ChildInfo, SupervisorStatistics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


__all__ = (
    "AutoShutdown",
    "ChildSpec",
    "RestartType",
    "Strategy",
    "Supervisor",
    "exponential_backoff",
    "open_supervisor",
)

logger = logging.getLogger("crucible_kitchen.supervisors")

RestartType: TypeAlias = Literal["permanent", "transient", "temporary"]
Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown: TypeAlias = Literal["never", "any_significant", "all_significant"]
ShutdownSpec: TypeAlias = float | Literal["brutal_kill", "infinity"] | None

BRUTAL_KILL: Final = "brutal_kill"
INFINITY: Final = "infinity"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child.

    Args:
        id: unique among the supervisor's children.
        start: called as ``start(*args)`` for every (re)start; returns a fresh :class:`Actor` or
            :class:`Supervisor`, or ``None`` to be ignored (OTP's ``ignore``: spec kept, nothing
            runs).
        args: positional arguments for ``start``.
        restart: ``permanent`` (always restarted), ``transient`` (only after a crash or a kill),
            ``temporary`` (never; its spec is dropped when it ends).
        shutdown: seconds the child may take to stop (its ``on_stop``) before it is killed,
            ``"brutal_kill"`` to kill it outright, ``"infinity"`` to wait for ever. ``None``
            means OTP's default: 5 s for an actor, ``infinity`` for a supervisor.
        significant: its own exit may shut its supervisor down (see ``auto_shutdown``). Only
            for transient and temporary children.
        mailbox_size: capacity of the actor's bounded mailbox (at least 1).
        start_timeout: seconds ``on_start`` may take before the start counts as failed.
    """

    id: str
    start: Callable[..., Actor[Any] | Supervisor | None]
    args: tuple[Any, ...] = ()
    _: KW_ONLY
    restart: RestartType = "permanent"
    shutdown: ShutdownSpec = None
    significant: bool = False
    mailbox_size: int = 64
    start_timeout: float | None = None

    def shutdown_timeout(self, *, supervisor: bool) -> float | Literal["brutal_kill"] | None:
        """Seconds to wait for the child to stop, ``"brutal_kill"``, or ``None`` for ever."""
        if self.shutdown is None:
            return None if supervisor else DEFAULT_SHUTDOWN
        if self.shutdown == INFINITY:
            return None
        return self.shutdown

    def cleanup_timeout(self) -> float | None:
        """How long an actor's ``on_stop`` may run when it ends on its own."""
        timeout = self.shutdown_timeout(supervisor=False)
        return DEFAULT_SHUTDOWN if isinstance(timeout, str) else timeout


def exponential_backoff(
    initial: float = 0.01, factor: float = 2.0, maximum: float = 1.0, jitter: float = 0.1
) -> Callable[[int], float]:
    """A restart delay that grows with the restarts in the current intensity window.

    The n-th restart in the window waits ``min(maximum, initial * factor**(n-1))`` seconds,
    spread by up to ``jitter`` (a fraction) so that siblings don't restart in lockstep.
    """
    rng = random.Random()

    def delay(restarts_in_window: int) -> float:
        base = min(maximum, initial * factor ** max(0, restarts_in_window - 1))
        return base * (1.0 + jitter * (2.0 * rng.random() - 1.0))

    return delay


class _ChildExited:
    __slots__ = ("incarnation",)

    def __init__(self, incarnation: Incarnation) -> None:
        self.incarnation = incarnation


class _RetryRestart:
    """Time to restart ``slot``, unless it was called off (see ``Supervisor._pending``)."""

    __slots__ = ("counted", "slot")

    def __init__(self, slot: Slot, *, counted: bool) -> None:
        self.slot = slot
        self.counted = counted
        """The restart was already counted against intensity (a delayed first attempt)."""


class _StopRequested:
    __slots__ = ()


class _ApiRequest:
    """A dynamic-API operation, run by the control loop; the caller waits for ``done``."""

    __slots__ = ("done", "error", "operation", "value")

    def __init__(self, operation: Callable[[], Awaitable[Any]]) -> None:
        self.operation = operation
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


_Event: TypeAlias = _ChildExited | _RetryRestart | _StopRequested | _ApiRequest

_CHILD_STATES: Final[dict[SlotState, Literal["running", "restarting", "stopped"]]] = {
    SlotState.RUNNING: "running",
    SlotState.RESTARTING: "restarting",
    SlotState.STOPPED: "stopped",
    SlotState.DELETED: "stopped",
}
_STRATEGIES: Final = get_args(Strategy)
_RESTART_TYPES: Final = get_args(RestartType)
_AUTO_SHUTDOWNS: Final = get_args(AutoShutdown)


def _spec_problems(spec: object, auto_shutdown: str) -> list[str]:
    if not isinstance(spec, ChildSpec):
        return [f"child spec must be a ChildSpec, not {type(spec).__name__}"]
    where = f"child {spec.id!r}"
    problems = []
    # Specs come from users at run time, so check even what the type hints promise.
    if not isinstance(spec.id, str) or not spec.id:
        problems.append(f"{where}: id must be a non-empty string")
    if not callable(spec.start):
        problems.append(f"{where}: start must be callable")  # type: ignore[unreachable]
    if spec.restart not in _RESTART_TYPES:
        problems.append(f"{where}: restart must be one of {_RESTART_TYPES}, not {spec.restart!r}")
    shutdown = spec.shutdown
    if not (
        shutdown is None
        or shutdown in (BRUTAL_KILL, INFINITY)
        or (isinstance(shutdown, int | float) and not isinstance(shutdown, bool) and shutdown >= 0)
    ):
        problems.append(
            f"{where}: shutdown must be seconds >= 0, 'brutal_kill' or 'infinity', not {shutdown!r}"
        )
    if not isinstance(spec.significant, bool):
        problems.append(  # type: ignore[unreachable]
            f"{where}: significant must be a bool, not {spec.significant!r}"
        )
    elif spec.significant:
        if spec.restart == "permanent":
            problems.append(f"{where}: a permanent child cannot be significant")
        if auto_shutdown == "never":
            problems.append(f"{where}: significant children need auto_shutdown other than 'never'")
    if not isinstance(spec.mailbox_size, int) or spec.mailbox_size < 1:
        problems.append(f"{where}: mailbox_size must be an integer >= 1")
    if spec.start_timeout is not None and not spec.start_timeout > 0:
        problems.append(f"{where}: start_timeout must be None or > 0")
    return problems


class Supervisor(Child):
    """Starts children, watches them, and restarts them by its strategy (OTP's supervisor).

    Args:
        children: started in order; the supervisor is ready once all of them are.
        strategy: ``one_for_one`` restarts the child that ended; ``one_for_all`` stops the
            others (in reverse start order) and restarts all; ``rest_for_one`` does that for
            the children started after it.
        intensity, period: more than ``intensity`` restarts within ``period`` seconds, counted
            across all children, and the supervisor stops every child and exits with
            ``shutdown`` (raising :class:`RestartIntensityExceeded`), escalating to its parent.
            Defaults are Elixir's: 3 in 5 s.
        auto_shutdown: ``any_significant`` / ``all_significant``: the supervisor shuts down
            when any / the last significant child ends by itself and is not restarted.
        backoff: ``backoff(n)`` seconds to wait before the n-th restart in the window (see
            :func:`exponential_backoff`); default: restart at once.
        max_children: a limit for :meth:`start_child`.
        name: for logs, errors and statistics.
        clock: seconds, monotonic; defaults to ``anyio.current_time`` (which follows trio's
            ``MockClock``).

    Raises:
        ChildSpecError: listing every problem with the flags and the child specs at once.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        intensity: int = 3,
        period: float = 5.0,
        auto_shutdown: AutoShutdown = "never",
        backoff: Callable[[int], float] | None = None,
        max_children: int | None = None,
        name: str = "supervisor",
        clock: Callable[[], float] | None = None,
    ) -> None:
        specs = list(children)
        problems = []
        if strategy not in _STRATEGIES:
            problems.append(f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
        if not isinstance(intensity, int) or isinstance(intensity, bool) or intensity < 0:
            problems.append(f"intensity must be an integer >= 0, not {intensity!r}")
        if not isinstance(period, int | float) or isinstance(period, bool) or not period > 0:
            problems.append(f"period must be seconds > 0, not {period!r}")
        if auto_shutdown not in _AUTO_SHUTDOWNS:
            problems.append(
                f"auto_shutdown must be one of {_AUTO_SHUTDOWNS}, not {auto_shutdown!r}"
            )
        if max_children is not None and (not isinstance(max_children, int) or max_children < 0):
            problems.append(f"max_children must be None or an integer >= 0, not {max_children!r}")
        elif max_children is not None and len(specs) > max_children:
            problems.append(f"{len(specs)} children exceed max_children={max_children}")
        seen: set[str] = set()
        for spec in specs:
            problems.extend(_spec_problems(spec, auto_shutdown))
            if isinstance(spec, ChildSpec):
                if spec.id in seen:
                    problems.append(f"child {spec.id!r}: duplicate child id")
                seen.add(spec.id)
        if problems:
            raise ChildSpecError(problems)
        self.name = name
        self.strategy: Strategy = strategy
        self.intensity = intensity
        self.period = float(period)
        self.auto_shutdown: AutoShutdown = auto_shutdown
        self.max_children = max_children
        self._initial_specs = specs
        self._backoff = backoff
        self._clock = clock or anyio.current_time
        self._slots: list[Slot] = []
        self._by_id: dict[str, Slot] = {}
        self._restarts: deque[float] = deque()
        self._pending: dict[Slot, _RetryRestart] = {}
        """Children whose restart is queued or delayed, and the event that will run it."""
        self._restart_total = 0
        self._state: Literal["created", "starting", "running", "stopping", "stopped"] = "created"
        self._incarnation: Incarnation | None = None
        self._events: (
            tuple[MemoryObjectSendStream[_Event], MemoryObjectReceiveStream[_Event]] | None
        ) = None
        self._children_tg: anyio.abc.TaskGroup | None = None
        self._timers_tg: anyio.abc.TaskGroup | None = None
        self._stopped = anyio.Event()

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy} {self._state}>"

    # ---------------------------------------------------------------- running as the root

    async def serve(
        self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run this supervisor as the root of a tree until it stops.

        Use as ``await task_group.start(supervisor.serve)``: that returns once every child
        has started. Cancelling the task stops the tree in order (reverse start order, each
        child within its shutdown timeout) before the cancellation propagates.

        Raises:
            ChildStartError: a child failed to start; those already started were stopped.
            RestartIntensityExceeded: the supervisor gave up.
        """
        incarnation = Incarnation(None, self, 1)
        startup = _Startup()
        try:
            async with anyio.create_task_group() as host:
                incarnation.task = host.create_task(
                    run_incarnation(incarnation, startup, None), name=f"sup:{self.name}"
                )
                await startup.event.wait()
                if startup.error is None:
                    task_status.started(self)
                    try:
                        await incarnation.exited.wait()
                    except anyio.get_cancelled_exc_class():
                        with anyio.CancelScope(shield=True):
                            incarnation.request_stop()
                            await incarnation.exited.wait()
                        raise
        except anyio.get_cancelled_exc_class():
            if incarnation.done:
                _raise_if_gave_up(incarnation)  # a failure outranks the cancellation
            raise
        if startup.error is not None:
            raise startup.error
        _raise_if_gave_up(incarnation)

    async def stop(self) -> None:
        """Stop every child in reverse start order, then the supervisor; wait until done."""
        incarnation = self._incarnation
        if incarnation is None or incarnation.done:
            return
        incarnation.request_stop()
        await incarnation.exited.wait()

    def kill(self) -> None:
        """Kill the supervisor and its whole subtree at once, skipping every cleanup."""
        if self._incarnation is not None:
            self._incarnation.kill()

    async def wait(self) -> ExitReason:
        """Wait until the supervisor has stopped and return its exit reason."""
        await self._stopped.wait()
        assert self._incarnation is not None
        assert self._incarnation.reason is not None
        return self._incarnation.reason

    # ---------------------------------------------------------------- the child protocol

    async def _ck_run(self, incarnation: Incarnation, ready: Callable[[], None]) -> None:
        if self._state != "created":
            raise SupervisorError(
                f"supervisor {self.name!r} was already started; a ChildSpec's start function "
                "must return a new Supervisor each time"
            )
        self._incarnation = incarnation
        self._events = events = anyio.create_memory_object_stream[_Event](math.inf)
        outcome: BaseException | None = None
        try:
            async with anyio.create_task_group() as children:
                children.cancel_scope.shield = True  # only this supervisor stops its children
                self._children_tg = children
                try:
                    async with anyio.create_task_group() as timers:
                        self._timers_tg = timers
                        self._state = "starting"
                        try:
                            for spec in self._initial_specs:
                                await self._add_and_start(spec)
                        except ChildStartError as exc:
                            outcome = exc
                        else:
                            self._state = "running"
                            ready()
                            outcome = await self._control_loop()
                        self._state = "stopping"
                        await self._terminate_all()
                        timers.cancel_scope.cancel()
                except BaseException:
                    # The loop itself failed (e.g. a child let SystemExit escape): no orderly
                    # shutdown will come, and the shield keeps every other cancel out.
                    self._kill_children()
                    raise
        finally:
            self._state = "stopped"
            events[0].close()
            refused = SupervisorNotRunning(f"supervisor {self.name!r} stopped")
            while True:  # nobody will run the requests still queued: tell their callers
                try:
                    event = events[1].receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                if isinstance(event, _ApiRequest):
                    event.fail(refused)
            events[1].close()
            last = ExitReason(ExitKind.SHUTDOWN, "supervisor stopped")
            for slot in self._slots:
                slot.close_mailbox(slot.last_exit or last)
            self._stopped.set()
        if outcome is not None:
            raise outcome

    def _ck_request_stop(self, incarnation: Incarnation) -> None:
        self._post(_StopRequested())

    def _ck_kill(self, incarnation: Incarnation) -> None:
        if self._state == "running":
            self._state = "stopping"  # requests in progress end with SupervisorNotRunning
        self._kill_children()
        incarnation.cancel()

    def _kill_children(self) -> None:
        for slot in self._slots:
            if slot.incarnation is not None:
                slot.incarnation.kill()
        if self._children_tg is not None:
            self._children_tg.cancel_scope.cancel()

    # ---------------------------------------------------------------- the control loop

    def _post(self, event: _Event) -> None:
        # Once the supervisor has stopped, nobody is left to act on an event.
        if self._events is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._events[0].send_nowait(event)

    def _child_exited(self, incarnation: Incarnation) -> None:
        self._post(_ChildExited(incarnation))

    async def _post_later(self, delay: float, event: _Event) -> None:
        await anyio.sleep(delay)
        self._post(event)

    async def _control_loop(self) -> BaseException | None:
        """Handle events one at a time until the supervisor must stop; return what to raise."""
        assert self._events is not None
        async for event in self._events[1]:
            if isinstance(event, _StopRequested):
                return None
            if isinstance(event, _ApiRequest):
                try:
                    event.value = await event.operation()
                except Exception as exc:
                    event.error = exc if self._state == "running" else self._not_running(exc)
                except BaseException:  # killed meanwhile: the caller must not wait for ever
                    event.fail(self._not_running())
                    raise
                event.done.set()
                continue
            if isinstance(event, _ChildExited):
                outcome = await self._on_child_exited(event.incarnation)
            else:
                outcome = await self._on_retry(event)
            if outcome is not None:
                return outcome
        return None

    async def _on_child_exited(self, incarnation: Incarnation) -> BaseException | None:
        slot = incarnation.slot
        reason = incarnation.reason
        assert slot is not None
        assert reason is not None
        if slot.incarnation is not incarnation:
            return None  # stale: already terminated or replaced by this supervisor
        slot.incarnation = None
        slot.last_exit = reason
        restart = slot.spec.restart
        if reason.abnormal:  # OTP's child_terminated report, whatever the restart type
            logger.warning(
                "supervisor %r: child %r (%s) terminated: %s",
                self.name,
                slot.id,
                restart,
                reason,
                exc_info=reason.error if reason.kind is ExitKind.CRASH else None,
            )
        if restart == "permanent" or (restart == "transient" and reason.abnormal):
            slot.state = SlotState.RESTARTING
            return await self._restart(slot, reason)
        if restart == "temporary":
            self._remove(slot, reason)
        else:
            slot.state = SlotState.STOPPED
            slot.drain(reason)
        if slot.spec.significant and self._auto_shutdown_due():
            logger.info(
                "supervisor %r: significant child %r ended; shutting down", self.name, slot.id
            )
            return Shutdown("auto_shutdown")
        return None

    async def _on_retry(self, event: _RetryRestart) -> BaseException | None:
        slot = event.slot
        if self._pending.get(slot) is not event:
            return None  # called off (terminated), or restarted along with a sibling
        del self._pending[slot]
        if self._by_id.get(slot.id) is not slot or slot.state is not SlotState.RESTARTING:
            return None
        if event.counted:
            await self._attempt_restart(slot)
            return None
        assert slot.last_exit is not None
        return await self._restart(slot, slot.last_exit)

    def _schedule_restart(self, slot: Slot, *, counted: bool, delay: float = 0.0) -> None:
        """Restart ``slot`` through the control loop, after ``delay`` seconds.

        A child has at most one restart on its way: a second request joins it (and is counted
        when it runs unless both were counted already).
        """
        queued = self._pending.get(slot)
        if queued is not None:
            queued.counted = queued.counted and counted
            return
        self._pending[slot] = event = _RetryRestart(slot, counted=counted)
        if delay > 0:
            assert self._timers_tg is not None
            self._timers_tg.start_soon(self._post_later, delay, event)
        else:
            self._post(event)

    def _add_restart(self) -> bool:
        """OTP's ``add_restart``: count a restart; True if that exceeds the intensity."""
        now = self._clock()
        window = self._restarts
        while window and window[-1] < now - self.period:
            window.pop()
        window.appendleft(now)
        self._restart_total += 1
        return len(window) > self.intensity

    async def _restart(self, slot: Slot, reason: ExitReason) -> BaseException | None:
        if self._add_restart():
            logger.error(
                "supervisor %r: reached max restart intensity (%d in %g s); last exit of %r: %s",
                self.name,
                self.intensity,
                self.period,
                slot.id,
                reason,
            )
            error = RestartIntensityExceeded(
                f"supervisor {self.name!r} gave up: more than {self.intensity} restarts in "
                f"{self.period:g} s; the last was child {slot.id!r}, which exited: {reason}",
                supervisor=self.name,
                last_exit=reason,
            )
            error.__cause__ = reason.error
            return error
        delay = self._backoff(len(self._restarts)) if self._backoff is not None else 0.0
        if delay > 0:
            self._schedule_restart(slot, counted=True, delay=delay)
            return None
        await anyio.lowlevel.checkpoint()  # a restart storm must not starve the event loop
        await self._attempt_restart(slot)
        return None

    def _group(self, slot: Slot) -> list[Slot]:
        """The children that the strategy restarts along with ``slot``, in start order."""
        if self.strategy == "one_for_one":
            return [slot]
        if self.strategy == "one_for_all":
            return list(self._slots)
        return self._slots[self._slots.index(slot) :]

    async def _attempt_restart(self, target: Slot) -> None:
        """Restart ``target`` and its group: stop those running (reverse order), start all.

        As OTP's ``restart_multiple_children``: when a child fails to start, the children
        before it keep running, it and those after it wait (``restarting``), and the retry is
        aimed at it, so under ``rest_for_one`` only it and those after it are restarted again.
        """
        # A child that start_child is starting (from its caller's task) is left to it.
        group = [
            s
            for s in self._group(target)
            if s.incarnation is None or s.state is not SlotState.RESTARTING
        ]
        for slot in group:
            self._pending.pop(slot, None)  # this attempt restarts them all
        for slot in reversed(group):
            if slot.incarnation is not None:
                await self._terminate(slot, SlotState.RESTARTING)
                if slot.spec.restart == "temporary":  # OTP-07: not restarted, spec removed
                    self._remove(slot, slot.last_exit or ExitReason(ExitKind.SHUTDOWN))
        starting = [s for s in group if self._by_id.get(s.id) is s and s.incarnation is None]
        for slot in starting:
            slot.state = SlotState.RESTARTING  # messages sent to them wait for them
        for slot in starting:
            try:
                await self._start_incarnation(slot)
            except ChildStartError as exc:
                logger.warning(
                    "supervisor %r: restart of %r failed; will retry: %s",
                    self.name,
                    slot.id,
                    exc.cause,
                )
                slot.last_exit = ExitReason(ExitKind.CRASH, "failed to restart", exc.cause)
                self._schedule_restart(slot, counted=False)
                return

    def _stop_abandoned(self) -> None:
        """Stop the children left waiting for a restart that no longer comes.

        After ``terminate_child`` ended a retry loop, the children that waited for it are
        stopped, as OTP leaves them not running; a later group restart starts them again.
        """
        covered = self.strategy == "one_for_all" and bool(self._pending)
        for slot in self._slots:
            if slot in self._pending:
                covered = covered or self.strategy == "rest_for_one"
            elif not covered and slot.state is SlotState.RESTARTING and slot.incarnation is None:
                slot.state = SlotState.STOPPED
                slot.drain(slot.last_exit or ExitReason(ExitKind.SHUTDOWN))

    def _auto_shutdown_due(self) -> bool:
        if self.auto_shutdown == "any_significant":
            return True
        if self.auto_shutdown == "all_significant":
            return not any(
                s.spec.significant and s.state in (SlotState.RUNNING, SlotState.RESTARTING)
                for s in self._slots
            )
        return False

    # ---------------------------------------------------------------- starting and stopping

    async def _add_and_start(self, spec: ChildSpec) -> ActorRef[Any] | Supervisor | None:
        if self.max_children is not None and len(self._slots) >= self.max_children:
            raise SupervisorError(f"supervisor {self.name!r} already has max_children children")
        slot = Slot(spec)
        self._slots.append(slot)
        self._by_id[spec.id] = slot
        try:
            started = await self._start_incarnation(slot)
        except BaseException as exc:
            cause = exc.cause if isinstance(exc, ChildStartError) else exc
            self._remove(slot, ExitReason(ExitKind.CRASH, "failed to start", cause))
            raise
        if started is None and spec.restart == "temporary":
            self._remove(slot, ExitReason(ExitKind.NORMAL, "ignored"))
        return started

    async def _start_incarnation(self, slot: Slot) -> ActorRef[Any] | Supervisor | None:
        """Start one incarnation and wait until it is ready. Raises ChildStartError."""
        spec = slot.spec
        try:
            instance = spec.start(*spec.args)
            if instance is not None and not isinstance(instance, Child):
                raise TypeError(
                    f"start function returned {type(instance).__name__}, "
                    "expected an Actor, a Supervisor or None"
                )
        except Exception as exc:
            raise self._start_error(slot, exc) from exc
        if instance is None:
            slot.state = SlotState.STOPPED
            return None
        slot.is_supervisor = isinstance(instance, Supervisor)
        if isinstance(instance, Actor):
            slot.open_mailbox()
            slot.accepts = type(instance)._ck_accepts
        slot.state = SlotState.RESTARTING  # messages sent while it starts are queued for it
        incarnation = Incarnation(slot, instance, slot.incarnations + 1)
        startup = _Startup()
        slot.incarnation = incarnation
        assert self._children_tg is not None
        incarnation.task = self._children_tg.create_task(
            run_incarnation(incarnation, startup, self._child_exited), name=slot.id
        )
        try:
            if spec.start_timeout is None:
                await startup.event.wait()
            else:
                with anyio.move_on_after(spec.start_timeout):
                    await startup.event.wait()
                startup.fail(TimeoutError(f"not ready within {spec.start_timeout} s"))
        finally:  # timed out, or the starter was cancelled: the half-started child must go
            if not startup.succeeded:
                startup.fail(RuntimeError("the start was abandoned"))
                incarnation.kill()
                with anyio.CancelScope(shield=True):
                    await incarnation.exited.wait()
                if slot.incarnation is incarnation:
                    slot.incarnation = None
                    slot.last_exit = incarnation.reason
        if not startup.succeeded:
            assert startup.error is not None
            raise self._start_error(slot, startup.error) from startup.error
        slot.state = SlotState.RUNNING
        slot.incarnations = incarnation.number
        return instance if isinstance(instance, Supervisor) else slot.ref

    def _start_error(self, slot: Slot, cause: BaseException) -> ChildStartError:
        return ChildStartError(
            f"supervisor {self.name!r}: child {slot.id!r} failed to start: "
            f"{type(cause).__name__}: {cause}",
            child_id=slot.id,
            cause=cause,
        )

    async def _terminate(self, slot: Slot, next_state: SlotState) -> None:
        """Stop one child within its shutdown spec; kill it when the time is up."""
        incarnation = slot.incarnation
        if incarnation is not None:
            timeout = slot.spec.shutdown_timeout(supervisor=bool(slot.is_supervisor))
            if timeout == BRUTAL_KILL:
                incarnation.stopping = True
                incarnation.kill()
            else:
                incarnation.request_stop()
                if timeout is not None:
                    with anyio.move_on_after(timeout):
                        await incarnation.exited.wait()
                    if not incarnation.done:
                        logger.warning(
                            "supervisor %r: child %r did not stop within %g s; killing",
                            self.name,
                            slot.id,
                            timeout,
                        )
                        incarnation.kill()
            await incarnation.exited.wait()
            reason = incarnation.reason
            assert reason is not None
            if reason.kind not in (ExitKind.SHUTDOWN, ExitKind.NORMAL) and timeout != BRUTAL_KILL:
                logger.warning(
                    "supervisor %r: shutdown_error: child %r exited: %s", self.name, slot.id, reason
                )
            slot.incarnation = None
            slot.last_exit = reason
        slot.state = next_state
        if next_state is SlotState.STOPPED:
            slot.drain(slot.last_exit or ExitReason(ExitKind.SHUTDOWN))

    async def _terminate_all(self) -> None:
        for slot in reversed(self._slots):
            await self._terminate(slot, SlotState.STOPPED)

    def _remove(self, slot: Slot, reason: ExitReason) -> None:
        self._slots.remove(slot)
        del self._by_id[slot.id]
        slot.close_mailbox(reason)

    # ---------------------------------------------------------------- the dynamic API

    def _running(self) -> None:
        if self._state != "running":
            raise self._not_running()

    def _not_running(self, cause: Exception | None = None) -> SupervisorNotRunning:
        error = SupervisorNotRunning(f"supervisor {self.name!r} is {self._state}")
        error.__cause__ = cause
        return error

    def _slot(self, child_id: str) -> Slot:
        try:
            return self._by_id[child_id]
        except KeyError:
            raise ChildNotFound(child_id) from None

    async def _request(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``operation`` in the control loop, between the handling of two events.

        All changes to the children happen in that one task, in order, so a caller that is
        cancelled (or is itself the child being stopped) cannot leave them half done.
        """
        self._running()
        request = _ApiRequest(operation)
        self._post(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.value

    async def start_child(self, spec: ChildSpec) -> ActorRef[Any] | Supervisor | None:
        """Add a child and start it; return once it is ready.

        Returns:
            The actor's reference, the child supervisor, or ``None`` if its start function
            returned ``None`` (ignored; the spec is kept unless temporary).

        Raises:
            ChildSpecError: the spec is invalid.
            ChildStateError: a child with that id exists (``"running"`` or
                ``"already_present"``).
            ChildStartError: the child failed to start; its spec is not kept.
            SupervisorNotRunning: the supervisor is not running, or stopped (or was killed)
                while the child was starting.
        """
        problems = _spec_problems(spec, self.auto_shutdown)
        if problems:
            raise ChildSpecError(problems)

        self._running()  # from here to the start of the child nothing awaits: no race
        existing = self._by_id.get(spec.id)
        if existing is not None:
            raise ChildStateError(
                f"supervisor {self.name!r} already has a child {spec.id!r}",
                child_id=spec.id,
                state="running" if existing.state is SlotState.RUNNING else "already_present",
            )
        # Started from the caller's task (a spawn costs about one task switch, as
        # TaskGroup.start does): a caller cancelled meanwhile kills the half-started child and
        # leaves no spec behind.
        try:
            return await self._add_and_start(spec)
        except ChildStartError as exc:
            if self._state != "running":  # stopped or killed while the child was starting
                raise self._not_running() from exc
            raise

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (its spec is kept, unless temporary). Never triggers auto shutdown."""

        async def terminate() -> None:
            slot = self._slot(child_id)
            self._pending.pop(slot, None)  # a restart on its way is called off
            await self._terminate(slot, SlotState.STOPPED)
            if slot.spec.restart == "temporary":
                self._remove(slot, slot.last_exit or ExitReason(ExitKind.SHUTDOWN))
            self._stop_abandoned()

        await self._request(terminate)

    async def restart_child(self, child_id: str) -> ActorRef[Any] | Supervisor | None:
        """Start a stopped child again from its spec.

        Raises:
            ChildNotFound: no such child.
            ChildStateError: it is ``"running"`` or ``"restarting"``.
            ChildStartError: it failed to start (it stays stopped).
        """

        async def restart() -> ActorRef[Any] | Supervisor | None:
            slot = self._stopped_slot(child_id)
            try:
                return await self._start_incarnation(slot)
            except ChildStartError:
                slot.state = SlotState.STOPPED
                slot.drain(slot.last_exit or ExitReason(ExitKind.SHUTDOWN))
                raise

        return await self._request(restart)  # type: ignore[no-any-return]

    async def delete_child(self, child_id: str) -> None:
        """Forget a stopped child's spec.

        Raises:
            ChildNotFound: no such child.
            ChildStateError: it is ``"running"`` or ``"restarting"``.
        """

        async def delete() -> None:
            slot = self._stopped_slot(child_id)
            self._remove(slot, slot.last_exit or ExitReason(ExitKind.SHUTDOWN))

        await self._request(delete)

    def _stopped_slot(self, child_id: str) -> Slot:
        slot = self._slot(child_id)
        if slot.state is not SlotState.STOPPED:
            raise ChildStateError(
                f"child {child_id!r} is {slot.state.value}",
                child_id=child_id,
                state=slot.state.value,
            )
        return slot

    def ref(self, child_id: str) -> ActorRef[Any]:
        """The reference of an actor child (valid across its restarts)."""
        slot = self._slot(child_id)
        if slot.ref is None:
            raise ChildStateError(
                f"child {child_id!r} is not an actor", child_id=child_id, state=slot.state.value
            )
        return slot.ref

    def child_supervisor(self, child_id: str) -> Supervisor:
        """The running incarnation of a supervisor child."""
        slot = self._slot(child_id)
        incarnation = slot.incarnation
        if incarnation is None or not isinstance(incarnation.instance, Supervisor):
            raise ChildStateError(
                f"child {child_id!r} is not a running supervisor",
                child_id=child_id,
                state=slot.state.value,
            )
        return incarnation.instance

    def get_childspec(self, child_id: str) -> ChildSpec:
        """The spec a child was started from."""
        return self._slot(child_id).spec

    def which_children(self) -> list[ChildInfo]:
        """Every child in start order, with its kind and state."""
        return [
            ChildInfo(
                id=slot.id,
                kind=None
                if slot.is_supervisor is None
                else "supervisor"
                if slot.is_supervisor
                else "worker",
                restart=slot.spec.restart,
                state=_CHILD_STATES[slot.state],
                incarnation=slot.incarnations,
            )
            for slot in self._slots
        ]

    def count_children(self) -> ChildCounts:
        """How many specs, running children, supervisors and workers (OTP's count).

        ``supervisors + workers == specs``: a child that never ran (ignored) counts as a worker,
        OTP's default child type.
        """
        supervisors = sum(1 for s in self._slots if s.is_supervisor)
        return ChildCounts(
            specs=len(self._slots),
            active=sum(1 for s in self._slots if s.state is SlotState.RUNNING),
            supervisors=supervisors,
            workers=len(self._slots) - supervisors,
        )

    def statistics(self) -> SupervisorStatistics:
        """A snapshot of the children and the restart history."""
        now = self._clock()
        return SupervisorStatistics(
            supervisor=self.name,
            strategy=self.strategy,
            children=len(self._slots),
            active=sum(1 for s in self._slots if s.state is SlotState.RUNNING),
            restarts=self._restart_total,
            restarts_in_window=sum(1 for t in self._restarts if t >= now - self.period),
            intensity=self.intensity,
            period=self.period,
        )


def _raise_if_gave_up(incarnation: Incarnation) -> None:
    reason = incarnation.reason
    assert reason is not None
    if reason.error is not None and (
        reason.kind is ExitKind.CRASH or isinstance(reason.error, RestartIntensityExceeded)
    ):
        raise reason.error


class open_supervisor:
    """Run a root supervisor for the duration of an ``async with`` block.

    ::

        async with open_supervisor([ChildSpec("counter", Counter)]) as supervisor:
            await supervisor.ref("counter").call(Read())

    Entering returns once every child has started. Leaving stops the tree in reverse start
    order. If the supervisor gives up while the block runs, the block is cancelled and
    :class:`RestartIntensityExceeded` is raised from the ``async with``; an error raised by the
    block comes out as itself, not wrapped in an exception group.
    """

    def __init__(self, children: Iterable[ChildSpec] = (), **flags: Any) -> None:
        self._supervisor = Supervisor(children, **flags)
        self._host: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Supervisor:
        self._host = host = anyio.create_task_group()
        await host.__aenter__()
        try:
            await host.start(self._supervisor.serve)
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise AssertionError("unreachable") from exc  # _close always raises here
        return self._supervisor

    async def __aexit__(self, *exc_info: Any) -> bool:
        return await self._close(*exc_info)

    async def _close(self, *exc_info: Any) -> bool:
        assert self._host is not None
        with anyio.CancelScope(shield=True):
            await self._supervisor.stop()
        try:
            return bool(await self._host.__aexit__(*exc_info))
        except BaseExceptionGroup as group:
            interrupts, _ = group.split((KeyboardInterrupt, SystemExit))
            error = _first_leaf(interrupts) if interrupts else None
            if error is None and len(group.exceptions) == 1:
                error = group.exceptions[0]
            if error is None:
                raise
            error.__suppress_context__ = True
            raise error from error.__cause__


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first

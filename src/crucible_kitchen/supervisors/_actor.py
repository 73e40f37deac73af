"""Actors: a task with a supervisor-owned mailbox, ``call``/``cast``, monitors and statistics.

An actor lives in a *child slot* of its supervisor. The slot owns the mailbox, so messages queued
for an actor survive its restarts; each start of the actor is one *incarnation* of the slot.
An :class:`ActorRef` points at the slot, so it stays valid across restarts.
"""

from __future__ import annotations

import enum
import logging
from contextvars import ContextVar
from types import UnionType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, Union, final, get_args
from typing import get_origin as _get_origin

import anyio

from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    CallTimeout,
    CallToSelf,
    MailboxFull,
    MessageTypeError,
)

from ._exit import NOPROC, ExitKind, ExitReason, classify_exit
from ._mailbox import Mailbox, wait_event
from ._messages import ActorStatistics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio import TaskHandle

    from ._supervisor import ChildSpec

__all__ = ("Actor", "ActorRef", "Monitor", "PendingCall", "ReplyHandle")

M = TypeVar("M")

logger = logging.getLogger("crucible_kitchen.supervisors")

DEFAULT_CALL_TIMEOUT: Final = 5.0
"""OTP's default: ``gen_server:call/2`` waits 5 s."""
DEFAULT_SHUTDOWN: Final = 5.0
"""Seconds a worker's cleanup may take when its spec does not say (OTP's 5000 ms)."""

_SELF: Final[ContextVar[Slot | None]] = ContextVar("crucible_kitchen_actor_self", default=None)
"""The actor whose ``on_start`` or message loop runs in this task (or in the task that started
this one): a call from here to that actor could never be answered."""


class SlotState(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    """Dead, and its supervisor has not yet decided or finished restarting it: sends queue."""
    STOPPED = "stopped"
    """Not running, spec kept (terminated, ignored, or a transient that ended normally)."""
    DELETED = "deleted"


class _Call:
    """One request/reply: the message, and a one-shot reply slot owned by the caller."""

    __slots__ = ("abandoned", "done", "error", "message", "value")

    def __init__(self, message: object, done: anyio.Event) -> None:
        self.message = message
        self.done = done
        self.value: object = None
        self.error: BaseException | None = None
        self.abandoned = False

    def resolve(self, value: object) -> None:
        if not self.done.is_set():  # the first outcome wins; a late reply is dropped
            self.value = value
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    def result(self) -> Any:
        """The reply, or the error raised in its place (once ``done`` is set)."""
        if self.error is not None:
            raise self.error
        return self.value


class _Startup:
    """The start handshake: the child calls ``ready()``, or the starter learns why not."""

    __slots__ = ("error", "event", "succeeded")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.succeeded = False
        self.error: BaseException | None = None

    def ready(self) -> None:
        if not self.event.is_set():  # a start that already timed out stays failed
            self.succeeded = True
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class Slot:
    """A supervisor's place for one child: its spec, mailbox and current incarnation."""

    __slots__ = (
        "accepts",
        "calls_handled",
        "casts_handled",
        "dead_letters",
        "incarnation",
        "incarnations",
        "is_supervisor",
        "last_exit",
        "mailbox",
        "ref",
        "spec",
        "state",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = SlotState.STOPPED
        self.incarnation: Incarnation | None = None
        self.incarnations = 0
        self.is_supervisor: bool | None = None
        self.accepts: tuple[type, ...] | None = None
        self.last_exit: ExitReason | None = None
        self.calls_handled = 0
        self.casts_handled = 0
        self.dead_letters = 0
        self.mailbox: Mailbox[object] | None = None
        self.ref: ActorRef[Any] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def open_mailbox(self) -> None:
        if self.mailbox is None:
            self.mailbox = Mailbox(self.spec.mailbox_size)
            self.ref = ActorRef(self)

    def drain(self, reason: ExitReason) -> None:
        """Fail every queued call and count every queued cast: nobody will read them.

        A queued call never reached an incarnation, so it fails with ``ActorNotRunning``
        (OTP's ``noproc``); the actor's last exit is its cause.
        """
        if self.mailbox is None:
            return
        error: ActorNotRunning | None = None
        while True:
            try:
                item = self.mailbox.get_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            if type(item) is _Call:
                if error is None:
                    error = ActorNotRunning(
                        f"actor {self.id!r} stopped ({reason}) before it got to the call",
                        actor=self.id,
                    )
                    error.__cause__ = reason.error
                item.fail(error)
            else:
                self.dead_letters += 1

    def close_mailbox(self, reason: ExitReason) -> None:
        self.state = SlotState.DELETED
        if self.mailbox is not None:
            self.mailbox.close()
        self.drain(reason)


def _exited_error(actor: str, reason: ExitReason) -> ActorExited:
    error = ActorExited(
        f"actor {actor!r} exited before replying: {reason}", actor=actor, reason=reason
    )
    error.__cause__ = reason.error
    return error


class Incarnation:
    """One start of a child: its instance, its task, pending calls and exit."""

    __slots__ = (
        "_exited",
        "cleanup_scope",
        "current_call",
        "deferred",
        "done",
        "instance",
        "killed",
        "number",
        "reason",
        "slot",
        "stopping",
        "task",
    )

    def __init__(self, slot: Slot | None, instance: Child, number: int) -> None:
        self.slot = slot
        self.instance = instance
        self.number = number
        self.task: TaskHandle[None] | None = None
        """Set by whoever spawns it; cancelling it is how a child is stopped or killed."""
        self.cleanup_scope: anyio.CancelScope | None = None
        """Bounds ``on_stop``; a kill cancels it too."""
        self.done = False
        self._exited: anyio.Event | None = None
        self.reason: ExitReason | None = None
        self.stopping = False
        """Its supervisor asked it to stop: the exit is expected, not a reason to restart."""
        self.killed = False
        self.current_call: _Call | None = None
        self.deferred: set[_Call] = set()

    @property
    def name(self) -> str:
        return "<root>" if self.slot is None else self.slot.id

    @property
    def exited(self) -> anyio.Event:
        """Set once the incarnation has ended (made on first use: most are never awaited)."""
        if self._exited is None:
            self._exited = anyio.Event()
            if self.done:
                self._exited.set()
        return self._exited

    def request_stop(self) -> None:
        self.stopping = True
        self.instance._ck_request_stop(self)

    def kill(self) -> None:
        if not self.done:
            self.killed = True
            self.instance._ck_kill(self)
            if self.cleanup_scope is not None:
                self.cleanup_scope.cancel()

    def cancel(self) -> None:
        assert self.task is not None
        self.task.cancel()

    def reason_when_returned(self) -> ExitReason:
        if self.killed:
            return ExitReason(ExitKind.KILLED, "killed")
        if self.stopping:
            return ExitReason(ExitKind.SHUTDOWN)
        return ExitReason(ExitKind.NORMAL)

    def finish(self, reason: ExitReason) -> None:
        """Record the exit, fail the calls this incarnation will never answer, wake monitors."""
        self.reason = reason
        pending = [c for c in (self.current_call, *self.deferred) if c is not None]
        if pending:
            error = _exited_error(self.name, reason)
            for call in pending:
                call.fail(error)
        self.current_call = None
        self.deferred.clear()
        self.done = True
        if self._exited is not None:
            self._exited.set()


class Child:
    """What a supervisor can run: an :class:`Actor` or a :class:`Supervisor`. Internal protocol."""

    async def _ck_run(
        self, incarnation: Incarnation, ready: Callable[[], None]
    ) -> Callable[[], Awaitable[None]] | None:
        """Start, call ``ready()``, and return what runs next (awaited one level up), if any."""
        raise NotImplementedError

    async def _ck_cleanup(self, incarnation: Incarnation, reason: ExitReason) -> ExitReason:
        return reason

    def _ck_request_stop(self, incarnation: Incarnation) -> None:
        incarnation.cancel()

    def _ck_kill(self, incarnation: Incarnation) -> None:
        incarnation.cancel()


async def run_incarnation(
    incarnation: Incarnation,
    startup: _Startup,
    report: Callable[[Incarnation], None] | None,
) -> None:
    """Run one incarnation to its end, classify the exit, and report it (never a failed start).

    Only ``KeyboardInterrupt``, ``SystemExit`` and cancellation from an enclosing scope escape.
    """
    child = incarnation.instance
    escaping: BaseException | None = None
    try:
        body = await child._ck_run(incarnation, startup.ready)
        if body is not None:  # awaited here, not inside _ck_run: one frame less to suspend
            await body()
        reason = incarnation.reason_when_returned()
    except BaseException as exc:
        try:
            reason = classify_exit(
                exc,
                stopped_by_owner=incarnation.stopping or incarnation.killed,
                killed=incarnation.killed,
            )
        except BaseException:
            escaping = exc
            reason = ExitReason(ExitKind.SHUTDOWN)
    if startup.succeeded and not incarnation.killed:
        reason = await child._ck_cleanup(incarnation, reason)
    incarnation.finish(reason)
    if not startup.succeeded:
        startup.fail(escaping or reason.error or _exited_error(incarnation.name, reason))
    elif report is not None and escaping is None:
        report(incarnation)
    if escaping is not None:
        raise escaping


def _accepted_types(parameter: object) -> tuple[type, ...] | None:
    if isinstance(parameter, TypeVar) or parameter is Any or parameter is object:
        return None
    if isinstance(parameter, UnionType) or _get_origin(parameter) is Union:
        members = [_accepted_types(p) for p in get_args(parameter)]
        if any(m is None for m in members):
            return None
        return tuple(t for m in members if m is not None for t in m)
    origin = _get_origin(parameter)
    if isinstance(origin, type):
        return (origin,)
    if isinstance(parameter, type):
        return (parameter,)
    return None


class Actor(Child, Generic[M]):
    """Base class for actors. Subclass it with the message type it accepts::

        class Counter(Actor[Increment | Read]):
            def __init__(self) -> None:
                self.count = 0

            async def handle_cast(self, message: Increment | Read) -> None:
                if isinstance(message, Increment):
                    self.count += message.by

            async def handle_call(self, message: Increment | Read) -> int:
                return self.count

    A supervisor makes a fresh instance for every (re)start. ``call`` and ``cast`` reject a
    message of any other type with :class:`MessageTypeError`.

    Lifecycle: ``on_start`` (a failure is a failed start, reported to whoever started it), then
    ``run`` (by default: handle messages until :meth:`stop` or an error), then ``on_stop`` with
    the exit reason, bounded by the child's shutdown timeout. An exception in a handler crashes
    the actor; the call being handled fails at once with :class:`ActorExited`.
    """

    _ck_accepts: tuple[type, ...] | None = None
    _ck_incarnation: Incarnation
    _ck_stop_requested: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if _get_origin(base) is Actor:
                cls._ck_accepts = _accepted_types(get_args(base)[0])

    @property
    def ref(self) -> ActorRef[M]:
        """A reference to this actor, valid across its restarts."""
        slot = self._ck_incarnation.slot
        assert slot is not None
        assert slot.ref is not None
        return slot.ref

    @property
    def id(self) -> str:
        """The child id this actor runs under."""
        return self._ck_incarnation.name

    @property
    def incarnation(self) -> int:
        """1 for the first start, 2 after the first restart, and so on."""
        return self._ck_incarnation.number

    async def on_start(self) -> None:
        """Initialise. Returning means ready; raising means a failed start (not a restart)."""

    async def run(self) -> None:
        """The actor's body. By default, handle messages until :meth:`stop` is called."""
        incarnation = self._ck_incarnation
        slot = incarnation.slot
        assert slot is not None
        assert slot.mailbox is not None
        _SELF.set(slot)
        receive = slot.mailbox.get
        while not self._ck_stop_requested:
            item = await receive()
            if type(item) is _Call:
                if item.abandoned:
                    continue  # its caller gave up before we got to it: don't run it late
                incarnation.current_call = item
                value = await self.handle_call(item.message)  # type: ignore[arg-type]
                if incarnation.current_call is item:
                    item.resolve(value)
                    incarnation.current_call = None
                slot.calls_handled += 1
            else:
                await self.handle_cast(item)  # type: ignore[arg-type]
                slot.casts_handled += 1

    async def handle_call(self, message: M) -> Any:
        """Answer a request; the return value is the reply."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls ({message!r})")

    async def handle_cast(self, message: M) -> None:
        """Handle a fire-and-forget message."""
        raise NotImplementedError(f"{type(self).__name__} does not handle casts ({message!r})")

    async def on_stop(self, reason: ExitReason) -> None:
        """Clean up. Not called after a kill; bounded by the child's shutdown timeout."""

    def stop(self) -> None:
        """Exit normally once the message being handled is done (its reply is still sent)."""
        self._ck_stop_requested = True

    def on_stop_request(self) -> bool:
        """Called when the supervisor asks this actor to stop (OTP's trapped exit signal).

        Return False (the default) to be cancelled at once. Return True to wind down by
        yourself: return from :meth:`run` within the shutdown timeout, or be killed.
        """
        return False

    def _ck_request_stop(self, incarnation: Incarnation) -> None:
        if not self.on_stop_request():
            incarnation.cancel()

    def defer_reply(self) -> ReplyHandle:
        """Inside ``handle_call``: answer later, from anywhere, through the returned handle.

        The return value of ``handle_call`` is then ignored. If the actor exits first, the
        caller gets :class:`ActorExited`.
        """
        incarnation = self._ck_incarnation
        call = incarnation.current_call
        if call is None:
            raise RuntimeError("defer_reply() is only valid inside handle_call")
        incarnation.current_call = None
        incarnation.deferred.add(call)
        return ReplyHandle(call, incarnation)

    async def _ck_run(
        self, incarnation: Incarnation, ready: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        self._ck_incarnation = incarnation
        starting = _SELF.set(incarnation.slot)
        await self.on_start()
        _SELF.reset(starting)  # tasks that a custom run() starts may call this actor
        ready()
        return self.run

    async def _ck_cleanup(self, incarnation: Incarnation, reason: ExitReason) -> ExitReason:
        slot = incarnation.slot
        shutdown = DEFAULT_SHUTDOWN if slot is None else slot.spec.cleanup_timeout()
        with anyio.CancelScope(shield=True) as scope:
            incarnation.cleanup_scope = scope
            if shutdown is not None:
                scope.deadline = anyio.current_time() + shutdown
            try:
                await self.on_stop(reason)
            except Exception as exc:
                logger.error("actor %r: on_stop failed", incarnation.name, exc_info=exc)
                return ExitReason(ExitKind.CRASH, "on_stop failed", exc)
        if incarnation.killed and not incarnation.stopping:
            return ExitReason(ExitKind.KILLED, "killed during on_stop", reason.error)
        if scope.cancelled_caught:  # its own deadline, or its supervisor's kill after it
            logger.warning("actor %r: on_stop exceeded its shutdown timeout", incarnation.name)
            return ExitReason(ExitKind.KILLED, "shutdown_timeout", reason.error)
        return reason


async def _reply(call: _Call, actor: str, timeout: float | None) -> Any:
    """Wait for a call's outcome; on timeout, abandon it and raise CallTimeout."""
    try:
        if timeout is None:
            await wait_event(call.done)
        else:
            with anyio.move_on_after(timeout):
                await call.done.wait()
    except BaseException:  # the caller was cancelled: don't run its request late
        call.abandoned = True
        raise
    if timeout is not None and not call.done.is_set():
        call.abandoned = True
        raise CallTimeout(
            f"actor {actor!r} did not reply within {timeout} s", actor=actor, timeout=timeout
        )
    return call.result()


@final
class ReplyHandle:
    """A deferred reply (OTP's ``reply/2``). The first of ``reply``/``fail`` wins."""

    __slots__ = ("_call", "_incarnation")

    def __init__(self, call: _Call, incarnation: Incarnation) -> None:
        self._call = call
        self._incarnation = incarnation

    def reply(self, value: object) -> None:
        """Send the reply. Harmless if the caller already gave up."""
        self._incarnation.deferred.discard(self._call)
        self._call.resolve(value)

    def fail(self, error: BaseException) -> None:
        """Make the caller's ``call`` raise ``error``."""
        self._incarnation.deferred.discard(self._call)
        self._call.fail(error)


@final
class PendingCall:
    """A request sent with :meth:`ActorRef.send_request`, to be received later."""

    __slots__ = ("_actor", "_call")

    def __init__(self, actor: str, call: _Call) -> None:
        self._actor = actor
        self._call = call

    @property
    def done(self) -> bool:
        """True once a reply or an error has arrived."""
        return self._call.done.is_set()

    async def receive(self, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Wait for the reply.

        Raises:
            CallTimeout: no reply within ``timeout`` seconds; the request is abandoned.
            ActorExited: the actor exited before replying.
        """
        return await _reply(self._call, self._actor, timeout)

    def abandon(self) -> None:
        """Give up on the reply; it is dropped when it comes."""
        self._call.abandoned = True


@final
class Monitor:
    """A one-way watch on one incarnation of an actor (OTP's ``monitor/2``)."""

    __slots__ = ("_incarnation",)

    def __init__(self, incarnation: Incarnation | None) -> None:
        self._incarnation = incarnation

    async def wait(self) -> ExitReason:
        """Wait until the watched incarnation exits and return why; ``noproc`` if none ran."""
        incarnation = self._incarnation
        if incarnation is None:
            return NOPROC
        await incarnation.exited.wait()
        assert incarnation.reason is not None
        return incarnation.reason


@final
class ActorRef(Generic[M]):
    """A handle to an actor's mailbox; it stays valid when the actor restarts."""

    __slots__ = ("_slot",)

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    def __repr__(self) -> str:
        return f"<ActorRef {self._slot.id!r} {self._slot.state.value}>"

    @property
    def id(self) -> str:
        """The actor's child id."""
        return self._slot.id

    @property
    def alive(self) -> bool:
        """True while an incarnation is running."""
        return self._slot.state is SlotState.RUNNING

    def _check(self, message: object) -> Mailbox[object]:
        slot = self._slot
        if slot.state is SlotState.STOPPED or slot.state is SlotState.DELETED:
            raise ActorNotRunning(f"actor {slot.id!r} is not running", actor=slot.id)
        accepts = slot.accepts
        if accepts is not None and not isinstance(message, accepts):
            names = ", ".join(t.__name__ for t in accepts)
            raise MessageTypeError(
                f"actor {slot.id!r} accepts {names}, not {type(message).__name__}",
                actor=slot.id,
            )
        assert slot.mailbox is not None
        return slot.mailbox

    async def _put(self, item: object, message: object, timeout: float | None) -> None:
        mailbox = self._check(message)
        try:
            mailbox.put_nowait(item)
            return
        except anyio.WouldBlock:
            pass
        except anyio.ClosedResourceError:
            raise ActorNotRunning(f"actor {self.id!r} is gone", actor=self.id) from None
        with anyio.move_on_after(timeout):
            try:
                await mailbox.put(item)
            except anyio.ClosedResourceError:
                raise ActorNotRunning(f"actor {self.id!r} is gone", actor=self.id) from None
            return
        assert timeout is not None
        raise CallTimeout(
            f"actor {self.id!r}'s mailbox stayed full for {timeout} s",
            actor=self.id,
            timeout=timeout,
        )

    async def send_request(
        self, message: M, *, timeout: float | None = DEFAULT_CALL_TIMEOUT
    ) -> PendingCall:
        """Queue a request and return at once (OTP's ``send_request/2``).

        ``timeout`` bounds only the wait for room in a full mailbox.
        """
        call = _Call(message, self._check(message).new_event())
        await self._put(call, message, timeout)
        return PendingCall(self._slot.id, call)

    async def call(self, message: M, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send a request and wait for the reply; ``timeout`` covers sending and waiting.

        Raises:
            CallTimeout: no reply in time (a late reply is dropped; a request still queued
                when its caller gave up is skipped).
            ActorExited: the actor died before replying, at once, not at the timeout.
            ActorNotRunning: the actor is stopped or deleted.
            MessageTypeError: the message is not of a type the actor accepts.
            CallToSelf: the actor called itself (it could never answer).
        """
        slot = self._slot
        if _SELF.get() is slot:
            raise CallToSelf(
                f"actor {slot.id!r} called itself: it cannot answer while it waits; "
                "cast to yourself or do the work in place",
                actor=slot.id,
            )
        mailbox = self._check(message)
        call = _Call(message, mailbox.new_event())
        try:
            mailbox.put_nowait(call)  # the fast path: no checkpoint, no extra cancel scope
        except anyio.WouldBlock:
            start = anyio.current_time()
            await self._put(call, message, timeout)
            if timeout is not None:
                timeout = max(0.0, timeout - (anyio.current_time() - start))
        except anyio.ClosedResourceError:
            raise ActorNotRunning(f"actor {slot.id!r} is gone", actor=slot.id) from None
        if timeout is not None:
            return await _reply(call, slot.id, timeout)
        try:  # no timeout (the engine's stage calls): awaited here, one coroutine less
            await wait_event(call.done)
        except BaseException:  # the caller was cancelled: don't run its request late
            call.abandoned = True
            raise
        return call.result()

    async def cast(self, message: M, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> None:
        """Queue a fire-and-forget message, waiting up to ``timeout`` for room in the mailbox."""
        await self._put(message, message, timeout)

    def cast_nowait(self, message: M) -> None:
        """Queue a message now, or raise :class:`MailboxFull`."""
        mailbox = self._check(message)
        try:
            mailbox.put_nowait(message)
        except anyio.WouldBlock:
            raise MailboxFull(f"actor {self.id!r}'s mailbox is full", actor=self.id) from None
        except anyio.ClosedResourceError:
            raise ActorNotRunning(f"actor {self.id!r} is gone", actor=self.id) from None

    def monitor(self) -> Monitor:
        """Watch the running incarnation; :meth:`Monitor.wait` returns its exit reason."""
        incarnation = self._slot.incarnation
        if self._slot.state is not SlotState.RUNNING or incarnation is None:
            return Monitor(None)
        return Monitor(incarnation)

    def kill(self) -> None:
        """Kill the running incarnation now: untrappable, ``on_stop`` is skipped.

        The exit is abnormal (``killed``), so its supervisor restarts a permanent or transient
        actor. Queued messages stay in the mailbox for the next incarnation.
        """
        incarnation = self._slot.incarnation
        if incarnation is not None:
            incarnation.kill()

    def statistics(self) -> ActorStatistics:
        """A snapshot of the mailbox and counters."""
        slot = self._slot
        mailbox = slot.mailbox
        state: Literal["running", "restarting", "stopped", "deleted"] = slot.state.value
        return ActorStatistics(
            actor=slot.id,
            state=state,
            incarnation=slot.incarnations,
            mailbox_used=0 if mailbox is None else len(mailbox),
            mailbox_size=slot.spec.mailbox_size,
            calls_handled=slot.calls_handled,
            casts_handled=slot.casts_handled,
            dead_letters=slot.dead_letters,
            last_exit=None if slot.last_exit is None else slot.last_exit.record(),
        )

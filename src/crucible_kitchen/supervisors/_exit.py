"""Exit reasons, and the one classifier that turns a finished task into one.

Python has no exit signals, so the mapping is fixed here (DESIGN.md section 3):

==========================================  ==========  ==========================
how the child ended                         kind        restarted when
==========================================  ==========  ==========================
returned                                    normal      permanent
cancelled by its own supervisor             shutdown    permanent
``raise Shutdown(reason)``                  shutdown    permanent
any other exception                         crash       permanent, transient
``kill()``, or a cleanup past its timeout   killed      permanent, transient
==========================================  ==========  ==========================

Cancellation from an enclosing scope is not an exit reason at all: the supervisor itself is
being stopped, so it propagates. ``KeyboardInterrupt`` and ``SystemExit`` always propagate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import anyio
import msgspec

from crucible_kitchen.errors import Shutdown


class ExitKind(enum.StrEnum):
    """How an actor or supervisor ended."""

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    CRASH = "crash"
    KILLED = "killed"
    NOPROC = "noproc"
    """Reported to a monitor set on an actor that was not running."""


@dataclass(frozen=True, slots=True)
class ExitReason:
    """Why a child ended: its kind, an optional detail (the ``Shutdown`` reason, say), its error."""

    kind: ExitKind
    detail: str | None = None
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        """True for a crash or a kill: the exits a ``transient`` child is restarted after."""
        return self.kind is ExitKind.CRASH or self.kind is ExitKind.KILLED

    def record(self) -> ExitRecord:
        """This reason as a serializable record (the error becomes its type name and text)."""
        error = self.error
        return ExitRecord(
            kind=self.kind.value,
            detail=self.detail,
            error_type=None if error is None else type(error).__qualname__,
            error_message=None if error is None else str(error),
        )

    def __str__(self) -> str:
        text = self.kind.value
        if self.detail is not None:
            text += f" ({self.detail})"
        if self.error is not None:
            text += f": {type(self.error).__name__}: {self.error}"
        return text


class ExitRecord(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An :class:`ExitReason` that can cross a process boundary."""

    kind: str
    detail: str | None = None
    error_type: str | None = None
    error_message: str | None = None


NORMAL = ExitReason(ExitKind.NORMAL)
SHUTDOWN = ExitReason(ExitKind.SHUTDOWN)
NOPROC = ExitReason(ExitKind.NOPROC)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def classify_exit(exc: BaseException, *, stopped_by_owner: bool, killed: bool) -> ExitReason:
    """Map the exception that ended a child to its exit reason.

    ``exc`` may be a (nested) exception group. ``stopped_by_owner`` says whether the child's own
    supervisor cancelled it; ``killed`` whether that cancellation was a kill.

    Raises:
        BaseException: ``exc`` itself when it must propagate instead of being an exit reason:
            it holds a ``KeyboardInterrupt`` or ``SystemExit``, or it is only cancellation
            that the child's owner did not ask for.
    """
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt | SystemExit) for leaf in leaves):
        raise exc
    cancelled = anyio.get_cancelled_exc_class()
    failures = [leaf for leaf in leaves if not isinstance(leaf, cancelled)]
    if not failures:
        if not stopped_by_owner:
            raise exc
        return ExitReason(ExitKind.KILLED, "killed") if killed else SHUTDOWN
    crashes = [leaf for leaf in failures if not isinstance(leaf, Shutdown)]
    if not crashes:
        first = failures[0]
        assert isinstance(first, Shutdown)
        return ExitReason(ExitKind.SHUTDOWN, first.reason, first)
    error = crashes[0] if len(crashes) == 1 else exc
    return ExitReason(ExitKind.CRASH, None, error)

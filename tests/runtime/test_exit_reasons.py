"""The one exit classifier, on flat, nested and mixed exception groups, on both backends."""

from __future__ import annotations

import anyio
import pytest

from crucible_kitchen.errors import Shutdown
from crucible_kitchen.supervisors import ExitKind, ExitReason
from crucible_kitchen.supervisors._exit import classify_exit

pytestmark = pytest.mark.anyio


def cancelled() -> BaseException:
    """A real cancellation exception of the running backend."""
    cls = anyio.get_cancelled_exc_class()
    if cls.__module__.startswith("trio"):
        return cls._create()  # type: ignore[attr-defined,no-any-return]
    return cls()


async def test_a_crash_is_a_crash_even_inside_nested_groups() -> None:
    error = ValueError("x")
    group = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [cancelled(), error])])
    reason = classify_exit(group, stopped_by_owner=False, killed=False)
    assert reason.kind is ExitKind.CRASH
    assert reason.error is error
    assert reason.abnormal


async def test_several_crashes_keep_the_whole_group() -> None:
    group = ExceptionGroup("two", [ValueError("a"), KeyError("b")])
    reason = classify_exit(group, stopped_by_owner=False, killed=False)
    assert (reason.kind, reason.error) == (ExitKind.CRASH, group)


async def test_cancellation_by_the_owner_is_shutdown_or_killed() -> None:
    group = BaseExceptionGroup("g", [cancelled(), cancelled()])
    assert classify_exit(group, stopped_by_owner=True, killed=False).kind is ExitKind.SHUTDOWN
    assert classify_exit(cancelled(), stopped_by_owner=True, killed=True).kind is ExitKind.KILLED


async def test_cancellation_from_outside_propagates() -> None:
    exc = cancelled()
    with pytest.raises(anyio.get_cancelled_exc_class()):
        classify_exit(exc, stopped_by_owner=False, killed=False)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
async def test_interrupts_always_propagate(interrupt: type[BaseException]) -> None:
    group = BaseExceptionGroup("g", [ValueError("x"), interrupt()])
    with pytest.raises(BaseExceptionGroup):
        classify_exit(group, stopped_by_owner=True, killed=False)


async def test_shutdown_carries_its_reason() -> None:
    reason = classify_exit(Shutdown("done"), stopped_by_owner=False, killed=False)
    assert (reason.kind, reason.detail, reason.abnormal) == (ExitKind.SHUTDOWN, "done", False)


def test_reasons_render_and_record() -> None:
    reason = ExitReason(ExitKind.CRASH, None, ValueError("bad"))
    assert str(reason) == "crash: ValueError: bad"
    record = reason.record()
    assert (record.kind, record.error_type, record.error_message) == ("crash", "ValueError", "bad")

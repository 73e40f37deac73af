"""The Stage contract: one unit of work, stateless between executions."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from crucible_kitchen.errors import ConfigError, PermanentBackendError, PortError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._context import Context
    from ._contract import StageContract

__all__ = ("FunctionStage", "RetryPolicy", "Stage", "as_stage")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failed stage execution is tried again: a stage's one retry budget.

    Nothing else caps these retries: the supervisor that restarts the stage's actor after each
    failed attempt has no restart limit of its own, so a stage allowed ``max_attempts``
    attempts gets them however quickly they fail.

    Args:
        max_attempts: attempts in all, the first included (1 = never retry).
        backoff: seconds before the second attempt after an error; doubles for each later
            one. An attempt whose actor was killed is retried at once.
        retry_on: errors that may succeed on a second try. A kill of the stage's actor always
            qualifies; a stage that overruns its timeout fails with a ``TimeoutError``, which
            the default ``(Exception,)`` covers.
        never_retry: errors that retrying cannot fix; they fail the run at once.
    """

    max_attempts: int = 3
    backoff: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    never_retry: tuple[type[BaseException], ...] = field(
        default=(PermanentBackendError, ConfigError, PortError)
    )

    def retries(self, error: BaseException | None, attempt: int) -> bool:
        """Whether to try again after ``attempt`` failed with ``error`` (None: killed)."""
        if attempt >= self.max_attempts:
            return False
        if error is None:
            return True
        return isinstance(error, self.retry_on) and not isinstance(error, self.never_retry)

    def delay(self, error: BaseException | None, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after ``error`` (None: killed)."""
        if error is None:
            return 0.0
        return self.backoff * 2.0 ** max(0, attempt - 1)


class Stage:
    """Base class for stages. Override :meth:`execute`; the rest is optional.

    A stage is stateless between executions: everything it needs is in the
    :class:`Context`, and everything it produces goes back into it. It runs inside its own
    supervised actor; if it crashes, the actor restarts and the stage runs again on the same
    context (the attempt number rises), so its effects on backends must go through ports with
    ``ctx.request_id(...)``.

    Class attributes:
        requires: the port names it uses; checked before the run starts.
        contract: the config fields and state keys it reads and writes
            (:class:`StageContract`); checked when the workflow is defined and before the run
            starts. None: undeclared, nothing is checked.
        timeout: seconds one execution may take (None: no limit).
        retry: its :class:`RetryPolicy`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    contract: StageContract | None = None
    timeout: ClassVar[float | None] = None
    retry: ClassVar[RetryPolicy] = RetryPolicy()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if not cls.__dict__.get("description"):
            cls.description = (inspect.getdoc(cls) or "").split("\n", 1)[0]

    async def execute(self, ctx: Context) -> Context | None:
        """Do the work on ``ctx`` (a private copy): change it, or return a new one."""
        raise NotImplementedError(f"{type(self).__name__}.execute")

    def validate(self, ctx: Context) -> None:
        """Check config and ports before the run starts; raise to refuse. Optional."""

    async def cleanup(self, ctx: Context, error: BaseException | None) -> None:
        """Called once after the stage failed for good (``error``) — a rollback hook. Optional."""


class FunctionStage(Stage):
    """A stage made from a plain ``async def fn(ctx)``."""

    def __init__(
        self,
        fn: Callable[[Context], Awaitable[Context | None]],
        *,
        requires: tuple[str, ...] = (),
        contract: StageContract | None = None,
    ) -> None:
        self.fn = fn
        self.requires = requires  # type: ignore[misc]
        self.contract = contract
        self.description = (inspect.getdoc(fn) or "").split("\n", 1)[0]  # type: ignore[misc]

    async def execute(self, ctx: Context) -> Context | None:
        return await self.fn(ctx)


def as_stage(value: object) -> Stage:
    """A Stage from a Stage instance, a Stage subclass, or an ``async def fn(ctx)``.

    Raises:
        TypeError: anything else.
    """
    if isinstance(value, Stage):
        return value
    if isinstance(value, type) and issubclass(value, Stage):
        return value()
    call_method = type(value).__dict__.get("__call__")  # an object with `async def __call__`
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(call_method):
        return FunctionStage(value)  # type: ignore[arg-type]
    raise TypeError(
        f"expected a Stage, a Stage subclass or an async function, not {type(value).__name__}"
    )

"""Request bookkeeping shared by the noop adapters: dedup, counters, faults and futures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio
import anyio.lowlevel
import msgspec

from crucible_kitchen.adapters.noop._determinism import stable_digest
from crucible_kitchen.adapters.noop._faults import (
    CallInfo,
    Hang,
    Latency,
    PermanentFailure,
    TransientFailure,
)
from crucible_kitchen.errors import (
    InvalidRequest,
    PermanentBackendError,
    RequestIdConflict,
    TransientBackendError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from crucible_kitchen.adapters.noop._faults import FaultPlan

__all__ = ("CallCounters", "NoopFuture")

T = TypeVar("T")


class NoopFuture(Generic[T]):
    """A noop backend's answer to one request (a :class:`~crucible_kitchen.ports.BackendFuture`)."""

    __slots__ = ("_hangs", "_on_abandon", "_outcome", "_ready_at")

    def __init__(
        self,
        outcome: Callable[[], T],
        *,
        ready_at: float | None = None,
        hangs: bool = False,
        on_abandon: Callable[[], None] | None = None,
    ) -> None:
        self._outcome = outcome
        self._ready_at = ready_at
        self._hangs = hangs
        self._on_abandon = on_abandon

    async def result(self) -> T:
        """The request's result, or its error; a hanging request waits until cancelled."""
        if self._ready_at is not None:
            await anyio.sleep_until(self._ready_at)
        else:
            await anyio.lowlevel.checkpoint()
        if self._hangs:
            try:
                await anyio.sleep_forever()
            finally:
                if self._on_abandon is not None:
                    self._on_abandon()
        return self._outcome()


class CallCounters:
    """Per-method counts that tests inspect: ``counters.applied["optim_step"] == 3``.

    ``calls`` counts every call received, ``applied`` the requests that took effect,
    ``deduplicated`` the re-sent requests answered from an earlier one, and ``faulted`` the
    calls an injected failure or hang hit. ``log`` lists every applied request, in order, as
    ``(method, request_id)``: compare it between runs to prove exactly-once effects.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self.log: list[tuple[str, str | None]] = []
        self.deduplicated: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()


@dataclass(frozen=True, slots=True)
class _Record:
    method: str
    fingerprint: bytes
    future: NoopFuture[Any]


def _raiser(error: Callable[[], Exception]) -> Callable[[], Any]:
    def outcome() -> Any:
        raise error()

    return outcome


class RequestLedger:
    """Runs a noop adapter's requests: dedup on ``request_id``, fault injection, counting.

    Effects run synchronously inside :meth:`submit`, so requests take effect in the order
    they were submitted.
    """

    def __init__(self, port: str, faults: FaultPlan | None) -> None:
        self.port = port
        self.faults = faults
        self.counters = CallCounters()
        self._records: dict[str, _Record] = {}
        self._busy_until = 0.0  # when the last slow request will have been served

    def fingerprint(self, method: str, payload: object) -> bytes:
        """A digest of a request's content, to tell a re-sent request from a conflicting one.

        Raises:
            InvalidRequest: the payload holds values that cannot be serialised.
        """
        try:
            return stable_digest(payload)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidRequest(
                f"{method}: request cannot be serialised: {exc}", port=self.port, operation=method
            ) from exc

    async def submit(
        self,
        method: str,
        effect: Callable[[], T],
        *,
        request_id: str | None = None,
        fingerprint: bytes = b"",
    ) -> NoopFuture[T]:
        """Run ``effect`` as one request and return the future of its result.

        A request whose ``request_id`` was already accepted returns that request's future
        without running ``effect``. Errors ``effect`` raises propagate from here, and the
        request is not recorded.

        Raises:
            RequestIdConflict: ``request_id`` was accepted for another method or content.
            TransientBackendError, PermanentBackendError: an injected failure with
                ``on_submit=True``.
        """
        await anyio.lowlevel.checkpoint()
        self.counters.calls[method] += 1
        call = CallInfo(self.port, method, self.counters.calls[method], request_id)
        if request_id is not None and (record := self._records.get(request_id)) is not None:
            if record.method != method or record.fingerprint != fingerprint:
                raise RequestIdConflict.reused(
                    request_id, earlier=record.method, port=self.port, operation=method
                )
            self.counters.deduplicated[method] += 1
            return cast("NoopFuture[T]", record.future)

        fault = self.faults.pick(call) if self.faults is not None else None
        if isinstance(fault, TransientFailure | PermanentFailure):
            self.counters.faulted[method] += 1
            kind = (
                TransientBackendError
                if isinstance(fault, TransientFailure)
                else (PermanentBackendError)
            )
            message = f"{method}: {fault.message}"
            if fault.on_submit:
                raise kind(message, port=self.port, operation=method, request_id=request_id)
            return NoopFuture(
                _raiser(
                    lambda: kind(message, port=self.port, operation=method, request_id=request_id)
                )
            )
        if isinstance(fault, Hang):
            self.counters.faulted[method] += 1
            hung: NoopFuture[T] = NoopFuture(
                _raiser(lambda: AssertionError("unreachable")),
                hangs=True,
                on_abandon=lambda: self._forget(request_id, hung),
            )
            if request_id is not None:
                self._records[request_id] = _Record(method, fingerprint, hung)
            return hung

        value = effect()
        self.counters.applied[method] += 1
        self.counters.log.append((method, request_id))
        future: NoopFuture[T] = NoopFuture(lambda: value, ready_at=self._ready_at(fault))
        if request_id is not None:
            self._records[request_id] = _Record(method, fingerprint, future)
        return future

    async def call(
        self,
        method: str,
        effect: Callable[[], T],
        *,
        request_id: str | None = None,
        fingerprint: bytes = b"",
    ) -> T:
        """Like :meth:`submit`, then wait for the result: for ports without futures."""
        future = await self.submit(method, effect, request_id=request_id, fingerprint=fingerprint)
        return await future.result()

    def _ready_at(self, fault: Latency | None) -> float | None:
        """When a request submitted now is served; ``None`` for at once."""
        if fault is None and self._busy_until == 0.0:
            return None
        now = anyio.current_time()
        ready = max(now, self._busy_until) + (fault.seconds if fault is not None else 0.0)
        self._busy_until = ready if ready > now else 0.0
        return ready if ready > now else None

    def _forget(self, request_id: str | None, future: NoopFuture[Any]) -> None:
        if request_id is not None:
            record = self._records.get(request_id)
            if record is not None and record.future is future:
                del self._records[request_id]

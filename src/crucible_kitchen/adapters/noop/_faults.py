"""Fault injection for the noop adapters: which call gets which fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

__all__ = (
    "CallInfo",
    "Fault",
    "FaultPlan",
    "Hang",
    "Latency",
    "PermanentFailure",
    "TransientFailure",
)


@dataclass(frozen=True, slots=True)
class Latency:
    """The backend takes ``seconds`` to serve this request.

    An adapter serves its requests one at a time, in submission order, so the requests
    submitted after a slow one are answered after it too. The effect is still applied
    once, in order; only the answer waits.
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class TransientFailure:
    """Fail with :class:`~crucible_kitchen.errors.TransientBackendError`, without effect.

    ``on_submit=True``: the call itself raises, as when the backend refuses a request
    (overloaded, connection lost): nothing is queued, so re-sending it at once keeps the
    order of requests. Otherwise the failure shows where the answer shows (see
    :class:`FaultPlan`), after the requests submitted later may have taken effect.
    """

    message: str = "injected transient failure"
    on_submit: bool = False


@dataclass(frozen=True, slots=True)
class PermanentFailure:
    """Fail with :class:`~crucible_kitchen.errors.PermanentBackendError`, without effect.

    ``on_submit``: as for :class:`TransientFailure`.
    """

    message: str = "injected permanent failure"
    on_submit: bool = False


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer and take no effect; once a waiter is cancelled the request is forgotten,
    so re-sending it runs it again (a backend that lost the request)."""


Fault: TypeAlias = Latency | TransientFailure | PermanentFailure | Hang
"""What can happen to one call."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One call an adapter received.

    ``number`` counts the calls of ``method`` on that adapter from 1, re-sent requests
    included.
    """

    port: str
    method: str
    number: int
    request_id: str | None


@dataclass(slots=True)
class _Rule:
    fault: Fault
    port: str | None
    method: str | None
    calls: frozenset[int] | None
    when: Callable[[CallInfo], bool] | None
    remaining: int | None

    def matches(self, call: CallInfo) -> bool:
        return (
            self.remaining != 0
            and self.port in (None, call.port)
            and self.method in (None, call.method)
            and (self.calls is None or call.number in self.calls)
            and (self.when is None or self.when(call))
        )


class FaultPlan:
    """Which calls fail, hang or are slow; shared by any number of noop adapters.

    Faults show where the backend's answer shows: in ``result()`` of the future a call
    returns, else in the call itself (failures with ``on_submit=True`` always in the call).
    A call that fails or hangs takes no effect.

    Example::

        faults = FaultPlan()
        faults.inject(TransientFailure(), method="optim_step", calls=2)
        faults.inject(Latency(0.02), port="sampling_client")
        client = NoopTrainingClient(seed=0, faults=faults)
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.injected: list[tuple[CallInfo, Fault]] = []
        """Every fault injected so far, with the call it hit, in order."""

    def inject(
        self,
        fault: Fault,
        *,
        port: str | None = None,
        method: str | None = None,
        calls: int | Collection[int] | None = None,
        when: Callable[[CallInfo], bool] | None = None,
        times: int | None = None,
    ) -> FaultPlan:
        """Inject ``fault`` into every call that matches all the given filters.

        Args:
            fault: what happens to a matching call.
            port: only calls to this port (``"training_client"``, ...).
            method: only calls of this method.
            calls: only these call numbers of the method (1 is the first call).
            when: only calls for which this predicate is true.
            times: at most this many injections; unlimited by default.

        Returns:
            This plan, so that rules can be chained. The first matching rule wins.
        """
        if times is not None and times < 0:
            raise ValueError(f"times must be >= 0, got {times}")
        numbers = frozenset((calls,) if isinstance(calls, int) else calls) if calls else None
        self._rules.append(_Rule(fault, port, method, numbers, when, times))
        return self

    def pick(self, call: CallInfo) -> Fault | None:
        """The fault for ``call``, recorded in :attr:`injected`, or ``None``."""
        for rule in self._rules:
            if rule.matches(call):
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.injected.append((call, rule.fault))
                return rule.fault
        return None

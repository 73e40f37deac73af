"""An in-memory metrics store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._ledger import RequestLedger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters
    from crucible_kitchen.ports import MetricPoint

__all__ = ("NoopMetricsStore",)

_PORT: Final = "metrics_store"


class NoopMetricsStore:
    """Implements :class:`~crucible_kitchen.ports.MetricsStore` in a list owned by the instance.

    Args:
        faults: faults to inject into this store's calls.
    """

    def __init__(self, *, faults: FaultPlan | None = None) -> None:
        self._points: list[MetricPoint] = []
        self._ledger = RequestLedger(_PORT, faults)

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def record(self, points: Sequence[MetricPoint], *, request_id: str) -> None:
        """See :meth:`crucible_kitchen.ports.MetricsStore.record`."""
        batch = list(points)
        fingerprint = self._ledger.fingerprint("record", batch)
        await self._ledger.call(
            "record",
            lambda: self._points.extend(batch),
            request_id=request_id,
            fingerprint=fingerprint,
        )

    async def read(self, run_id: str, *, name: str | None = None) -> list[MetricPoint]:
        """See :meth:`crucible_kitchen.ports.MetricsStore.read`."""

        def effect() -> list[MetricPoint]:
            matching = [
                point
                for point in self._points
                if point.run_id == run_id and (name is None or point.name == name)
            ]
            return sorted(matching, key=lambda point: point.step)

        return await self._ledger.call("read", effect)

    async def flush(self) -> None:
        """See :meth:`crucible_kitchen.ports.MetricsStore.flush`; memory is already "durable"."""
        await self._ledger.call("flush", lambda: None)

"""The metrics store port: time series of metric points per run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._types import MetricPoint

__all__ = ("MetricsStore",)


class MetricsStore(Protocol):
    """Keeps the metric points of runs (an experiment tracker, a database, a file)."""

    async def record(self, points: Sequence[MetricPoint], *, request_id: str) -> None:
        """Add ``points``; a re-sent request adds nothing more."""
        ...

    async def read(self, run_id: str, *, name: str | None = None) -> list[MetricPoint]:
        """The points of ``run_id`` (only metric ``name`` if given), by step then record order."""
        ...

    async def flush(self) -> None:
        """Return once every recorded point is durable."""
        ...

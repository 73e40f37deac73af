"""The evaluator port: score a model on rows of a dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._sampling_client import SamplingClient
    from crucible_kitchen.ports._types import DatasetRow, EvalResult

__all__ = ("Evaluator",)


class Evaluator(Protocol):
    """Scores a model, reached through a sampling client, on dataset rows."""

    async def evaluate(self, model: SamplingClient, rows: Sequence[DatasetRow]) -> EvalResult:
        """Score ``model`` on ``rows``; ``num_samples`` of the result is ``len(rows)``.

        Raises:
            InvalidRequest: a row lacks a field the evaluator needs.
        """
        ...

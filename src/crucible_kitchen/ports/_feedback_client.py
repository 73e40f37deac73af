"""The feedback client port: production feedback of a deployed model, turned into training data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = (
    "CuratedExample",
    "ExportFormat",
    "FeedbackClient",
    "FeedbackExport",
    "FeedbackTrigger",
)

ExportFormat: TypeAlias = Literal["jsonl", "parquet"]
"""The file formats curated feedback can be exported as."""


class FeedbackTrigger(msgspec.Struct, frozen=True, kw_only=True):
    """One reason to retrain a deployment (``kind`` is e.g. ``"drift"`` or ``"quality"``).

    ``value`` is the measurement that fired and ``threshold`` the limit it crossed.
    """

    kind: str
    value: float
    threshold: float
    detail: str = ""


class CuratedExample(msgspec.Struct, frozen=True, kw_only=True):
    """One inference event selected as training data, with the answer to train on.

    ``source`` says why it was selected (``"user_correction"``, ``"low_confidence"``, ...),
    ``score`` how useful the curator judged it, in [0, 1].
    """

    example_id: str
    prompt: str
    response: str
    source: str
    score: float


class FeedbackExport(msgspec.Struct, frozen=True, kw_only=True):
    """Where exported feedback can be read back: a dataset of the dataset store.

    Its rows have ``messages`` (the prompt as a user message, the response as the assistant's).
    """

    dataset: str
    split: str
    num_examples: int
    format: ExportFormat


class FeedbackClient(Protocol):
    """The feedback side of a deployed model: retraining triggers, curation, baselines.

    Reads repeat: the same state gives the same triggers and examples. Mutating calls take a
    ``request_id``; a re-sent request returns the first one's result and is applied once.
    """

    async def check_triggers(self, deployment_id: str) -> list[FeedbackTrigger]:
        """The triggers firing now for ``deployment_id``; empty when nothing calls for retraining.

        Raises:
            ResourceNotFound: no deployment has that id.
        """
        ...

    async def curate(self, deployment_id: str, *, limit: int | None = None) -> list[CuratedExample]:
        """The feedback worth training on, best first, at most ``limit`` examples."""
        ...

    async def export(
        self,
        deployment_id: str,
        examples: Sequence[CuratedExample],
        *,
        format: ExportFormat = "jsonl",
        request_id: str,
    ) -> FeedbackExport:
        """Write ``examples`` as a dataset the dataset store can read, and say where.

        Raises:
            InvalidRequest: ``examples`` is empty.
        """
        ...

    async def update_baseline(self, deployment_id: str, model_id: str, *, request_id: str) -> None:
        """Make the registered model ``model_id`` the baseline that drift is measured against."""
        ...

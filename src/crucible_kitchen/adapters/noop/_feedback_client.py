"""A feedback client with no deployment: fixed triggers, seeded examples, recorded baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._determinism import mix, text_key, unit
from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import CuratedExample, FeedbackExport, FeedbackTrigger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters
    from crucible_kitchen.ports import ExportFormat

__all__ = ("NoopFeedbackClient",)

_PORT: Final = "feedback_client"
_SOURCES: Final = ("user_correction", "low_confidence", "thumbs_down")


class NoopFeedbackClient:
    """Implements :class:`~crucible_kitchen.ports.FeedbackClient` in memory.

    Every deployment reports the triggers named in ``triggers`` (each as having crossed its
    threshold) and has ``num_examples`` feedback examples: additions with their correct
    answers, drawn from the seed and the deployment id, best score first. An export of
    ``n`` examples is the dataset ``feedback-{deployment_id}-{k}`` (``k`` counts exports),
    split ``"train"``; the noop dataset store serves any dataset name, so a workflow can read
    it back. :attr:`baselines` holds each deployment's current baseline model.

    Args:
        seed: determines the examples.
        triggers: the trigger kinds that fire; empty for a deployment that needs nothing.
        num_examples: feedback examples per deployment.
        faults: faults to inject into this client's calls.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        triggers: Sequence[str] = ("drift",),
        num_examples: int = 32,
        faults: FaultPlan | None = None,
    ) -> None:
        if num_examples < 0:
            raise ValueError(f"num_examples {num_examples} must be >= 0")
        self._seed = seed
        self._triggers = tuple(triggers)
        self._num_examples = num_examples
        self._ledger = RequestLedger(_PORT, faults)
        self._exports: list[FeedbackExport] = []
        self.baselines: dict[str, str] = {}
        """Deployment id → model id of its baseline, as set by :meth:`update_baseline`."""

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    @property
    def exports(self) -> list[FeedbackExport]:
        """Every export applied so far, in order."""
        return list(self._exports)

    async def check_triggers(self, deployment_id: str) -> list[FeedbackTrigger]:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.check_triggers`."""

        def effect() -> list[FeedbackTrigger]:
            key = mix(self._seed, text_key(deployment_id))
            return [
                FeedbackTrigger(
                    kind=kind, value=0.5 + 0.5 * unit(key, text_key(kind)), threshold=0.5
                )
                for kind in self._triggers
            ]

        return await self._ledger.call("check_triggers", effect)

    async def curate(self, deployment_id: str, *, limit: int | None = None) -> list[CuratedExample]:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.curate`."""
        if limit is not None and limit < 0:
            raise InvalidRequest(
                f"curate: limit {limit} must be >= 0", port=_PORT, operation="curate"
            )

        def effect() -> list[CuratedExample]:
            examples = [self._example(deployment_id, i) for i in range(self._num_examples)]
            examples.sort(key=lambda example: (-example.score, example.example_id))
            return examples if limit is None else examples[:limit]

        return await self._ledger.call("curate", effect)

    async def export(
        self,
        deployment_id: str,
        examples: Sequence[CuratedExample],
        *,
        format: ExportFormat = "jsonl",
        request_id: str,
    ) -> FeedbackExport:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.export`."""
        if not examples:
            raise InvalidRequest(
                "export: there are no examples to export", port=_PORT, operation="export"
            )
        fingerprint = self._ledger.fingerprint("export", (deployment_id, list(examples), format))

        def effect() -> FeedbackExport:
            exported = FeedbackExport(
                dataset=f"feedback-{deployment_id}-{len(self._exports)}",
                split="train",
                num_examples=len(examples),
                format=format,
            )
            self._exports.append(exported)
            return exported

        return await self._ledger.call(
            "export", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def update_baseline(self, deployment_id: str, model_id: str, *, request_id: str) -> None:
        """See :meth:`crucible_kitchen.ports.FeedbackClient.update_baseline`."""
        fingerprint = self._ledger.fingerprint("update_baseline", (deployment_id, model_id))

        def effect() -> None:
            self.baselines[deployment_id] = model_id

        await self._ledger.call(
            "update_baseline", effect, request_id=request_id, fingerprint=fingerprint
        )

    def _example(self, deployment_id: str, index: int) -> CuratedExample:
        key = mix(self._seed, text_key(deployment_id), index)
        a, b = mix(key, 1) % 100, mix(key, 2) % 100
        return CuratedExample(
            example_id=f"{deployment_id}-{index}",
            prompt=f"What is {a} + {b}?",
            response=str(a + b),
            source=_SOURCES[mix(key, 3) % len(_SOURCES)],
            score=round(unit(key, 4), 6),
        )

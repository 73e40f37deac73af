"""An evaluator that scores rows by the model's negative log-likelihood of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import EvalResult, ModelInput

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters
    from crucible_kitchen.ports import DatasetRow, SamplingClient

__all__ = ("NoopEvaluator",)

_PORT: Final = "evaluator"


class NoopEvaluator:
    """Implements :class:`~crucible_kitchen.ports.Evaluator` with the model's own logprobs.

    Each row, written as JSON, is tokenised and scored with ``model.compute_logprobs``; the
    metric ``"nll"`` is the mean negative logprob per token over all rows, so it falls as a
    noop model trains.

    Args:
        faults: faults to inject into this evaluator's calls.
    """

    def __init__(self, *, faults: FaultPlan | None = None) -> None:
        self._ledger = RequestLedger(_PORT, faults)

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def evaluate(self, model: SamplingClient, rows: Sequence[DatasetRow]) -> EvalResult:
        """See :meth:`crucible_kitchen.ports.Evaluator.evaluate`."""
        await self._ledger.call("evaluate", lambda: None)
        tokenizer = model.get_tokenizer()
        prompts = []
        for index, row in enumerate(rows):
            try:
                text = msgspec.json.encode(row, order="deterministic").decode()
            except (TypeError, msgspec.EncodeError) as exc:
                raise InvalidRequest(
                    f"evaluate: row {index} cannot be written as JSON: {exc}",
                    port=_PORT,
                    operation="evaluate",
                ) from exc
            prompts.append(ModelInput.from_ints(tokenizer.encode(text)))
        futures = [await model.compute_logprobs(prompt) for prompt in prompts]
        total, count = 0.0, 0
        for future in futures:
            scored = [lp for lp in await future.result() if lp is not None]
            total -= sum(scored)
            count += len(scored)
        return EvalResult(metrics={"nll": total / count if count else 0.0}, num_samples=len(rows))

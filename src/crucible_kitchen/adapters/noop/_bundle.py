"""Every noop adapter at once, keyed by port name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_kitchen.adapters.noop._blob_store import NoopBlobStore
from crucible_kitchen.adapters.noop._dataset_store import NoopDatasetStore
from crucible_kitchen.adapters.noop._evaluator import NoopEvaluator
from crucible_kitchen.adapters.noop._feedback_client import NoopFeedbackClient
from crucible_kitchen.adapters.noop._metrics_store import NoopMetricsStore
from crucible_kitchen.adapters.noop._model_registry import NoopModelRegistry
from crucible_kitchen.adapters.noop._renderer import NoopRenderer
from crucible_kitchen.adapters.noop._sampling_client import NoopSamplingClient
from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer
from crucible_kitchen.adapters.noop._training_client import NoopTrainingClient

if TYPE_CHECKING:
    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.ports import PortName

__all__ = ("noop_adapters",)


def noop_adapters(
    *, seed: int = 0, faults: FaultPlan | None = None, num_rows: int = 64
) -> dict[PortName, object]:
    """A fresh noop adapter for every port in ``PORT_PROTOCOLS``, sharing one seed and plan.

    Args:
        seed: determines every number the adapters produce.
        faults: faults to inject; rules can pick a port with ``port=``.
        num_rows: size of each synthetic ``"train"`` split.
    """
    tokenizer = NoopTokenizer()
    return {
        "blob_store": NoopBlobStore(faults=faults),
        "dataset_store": NoopDatasetStore(seed=seed, num_rows=num_rows, faults=faults),
        "evaluator": NoopEvaluator(faults=faults),
        "feedback_client": NoopFeedbackClient(seed=seed, faults=faults),
        "metrics_store": NoopMetricsStore(faults=faults),
        "model_registry": NoopModelRegistry(seed=seed, faults=faults),
        "renderer": NoopRenderer(tokenizer),
        "sampling_client": NoopSamplingClient(seed=seed, faults=faults),
        "teacher_sampling_client": NoopSamplingClient(seed=seed + 1),  # another model
        "tokenizer": tokenizer,
        "training_client": NoopTrainingClient(seed=seed, faults=faults),
    }

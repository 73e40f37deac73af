"""Noop adapters: every port, in memory, deterministic from a seed, instant.

For tests and overhead benchmarks. Each adapter deduplicates on ``request_id``, counts its
calls (``adapter.counters``), and takes a :class:`FaultPlan` that makes chosen calls slow,
fail or hang. :class:`NoopTrainingClient` and :class:`NoopSamplingClient` share one
"model": a fixed function of seed, training step, position and token, so losses fall as
training goes on and equal seeds and inputs give bit-identical results.
"""

from __future__ import annotations

from crucible_kitchen.adapters.noop._blob_store import NoopBlobStore as NoopBlobStore
from crucible_kitchen.adapters.noop._bundle import noop_adapters as noop_adapters
from crucible_kitchen.adapters.noop._dataset_store import NoopDatasetStore as NoopDatasetStore
from crucible_kitchen.adapters.noop._env import NoopEnv as NoopEnv
from crucible_kitchen.adapters.noop._env import NoopEnvGroupBuilder as NoopEnvGroupBuilder
from crucible_kitchen.adapters.noop._evaluator import NoopEvaluator as NoopEvaluator
from crucible_kitchen.adapters.noop._faults import CallInfo as CallInfo
from crucible_kitchen.adapters.noop._faults import Fault as Fault
from crucible_kitchen.adapters.noop._faults import FaultPlan as FaultPlan
from crucible_kitchen.adapters.noop._faults import Hang as Hang
from crucible_kitchen.adapters.noop._faults import Latency as Latency
from crucible_kitchen.adapters.noop._faults import PermanentFailure as PermanentFailure
from crucible_kitchen.adapters.noop._faults import TransientFailure as TransientFailure
from crucible_kitchen.adapters.noop._feedback_client import (
    NoopFeedbackClient as NoopFeedbackClient,
)
from crucible_kitchen.adapters.noop._ledger import CallCounters as CallCounters
from crucible_kitchen.adapters.noop._ledger import NoopFuture as NoopFuture
from crucible_kitchen.adapters.noop._metrics_store import NoopMetricsStore as NoopMetricsStore
from crucible_kitchen.adapters.noop._model_registry import NoopModelRegistry as NoopModelRegistry
from crucible_kitchen.adapters.noop._renderer import NoopRenderer as NoopRenderer
from crucible_kitchen.adapters.noop._sampling_client import (
    NoopSamplingClient as NoopSamplingClient,
)
from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer as NoopTokenizer
from crucible_kitchen.adapters.noop._training_client import (
    NoopTrainingClient as NoopTrainingClient,
)
from crucible_kitchen.adapters.noop._training_client import (
    NoopTrainingState as NoopTrainingState,
)

__all__ = (
    "CallCounters",
    "CallInfo",
    "Fault",
    "FaultPlan",
    "Hang",
    "Latency",
    "NoopBlobStore",
    "NoopDatasetStore",
    "NoopEnv",
    "NoopEnvGroupBuilder",
    "NoopEvaluator",
    "NoopFeedbackClient",
    "NoopFuture",
    "NoopMetricsStore",
    "NoopModelRegistry",
    "NoopRenderer",
    "NoopSamplingClient",
    "NoopTokenizer",
    "NoopTrainingClient",
    "NoopTrainingState",
    "PermanentFailure",
    "TransientFailure",
    "noop_adapters",
)

"""Test helpers for users and for our own tests.

- Fault injection into runs: :class:`StageKiller` kills a stage's actor at a chosen point
  (:class:`KillPoint`), :class:`ChaosMonkey` at seeded random ones, :class:`FaultTrace` records
  the points a run reaches.
- Comparing runs: :class:`NoopKitchen` runs a workflow on fresh noop adapters and returns
  its :class:`RunOutcome`; :func:`assert_same_outcome` checks that two runs ended the same.
- A pytest plugin (entry point ``crucible_kitchen``, loaded with the package): the fixtures
  ``noop_kitchen``, ``stage_killer``, ``chaos_seed`` and ``chaos_monkey``, and the kills of
  a failed test in its report.
- Port conformance checks (``check_training_client`` and the others), and :func:`with_latency`
  around any adapter.

Faults inside the noop backend itself (slow, failing or hanging calls) live with it, in
``crucible_kitchen.adapters.noop`` (:class:`~crucible_kitchen.adapters.noop.FaultPlan`).
"""

from __future__ import annotations

from crucible_kitchen.testing._latency import with_latency as with_latency
from crucible_kitchen.testing._outcomes import NoopKitchen as NoopKitchen
from crucible_kitchen.testing._outcomes import RunOutcome as RunOutcome
from crucible_kitchen.testing._outcomes import assert_same_outcome as assert_same_outcome
from crucible_kitchen.testing._port_conformance import check_blob_store as check_blob_store
from crucible_kitchen.testing._port_conformance import check_dataset_store as check_dataset_store
from crucible_kitchen.testing._port_conformance import (
    check_env_group_builder as check_env_group_builder,
)
from crucible_kitchen.testing._port_conformance import check_evaluator as check_evaluator
from crucible_kitchen.testing._port_conformance import check_metrics_store as check_metrics_store
from crucible_kitchen.testing._port_conformance import (
    check_model_registry as check_model_registry,
)
from crucible_kitchen.testing._port_conformance import check_renderer as check_renderer
from crucible_kitchen.testing._port_conformance import (
    check_sampling_client as check_sampling_client,
)
from crucible_kitchen.testing._port_conformance import check_tokenizer as check_tokenizer
from crucible_kitchen.testing._port_conformance import (
    check_training_client as check_training_client,
)
from crucible_kitchen.testing._stage_faults import POINTS as POINTS
from crucible_kitchen.testing._stage_faults import ChaosMonkey as ChaosMonkey
from crucible_kitchen.testing._stage_faults import FaultTrace as FaultTrace
from crucible_kitchen.testing._stage_faults import Kill as Kill
from crucible_kitchen.testing._stage_faults import KillPoint as KillPoint
from crucible_kitchen.testing._stage_faults import StageKiller as StageKiller

__all__ = (
    "POINTS",
    "ChaosMonkey",
    "FaultTrace",
    "Kill",
    "KillPoint",
    "NoopKitchen",
    "RunOutcome",
    "StageKiller",
    "assert_same_outcome",
    "check_blob_store",
    "check_dataset_store",
    "check_env_group_builder",
    "check_evaluator",
    "check_metrics_store",
    "check_model_registry",
    "check_renderer",
    "check_sampling_client",
    "check_tokenizer",
    "check_training_client",
    "with_latency",
)

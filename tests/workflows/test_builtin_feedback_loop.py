"""The built-in `feedback_loop` workflow: triggers, curation, export, retraining, baseline."""

from __future__ import annotations

import pytest
from _builtin_support import applied_ids, of_type, recording_adapters, stage_sequence

from crucible_kitchen.adapters.noop import NoopFeedbackClient
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.telemetry import (
    FeedbackBaselineUpdated,
    FeedbackDataCurated,
    FeedbackDataExported,
    FeedbackTriggersChecked,
    ModelRegistered,
    TelemetryEvent,
    TrainingStep,
)

pytestmark = pytest.mark.anyio


async def test_a_trigger_retrains_on_the_exported_feedback_and_moves_the_baseline() -> None:
    feedback = NoopFeedbackClient(seed=40, triggers=("drift", "quality"), num_examples=20)
    adapters, client = recording_adapters(40, feedback_client=feedback)
    events: list[TelemetryEvent] = []
    config = {"deployment_id": "prod-1", "curate_limit": 12, "batch_size": 8, "max_steps": 5}
    result = await Kitchen.run(
        "feedback_loop", config, adapters=adapters, seed=40, telemetry=[events.append]
    )

    assert result.steps == 5
    sequence = stage_sequence(events)
    assert sequence[:5] == ["check_triggers", "curate", "export", "load_feedback", "build_dataset"]
    assert sequence[-5:] == [
        "final_run_evaluator", "save_final", "register_model", "update_baseline", "flush_metrics",
    ]  # fmt: skip
    assert sequence.count("submit_step") == 5

    [checked] = of_type(events, FeedbackTriggersChecked)
    assert (checked.deployment_id, checked.triggers, checked.should_retrain) == (
        "prod-1", ["drift", "quality"], True,
    )  # fmt: skip
    [curated] = of_type(events, FeedbackDataCurated)
    best = await NoopFeedbackClient(seed=40, num_examples=20).curate("prod-1", limit=12)
    assert curated.count == 12
    assert sum(curated.by_source.values()) == 12
    assert curated.by_source == {
        source: sum(e.source == source for e in best) for source in curated.by_source
    }
    [exported] = of_type(events, FeedbackDataExported)
    assert feedback.exports[0].dataset == "feedback-prod-1-0"
    assert (exported.count, exported.format) == (12, "jsonl")

    # The model trained on the exported dataset is the one that becomes the baseline.
    [registered] = of_type(events, ModelRegistered)
    [updated] = of_type(events, FeedbackBaselineUpdated)
    assert feedback.baselines == {"prod-1": registered.model_id}
    assert updated.model_id == registered.model_id == result.artifacts["model_id"]
    assert len(of_type(events, TrainingStep)) == 5
    assert result.metrics["feedback/retrained"] == 1.0
    assert feedback.counters.applied["export"] == feedback.counters.applied["update_baseline"] == 1
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))


async def test_no_trigger_means_no_training() -> None:
    quiet = NoopFeedbackClient(seed=1, triggers=())
    adapters = Adapters.noop(seed=1).replace(feedback_client=quiet)
    events: list[TelemetryEvent] = []
    result = await Kitchen.run("feedback_loop", {}, adapters=adapters, telemetry=[events.append])
    assert result.status == "completed"
    assert stage_sequence(events) == ["check_triggers", "flush_metrics"]
    assert result.steps == 0
    assert result.metrics == {"feedback/triggers": 0.0}
    assert sum(adapters["training_client"].counters.calls.values()) == 0


async def test_too_little_feedback_is_curated_but_not_trained_on() -> None:
    adapters = Adapters.noop(seed=2)
    events: list[TelemetryEvent] = []
    result = await Kitchen.run(
        "feedback_loop", {"min_examples": 33}, adapters=adapters, telemetry=[events.append]
    )
    assert stage_sequence(events) == ["check_triggers", "curate", "flush_metrics"]
    assert result.metrics["feedback/curated"] == 32.0  # the noop client's examples
    assert adapters["feedback_client"].exports == []
    assert adapters["feedback_client"].baselines == {}


async def test_the_feedback_loop_must_register_its_model() -> None:
    with pytest.raises(ConfigError, match="register_model"):
        await Kitchen.run("feedback_loop", {"register_model": False})

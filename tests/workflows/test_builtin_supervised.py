"""The built-in `supervised` workflow on the noop backend: sequence, math, pipelining, faults."""

from __future__ import annotations

from typing import Any

import pytest
from _builtin_support import (
    applied_ids,
    datum_key,
    floats,
    of_type,
    recording_adapters,
    stage_sequence,
)

from crucible_kitchen.adapters.noop import (
    FaultPlan,
    NoopDatasetStore,
    NoopRenderer,
    TransientFailure,
)
from crucible_kitchen.errors import (
    ConfigError,
    DataError,
    PermanentBackendError,
    StageFailed,
    TransientBackendError,
)
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.ports import Datum, Message, ModelInput, TensorData
from crucible_kitchen.telemetry import (
    EvalComplete,
    StageException,
    TelemetryEvent,
    TrainingCheckpoint,
    TrainingEpoch,
    TrainingStep,
)
from crucible_kitchen.testing._stage_faults import KillPoint, StageKiller

pytestmark = pytest.mark.anyio

ROWS = 64  # the noop dataset store's train split


async def expected_datum_keys(seed: int) -> list[bytes]:
    """Every training datum, rendered here without the workflow: shift by one token."""
    rows = await NoopDatasetStore(seed=seed).read_rows("chat_tasks", split="train")
    renderer = NoopRenderer()
    keys = []
    for row in rows:
        messages = [Message(role=m["role"], content=m["content"]) for m in row["messages"]]
        model_input, weights = renderer.build_supervised_example(messages)
        tokens = model_input.to_ints()
        datum = Datum(
            model_input=ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
                "weights": TensorData(dtype="float32", data=tuple(weights.data[1:])),
            },
        )
        keys.append(datum_key(datum))
    return sorted(keys)


async def test_supervised_trains_every_example_once_per_epoch_with_pipelined_steps() -> None:
    adapters, client = recording_adapters(seed=7)
    events: list[TelemetryEvent] = []
    config = {"batch_size": 8, "epochs": 2, "learning_rate": 1e-4}
    result = await Kitchen.run(
        "supervised", config, adapters=adapters, seed=7, telemetry=[events.append]
    )

    assert result.status == "completed"
    assert result.steps == 16
    epoch = ["shuffle", *["submit_step", "await_step"] * 8]
    assert stage_sequence(events) == [
        "load_dataset", "build_dataset", "load_eval_rows", "build_eval_dataset",
        *epoch, *epoch,
        "drain", "final_evaluate_nll", "final_run_evaluator", "save_final", "register_model",
        "flush_metrics",
    ]  # fmt: skip

    # Each epoch's batches hold every example exactly once, in a different order per epoch.
    batches = [[datum_key(d) for d in data] for _, data, _ in client.steps]
    assert all(len(b) == 8 for b in batches)
    first = [key for batch in batches[:8] for key in batch]
    second = [key for batch in batches[8:] for key in batch]
    assert sorted(first) == sorted(second) == await expected_datum_keys(seed=7)
    assert first != second

    # One TrainingStep per step, in order, with the loss and lr recomputed here.
    steps = of_type(events, TrainingStep)
    assert [e.step for e in steps] == list(range(16))
    outputs = await client.outputs()
    for event, (_, data, _), output, adam in zip(
        steps, client.steps, outputs, client.adam, strict=True
    ):
        weights = [floats(d, "weights") for d in data]
        logprobs = [list(o["logprobs"].data) for o in output.loss_fn_outputs]
        nll = -sum(
            w * lp
            for ws, lps in zip(weights, logprobs, strict=True)
            for w, lp in zip(ws, lps, strict=True)
        ) / sum(map(sum, weights))
        assert event.loss == pytest.approx(nll, rel=1e-12)
        assert event.lr == adam.learning_rate == pytest.approx(1e-4 * (1 - event.step / 16))
        assert event.epoch == event.step // 8
        assert event.metrics["train/sequences"] == 8.0
    assert steps[-1].loss < steps[0].loss  # the noop model "learns"
    assert result.metrics["train/loss"] == steps[-1].loss
    assert result.metrics["train/lr"] == steps[-1].lr
    # An epoch ends when its last step has been awaited, not when it was submitted.
    epochs = of_type(events, TrainingEpoch)
    assert [(e.epoch, e.step, e.total_epochs) for e in epochs] == [(0, 8, 2), (1, 16, 2)]
    for epoch in epochs:
        [last] = of_type(events[: events.index(epoch)], TrainingStep)[-1:]
        assert last.step == epoch.step - 1
        assert epoch.metrics["train/progress"] == epoch.step / 16
    assert [e.step for e in of_type(events, EvalComplete)] == [16, 16]
    assert result.metrics["eval/loss"] > 0

    # The backend applied each request exactly once.
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))
    assert client.counters.applied["forward_backward"] == 16
    assert client.counters.applied["optim_step"] == 16
    assert sum(client.counters.deduplicated.values()) == 0
    assert client.state.step == 16

    # Pipelining: step k+1 is submitted before step k is awaited, and k is awaited before k+2.
    submits = [
        i
        for i, (what, m, _) in enumerate(client.log)
        if (what, m) == ("submit", "forward_backward")
    ]
    awaits = [
        i for i, (what, m, _) in enumerate(client.log) if (what, m) == ("await", "forward_backward")
    ]
    fb_ids = [rid for what, m, rid in client.log if (what, m) == ("submit", "forward_backward")]
    assert [client.log[i][2] for i in awaits] == fb_ids
    for k in range(15):
        assert submits[k + 1] < awaits[k]
        if k + 2 < 16:
            assert awaits[k] < submits[k + 2]

    # Metrics reached the metrics store, one point per step.
    points = await adapters["metrics_store"].read(result.run_id, name="train/loss")
    assert [(p.step, p.value) for p in points] == [(e.step, e.loss) for e in steps]
    assert set(result.artifacts) >= {"final_state", "final_sampler_weights", "model_id"}


@pytest.mark.parametrize("depth", [0, 3])
async def test_pipeline_depth_bounds_the_steps_in_flight(depth: int) -> None:
    adapters, client = recording_adapters(seed=1)
    config = {"pipeline_depth": depth, "final_eval": False, "register_model": False}
    result = await Kitchen.run("supervised", config, adapters=adapters, seed=1)
    assert result.steps == 8
    in_flight, most = 0, 0
    for what, method, _ in client.log:
        if method == "forward_backward":
            in_flight += 1 if what == "submit" else -1
            most = max(most, in_flight)
    assert most == depth + 1
    assert in_flight == 0


async def test_checkpoints_and_evaluations_follow_their_cadence() -> None:
    adapters, client = recording_adapters(seed=2)
    events: list[TelemetryEvent] = []
    config = {"epochs": 2, "max_steps": 10, "save_every": 3, "eval_every": 4}
    result = await Kitchen.run(
        "supervised", config, adapters=adapters, seed=2, telemetry=[events.append]
    )
    assert result.steps == 10
    checkpoints = of_type(events, TrainingCheckpoint)
    assert [(c.step, c.name) for c in checkpoints] == [
        (3, "step_000003"), (6, "step_000006"), (9, "step_000009"), (10, "final"),
    ]  # fmt: skip
    assert [e.step for e in of_type(events, EvalComplete)] == [4, 4, 8, 8, 10, 10]
    # Everything in flight is awaited (and logged) before a checkpoint is taken.
    for checkpoint in checkpoints[:-1]:
        before = events[: events.index(checkpoint)]
        assert [e.step for e in of_type(before, TrainingStep)] == list(range(checkpoint.step))
    assert result.artifacts["last_checkpoint"].endswith("step_000009")
    assert client.counters.applied["save_state"] == 4


async def test_a_run_with_killed_stages_ends_exactly_like_an_undisturbed_one() -> None:
    async def run(killer: StageKiller | None) -> tuple[Any, Any, list[TelemetryEvent]]:
        adapters, client = recording_adapters(seed=3)
        events: list[TelemetryEvent] = []
        async with Kitchen.open() as kitchen:
            handle = await kitchen.start(
                "supervised",
                {"epochs": 2, "save_every": 5, "eval_every": 6},
                adapters=adapters,
                seed=3,
                run_id="sft-faults",
                fault_hook=killer,
                telemetry=[events.append],
            )
            return await handle.wait(), client, events

    clean, clean_client, _ = await run(None)
    # Futures are submitted by submit_step and awaited by later stages (await_step, the drains):
    # an "awaiting" kill lands on the stage that awaits.
    killer = StageKiller(
        KillPoint("build_dataset", "execute"),
        KillPoint("submit_step", "after_submit", execution=5, operation="forward_backward"),
        KillPoint("submit_step", "before_call", execution=9, operation="optim_step"),
        KillPoint("await_step", "awaiting", execution=7),
        KillPoint("drain", "awaiting", operation="optim_step"),
        KillPoint("checkpoint", "awaiting"),
    )
    killed, killed_client, events = await run(killer)

    killed_stages = {e.stage for e in of_type(events, StageException)}
    assert killed_stages == {"build_dataset", "submit_step", "await_step", "checkpoint", "drain"}
    assert len(killer.kills) == 6
    assert killed.metrics == clean.metrics
    assert killed.steps == clean.steps == 16
    assert set(applied_ids(killed_client)) == set(applied_ids(clean_client))
    assert killed_client.state == clean_client.state
    assert killed_client.counters.deduplicated["forward_backward"] >= 1


async def test_same_seed_same_metrics_other_seed_other_order() -> None:
    results = [
        await Kitchen.run("supervised", {"epochs": 1}, seed=seed, run_id="same")
        for seed in (5, 5, 6)
    ]
    assert results[0].metrics == results[1].metrics
    assert results[0].metrics != results[2].metrics


async def test_an_invalid_config_lists_every_problem_with_its_path() -> None:
    config = {
        "batch_size": 0,
        "adam": {"beta1": 1.5},
        "lr_schedule": "sometimes",
        "pipeline_depth": -1,
        "typo": True,
    }
    with pytest.raises(ConfigError) as info:
        await Kitchen.run("supervised", config)
    text = str(info.value)
    for path in ("batch_size", "adam.beta1", "lr_schedule", "pipeline_depth", "typo"):
        assert f"{path}:" in text
    assert len(info.value.problems) == 5


async def test_too_little_data_fails_at_once_without_retrying() -> None:
    with pytest.raises(StageFailed) as info:
        await Kitchen.run("supervised", {"batch_size": ROWS + 1})
    assert info.value.stage == "build_dataset"
    assert info.value.attempt == 1
    assert isinstance(info.value.__cause__, DataError)


async def test_a_failed_step_fails_the_run_at_once_and_cleanup_still_runs() -> None:
    faults = FaultPlan().inject(TransientFailure(), method="forward_backward", calls=3)
    events: list[TelemetryEvent] = []
    with pytest.raises(StageFailed) as info:
        await Kitchen.run(
            "supervised",
            {},
            adapters=Adapters.noop(seed=0, faults=faults),
            telemetry=[events.append],
        )
    # Re-sending cannot help: the steps after the failed one have run already.
    assert (info.value.stage, info.value.attempt) == ("await_step", 1)
    assert isinstance(info.value.__cause__, PermanentBackendError)
    assert isinstance(info.value.__cause__.__cause__, TransientBackendError)
    assert "out of order" in str(info.value)
    assert stage_sequence(events)[-1] == "flush_metrics"

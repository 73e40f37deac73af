"""Resuming the preference (DPO), reinforcement (sync) and distillation workflows in process,
on the noop adapters: a requested stop checkpoints at the end of the current iteration, and a
run resumed from that checkpoint ends exactly like an uninterrupted one: same steps, metrics
and model state (every gradient applied once, in order), the same samplers included.

A workflow that cannot resume (reinforcement in async mode) refuses a checkpoint to resume from
instead of training on from fresh weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.errors import RunDirectoryError
from crucible_kitchen.kitchen import Adapters, Kitchen, RunHandle, read_run_record
from crucible_kitchen.stages import RESUME_FROM, snapshot_from_checkpoint
from crucible_kitchen.telemetry import (
    DistillationStep,
    DpoStep,
    RlStep,
    TrainingCheckpoint,
    TrainingResume,
)

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

STEP_EVENTS = (DpoStep, RlStep, DistillationStep)

CASES: dict[str, tuple[dict[str, Any], int]] = {  # config, total steps
    "preference": ({"batch_size": 16, "epochs": 2, "eval_every": 3}, 8),
    "reinforcement": ({"num_batches": 7, "sampler_refresh_every": 3, "kl_penalty_coef": 0.1}, 7),
    "distillation": ({"num_batches": 7, "sampler_refresh_every": 2}, 7),
}


def adapters(seed: int, checkpoints: dict[str, bytes]) -> tuple[Adapters, NoopTrainingClient]:
    client = NoopTrainingClient(seed=seed, checkpoints=checkpoints)
    return Adapters.noop(seed=seed).replace(training_client=client), client


@pytest.mark.parametrize(
    ("workflow", "stop_after"),
    [(w, k) for w in CASES for k in (0, 2, 4)],
)
async def test_a_requested_stop_checkpoints_and_resumes_exactly(
    workflow: str, stop_after: int
) -> None:
    config, total = CASES[workflow]
    full_adapters, full_client = adapters(5, {})
    full = await Kitchen.run(workflow, config, adapters=full_adapters, seed=5, run_id="r")
    assert full.steps == total

    checkpoints: dict[str, bytes] = {}
    stopped_adapters, _ = adapters(5, checkpoints)
    events: list[TelemetryEvent] = []
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        events.append(event)
        if isinstance(event, STEP_EVENTS) and event.step == stop_after:
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            workflow, config, adapters=stopped_adapters, seed=5, run_id="r", telemetry=[stop]
        )
        handles.append(handle)
        stopped = await handle.result()
    assert stopped.status == "cancelled"
    assert stopped.steps < total
    (saved,) = [e for e in events if isinstance(e, TrainingCheckpoint)]
    assert saved.step == stopped.steps
    context = handle.outcome.context
    assert context is not None
    snapshot = snapshot_from_checkpoint(context.state["checkpoint_context"])
    assert snapshot.step == stopped.steps

    resumed_adapters, resumed_client = adapters(5, checkpoints)
    resumed_events: list[TelemetryEvent] = []
    async with Kitchen.open() as kitchen:
        resumed_handle = await kitchen.start(
            workflow,
            config,
            adapters=resumed_adapters,
            seed=5,
            run_id="r",
            resume=snapshot,
            initial_state={RESUME_FROM: saved.path},
            telemetry=[resumed_events.append],
        )
        resumed = await resumed_handle.wait()
    assert resumed.steps == full.steps
    assert resumed.metrics == full.metrics
    assert resumed_client.state == full_client.state
    trained = [e.step for e in events + resumed_events if isinstance(e, STEP_EVENTS)]
    assert sorted(set(trained)) == list(range(total))
    (resume,) = [e for e in resumed_events if isinstance(e, TrainingResume)]
    assert (resume.step, resume.path) == (saved.step, saved.path)


async def test_a_workflow_that_cannot_resume_refuses_a_checkpoint(tmp_path: Path) -> None:
    config = {
        "num_batches": 4,
        "mode": "async",
        "save_every": 1,
        "max_tokens": 4,
        "use_evaluator": False,
    }
    run_dir = tmp_path / "run"
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingCheckpoint):
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "reinforcement",
            config,
            adapters="local_torch",
            seed=5,
            run_dir=run_dir,
            telemetry=[stop],
        )
        handles.append(handle)
        stopped = await handle.result()
    assert stopped.status == "cancelled"  # a stop request ends an async loop too
    with pytest.raises(RunDirectoryError, match=r"reinforcement workflow.*cannot resume"):
        await Kitchen.resume(run_dir)


async def test_adapters_built_by_the_caller_must_be_passed_again_to_resume(
    tmp_path: Path,
) -> None:
    """The directory records only adapter sets the Kitchen built by name: one built by the
    caller (here with its own options) cannot be rebuilt from it, so it is asked for."""
    run_dir = tmp_path / "run"
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingCheckpoint):
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "supervised",
            {"save_every": 2},
            adapters=Adapters.noop(seed=7),
            seed=7,
            run_dir=run_dir,
            telemetry=[stop],
        )
        handles.append(handle)
        await handle.result()
    assert read_run_record(run_dir).adapters is None
    with pytest.raises(RunDirectoryError, match="pass adapters= to resume"):
        await Kitchen.resume(run_dir)

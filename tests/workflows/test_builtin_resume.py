"""Resuming the built-in workflows in process, on the noop adapters: a requested stop
checkpoints at the end of the current iteration, and a run resumed from that checkpoint ends
exactly like an uninterrupted one: same steps, metrics and model state (every gradient applied
once, in order), the same samplers included. (The noop training client keeps its checkpoints in
a dict, and cannot store a payload with them: the snapshot travels in the context.)

A workflow that cannot resume (reinforcement in async mode) refuses a checkpoint to resume from
instead of training on from fresh weights; so does a run whose adapters its caller built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.errors import RunDirectoryError
from crucible_kitchen.kitchen import Adapters, Kitchen, RunHandle
from crucible_kitchen.kitchen._run_dir import read_run_record
from crucible_kitchen.stages import RESUME_FROM, snapshot_from_checkpoint
from crucible_kitchen.telemetry import (
    DistillationStep,
    DpoStep,
    RlStep,
    TrainingCheckpoint,
    TrainingResume,
    TrainingStep,
)

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.kitchen import RunResult
    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

STEP_EVENTS = (TrainingStep, DpoStep, RlStep, DistillationStep)

CASES: dict[str, tuple[dict[str, Any], int]] = {  # config, total steps
    "supervised": ({"batch_size": 8, "epochs": 3, "eval_every": 5, "pipeline_depth": 2}, 24),
    "preference": ({"batch_size": 16, "epochs": 2, "eval_every": 3}, 8),
    "reinforcement": ({"num_batches": 7, "sampler_refresh_every": 3, "kl_penalty_coef": 0.1}, 7),
    "distillation": ({"num_batches": 7, "sampler_refresh_every": 2}, 7),
}
STOPS: dict[str, tuple[int, ...]] = {  # supervised 5: at an epoch end
    "supervised": (0, 5, 7, 15, 20),
    "preference": (0, 2, 4),
    "reinforcement": (0, 2, 4),
    "distillation": (0, 2, 4),
}


def adapters(seed: int, checkpoints: dict[str, bytes]) -> tuple[Adapters, NoopTrainingClient]:
    client = NoopTrainingClient(seed=seed, checkpoints=checkpoints)
    return Adapters.noop(seed=seed).replace(training_client=client), client


async def stopped_run(
    workflow: str,
    config: dict[str, Any],
    stop_when: type[TelemetryEvent] | tuple[type[TelemetryEvent], ...],
    *,
    step: int | None = None,
    **start: Any,
) -> tuple[RunHandle, RunResult, list[TelemetryEvent]]:
    """Start a run, request a stop at the first ``stop_when`` event (at ``step``, if given),
    and wait for it to end; also returns every event it emitted."""
    events: list[TelemetryEvent] = []
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        events.append(event)
        if isinstance(event, stop_when) and step in (None, getattr(event, "step", None)):
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handles.append(await kitchen.start(workflow, config, telemetry=[stop], **start))
        result = await handles[0].result()
    return handles[0], result, events


@pytest.mark.parametrize(("workflow", "stop_after"), [(w, k) for w in CASES for k in STOPS[w]])
async def test_a_requested_stop_checkpoints_and_resumes_exactly(
    workflow: str, stop_after: int
) -> None:
    config, total = CASES[workflow]
    full_adapters, full_client = adapters(5, {})
    full = await Kitchen.run(workflow, config, adapters=full_adapters, seed=5, run_id="r")
    assert full.steps == total

    checkpoints: dict[str, bytes] = {}
    handle, stopped, events = await stopped_run(
        workflow,
        config,
        STEP_EVENTS,
        step=stop_after,
        adapters=adapters(5, checkpoints)[0],
        seed=5,
        run_id="r",
    )
    assert stopped.status == "cancelled"
    assert stopped.steps < total
    if workflow == "supervised":  # the step awaited at the stop and the two ahead of it
        assert stopped.steps == stop_after + 3
    (saved,) = [e for e in events if isinstance(e, TrainingCheckpoint)]
    assert saved.step == stopped.steps
    context = handle.outcome.context
    assert context is not None
    snapshot = snapshot_from_checkpoint(context.state["checkpoint_context"])
    assert snapshot.step == stopped.steps
    assert not snapshot.state.get("in_flight")  # drained before the checkpoint

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
    _, stopped, _ = await stopped_run(
        "reinforcement", config, TrainingCheckpoint, adapters="local_torch", run_dir=run_dir
    )
    assert stopped.status == "cancelled"  # a stop request ends an async loop too
    with pytest.raises(RunDirectoryError, match=r"reinforcement workflow.*cannot resume"):
        await Kitchen.resume(run_dir)


async def test_adapters_built_by_the_caller_must_be_passed_again_to_resume(
    tmp_path: Path,
) -> None:
    """The directory records only adapter sets the Kitchen built by name: one built by the
    caller (here with its own options) cannot be rebuilt from it, so it is asked for."""
    run_dir = tmp_path / "run"
    await stopped_run(
        "supervised",
        {"save_every": 2},
        TrainingCheckpoint,
        adapters=Adapters.noop(seed=7),
        seed=7,
        run_dir=run_dir,
    )
    assert read_run_record(run_dir).adapters is None
    with pytest.raises(RunDirectoryError, match="pass adapters= to resume"):
        await Kitchen.resume(run_dir)

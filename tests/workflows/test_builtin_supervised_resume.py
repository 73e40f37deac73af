"""Resuming the `supervised` workflow in process, on a training client that cannot store a
payload with its checkpoints (noop): a requested stop checkpoints at the end of the current
iteration, and a run resumed from that checkpoint ends exactly like an uninterrupted one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.kitchen import Adapters, Kitchen, RunHandle
from crucible_kitchen.stages import RESUME_FROM, snapshot_from_checkpoint
from crucible_kitchen.telemetry import TrainingCheckpoint, TrainingResume, TrainingStep

if TYPE_CHECKING:
    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

CONFIG = {"batch_size": 8, "epochs": 3, "eval_every": 5, "pipeline_depth": 2}  # 24 steps


def adapters(seed: int, checkpoints: dict[str, bytes]) -> tuple[Adapters, NoopTrainingClient]:
    client = NoopTrainingClient(seed=seed, checkpoints=checkpoints)
    return Adapters.noop(seed=seed).replace(training_client=client), client


@pytest.mark.parametrize("stop_after", [0, 5, 7, 15, 20])  # 5: at an epoch end
async def test_a_requested_stop_checkpoints_and_resumes_exactly(stop_after: int) -> None:
    full_adapters, full_client = adapters(9, {})
    full = await Kitchen.run("supervised", CONFIG, adapters=full_adapters, seed=9, run_id="s")

    checkpoints: dict[str, bytes] = {}
    stopped_adapters, _ = adapters(9, checkpoints)
    events: list[TelemetryEvent] = []
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        events.append(event)
        if isinstance(event, TrainingStep) and event.step == stop_after:
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "supervised", CONFIG, adapters=stopped_adapters, seed=9, run_id="s", telemetry=[stop]
        )
        handles.append(handle)
        stopped = await handle.result()
    assert stopped.status == "cancelled"
    # The step awaited when the stop came, and the two submitted ahead of it.
    assert stopped.steps == stop_after + 3
    (saved,) = [e for e in events if isinstance(e, TrainingCheckpoint)]
    assert saved.step == stopped.steps
    context = handle.outcome.context
    assert context is not None
    snapshot = snapshot_from_checkpoint(context.state["checkpoint_context"])
    assert snapshot.step == stopped.steps
    assert not snapshot.state["in_flight"]  # drained before the checkpoint

    resumed_adapters, resumed_client = adapters(9, checkpoints)
    resumed_events: list[TelemetryEvent] = []
    async with Kitchen.open() as kitchen:
        resumed_handle = await kitchen.start(
            "supervised",
            CONFIG,
            adapters=resumed_adapters,
            seed=9,
            run_id="s",
            resume=snapshot,
            initial_state={RESUME_FROM: saved.path},
            telemetry=[resumed_events.append],
        )
        resumed = await resumed_handle.wait()
    assert resumed.steps == full.steps
    assert resumed.metrics == full.metrics
    assert resumed_client.state == full_client.state  # every gradient applied once, in order
    trained = [e.step for e in events + resumed_events if isinstance(e, TrainingStep)]
    assert sorted(set(trained)) == list(range(24))
    (resume,) = [e for e in resumed_events if isinstance(e, TrainingResume)]
    assert (resume.step, resume.path) == (saved.step, saved.path)

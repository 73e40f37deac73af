"""Resuming a run from a context snapshot continues exactly where its checkpoint was taken."""

from __future__ import annotations

import pytest

from crucible_kitchen.errors import StageFailed
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.stages import Context, ContextSnapshot, RetryPolicy
from crucible_kitchen.workflows import Workflow, conditional, loop, stage

pytestmark = pytest.mark.anyio


def workflow(
    snapshots: list[ContextSnapshot],
    applied: list[tuple[int, int]],
    crash_at: tuple[int, int] | None,
) -> Workflow:
    async def load(ctx: Context) -> None:
        ctx.state["data"] = [1, 2, 3, 4]  # rebuilt on resume: not part of the snapshot needs
        ctx.state["handle"] = object()  # not JSON: dropped from snapshots

    async def shuffle(ctx: Context) -> None:
        order = list(ctx.state["data"])
        ctx.rng("shuffle").shuffle(order)
        ctx.state["order"] = order

    async def train(ctx: Context) -> None:
        position = (ctx.loops["epochs"], ctx.loops["batches"])
        if position == crash_at:
            raise RuntimeError("the process dies here")
        applied.append(position)
        ctx.step += 1
        ctx.metrics["sum"] = ctx.metrics.get("sum", 0.0) + ctx.item("batches") * (ctx.step)

    async def checkpoint(ctx: Context) -> None:
        snapshots.append(ctx.snapshot())

    return Workflow(
        "resumable",
        stage("load", load),
        loop(
            "epochs",
            3,
            stage("shuffle", shuffle),
            loop(
                "batches",
                lambda ctx: ctx.state["order"],
                stage("train", train, retry=RetryPolicy(max_attempts=1)),
                conditional(
                    "every_2", lambda ctx: ctx.step % 2 == 0, then=[stage("checkpoint", checkpoint)]
                ),
            ),
        ),
    )


async def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one() -> None:
    snapshots: list[ContextSnapshot] = []
    applied: list[tuple[int, int]] = []
    full = await Kitchen.run(workflow(snapshots, applied, None), adapters={}, seed=3)
    assert full.steps == 12

    crashed_snapshots: list[ContextSnapshot] = []
    crashed_applied: list[tuple[int, int]] = []
    with pytest.raises(StageFailed):
        await Kitchen.run(workflow(crashed_snapshots, crashed_applied, (1, 3)), adapters={}, seed=3)
    last = crashed_snapshots[-1]
    assert (last.loops, last.step) == ({"epochs": 1, "batches": 1}, 6)
    assert "handle" not in last.state
    assert "order" in last.state

    resumed_applied: list[tuple[int, int]] = []
    resumed = await Kitchen.run(
        workflow([], resumed_applied, None), adapters={}, seed=3, resume=last
    )
    assert resumed.metrics == full.metrics
    assert resumed.steps == full.steps
    done_before = crashed_applied[: last.step]
    assert done_before + resumed_applied == applied  # no batch skipped, none trained twice

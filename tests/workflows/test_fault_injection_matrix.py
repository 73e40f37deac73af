"""Kill every stage of every built-in workflow at every point it reaches: nothing changes.

For each workflow, an undisturbed run records which (stage, fault point) pairs it reaches
(:class:`FaultTrace`). Then, for each pair, a run kills that stage's actor the first time it
gets there. Every such run must end exactly like the undisturbed one: the same metrics, the
same step count, the same requests applied exactly once by every backend, and the same
backend state. A stage killed on every attempt its retry policy allows fails the run with a
clear error, and the cleanup stages still run.
"""

from __future__ import annotations

from typing import Any

import pytest

from crucible_kitchen.errors import StageFailed
from crucible_kitchen.recipes import RetrySettings
from crucible_kitchen.telemetry import StageStart, TelemetryEvent
from crucible_kitchen.testing import (
    ChaosMonkey,
    FaultTrace,
    KillPoint,
    NoopKitchen,
    RunOutcome,
    StageKiller,
    assert_same_outcome,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONFIGS: dict[str, dict[str, Any]] = {
    "supervised": {"epochs": 2, "save_every": 3, "eval_every": 4},
    "reinforcement": {"num_batches": 2},
    "preference": {"epochs": 1},
    "distillation": {},
    "feedback_loop": {},
}


async def _run(workflow: str, hook: Any, **options: Any) -> RunOutcome:
    kitchen = NoopKitchen(seed=11, run_id=f"{workflow}-matrix")
    return await kitchen.run(workflow, CONFIGS[workflow], fault_hook=hook, **options)


async def _points(workflow: str) -> list[tuple[str, str, str]]:
    trace = FaultTrace()
    await _run(workflow, trace)
    return sorted(trace.seen)


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_killing_any_stage_at_any_point_changes_nothing(workflow: str) -> None:
    clean = await _run(workflow, None)
    points = await _points(workflow)
    assert {point for _, point, _ in points} >= {"execute", "before_call", "after_submit"}
    for stage, point, operation in points:
        killer = StageKiller(KillPoint(stage, point, operation=operation))  # type: ignore[arg-type]
        where = f"{workflow}: kill {stage} at {point} ({operation})"
        killed = await _run(workflow, killer)
        assert len(killer.kills) == 1, where
        assert_same_outcome(clean, killed, where=where)


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_seeded_chaos_changes_nothing(workflow: str) -> None:
    clean = await _run(workflow, None)
    chaos = ChaosMonkey(seed=5, rate=0.1, max_kills=8)
    chaotic = await _run(workflow, chaos)
    assert chaos.kills
    assert_same_outcome(clean, chaotic)


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_a_stage_killed_on_every_attempt_fails_the_run_and_cleanup_runs(
    workflow: str,
) -> None:
    points = await _points(workflow)
    stage = next(s for s, p, _ in points if p == "execute")
    killer = StageKiller(*(KillPoint(stage, "execute", execution=n) for n in range(1, 100)))
    events: list[TelemetryEvent] = []
    with pytest.raises(StageFailed, match="its actor was killed") as caught:
        await _run(workflow, killer, telemetry=[events.append])
    attempts = RetrySettings().attempts  # the recipes' default
    assert (caught.value.stage, caught.value.attempt) == (stage, attempts)
    assert len(killer.kills) == attempts
    started = [e.stage for e in events if isinstance(e, StageStart)]
    assert started[-1] == "flush_metrics"  # the cleanup stage ran after the failure

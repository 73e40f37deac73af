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
from crucible_kitchen.kitchen import Adapters, Kitchen, RunResult
from crucible_kitchen.recipes import RetrySettings
from crucible_kitchen.telemetry import StageStart, TelemetryEvent
from crucible_kitchen.testing import ChaosMonkey, FaultTrace, KillPoint, StageKiller

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONFIGS: dict[str, dict[str, Any]] = {
    "supervised": {"epochs": 2, "save_every": 3, "eval_every": 4},
    "reinforcement": {"num_batches": 2},
    "preference": {"epochs": 1},
    "distillation": {},
    "feedback_loop": {},
}


async def _run(workflow: str, hook: Any) -> tuple[RunResult, Adapters]:
    adapters = Adapters.noop(seed=11)
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            workflow,
            CONFIGS[workflow],
            adapters=adapters,
            seed=11,
            run_id=f"{workflow}-matrix",
            fault_hook=hook,
        )
        return await run.wait(), adapters


def _effects(adapters: Adapters) -> dict[str, Any]:
    """What the backends did: each adapter's applied mutating requests (those with a request
    id; calls without one, such as ``create_sampling_client``, change nothing and may be
    repeated), and the model's state."""
    effects: dict[str, Any] = {}
    for port, adapter in adapters.items():
        counters = getattr(adapter, "counters", None)
        if counters is not None:
            applied = [entry for entry in counters.log if entry[1] is not None]
            assert len(applied) == len(set(applied)), f"{port} applied a request twice"
            effects[port] = sorted(applied)
    effects["model"] = adapters["training_client"].state
    return effects


async def _points(workflow: str) -> list[tuple[str, str, str]]:
    trace = FaultTrace()
    await _run(workflow, trace)
    return sorted(trace.seen)


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_killing_any_stage_at_any_point_changes_nothing(workflow: str) -> None:
    clean, clean_adapters = await _run(workflow, None)
    expected = _effects(clean_adapters)
    points = await _points(workflow)
    assert {point for _, point, _ in points} >= {"execute", "before_call", "after_submit"}
    for stage, point, operation in points:
        killer = StageKiller(KillPoint(stage, point, operation=operation))  # type: ignore[arg-type]
        result, adapters = await _run(workflow, killer)
        where = f"{workflow}: kill {stage} at {point} ({operation})"
        assert len(killer.kills) == 1, where
        assert result.metrics == clean.metrics, where
        assert result.steps == clean.steps, where
        assert _effects(adapters) == expected, where


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_seeded_chaos_changes_nothing(workflow: str) -> None:
    clean, clean_adapters = await _run(workflow, None)
    chaos = ChaosMonkey(seed=5, rate=0.1, max_kills=8)
    result, adapters = await _run(workflow, chaos)
    assert chaos.kills
    assert (result.metrics, result.steps) == (clean.metrics, clean.steps)
    assert _effects(adapters) == _effects(clean_adapters)


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_a_stage_killed_on_every_attempt_fails_the_run_and_cleanup_runs(
    workflow: str,
) -> None:
    points = await _points(workflow)
    stage = next(s for s, p, _ in points if p == "execute")
    killer = StageKiller(*(KillPoint(stage, "execute", execution=n) for n in range(1, 100)))
    events: list[TelemetryEvent] = []
    adapters = Adapters.noop(seed=11)
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            workflow,
            CONFIGS[workflow],
            adapters=adapters,
            seed=11,
            fault_hook=killer,
            telemetry=[events.append],
        )
        with pytest.raises(StageFailed, match="its actor was killed") as caught:
            await run.wait()
    attempts = RetrySettings().attempts  # the recipes' default
    assert (caught.value.stage, caught.value.attempt) == (stage, attempts)
    assert len(killer.kills) == attempts
    started = [e.stage for e in events if isinstance(e, StageStart)]
    assert started[-1] == "flush_metrics"  # the cleanup stage ran after the failure

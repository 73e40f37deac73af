"""LR schedules: boundaries by hand, and tinker-cookbook's formula as a reference."""

from __future__ import annotations

import math

import pytest

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training import LRSchedule, lr_multiplier, scheduled_learning_rate
from crucible_kitchen.training._schedules import LR_SCHEDULES


def cookbook_multiplier(schedule: str, step: int, total_steps: int) -> float:
    """tinker_cookbook.utils.lr_scheduling.compute_schedule_lr_multiplier, restated."""
    if schedule == "linear":
        return 1 - step / total_steps
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return 1.0


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_without_warmup_equals_tinker_cookbook(schedule: LRSchedule) -> None:
    for total_steps in (1, 2, 7, 100):
        for step in range(total_steps):
            assert lr_multiplier(schedule, step, total_steps) == pytest.approx(
                cookbook_multiplier(schedule, step, total_steps), abs=1e-12
            )


# total 10 steps, 2 warmup steps, base 1e-3: the decay runs over steps 2..9 (8 steps)
@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 0.5e-3),  # first warmup step: (0 + 1) / 2
        ("constant", 1, 1e-3),  # last warmup step reaches the base rate
        ("constant", 2, 1e-3),
        ("constant", 9, 1e-3),
        ("linear", 0, 0.5e-3),
        ("linear", 1, 1e-3),
        ("linear", 2, 1e-3),  # decay starts from the base rate
        ("linear", 6, 0.5e-3),  # p = 4/8
        ("linear", 9, 1e-3 / 8),  # last step: p = 7/8, never exactly 0
        ("cosine", 0, 0.5e-3),
        ("cosine", 1, 1e-3),
        ("cosine", 2, 1e-3),
        ("cosine", 6, 0.5e-3),  # halfway down the cosine
        ("cosine", 9, 1e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8))),
    ],
)
def test_boundaries_with_warmup(schedule: LRSchedule, step: int, expected: float) -> None:
    got = scheduled_learning_rate(step, 10, 1e-3, schedule=schedule, warmup_steps=2)
    assert got == pytest.approx(expected, rel=1e-12)


def test_cosine_last_step_value() -> None:
    got = scheduled_learning_rate(9, 10, 1.0, schedule="cosine", warmup_steps=2)
    assert got == pytest.approx(0.0380602337, abs=1e-9)


def test_min_lr_ratio_floors_the_decay() -> None:
    # linear last step: 0.1 + 0.9 * (1/8)
    got = scheduled_learning_rate(9, 10, 1.0, warmup_steps=2, min_lr_ratio=0.1)
    assert got == pytest.approx(0.2125, rel=1e-12)
    assert scheduled_learning_rate(0, 10, 1.0, schedule="cosine", min_lr_ratio=0.5) == 1.0


def test_warmup_over_the_whole_run() -> None:
    rates = [lr_multiplier("linear", s, 4, warmup_steps=4) for s in range(4)]
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_default_schedule_is_linear_without_warmup() -> None:
    assert scheduled_learning_rate(0, 4, 2e-4) == pytest.approx(2e-4)
    assert scheduled_learning_rate(3, 4, 2e-4) == pytest.approx(0.5e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_is_monotone_and_positive(schedule: LRSchedule) -> None:
    rates = [lr_multiplier(schedule, s, 50, warmup_steps=5) for s in range(50)]
    warmup, decay = rates[:5], rates[4:]
    assert warmup == sorted(warmup)
    assert decay == sorted(decay, reverse=True)
    assert min(rates) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 10}, "step must be in"),
        ({"step": -1}, "step must be in"),
        ({"total_steps": 0, "step": 0}, "total_steps"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"schedule": "exponential"}, "unknown lr schedule"),
        ({"base_lr": -1e-3}, "base_lr"),
        ({"base_lr": math.nan}, "base_lr"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"step": 0, "total_steps": 10, "base_lr": 1e-3, **kwargs}
    with pytest.raises(TrainingInputError, match=match):
        scheduled_learning_rate(**arguments)  # type: ignore[arg-type]

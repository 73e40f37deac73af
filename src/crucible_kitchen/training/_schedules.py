"""Learning-rate schedules: constant, linear and cosine, each with an optional linear warmup."""

from __future__ import annotations

import math
from typing import Literal, get_args

from crucible_kitchen.errors import TrainingInputError

__all__ = ("LR_SCHEDULES", "LRSchedule", "lr_multiplier", "scheduled_learning_rate")

LRSchedule = Literal["constant", "linear", "cosine"]
"""The schedule names, as tinker-cookbook's ``lr_schedule`` config field spells them."""

LR_SCHEDULES: tuple[LRSchedule, ...] = get_args(LRSchedule)


def lr_multiplier(
    schedule: LRSchedule,
    step: int,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """The factor to multiply the base learning rate by at ``step`` (0-based).

    With ``W = warmup_steps`` and ``T = total_steps``:

    - warmup, ``step < W``: ``(step + 1) / W``, so step 0 already trains and step ``W - 1``
      reaches the full rate;
    - afterwards, with progress ``p = (step - W) / (T - W)`` and ``r = min_lr_ratio``,
      ``r + (1 - r) * d(p)`` where ``d`` is ``1`` (constant), ``1 - p`` (linear) or
      ``(1 + cos(pi * p)) / 2`` (cosine).

    With no warmup and ``min_lr_ratio=0`` this is exactly tinker-cookbook's
    ``compute_schedule_lr_multiplier``: the last step ``T - 1`` gets ``1/T`` (linear), never 0.

    Raises:
        TrainingInputError: ``schedule`` is unknown, ``total_steps < 1``, ``step`` is outside
            ``[0, total_steps)``, ``warmup_steps`` is outside ``[0, total_steps]``, or
            ``min_lr_ratio`` is outside ``[0, 1]``.
    """
    if schedule not in LR_SCHEDULES:
        raise TrainingInputError(
            f"unknown lr schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}"
        )
    if total_steps < 1:
        raise TrainingInputError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise TrainingInputError(f"step must be in [0, {total_steps}), got {step}")
    if not 0 <= warmup_steps <= total_steps:
        raise TrainingInputError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise TrainingInputError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if schedule == "constant":
        decay = 1.0
    elif schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def scheduled_learning_rate(
    step: int,
    total_steps: int,
    base_lr: float,
    *,
    schedule: LRSchedule = "linear",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """The learning rate for ``step`` (0-based): ``base_lr * lr_multiplier(...)``.

    The default schedule is ``"linear"``, tinker-cookbook's default for SFT and DPO.

    Raises:
        TrainingInputError: ``base_lr`` is negative or not finite, or any argument that
            :func:`lr_multiplier` rejects.
    """
    if not (math.isfinite(base_lr) and base_lr >= 0.0):
        raise TrainingInputError(f"base_lr must be a finite number >= 0, got {base_lr}")
    return base_lr * lr_multiplier(
        schedule, step, total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio
    )

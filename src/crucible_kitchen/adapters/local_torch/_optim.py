"""AdamW with Tinker's per-step Adam parameters, gradient clipping and step metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from collections.abc import Callable


class AdamHyperparams(Protocol):
    """What one optimizer step needs; Tinker's ``AdamParams`` has exactly these fields."""

    @property
    def learning_rate(self) -> float: ...
    @property
    def beta1(self) -> float: ...
    @property
    def beta2(self) -> float: ...
    @property
    def eps(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def grad_clip_norm(self) -> float:
        """Clip the global gradient norm to this value; 0 disables clipping."""
        ...


@dataclass(frozen=True, kw_only=True)
class StepMetrics:
    """What an optimizer step did.

    Attributes:
        grad_norm: Global L2 norm of the accumulated gradients, before clipping.
        learning_rate: The learning rate used.
        clipped: Whether the gradients were scaled down to ``grad_clip_norm``.
    """

    grad_norm: float
    learning_rate: float
    clipped: bool


def build_optimizer(model: nn.Module, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (those with ``requires_grad``).

    The hyperparameters are set by each :func:`optimizer_step`, since Tinker sends them with
    every step. Apply LoRA before calling this. ``fused`` updates every parameter in one
    kernel (torch's fused AdamW: the same update up to float rounding, deterministic);
    otherwise torch's default (``foreach`` where supported).

    Raises:
        ValueError: ``model`` has no trainable parameters.
    """
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(parameters, lr=0.0, weight_decay=0.0, fused=fused or None)


def _check(hyperparams: AdamHyperparams) -> None:
    problems = [
        f"{name} must be {rule}, got {value!r}"
        for name, value, ok, rule in (
            ("learning_rate", hyperparams.learning_rate, hyperparams.learning_rate >= 0, ">= 0"),
            ("beta1", hyperparams.beta1, 0 <= hyperparams.beta1 < 1, "in [0, 1)"),
            ("beta2", hyperparams.beta2, 0 <= hyperparams.beta2 < 1, "in [0, 1)"),
            ("eps", hyperparams.eps, hyperparams.eps >= 0, ">= 0"),
            ("weight_decay", hyperparams.weight_decay, hyperparams.weight_decay >= 0, ">= 0"),
            ("grad_clip_norm", hyperparams.grad_clip_norm, hyperparams.grad_clip_norm >= 0, ">= 0"),
        )
        if not (ok and math.isfinite(value))
    ]
    if problems:
        raise ValueError("invalid Adam parameters:\n" + "\n".join(f"  - {p}" for p in problems))


def optimizer_step(
    optimizer: torch.optim.AdamW,
    hyperparams: AdamHyperparams,
    *,
    sum_over_shards: Callable[[float], float] | None = None,
) -> StepMetrics:
    """Apply the gradients accumulated since the last step, then clear them.

    Gradients add up across any number of backward passes until this call. The global norm is
    measured first and, if ``grad_clip_norm > 0``, the gradients are scaled down to it. Then one
    AdamW step runs with ``hyperparams`` (``torch.optim.AdamW`` semantics).

    Sharded gradients (FSDP's) need ``sum_over_shards``: given this rank's sum of squares of
    its shards, the sum over every rank (a collective the caller runs; called exactly once).

    Raises:
        ValueError: a hyperparameter is out of range or not finite.
    """
    _check(hyperparams)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    gradients = [p.grad for p in parameters if p.grad is not None]
    if sum_over_shards is not None:
        # The local shards' norms: one scalar crosses the ranks, no DTensor op per gradient.
        gradients = [g.to_local() if isinstance(g, DTensor) else g for g in gradients]
    # Accumulate in float32 even for half-precision gradients, without copying them.
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in gradients]
    total_norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
    if sum_over_shards is not None:
        squares = sum_over_shards(float(total_norm) ** 2)
        total_norm = torch.tensor(math.sqrt(squares), dtype=torch.float32)
    grad_norm = float(total_norm)
    clipped = 0 < hyperparams.grad_clip_norm < grad_norm
    if clipped:
        torch.nn.utils.clip_grads_with_norm_(parameters, hyperparams.grad_clip_norm, total_norm)
    for group in optimizer.param_groups:
        group["lr"] = hyperparams.learning_rate
        group["betas"] = (hyperparams.beta1, hyperparams.beta2)
        group["eps"] = hyperparams.eps
        group["weight_decay"] = hyperparams.weight_decay
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepMetrics(
        grad_norm=grad_norm, learning_rate=hyperparams.learning_rate, clipped=clipped
    )

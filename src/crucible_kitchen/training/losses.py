"""Training losses in torch, with Tinker's server-side semantics.

Import this module explicitly (``from crucible_kitchen.training import losses``); it imports
torch, which ``crucible_kitchen.training`` itself never does.

Every token-level loss takes **target logprobs** ``lp`` (the learner's log-probability of each
target token, see :func:`compute_target_logprobs`) and per-token inputs of the same shape, and is
**sum-reduced over all tokens** (no mean): the loss of a batch is the sum of its tokens'
losses, exactly as Tinker's ``forward_backward`` computes it. Per-token weights and
advantages carry all masking: a token with weight or advantage 0 contributes nothing. Inputs
may be 1-D (one datum) or padded ``(batch, time)``; padding must carry weight/advantage 0.

Notation: ``q`` is the sampler's logprob recorded at sampling time, ``A`` the advantage,
``ratio = exp(lp - q)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training._dpo import DPO_LOSS_TYPES, DPOLossType

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = (
    "BUILTIN_LOSSES",
    "DPO_LOSS_TYPES",
    "DPOLossType",
    "DPOOutput",
    "builtin_loss",
    "cispo_loss",
    "compute_target_logprobs",
    "cross_entropy_loss",
    "dpo_loss",
    "dro_loss",
    "importance_sampling_loss",
    "k3_kl_loss",
    "ppo_loss",
    "sequence_logprobs",
    "topk_reverse_kl_loss",
)


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise TrainingInputError(f"shapes differ: {shapes}")


def compute_target_logprobs(logits: torch.Tensor, target_tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the target tokens under ``logits``, computed in float32 or wider.

    ``logits`` has shape ``(..., vocab)``. ``target_tokens`` has shape ``(...)`` (one target
    per position; the result has that shape) or ``(..., K)`` (K targets per position, as in
    Tinker's top-K distillation; the result has shape ``(..., K)``).

    Raises:
        TrainingInputError: the shapes do not line up or a target is out of the vocabulary.
    """
    one_per_position = target_tokens.dim() == logits.dim() - 1
    positions = target_tokens.shape if one_per_position else target_tokens.shape[:-1]
    if positions != logits.shape[:-1]:
        raise TrainingInputError(
            f"target_tokens of shape {tuple(target_tokens.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)}"
        )
    vocab = logits.shape[-1]
    if target_tokens.numel() and (
        int(target_tokens.min()) < 0 or int(target_tokens.max()) >= vocab
    ):
        raise TrainingInputError(f"target token ids must be in [0, {vocab})")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logprobs = F.log_softmax(logits.to(dtype), dim=-1)
    if one_per_position:
        return logprobs.gather(-1, target_tokens.long().unsqueeze(-1)).squeeze(-1)
    return logprobs.gather(-1, target_tokens.long())


def cross_entropy_loss(target_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted negative log-likelihood, summed: ``L = -sum_t w[t] * lp[t]``.

    Raises:
        TrainingInputError: the shapes differ.
    """
    _check_same_shape(target_logprobs=target_logprobs, weights=weights)
    return -(target_logprobs * weights).sum()


def importance_sampling_loss(
    target_logprobs: torch.Tensor, sampling_logprobs: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """Policy gradient with an importance weight for the sampler/learner mismatch.

    ``L = -sum_t exp(lp[t] - q[t]) * A[t]``; on-policy (``lp == q``) its gradient is
    REINFORCE's, ``-sum_t A[t] * grad lp[t]``. The ratio is not clipped.

    Raises:
        TrainingInputError: the shapes differ.
    """
    _check_same_shape(
        target_logprobs=target_logprobs, sampling_logprobs=sampling_logprobs, advantages=advantages
    )
    ratio = torch.exp(target_logprobs - sampling_logprobs)
    return -(ratio * advantages).sum()


def _check_clip(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise TrainingInputError(
            f"clip thresholds must satisfy 0 <= low <= high, got low={low}, high={high}"
        )


def ppo_loss(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low_threshold: float = 0.8,
    clip_high_threshold: float = 1.2,
) -> torch.Tensor:
    """PPO's clipped surrogate, token-wise and summed.

    ``L = -sum_t min(ratio[t] * A[t], clip(ratio[t], low, high) * A[t])``, with Tinker's
    default thresholds ``low=0.8``, ``high=1.2`` (``loss_fn_config`` keys
    ``clip_low_threshold`` / ``clip_high_threshold``).

    Raises:
        TrainingInputError: the shapes differ, or not ``0 <= low <= high``.
    """
    _check_same_shape(
        target_logprobs=target_logprobs, sampling_logprobs=sampling_logprobs, advantages=advantages
    )
    _check_clip(clip_low_threshold, clip_high_threshold)
    ratio = torch.exp(target_logprobs - sampling_logprobs)
    clipped = torch.clamp(ratio, clip_low_threshold, clip_high_threshold)
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()


def cispo_loss(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low_threshold: float = 0.0,
    clip_high_threshold: float = 4.0,
) -> torch.Tensor:
    """CISPO: REINFORCE weighted by a clipped, stop-gradient importance ratio.

    ``L = -sum_t sg(clip(ratio[t], low, high)) * A[t] * lp[t]``, Tinker's defaults
    ``low=0.0``, ``high=4.0``. Unlike PPO, clipped tokens still get a gradient.

    Raises:
        TrainingInputError: the shapes differ, or not ``0 <= low <= high``.
    """
    _check_same_shape(
        target_logprobs=target_logprobs, sampling_logprobs=sampling_logprobs, advantages=advantages
    )
    _check_clip(clip_low_threshold, clip_high_threshold)
    ratio = torch.exp(target_logprobs - sampling_logprobs).detach()
    clipped = torch.clamp(ratio, clip_low_threshold, clip_high_threshold)
    return -(clipped * advantages * target_logprobs).sum()


def dro_loss(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """DRO: REINFORCE with a quadratic penalty on drifting from the sampler.

    ``L = -sum_t (lp[t] * A[t] - 0.5 * beta * (lp[t] - q[t])**2)`` (Tinker's ``dro``;
    ``beta`` has no default there either).

    Raises:
        TrainingInputError: the shapes differ or ``beta`` is negative or not finite.
    """
    _check_same_shape(
        target_logprobs=target_logprobs, sampling_logprobs=sampling_logprobs, advantages=advantages
    )
    if not (math.isfinite(beta) and beta >= 0.0):
        raise TrainingInputError(f"beta must be a finite number >= 0, got {beta}")
    drift = target_logprobs - sampling_logprobs
    return -(target_logprobs * advantages - 0.5 * beta * drift * drift).sum()


def k3_kl_loss(
    target_logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) on the sampled tokens, summed.

    ``L = sum_t m[t] * (exp(lpref[t] - lp[t]) - (lpref[t] - lp[t]) - 1)``: TRL's and
    torchtune's KL term (add ``beta * L`` to the policy loss), the alternative to folding a
    k1 penalty into the advantages
    (:func:`~crucible_kitchen.training.kl_penalty_advantages`). Each term is >= 0.

    Raises:
        TrainingInputError: the shapes differ.
    """
    _check_same_shape(
        target_logprobs=target_logprobs, reference_logprobs=reference_logprobs, mask=mask
    )
    log_ratio = reference_logprobs - target_logprobs
    return (mask * (torch.exp(log_ratio) - log_ratio - 1.0)).sum()


BUILTIN_LOSSES: tuple[str, ...] = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")
"""Tinker's built-in ``loss_fn`` names that :func:`builtin_loss` computes."""

_REQUIRED_INPUTS: Mapping[str, tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
    "cispo": ("logprobs", "advantages"),
    "dro": ("logprobs", "advantages"),
}
_CONFIG_KEYS: Mapping[str, tuple[str, ...]] = {
    "cross_entropy": (),
    "importance_sampling": (),
    "ppo": ("clip_low_threshold", "clip_high_threshold"),
    "cispo": ("clip_low_threshold", "clip_high_threshold"),
    "dro": ("beta",),
}


def builtin_loss(
    loss_fn: str,
    target_logprobs: torch.Tensor,
    loss_fn_inputs: Mapping[str, torch.Tensor],
    loss_fn_config: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """A Tinker built-in loss by name, with Tinker's ``loss_fn_inputs`` keys.

    ``cross_entropy`` reads ``weights``; the RL losses read ``logprobs`` (the sampler's,
    ``q``) and ``advantages``. Other keys (``target_tokens``, ``mask``) are ignored.
    ``loss_fn_config`` holds ``clip_low_threshold`` / ``clip_high_threshold`` (``ppo``,
    ``cispo``) or ``beta`` (``dro``, required).

    Raises:
        TrainingInputError: an unknown ``loss_fn``, a missing input, an unknown or missing
            config key, or mismatched shapes.
    """
    if loss_fn not in _REQUIRED_INPUTS:
        raise TrainingInputError(
            f"unknown loss_fn {loss_fn!r}; expected one of {', '.join(BUILTIN_LOSSES)}"
        )
    missing = [key for key in _REQUIRED_INPUTS[loss_fn] if key not in loss_fn_inputs]
    if missing:
        raise TrainingInputError(f"loss_fn {loss_fn!r} needs loss_fn_inputs {missing}")
    config = dict(loss_fn_config or {})
    unknown = sorted(set(config) - set(_CONFIG_KEYS[loss_fn]))
    if unknown:
        raise TrainingInputError(
            f"loss_fn {loss_fn!r} takes loss_fn_config keys {list(_CONFIG_KEYS[loss_fn])}, "
            f"got unknown {unknown}"
        )
    if loss_fn == "cross_entropy":
        return cross_entropy_loss(target_logprobs, loss_fn_inputs["weights"])
    q, advantages = loss_fn_inputs["logprobs"], loss_fn_inputs["advantages"]
    if loss_fn == "importance_sampling":
        return importance_sampling_loss(target_logprobs, q, advantages)
    if loss_fn == "ppo":
        return ppo_loss(target_logprobs, q, advantages, **config)
    if loss_fn == "cispo":
        return cispo_loss(target_logprobs, q, advantages, **config)
    if "beta" not in config:
        raise TrainingInputError("loss_fn 'dro' needs loss_fn_config key 'beta'")
    return dro_loss(target_logprobs, q, advantages, beta=config["beta"])


def sequence_logprobs(target_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted token sum along the last axis: ``log pi(y|x) = sum_t w[t] * lp[t]``.

    With 0/1 weights on the completion tokens this is the completion's log-probability, the
    quantity DPO compares (a *sum*, not a mean, to avoid an implicit length bias).

    Raises:
        TrainingInputError: the shapes differ.
    """
    _check_same_shape(target_logprobs=target_logprobs, weights=weights)
    return (target_logprobs * weights).sum(dim=-1)


class DPOOutput(NamedTuple):
    """The DPO loss (a scalar with gradient) and tinker-cookbook's DPO metrics."""

    loss: torch.Tensor
    metrics: dict[str, float]


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    chosen_reference_logprobs: torch.Tensor,
    rejected_reference_logprobs: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: DPOLossType = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOOutput:
    """Direct preference optimization over pairs of sequence logprobs.

    Each argument has one entry per pair (shape ``(pairs,)``), a sequence logprob from
    :func:`sequence_logprobs` under the policy or the frozen reference. With
    ``dc = chosen - chosen_reference``, ``dr = rejected - rejected_reference`` and
    ``z = beta * (dc - dr)``, the loss is the mean over pairs of (TRL's definitions):

    - ``"sigmoid"`` (default): ``-(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)``, where
      ``eps = label_smoothing`` (0 gives the standard DPO loss; >0 the conservative variant
      of torchtune); ``log sigmoid`` is computed stably;
    - ``"hinge"``: ``relu(1 - z)`` (SLiC);
    - ``"ipo"``: ``(dc / |c| - dr / |r| - 1 / (2 * beta)) ** 2``, with ``|c|``, ``|r|`` the
      completions' token counts (``chosen_lengths`` / ``rejected_lengths``, required; counts
      below 1 count as 1): TRL averages the log-ratios per token for IPO.

    ``label_smoothing`` applies to ``"sigmoid"`` only.

    Metrics (floats, tinker-cookbook's keys): ``dpo_loss``; ``accuracy`` = mean[dc > dr]
    (strict); ``margin`` = mean(beta*dc - beta*dr); ``chosen_reward`` = mean(beta*dc);
    ``rejected_reward`` = mean(beta*dr); ``num_pairs``.

    Raises:
        TrainingInputError: the inputs are not 1-D of one non-zero length, ``beta`` /
            ``label_smoothing`` is out of range, the ``loss_type`` is unknown, smoothing is
            asked of another loss than sigmoid, or IPO lacks the lengths.
    """
    _check_same_shape(
        chosen_logprobs=chosen_logprobs,
        rejected_logprobs=rejected_logprobs,
        chosen_reference_logprobs=chosen_reference_logprobs,
        rejected_reference_logprobs=rejected_reference_logprobs,
    )
    if chosen_logprobs.dim() != 1 or chosen_logprobs.numel() == 0:
        raise TrainingInputError(
            "DPO inputs must be 1-D with at least one pair, got shape "
            f"{tuple(chosen_logprobs.shape)}"
        )
    if not (math.isfinite(beta) and beta > 0.0):
        raise TrainingInputError(f"beta must be a finite number > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise TrainingInputError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type not in DPO_LOSS_TYPES:
        raise TrainingInputError(
            f"unknown DPO loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSS_TYPES)}"
        )
    if label_smoothing and loss_type != "sigmoid":
        raise TrainingInputError(f"label_smoothing applies to the sigmoid loss, not {loss_type!r}")
    chosen_ratio = chosen_logprobs - chosen_reference_logprobs
    rejected_ratio = rejected_logprobs - rejected_reference_logprobs
    logits = beta * (chosen_ratio - rejected_ratio)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * (
            F.logsigmoid(-logits)
        )
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - logits)
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise TrainingInputError("the ipo loss needs chosen_lengths and rejected_lengths")
        _check_same_shape(
            chosen_logprobs=chosen_logprobs,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
        )
        delta = chosen_ratio / chosen_lengths.clamp(min=1.0) - rejected_ratio / (
            rejected_lengths.clamp(min=1.0)
        )
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    loss = losses.mean()
    with torch.no_grad():
        chosen_rewards = beta * chosen_ratio
        rejected_rewards = beta * rejected_ratio
        metrics = {
            "dpo_loss": float(loss),
            "accuracy": float((chosen_ratio > rejected_ratio).double().mean()),
            "margin": float((chosen_rewards - rejected_rewards).double().mean()),
            "chosen_reward": float(chosen_rewards.double().mean()),
            "rejected_reward": float(rejected_rewards.double().mean()),
            "num_pairs": float(chosen_logprobs.numel()),
        }
    return DPOOutput(loss, metrics)


def topk_reverse_kl_loss(
    target_logprobs: torch.Tensor, teacher_probs: torch.Tensor
) -> torch.Tensor:
    """Reverse KL to the teacher over its top-K tokens per position, summed over positions.

    ``target_logprobs`` has shape ``(..., N, K)``: the student's logprobs of the teacher's K
    most likely tokens at each position (:func:`compute_target_logprobs` with ``(N, K)``
    targets). ``teacher_probs`` has the same shape: the teacher's probabilities of those
    tokens renormalized over the K, 0 for an unused slot or a position not trained
    (tinker-cookbook's ``sdft`` encoding, which carries them in ``weights``). Per position
    with a used slot, the student is renormalized over the used slots and::

        p = softmax(lp over used slots),   q = teacher_probs
        L = sum_positions sum_k p[k] * (log p[k] - log q[k])

    The gradient is the exact gradient of this KL (equal to the cookbook's REINFORCE form
    ``p * sg(log p - log q)``).

    Raises:
        TrainingInputError: the shapes differ, are not at least 2-D, or a probability is
            negative or not finite.
    """
    _check_same_shape(target_logprobs=target_logprobs, teacher_probs=teacher_probs)
    if target_logprobs.dim() < 2:
        raise TrainingInputError(
            f"top-K inputs need shape (..., N, K), got {tuple(target_logprobs.shape)}"
        )
    if teacher_probs.numel() and not (
        bool(torch.isfinite(teacher_probs).all()) and float(teacher_probs.min()) >= 0.0
    ):
        raise TrainingInputError("teacher_probs must be finite and >= 0")
    used = teacher_probs > 0
    # A large finite fill, not -inf: a position without used slots must not give NaN gradients.
    student = F.log_softmax(target_logprobs.masked_fill(~used, -1e30), dim=-1)
    student = student.masked_fill(~used, 0.0)
    teacher = torch.log(teacher_probs.clamp(min=torch.finfo(teacher_probs.dtype).tiny))
    per_slot = torch.where(used, student.exp() * (student - teacher), 0.0)
    return per_slot.sum()

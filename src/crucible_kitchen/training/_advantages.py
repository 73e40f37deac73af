"""RL advantages and per-token adjustments, in plain Python (no torch).

Notation (as in tinker-cookbook): for one datum, ``q[t]`` is the sampler's logprob of target
token ``t``, ``m[t]`` is 1 on action (sampled) tokens and 0 on prompt/observation tokens, and
``A[t]`` is the per-token advantage that the ``importance_sampling`` / ``ppo`` losses consume.
Every function takes one sequence per datum (ragged lengths are fine) and returns new lists;
inputs are never mutated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, NamedTuple, get_args

from crucible_kitchen.errors import TrainingInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = (
    "ADVANTAGE_NORMALIZATIONS",
    "AdvantageAdjustment",
    "AdvantageNormalization",
    "bits_per_byte",
    "compute_advantages",
    "discounted_future_sum",
    "kl_penalty_advantages",
    "kl_sample_train_metrics",
    "nonconstant_group_indices",
    "post_update_kl_metrics",
    "reverse_kl_advantages",
    "weighted_mean_nll",
)

AdvantageNormalization = Literal["none", "group_std", "batch_std"]
"""How group-centred rewards are scaled: not at all (tinker-cookbook, Dr. GRPO), by the
group's std (TRL ``scale_rewards="group"``), or by the batch's std (``scale_rewards="batch"``)."""

ADVANTAGE_NORMALIZATIONS: tuple[AdvantageNormalization, ...] = get_args(AdvantageNormalization)


class AdvantageAdjustment(NamedTuple):
    """Per-token advantages after an adjustment, and the metrics the adjustment logs."""

    advantages: list[list[float]]
    metrics: dict[str, float]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _bessel_std(values: Sequence[float]) -> float:
    """Sample standard deviation (divides by ``n - 1``); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compute_advantages(
    reward_groups: Sequence[Sequence[float]],
    *,
    normalization: AdvantageNormalization = "none",
    leave_one_out: bool = False,
    eps: float = 1e-4,
) -> list[list[float]]:
    """GRPO group-relative advantages, one per trajectory, for each group of rollouts.

    For group ``g`` with rewards ``R`` (one prompt, several samples):

    - ``A_i = R_i - mean_g(R)`` (default; tinker-cookbook's ``compute_advantages``, no std
      division on purpose, see Dr. GRPO);
    - ``leave_one_out=True``: ``A_i = R_i - mean_{j != i}(R_j) = G/(G-1) * (R_i - mean_g(R))``
      (the RLOO baseline);
    - ``normalization="group_std"``: the above divided by ``std_g(R) + eps``;
      ``"batch_std"``: divided by ``std(all rewards) + eps``. Both stds are Bessel-corrected,
      as in TRL (``eps=1e-4`` is TRL's).

    Rewards that are NaN (unscorable rollouts) get advantage 0 and are left out of every mean
    and std, as in TRL. A std over fewer than two rewards is 0.

    Raises:
        TrainingInputError: unknown ``normalization`` or ``eps < 0``.
    """
    if normalization not in ADVANTAGE_NORMALIZATIONS:
        raise TrainingInputError(
            f"unknown advantage normalization {normalization!r}; "
            f"expected one of {', '.join(ADVANTAGE_NORMALIZATIONS)}"
        )
    if not eps >= 0.0:
        raise TrainingInputError(f"eps must be >= 0, got {eps}")
    batch_std = _bessel_std(_finite([r for group in reward_groups for r in group]))
    advantages: list[list[float]] = []
    for group in reward_groups:
        scored = _finite(group)
        if not scored:
            advantages.append([0.0] * len(group))
            continue
        mean = _mean(scored)
        scale = 1.0
        if leave_one_out:
            scale = len(scored) / (len(scored) - 1) if len(scored) > 1 else 0.0
        if normalization == "group_std":
            scale /= _bessel_std(scored) + eps
        elif normalization == "batch_std":
            scale /= batch_std + eps
        advantages.append([(r - mean) * scale if math.isfinite(r) else 0.0 for r in group])
    return advantages


def nonconstant_group_indices(
    reward_groups: Sequence[Sequence[float]], *, keep_one_if_all_constant: bool = True
) -> list[int]:
    """Indices of the groups whose rewards are not all equal (they carry a learning signal).

    A constant group has all-zero centred advantages, so it costs compute and teaches nothing
    (tinker-cookbook's ``remove_constant_reward_groups``). NaN rewards are ignored in the
    comparison. If every group is constant, ``[0]`` is returned when
    ``keep_one_if_all_constant`` (the cookbook's choice: an empty batch breaks the loop) and
    ``[]`` otherwise.
    """
    kept = [i for i, group in enumerate(reward_groups) if len(set(_finite(group))) > 1]
    if not kept and keep_one_if_all_constant and reward_groups:
        return [0]
    return kept


def discounted_future_sum(values: Sequence[float], gamma: float) -> list[float]:
    """``y[t] = sum_{k >= t} gamma**(k - t) * x[k]``, the reverse cumulative sum with discount.

    Example: ``(1, 2, 3)`` with ``gamma=0.5`` gives ``(2.75, 3.5, 3.0)``.
    """
    out = [0.0] * len(values)
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        running = values[t] + gamma * running
        out[t] = running
    return out


def _check_aligned(names: Sequence[str], columns: Sequence[Sequence[Sequence[float]]]) -> None:
    """Every column has one sequence per datum, and the sequences of a datum have one length."""
    num_data = len(columns[0])
    for name, column in zip(names, columns, strict=True):
        if len(column) != num_data:
            raise TrainingInputError(f"{name} has {len(column)} data but {names[0]} has {num_data}")
    for d in range(num_data):
        lengths = {name: len(column[d]) for name, column in zip(names, columns, strict=True)}
        if len(set(lengths.values())) > 1:
            raise TrainingInputError(f"datum {d}: per-token lengths differ: {lengths}")


def _fold_into_advantages(
    advantages: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
    per_token_terms: Sequence[Sequence[float]],
    discount_factor: float,
) -> list[list[float]]:
    out: list[list[float]] = []
    for adv, mask, terms in zip(advantages, masks, per_token_terms, strict=True):
        extra = [m * x for m, x in zip(mask, terms, strict=True)]
        if discount_factor > 0.0:
            extra = discounted_future_sum(extra, discount_factor)
        out.append([a + e for a, e in zip(adv, extra, strict=True)])
    return out


def kl_penalty_advantages(
    advantages: Sequence[Sequence[float]],
    sampling_logprobs: Sequence[Sequence[float]],
    reference_logprobs: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
    *,
    coef: float,
    discount_factor: float = 0.0,
) -> AdvantageAdjustment:
    """Fold a KL penalty against a reference policy into the advantages (tinker-cookbook style).

    Per datum and token, with ``lpref`` the reference model's logprob of the sampled token::

        d[t]   = (q[t] - lpref[t]) * m[t]             # k1 estimate of KL(policy || ref)
        avg    = sum_batch(d) / sum_batch(m)          # logged as "kl_policy_base"
        A[t]  += coef * m[t] * (avg - d[t])           # centred: the batch mean is the baseline

    With ``discount_factor > 0`` the added term is replaced by its discounted future sum
    (:func:`discounted_future_sum`). If no token is an action token, ``avg`` is 0.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    _check_aligned(
        ("advantages", "sampling_logprobs", "reference_logprobs", "masks"),
        (advantages, sampling_logprobs, reference_logprobs, masks),
    )
    diffs = [
        [(q - ref) * m for q, ref, m in zip(qs, refs, ms, strict=True)]
        for qs, refs, ms in zip(sampling_logprobs, reference_logprobs, masks, strict=True)
    ]
    total_mask = math.fsum(m for ms in masks for m in ms)
    avg = math.fsum(d for ds in diffs for d in ds) / total_mask if total_mask > 0 else 0.0
    terms = [[coef * (avg - d) for d in ds] for ds in diffs]
    return AdvantageAdjustment(
        _fold_into_advantages(advantages, masks, terms, discount_factor),
        {"kl_policy_base": avg},
    )


def reverse_kl_advantages(
    advantages: Sequence[Sequence[float]],
    student_logprobs: Sequence[Sequence[float]],
    teacher_logprobs: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
    *,
    coef: float = 1.0,
    discount_factor: float = 0.0,
    dataset_indices: Sequence[int] | None = None,
) -> AdvantageAdjustment:
    """On-policy distillation: the negative per-token reverse KL to the teacher as advantage.

    Per datum and token, with ``q`` the student's sampler logprob and ``lpteacher`` the
    teacher's logprob of the same sampled token::

        rkl[t] = (q[t] - lpteacher[t]) * m[t]   # one-sample estimate of KL(student || teacher)
        A[t]  += -coef * m[t] * rkl[t]          # not centred, unlike the KL penalty
        teacher_kl = sum(rkl) / sum(m)

    ``coef`` defaults to 1.0 (tinker-cookbook's ``kl_penalty_coef`` for distillation). With
    ``discount_factor > 0`` the added term is replaced by its discounted future sum. With
    ``dataset_indices`` (one per datum), ``teacher_kl/dataset_{i}`` is logged per dataset too.
    A KL over no action tokens is 0.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    _check_aligned(
        ("advantages", "student_logprobs", "teacher_logprobs", "masks"),
        (advantages, student_logprobs, teacher_logprobs, masks),
    )
    if dataset_indices is not None and len(dataset_indices) != len(advantages):
        raise TrainingInputError(
            f"dataset_indices has {len(dataset_indices)} entries but there are "
            f"{len(advantages)} data"
        )
    rkl = [
        [(q - t) * m for q, t, m in zip(qs, ts, ms, strict=True)]
        for qs, ts, ms in zip(student_logprobs, teacher_logprobs, masks, strict=True)
    ]
    terms = [[-coef * x for x in xs] for xs in rkl]

    def mean_kl(data: Sequence[int]) -> float:
        total_mask = math.fsum(m for d in data for m in masks[d])
        return math.fsum(x for d in data for x in rkl[d]) / total_mask if total_mask > 0 else 0.0

    metrics = {"teacher_kl": mean_kl(range(len(rkl)))}
    if dataset_indices is not None:
        for dataset in sorted(set(dataset_indices)):
            members = [d for d, i in enumerate(dataset_indices) if i == dataset]
            metrics[f"teacher_kl/dataset_{dataset}"] = mean_kl(members)
    return AdvantageAdjustment(
        _fold_into_advantages(advantages, masks, terms, discount_factor), metrics
    )


def _logprob_drift(
    sampling_logprobs: Sequence[Sequence[float]],
    other_logprobs: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
    *,
    other: str,
) -> tuple[float, float, float]:
    """Over the tokens with ``m > 0``: ``mean(q - lp)``, ``0.5 * mean((q - lp)**2)`` and
    ``mean(q)``; NaN for each when there is no such token.

    Raises:
        TrainingInputError: the inputs (``other`` names ``other_logprobs``) do not have one
            equally long sequence per datum.
    """
    _check_aligned(
        ("sampling_logprobs", other, "masks"), (sampling_logprobs, other_logprobs, masks)
    )
    pairs = [
        (q, lp)
        for qs, lps, ms in zip(sampling_logprobs, other_logprobs, masks, strict=True)
        for q, lp, m in zip(qs, lps, ms, strict=True)
        if m > 0
    ]
    if not pairs:
        return math.nan, math.nan, math.nan
    diffs = [q - lp for q, lp in pairs]
    return _mean(diffs), 0.5 * _mean([d * d for d in diffs]), _mean([q for q, _ in pairs])


def post_update_kl_metrics(
    sampling_logprobs: Sequence[Sequence[float]],
    post_update_logprobs: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
) -> dict[str, float]:
    """How far an update moved the policy on the tokens it trained on (tinker-cookbook's
    ``compute_post_kl``).

    With ``q`` the sampler's logprobs (the policy before the update) and ``lp`` the updated
    policy's logprobs of the same tokens, over ``m > 0``: ``kl_pre_post_v1 = mean(q - lp)``
    and ``kl_pre_post_v2 = 0.5 * mean((q - lp)**2)``, both NaN when no token is an action
    token.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    v1, v2, _ = _logprob_drift(
        sampling_logprobs, post_update_logprobs, masks, other="post_update_logprobs"
    )
    return {"kl_pre_post_v1": v1, "kl_pre_post_v2": v2}


def kl_sample_train_metrics(
    sampling_logprobs: Sequence[Sequence[float]],
    training_logprobs: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float]],
) -> dict[str, float]:
    """Sampler/learner drift diagnostics over action tokens (tinker-cookbook's keys).

    With ``q`` the sampler's and ``lp`` the learner's logprobs, averaged over ``m > 0``:
    ``optim/kl_sample_train_v1 = mean(q - lp)``, ``optim/kl_sample_train_v2 =
    0.5 * mean((q - lp)**2)`` and ``optim/entropy = -mean(q)``. All are NaN when no token is
    an action token.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    v1, v2, mean_sampled = _logprob_drift(
        sampling_logprobs, training_logprobs, masks, other="training_logprobs"
    )
    return {
        "optim/kl_sample_train_v1": v1,
        "optim/kl_sample_train_v2": v2,
        "optim/entropy": -mean_sampled,
    }


def weighted_mean_nll(
    logprobs: Sequence[Sequence[float]], weights: Sequence[Sequence[float]]
) -> float:
    """``-sum(w * lp) / sum(w)`` over every token of every datum (``train_mean_nll``).

    NaN when the weights sum to 0, as in tinker-cookbook's ``compute_mean_nll``.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    _check_aligned(("logprobs", "weights"), (logprobs, weights))
    total_weight = math.fsum(w for ws in weights for w in ws)
    if total_weight == 0:
        return float("nan")
    weighted = math.fsum(
        w * lp
        for lps, ws in zip(logprobs, weights, strict=True)
        for lp, w in zip(lps, ws, strict=True)
    )
    return -weighted / total_weight


def bits_per_byte(
    logprobs: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    target_tokens: Sequence[Sequence[int]],
    decode: Callable[[Sequence[int]], str],
    *,
    special_ids: Collection[int] = (),
) -> float:
    """Bits per byte, the NLL that compares across tokenizers (tinker-cookbook's
    ``compute_bpb``).

    A target token is *counted* when its weight is > 0 (weights are a mask here, not
    multipliers) and it is not in ``special_ids`` (end-of-turn markers and the like carry no
    text). Then::

        bpb = -sum(lp over counted tokens) / (ln(2) * utf8_bytes(counted tokens))

    where the bytes are those of ``decode`` applied to each run of consecutive counted
    tokens of a datum. NaN when the counted tokens hold no byte.

    Raises:
        TrainingInputError: the inputs do not have one equally long sequence per datum.
    """
    _check_aligned(
        ("logprobs", "weights", "target_tokens"),
        (logprobs, weights, [[float(t) for t in ts] for ts in target_tokens]),
    )
    special = frozenset(special_ids)
    nats: list[float] = []
    num_bytes = 0
    for lps, ws, tokens in zip(logprobs, weights, target_tokens, strict=True):
        run: list[int] = []
        for lp, w, token in zip(lps, ws, tokens, strict=True):
            if w > 0 and token not in special:
                nats.append(-lp)
                run.append(token)
            elif run:
                num_bytes += len(decode(run).encode("utf-8"))
                run = []
        if run:
            num_bytes += len(decode(run).encode("utf-8"))
    if num_bytes == 0:
        return math.nan
    return math.fsum(nats) / (math.log(2.0) * num_bytes)

"""Losses and RL advantages: hand-computed values and independent reference implementations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training import (
    compute_advantages,
    discounted_future_sum,
    kl_penalty_advantages,
    kl_sample_train_metrics,
    nonconstant_group_indices,
    reverse_kl_advantages,
    weighted_mean_nll,
)
from crucible_kitchen.training.losses import (
    BUILTIN_LOSSES,
    builtin_loss,
    cispo_loss,
    compute_target_logprobs,
    cross_entropy_loss,
    dpo_loss,
    dro_loss,
    importance_sampling_loss,
    k3_kl_loss,
    ppo_loss,
    sequence_logprobs,
)

torch.set_num_threads(1)

TOL = 1e-6


def t(values: list[float] | list[list[float]], *, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def assert_nested_close(got: object, expected: object, tol: float = TOL) -> None:
    """Element-wise closeness for nested lists (pytest.approx handles only flat ones)."""
    if isinstance(expected, list):
        assert isinstance(got, list)
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_nested_close(g, e, tol)
    else:
        assert isinstance(got, float)
        assert isinstance(expected, float)
        assert got == pytest.approx(expected, abs=tol)


def random_rl_inputs(seed: int, n: int = 40) -> tuple[list[float], list[float], list[float]]:
    rng = random.Random(seed)
    lp = [rng.uniform(-4.0, -0.01) for _ in range(n)]
    q = [x + rng.uniform(-0.6, 0.6) for x in lp]
    adv = [rng.uniform(-2.0, 2.0) if rng.random() < 0.8 else 0.0 for _ in range(n)]
    return lp, q, adv


# --- token losses: hand-computed values --------------------------------------------------------


def test_cross_entropy_is_a_weighted_sum_not_a_mean() -> None:
    lp = t([-1.0, -2.0, -3.0], grad=True)
    loss = cross_entropy_loss(lp, t([0.0, 1.0, 1.0]))
    assert loss.item() == pytest.approx(5.0, abs=TOL)
    loss.backward()
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx([0.0, -1.0, -1.0], abs=TOL)


def test_importance_sampling_hand_computed() -> None:
    lp = t([-1.0, -2.0], grad=True)
    loss = importance_sampling_loss(lp, t([-1.0, -1.5]), t([2.0, -1.0]))
    # ratios (1, e^-0.5); L = -(1*2 + e^-0.5 * -1)
    assert loss.item() == pytest.approx(-(2.0 - math.exp(-0.5)), abs=TOL)
    loss.backward()
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx([-2.0, math.exp(-0.5)], abs=TOL)


def test_importance_sampling_on_policy_gradient_is_reinforce() -> None:
    lp = t([-0.3, -1.7, -2.2], grad=True)
    advantages = t([0.5, -1.0, 2.0])
    importance_sampling_loss(lp, lp.detach(), advantages).backward()
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx((-advantages).tolist(), abs=TOL)


RATIOS = [1.5, 0.5, 0.5, 1.5, 1.0]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 2.0]


def test_ppo_clips_hand_computed() -> None:
    lp = t([math.log(r) for r in RATIOS], grad=True)
    loss = ppo_loss(lp, t([0.0] * 5), t(ADVANTAGES))
    # per token min(r*A, clip(r, .8, 1.2)*A) = 1.2, 0.5, -0.8, -1.5, 2.0
    assert loss.item() == pytest.approx(-1.4, abs=TOL)
    loss.backward()
    # clipped tokens (0 and 2) get no gradient; the others -A*r
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx([0.0, -0.5, 0.0, 1.5, -2.0], abs=TOL)


def test_ppo_thresholds_are_configurable() -> None:
    lp = t([math.log(r) for r in RATIOS])
    loss = ppo_loss(
        lp, t([0.0] * 5), t(ADVANTAGES), clip_low_threshold=0.9, clip_high_threshold=1.1
    )
    # 1.1, 0.5, -0.9, -1.5, 2.0
    assert loss.item() == pytest.approx(-1.2, abs=TOL)


def test_cispo_hand_computed() -> None:
    lp = t([math.log(r) for r in RATIOS], grad=True)
    loss = cispo_loss(lp, t([0.0] * 5), t(ADVANTAGES), clip_high_threshold=1.2)
    clipped = [1.2, 0.5, 0.5, 1.2, 1.0]
    expected = -sum(
        c * a * math.log(r) for c, a, r in zip(clipped, ADVANTAGES, RATIOS, strict=True)
    )
    assert loss.item() == pytest.approx(expected, abs=TOL)
    loss.backward()
    # stop-gradient on the ratio: d/dlp = -clip(r) * A, clipped tokens included
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx([-1.2, -0.5, 0.5, 1.2, -2.0], abs=TOL)


def test_dro_hand_computed() -> None:
    loss = dro_loss(t([-1.0, -2.0]), t([-1.5, -2.0]), t([1.0, 0.5]), beta=2.0)
    # -( (-1*1 - 0.5*2*0.25) + (-2*0.5 - 0) ) = -(-1.25 - 1)
    assert loss.item() == pytest.approx(2.25, abs=TOL)


def test_k3_kl_hand_computed() -> None:
    loss = k3_kl_loss(t([-1.0, -1.0]), t([-2.0, -5.0]), t([1.0, 0.0]))
    assert loss.item() == pytest.approx(math.exp(-1.0), abs=TOL)


def test_compute_target_logprobs_single_and_top_k() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    single = compute_target_logprobs(logits, torch.tensor([1, 0]))
    assert single.tolist() == pytest.approx([math.log(0.75), math.log(0.5)], abs=TOL)
    top_k = compute_target_logprobs(logits, torch.tensor([[1, 0], [0, 1]]))
    assert_nested_close(
        top_k.tolist(), [[math.log(0.75), math.log(0.25)], [math.log(0.5), math.log(0.5)]]
    )
    assert compute_target_logprobs(logits.half(), torch.tensor([1, 0])).dtype == torch.float32


@pytest.mark.parametrize(
    ("logits_shape", "targets"),
    [((2, 5), [1, 2, 3]), ((2, 5), [[[1]]]), ((2, 5), [1, 5]), ((2, 5), [-1, 0])],
)
def test_compute_target_logprobs_rejects_misfit_targets(
    logits_shape: tuple[int, int], targets: list[int]
) -> None:
    with pytest.raises(TrainingInputError):
        compute_target_logprobs(torch.zeros(logits_shape), torch.tensor(targets))


# --- token losses: against straightforward loops -----------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_rl_losses_match_reference_loops(seed: int) -> None:
    lp, q, adv = random_rl_inputs(seed)
    ratio = [math.exp(a - b) for a, b in zip(lp, q, strict=True)]
    expected_is = -sum(r * a for r, a in zip(ratio, adv, strict=True))
    expected_ppo = -sum(
        min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(ratio, adv, strict=True)
    )
    expected_cispo = -sum(
        min(max(r, 0.0), 4.0) * a * x for r, a, x in zip(ratio, adv, lp, strict=True)
    )
    expected_dro = -sum(
        x * a - 0.5 * 0.3 * (x - y) ** 2 for x, y, a in zip(lp, q, adv, strict=True)
    )
    assert float(importance_sampling_loss(t(lp), t(q), t(adv))) == pytest.approx(
        expected_is, abs=TOL
    )
    assert float(ppo_loss(t(lp), t(q), t(adv))) == pytest.approx(expected_ppo, abs=TOL)
    assert float(cispo_loss(t(lp), t(q), t(adv))) == pytest.approx(expected_cispo, abs=TOL)
    assert float(dro_loss(t(lp), t(q), t(adv), beta=0.3)) == pytest.approx(expected_dro, abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_ppo_gradient_matches_reference_loop(seed: int) -> None:
    lp, q, adv = random_rl_inputs(seed)
    x = t(lp, grad=True)
    ppo_loss(x, t(q), t(adv)).backward()
    expected = []
    for a, b, advantage in zip(lp, q, adv, strict=True):
        r = math.exp(a - b)
        unclipped_is_min = r * advantage <= min(max(r, 0.8), 1.2) * advantage
        inside = 0.8 <= r <= 1.2
        expected.append(-advantage * r if (unclipped_is_min or inside) else 0.0)
    assert x.grad is not None
    assert x.grad.tolist() == pytest.approx(expected, abs=TOL)


def test_losses_sum_over_a_padded_batch() -> None:
    lp_a, q_a, adv_a = random_rl_inputs(10, n=5)
    lp_b, q_b, adv_b = random_rl_inputs(11, n=3)
    pad = [0.0, 0.0]
    batch = ppo_loss(t([lp_a, [*lp_b, *pad]]), t([q_a, [*q_b, *pad]]), t([adv_a, [*adv_b, *pad]]))
    separate = ppo_loss(t(lp_a), t(q_a), t(adv_a)) + ppo_loss(t(lp_b), t(q_b), t(adv_b))
    assert float(batch) == pytest.approx(float(separate), abs=TOL)


def test_losses_reject_mismatched_shapes() -> None:
    with pytest.raises(TrainingInputError, match="shapes differ"):
        cross_entropy_loss(t([1.0, 2.0]), t([1.0]))
    with pytest.raises(TrainingInputError, match="clip thresholds"):
        ppo_loss(t([0.0]), t([0.0]), t([1.0]), clip_low_threshold=1.3, clip_high_threshold=1.2)
    with pytest.raises(TrainingInputError, match="beta"):
        dro_loss(t([0.0]), t([0.0]), t([1.0]), beta=-1.0)


# --- builtin dispatch ---------------------------------------------------------------------------


def test_builtin_loss_dispatches_with_tinker_keys() -> None:
    lp, q, adv = random_rl_inputs(3)
    inputs = {"logprobs": t(q), "advantages": t(adv), "weights": t([1.0] * len(lp)), "mask": t(adv)}
    assert float(builtin_loss("cross_entropy", t(lp), inputs)) == pytest.approx(-sum(lp), abs=TOL)
    assert float(builtin_loss("importance_sampling", t(lp), inputs)) == pytest.approx(
        float(importance_sampling_loss(t(lp), t(q), t(adv))), abs=TOL
    )
    config = {"clip_low_threshold": 0.7, "clip_high_threshold": 1.4}
    assert float(builtin_loss("ppo", t(lp), inputs, config)) == pytest.approx(
        float(ppo_loss(t(lp), t(q), t(adv), **config)), abs=TOL
    )
    assert float(builtin_loss("cispo", t(lp), inputs)) == pytest.approx(
        float(cispo_loss(t(lp), t(q), t(adv))), abs=TOL
    )
    assert float(builtin_loss("dro", t(lp), inputs, {"beta": 0.5})) == pytest.approx(
        float(dro_loss(t(lp), t(q), t(adv), beta=0.5)), abs=TOL
    )
    assert set(BUILTIN_LOSSES) == {"cross_entropy", "importance_sampling", "ppo", "cispo", "dro"}


@pytest.mark.parametrize(
    ("loss_fn", "inputs", "config", "match"),
    [
        ("nll", {"weights"}, None, "unknown loss_fn"),
        ("cross_entropy", set(), None, r"needs loss_fn_inputs \['weights'\]"),
        ("ppo", {"logprobs"}, None, "advantages"),
        ("ppo", {"logprobs", "advantages"}, {"clip_low": 0.5}, "unknown"),
        ("dro", {"logprobs", "advantages"}, None, "beta"),
    ],
)
def test_builtin_loss_errors(
    loss_fn: str, inputs: set[str], config: dict[str, float] | None, match: str
) -> None:
    with pytest.raises(TrainingInputError, match=match):
        builtin_loss(loss_fn, t([0.0]), {key: t([0.0]) for key in inputs}, config)


# --- DPO ----------------------------------------------------------------------------------------


def test_dpo_tinker_cookbook_example() -> None:
    # tinker_sdk.md section 4: loss 0.66877, accuracy 0.5, margin 0.05
    out = dpo_loss(t([-3.0, -2.0]), t([-4.0, -1.0]), t([-3.5, -2.5]), t([-3.5, -1.5]), beta=0.1)
    expected_loss = (-math.log(1 / (1 + math.exp(-0.1))) + math.log(2.0)) / 2
    assert out.loss.item() == pytest.approx(expected_loss, abs=TOL)
    assert out.loss.item() == pytest.approx(0.66877, abs=1e-5)
    assert out.metrics == pytest.approx(
        {
            "dpo_loss": expected_loss,
            "accuracy": 0.5,
            "margin": 0.05,
            "chosen_reward": 0.05,
            "rejected_reward": 0.0,
            "num_pairs": 2.0,
        },
        abs=TOL,
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_matches_reference_loop_and_gradient(label_smoothing: float) -> None:
    rng = random.Random(7)
    columns = [[rng.uniform(-30.0, -1.0) for _ in range(6)] for _ in range(4)]
    chosen = t(columns[0], grad=True)
    out = dpo_loss(
        chosen,
        t(columns[1]),
        t(columns[2]),
        t(columns[3]),
        beta=0.5,
        label_smoothing=label_smoothing,
    )

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))

    expected_loss, expected_grad = 0.0, []
    for c, r, cref, rref in zip(*columns, strict=True):
        z = 0.5 * ((c - cref) - (r - rref))
        expected_loss += -(1 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)
        sig = 1 / (1 + math.exp(-z))
        # d/dc of the pair loss, divided by the number of pairs (mean)
        expected_grad.append(0.5 * (-(1 - label_smoothing) * (1 - sig) + label_smoothing * sig) / 6)
    assert out.loss.item() == pytest.approx(expected_loss / 6, abs=TOL)
    out.loss.backward()
    assert chosen.grad is not None
    assert chosen.grad.tolist() == pytest.approx(expected_grad, abs=TOL)


def test_dpo_is_stable_for_large_margins() -> None:
    out = dpo_loss(t([0.0]), t([-5000.0]), t([0.0]), t([0.0]), beta=1.0)
    assert out.loss.item() == pytest.approx(0.0, abs=TOL)
    out = dpo_loss(t([-5000.0]), t([0.0]), t([0.0]), t([0.0]), beta=1.0)
    assert out.loss.item() == pytest.approx(5000.0, rel=TOL)


def test_dpo_rejects_bad_arguments() -> None:
    with pytest.raises(TrainingInputError, match="1-D"):
        dpo_loss(t([]), t([]), t([]), t([]))
    with pytest.raises(TrainingInputError, match="beta"):
        dpo_loss(t([0.0]), t([0.0]), t([0.0]), t([0.0]), beta=0.0)
    with pytest.raises(TrainingInputError, match="shapes differ"):
        dpo_loss(t([0.0]), t([0.0, 1.0]), t([0.0]), t([0.0]))


def test_sequence_logprobs_sums_weighted_tokens_per_row() -> None:
    lp = t([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    weights = t([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert sequence_logprobs(lp, weights).tolist() == pytest.approx([-5.0, -1.0], abs=TOL)


# --- GRPO advantages ----------------------------------------------------------------------------


def test_group_advantages_are_mean_centred_without_std() -> None:
    # tinker_sdk.md section 4: rewards (1, 0, 0.5) -> (0.5, -0.5, 0.0)
    assert_nested_close(compute_advantages([[1.0, 0.0, 0.5]]), [[0.5, -0.5, 0.0]])


def test_group_advantage_variants_hand_computed() -> None:
    group_std = compute_advantages([[1.0, 0.0, 0.5]], normalization="group_std")
    assert_nested_close(group_std, [[0.5 / 0.5001, -0.5 / 0.5001, 0.0]])
    # batch rewards (1, 0, 3, 3): mean 1.75, Bessel variance 6.75 / 3 = 2.25, std 1.5
    batch_std = compute_advantages([[1.0, 0.0], [3.0, 3.0]], normalization="batch_std")
    assert_nested_close(batch_std, [[0.5 / 1.5001, -0.5 / 1.5001], [0.0, 0.0]])
    loo = compute_advantages([[1.0, 0.0, 0.5]], leave_one_out=True)
    assert_nested_close(loo, [[1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5]])


def test_group_advantages_ignore_nan_rewards_and_singletons() -> None:
    assert_nested_close(compute_advantages([[1.0, math.nan, 0.0]]), [[0.5, 0.0, -0.5]])
    assert compute_advantages([[3.0]], normalization="group_std") == [[0.0]]
    assert compute_advantages([[3.0]], leave_one_out=True) == [[0.0]]
    assert compute_advantages([[math.nan, math.nan]]) == [[0.0, 0.0]]


@pytest.mark.parametrize("normalization", ["none", "group_std", "batch_std"])
def test_group_advantages_match_trl_style_tensor_reference(normalization: str) -> None:
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 4, generator=generator, dtype=torch.float64)
    mean = rewards.mean(dim=1, keepdim=True)
    expected = rewards - mean
    if normalization == "group_std":
        expected = expected / (rewards.std(dim=1, keepdim=True) + 1e-4)
    elif normalization == "batch_std":
        expected = expected / (rewards.std() + 1e-4)
    got = compute_advantages(rewards.tolist(), normalization=normalization)  # type: ignore[arg-type]
    assert_nested_close(got, expected.tolist())


def test_advantages_reject_unknown_normalization() -> None:
    with pytest.raises(TrainingInputError, match="normalization"):
        compute_advantages([[1.0]], normalization="std")  # type: ignore[arg-type]


def test_nonconstant_group_indices() -> None:
    assert nonconstant_group_indices([[1.0, 1.0], [0.0, 1.0], [2.0, 2.0, math.nan]]) == [1]
    assert nonconstant_group_indices([[1.0, 1.0], [2.0, 2.0]]) == [0]
    assert nonconstant_group_indices([[1.0, 1.0]], keep_one_if_all_constant=False) == []
    assert nonconstant_group_indices([]) == []


def test_discounted_future_sum() -> None:
    assert discounted_future_sum([1.0, 2.0, 3.0], 0.5) == pytest.approx([2.75, 3.5, 3.0])
    assert discounted_future_sum([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert discounted_future_sum([], 0.9) == []


# --- KL penalty and distillation ----------------------------------------------------------------


def test_kl_penalty_tinker_cookbook_example() -> None:
    # tinker_sdk.md section 4: coef 0.5, diffs (0.5, -1) -> kl_policy_base -0.25, adv (0.625, 1.375)
    out = kl_penalty_advantages([[1.0, 1.0]], [[0.5, -1.0]], [[0.0, 0.0]], [[1.0, 1.0]], coef=0.5)
    assert_nested_close(out.advantages, [[0.625, 1.375]])
    assert out.metrics == pytest.approx({"kl_policy_base": -0.25}, abs=TOL)


def test_kl_penalty_with_discount_and_mask() -> None:
    # d = (1, 0, -1) on action tokens, avg 0, terms (-1, 0, 1); gamma .5 -> (-0.75, 0.5, 1)
    out = kl_penalty_advantages(
        [[0.0, 0.0, 0.0, 7.0]],
        [[1.0, 0.0, 0.0, 5.0]],
        [[0.0, 0.0, 1.0, 0.0]],
        [[1.0, 1.0, 1.0, 0.0]],
        coef=1.0,
        discount_factor=0.5,
    )
    assert_nested_close(out.advantages, [[-0.75, 0.5, 1.0, 7.0]])
    assert out.metrics["kl_policy_base"] == pytest.approx(0.0, abs=TOL)


def test_kl_penalty_matches_tensor_reference_over_ragged_batch() -> None:
    rng = random.Random(5)
    lengths = [4, 7, 1]
    adv = [[rng.uniform(-1, 1)] * n for n in lengths]
    q = [[rng.uniform(-3, 0) for _ in range(n)] for n in lengths]
    ref = [[rng.uniform(-3, 0) for _ in range(n)] for n in lengths]
    masks = [[float(rng.random() < 0.7) for _ in range(n)] for n in lengths]
    out = kl_penalty_advantages(adv, q, ref, masks, coef=0.2, discount_factor=0.9)
    # the cookbook's tensor formulation
    diffs = [(t(a) - t(b)) * t(m) for a, b, m in zip(q, ref, masks, strict=True)]
    avg = sum(float(d.sum()) for d in diffs) / sum(sum(m) for m in masks)
    for i, d in enumerate(diffs):
        kl = 0.2 * t(masks[i]) * (avg - d)
        discounted = torch.zeros_like(kl)
        running = torch.zeros((), dtype=torch.float64)
        for j in reversed(range(len(kl))):
            running = kl[j] + 0.9 * running
            discounted[j] = running
        assert out.advantages[i] == pytest.approx((t(adv[i]) + discounted).tolist(), abs=TOL)
    assert out.metrics["kl_policy_base"] == pytest.approx(avg, abs=TOL)


def test_kl_penalty_without_action_tokens_changes_nothing() -> None:
    out = kl_penalty_advantages([[1.0]], [[0.5]], [[0.0]], [[0.0]], coef=1.0)
    assert out.advantages == [[1.0]]
    assert out.metrics == {"kl_policy_base": 0.0}


def test_reverse_kl_advantages_hand_computed() -> None:
    out = reverse_kl_advantages(
        [[0.0, 0.0], [0.0, 0.0]],
        [[-1.0, -2.0], [-1.0, -1.0]],
        [[-1.5, -1.0], [-3.0, -1.0]],
        [[1.0, 1.0], [1.0, 0.0]],
        dataset_indices=[0, 1],
    )
    # rkl = (0.5, -1) and (2, 0): A = -rkl, not centred
    assert_nested_close(out.advantages, [[-0.5, 1.0], [-2.0, 0.0]])
    assert out.metrics == pytest.approx(
        {"teacher_kl": 1.5 / 3, "teacher_kl/dataset_0": -0.25, "teacher_kl/dataset_1": 2.0},
        abs=TOL,
    )


def test_reverse_kl_discount_and_coef() -> None:
    out = reverse_kl_advantages(
        [[1.0, 1.0]], [[-1.0, -1.0]], [[-2.0, -3.0]], [[1.0, 1.0]], coef=0.5, discount_factor=1.0
    )
    # terms -0.5 * (1, 2) = (-0.5, -1); undiscounted future sums (-1.5, -1)
    assert_nested_close(out.advantages, [[-0.5, 0.0]])


def test_adjustments_reject_misaligned_inputs() -> None:
    with pytest.raises(TrainingInputError, match="datum 0"):
        kl_penalty_advantages([[0.0, 0.0]], [[0.0]], [[0.0, 0.0]], [[1.0, 1.0]], coef=1.0)
    with pytest.raises(TrainingInputError, match="data"):
        reverse_kl_advantages([[0.0]], [[0.0]], [[0.0]], [])
    with pytest.raises(TrainingInputError, match="dataset_indices"):
        reverse_kl_advantages([[0.0]], [[0.0]], [[0.0]], [[1.0]], dataset_indices=[0, 1])


def test_kl_sample_train_metrics_hand_computed() -> None:
    metrics = kl_sample_train_metrics([[-1.0, -2.0, -9.0]], [[-1.5, -1.0, 0.0]], [[1.0, 1.0, 0.0]])
    assert metrics == pytest.approx(
        {
            "optim/kl_sample_train_v1": -0.25,
            "optim/kl_sample_train_v2": 0.3125,
            "optim/entropy": 1.5,
        }
    )
    empty = kl_sample_train_metrics([[-1.0]], [[-1.0]], [[0.0]])
    assert all(math.isnan(v) for v in empty.values())


def test_weighted_mean_nll() -> None:
    # tinker_sdk.md section 4: (-1, -2, -3) with weights (0, 1, 1) -> 2.5
    assert weighted_mean_nll([[-1.0, -2.0, -3.0]], [[0.0, 1.0, 1.0]]) == pytest.approx(2.5)
    assert weighted_mean_nll([[-1.0], [-4.0]], [[1.0], [3.0]]) == pytest.approx(13.0 / 4)
    assert math.isnan(weighted_mean_nll([[-1.0]], [[0.0]]))

"""Golden numbers for the math beside tinker-cookbook's and TRL's: the DPO variants (TRL's
sigmoid, hinge, IPO), top-K reverse-KL distillation, bits per byte and the post-update KL.

Every expected value is worked out by hand from the published definition (in the comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.ports import Datum, ModelInput, TensorData
from crucible_kitchen.stages.builtin import DpoLoss, TopKReverseKlLoss
from crucible_kitchen.training import (
    DPO_LOSS_TYPES,
    bits_per_byte,
    post_update_kl_metrics,
)
from crucible_kitchen.training.losses import dpo_loss, topk_reverse_kl_loss

torch.set_num_threads(1)


def t(values: list[float] | list[list[float]], *, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# Two pairs. Policy/reference sequence logprobs, beta = 0.5:
#   dc = chosen - ref_chosen = (0.5, -1.0); dr = rejected - ref_rejected = (-0.5, 1.0)
#   z = beta * (dc - dr) = (0.5, -1.0)
CHOSEN, REJECTED = [-3.0, -5.0], [-4.0, -2.0]
REF_CHOSEN, REF_REJECTED = [-3.5, -4.0], [-3.5, -3.0]
BETA = 0.5
CHOSEN_LENGTHS, REJECTED_LENGTHS = [2.0, 4.0], [5.0, 1.0]
EXPECTED_DPO = {
    # TRL sigmoid: mean(-log sigmoid(z)) = mean(log(1 + e^-0.5), log(1 + e^1))
    "sigmoid": (math.log1p(math.exp(-0.5)) + math.log1p(math.e)) / 2,  # 0.8936693...
    # TRL hinge: mean(relu(1 - z)) = mean(0.5, 2.0)
    "hinge": 1.25,
    # TRL ipo: per-token log-ratios dc/|c| - dr/|r| = (0.25 + 0.1, -0.25 - 1.0) = (0.35, -1.25)
    # loss = mean((x - 1/(2 beta))^2) = mean(0.65^2, 2.25^2) = mean(0.4225, 5.0625)
    "ipo": 2.7425,
}


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_variants_hand_computed(loss_type: str) -> None:
    out = dpo_loss(
        t(CHOSEN),
        t(REJECTED),
        t(REF_CHOSEN),
        t(REF_REJECTED),
        beta=BETA,
        loss_type=loss_type,  # type: ignore[arg-type]
        chosen_lengths=t(CHOSEN_LENGTHS),
        rejected_lengths=t(REJECTED_LENGTHS),
    )
    assert float(out.loss) == pytest.approx(EXPECTED_DPO[loss_type], abs=1e-9)
    assert out.metrics["dpo_loss"] == pytest.approx(EXPECTED_DPO[loss_type], abs=1e-9)
    # The metrics do not depend on the loss: beta * dc, beta * dr.
    assert out.metrics["chosen_reward"] == pytest.approx((0.25 - 0.5) / 2)
    assert out.metrics["rejected_reward"] == pytest.approx((-0.25 + 0.5) / 2)
    assert out.metrics["accuracy"] == 0.5


def test_dpo_label_smoothing_hand_computed_and_only_for_sigmoid() -> None:
    # eps = 0.2: mean(0.8 * -log sigmoid(z) + 0.2 * -log sigmoid(-z)), z = (0.5, -1.0)
    eps = 0.2
    expected = (
        (1 - eps) * math.log1p(math.exp(-0.5))
        + eps * math.log1p(math.exp(0.5))
        + (1 - eps) * math.log1p(math.exp(1.0))
        + eps * math.log1p(math.exp(-1.0))
    ) / 2
    out = dpo_loss(
        t(CHOSEN), t(REJECTED), t(REF_CHOSEN), t(REF_REJECTED), beta=BETA, label_smoothing=eps
    )
    assert float(out.loss) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(TrainingInputError, match="label_smoothing"):
        dpo_loss(t([0.0]), t([0.0]), t([0.0]), t([0.0]), label_smoothing=0.1, loss_type="hinge")
    with pytest.raises(TrainingInputError, match="chosen_lengths"):
        dpo_loss(t([0.0]), t([0.0]), t([0.0]), t([0.0]), loss_type="ipo")
    with pytest.raises(TrainingInputError, match="loss_type"):
        dpo_loss(t([0.0]), t([0.0]), t([0.0]), t([0.0]), loss_type="robust")  # type: ignore[arg-type]


def _pair_data() -> tuple[list[Datum], list[TensorData], tuple[tuple[float, ...], ...]]:
    """The two pairs above as datums: per-token logprobs whose weighted sums are the sequence
    logprobs, with |c| = (2, 4) and |r| = (5, 1) weighted tokens (plus unweighted prompts)."""
    rows = [
        # (weights, policy per token, reference per token)
        ([0.0, 1.0, 1.0], [-9.0, -1.0, -2.0], [-9.0, -1.5, -2.0]),  # chosen 1: -3 vs -3.5
        ([0.0] + [1.0] * 5, [-9.0, -1.0, -1.0, -1.0, -0.5, -0.5], [-9.0] + [-0.7] * 5),
        ([1.0, 1.0, 1.0, 1.0], [-1.0, -1.5, -1.25, -1.25], [-1.0] * 4),  # chosen 2: -5 vs -4
        ([0.0, 1.0], [-7.0, -2.0], [-7.0, -3.0]),  # rejected 2: -2 vs -3
    ]
    data, logprobs, reference = [], [], []
    for weights, policy, ref in rows:
        n = len(weights)
        data.append(
            Datum(
                model_input=ModelInput.from_ints(list(range(n))),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(range(1, n + 1))),
                    "weights": TensorData(dtype="float32", data=tuple(weights)),
                },
            )
        )
        logprobs.append(TensorData(dtype="float32", data=tuple(policy)))
        reference.append(tuple(ref))
    return data, logprobs, tuple(reference)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_the_stage_dpo_loss_matches_the_torch_loss_and_its_gradient(loss_type: str) -> None:
    data, logprobs, reference = _pair_data()
    out = DpoLoss(beta=BETA, reference_logprobs=reference, loss_type=loss_type)(  # type: ignore[arg-type]
        data, logprobs
    )
    assert out.loss == pytest.approx(EXPECTED_DPO[loss_type], abs=1e-9)
    assert out.metrics["num_tokens"] == 3 + 6 + 4 + 2
    # The gradient with respect to each token logprob, by autograd through the torch loss.
    policy = [t(list(lp.data), grad=True) for lp in logprobs]
    weights = [t(list(d.loss_fn_inputs["weights"].data)) for d in data]
    sums = [(p * w).sum() for p, w in zip(policy, weights, strict=True)]
    refs = [
        sum(w * r for w, r in zip(d.loss_fn_inputs["weights"].data, ref, strict=True))
        for d, ref in zip(data, reference, strict=True)
    ]
    torch_out = dpo_loss(
        torch.stack(sums[0::2]),
        torch.stack(sums[1::2]),
        t(refs[0::2]),
        t(refs[1::2]),
        beta=BETA,
        loss_type=loss_type,  # type: ignore[arg-type]
        chosen_lengths=t(CHOSEN_LENGTHS),
        rejected_lengths=t(REJECTED_LENGTHS),
    )
    torch_out.loss.backward()
    for grad, p in zip(out.logprob_grads, policy, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(t(list(grad.data)), p.grad, rtol=1e-9, atol=1e-12)


# Top-K reverse KL. Position 1: student lp over K=3 slots (ln .5, ln .2, ln .1) renormalize to
# p = (.625, .25, .125); teacher q = (.5, .25, .25):
#   KL = .625 ln(.625/.5) + .25 ln 1 + .125 ln(.125/.25) = 0.0528213...
# Position 2: slot 3 unused (q = 0): p = (.5, .5) over two slots, q = (.8, .2):
#   KL = .5 ln(.5/.8) + .5 ln(.5/.2) = 0.2231435...
# Position 3: no used slot (not trained): 0.
TOPK_STUDENT = [
    [math.log(0.5), math.log(0.2), math.log(0.1)],
    [math.log(0.3), math.log(0.3), math.log(0.4)],
    [-1.0, -2.0, -3.0],
]
TOPK_TEACHER = [[0.5, 0.25, 0.25], [0.8, 0.2, 0.0], [0.0, 0.0, 0.0]]
KL_1 = 0.625 * math.log(0.625 / 0.5) + 0.125 * math.log(0.125 / 0.25)
KL_2 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)


def test_topk_reverse_kl_hand_computed_with_its_exact_gradient() -> None:
    student = t(TOPK_STUDENT, grad=True)
    loss = topk_reverse_kl_loss(student, t(TOPK_TEACHER))
    assert float(loss.detach()) == pytest.approx(KL_1 + KL_2, abs=1e-12)
    loss.backward()
    assert student.grad is not None
    # d KL / d lp_j = p_j * (log(p_j / q_j) - KL) over the used slots, 0 elsewhere.
    p1, q1 = [0.625, 0.25, 0.125], TOPK_TEACHER[0]
    expected_1 = [p * (math.log(p / q) - KL_1) for p, q in zip(p1, q1, strict=True)]
    expected_2 = [0.5 * (math.log(0.5 / 0.8) - KL_2), 0.5 * (math.log(0.5 / 0.2) - KL_2), 0.0]
    torch.testing.assert_close(
        student.grad, t([expected_1, expected_2, [0.0, 0.0, 0.0]]), rtol=1e-9, atol=1e-12
    )


def test_the_torch_free_top_k_loss_gives_the_same_loss_and_gradient() -> None:
    n = len(TOPK_STUDENT)
    datum = Datum(
        model_input=ModelInput.from_ints(list(range(n))),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(range(n * 3)), shape=(n, 3)),
            "weights": TensorData.from_list(TOPK_TEACHER, dtype="float32"),
        },
    )
    student = TensorData.from_list(TOPK_STUDENT, dtype="float32")
    out = TopKReverseKlLoss()([datum], [student])
    assert out.loss == pytest.approx(KL_1 + KL_2, abs=1e-12)
    assert out.metrics == pytest.approx(
        {"topk_reverse_kl": (KL_1 + KL_2) / 2, "topk_positions": 2.0}
    )
    reference = t(TOPK_STUDENT, grad=True)
    topk_reverse_kl_loss(reference, t(TOPK_TEACHER)).backward()
    assert reference.grad is not None
    [grad] = out.logprob_grads
    assert grad.dims == (n, 3)
    torch.testing.assert_close(t(grad.tolist()), reference.grad, rtol=1e-9, atol=1e-12)  # type: ignore[arg-type]
    with pytest.raises(TrainingInputError, match=r"\(N, K\)"):
        TopKReverseKlLoss()([datum], [TensorData(dtype="float32", data=(0.0,) * n)])


def test_topk_reverse_kl_is_zero_when_the_student_matches_the_teacher() -> None:
    teacher = t([[0.7, 0.2, 0.1]])
    # The student's raw logprobs need not be normalized over the K slots.
    student = torch.log(teacher * 0.3)
    assert float(topk_reverse_kl_loss(student, teacher)) == pytest.approx(0.0, abs=1e-12)


def test_topk_reverse_kl_rejects_bad_inputs() -> None:
    with pytest.raises(TrainingInputError, match="shapes differ"):
        topk_reverse_kl_loss(t([[0.0, 0.0]]), t([[1.0]]))
    with pytest.raises(TrainingInputError, match=r"\(\.\.\., N, K\)"):
        topk_reverse_kl_loss(t([0.0]), t([1.0]))
    with pytest.raises(TrainingInputError, match=">= 0"):
        topk_reverse_kl_loss(t([[0.0, 0.0]]), t([[1.5, -0.5]]))


# Bits per byte: -sum(lp of counted tokens) / (ln 2 * UTF-8 bytes of the counted text).
def _decode(tokens: object) -> str:
    pieces = {1: "ab", 2: "é", 3: "<|im_end|>", 4: "c"}
    return "".join(pieces[int(token)] for token in tokens)  # type: ignore[attr-defined]


def test_bits_per_byte_hand_computed() -> None:
    # Datum 1: tokens 1 ("ab", 2 bytes), 2 ("é", 2 bytes), 3 (special, excluded), weights 1.
    # Datum 2: token 4 ("c", 1 byte) weight 0.5 (a mask, not a multiplier), token 1 weight 0.
    # nats = 1.0 + 2.0 + 0.5 = 3.5; bytes = 2 + 2 + 1 = 5.
    bpb = bits_per_byte(
        [[-1.0, -2.0, -7.0], [-0.5, -9.0]],
        [[1.0, 1.0, 1.0], [0.5, 0.0]],
        [[1, 2, 3], [4, 1]],
        _decode,
        special_ids={3},
    )
    assert bpb == pytest.approx(3.5 / (math.log(2) * 5), abs=1e-12)
    assert math.isnan(bits_per_byte([[-1.0]], [[0.0]], [[1]], _decode))


def test_bits_per_byte_equals_nll_over_ln2_for_one_byte_tokens() -> None:
    # A byte-level tokenizer: one byte per token, so bpb = mean NLL in bits.
    lps = [[-0.7, -1.4, -2.1]]
    bpb = bits_per_byte(lps, [[1.0, 1.0, 1.0]], [[4, 4, 4]], _decode)
    assert bpb == pytest.approx(1.4 / math.log(2), abs=1e-12)


def test_post_update_kl_hand_computed() -> None:
    # q - lp over the action tokens: (-1 + 1.5, -2 + 1) = (0.5, -1.0)
    # v1 = mean = -0.25; v2 = 0.5 * mean(0.25, 1.0) = 0.3125
    metrics = post_update_kl_metrics([[-1.0, -2.0, -9.0]], [[-1.5, -1.0, 0.0]], [[1.0, 1.0, 0.0]])
    assert metrics == pytest.approx({"kl_pre_post_v1": -0.25, "kl_pre_post_v2": 0.3125})
    empty = post_update_kl_metrics([[-1.0]], [[-2.0]], [[0.0]])
    assert all(math.isnan(v) for v in empty.values())
    with pytest.raises(TrainingInputError):
        post_update_kl_metrics([[-1.0]], [[-1.0, -2.0]], [[1.0]])

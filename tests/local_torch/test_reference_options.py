"""The reference-math options on the local torch backend: the post-update KL of RL, DPO's
loss variants, and the Qwen3 chat formats, in real training runs."""

from __future__ import annotations

import pytest

from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.telemetry import DpoStep, RlStep, TelemetryEvent

pytestmark = pytest.mark.anyio

RL = {
    "num_batches": 1,
    "groups_per_batch": 4,
    "group_size": 8,
    "learning_rate": 1e-2,
    "compute_post_kl": True,
    "final_eval": False,
    "register_model": False,
}


async def test_the_post_update_kl_is_the_drift_a_step_made() -> None:
    """A batch with a learning signal moves the policy; one without (every group's rewards
    equal: all advantages 0) leaves it where the sampler was, up to rounding."""
    mixed = 0
    for seed in (1, 2):
        events: list[TelemetryEvent] = []
        result = await Kitchen.run(
            "reinforcement",
            RL,
            adapters=Adapters.local_torch(seed=seed),
            seed=seed,
            telemetry=[events.append],
        )
        [step] = [e for e in events if isinstance(e, RlStep)]
        v1, v2 = result.metrics["optim/kl_pre_post_v1"], result.metrics["optim/kl_pre_post_v2"]
        assert v2 >= 0.5 * v1 * v1 - 1e-12  # half the mean square >= half the squared mean
        if step.metrics["rl/frac_mixed_groups"] > 0:
            mixed += 1
            assert v2 > 1e-4
        else:
            assert v2 < 1e-9
    assert mixed == 1


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
async def test_dpo_loss_types_train_on_the_local_backend(loss_type: str) -> None:
    events: list[TelemetryEvent] = []
    # Two batches of four pairs, four epochs in a fixed order: each batch is seen 4 times.
    config = {
        "batch_size": 4,
        "max_examples": 8,
        "epochs": 4,
        "shuffle": False,
        "learning_rate": 1e-3,
        "loss_type": loss_type,
        "final_eval": False,
        "register_model": False,
    }
    result = await Kitchen.run(
        "preference",
        config,
        adapters=Adapters.local_torch(seed=4),
        seed=4,
        telemetry=[events.append],
    )
    assert result.status == "completed"
    steps = [e for e in events if isinstance(e, DpoStep)]
    # The first step: the policy is the reference, so every log-ratio is 0.
    first = {"sigmoid": 0.6931471805599453, "hinge": 1.0, "ipo": (1 / (2 * 0.1)) ** 2}
    assert steps[0].loss == pytest.approx(first[loss_type], rel=1e-4)
    # Chosen pulled up relative to rejected: each batch's margin and loss improve.
    for earlier, later in ((steps[0], steps[-2]), (steps[1], steps[-1])):
        assert later.margin > earlier.margin + 0.1
        assert later.loss < earlier.loss
    assert all(e.metrics["dpo/num_tokens"] > 0 for e in steps)


@pytest.mark.parametrize("renderer", ["qwen3", "qwen3_disable_thinking"])
async def test_qwen3_formats_train_and_evaluate_on_the_local_backend(renderer: str) -> None:
    config = {
        "split": "train[:-16]",
        "eval_split": "train[-16:]",
        "max_examples": 32,
        "batch_size": 8,
        "epochs": 1,
        "eval_examples": 8,
        "use_evaluator": False,
        "register_model": False,
    }
    result = await Kitchen.run(
        "supervised",
        config,
        adapters=Adapters.local_torch(seed=2, renderer=renderer),
        seed=2,
    )
    assert result.status == "completed"
    assert result.metrics["eval/bpb"] > 0.0

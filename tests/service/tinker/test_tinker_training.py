"""Training through the official SDK: SFT, gradient accumulation, chunked calls, the RL losses,
forward_backward_custom, and bad requests that fail without blocking the model's queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tinker
import torch
from _tinker_support import (
    ADAM,
    TEXT,
    close,
    rl_datum,
    serving,
    sft_datum,
    training,
    training_client,
)
from tinker import types

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def _logprobs(output: types.ForwardBackwardOutput, index: int = 0) -> np.ndarray:
    return np.asarray(output.loss_fn_outputs[index]["logprobs"].data, dtype=np.float64)


async def test_sft_steps_pipelined_with_their_optimizer_steps_lower_the_loss(
    tmp_path: Path,
) -> None:
    async with training(tmp_path) as (_served, _client, trainer):
        datum = sft_datum()
        before = (await trainer.forward([datum], "cross_entropy")).metrics["loss:sum"]
        steps = []
        for _ in range(8):  # submit the optimizer step before awaiting the gradients
            steps.append(
                (trainer.forward_backward([datum], "cross_entropy"), trainer.optim_step(ADAM))
            )
        losses = [(await fwd).metrics["loss:sum"] for fwd, _ in steps]
        for _, optim in steps:
            await optim
        after = (await trainer.forward([datum], "cross_entropy")).metrics["loss:sum"]
    assert losses[0] == pytest.approx(before, rel=1e-6)
    assert after < 0.95 * before, (before, losses, after)
    assert losses[-1] < losses[0]


async def test_gradients_accumulate_until_the_step_and_losses_are_sums(tmp_path: Path) -> None:
    first, second = sft_datum(TEXT), sft_datum(b"another line of text to learn from")
    async with serving(tmp_path) as served:
        client = await served.connect()
        split = await training_client(client)
        whole = await training_client(client)
        parts = [
            await split.forward_backward([first], "cross_entropy"),
            await split.forward([second], "cross_entropy"),  # forward only: no gradient
            await split.forward_backward([second], "cross_entropy"),
        ]
        together = await whole.forward_backward([first, second], "cross_entropy")
        await split.optim_step(ADAM)
        await whole.optim_step(ADAM)
        after_split = await split.forward([first, second], "cross_entropy")
        after_whole = await whole.forward([first, second], "cross_entropy")
        await close(client)
    total = parts[0].metrics["loss:sum"] + parts[2].metrics["loss:sum"]
    assert together.metrics["loss:sum"] == pytest.approx(total, rel=1e-6)
    assert parts[1].metrics["loss:sum"] == pytest.approx(parts[2].metrics["loss:sum"], rel=1e-6)
    for index in range(2):
        np.testing.assert_allclose(
            _logprobs(after_split, index), _logprobs(after_whole, index), rtol=1e-5, atol=1e-6
        )
    assert after_whole.metrics["loss:sum"] < together.metrics["loss:sum"]


async def test_chunks_sent_concurrently_start_in_seq_order(tmp_path: Path) -> None:
    texts = [TEXT, b"a short one", b"and a third, longer example of bytes to predict"]
    data = [sft_datum(text) for text in texts]
    async with training(tmp_path, max_chunk_datums=1) as (_served, _client, trainer):
        singles = [await trainer.forward([datum], "cross_entropy") for datum in data]
        chunked = await trainer.forward_backward(data, "cross_entropy")  # 3 requests
        await trainer.optim_step(ADAM)
    assert [len(out["logprobs"].data) for out in chunked.loss_fn_outputs] == [
        len(text) - 1 for text in texts
    ]
    for index, single in enumerate(singles):
        np.testing.assert_allclose(_logprobs(chunked, index), _logprobs(single), rtol=1e-6)
    expected = sum(single.metrics["loss:sum"] for single in singles)
    assert chunked.metrics["loss:sum"] == pytest.approx(expected, rel=1e-6)


def _expected_rl_loss(
    loss_fn: str, lp: np.ndarray, q: np.ndarray, adv: np.ndarray, config: dict[str, float]
) -> float:
    """Tinker's documented formulas, sum-reduced."""
    ratio = np.exp(lp - q)
    if loss_fn == "importance_sampling":
        return float(-(ratio * adv).sum())
    if loss_fn == "ppo":
        clipped = np.clip(ratio, config["clip_low_threshold"], config["clip_high_threshold"])
        return float(-np.minimum(ratio * adv, clipped * adv).sum())
    if loss_fn == "cispo":
        clipped = np.clip(ratio, config["clip_low_threshold"], config["clip_high_threshold"])
        return float(-(clipped * adv * lp).sum())
    assert loss_fn == "dro"
    return float(-(lp * adv - 0.5 * config["beta"] * (lp - q) ** 2).sum())


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("importance_sampling", {}),
        ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        ("cispo", {"clip_low_threshold": 0.5, "clip_high_threshold": 1.2}),
        ("dro", {"beta": 0.5}),
    ],
)
async def test_rl_losses_follow_their_formulas_over_the_wire(
    tmp_path: Path, loss_fn: str, config: dict[str, float]
) -> None:
    async with training(tmp_path) as (_served, _client, trainer):
        current = _logprobs(await trainer.forward([sft_datum()], "cross_entropy"))
        offsets = np.resize([0.3, -0.3, 0.0, 0.05], current.shape)
        advantages = np.resize([1.0, -0.5, 2.0], current.shape)
        sampling = current + offsets
        datum = rl_datum(TEXT, sampling.tolist(), advantages.tolist())
        result = await trainer.forward_backward([datum], loss_fn, config or None)  # type: ignore[arg-type]
        step = await trainer.optim_step(ADAM)
    lp = _logprobs(result)
    np.testing.assert_allclose(lp, current, rtol=1e-6)
    expected = _expected_rl_loss(loss_fn, lp, np.float32(sampling), advantages, config)
    assert result.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert step.metrics is not None


async def test_forward_backward_custom_trains_a_dpo_loss(tmp_path: Path) -> None:
    chosen, rejected = sft_datum(b"the answer is yes"), sft_datum(b"the answer is no!")
    beta = 0.5

    async with training(tmp_path) as (_served, _client, trainer):
        reference = await trainer.forward([chosen, rejected], "cross_entropy")
        ref = [float(_logprobs(reference, i).sum()) for i in range(2)]

        def dpo(
            data: list[types.Datum], logprobs: list[torch.Tensor]
        ) -> tuple[torch.Tensor, dict[str, float]]:
            margin = beta * ((logprobs[0].sum() - ref[0]) - (logprobs[1].sum() - ref[1]))
            loss = -torch.nn.functional.logsigmoid(margin)
            return loss, {"margin:mean": float(margin.detach())}

        results = []
        for _ in range(4):
            results.append(await trainer.forward_backward_custom([chosen, rejected], dpo))
            await trainer.optim_step(types.AdamParams(learning_rate=5e-3))
    first, last = results[0].metrics, results[-1].metrics
    assert first["loss:sum"] == pytest.approx(float(np.log(2)), rel=1e-5)  # margin 0 at start
    assert first["margin:mean"] == pytest.approx(0.0, abs=1e-5)
    assert last["margin:mean"] > 0.1
    assert last["loss:sum"] < first["loss:sum"]
    assert "surrogate_loss:sum" in last


async def test_a_bad_request_fails_its_future_and_the_next_one_still_runs(
    tmp_path: Path,
) -> None:
    async with training(tmp_path) as (_served, _client, trainer):
        unknown = trainer.forward_backward([sft_datum()], "gspo")
        out_of_vocabulary = types.Datum(
            model_input=types.ModelInput.from_ints([1, 99_999]),
            loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]},
        )
        bad_tokens = trainer.forward_backward([out_of_vocabulary], "cross_entropy")
        step = trainer.optim_step(ADAM)
        errors: list[Any] = []
        for future in (unknown, bad_tokens):
            with pytest.raises(tinker.RequestFailedError) as caught:
                await future
            errors.append(caught.value)
        assert (await step).metrics is not None
    assert "gspo" in str(errors[0])
    assert "token ids must be in [0, 2" in str(errors[1])
    assert all(error.category == tinker.types.RequestErrorCategory.User for error in errors)

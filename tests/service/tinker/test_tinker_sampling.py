"""Sampling through the official SDK: seeded reproducibility, logprobs that agree with the
trainer's, immutable sampler snapshots, base-model and saved-path samplers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import tinker
from _tinker_support import ADAM, TEXT, close, serving, sft_datum, training, training_client
from tinker import types

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

PROMPT = types.ModelInput.from_ints(list(b"the kitchen"))


def _params(seed: int | None, max_tokens: int = 12) -> types.SamplingParams:
    return types.SamplingParams(max_tokens=max_tokens, seed=seed, temperature=1.0, stop=[])


async def test_seeded_samples_repeat_and_carry_logprobs_and_sequence_ids(tmp_path: Path) -> None:
    async with training(tmp_path) as (_served, _client, trainer):
        sampler = await trainer.save_weights_and_get_sampling_client()
        first = await sampler.sample(PROMPT, 3, _params(seed=7))
        again = await sampler.sample(PROMPT, 3, _params(seed=7))
        other = await sampler.sample(PROMPT, 3, _params(seed=8))
        short = await sampler.sample(PROMPT, 1, types.SamplingParams(max_tokens=2, seed=1))
    tokens = [sequence.tokens for sequence in first.sequences]
    assert len(tokens) == 3
    assert all(len(t) == 12 for t in tokens)
    assert tokens == [sequence.tokens for sequence in again.sequences]
    assert tokens != [sequence.tokens for sequence in other.sequences]
    assert len(set(map(tuple, tokens))) == 3  # the samples of one request differ
    for sequence in first.sequences:
        assert sequence.stop_reason == "length"
        assert sequence.logprobs is not None
        assert len(sequence.logprobs) == len(sequence.tokens)
        assert all(lp <= 0 for lp in sequence.logprobs)
    ids = [sequence.sequence_id for sequence in first.sequences]
    assert len(set(ids)) == 3
    assert len(short.sequences[0].tokens) <= 2


async def test_sampler_logprobs_agree_with_the_trainer_and_snapshots_stay_frozen(
    tmp_path: Path,
) -> None:
    datum = sft_datum()
    async with training(tmp_path) as (_served, _client, trainer):
        await trainer.forward_backward([datum], "cross_entropy")
        await trainer.optim_step(ADAM)
        trained = await trainer.forward([datum], "cross_entropy")
        snapshot = await trainer.save_weights_and_get_sampling_client()
        prompt = types.ModelInput.from_ints(list(TEXT))
        before = await snapshot.compute_logprobs(prompt)
        sampled_before = await snapshot.sample(PROMPT, 1, _params(seed=3))
        for _ in range(3):  # train on: the snapshot must not change
            await trainer.forward_backward([datum], "cross_entropy")
            await trainer.optim_step(ADAM)
        after = await snapshot.compute_logprobs(prompt)
        sampled_after = await snapshot.sample(PROMPT, 1, _params(seed=3))
        fresh = await (await trainer.save_weights_and_get_sampling_client()).compute_logprobs(
            prompt
        )
    assert before[0] is None
    np.testing.assert_allclose(
        np.asarray(before[1:]), np.asarray(trained.loss_fn_outputs[0]["logprobs"].data), rtol=1e-4
    )
    assert after == before
    assert sampled_after.sequences[0].tokens == sampled_before.sequences[0].tokens
    assert not np.allclose(np.asarray(fresh[1:]), np.asarray(before[1:]))


async def test_base_model_and_saved_path_samplers(tmp_path: Path) -> None:
    datum = sft_datum()
    async with training(tmp_path) as (_served, client, trainer):
        untrained = await trainer.forward([datum], "cross_entropy")
        base = await client.create_sampling_client(base_model="tiny")
        base_logprobs = await base.compute_logprobs(datum.model_input)
        await trainer.forward_backward([datum], "cross_entropy")
        await trainer.optim_step(ADAM)
        saved = await trainer.save_weights_for_sampler("after-one-step")
        from_path = await client.create_sampling_client(model_path=saved.path)
        path_logprobs = await from_path.compute_logprobs(datum.model_input)
        trained = await trainer.forward([datum], "cross_entropy")
        with pytest.raises(tinker.RequestFailedError, match="not served here"):
            await client.create_lora_training_client(base_model="gpt-unknown")
    # A fresh LoRA adapter leaves the base model unchanged (its B matrices start at zero).
    np.testing.assert_allclose(
        np.asarray(base_logprobs[1:]),
        np.asarray(untrained.loss_fn_outputs[0]["logprobs"].data)[:-1],
        rtol=1e-4,
    )
    assert saved.path.endswith("/sampler_weights/after-one-step")
    assert from_path.get_base_model() == "tiny"
    np.testing.assert_allclose(
        np.asarray(path_logprobs[1:]),
        np.asarray(trained.loss_fn_outputs[0]["logprobs"].data)[:-1],
        rtol=1e-4,
    )


async def test_top_k_prompt_logprobs_feed_a_top_k_cross_entropy(tmp_path: Path) -> None:
    k = 4
    prompt = types.ModelInput.from_ints(list(b"teach the student"))
    async with serving(tmp_path) as served:
        client = await served.connect()
        teacher = await client.create_sampling_client(base_model="tiny")
        response = await teacher.sample(
            prompt,
            1,
            types.SamplingParams(max_tokens=1, seed=0),
            include_prompt_logprobs=True,
            topk_prompt_logprobs=k,
        )
        last = await teacher.sample(
            prompt,
            1,
            types.SamplingParams(max_tokens=1),
            topk_prompt_logprobs=k,
            prompt_logprobs_last_n=3,
            include_prompt_logprobs=True,
        )
        top = response.topk_prompt_logprobs
        assert top is not None
        ids = np.array([[token for token, _ in row] for row in top[1:]])  # (N, K)
        teacher_lps = np.array([[lp for _, lp in row] for row in top[1:]])
        weights = np.exp(teacher_lps) / np.exp(teacher_lps).sum(axis=1, keepdims=True)
        tokens = prompt.to_ints()
        student = await training_client(client)
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(ids.astype(np.int64)),
                "weights": types.TensorData.from_numpy(weights.astype(np.float32)),
            },
        )
        result = await student.forward_backward([datum], "cross_entropy")
        await student.optim_step(ADAM)
        await close(client)
    assert top[0] is None
    assert len(top) == len(tokens)
    for position, row in enumerate(top[1:], start=1):
        assert len(row) == k
        assert [lp for _, lp in row] == sorted((lp for _, lp in row), reverse=True)
        assert row[0][1] >= response.prompt_logprobs[position] - 1e-5  # the top beats the truth
    assert last.topk_prompt_logprobs is not None
    assert [row is None for row in last.topk_prompt_logprobs] == [True] * (len(tokens) - 3) + [
        False
    ] * 3
    student_lps = np.asarray(result.loss_fn_outputs[0]["logprobs"].data).reshape(ids.shape)
    assert result.loss_fn_outputs[0]["logprobs"].shape == [len(tokens) - 1, k]
    # A fresh LoRA student is its base: the teacher's own top-k logprobs come back.
    np.testing.assert_allclose(student_lps, teacher_lps, rtol=1e-4)
    expected = -(weights * student_lps).sum()
    assert result.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)

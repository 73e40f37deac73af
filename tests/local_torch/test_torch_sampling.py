"""Generation: KV-cache equivalence, seeds, greedy, top-k/top-p, stops, logprobs, snapshots."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
import torch

from crucible_kitchen.adapters.local_torch._config import LoraConfig
from crucible_kitchen.adapters.local_torch._lora import apply_lora
from crucible_kitchen.adapters.local_torch._model import build_model, target_logprobs
from crucible_kitchen.adapters.local_torch._optim import build_optimizer
from crucible_kitchen.adapters.local_torch._sampling import (
    SamplingOptions,
    generate,
    prompt_logprobs,
    snapshot_for_sampling,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Batch
    from crucible_kitchen.adapters.local_torch._config import ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer

PROMPT = (3, 141, 59, 26, 53, 58, 97)


@pytest.fixture
def model(config: ModelConfig) -> Transformer:
    return build_model(config, seed=0)


def _next_token_logprobs(model: Transformer, prompt: tuple[int, ...]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize(
    "overrides", [{}, {"positions": "learned", "n_kv_heads": 2}], ids=["rope", "learned-gqa"]
)
@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_kv_cache_generation_equals_full_recomputation(
    config: ModelConfig, overrides: dict[str, object], temperature: float
) -> None:
    model = build_model(dataclasses.replace(config, **overrides), seed=0)
    options = SamplingOptions(
        max_tokens=12, temperature=temperature, top_k=50, top_p=0.9, num_samples=3, seed=11
    )
    cached = generate(model, PROMPT, options)
    recomputed = generate(model, PROMPT, options, use_kv_cache=False)
    for fast, slow in zip(cached.sequences, recomputed.sequences, strict=True):
        assert fast.tokens == slow.tokens
        assert len(fast.tokens) == 12
        torch.testing.assert_close(torch.tensor(fast.logprobs), torch.tensor(slow.logprobs))


def test_same_seed_same_samples_other_seed_other_samples(model: Transformer) -> None:
    options = SamplingOptions(max_tokens=10, num_samples=4, seed=5)
    first = generate(model, PROMPT, options)
    assert generate(model, PROMPT, options) == first
    other = generate(model, PROMPT, dataclasses.replace(options, seed=6))
    assert [s.tokens for s in other.sequences] != [s.tokens for s in first.sequences]
    # Samples of one request are independent draws, not copies.
    assert len({s.tokens for s in first.sequences}) == 4


def test_sampling_does_not_touch_the_global_rng(model: Transformer) -> None:
    state = torch.get_rng_state()
    generate(model, PROMPT, SamplingOptions(max_tokens=4, seed=1))
    generate(model, PROMPT, SamplingOptions(max_tokens=4))
    assert torch.equal(torch.get_rng_state(), state)


def test_greedy_follows_the_argmax_whatever_the_seed(model: Transformer) -> None:
    results = [
        generate(model, PROMPT, SamplingOptions(max_tokens=6, temperature=0, num_samples=2, seed=s))
        for s in (1, 2)
    ]
    assert results[0] == results[1]
    tokens = results[0].sequences[0].tokens
    assert results[0].sequences[1].tokens == tokens
    prefix = PROMPT
    for token in tokens:
        assert token == int(_next_token_logprobs(model, prefix).argmax())
        prefix = (*prefix, token)


def test_top_k_keeps_only_the_k_most_likely_tokens(model: Transformer) -> None:
    allowed = set(_next_token_logprobs(model, PROMPT).topk(5).indices.tolist())
    result = generate(
        model, PROMPT, SamplingOptions(max_tokens=1, top_k=5, num_samples=200, seed=0)
    )
    firsts = {sequence.tokens[0] for sequence in result.sequences}
    assert firsts <= allowed
    assert len(firsts) > 1
    greedy = generate(model, PROMPT, SamplingOptions(max_tokens=1, temperature=0))
    top_1 = generate(model, PROMPT, SamplingOptions(max_tokens=1, top_k=1, seed=3))
    assert top_1.sequences[0].tokens == greedy.sequences[0].tokens


def test_top_p_keeps_only_the_nucleus(model: Transformer) -> None:
    probs = _next_token_logprobs(model, PROMPT).exp()
    ranked = probs.argsort(descending=True)
    mass_before = probs[ranked].cumsum(0) - probs[ranked]
    nucleus = set(ranked[mass_before < 0.1].tolist())
    assert 2 < len(nucleus) < 100
    result = generate(
        model, PROMPT, SamplingOptions(max_tokens=1, top_p=0.1, num_samples=300, seed=0)
    )
    firsts = {sequence.tokens[0] for sequence in result.sequences}
    assert firsts <= nucleus
    assert len(firsts) > 1


def test_generation_stops_after_a_stop_token(model: Transformer) -> None:
    stop = tuple(range(0, 256, 16))
    options = SamplingOptions(max_tokens=8, num_samples=16, stop_token_ids=stop, seed=4)
    result = generate(model, PROMPT, options)
    reasons = {sequence.stop_reason for sequence in result.sequences}
    assert reasons == {"stop", "length"}
    for sequence in result.sequences:
        assert len(sequence.logprobs) == len(sequence.tokens)
        assert all(token not in stop for token in sequence.tokens[:-1])
        if sequence.stop_reason == "stop":
            assert sequence.tokens[-1] in stop
        else:
            assert len(sequence.tokens) == 8
            assert sequence.tokens[-1] not in stop


def test_max_tokens_none_fills_the_context(model: Transformer) -> None:
    result = generate(model, PROMPT, SamplingOptions(temperature=0))
    assert len(result.sequences[0].tokens) == model.config.max_seq_len - len(PROMPT)


def test_sampled_logprobs_and_prompt_logprobs_match_training_logprobs(
    model: Transformer,
) -> None:
    options = SamplingOptions(
        max_tokens=10, temperature=0.8, top_k=20, seed=2, include_prompt_logprobs=True
    )
    result = generate(model, PROMPT, options)
    sequence = result.sequences[0]
    full = torch.tensor([(*PROMPT, *sequence.tokens)])
    with torch.no_grad():
        expected = target_logprobs(model, full[:, :-1], full[:, 1:])[0]
    # Sampled logprobs are the model's own (temperature 1, unfiltered).
    torch.testing.assert_close(torch.tensor(sequence.logprobs), expected[len(PROMPT) - 1 :])
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs[0] is None
    torch.testing.assert_close(
        torch.tensor(result.prompt_logprobs[1:]), expected[: len(PROMPT) - 1]
    )
    assert prompt_logprobs(model, PROMPT) == result.prompt_logprobs
    no_prompt = generate(model, PROMPT, dataclasses.replace(options, include_prompt_logprobs=False))
    assert no_prompt.prompt_logprobs is None


def test_a_snapshot_is_unaffected_by_later_training(
    model: Transformer, batch: Batch, train: Callable[..., list[float]]
) -> None:
    apply_lora(model, LoraConfig(rank=4))
    optimizer = build_optimizer(model)
    train(model, optimizer, batch, steps=2)
    snapshot = snapshot_for_sampling(model)
    options = SamplingOptions(max_tokens=8, num_samples=2, seed=9, include_prompt_logprobs=True)
    before = generate(snapshot, PROMPT, options)
    from_model = generate(model, PROMPT, options)
    assert [s.tokens for s in before.sequences] == [s.tokens for s in from_model.sequences]
    assert not any(p.requires_grad for p in snapshot.parameters())
    train(model, optimizer, batch, steps=3)
    assert generate(snapshot, PROMPT, options) == before
    assert generate(model, PROMPT, options).prompt_logprobs != before.prompt_logprobs
    assert model.training  # generate restores the mode it found


@pytest.mark.parametrize(
    ("prompt", "options", "message"),
    [
        ((), SamplingOptions(), "at least one token"),
        ((1, 256), SamplingOptions(), "outside the vocabulary"),
        (PROMPT, SamplingOptions(max_tokens=60), "exceeds max_seq_len=64"),
        (tuple(range(64)), SamplingOptions(), "fills max_seq_len=64"),
    ],
)
def test_bad_requests_are_refused(
    model: Transformer, prompt: tuple[int, ...], options: SamplingOptions, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, prompt, options)


def test_invalid_options_list_every_problem() -> None:
    with pytest.raises(ValueError, match="temperature") as caught:
        SamplingOptions(temperature=-1, top_p=0, num_samples=0, max_tokens=0)
    for field in ("top_p", "num_samples", "max_tokens"):
        assert field in str(caught.value)

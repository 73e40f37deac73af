"""The key/value cache of batched decoding holds what the requests need, and grows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
from crucible_kitchen.adapters.local_torch._model import Transformer, build_model
from crucible_kitchen.adapters.local_torch._sampling import (
    MIN_CACHE_POSITIONS,
    DecodeBatch,
    DecodeRequest,
    GenerationResult,
    SamplingOptions,
)

MAX_SEQ_LEN = 4096


@pytest.fixture(scope="module")
def model() -> Transformer:
    config = dataclasses.replace(LocalTorchTrainingClient().config, max_seq_len=MAX_SEQ_LEN)
    return build_model(config, seed=0).eval()


def _request(model: Transformer, prompt_length: int, max_tokens: int, seed: int) -> DecodeRequest:
    prompt = [(seed * 31 + 7 * index) % 256 for index in range(prompt_length)]
    options = SamplingOptions(max_tokens=max_tokens, num_samples=2, seed=seed)
    return DecodeRequest(model, prompt, options, None)


def _alone(model: Transformer, request: DecodeRequest, *, grouped: bool) -> GenerationResult:
    batch = DecodeBatch(model, max_rows=8, grouped_attention=grouped)
    batch.add(request)
    return batch.run_until(request)


@pytest.mark.parametrize("length", [1, 10, 64, 65, 300, 1000])
def test_a_request_of_n_positions_gets_a_cache_of_order_n_not_max_seq_len(
    model: Transformer, length: int
) -> None:
    batch = DecodeBatch(model, max_rows=4, grouped_attention=True)
    request = _request(model, 1, length, seed=1)
    batch.add(request)
    batch.step()
    assert batch.cache_positions == max(MIN_CACHE_POSITIONS, 1 << length.bit_length())
    assert batch.cache_positions < max(2 * (length + 1), MIN_CACHE_POSITIONS + 1)
    assert batch._cache is not None
    assert {tuple(keys.shape) for keys in batch._cache.keys + batch._cache.values} == {
        (4, model.config.kv_heads, batch.cache_positions, model.config.head_dim)
    }


def test_the_cache_is_capped_by_the_capacity_and_masked_attention_keeps_it_whole(
    model: Transformer,
) -> None:
    capped = DecodeBatch(model, max_rows=2, capacity=100, grouped_attention=True)
    capped.add(_request(model, 3, 90, seed=1))
    capped.step()
    assert capped.cache_positions == 100
    masked = DecodeBatch(model, max_rows=2, capacity=300, grouped_attention=False)
    masked.add(_request(model, 3, 4, seed=1))
    masked.step()
    assert masked.cache_positions == 300


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-attention", "masked-attention"])
def test_a_longer_request_grows_the_cache_and_no_request_changes_a_bit(
    model: Transformer, grouped: bool
) -> None:
    def requests() -> tuple[DecodeRequest, DecodeRequest, DecodeRequest]:
        return (
            _request(model, 5, 40, seed=1),  # 45 positions
            _request(model, 9, 150, seed=2),  # 159: joins while the first runs
            _request(model, 2, 400, seed=3),  # 402: joins while both run
        )

    expected = [_alone(model, request, grouped=grouped) for request in requests()]
    batch = DecodeBatch(model, max_rows=8, capacity=1024, grouped_attention=grouped)
    short, longer, longest = requests()
    batch.add(short)
    for _ in range(10):
        batch.step()
    sizes = [batch.cache_positions]
    batch.add(longer)
    for _ in range(10):
        batch.step()
    sizes.append(batch.cache_positions)
    batch.add(longest)
    batch.step()
    sizes.append(batch.cache_positions)
    results = [batch.run_until(request) for request in (short, longer, longest)]
    assert sizes == ([64, 256, 512] if grouped else [1024, 1024, 1024])
    assert results == expected
    # A new first request into the emptied batch gets a cache fitted to it again.
    again = _request(model, 5, 40, seed=1)
    batch.add(again)
    assert batch.run_until(again) == expected[0]
    assert batch.cache_positions == (64 if grouped else 1024)


def test_a_zeroed_cache_holds_zeros(model: Transformer) -> None:
    cache = model.new_cache(2, capacity=8, zeroed=True)
    assert all(torch.count_nonzero(tensor) == 0 for tensor in cache.keys + cache.values)

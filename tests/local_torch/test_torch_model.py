"""The transformer, its presets, log-probabilities, the optimizer step and determinism."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING

import pytest
import torch

from crucible_kitchen.adapters.local_torch._config import (
    PRESETS,
    LoraConfig,
    ModelConfig,
    enable_determinism,
    preset,
    resolve_device,
)
from crucible_kitchen.adapters.local_torch._model import (
    build_model,
    dropout,
    pad_right,
    parameter_count,
    target_logprobs,
)
from crucible_kitchen.adapters.local_torch._optim import build_optimizer, optimizer_step

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Adam, Batch


def test_tiny_preset_is_small_and_a_training_step_takes_milliseconds(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]]
) -> None:
    assert 100_000 <= parameter_count(PRESETS["tiny"]) <= 1_000_000
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model)
    train(model, optimizer, batch, steps=3)
    started = time.perf_counter()
    train(model, optimizer, batch, steps=10)
    assert (time.perf_counter() - started) / 10 < 0.1


def test_presets_range_up_to_a_few_hundred_million_parameters() -> None:
    counts = {name: parameter_count(config) for name, config in PRESETS.items()}
    assert counts == dict(sorted(counts.items(), key=lambda item: item[1]))
    assert 200_000_000 <= counts["large"] <= 600_000_000


def test_preset_overrides_and_unknown_name() -> None:
    assert preset("small", vocab_size=1000).vocab_size == 1000
    with pytest.raises(KeyError, match="unknown model preset 'huge'"):
        preset("huge")


def test_invalid_config_lists_every_problem() -> None:
    with pytest.raises(ValueError, match="invalid ModelConfig") as caught:
        ModelConfig(
            vocab_size=0, d_model=64, n_layers=1, n_heads=4, d_ff=8, max_seq_len=8, dropout=1.5
        )
    assert "vocab_size" in str(caught.value)
    assert "dropout" in str(caught.value)
    with pytest.raises(ValueError, match="n_kv_heads"):
        dataclasses.replace(PRESETS["tiny"], n_kv_heads=3)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("field", ["rope_theta", "norm_eps", "init_std"])
def test_non_finite_model_floats_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match="must be positive and finite"):
        dataclasses.replace(PRESETS["tiny"], **{field: value})


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_lora_alpha_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="alpha must be positive and finite"):
        LoraConfig(rank=4, alpha=value)


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_init_is_seeded_and_leaves_the_global_rng_alone(config: ModelConfig) -> None:
    global_state = torch.get_rng_state()
    first = build_model(config, seed=7).state_dict()
    second = build_model(config, seed=7).state_dict()
    other = build_model(config, seed=8).state_dict()
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["embed.weight"], other["embed.weight"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positions": "learned"},
        {"n_kv_heads": 2},
        {"tie_embeddings": False},
    ],
    ids=["rope", "learned", "gqa", "untied"],
)
def test_forward_shape_and_causal_masking(
    config: ModelConfig, overrides: dict[str, object]
) -> None:
    model = build_model(dataclasses.replace(config, **overrides), seed=0)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    with torch.no_grad():
        logits = model(tokens)
        changed_logits = model(changed)
    assert logits.shape == (2, 16, 256)
    torch.testing.assert_close(changed_logits[:, :10], logits[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(changed_logits[:, 10:], logits[:, 10:])


@pytest.mark.parametrize("overrides", [{}, {"positions": "learned", "n_kv_heads": 1}])
def test_cached_forward_matches_full_forward(
    config: ModelConfig, overrides: dict[str, object]
) -> None:
    model = build_model(dataclasses.replace(config, **overrides), seed=0).eval()
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(3)
    with torch.no_grad():
        full = model(tokens)
        # A prefill, a multi-token chunk after a prefix (explicit mask), then single tokens.
        pieces = [model(tokens[:, :8], cache=cache), model(tokens[:, 8:15], cache=cache)]
        pieces += [model(tokens[:, i : i + 1], cache=cache) for i in range(15, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_sequences_longer_than_the_context_are_refused(config: ModelConfig) -> None:
    model = build_model(config, seed=0)
    with pytest.raises(ValueError, match="exceed the limit of 64"):
        model(torch.zeros((1, 65), dtype=torch.int64))
    cache = model.new_cache(1, capacity=4)
    with pytest.raises(ValueError, match="exceed the limit of 4"):
        model(torch.zeros((1, 5), dtype=torch.int64), cache=cache)


def test_target_logprobs_match_log_softmax_and_ignore_padding(
    config: ModelConfig, batch: Batch
) -> None:
    model = build_model(config, seed=0)
    with torch.no_grad():
        logprobs = target_logprobs(model, batch.inputs, batch.targets, batch.mask)
        expected = torch.log_softmax(model(batch.inputs), dim=-1)
        expected = expected.gather(-1, batch.targets[..., None])[..., 0]
        # The shortest row scored alone, without padding, gives the same values.
        length = int(batch.mask[3].sum())
        alone = target_logprobs(model, batch.inputs[3:, :length], batch.targets[3:, :length])
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs[batch.mask], expected[batch.mask])
    assert torch.all(logprobs[~batch.mask] == 0)
    torch.testing.assert_close(alone[0], logprobs[3, :length])


def test_pad_right() -> None:
    tokens, mask = pad_right([[5, 6, 7], [8]], pad_value=-1)
    assert tokens.tolist() == [[5, 6, 7], [8, -1, -1]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_right([])


def test_tiny_model_overfits_a_fixed_batch(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]]
) -> None:
    model = build_model(config, seed=0)
    losses = train(model, build_optimizer(model), batch, steps=60)
    assert losses[0] > 5.0  # about ln(256) at init
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_two_training_runs_give_bit_identical_weights(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]], dropout: float
) -> None:
    enable_determinism()  # the autouse fixture restores the previous setting
    runs = []
    for _ in range(2):
        model = build_model(dataclasses.replace(config, dropout=dropout), seed=3)
        train(model, build_optimizer(model), batch, steps=5)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


def test_dropout_zeroes_a_fraction_p_and_keeps_the_expectation() -> None:
    ones = torch.ones(100_000)
    dropped = dropout(ones, 0.25, torch.Generator().manual_seed(0), training=True)
    assert float((dropped == 0).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(dropped.mean()) == pytest.approx(1.0, abs=0.02)
    again = dropout(ones, 0.25, torch.Generator().manual_seed(0), training=True)
    assert torch.equal(dropped, again)
    assert dropout(ones, 0.25, torch.Generator(), training=False) is ones


def test_dropout_is_active_only_in_training_mode(config: ModelConfig, batch: Batch) -> None:
    model = build_model(dataclasses.replace(config, dropout=0.2), seed=0)
    with torch.no_grad():
        training_logits = model(batch.inputs)
        model.eval()
        assert torch.equal(model(batch.inputs), model(batch.inputs))
    assert not torch.allclose(training_logits, model(batch.inputs))


def test_gradients_accumulate_until_the_step(
    config: ModelConfig, batch: Batch, adam: type[Adam]
) -> None:
    whole = build_model(config, seed=0)
    halves = build_model(config, seed=0)
    whole_optimizer, halves_optimizer = build_optimizer(whole), build_optimizer(halves)
    (-target_logprobs(whole, batch.inputs, batch.targets, batch.mask).sum()).backward()
    for rows in (slice(0, 2), slice(2, 4)):
        logprobs = target_logprobs(
            halves, batch.inputs[rows], batch.targets[rows], batch.mask[rows]
        )
        (-logprobs.sum()).backward()
    whole_metrics = optimizer_step(whole_optimizer, adam(learning_rate=1e-3))
    halves_metrics = optimizer_step(halves_optimizer, adam(learning_rate=1e-3))
    assert halves_metrics.grad_norm == pytest.approx(whole_metrics.grad_norm, rel=1e-5)
    # Adam's first step is about lr * g / (|g| + eps): where a gradient is within rounding of
    # zero, summing it in two halves moves that coordinate by a fraction of the learning rate
    # (1e-3); a lost or doubled half would move many coordinates by the whole of it.
    for name, parameter in whole.named_parameters():
        torch.testing.assert_close(halves.get_parameter(name), parameter, atol=1e-4, rtol=1e-5)
    assert all(parameter.grad is None for parameter in whole.parameters())


def test_optimizer_step_reports_and_clips_the_grad_norm(
    config: ModelConfig, batch: Batch, adam: type[Adam]
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model)
    (-target_logprobs(model, batch.inputs, batch.targets, batch.mask).sum()).backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in gradients])))
    metrics = optimizer_step(optimizer, adam(learning_rate=1e-3, grad_clip_norm=norm / 10))
    assert metrics.grad_norm == pytest.approx(norm, rel=1e-5)
    assert metrics.clipped
    assert metrics.learning_rate == 1e-3
    # After one step exp_avg = (1 - beta1) * clipped gradient, whose global norm is norm / 10.
    first_moments = [optimizer.state[p]["exp_avg"].flatten() for p in model.parameters()]
    clipped_norm = float(torch.linalg.vector_norm(torch.cat(first_moments))) / (1 - 0.9)
    assert clipped_norm == pytest.approx(norm / 10, rel=1e-4)


def test_bfloat16_parameters_train_and_the_grad_norm_is_exact(
    config: ModelConfig, batch: Batch, adam: type[Adam]
) -> None:
    model = build_model(dataclasses.replace(config, dtype="bfloat16"), seed=0)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    optimizer = build_optimizer(model)
    (-target_logprobs(model, batch.inputs, batch.targets, batch.mask).sum()).backward()
    gradients = [parameter.grad.double().flatten() for parameter in model.parameters()]
    norm = float(torch.linalg.vector_norm(torch.cat(gradients)))
    before = model.embed.weight.detach().clone()
    metrics = optimizer_step(optimizer, adam())
    assert metrics.grad_norm == pytest.approx(norm, rel=1e-5)
    assert not torch.equal(model.embed.weight, before)


def test_optimizer_rejects_bad_hyperparameters_and_frozen_models(
    config: ModelConfig, adam: type[Adam]
) -> None:
    model = build_model(config, seed=0)
    with pytest.raises(ValueError, match="beta1") as caught:
        optimizer_step(build_optimizer(model), adam(beta1=1.0, learning_rate=float("nan")))
    assert "learning_rate" in str(caught.value)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model)

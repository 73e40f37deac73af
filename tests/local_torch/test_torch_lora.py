"""LoRA adapters: only they train, a fresh one changes nothing, merging keeps the output."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest
import torch

from crucible_kitchen.adapters.local_torch._config import LoraConfig
from crucible_kitchen.adapters.local_torch._lora import (
    LoraLinear,
    apply_lora,
    lora_layers,
    merge_lora,
    unmerge_lora,
)
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._optim import build_optimizer

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Batch
    from crucible_kitchen.adapters.local_torch._config import ModelConfig


def test_only_adapter_parameters_train(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]]
) -> None:
    model = build_model(config, seed=0)
    adapters = apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    assert len(adapters) == 7 * config.n_layers
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(name.endswith(("lora_a", "lora_b")) for name in trainable)
    frozen_before = {
        name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad
    }
    losses = train(model, build_optimizer(model), batch, steps=30)
    assert losses[-1] < losses[0] - 0.5
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), name
    assert all(layer.lora_b.abs().sum() > 0 for layer in adapters)


def test_a_fresh_adapter_leaves_the_output_unchanged(config: ModelConfig, batch: Batch) -> None:
    model = build_model(config, seed=0)
    with torch.no_grad():
        before = model(batch.inputs)
        apply_lora(model, LoraConfig(rank=4))
        assert torch.equal(model(batch.inputs), before)


def test_targets_choose_the_wrapped_layers(config: ModelConfig) -> None:
    model = build_model(config, seed=0)
    apply_lora(model, LoraConfig(rank=2, targets=("q", "down")))
    wrapped = sorted(
        name for name, module in model.named_modules() if isinstance(module, LoraLinear)
    )
    assert wrapped == [
        "layers.0.attn.q",
        "layers.0.mlp.down",
        "layers.1.attn.q",
        "layers.1.mlp.down",
    ]
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, LoraConfig(rank=2))


def test_invalid_lora_config() -> None:
    with pytest.raises(ValueError, match="rank") as caught:
        LoraConfig(rank=0, targets=("q", "embed"))
    assert "embed" in str(caught.value)


def test_merge_gives_the_unmerged_output_and_unmerge_restores_the_weights(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]]
) -> None:
    model = build_model(config, seed=0)
    apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    train(model, build_optimizer(model), batch, steps=5)
    base_weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        unmerged = model(batch.inputs)
        merge_lora(model)
        merged = model(batch.inputs)
        assert all(layer.merged for layer in lora_layers(model))
        merged_weight = model.get_parameter("layers.0.attn.q.base.weight").clone()
        unmerge_lora(model)
        restored = model(batch.inputs)
    assert not torch.allclose(merged_weight, base_weights["layers.0.attn.q.base.weight"])
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(restored, unmerged, rtol=1e-5, atol=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, base_weights[name], rtol=0, atol=1e-6)


def test_lora_dropout_training_is_reproducible(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]]
) -> None:
    runs = []
    for _ in range(2):
        model = build_model(config, seed=0)
        apply_lora(model, LoraConfig(rank=4, dropout=0.2, seed=5))
        train(model, build_optimizer(model), batch, steps=4)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


def test_lora_config_identity_ignores_the_seed() -> None:
    config = LoraConfig(rank=8, targets=("v", "q"))
    assert (
        config.fingerprint()
        == dataclasses.replace(config, seed=9, targets=("q", "v")).fingerprint()
    )
    assert config.fingerprint() != dataclasses.replace(config, alpha=1.0).fingerprint()

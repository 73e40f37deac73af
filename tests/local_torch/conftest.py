"""Fixtures for the local torch engine tests: the tiny preset on one CPU thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import torch

from crucible_kitchen.adapters.local_torch._config import preset
from crucible_kitchen.adapters.local_torch._model import pad_right, target_logprobs
from crucible_kitchen.adapters.local_torch._optim import optimizer_step

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._config import ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer


@dataclass(frozen=True, kw_only=True)
class Adam:
    """Stands in for the ports' AdamParams (same fields)."""

    learning_rate: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class Batch:
    inputs: Tensor
    targets: Tensor
    mask: Tensor


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_algorithms() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture
def config() -> ModelConfig:
    return preset("tiny", max_seq_len=64)


@pytest.fixture
def batch() -> Batch:
    """Four right-padded sequences of random tokens (lengths 33, 33, 20, 9)."""
    generator = torch.Generator().manual_seed(1234)
    sequences = [
        torch.randint(0, 256, (length,), generator=generator).tolist() for length in (33, 33, 20, 9)
    ]
    tokens, mask = pad_right(sequences)
    return Batch(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=mask[:, 1:])


@pytest.fixture
def adam() -> type[Adam]:
    return Adam


def _train(
    model: Transformer,
    optimizer: torch.optim.AdamW,
    batch: Batch,
    *,
    steps: int,
    learning_rate: float = 1e-2,
) -> list[float]:
    """Run ``steps`` full-batch steps of summed cross-entropy; return the mean loss per token."""
    losses = []
    for _ in range(steps):
        logprobs = target_logprobs(model, batch.inputs, batch.targets, batch.mask)
        loss = -logprobs.sum()
        loss.backward()
        optimizer_step(optimizer, Adam(learning_rate=learning_rate, grad_clip_norm=1.0))
        losses.append(loss.item() / int(batch.mask.sum()))
    return losses


@pytest.fixture
def train() -> Callable[..., list[float]]:
    return _train

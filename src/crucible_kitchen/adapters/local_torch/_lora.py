"""LoRA adapters: low-rank updates wrapped around a model's linear layers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crucible_kitchen.adapters.local_torch._model import Transformer, dropout
from crucible_kitchen.training import derive_seed

if TYPE_CHECKING:
    from crucible_kitchen.adapters.local_torch._config import LoraConfig


class LoraLinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))`` with ``base`` frozen.

    After :meth:`merge` the update is folded into ``base.weight`` and the adapter path is
    skipped, until :meth:`unmerge` takes it out again.
    """

    def __init__(
        self,
        base: nn.Linear,
        config: LoraConfig,
        *,
        init_generator: torch.Generator,
        dropout_generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scale = config.alpha / config.rank
        self.dropout_p = config.dropout
        self.dropout_generator = dropout_generator
        self.merged = False
        weight = base.weight
        # Kaiming-uniform A (as in PEFT), drawn on the CPU in float32 so the seed gives the
        # same values on every device.
        bound = 1.0 / math.sqrt(base.in_features)
        lora_a = torch.empty(config.rank, base.in_features).uniform_(
            -bound, bound, generator=init_generator
        )
        self.lora_a = nn.Parameter(lora_a.to(device=weight.device, dtype=weight.dtype))
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, config.rank, device=weight.device, dtype=weight.dtype)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the base layer plus, unless merged, the low-rank update."""
        out: Tensor = self.base(x)
        if self.merged:
            return out
        adapter_input = dropout(x, self.dropout_p, self.dropout_generator, training=self.training)
        return out + F.linear(F.linear(adapter_input, self.lora_a), self.lora_b) * self.scale

    def delta_weight(self) -> Tensor:
        """The update ``scale * B @ A`` in the shape of ``base.weight``."""
        return (self.lora_b @ self.lora_a) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight``; a no-op when already merged."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``base.weight`` again; a no-op when not merged."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def apply_lora(model: Transformer, config: LoraConfig) -> list[LoraLinear]:
    """Wrap the targeted linear layers of ``model`` in :class:`LoraLinear`, in place.

    Every other parameter is frozen, so only the adapters train. Build the optimizer after
    this call. Adapters share ``model.dropout_generator`` for their dropout.

    Returns:
        The adapters, in module order.

    Raises:
        ValueError: ``model`` already has LoRA adapters.
    """
    if model.lora_config is not None or lora_layers(model):
        raise ValueError("the model already has LoRA adapters")
    model.requires_grad_(False)
    init_generator = torch.Generator().manual_seed(derive_seed(config.seed, "lora"))
    targets = set(config.targets)
    # Collect first: replacing children while walking modules() would visit the wrappers.
    to_wrap = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if child_name in targets and isinstance(child, nn.Linear)
    ]
    adapters: list[LoraLinear] = []
    for parent, child_name, child in to_wrap:
        adapter = LoraLinear(
            child,
            config,
            init_generator=init_generator,
            dropout_generator=model.dropout_generator,
        )
        setattr(parent, child_name, adapter)
        adapters.append(adapter)
    model.lora_config = config
    return adapters


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    """The LoRA adapters inside ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, LoraLinear)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter of ``model`` into its base weight (for fast inference)."""
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (exact up to float rounding)."""
    for layer in lora_layers(model):
        layer.unmerge()

"""Fully sharded data parallelism (PyTorch's FSDP2, ``fully_shard``) for the trainer's model.

Each transformer block, then the model itself (embeddings, final norm, output head), becomes
one FSDP unit: every rank keeps ``1/W`` of each parameter, of its gradient and of its AdamW
moments, and gathers a unit's full parameters only while it runs. Gradients are reduce-scattered
as *sums* (FSDP2 averages by default): the built-in losses are sum-reduced over tokens and each
rank back-propagates the sum over its slice of the batch, so the summed gradients are the ones
one process computes on the whole batch.

Full (unsharded) state moves through ``torch.distributed.checkpoint.state_dict``: checkpoints
gather the weights and the optimizer state onto rank 0's CPU and load them back from full
tensors; samplers gather full weights on every rank. Every function here is a collective:
every rank calls it, in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._model import Transformer

__all__ = (
    "full_gradients",
    "full_optimizer_state",
    "full_weights",
    "load_full_state",
    "shard_model",
)


def shard_model(model: Transformer, *, world_size: int, device: torch.device) -> None:
    """Shard ``model`` in place over the ``world_size`` ranks of the default process group,
    its shards on ``device``: one FSDP unit per block, and the rest in the root unit.

    Apply LoRA first (frozen base weights are sharded too); build the optimizer after.
    """
    mesh = init_device_mesh(device.type, (world_size,))
    units: list[FSDPModule] = [fully_shard(block, mesh=mesh) for block in model.layers]
    units.append(fully_shard(model, mesh=mesh))
    for unit in units:
        # Sum, never average, and with plain SUM collectives (gloo has no pre-multiplied sum).
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


def full_weights(model: Transformer, *, everywhere: bool) -> dict[str, Tensor]:
    """The model's full state dict, by the unsharded model's names: on rank 0's CPU only
    (other ranks get ``{}``), or with ``everywhere`` on every rank's device."""
    weights: dict[str, Tensor] = get_model_state_dict(model, options=_options(everywhere))  # type: ignore[assignment]
    return weights


def full_optimizer_state(
    model: Transformer, optimizer: torch.optim.Optimizer, *, everywhere: bool
) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name (``{"state": {name: {key: value}},
    "param_groups": [{..., "params": [name, ...]}]}``): on rank 0's CPU only (other ranks get
    an empty state), or with ``everywhere`` on every rank. The optimizer must have stepped
    (``get_optimizer_state_dict`` would otherwise create its state with a step of its own)."""
    state: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=_options(everywhere))
    return state


def full_gradients(model: Transformer) -> dict[str, Tensor]:
    """Every rank's CPU copy of each accumulated gradient, unsharded, by parameter name."""
    return {
        name: _full(parameter.grad).detach().to("cpu", copy=True)
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }


def load_full_state(
    model: Transformer,
    optimizer: torch.optim.Optimizer | None,
    weights: dict[str, Tensor],
    optimizer_state: dict[str, Any] | None,
) -> None:
    """Shard full ``weights`` (and a full name-keyed ``optimizer_state``) that every rank holds
    into the model (and ``optimizer``); ``weights`` must have the model's names. An optimizer
    state without per-parameter entries (saved before the first step) leaves ``optimizer`` as
    it is: pass a fresh one."""
    options = StateDictOptions(full_state_dict=True, strict=True)
    # Every rank distributes the tensors one by one, in the order of the dicts it is given:
    # the model's order (a loaded safetensors file's is arbitrary), keys sorted.
    ordered: dict[str, Any] = {name: weights[name] for name in model.state_dict()}
    set_model_state_dict(model, ordered, options=options)
    if optimizer is not None and optimizer_state is not None and optimizer_state["state"]:
        state = {
            name: dict(sorted(entry.items())) for name, entry in optimizer_state["state"].items()
        }
        ordered_state: Any = {**optimizer_state, "state": state}
        set_optimizer_state_dict(model, optimizer, ordered_state, options=options)


def _full(tensor: Tensor) -> Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _options(everywhere: bool) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)

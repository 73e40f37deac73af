"""The engine behind :class:`LocalTorchTrainingClient`: one model, its optimizer and its step.

Every method is synchronous and must be called by one thread at a time; the client's request
queue runs them in a worker thread, in submission order. Inputs are validated by the client
before they get here.

Gradients are computed with ``torch.autograd.grad`` and added to the parameters' ``.grad``
only once the whole backward pass has succeeded, so a failed request leaves the accumulated
gradients as they were.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import torch

from crucible_kitchen.adapters.local_torch._checkpoint import (
    _optimizer_payload,
    load_checkpoint,
    save_checkpoint,
)
from crucible_kitchen.adapters.local_torch._lora import apply_lora, merge_lora
from crucible_kitchen.adapters.local_torch._model import build_model, target_logprobs
from crucible_kitchen.adapters.local_torch._optim import build_optimizer, optimizer_step
from crucible_kitchen.adapters.local_torch._sampling import snapshot_for_sampling
from crucible_kitchen.ports import ForwardBackwardOutput, OptimStepResponse, TensorData
from crucible_kitchen.training.losses import builtin_loss, compute_target_logprobs

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._checkpoint import CheckpointManifest
    from crucible_kitchen.adapters.local_torch._config import LoraConfig, ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.ports import AdamParams, Datum

__all__ = ("Batch", "Trainer")

_SAMPLER_CACHE_SIZE: Final = 2


@dataclass(frozen=True, slots=True)
class Batch:
    """Right-padded model inputs, targets and loss inputs of a list of datums, on the device.

    ``targets`` and the loss inputs have shape ``(batch, width)``, or ``(batch, width, K)``
    when every datum has ``(N, K)`` targets (K targets per position). Padding has target 0,
    mask ``False`` and every loss input 0, so it adds nothing to any built-in loss.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: tuple[int, ...]
    loss_inputs: dict[str, Tensor]
    shapes: tuple[tuple[int, ...] | None, ...]


def _padded(
    rows: Sequence[Sequence[float]], width: int, dtype: torch.dtype, per_position: int = 1
) -> Tensor:
    """Flat rows of ``per_position`` values per position, right-padded to ``width``
    positions: shape ``(rows, width)``, or ``(rows, width, per_position)`` when it is > 1."""
    flat: list[float] = []
    for row in rows:
        flat.extend(row)
        flat.extend([0] * (width * per_position - len(row)))
    shape = (len(rows), width) if per_position == 1 else (len(rows), width, per_position)
    return torch.tensor(flat, dtype=dtype).view(shape)


class Trainer:
    """A model built from ``config`` and ``seed``, or from pretrained ``weights`` (with LoRA
    adapters if ``lora``), AdamW over its trainable parameters, and the number of optimizer
    steps applied.

    Raises:
        ValueError: the device is not available.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        seed: int,
        lora: LoraConfig | None,
        weights: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.config = config
        self.lora = lora
        self.model = build_model(config, seed=seed, weights=weights)
        if lora is not None:
            apply_lora(self.model, lora)
        self.model.train()
        self.optimizer = build_optimizer(self.model)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.step = 0
        self.pending_gradients = 0
        self._samplers: OrderedDict[str, Transformer] = OrderedDict()

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return self.model.device

    # ---------------------------------------------------------------------------------------
    # Forward and backward

    def batch(self, data: Sequence[Datum], keys: Sequence[str]) -> Batch:
        """Stack ``data`` and its float loss inputs ``keys`` into padded tensors."""
        inputs = [datum.model_input.to_ints() for datum in data]
        targets = [datum.loss_fn_inputs["target_tokens"] for datum in data]
        dims = targets[0].dims
        per_position = dims[1] if len(dims) == 2 else 1
        lengths = tuple(len(tokens) for tokens in inputs)
        width = max(lengths)
        device = self.device
        mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
        loss_inputs = {
            key: _padded(
                [datum.loss_fn_inputs[key].data for datum in data],
                width,
                torch.float32,
                per_position,
            ).to(device)
            for key in keys
        }
        return Batch(
            inputs=_padded(inputs, width, torch.int64).to(device),
            targets=_padded(
                [target.data for target in targets], width, torch.int64, per_position
            ).to(device),
            mask=mask.to(device),
            lengths=lengths,
            loss_inputs=loss_inputs,
            shapes=tuple(datum.loss_fn_inputs["target_tokens"].shape for datum in data),
        )

    def _outputs(
        self, batch: Batch, logprobs: Tensor, row_losses: Sequence[float] | None
    ) -> tuple[dict[str, TensorData], ...]:
        rows = logprobs.detach().to("cpu", torch.float32).flatten(start_dim=1).tolist()
        per_position = 1 if logprobs.dim() == 2 else logprobs.shape[2]
        outputs = []
        for index, (row, length) in enumerate(zip(rows, batch.lengths, strict=True)):
            output = {
                "logprobs": TensorData(
                    dtype="float32",
                    data=tuple(row[: length * per_position]),
                    shape=batch.shapes[index],
                )
            }
            if row_losses is not None:
                output["loss"] = TensorData(dtype="float32", data=(row_losses[index],), shape=())
            outputs.append(output)
        return tuple(outputs)

    def _target_logprobs(self, batch: Batch) -> Tensor:
        """The model's logprobs of the batch's targets (one or K per position), 0 on padding."""
        if batch.targets.dim() == 2:
            return target_logprobs(self.model, batch.inputs, batch.targets, batch.mask)
        logits = self.model(batch.inputs)
        logprobs = compute_target_logprobs(logits, batch.targets)
        return logprobs.masked_fill(~batch.mask[..., None], 0.0)

    def _row_losses(
        self, loss_fn: str, batch: Batch, logprobs: Tensor, config: Mapping[str, float]
    ) -> Tensor:
        """Each datum's loss (sum over its tokens), shape (batch,), differentiable."""
        losses = [
            builtin_loss(
                loss_fn,
                logprobs[row, :length],
                {key: value[row, :length] for key, value in batch.loss_inputs.items()},
                config,
            )
            for row, length in enumerate(batch.lengths)
        ]
        return torch.stack(losses)

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str,
        config: Mapping[str, float],
        keys: Sequence[str],
        *,
        backward: bool,
    ) -> ForwardBackwardOutput:
        """Logprobs and loss of ``data``; with ``backward``, add the loss's gradient.

        A forward-only pass runs in eval mode without gradients, so it neither draws dropout
        masks nor advances the dropout generator: evaluating never changes training.
        """
        batch = self.batch(data, keys)
        if backward:
            logprobs = self._target_logprobs(batch)
            losses = self._row_losses(loss_fn, batch, logprobs, config)
            total = losses.sum()
            self._accumulate(total)
        else:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    logprobs = self._target_logprobs(batch)
                    losses = self._row_losses(loss_fn, batch, logprobs, config)
                    total = losses.sum()
            finally:
                self.model.train(was_training)
        row_losses = losses.detach().to("cpu", torch.float64).tolist()
        return ForwardBackwardOutput(
            loss_fn_output_type=loss_fn,
            loss_fn_outputs=self._outputs(batch, logprobs, row_losses),
            metrics={"loss:sum": float(total.detach())},
        )

    def custom_forward(self, data: Sequence[Datum]) -> tuple[Batch, Tensor, list[TensorData]]:
        """Phase one of a custom loss: the differentiable target logprobs of ``data``."""
        batch = self.batch(data, ())
        logprobs = self._target_logprobs(batch)
        outputs = self._outputs(batch, logprobs, None)
        return batch, logprobs, [output["logprobs"] for output in outputs]

    def custom_backward(
        self, batch: Batch, logprobs: Tensor, logprob_grads: Sequence[TensorData]
    ) -> None:
        """Phase two: back-propagate ``sum(grad * logprobs)``, whose gradient is the caller's."""
        per_position = 1 if logprobs.dim() == 2 else logprobs.shape[2]
        grads = _padded(
            [grad.data for grad in logprob_grads], logprobs.shape[1], torch.float32, per_position
        ).to(self.device)
        self._accumulate((grads * logprobs).sum())

    def _accumulate(self, total: Tensor) -> None:
        if total.requires_grad:
            # allow_unused: a parameter the loss does not reach gets None, not a zero tensor.
            grads: Sequence[Tensor | None] = torch.autograd.grad(
                total, self.parameters, allow_unused=True
            )
            with torch.no_grad():
                for parameter, grad in zip(self.parameters, grads, strict=True):
                    if grad is None:
                        continue
                    if parameter.grad is None:
                        parameter.grad = grad
                    else:
                        parameter.grad.add_(grad)
        self.pending_gradients += 1

    def optim_step(self, adam: AdamParams) -> OptimStepResponse:
        """One AdamW step with the accumulated gradients, which are then cleared."""
        metrics = optimizer_step(self.optimizer, adam)
        applied = self.pending_gradients
        self.step += 1
        self.pending_gradients = 0
        return OptimStepResponse(
            metrics={
                "step": float(self.step),
                "learning_rate": metrics.learning_rate,
                "grad_norm": metrics.grad_norm,
                "grad_clipped": float(metrics.clipped),
                "gradients_applied": float(applied),
            }
        )

    # ---------------------------------------------------------------------------------------
    # Checkpoints and snapshots

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        with_optimizer: bool,
        payload: dict[str, Any],
        write: bool = True,
    ) -> None:
        """Write a checkpoint (atomic; see ``_checkpoint``). Pending gradients are not saved.

        ``write=False`` (a rank other than 0 under data parallelism) only keeps the sampler
        copy a weights-only save keeps.
        """
        if write:
            save_checkpoint(
                directory,
                model=self.model,
                step=self.step,
                optimizer=self.optimizer if with_optimizer else None,
                user_payload=payload,
            )
        if not with_optimizer:
            self._remember_sampler(str(directory), snapshot_for_sampling(self.model))

    def load(
        self, directory: str | os.PathLike[str], *, with_optimizer: bool
    ) -> CheckpointManifest:
        """Replace the weights (and optimizer state) by a checkpoint's; drop pending gradients.

        Without ``with_optimizer`` the optimizer starts afresh. Nothing changes if the
        checkpoint does not verify or does not fit.
        """
        manifest = load_checkpoint(
            directory, model=self.model, optimizer=self.optimizer if with_optimizer else None
        )
        if not with_optimizer:
            self.optimizer = build_optimizer(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.step = manifest.step
        self.pending_gradients = 0
        return manifest

    def sampler_model(self, directory: str) -> Transformer:
        """A frozen model with the weights saved in ``directory`` (cached for recent saves)."""
        cached = self._samplers.get(directory)
        if cached is not None:
            self._samplers.move_to_end(directory)
            return cached
        model = build_model(self.config, seed=0)
        if self.lora is not None:
            apply_lora(model, self.lora)
        load_checkpoint(directory, model=model)
        merge_lora(model)
        model.requires_grad_(False)
        model.eval()
        self._remember_sampler(directory, model)
        return model

    def _remember_sampler(self, directory: str, model: Transformer) -> None:
        self._samplers[directory] = model
        self._samplers.move_to_end(directory)
        while len(self._samplers) > _SAMPLER_CACHE_SIZE:
            self._samplers.popitem(last=False)

    def snapshot(self) -> Transformer:
        """A frozen copy of the current weights, for sampling."""
        return snapshot_for_sampling(self.model)

    def state_tensors(self) -> dict[str, Tensor]:
        """CPU copies of everything that determines future training.

        Keys: ``model/<name>`` (weights), ``grad/<name>`` (accumulated gradients),
        ``optimizer/<name>/<key>`` (AdamW moments and step counts), ``rng/dropout``.
        """
        state = {
            f"model/{name}": tensor.detach().to("cpu", copy=True)
            for name, tensor in self.model.state_dict().items()
        }
        for name, parameter in self.model.named_parameters():
            if parameter.grad is not None:
                state[f"grad/{name}"] = parameter.grad.detach().to("cpu", copy=True)
        optimizer_tensors, _ = _optimizer_payload(self.model, self.optimizer)
        state.update({name: tensor.clone() for name, tensor in optimizer_tensors.items()})
        state["rng/dropout"] = self.model.dropout_generator.get_state()
        return state

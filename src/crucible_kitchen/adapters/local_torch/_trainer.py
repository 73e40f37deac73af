"""The engine behind :class:`LocalTorchTrainingClient`: one model, its optimizer and its step.

Every method is synchronous and must be called by one thread at a time; the client's request
queue runs them in a worker thread, in submission order. Inputs are validated by the client
before they get here.

Gradients are computed with ``torch.autograd.grad`` and added to the parameters' ``.grad``
only once the whole backward pass has succeeded, so a failed request leaves the accumulated
gradients as they were. A model sharded with FSDP (``fsdp_ranks``) back-propagates with
``Tensor.backward`` instead, the path FSDP's hooks follow: its gradient shards accumulate in
place (a request that fails part-way leaves part of its gradient; under data parallelism the
job then fails anyway).

Under DDP the caller passes a :data:`Reduce` to a backward request: the trainer computes the
request's last backward pass through it, and adds what it returns (the request's gradients
summed over the ranks) to ``.grad``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

import torch
import torch.nn.functional as F

from crucible_kitchen.adapters.local_torch._checkpoint import (
    _optimizer_payload,
    load_checkpoint,
    named_optimizer_state,
    save_checkpoint,
)
from crucible_kitchen.adapters.local_torch._config import resolve_device
from crucible_kitchen.adapters.local_torch._fsdp import (
    full_gradients,
    full_optimizer_state,
    full_weights,
    shard_model,
)
from crucible_kitchen.adapters.local_torch._lora import apply_lora
from crucible_kitchen.adapters.local_torch._model import build_model, target_logprobs
from crucible_kitchen.adapters.local_torch._optim import build_optimizer, optimizer_step
from crucible_kitchen.adapters.local_torch._requests import keep_recent
from crucible_kitchen.adapters.local_torch._sampling import (
    frozen_for_sampling,
    snapshot_for_sampling,
)
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.ports import ForwardBackwardOutput, OptimStepResponse, TensorData
from crucible_kitchen.training.losses import builtin_loss, compute_target_logprobs

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._checkpoint import CheckpointManifest
    from crucible_kitchen.adapters.local_torch._config import LoraConfig, ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.ports import AdamParams, Datum

__all__ = (
    "Batch",
    "FullState",
    "Precision",
    "Reduce",
    "StepOptions",
    "Trainer",
    "chunked_target_logprobs",
)

_SAMPLER_CACHE_SIZE: Final = 2

Precision: TypeAlias = Literal["pure", "mixed"]
"""``"pure"``: compute in the parameters' dtype; ``"mixed"``: float32 parameters and optimizer
state, forward and backward passes under bfloat16 autocast."""

_PRECISIONS: Final = ("pure", "mixed")

Reduce: TypeAlias = "Callable[[Tensor | None, list[Tensor | None] | None], list[Tensor | None]]"
"""Computes a request's last backward pass: given its loss (``None`` on a rank without data)
and the gradients of its earlier micro-batches, the request's gradients per trainable
parameter, summed over the data-parallel ranks (``GradientSum.reduce``)."""


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How a training step computes. The defaults are the reference path; the rest trade
    float rounding (never the result's meaning) for speed or memory.

    Attributes:
        precision: ``"pure"`` or ``"mixed"`` (see :data:`Precision`); ``"mixed"`` needs a
            float32 model.
        compile: run training passes through ``torch.compile`` of the model (the first
            step of each new shape compiles).
        loss_chunk: positions per chunk when computing target logprobs from the final
            hidden states: the vocabulary projection, its log-sum-exp and their backward run
            chunk by chunk over the real (unpadded) positions, the backward recomputing each
            chunk's logits, so no (positions x vocabulary) tensor is ever held whole; ``None``
            computes the whole logits (float32) at once.
        microbatch_tokens: split a request's datums, sorted by length, into micro-batches of
            at most this many padded positions (rows x longest) and sum their gradients:
            less padding for mixed lengths, bounded memory; ``None``: one batch per request.
    """

    precision: Precision = "pure"
    compile: bool = False
    loss_chunk: int | None = None
    microbatch_tokens: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.precision not in _PRECISIONS:
            problems.append(f"precision must be 'pure' or 'mixed', got {self.precision!r}")
        compile_setting: object = self.compile
        if not isinstance(compile_setting, bool):
            problems.append(f"compile must be a bool, got {self.compile!r}")
        for name in ("loss_chunk", "microbatch_tokens"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                problems.append(f"{name} must be None or an int >= 1, got {value!r}")
        if problems:
            raise ConfigError(problems, source="local torch training step")


class _ChunkedTargetLogprobs(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T)[i, targets[i]]``, chunk by chunk over the rows.

    Saves only the inputs and one log-sum-exp per row; the backward pass recomputes each
    chunk's logits. Logits are cast to float32 chunk by chunk.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        rows = hidden.shape[0]
        logprobs = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        normalisers = torch.empty_like(logprobs)
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            logits = (hidden[start:end] @ weight.T).float()
            normalisers[start:end] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, targets[start:end, None])[:, 0]
            logprobs[start:end] = picked - normalisers[start:end]
        ctx.save_for_backward(hidden, weight, targets, normalisers)
        ctx.chunk = chunk
        return logprobs

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hidden, weight, targets, normalisers = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        rows = hidden.shape[0]
        for start in range(0, rows, ctx.chunk):
            end = min(start + ctx.chunk, rows)
            logits = (hidden[start:end] @ weight.T).float()
            # d logprob / d logits = one_hot(target) - softmax(logits)
            dlogits = torch.exp(logits - normalisers[start:end, None]) * -grad[start:end, None]
            picked = torch.arange(end - start, device=hidden.device), targets[start:end]
            dlogits[picked] = dlogits[picked] + grad[start:end]
            dlogits = dlogits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = dlogits @ weight
            if want_weight:
                grad_weight += (dlogits.T @ hidden[start:end]).float()
        return grad_hidden, grad_weight.to(weight.dtype) if want_weight else None, None, None


def chunked_target_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, *, chunk: int
) -> Tensor:
    """Float32 ``log_softmax(hidden @ weight.T)`` at ``targets``, ``chunk`` rows at a time.

    ``hidden`` is (rows, d_model), ``weight`` (vocab, d_model), ``targets`` (rows,) int64.
    Differentiable in ``hidden`` and ``weight``; never holds a (rows, vocab) tensor whole.
    """
    result: Tensor = _ChunkedTargetLogprobs.apply(  # type: ignore[no-untyped-call]
        hidden, weight, targets, chunk
    )
    return result


@dataclass(frozen=True, kw_only=True, slots=True)
class FullState:
    """A sharded model's full weights and, for a training checkpoint, its optimizer's full
    name-keyed state (see ``Trainer.gather``)."""

    weights: dict[str, Tensor]
    optimizer: dict[str, Any] | None = None


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
    rows: Sequence[Sequence[float]],
    lengths: Sequence[int],
    dtype: torch.dtype,
    per_position: int = 1,
) -> Tensor:
    """Flat rows of ``per_position`` values per position (row ``i`` has ``lengths[i]``
    positions), right-padded with zeros to the longest: shape ``(rows, width)``, or
    ``(rows, width, per_position)`` when it is > 1. One tensor is built from all rows at once."""
    flat = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=dtype)
    pieces = torch.split(flat, [length * per_position for length in lengths])
    if per_position > 1:
        pieces = tuple(piece.view(-1, per_position) for piece in pieces)
    return torch.nn.utils.rnn.pad_sequence(list(pieces), batch_first=True)


class Trainer:
    """A model built from ``config`` and ``seed``, or from pretrained ``weights`` (with LoRA
    adapters if ``lora``), AdamW over its trainable parameters (fused on CUDA), and the number
    of optimizer steps applied.

    With ``fsdp_ranks``, the model is sharded over that many ranks of the default process group
    (see ``_fsdp``): every pass, checkpoint and snapshot is then a collective that every rank
    runs, in the same order, and the caller splits the data.

    Raises:
        ValueError: the device is not available, or ``options`` ask for mixed precision on
            a model that is not float32.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        seed: int,
        lora: LoraConfig | None,
        weights: Mapping[str, Tensor] | None = None,
        options: StepOptions | None = None,
        fsdp_ranks: int | None = None,
    ) -> None:
        self.config = config
        self.lora = lora
        self.options = options if options is not None else StepOptions()
        if self.options.precision == "mixed" and config.dtype != "float32":
            raise ValueError(f"mixed precision needs float32 parameters, got {config.dtype}")
        self.sharded = fsdp_ranks is not None
        # Sharded: built whole in host memory, then each FSDP unit moves its shards over.
        host = torch.device("cpu") if self.sharded else None
        self.model = build_model(config, seed=seed, weights=weights, device=host)
        if lora is not None:
            apply_lora(self.model, lora)
        if fsdp_ranks is not None:
            shard_model(self.model, world_size=fsdp_ranks, device=resolve_device(config.device))
        self.model.train()
        self._fused = self.model.device.type == "cuda"
        self.optimizer = build_optimizer(self.model, fused=self._fused)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.step = 0
        self.pending_gradients = 0
        self._samplers: OrderedDict[str, Transformer] = OrderedDict()
        self._forward_model: Transformer = cast(
            "Transformer", torch.compile(self.model) if self.options.compile else self.model
        )

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
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        device = self.device
        loss_inputs = {
            key: _padded(
                [datum.loss_fn_inputs[key].data for datum in data],
                lengths,
                torch.float32,
                per_position,
            ).to(device, non_blocking=True)
            for key in keys
        }
        return Batch(
            inputs=_padded(inputs, lengths, torch.int64).to(device, non_blocking=True),
            targets=_padded(
                [target.data for target in targets], lengths, torch.int64, per_position
            ).to(device, non_blocking=True),
            mask=mask.to(device, non_blocking=True),
            lengths=lengths,
            loss_inputs=loss_inputs,
            shapes=tuple(target.shape for target in targets),
        )

    def _outputs(
        self, batch: Batch, logprobs: Tensor, row_losses: Sequence[float] | None
    ) -> tuple[dict[str, TensorData], ...]:
        """Each datum's logprobs (and loss): one device-to-host copy of the real positions."""
        values = logprobs.detach()[batch.mask].to("cpu", torch.float32).flatten().tolist()
        per_position = 1 if logprobs.dim() == 2 else logprobs.shape[2]
        outputs = []
        end = 0
        for index, length in enumerate(batch.lengths):
            start, end = end, end + length * per_position
            output = {
                "logprobs": TensorData(
                    dtype="float32", data=tuple(values[start:end]), shape=batch.shapes[index]
                )
            }
            if row_losses is not None:
                output["loss"] = TensorData(dtype="float32", data=(row_losses[index],), shape=())
            outputs.append(output)
        return tuple(outputs)

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.options.precision == "mixed":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def _target_logprobs(self, batch: Batch) -> Tensor:
        """The model's float32 logprobs of the batch's targets (one or K per position), 0 on
        padding."""
        model = self._forward_model
        chunk = self.options.loss_chunk
        with self._precision():
            if batch.targets.dim() == 3:
                logprobs = compute_target_logprobs(model(batch.inputs), batch.targets)
                return logprobs.masked_fill(~batch.mask[..., None], 0.0)
            if chunk is None and self.device.type != "cuda":
                # The reference formula, bit for bit (CPU results stay those of the model's
                # own ``target_logprobs``).
                return target_logprobs(model, batch.inputs, batch.targets, batch.mask)
            if chunk is None:
                # On (positions, vocabulary), contiguous: on CUDA the (batch, vocabulary,
                # positions) layout runs a log-softmax kernel several times slower.
                logits = model(batch.inputs)
                nll = F.cross_entropy(
                    logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none"
                )
                return (-nll).view(batch.targets.shape).masked_fill(~batch.mask, 0.0)
            hidden = model(batch.inputs, project=False)[batch.mask]
            weight = self.model.output_weight
            if self.options.precision == "mixed":
                hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
            with torch.autocast(device_type=self.device.type, enabled=False):
                real = chunked_target_logprobs(
                    hidden, weight, batch.targets[batch.mask], chunk=chunk
                )
        logprobs = torch.zeros(batch.targets.shape, dtype=torch.float32, device=self.device)
        return logprobs.masked_scatter(batch.mask, real)

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

    def _micro_batches(self, data: Sequence[Datum]) -> list[list[int]]:
        """Indices of ``data`` per micro-batch (see ``StepOptions.microbatch_tokens``)."""
        budget = self.options.microbatch_tokens
        if budget is None:
            return [list(range(len(data)))]
        order = sorted(range(len(data)), key=lambda index: data[index].model_input.length)
        groups: list[list[int]] = []
        for index in order:
            width = data[index].model_input.length  # the longest so far: sorted ascending
            if groups and (len(groups[-1]) + 1) * width <= budget:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def forward(
        self,
        data: Sequence[Datum],
        loss_fn: str,
        config: Mapping[str, float],
        keys: Sequence[str],
        *,
        backward: bool,
        reduce: Reduce | None = None,
        share: Callable[[Tensor], None] | None = None,
    ) -> ForwardBackwardOutput:
        """Logprobs and loss of ``data``; with ``backward``, add the loss's gradient (summed
        over the ranks by ``reduce``, if given).

        With ``share``, the outputs are not built here (``loss_fn_outputs`` is empty): once
        the last forward pass is done, and before its backward pass, ``share`` gets them as
        one float64 tensor on the device (see :meth:`_flat_outputs`), so that the ranks can
        gather them while the backward pass runs.

        A forward-only pass runs in eval mode without gradients, so it neither draws dropout
        masks nor advances the dropout generator: evaluating never changes training.
        """
        outputs: list[dict[str, TensorData]] = [{} for _ in data]
        totals: list[Tensor] = []
        passes: list[tuple[list[int], Batch, Tensor, Tensor]] = []
        gradients: list[Tensor | None] | None = None
        groups = self._micro_batches(data)
        for number, group in enumerate(groups, 1):
            batch = self.batch([data[index] for index in group], keys)
            mode = contextlib.nullcontext() if backward else self._evaluating()
            with mode, torch.set_grad_enabled(backward):
                logprobs = self._target_logprobs(batch)
                losses = self._row_losses(loss_fn, batch, logprobs, config)
                totals.append(losses.sum())
            if share is not None:
                passes.append((group, batch, logprobs.detach(), losses.detach()))
                if number == len(groups):
                    share(self._flat_outputs(passes, totals))
            if backward:
                if self.sharded:
                    # Through logprobs when the loss does not depend on the model: FSDP's
                    # reduce-scatters must run on every rank.
                    total = totals[-1] if totals[-1].requires_grad else logprobs.sum() * 0.0
                    torch.autograd.backward(total)
                elif reduce is not None and number == len(groups):
                    gradients = reduce(totals[-1], gradients)
                else:
                    gradients = self._gradients(totals[-1], gradients)
            if share is None:
                row_losses = losses.detach().to("cpu", torch.float64).tolist()
                for index, output in zip(
                    group, self._outputs(batch, logprobs, row_losses), strict=True
                ):
                    outputs[index] = output
        if backward:
            self._apply(gradients)
        return ForwardBackwardOutput(
            loss_fn_output_type=loss_fn,
            loss_fn_outputs=() if share is not None else tuple(outputs),
            metrics={"loss:sum": sum(float(total.detach()) for total in totals)},
        )

    @staticmethod
    def _flat_outputs(
        passes: Sequence[tuple[list[int], Batch, Tensor, Tensor]], totals: Sequence[Tensor]
    ) -> Tensor:
        """A request's outputs as one float64 tensor on the device (exact: every value is a
        float32): the loss sum, then every datum's logprobs (its real positions, row-major),
        then every datum's loss, datums in request order. ``passes``: each micro-batch's
        datum indices, batch, logprobs and row losses."""
        order = [index for group, *_ in passes for index in group]
        segments = [logprobs[batch.mask].flatten() for _, batch, logprobs, _ in passes]
        losses = torch.cat([row_losses for *_, row_losses in passes])
        if order != sorted(order):  # micro-batches sorted by length: back to request order
            rows = [
                row
                for (_, batch, logprobs, _), segment in zip(passes, segments, strict=True)
                for row in torch.split(
                    segment, [length * logprobs[0, 0].numel() for length in batch.lengths]
                )
            ]
            inverse = sorted(range(len(order)), key=order.__getitem__)
            segments = [rows[position] for position in inverse]
            losses = losses[inverse]
        head = torch.stack([total.detach() for total in totals]).to(torch.float64).sum()
        return torch.cat([head[None], *(s.to(torch.float64) for s in segments), losses.double()])

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def custom_forward(self, data: Sequence[Datum]) -> tuple[Batch, Tensor, list[TensorData]]:
        """Phase one of a custom loss: the differentiable target logprobs of ``data``."""
        batch = self.batch(data, ())
        logprobs = self._target_logprobs(batch)
        outputs = self._outputs(batch, logprobs, None)
        return batch, logprobs, [output["logprobs"] for output in outputs]

    def custom_backward(
        self,
        batch: Batch,
        logprobs: Tensor,
        logprob_grads: Sequence[TensorData],
        reduce: Reduce | None = None,
    ) -> None:
        """Phase two: back-propagate ``sum(grad * logprobs)``, whose gradient is the caller's
        (summed over the ranks by ``reduce``, if given)."""
        per_position = 1 if logprobs.dim() == 2 else logprobs.shape[2]
        grads = _padded(
            [grad.data for grad in logprob_grads], batch.lengths, torch.float32, per_position
        ).to(self.device)
        total = (grads * logprobs).sum()
        if self.sharded:
            torch.autograd.backward(total)
            self._apply(None)
        elif reduce is not None:
            self._apply(reduce(total, None))
        else:
            self._apply(self._gradients(total, None))

    def receive_gradients(self, reduce: Reduce) -> None:
        """A backward request in which this rank has no data: add the other ranks' summed
        gradients (``reduce`` of nothing), counted as a request."""
        self._apply(reduce(None, None))

    def idle_forward(self, *, grad: bool) -> Tensor:
        """A sharded model's pass over one token that weighs nothing: a rank without data in a
        request still takes part in the collectives of the other ranks' passes. With ``grad``,
        hand the result to :meth:`idle_backward` where they back-propagate. Runs in eval mode:
        it draws no dropout masks."""
        tokens = torch.zeros((1, 1), dtype=torch.int64, device=self.device)
        with self._evaluating(), torch.set_grad_enabled(grad), self._precision():
            nothing: Tensor = self._forward_model(tokens).sum() * 0.0
        return nothing

    def idle_backward(self, nothing: Tensor) -> None:
        """Back-propagate :meth:`idle_forward`'s result: zero gradients, counted as a request."""
        torch.autograd.backward(nothing)
        self._apply(None)

    def _gradients(
        self, total: Tensor, earlier: list[Tensor | None] | None
    ) -> list[Tensor | None] | None:
        """The gradient of ``total`` per trainable parameter, added to ``earlier`` ones; the
        parameters' ``.grad`` stay untouched until :meth:`_apply`."""
        if not total.requires_grad:
            return earlier
        # allow_unused: a parameter the loss does not reach gets None, not a zero tensor.
        grads: list[Tensor | None] = list(
            torch.autograd.grad(total, self.parameters, allow_unused=True)
        )
        if earlier is None:
            return grads
        for index, grad in enumerate(grads):
            before = earlier[index]
            if before is None:
                earlier[index] = grad
            elif grad is not None:
                before.add_(grad)
        return earlier

    def _apply(self, gradients: Sequence[Tensor | None] | None) -> None:
        """Add a whole request's gradients to the parameters' ``.grad``."""
        if gradients is not None:
            with torch.no_grad():
                for parameter, grad in zip(self.parameters, gradients, strict=True):
                    if grad is None:
                        continue
                    if parameter.grad is None:
                        parameter.grad = grad
                    else:
                        parameter.grad.add_(grad)
        self.pending_gradients += 1

    def optim_step(
        self, adam: AdamParams, *, sum_over_shards: Callable[[float], float] | None = None
    ) -> OptimStepResponse:
        """One AdamW step with the accumulated gradients, which are then cleared. A sharded
        model needs ``sum_over_shards`` (see ``optimizer_step``)."""
        metrics = optimizer_step(self.optimizer, adam, sum_over_shards=sum_over_shards)
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

    def gather(self, *, with_optimizer: bool) -> FullState | None:
        """A sharded model's full state for :meth:`save`, gathered onto rank 0's CPU (a
        collective that every rank runs): the weights, and the optimizer state unless
        ``with_optimizer`` is false. ``None`` when the model is not sharded."""
        if not self.sharded:
            return None
        return FullState(
            weights=full_weights(self.model, everywhere=False),
            optimizer=self._full_optimizer_state(everywhere=False) if with_optimizer else None,
        )

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        with_optimizer: bool,
        payload: dict[str, Any],
        write: bool = True,
        full: FullState | None = None,
    ) -> None:
        """Write a checkpoint (atomic; see ``_checkpoint``). Pending gradients are not saved.

        ``write=False`` (a rank other than 0 under data parallelism) only keeps the sampler
        copy a weights-only save keeps. A sharded model saves ``full``, what :meth:`gather`
        returned, and keeps no sampler copy (its samplers keep shards, see
        ``_sharded_sampling``).
        """
        if self.sharded and full is None:
            raise ValueError("a sharded model saves the full state that gather() returned")
        if write:
            save_checkpoint(
                directory,
                model=self.model,
                step=self.step,
                optimizer=self.optimizer if with_optimizer else None,
                user_payload=payload,
                weights=None if full is None else full.weights,
                optimizer_state=None if full is None else full.optimizer,
            )
        if not with_optimizer and not self.sharded:
            keep_recent(
                self._samplers,
                str(directory),
                snapshot_for_sampling(self.model),
                limit=_SAMPLER_CACHE_SIZE,
            )

    def _full_optimizer_state(self, *, everywhere: bool) -> dict[str, Any]:
        """A sharded optimizer's full name-keyed state (see ``full_optimizer_state``)."""
        if not self.optimizer.state:  # before the first step: nothing to gather
            return named_optimizer_state(self.model, self.optimizer)
        return full_optimizer_state(self.model, self.optimizer, everywhere=everywhere)

    def load(
        self, directory: str | os.PathLike[str], *, with_optimizer: bool
    ) -> CheckpointManifest:
        """Replace the weights (and optimizer state) by a checkpoint's; drop pending gradients.

        Without ``with_optimizer`` the optimizer starts afresh. Nothing changes if the
        checkpoint does not verify or does not fit.
        """
        # A sharded optimizer's state loads into a fresh one (it stays fresh if the checkpoint
        # saved none); the current one stays if the checkpoint is refused.
        fresh = None
        if self.sharded or not with_optimizer:
            fresh = build_optimizer(self.model, fused=self._fused)
        target = fresh if self.sharded else self.optimizer
        manifest = load_checkpoint(
            directory,
            model=self.model,
            optimizer=target if with_optimizer else None,
            sharded=self.sharded,
        )
        if fresh is not None:
            self.optimizer = fresh
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
        model = frozen_for_sampling(self._saved_model(directory, self.config))
        keep_recent(self._samplers, directory, model, limit=_SAMPLER_CACHE_SIZE)
        return model

    def snapshot(self) -> Transformer:
        """A frozen copy of the current weights, for sampling (of a model not sharded)."""
        if self.sharded:
            raise ValueError("a sharded model's samplers keep shards (see _sharded_sampling)")
        return snapshot_for_sampling(self.model)

    def host_weights(self, directory: str) -> dict[str, Tensor]:
        """The full weights of the checkpoint in ``directory`` (one of this model's, LoRA
        unmerged) in host memory, by the model's names: a sharded model's samplers take
        their shards of them.

        Raises:
            CheckpointError: as :func:`load_checkpoint`.
        """
        model = self._saved_model(directory, dataclasses.replace(self.config, device="cpu"))
        return dict(model.state_dict())

    def _saved_model(self, directory: str, config: ModelConfig) -> Transformer:
        """This model (and its LoRA) built from ``config`` with the weights saved in
        ``directory``: built uninitialised, since every weight is loaded next."""
        model = build_model(config, seed=0, initialise=False)
        if self.lora is not None:
            apply_lora(model, self.lora)
        load_checkpoint(directory, model=model)
        return model

    def state_tensors(self) -> dict[str, Tensor]:
        """CPU copies of everything that determines future training.

        Keys: ``model/<name>`` (weights), ``grad/<name>`` (accumulated gradients),
        ``optimizer/<name>/<key>`` (AdamW moments and step counts), ``rng/dropout``. A sharded
        model's are gathered, unsharded, on every rank (a collective).
        """
        if self.sharded:
            weights = full_weights(self.model, everywhere=True)
            gradients = full_gradients(self.model)
            optimizer_state = self._full_optimizer_state(everywhere=True)
        else:
            weights = self.model.state_dict()
            gradients = {
                name: parameter.grad
                for name, parameter in self.model.named_parameters()
                if parameter.grad is not None
            }
            optimizer_state = named_optimizer_state(self.model, self.optimizer)
        state = {
            f"model/{name}": tensor.detach().to("cpu", copy=True)
            for name, tensor in weights.items()
        }
        state.update(
            {f"grad/{name}": grad.detach().to("cpu", copy=True) for name, grad in gradients.items()}
        )
        optimizer_tensors, _ = _optimizer_payload(optimizer_state)
        state.update({name: tensor.clone() for name, tensor in optimizer_tensors.items()})
        state["rng/dropout"] = self.model.dropout_generator.get_state()
        return state

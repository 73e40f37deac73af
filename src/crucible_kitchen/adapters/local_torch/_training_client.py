"""The TrainingClient port over a real torch model trained in this process."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast, get_args

import torch

from crucible_kitchen.adapters.local_torch._checkpoint import (
    read_manifest,
    remove_partial_checkpoints,
    set_aside,
    verify_checkpoint,
)
from crucible_kitchen.adapters.local_torch._config import (
    PRESETS,
    DTypeName,
    LoraConfig,
    ModelConfig,
    enable_determinism,
    preset,
    resolve_device,
)
from crucible_kitchen.adapters.local_torch._distributed import (
    DistributedGroup,
    GradientSum,
    launched_world_size,
)
from crucible_kitchen.adapters.local_torch._fanout import (
    SAMPLING_LANE,
    FannedOutSamplingClient,
    SamplerNames,
    announce,
    announcement,
)
from crucible_kitchen.adapters.local_torch._hf_checkpoint import (
    HFModelDirectory,
    is_hf_model_dir,
    load_hf_weights,
    read_hf_model,
)
from crucible_kitchen.adapters.local_torch._requests import RequestQueue, keep_recent
from crucible_kitchen.adapters.local_torch._sampling_client import (
    DEFAULT_MAX_BATCH,
    LocalTorchSamplingClient,
)
from crucible_kitchen.adapters.local_torch._sharded_sampling import (
    SamplerShards,
    ShardedSamplingClient,
)
from crucible_kitchen.adapters.local_torch._threads import resolve_threads
from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
from crucible_kitchen.adapters.local_torch._trainer import FullState, StepOptions, Trainer
from crucible_kitchen.adapters.local_torch._translate import translated
from crucible_kitchen.errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointMismatch,
    ConfigError,
    InvalidRequest,
    KitchenError,
    PermanentBackendError,
    ResourceNotFound,
    WorldSizeMismatch,
)
from crucible_kitchen.ports import (
    CHECKPOINT_DIR,
    CHECKPOINT_PAYLOAD,
    LOSS_FN_INPUTS,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    CustomLossOutput,
    Datum,
    ForwardBackwardOutput,
    LoadStateResponse,
    ModelInfo,
    SaveStateResponse,
    SaveWeightsForSamplerResponse,
    TensorData,
    request_fingerprint,
)
from crucible_kitchen.training import derive_seed
from crucible_kitchen.training.losses import builtin_loss

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractContextManager

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.adapters.local_torch._requests import CallCounters, LocalFuture
    from crucible_kitchen.adapters.local_torch._threads import Threads
    from crucible_kitchen.adapters.local_torch._trainer import Precision, Reduce
    from crucible_kitchen.ports import Capabilities, CustomLossFn, LossFnType, OptimStepResponse

LocalSampler: TypeAlias = (
    "LocalTorchSamplingClient | FannedOutSamplingClient | ShardedSamplingClient"
)
"""The sampling clients a training client makes: in one process, fanned out over DDP ranks,
or generating through FSDP shards."""

Parallelism: TypeAlias = Literal["ddp", "fsdp"]
"""How data-parallel ranks share the model: whole on every rank, or sharded (FSDP)."""

__all__ = ("LocalTorchTrainingClient",)

_PORT: Final = "training_client"
_STATE_DIR: Final = "weights"
_SAMPLER_DIR: Final = "sampler_weights"
_SAMPLER_SHARDS_KEPT: Final = 2
"""Under FSDP, the sampler weights saved last whose shards stay in memory."""
_REQUIRED_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    str(loss_fn): keys for loss_fn, keys in LOSS_FN_INPUTS.items()
}


_TOP_K_LOSSES: Final = frozenset({"cross_entropy"})
"""The built-in losses that take ``(N, K)`` targets (and ``(N, K)`` weights): Tinker's soft
target cross-entropy. A custom loss takes them too; the RL losses do not."""


class LocalTorchTrainingClient:
    """Implements :class:`~crucible_kitchen.ports.TrainingClient` with a torch model in-process.

    The model is a decoder-only transformer built from a preset name or a
    :class:`ModelConfig` and a seed, or read from a Hugging Face model directory (optionally
    with LoRA adapters, then only they train).
    Losses are Tinker's, sum-reduced over tokens; gradients accumulate across
    ``forward_backward`` calls until ``optim_step`` (AdamW). Each datum's output holds its
    ``"logprobs"`` and its ``"loss"`` (a 0-d tensor); the metrics hold ``"loss:sum"``.

    Requests run as soon as they are submitted, one at a time in submission order, in the
    worker thread of the client's device, whether or not their futures are awaited (see
    ``_requests`` for the execution model). ``request_id`` deduplicates exactly as the port
    says; the results of the last 256 answered requests are kept for re-sends, and an older
    id re-sent raises :class:`~crucible_kitchen.errors.RequestExpired`. On CPU, equal seeds
    and equal request sequences give bit-identical weights, also across ``save_state`` → new
    client → ``load_state``.

    Checkpoints are directories under ``checkpoint_dir``: ``weights/<name>`` (weights,
    AdamW state, dropout RNG) and ``sampler_weights/<name>`` (weights only); the path a
    save returns is the directory's, and ``load_state`` takes any such path. A checkpoint
    records the ``request_id`` that wrote it, so a save re-sent by a restarted process
    finds its own checkpoint and succeeds without writing; another request saving to a
    taken name is refused.

    Args:
        model: a preset name (``"tiny"``, ``"small"``, ...; its vocabulary is resized to the
            tokenizer's), a full :class:`ModelConfig`, or the path of a local Hugging Face
            model directory (one with a ``config.json``: Llama, Mistral, Qwen2, Qwen3,
            SmolLM2), whose architecture and weights it starts from.
        seed: seeds the initial weights and the dropout generator.
        lora: a :class:`LoraConfig`, or a rank (LoRA with defaults and ``seed``); ``None``
            trains every weight.
        tokenizer: by default the byte-level tokenizer.
        device: overrides the config's device (``"cpu"``, ``"cuda"``, ``"auto"``).
        dtype: overrides the config's parameter dtype. A Hugging Face model defaults to
            float32 on the CPU and to its ``config.json``'s dtype on CUDA.
        checkpoint_dir: where checkpoints go; by default a new temporary directory.
        deterministic: on CUDA, switch torch to deterministic kernels (process-wide); CPU
            kernels are deterministic already.
        default_max_tokens: completion length for samplers when ``max_tokens`` is ``None``.
        threads: torch's intra-op thread count for this client's requests and for its
            sampling clients': a count, or ``"auto"`` (``OMP_NUM_THREADS`` when set, else one
            thread for a small model, else torch's current count; see :attr:`threads`).
        precision: ``"pure"`` computes in the parameters' dtype; ``"mixed"`` keeps float32
            parameters and AdamW state (``dtype`` defaults to float32 then) and runs forward
            and backward passes under bfloat16 autocast.
        compile: train through ``torch.compile`` of the model.
        loss_chunk: compute target logprobs this many positions at a time, never holding the
            whole (positions x vocabulary) logits; ``None`` computes them at once.
        microbatch_tokens: split each request's datums, by length, into micro-batches of at
            most this many padded positions (less padding, bounded memory); ``None`` runs a
            request as one batch.
        sampling_max_batch: most samples its sampling clients decode together (``1``: one
            request at a time).
        distributed: data-parallel training across the ranks of a :class:`DistributedGroup`;
            ``"auto"`` (the default) joins the group ``torchrun`` describes when its
            ``WORLD_SIZE`` is above 1; ``None`` trains in this process alone.
        parallelism: how the ranks share the model: ``"ddp"`` (the default), every rank holds
            the whole model and optimizer state; ``"fsdp"``, each holds ``1/W`` of every
            parameter, gradient and AdamW moment (PyTorch's FSDP2), for a model whose
            training does not fit one device (its sampling clients keep shards too).
            ``"fsdp"`` needs data-parallel ranks and excludes ``compile``, ``loss_chunk`` and
            ``microbatch_tokens``.

        On CUDA, AdamW runs fused. Every setting but the defaults changes float rounding, not
        what is computed; each keeps runs reproducible (equal seeds and requests give equal
        weights).

    Data parallelism. Every rank submits the same requests (it runs the same workflow); each
    rank computes its contiguous slice of every request's data and the outputs are gathered
    (one all-gather), so every rank gets the whole batch's outputs, in order. Each backward
    request's gradients are summed over the ranks while its backward pass runs (bucketed
    asynchronous all-reduces, as DDP does; see ``GradientSum``) and then accumulate;
    ``optim_step`` needs no collective. Losses are sum-reduced, so the step is the one a
    single process takes on the whole batch (equal up to float summation order) and every
    rank ends with bit-identical weights. Rank 0 alone writes checkpoints; the others wait
    for it and load from the same ``checkpoint_dir`` (a shared filesystem across machines).
    Requests with collectives first check that every rank is at the same request, after the
    same ones (see ``_distributed``).

    With ``parallelism="fsdp"`` the gradients are reduce-scattered as sums during each
    backward pass instead, every rank updating its shards; checkpoints hold the full weights
    and optimizer state (gathered onto rank 0) in the same format, so they resume with FSDP,
    DDP or one process alike, and samplers keep this rank's shards of their weights and
    generate through the sharded model (a :class:`ShardedSamplingClient`).

    Raises:
        ConfigError: an unknown preset, an invalid config or LoRA config, a vocabulary
            smaller than the tokenizer's, an unavailable device, an invalid ``threads``
            (or ``OMP_NUM_THREADS``), mixed precision with a dtype other than float32, an
            invalid training-step or sampling setting, or ``parallelism="fsdp"`` without
            data-parallel ranks (outside ``torchrun``) or with a setting it excludes.
        PretrainedModelError: the Hugging Face model directory cannot be loaded (see
            ``read_hf_model``).
    """

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | ModelConfig = "tiny",
        seed: int = 0,
        lora: LoraConfig | int | None = None,
        tokenizer: LocalTokenizer | None = None,
        device: str | None = None,
        dtype: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        deterministic: bool = True,
        default_max_tokens: int = 128,
        threads: Threads = "auto",
        precision: Precision = "pure",
        compile: bool = False,
        loss_chunk: int | None = None,
        microbatch_tokens: int | None = None,
        sampling_max_batch: int = DEFAULT_MAX_BATCH,
        distributed: DistributedGroup | Literal["auto"] | None = "auto",
        parallelism: Parallelism = "ddp",
    ) -> None:
        self._tokenizer = tokenizer if tokenizer is not None else LocalTokenizer.byte()
        options = StepOptions(
            precision=precision,
            compile=compile,
            loss_chunk=loss_chunk,
            microbatch_tokens=microbatch_tokens,
        )
        if type(sampling_max_batch) is not int or sampling_max_batch < 1:
            raise ConfigError(
                [f"sampling_max_batch must be an int >= 1, got {sampling_max_batch!r}"],
                source="local torch sampling",
            )
        if precision == "mixed":
            if dtype not in (None, "float32"):
                raise ConfigError(
                    [f"precision 'mixed' keeps float32 parameters; dtype {dtype!r} conflicts"],
                    source="local torch model",
                )
            dtype = "float32"
        pretrained = _pretrained_model(model, device=device, dtype=dtype)
        if pretrained is not None:
            self._base_model = str(pretrained.path)
            model = pretrained.config
        else:
            self._base_model = model if isinstance(model, str) else "custom"
        config, lora_config = _resolve_config(
            model, seed=seed, lora=lora, tokenizer=self._tokenizer, device=device, dtype=dtype
        )
        self._sampling_max_batch = sampling_max_batch
        self._threads = resolve_threads(threads, config)
        _check_parallelism(parallelism, options)
        self._group = _join(distributed, config)
        if parallelism == "fsdp" and self._group is None:
            raise ConfigError(
                [
                    "parallelism 'fsdp' shards the model across data-parallel ranks, and this "
                    "process has none: run it under torchrun with 2 or more processes "
                    "(torchrun --nproc-per-node 2 ...), or use parallelism 'ddp' (a run's "
                    "directory resumes in one process with: kitchen resume RUN_DIR "
                    "parallelism=ddp)"
                ],
                source="local torch parallelism",
            )
        self._fsdp = parallelism == "fsdp"
        if self._group is not None:
            device_of_rank = self._group.device(resolve_device(config.device))
            config = dataclasses.replace(config, device=str(device_of_rank))
        if deterministic and resolve_device(config.device).type == "cuda":
            enable_determinism()
        self._seed = seed
        self._default_max_tokens = default_max_tokens
        self._pretrained = pretrained
        self._trainer = Trainer(
            config,
            seed=seed,
            lora=lora_config,
            weights=None if pretrained is None else load_hf_weights(pretrained),
            options=options,
            fsdp_ranks=self._group.world_size if self._group is not None and self._fsdp else None,
        )
        self._gradient_sum = (
            GradientSum(self._group, self._trainer.parameters)
            if self._group is not None and not self._fsdp
            else None
        )
        self._reseed_dropout()  # each rank draws its own dropout masks
        self._queue = RequestQueue(_PORT, device=str(self._trainer.device), threads=self._threads)
        self._sampler_names = SamplerNames()
        self._sampler_saves: dict[str, str] = {}  # under DDP: path -> the request saving it
        self._sampler_shards: OrderedDict[str, SamplerShards] = OrderedDict()  # under FSDP
        self._valid_losses: set[tuple[str, tuple[tuple[str, float], ...]]] = set()
        self._checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if self._checkpoint_dir is not None and (self._group is None or self._group.is_writer):
            # What a killed process left; rank 0 alone writes, and a later rank's clearing
            # would remove what rank 0 is writing now.
            remove_partial_checkpoints(self._checkpoint_dir)
        lora_part = "" if lora_config is None else f"-lora{lora_config.rank}"
        base_name = self._base_model if pretrained is None else pretrained.path.name
        self._model_id = f"local-torch-{base_name}-seed{seed}{lora_part}"

    # ---------------------------------------------------------------------------------------
    # Adapter-specific API

    @property
    def config(self) -> ModelConfig:
        """The model's architecture: the vocabulary resized to the tokenizer's, device and
        dtype as configured (``"auto"`` stays ``"auto"``)."""
        return self._trainer.config

    @property
    def pretrained(self) -> HFModelDirectory | None:
        """The Hugging Face model directory the weights came from, if any."""
        return self._pretrained

    @property
    def threads(self) -> int:
        """torch's intra-op thread count for this client's requests (``"auto"`` resolved)."""
        return self._threads

    @property
    def step_options(self) -> StepOptions:
        """How the training step computes (precision, compile, loss chunks, micro-batches)."""
        return self._trainer.options

    @property
    def distributed(self) -> DistributedGroup | None:
        """The data-parallel ranks this client trains with, if any."""
        return self._group

    @property
    def parallelism(self) -> Parallelism:
        """How the data-parallel ranks share the model (``"ddp"`` without ranks)."""
        return "fsdp" if self._fsdp else "ddp"

    @property
    def lora_config(self) -> LoraConfig | None:
        """The LoRA adapters' config, if the model has them."""
        return self._trainer.lora

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, failed and deduplicated, per method; the applied log."""
        return self._queue.counters

    @property
    def capabilities(self) -> Capabilities:
        """Declares :data:`~crucible_kitchen.ports.SAVE_STATE_WITH_PAYLOAD` (:meth:`save_state`
        with ``user_payload``), :data:`~crucible_kitchen.ports.CHECKPOINT_PAYLOAD`
        (:meth:`checkpoint_payload`) and :data:`~crucible_kitchen.ports.CHECKPOINT_DIR`
        (:attr:`checkpoint_dir`)."""
        return {
            SAVE_STATE_WITH_PAYLOAD: lambda: self.save_state,
            CHECKPOINT_PAYLOAD: lambda: self.checkpoint_payload,
            CHECKPOINT_DIR: lambda: self.checkpoint_dir,
        }

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints are written (a temporary directory is made on first use)."""
        if self._checkpoint_dir is None:
            self._checkpoint_dir = Path(tempfile.mkdtemp(prefix="crucible-kitchen-checkpoints-"))
        return self._checkpoint_dir

    async def drain(self) -> None:
        """Run every request submitted so far."""
        await self._queue.drain()

    async def state_tensors(self) -> dict[str, Tensor]:
        """CPU copies of the weights, accumulated gradients, AdamW state and dropout RNG
        after every request submitted so far; compare with ``torch.equal`` between runs.

        Keys: ``model/<name>``, ``grad/<name>``, ``optimizer/<name>/<key>``, ``rng/dropout``.
        Under FSDP they are gathered, unsharded: a collective, so call it on every rank.
        """
        return await self._queue.call("state_tensors", self._trainer.state_tensors, record=False)

    async def checkpoint_payload(self, path: str) -> dict[str, Any] | None:
        """The ``user_payload`` given to the :meth:`save_state` that wrote ``path``, once
        the whole checkpoint verifies (its manifest, and every file's size and sha256).

        Raises:
            ResourceNotFound: no checkpoint at ``path``.
            CheckpointError: the checkpoint is damaged (see ``verify_checkpoint``) or of
                another format.
        """

        def work() -> dict[str, Any] | None:
            self._require_checkpoint("checkpoint_payload", path)
            payload = verify_checkpoint(path).user_payload or {}
            user = payload.get("user")
            return user if isinstance(user, dict) else None

        return await self._queue.call("checkpoint_payload", work, record=False)

    # ---------------------------------------------------------------------------------------
    # The port

    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> LocalFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward`.

        Runs in eval mode without gradients: it changes nothing, not even the dropout RNG.
        """
        method = "forward"
        data = tuple(data)  # the request runs later: freeze what the caller passed now
        keys = self._check_loss_inputs(method, loss_fn, data)
        config = self._loss_config(method, loss_fn, loss_fn_config)

        def work() -> ForwardBackwardOutput:
            return self._sharded_forward(method, None, data, loss_fn, config, keys, backward=False)

        return self._queue.submit(method, work)

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> LocalFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward`."""
        method = "forward_backward"
        data = tuple(data)
        keys = self._check_loss_inputs(method, loss_fn, data)
        config = self._loss_config(method, loss_fn, loss_fn_config)
        digest = request_fingerprint(_PORT, method, (list(data), loss_fn, sorted(config.items())))

        def work() -> ForwardBackwardOutput:
            return self._sharded_forward(
                method, request_id, data, loss_fn, config, keys, backward=True
            )

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    async def forward_backward_custom(
        self, data: Sequence[Datum], loss_fn: CustomLossFn, *, request_id: str
    ) -> LocalFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward_custom`.

        ``loss_fn`` runs in the worker thread, once; exceptions it raises come out of the
        future unchanged, and the request then has no effect.
        """
        method = "forward_backward_custom"
        data = tuple(data)
        self._check_data(method, data, (), top_k=True)
        digest = request_fingerprint(_PORT, method, list(data))

        def work() -> ForwardBackwardOutput:
            group = self._group
            local = data if group is None else group.shard(data)
            agreed = None if group is None else self._start_agreement(group, method, request_id)
            reduce = self._reduce(method, request_id, agreed)
            with translated(_PORT, method, request_id, atomic=True):
                if local:
                    with self._collectives(method, request_id):
                        batch, logprobs, local_logprobs = self._trainer.custom_forward(local)
                else:
                    local_logprobs = []
                    if self._fsdp:
                        with self._collectives(method, request_id):
                            nothing = self._trainer.idle_forward(grad=True)
            # Under data parallelism every rank runs the loss on the whole batch's logprobs
            # (it may couple datums, e.g. preference pairs) and back-propagates its slice.
            if agreed is not None:
                agreed()
            if group is None:
                logprob_data = local_logprobs
            else:
                values = [value for logprobs in local_logprobs for value in logprobs.data]
                shards = group.shards(data)
                sizes = _output_sizes(shards, head=0, with_loss=False)
                parts = group.gather_values(method, request_id, values, sizes)
                rows = _unpacked(parts, shards, head=0, with_loss=False)[1]
                logprob_data = [row["logprobs"] for row in rows]
            custom = loss_fn(data, logprob_data)
            self._check_custom_output(request_id, custom, logprob_data)
            with (
                translated(_PORT, method, request_id, atomic=True),
                self._collectives(method, request_id),
            ):
                if local:
                    # _check_custom_output: one gradient per datum, so the slices match
                    grads = (
                        custom.logprob_grads if group is None else group.shard(custom.logprob_grads)
                    )
                    self._trainer.custom_backward(batch, logprobs, grads, reduce)
                elif self._fsdp:
                    self._trainer.idle_backward(nothing)
                elif reduce is not None:
                    self._trainer.receive_gradients(reduce)
            return ForwardBackwardOutput(
                loss_fn_output_type="custom",
                loss_fn_outputs=tuple({"logprobs": lp} for lp in logprob_data),
                metrics={**custom.metrics, "loss:sum": float(custom.loss)},
            )

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    async def optim_step(
        self, adam_params: AdamParams, *, request_id: str
    ) -> LocalFuture[OptimStepResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.optim_step`.

        Metrics: ``step``, ``learning_rate``, ``grad_norm`` (before clipping),
        ``grad_clipped`` (0 or 1) and ``gradients_applied`` (forward-backward requests
        accumulated into this step).
        """
        method = "optim_step"
        if not isinstance(adam_params, AdamParams):
            raise self._invalid(method, f"adam_params is a {type(adam_params).__name__}")
        digest = request_fingerprint(_PORT, method, adam_params)

        def work() -> OptimStepResponse:
            with translated(_PORT, method, request_id):
                if self._group is None:
                    return self._trainer.optim_step(adam_params)
                if not self._fsdp:  # the backward requests summed the gradients already
                    self._group.note(method, request_id)
                    return self._trainer.optim_step(adam_params)
                group = self._group

                def sum_over_shards(squares: float) -> float:
                    # FSDP's gradient norm, folded into the request's agreement.
                    return math.fsum(group.agree(method, request_id, payload=squares))

                with self._collectives(method, request_id):
                    return self._trainer.optim_step(adam_params, sum_over_shards=sum_over_shards)

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    async def save_state(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any] | None = None
    ) -> LocalFuture[SaveStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_state`.

        Saves weights, AdamW state, the step and the dropout RNG (not pending gradients) to
        ``checkpoint_dir/weights/<name>``. ``user_payload`` (adapter-specific: a JSON object,
        e.g. the engine's context snapshot) is stored with it; read it back with
        :meth:`checkpoint_payload`.
        """
        method = "save_state"
        path = self._checkpoint_path(method, _STATE_DIR, name)
        user = self._check_payload(method, user_payload)
        digest = request_fingerprint(_PORT, method, (str(path), json.dumps(user, sort_keys=True)))

        def work() -> SaveStateResponse:
            self._save(method, path, request_id, digest, with_optimizer=True, user=user)
            return SaveStateResponse(path=str(path))

        return self._queue.submit(
            method, work, request_id=request_id, fingerprint=digest, checkpoint=True
        )

    async def load_state(
        self, path: str, *, with_optimizer: bool = True, request_id: str
    ) -> LocalFuture[LoadStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.load_state`.

        With ``with_optimizer`` the AdamW state and the dropout RNG are restored too, so
        training continues bit-identically; without, the optimizer starts afresh.

        Raises (from the future):
            ResourceNotFound: nothing at ``path``.
            CheckpointError: the checkpoint is corrupt, or was made for another model,
                LoRA config or tokenizer, or holds no optimizer state to restore.
        """
        method = "load_state"
        digest = request_fingerprint(_PORT, method, (path, with_optimizer))

        def work() -> LoadStateResponse:
            if self._group is not None:
                self._group.agree(method, request_id)
            self._require_checkpoint(method, path, request_id)
            with translated(_PORT, method, request_id, atomic=True):
                self._check_tokenizer(path)
                self._check_world_size(path)
                with self._collectives(method, request_id):
                    self._trainer.load(path, with_optimizer=with_optimizer)
                self._reseed_dropout()
            return LoadStateResponse(path=path)

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    async def save_weights_for_sampler(
        self, name: str, *, request_id: str
    ) -> LocalFuture[SaveWeightsForSamplerResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_weights_for_sampler`.

        Writes ``checkpoint_dir/sampler_weights/<name>`` and keeps a frozen in-memory copy
        (under FSDP, of this rank's shards), so :meth:`create_sampling_client` on it does not
        read the disk. Under DDP it is no collective (see :meth:`_save_sampler_weights`).
        """
        method = "save_weights_for_sampler"
        path = self._checkpoint_path(method, _SAMPLER_DIR, name)
        digest = request_fingerprint(_PORT, method, str(path))
        if self._group is not None and not self._fsdp:
            self._sampler_saves.setdefault(str(path), request_id)

        def work() -> SaveWeightsForSamplerResponse:
            if self._group is not None and not self._fsdp:
                self._save_sampler_weights(method, path, request_id, digest)
            else:
                self._save(method, path, request_id, digest, with_optimizer=False, user=None)
                if self._fsdp:
                    shards = SamplerShards.current(self._trainer.model)
                    keep_recent(self._sampler_shards, str(path), shards, limit=_SAMPLER_SHARDS_KEPT)
            return SaveWeightsForSamplerResponse(path=str(path))

        return self._queue.submit(method, work, request_id=request_id, fingerprint=digest)

    async def create_sampling_client(self, model_path: str) -> LocalSampler:
        """See :meth:`crucible_kitchen.ports.TrainingClient.create_sampling_client`.

        The sampling client owns a frozen copy of the weights saved at ``model_path`` (LoRA
        merged), so later training does not change its samples. Runs after every request
        submitted before it.

        Under data parallelism its ``sample`` requests are spread over the ranks (a
        :class:`FannedOutSamplingClient`; under FSDP a :class:`ShardedSamplingClient`,
        which keeps only this rank's shards of the weights).

        Raises:
            ResourceNotFound: nothing was saved at ``model_path``.
            CheckpointError: the checkpoint is corrupt or does not fit this model.
        """
        method = "create_sampling_client"
        await self._written_by_rank_zero(model_path)
        name = None if self._group is None else self._sampler_names.next(str(model_path))

        def work() -> LocalSampler:
            stream = f"sampler:{Path(model_path).name}"
            if self._fsdp and model_path in self._sampler_shards:
                self._sampler_shards.move_to_end(model_path)
                shards = self._sampler_shards[model_path]
                return self._sharded_sampling_client(shards, stream, name)
            self._require_checkpoint(method, model_path)
            with translated(_PORT, method):
                self._check_tokenizer(model_path)
                if self._fsdp:
                    return self._sharded_sampling_client(self._shards_of(model_path), stream, name)
                model = self._trainer.sampler_model(model_path)
            return self._sampling_client(model, stream, name)

        return await self._queue.call(method, work, record=False)

    def get_info(self) -> ModelInfo:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_info`."""
        lora = self._trainer.lora
        return ModelInfo(
            model_id=self._model_id,
            base_model=self._base_model,
            is_lora=lora is not None,
            lora_rank=None if lora is None else lora.rank,
            tokenizer_id=self._tokenizer.tokenizer_id,
        )

    def get_tokenizer(self) -> LocalTokenizer:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_tokenizer`."""
        return self._tokenizer

    def _initial_sampling_client(self) -> LocalSampler:
        """A sampling client of the current weights, made synchronously.

        Only for a client no request has been submitted to (the bundle's initial sampler).
        """
        if self._queue.pending or sum(self._queue.counters.calls.values()):
            raise RuntimeError("_initial_sampling_client needs a client with no requests")
        name = None if self._group is None else self._sampler_names.next("initial")
        if self._fsdp:
            shards = SamplerShards.current(self._trainer.model)
            return self._sharded_sampling_client(shards, "sampler:initial", name)
        return self._sampling_client(self._trainer.snapshot(), "sampler:initial", name)

    def _collectives(self, method: str, request_id: str | None) -> AbstractContextManager[None]:
        """Under FSDP, the trainer's passes, steps and loads run collectives: a failed or
        timed-out one raises ``CollectiveError``."""
        if self._group is None or not self._fsdp:
            return contextlib.nullcontext()
        return self._group.collectives(method, request_id)

    def _sampling_client(self, model: Transformer, stream: str, name: str | None) -> LocalSampler:
        """A sampling client of ``model`` (seeded by ``stream``); under data parallelism a
        :class:`FannedOutSamplingClient` named ``name``, computing in the sampling lane."""
        client = LocalTorchSamplingClient(
            model,
            self._tokenizer,
            seed=derive_seed(self._seed, stream),
            default_max_tokens=self._default_max_tokens,
            threads=self.threads,
            max_batch=self._sampling_max_batch,
            lane="" if self._group is None else SAMPLING_LANE,
        )
        if self._group is None or name is None:
            return client
        return FannedOutSamplingClient(client, self._group, name)

    # ---------------------------------------------------------------------------------------
    # Samplers under FSDP: shards of the weights, sampled through the sharded model

    def _sharded_sampling_client(
        self, shards: SamplerShards, stream: str, name: str | None
    ) -> ShardedSamplingClient:
        """A sampler of ``shards`` named ``name`` that generates through the sharded model,
        collectively, in requests of this client (see ``_sharded_sampling``)."""
        assert self._group is not None
        assert name is not None

        async def run(method: str, work: Callable[[], None]) -> None:
            await self._queue.call(method, work, record=False)

        return ShardedSamplingClient(
            self._trainer.model,
            shards,
            self._tokenizer,
            group=self._group,
            run=run,
            name=name,
            seed=derive_seed(self._seed, stream),
            default_max_tokens=self._default_max_tokens,
            max_batch=self._sampling_max_batch,
        )

    def _shards_of(self, path: str) -> SamplerShards:
        """This rank's shards of the weights saved at ``path`` (read from the disk: each rank
        holds the full weights in host memory while it takes its shards)."""
        group = self._group
        assert group is not None
        weights = self._trainer.host_weights(path)
        return SamplerShards.of_full(self._trainer.model, weights, group.rank, group.world_size)

    # ---------------------------------------------------------------------------------------
    # Sampler weights under DDP: no collective (worker thread, but for the last one)

    def _save_sampler_weights(
        self, method: str, path: Path, request_id: str, digest: bytes
    ) -> None:
        """Under DDP, ``save_weights_for_sampler`` without a collective: every rank keeps a
        frozen copy of its weights for its samplers, and rank 0 writes them and announces how
        that ended (see :meth:`_written_by_rank_zero`). So a sampler may be saved by a task
        running beside the one that trains (the producer of an asynchronous RL loop), in
        another order relative to the training requests on each rank: the ranks' copies may
        then be of different steps, and fanned-out samples come from the copy of the rank
        that draws them (the same samples on every rank, see ``_fanout``).

        A path is saved by the first request for it alone: every rank refuses another request
        id for it alike (rank 0 alone sees the disk), even if the first one failed.

        Raises:
            InvalidRequest: sampler weights were saved at ``path`` by another request.
        """
        assert self._group is not None
        first = self._sampler_saves[str(path)]
        if first != request_id:
            raise InvalidRequest(
                f"{method}: sampler weights were saved at {path} already (request {first!r}); "
                "choose another name",
                port=_PORT,
                operation=method,
                request_id=request_id,
            )
        if not self._group.is_writer:
            self._trainer.save(path, with_optimizer=False, payload={}, write=False)
            return
        failure: str | None = None
        try:
            self._write(method, path, request_id, digest, with_optimizer=False, user=None)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            announce(self._group, _save_subject(str(path), request_id), failure)

    async def _written_by_rank_zero(self, model_path: str) -> None:
        """On a rank above 0 under DDP, wait until rank 0 has written the sampler weights
        this client saved at ``model_path`` (off the worker thread: rank 0 may be waiting
        for this rank's training requests first).

        Raises:
            PermanentBackendError: rank 0 failed to write them.
            CollectiveError: rank 0 did not say within the collective timeout.
        """
        group = self._group
        request_id = self._sampler_saves.get(model_path)
        if group is None or group.is_writer or request_id is None:
            return
        failure = await announcement(group, _save_subject(model_path, request_id))
        if failure is not None:
            raise PermanentBackendError(
                f"create_sampling_client: rank 0 could not write {model_path}: {failure}",
                port=_PORT,
                operation="create_sampling_client",
            )

    # ---------------------------------------------------------------------------------------
    # Checkpoint helpers (worker thread)

    def _save(
        self,
        method: str,
        path: Path,
        request_id: str,
        digest: bytes,
        *,
        with_optimizer: bool,
        user: dict[str, Any] | None,
    ) -> None:
        group = self._group
        if group is None:
            self._write(method, path, request_id, digest, with_optimizer=with_optimizer, user=user)
            return
        # Rank 0 writes; every rank learns whether it did, so all fail or succeed together.
        group.agree(method, request_id)
        with translated(_PORT, method, request_id), self._collectives(method, request_id):
            full = self._trainer.gather(with_optimizer=with_optimizer)  # FSDP: every rank
        failure: str | None = None
        try:
            if group.is_writer:
                self._write(
                    method,
                    path,
                    request_id,
                    digest,
                    with_optimizer=with_optimizer,
                    user=user,
                    full=full,
                )
        except KitchenError as exc:
            failure = str(exc)
            raise
        finally:
            failure = group.broadcast(method, request_id, failure)
        if failure is not None:
            raise PermanentBackendError(
                f"{method}: rank 0 could not write {path}: {failure}",
                port=_PORT,
                operation=method,
                request_id=request_id,
            )
        if not group.is_writer:
            self._trainer.save(
                path, with_optimizer=with_optimizer, payload={}, write=False, full=full
            )

    def _write(
        self,
        method: str,
        path: Path,
        request_id: str,
        digest: bytes,
        *,
        with_optimizer: bool,
        user: dict[str, Any] | None,
        full: FullState | None = None,
    ) -> None:
        payload = {
            "request_id": request_id,
            "fingerprint": digest.hex(),
            "tokenizer_id": self._tokenizer.tokenizer_id,
            "world_size": 1 if self._group is None else self._group.world_size,
            "user": user,
        }
        with translated(_PORT, method, request_id, atomic=True):
            if os.path.lexists(path):
                if _saved_by(path, request_id, digest):
                    return  # this very request wrote it, in an earlier process
                if path.exists():  # a sound checkpoint, or one of another format
                    raise InvalidRequest(
                        f"{method}: a checkpoint already exists at {path}; choose another name",
                        port=_PORT,
                        operation=method,
                        request_id=request_id,
                    )
            self._trainer.save(path, with_optimizer=with_optimizer, payload=payload, full=full)

    def _check_world_size(self, path: str) -> None:
        """Refuse a checkpoint of another number of ranks where that changes the training:
        with dropout, each rank draws its own masks, and they cannot be re-split."""
        saved = (read_manifest(path).user_payload or {}).get("world_size", 1)
        ours = 1 if self._group is None else self._group.world_size
        if saved != ours and self.config.dropout > 0:
            raise WorldSizeMismatch(
                f"{path}: saved by {saved} data-parallel rank(s), loaded by {ours}; with dropout "
                f"{self.config.dropout} each rank draws its own masks, so the run can only "
                f"resume with {saved} rank(s) (or set dropout to 0)",
                path=path,
                differences=[f"world_size: checkpoint {saved!r}, client {ours!r}"],
            )

    def _reseed_dropout(self) -> None:
        """Give a rank above 0 its own dropout stream (rank 0 keeps the checkpoint's)."""
        group = self._group
        if group is not None and group.rank > 0 and self.config.dropout > 0:
            self._trainer.model.dropout_generator.manual_seed(
                derive_seed(self._seed, f"dropout:rank{group.rank}:step{self._trainer.step}")
            )

    def _sharded_forward(
        self,
        method: str,
        request_id: str | None,
        data: Sequence[Datum],
        loss_fn: str,
        config: Mapping[str, float],
        keys: Sequence[str],
        *,
        backward: bool,
    ) -> ForwardBackwardOutput:
        """The trainer's forward (and backward) of ``data``, or under data parallelism of
        this rank's slice, with every rank's outputs gathered in order."""
        group = self._group
        with translated(_PORT, method, request_id, atomic=True):
            if group is None:
                return self._trainer.forward(data, loss_fn, config, keys, backward=backward)
            agreed = self._start_agreement(group, method, request_id)
            shards = group.shards(data)
            local = shards[group.rank]
            reduce = self._reduce(method, request_id, agreed) if backward else None
            sizes = _output_sizes(shards, head=1, with_loss=True)
            gathering: list[Callable[[], list[list[float]]]] = []

            def share(values: Tensor) -> None:
                agreed()  # before the request's next collective
                gathering.append(group.start_gather_values(method, request_id, values, sizes))

            with self._collectives(method, request_id):
                if local:
                    self._trainer.forward(
                        local, loss_fn, config, keys, backward=backward, reduce=reduce, share=share
                    )
                else:
                    nothing = self._trainer.idle_forward(grad=backward) if self._fsdp else None
                    share(torch.zeros(1, dtype=torch.float64, device=self._trainer.device))
                    if nothing is not None and backward:
                        self._trainer.idle_backward(nothing)
                    elif reduce is not None:
                        self._trainer.receive_gradients(reduce)
                parts = gathering[0]()
        heads, rows = _unpacked(parts, shards, head=1, with_loss=True)
        return ForwardBackwardOutput(
            loss_fn_output_type=loss_fn,
            loss_fn_outputs=tuple(rows),
            metrics={"loss:sum": math.fsum(head[0] for head in heads)},
        )

    def _start_agreement(
        self, group: DistributedGroup, method: str, request_id: str | None
    ) -> Callable[[], object]:
        """Start the request's agreement; the function returned checks it. Under DDP the
        check waits until the request's next collective, so that the forward pass runs while
        the ranks agree; FSDP's forward pass runs collectives, so it checks at once."""
        agreed = group.start_agreement(method, request_id)
        if self._fsdp:
            agreed()
        return agreed

    def _reduce(
        self, method: str, request_id: str | None, agreed: Callable[[], object] | None
    ) -> Reduce | None:
        """Under DDP, how a backward request's gradients are summed over the ranks (after
        ``agreed`` checked the request's agreement)."""
        if self._gradient_sum is None:
            return None
        return functools.partial(self._gradient_sum.reduce, method, request_id, agreed=agreed)

    def _require_checkpoint(self, method: str, path: str, request_id: str | None = None) -> None:
        if not (isinstance(path, str) and path and Path(path).is_dir()):
            raise ResourceNotFound(
                f"{method}: no checkpoint at {path!r}",
                port=_PORT,
                operation=method,
                resource=str(path),
                request_id=request_id,
            )

    def _check_tokenizer(self, path: str) -> None:
        payload = read_manifest(path).user_payload or {}
        saved = payload.get("tokenizer_id")
        ours = self._tokenizer.tokenizer_id
        if saved is not None and saved != ours:
            raise CheckpointMismatch(
                f"{path}: saved with tokenizer {saved}, this client uses {ours}",
                path=path,
                differences=[f"tokenizer_id: checkpoint {saved!r}, client {ours!r}"],
            )

    # ---------------------------------------------------------------------------------------
    # Validation: what the backend refuses at submission

    def _invalid(self, operation: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{operation}: {message}", port=_PORT, operation=operation)

    def _checkpoint_path(self, operation: str, kind: str, name: str) -> Path:
        if (
            not isinstance(name, str)
            or not name
            or name in (".", "..")
            or any(c in name for c in "/\\\x00")
        ):
            raise self._invalid(
                operation, f"name {name!r} must be non-empty, not '.' or '..', without / \\ NUL"
            )
        return (self.checkpoint_dir / kind / name).absolute()

    def _check_payload(
        self, operation: str, payload: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        if payload is None:
            return None
        try:
            # A round trip: the stored payload is a plain copy the caller cannot change.
            copied: dict[str, Any] = json.loads(json.dumps(dict(payload), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise self._invalid(operation, f"user_payload is not a JSON object: {exc}") from exc
        return copied

    def _check_loss_inputs(
        self, operation: str, loss_fn: str, data: Sequence[Datum]
    ) -> tuple[str, ...]:
        required = _REQUIRED_INPUTS.get(loss_fn)
        if required is None:
            known = ", ".join(_REQUIRED_INPUTS)
            raise self._invalid(operation, f"unknown loss_fn {loss_fn!r}; known: {known}")
        keys = tuple(key for key in required if key != "target_tokens")
        self._check_data(operation, data, keys, top_k=loss_fn in _TOP_K_LOSSES)
        return keys

    def _check_data(
        self, operation: str, data: Sequence[Datum], keys: Sequence[str], *, top_k: bool
    ) -> None:
        """Refuse malformed data. ``target_tokens`` has shape ``(N,)``, or ``(N, K)`` (K
        targets per position, one K for the whole request) where ``top_k`` allows it; every
        loss input in ``keys`` has the targets' shape."""
        if not data:
            raise self._invalid(operation, "data is empty")
        vocab = self.config.vocab_size
        limit = self.config.max_seq_len
        widths: set[int | None] = set()
        for index, datum in enumerate(data):
            if not isinstance(datum, Datum):
                raise self._invalid(operation, f"data[{index}] is a {type(datum).__name__}")
            try:
                tokens = datum.model_input.to_ints()
            except ValueError as exc:
                raise self._invalid(operation, f"data[{index}]: {exc}") from exc
            length = len(tokens)
            if not 0 < length <= limit:
                raise self._invalid(
                    operation, f"data[{index}] has {length} tokens; must be 1 to {limit}"
                )
            if not (min(tokens) >= 0 and max(tokens) < vocab):
                raise self._invalid(operation, f"data[{index}]: token ids must be in [0, {vocab})")
            targets = datum.loss_fn_inputs.get("target_tokens")
            if targets is None:
                raise self._invalid(operation, f"data[{index}] lacks loss input 'target_tokens'")
            dims = targets.dims
            shaped = dims == (length,) or (top_k and len(dims) == 2 and dims[0] == length > 0)
            if targets.dtype != "int64" or not shaped or 0 in dims:
                expected = f"({length},) or ({length}, K)" if top_k else f"({length},)"
                raise self._invalid(
                    operation,
                    f"data[{index}]: 'target_tokens' must be int64 of shape {expected}, "
                    f"got {targets.dtype} {dims}",
                )
            widths.add(dims[1] if len(dims) == 2 else None)
            if not (min(targets.data) >= 0 and max(targets.data) < vocab):
                raise self._invalid(
                    operation, f"data[{index}]: target_tokens must be ids in [0, {vocab})"
                )
            for key in keys:
                tensor = datum.loss_fn_inputs.get(key)
                if tensor is None:
                    raise self._invalid(operation, f"data[{index}] lacks loss input {key!r}")
                if tensor.dims != dims:
                    raise self._invalid(
                        operation,
                        f"data[{index}]: {key!r} has shape {tensor.dims}, target_tokens {dims}",
                    )
                if not all(math.isfinite(value) for value in tensor.data):
                    raise self._invalid(operation, f"data[{index}]: {key!r} is not finite")
        if len(widths) > 1:
            raise self._invalid(
                operation,
                "every datum of a request needs the same target_tokens shape (N,) or "
                f"(N, K) with one K; got K of {sorted(widths, key=str)}",
            )

    def _loss_config(
        self, operation: str, loss_fn: str, config: Mapping[str, float | str] | None
    ) -> dict[str, float]:
        parsed: dict[str, float] = {}
        for key, value in (config or {}).items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError) as exc:
                raise self._invalid(operation, f"loss_fn_config[{key!r}]: {exc}") from exc
        checked = (loss_fn, tuple(sorted(parsed.items())))
        if checked not in self._valid_losses:
            # A dry run on one token checks names, required keys and ranges at submission.
            zero = torch.zeros(1)
            inputs = dict.fromkeys(("weights", "logprobs", "advantages"), zero)
            with translated(_PORT, operation):
                builtin_loss(loss_fn, zero, inputs, parsed)
            self._valid_losses.add(checked)
        return parsed

    def _check_custom_output(
        self, request_id: str, custom: object, logprobs: Sequence[TensorData]
    ) -> None:
        operation = "forward_backward_custom"

        def invalid(message: str) -> InvalidRequest:
            return InvalidRequest(
                f"{operation}: {message}", port=_PORT, operation=operation, request_id=request_id
            )

        if not isinstance(custom, CustomLossOutput):
            raise invalid(f"loss_fn returned a {type(custom).__name__}, not a CustomLossOutput")
        if len(custom.logprob_grads) != len(logprobs):
            raise invalid(
                f"loss_fn returned {len(custom.logprob_grads)} gradients for {len(logprobs)} datums"
            )
        for index, (grad, lp) in enumerate(zip(custom.logprob_grads, logprobs, strict=True)):
            if grad.dims != lp.dims:
                raise invalid(f"gradient {index} has shape {grad.dims}, logprobs {lp.dims}")
            if not all(math.isfinite(value) for value in grad.data):
                raise invalid(f"gradient {index} is not finite")
        if not math.isfinite(custom.loss):
            raise invalid(f"loss {custom.loss} is not finite")


def _save_subject(path: str, request_id: str) -> str:
    """What rank 0 announces the outcome of: the save of ``path`` by ``request_id``."""
    return f"{path} (request {request_id!r})"


def _saved_by(path: Path, request_id: str, digest: bytes) -> bool:
    """Whether the checkpoint at ``path`` was written by this very request. A damaged one
    (a missing or malformed manifest, a file missing or failing its check) is set aside, so
    that this save replaces it (the replay of a resumed run); one of another format stays."""
    try:
        payload = verify_checkpoint(path).user_payload or {}
    except CheckpointCorrupted:
        set_aside(path)
        return False
    except CheckpointError:
        return False
    return payload.get("request_id") == request_id and payload.get("fingerprint") == digest.hex()


def _output_sizes(shards: Sequence[Sequence[Datum]], *, head: int, with_loss: bool) -> list[int]:
    """How many output values each rank sends for its shard of a request (see
    :func:`_unpacked`); every rank computes them alike, since it holds the whole batch."""
    return [
        head + sum(len(datum.loss_fn_inputs["target_tokens"].data) + with_loss for datum in shard)
        for shard in shards
    ]


def _unpacked(
    parts: Sequence[Sequence[float]],
    shards: Sequence[Sequence[Datum]],
    *,
    head: int,
    with_loss: bool,
) -> tuple[list[list[float]], list[dict[str, TensorData]]]:
    """Every rank's gathered outputs, in rank order: its ``head`` floats, and one output per
    datum of its shard, a ``"logprobs"`` shaped like the datum's targets and, if
    ``with_loss``, a 0-d ``"loss"``. A rank's part holds the head, then every datum's
    logprobs, then every datum's loss."""
    heads: list[list[float]] = []
    rows: list[dict[str, TensorData]] = []
    for part, shard in zip(parts, shards, strict=True):
        heads.append(list(part[:head]))
        position = head
        losses = iter(part[len(part) - len(shard) :] if with_loss else ())
        for datum in shard:
            targets = datum.loss_fn_inputs["target_tokens"]
            end = position + len(targets.data)
            row = {
                "logprobs": TensorData(
                    dtype="float32", data=tuple(part[position:end]), shape=targets.shape
                )
            }
            if with_loss:
                row["loss"] = TensorData(dtype="float32", data=(next(losses),), shape=())
            rows.append(row)
            position = end
    return heads, rows


def _join(
    distributed: DistributedGroup | Literal["auto"] | None, config: ModelConfig
) -> DistributedGroup | None:
    """The data-parallel group to train with: ``"auto"`` joins torchrun's when it has ranks."""
    if distributed != "auto":
        return distributed
    if launched_world_size() <= 1:
        return None
    return DistributedGroup.from_environment(device=str(resolve_device(config.device)))


def _check_parallelism(parallelism: object, options: StepOptions) -> None:
    """Refuse an unknown ``parallelism``, and FSDP with the settings it excludes: micro-batches
    would let the ranks run different numbers of sharded passes per request, and compiled or
    chunked passes (through the output weight, outside the model's forward) are untested
    with FSDP's hooks."""
    if parallelism not in ("ddp", "fsdp"):
        raise ConfigError(
            [f"parallelism must be 'ddp' or 'fsdp', got {parallelism!r}"],
            source="local torch parallelism",
        )
    if parallelism != "fsdp":
        return
    excluded = {
        "compile": options.compile,
        "loss_chunk": options.loss_chunk is not None,
        "microbatch_tokens": options.microbatch_tokens is not None,
    }
    problems = [
        f"{name} is not supported with parallelism 'fsdp'; leave it unset"
        for name, used in excluded.items()
        if used
    ]
    if problems:
        raise ConfigError(problems, source="local torch parallelism")


def _pretrained_model(
    model: object, *, device: str | None, dtype: str | None
) -> HFModelDirectory | None:
    """The Hugging Face model directory ``model`` names, or ``None`` for a preset or config.

    Raises:
        ConfigError: ``model`` is a path to something else than a model directory.
    """
    if isinstance(model, ModelConfig) or (isinstance(model, str) and model in PRESETS):
        return None
    if not isinstance(model, str | os.PathLike):
        return None  # _resolve_config refuses it
    if not is_hf_model_dir(model):
        raise ConfigError(
            [
                f"unknown model preset {str(model)!r}; known: {sorted(PRESETS)}; nor is it a "
                "Hugging Face model directory (a directory with a config.json)"
            ],
            source="local torch model",
        )
    device = device or "cpu"
    try:
        on_cuda = resolve_device(device).type == "cuda"
        if dtype is not None and dtype not in get_args(DTypeName):
            raise ValueError(f"dtype must be one of {get_args(DTypeName)}, got {dtype!r}")
    except ValueError as exc:
        raise ConfigError([str(exc)], source="local torch model") from exc
    return read_hf_model(
        model, dtype=cast("DTypeName | None", dtype), device=device, config_dtype=on_cuda
    )


def _resolve_config(
    model: str | os.PathLike[str] | ModelConfig,
    *,
    seed: int,
    lora: LoraConfig | int | None,
    tokenizer: LocalTokenizer,
    device: str | None,
    dtype: str | None,
) -> tuple[ModelConfig, LoraConfig | None]:
    overrides: dict[str, Any] = {}
    if device is not None:
        overrides["device"] = device
    if dtype is not None:
        overrides["dtype"] = dtype
    try:
        if isinstance(model, str):
            config = preset(model, vocab_size=tokenizer.vocab_size, **overrides)
        elif isinstance(model, ModelConfig):
            config = dataclasses.replace(model, **overrides)
        else:
            raise ValueError(f"model must be a preset name or a ModelConfig, got {model!r}")
        lora_config = LoraConfig(rank=lora, seed=seed) if isinstance(lora, int) else lora
        resolve_device(config.device)
    except (KeyError, ValueError) as exc:
        raise ConfigError([str(exc).strip("'\"")], source="local torch model") from exc
    if config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            [
                f"model.vocab_size {config.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size}"
            ],
            source="local torch model",
        )
    return config, lora_config

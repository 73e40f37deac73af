"""The local torch adapters at once, keyed by port name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crucible_kitchen.adapters.local_torch._evaluator import ArithmeticEvaluator
from crucible_kitchen.adapters.local_torch._gguf import cached_gguf_model, is_gguf_file
from crucible_kitchen.adapters.local_torch._renderer import LocalRenderer
from crucible_kitchen.adapters.local_torch._sampling_client import (
    DEFAULT_MAX_BATCH,
    LocalTorchSamplingClient,
)
from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer, default_tokenizer_for
from crucible_kitchen.adapters.local_torch._training_client import LocalTorchTrainingClient

if TYPE_CHECKING:
    import os

    from crucible_kitchen.adapters.local_torch._config import LoraConfig, ModelConfig
    from crucible_kitchen.adapters.local_torch._threads import Threads
    from crucible_kitchen.adapters.local_torch._trainer import Precision
    from crucible_kitchen.adapters.local_torch._training_client import Parallelism
    from crucible_kitchen.ports import PortName

__all__ = ("local_torch_adapters",)

TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"


def local_torch_adapters(
    *,
    model: str | os.PathLike[str] | ModelConfig = "tiny",
    seed: int = 0,
    lora: LoraConfig | int | None = None,
    device: str = "cpu",
    tokenizer: str | os.PathLike[str] | LocalTokenizer | None = None,
    renderer: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    default_max_tokens: int = 128,
    threads: Threads = "auto",
    deterministic: bool = True,
    precision: Precision = "pure",
    compile: bool = False,
    loss_chunk: int | None = None,
    microbatch_tokens: int | None = None,
    sampling_max_batch: int = DEFAULT_MAX_BATCH,
    teacher: str | os.PathLike[str] | None = None,
    parallelism: Parallelism = "ddp",
) -> dict[PortName, object]:
    """Real adapters for ``training_client``, ``sampling_client``, ``tokenizer``, ``renderer``,
    ``evaluator`` (an :class:`ArithmeticEvaluator`) and, given a ``teacher`` checkpoint,
    ``teacher_sampling_client``.

    The sampling client samples the initial weights (a frozen copy); the training client
    makes new ones with ``create_sampling_client``. Combine with
    ``crucible_kitchen.adapters.filesystem.filesystem_adapters`` for the dataset store, blob
    store and model registry.

    Args:
        model: a preset name (``"tiny"``, ``"small"``, ...), a :class:`ModelConfig`, or the
            path of a local Hugging Face model directory (``config.json`` and safetensors
            weights of a Llama, Mistral, Qwen2, Qwen3 or SmolLM2 model) to start from,
            or a GGUF file (``.gguf``), converted once into one (see
            :func:`cached_gguf_model`).
        seed: seeds the initial weights, dropout and unseeded sampling.
        lora: a :class:`LoraConfig`, a rank, or ``None`` for full fine-tuning.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        tokenizer: ``"byte"``, ``"bpe"``, the path of a Hugging Face model directory or
            ``tokenizer.json``, or a :class:`LocalTokenizer`; by default the model directory's
            own tokenizer when ``model`` is one with a ``tokenizer.json``, else ``"byte"``.
        renderer: the chat format: ``"chatml"``, ``"llama3"``, ``"role_colon"``, ``"qwen3"``,
            ``"qwen3_disable_thinking"`` or ``"jinja"`` (the tokenizer's own chat template); by
            default the tokenizer's :attr:`~LocalTokenizer.default_renderer` (``"chatml"`` for
            the byte and BPE tokenizers).
        run_dir: checkpoints go to ``run_dir/checkpoints`` and the tokenizer is saved as
            ``run_dir/tokenizer.json``; ``None`` uses a temporary directory and saves nothing.
        default_max_tokens: completion length when a request leaves ``max_tokens`` unset.
        threads: torch's intra-op thread count for the clients' requests: a count ≥ 1, or
            ``"auto"``: ``OMP_NUM_THREADS`` when set, else one thread for a model under 2 M
            parameters (``tiny``), else torch's current count.
        deterministic: on CUDA, deterministic kernels (process-wide; CPU ones are already).
        precision, compile, loss_chunk, microbatch_tokens: how the training step computes
            (``"pure"``/``"mixed"`` precision, ``torch.compile``, target logprobs in chunks
            of positions, micro-batches of padded positions; see
            :class:`LocalTorchTrainingClient`).
        sampling_max_batch: most samples a sampling client decodes together, across
            concurrent requests (``1``: one request at a time).
        teacher: a checkpoint (saved with the same tokenizer) or a Hugging Face model
            directory to sample and score with as ``teacher_sampling_client``, frozen, on
            ``device``; its model may differ from ``model`` (its tokenizer may not).
        parallelism: under ``torchrun``, ``"ddp"`` (every rank holds the whole model) or
            ``"fsdp"`` (parameters, gradients and AdamW state sharded across the ranks); see
            :class:`LocalTorchTrainingClient`.

    Raises:
        ConfigError: an invalid model, LoRA, tokenizer, device, thread count, speed or
            parallelism setting (``"fsdp"`` outside ``torchrun``).
        PretrainedModelError: the Hugging Face model directory cannot be loaded.
        GgufError: the GGUF file cannot be converted.
        RenderError: an unknown renderer, or one the tokenizer cannot serve.
        CheckpointError: the teacher checkpoint is missing, corrupt or of another tokenizer
            (a teacher model directory that cannot be loaded: PretrainedModelError).
    """
    if is_gguf_file(model):
        model = cached_gguf_model(model)
    if tokenizer is None:
        tokenizer = default_tokenizer_for(model)
    local_tokenizer = (
        tokenizer if isinstance(tokenizer, LocalTokenizer) else LocalTokenizer.named(tokenizer)
    )
    checkpoint_dir = None if run_dir is None else Path(run_dir) / CHECKPOINTS_DIR
    training_client = LocalTorchTrainingClient(
        model=model,
        seed=seed,
        lora=lora,
        tokenizer=local_tokenizer,
        device=device,
        checkpoint_dir=checkpoint_dir,
        default_max_tokens=default_max_tokens,
        threads=threads,
        deterministic=deterministic,
        precision=precision,
        compile=compile,
        loss_chunk=loss_chunk,
        microbatch_tokens=microbatch_tokens,
        sampling_max_batch=sampling_max_batch,
        parallelism=parallelism,
    )
    local_renderer = LocalRenderer(local_tokenizer, renderer or local_tokenizer.default_renderer)
    ports: dict[PortName, object] = {
        "training_client": training_client,
        "sampling_client": training_client._initial_sampling_client(),
        "tokenizer": local_tokenizer,
        "renderer": local_renderer,
        "evaluator": ArithmeticEvaluator(local_renderer, samples=8),
    }
    if teacher is not None:
        ports["teacher_sampling_client"] = LocalTorchSamplingClient.from_checkpoint(
            teacher,
            local_tokenizer,
            device=device,
            seed=seed,
            default_max_tokens=default_max_tokens,
            threads=threads,
        )
    if run_dir is not None:  # once every model has loaded: a failure writes nothing
        local_tokenizer.save(Path(run_dir) / TOKENIZER_FILE)
    return ports

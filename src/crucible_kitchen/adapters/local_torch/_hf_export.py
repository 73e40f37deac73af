"""Export a checkpoint as a Hugging Face model directory, or its LoRA adapters in PEFT's format.

:func:`export_hf` writes ``config.json`` and ``model.safetensors`` (LoRA merged) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads; :func:`export_peft` writes
``adapter_config.json`` and ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained``
loads over the base model. Both write into a new directory atomically (a staging directory
renamed into place), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import safetensors.torch
import torch

from crucible_kitchen._files import FileContents, atomic_write_directory
from crucible_kitchen.adapters.local_torch._checkpoint import checkpoint_model
from crucible_kitchen.adapters.local_torch._hf_checkpoint import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    WEIGHTS_FILE,
    hf_tensor_name,
    read_hf_model,
)
from crucible_kitchen.adapters.local_torch._lora import LoraLinear
from crucible_kitchen.errors import CheckpointExists, PretrainedModelError

if TYPE_CHECKING:
    import os

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._config import ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer

__all__ = ("export_hf", "export_peft")

ADAPTER_CONFIG_FILE: Final = "adapter_config.json"
ADAPTER_WEIGHTS_FILE: Final = "adapter_model.safetensors"
TOKENIZER_FILES: Final = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
"""Files a source model directory's tokenizer may consist of; those present are copied."""

_ARCHITECTURES: Final = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _fail(path: Path, problem: str) -> PretrainedModelError:
    return PretrainedModelError(f"{path}: {problem}", path=str(path), problems=[problem])


def _load(checkpoint: Path) -> Transformer:
    """The model a checkpoint was saved from, with its weights (LoRA adapters unmerged)."""
    try:
        model = checkpoint_model(checkpoint)
    except ValueError as exc:
        raise _fail(checkpoint, str(exc)) from exc
    return model.eval()


def _check_source(source: Path | None, config: ModelConfig) -> None:
    """Refuse a source directory whose weights are not the ones the checkpoint started from."""
    if source is None:
        return
    found = read_hf_model(source).config.pretrained
    if config.pretrained != found:
        raise _fail(
            source / CONFIG_FILE,
            "the checkpoint did not start from this model directory's weights "
            f"(digest {config.pretrained}, the directory's {found})",
        )


def _hf_config(config: ModelConfig, path: Path) -> dict[str, Any]:
    """A ``config.json`` for a model we built from a config: Llama, or Qwen2 / Qwen3 when it
    has their q/k/v biases / q/k norms."""
    if config.positions != "rope":
        raise _fail(path, "learned position embeddings have no Hugging Face Llama equivalent")
    if config.qkv_bias and config.qk_norm:
        raise _fail(path, "no Hugging Face family has both q/k/v biases and q/k norms")
    model_type = "qwen3" if config.qk_norm else "qwen2" if config.qkv_bias else "llama"
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        scaling = config.rope_scaling
        rope.update(
            rope_type="llama3",
            factor=scaling.factor,
            low_freq_factor=scaling.low_freq_factor,
            high_freq_factor=scaling.high_freq_factor,
            original_max_position_embeddings=scaling.original_max_position_embeddings,
        )
    return {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "rope_parameters": rope,
        "dtype": config.dtype,
    }


def _merged_weights(model: Transformer) -> dict[str, Tensor]:
    """The model's weights under Hugging Face names, LoRA updates folded in."""
    adapters = {
        f"{name}.": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLinear)
    }
    weights: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            prefix = next((p for p in adapters if name.startswith(p)), None)
            if prefix is not None:
                inner = name.removeprefix(prefix)
                if inner == "base.weight":
                    tensor = tensor + adapters[prefix].delta_weight()
                elif inner != "base.bias":
                    continue  # lora_a, lora_b: folded into the base weight
                name = prefix + inner.removeprefix("base.")
            weights[hf_tensor_name(name)] = tensor.detach().to("cpu").contiguous()
    return weights


def _write_atomically(out_dir: Path, files: dict[str, bytes], copies: dict[str, Path]) -> Path:
    """Write ``files`` (name -> contents) and copy ``copies`` (name -> source file) into a new
    directory ``out_dir``, all at once."""
    contents: dict[str, FileContents] = {
        **files,
        **{name: functools.partial(shutil.copyfile, source) for name, source in copies.items()},
    }
    try:
        atomic_write_directory(out_dir, contents)
    except FileExistsError as exc:
        raise CheckpointExists(
            f"{out_dir} already exists; choose a new directory", path=str(out_dir)
        ) from exc
    except OSError as exc:
        raise _fail(out_dir, f"cannot write the export: {exc}") from exc
    return out_dir


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def export_hf(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the weights of a local torch checkpoint as a Hugging Face model directory.

    The directory holds ``config.json`` and ``model.safetensors`` (LoRA adapters merged, in the
    checkpoint's dtype) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads. With
    ``source``, the Hugging Face model directory the run started from, its ``config.json`` is
    kept (dtype updated) and its ``generation_config.json`` and tokenizer files are copied;
    without, a Llama (or Qwen2 / Qwen3) ``config.json`` is written from the model's config.

    Args:
        checkpoint: A checkpoint directory (``save_state`` or ``save_weights_for_sampler``).
        out_dir: The new directory to create; it must not exist.
        source: The model directory the checkpoint's run started from, if any.

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or not a local torch one.
        CheckpointExists: ``out_dir`` exists.
        PretrainedModelError: ``source`` is not the model the checkpoint started from, or
            the model has no Hugging Face equivalent (learned positions).
    """
    target = Path(out_dir)
    model = _load(Path(checkpoint))
    config = model.config
    source_dir = None if source is None else Path(source)
    _check_source(source_dir, config)
    copies: dict[str, Path] = {}
    if source_dir is None:
        hf_config = _hf_config(config, target)
    else:
        hf_config = json.loads((source_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in hf_config:
                hf_config[key] = config.dtype
        for name in (GENERATION_CONFIG_FILE, *TOKENIZER_FILES):
            if (source_dir / name).is_file():
                copies[name] = source_dir / name
    weights = safetensors.torch.save(_merged_weights(model), metadata={"format": "pt"})
    return _write_atomically(target, {CONFIG_FILE: _json(hf_config), WEIGHTS_FILE: weights}, copies)


def export_peft(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the LoRA adapters of a local torch checkpoint in PEFT's format.

    The directory holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``
    such as ``q_proj``) and ``adapter_model.safetensors`` (keys like
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), which
    ``peft.PeftModel.from_pretrained`` loads over the base model: ``source``, the Hugging Face
    model directory the run started from (recorded as ``base_model_name_or_path``).

    Args:
        checkpoint: A checkpoint directory of a model with LoRA adapters.
        out_dir: The new directory to create; it must not exist.
        source: The model directory the checkpoint's run started from, if any.

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: the checkpoint is missing, damaged or not a local torch one.
        CheckpointExists: ``out_dir`` exists.
        PretrainedModelError: the checkpoint has no LoRA adapters, or ``source`` is not the
            model it started from.
    """
    target = Path(out_dir)
    model = _load(Path(checkpoint))
    lora = model.lora_config
    if lora is None:
        raise _fail(Path(checkpoint), "the checkpoint has no LoRA adapters to export")
    source_dir = None if source is None else Path(source)
    _check_source(source_dir, model.config)
    tensors: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            peft_module = "base_model.model." + hf_tensor_name(f"{name}.weight").removesuffix(
                ".weight"
            )
            tensors[f"{peft_module}.lora_A.weight"] = module.lora_a.detach().cpu().contiguous()
            tensors[f"{peft_module}.lora_B.weight"] = module.lora_b.detach().cpu().contiguous()
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None if source_dir is None else str(source_dir.resolve()),
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(f"{target_name}_proj" for target_name in lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    weights = safetensors.torch.save(tensors, metadata={"format": "pt"})
    return _write_atomically(
        target, {ADAPTER_CONFIG_FILE: _json(adapter_config), ADAPTER_WEIGHTS_FILE: weights}, {}
    )

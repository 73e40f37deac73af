"""Hugging Face model directories: read one onto our :class:`Transformer`, name its tensors.

A directory holds ``config.json`` (``model_type`` ``llama``, ``mistral``, ``qwen2`` or
``qwen3``; SmolLM2 is ``llama``), its weights in ``model.safetensors`` or in shards listed by
``model.safetensors.index.json``, and optionally ``generation_config.json``. The
architecture becomes a :class:`ModelConfig` and each tensor is mapped onto our module by name
(:func:`hf_tensor_name`); ``transformers`` is never imported. Every tensor's name, shape and
dtype is checked from the files' headers before any weight is read.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast, get_args

import torch
from safetensors import SafetensorError, safe_open

from crucible_kitchen._files import HF_CONFIG_FILE, is_hf_model_dir
from crucible_kitchen.adapters.local_torch._config import (
    DTypeName,
    ModelConfig,
    RopeScaling,
    sha256_of_json,
)
from crucible_kitchen.adapters.local_torch._model import Transformer
from crucible_kitchen.errors import PretrainedModelError

if TYPE_CHECKING:
    import os

    from torch import Tensor

__all__ = (
    "CONFIG_FILE",
    "GENERATION_CONFIG_FILE",
    "HFModelDirectory",
    "hf_tensor_name",
    "is_hf_model_dir",
    "load_hf_weights",
    "read_hf_model",
)

CONFIG_FILE: Final = HF_CONFIG_FILE
GENERATION_CONFIG_FILE: Final = "generation_config.json"
WEIGHTS_FILE: Final = "model.safetensors"
WEIGHTS_INDEX_FILE: Final = "model.safetensors.index.json"
SUPPORTED_MODEL_TYPES: Final = ("llama", "mistral", "qwen2", "qwen3")

_FLOAT_DTYPES: Final = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_HASH_CHUNK: Final = 1 << 20

# Our parameter names -> Hugging Face's, for every Llama-style family.
_NAME_MAP: Final = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^embed\.weight$", "model.embed_tokens.weight"),
        (r"^norm\.weight$", "model.norm.weight"),
        (r"^head\.weight$", "lm_head.weight"),
        (r"^layers\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
        (r"^layers\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
        (
            r"^layers\.(\d+)\.attn\.(q|k|v|o)\.(weight|bias)$",
            r"model.layers.\1.self_attn.\2_proj.\3",
        ),
        (r"^layers\.(\d+)\.attn\.(q|k)_norm\.weight$", r"model.layers.\1.self_attn.\2_norm.weight"),
        (r"^layers\.(\d+)\.mlp\.(gate|up|down)\.weight$", r"model.layers.\1.mlp.\2_proj.weight"),
    )
)
# Tensors some checkpoints carry that the model does not need.
_IGNORED: Final = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def hf_tensor_name(name: str) -> str:
    """The Hugging Face name of our parameter ``name`` (e.g. ``layers.0.attn.q.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``).

    Raises:
        ValueError: the parameter has no Hugging Face counterpart (learned positions).
    """
    for pattern, replacement in _NAME_MAP:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise ValueError(f"parameter {name!r} has no Hugging Face counterpart")


@dataclass(frozen=True, kw_only=True)
class HFModelDirectory:
    """What :func:`read_hf_model` found in a Hugging Face model directory.

    Attributes:
        path: The directory.
        config: Our architecture for it (``pretrained`` holds the directory's digest).
        hf_config: ``config.json`` as read.
        generation_config: ``generation_config.json`` as read, or ``None``.
        tensor_files: Each Hugging Face tensor name, and the file it is in.
    """

    path: Path
    config: ModelConfig
    hf_config: dict[str, Any]
    generation_config: dict[str, Any] | None
    tensor_files: dict[str, Path]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids: ``generation_config.json``'s, else ``config.json``'s."""
        for source in (self.generation_config or {}, self.hf_config):
            value = source.get("eos_token_id")
            if isinstance(value, int):
                return (value,)
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                return tuple(value)
        return ()


def _fail(path: Path, problems: list[str], *, tensor: str | None = None) -> PretrainedModelError:
    return PretrainedModelError(
        f"{path}: " + "; ".join(problems), path=str(path), tensor=tensor, problems=problems
    )


def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise _fail(path, ["missing"])
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, [f"unreadable: {exc}"]) from exc
    if not isinstance(value, dict):
        raise _fail(path, ["not a JSON object"])
    return value


def _rope(hf: dict[str, Any], problems: list[str]) -> tuple[float, RopeScaling | None]:
    """RoPE theta and scaling from ``rope_parameters`` (transformers 5) or ``rope_theta`` and
    ``rope_scaling`` (transformers 4)."""
    parameters = hf.get("rope_parameters")
    scaling: object = parameters if isinstance(parameters, dict) else hf.get("rope_scaling")
    theta = hf.get("rope_theta", 10_000.0)
    if isinstance(parameters, dict):
        theta = parameters.get("rope_theta", theta)
    if not isinstance(scaling, dict):
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        problems.append(f"rope type {kind!r} is not supported (default or llama3)")
        return float(theta), None
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"llama3 rope scaling: {exc}")
        return float(theta), None


def _model_config(hf: dict[str, Any], path: Path, *, dtype: DTypeName, device: str) -> ModelConfig:
    """Our :class:`ModelConfig` for ``config.json``'s contents (``path`` for errors), without
    the ``pretrained`` digest."""
    problems: list[str] = []
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _fail(
            path,
            [
                f"unsupported architecture: model_type {model_type!r} "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            ],
        )
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r} is not supported (silu)")
    if model_type != "qwen2" and hf.get("attention_bias"):
        problems.append("attention_bias on every projection is not supported")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias is not supported")
    theta, scaling = _rope(hf, problems)
    max_seq_len = hf.get("max_position_embeddings")
    if not isinstance(max_seq_len, int):
        problems.append(f"max_position_embeddings must be an int, got {max_seq_len!r}")
    window = hf.get("sliding_window")
    windowed = model_type == "mistral" or hf.get("use_sliding_window", False)
    if windowed and isinstance(window, int) and isinstance(max_seq_len, int):
        # Sequences no longer than the window attend exactly as with full causal attention.
        max_seq_len = min(max_seq_len, window)
    heads = hf.get("num_attention_heads", 0)
    head_dim = hf.get("head_dim")
    if isinstance(heads, int) and heads > 0 and head_dim == hf.get("hidden_size", 0) // heads:
        head_dim = None  # the default: keep the config's identity minimal
    try:
        config = ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads,
            d_ff=hf["intermediate_size"],
            max_seq_len=max_seq_len or 0,
            rope_theta=theta,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            d_head=head_dim,
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            rope_scaling=scaling,
            dtype=dtype,
            device=device,
        )
    except KeyError as exc:
        problems.append(f"lacks {exc.args[0]!r}")
    except (TypeError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        raise _fail(path, problems)
    return config


_TensorInfo = tuple[Path, str, tuple[int, ...]]
"""A tensor's file, safetensors dtype and shape."""


def _tensor_infos(directory: Path) -> dict[str, _TensorInfo]:
    """Each tensor's file, dtype and shape, from the shard index or the single weights file."""
    index_path = directory / WEIGHTS_INDEX_FILE
    index = _read_json(index_path, required=False)
    if index is None:
        single = directory / WEIGHTS_FILE
        if not single.is_file():
            raise _fail(
                single,
                [f"missing: the weights are {WEIGHTS_FILE} or shards in {WEIGHTS_INDEX_FILE}"],
            )
        return {name: (single, *info) for name, info in _header(single).items()}
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise _fail(index_path, ["'weight_map' must map tensor names to file names"])
    files: dict[str, Path] = {}
    for name, file_name in weight_map.items():
        file = directory / file_name
        if file.parent != directory:
            raise _fail(
                index_path,
                [f"tensor {name}: shard {file_name!r} is outside the directory"],
                tensor=name,
            )
        files[name] = file
    infos: dict[str, _TensorInfo] = {}
    for file in sorted(set(files.values())):
        present = _header(file)
        missing = sorted(n for n, f in files.items() if f == file and n not in present)
        if missing:
            problem = f"missing tensor {missing[0]} (listed in {WEIGHTS_INDEX_FILE})"
            raise _fail(file, [problem], tensor=missing[0])
        unexpected = sorted(set(present) - set(files))
        if unexpected:
            problem = f"unexpected tensor {unexpected[0]} (not in {WEIGHTS_INDEX_FILE})"
            raise _fail(file, [problem], tensor=unexpected[0])
        infos.update((name, (file, *info)) for name, info in present.items())
    return infos


def _header(file: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's dtype and shape in a safetensors file, read without loading it."""
    if not file.is_file():
        raise _fail(file, ["missing"])
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {
                name: (
                    handle.get_slice(name).get_dtype(),
                    tuple(handle.get_slice(name).get_shape()),
                )
                for name in handle.keys()  # noqa: SIM118 (safe_open has no __iter__)
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(file, [f"not a readable safetensors file: {exc}"]) from exc


def _digest(directory: Path, files: list[Path]) -> str:
    """sha256 of ``config.json``, the shard index and every weights file."""
    digests: dict[str, str] = {}
    for path in [directory / CONFIG_FILE, directory / WEIGHTS_INDEX_FILE, *files]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _fail(path, [f"unreadable: {exc}"]) from exc
        if not path.is_file():
            continue
        digests[path.name] = _file_digest(
            str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
        )
    return sha256_of_json(digests)


@functools.lru_cache(maxsize=1024)
def _file_digest(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    """sha256 of the file ``path``, remembered for as long as its identity, size and
    modification time stay the same: a process that loads one model directory several times
    (a Tinker server's ``create_model`` calls, a teacher beside its student) reads each
    gigabyte once (~3 s per GB here)."""
    del device, inode, size, mtime_ns  # the cache key only
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                sha.update(chunk)
    except OSError as exc:
        raise _fail(Path(path), [f"unreadable: {exc}"]) from exc
    return sha.hexdigest()


def read_hf_model(
    path: str | os.PathLike[str],
    *,
    dtype: DTypeName | None = None,
    device: str = "cpu",
    config_dtype: bool = False,
) -> HFModelDirectory:
    """Read a Hugging Face model directory's configs and check its tensors' names and shapes.

    Reads no weights (only the safetensors headers), but hashes every file for the
    config's ``pretrained`` digest (once per process while a file's identity, size and
    modification time stay the same).

    Args:
        path: The directory.
        dtype: The parameter dtype of the model to build; by default float32, or with
            ``config_dtype`` the dtype ``config.json`` names (``torch_dtype`` or ``dtype``).
        device: Its device.
        config_dtype: Default to ``config.json``'s dtype (for GPUs) rather than float32.

    Raises:
        PretrainedModelError: ``config.json`` is missing or unreadable, or names an
            unsupported architecture; a weights file is missing or not safetensors; a tensor
            is missing, unexpected, of the wrong shape or not floating point. It names the
            file and the tensor.
    """
    directory = Path(path)
    hf = _read_json(directory / CONFIG_FILE, required=True)
    assert hf is not None
    if dtype is None:
        named = hf.get("torch_dtype", hf.get("dtype"))
        dtype = named if config_dtype and named in get_args(DTypeName) else "float32"
    config = _model_config(
        hf, directory / CONFIG_FILE, dtype=cast("DTypeName", dtype), device=device
    )
    infos = _tensor_infos(directory)
    sharded = (directory / WEIGHTS_INDEX_FILE).is_file()
    _check_tensors(config, infos, directory / (WEIGHTS_INDEX_FILE if sharded else WEIGHTS_FILE))
    # Hashed once everything else checked out: the slow part, for a large model.
    digest = _digest(directory, sorted({info[0] for info in infos.values()}))
    return HFModelDirectory(
        path=directory,
        config=dataclasses.replace(config, pretrained=digest),
        hf_config=hf,
        generation_config=_read_json(directory / GENERATION_CONFIG_FILE, required=False),
        tensor_files={name: info[0] for name, info in infos.items()},
    )


def _our_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Each parameter of a model of ``config``, by our name, and its shape."""
    with torch.device("meta"):
        model = Transformer(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _check_tensors(config: ModelConfig, infos: dict[str, _TensorInfo], weights: Path) -> None:
    """Refuse a missing, unexpected, mis-shaped or non-float tensor; ``weights`` is the file
    named for a missing one."""
    expected = {hf_tensor_name(name): shape for name, shape in _our_shapes(config).items()}
    missing = sorted(set(expected) - set(infos))
    if missing:
        raise _fail(weights, [f"missing tensor {missing[0]}"], tensor=missing[0])
    for name, (file, dtype, shape) in sorted(infos.items()):
        if _IGNORED.match(name):
            continue
        if name not in expected:
            if name == "lm_head.weight" and config.tie_embeddings:
                continue  # a tied head saved anyway
            raise _fail(file, [f"unexpected tensor {name}"], tensor=name)
        if shape != expected[name]:
            raise _fail(
                file,
                [f"tensor {name} has shape {list(shape)}, the config needs {list(expected[name])}"],
                tensor=name,
            )
        if dtype not in _FLOAT_DTYPES:
            raise _fail(
                file,
                [f"tensor {name} is {dtype}; only {', '.join(_FLOAT_DTYPES)} are supported"],
                tensor=name,
            )


def load_hf_weights(model: HFModelDirectory) -> dict[str, Tensor]:
    """The directory's weights under our parameter names, on the CPU in ``config.dtype``.

    Raises:
        PretrainedModelError: a weights file cannot be read (changed since
            :func:`read_hf_model`, truncated).
    """
    config = model.config
    wanted = {hf_tensor_name(name): name for name in _our_shapes(config)}
    weights: dict[str, Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for hf_name in wanted:
        by_file.setdefault(model.tensor_files[hf_name], []).append(hf_name)
    for file, names in sorted(by_file.items()):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for hf_name in names:
                    tensor = handle.get_tensor(hf_name)
                    weights[wanted[hf_name]] = tensor.to(config.torch_dtype)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _fail(file, [f"cannot read its tensors: {exc}"]) from exc
    return weights

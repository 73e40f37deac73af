"""Model and LoRA configuration, size presets, device resolution and determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

PositionEncoding = Literal["rope", "learned"]
DTypeName = Literal["float32", "bfloat16", "float16"]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama 3's RoPE frequency scaling (Hugging Face ``rope_type: "llama3"``).

    Wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are
    stretched by ``factor``, those shorter than ``... / high_freq_factor`` kept, and those in
    between interpolated smoothly.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        if not (
            all(
                0 < value < math.inf
                for value in (self.factor, self.low_freq_factor, self.high_freq_factor)
            )
            and self.high_freq_factor > self.low_freq_factor
            and isinstance(self.original_max_position_embeddings, int)
            and self.original_max_position_embeddings > 0
        ):
            raise ValueError(
                "invalid RopeScaling: factors must be positive and finite, high_freq_factor > "
                f"low_freq_factor, original_max_position_embeddings a positive int; got {self}"
            )


_OPTIONAL_IDENTITY_FIELDS = ("d_head", "qkv_bias", "qk_norm", "rope_scaling", "pretrained")
"""Fields that appear in :meth:`ModelConfig.identity` only when they differ from their default,
so that configs without them keep the identity (and checkpoints) they always had."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of a pre-norm decoder-only transformer (RMSNorm, SwiGLU MLP, no biases by
    default): the Llama family, which Mistral, Qwen2, Qwen3 and SmolLM2 extend.

    Attributes:
        vocab_size: Number of token ids; ids are ``0 .. vocab_size - 1``.
        d_model: Width of the residual stream.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads; must divide ``d_model`` unless ``d_head`` is given.
        d_ff: Hidden width of the SwiGLU MLP.
        max_seq_len: Longest sequence (prompt plus generated tokens) the model accepts.
        n_kv_heads: Key/value heads for grouped-query attention; ``None`` means ``n_heads``.
        positions: ``"rope"`` (rotary, default) or ``"learned"`` absolute embeddings.
        rope_theta: RoPE base frequency.
        norm_eps: RMSNorm epsilon.
        tie_embeddings: Share the token embedding with the output projection.
        d_head: Width of one attention head; ``None`` means ``d_model // n_heads`` (Qwen3
            sets it apart).
        qkv_bias: Biases on the query, key and value projections (Qwen2).
        qk_norm: RMSNorm of each query and key head before RoPE (Qwen3).
        rope_scaling: Llama 3's RoPE frequency scaling, or ``None``.
        pretrained: Digest of the pretrained weights the model starts from (a Hugging Face
            model directory's ``config.json`` and safetensors files), ``None`` for a model
            initialised from a seed. Part of the identity, so a checkpoint of one pretrained
            model never loads into another.
        dropout: Residual and embedding dropout while training; 0 disables it.
        init_std: Standard deviation of the normal weight init.
        dtype: Parameter dtype.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available). Not part
            of the model's identity: a checkpoint saved on one device loads on another.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_seq_len: int
    n_kv_heads: int | None = None
    positions: PositionEncoding = "rope"
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    dtype: DTypeName = "float32"
    device: str = "cpu"
    d_head: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_scaling: RopeScaling | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if self.d_head is not None and (not isinstance(self.d_head, int) or self.d_head < 1):
            problems.append(f"d_head must be a positive int or None, got {self.d_head!r}")
        elif not problems:
            if self.d_head is None and self.d_model % self.n_heads:
                problems.append(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
            elif self.positions == "rope" and self.head_dim % 2:
                problems.append(f"RoPE needs an even head dim, got {self.head_dim}")
            kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
            if kv_heads < 1 or self.n_heads % kv_heads:
                problems.append(
                    f"n_kv_heads ({self.n_kv_heads}) must be positive and divide "
                    f"n_heads ({self.n_heads})"
                )
        if self.positions not in ("rope", "learned"):
            problems.append(f"positions must be 'rope' or 'learned', got {self.positions!r}")
        if self.rope_scaling is not None and self.positions != "rope":
            problems.append("rope_scaling needs positions='rope'")
        if self.dtype not in _TORCH_DTYPES:
            problems.append(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {self.dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not all(
            0 < value < math.inf for value in (self.rope_theta, self.norm_eps, self.init_std)
        ):
            problems.append("rope_theta, norm_eps and init_std must be positive and finite")
        if problems:
            raise ValueError("invalid ModelConfig:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``d_head``, or ``d_model // n_heads``."""
        return self.d_model // self.n_heads if self.d_head is None else self.d_head

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype``."""
        return _TORCH_DTYPES[self.dtype]

    def identity(self) -> dict[str, Any]:
        """The fields that define the weights' meaning (all but ``device``), JSON-ready.

        The fields added for pretrained families appear only when set, so the identity of a
        config without them is what it always was.
        """
        fields = dataclasses.asdict(self)
        del fields["device"]
        for name in _OPTIONAL_IDENTITY_FIELDS:
            if getattr(self, name) == _FIELD_DEFAULTS[name]:
                del fields[name]
        return fields

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> ModelConfig:
        """The config whose :meth:`identity` is ``identity`` (on the CPU).

        Raises:
            ValueError: ``identity`` is not one (an unknown field, an invalid value).
        """
        fields = dict(identity)
        scaling = fields.get("rope_scaling")
        try:
            if isinstance(scaling, dict):
                fields["rope_scaling"] = RopeScaling(**scaling)
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"not a model config identity: {exc}") from exc

    def fingerprint(self) -> str:
        """Stable sha256 of :meth:`identity`."""
        return sha256_of_json(self.identity())


_FIELD_DEFAULTS: dict[str, Any] = {
    field.name: field.default for field in dataclasses.fields(ModelConfig)
}


def sha256_of_json(value: object) -> str:
    """sha256 hex digest of ``value`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
"""Names of the linear layers LoRA can wrap: attention ``q k v o`` and MLP ``gate up down``."""


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Which linear layers get a LoRA adapter, and its shape.

    Attributes:
        rank: Rank of the update ``B @ A``.
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the adapter's input while training.
        targets: Layer names from :data:`LORA_TARGETS`.
        seed: Seed of the ``A`` matrices' init (``B`` starts at zero, so a fresh adapter
            leaves the model's output unchanged). Not part of the adapter's identity.
    """

    rank: int
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    seed: int = 0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank must be a positive int, got {self.rank!r}")
        if not 0 < self.alpha < math.inf:
            problems.append(f"alpha must be positive and finite, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            problems.append(f"targets must be a non-empty subset of {LORA_TARGETS}, got {unknown}")
        if problems:
            raise ValueError("invalid LoraConfig:\n" + "\n".join(f"  - {p}" for p in problems))

    def identity(self) -> dict[str, Any]:
        """The fields that define what trained adapter weights mean (all but ``seed``)."""
        fields = dataclasses.asdict(self)
        del fields["seed"]
        fields["targets"] = sorted(self.targets)
        return fields

    def fingerprint(self) -> str:
        """Stable sha256 of :meth:`identity`."""
        return sha256_of_json(self.identity())


PRESETS: dict[str, ModelConfig] = {
    # ~30k params: a student for distilling "tiny" (distill_basic).
    "micro": ModelConfig(
        vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=96, max_seq_len=256
    ),
    # ~117k params: a training step takes milliseconds on one CPU core.
    "tiny": ModelConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=176, max_seq_len=256
    ),
    # ~5M params with its 8192-token vocabulary (~3M once resized to the byte tokenizer's
    # 256): CPU examples that should produce something readable.
    "small": ModelConfig(
        vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=688, max_seq_len=1024
    ),
    # The rest are for GPUs.
    "medium": ModelConfig(
        vocab_size=32_000,
        d_model=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=4,
        d_ff=1376,
        max_seq_len=2048,
        dtype="bfloat16",
    ),
    "base": ModelConfig(
        vocab_size=32_000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        d_ff=2048,
        max_seq_len=2048,
        dtype="bfloat16",
    ),
    "large": ModelConfig(
        vocab_size=32_000,
        d_model=1024,
        n_layers=24,
        n_heads=16,
        n_kv_heads=8,
        d_ff=2816,
        max_seq_len=2048,
        dtype="bfloat16",
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset from :data:`PRESETS`, with ``overrides`` applied (e.g. ``vocab_size``).

    Raises:
        KeyError: ``name`` is not a preset.
        ValueError: the overridden config is invalid.
    """
    try:
        base = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None
    return dataclasses.replace(base, **overrides)


def resolve_device(name: str) -> torch.device:
    """Turn a config's ``device`` string into a ``torch.device``.

    ``"auto"`` picks CUDA when it is available, else CPU.

    Raises:
        ValueError: CUDA was asked for but is not available, or the name is not a device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def enable_determinism() -> None:
    """Make torch use deterministic kernels, process-wide.

    CPU kernels used by this backend are deterministic already; CUDA needs this (and a fixed
    cuBLAS workspace, which must be configured before the first CUDA matmul).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)

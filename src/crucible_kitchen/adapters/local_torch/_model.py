"""A decoder-only transformer with a key/value cache, and the log-probability helpers.

Build models with :func:`build_model`: it initialises every weight from a local
``torch.Generator`` and never touches torch's global RNG, so the same seed gives the same
weights on any run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crucible_kitchen.adapters.local_torch._config import LoraConfig, ModelConfig, resolve_device
from crucible_kitchen.training import derive_seed

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def dropout(x: Tensor, p: float, generator: torch.Generator, *, training: bool) -> Tensor:
    """Inverted dropout drawing its mask from ``generator`` (so training stays reproducible)."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class KVCache:
    """Per-layer keys and values of a batch, preallocated to ``capacity`` positions.

    ``length`` positions are filled; a forward pass with the cache appends its tokens after them.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], length: int = 0) -> None:
        self.keys = keys
        self.values = values
        self.length = length

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        """Positions the cache can hold."""
        return self.keys[0].shape[2]

    def repeat_batch(self, times: int) -> KVCache:
        """A copy with each row repeated ``times`` times in a row (``repeat_interleave``)."""
        return KVCache(
            [k.repeat_interleave(times, dim=0) for k in self.keys],
            [v.repeat_interleave(times, dim=0) for v in self.values],
            self.length,
        )


@dataclass(frozen=True)
class RowPositions:
    """Where each row's one new token goes in a static cache (batched decoding).

    Attributes:
        rows: (batch,) int64, each row's position: its key and value are written there, and
            it attends to the cached keys up to it.
        groups: ``(first row, end row, position)`` of consecutive rows that share one
            position: attention then reads only those rows' filled prefix, group by group.
            ``None`` attends over the whole cache with a mask per row.
    """

    rows: Tensor
    groups: tuple[tuple[int, int, int], ...] | None = None


def _inverse_frequencies(config: ModelConfig, device: torch.device) -> Tensor:
    """RoPE's per-pair inverse frequencies, with Llama 3's scaling when the config has it."""
    head_dim = config.head_dim
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
    inverse = 1.0 / (config.rope_theta ** (exponents / head_dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inverse
    # As Hugging Face's llama3 rope: stretch long wavelengths, keep short ones, blend between.
    context = scaling.original_max_position_embeddings
    wavelengths = 2 * math.pi / inverse
    stretched = torch.where(
        wavelengths > context / scaling.low_freq_factor, inverse / scaling.factor, inverse
    )
    smooth = (context / wavelengths - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * stretched / scaling.factor + smooth * stretched
    medium = (wavelengths >= context / scaling.high_freq_factor) & (
        wavelengths <= context / scaling.low_freq_factor
    )
    return torch.where(medium, blended, stretched)


def _rope_tables(positions: Tensor, inverse_frequencies: Tensor) -> tuple[Tensor, Tensor]:
    angles = positions.to(torch.float32)[:, None] * inverse_frequencies[None, :]
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape (batch, heads, seq, head_dim) in float32, "rotate half" layout."""
    first, second = x.to(torch.float32).chunk(2, dim=-1)
    rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
    return rotated.to(x.dtype)


class Attention(nn.Module):
    """Causal multi-head attention with optional grouped-query key/value heads, RoPE, query,
    key and value biases and per-head query and key RMSNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        bias = config.qkv_bias
        self.q = nn.Linear(config.d_model, config.n_heads * config.head_dim, bias=bias)
        self.k = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=bias)
        self.v = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=bias)
        self.o = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: tuple[Tensor, Tensor, int | RowPositions] | None,
    ) -> Tensor:
        """Attend over ``x`` (batch, seq, d_model), plus the cached prefix when ``cache`` is given.

        ``cache`` is (keys, values, filled length) of this layer; the new keys and values are
        written into it in place. :class:`RowPositions` instead of a length means one token
        per row, each at its own position.
        """
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = _apply_rope(q, *rope)
            k = _apply_rope(k, *rope)
        grouped = self.n_kv_heads != self.n_heads
        start = 0
        if cache is not None and isinstance(cache[2], RowPositions):
            keys, values, at = cache[0], cache[1], cache[2]
            rows = torch.arange(batch, device=x.device)
            keys[rows, :, at.rows] = k[:, :, 0]
            values[rows, :, at.rows] = v[:, :, 0]
            if at.groups is None:
                visible = torch.arange(keys.shape[2], device=x.device) <= at.rows[:, None]
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=visible[:, None, None, :], enable_gqa=grouped
                )
            else:
                out = torch.zeros_like(q)
                for first, end, position in at.groups:
                    out[first:end] = F.scaled_dot_product_attention(
                        q[first:end],
                        keys[first:end, :, : position + 1],
                        values[first:end, :, : position + 1],
                        enable_gqa=grouped,
                    )
            merged = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
            stepped: Tensor = self.o(merged)
            return stepped
        if cache is not None:
            keys, values, filled = cache
            assert isinstance(filled, int)
            start = filled
            keys[:, :, start : start + seq] = k
            values[:, :, start : start + seq] = v
            k, v = keys[:, :, : start + seq], values[:, :, : start + seq]
        if start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
        else:
            mask = None  # a single new token may see every key
            if seq > 1:
                # Query i sits at absolute position start + i and sees keys 0 .. start + i.
                query_positions = torch.arange(start, start + seq, device=x.device)
                key_positions = torch.arange(start + seq, device=x.device)
                mask = key_positions[None, :] <= query_positions[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)
        merged = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        projected: Tensor = self.o(merged)
        return projected


class FeedForward(nn.Module):
    """SwiGLU MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP to ``x`` (..., d_model)."""
        out: Tensor = self.down(F.silu(self.gate(x)) * self.up(x))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each on a residual branch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = FeedForward(config)
        self.dropout_p = config.dropout

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: tuple[Tensor, Tensor, int | RowPositions] | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Run the block on ``x`` (batch, seq, d_model)."""
        attended = self.attn(self.attn_norm(x), rope, cache)
        x = x + dropout(attended, self.dropout_p, generator, training=self.training)
        transformed = self.mlp(self.mlp_norm(x))
        return x + dropout(transformed, self.dropout_p, generator, training=self.training)


class Transformer(nn.Module):
    """Decoder-only language model. Construct it with :func:`build_model`.

    Calling the constructor directly builds the modules on the current default device with
    torch's own (global-RNG) init; :func:`build_model` builds on the meta device instead and
    initialises from a seed.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = (
            nn.Embedding(config.max_seq_len, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        # Shared with LoRA layers; its state is saved with the training state in checkpoints.
        self.dropout_generator = torch.Generator()
        # Set by apply_lora; part of the model's identity in checkpoints.
        self.lora_config: LoraConfig | None = None

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.embed.weight.device

    def new_cache(
        self, batch_size: int, capacity: int | None = None, *, zeroed: bool = False
    ) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` rows (capacity defaults to max_seq_len).

        Its positions are uninitialised unless ``zeroed``: a forward pass reads only the
        positions it filled, but attention over the whole cache under a mask reads every one
        (and uninitialised memory may hold NaN, which a mask does not cancel).
        """
        config = self.config
        capacity = config.max_seq_len if capacity is None else capacity
        shape = (batch_size, config.kv_heads, capacity, config.head_dim)
        weight = self.embed.weight
        allocate = torch.zeros if zeroed else torch.empty

        def layers() -> list[Tensor]:
            return [allocate(shape, dtype=weight.dtype, device=weight.device) for _ in self.layers]

        return KVCache(layers(), layers())

    @property
    def output_weight(self) -> Tensor:
        """The (vocab, d_model) matrix that turns final hidden states into logits."""
        return self.embed.weight if self.head is None else self.head.weight

    def forward(
        self,
        tokens: Tensor,
        *,
        cache: KVCache | None = None,
        positions: RowPositions | None = None,
        project: bool = True,
    ) -> Tensor:
        """Logits (batch, seq, vocab) for ``tokens`` (batch, seq) of int64 ids.

        With ``cache``, ``tokens`` continue the cached prefix: their positions start at
        ``cache.length``, they attend to the cached keys, and the cache grows by ``seq``.
        With ``positions`` too, ``tokens`` hold one token per row at that row's own position
        (see :class:`RowPositions`), and ``cache.length`` is left to the caller: batched
        decoding of rows of different lengths over a static cache. ``project=False``
        returns the final (normalised) hidden states (batch, seq, d_model), not logits.

        Raises:
            ValueError: the sequence would run past ``max_seq_len`` or the cache's capacity.
        """
        seq = tokens.shape[1]
        start = 0 if cache is None else cache.length
        limit = self.config.max_seq_len
        if cache is not None:
            limit = min(limit, cache.capacity)
        if positions is None and start + seq > limit:
            raise ValueError(
                f"{start + seq} positions exceed the limit of {limit} (max_seq_len or cache size)"
            )
        at = (
            torch.arange(start, start + seq, device=tokens.device)
            if positions is None
            else positions.rows
        )
        x: Tensor = self.embed(tokens)
        rope = None
        if self.pos_embed is None:
            rope = _rope_tables(at, _inverse_frequencies(self.config, at.device))
            if positions is not None:  # one position per row: (batch, 1, 1, head_dim / 2)
                rope = (rope[0][:, None, None], rope[1][:, None, None])
        else:
            x = x + (self.pos_embed(at)[None] if positions is None else self.pos_embed(at)[:, None])
        x = dropout(x, self.config.dropout, self.dropout_generator, training=self.training)
        for index, block in enumerate(self.layers):
            layer_cache = None
            if cache is not None:
                layer_cache = (
                    cache.keys[index],
                    cache.values[index],
                    start if positions is None else positions,
                )
            x = block(x, rope, layer_cache, self.dropout_generator)
        if cache is not None and positions is None:
            cache.length = start + seq
        x = self.norm(x)
        if not project:
            return x
        if self.head is None:
            return F.linear(x, self.embed.weight)
        logits: Tensor = self.head(x)
        return logits


@torch.no_grad()
def _initialise(model: Transformer, generator: torch.Generator) -> None:
    std = model.config.init_std
    # GPT-2 style: shrink the projections that write into the residual stream by depth.
    residual_std = std / math.sqrt(2 * model.config.n_layers)
    for name, parameter in model.named_parameters():
        if name.endswith(".bias"):
            parameter.zero_()
        elif parameter.ndim == 1:
            parameter.fill_(1.0)
        elif name.endswith((".o.weight", ".down.weight")):
            parameter.normal_(0.0, residual_std, generator=generator)
        else:
            parameter.normal_(0.0, std, generator=generator)


def build_model(
    config: ModelConfig,
    *,
    seed: int,
    weights: Mapping[str, Tensor] | None = None,
    device: torch.device | None = None,
    initialise: bool = True,
) -> Transformer:
    """A freshly initialised model on ``config.device`` in ``config.dtype``, in training mode.

    Weights are drawn on the CPU in float32 from a generator seeded with ``seed``, then moved,
    so a seed gives the same initial weights on every device. ``weights`` (every parameter,
    by this module's names, e.g. pretrained ones) replace the drawn init; ``seed`` still
    seeds dropout. ``device`` keeps the parameters there instead (the CPU, for a model that
    FSDP then shards onto ``config.device``); the dropout generator is on ``config.device``.
    ``initialise=False`` (without ``weights``) leaves the parameters uninitialised, allocated
    once on their device in ``config.dtype``: for a caller that loads every weight next
    (``load_state_dict``), so that a large model pays for no random init it throws away.

    Raises:
        RuntimeError: ``weights`` lacks a parameter, has an extra one or a wrong shape.
    """
    target = resolve_device(config.device)
    placement = target if device is None else device
    with torch.device("meta"):
        model = Transformer(config)
    if weights is not None:
        model.load_state_dict(weights, strict=True, assign=True)
    elif initialise:
        model.to_empty(device="cpu")
        _initialise(model, torch.Generator().manual_seed(derive_seed(seed, "init")))
    else:
        model.to(dtype=config.torch_dtype).to_empty(device=placement)
    model.to(device=placement, dtype=config.torch_dtype)
    model.dropout_generator = torch.Generator(device=target).manual_seed(
        derive_seed(seed, "dropout")
    )
    return model


def parameter_count(config: ModelConfig) -> int:
    """Number of parameters of a model built from ``config`` (allocates no memory)."""
    with torch.device("meta"):
        model = Transformer(config)
    return sum(parameter.numel() for parameter in model.parameters())


def target_logprobs(
    model: Transformer, input_tokens: Tensor, target_tokens: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Log-probability of each target token given its prefix, differentiable.

    ``out[b, i] = log p(target_tokens[b, i] | input_tokens[b, : i + 1])``. Sequences are padded
    on the right; ``mask`` (bool, same shape) marks real positions, and padded positions give 0.

    Args:
        model: The model to score with.
        input_tokens: (batch, seq) int64 token ids.
        target_tokens: (batch, seq) int64 ids of the next token at each position.
        mask: Optional (batch, seq) bool; ``True`` where a target is real.

    Returns:
        (batch, seq) float32 log-probabilities.
    """
    logits = model(input_tokens)
    targets = target_tokens if mask is None else target_tokens.masked_fill(~mask, 0)
    # The log-softmax over dim 1 of the (batch, vocab, seq) view, then a gather: the values
    # (and gradients) of cross_entropy(reduction="none") on that view, bit for bit, without
    # its negations and its slower NLL kernels.
    logsoftmax = torch.log_softmax(logits.to(torch.float32).transpose(1, 2), dim=1)
    logprobs = logsoftmax.gather(1, targets[:, None])[:, 0]
    return logprobs if mask is None else logprobs.masked_fill(~mask, 0.0)


def pad_right(
    sequences: Sequence[Sequence[int]],
    *,
    pad_value: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Stack token lists into a right-padded (batch, longest) int64 tensor and its bool mask.

    Raises:
        ValueError: ``sequences`` is empty.
    """
    if not sequences:
        raise ValueError("pad_right needs at least one sequence")
    longest = max(len(sequence) for sequence in sequences)
    tokens = torch.full((len(sequences), longest), pad_value, dtype=torch.int64)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.int64)
        mask[row, : len(sequence)] = True
    return tokens.to(device), mask.to(device)

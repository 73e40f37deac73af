"""A GGUF file (llama.cpp's format) converted into a Hugging Face model directory.

:func:`convert_gguf` reads the file with the ``gguf`` package (the ``gguf`` extra) and writes
what ``transformers`` and this backend load: ``config.json``, ``model.safetensors`` (every
tensor dequantized, under Hugging Face's names, with llama.cpp's rotary reordering of the
query and key rows undone), ``tokenizer.json`` (built with ``tokenizers`` from the
``tokenizer.ggml.*`` metadata), ``tokenizer_config.json`` (special tokens, chat template) and
``generation_config.json``. :func:`cached_gguf_model` converts a file once into a cache.

Supported: the ``llama`` architecture (Llama 2 and 3 without rope-frequency tensors, Mistral,
SmolLM2, ...); byte-level BPE tokenizers (``tokenizer.ggml.model`` ``gpt2``) with the
pre-tokenizers of :data:`PRE_TOKENIZERS`, and sentencepiece BPE ones (``llama``); every
quantization ``gguf.quants`` dequantizes. The tokenizer encodes as ``transformers``' own GGUF
loader does, except that a pre-tokenizer which splits digits one by one (``smollm``,
``starcoder``) does so, as llama.cpp does.

This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard

from crucible_kitchen._files import FileContents, atomic_write_directory, is_hf_model_dir
from crucible_kitchen.errors import CheckpointExists, GgufCorrupted, GgufUnsupported

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    import numpy as np
    import numpy.typing as npt
    from gguf import GGUFReader
    from tokenizers import Tokenizer

__all__ = (
    "PRE_TOKENIZERS",
    "GgufDtype",
    "cached_gguf_model",
    "convert_gguf",
    "gguf_cache_dir",
    "is_gguf_file",
)

GgufDtype = Literal["float32", "float16"]
"""The dtype the dequantized weights are written in."""

SUPPORTED_ARCHITECTURES: Final = ("llama",)

_GLOBAL_TENSORS: Final = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS: Final = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")

_GPT2_SPLIT: Final = None
"""GPT-2's own split (``ByteLevel(use_regex=True)``)."""
_DIGITS_THEN_GPT2: Final = "digits"
"""Every digit alone, then GPT-2's split (llama.cpp's ``\\p{N}`` pre-split)."""
_LLAMA3_SPLIT: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE_TOKENIZERS: Final[Mapping[str, str | None]] = {
    "default": _GPT2_SPLIT,
    "gpt2": _GPT2_SPLIT,
    "gpt-2": _GPT2_SPLIT,
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
"""How each ``tokenizer.ggml.pre`` splits text before its merges apply, as llama.cpp does:
GPT-2's regex (``None``), digits one by one before it (``"digits"``), or a regex."""

_UNKNOWN_TOKEN: Final = 2
_CONTROL_TOKEN: Final = 3
_USER_DEFINED_TOKEN: Final = 4
_CACHE_ENV: Final = "CRUCIBLE_KITCHEN_CACHE"


def convert_gguf(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    dtype: GgufDtype = "float32",
) -> Path:
    """Convert the GGUF file ``source`` into a new Hugging Face model directory.

    The directory is written all or nothing: into a temporary sibling that is renamed to
    ``destination`` once complete; on any error nothing is left behind.

    Returns:
        ``destination``, as a :class:`~pathlib.Path`.

    Raises:
        GgufCorrupted: not a readable GGUF file, or its metadata and tensors disagree.
        GgufUnsupported: an architecture, tokenizer or quantization not supported.
        CheckpointExists: ``destination`` exists already; it is left as it was.
        OSError: the directory could not be written.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists():
        raise CheckpointExists(
            f"{destination} exists already; choose a new directory", path=str(destination)
        )
    files = _converted_files(source, dtype)
    _write_directory(destination, files)
    return destination


def is_gguf_file(model: object) -> TypeGuard[str | os.PathLike[str]]:
    """Whether ``model`` (a ``model=`` setting) is the path of a ``.gguf`` file."""
    return isinstance(model, str | os.PathLike) and os.fspath(model).endswith(".gguf")


def gguf_cache_dir() -> Path:
    """Where :func:`cached_gguf_model` keeps converted models: ``$CRUCIBLE_KITCHEN_CACHE/gguf``,
    else ``$XDG_CACHE_HOME/crucible-kitchen/gguf``, else ``~/.cache/crucible-kitchen/gguf``."""
    if root := os.environ.get(_CACHE_ENV):
        return Path(root) / "gguf"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "crucible-kitchen" / "gguf"


def cached_gguf_model(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: GgufDtype = "float32",
) -> Path:
    """The model directory converted from ``source``, converting it on the first call only.

    The directory is ``<cache_dir>/<file stem>-<sha256 of the file's bytes>-<dtype>`` (by default
    under :func:`gguf_cache_dir`), so a changed file is converted again. Conversions racing for
    the same file both succeed; one of them is kept.

    Raises:
        The errors of :func:`convert_gguf`, except :class:`CheckpointExists`.
    """
    source = Path(source)
    digest = _file_sha256(source)
    root = Path(cache_dir) if cache_dir is not None else gguf_cache_dir()
    target = root / f"{source.stem}-{digest[:16]}-{dtype}"
    if is_hf_model_dir(target):
        return target
    try:
        return convert_gguf(source, target, dtype=dtype)
    except CheckpointExists:
        return target  # converted meanwhile by another process


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise GgufCorrupted(f"cannot read it: {exc.strerror or exc}", path=str(path)) from exc
    return digest.hexdigest()


def _import_gguf(path: Path) -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise GgufUnsupported(
            "reading GGUF files needs the gguf package: pip install 'crucible-kitchen[gguf]'",
            path=str(path),
        ) from exc
    return gguf


class _Metadata:
    """The key-value metadata of one GGUF file, with errors that name the file."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self._reader = reader
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise self.corrupted(f"metadata {key!r} cannot be read: {exc}") from exc

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise self.corrupted(f"metadata {key!r} is missing")
        return value

    def count(self, key: str, default: int | None = None) -> int:
        """A positive integer setting (a per-layer list is not supported)."""
        value = self.require(key) if default is None else self.get(key, default)
        if isinstance(value, list):
            raise GgufUnsupported(
                f"metadata {key!r} differs per layer; only uniform layers are supported",
                path=str(self.path),
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.corrupted(f"metadata {key!r} is {value!r}, not a positive integer")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise self.corrupted(f"metadata {key!r} is {value!r}, not a positive number")
        return float(value)

    def corrupted(self, message: str, tensor: str | None = None) -> GgufCorrupted:
        return GgufCorrupted(message, path=str(self.path), tensor=tensor)


def _open(path: Path) -> GGUFReader:
    gguf = _import_gguf(path)
    try:
        reader: GGUFReader = gguf.GGUFReader(path)
    except OSError as exc:
        raise GgufCorrupted(f"cannot read it: {exc.strerror or exc}", path=str(path)) from exc
    except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as exc:
        # the reader's words for a bad magic number, a version it does not know, a truncated
        # header or a tensor whose data runs past the end of the file
        raise GgufCorrupted(f"not a readable GGUF file: {exc}", path=str(path)) from exc
    return reader


def _converted_files(source: Path, dtype: GgufDtype) -> dict[str, Any]:
    """Every file of the model directory: name → JSON-able dict, or the tensors to save."""
    reader = _open(source)
    metadata = _Metadata(reader, source)
    architecture = metadata.require("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise GgufUnsupported(
            f"architecture {architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            path=str(source),
        )
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    config = _llama_config(metadata, tensors)
    tokenizer, tokenizer_config = _tokenizer_files(metadata, config)
    special_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    generation_config = {key: config[key] for key in special_ids if key in config}
    weights = dict(_hf_tensors(metadata, tensors, config, dtype))
    return {
        "config.json": config,
        "generation_config.json": generation_config,
        "tokenizer.json": json.loads(tokenizer.to_str()),
        "tokenizer_config.json": tokenizer_config,
        "model.safetensors": weights,
    }


def _llama_config(metadata: _Metadata, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json`` of a ``LlamaForCausalLM`` from the ``llama.*`` metadata."""
    hidden = metadata.count("llama.embedding_length")
    heads = metadata.count("llama.attention.head_count")
    kv_heads = metadata.count("llama.attention.head_count_kv", heads)
    head_dim = metadata.count("llama.attention.key_length", hidden // heads)
    rotary = metadata.count("llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise GgufUnsupported(
            f"partial rotary embeddings ({rotary} of {head_dim} dimensions) are not supported",
            path=str(metadata.path),
        )
    if heads % kv_heads:
        raise metadata.corrupted(f"{heads} attention heads do not split into {kv_heads} groups")
    if "rope_freqs.weight" in tensors:
        raise GgufUnsupported(
            "llama3 rope scaling stored as rope frequencies is not supported",
            path=str(metadata.path),
            tensor="rope_freqs.weight",
        )
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise metadata.corrupted("the token embedding is missing", tensor="token_embd.weight")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": metadata.count("llama.feed_forward_length"),
        "num_hidden_layers": metadata.count("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": metadata.count("llama.context_length"),
        "rms_norm_eps": metadata.number("llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": metadata.number("llama.rope.freq_base", 10_000.0),
        "rope_scaling": _rope_scaling(metadata),
        "vocab_size": int(embedding.shape[-1]),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{name}_token_id"] = int(token_id)
    return config


def _rope_scaling(metadata: _Metadata) -> dict[str, Any] | None:
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": metadata.number("llama.rope.scaling.factor", 1.0)}
    raise GgufUnsupported(f"rope scaling {kind!r} is not supported", path=str(metadata.path))


def _hf_name(name: str, layers: int, metadata: _Metadata) -> str:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    match = _LAYER_TENSOR.match(name)
    if match is None or match[2] not in _LAYER_TENSORS:
        raise GgufUnsupported("no Hugging Face llama tensor by that name", **_at(metadata, name))
    if int(match[1]) >= layers:
        raise metadata.corrupted(f"layer {match[1]} of a {layers}-layer model", tensor=name)
    return f"model.layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.{match[3]}"


def _at(metadata: _Metadata, tensor: str) -> dict[str, str]:
    return {"path": str(metadata.path), "tensor": tensor}


def _expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, by its Hugging Face name, with its shape."""
    hidden, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (vocab, hidden)
    per_layer = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_rows, hidden),
        "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden),
        "self_attn.o_proj.weight": (hidden, q_rows),
        "mlp.gate_proj.weight": (ff, hidden),
        "mlp.up_proj.weight": (ff, hidden),
        "mlp.down_proj.weight": (hidden, ff),
    }
    if config["attention_bias"]:
        per_layer |= {
            "self_attn.q_proj.bias": (q_rows,),
            "self_attn.k_proj.bias": (kv_rows,),
            "self_attn.v_proj.bias": (kv_rows,),
        }
    for layer in range(config["num_hidden_layers"]):
        shapes |= {f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()}
    return shapes


def _hf_tensors(
    metadata: _Metadata, tensors: Mapping[str, Any], config: Mapping[str, Any], dtype: GgufDtype
) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Each tensor dequantized, in Hugging Face's layout and name.

    GGUF lists a tensor's dimensions innermost first, so a ``(rows, columns)`` matrix is
    stored as ``[columns, rows]``. llama.cpp reorders the rows of each head of the query and
    key projections (its rotary embedding pairs neighbouring dimensions, Hugging Face's pairs
    the two halves of a head); :func:`_unpermute_rotary` puts them back.
    """
    import numpy as np

    gguf = _import_gguf(metadata.path)
    expected = _expected_shapes(config)
    seen = set()
    for name, tensor in tensors.items():
        hf_name = _hf_name(name, config["num_hidden_layers"], metadata)
        shape = tuple(int(size) for size in reversed(tensor.shape))
        if expected.get(hf_name) != shape:
            want = expected.get(hf_name, "no such tensor in this configuration")
            raise metadata.corrupted(f"shape {shape}, expected {want}", tensor=name)
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise GgufUnsupported(
                f"quantization {tensor.tensor_type.name} cannot be dequantized",
                **_at(metadata, name),
            ) from exc
        except ValueError as exc:
            raise metadata.corrupted(f"data cannot be dequantized: {exc}", tensor=name) from exc
        values = np.ascontiguousarray(values.reshape(shape), dtype=np.dtype(dtype))
        if ".self_attn.q_proj." in hf_name:
            values = _unpermute_rotary(values, config["num_attention_heads"])
        elif ".self_attn.k_proj." in hf_name:
            values = _unpermute_rotary(values, config["num_key_value_heads"])
        seen.add(hf_name)
        yield hf_name, values
    missing = sorted(set(expected) - seen)
    if missing:
        raise metadata.corrupted(f"{len(missing)} tensors are missing: {', '.join(missing[:5])}")


def _unpermute_rotary(weight: np.ndarray[Any, Any], heads: int) -> np.ndarray[Any, Any]:
    """Undo llama.cpp's per-head row order of a query or key projection (weight or bias).

    llama.cpp stores each head's rows as ``(half, 2)`` interleaved pairs where Hugging Face
    keeps ``(2, half)`` (first halves, then second halves); the inverse swaps them back.
    """
    half = weight.shape[0] // heads // 2
    grouped = weight.reshape(heads, half, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape).copy()


def _tokenizer_files(
    metadata: _Metadata, config: Mapping[str, Any]
) -> tuple[Tokenizer, dict[str, Any]]:
    """``tokenizer.json`` (as a ``tokenizers.Tokenizer``) and ``tokenizer_config.json``."""
    from tokenizers import AddedToken
    from tokenizers import processors as post

    model = metadata.require("tokenizer.ggml.model")
    if model not in _TOKENIZER_BUILDERS:
        raise GgufUnsupported(
            f"tokenizer model {model!r} is not supported (supported: 'gpt2', byte-level BPE; "
            "'llama', sentencepiece BPE)",
            path=str(metadata.path),
        )
    tokens: list[str] = metadata.require("tokenizer.ggml.tokens")
    if len(tokens) > config["vocab_size"]:
        raise metadata.corrupted(
            f"{len(tokens)} tokens for an embedding of {config['vocab_size']} rows"
        )
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise metadata.corrupted(f"{len(types)} token types for {len(tokens)} tokens")

    def token(key: str) -> str | None:
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is None:
            return None
        if not 0 <= token_id < len(tokens):
            raise metadata.corrupted(f"{key} token id {token_id} is not in the vocabulary")
        return str(tokens[token_id])

    tokenizer = _TOKENIZER_BUILDERS[model](metadata, tokens, token("unknown"))
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", model == "llama"))
    bos = token("bos")
    if add_bos and bos is not None:
        tokenizer.post_processor = post.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    special = {_CONTROL_TOKEN} | ({_UNKNOWN_TOKEN} if model == "llama" else set())
    tokenizer.add_special_tokens(
        [
            AddedToken(text, special=True, normalized=False)
            for text, kind in zip(tokens, types, strict=True)
            if kind in special
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(text, special=False, normalized=False)
            for text, kind in zip(tokens, types, strict=True)
            if kind == _USER_DEFINED_TOKEN
        ]
    )
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": add_bos,
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    template = metadata.get("tokenizer.chat_template")
    if template is not None:
        tokenizer_config["chat_template"] = template
    return tokenizer, tokenizer_config


def _merges(metadata: _Metadata) -> list[tuple[str, str]] | None:
    """``tokenizer.ggml.merges`` as pairs, or ``None`` when the file has none."""
    pairs = []
    for merge in metadata.get("tokenizer.ggml.merges") or ():
        left, space, right = merge.partition(" ")
        if not space:
            raise metadata.corrupted(f"merge {merge!r} is not two tokens")
        pairs.append((left, right))
    return pairs or None


def _byte_level_tokenizer(
    metadata: _Metadata, tokens: Sequence[str], unknown: str | None
) -> Tokenizer:
    """A GPT-2 style byte-level BPE: the vocabulary and merges as the file spells them, split
    as ``tokenizer.ggml.pre`` says (:data:`PRE_TOKENIZERS`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import processors as post

    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GgufUnsupported(
            f"pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})",
            path=str(metadata.path),
        )
    merges = _merges(metadata)
    if merges is None:
        raise metadata.corrupted("a byte-level BPE without tokenizer.ggml.merges")
    vocab = {text: index for index, text in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    if split is None:
        tokenizer.pre_tokenizer = byte_level
    elif split == _DIGITS_THEN_GPT2:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level]
        )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = post.ByteLevel(trim_offsets=False)
    return tokenizer


def _sentencepiece_tokenizer(
    metadata: _Metadata, tokens: Sequence[str], unknown: str | None
) -> Tokenizer:
    """A sentencepiece BPE (Llama 2, Mistral): ``▁`` for spaces, bytes as ``<0xNN>`` tokens
    for text outside the vocabulary; merges from the file, else from the token scores."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = _merges(metadata)
    if merges is None:
        scores = metadata.require("tokenizer.ggml.scores")
        if len(scores) != len(tokens):
            raise metadata.corrupted(f"{len(scores)} token scores for {len(tokens)} tokens")
        merges = _merges_by_score(tokens, scores)
    vocab = {text: index for index, text in enumerate(tokens)}
    model = models.BPE(
        vocab=vocab, merges=merges, unk_token=unknown, fuse_unk=True, byte_fallback=True
    )
    tokenizer = Tokenizer(model)
    prefix_space = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix_space else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges_by_score(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """The merges a sentencepiece vocabulary implies: every way to cut a token into two
    tokens, the pieces of higher-scored tokens first (then longer left, then right, pieces;
    then the order of the vocabulary), as ``transformers`` derives them."""
    index = {text: position for position, text in enumerate(tokens)}
    score_of = dict(zip(tokens, scores, strict=True))
    candidates: list[tuple[str, str, float]] = []
    for text, score in score_of.items():
        cuts = [
            (text[:cut], text[cut:])
            for cut in range(1, len(text))
            if text[:cut] in index and text[cut:] in index
        ]
        cuts.sort(key=lambda pair: (index[pair[0]], index[pair[1]]))
        candidates.extend((left, right, score) for left, right in cuts)
    candidates.sort(key=lambda merge: (-merge[2], -len(merge[0]), -len(merge[1])))
    return [(left, right) for left, right, _ in candidates]


_TOKENIZER_BUILDERS: Final = {"gpt2": _byte_level_tokenizer, "llama": _sentencepiece_tokenizer}


def _write_directory(destination: Path, files: Mapping[str, Any]) -> None:
    """Write ``files`` (name -> JSON-able dict, or the tensors of a safetensors file) into the
    new directory ``destination``, all or nothing."""
    from safetensors.numpy import save_file

    def tensors(content: Any) -> Callable[[Path], None]:
        return lambda path: save_file(content, str(path), metadata={"format": "pt"})

    contents: dict[str, FileContents] = {
        name: tensors(content)
        if name.endswith(".safetensors")
        else (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode()
        for name, content in files.items()
    }
    try:
        atomic_write_directory(destination, contents)
    except FileExistsError as exc:
        raise CheckpointExists(
            f"{destination} was created while converting", path=str(destination)
        ) from exc

"""Tiny GGUF files written with the ``gguf`` package: a random llama, its vocabulary
(byte-level or sentencepiece BPE trained on the bundled corpus), some tensors quantized."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from crucible_kitchen.adapters.filesystem import bundled_data_dir

if TYPE_CHECKING:
    from pathlib import Path

Q = gguf.GGMLQuantizationType
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
USER_DEFINED = "<think>"
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HIDDEN, HEADS, KV_HEADS, FF, LAYERS = 64, 4, 2, 96, 2
HEAD_DIM = HIDDEN // HEADS
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "  spaces,\ttabs\n\nand newlines; digits 2024 and ünïcödé",
    f"{USER_DEFINED} thinking aloud",
)


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: list[float] | None = None


def byte_level_vocabulary() -> Vocabulary:
    """A byte-level BPE trained on the bundled corpus, special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (bundled_data_dir() / "corpus.txt").read_text().splitlines()
    tokenizer.train_from_iterator(lines, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [*sorted(model["vocab"], key=model["vocab"].get), USER_DEFINED]
    types = [3 if token in SPECIALS else 4 if token == USER_DEFINED else 1 for token in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return Vocabulary(tokens, types, merges)


def sentencepiece_vocabulary() -> Vocabulary:
    """A Llama 2 style vocabulary: specials, 256 byte tokens, pieces scored best-first; the
    merges are left for the converter to derive from the scores."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False)
    lines = (bundled_data_dir() / "corpus.txt").read_text().splitlines()
    tokenizer.train_from_iterator(lines, trainer)
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    merged = [piece for piece in pieces if len(piece) > 1]
    chars = [piece for piece in pieces if len(piece) == 1]
    specials = ["<unk>", "<s>", "</s>"]
    tokens = [*specials, *(f"<0x{byte:02X}>" for byte in range(256)), *merged, *chars]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(merged) + len(chars))
    scores = [0.0] * 259 + [-float(rank) for rank in range(len(merged) + len(chars))]
    return Vocabulary(tokens, types, [], scores)


def hf_weights(vocab: int, *, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a tiny llama, in Hugging Face's names and layout."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.2, shape).astype(np.float32)

    weights = {
        "model.embed_tokens.weight": normal(vocab, HIDDEN),
        "model.norm.weight": 1.0 + normal(HIDDEN),
    }
    if not tied:
        weights["lm_head.weight"] = normal(vocab, HIDDEN)
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        weights |= {
            prefix + "input_layernorm.weight": 1.0 + normal(HIDDEN),
            prefix + "post_attention_layernorm.weight": 1.0 + normal(HIDDEN),
            prefix + "self_attn.q_proj.weight": normal(HEADS * HEAD_DIM, HIDDEN),
            prefix + "self_attn.k_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            prefix + "self_attn.v_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            prefix + "self_attn.o_proj.weight": normal(HIDDEN, HEADS * HEAD_DIM),
            prefix + "mlp.gate_proj.weight": normal(FF, HIDDEN),
            prefix + "mlp.up_proj.weight": normal(FF, HIDDEN),
            prefix + "mlp.down_proj.weight": normal(HIDDEN, FF),
        }
    return weights


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, *module, leaf = hf_name.split(".")
    return f"blk.{layer}.{GGUF_NAMES['.'.join(module)]}.{leaf}"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of a query or key projection's rows (its converter's own)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


@dataclass
class Spec:
    """What :func:`write_gguf` writes; tests change one thing to make a bad file."""

    weights: dict[str, np.ndarray]
    vocabulary: Vocabulary
    quantize: dict[str, Any] = field(default_factory=dict)
    architecture: str = "llama"
    tokenizer_model: str = "gpt2"
    pre: str = "smollm"
    extra_tensors: dict[str, np.ndarray] = field(default_factory=dict)


def write_gguf(path: Path, spec: Spec) -> Path:
    arch = spec.architecture
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(50_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    vocab = spec.vocabulary
    writer.add_tokenizer_model(spec.tokenizer_model)
    writer.add_tokenizer_pre(spec.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
        writer.add_unk_token_id(0)
    else:
        writer.add_add_bos_token(False)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TEMPLATE)
    for hf_name, weight in spec.weights.items():
        if ".q_proj." in hf_name:
            weight = llama_cpp_permute(weight, HEADS)
        elif ".k_proj." in hf_name:
            weight = llama_cpp_permute(weight, KV_HEADS)
        qtype = spec.quantize.get(hf_name, Q.F32)
        data = gguf.quants.quantize(weight, qtype)
        writer.add_tensor(gguf_name(hf_name), data, raw_dtype=qtype)
    for name, data in spec.extra_tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantized(weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Q8_0 for the embedding and attention, Q4_1 for the MLP, F16 for one norm; F32 else."""
    kinds: dict[str, Any] = {"model.embed_tokens.weight": Q.Q8_0, "model.norm.weight": Q.F16}
    for name in weights:
        if ".self_attn." in name:
            kinds[name] = Q.Q8_0
        elif ".mlp." in name:
            kinds[name] = Q.Q4_1
    return kinds

"""GGUF files → Hugging Face model directories, checked against the weights the file was
written from and against transformers' own GGUF loader.

Each test writes a tiny random llama with the ``gguf`` package (some tensors quantized), so
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from crucible_kitchen.adapters.filesystem import bundled_data_dir
from crucible_kitchen.adapters.local_torch import cached_gguf_model, convert_gguf
from crucible_kitchen.cli import main
from crucible_kitchen.errors import CheckpointExists, GgufCorrupted, GgufUnsupported

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

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


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
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


@pytest.fixture(scope="module")
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


@pytest.fixture(params=["tied", "untied"])
def tied(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "tied")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_float32_weights_come_back_exactly_with_hugging_face_names_and_layout(
    tmp_path: Path, vocabulary: Vocabulary, tied: bool
) -> None:
    from safetensors.numpy import load_file

    weights = hf_weights(len(vocabulary.tokens), tied=tied)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))

    out = convert_gguf(source, tmp_path / "model")

    converted = load_file(out / "model.safetensors")
    assert sorted(converted) == sorted(weights)
    for name, weight in weights.items():
        np.testing.assert_array_equal(converted[name], weight, err_msg=name)
    config = read_json(out / "config.json")
    assert config | {"rms_norm_eps": 1e-5} == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50_000.0,
        "rope_scaling": None,
        "vocab_size": len(vocabulary.tokens),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert read_json(out / "generation_config.json") == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.gguf"]


def test_float16_output_rounds_each_weight_once(tmp_path: Path, vocabulary: Vocabulary) -> None:
    from safetensors.numpy import load_file

    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))

    out = convert_gguf(source, tmp_path / "model", dtype="float16")
    converted = load_file(out / "model.safetensors")

    for name, weight in weights.items():
        assert converted[name].dtype == np.float16
        np.testing.assert_array_equal(converted[name], weight.astype(np.float16), err_msg=name)


def transformers_gguf_model(source: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    ).eval()


def test_logits_and_greedy_replies_equal_transformers_own_gguf_load(
    tmp_path: Path, vocabulary: Vocabulary, tied: bool
) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=tied, seed=1)
    spec = Spec(weights, vocabulary, quantize=quantized(weights))
    source = write_gguf(tmp_path / "tiny.gguf", spec)
    out = convert_gguf(source, tmp_path / "model")

    ours = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs = transformers_gguf_model(source)
    ids = torch.tensor([[1, 40, 41, 42, 100, 200, 300, 2, 7, 9, 11, 13]])
    with torch.no_grad():
        ours_logits, their_logits = ours(ids).logits, theirs(ids).logits
        ours_reply = ours.generate(ids, max_new_tokens=8, do_sample=False)
        their_reply = theirs.generate(ids, max_new_tokens=8, do_sample=False)

    torch.testing.assert_close(ours_logits, their_logits, rtol=0.0, atol=1e-5)
    assert ours_reply.tolist() == their_reply.tolist()
    # the quantized weights are not the originals: the comparison above is not a trivial one
    original = transformers.LlamaForCausalLM(ours.config).eval()
    original.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    with torch.no_grad():
        assert not torch.allclose(original(ids).logits, ours_logits, atol=1e-3)


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe"])
def test_tokenizer_encodes_as_transformers_gguf_tokenizer(
    tmp_path: Path, vocabulary: Vocabulary, pre: str
) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary, pre=pre))
    out = convert_gguf(source, tmp_path / "model")

    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=source.name)
    for text in TEXTS:
        ids = ours.encode(text).ids
        # llama.cpp splits a smollm file's digits one by one, transformers as GPT-2 does
        if pre != "smollm" or not any(char.isdigit() for char in text):
            assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.encode("<|im_end|>").ids == [2]
    assert len(ours.encode(USER_DEFINED).ids) == 1
    if pre == "smollm":
        assert ours.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]


def test_a_sentencepiece_tokenizer_encodes_as_transformers_gguf_tokenizer(
    tmp_path: Path, sentencepiece_vocabulary: Vocabulary
) -> None:
    vocabulary = sentencepiece_vocabulary
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    spec = Spec(weights, vocabulary, tokenizer_model="llama", pre="default")
    source = write_gguf(tmp_path / "spm.gguf", spec)
    out = convert_gguf(source, tmp_path / "model")

    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=source.name)
    for text in (*TEXTS, "Byte fallback: 😀 ß"):
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.encode(text).ids == [1, *ids]  # llama.cpp's default: BOS first
        if not text.startswith(" "):  # as transformers', a leading space is not prefixed again
            assert ours.decode(ids) == text
    assert ours.encode("😀", add_special_tokens=False).tokens[1:] == [
        "<0xF0>",
        "<0x9F>",
        "<0x98>",
        "<0x80>",
    ]


def test_tokenizer_config_carries_special_tokens_and_chat_template(
    tmp_path: Path, vocabulary: Vocabulary
) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))
    out = convert_gguf(source, tmp_path / "model")

    config = read_json(out / "tokenizer_config.json")
    assert {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "chat_template")} == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "chat_template": TEMPLATE,
    }
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_gguf_file_is_converted_once_into_the_cache(
    tmp_path: Path, vocabulary: Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_KITCHEN_CACHE", str(tmp_path / "cache"))
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))

    first = cached_gguf_model(source)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = cached_gguf_model(source)

    assert second == first
    assert first.parent == tmp_path / "cache" / "gguf"
    assert first.name.startswith("tiny-")
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp
    write_gguf(source, Spec(hf_weights(len(vocabulary.tokens), tied=True, seed=5), vocabulary))
    assert cached_gguf_model(source) != first  # a changed file is converted again


def assert_nothing_written(tmp_path: Path, keep: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == keep


def test_a_file_that_is_not_gguf_is_corrupted(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(b"not a gguf file at all" * 10)

    with pytest.raises(GgufCorrupted, match="not a readable GGUF file") as caught:
        convert_gguf(source, tmp_path / "model")

    assert caught.value.path == str(source)
    assert_nothing_written(tmp_path, {"model.gguf"})


def test_a_truncated_file_is_corrupted(tmp_path: Path, vocabulary: Vocabulary) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))
    data = source.read_bytes()
    source.write_bytes(data[: len(data) - 1000])

    with pytest.raises(GgufCorrupted):
        convert_gguf(source, tmp_path / "model")
    assert_nothing_written(tmp_path, {"tiny.gguf"})


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(GgufCorrupted, match="cannot read it"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "model")


@pytest.mark.parametrize(
    ("change", "error", "message", "tensor"),
    [
        ({"architecture": "falcon"}, GgufUnsupported, "architecture 'falcon'", None),
        ({"tokenizer_model": "bert"}, GgufUnsupported, "tokenizer model 'bert'", None),
        ({"pre": "mystery"}, GgufUnsupported, "pre-tokenizer 'mystery'", None),
        (
            {"extra_tensors": {"rope_freqs.weight": np.ones(HEAD_DIM // 2, np.float32)}},
            GgufUnsupported,
            "llama3 rope scaling",
            "rope_freqs.weight",
        ),
        (
            {"extra_tensors": {"blk.0.attn_gate.weight": np.ones((8, HIDDEN), np.float32)}},
            GgufUnsupported,
            "no Hugging Face llama tensor",
            "blk.0.attn_gate.weight",
        ),
        (
            {"extra_tensors": {"blk.7.attn_norm.weight": np.ones(HIDDEN, np.float32)}},
            GgufCorrupted,
            "layer 7 of a 2-layer model",
            "blk.7.attn_norm.weight",
        ),
    ],
)
def test_what_the_converter_cannot_convert_is_a_typed_error(
    tmp_path: Path,
    vocabulary: Vocabulary,
    change: dict[str, Any],
    error: type[Exception],
    message: str,
    tensor: str | None,
) -> None:
    spec = Spec(hf_weights(len(vocabulary.tokens), tied=True), vocabulary)
    for key, value in change.items():
        setattr(spec, key, value)
    source = write_gguf(tmp_path / "bad.gguf", spec)

    with pytest.raises(error, match=message) as caught:
        convert_gguf(source, tmp_path / "model")

    assert caught.value.path == str(source)  # type: ignore[attr-defined]
    assert caught.value.tensor == tensor  # type: ignore[attr-defined]
    assert_nothing_written(tmp_path, {"bad.gguf"})


def test_a_tensor_in_a_type_that_cannot_be_dequantized_is_named(
    tmp_path: Path, vocabulary: Vocabulary
) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    norm = weights.pop("model.layers.1.input_layernorm.weight")
    as_integers = {"blk.1.attn_norm.weight": norm.astype(np.int32)}
    spec = Spec(weights, vocabulary, extra_tensors=as_integers)
    source = write_gguf(tmp_path / "bad.gguf", spec)

    with pytest.raises(GgufUnsupported, match="quantization I32") as caught:
        convert_gguf(source, tmp_path / "model")

    assert caught.value.tensor == "blk.1.attn_norm.weight"
    assert_nothing_written(tmp_path, {"bad.gguf"})


def test_a_missing_or_misshapen_tensor_is_corrupted(tmp_path: Path, vocabulary: Vocabulary) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    del weights["model.layers.1.mlp.up_proj.weight"]
    source = write_gguf(tmp_path / "missing.gguf", Spec(weights, vocabulary))
    with pytest.raises(GgufCorrupted, match=r"1 tensors are missing: model\.layers\.1\.mlp\.up_"):
        convert_gguf(source, tmp_path / "model")

    weights = hf_weights(len(vocabulary.tokens), tied=True)
    weights["model.layers.0.mlp.down_proj.weight"] = np.zeros((HIDDEN, FF + 32), np.float32)
    source = write_gguf(tmp_path / "misshapen.gguf", Spec(weights, vocabulary))
    with pytest.raises(GgufCorrupted, match=r"shape \(64, 128\), expected \(64, 96\)") as caught:
        convert_gguf(source, tmp_path / "model")
    assert caught.value.tensor == "blk.0.ffn_down.weight"
    assert_nothing_written(tmp_path, {"missing.gguf", "misshapen.gguf"})


def test_an_existing_destination_is_left_alone(tmp_path: Path, vocabulary: Vocabulary) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")

    with pytest.raises(CheckpointExists):
        convert_gguf(source, tmp_path / "model")

    assert [p.name for p in (tmp_path / "model").iterdir()] == ["keep.txt"]


def test_kitchen_convert_writes_the_directory_or_names_the_problem(
    tmp_path: Path, vocabulary: Vocabulary, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = hf_weights(len(vocabulary.tokens), tied=True)
    source = write_gguf(tmp_path / "tiny.gguf", Spec(weights, vocabulary))

    assert main(["convert", str(source), str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "model")
    assert sorted(os.listdir(tmp_path / "model")) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]

    (tmp_path / "junk.gguf").write_bytes(b"junk")
    assert main(["convert", str(tmp_path / "junk.gguf"), str(tmp_path / "other")]) == 1
    assert "junk.gguf: not a readable GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

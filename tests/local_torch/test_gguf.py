"""GGUF files → Hugging Face model directories, checked against the weights the file was
written from and against transformers' own GGUF loader.

Each test writes a tiny random llama with the ``gguf`` package (some tensors quantized), so
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from _gguf_files import (
    FF,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    TEMPLATE,
    TEXTS,
    USER_DEFINED,
    Spec,
    Vocabulary,
    byte_level_vocabulary,
    hf_weights,
    quantized,
    sentencepiece_vocabulary,
    write_gguf,
)

from crucible_kitchen.adapters.local_torch import cached_gguf_model, convert_gguf
from crucible_kitchen.cli import main
from crucible_kitchen.errors import CheckpointExists, GgufCorrupted, GgufUnsupported

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module", name="vocabulary")
def _vocabulary() -> Vocabulary:
    return byte_level_vocabulary()


@pytest.fixture(scope="module", name="sentencepiece_vocabulary")
def _sentencepiece_vocabulary() -> Vocabulary:
    return sentencepiece_vocabulary()


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

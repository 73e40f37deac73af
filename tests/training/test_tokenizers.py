"""Byte and BPE tokenizers: round trips, special tokens, determinism, save/load."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.training import (
    SPECIAL_TOKENS,
    BpeTokenizer,
    ByteTokenizer,
    ChatTokenizer,
    default_bpe_tokenizer,
    train_bpe_tokenizer,
)
from crucible_kitchen.training._corpus import bundled_corpus

if TYPE_CHECKING:
    from pathlib import Path

# Text mixing plain characters with the special-token strings, so both paths are exercised.
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL_TOKENS)), max_size=6).map(
    "".join
)


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return default_bpe_tokenizer()


# --- byte tokenizer -----------------------------------------------------------------------------


def test_byte_tokenizer_ids_are_bytes_then_special_tokens() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("Aé") == [65, 0xC3, 0xA9]
    assert tokenizer.vocab_size == 256 + len(SPECIAL_TOKENS)
    assert [tokenizer.special_token_id(t) for t in SPECIAL_TOKENS] == list(range(256, 265))
    assert tokenizer.special_tokens == SPECIAL_TOKENS
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (257, 258)
    assert tokenizer.special_token_id("<|nope|>") is None
    assert tokenizer.encode("a<|im_start|>b<|im_end|>") == [97, 263, 98, 264]
    assert tokenizer.encode("") == []


@given(texts)
def test_byte_tokenizer_round_trips(text: str) -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_byte_tokenizer_prefers_the_longest_special_token() -> None:
    tokenizer = ByteTokenizer(special_tokens=("<a>", "<a><b>"), bos_token=None, eos_token=None)
    assert tokenizer.encode("<a><b><a>") == [257, 256]
    assert tokenizer.decode([257, 256]) == "<a><b><a>"
    assert tokenizer.bos_token_id is None


def test_byte_tokenizer_decode_replaces_broken_utf8_and_rejects_bad_ids() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.decode([0xC3]) == "\ufffd"
    with pytest.raises(TrainingInputError, match="token id 265 at position 1"):
        tokenizer.decode([65, 265])
    with pytest.raises(TrainingInputError, match="token id -1"):
        tokenizer.decode([-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"special_tokens": ("<x>", "<x>")}, "unique"),
        ({"special_tokens": ("",)}, "non-empty"),
        ({"bos_token": "<|start|>"}, "bos_token"),
    ],
)
def test_byte_tokenizer_rejects_bad_special_tokens(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TrainingInputError, match=match):
        ByteTokenizer(**kwargs)  # type: ignore[arg-type]


def test_tokenizers_satisfy_the_renderer_protocol(bpe: BpeTokenizer) -> None:
    assert isinstance(ByteTokenizer(), ChatTokenizer)
    assert isinstance(bpe, ChatTokenizer)
    assert not isinstance(object(), ChatTokenizer)


# --- BPE tokenizer ------------------------------------------------------------------------------


def test_bpe_layout_special_tokens_then_bytes(bpe: BpeTokenizer) -> None:
    assert bpe.special_tokens == SPECIAL_TOKENS
    assert [bpe.special_token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (bpe.bos_token_id, bpe.eos_token_id) == (1, 2)
    assert bpe.vocab_size == 1024
    assert bpe.encode("<|im_start|>user\nHi<|im_end|>")[0] == bpe.special_token_id("<|im_start|>")


@settings(max_examples=60)
@given(texts)
def test_bpe_round_trips_any_text(text: str) -> None:
    tokenizer = default_bpe_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_bpe_compresses_the_corpus(bpe: BpeTokenizer) -> None:
    sample = bundled_corpus()[:5000]
    assert len(bpe.encode(sample)) < len(sample.encode("utf-8")) / 2.5
    assert len(bpe.encode(" What is 3 + 4?")) <= 8


def test_bpe_training_is_deterministic(bpe: BpeTokenizer) -> None:
    assert train_bpe_tokenizer().to_json() == bpe.to_json()
    small = ["the cat sat on the mat", "the dog sat on the log"] * 20
    first = train_bpe_tokenizer(small, vocab_size=300)
    second = train_bpe_tokenizer(small, vocab_size=300)
    assert first.to_json() == second.to_json()
    assert first.vocab_size <= 300


def test_bpe_training_is_deterministic_across_processes(bpe: BpeTokenizer) -> None:
    # tokenizers hashes with per-process random seeds; the vocabulary must not depend on them
    script = (
        "import hashlib\n"
        "from crucible_kitchen.training import train_bpe_tokenizer\n"
        "print(hashlib.sha256(train_bpe_tokenizer().to_json().encode()).hexdigest())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == hashlib.sha256(bpe.to_json().encode()).hexdigest()


def test_bpe_save_and_load(bpe: BpeTokenizer, tmp_path: Path) -> None:
    path = bpe.save(tmp_path / "nested" / "tokenizer.json")
    assert path.read_text(encoding="utf-8") == bpe.to_json()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary left
    loaded = BpeTokenizer.load(path)
    assert loaded.to_json() == bpe.to_json()
    text = "User: Spell 'owl' backwards.<|eos|>"
    assert loaded.encode(text) == bpe.encode(text)
    assert (loaded.bos_token_id, loaded.eos_token_id) == (1, 2)


def test_bpe_load_errors(bpe: BpeTokenizer, tmp_path: Path) -> None:
    path = bpe.save(tmp_path / "tokenizer.json")
    with pytest.raises(TrainingInputError, match="eos_token '<\\|end\\|>'"):
        BpeTokenizer.load(path, eos_token="<|end|>")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(TrainingInputError, match=r"not a valid tokenizer\.json"):
        BpeTokenizer.load(broken)
    with pytest.raises(TrainingInputError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 264}, "at least 265"),
        ({"special_tokens": ("<x>", "<x>")}, "unique"),
        ({"eos_token": "<|missing|>"}, "eos_token"),
    ],
)
def test_bpe_training_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TrainingInputError, match=match):
        train_bpe_tokenizer(["some text"], **kwargs)  # type: ignore[arg-type]


def test_default_bpe_tokenizer_is_cached() -> None:
    assert default_bpe_tokenizer() is default_bpe_tokenizer()


def test_importing_training_pulls_neither_torch_nor_tokenizers() -> None:
    script = (
        "import sys\n"
        "import crucible_kitchen.training\n"
        "print(sorted(m for m in ('torch', 'tokenizers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"

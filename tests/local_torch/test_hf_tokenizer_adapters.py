"""A Hugging Face model's own tokenizer and chat template behind the local torch adapters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.local_torch import (
    LocalRenderer,
    LocalTokenizer,
    LocalTorchTrainingClient,
    local_torch_adapters,
)
from crucible_kitchen.adapters.local_torch._tokenizer import default_tokenizer_for
from crucible_kitchen.errors import ConfigError, TokenizerFileError
from crucible_kitchen.kitchen import Adapters
from crucible_kitchen.ports import Message
from crucible_kitchen.testing import check_renderer, check_tokenizer
from crucible_kitchen.training import train_bpe_tokenizer

if TYPE_CHECKING:
    from pathlib import Path

# HuggingFaceH4/zephyr-7b-beta's chat template: a family without a renderer of its own.
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + "
    "message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ("<s>", "</s>", "<|user|>", "<|system|>", "<|assistant|>", "<|im_start|>", "<|im_end|>")


def write_model_dir(path: Path, chat_template: str, *, bos: str, eos: str) -> Path:
    """A model directory: its tokenizer files, and a config.json that marks it as one."""
    texts = ["What is 2 + 2? It is 4.", "You are a helpful assistant.", "user assistant"] * 3
    tokenizer = train_bpe_tokenizer(
        texts, vocab_size=320, special_tokens=SPECIAL, bos_token=bos, eos_token=eos
    )
    path.mkdir()
    tokenizer.save(path / "tokenizer.json")
    config = {"bos_token": bos, "eos_token": eos, "chat_template": chat_template}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    return path


@pytest.fixture
def zephyr(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "zephyr", ZEPHYR, bos="<s>", eos="</s>")


@pytest.fixture
def chatml(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "chatml", CHATML, bos="<s>", eos="<|im_end|>")


def test_a_model_directory_tokenizer_passes_the_conformance_checks(
    zephyr: Path, chatml: Path, tmp_path: Path
) -> None:
    for directory, family in ((zephyr, "jinja"), (chatml, "chatml")):
        tokenizer = LocalTokenizer.named(str(directory))
        assert tokenizer.default_renderer == family
        check_tokenizer(lambda tokenizer=tokenizer: tokenizer)
        for name in {family, "jinja"}:
            check_renderer(lambda tokenizer=tokenizer, name=name: LocalRenderer(tokenizer, name))
        text = "<|user|>\nWhat is 2 + 2?</s>"
        assert tokenizer.encode(text) == [
            tokenizer.bos_token_id,
            *tokenizer.encode(text, add_special_tokens=False),
        ]
        assert (
            tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == "\nWhat is 2 + 2?"
        )
        saved = LocalTokenizer.load(tokenizer.save(tmp_path / f"{family}.json"))
        assert saved.tokenizer_id == tokenizer.tokenizer_id
        assert saved.chat_template == tokenizer.chat_template
        assert saved.encode(text) == tokenizer.encode(text)
    # a tokenizer.json path reads the tokenizer_config.json beside it
    by_file = LocalTokenizer.hf(zephyr / "tokenizer.json")
    assert by_file.tokenizer_id == LocalTokenizer.hf(zephyr).tokenizer_id
    assert (
        LocalTokenizer.byte().default_renderer == LocalTokenizer.bpe().default_renderer == "chatml"
    )


def test_the_jinja_renderer_port_renders_the_models_template(zephyr: Path) -> None:
    renderer = LocalRenderer(LocalTokenizer.hf(zephyr), "jinja")
    conversation = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 2 + 2?"),
        Message(role="assistant", content="It is 4."),
    ]
    tokens, weights = renderer.build_supervised_example(conversation)
    tokenizer = renderer.renderer.tokenizer
    assert tokenizer.decode(tokens.to_ints()) == (
        "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\nIt is 4.</s>"
    )
    trained = [t for t, w in zip(tokens.to_ints(), weights.data, strict=True) if w]
    assert tokenizer.decode(trained) == "It is 4.</s>"
    prompt = renderer.build_generation_prompt(conversation[:2]).to_ints()
    assert tokenizer.decode(prompt).endswith("</s>\n<|assistant|>\n")
    assert renderer.get_stop_sequences() == (tokenizer.eos_token_id,)


def test_the_bundle_takes_a_model_directory_tokenizer_and_its_renderer(
    zephyr: Path, chatml: Path
) -> None:
    adapters = local_torch_adapters(model="tiny", tokenizer=str(zephyr))
    tokenizer, renderer = adapters["tokenizer"], adapters["renderer"]
    assert isinstance(tokenizer, LocalTokenizer)
    assert isinstance(renderer, LocalRenderer)
    assert (renderer.name, tokenizer.chat_template) == ("jinja", ZEPHYR)
    training = adapters["training_client"]
    assert isinstance(training, LocalTorchTrainingClient)
    assert training.config.vocab_size == tokenizer.vocab_size
    assert local_torch_adapters(model="tiny", tokenizer=chatml)["renderer"].name == "chatml"
    explicit = Adapters.local_torch(model="tiny", tokenizer=str(chatml), renderer="jinja")
    assert explicit["renderer"].name == "jinja"
    # presets keep the byte tokenizer and ChatML
    default = local_torch_adapters(model="tiny")
    assert default["tokenizer"].tokenizer_id == LocalTokenizer.byte().tokenizer_id
    assert default["renderer"].name == "chatml"


def test_a_model_directory_is_its_own_default_tokenizer(zephyr: Path, tmp_path: Path) -> None:
    assert default_tokenizer_for(zephyr) == str(zephyr)
    assert default_tokenizer_for(str(zephyr)) == str(zephyr)
    assert default_tokenizer_for("tiny") == "byte"
    assert default_tokenizer_for(tmp_path) == "byte"  # a directory without config.json


def test_bad_tokenizer_paths_are_config_errors(zephyr: Path, tmp_path: Path) -> None:
    (zephyr / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerFileError) as caught:
        local_torch_adapters(model="tiny", tokenizer=str(zephyr))
    assert caught.value.path == str(zephyr / "tokenizer.json")
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(TokenizerFileError, match=r"tokenizer_config\.json: no such file"):
        LocalTokenizer.named(tmp_path)
    with pytest.raises(ConfigError, match="unknown name 'nowhere'"):
        LocalTokenizer.named("nowhere")

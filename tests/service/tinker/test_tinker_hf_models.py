"""Hugging Face model directories served as Tinker base models, driven by the official SDK:
LoRA training over the pretrained weights, sampling that stops at the model's own EOS, and
the SDK's ``get_tokenizer()`` loading the directory's tokenizer offline."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio.to_thread
import pytest
import tinker
from _tinker_support import API_KEY, close, serving
from test_serve_command import kitchen_serve
from tinker import types

from crucible_kitchen.adapters.local_torch import LocalTokenizer
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service.tinker import TinkerSettings
from crucible_kitchen.training import train_bpe_tokenizer

if TYPE_CHECKING:
    from pathlib import Path

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.anyio

CORPUS = ["What is 2 + 2? It is 4.", "The kitchen serves tinker.", "user assistant"] * 3
QUESTION = "What is 2 + 2?"
ANSWER = " It is 4."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a BPE tokenizer of its own (``</s>`` its EOS), as
    ``save_pretrained`` and a tokenizer's files lay it out. (Not a Qwen2: transformers
    gives a ``qwen2`` directory Qwen2's own pre-tokenizer, whatever its tokenizer.json says.)"""
    directory = tmp_path_factory.mktemp("hf") / "llama-tiny"
    tokenizer = train_bpe_tokenizer(
        CORPUS, vocab_size=320, special_tokens=("<s>", "</s>"), bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,  # logits wide enough for the LoRA to fit the answer
        eos_token_id=1,
        bos_token_id=0,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def _datum(ours: LocalTokenizer) -> types.Datum:
    """The question, then the answer and EOS as targets."""
    prompt = ours.encode(QUESTION, add_special_tokens=False)
    answer = [*ours.encode(ANSWER, add_special_tokens=False), ours.eos_token_id]
    tokens = prompt + answer
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


async def test_a_model_directory_trains_samples_and_gives_its_tokenizer_offline(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = str(model_dir)  # named by its directory: every get_tokenizer loads it
    ours = LocalTokenizer.hf(model_dir)
    datum = _datum(ours)
    async with serving(tmp_path, models={name: model_dir}, base_models=("tiny",)) as served:
        rest = await served.rest()
        capabilities = await rest.get_server_capabilities()
        client = await served.connect()
        try:
            trainer = await client.create_lora_training_client(base_model=name, rank=8)
            losses = []
            for _ in range(20):
                result = await trainer.forward_backward([datum], "cross_entropy")
                await trainer.optim_step(types.AdamParams(learning_rate=1e-2))
                losses.append(result.metrics["loss:sum"])
            sampler = await trainer.save_weights_and_get_sampling_client()
            prompt = types.ModelInput.from_ints(ours.encode(QUESTION, add_special_tokens=False))
            params = types.SamplingParams(max_tokens=16, temperature=1e-4, seed=0)
            sampled = await sampler.sample(prompt, 1, params)
            base = await client.create_sampling_client(base_model=name)
            base_sampled = await base.sample(prompt, 1, params)
            theirs = await anyio.to_thread.run_sync(trainer.get_tokenizer)
            sampler_tokenizer = await anyio.to_thread.run_sync(base.get_tokenizer)
        finally:
            await close(client)
    served_names = [model.model_name for model in capabilities.supported_models]
    assert served_names == ["tiny", name]
    assert losses[-1] < 0.1 * losses[0], losses
    sequence = sampled.sequences[0]
    assert sequence.stop_reason == "stop"  # the model's own EOS, learnt above
    assert sequence.tokens[-1] == ours.eos_token_id
    assert ours.decode(sequence.tokens[:-1]) == ANSWER
    assert all(0 <= t < 320 for t in base_sampled.sequences[0].tokens)
    for tokenizer in (theirs, sampler_tokenizer):
        assert tokenizer.eos_token_id == ours.eos_token_id
        assert tokenizer.encode(QUESTION, add_special_tokens=False) == ours.encode(
            QUESTION, add_special_tokens=False
        )


async def test_a_named_model_directory_gives_its_path_as_tokenizer_id(
    model_dir: Path, tmp_path: Path
) -> None:
    async with serving(tmp_path, models={"llama-tiny": model_dir}) as served:
        client = await served.connect()
        try:
            trainer = await client.create_lora_training_client(base_model="llama-tiny", rank=4)
            info = trainer.get_info()
            with pytest.raises(tinker.RequestFailedError, match="'nope' is not served here"):
                await client.create_lora_training_client(base_model="nope", rank=4)
        finally:
            await close(client)
    assert info.model_data.model_name == "llama-tiny"
    assert info.model_data.tokenizer_id == str(model_dir)  # tmp_path is absolute


def test_model_directories_are_checked_with_every_problem_at_once(
    model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        TinkerSettings(models={"tiny": model_dir, "missing": tmp_path / "absent"})
    message = str(caught.value)
    assert "'tiny' must be a new, non-empty base_model name" in message
    assert "models.missing:" in message
    assert "no config.json" in message


def test_kitchen_serve_tinker_serves_model_directories_by_name_or_by_path(
    model_dir: Path, tmp_path: Path
) -> None:
    models = ("--model", f"llama-tiny={model_dir}", "--model", str(model_dir))
    env = {"TINKER_API_KEY": API_KEY}
    with kitchen_serve("--tinker", "--root", str(tmp_path), *models, env=env) as port:
        rest = tinker.RestClient(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY)
        capabilities = rest.get_server_capabilities().result()
    served = [model.model_name for model in capabilities.supported_models]
    assert served[-2:] == ["llama-tiny", str(model_dir)]

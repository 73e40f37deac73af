"""Hugging Face model directories on the local torch backend, checked against transformers and
peft: equal logits and greedy generations for every family, LoRA merged or as a PEFT adapter,
export, and a typed error for each way a directory can be wrong."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest
import safetensors.torch
import torch

from crucible_kitchen.adapters.local_torch import (
    LocalTokenizer,
    LocalTorchSamplingClient,
    LocalTorchTrainingClient,
    LoraConfig,
    export_hf,
    export_peft,
    local_torch_adapters,
)
from crucible_kitchen.adapters.local_torch._checkpoint import checkpoint_model
from crucible_kitchen.adapters.local_torch._config import ModelConfig, RopeScaling, preset
from crucible_kitchen.adapters.local_torch._hf_checkpoint import (
    _file_digest,
    load_hf_weights,
    read_hf_model,
)
from crucible_kitchen.adapters.local_torch._lora import lora_layers
from crucible_kitchen.adapters.local_torch._model import Transformer, build_model
from crucible_kitchen.errors import CheckpointExists, CheckpointMismatch, PretrainedModelError
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, SamplingParams, TensorData
from crucible_kitchen.recipes import DistillBasicConfig, SlBasicConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

VOCAB = 300
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA in every family
    "max_position_embeddings": 128,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small, so that the tiny head's frequencies fall in all three bands
    "original_max_position_embeddings": 32,
}
FAMILIES: dict[str, Callable[[], Any]] = {
    "llama2": lambda: transformers.LlamaConfig(**{**COMMON, "num_key_value_heads": 4}),
    "llama3": lambda: transformers.LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=64),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=32),
    "smollm2": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=True),
}
TOKENS = torch.tensor(
    [[5, 17, 250, 3, 99, 42, 7, 7, 180, 299, 0, 64], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
)
ADAM = AdamParams(learning_rate=5e-2)


def _save_family(family: str, directory: Path, *, shard: bool = False) -> Path:
    """A tiny random model of ``family`` saved with ``save_pretrained``."""
    torch.manual_seed(len(family))
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family]())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)  # far from the init, so every weight matters
    model.save_pretrained(directory, max_shard_size="100KB" if shard else "5GB")
    model.generation_config.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """One saved directory per family, made on first use."""
    root = tmp_path_factory.mktemp("hf")
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = _save_family(family, root / family)
        return made[family]

    return get


def _hf_logits(directory: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(tokens).logits
    return logits


def _our_logits(model: Transformer, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model.eval()(tokens)
    return logits


def _hf_greedy(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    model.generation_config.eos_token_id = None  # our request never stops early either
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=max_tokens, min_new_tokens=0
        )
    return [int(t) for t in out[0, len(prompt) :]]


async def _our_greedy(sampling_client: Any, prompt: list[int], max_tokens: int) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=())
    future = await sampling_client.sample(ModelInput.from_ints(prompt), 1, params)
    return list((await future.result()).sequences[0].tokens)


def _datum(tokens: list[int]) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
            "weights": TensorData(dtype="float32", data=(1.0,) * (len(tokens) - 1)),
        },
    )


async def _train(client: LocalTorchTrainingClient, steps: int) -> None:
    data = [_datum([int(t) for t in row]) for row in TOKENS]
    for step in range(steps):
        fb = await client.forward_backward(data, "cross_entropy", request_id=f"fb{step}")
        opt = await client.optim_step(ADAM, request_id=f"opt{step}")
        await fb.result()
        await opt.result()


# ------------------------------------------------------------------------------------------
# Equality with transformers


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(family: str, sharded: bool, tmp_path: Path) -> None:
    directory = _save_family(family, tmp_path / family, shard=sharded)
    assert (directory / "model.safetensors.index.json").is_file() == sharded
    hf = read_hf_model(directory)
    ours = build_model(hf.config, seed=0, weights=load_hf_weights(hf))
    expected = _hf_logits(directory)
    assert (_our_logits(ours) - expected).abs().max().item() < 1e-5
    assert expected.abs().max().item() > 0.1  # the comparison is not between zeros


def test_each_family_uses_its_features(saved: Callable[[str], Path]) -> None:
    configs = {family: read_hf_model(saved(family)).config for family in FAMILIES}
    assert configs["llama2"].kv_heads == configs["llama2"].n_heads
    assert configs["llama3"].rope_scaling is not None
    assert configs["llama3"].kv_heads == 2
    assert configs["mistral"].max_seq_len == 64  # capped at the sliding window
    assert configs["qwen2"].qkv_bias
    assert not configs["qwen2"].qk_norm
    assert configs["qwen3"].qk_norm
    assert configs["qwen3"].head_dim == 32
    assert configs["smollm2"].tie_embeddings
    assert not configs["llama3"].tie_embeddings
    assert read_hf_model(saved("llama2")).eos_token_ids == (2,)


@pytest.mark.anyio
@pytest.mark.parametrize("family", FAMILIES)
async def test_greedy_generations_equal_transformers(
    family: str, saved: Callable[[str], Path]
) -> None:
    directory = saved(family)
    sampler = local_torch_adapters(model=directory, tokenizer="byte")["sampling_client"]
    prompt = [5, 17, 250, 3, 99]
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    expected = _hf_greedy(reference, prompt, 16)
    assert await _our_greedy(sampler, prompt, 16) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("family", FAMILIES)
# peft reads an attribute that transformers 5 deprecates
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
async def test_lora_merged_and_peft_exports_equal_ours(
    family: str, saved: Callable[[str], Path], tmp_path: Path
) -> None:
    source = saved(family)
    client = LocalTorchTrainingClient(
        model=str(source), lora=LoraConfig(rank=4, alpha=8.0), checkpoint_dir=tmp_path / "ckpt"
    )
    await _train(client, 3)
    path = (await (await client.save_state("final", request_id="save")).result()).path
    ours = checkpoint_model(path)
    assert all(layer.lora_b.abs().max() > 0 for layer in lora_layers(ours))
    base_logits = _hf_logits(source)
    trained = _our_logits(ours)
    assert (trained - base_logits).abs().max().item() > 1e-3  # the adapters changed something

    merged_dir = export_hf(path, tmp_path / "merged", source=source)
    assert (_hf_logits(merged_dir) - trained).abs().max().item() < 1e-5
    assert (merged_dir / "generation_config.json").is_file()

    adapter_dir = export_peft(path, tmp_path / "adapter", source=source)
    base = transformers.AutoModelForCausalLM.from_pretrained(source)
    with_adapter = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        peft_logits = with_adapter(TOKENS).logits
    assert (peft_logits - trained).abs().max().item() < 1e-5

    sampler_path = (
        await (await client.save_weights_for_sampler("final", request_id="sampler")).result()
    ).path
    sampler = await client.create_sampling_client(sampler_path)
    prompt = [9, 8, 7]
    merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    expected = _hf_greedy(merged, prompt, 12)
    assert await _our_greedy(sampler, prompt, 12) == expected
    # The checkpoint alone (as a distillation teacher reads it) rebuilds the same model.
    teacher = LocalTorchSamplingClient.from_checkpoint(path, LocalTokenizer.named("byte"))
    assert await _our_greedy(teacher, prompt, 12) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False, "n_kv_heads": 2}, {"qk_norm": True, "d_head": 32}],
    ids=["tiny", "untied-gqa", "qk-norm"],
)
async def test_a_model_built_from_a_config_exports_to_transformers(
    overrides: dict[str, Any], tmp_path: Path
) -> None:
    config = preset("tiny", vocab_size=VOCAB, **overrides)
    client = LocalTorchTrainingClient(model=config, checkpoint_dir=tmp_path / "ckpt")
    await _train(client, 2)
    path = (await (await client.save_state("final", request_id="save")).result()).path
    exported = export_hf(path, tmp_path / "hf")
    tokens = TOKENS.clamp(max=config.vocab_size - 1)
    assert (
        _hf_logits(exported, tokens) - _our_logits(checkpoint_model(path), tokens)
    ).abs().max().item() < 1e-5


# ------------------------------------------------------------------------------------------
# Identity, checkpoints and resume


def test_preset_identities_are_unchanged() -> None:
    # The fingerprints the presets had before the pretrained-model fields existed.
    assert preset("tiny").fingerprint() == (
        "6bc830f66d8625ece2f18dcc1f6fcba820cb3d1def32001c5c6e84b1eaed87dc"
    )
    assert preset("base").fingerprint() == (
        "3601e69974329139aff9af978a149e25464c8492a7c2fe21651767dc580f11ec"
    )


@pytest.mark.anyio
async def test_a_checkpoint_of_one_pretrained_model_does_not_load_into_another(
    saved: Callable[[str], Path], tmp_path: Path
) -> None:
    source = saved("llama3")
    other = tmp_path / "other"
    shutil.copytree(source, other)
    weights = safetensors.torch.load_file(other / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1.0
    safetensors.torch.save_file(weights, other / "model.safetensors", metadata={"format": "pt"})

    first = LocalTorchTrainingClient(model=source, checkpoint_dir=tmp_path / "a")
    await _train(first, 1)
    path = (await (await first.save_state("s", request_id="save")).result()).path
    same = LocalTorchTrainingClient(model=source, checkpoint_dir=tmp_path / "b")
    await (await same.load_state(path, request_id="load")).result()
    assert torch.equal(
        (await same.state_tensors())["model/norm.weight"],
        (await first.state_tensors())["model/norm.weight"],
    )
    different = LocalTorchTrainingClient(model=other, checkpoint_dir=tmp_path / "c")
    with pytest.raises(CheckpointMismatch, match="pretrained"):
        await (await different.load_state(path, request_id="load")).result()
    with pytest.raises(PretrainedModelError, match="did not start from"):
        export_hf(path, tmp_path / "export", source=other)
    assert not (tmp_path / "export").exists()


def test_a_model_directory_is_hashed_once_until_a_file_changes(
    saved: Callable[[str], Path], tmp_path: Path
) -> None:
    directory = shutil.copytree(saved("llama3"), tmp_path / "model")
    first = read_hf_model(directory).config.pretrained
    hashed = _file_digest.cache_info().misses
    assert read_hf_model(directory).config.pretrained == first
    assert _file_digest.cache_info().misses == hashed  # every file's digest remembered
    _edit_weights(directory, lambda weights: weights["model.norm.weight"].add_(1.0))
    changed = read_hf_model(directory).config.pretrained
    assert changed != first
    assert _file_digest.cache_info().misses == hashed + 1  # the rewritten file only


# ------------------------------------------------------------------------------------------
# Errors: each names the file and the tensor; nothing is written


def _copy(saved: Callable[[str], Path], tmp_path: Path, family: str = "qwen2") -> Path:
    return shutil.copytree(saved(family), tmp_path / "model")


def _edit_config(directory: Path, **changes: Any) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_weights(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    weights = safetensors.torch.load_file(directory / "model.safetensors")
    edit(weights)
    safetensors.torch.save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def _load_error(directory: Path, tmp_path: Path) -> PretrainedModelError:
    run_dir = tmp_path / "run"
    with pytest.raises(PretrainedModelError) as caught:
        local_torch_adapters(model=directory, tokenizer="byte", run_dir=run_dir)
    assert not run_dir.exists()  # nothing written
    return caught.value


def test_an_unsupported_architecture_names_config_json(
    saved: Callable[[str], Path], tmp_path: Path
) -> None:
    directory = _copy(saved, tmp_path)
    _edit_config(directory, model_type="gpt2")
    error = _load_error(directory, tmp_path)
    assert error.path == str(directory / "config.json")
    assert "unsupported architecture" in str(error)
    assert "gpt2" in str(error)


def test_an_unsupported_rope_type_is_refused(saved: Callable[[str], Path], tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path, "llama3")
    _edit_config(directory, rope_parameters={**LLAMA3_ROPE, "rope_type": "yarn"})
    assert "rope type 'yarn'" in str(_load_error(directory, tmp_path))


def test_a_missing_tensor_is_named(saved: Callable[[str], Path], tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    _edit_weights(directory, lambda w: w.pop("model.layers.1.self_attn.k_proj.bias"))
    error = _load_error(directory, tmp_path)
    assert error.tensor == "model.layers.1.self_attn.k_proj.bias"
    assert error.path == str(directory / "model.safetensors")
    assert "missing tensor" in str(error)


def test_an_unexpected_tensor_is_named(saved: Callable[[str], Path], tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    _edit_weights(directory, lambda w: w.update({"model.extra.weight": torch.zeros(2)}))
    error = _load_error(directory, tmp_path)
    assert (error.tensor, error.path) == (
        "model.extra.weight",
        str(directory / "model.safetensors"),
    )
    assert "unexpected tensor" in str(error)


def test_a_shape_mismatch_is_named(saved: Callable[[str], Path], tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    _edit_config(directory, intermediate_size=96)
    error = _load_error(directory, tmp_path)
    assert error.tensor == "model.layers.0.mlp.down_proj.weight"
    assert "shape [64, 128], the config needs [64, 96]" in str(error)


def test_a_corrupt_weights_file_is_named(saved: Callable[[str], Path], tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2][:8] + b"\xff" * 64)
    error = _load_error(directory, tmp_path)
    assert error.path == str(directory / "model.safetensors")
    assert "not a readable safetensors file" in str(error)


def test_missing_weights_and_unreadable_config_are_named(
    saved: Callable[[str], Path], tmp_path: Path
) -> None:
    directory = _copy(saved, tmp_path)
    (directory / "model.safetensors").unlink()
    assert _load_error(directory, tmp_path).path == str(directory / "model.safetensors")
    (directory / "config.json").write_text("{not json")
    assert "unreadable" in str(_load_error(directory, tmp_path))


def test_a_shard_missing_a_listed_tensor_is_named(tmp_path: Path) -> None:
    directory = _save_family("llama2", tmp_path / "sharded", shard=True)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    name, shard = next(iter(sorted(index["weight_map"].items())))
    weights = safetensors.torch.load_file(directory / shard)
    del weights[name]
    safetensors.torch.save_file(weights, directory / shard, metadata={"format": "pt"})
    error = _load_error(directory, tmp_path)
    assert (error.tensor, error.path) == (name, str(directory / shard))


def test_a_path_that_is_not_a_model_directory_is_a_config_error(tmp_path: Path) -> None:
    from crucible_kitchen.errors import ConfigError

    with pytest.raises(ConfigError, match="nor is it a Hugging Face model directory"):
        local_torch_adapters(model=tmp_path)


@pytest.mark.anyio
async def test_exports_refuse_an_existing_target_and_peft_needs_lora(
    saved: Callable[[str], Path], tmp_path: Path
) -> None:
    client = LocalTorchTrainingClient(model=saved("smollm2"), checkpoint_dir=tmp_path / "ckpt")
    path = (await (await client.save_state("s", request_id="save")).result()).path
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointExists):
        export_hf(path, tmp_path / "taken")
    with pytest.raises(PretrainedModelError, match="no LoRA adapters"):
        export_peft(path, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_new_config_fields_are_validated_and_round_trip_through_the_identity() -> None:
    with pytest.raises(ValueError, match="d_head must be a positive int"):
        preset("tiny", d_head=0)
    with pytest.raises(ValueError, match="RoPE needs an even head dim"):
        preset("tiny", d_head=15)
    with pytest.raises(ValueError, match="high_freq_factor > low_freq_factor"):
        RopeScaling(
            factor=8.0,
            low_freq_factor=4.0,
            high_freq_factor=1.0,
            original_max_position_embeddings=8,
        )
    scaling = RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8
    )
    with pytest.raises(ValueError, match="rope_scaling needs positions='rope'"):
        preset("tiny", positions="learned", rope_scaling=scaling)
    config = preset("tiny", d_head=32, qkv_bias=True, rope_scaling=scaling, pretrained="ab")
    assert ModelConfig.from_identity(config.identity()) == config
    assert set(config.identity()) - set(preset("tiny").identity()) == {
        "d_head",
        "qkv_bias",
        "rope_scaling",
        "pretrained",
    }
    with pytest.raises(ValueError, match="not a model config identity"):
        ModelConfig.from_identity({**config.identity(), "colour": "red"})


@pytest.mark.anyio
async def test_a_model_directory_as_teacher_samples_like_transformers(
    saved: Callable[[str], Path],
) -> None:
    directory = saved("qwen2")
    ports = local_torch_adapters(model="tiny", tokenizer="byte", teacher=directory)
    prompt = [5, 17, 250, 3, 99]
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    expected = _hf_greedy(reference, prompt, 16)
    assert await _our_greedy(ports["teacher_sampling_client"], prompt, 16) == expected


def test_init_from_a_model_directory_names_the_model_setting(
    saved: Callable[[str], Path],
) -> None:
    directory = str(saved("llama2"))
    with pytest.raises(ValueError, match=r"model=<the directory>"):
        SlBasicConfig(init_from=directory)
    assert DistillBasicConfig(teacher=directory).teacher == directory

"""Checkpoints: exact round trips, exact resume, typed refusals, atomic writes."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pytest
import torch

from crucible_kitchen.adapters.local_torch import _checkpoint
from crucible_kitchen.adapters.local_torch._checkpoint import (
    MANIFEST_FILE,
    MODEL_FILE,
    TRAIN_STATE_JSON_FILE,
    TRAIN_STATE_TENSORS_FILE,
    checkpoint_model,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from crucible_kitchen.adapters.local_torch._config import LoraConfig
from crucible_kitchen.adapters.local_torch._lora import apply_lora, merge_lora
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._optim import build_optimizer
from crucible_kitchen.adapters.local_torch._trainer import Trainer
from crucible_kitchen.errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointExists,
    CheckpointMismatch,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from conftest import Batch
    from crucible_kitchen._files import FileContents
    from crucible_kitchen.adapters.local_torch._config import ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer


def _assert_same_weights(left: Transformer, right: Transformer) -> None:
    left_state, right_state = left.state_dict(), right.state_dict()
    assert left_state.keys() == right_state.keys()
    for name, tensor in left_state.items():
        assert torch.equal(tensor, right_state[name]), name


@pytest.fixture
def trained(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]], tmp_path: Path
) -> tuple[Transformer, Path]:
    """A model trained 2 steps and its checkpoint (with optimizer state) in ``tmp_path/ckpt``."""
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model)
    train(model, optimizer, batch, steps=2)
    save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer, step=2)
    return model, tmp_path / "ckpt"


def test_round_trip_is_bit_identical_and_keeps_the_payload(
    config: ModelConfig, batch: Batch, train: Callable[..., list[float]], tmp_path: Path
) -> None:
    model = build_model(config, seed=0)
    train(model, build_optimizer(model), batch, steps=2)
    payload = {"loop": {"epoch": 1, "batch": 7}, "rng": [1, 2, 3]}
    written = save_checkpoint(tmp_path / "ckpt", model=model, step=2, user_payload=payload)
    assert sorted(path.name for path in (tmp_path / "ckpt").iterdir()) == [
        MANIFEST_FILE,
        MODEL_FILE,
    ]
    restored = build_model(config, seed=99)
    manifest = load_checkpoint(tmp_path / "ckpt", model=restored)
    _assert_same_weights(model, restored)
    assert manifest == written == read_manifest(tmp_path / "ckpt")
    assert manifest.step == 2
    assert manifest.user_payload == payload
    assert not manifest.has_train_state


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_resumed_training_is_bit_identical_to_uninterrupted_training(
    config: ModelConfig,
    batch: Batch,
    train: Callable[..., list[float]],
    tmp_path: Path,
    use_lora: bool,
) -> None:
    # Dropout on, so the restored RNG state matters too.
    config = dataclasses.replace(config, dropout=0.1)
    lora = LoraConfig(rank=4, dropout=0.1)

    def fresh(seed: int) -> tuple[Transformer, torch.optim.AdamW]:
        model = build_model(config, seed=seed)
        if use_lora:
            apply_lora(model, dataclasses.replace(lora, seed=seed))
        return model, build_optimizer(model)

    uninterrupted, optimizer = fresh(0)
    train(uninterrupted, optimizer, batch, steps=3)
    save_checkpoint(tmp_path / "ckpt", model=uninterrupted, optimizer=optimizer, step=3)
    train(uninterrupted, optimizer, batch, steps=3)

    resumed, resumed_optimizer = fresh(1)
    manifest = load_checkpoint(tmp_path / "ckpt", model=resumed, optimizer=resumed_optimizer)
    assert manifest.has_train_state
    train(resumed, resumed_optimizer, batch, steps=3)
    _assert_same_weights(uninterrupted, resumed)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:], "fails its sha256"),
    ],
    ids=["truncated", "flipped-bit"],
)
@pytest.mark.parametrize("file_name", [MODEL_FILE, TRAIN_STATE_TENSORS_FILE, TRAIN_STATE_JSON_FILE])
def test_a_damaged_file_is_refused_before_anything_changes(
    trained: tuple[Transformer, Path],
    config: ModelConfig,
    damage: Callable[[bytes], bytes],
    message: str,
    file_name: str,
) -> None:
    _, directory = trained
    path = directory / file_name
    path.write_bytes(damage(path.read_bytes()))
    model = build_model(config, seed=5)
    untouched = build_model(config, seed=5)
    with pytest.raises(CheckpointCorrupted, match=message) as caught:
        load_checkpoint(directory, model=model, optimizer=build_optimizer(model))
    assert caught.value.path == str(path)
    assert file_name in str(caught.value)
    _assert_same_weights(model, untouched)


def test_a_missing_file_or_manifest_is_refused(
    trained: tuple[Transformer, Path], config: ModelConfig
) -> None:
    _, directory = trained
    (directory / MODEL_FILE).unlink()
    with pytest.raises(CheckpointCorrupted, match=f"{MODEL_FILE} is missing"):
        load_checkpoint(directory, model=build_model(config, seed=0))
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointCorrupted, match="not a complete checkpoint"):
        read_manifest(directory)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda m: "{not json", CheckpointCorrupted, "not readable JSON"),
        (lambda m: json.dumps({**m, "files": 3}), CheckpointCorrupted, "malformed"),
        (lambda m: json.dumps({**m, "format_version": 2}), CheckpointMismatch, "version 2"),
        (
            lambda m: json.dumps({**m, "config": {**m["config"], "lora": {"rank": 1}}}),
            CheckpointCorrupted,
            "does not match config_hash",
        ),
    ],
    ids=["not-json", "bad-field", "future-version", "edited-config"],
)
def test_a_bad_manifest_is_refused(
    trained: tuple[Transformer, Path],
    edit: Callable[[dict[str, object]], str],
    error: type[CheckpointError],
    message: str,
) -> None:
    _, directory = trained
    manifest_path = directory / MANIFEST_FILE
    manifest_path.write_text(edit(json.loads(manifest_path.read_text())))
    with pytest.raises(error, match=message) as caught:
        read_manifest(directory)
    assert caught.value.path == str(manifest_path)


def test_a_checkpoint_of_another_config_is_refused(
    trained: tuple[Transformer, Path], config: ModelConfig
) -> None:
    _, directory = trained
    with pytest.raises(
        CheckpointMismatch, match=r"model\.d_ff: checkpoint 176, model 128"
    ) as caught:
        load_checkpoint(directory, model=build_model(dataclasses.replace(config, d_ff=128), seed=0))
    assert caught.value.differences == ["model.d_ff: checkpoint 176, model 128"]
    with_lora = build_model(config, seed=0)
    apply_lora(with_lora, LoraConfig(rank=2))
    with pytest.raises(CheckpointMismatch, match="lora: checkpoint None"):
        load_checkpoint(directory, model=with_lora)
    # The device is not part of the identity.
    load_checkpoint(
        directory, model=build_model(dataclasses.replace(config, device="cpu:0"), seed=0)
    )


def test_optimizer_state_is_required_only_when_asked_for(
    config: ModelConfig, tmp_path: Path
) -> None:
    model = build_model(config, seed=0)
    save_checkpoint(tmp_path / "weights", model=model, step=0)
    with pytest.raises(CheckpointMismatch, match="no optimizer state"):
        load_checkpoint(tmp_path / "weights", model=model, optimizer=build_optimizer(model))


def test_an_existing_checkpoint_is_never_overwritten(trained: tuple[Transformer, Path]) -> None:
    model, directory = trained
    before = (directory / MODEL_FILE).read_bytes()
    with pytest.raises(CheckpointExists, match="already exists") as caught:
        save_checkpoint(directory, model=model, step=3)
    assert isinstance(caught.value, FileExistsError)
    assert "appeared while" not in str(caught.value)  # a collision up front, not a race
    assert (directory / MODEL_FILE).read_bytes() == before


def test_an_interrupted_write_leaves_nothing_behind(
    config: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(config, seed=0)
    optimizer = build_optimizer(model)
    real_write = _checkpoint.atomic_write_directory

    def write_half_then_fail(destination: Path, files: Mapping[str, FileContents]) -> None:
        data = files[TRAIN_STATE_TENSORS_FILE]
        assert isinstance(data, bytes)

        def half_then_fail(path: Path) -> None:
            path.write_bytes(data[: len(data) // 2])
            raise OSError("disk full")

        real_write(destination, {**files, TRAIN_STATE_TENSORS_FILE: half_then_fail})

    monkeypatch.setattr(_checkpoint, "atomic_write_directory", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "runs" / "ckpt", model=model, optimizer=optimizer, step=1)
    assert list((tmp_path / "runs").iterdir()) == []

    monkeypatch.setattr(_checkpoint, "atomic_write_directory", real_write)
    save_checkpoint(tmp_path / "runs" / "ckpt", model=model, optimizer=optimizer, step=1)
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["ckpt"]
    load_checkpoint(tmp_path / "runs" / "ckpt", model=model, optimizer=optimizer)


def test_unsaveable_requests_are_refused_before_writing(
    config: ModelConfig, tmp_path: Path
) -> None:
    model = build_model(config, seed=0)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "a", model=model, step=0, user_payload={"x": object()})
    apply_lora(model, LoraConfig(rank=2))
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge"):
        save_checkpoint(tmp_path / "b", model=model, step=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_models_rebuilt_from_a_checkpoint_hold_the_trainers_exact_tensors(
    config: ModelConfig, tmp_path: Path, dtype: str
) -> None:
    config = dataclasses.replace(config, dtype=dtype)
    lora = LoraConfig(rank=2)
    trainer = Trainer(config, seed=3, lora=lora)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # weights unlike any init, LoRA updates that merge to something
        for parameter in trainer.model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise.to(parameter.dtype))
    trainer.save(tmp_path / "sampler", with_optimizer=False, payload={})

    # Another trainer has no cached copy of the save: it builds the model from the files.
    from_disk = Trainer(config, seed=11, lora=lora).sampler_model(str(tmp_path / "sampler"))
    _assert_same_weights(from_disk, trainer.snapshot())
    assert from_disk.lora_config == lora
    assert not from_disk.training
    _assert_same_weights(checkpoint_model(tmp_path / "sampler"), trainer.model)

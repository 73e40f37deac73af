"""A recipe run on a Hugging Face model directory: it trains LoRA adapters, stops and resumes to
the weights of an uninterrupted run, and ``kitchen export`` writes weights that transformers
and peft load with equal logits."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from crucible_kitchen.cli import main
from crucible_kitchen.errors import RunDirectoryError, StageFailed
from crucible_kitchen.kitchen import Kitchen, RunHandle, export_run
from crucible_kitchen.telemetry import TrainingStep

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

TOKENS = torch.tensor([[5, 17, 250, 3, 99, 42, 7, 7, 180, 264, 0, 64]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 (q/k/v biases, GQA) saved with ``save_pretrained``."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    directory = tmp_path_factory.mktemp("hf") / "qwen2-tiny"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def _config(model_dir: Path) -> dict[str, Any]:
    return {
        "model": str(model_dir),
        "lora_rank": 4,
        "max_examples": 48,
        "batch_size": 8,
        "max_length": 64,
        "learning_rate": 1e-2,
        "eval_every": 0,
        "save_every": 3,
        "eval_generations": 1,
        "generation_max_tokens": 4,
    }


async def _run_stopped_after(step: int, config: dict[str, Any], **options: Any) -> None:
    """Run ``sl_basic`` and stop it (as Ctrl-C does) once ``step`` is done."""
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingStep) and event.step == step:
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handles.append(await kitchen.start("sl_basic", config, telemetry=[stop], **options))
        assert (await handles[0].result()).status == "cancelled"


def _logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model.eval()(TOKENS).logits
    return logits


async def test_a_stopped_run_on_a_pretrained_model_resumes_and_exports(
    model_dir: Path, tmp_path: Path
) -> None:
    config = _config(model_dir)
    await Kitchen.run("sl_basic", config, seed=5, run_id="r", run_dir=tmp_path / "full")

    part = tmp_path / "part"
    await _run_stopped_after(2, config, seed=5, run_id="r", run_dir=part)
    with pytest.raises(RunDirectoryError, match="no final checkpoint"):
        export_run(part, tmp_path / "too-early")
    resumed = await Kitchen.resume(part)
    assert resumed.status == "completed"
    final = "checkpoints/weights/final/model.safetensors"
    full_weights, resumed_weights = load_file(tmp_path / "full" / final), load_file(part / final)
    assert full_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)

    assert main(["export", str(part), str(tmp_path / "merged")]) == 0
    assert main(["export", str(part), str(tmp_path / "adapter"), "--peft"]) == 0
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    base_logits = _logits(base)
    merged_logits = _logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged"))
    assert (merged_logits - base_logits).abs().max().item() > 1e-4  # training changed it
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):  # peft on transformers 5
        with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert (_logits(with_adapter) - merged_logits).abs().max().item() < 1e-5
    assert main(["export", str(part), str(tmp_path / "merged")]) != 0  # exists: refused


async def test_resume_refuses_a_changed_model_directory(model_dir: Path, tmp_path: Path) -> None:
    own = shutil.copytree(model_dir, tmp_path / "model")
    config = {**_config(own), "max_examples": 16}
    part = tmp_path / "part"
    await _run_stopped_after(0, config, run_dir=part)
    weights = load_file(own / "model.safetensors")
    weights["model.norm.weight"] += 1.0
    save_file(weights, own / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StageFailed, match=r"CheckpointMismatch: .* model\.pretrained: checkpoint"):
        await Kitchen.resume(part)

"""The kitchen's built-in workflows through the tinker adapters and ``kitchen serve --tinker``.

``sl_basic`` on ``adapters="tinker"`` ends on exactly the weights of the same run on
``adapters="local_torch"`` (same seed, same LoRA): the server trains the same local torch
model, so everything that crosses the wire (datums, losses, Adam parameters, request order)
must arrive intact.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
import torch
from safetensors.torch import load_file

from crucible_kitchen.adapters.local_torch import LocalTokenizer
from crucible_kitchen.adapters.noop import NoopDatasetStore, NoopFeedbackClient
from crucible_kitchen.adapters.tinker import TinkerSamplingClient, TinkerSession
from crucible_kitchen.cli import main
from crucible_kitchen.kitchen import Adapters, Kitchen

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import ServerThread

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SL_BASIC = {
    "max_examples": 48,
    "batch_size": 8,
    "epochs": 1,
    "eval_every": 4,
    "save_every": 3,
    "eval_generations": 1,
    "generation_max_tokens": 4,
    "warmup_steps": 2,
    "lora_rank": 4,
}
_TINKER_PATH = re.compile(r"tinker://(?P<session>[^:/]+):train:(?P<n>\d+)/(?P<rest>.+)")


def server_directory(server: ServerThread, tinker_path: str) -> Path:
    """Where ``kitchen serve --tinker`` keeps the checkpoint at ``tinker_path``."""
    match = _TINKER_PATH.fullmatch(tinker_path)
    assert match is not None, tinker_path
    return server.root / match["session"] / f"train-{match['n']}" / match["rest"]


def assert_same_tensors(left: Path, right: Path) -> None:
    a, b = load_file(left), load_file(right)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{left.name}: {key} differs"


async def test_sl_basic_through_tinker_ends_on_the_weights_of_a_local_run(
    tinker_env: ServerThread, tmp_path: Path
) -> None:
    remote = await Kitchen.run(
        "sl_basic", SL_BASIC, adapters="tinker", seed=0, run_dir=tmp_path / "tinker"
    )
    local = await Kitchen.run(
        "sl_basic", SL_BASIC, adapters="local_torch", seed=0, run_dir=tmp_path / "local"
    )
    assert (remote.status, remote.steps) == (local.status, local.steps) == ("completed", 6)
    state = remote.artifacts["final_state"]
    assert state.startswith("tinker://")
    for name in ("model.safetensors", "train_state.safetensors"):
        assert_same_tensors(
            server_directory(tinker_env, state) / name,
            tmp_path / "local" / "checkpoints" / "weights" / "final" / name,
        )
    assert remote.metrics == local.metrics


def _tinker_adapters(server: ServerThread, seed: int, workflow: str) -> Adapters:
    """The ``tinker`` set, with a teacher (the server's ``small``) for distillation and a
    noop feedback client; for the feedback loop the noop dataset store, which serves the
    feedback client's exports."""
    adapters = Adapters.named("tinker", seed=seed)
    if workflow == "feedback_loop":
        adapters = adapters.replace(dataset_store=NoopDatasetStore(seed=seed))
    teacher = TinkerSamplingClient(
        TinkerSession(base_url=server.base_url),
        tokenizer=LocalTokenizer.byte(),
        base_model="small",
    )
    return adapters.replace(
        teacher_sampling_client=teacher, feedback_client=NoopFeedbackClient(seed=seed)
    )


WORKFLOWS: dict[str, dict[str, Any]] = {
    "supervised": {"max_steps": 3, "final_eval": False, "register_model": False},
    "reinforcement": {"num_batches": 2, "max_tokens": 4, "use_evaluator": False},
    "preference": {"batch_size": 8, "max_steps": 2, "use_evaluator": False},
    "distillation": {"num_batches": 2, "use_evaluator": False},
    "feedback_loop": {"final_eval": False},
}


@pytest.mark.parametrize("workflow", WORKFLOWS)
async def test_every_builtin_workflow_runs_through_tinker(
    tinker_env: ServerThread, workflow: str
) -> None:
    result = await Kitchen.run(
        workflow, WORKFLOWS[workflow], adapters=_tinker_adapters(tinker_env, 1, workflow), seed=1
    )
    assert result.status == "completed", result.error
    assert result.steps > 0


def test_kitchen_run_trains_through_tinker_from_the_shell(
    tinker_env: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kitchen run sl_basic --adapters tinker``: the server named by ``TINKER_BASE_URL``."""
    settings = ["max_examples=16", "batch_size=8", "eval_every=0", "final_eval=false"]
    argv = ["run", "sl_basic", "--adapters", "tinker", "lora_rank=4", *settings]
    assert main([*argv, "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert "final_state: tinker://" in capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["adapters"] == "tinker"

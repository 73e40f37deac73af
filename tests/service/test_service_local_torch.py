"""A real ``sl_basic`` run on the local torch backend, started and stopped over HTTP.

aiohttp runs only on asyncio, so this test runs on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import torch
from _service_support import EventReader, serving, start
from safetensors.torch import load_file

from crucible_kitchen import Kitchen

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FINAL_FILES = (
    "checkpoints/weights/final/model.safetensors",
    "checkpoints/weights/final/train_state.safetensors",
    "checkpoints/sampler_weights/final/model.safetensors",
)
FEW_STEPS = {
    "max_examples": 64,
    "batch_size": 8,
    "max_steps": 12,
    "eval_every": 100,
    "save_every": 100,
    "eval_generations": 0,
    "warmup_steps": 2,
}


@pytest.mark.parametrize("kitchen", ["thread", "process"])
async def test_a_run_stopped_by_a_shutdown_resumes_over_http_bit_identically(
    tmp_path: Path, kitchen: str
) -> None:
    root = tmp_path / "runs"
    async with serving(tmp_path, kitchen=kitchen) as (client, service):
        run_id = await start(client, {"recipe": "sl_basic", "config": FEW_STEPS, "seed": 5})
        events = EventReader(await client.get(f"/runs/{run_id}/events"))
        while (frame := await events.next()) is not None:
            if frame.event == "crucible_kitchen.training.step":
                break
    # The host shut down mid-training: the run stopped at a step boundary and checkpointed.
    result = service.run(run_id).result
    assert result is not None
    assert result.status == "cancelled"
    assert 0 < result.steps < 12
    run_dir = root / run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("cancelled", result.steps)
    saved = (run_dir / "checkpoints" / "weights").iterdir()
    assert [path.name for path in saved if path.is_dir()]

    async with serving(tmp_path, kitchen=kitchen) as (client, service):  # again, same root
        listed = (await (await client.get("/runs")).json())["runs"]
        assert [(run["run_id"], run["status"]) for run in listed] == [(run_id, "cancelled")]
        response = await client.post(f"/runs/{run_id}/resume")
        assert response.status == 202, await response.text()
        resumed = await service.result(service.run(run_id))
    assert (resumed.status, resumed.steps) == ("completed", 12)
    assert resumed.metrics["data/train_examples"] == 64.0

    reference = tmp_path / "uninterrupted"
    whole = await Kitchen.run("sl_basic", FEW_STEPS, seed=5, run_dir=reference)
    assert whole.status == "completed"
    for name in FINAL_FILES:
        want, got = load_file(reference / name), load_file(run_dir / name)
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}: {key} differs"


async def test_a_dataset_name_cannot_reach_files_outside_the_data_root(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"messages": [{"role": "user", "content": "private"}]}\n')
    outside = str(secret.with_suffix(""))
    async with serving(tmp_path, max_runs_per_client=None) as (client, service):
        runs = [
            await start(client, {"recipe": "sl_basic", "config": {"dataset": name}})
            for name in ("../" * 30 + outside.lstrip("/"), outside)
        ]
        results = [await service.result(service.run(run_id)) for run_id in runs]
    reasons = ["must not have empty, '.' or '..' segments", "must be relative"]
    for result, reason in zip(results, reasons, strict=True):
        assert (result.status, result.failed_stage) == ("failed", "load_dataset")
        assert (result.error or "").endswith(reason)

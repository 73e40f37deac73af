"""Resuming a run on the ``tinker`` adapter set: its checkpoints stay on the server, and the
run directory records each one's ``tinker://`` path with the run's position.

A run stopped and resumed through ``kitchen serve --tinker`` ends on the weights of the
same run uninterrupted; a record whose remote checkpoint is gone or damaged, or a record
that is garbage, gives :class:`CheckpointCorrupted` naming it.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from test_tinker_workflows import SL_BASIC, assert_same_tensors, server_directory

from crucible_kitchen.errors import CheckpointCorrupted, ResourceNotFound
from crucible_kitchen.kitchen import Adapters, Kitchen, RunHandle
from crucible_kitchen.ports import CHECKPOINT_PAYLOAD, capability
from crucible_kitchen.telemetry import TrainingCheckpointDamaged, TrainingStep

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import ServerThread
    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _run_stopped_after(step: int, run_dir: Path) -> None:
    """``sl_basic`` on ``adapters="tinker"``, stopped (as Ctrl-C does) once ``step`` is done."""
    handles: list[RunHandle] = []

    def stop(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingStep) and event.step == step:
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "sl_basic", SL_BASIC, adapters="tinker", seed=0, run_dir=run_dir, telemetry=[stop]
        )
        handles.append(handle)
        assert (await handle.result()).status == "cancelled"


def _records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's checkpoint records by name."""
    return {
        path.parent.name: json.loads(path.read_text())
        for path in (run_dir / "checkpoints" / "weights").glob("*/remote.json")
    }


async def test_a_stopped_run_resumes_on_the_server_and_ends_on_the_uninterrupted_weights(
    tinker_env: ServerThread, tmp_path: Path
) -> None:
    full = await Kitchen.run(
        "sl_basic", SL_BASIC, adapters="tinker", seed=0, run_dir=tmp_path / "f"
    )
    part = tmp_path / "part"
    await _run_stopped_after(2, part)
    [(name, record)] = _records(part).items()
    assert record["tinker_path"].startswith("tinker://")
    assert name == f"step_{record['user_payload']['context']['step']:06d}"

    resumed = await Kitchen.resume(part)

    assert (resumed.status, resumed.steps) == (full.status, full.steps) == ("completed", 6)
    for name in ("model.safetensors", "train_state.safetensors"):
        assert_same_tensors(
            server_directory(tinker_env, resumed.artifacts["final_state"]) / name,
            server_directory(tinker_env, full.artifacts["final_state"]) / name,
        )
    assert "final" in _records(part)  # the final state is recorded too


async def test_a_missing_or_damaged_remote_checkpoint_is_a_typed_error(
    tinker_env: ServerThread, tmp_path: Path
) -> None:
    part = tmp_path / "part"
    await _run_stopped_after(2, part)
    [(name, saved)] = _records(part).items()
    record = part / "checkpoints" / "weights" / name
    remote = server_directory(tinker_env, saved["tinker_path"])
    client = Adapters.named("tinker", seed=0, run_dir=part)["training_client"]
    read_payload = capability(client, CHECKPOINT_PAYLOAD)
    assert read_payload is not None

    (remote / "model.safetensors").write_bytes(b"garbage")  # damaged on the server
    with pytest.raises(CheckpointCorrupted, match="but the server cannot load it") as caught:
        await client.load_state(str(record), request_id="load-damaged")
    assert caught.value.path == str(record)

    shutil.rmtree(remote)  # gone from the server
    with pytest.raises(CheckpointCorrupted, match="but the server no longer holds it"):
        await read_payload(str(record))
    with pytest.raises(CheckpointCorrupted, match="no longer holds it"):
        await client.load_state(str(record), request_id="load-gone")

    (record / "remote.json").write_text("{not json")  # a damaged record
    with pytest.raises(CheckpointCorrupted, match="not a Tinker checkpoint record"):
        await read_payload(str(record))
    with pytest.raises(ResourceNotFound):
        await read_payload(str(record.with_name("never-saved")))

    # Resuming passes over the damaged checkpoint, reports it, and starts from the first step.
    damaged: list[TrainingCheckpointDamaged] = []
    resumed = await Kitchen.resume(
        part,
        telemetry=[
            lambda e: damaged.append(e) if isinstance(e, TrainingCheckpointDamaged) else None
        ],
    )
    assert resumed.status == "completed"
    assert [event.path for event in damaged] == [str(record)]

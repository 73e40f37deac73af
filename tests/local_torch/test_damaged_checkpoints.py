"""Resuming past damaged checkpoints on the local torch backend: a run whose newest checkpoint
is damaged resumes from the newest one that verifies, says so, replaces the damaged one on
the replay and ends with the weights of an undisturbed run; staging leftovers are removed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from rich.console import Console
from test_sl_basic import SMALL, assert_same_final_tensors, events_of

from crucible_kitchen.adapters.local_torch._checkpoint import verify_checkpoint
from crucible_kitchen.errors import DataError, StageFailed
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.telemetry import (
    ConsoleHandler,
    TrainingCheckpointDamaged,
    TrainingResume,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from crucible_kitchen.stages import Context
    from crucible_kitchen.telemetry import TelemetryEvent

# 24 steps, a checkpoint every 8: the run fails at step 20, after step_000008 and step_000016.
CONFIG = {**SMALL, "epochs": 1, "save_every": 8, "eval_every": 0}
WEIGHTS = "checkpoints/weights"
NEWEST, SOUND = "step_000016", "step_000008"


async def _fail_at_step_20(point: str, ctx: Context, operation: str) -> None:
    if point == "before_call" and operation == "forward_backward" and ctx.step == 20:
        raise DataError("the disk is gone")


async def _full_and_failed(root: Path) -> None:
    await Kitchen.run("sl_basic", CONFIG, seed=7, run_id="d", run_dir=root / "full")
    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "sl_basic",
            CONFIG,
            seed=7,
            run_id="d",
            run_dir=root / "failed",
            fault_hook=_fail_at_step_20,
        )
        with pytest.raises(StageFailed, match="the disk is gone"):
            await handle.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed run (``full``) and the same run failed at step 20 (``failed``)."""
    root = tmp_path_factory.mktemp("damage")
    anyio.run(_full_and_failed, root, backend="asyncio")
    assert sorted(p.name for p in (root / "failed" / WEIGHTS).iterdir()) == [SOUND, NEWEST]
    return root


def _summary_metrics(run_dir: Path) -> dict[str, float]:
    metrics: dict[str, float] = json.loads((run_dir / "summary.json").read_text())["metrics"]
    return metrics


def _edit_manifest(edit: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        edit(manifest)
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _truncate_manifest(checkpoint: Path) -> None:
    data = (checkpoint / "manifest.json").read_bytes()
    (checkpoint / "manifest.json").write_bytes(data[: len(data) // 2])


def _garbage_position(manifest: dict[str, object]) -> None:
    payload = manifest["user_payload"]
    assert isinstance(payload, dict)
    payload["user"]["context"]["loops"] = [["epochs", "garbage"]]


def _flip_a_weight_byte(checkpoint: Path) -> None:
    path = checkpoint / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated manifest": _truncate_manifest,
    "garbage manifest": lambda c: (c / "manifest.json").write_bytes(b"\x00\xffnot json"),
    "garbage saved position": _edit_manifest(_garbage_position),
    "missing manifest": lambda c: (c / "manifest.json").unlink(),
    "sha256 mismatch": _flip_a_weight_byte,
    "missing file": lambda c: (c / "train_state.safetensors").unlink(),
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(DAMAGE))
async def test_resume_passes_over_a_damaged_newest_checkpoint_and_replaces_it(
    runs: Path, tmp_path: Path, kind: str
) -> None:
    part = tmp_path / "part"
    shutil.copytree(runs / "failed", part)
    damaged = part / WEIGHTS / NEWEST
    DAMAGE[kind](damaged)
    # A kill while checkpoints were being written leaves staging directories behind.
    leftovers = [part / WEIGHTS / ".step_000024.x1.partial", part / "checkpoints/.y.partial"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half")

    output = io.StringIO()
    seen: list[TelemetryEvent] = []
    console = ConsoleHandler(Console(file=output, width=400), level="warning")
    resumed = await Kitchen.resume(part, telemetry=[console, seen.append])

    assert (resumed.status, resumed.steps) == ("completed", 24)
    assert resumed.metrics == _summary_metrics(runs / "full")
    assert_same_final_tensors(runs / "full", part)
    assert not any(leftover.exists() for leftover in leftovers)

    # Said so: an event and a console line naming the damaged checkpoint and the fallback.
    (notice,) = [e for e in seen if isinstance(e, TrainingCheckpointDamaged)]
    assert (notice.path, notice.resume_from) == (str(damaged), str(part / WEIGHTS / SOUND))
    assert notice.reason
    assert f"Checkpoint {damaged} is damaged" in output.getvalue()
    (resume,) = [e for e in seen if isinstance(e, TrainingResume)]
    assert (resume.path, resume.step) == (str(part / WEIGHTS / SOUND), 8)
    assert notice in events_of(part)  # in the run's events.jsonl too

    # The replay wrote a sound checkpoint in its place; the damaged one was kept aside.
    assert verify_checkpoint(damaged).step == 16
    (aside,) = (part / WEIGHTS).glob(f".{NEWEST}.damaged-*")
    assert aside.is_dir()


@pytest.mark.anyio
async def test_a_run_whose_every_checkpoint_is_damaged_starts_again_from_its_first_step(
    runs: Path, tmp_path: Path
) -> None:
    part = tmp_path / "part"
    shutil.copytree(runs / "failed", part)
    for name in (SOUND, NEWEST):
        _flip_a_weight_byte(part / WEIGHTS / name)
    seen: list[TelemetryEvent] = []
    resumed = await Kitchen.resume(part, telemetry=[seen.append])
    assert (resumed.status, resumed.steps) == ("completed", 24)
    assert resumed.metrics == _summary_metrics(runs / "full")
    assert_same_final_tensors(runs / "full", part)
    notices = [e for e in seen if isinstance(e, TrainingCheckpointDamaged)]
    assert sorted(Path(e.path).name for e in notices) == [SOUND, NEWEST]
    assert {e.resume_from for e in notices} == {None}
    assert not any(isinstance(e, TrainingResume) for e in seen)
    assert all(verify_checkpoint(part / WEIGHTS / name) for name in (SOUND, NEWEST))

"""A run that fails validation, or is interrupted, while it starts leaves no run directory
behind (the local adapters write ``tokenizer.json`` as they are built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from crucible_kitchen.errors import ConfigError, PortError, TelemetryError
from crucible_kitchen.kitchen import Kitchen

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

TINY_RUN = {"max_examples": 16, "batch_size": 8, "epochs": 1, "eval_every": 0, "save_every": 0}


async def test_adapters_that_fail_validation_leave_no_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "bad-model"
    with pytest.raises(ConfigError, match="nope"):
        await Kitchen.run("sl_basic", {**TINY_RUN, "model": "nope"}, run_dir=run_dir)
    assert not run_dir.exists()


async def test_ports_that_do_not_fit_leave_no_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "distillation"
    with pytest.raises(PortError, match="teacher_sampling_client"):  # no teacher given
        await Kitchen.run("distillation", adapters="local_torch", run_dir=run_dir)
    assert not run_dir.exists()


async def test_a_failure_after_config_json_removes_it_and_keeps_what_was_there(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("the user's own file")
    with pytest.raises(TelemetryError):
        await Kitchen.run("sl_basic", TINY_RUN, run_dir=run_dir, telemetry=["no-such-handler"])
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    result = await Kitchen.run("sl_basic", TINY_RUN, run_dir=run_dir)  # the directory is free
    assert result.status == "completed"


async def test_an_interrupted_start_leaves_no_run_directory(tmp_path: Path) -> None:
    """Ctrl-C while the run starts: the start-up is cancelled at its first await (writing
    ``config.json``), after the adapters wrote ``tokenizer.json``."""
    run_dir = tmp_path / "interrupted"
    async with Kitchen.open() as kitchen:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await kitchen.start("sl_basic", TINY_RUN, run_dir=run_dir)
        assert scope.cancelled_caught
        assert kitchen.runs() == []
    assert not run_dir.exists()

"""A run trained under ``torchrun`` with FSDP resumes in one process with ``parallelism=ddp``:
its checkpoints hold the full state, so only how the run executes changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen import Kitchen
from crucible_kitchen.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
KITCHEN = ["-m", "crucible_kitchen.cli"]
SETTINGS = ["sl_basic", "max_steps=4", "save_every=2", "eval_every=0", "final_eval=false"]


def _metrics(run_dir: Path) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    metrics: dict[str, float] = summary["metrics"]
    return metrics


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_fsdp_run_resumes_in_one_process_with_parallelism_ddp(tmp_path: Path) -> None:
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    run = [*KITCHEN, "run", *SETTINGS, "--quiet", "--run-dir"]
    subprocess.run([sys.executable, *run, str(one)], check=True, timeout=120)
    subprocess.run([*TORCHRUN, *run, str(fsdp), "parallelism=fsdp"], check=True, timeout=240)
    # As if the job had been killed after its checkpoint of step 2.
    (fsdp / "summary.json").unlink()
    for later in ("weights/step_000004", "weights/final", "sampler_weights/final"):
        shutil.rmtree(fsdp / "checkpoints" / later)
    shutil.rmtree(fsdp / "registry")
    resume = [sys.executable, *KITCHEN, "resume", str(fsdp), "--quiet"]
    refused = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "kitchen resume RUN_DIR parallelism=ddp" in refused.stdout + refused.stderr
    subprocess.run([*resume, "parallelism=ddp"], check=True, timeout=120)
    expected, resumed = _metrics(one), _metrics(fsdp)
    assert resumed.keys() == expected.keys()
    for name, value in expected.items():
        assert resumed[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.anyio
async def test_a_resumed_run_may_change_only_how_it_executes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        await Kitchen.resume(tmp_path, settings={"learning_rate": 1.0, "threads": 1})
    assert refused.value.problems == [
        "learning_rate: a resumed run keeps its settings; only parallelism, threads may change "
        "(how it runs, not what it computes)"
    ]

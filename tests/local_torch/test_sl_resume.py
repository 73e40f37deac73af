"""Killing an ``sl_basic`` run with SIGKILL at any moment and resuming it gives the final
weights of an uninterrupted run, bit for bit: no batch skipped, none trained twice
(tinker-cookbook #935 replays the checkpointed batch).

Each run is a real process (``python -c``), killed from here while it trains: after its
k-th checkpoint, at a random moment (a seeded draw), and once more while it resumes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import torch
from safetensors.torch import load_file

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CONFIG = {
    "max_examples": 96,
    "batch_size": 8,
    "epochs": 3,  # 36 steps
    "save_every": 5,
    "eval_every": 6,
    "eval_generations": 1,
    "generation_max_tokens": 8,
    "warmup_steps": 3,
}
STEPS = 36
CHILD = f"""
import sys, anyio
from crucible_kitchen import Kitchen

async def main():
    if sys.argv[1] == "run":
        result = await Kitchen.run(
            "sl_basic", {CONFIG!r}, seed=13, run_id="sigkill", run_dir=sys.argv[2]
        )
    else:
        result = await Kitchen.resume(sys.argv[2])
    print(result.status, result.steps)

anyio.run(main)
"""
FINAL_FILES = (
    "checkpoints/weights/final/model.safetensors",
    "checkpoints/weights/final/train_state.safetensors",
    "checkpoints/sampler_weights/final/model.safetensors",
)


def start(mode: str, run_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(run_dir)],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.split() == ["completed", str(STEPS)], out


def lines(run_dir: Path, event: str, after: int = 0) -> list[dict[str, Any]]:
    """Complete lines of events.jsonl (from line ``after``) of the given event."""
    try:
        text = (run_dir / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    complete = text.split("\n")[:-1][after:]
    return [row for row in map(json.loads, complete) if row["event"] == event]


def event_count(run_dir: Path) -> int:
    try:
        return (run_dir / "events.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def kill_when(
    process: subprocess.Popen[str], run_dir: Path, ready: Any, delay: float = 0.0
) -> None:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` holds, while it still trains."""
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (run_dir / "summary.json").exists(), "killed after the run had finished"


def checkpoints_seen(run_dir: Path, count: int, after: int = 0) -> Any:
    def ready() -> bool:
        saved = lines(run_dir, "crucible_kitchen.training.checkpoint", after)
        return len([row for row in saved if row["name"] != "final"]) >= count

    return ready


def steps_seen(run_dir: Path, count: int) -> Any:
    return lambda: len(lines(run_dir, "crucible_kitchen.training.step")) >= count


def assert_same_final_weights(reference: Path, run_dir: Path) -> None:
    for name in FINAL_FILES:
        want, got = load_file(reference / name), load_file(run_dir / name)
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{run_dir.name}: {name} {key} differs"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"] == json.loads((reference / "summary.json").read_text())["metrics"]
    # Steps the killed process had logged after its checkpoint come again, identical.
    rows: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_mean_nll" in row:
            assert rows.setdefault(row["step"], row) == row, f"step {row['step']} differs"
    assert sorted(rows) == list(range(STEPS))


def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    reference = tmp_path / "reference"
    finish(start("run", reference))
    rng = random.Random(935)

    # Just after the first and just after the fourth checkpoint appeared in the event log.
    for count in (1, 4):
        run_dir = tmp_path / f"after-checkpoint-{count}"
        kill_when(start("run", run_dir), run_dir, checkpoints_seen(run_dir, count))
        finish(start("resume", run_dir))
        assert_same_final_weights(reference, run_dir)

    # At a random moment (a random step, a random part of it); then the resumed process is
    # killed at a random moment after its first new checkpoint, and resumed again.
    run_dir = tmp_path / "random"
    step, delay = rng.randint(1, 24), rng.uniform(0.0, 0.03)
    kill_when(start("run", run_dir), run_dir, steps_seen(run_dir, step), delay=delay)
    seen = event_count(run_dir)
    ready = checkpoints_seen(run_dir, 1, after=seen)
    kill_when(start("resume", run_dir), run_dir, ready, delay=rng.uniform(0.0, 0.03))
    finish(start("resume", run_dir))
    assert_same_final_weights(reference, run_dir)

"""The `kitchen` command at its edges: Ctrl-C, pipes, logs, help, bars and plot names."""

from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

import crucible_kitchen.cli
from crucible_kitchen import Kitchen
from crucible_kitchen.cli import (
    EXIT_BROKEN_PIPE,
    ProgressDisplay,
    _before_after,
    _curves,
    _report,
    _score_curves,
    _start_and_wait,
    main,
)
from crucible_kitchen.errors import RunCancelled
from crucible_kitchen.telemetry import TrainingStep

if TYPE_CHECKING:
    from crucible_kitchen.kitchen import RunHandle

KITCHEN = [sys.executable, "-m", "crucible_kitchen.cli"]


def kitchen_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KITCHEN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


# --- Ctrl-C -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_double_ctrl_c_reports_one_step_count_and_the_resume_command(
    backend: str, tmp_path: Path
) -> None:
    """Two Ctrl-Cs while a pipelined local-torch run trains: the stop line, the summary and
    its metrics name the same last finished step (that of the last metrics.jsonl row), and
    the printed command resumes from the last checkpoint, whose step it names."""
    run_dir = tmp_path / "run"
    settings = ["max_steps=16", "save_every=4", "eval_every=0", "final_eval=false"]
    process = kitchen_process(
        "run", "sl_basic", *settings, "--quiet", "--run-dir", str(run_dir), "--backend", backend
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "Checkpoint saved: step_000004" in line:
            break
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if "train/loss" in row][-1]
    finished = last["step"] + 1
    assert "cancelled after" in err
    assert f"({finished} steps)" in err
    assert f"cancelled: {finished} steps in" in err
    summary = next(line for line in err.splitlines() if "train/loss=" in line)
    assert f"train/loss={last['train/loss']:.4g}" in summary
    assert f"optim/step={last['optim/step']:.4g}" in summary

    checkpoints = sorted((run_dir / "checkpoints" / "weights").glob("step_*"))
    resumed_step = int(checkpoints[-1].name.removeprefix("step_"))
    hint = err.splitlines()[-1]
    suffix = "" if backend == "asyncio" else f" --backend {backend}"
    command = f"kitchen resume {shlex.quote(str(run_dir))}{suffix}"
    assert hint == f"to resume from step {resumed_step} (its last checkpoint): {command}"

    assert main([*shlex.split(command)[1:], "--quiet"]) == 0  # the command works as printed
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.anyio
async def test_ctrl_c_during_start_up_abandons_the_start() -> None:
    """A signal before the run exists cancels the start instead of being lost."""
    display = ProgressDisplay(enabled=False)
    reached = False

    async def slow_start(kitchen: Kitchen) -> RunHandle:
        nonlocal reached
        os.kill(os.getpid(), signal.SIGINT)  # the receiver is already installed
        reached = True
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    with anyio.fail_after(30):
        assert await _start_and_wait(slow_start, display, "run") is None
    assert reached


# --- pipes, logs, usage -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["describe", "sl_basic"], ["recipes"]])
def test_a_closed_stdout_ends_quietly(command: list[str]) -> None:
    """``kitchen describe ... | head``: the reader is gone before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(
            [*KITCHEN, *command], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert process.returncode == EXIT_BROKEN_PIPE
    assert process.stderr == ""


def test_logs_that_are_not_a_terminal_keep_whole_lines(tmp_path: Path) -> None:
    run_dir = tmp_path / ("a-rather-long-directory-name-" * 3) / "run"
    process = kitchen_process("run", "supervised", "--quiet", "--run-dir", str(run_dir))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    (stop,) = [line for line in err.splitlines() if "Workflow supervised completed" in line]
    assert len(stop) > 200
    assert stop.endswith("eval/num_samples=16")
    (metrics,) = [line for line in err.splitlines() if line.startswith("data/")]
    assert metrics.endswith("train/tokens=326")
    assert "run supervised-" in err


def test_run_without_a_target_asks_only_for_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: target\n" in err
    assert "key=value" not in err.splitlines()[-1]


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "kitchen resume runs/sl_basic-1a2b3c4d" in out
    assert "::" not in out
    assert "``" not in out


def test_the_cli_uses_only_public_names_of_other_packages() -> None:
    tree = ast.parse(Path(crucible_kitchen.cli.__file__).read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.startswith("crucible_kitchen")
    ]
    assert "crucible_kitchen.telemetry" in imported
    private = [m for m in imported if any(part.startswith("_") for part in m.split("."))]
    assert private == []


# --- progress bars and plots --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("recipe", ["supervised", "reinforcement", "preference", "distillation"])
async def test_progress_bars_end_full(recipe: str) -> None:
    """Every noop workflow's bar ends at steps/steps, not at 0/?."""
    display = ProgressDisplay()
    result = await Kitchen.run(recipe, telemetry=[display], run_dir=False)
    display.close()
    (task,) = display.progress.tasks
    assert result.steps > 0
    assert (task.completed, task.total) == (result.steps, result.steps)
    assert display.steps_done == result.steps


def test_plot_names_eval_metrics_as_the_console_does() -> None:
    rows = [
        {"step": 0, "train/loss": 2.0, "train_mean_nll": 2.0, "learning_rate": 1e-3},
        {"step": 1, "train/loss": 1.5, "train_mean_nll": 1.5, "learning_rate": 1e-3},
        {"step": 1, "test/loss": 1.7, "test/num_samples": 16},
    ]
    losses, rates = _curves(rows)
    assert losses == {"eval/loss": ([1.0], [1.7]), "train/loss": ([0.0, 1.0], [2.0, 1.5])}
    assert rates == {"learning_rate": ([0.0, 1.0], [1e-3, 1e-3])}


def test_plot_draws_the_scores_of_rl_dpo_and_distillation() -> None:
    rows = [
        {"step": 0, "test/correct": 0.1, "test/loss": 2.0, "test/num_samples": 64},
        {"step": 0, "env/all/reward/total": 0.2, "rl/loss": 0.5, "learning_rate": 1e-3},
        {"step": 1, "accuracy": 0.5, "margin": 0.25, "distill/teacher_kl": 3.0},
        {"step": 2, "test/correct": 0.3, "test/teacher_kl": 2.0},
    ]
    assert _score_curves(rows) == {
        "eval/correct": ([0.0, 2.0], [0.1, 0.3]),
        "eval/teacher_kl": ([2.0], [2.0]),
        "env/all/reward/total": ([0.0], [0.2]),
        "accuracy": ([1.0], [0.5]),
        "margin": ([1.0], [0.25]),
        "distill/teacher_kl": ([1.0], [3.0]),
    }


def test_the_summary_shows_each_initial_evaluation_before_and_after() -> None:
    metrics = {
        "initial/eval/correct": 0.078125,
        "eval/correct": 0.15625,
        "initial/eval/num_samples": 64.0,
        "eval/num_samples": 64.0,
        "initial/eval/gone": 1.0,
        "train/loss": 1.0,
    }
    assert _before_after(metrics) == [
        "  eval/correct: 0.07812 -> 0.1562 (before -> after training)"
    ]


# --- the README's way to stop a run -------------------------------------------------------


@pytest.mark.anyio
async def test_the_readme_stop_returns_a_cancelled_result_where_wait_raises() -> None:
    """README: ``run.request_stop()`` then ``await run.result()``; ``wait()`` would raise."""
    async with Kitchen.open() as kitchen:
        run = await kitchen.start("supervised", {"epochs": 3}, run_dir=False)
        async for event in run.events():
            if isinstance(event, TrainingStep) and event.step == 1:
                run.request_stop()
        result = await run.result()
        assert result.status == "cancelled"
        assert 2 <= result.steps < 24  # 3 epochs of 8 steps
        with pytest.raises(RunCancelled):
            await run.wait()
        aborted = await kitchen.start("supervised", {"epochs": 3}, run_dir=False)
        assert (await aborted.cancel()).status in ("cancelled", "completed")


@pytest.mark.anyio
@pytest.mark.parametrize("keeps_dir", [True, False])
async def test_a_stopped_run_that_cannot_resume_says_why(
    keeps_dir: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The noop adapters keep their checkpoints in memory; ``run_dir=False`` keeps no files."""
    display = ProgressDisplay(enabled=False)
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            "supervised",
            {"epochs": 3},
            telemetry=[display],
            run_dir=tmp_path / "run" if keeps_dir else False,
        )
        async for event in run.events():
            if isinstance(event, TrainingStep) and event.step == 1:
                run.request_stop()
        result = await run.result()
    assert _report(result, display, run, "trio") == 130
    last = capsys.readouterr().err.splitlines()[-1]
    if keeps_dir:
        checkpoint = result.artifacts["last_checkpoint"]
        assert checkpoint.startswith("noop://")
        assert last == f"its checkpoints are not on disk ({checkpoint}), so it cannot be resumed"
    else:
        assert last == "this run keeps no run directory, so it cannot be resumed"

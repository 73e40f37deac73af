"""The ``sl_basic`` recipe end to end on the local torch backend: the loss falls, the run
directory holds every file, equal seeds give equal weights, and a run stopped (or failed) in
the middle resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
import torch
from safetensors.torch import load_file

from crucible_kitchen.adapters.filesystem import FilesystemDatasetStore, bundled_data_dir
from crucible_kitchen.errors import ConfigError, DataError, RunDirectoryError, StageFailed
from crucible_kitchen.kitchen import Kitchen, RunHandle, RunResult
from crucible_kitchen.kitchen._run_dir import read_run_record
from crucible_kitchen.recipes import SlBasicConfig
from crucible_kitchen.recipes._recipe import validate_config
from crucible_kitchen.stages._common import split_rows
from crucible_kitchen.telemetry import (
    EvalComplete,
    EvalSample,
    StageStop,
    TrainingCheckpoint,
    TrainingResume,
    TrainingStep,
    WorkflowStart,
    WorkflowStop,
    decode_event,
)

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.stages import Context
    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

# 192 training rows in batches of 8: 24 steps an epoch.
SMALL = {
    "max_examples": 192,
    "batch_size": 8,
    "epochs": 2,
    "eval_every": 20,
    "save_every": 20,
    "eval_generations": 1,
    "generation_max_tokens": 8,
    "warmup_steps": 4,
}
FINAL_FILES = (
    "checkpoints/weights/final/model.safetensors",
    "checkpoints/weights/final/train_state.safetensors",
    "checkpoints/sampler_weights/final/model.safetensors",
)


def events_of(run_dir: Path) -> list[TelemetryEvent]:
    return [decode_event(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_final_tensors(left: Path, right: Path) -> None:
    for name in FINAL_FILES:
        a, b = load_file(left / name), load_file(right / name)
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"


async def test_sl_basic_learns_and_writes_a_complete_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = await Kitchen.run("sl_basic", SMALL, seed=11, run_dir=run_dir)
    assert (result.status, result.steps) == ("completed", 48)

    # config.json: everything it takes to start the run again.
    record = read_run_record(run_dir)
    assert (record.run_id, record.recipe, record.workflow) == (
        result.run_id,
        "sl_basic",
        "supervised",
    )
    assert (record.seed, record.adapters) == (11, "local_torch")
    assert record.run_id.startswith("sl_basic-")
    assert SlBasicConfig.model_validate(record.config) == SlBasicConfig.model_validate(SMALL)

    # metrics.jsonl: tinker-cookbook rows, one per step, and the loss clearly falls.
    rows = [row for row in jsonl(run_dir / "metrics.jsonl") if "train_mean_nll" in row]
    assert [row["step"] for row in rows] == list(range(48))
    assert all({"learning_rate", "train/loss", "epoch", "progress"} <= row.keys() for row in rows)
    first, last = rows[0]["train_mean_nll"], [row["train_mean_nll"] for row in rows[-5:]]
    assert first > 5.0  # about ln(vocabulary): an untrained model
    assert max(last) < first - 1.5
    assert result.metrics["train/loss"] == rows[-1]["train/loss"]
    evals = [row for row in jsonl(run_dir / "metrics.jsonl") if "test/loss" in row]
    assert [row["step"] for row in evals] == [20, 40, 48]

    # events.jsonl: every line is an event; checkpoints, held-out evals and samples are there.
    events = events_of(run_dir)
    assert isinstance(events[0], WorkflowStart)
    assert isinstance(events[-1], WorkflowStop)
    assert [e.step for e in events if isinstance(e, TrainingStep)] == list(range(48))
    checkpoints = [(e.name, e.step) for e in events if isinstance(e, TrainingCheckpoint)]
    assert checkpoints == [("step_000020", 20), ("step_000040", 40), ("final", 48)]
    held_out = [e for e in events if isinstance(e, EvalComplete)]
    assert {(e.dataset, e.sample_count) for e in held_out} == {("chat_tasks/train[-64:]", 64)}
    samples = [e for e in events if isinstance(e, EvalSample)]
    assert [e.step for e in samples] == [20, 40, 48]
    assert all(e.prompt and e.reference for e in samples)

    # The checkpoint holds its context; the trace has the run span and the stage spans.
    manifest = json.loads((run_dir / "checkpoints/weights/step_000040/manifest.json").read_text())
    context = manifest["user_payload"]["user"]["context"]
    assert (context["step"], context["loops"]) == (40, [["epochs", 1], ["batches", 15]])
    assert "train_data" not in context["state"]
    spans = jsonl(run_dir / "traces.jsonl")
    assert "workflow supervised" in {span["name"] for span in spans}
    assert len({span["trace_id"] for span in spans}) == 1
    assert len(spans) == 1 + sum(isinstance(e, StageStop) for e in events)  # all flushed

    # summary.json is the result; the final weights are there; no temporary file is left.
    summary = msgspec.json.decode((run_dir / "summary.json").read_bytes(), type=RunResult)
    assert summary == result
    assert all((run_dir / name).is_file() for name in FINAL_FILES)
    assert result.artifacts["final_sampler_weights"] == str(
        run_dir / "checkpoints/sampler_weights/final"
    )
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_equal_seeds_give_bit_identical_weights_on_asyncio_and_trio(tmp_path: Path) -> None:
    config = {**SMALL, "epochs": 1}

    async def run(name: str, seed: int) -> RunResult:
        return await Kitchen.run("sl_basic", config, seed=seed, run_dir=tmp_path / name)

    first = anyio.run(run, "asyncio", 5, backend="asyncio")
    second = anyio.run(run, "trio", 5, backend="trio")
    other = anyio.run(run, "other", 6, backend="asyncio")
    assert first.metrics == second.metrics
    assert_same_final_tensors(tmp_path / "asyncio", tmp_path / "trio")
    assert first.metrics["train/loss"] != other.metrics["train/loss"]


async def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    full = await Kitchen.run("sl_basic", SMALL, seed=3, run_id="r", run_dir=tmp_path / "full")

    # A graceful stop (the CLI's first Ctrl-C) while step 27 is awaited and step 28 is in
    # flight: the iteration ends with a checkpoint after step 28, then the run is cancelled.
    part = tmp_path / "part"
    handles: list[RunHandle] = []

    def stop_at_step_27(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingStep) and event.step == 27:
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handles.append(
            await kitchen.start(
                "sl_basic", SMALL, seed=3, run_id="r", run_dir=part, telemetry=[stop_at_step_27]
            )
        )
        stopped = await handles[0].result()
    assert stopped.status == "cancelled"
    assert stopped.steps == 29
    assert json.loads((part / "summary.json").read_text())["status"] == "cancelled"
    for log in ("events.jsonl", "metrics.jsonl"):  # as a process killed mid-line leaves them
        text = (part / log).read_bytes()
        (part / log).write_bytes(text + b'{"event": "crucible_kitchen.training.st')

    async with Kitchen.open() as kitchen:
        resumed_handle = await kitchen.start_resumed(part)
        assert resumed_handle.resumed_from == str(part / "checkpoints/weights/step_000029")
        resumed = await resumed_handle.wait()
    assert (resumed.status, resumed.steps, resumed.run_id) == ("completed", 48, "r")
    assert resumed.metrics == full.metrics
    assert_same_final_tensors(tmp_path / "full", part)

    # The logs were appended to: two runs' events, each step once, the resume in between.
    events = events_of(part)
    assert sum(isinstance(e, WorkflowStart) for e in events) == 2
    (resume,) = [e for e in events if isinstance(e, TrainingResume)]
    assert resume.step == 29
    assert sorted({e.step for e in events if isinstance(e, TrainingStep)}) == list(range(48))
    assert all("step" in row for row in jsonl(part / "metrics.jsonl"))
    with pytest.raises(RunDirectoryError, match="completed already"):
        await Kitchen.resume(part)


async def test_a_failed_run_without_a_checkpoint_resumes_from_its_first_step(
    tmp_path: Path,
) -> None:
    config = {**SMALL, "epochs": 1, "save_every": 0}
    full = await Kitchen.run("sl_basic", config, seed=4, run_id="f", run_dir=tmp_path / "full")

    async def fail_at_step_9(point: str, ctx: Context, operation: str) -> None:
        if point == "before_call" and operation == "forward_backward" and ctx.step == 9:
            raise DataError("the disk is gone")

    broken = tmp_path / "broken"
    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            "sl_basic", config, seed=4, run_id="f", run_dir=broken, fault_hook=fail_at_step_9
        )
        with pytest.raises(StageFailed, match="the disk is gone"):
            await handle.wait()
    assert not (broken / "checkpoints/weights/final").exists()

    resumed = await Kitchen.resume(broken)
    assert (resumed.status, resumed.steps) == ("completed", 24)
    assert resumed.metrics == full.metrics
    assert_same_final_tensors(tmp_path / "full", broken)


async def test_run_directories_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="not a run directory"):
        await Kitchen.resume(tmp_path)
    run_dir = tmp_path / "run"
    await Kitchen.run("sl_basic", {**SMALL, "max_steps": 2}, run_dir=run_dir)
    with pytest.raises(RunDirectoryError, match="holds a run already"):
        await Kitchen.run("sl_basic", {**SMALL, "max_steps": 2}, run_dir=run_dir)
    with pytest.raises(RunDirectoryError, match="completed already"):
        await Kitchen.resume(run_dir)
    noop_dir = tmp_path / "noop"
    await Kitchen.run("supervised", {"max_steps": 2}, run_dir=noop_dir)
    with pytest.raises(RunDirectoryError, match="keeps no checkpoints"):
        async with Kitchen.open() as kitchen:
            (noop_dir / "summary.json").unlink()  # as if the process had been killed
            await kitchen.start_resumed(noop_dir)


async def test_split_slices_carve_a_held_out_set() -> None:
    store = FilesystemDatasetStore(bundled_data_dir())
    everything = await split_rows(store, "chat_tasks", "train")
    train = await split_rows(store, "chat_tasks", "train[:-64]")
    held_out = await split_rows(store, "chat_tasks", "train[-64:]")
    assert (len(train), len(held_out)) == (len(everything) - 64, 64)
    assert train + held_out == everything
    assert await split_rows(store, "chat_tasks", "train[-64:]", limit=3) == held_out[:3]
    with pytest.raises(DataError, match="no split 'test'"):
        await split_rows(store, "chat_tasks", "test[:4]")
    with pytest.raises(DataError, match="is not"):
        await split_rows(store, "chat_tasks", "train[4]")
    with pytest.raises(ConfigError, match="eval_split"):
        validate_config(SlBasicConfig, {"eval_split": "train[-x:]"}, source="sl_basic")


@pytest.mark.parametrize(
    ("recipe", "config"),
    [
        (
            "reinforcement",
            {"num_batches": 5, "sampler_refresh_every": 2, "max_tokens": 4, "use_evaluator": False},
        ),
        ("preference", {"batch_size": 16, "epochs": 2, "use_evaluator": False}),
    ],
)
async def test_rl_and_dpo_resume_on_local_torch_to_the_uninterrupted_weights(
    tmp_path: Path, recipe: str, config: dict[str, Any]
) -> None:
    """The real path: checkpoints on disk, ``Kitchen.resume(run_dir)``; RL resumes to the
    sampler of an earlier step (refreshed every 2), DPO recomputes its reference first."""
    full = await Kitchen.run(
        recipe, config, adapters="local_torch", seed=4, run_id="r", run_dir=tmp_path / "full"
    )
    part = tmp_path / "part"
    handles: list[RunHandle] = []

    def stop_after_step_2(event: TelemetryEvent) -> None:
        if getattr(event, "step", None) == 2 and type(event).__name__.endswith("Step"):
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handles.append(
            await kitchen.start(
                recipe,
                config,
                adapters="local_torch",
                seed=4,
                run_id="r",
                run_dir=part,
                telemetry=[stop_after_step_2],
            )
        )
        stopped = await handles[0].result()
    assert stopped.status == "cancelled"
    assert 2 < stopped.steps < full.steps
    resumed = await Kitchen.resume(part)
    assert (resumed.status, resumed.steps) == ("completed", full.steps)
    assert resumed.metrics == full.metrics
    assert_same_final_tensors(tmp_path / "full", part)

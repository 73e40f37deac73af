"""Built-in handlers: console formats, JSONL event log, metrics rows, callbacks, specs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from crucible_kitchen.errors import TelemetryError
from crucible_kitchen.telemetry import (
    CallbackHandler,
    ConsoleHandler,
    DpoStep,
    EvalComplete,
    FeedbackBaselineUpdated,
    JsonlHandler,
    MetricsJsonlHandler,
    ModelRegistered,
    RlStep,
    StageException,
    StageStart,
    StageStop,
    SupervisorRestart,
    TelemetryBus,
    TelemetryEvent,
    TrainingCheckpoint,
    TrainingEpoch,
    TrainingStep,
    WorkflowException,
    WorkflowStart,
    WorkflowStop,
    build_handler,
    decode_event,
)
from crucible_kitchen.telemetry._handlers import build_handlers


def console_lines(events: list[TelemetryEvent], **options: Any) -> list[str]:
    out = io.StringIO()
    handler = ConsoleHandler(Console(file=out, width=80, color_system=None), **options)
    bus = TelemetryBus("run-1", handlers=[handler])
    for event in events:
        bus.emit(event)
    bus.close()
    return out.getvalue().splitlines()


STAGE_EVENTS: list[TelemetryEvent] = [
    StageStart(stage="forward_backward", path="epochs/batches/fb", loop={"epochs": 0}),
    StageStop(
        stage="forward_backward", path="epochs/batches/fb", loop={"epochs": 0}, duration_s=0.0123
    ),
]


# --- console ------------------------------------------------------------------------------


def test_console_prints_the_fixed_formats() -> None:
    lines = console_lines(
        [
            WorkflowStart(workflow="supervised", recipe="sl_basic"),
            TrainingStep(step=3, total_steps=10, loss=0.5, lr=1e-4),
            TrainingStep(step=4, loss=None, lr=None),
            TrainingEpoch(epoch=0, total_epochs=2),
            TrainingCheckpoint(step=9, name="final", path="runs/r/ckpt"),
            StageException(
                stage="optim_step",
                path="epochs/batches/optim_step",
                attempt=2,
                loop={"epochs": 1, "batches": 7},
                duration_s=1.5,
                error_type="ValueError",
                error_message="learning rate is negative",
                will_retry=False,
            ),
            SupervisorRestart(child="optim_step", attempt=2, reason="crash: ValueError"),
            WorkflowStop(workflow="supervised", status="completed", duration_s=75.0, steps=10),
        ]
    )
    assert lines == [
        "[Kitchen] Workflow supervised started (recipe sl_basic, run run-1)",
        "[Kitchen] Step 4/10 | loss=0.5000 | lr=1.000e-04",
        "[Kitchen] Step 5/? | loss=? | lr=?",
        "[Kitchen] Epoch 1/2 complete",
        "[Kitchen] Checkpoint saved: final at runs/r/ckpt (after 9 steps)",
        "[Kitchen] Stage optim_step failed after 1.5s [epochs=1 batches=7] (attempt 2): "
        "ValueError: learning rate is negative",
        "[Kitchen] Restarted optim_step (attempt 2): crash: ValueError",
        "[Kitchen] Workflow supervised completed in 1m15.0s (10 steps)",
    ]


def test_console_shows_the_failing_stage_of_a_failed_run() -> None:
    (line,) = console_lines(
        [
            WorkflowException(
                workflow="dpo",
                stage="forward_backward",
                path="loop/forward_backward",
                attempt=3,
                error_type="BackendError",
                error_message="server gone",
                duration_s=0.25,
            )
        ]
    )
    assert line == (
        "[Kitchen] Workflow dpo failed after 250.0ms in stage forward_backward "
        "(loop/forward_backward, attempt 3): BackendError: server gone"
    )


def test_console_hides_stage_starts_and_stops_unless_debug() -> None:
    assert console_lines(STAGE_EVENTS) == []
    assert console_lines(STAGE_EVENTS, level="debug") == [
        "[Kitchen] Stage forward_backward started [epochs=0]",
        "[Kitchen] Stage forward_backward completed in 12.3ms [epochs=0]",
    ]
    assert console_lines([*STAGE_EVENTS, TrainingStep(step=0, loss=1.0)], level="error") == []


def test_console_step_every_thins_steps_but_keeps_the_last() -> None:
    events: list[TelemetryEvent] = [TrainingStep(step=i, total_steps=7) for i in range(7)]
    lines = console_lines(events, step_every=3)
    assert [line.split()[2] for line in lines] == ["1/7", "4/7", "7/7"]


def test_console_formats_dpo_rl_and_eval_lines() -> None:
    lines = console_lines(
        [
            DpoStep(
                step=0,
                loss=0.6931,
                accuracy=0.5,
                chosen_reward=0.1,
                rejected_reward=0.1,
                margin=0.0,
                beta=0.1,
                num_pairs=8,
                lr=1e-5,
            ),
            RlStep(step=1, reward_mean=0.5, reward_std=0.25, loss=0.1, kl_sample_train=0.001),
            EvalComplete(model="m", dataset="test", sample_count=10, metrics={"accuracy": 0.9}),
        ]
    )
    assert lines == [
        "[Kitchen] DPO step 1 | loss=0.6931 | acc=0.500 | margin=0.0000 | lr=1.000e-05",
        "[Kitchen] RL step 2 | reward=0.5000±0.2500 | loss=0.1000 | kl=1.00e-03 | lr=?",
        "[Kitchen] Evaluation complete for m on test (10 samples) | accuracy=0.9",
    ]


def test_console_rejects_an_unknown_level() -> None:
    with pytest.raises(TelemetryError, match="loud"):
        ConsoleHandler(level="loud")  # type: ignore[arg-type]


# --- JSONL --------------------------------------------------------------------------------


def test_jsonl_writes_one_flushed_object_per_line(tmp_path: Path) -> None:
    handler = JsonlHandler(tmp_path / "events.jsonl")
    bus = TelemetryBus("r1", handlers=[handler])
    emitted = [bus.emit(TrainingStep(step=i, loss=0.25 * i)) for i in range(3)]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()  # not closed yet
    assert [decode_event(line) for line in lines] == emitted
    assert json.loads(lines[0])["event"] == "crucible_kitchen.training.step"
    bus.close()
    handler.close()
    assert handler.closed
    handler(TrainingStep(step=9))  # ignored once closed
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 3


def test_jsonl_survives_unserializable_metadata(tmp_path: Path) -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    odd_config = {
        "fn": lambda x: x,
        "obj": object(),
        "path": Path("data/train.jsonl"),
        "tuple_keys": {(1, 2): "pair"},
        "error": ValueError("bad"),
        "items": {1, 2},
    }
    with JsonlHandler(tmp_path) as handler:
        bus = TelemetryBus("r", handlers=[handler])
        bus.emit(WorkflowStart(workflow="w", config=odd_config))
        bus.emit(WorkflowStart(workflow="w", config={"cycle": cycle, "ok": 1}))
        bus.emit(TrainingStep(step=1))
        assert bus.statistics().handlers[0].failures == 0
        bus.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["config"]["fn"].startswith("<function")
    assert first["config"]["path"] == "data/train.jsonl"
    assert first["config"]["tuple_keys"] == {"(1, 2)": "pair"}
    assert first["config"]["error"] == "ValueError: bad"
    assert sorted(first["config"]["items"]) == [1, 2]
    assert second["event"] == "crucible_kitchen.workflow.run.start"
    assert second["config"] == {"cycle": {"self": "<cycle>"}, "ok": 1}
    assert second["seq"] == 2
    assert third["step"] == 1


def test_jsonl_appends_to_an_existing_file_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "log.jsonl"
    for step in range(2):
        with JsonlHandler(path) as handler:
            handler(TrainingStep(step=step))
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]


def test_jsonl_reports_a_path_it_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TelemetryError, match="cannot open"):
        JsonlHandler(blocker / "events.jsonl")


# --- metrics rows -------------------------------------------------------------------------


def test_metrics_jsonl_writes_flat_cookbook_rows_for_step_events_only(tmp_path: Path) -> None:
    with MetricsJsonlHandler(str(tmp_path) + "/") as handler:
        bus = TelemetryBus("r", handlers=[handler])
        bus.emit(WorkflowStart(workflow="w"))
        bus.emit(
            TrainingStep(
                step=3, total_steps=8, epoch=1, loss=0.5, lr=1e-4, metrics={"num_tokens": 96.0}
            )
        )
        bus.emit(StageStop(stage="s", path="s", duration_s=0.1))
        bus.emit(EvalComplete(step=3, sample_count=4, metrics={"accuracy": 0.75}))
        bus.emit(RlStep(step=4, reward_mean=0.5, reward_std=0.1, entropy=None))
        bus.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "step": 3,
            "num_tokens": 96.0,
            "epoch": 1,
            "progress": 0.5,
            "learning_rate": 1e-4,
            "train_mean_nll": 0.5,
        },
        {"step": 3, "test/accuracy": 0.75, "test/num_samples": 4},
        {
            "step": 4,
            "env/all/reward/total": 0.5,
            "env/all/reward/total_std": 0.1,
            "num_trajectories": 0,
            "num_tokens": 0,
        },
    ]


# --- callbacks and specs ------------------------------------------------------------------


def test_callback_filters_by_whole_dotted_prefix() -> None:
    seen: list[str] = []
    handler = CallbackHandler(
        lambda e: seen.append(type(e).__name__),
        events=["training", "crucible_kitchen.stage.run.stop"],
    )
    for event in [
        TrainingStep(step=0),
        TrainingEpoch(epoch=0),
        *STAGE_EVENTS,
        WorkflowStart(workflow="w"),
    ]:
        handler(event)
    assert seen == ["TrainingStep", "TrainingEpoch", "StageStop"]
    assert not handler.is_async
    assert handler.accepts("crucible_kitchen.training.step")
    assert not handler.accepts("crucible_kitchen.trainingx.step")


def test_build_handler_understands_the_specs(tmp_path: Path) -> None:
    def fn(event: TelemetryEvent) -> None:
        pass

    console = ConsoleHandler(Console(file=io.StringIO()))
    assert isinstance(build_handler("console"), ConsoleHandler)
    assert build_handler(("console", "debug")).level == 10  # type: ignore[attr-defined]
    assert build_handler(console) is console
    wrapped = build_handler(fn)
    assert isinstance(wrapped, CallbackHandler)
    assert wrapped.fn is fn
    with build_handler(("jsonl", str(tmp_path) + "/")) as events:  # type: ignore[attr-defined]
        assert events.path == tmp_path / "events.jsonl"
    with build_handler(("metrics", tmp_path / "m.jsonl")) as metrics:  # type: ignore[attr-defined]
        assert isinstance(metrics, MetricsJsonlHandler)
        assert metrics.path == tmp_path / "m.jsonl"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown telemetry handler spec 'nope'"),
        ("jsonl", r"needs a path: use \('jsonl', path\)"),
        (("jsonl",), "unknown telemetry handler spec"),
        (("jsonl", 3), "needs a path, got 3"),
        (("console", "loud"), "unknown console level 'loud'"),
        (("bogus", "x"), "unknown telemetry handler spec"),
        (42, "unknown telemetry handler spec 42"),
    ],
)
def test_build_handler_rejects_bad_specs_clearly(spec: Any, match: str) -> None:
    with pytest.raises(TelemetryError, match=match):
        build_handler(spec)


def test_build_handlers_closes_what_it_opened_when_a_later_spec_is_bad(tmp_path: Path) -> None:
    opened: list[JsonlHandler] = []

    class Spy(JsonlHandler):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            opened.append(self)

    with pytest.raises(TelemetryError):
        build_handlers([Spy(tmp_path / "a.jsonl"), "nope"])
    assert opened
    assert all(handler.closed for handler in opened)


def test_console_names_a_registered_version_without_gluing_a_v_to_a_name() -> None:
    lines = console_lines(
        [
            ModelRegistered(name="m", version="3", model_id="id-3"),
            ModelRegistered(name="m", version="sl_basic-1a2b3c4d", model_id="id-4"),
            FeedbackBaselineUpdated(deployment_id="d", model_name="m", model_version="2"),
        ]
    )
    assert lines == [
        "[Kitchen] Model registered: m v3 (id: id-3)",
        "[Kitchen] Model registered: m version sl_basic-1a2b3c4d (id: id-4)",
        "[Kitchen] Baseline of d updated to m v2",
    ]


def test_the_console_wraps_nothing_when_the_output_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Everything printed on a handler's console (the CLI's summary too), not only events."""
    console = ConsoleHandler().console  # on stderr, captured: not a terminal
    path = "runs/" + "a-long-directory-name/" * 6 + "checkpoints/weights/step_000050"
    console.print(f"  last_checkpoint: {path}", markup=False)
    console.print("  ".join(f"metric/{i}=0.5" for i in range(20)))
    assert capsys.readouterr().err.splitlines() == [
        f"  last_checkpoint: {path}",
        "  ".join(f"metric/{i}=0.5" for i in range(20)),
    ]

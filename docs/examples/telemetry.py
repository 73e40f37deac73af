"""The example of docs/guides/telemetry.md: events, handlers, metrics.jsonl and OpenTelemetry.

Run it with ``python docs/examples/telemetry.py``: ``main`` runs on asyncio, then on trio.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import tempfile
from pathlib import Path

import anyio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from crucible_kitchen import Context, Kitchen, Workflow
from crucible_kitchen.telemetry import (
    CallbackHandler,
    ConsoleHandler,
    StageException,
    TelemetryEvent,
    TrainingEpoch,
    TrainingStep,
    configure_tracing,
    decode_event,
    event_name,
    get_span_exporter,
)
from crucible_kitchen.workflows import loop, stage

# --- a workflow that emits training events -------------------------------------------------


async def train_step(ctx: Context) -> None:
    """Pretend to train: the loss halves every step."""
    if ctx.loops["steps"] == 1 and ctx.attempt == 1:
        raise RuntimeError("lost connection")  # retried: a stage.run.exception event
    loss = 2.0 / 2**ctx.step
    ctx.emit(
        TrainingStep(
            step=ctx.step,
            total_steps=ctx.config.epochs * ctx.config.steps,
            epoch=ctx.loops["epochs"],
            loss=loss,
            lr=1e-4,
            metrics={"num_tokens": 128.0},
        )
    )
    ctx.step += 1
    ctx.metrics["loss"] = loss


async def end_epoch(ctx: Context) -> None:
    ctx.emit(
        TrainingEpoch(
            epoch=ctx.loops["epochs"],
            total_epochs=ctx.config.epochs,
            step=ctx.step,
            metrics={"loss": ctx.metrics["loss"]},
        )
    )


workflow = Workflow(
    "telemetry_demo",
    loop(
        "epochs",
        lambda ctx: range(ctx.config.epochs),
        loop("steps", lambda ctx: range(ctx.config.steps), stage("train_step", train_step)),
        stage("end_epoch", end_epoch),
    ),
)
CONFIG = {"epochs": 2, "steps": 2}
EXPECTED = [  # every event of a run, in order
    "crucible_kitchen.workflow.run.start",
    *(
        [
            "crucible_kitchen.stage.run.start",  # train_step, step 0
            "crucible_kitchen.training.step",
            "crucible_kitchen.stage.run.stop",
            "crucible_kitchen.stage.run.start",  # train_step, step 1: attempt 1 fails ...
            "crucible_kitchen.stage.run.exception",
            "crucible_kitchen.supervisor.restart",  # its actor is restarted ...
            "crucible_kitchen.stage.run.start",  # ... and attempt 2 succeeds
            "crucible_kitchen.training.step",
            "crucible_kitchen.stage.run.stop",
            "crucible_kitchen.stage.run.start",  # end_epoch
            "crucible_kitchen.training.epoch",
            "crucible_kitchen.stage.run.stop",
        ]
        * 2
    ),
    "crucible_kitchen.workflow.run.stop",
]


class Captured(logging.Handler):
    """Keeps the log records of the telemetry logger (the failing handler's report)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)

        # 1. The seed's API: a handler for every run from now on.
        Kitchen.attach_telemetry("jsonl", str(logs / "all-runs.jsonl"))
        try:
            await Kitchen.run(workflow, CONFIG, adapters={})
        finally:
            Kitchen.detach_telemetry()
        lines = (logs / "all-runs.jsonl").read_text().splitlines()
        assert [event_name(decode_event(line)) for line in lines] == EXPECTED
        first = json.loads(lines[0])
        assert first["event"] == "crucible_kitchen.workflow.run.start"
        assert (first["seq"], first["workflow"], first["config"]) == (1, "telemetry_demo", CONFIG)

        # 2. Handlers for one run: callables, filtered callbacks, metrics rows, a console.
        seen: list[TelemetryEvent] = []
        losses: list[float | None] = []
        awaited: list[str] = []

        def on_training(event: TelemetryEvent) -> None:
            if isinstance(event, TrainingStep):
                losses.append(event.loss)

        async def slow_sink(event: TelemetryEvent) -> None:  # async: runs in its own task
            await anyio.sleep(0.001)
            awaited.append(event_name(event))

        def broken(event: TelemetryEvent) -> None:
            raise RuntimeError("dashboard unreachable")

        screen = io.StringIO()
        captured = Captured()
        telemetry_log = logging.getLogger("crucible_kitchen.telemetry")
        telemetry_log.addHandler(captured)
        telemetry_log.propagate = False
        try:
            result = await Kitchen.run(
                workflow,
                CONFIG,
                adapters={},
                telemetry=[
                    seen.append,
                    CallbackHandler(on_training, events="training.step"),
                    slow_sink,
                    ("metrics", str(logs) + "/"),
                    ConsoleHandler(Console(file=screen, width=200)),
                    broken,
                ],
            )
        finally:
            telemetry_log.removeHandler(captured)
            telemetry_log.propagate = True

        assert result.status == "completed"  # the broken handler did not break the run
        # The first failure is logged with its traceback, later ones counted, summed up at the end.
        assert [r.levelname for r in captured.records] == ["ERROR", "WARNING"]
        assert "raised 26 times" in captured.records[1].getMessage()
        assert [event_name(e) for e in seen] == EXPECTED
        assert [e.seq for e in seen] == list(range(1, len(EXPECTED) + 1))
        assert losses == [2.0, 1.0, 0.5, 0.25]
        assert awaited == EXPECTED  # async handlers are drained before the run ends
        retried = [e for e in seen if isinstance(e, StageException)]
        assert [(e.stage, e.attempt, e.will_retry) for e in retried] == [
            ("train_step", 1, True),
            ("train_step", 1, True),
        ]

        rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
        assert rows[0] == {
            "step": 0,
            "num_tokens": 128.0,
            "epoch": 0,
            "progress": 0.25,
            "learning_rate": 1e-4,
            "train_mean_nll": 2.0,
        }
        assert [row["step"] for row in rows] == [0, 1, 2, 3]

        printed = screen.getvalue().splitlines()
        assert printed[0].startswith("[Kitchen] Workflow telemetry_demo started (run ")
        assert "[Kitchen] Step 1/4 | loss=2.0000 | lr=1.000e-04" in printed
        assert "[Kitchen] Epoch 1/2 complete | loss=1" in printed
        assert any(line.startswith("[Kitchen] Stage train_step failed") for line in printed)

        # 3. Watching a run from the outside: run.events() replays from the first event.
        async with Kitchen.open() as kitchen:
            run = await kitchen.start(workflow, CONFIG, adapters={})
            streamed = [event_name(event) async for event in run.events()]
            await run.wait()
        assert streamed == EXPECTED

        # 4. OpenTelemetry: one span per run, a child span per stage execution.
        provider = configure_tracing("memory")
        assert provider is not None
        exporter = get_span_exporter(provider)
        assert isinstance(exporter, InMemorySpanExporter)
        async with Kitchen.open(tracer_provider=provider) as kitchen:
            run = await kitchen.start(workflow, CONFIG, adapters={}, run_id="traced-1")
            await run.wait()
        provider.shutdown()
        spans = exporter.get_finished_spans()
        [root] = [span for span in spans if span.parent is None]
        assert root.name == "workflow telemetry_demo"
        assert root.context is not None
        assert dict(root.attributes or {}) == {
            "crucible_kitchen.run_id": "traced-1",
            "crucible_kitchen.workflow": "telemetry_demo",
        }
        assert [event.name for event in root.events] == ["stage.retry", "stage.retry"]
        stages = [span for span in spans if span is not root]
        assert len(stages) == 8  # 2 epochs x (3 train_step attempts + 1 end_epoch)
        assert {span.name for span in stages} == {"train_step", "end_epoch"}
        parents = {span.parent.span_id for span in stages if span.parent is not None}
        assert parents == {root.context.span_id}  # children of the run span, across tasks
        assert dict(stages[0].attributes or {}) == {
            "crucible_kitchen.run_id": "traced-1",
            "crucible_kitchen.workflow": "telemetry_demo",
            "crucible_kitchen.stage": "train_step",
            "crucible_kitchen.stage.path": "epochs/steps/train_step",
            "crucible_kitchen.attempt": 1,
            "crucible_kitchen.loop.epochs": 0,
            "crucible_kitchen.loop.steps": 0,
        }
        failed = [span for span in stages if span.status.status_code.name == "ERROR"]
        assert [(span.attributes or {})["crucible_kitchen.attempt"] for span in failed] == [1, 1]

        # A run started inside an application's span is a child of that span.
        provider = configure_tracing("memory")
        assert provider is not None
        exporter = get_span_exporter(provider)
        assert isinstance(exporter, InMemorySpanExporter)
        app_tracer = provider.get_tracer("my-app")
        async with Kitchen.open(tracer_provider=provider) as kitchen:
            with app_tracer.start_as_current_span("POST /runs") as request:
                run = await kitchen.start(workflow, CONFIG, adapters={}, run_id="traced-2")
            await run.wait()
        provider.shutdown()
        [run_span] = [s for s in exporter.get_finished_spans() if s.name.startswith("workflow")]
        assert run_span.parent is not None
        assert run_span.parent.span_id == request.get_span_context().span_id

        # The same spans as JSON lines, for a file-based pipeline.
        provider = configure_tracing(f"jsonl:{logs}/")
        assert provider is not None
        await Kitchen.run(workflow, CONFIG, adapters={}, tracer_provider=provider)
        provider.shutdown()  # flushes the batch processor
        records = [json.loads(line) for line in (logs / "spans.jsonl").read_text().splitlines()]
        assert len(records) == 9
        assert sum(record["parent_id"] is None for record in records) == 1


if __name__ == "__main__":
    # Each crash of a stage is logged with its traceback; the crashes here are on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.CRITICAL)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")

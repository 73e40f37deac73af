"""OpenTelemetry: one span per run, a child span per stage execution, across actors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.telemetry import configure_tracing, get_span_exporter
from crucible_kitchen.workflows import Workflow, loop, stage

if TYPE_CHECKING:
    from crucible_kitchen.stages import Context

pytestmark = pytest.mark.anyio


async def tick(ctx: Context) -> None:
    ctx.step += 1


async def flaky(ctx: Context) -> None:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


async def test_stage_spans_are_children_of_the_run_span() -> None:
    provider = configure_tracing("memory")
    assert provider is not None
    exporter = get_span_exporter(provider)
    assert isinstance(exporter, InMemorySpanExporter)
    wf = Workflow("traced", loop("epochs", 2, stage("tick", tick)), stage("flaky", flaky))
    await Kitchen.run(wf, adapters={}, tracer_provider=provider, run_id="run-1")
    provider.shutdown()
    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "workflow traced"]
    assert len(runs) == 1
    run = runs[0]
    stages = [s for s in spans if s is not run]
    assert len(stages) == 4  # two ticks, and flaky twice
    for span in stages:
        assert span.parent is not None
        assert span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
    attributes: list[dict[str, Any]] = [dict(s.attributes or {}) for s in stages]
    ticks = [a for a in attributes if a["crucible_kitchen.stage"] == "tick"]
    assert [a["crucible_kitchen.loop.epochs"] for a in ticks] == [0, 1]
    assert all(a["crucible_kitchen.run_id"] == "run-1" for a in attributes)
    flakes = [
        s for s in stages if s.attributes and s.attributes["crucible_kitchen.stage"] == "flaky"
    ]
    assert [s.attributes["crucible_kitchen.attempt"] for s in flakes if s.attributes] == [1, 2]
    assert flakes[0].status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in flakes[0].events)
    assert [e.name for e in run.events] == ["stage.retry"]

"""OpenTelemetry: run and stage spans across tasks, exceptions, events, exporters."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import crucible_kitchen.telemetry as telemetry
from crucible_kitchen.errors import TelemetryError
from crucible_kitchen.telemetry import (
    add_event,
    configure_tracing,
    extract_context,
    get_span_exporter,
    get_tracer,
    inject_context,
    record_exception,
    run_attributes,
    stage_attributes,
    start_run_span,
)
from crucible_kitchen.telemetry._tracing import start_stage_span

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = configure_tracing("memory")
    assert provider is not None
    yield provider
    provider.shutdown()


def finished(provider: TracerProvider) -> dict[str, ReadableSpan]:
    exporter = get_span_exporter(provider)
    assert isinstance(exporter, InMemorySpanExporter)
    return {span.name: span for span in exporter.get_finished_spans()}


def span_id(span: Any) -> int:
    return int(span.get_span_context().span_id)


async def test_stage_spans_started_in_other_tasks_are_children_of_the_run_span(
    provider: TracerProvider,
) -> None:
    tracer = get_tracer(provider)
    run = start_run_span(
        tracer, "workflow sl_basic", run_attributes(run_id="r1", workflow="supervised")
    )
    carrier = inject_context(run)
    assert set(carrier) >= {"traceparent"}

    async def stage_actor(name: str, index: int) -> None:
        attributes = stage_attributes(
            run_id="r1",
            workflow="supervised",
            stage=name,
            path=f"epochs/{name}",
            attempt=1,
            loop={"epochs": index},
        )
        span = start_stage_span(tracer, dict(carrier), f"stage {name}", attributes)
        await anyio.lowlevel.checkpoint()
        span.end()

    # The tasks are spawned while an unrelated span is current in the spawning task: a stage
    # span must still hang under the run span (pitfall P10), not under "supervisor".
    with tracer.start_as_current_span("supervisor"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stage_actor, "forward_backward", 0)
            tg.start_soon(stage_actor, "optim_step", 1)
    run.end()

    spans = finished(provider)
    run_span = spans["workflow sl_basic"]
    for name, index in (("forward_backward", 0), ("optim_step", 1)):
        stage = spans[f"stage {name}"]
        assert stage.parent is not None
        assert stage.parent.span_id == span_id(run_span)
        assert stage.context is not None
        assert run_span.context is not None
        assert stage.context.trace_id == run_span.context.trace_id
        assert stage.attributes is not None
        assert stage.attributes["crucible_kitchen.stage"] == name
        assert stage.attributes["crucible_kitchen.stage.path"] == f"epochs/{name}"
        assert stage.attributes["crucible_kitchen.attempt"] == 1
        assert stage.attributes["crucible_kitchen.loop.epochs"] == index
        assert stage.attributes["crucible_kitchen.run_id"] == "r1"
    assert run_span.parent is None
    assert run_span.attributes == {
        "crucible_kitchen.run_id": "r1",
        "crucible_kitchen.workflow": "supervised",
    }


async def test_a_context_object_works_as_parent_and_none_starts_a_new_trace(
    provider: TracerProvider,
) -> None:
    tracer = get_tracer(provider)
    with tracer.start_as_current_span("caller") as caller:
        run = start_run_span(tracer, "run")
        orphan = start_stage_span(tracer, None, "orphan")
        child = start_stage_span(tracer, extract_context(inject_context(run)), "child")
    for span in (child, orphan, run):
        span.end()
    spans = finished(provider)
    assert spans["run"].parent is not None
    assert spans["run"].parent.span_id == span_id(caller)  # the caller's current span
    assert spans["orphan"].parent is None  # never the ambient span
    assert spans["child"].parent is not None
    assert spans["child"].parent.span_id == span_id(run)


async def test_record_exception_flattens_groups_and_sets_error(provider: TracerProvider) -> None:
    tracer = get_tracer(provider)
    span = start_run_span(tracer, "failed")
    group = ExceptionGroup(
        "stage failures",
        [ValueError("bad lr"), ExceptionGroup("inner", [KeyError("k"), TypeError("t")])],
    )
    record_exception(span, group)
    span.end()
    cancelled = start_run_span(tracer, "cancelled")
    record_exception(cancelled, BaseExceptionGroup("cancel", [KeyboardInterrupt()]))
    cancelled.end()

    spans = finished(provider)
    failed = spans["failed"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: bad lr (+2 more)"
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "ValueError"
    recorded = [e.attributes["exception.type"] for e in failed.events if e.attributes]
    assert recorded == ["ValueError", "KeyError", "TypeError"]
    assert spans["cancelled"].status.status_code is StatusCode.UNSET
    assert spans["cancelled"].events == ()


async def test_add_event_records_restarts_and_drops_none(provider: TracerProvider) -> None:
    span = start_run_span(get_tracer(provider), "run", {"crucible_kitchen.recipe": None})
    attributes = {
        "child": "optim_step",
        "attempt": 2,
        "reason": None,
        "ids": [1, 2],
        "mix": [1, 0.5],
    }
    add_event(span, "restart", attributes)
    span.end()
    run = finished(provider)["run"]
    assert run.attributes == {}
    (event,) = run.events
    assert event.name == "restart"
    assert dict(event.attributes or {}) == {
        "child": "optim_step",
        "attempt": 2,
        "ids": (1, 2),
        "mix": (1.0, 0.5),
    }


async def test_tracing_off_gives_a_noop_tracer_and_an_empty_carrier() -> None:
    assert configure_tracing(None) is None
    tracer = get_tracer(None)
    span = start_run_span(tracer, "run")
    assert not span.is_recording()
    assert inject_context(span) == {}
    stage = start_stage_span(tracer, {}, "stage")
    assert not stage.is_recording()
    stage.end()
    span.end()


async def test_configure_tracing_never_touches_the_global_provider(
    provider: TracerProvider,
) -> None:
    assert trace.get_tracer_provider() is not provider
    other = configure_tracing("memory")
    assert other is not None
    assert other is not provider
    assert get_span_exporter(other) is not get_span_exporter(provider)
    other.shutdown()


async def test_the_jsonl_span_exporter_writes_one_span_a_line(tmp_path: Path) -> None:
    provider = configure_tracing(f"jsonl:{tmp_path}/")
    assert provider is not None
    tracer = get_tracer(provider)
    run = start_run_span(tracer, "run", {"crucible_kitchen.run_id": "r9"})
    stage = start_stage_span(tracer, inject_context(run), "stage")
    add_event(stage, "retry", {"attempt": 2})
    record_exception(stage, RuntimeError("boom"))
    stage.end()
    run.end()
    provider.shutdown()  # flushes the batch processor, closes the file

    lines = (tmp_path / "spans.jsonl").read_text().splitlines()
    records = {r["name"]: r for r in map(json.loads, lines)}
    assert set(records) == {"run", "stage"}
    assert records["stage"]["parent_id"] == records["run"]["span_id"]
    assert records["stage"]["trace_id"] == records["run"]["trace_id"]
    assert records["run"]["parent_id"] is None
    assert records["run"]["attributes"] == {"crucible_kitchen.run_id": "r9"}
    assert records["stage"]["status"] == {"code": "ERROR", "description": "RuntimeError: boom"}
    assert [e["name"] for e in records["stage"]["events"]] == ["retry", "exception"]
    assert records["stage"]["end_time_ns"] >= records["stage"]["start_time_ns"] > 0
    assert isinstance(get_span_exporter(provider), telemetry.JsonlSpanExporter)


@pytest.mark.parametrize(
    ("exporter", "match"),
    [
        ("zipkin", "unknown span exporter 'zipkin'"),
        ("jsonl:", "needs a path"),
        (42, "unknown span exporter 42"),
    ],
)
async def test_configure_tracing_rejects_what_it_cannot_build(exporter: Any, match: str) -> None:
    with pytest.raises(TelemetryError, match=match):
        configure_tracing(exporter)


async def test_otlp_without_an_exporter_package_says_which_extra_installs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for transport in ("http", "grpc"):  # a None entry makes the import fail
        monkeypatch.setitem(
            sys.modules, f"opentelemetry.exporter.otlp.proto.{transport}.trace_exporter", None
        )
    with pytest.raises(TelemetryError, match=r"pip install 'crucible-kitchen\[otel\]'"):
        configure_tracing("otlp:http://127.0.0.1:4318")


async def test_get_span_exporter_refuses_a_foreign_provider() -> None:
    foreign = TracerProvider()
    with pytest.raises(TelemetryError, match="not made by configure_tracing"):
        get_span_exporter(foreign)
    foreign.shutdown()

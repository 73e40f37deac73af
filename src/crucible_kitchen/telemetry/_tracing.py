"""OpenTelemetry spans for runs and stages, on the OpenTelemetry API only.

One span per workflow run and one child span per stage execution attempt. A stage runs in
another task than the workflow (its actor), so its span never takes its parent from the ambient
context (which follows whoever spawned the task, see runtime pitfall P10): the workflow puts
:func:`inject_context` of the run span into the ``Execute`` message, and the stage actor starts
its span with :func:`start_stage_span` from that carrier. Restarts and retries are span events
(:func:`add_event`).

Attribute names: ``crucible_kitchen.run_id``, ``crucible_kitchen.workflow``,
``crucible_kitchen.recipe``, ``crucible_kitchen.stage``, ``crucible_kitchen.stage.path``,
``crucible_kitchen.attempt`` and ``crucible_kitchen.loop.<name>`` per enclosing loop.

The OpenTelemetry SDK is imported only by :func:`configure_tracing`; it builds a private
``TracerProvider`` and never touches the global one. With tracing off, :func:`get_tracer`
returns a no-op tracer, whose spans cost a few microseconds.
"""

from __future__ import annotations

import importlib
import sys
import weakref
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from crucible_kitchen.errors import TelemetryError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = (
    "add_event",
    "configure_tracing",
    "extract_context",
    "get_span_exporter",
    "get_tracer",
    "inject_context",
    "record_exception",
    "run_attributes",
    "stage_attributes",
    "start_run_span",
    "start_stage_span",
)

INSTRUMENTATION_NAME = "crucible_kitchen"
ATTR_RUN_ID = "crucible_kitchen.run_id"
ATTR_WORKFLOW = "crucible_kitchen.workflow"
ATTR_RECIPE = "crucible_kitchen.recipe"
ATTR_STAGE = "crucible_kitchen.stage"
ATTR_STAGE_PATH = "crucible_kitchen.stage.path"
ATTR_ATTEMPT = "crucible_kitchen.attempt"
ATTR_LOOP_PREFIX = "crucible_kitchen.loop."

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP_TRACER = trace.NoOpTracer()
_EXPORTERS: weakref.WeakKeyDictionary[SdkTracerProvider, SpanExporter] = weakref.WeakKeyDictionary()
_PRIMITIVES = (str, bool, int, float)


# --- tracers and providers ------------------------------------------------------------------


def get_tracer(provider: TracerProvider | None = None) -> Tracer:
    """The crucible-kitchen tracer of ``provider``, or a no-op tracer when it is ``None``.

    Pass ``opentelemetry.trace.get_tracer_provider()`` to trace into an application's own
    (global) OpenTelemetry setup.
    """
    if provider is None:
        return _NOOP_TRACER
    return provider.get_tracer(INSTRUMENTATION_NAME)


def configure_tracing(
    exporter: str | SpanExporter | None = None, *, service_name: str = "crucible-kitchen"
) -> SdkTracerProvider | None:
    """Build a private SDK ``TracerProvider`` exporting to ``exporter``; ``None`` turns tracing off.

    Exporters: ``"memory"`` (an ``InMemorySpanExporter``, for tests and dashboards; fetch it
    with :func:`get_span_exporter`), ``"console"`` (stderr), ``"otlp"`` (OTLP over
    HTTP/protobuf, installed by the ``otel`` extra; the collector and headers come from the
    standard ``OTEL_EXPORTER_OTLP_*`` environment variables, default ``http://localhost:4318``),
    ``"otlp:<endpoint>"`` (the same, to the collector at ``<endpoint>``, e.g.
    ``"otlp:http://collector:4318"``; spans go to ``<endpoint>/v1/traces``), ``"jsonl:<path>"``
    (finished spans as JSON lines, see ``JsonlSpanExporter``; a directory gets ``spans.jsonl``),
    or any ``SpanExporter`` instance.
    An in-memory exporter sits behind a ``SimpleSpanProcessor``, every other one behind a
    ``BatchSpanProcessor``. The sampler is the SDK's default, ``ParentBased(ALWAYS_ON)``, in a
    version with less work per span, unless ``OTEL_TRACES_SAMPLER`` names another one. The
    global provider is never set. Call ``provider.shutdown()`` at
    the end to flush the batch and close the exporter.

    Raises:
        TelemetryError: an unknown exporter name, or a package it needs is not installed.
    """
    if exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )
        from opentelemetry.sdk.trace.export import SpanExporter as SdkSpanExporter
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError as exc:
        raise TelemetryError(
            "tracing needs the OpenTelemetry SDK: pip install 'crucible-kitchen[otel]' "
            "(or opentelemetry-sdk)"
        ) from exc
    if isinstance(exporter, str):
        span_exporter = _named_exporter(exporter)
    elif isinstance(exporter, SdkSpanExporter):
        span_exporter = exporter
    else:
        raise TelemetryError(
            f"unknown span exporter {exporter!r}: expected 'memory', 'console', 'otlp', "
            "'otlp:<endpoint>', 'jsonl:<path>' or a SpanExporter"
        )
    from ._sampler import default_sampler

    provider = SdkProvider(
        resource=Resource.create({"service.name": service_name}), sampler=default_sampler()
    )
    if isinstance(span_exporter, InMemorySpanExporter):
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    _EXPORTERS[provider] = span_exporter
    return provider


def get_span_exporter(provider: SdkTracerProvider) -> SpanExporter:
    """The exporter :func:`configure_tracing` attached to ``provider``.

    Raises:
        TelemetryError: ``provider`` was not made by :func:`configure_tracing`.
    """
    try:
        return _EXPORTERS[provider]
    except KeyError:
        raise TelemetryError(f"{provider!r} was not made by configure_tracing") from None


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    """OTLP over HTTP/protobuf (the ``otel`` extra), else over gRPC if only that is installed.

    ``endpoint`` is the collector's base URL, as in ``OTEL_EXPORTER_OTLP_ENDPOINT``: over HTTP
    the spans go to ``<endpoint>/v1/traces``. ``None`` leaves it to the standard
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` variables (default ``http://localhost:4318``).
    """
    for module, path in (
        ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "/v1/traces"),
        ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", ""),
    ):
        try:
            otlp = importlib.import_module(module)
        except ImportError:
            continue
        if endpoint is None:
            exporter: SpanExporter = otlp.OTLPSpanExporter()
        else:
            exporter = otlp.OTLPSpanExporter(endpoint=endpoint.rstrip("/") + path)
        return exporter
    raise TelemetryError(
        "the 'otlp' span exporter needs the OTLP exporter package: "
        "pip install 'crucible-kitchen[otel]' (or opentelemetry-exporter-otlp-proto-http)"
    )


def _named_exporter(name: str) -> SpanExporter:
    if name == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        return InMemorySpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    if name == "otlp" or name.startswith("otlp:"):
        return _otlp_exporter(name.removeprefix("otlp").removeprefix(":") or None)
    if name.startswith("jsonl:"):
        path = name.removeprefix("jsonl:")
        if not path:
            raise TelemetryError("the 'jsonl:<path>' span exporter needs a path")
        from ._span_exporter import JsonlSpanExporter

        return JsonlSpanExporter(path)
    raise TelemetryError(
        f"unknown span exporter {name!r}: expected 'memory', 'console', 'otlp', "
        "'otlp:<endpoint>' or 'jsonl:<path>'"
    )


# --- attributes -----------------------------------------------------------------------------


def run_attributes(
    *, run_id: str, workflow: str, recipe: str | None = None
) -> dict[str, AttributeValue]:
    """The attributes of a run span."""
    attributes: dict[str, AttributeValue] = {ATTR_RUN_ID: run_id, ATTR_WORKFLOW: workflow}
    if recipe is not None:
        attributes[ATTR_RECIPE] = recipe
    return attributes


def stage_attributes(
    *,
    run_id: str,
    workflow: str,
    stage: str,
    path: str,
    attempt: int,
    loop: Mapping[str, int] | None = None,
) -> dict[str, AttributeValue]:
    """The attributes of a stage span: run, workflow, stage, path, attempt, loop indices."""
    attributes: dict[str, AttributeValue] = {
        ATTR_RUN_ID: run_id,
        ATTR_WORKFLOW: workflow,
        ATTR_STAGE: stage,
        ATTR_STAGE_PATH: path,
        ATTR_ATTEMPT: attempt,
    }
    if loop:
        for name, index in loop.items():
            attributes[ATTR_LOOP_PREFIX + name] = index
    return attributes


def _clean(attributes: Mapping[str, object] | None) -> dict[str, AttributeValue] | None:
    """Attributes OpenTelemetry accepts: ``None`` values dropped, odd values as strings."""
    if not attributes:
        return None
    clean: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, _PRIMITIVES):
            clean[key] = value
        elif isinstance(value, list | tuple):
            clean[key] = _sequence(value)
        else:
            clean[key] = str(value)
    return clean


def _sequence(values: list[object] | tuple[object, ...]) -> AttributeValue:
    """A homogeneous tuple, as OpenTelemetry requires; mixed numbers become floats."""
    kinds = {bool if isinstance(v, bool) else type(v) for v in values}
    if kinds <= {str}:
        return tuple(str(v) for v in values)
    if kinds <= {bool}:
        return tuple(bool(v) for v in values)
    if kinds <= {int}:
        return tuple(int(v) for v in values if isinstance(v, int))
    if kinds <= {int, float}:
        return tuple(float(v) for v in values if isinstance(v, int | float))
    return str(values)


# --- spans ----------------------------------------------------------------------------------


def start_run_span(
    tracer: Tracer, name: str, attributes: Mapping[str, object] | None = None
) -> Span:
    """Start (not make current) the span of a run: a child of the caller's current span, if any.

    The caller ends it with ``span.end()``, after :func:`record_exception` if the run failed.
    """
    return tracer.start_span(name, attributes=_clean(attributes))


def start_stage_span(
    tracer: Tracer,
    parent_context: Context | Mapping[str, str] | None,
    name: str,
    attributes: Mapping[str, object] | None = None,
) -> Span:
    """Start (not make current) a stage span under an explicit parent.

    Args:
        tracer: from :func:`get_tracer`.
        parent_context: the run's context: a ``Context``, or the carrier from
            :func:`inject_context` as it arrived in the ``Execute`` message. ``None`` starts a
            new trace; the ambient current span is never used.
        name: the span name, e.g. ``"stage forward_backward"``.
        attributes: usually :func:`stage_attributes`; ``None`` values are dropped.
    """
    if parent_context is None:
        context = Context()
    elif isinstance(parent_context, Context):
        context = parent_context
    else:
        context = extract_context(parent_context)
    return tracer.start_span(name, context=context, attributes=_clean(attributes))


def inject_context(span: Span) -> dict[str, str]:
    """A small W3C TraceContext carrier (``traceparent``, ``tracestate``) naming ``span``.

    Empty when ``span`` is not recording-capable (tracing off): extracting it starts nothing.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, Context()))
    return carrier


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The context a carrier from :func:`inject_context` describes (empty for ``{}``)."""
    return _PROPAGATOR.extract(dict(carrier), context=Context())


def record_exception(span: Span, exc: BaseException) -> None:
    """Record each error in ``exc`` on ``span`` and set its status to ERROR.

    Exception groups are flattened, so every leaf error becomes its own ``exception`` span
    event. Leaves that are not ``Exception`` subclasses (cancellation, ``KeyboardInterrupt``)
    are not errors: a group of only those changes nothing. The status description is the first
    error's ``"Type: message"`` (plus ``"(+N more)"``), and ``error.type`` its class name.
    """
    errors = [leaf for leaf in _leaves(exc) if isinstance(leaf, Exception)]
    if not errors:
        return
    for error in errors:
        span.record_exception(error)
    first = errors[0]
    description = f"{type(first).__name__}: {first}"
    if len(errors) > 1:
        description += f" (+{len(errors) - 1} more)"
    span.set_attribute("error.type", type(first).__qualname__)
    span.set_status(Status(StatusCode.ERROR, description))


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def add_event(span: Span, name: str, attributes: Mapping[str, object] | None = None) -> None:
    """Add a span event (``"restart"``, ``"retry"``, ...); ``None`` attribute values are dropped."""
    span.add_event(name, attributes=_clean(attributes))

"""Telemetry: typed run events, the per-run event bus, handlers, and OpenTelemetry spans.

- Events (``crucible_kitchen.workflow.run.start``, ``...stage.run.stop``, ``...training.step``,
  ...): frozen msgspec structs, one tagged union :data:`TelemetryEvent`, JSON via
  :func:`encode_event` / :func:`decode_event`.
- Handlers (a :data:`Handler` is any callable taking an event, sync or async):
  :class:`ConsoleHandler` (rich), :class:`JsonlHandler` (every event),
  :class:`MetricsJsonlHandler` (tinker-cookbook ``metrics.jsonl`` rows, see
  :func:`metrics_row`), :class:`CallbackHandler`; a run takes them, or specs such as
  ``"console"`` or ``("jsonl", "runs/")`` (:data:`HandlerSpec`).
- Each run has one event bus: a synchronous, cheap ``emit`` that stamps ``seq`` and fans out in
  order to sync handlers, async handlers (bounded buffers) and subscribers (``run.events()``);
  ``run.telemetry_statistics()`` returns its :class:`BusStatistics`.
- Tracing: a run span and explicitly parented stage spans, built on the OpenTelemetry API;
  :func:`configure_tracing` builds a private SDK provider (spans to memory, the console,
  OTLP, or a :class:`JsonlSpanExporter`), and :func:`get_span_exporter` returns its exporter.

The names re-exported here but not in ``__all__`` (the bus, span helpers and attribute names)
are shared with the library's other packages, not public.

This package imports only ``crucible_kitchen.errors`` and the root's bottom-level helpers from
crucible-kitchen. rich is imported when a :class:`ConsoleHandler` is made, and the OpenTelemetry
SDK by :func:`configure_tracing` or on first use of :class:`JsonlSpanExporter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_kitchen._lazy import lazy_exports

from ._bus import BusStatistics as BusStatistics
from ._bus import Handler as Handler
from ._bus import HandlerStatistics as HandlerStatistics
from ._bus import TelemetryBus as TelemetryBus
from ._events import STEP_EVENTS as STEP_EVENTS
from ._events import BaseEvent as BaseEvent
from ._events import DistillationStep as DistillationStep
from ._events import DpoDatasetBuilt as DpoDatasetBuilt
from ._events import DpoStep as DpoStep
from ._events import EvalComplete as EvalComplete
from ._events import EvalSample as EvalSample
from ._events import FeedbackBaselineUpdated as FeedbackBaselineUpdated
from ._events import FeedbackDataCurated as FeedbackDataCurated
from ._events import FeedbackDataExported as FeedbackDataExported
from ._events import FeedbackTriggersChecked as FeedbackTriggersChecked
from ._events import ModelRegistered as ModelRegistered
from ._events import RlAdvantagesComputed as RlAdvantagesComputed
from ._events import RlBatchAssembled as RlBatchAssembled
from ._events import RlEnvGroupBuilt as RlEnvGroupBuilt
from ._events import RlRolloutComplete as RlRolloutComplete
from ._events import RlStep as RlStep
from ._events import StageException as StageException
from ._events import StageStart as StageStart
from ._events import StageStop as StageStop
from ._events import SupervisorRestart as SupervisorRestart
from ._events import TelemetryEvent as TelemetryEvent
from ._events import TrainingCheckpoint as TrainingCheckpoint
from ._events import TrainingCheckpointDamaged as TrainingCheckpointDamaged
from ._events import TrainingEpoch as TrainingEpoch
from ._events import TrainingResume as TrainingResume
from ._events import TrainingStep as TrainingStep
from ._events import WorkflowException as WorkflowException
from ._events import WorkflowStart as WorkflowStart
from ._events import WorkflowStop as WorkflowStop
from ._events import decode_event as decode_event
from ._events import encode_event as encode_event
from ._events import event_name as event_name
from ._handlers import CallbackHandler as CallbackHandler
from ._handlers import ConsoleHandler as ConsoleHandler
from ._handlers import HandlerSpec as HandlerSpec
from ._handlers import JsonlHandler as JsonlHandler
from ._handlers import MetricsJsonlHandler as MetricsJsonlHandler
from ._handlers import build_handler as build_handler
from ._handlers import metrics_row as metrics_row
from ._tracing import ATTR_ATTEMPT as ATTR_ATTEMPT
from ._tracing import ATTR_LOOP_PREFIX as ATTR_LOOP_PREFIX
from ._tracing import add_event as add_event
from ._tracing import configure_tracing as configure_tracing
from ._tracing import extract_context as extract_context
from ._tracing import get_span_exporter as get_span_exporter
from ._tracing import get_tracer as get_tracer
from ._tracing import inject_context as inject_context
from ._tracing import record_exception as record_exception
from ._tracing import run_attributes as run_attributes
from ._tracing import stage_attributes as stage_attributes
from ._tracing import start_run_span as start_run_span

if TYPE_CHECKING:
    from ._span_exporter import JsonlSpanExporter as JsonlSpanExporter

__all__ = (
    "STEP_EVENTS",
    "BaseEvent",
    "BusStatistics",
    "CallbackHandler",
    "ConsoleHandler",
    "DistillationStep",
    "DpoDatasetBuilt",
    "DpoStep",
    "EvalComplete",
    "EvalSample",
    "FeedbackBaselineUpdated",
    "FeedbackDataCurated",
    "FeedbackDataExported",
    "FeedbackTriggersChecked",
    "Handler",
    "HandlerSpec",
    "HandlerStatistics",
    "JsonlHandler",
    "JsonlSpanExporter",
    "MetricsJsonlHandler",
    "ModelRegistered",
    "RlAdvantagesComputed",
    "RlBatchAssembled",
    "RlEnvGroupBuilt",
    "RlRolloutComplete",
    "RlStep",
    "StageException",
    "StageStart",
    "StageStop",
    "SupervisorRestart",
    "TelemetryEvent",
    "TrainingCheckpoint",
    "TrainingCheckpointDamaged",
    "TrainingEpoch",
    "TrainingResume",
    "TrainingStep",
    "WorkflowException",
    "WorkflowStart",
    "WorkflowStop",
    "configure_tracing",
    "decode_event",
    "encode_event",
    "event_name",
    "get_span_exporter",
    "metrics_row",
)


# JsonlSpanExporter imports the OpenTelemetry SDK, so only on demand.
__getattr__, __dir__ = lazy_exports(__name__, {"JsonlSpanExporter": "_span_exporter"})

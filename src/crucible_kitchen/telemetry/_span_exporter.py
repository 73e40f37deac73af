"""A span exporter writing finished spans as JSON lines (imports the OpenTelemetry SDK)."""

from __future__ import annotations

import logging
import threading
from typing import IO, TYPE_CHECKING, Any

import msgspec
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from crucible_kitchen.errors import TelemetryError

from ._handlers import _enc_hook, _resolve

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ("JsonlSpanExporter",)

logger = logging.getLogger("crucible_kitchen.telemetry")


class JsonlSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object a line, flushed per batch.

    A line holds ``trace_id`` and ``span_id`` (hex), ``parent_id`` (hex or ``null``), ``name``,
    ``kind``, ``start_time_ns``, ``end_time_ns``, ``attributes``, ``status`` (``code`` and
    ``description``) and ``events`` (``name``, ``timestamp_ns``, ``attributes``). Safe to call
    from the batch processor's thread.

    Args:
        path: the file, or a directory (existing, or with a trailing slash) to hold
            ``spans.jsonl``; parents are created, the file is appended to.

    Raises:
        TelemetryError: the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _resolve(path, "spans.jsonl")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - see shutdown()
        except OSError as exc:
            raise TelemetryError(f"cannot open span log {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans; FAILURE after shutdown or on an I/O error (logged)."""
        lines = b"".join(self._encoder.encode(span_record(span)) + b"\n" for span in spans)
        with self._lock:
            if self._file is None:
                return SpanExportResult.FAILURE
            try:
                self._file.write(lines)
                self._file.flush()
            except OSError:
                logger.exception("writing spans to %s failed", self.path)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the file (every export already flushes)."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        """Close the file; later exports fail."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()

    def __repr__(self) -> str:
        return f"JsonlSpanExporter({str(self.path)!r})"


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSON-able record of one finished span, as :class:`JsonlSpanExporter` writes it."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": None if parent is None else format(parent.span_id, "016x"),
        "name": span.name,
        "kind": span.kind.name,
        "start_time_ns": span.start_time,
        "end_time_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "events": [
            {
                "name": event.name,
                "timestamp_ns": event.timestamp,
                "attributes": dict(event.attributes or {}),
            }
            for event in span.events
        ],
    }

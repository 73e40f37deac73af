"""The ``otlp`` exporter of the ``otel`` extra, against an OTLP/HTTP receiver on 127.0.0.1.

The receiver is a small ``http.server`` in a thread of its own, accepting ``POST /v1/traces``
and decoding each body with ``opentelemetry-proto``: the OTLP exporter posts from the batch
processor's thread, and ``provider.shutdown()`` (which flushes it) blocks the event loop, so
the receiver must not depend on that loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from crucible_kitchen import Kitchen
from crucible_kitchen.errors import TelemetryError
from crucible_kitchen.telemetry import StageStart, TelemetryEvent, configure_tracing, decode_event

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.proto.trace.v1.trace_pb2 import Span

pytestmark = pytest.mark.anyio

NOOP_RUN: dict[str, Any] = {"max_steps": 3}
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


@dataclass
class Receiver:
    """What an OTLP/HTTP collector received: every span, and the paths it was posted to."""

    url: str
    spans: list[Span] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    service_names: set[str] = field(default_factory=set)

    def by_name(self) -> dict[str, Span]:
        return {span.name: span for span in self.spans}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received: Receiver | None = None
    lock = threading.Lock()

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            assert received is not None
            with lock:
                received.paths.append(self.path)
                for resource_spans in request.resource_spans:
                    for attribute in resource_spans.resource.attributes:
                        if attribute.key == "service.name":
                            received.service_names.add(attribute.value.string_value)
                    for scope_spans in resource_spans.scope_spans:
                        received.spans.extend(scope_spans.spans)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test reads what arrived, not the log

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    host, port = server.server_address[:2]
    received = Receiver(url=f"http://{host!s}:{port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def stage_name(span: Span) -> str | None:
    names = [a.value.string_value for a in span.attributes if a.key == "crucible_kitchen.stage"]
    return names[0] if names else None


def assert_one_run_trace(
    received: Receiver, run_span: Span, run_id: str, events: list[TelemetryEvent]
) -> None:
    """The run span names ``run_id``; a span arrived for every stage the run started (as its
    events tell), each a child of the run span, in its trace."""
    attributes = {a.key: a.value.string_value for a in run_span.attributes}
    assert attributes["crucible_kitchen.run_id"] == run_id
    stages = [span for span in received.spans if stage_name(span) is not None]
    started = [event.stage for event in events if isinstance(event, StageStart)]
    assert "submit_step" in started
    assert sorted(stage_name(span) or "" for span in stages) == sorted(started)
    assert {span.parent_span_id for span in stages} == {run_span.span_id}
    assert {span.trace_id for span in stages} == {run_span.trace_id}


async def test_a_kitchen_run_reaches_the_collector_of_the_standard_env_variable(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    provider = configure_tracing("otlp", service_name="otlp-test")
    assert provider is not None
    events: list[TelemetryEvent] = []
    result = await Kitchen.run(
        "supervised",
        NOOP_RUN,
        adapters="noop",
        run_id="otlp-1",
        telemetry=[events.append],
        tracer_provider=provider,
    )
    assert result.status == "completed"
    provider.shutdown()  # flushes the batch to the receiver
    assert set(receiver.paths) == {"/v1/traces"}
    assert receiver.service_names == {"otlp-test"}
    run_span = receiver.by_name()["workflow supervised"]
    assert run_span.parent_span_id == b""
    assert_one_run_trace(receiver, run_span, "otlp-1", events)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiohttp runs on asyncio only
async def test_the_request_span_that_started_a_run_reaches_an_explicit_endpoint(
    receiver: Receiver, tmp_path: Path
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from crucible_kitchen.service import SERVICE_KEY, create_app

    provider = configure_tracing(f"otlp:{receiver.url}/")
    assert provider is not None
    app = create_app(root=tmp_path / "runs", tracer_provider=provider)
    async with TestClient(TestServer(app)) as client:
        traceparent = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
        response = await client.post(
            "/runs",
            json={"recipe": "supervised", "adapters": "noop", "config": NOOP_RUN},
            headers={"traceparent": traceparent},
        )
        assert response.status == 202, await response.text()
        run_id = (await response.json())["run_id"]
        service = app[SERVICE_KEY]
        # The run's handle belongs to the kitchen loop and is dropped once the run ends (it
        # may have ended already): wait through the service and read its stored events.
        assert (await service.result(service.run(run_id))).status == "completed"
        events = [decode_event(stored.data) async for stored in service.events(run_id, 0)]
    provider.shutdown()
    assert set(receiver.paths) == {"/v1/traces"}
    spans = receiver.by_name()
    request, run_span = spans["POST /runs"], spans["workflow supervised"]
    assert request.trace_id == CALLER_TRACE.to_bytes(16, "big")
    assert request.parent_span_id == CALLER_SPAN.to_bytes(8, "big")
    assert run_span.parent_span_id == request.span_id
    assert run_span.trace_id == request.trace_id
    assert_one_run_trace(receiver, run_span, run_id, events)


def test_an_unknown_exporter_name_still_says_which_names_exist() -> None:
    with pytest.raises(TelemetryError, match="'otlp:<endpoint>'"):
        configure_tracing("otlpx")

"""OpenTelemetry: the HTTP request span that starts a run is the parent of the run's span.

aiohttp runs only on asyncio, so this test runs on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1; spans go to the SDK's in-memory exporter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from _service_support import NOOP_RUN, serving, start

from crucible_kitchen.telemetry import configure_tracing, get_span_exporter

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


async def test_the_request_span_is_the_parent_of_the_run_span(tmp_path: Path) -> None:
    provider = configure_tracing("memory")
    assert provider is not None
    async with serving(tmp_path, tracer_provider=provider) as (client, service):
        client.session.headers["traceparent"] = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
        run_id = await start(client, NOOP_RUN)
        await service.result(service.run(run_id))
        assert (await client.get(f"/runs/{run_id}")).status == 200
    spans = get_span_exporter(provider).get_finished_spans()  # type: ignore[attr-defined]
    by_name = {span.name: span for span in spans}
    request = by_name["POST /runs"]
    run = by_name["workflow supervised"]
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["http.route"] == "/runs"
    assert request.parent.span_id == CALLER_SPAN
    assert run.parent.span_id == request.context.span_id
    assert run.context.trace_id == request.context.trace_id == CALLER_TRACE
    assert run.attributes["crucible_kitchen.run_id"] == run_id
    stages = [span for span in spans if span.attributes.get("crucible_kitchen.stage")]
    assert stages
    assert {span.parent.span_id for span in stages} == {run.context.span_id}
    assert by_name["GET /runs/{run_id}"].attributes["http.response.status_code"] == 200
    provider.shutdown()

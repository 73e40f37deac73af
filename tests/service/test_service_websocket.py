"""A run's events over a WebSocket: the same events and the same auth as the Server-Sent
Events of ``GET /runs/{id}/events`` (resuming is tested with theirs, in test_service_api).

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from _service_support import (
    NOOP_RUN,
    Gate,
    follow,
    follow_websocket,
    problem,
    serving,
    start,
)
from aiohttp import WSServerHandshakeError

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


async def test_a_websocket_gets_the_events_of_the_event_stream_then_the_end(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (client, service):
        run_id = await start(client, NOOP_RUN)
        live = await (await follow_websocket(client, run_id)).rest()
        await service.result(service.run(run_id))
        over_sse = await (await follow(client, run_id)).rest()
        replayed = await (await follow_websocket(client, run_id)).rest()
    assert live == over_sse == replayed
    assert [frame.id for frame in live[:-1]] == list(range(1, len(live)))
    assert (live[-1].event, live[-1].data, live[-1].id) == ("end", {"status": "completed"}, None)
    assert [frame.event for frame in live].count("crucible_kitchen.training.step") == 3


async def test_a_websocket_sees_a_cancelled_run_end_cancelled(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, gate) as (client, _):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 50}})
        reader = await follow_websocket(client, run_id)
        await gate.reached.wait()
        assert (await client.post(f"/runs/{run_id}/cancel")).status == 202
        gate.open()
        frames = await reader.rest()
    assert frames[-1].data == {"status": "cancelled"}
    assert "crucible_kitchen.workflow.run.stop" in [frame.event for frame in frames]


async def test_a_websocket_client_that_leaves_mid_stream_leaves_the_run_sound(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with serving(tmp_path, gate, cancel_handlers=False) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 3}})
        reader = await follow_websocket(client, run_id)
        await gate.reached.wait()
        # The workflow's start and the stage start of "train"; then nothing until the gate
        # opens, so only the client's close can tell the server that it left.
        assert [(await reader.next()) is not None for _ in range(2)] == [True, True]
        assert service.open_streams == 1
        await reader.websocket.close()
        with anyio.fail_after(10):
            await service.streams_closed()  # while the run still waits at the gate
        gate.open()
        result = await service.result(service.run(run_id))
        assert (result.status, result.steps) == ("completed", 3)


async def test_a_websocket_needs_the_token_and_a_run_that_exists(tmp_path: Path) -> None:
    async with serving(tmp_path, token="sesame") as (client, service):
        auth = {"Authorization": "Bearer sesame"}
        response = await client.post("/runs", json=NOOP_RUN, headers=auth)
        run_id = (await response.json())["run_id"]
        await service.result(service.run(run_id))
        with pytest.raises(WSServerHandshakeError) as refused:
            await client.ws_connect(f"/runs/{run_id}/events")
        assert refused.value.status == 401
        websocket = await client.ws_connect(f"/runs/{run_id}/events", headers=auth)
        first = await websocket.receive_json()
        assert (first["id"], first["event"]) == (1, "crucible_kitchen.workflow.run.start")
        await websocket.close()
        with pytest.raises(WSServerHandshakeError) as unknown:
            await client.ws_connect("/runs/nope/events", headers=auth)
        assert unknown.value.status == 404
        body = await problem(
            await client.get(f"/runs/{run_id}/events", params={"last_event_id": "x"}, headers=auth),
            400,
            "invalid-last-event-id",
        )
        assert body["detail"] == "last_event_id must be the id of an event received before, got 'x'"

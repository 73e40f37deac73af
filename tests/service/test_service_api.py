"""The HTTP API of the embedded service, end to end through aiohttp's test server.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only (the
``anyio_backend`` fixture of this folder), against a real server on 127.0.0.1 started by
aiohttp's ``TestServer``. Runs use the noop adapters or the gated test recipe of
``_service_fakes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from _service_support import (
    NOOP_RUN,
    RECONNECTIONS,
    Gate,
    follow,
    follow_by,
    gated_recipe,
    problem,
    serving,
    start,
)
from aiohttp.test_utils import TestClient, TestServer

from crucible_kitchen.service import SERVICE_KEY, create_app

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


async def test_health_and_recipes(tmp_path: Path) -> None:
    async with serving(tmp_path, adapter_sets=["noop"]) as (client, _):
        health = await (await client.get("/health")).json()
        assert health["status"] == "ok"
        assert health["runs_running"] == 0
        listing = await (await client.get("/recipes")).json()
        names = {recipe["name"] for recipe in listing["recipes"]}
        assert {"sl_basic", "supervised", "preference"} <= names
        assert listing["adapter_sets"] == ["noop"]


async def test_a_run_is_started_followed_to_its_end_and_described(tmp_path: Path) -> None:
    async with serving(tmp_path) as (client, _):
        run_id = await start(client, NOOP_RUN)
        frames = await (await follow(client, run_id)).rest()
        names = [frame.event for frame in frames]
        assert names[0] == "crucible_kitchen.workflow.run.start"
        assert names[-2:] == ["crucible_kitchen.workflow.run.stop", "end"]
        assert frames[-1].data == {"status": "completed"}
        ids = [frame.id for frame in frames[:-1]]
        assert ids == list(range(1, len(ids) + 1))
        assert names.count("crucible_kitchen.training.step") == 3

        run = await (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "completed"
        assert run["recipe"] == "supervised"
        assert run["adapters"] == "noop"
        assert run["steps"] == 3
        assert run["stage"] is None
        assert "train_mean_nll" in run["metrics"]
        assert run["artifacts"]

        history = await (await client.get(f"/runs/{run_id}/metrics")).json()
        assert [row["step"] for row in history["rows"] if "train_mean_nll" in row] == [0, 1, 2]
        last_loss = [row for row in history["rows"] if "train_mean_nll" in row][-1]
        assert run["metrics"]["train_mean_nll"] == last_loss["train_mean_nll"]


async def test_a_running_run_shows_its_stage_step_and_latest_metrics(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, gate) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 2, "loss": 4.0}})
        await gate.reached.wait()
        run = await (await client.get(f"/runs/{run_id}")).json()
        assert (run["status"], run["stage"], run["steps"], run["metrics"]) == (
            "running",
            "train",
            0,
            {},
        )
        assert (await (await client.get("/health")).json())["runs_running"] == 1
        gate.open()
        await service.result(service.run(run_id))
        run = await (await client.get(f"/runs/{run_id}")).json()
        assert run["status"] == "completed"
        assert run["steps"] == 2
        assert run["metrics"]["train_mean_nll"] == 2.0  # 4.0 / 2 at the second step
        assert run["metrics"]["learning_rate"] == 0.1


async def test_runs_are_listed_a_page_at_a_time_and_filtered_by_status(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, gate, max_runs_per_client=None) as (client, service):
        done = [await start(client, NOOP_RUN) for _ in range(3)]
        for run_id in done:
            await service.result(service.run(run_id))
        waiting = await start(client, {"recipe": "gated"})

        page = await (await client.get("/runs", params={"limit": "2"})).json()
        assert [run["run_id"] for run in page["runs"]] == done[:2]
        assert (page["total"], page["offset"], page["next_offset"]) == (4, 0, 2)
        page = await (await client.get("/runs", params={"limit": "2", "offset": "2"})).json()
        assert [run["run_id"] for run in page["runs"]] == [done[2], waiting]
        assert page["next_offset"] is None

        running = await (await client.get("/runs", params={"status": "running"})).json()
        assert [run["run_id"] for run in running["runs"]] == [waiting]
        completed = await (await client.get("/runs", params={"status": "completed"})).json()
        assert [run["run_id"] for run in completed["runs"]] == done
        gate.open()


async def test_cancel_stops_a_run_gracefully_and_a_second_cancel_conflicts(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with serving(tmp_path, gate) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 50}})
        reader = await follow(client, run_id)
        await gate.reached.wait()
        response = await client.post(f"/runs/{run_id}/cancel")
        assert response.status == 202
        gate.open()
        frames = await reader.rest()
        assert frames[-1].data == {"status": "cancelled"}
        # The stop came at a step boundary, after the checkpoint stage ran.
        assert gate.checkpoints == [(run_id, 1)]
        run = await (await client.get(f"/runs/{run_id}")).json()
        assert (run["status"], run["steps"]) == ("cancelled", 1)
        await service.result(service.run(run_id))
        body = await problem(await client.post(f"/runs/{run_id}/cancel"), 409, "run-ended")
        assert body["detail"] == f"run {run_id!r} has ended already (cancelled)"


@pytest.mark.parametrize("way", RECONNECTIONS)
async def test_a_reconnecting_client_resumes_after_its_last_event_id(
    tmp_path: Path, way: str
) -> None:
    gate = Gate()
    async with serving(tmp_path, gate) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 4}})
        await gate.reached.wait()
        first = await follow_by(client, run_id, way)
        seen = [await first.next(), await first.next()]  # while the run waits at the gate
        await first.close()
        gate.open()
        await service.result(service.run(run_id))

        last_id = seen[-1].id
        assert last_id is not None
        resumed = await (await follow_by(client, run_id, way, last_id)).rest()
        whole = await (await follow_by(client, run_id, way)).rest()
        over_sse = await (await follow(client, run_id)).rest()
        assert [f.id for f in resumed[:-1]] == list(range(last_id + 1, len(whole)))
        assert seen + resumed == whole == over_sse


async def test_a_client_that_disconnects_mid_stream_leaves_the_run_and_server_sound(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with serving(tmp_path, gate) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 3}})
        reader = await follow(client, run_id)
        assert (await reader.next()) is not None
        assert service.open_streams == 1
        await gate.reached.wait()
        reader.response.close()
        gate.open()  # the next events find the connection gone
        with anyio.fail_after(10):
            await service.streams_closed()
        result = await service.result(service.run(run_id))
        assert (result.status, result.steps) == ("completed", 3)
        assert (await client.get("/health")).status == 200


async def test_an_idle_stream_sends_keepalive_comments(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, gate, heartbeat_s=0.01) as (client, _):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 1}})
        reader = await follow(client, run_id)
        await gate.reached.wait()
        # workflow start, then the stage start of "train", then silence at the gate
        assert [(await reader.next()).event for _ in range(2)] == [  # type: ignore[union-attr]
            "crucible_kitchen.workflow.run.start",
            "crucible_kitchen.stage.run.start",
        ]
        line = await reader.response.content.readline()
        assert line == b": keepalive\n"
        gate.open()
        assert (await reader.rest())[-1].data == {"status": "completed"}


async def test_shutdown_with_runs_in_flight_ends_every_run_with_a_final_status(
    tmp_path: Path,
) -> None:
    blocked, looping = Gate(), Gate()
    looping.open()
    recipes = [gated_recipe(blocked), gated_recipe(looping, "looping")]
    app = create_app(root=tmp_path, recipes=recipes, stop_grace_s=0.2)
    service = app[SERVICE_KEY]
    async with TestClient(TestServer(app)) as client:
        stuck = await start(client, {"recipe": "gated", "config": {"steps": 5}})
        busy = await start(client, {"recipe": "looping", "config": {"steps": 1_000_000}})
        await blocked.reached.wait()
        await looping.reached.wait()
    runs = service.runs()
    assert [run.run_id for run in runs] == [stuck, busy]
    results = {run.run_id: run.result for run in runs}
    assert all(result is not None and result.status == "cancelled" for result in results.values())
    # The busy run stopped at a step boundary when asked, after its checkpoint stage ran.
    steps = results[busy].steps  # type: ignore[union-attr]
    assert 0 < steps < 1_000_000
    assert looping.checkpoints == [(busy, steps)]
    # The blocked run was cancelled once the grace period was over: no checkpoint.
    assert blocked.checkpoints == []
    assert results[stuck].steps == 0  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="not running"):
        _ = service.kitchen

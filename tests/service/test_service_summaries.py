"""What the service keeps of finished runs: a small summary; the rest is read from disk.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _service_support import NOOP_RUN, Gate, follow, gated_recipe, problem, serving, start

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service import ServiceSettings

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient

pytestmark = pytest.mark.anyio

GATED_WITH_DIR = {"recipe": "gated", "config": {"steps": 3, "loss": 6.0}}


def open_gate() -> Gate:
    gate = Gate()
    gate.open()
    return gate


async def json_of(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_a_finished_run_drops_its_handle_and_reads_metrics_and_events_from_disk(
    tmp_path: Path,
) -> None:
    gate = Gate()
    recipes = [gated_recipe(gate, writes_run_dir=True)]
    async with serving(tmp_path, recipes=recipes) as (client, service):
        run_id = await start(client, GATED_WITH_DIR)
        live = await follow(client, run_id)
        first = await live.next()
        gate.open()
        streamed = [first, *await live.rest()]
        live_history = await json_of(client, f"/runs/{run_id}/metrics")  # maybe still live
        await service.result(service.run(run_id))

        run = service.run(run_id)
        assert (run.handle, run.history, run.events) == (None, None, None)
        history = await json_of(client, f"/runs/{run_id}/metrics")
        assert [row["train_mean_nll"] for row in history["rows"]] == [6.0, 3.0, 2.0]
        assert live_history["rows"] == history["rows"][: len(live_history["rows"])]
        replayed = await (await follow(client, run_id)).rest()
        assert replayed == streamed
        resumed = await (await follow(client, run_id, **{"Last-Event-ID": "4"})).rest()
        assert resumed == streamed[4:]


async def test_a_finished_run_without_a_run_directory_keeps_its_events_in_memory(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (client, service):
        run_id = await start(client, NOOP_RUN)
        streamed = await (await follow(client, run_id)).rest()
        await service.result(service.run(run_id))
        run = service.run(run_id)
        assert run.handle is None
        assert run.events is not None
        assert [stored.seq for stored in run.events] == [f.id for f in streamed[:-1]]
        assert await (await follow(client, run_id)).rest() == streamed
        history = await json_of(client, f"/runs/{run_id}/metrics")
        assert [row["step"] for row in history["rows"] if "train_mean_nll" in row] == [0, 1, 2]


async def test_past_keep_finished_runs_give_way_to_their_run_directories(tmp_path: Path) -> None:
    recipes = [gated_recipe(open_gate(), writes_run_dir=True)]
    async with serving(tmp_path, recipes=recipes, keep_finished=2, max_runs_per_client=None) as (
        client,
        service,
    ):
        order = []
        for body in (GATED_WITH_DIR, NOOP_RUN, GATED_WITH_DIR, GATED_WITH_DIR):
            run_id = await start(client, body)
            await service.result(service.run(run_id))
            order.append(run_id)
        on_disk, forgotten, kept = order[0], order[1], order[2:]

        assert [run.run_id for run in service.runs()] == kept
        listed = await json_of(client, "/runs")
        assert [run["run_id"] for run in listed["runs"]] == [on_disk, *kept]
        assert listed["total"] == 3
        completed = await json_of(client, "/runs?status=completed&limit=1")
        assert ([run["run_id"] for run in completed["runs"]], completed["total"]) == ([on_disk], 3)

        view = await json_of(client, f"/runs/{on_disk}")  # from its summary.json
        assert (view["status"], view["steps"], view["metrics"]["loss"]) == (
            "completed",
            3,
            2.0,
        )
        history = await json_of(client, f"/runs/{on_disk}/metrics")
        assert [row["step"] for row in history["rows"]] == [0, 1, 2]
        frames = await (await follow(client, on_disk)).rest()
        assert frames[-1].data == {"status": "completed"}
        assert [frame.id for frame in frames[:-1]] == list(range(1, len(frames)))
        body = await problem(await client.post(f"/runs/{on_disk}/cancel"), 404, "past-run")
        assert "from its run directory" in body["detail"]

        for path in ("", "/metrics", "/events"):
            await problem(await client.get(f"/runs/{forgotten}{path}"), 404, "unknown-run")


def test_keep_finished_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match="keep_finished: must be at least 1, got 0"):
        ServiceSettings(keep_finished=0)

"""Runs that outlive the server: listed from their run directories after a restart, resumed
over HTTP.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1. Each "restart" is a new application on the same root.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

import pytest
from _service_support import NOOP_RUN, Gate, follow, gated_recipe, problem, serving, start

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient

    from crucible_kitchen import Recipe
    from crucible_kitchen.service import KitchenService

pytestmark = pytest.mark.anyio


def open_gate() -> Gate:
    gate = Gate()
    gate.open()
    return gate


def keeping_run_dirs(gate: Gate) -> list[Recipe]:
    return [gated_recipe(gate, writes_run_dir=True)]


SAME_AFTER_A_RESTART = ("run_id", "recipe", "workflow", "adapters", "status", "steps", "error")


def pick(run: dict[str, Any]) -> dict[str, Any]:
    """What a run's view shows alike before and after a restart (the metrics then are those
    of its summary.json, ``created`` that of its config.json)."""
    return {key: run[key] for key in SAME_AFTER_A_RESTART}


async def listing(client: TestClient[Any, Any], **query: str | int) -> dict[str, Any]:
    response = await client.get("/runs", params=query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def stop_after_one_step(
    client: TestClient[Any, Any], service: KitchenService, gate: Gate
) -> str:
    """A gated run of 5 steps, cancelled over HTTP while its first step waits at the closed
    ``gate``: it ends ``cancelled`` after that step, checkpointing on the way."""
    run_id = await start(client, {"recipe": "gated", "config": {"steps": 5}})
    await gate.reached.wait()
    assert (await client.post(f"/runs/{run_id}/cancel")).status == 202
    gate.open()
    assert (await service.result(service.run(run_id))).status == "cancelled"
    assert gate.checkpoints == [(run_id, 1)]
    return run_id


async def test_after_a_restart_past_runs_are_listed_and_read_from_disk(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, service):
        stopped = await stop_after_one_step(client, service, gate)
        done = await start(client, {"recipe": "gated", "config": {"steps": 2}})
        assert (await service.result(service.run(done))).status == "completed"
        in_memory_only = await start(client, NOOP_RUN)  # its recipe keeps no run directory
        await service.result(service.run(in_memory_only))
        before = await listing(client)
    assert [run["run_id"] for run in before["runs"]] == [stopped, done, in_memory_only]

    async with serving(tmp_path, recipes=keeping_run_dirs(open_gate())) as (client, _):
        after = await listing(client)
        assert [pick(run) for run in after["runs"]] == [pick(run) for run in before["runs"][:2]]
        assert [(run["status"], run["steps"]) for run in after["runs"]] == [
            ("cancelled", 1),
            ("completed", 2),
        ]
        second = await listing(client, limit=1, offset=1)
        assert ([run["run_id"] for run in second["runs"]], second["total"]) == ([done], 2)
        assert second["next_offset"] is None
        completed = await listing(client, status="completed")
        assert [run["run_id"] for run in completed["runs"]] == [done]
        view = await client.get(f"/runs/{stopped}")
        assert view.status == 200
        assert await view.json() == after["runs"][0]
        await problem(await client.get(f"/runs/{in_memory_only}"), 404, "unknown-run")
        # A past run's metrics history and events are read from its run directory.
        history = await (await client.get(f"/runs/{done}/metrics")).json()
        assert [row["train_mean_nll"] for row in history["rows"]] == [1.0, 0.5]
        frames = await (await follow(client, done)).rest()
        assert [frame.id for frame in frames[:-1]] == list(range(1, len(frames)))
        assert frames[-1].data == {"status": "completed"}
        resumed = await (await follow(client, done, **{"Last-Event-ID": "3"})).rest()
        assert resumed == frames[3:]
        await problem(await client.post(f"/runs/{done}/cancel"), 404, "past-run")


async def test_a_run_directory_without_a_summary_is_listed_as_interrupted(
    tmp_path: Path,
) -> None:
    gate = open_gate()
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, service):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 2}})
        await service.result(service.run(run_id))
    (tmp_path / "runs" / run_id / "summary.json").unlink()  # as if the process was killed
    shutil.copytree(tmp_path / "runs" / run_id, tmp_path / "runs" / "renamed")
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, _):
        runs = (await listing(client))["runs"]
        assert [(run["run_id"], run["status"], run["steps"]) for run in runs] == [
            (run_id, "cancelled", 0)
        ]
        assert "stopped before this run ended" in runs[0]["error"]
        # A directory whose config.json names another run is not a run of its own.
        await problem(await client.get("/runs/renamed"), 404, "unknown-run")


async def test_resume_says_why_a_run_cannot_resume_without_showing_server_paths(
    tmp_path: Path,
) -> None:
    """Resuming for real (bit-identical weights) is tested with local torch in
    test_service_local_torch.py; the noop adapters keep no checkpoints to resume from."""
    gate = Gate()
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, service):
        stopped = await stop_after_one_step(client, service, gate)
        done = await start(client, {"recipe": "gated", "config": {"steps": 2}})
        await service.result(service.run(done))

    async with serving(tmp_path, recipes=keeping_run_dirs(open_gate())) as (client, _):
        body = await problem(await client.post(f"/runs/{done}/resume"), 409, "cannot-resume")
        assert f"in <root>/{done} completed already" in body["detail"]
        body = await problem(await client.post(f"/runs/{stopped}/resume"), 409, "cannot-resume")
        assert "keeps no checkpoints" in body["detail"]
        assert str(tmp_path) not in body["detail"]
        statuses = [run["status"] for run in (await listing(client))["runs"]]
        assert statuses == ["cancelled", "completed"]  # a refused resume changes nothing


async def test_resuming_a_running_run_is_refused(tmp_path: Path) -> None:
    gate = Gate()
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, _):
        run_id = await start(client, {"recipe": "gated", "config": {"steps": 2}})
        await gate.reached.wait()
        await problem(await client.post(f"/runs/{run_id}/resume"), 409, "run-running")
        gate.open()


@pytest.mark.parametrize("run_id", ["nope", "..", "%2E%2E", "..%2Foutside", "a%2F..%2F..", "-x"])
async def test_a_run_id_never_names_a_path_outside_the_root(tmp_path: Path, run_id: str) -> None:
    gate = open_gate()
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, service):
        real = await start(client, {"recipe": "gated", "config": {"steps": 1}})
        await service.result(service.run(real))
    shutil.copytree(tmp_path / "runs" / real, tmp_path / "outside")  # a run dir beside root
    async with serving(tmp_path, recipes=keeping_run_dirs(gate)) as (client, _):
        for response in (
            await client.get(f"/runs/{run_id}"),
            await client.post(f"/runs/{run_id}/resume"),
        ):
            # `/runs/..` is normalised to the mount's root, which is the dashboard page:
            # either way, no request reaches a run.
            reached_the_page = response.status == 200 and response.content_type == "text/html"
            assert response.status == 404 or reached_the_page, await response.text()
        assert [run["run_id"] for run in (await listing(client))["runs"]] == [real]

"""The Kitchen runs on an event loop of its own: runs' work never holds up the host's loop.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from _service_support import ThreadEvent, serving, start

from crucible_kitchen import Context, Recipe, Workflow
from crucible_kitchen.workflows import stage

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


class Blocker:
    """A stage that, once ``go`` is set, blocks its event loop (as a CPU-bound stage does)
    until ``release`` is set or 20 s have passed."""

    def __init__(self) -> None:
        self.go = ThreadEvent()
        self.blocking = ThreadEvent()
        self.release = threading.Event()
        self.released_in_time: bool | None = None

    def recipe(self) -> Recipe:
        async def block(ctx: Context) -> None:
            await self.go.wait()
            self.blocking.set()
            self.released_in_time = self.release.wait(timeout=20)  # the kitchen loop stops here

        return Recipe(
            "blocking", "blocks its loop", lambda _config: Workflow("b", stage("block", block))
        )


async def test_the_api_answers_while_a_run_blocks_the_kitchen_loop(tmp_path: Path) -> None:
    blocker = Blocker()
    async with serving(tmp_path, recipes=[blocker.recipe()]) as (client, service):
        run_id = await start(client, {"recipe": "blocking"})
        blocker.go.set()
        await blocker.blocking.wait()
        with anyio.fail_after(10):
            health = await client.get("/health")
            run: dict[str, Any] = await (await client.get(f"/runs/{run_id}")).json()
        blocker.release.set()
        assert health.status == 200
        assert (run["status"], run["stage"]) == ("running", "block")
        result = await service.result(service.run(run_id))
    assert blocker.released_in_time is True  # the answers came while the stage was blocking
    assert result.status == "completed"


async def test_on_kitchen_runs_a_coroutine_on_the_kitchen_loop_and_returns_its_result(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, service):

        async def where() -> int:
            await anyio.lowlevel.checkpoint()
            return threading.get_ident()

        assert await service.on_kitchen(where()) not in {threading.get_ident(), None}
    with pytest.raises(RuntimeError, match="not running"):
        await service.on_kitchen(where())


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="threads have a niceness of their own on Linux")
@pytest.mark.parametrize("steps", [0, 7])
async def test_the_kitchen_thread_runs_nicer_than_the_host_by_kitchen_niceness(
    tmp_path: Path, steps: int
) -> None:
    async def kitchen_niceness() -> int:
        await anyio.lowlevel.checkpoint()
        return _niceness()

    host = _niceness()
    async with serving(tmp_path, kitchen_niceness=steps) as (_, service):
        assert await service.on_kitchen(kitchen_niceness()) == min(19, host + steps)
        assert _niceness() == host


async def test_the_collector_and_switch_interval_are_tuned_while_the_service_runs(
    tmp_path: Path,
) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    interval = sys.getswitchinterval()
    tuned = {"gc_young_threshold": before[0] + 1234, "switch_interval_s": interval / 4}
    async with serving(tmp_path, **tuned):
        assert gc.get_threshold() == (before[0] + 1234, *before[1:])
        assert gc.get_freeze_count() > frozen
        assert sys.getswitchinterval() == pytest.approx(interval / 4)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen == 0  # nothing else in the tests freezes
    assert sys.getswitchinterval() == interval
    async with serving(tmp_path, gc_young_threshold=None, switch_interval_s=None):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
        assert sys.getswitchinterval() == interval

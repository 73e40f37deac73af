"""The Kitchen runs on an event loop of its own: runs' work never holds up the host's loop.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only.
"""

from __future__ import annotations

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

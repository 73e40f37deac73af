"""Runtime tests: check that no test leaves a task behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = {task.id for task in anyio.get_running_tasks()}
    yield
    for _ in range(3):  # let the test's own task finish its last step
        await anyio.lowlevel.checkpoint()
    leaked = [
        t
        for t in anyio.get_running_tasks()
        if t.id not in before and "TestRunner" not in getattr(t.coro, "__qualname__", "")
    ]
    assert not leaked, f"tasks left behind: {[(t.name, t.coro) for t in leaked]}"

"""The example host application (``examples/embedded_host.py``), end to end.

aiohttp runs only on asyncio, so this test runs on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _service_support import EventReader
from aiohttp.test_utils import TestClient, TestServer

if TYPE_CHECKING:
    from types import ModuleType

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedded_host.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embedded_host", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_host_keeps_its_routes_and_middleware_and_runs_training(
    tmp_path: Path,
) -> None:
    example = load_example()
    app = example.make_app(root=str(tmp_path), token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    async with TestClient(TestServer(app)) as client:
        index = await client.get("/")
        assert index.status == 200
        assert index.headers["X-Served-By"] == "example-host"
        assert "the kitchen is under /kitchen" in await index.text()

        response = await client.post(
            "/kitchen/runs",
            json={"recipe": "supervised", "adapters": "noop", "config": {"max_steps": 2}},
            headers=auth,
        )
        assert response.status == 202
        assert response.headers["X-Served-By"] == "example-host"
        run_id = (await response.json())["run_id"]
        assert response.headers["Location"] == f"/kitchen/runs/{run_id}"
        events = await client.get(f"/kitchen/runs/{run_id}/events", headers=auth)
        frames = await EventReader(events).rest()
        assert frames[-1].data == {"status": "completed"}

        run = await (await client.get(f"/kitchen/runs/{run_id}", headers=auth)).json()
        assert (run["status"], run["steps"]) == ("completed", 2)
        assert await (await client.get("/status")).json() == {"running": 0, "finished": 1}
        assert (await client.get("/kitchen/runs")).status == 401  # the kitchen's own auth
        assert (await client.get("/status")).status == 200  # ... not the host's
        assert (await client.get("/kitchen/health")).status == 200
    with pytest.raises(RuntimeError, match="not running"):
        _ = app[example.KITCHEN].kitchen

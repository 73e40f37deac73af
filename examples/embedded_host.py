"""A host aiohttp application with routes of its own that mounts the kitchen under /kitchen.

Run it (needs ``pip install 'crucible-kitchen[service]'``)::

    python examples/embedded_host.py                     # http://127.0.0.1:8080
    curl -X POST 127.0.0.1:8080/kitchen/runs \\
         -d '{"recipe": "supervised", "adapters": "noop", "config": {"max_steps": 5}}'
    curl 127.0.0.1:8080/kitchen/runs/<run_id>/events     # live, as Server-Sent Events
    curl 127.0.0.1:8080/status                           # the host's own route

Ctrl-C stops the host; every run is asked to stop at its next step (checkpointing where its
recipe does) and is cancelled if it has not stopped 30 seconds later.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from crucible_kitchen.service import KitchenService, mount_kitchen

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

KITCHEN = web.AppKey("kitchen", KitchenService)


@web.middleware
async def name_the_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The host's own middleware: it sees the kitchen's requests too."""
    response = await handler(request)
    response.headers["X-Served-By"] = "example-host"
    return response


async def index(_request: web.Request) -> web.Response:
    return web.Response(text="the host's own page; the kitchen is under /kitchen\n")


async def status(request: web.Request) -> web.Response:
    """A host route that uses the kitchen through Python, not HTTP. The Kitchen lives on an
    event loop of its own: what reads or changes it runs there, through ``on_kitchen``."""
    service = request.app[KITCHEN]

    async def count() -> dict[str, int]:
        kitchen = service.kitchen
        running = sum(run.status == "running" for run in kitchen.runs())
        return {"running": running, "finished": len(kitchen.finished())}

    return web.json_response(await service.on_kitchen(count()))


def make_app(root: str = "runs", token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[name_the_host])
    app.router.add_get("/", index)
    app.router.add_get("/status", status)
    app[KITCHEN] = mount_kitchen(
        app, "/kitchen", root=root, token=token, adapter_sets=["noop", "local_torch"]
    )
    return app


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    web.run_app(make_app(token=os.environ.get("KITCHEN_TOKEN")), host="127.0.0.1", port=port)

"""The kitchen as an HTTP service, embedded in an aiohttp application or standalone.

::

    from aiohttp import web
    from crucible_kitchen.service import mount_kitchen

    app = web.Application()                 # the host's own application
    app.router.add_get("/", my_index)
    mount_kitchen(app, "/kitchen", root="runs", token=os.environ["KITCHEN_TOKEN"])
    web.run_app(app)

:func:`mount_kitchen` adds a sub-application under a prefix and ties the Kitchen's lifetime
to the host's (``cleanup_ctx``): it starts with the host, and when the host shuts down every
run is asked to stop at its next step boundary (checkpointing if its recipe does), then
cancelled after ``stop_grace_s``. :func:`create_app` is the same application standalone
(``kitchen serve``). The API (JSON; errors as ``application/problem+json``)::

    POST /runs                  {"recipe", "config", "adapters", "seed"} -> 202 + the run
    GET  /runs                  ?status=running&offset=0&limit=50
    GET  /runs/{id}             status, stage, steps, latest metrics, artifacts
    POST /runs/{id}/cancel      stop gracefully -> 202
    POST /runs/{id}/resume      go on from the newest checkpoint of <root>/<id> -> 202
    GET  /runs/{id}/metrics     the metrics history
    GET  /runs/{id}/events      Server-Sent Events; Last-Event-ID resumes
    GET  /recipes, GET /health
    GET  /                      the dashboard: runs, a start form, live charts, cancel

With ``kitchen="process"`` (``kitchen serve``'s default) the Kitchen runs in a worker process
of its own, so that its work never holds up the host's requests; the service keeps its record
of every run from the news the worker sends.

Runs with a run directory outlive the service: after a restart ``GET /runs`` lists them
from ``<root>`` and a stopped one can be resumed.

aiohttp runs on asyncio only. This package imports aiohttp (the ``service`` extra); only
public names of crucible-kitchen are used.
"""

from __future__ import annotations

from ._app import SERVICE_KEY as SERVICE_KEY
from ._app import create_app as create_app
from ._app import mount_kitchen as mount_kitchen
from ._past import StoredEvent as StoredEvent
from ._problems import PROBLEM_CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from ._problems import Problem as Problem
from ._schema import Health as Health
from ._schema import MetricsHistory as MetricsHistory
from ._schema import RecipeList as RecipeList
from ._schema import RunList as RunList
from ._schema import RunView as RunView
from ._schema import StartRun as StartRun
from ._serve import serve as serve
from ._service import KitchenService as KitchenService
from ._service import ServiceSettings as ServiceSettings
from ._service import TrackedRun as TrackedRun

__all__ = (
    "PROBLEM_CONTENT_TYPE",
    "SERVICE_KEY",
    "Health",
    "KitchenService",
    "MetricsHistory",
    "Problem",
    "RecipeList",
    "RunList",
    "RunView",
    "ServiceSettings",
    "StartRun",
    "StoredEvent",
    "TrackedRun",
    "create_app",
    "mount_kitchen",
    "serve",
)

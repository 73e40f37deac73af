"""What the service tests share: a gated recipe, a Server-Sent Events reader, a served app.

The ``gated`` recipe runs ``steps`` training steps; each step waits at a :class:`Gate` the
test opens, so that a test holds a run mid-stream for as long as it needs. When the run is
asked to stop, its ``checkpoint_on_stop`` stage records a checkpoint before it ends, as the
built-in recipes checkpoint on a graceful stop.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import pydantic
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from crucible_kitchen import Context, Recipe, Workflow
from crucible_kitchen.service import (
    PROBLEM_CONTENT_TYPE,
    SERVICE_KEY,
    KitchenService,
    create_app,
)
from crucible_kitchen.telemetry import TrainingStep
from crucible_kitchen.workflows import conditional, loop, stage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp import ClientResponse, ClientWebSocketResponse
    from aiohttp.web import AppRunner


class ThreadEvent:
    """An event set on one thread and waited for on another's event loop: the service runs
    the Kitchen (and the gated stages) on a loop of its own, the tests on the host's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        with self._lock:
            self._set = True
            waiters, self._waiters = self._waiters, []
        for waiter_loop, waiter in waiters:
            waiter_loop.call_soon_threadsafe(_wake, waiter)

    async def wait(self) -> None:
        with self._lock:
            if self._set:
                return
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiters.append((loop, waiter))
        await waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Gate:
    """Where each step of a gated run waits; ``open()`` lets every step through from then on.

    ``reached`` is set when a step first waits, so a test knows the run is mid-stream.
    """

    def __init__(self) -> None:
        self.reached = ThreadEvent()
        self._open = ThreadEvent()
        self.checkpoints: list[tuple[str, int]] = []

    def open(self) -> None:
        self._open.set()

    async def passage(self) -> None:
        self.reached.set()
        await self._open.wait()


class GatedConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    steps: int = pydantic.Field(default=3, ge=1, le=1_000_000)
    loss: float = pydantic.Field(default=1.0, gt=0.0)


def gated_recipe(gate: Gate, name: str = "gated", *, writes_run_dir: bool = False) -> Recipe:
    async def train(ctx: Context) -> None:
        await gate.passage()
        loss = ctx.config.loss / (ctx.step + 1)
        ctx.run.telemetry.emit(
            TrainingStep(step=ctx.step, total_steps=ctx.config.steps, loss=loss, lr=0.1)
        )
        ctx.metrics["loss"] = loss
        ctx.step += 1

    async def checkpoint(ctx: Context) -> None:
        gate.checkpoints.append((ctx.run.run_id, ctx.step))

    def build(config: GatedConfig) -> Workflow:
        return Workflow(
            "gated",
            loop(
                "steps",
                config.steps,
                stage("train", train),
                conditional(
                    "on_stop",
                    lambda ctx: ctx.run.stop_requested,
                    then=[stage("checkpoint_on_stop", checkpoint)],
                ),
            ),
        )

    return Recipe(
        name,
        "steps that wait at a gate",
        build,
        config_model=GatedConfig,
        writes_run_dir=writes_run_dir,
    )


@dataclass
class Frame:
    """One Server-Sent Event."""

    event: str
    data: Any
    id: int | None = None


class FrameReader:
    """Frames of a run's events, one at a time or all up to the end."""

    async def next(self) -> Frame | None:
        raise NotImplementedError

    async def rest(self) -> list[Frame]:
        """Every frame up to the end of the stream."""
        frames = []
        while (frame := await self.next()) is not None:
            frames.append(frame)
        return frames


@dataclass
class EventReader(FrameReader):
    """Reads the frames of an SSE response one at a time (comments are skipped)."""

    response: ClientResponse
    comments: int = 0
    _fields: dict[str, str] = field(default_factory=dict)

    async def next(self) -> Frame | None:
        """The next frame, or ``None`` at the end of the stream."""
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
                continue
            if line:
                key, _, value = line.partition(": ")
                self._fields[key] = value
                continue
            if not self._fields:  # the blank line after a comment
                continue
            fields, self._fields = self._fields, {}
            return Frame(
                event=fields["event"],
                data=msgspec.json.decode(fields["data"]),
                id=int(fields["id"]) if "id" in fields else None,
            )

    async def close(self) -> None:
        self.response.close()


NOOP_RUN = {"recipe": "supervised", "adapters": "noop", "config": {"max_steps": 3}}


class UncancellingServer(TestServer):
    """aiohttp's test server as ``web.run_app`` serves: a handler whose client disconnects
    is not cancelled (aiohttp's ``TestServer`` cancels it), so it must notice by itself."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False})


@asynccontextmanager
async def serving(
    tmp_path: Path, gate: Gate | None = None, *, cancel_handlers: bool = True, **settings: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], KitchenService]]:
    """The service on a test server; ``cancel_handlers=False``: see :class:`UncancellingServer`."""
    if gate is not None:
        settings["recipes"] = [*settings.get("recipes", ()), gated_recipe(gate)]
    app = create_app(root=tmp_path / "runs", **settings)
    server = TestServer(app) if cancel_handlers else UncancellingServer(app)
    async with TestClient(server) as client:
        yield client, app[SERVICE_KEY]


async def problem(response: ClientResponse, status: int, kind: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = msgspec.json.decode(await response.read())
    assert body["type"] == f"urn:crucible-kitchen:problem:{kind}"
    assert body["status"] == status
    return body


async def start(client: TestClient[Any, Any], body: dict[str, Any]) -> str:
    response = await client.post("/runs", json=body)
    assert response.status == 202, await response.text()
    run: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/runs/{run['run_id']}"
    return str(run["run_id"])


async def follow(
    client: TestClient[Any, Any],
    run_id: str,
    params: dict[str, str] | None = None,
    **headers: str,
) -> EventReader:
    response = await client.get(f"/runs/{run_id}/events", params=params, headers=headers)
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    return EventReader(response)


@dataclass
class WebSocketReader(FrameReader):
    """Reads the event messages of ``GET /runs/{id}/events`` over a WebSocket, as frames."""

    websocket: ClientWebSocketResponse

    async def next(self) -> Frame | None:
        """The next event (the ``end`` message too), or ``None`` once the server closed."""
        message = await self.websocket.receive()
        if message.type in {WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED}:
            return None
        assert message.type is WSMsgType.TEXT, message
        body = msgspec.json.decode(message.data)
        return Frame(event=body["event"], data=body["data"], id=body.get("id"))

    async def close(self) -> None:
        await self.websocket.close()


async def follow_websocket(
    client: TestClient[Any, Any], run_id: str, **params: str
) -> WebSocketReader:
    websocket = await client.ws_connect(f"/runs/{run_id}/events", params=params)
    return WebSocketReader(websocket)


RECONNECTIONS = ("sse-header", "sse-query", "websocket")
"""The ways a client follows a run's events again after the event it got last: Server-Sent
Events with ``Last-Event-ID`` or ``?last_event_id=``, or a WebSocket with the latter."""


async def follow_by(
    client: TestClient[Any, Any], run_id: str, way: str, after: int | None = None
) -> EventReader | WebSocketReader:
    """Follow the run's events one of the :data:`RECONNECTIONS` ways, after ``after``."""
    query = {} if after is None else {"last_event_id": str(after)}
    if way == "websocket":
        return await follow_websocket(client, run_id, **query)
    if way == "sse-query":
        return await follow(client, run_id, params=query)
    return await follow(client, run_id, **{"Last-Event-ID": str(after or 0)})

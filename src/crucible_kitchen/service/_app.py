"""The aiohttp application: routes, request validation, auth, tracing, event streams."""

from __future__ import annotations

import hmac
import ipaddress
import math
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from aiohttp import WSMsgType, web
from opentelemetry.trace import SpanKind

import crucible_kitchen
from crucible_kitchen.errors import KitchenError
from crucible_kitchen.telemetry import extract_context, get_tracer

from ._dashboard import add_dashboard
from ._past import StoredEvent
from ._problems import Problem, problem_middleware, start_problem
from ._schema import (
    Health,
    MetricsHistory,
    RecipeList,
    RunList,
    StartRun,
    StatusFilter,
)
from ._service import KitchenService, ServiceSettings

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping

    from aiohttp.typedefs import Handler, Middleware
    from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ("SERVICE_KEY", "create_app", "mount_kitchen")

SERVICE_KEY = web.AppKey("crucible_kitchen.service", KitchenService)
"""``app[SERVICE_KEY]`` is the :class:`KitchenService` of a kitchen application."""
CLIENT_KEY = web.RequestKey("crucible_kitchen.client", str)
"""``request[CLIENT_KEY]``: who the per-client limits count the request's runs for."""


def create_app(**settings: Any) -> web.Application:
    """The kitchen as an aiohttp application of its own (``kitchen serve`` runs it).

    ``settings`` are the fields of :class:`ServiceSettings`. The Kitchen starts with the
    application and every run is stopped when it shuts down; ``app[SERVICE_KEY]`` is the
    :class:`KitchenService`.
    """
    service = KitchenService(ServiceSettings(**settings))
    middlewares: list[Middleware] = []
    if service.settings.tracer_provider is not None:
        middlewares.append(_tracing_middleware(service.settings.tracer_provider))
    public: set[Handler] = {_health}
    middlewares += [problem_middleware, _auth_middleware(service.settings.token, public)]
    app = web.Application(middlewares=middlewares)
    app[SERVICE_KEY] = service
    app.cleanup_ctx.append(service.lifespan)
    app.on_shutdown.append(_shutdown)
    app.router.add_get("/health", _health)
    app.router.add_get("/recipes", _recipes)
    app.router.add_post("/runs", _start_run)
    app.router.add_get("/runs", _list_runs)
    app.router.add_get("/runs/{run_id}", _get_run, name="run")
    app.router.add_post("/runs/{run_id}/cancel", _cancel_run)
    app.router.add_post("/runs/{run_id}/resume", _resume_run)
    app.router.add_get("/runs/{run_id}/metrics", _metrics)
    app.router.add_get("/runs/{run_id}/events", _events)
    public |= add_dashboard(app)
    return app


def mount_kitchen(
    host: web.Application, prefix: str = "/kitchen", **settings: Any
) -> KitchenService:
    """Mount the kitchen into ``host`` under ``prefix`` and tie its Kitchen to ``host``'s
    lifetime: started with ``host``, every run stopped gracefully when ``host`` shuts down.

    Only a sub-application is added: ``host``'s routes, middlewares and event loop are left
    as they are. ``settings`` are the fields of :class:`ServiceSettings`.

    Returns:
        The service: ``service.kitchen`` is the Kitchen while ``host`` runs.
    """
    app = create_app(**settings)
    host.add_subapp(prefix, app)
    return app[SERVICE_KEY]


async def _shutdown(app: web.Application) -> None:
    await app[SERVICE_KEY].shutdown()


def _json(value: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(value),
        content_type="application/json",
        headers=headers,
    )


# ---------------------------------------------------------------------- middlewares


def _auth_middleware(
    token: str | Mapping[str, str] | None, public: Collection[Handler]
) -> Middleware:
    """Bearer-token auth (constant-time comparison); without a token, loopback peers only.
    The ``public`` handlers need no token.

    The request's client is the token's name (a mapping of tokens) or else the peer address.
    """
    tokens = _token_table(token)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or "unknown"
        if not tokens:
            if not is_loopback_host(peer):
                raise Problem(
                    403,
                    "loopback-only",
                    "this kitchen has no token, so it serves loopback clients only",
                )
            request[CLIENT_KEY] = peer
            return await handler(request)
        if request.match_info.handler in public:  # probes and the dashboard page
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        name = _token_holder(tokens, presented.strip().encode()) if scheme == "Bearer" else None
        if name is None:
            raise Problem(
                401,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": 'Bearer realm="crucible-kitchen"'},
            )
        request[CLIENT_KEY] = name or peer
        return await handler(request)

    return authenticate


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_table(token: str | Mapping[str, str] | None) -> dict[str, bytes]:
    """``{holder name: token}`` of one token (named ``""``), a mapping, or none."""
    if isinstance(token, str):
        return {"": token.encode()}
    return {name: value.encode() for name, value in (token or {}).items()}


def _token_holder(tokens: dict[str, bytes], presented: bytes) -> str | None:
    """The name of the token that matches; every token is compared, in constant time."""
    holder = None
    for name, token in tokens.items():
        if hmac.compare_digest(token, presented):
            holder = name
    return holder


def _tracing_middleware(provider: Any) -> Middleware:
    """A server span per request, a child of the caller's ``traceparent`` if any; the run a
    request starts gets it as its parent."""
    tracer = get_tracer(provider)

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        attributes = {"http.request.method": request.method, "url.path": request.path}
        name = request.method
        if resource is not None:  # a route matched: name the span after it, not the path
            attributes["http.route"] = resource.canonical
            name = f"{request.method} {resource.canonical}"
        with tracer.start_as_current_span(
            name,
            context=extract_context(dict(request.headers)),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return trace_request


# ---------------------------------------------------------------------- handlers


def _service(request: web.Request) -> KitchenService:
    return request.config_dict[SERVICE_KEY]


async def _health(request: web.Request) -> web.Response:
    service = _service(request)
    status: Literal["ok", "stopping", "failed"] = (
        "stopping" if service.stopping else "failed" if service.failure else "ok"
    )
    health = Health(
        status=status,
        version=crucible_kitchen.__version__,
        runs_running=len(service.runs("running")),
    )
    return _json(health, status=200 if status == "ok" else 503)


async def _recipes(request: web.Request) -> web.Response:
    service = _service(request)
    allowed = service.settings.adapter_sets
    recipes = service.recipes()
    return _json(
        RecipeList(recipes=recipes, adapter_sets=None if allowed is None else sorted(allowed))
    )


async def _start_run(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _read_body(request, service.settings.max_body_bytes)
    try:
        start = msgspec.json.decode(body, type=StartRun)
    except msgspec.ValidationError as exc:
        raise Problem(422, "invalid-request", f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "malformed-json", f"the request body is not valid JSON: {exc}") from None
    try:
        run = await service.start_run(
            client=request[CLIENT_KEY],
            recipe=start.recipe,
            config=start.config,
            adapters=start.adapters,
            seed=start.seed,
        )
    except KitchenError as exc:
        problem = start_problem(exc, start.recipe)
        if problem is None:
            raise
        raise problem from None
    location = request.app.router["run"].url_for(run_id=run.run_id)
    return _json(run.view(), status=202, headers={"Location": str(location)})


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it if the
    ``Content-Length`` says so)."""
    too_large = Problem(
        413, "body-too-large", f"the request body is larger than {limit} bytes, the limit here"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Problem(
            400,
            "invalid-query",
            f"query parameter {name!r} must be an integer from {low} to {high}, got {text!r}",
        )
    return value


async def _list_runs(request: web.Request) -> web.Response:
    service = _service(request)
    settings = service.settings
    status = request.query.get("status")
    if status is not None:
        try:
            msgspec.convert(status, StatusFilter)
        except msgspec.ValidationError:
            raise Problem(
                400,
                "invalid-query",
                f"query parameter 'status' must be running, completed, failed or cancelled, "
                f"got {status!r}",
            ) from None
    offset = _query_int(request, "offset", 0, low=0, high=2**31)
    limit = _query_int(request, "limit", settings.page_size, low=1, high=settings.max_page_size)
    runs = service.all_runs(status)
    page = runs[offset : offset + limit]
    following = offset + limit
    return _json(
        RunList(
            runs=await service.views(page),
            total=len(runs),
            offset=offset,
            limit=limit,
            next_offset=following if following < len(runs) else None,
        )
    )


async def _get_run(request: web.Request) -> web.Response:
    return _json(await _service(request).view(request.match_info["run_id"]))


async def _cancel_run(request: web.Request) -> web.Response:
    service = _service(request)
    run = service.run(request.match_info["run_id"])
    service.cancel_run(run)
    return _json(run.view(), status=202)


async def _resume_run(request: web.Request) -> web.Response:
    service = _service(request)
    run = await service.resume_run(client=request[CLIENT_KEY], run_id=request.match_info["run_id"])
    return _json(run.view(), status=202)


async def _metrics(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    return _json(
        MetricsHistory(run_id=run_id, rows=await _service(request).metrics_history(run_id))
    )


# ---------------------------------------------------------------------- event stream

_KEEPALIVE = b": keepalive\n\n"


async def _events(request: web.Request) -> web.StreamResponse:
    """The run's events from its first (or after ``Last-Event-ID`` / ``?last_event_id=``), as
    Server-Sent Events, or over a WebSocket when the request asks for an upgrade to one.

    Server-Sent Events: ``id`` is the event's ``seq``, ``event`` its name, ``data`` its JSON;
    after the run's last event an ``end`` event carries the final status. A WebSocket gets a
    text message per event, ``{"id": seq, "event": name, "data": {...}}``, then
    ``{"event": "end", "data": {"status": ...}}``, and is closed. A client that reconnects
    with the last id it got gets every event after it. The events of a run that has ended
    come from its run directory (or, without one, from memory)."""
    service = _service(request)
    run_id = request.match_info["run_id"]
    after = _last_event_id(request)
    events = service.event_batches(run_id, after)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _websocket_events(request, service, run_id, events)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    with service.stream():
        await response.prepare(request)
        try:
            if not await _stream_events(response, events, service.settings.heartbeat_s):
                return response
            status = await service.final_status(run_id)
            await response.write(_frame("end", msgspec.json.encode({"status": status})))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: nothing more to send
        finally:
            await events.aclose()
    return response


def _last_event_id(request: web.Request) -> int:
    """The ``last_event_id`` query parameter, else the ``Last-Event-ID`` header, else 0."""
    if "last_event_id" in request.query:
        name, given = "last_event_id", request.query["last_event_id"]
    else:
        name, given = "Last-Event-ID", request.headers.get("Last-Event-ID", "0")
    text = given.strip() or "0"
    if not text.isdigit():
        raise Problem(
            400,
            "invalid-last-event-id",
            f"{name} must be the id of an event received before, got {text!r}",
        )
    return int(text)


async def _websocket_events(
    request: web.Request,
    service: KitchenService,
    run_id: str,
    events: AsyncGenerator[list[StoredEvent], None],
) -> web.WebSocketResponse:
    """Send ``events`` over a WebSocket, a message each, then the ``end`` message, and close.
    What the client sends is ignored; when it closes (or its connection drops, or it
    answers no ping for ``heartbeat_s``), the sending stops."""
    websocket = web.WebSocketResponse(heartbeat=service.settings.heartbeat_s)
    with service.stream():
        await websocket.prepare(request)
        try:
            async with anyio.create_task_group() as task_group:

                async def watch_client() -> None:
                    async for _ in websocket:  # ends when the client closes or goes away
                        pass
                    task_group.cancel_scope.cancel()

                task_group.start_soon(watch_client)
                async for batch in events:
                    for stored in batch:
                        await websocket.send_frame(_message(stored), WSMsgType.TEXT)
                status = await service.final_status(run_id)
                end = b'{"event":"end","data":' + msgspec.json.encode({"status": status}) + b"}"
                await websocket.send_frame(end, WSMsgType.TEXT)
                task_group.cancel_scope.cancel()
            await websocket.close()
        except* ConnectionResetError:
            pass  # the client went away: nothing more to send
        finally:
            await events.aclose()
    return websocket


def _message(stored: StoredEvent) -> bytes:
    name = msgspec.json.encode(stored.name)
    return b'{"id":%d,"event":%b,"data":%b}' % (stored.seq, name, stored.data)


def _frame(name: str, data: bytes, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else f"id: {event_id}\n".encode()
    return head + f"event: {name}\n".encode() + b"data: " + data + b"\n\n"


async def _stream_events(
    response: web.StreamResponse, events: AsyncIterator[list[StoredEvent]], heartbeat_s: float
) -> bool:
    """Write the batches of ``events`` until the last one, a keepalive comment when none came
    for ``heartbeat_s``; the batches that are ready are written together. Returns whether the
    client was there to the end."""
    send, receive = anyio.create_memory_object_stream[list[StoredEvent]](math.inf)

    async def pump() -> None:
        async with send:
            async for batch in events:
                await send.send(batch)

    async with anyio.create_task_group() as task_group, receive:
        task_group.start_soon(pump)
        present = await _write_frames(response, receive, heartbeat_s)
        task_group.cancel_scope.cancel()  # stop reading events if the client went away
    return present


async def _write_frames(
    response: web.StreamResponse,
    receive: MemoryObjectReceiveStream[list[StoredEvent]],
    heartbeat_s: float,
) -> bool:
    while True:
        frames = [_KEEPALIVE]
        with anyio.move_on_after(heartbeat_s):
            try:
                batches = [await receive.receive()]
            except anyio.EndOfStream:
                return True
            while True:
                try:
                    batches.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            frames = [
                _frame(stored.name, stored.data, stored.seq)
                for batch in batches
                for stored in batch
            ]
        try:
            await response.write(b"".join(frames))
        except ConnectionResetError:
            return False

"""The aiohttp application: Tinker's ``/api/v1`` routes, API-key auth, error statuses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
import pydantic
import tinker.types
from aiohttp import web

from crucible_kitchen.errors import InvalidRequest, ResourceNotFound

from .._app import _token_holder, _token_table, is_loopback_host
from .._problems import Problem, problem_middleware
from ._errors import QueueFull, ServerClosed, invalid, not_found
from ._futures import Failure
from ._server import TinkerServer
from ._settings import TinkerSettings
from ._wire import decode_forward_backward

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from aiohttp.typedefs import Handler, Middleware

__all__ = ("TINKER_SERVER_KEY", "create_tinker_app")

TINKER_SERVER_KEY = web.AppKey("crucible_kitchen.tinker", TinkerServer)
"""``app[TINKER_SERVER_KEY]`` is the :class:`TinkerServer` of a Tinker application."""

_API: Final = "/api/v1"
_RETRY_AFTER_MS: Final = "200"
_PUBLIC: Final = frozenset({f"{_API}/healthz"})
_Model = TypeVar("_Model", bound=pydantic.BaseModel)


def create_tinker_app(settings: TinkerSettings | None = None, **fields: Any) -> web.Application:
    """The Tinker-compatible server as an aiohttp application.

    Give a :class:`TinkerSettings` or its fields. ``app[TINKER_SERVER_KEY]`` is the server
    state; it starts and stops with the application (``cleanup_ctx``).
    """
    server = TinkerServer(settings if settings is not None else TinkerSettings(**fields))
    app = web.Application(
        middlewares=[problem_middleware, _auth_middleware(server.settings.api_key)],
        client_max_size=server.settings.max_body_bytes,
    )
    app[TINKER_SERVER_KEY] = server
    app.cleanup_ctx.append(server.lifespan)
    app.on_shutdown.append(_on_shutdown)
    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("POST", "/client/config", _client_config),
        ("POST", "/client/dynamic_config", _dynamic_config),
        ("POST", "/create_session", _create_session),
        ("POST", "/session_heartbeat", _heartbeat),
        ("POST", "/sessions/{session_id}/finish", _finish_session),
        ("GET", "/sessions", _list_sessions),
        ("GET", "/sessions/{session_id}", _get_session),
        ("POST", "/telemetry", _telemetry),
        ("GET", "/healthz", _healthz),
        ("GET", "/get_server_capabilities", _capabilities),
        (
            "POST",
            "/create_model",
            _submit(tinker.types.CreateModelRequest, TinkerServer.create_model),
        ),
        ("POST", "/get_info", _get_info),
        ("POST", "/forward_backward", _forward_backward),
        ("POST", "/optim_step", _submit(tinker.types.OptimStepRequest, TinkerServer.optim_step)),
        (
            "POST",
            "/save_weights",
            _submit(tinker.types.SaveWeightsRequest, TinkerServer.save_weights),
        ),
        (
            "POST",
            "/save_weights_for_sampler",
            _submit(
                tinker.types.SaveWeightsForSamplerRequest, TinkerServer.save_weights_for_sampler
            ),
        ),
        ("POST", "/load_weights", _load_weights),
        ("POST", "/create_sampling_session", _create_sampling_session),
        ("GET", "/samplers/{sampler_id}", _get_sampler),
        ("POST", "/asample", _asample),
        ("POST", "/retrieve_future", _retrieve_future),
        ("GET", "/training_runs", _list_training_runs),
        ("GET", "/training_runs/{run_id}", _get_training_run),
        ("GET", "/training_runs/{run_id}/checkpoints", _list_checkpoints),
        ("DELETE", "/training_runs/{run_id}/checkpoints/{kind}/{name}", _delete_checkpoint),
        ("GET", "/checkpoints", _list_user_checkpoints),
        ("POST", "/weights_info", _weights_info),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, _API + path, _translating(handler))
    return app


async def _on_shutdown(app: web.Application) -> None:
    await app[TINKER_SERVER_KEY].shutdown()


# ---------------------------------------------------------------------- plumbing


def _translating(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Answer the server's errors with the statuses the SDK acts on: 400 for a bad request
    (not retried), 404, 429 with ``retry-after-ms`` for a full queue (the SDK backs off and
    re-sends), 503 while shutting down."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRequest as exc:
            raise Problem(400, "invalid-request", str(exc)) from exc
        except pydantic.ValidationError as exc:
            errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise Problem(400, "invalid-body", "the body does not validate", errors=errors) from exc
        except ResourceNotFound as exc:
            raise Problem(404, "not-found", str(exc)) from exc
        except QueueFull as exc:
            server = _server(request)
            if server.on_queue_full is not None:
                server.on_queue_full(exc.owner)
            raise Problem(
                429, "queue-full", str(exc), headers={"retry-after-ms": _RETRY_AFTER_MS}
            ) from exc
        except ServerClosed as exc:
            raise Problem(503, "shutting-down", str(exc)) from exc

    handle.__name__ = handler.__name__
    return handle


def _auth_middleware(api_key: str | Mapping[str, str] | None) -> Middleware:
    """``X-API-Key`` auth, compared in constant time; without a key, loopback peers only."""
    keys = _token_table(api_key)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not keys:
            if not is_loopback_host(request.remote or ""):
                raise Problem(
                    403, "loopback-only", "this server has no API key, so it serves loopback only"
                )
        elif request.path not in _PUBLIC:
            presented = request.headers.get("X-API-Key", "").encode()
            if _token_holder(keys, presented) is None:
                raise Problem(401, "unauthorized", "a valid X-API-Key header is required")
        return await handler(request)

    return authenticate


def _server(request: web.Request) -> TinkerServer:
    return request.app[TINKER_SERVER_KEY]


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(value), content_type="application/json"
    )


async def _body(request: web.Request, model: type[_Model]) -> _Model:
    return model.model_validate_json(await request.read())


def _future(request_id: str, **extra: object) -> web.Response:
    return _json({"request_id": request_id, **extra})


def _submit(
    body_type: type[_Model], submit: Callable[[TinkerServer, _Model], str]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that validates the body as ``body_type`` and answers with the future that
    ``submit`` accepted."""

    async def handle(request: web.Request) -> web.Response:
        return _future(submit(_server(request), await _body(request, body_type)))

    handle.__name__ = f"_{submit.__name__}"
    return handle


def _page(request: web.Request, default_limit: int) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", default_limit))
        offset = int(request.query.get("offset", 0))
    except ValueError as exc:
        raise invalid(f"limit and offset must be integers: {exc}") from exc
    if limit < 1 or offset < 0:
        raise invalid("limit must be >= 1 and offset >= 0")
    return limit, offset


# ---------------------------------------------------------------------- session


async def _client_config(request: web.Request) -> web.Response:
    settings = _server(request).settings
    return _json(
        {
            "pjwt_auth_enabled": False,
            "parallel_fwdbwd_chunks": True,
            "proto_compress_fwdbwd": False,
            "fwdbwd_max_chunk_len": settings.max_chunk_datums,
        }
    )


async def _dynamic_config(request: web.Request) -> web.Response:
    return _json({})


async def _create_session(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.CreateSessionRequest)
    session_id = _server(request).create_session(body.user_metadata or {})
    return _json({"type": "create_session", "session_id": session_id})


async def _heartbeat(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.SessionHeartbeatRequest)
    if _server(request).session(body.session_id).finished:
        raise Problem(410, "session-finished", f"session {body.session_id} has finished")
    return _json({"type": "session_heartbeat"})


async def _finish_session(request: web.Request) -> web.Response:
    _server(request).finish_session(request.match_info["session_id"])
    return _json({})


async def _list_sessions(request: web.Request) -> web.Response:
    limit, offset = _page(request, 20)
    return _json({"sessions": _server(request).session_ids()[offset : offset + limit]})


async def _get_session(request: web.Request) -> web.Response:
    session = _server(request).session(request.match_info["session_id"])
    return _json(
        {
            "training_run_ids": session.model_ids,
            "sampler_ids": session.sampler_ids,
            "user_metadata": session.user_metadata,
        }
    )


async def _telemetry(request: web.Request) -> web.Response:
    return _json({"status": "accepted"})


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _capabilities(request: web.Request) -> web.Response:
    server = _server(request)
    models = [
        {"model_name": name, "trainable": True, "sampleable": True}
        for name in server.settings.served_models
    ]
    return _json({"supported_models": models})


# ---------------------------------------------------------------------- training


async def _get_info(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.GetInfoRequest)
    return _json(_server(request).get_info(body.model_id))


async def _forward_backward(request: web.Request) -> web.Response:
    if request.headers.get("Content-Encoding", "identity") != "identity":
        raise invalid("compressed forward_backward bodies are not supported")
    call = decode_forward_backward(await request.read())
    return _future(_server(request).forward_backward(call))


async def _load_weights(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.LoadWeightsRequest)
    server = _server(request)
    if body.model_id is not None:
        return _future(server.load_weights(body))
    if body.session_id is None or body.model_seq_id is None:
        raise invalid("load_weights needs model_id, or session_id and model_seq_id")
    return _future(server.load_into_new_model(body))


# ---------------------------------------------------------------------- sampling


async def _create_sampling_session(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.CreateSamplingSessionRequest)
    sampler_id = await _server(request).create_sampling_session(body)
    return _json({"type": "create_sampling_session", "sampling_session_id": sampler_id})


async def _get_sampler(request: web.Request) -> web.Response:
    return _json(_server(request).sampler_info(request.match_info["sampler_id"]))


async def _asample(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.SampleRequest)
    request_id, sequence_ids = await _server(request).sample(body)
    return _future(request_id, sample_sequence_ids=sequence_ids)


async def _retrieve_future(request: web.Request) -> web.Response:
    body = await _body(request, tinker.types.FutureRetrieveRequest)
    server = _server(request)
    try:
        outcome = await server.futures.wait(body.request_id, server.settings.poll_s)
    except KeyError:
        raise not_found(f"no request {body.request_id!r}", resource=body.request_id) from None
    if outcome is None:
        return _json({"type": "try_again", "request_id": body.request_id, "queue_state": "active"})
    if isinstance(outcome, Failure):
        return _json({"error": outcome.message, "category": outcome.category})
    return web.Response(body=outcome.body, content_type=outcome.content_type)


# ---------------------------------------------------------------------- REST


async def _list_training_runs(request: web.Request) -> web.Response:
    limit, offset = _page(request, 20)
    server = _server(request)
    run_ids = server.training_run_ids()
    runs = [server.training_run(run_id) for run_id in run_ids[offset : offset + limit]]
    cursor = {"offset": offset, "limit": limit, "total_count": len(run_ids)}
    return _json({"training_runs": runs, "cursor": cursor})


async def _get_training_run(request: web.Request) -> web.Response:
    return _json(_server(request).training_run(request.match_info["run_id"]))


async def _list_checkpoints(request: web.Request) -> web.Response:
    return _json({"checkpoints": _server(request).checkpoints(request.match_info["run_id"])})


async def _delete_checkpoint(request: web.Request) -> web.Response:
    match = request.match_info
    _server(request).delete_checkpoint(match["run_id"], match["kind"], match["name"])
    return _json(None)


async def _list_user_checkpoints(request: web.Request) -> web.Response:
    limit, offset = _page(request, 100)
    server = _server(request)
    checkpoints = [c for run_id in server.training_run_ids() for c in server.checkpoints(run_id)]
    cursor = {"offset": offset, "limit": limit, "total_count": len(checkpoints)}
    return _json({"checkpoints": checkpoints[offset : offset + limit], "cursor": cursor})


async def _weights_info(request: web.Request) -> web.Response:
    body = await request.json()
    path = body.get("tinker_path") if isinstance(body, dict) else None
    if not isinstance(path, str):
        raise invalid('weights_info needs {"tinker_path": "tinker://..."}')
    return _json(_server(request).weights_info(path))

"""Every bad request gets an ``application/problem+json`` answer that says what was wrong.

aiohttp runs only on asyncio, so these tests run on anyio's asyncio backend only, against
aiohttp's ``TestServer`` on 127.0.0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from _service_support import NOOP_RUN, Gate, gated_recipe, problem, serving, start
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crucible_kitchen import Recipe, Workflow
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service import create_app, mount_kitchen

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp.typedefs import Handler

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with serving(tmp_path, adapter_sets=["noop", "local_torch"], max_body_bytes=1024) as (
        client,
        _,
    ):
        yield client


async def test_malformed_json(client: TestClient[Any, Any]) -> None:
    response = await client.post("/runs", data=b'{"recipe": "supervised",')
    body = await problem(response, 400, "malformed-json")
    assert body["detail"].startswith("the request body is not valid JSON: ")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "Object missing required field `recipe`"),
        ({"recipe": 3}, "Expected `str`, got `int` - at `$.recipe`"),
        ({"recipe": "sl_basic", "seed": -1}, "Expected `int` >= 0 - at `$.seed`"),
        ({"recipe": "sl_basic", "config": []}, "Expected `object`, got `array` - at `$.config`"),
        (
            {"recipe": "sl_basic", "run_dir": "/etc"},
            "Object contains unknown field `run_dir`",
        ),
        ([], "Expected `object`, got `array`"),
    ],
)
async def test_a_body_that_is_not_a_run_request(
    client: TestClient[Any, Any], body: Any, detail: str
) -> None:
    response = await client.post("/runs", json=body)
    assert (await problem(response, 422, "invalid-request"))["detail"] == (
        f"invalid request body: {detail}"
    )


async def test_unknown_recipe(client: TestClient[Any, Any]) -> None:
    body = await problem(await client.post("/runs", json={"recipe": "nope"}), 422, "unknown-recipe")
    assert body["detail"].startswith("no recipe named 'nope'; known: ")
    assert "sl_basic" in body["detail"]


async def test_an_invalid_config_lists_every_field_error(client: TestClient[Any, Any]) -> None:
    request = {
        "recipe": "supervised",
        "adapters": "noop",
        "config": {"epochs": 0, "learning_rate": "fast", "typo": 1},
    }
    body = await problem(await client.post("/runs", json=request), 422, "invalid-config")
    assert body["detail"] == "invalid config for recipe 'supervised': 3 problem(s)"
    assert [error.split(":")[0] for error in body["errors"]] == [
        "learning_rate",
        "epochs",
        "typo",
    ]


async def test_adapter_sets_come_from_the_allow_list_and_the_registry(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, adapter_sets=["noop", "made_up"]) as (client, _):
        request = {"recipe": "supervised", "adapters": "local_torch"}
        body = await problem(
            await client.post("/runs", json=request), 422, "adapter-set-not-allowed"
        )
        assert (
            body["detail"]
            == "adapter set 'local_torch' is not allowed here; allowed: made_up, noop"
        )
        # The recipe's own set counts too when the request names none.
        body = await problem(
            await client.post("/runs", json={"recipe": "sl_basic"}), 422, "adapter-set-not-allowed"
        )
        request = {"recipe": "supervised", "adapters": "made_up"}
        body = await problem(await client.post("/runs", json=request), 422, "unknown-adapter-set")
        assert body["detail"].startswith("no adapter set named 'made_up'; known: ")


async def test_unknown_run(client: TestClient[Any, Any]) -> None:
    for method, path in [
        ("GET", "/runs/nope"),
        ("POST", "/runs/nope/cancel"),
        ("GET", "/runs/nope/metrics"),
        ("GET", "/runs/nope/events"),
    ]:
        response = await client.request(method, path)
        assert (await problem(response, 404, "unknown-run"))["detail"] == "no run with id 'nope'"


async def test_a_body_too_large_is_refused_whether_its_length_is_declared_or_not(
    client: TestClient[Any, Any],
) -> None:
    big = b'{"recipe": "supervised", "config": {"x": "' + b"a" * 2000 + b'"}}'
    detail = "the request body is larger than 1024 bytes, the limit here"
    response = await client.post("/runs", data=big)
    assert (await problem(response, 413, "body-too-large"))["detail"] == detail

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(big), 100):
            yield big[offset : offset + 100]

    response = await client.post("/runs", data=chunks())
    assert "Content-Length" not in response.request_info.headers
    assert (await problem(response, 413, "body-too-large"))["detail"] == detail


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/runs", "GET, HEAD, POST"),
        ("PUT", "/runs/x", "GET, HEAD"),
        ("GET", "/runs/x/cancel", "POST"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
async def test_wrong_method(
    client: TestClient[Any, Any], method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    body = await problem(response, 405, "method-not-allowed")
    assert response.headers["Allow"] == allowed
    assert body["detail"] == f"{method} is not allowed on {path}; allowed: {allowed}"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            {"status": "done"},
            "query parameter 'status' must be running, completed, failed or cancelled, got 'done'",
        ),
        ({"limit": "0"}, "query parameter 'limit' must be an integer from 1 to 500, got '0'"),
        (
            {"offset": "x"},
            "query parameter 'offset' must be an integer from 0 to 2147483648, got 'x'",
        ),
    ],
)
async def test_bad_query_parameters(
    client: TestClient[Any, Any], query: dict[str, str], detail: str
) -> None:
    response = await client.get("/runs", params=query)
    assert (await problem(response, 400, "invalid-query"))["detail"] == detail


async def test_a_last_event_id_that_is_not_an_event_id(client: TestClient[Any, Any]) -> None:
    run_id = await start(client, NOOP_RUN)
    response = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "-3"})
    body = await problem(response, 400, "invalid-last-event-id")
    assert body["detail"] == "Last-Event-ID must be the id of an event received before, got '-3'"


# ---------------------------------------------------------------------- auth and limits


async def test_a_token_is_required_and_compared_except_for_health(tmp_path: Path) -> None:
    async with serving(tmp_path, token="s3cret") as (client, _):
        assert (await client.get("/health")).status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.get("/runs", headers=headers)
            await problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="crucible-kitchen"'
        response = await client.get("/runs", headers={"Authorization": "Bearer s3cret"})
        assert response.status == 200


async def test_without_a_token_only_loopback_clients_are_served(tmp_path: Path) -> None:
    @web.middleware
    async def behind_a_proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        forwarded = request.headers.get("X-Forwarded-For")
        return await handler(request.clone(remote=forwarded) if forwarded else request)

    host = web.Application(middlewares=[behind_a_proxy])
    mount_kitchen(host, "/kitchen", root=tmp_path)
    async with TestClient(TestServer(host)) as client:
        assert (await client.get("/kitchen/runs")).status == 200
        response = await client.get("/kitchen/runs", headers={"X-Forwarded-For": "10.1.2.3"})
        body = await problem(response, 403, "loopback-only")
        assert body["detail"] == "this kitchen has no token, so it serves loopback clients only"


async def test_each_client_may_have_a_limited_number_of_runs_running(tmp_path: Path) -> None:
    gate = Gate()
    tokens = {"alice": "a-token", "bob": "b-token"}
    app = create_app(
        root=tmp_path, recipes=[gated_recipe(gate)], token=tokens, max_runs_per_client=1
    )
    alice = {"Authorization": "Bearer a-token"}
    bob = {"Authorization": "Bearer b-token"}
    async with TestClient(TestServer(app)) as client:
        first = await client.post("/runs", json={"recipe": "gated"}, headers=alice)
        assert first.status == 202
        response = await client.post("/runs", json={"recipe": "gated"}, headers=alice)
        body = await problem(response, 429, "too-many-runs")
        assert body["detail"] == (
            "client 'alice' has 1 runs running, the most allowed; wait for one to end or cancel one"
        )
        assert (await client.post("/runs", json={"recipe": "gated"}, headers=bob)).status == 202
        gate.open()
        run_id = (await first.json())["run_id"]
        events = await client.get(f"/runs/{run_id}/events", headers=alice)
        await events.read()  # the stream ends with the run
        assert (await client.post("/runs", json={"recipe": "gated"}, headers=alice)).status == 202


async def test_no_new_runs_once_shutdown_began(tmp_path: Path) -> None:
    async with serving(tmp_path) as (client, service):
        await service.shutdown()
        health = await client.get("/health")
        assert health.status == 503
        assert (await health.json())["status"] == "stopping"
        body = await problem(await client.post("/runs", json=NOOP_RUN), 503, "stopping")
        assert body["detail"] == "the kitchen is shutting down and takes no new runs"


async def test_an_unexpected_failure_is_a_logged_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_config: object) -> Workflow:
        raise RuntimeError("the recipe's builder is broken")

    recipe = Recipe("broken", "its workflow cannot be built", broken)
    async with serving(tmp_path, recipes=[recipe]) as (client, _):
        response = await client.post("/runs", json={"recipe": "broken"})
        body = await problem(response, 500, "internal-error")
        assert body["detail"] == "the service failed to handle the request; its log has the details"
        assert "the recipe's builder is broken" not in await response.text()
    [record] = [r for r in caplog.records if r.name == "crucible_kitchen.service"]
    assert record.getMessage() == "POST /runs failed"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the recipe's builder is broken"


def test_invalid_settings_are_all_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(
            token={"alice": "a", "bob": ""},
            max_body_bytes=0,
            heartbeat_s=0.0,
            kitchen_niceness=20,
            gc_young_threshold=0,
            switch_interval_s=0.0,
        )
    assert caught.value.problems == [
        "bob: a token must not be empty",
        "max_body_bytes: must be at least 1, got 0",
        "heartbeat_s: must be more than 0 seconds, got 0.0",
        "kitchen_niceness: must be from 0 to 19, got 20",
        "gc_young_threshold: must be at least 1 or None, got 0",
        "switch_interval_s: must be more than 0 seconds or None, got 0.0",
    ]
    with pytest.raises(ConfigError, match="token: a token must not be empty"):
        create_app(token="")

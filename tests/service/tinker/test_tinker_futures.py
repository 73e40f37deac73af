"""Outcomes nobody retrieves expire: after ``future_ttl_s``, and past ``max_finished_futures``
the oldest first; requests still running are never dropped. A fake clock, no sleeps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import pytest
from _tinker_support import API_KEY, serving
from tinker import types

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service.tinker import TinkerSettings
from crucible_kitchen.service.tinker._futures import Failure, FutureTable, Reply

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _finished(table: FutureTable, body: bytes) -> str:
    request_id = table.create()
    table.finish(request_id, Reply(body))
    return request_id


async def _outcome(table: FutureTable, request_id: str) -> bytes:
    outcome = await table.wait(request_id, 0)
    assert isinstance(outcome, Reply)
    return outcome.body


async def test_an_unretrieved_outcome_expires_after_its_ttl() -> None:
    clock = FakeClock()
    table = FutureTable(ttl_s=60, clock=clock)
    old = _finished(table, b"old")
    clock.now = 30
    young = _finished(table, b"young")
    clock.now = 60  # old is exactly ttl_s old: kept
    assert table.expire() == 0
    clock.now = 60.5
    assert table.expire() == 1
    with pytest.raises(KeyError):
        await table.wait(old, 0)
    assert await _outcome(table, young) == b"young"
    clock.now = 91
    table.create()  # every new request drops the expired outcomes first
    with pytest.raises(KeyError):
        await table.wait(young, 0)


async def test_a_running_request_never_expires() -> None:
    clock = FakeClock()
    table = FutureTable(ttl_s=1, max_finished=1, clock=clock)
    running = table.create()
    clock.now = 1e6
    for index in range(3):
        _finished(table, b"%d" % index)
    assert len(table) == 2  # the running request and the newest outcome
    table.finish(running, Failure("late", "server"))
    outcome = await table.wait(running, 0)
    assert isinstance(outcome, Failure)
    assert outcome.message == "late"


async def test_past_the_bound_the_oldest_outcomes_go_first() -> None:
    table = FutureTable(max_finished=3, clock=FakeClock())
    ids = [_finished(table, b"%d" % index) for index in range(5)]
    assert len(table) == 3
    for dropped in ids[:2]:
        with pytest.raises(KeyError):
            await table.wait(dropped, 0)
    assert [await _outcome(table, kept) for kept in ids[2:]] == [b"2", b"3", b"4"]


async def test_the_server_answers_404_for_an_expired_future(tmp_path: Path) -> None:
    clock = FakeClock()
    async with serving(tmp_path) as served:
        server = served.state
        server.futures = FutureTable(ttl_s=60, clock=clock)  # before any request
        session_id = server.create_session({})
        request = types.CreateModelRequest(
            session_id=session_id,
            model_seq_id=0,
            base_model="tiny",
            lora_config=types.LoraConfig(rank=4),
        )
        request_id = server.create_model(request)
        await server.futures.settle(60)  # finished, not retrieved
        clock.now = 60
        assert (server.futures.expire(), len(server.futures)) == (0, 1)
        clock.now = 61
        assert (server.futures.expire(), len(server.futures)) == (1, 0)
        url = f"{served.url}/api/v1/retrieve_future"
        async with (
            aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http,
            http.post(url, json={"request_id": request_id}) as response,
        ):
            assert response.status == 404
            assert request_id in await response.text()


def test_the_ttl_and_the_bound_are_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        TinkerSettings(future_ttl_s=0, max_finished_futures=0)
    message = str(caught.value)
    assert "future_ttl_s: must be more than 0" in message
    assert "max_finished_futures: must be at least 1" in message
    table = TinkerSettings(future_ttl_s=5, max_finished_futures=7)
    assert (table.future_ttl_s, table.max_finished_futures) == (5, 7)

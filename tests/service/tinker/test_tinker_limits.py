"""API keys, concurrent training runs, the bounded queue and shutdown with requests in flight."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import anyio
import anyio.to_thread
import numpy as np
import pytest
import tinker
from _tinker_support import ADAM, API_KEY, TEXT, close, serving, sft_datum, training_client

from crucible_kitchen.errors import ConfigError
from crucible_kitchen.service.tinker import TinkerSettings

if TYPE_CHECKING:
    from pathlib import Path

    from tinker import types

pytestmark = pytest.mark.anyio


def _logprobs(output: types.ForwardBackwardOutput) -> np.ndarray:
    return np.asarray(output.loss_fn_outputs[0]["logprobs"].data)


async def test_a_wrong_api_key_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        with pytest.raises(tinker.AuthenticationError):
            await served.connect(api_key="tml-wrong")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{served.url}/api/v1/healthz") as health:
                assert health.status == 200  # probes need no key
            async with http.post(f"{served.url}/api/v1/create_session", json={}) as anonymous:
                assert anonymous.status == 401
            headers = {"X-API-Key": API_KEY}
            async with http.get(
                f"{served.url}/api/v1/get_server_capabilities", headers=headers
            ) as capabilities:
                assert capabilities.status == 200
                models = (await capabilities.json())["supported_models"]
    assert {"model_name": "tiny", "trainable": True, "sampleable": True} in models


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        TinkerSettings(api_key="", max_queue=0, poll_s=60, base_models=())
    assert len(caught.value.problems) == 4


async def test_two_training_runs_train_concurrently_and_stay_apart(tmp_path: Path) -> None:
    first, second = sft_datum(TEXT), sft_datum(b"a different run learns this")
    async with serving(tmp_path) as served:
        clients = [await served.connect(), await served.connect()]
        trainers = [await training_client(client) for client in clients]
        untouched = await trainers[1].forward([first], "cross_entropy")
        losses: dict[int, list[float]] = {0: [], 1: []}

        async def train(index: int, datum: types.Datum, steps: int) -> None:
            for _ in range(steps):
                result = trainers[index].forward_backward([datum], "cross_entropy")
                await trainers[index].optim_step(ADAM)
                losses[index].append((await result).metrics["loss:sum"])

        async with anyio.create_task_group() as group:
            group.start_soon(train, 0, first, 4)
            group.start_soon(train, 1, second, 4)
        trained_first = await trainers[0].forward([first], "cross_entropy")
        other_on_first = await trainers[1].forward([first], "cross_entropy")
        for client in clients:
            await close(client)
    assert trainers[0].model_id != trainers[1].model_id
    assert all(run[-1] < run[0] for run in losses.values())
    # the second run never saw `first`: its loss there moved only through its own data
    assert not np.allclose(_logprobs(trained_first), _logprobs(other_on_first))
    assert _logprobs(untouched).shape == _logprobs(other_on_first).shape


async def test_a_full_queue_answers_429_and_the_sdk_resends(tmp_path: Path) -> None:
    datum = sft_datum()
    gate, held, refused = anyio.Event(), anyio.Event(), anyio.Event()
    async with serving(tmp_path, max_queue=2) as served:

        async def hold(model_id: str, seq_id: int) -> None:
            if seq_id == 1:
                held.set()
                await gate.wait()

        served.state.before_start = hold
        served.state.on_queue_full = lambda owner: refused.set()
        client = await served.connect()
        trainer = await training_client(client)
        futures = [
            trainer.forward_backward([datum], "cross_entropy"),  # seq 1: held
            trainer.optim_step(ADAM),  # seq 2: queued, the queue is full
            trainer.forward_backward([datum], "cross_entropy"),  # seq 3: refused, re-sent
            trainer.optim_step(ADAM),
        ]
        await held.wait()
        await refused.wait()
        gate.set()
        results = [await future for future in futures]
        await close(client)
    assert results[2].metrics["loss:sum"] < results[0].metrics["loss:sum"]


async def test_shutdown_fails_requests_in_flight_and_leaves_no_task(tmp_path: Path) -> None:
    datum = sft_datum()
    held, refused = anyio.Event(), anyio.Event()
    tasks_before = asyncio.all_tasks()
    async with serving(tmp_path, shutdown_grace_s=0.2, max_queue=2) as served:

        async def hold(model_id: str, seq_id: int) -> None:
            held.set()
            await anyio.sleep_forever()  # cancelled when the server stops

        served.state.before_start = hold
        served.state.on_queue_full = lambda owner: refused.set()
        client = await served.connect()
        trainer = await training_client(client)
        running = trainer.forward_backward([datum], "cross_entropy")  # seq 1: held starting
        waiting = trainer.optim_step(ADAM)  # seq 2: queued behind it
        resent = trainer.forward_backward([datum], "cross_entropy")  # seq 3: 429, re-sent
        await held.wait()
        await refused.wait()  # so seq 2 was accepted: the SDK submits in turn
        # What the application's shutdown does first, while the SDK can still poll.
        await served.state.shutdown()
        for future in (running, waiting):
            with pytest.raises(tinker.RequestFailedError, match="shutting down"):
                await future
        async with aiohttp.ClientSession() as http:
            body = {"model_id": trainer.model_id, "seq_id": 3, "adam_params": {}}
            headers = {"X-API-Key": API_KEY}
            async with http.post(
                f"{served.url}/api/v1/optim_step", json=body, headers=headers
            ) as refused_after:
                assert refused_after.status == 503  # new requests are refused from now on
        resent.future().cancel()  # the SDK would go on re-sending it
        await anyio.to_thread.run_sync(client.holder.close)
    assert served.state.futures.unfinished == 0
    assert asyncio.all_tasks() <= tasks_before  # every task the server started has ended

"""``with_latency``: network delay around any adapter, and what pipelining gains under it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crucible_kitchen.adapters.noop import NoopBlobStore, NoopFuture, NoopTrainingClient
from crucible_kitchen.ports import (
    CHECKPOINT_DIR,
    FUTURE_DONE,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    ModelInput,
    SamplingParams,
    capability,
    check_adapter,
)
from crucible_kitchen.testing import check_training_client, with_latency

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crucible_kitchen.ports import Capabilities, SaveStateResponse

pytestmark = pytest.mark.anyio

ONE_WAY = 0.02
ADAM = AdamParams()


async def test_the_wrapped_adapter_still_implements_its_port() -> None:
    check_adapter("training_client", with_latency(NoopTrainingClient(), ONE_WAY))
    check_adapter("blob_store", with_latency(NoopBlobStore(), ONE_WAY))
    await check_training_client(lambda: with_latency(NoopTrainingClient(seed=2), 0.0))


async def test_a_call_is_one_round_trip_and_a_result_another() -> None:
    inner = NoopTrainingClient()
    client = with_latency(inner, ONE_WAY)
    assert client.get_info() == inner.get_info()  # sync: no delay, no await
    assert client.counters is inner.counters  # attributes pass through

    started = anyio.current_time()
    future = await client.optim_step(ADAM, request_id="opt")
    submitted = anyio.current_time()
    assert submitted - started >= 2 * ONE_WAY
    assert inner.state.step == 1
    await future.result()
    assert anyio.current_time() - submitted >= 2 * ONE_WAY


async def test_sampling_clients_it_returns_are_delayed_too() -> None:
    client = with_latency(NoopTrainingClient(), ONE_WAY)
    saved = await (await client.save_weights_for_sampler("s", request_id="s")).result()
    sampler = await client.create_sampling_client(saved.path)
    check_adapter("sampling_client", sampler)
    started = anyio.current_time()
    await sampler.sample(ModelInput.from_ints([1, 2]), 1, SamplingParams(max_tokens=2))
    assert anyio.current_time() - started >= 2 * ONE_WAY


async def test_requests_in_flight_together_overlap_their_round_trips() -> None:
    client = with_latency(NoopTrainingClient(), ONE_WAY)
    futures = []

    async def submit(index: int) -> None:
        futures.append(await client.save_state(f"c{index}", request_id=f"save-{index}"))

    started = anyio.current_time()
    async with anyio.create_task_group() as tasks:
        for index in range(8):
            tasks.start_soon(submit, index)
    async with anyio.create_task_group() as tasks:
        for future in futures:
            tasks.start_soon(future.result)
    elapsed = anyio.current_time() - started
    serial = 8 * 4 * ONE_WAY  # eight requests one after another: two round trips each
    assert 4 * ONE_WAY <= elapsed < serial / 2


def test_a_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        with_latency(NoopBlobStore(), -0.1)


class KnownDone:
    """An in-process future: it declares ``FUTURE_DONE``."""

    def __init__(self, future: NoopFuture[Any]) -> None:
        self._future = future

    @property
    def capabilities(self) -> Capabilities:
        return {FUTURE_DONE: lambda: lambda: True}

    async def result(self) -> Any:
        return await self._future.result()


class DeclaresCheckpointing(NoopTrainingClient):
    @property
    def capabilities(self) -> Capabilities:
        return {
            CHECKPOINT_DIR: lambda: Path("/checkpoints"),
            SAVE_STATE_WITH_PAYLOAD: lambda: self.save_with_payload,
        }

    async def save_with_payload(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any]
    ) -> KnownDone:
        return KnownDone(await self.save_state(name, request_id=request_id))


async def test_declared_capabilities_pass_through_and_their_calls_are_delayed() -> None:
    inner = DeclaresCheckpointing()
    client = with_latency(inner, ONE_WAY)
    assert capability(client, CHECKPOINT_DIR) == Path("/checkpoints")
    assert capability(inner, FUTURE_DONE) is None
    save = capability(client, SAVE_STATE_WITH_PAYLOAD)
    assert save is not None
    started = anyio.current_time()
    future = await save("c", request_id="s", user_payload={"context": {}})
    submitted = anyio.current_time()
    assert submitted - started >= 2 * ONE_WAY
    assert inner.counters.applied["save_state"] == 1
    # Behind a network, knowing whether a request is done takes a poll: not declared.
    assert capability(future, FUTURE_DONE) is None
    response: SaveStateResponse = await future.result()
    assert anyio.current_time() - submitted >= 2 * ONE_WAY
    assert response.path.endswith("/weights/c")

"""Fault injection in the noop adapters: latency, transient and permanent errors, hangs."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, TypeVar

import anyio
import pytest

from crucible_kitchen.adapters.noop import (
    CallInfo,
    FaultPlan,
    Hang,
    Latency,
    NoopBlobStore,
    NoopTrainingClient,
    PermanentFailure,
    TransientFailure,
    noop_adapters,
)
from crucible_kitchen.errors import PermanentBackendError, TransientBackendError
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, SamplingParams, TensorData

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from crucible_kitchen.ports import BackendFuture

pytestmark = pytest.mark.anyio

T = TypeVar("T")
ADAM = AdamParams(learning_rate=1e-3)
BATCH = [
    Datum(
        model_input=ModelInput.from_ints([1, 40, 41]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=(40, 41, 42)),
            "weights": TensorData(dtype="float32", data=(1.0, 1.0, 1.0)),
        },
    )
]


async def until_answered(submit: Callable[[], Awaitable[BackendFuture[T]]]) -> T:
    """Re-send a request with its same request_id until it stops failing transiently."""
    for _ in range(10):
        try:
            return await (await submit()).result()
        except TransientBackendError:
            continue
    raise AssertionError("still failing after 10 attempts")


async def train(client: NoopTrainingClient, steps: int) -> None:
    for step in range(steps):
        fb = functools.partial(
            client.forward_backward, BATCH, "cross_entropy", request_id=f"fb{step}"
        )
        await until_answered(fb)
        await until_answered(functools.partial(client.optim_step, ADAM, request_id=f"opt{step}"))


async def test_a_transient_failure_has_no_effect_and_a_re_send_succeeds() -> None:
    faults = FaultPlan().inject(TransientFailure("busy"), method="forward_backward", calls=1)
    client = NoopTrainingClient(faults=faults)
    future = await client.forward_backward(BATCH, "cross_entropy", request_id="fb")
    for _ in range(2):  # every await of a failed future raises the same error
        with pytest.raises(TransientBackendError, match="forward_backward: busy") as raised:
            await future.result()
    error = raised.value
    assert (error.port, error.operation, error.request_id) == (
        "training_client",
        "forward_backward",
        "fb",
    )
    assert client.state.pending_gradients == 0
    assert client.counters.faulted["forward_backward"] == 1
    assert client.counters.applied["forward_backward"] == 0

    await (await client.forward_backward(BATCH, "cross_entropy", request_id="fb")).result()
    assert client.state.pending_gradients == 1
    assert client.counters.applied["forward_backward"] == 1


async def test_a_permanent_failure_has_no_effect() -> None:
    faults = FaultPlan().inject(PermanentFailure(), method="optim_step")
    client = NoopTrainingClient(faults=faults)
    future = await client.optim_step(ADAM, request_id="opt")
    with pytest.raises(PermanentBackendError, match="injected permanent failure") as raised:
        await future.result()
    assert not isinstance(raised.value, TransientBackendError)
    assert client.state.step == 0


async def test_retried_transient_failures_end_exactly_like_an_undisturbed_run() -> None:
    undisturbed = NoopTrainingClient(seed=3)
    await train(undisturbed, 4)

    faults = FaultPlan().inject(TransientFailure(), when=lambda call: call.number % 2 == 1)
    disturbed = NoopTrainingClient(seed=3, faults=faults)
    await train(disturbed, 4)
    assert disturbed.counters.faulted["optim_step"] == 4
    assert disturbed.state == undisturbed.state


async def test_latency_delays_the_answer_but_not_the_effect() -> None:
    faults = FaultPlan().inject(Latency(0.05), method="forward_backward")
    client = NoopTrainingClient(faults=faults)
    started = anyio.current_time()
    slow = await client.forward_backward(BATCH, "cross_entropy", request_id="fb")
    fast = await client.optim_step(ADAM, request_id="opt")
    assert client.state.step == 1  # both took effect at once, in order
    await fast.result()  # served after the slow request: one backend, one queue
    assert anyio.current_time() - started >= 0.05
    await slow.result()
    assert client.counters.applied["forward_backward"] == 1


async def test_a_hang_never_answers_and_is_forgotten_once_its_waiter_gives_up() -> None:
    faults = FaultPlan().inject(Hang(), method="optim_step", calls=1)
    client = NoopTrainingClient(faults=faults)
    hung = await client.optim_step(ADAM, request_id="opt")
    assert await client.optim_step(ADAM, request_id="opt") is hung  # still in flight

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hung.result)
        await anyio.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()
    assert client.state.step == 0

    retried = await client.optim_step(ADAM, request_id="opt")
    assert retried is not hung
    await retried.result()
    assert client.state.step == 1
    assert (client.counters.faulted["optim_step"], client.counters.applied["optim_step"]) == (1, 1)


async def test_faults_in_calls_without_futures_raise_from_the_call() -> None:
    faults = FaultPlan().inject(TransientFailure(), method="read", times=1)
    store = NoopBlobStore(faults=faults)
    await store.write("k", b"v", request_id="w")
    with pytest.raises(TransientBackendError) as raised:
        await store.read("k")
    assert (raised.value.port, raised.value.request_id) == ("blob_store", None)
    assert await store.read("k") == b"v"  # times=1: the second read goes through


async def test_rules_select_calls_by_port_method_number_and_predicate() -> None:
    faults = (
        FaultPlan()
        .inject(PermanentFailure("by predicate"), when=lambda call: call.request_id == "w-3")
        .inject(TransientFailure("by port"), port="blob_store", method="write", calls=[2])
    )
    adapters = noop_adapters(faults=faults)
    blobs = adapters["blob_store"]
    training = adapters["training_client"]
    assert isinstance(blobs, NoopBlobStore)
    assert isinstance(training, NoopTrainingClient)

    await (await training.forward_backward(BATCH, "cross_entropy", request_id="w-2")).result()
    outcomes = []
    for number in (1, 2, 3):
        try:
            await blobs.write("k", b"v", request_id=f"w-{number}")
            outcomes.append("ok")
        except (TransientBackendError, PermanentBackendError) as error:
            outcomes.append(str(error))
    assert outcomes == ["ok", "write: by port", "write: by predicate"]
    assert faults.injected == [
        (CallInfo("blob_store", "write", 2, "w-2"), TransientFailure("by port")),
        (CallInfo("blob_store", "write", 3, "w-3"), PermanentFailure("by predicate")),
    ]


def test_a_negative_injection_count_is_refused() -> None:
    with pytest.raises(ValueError, match="times must be >= 0"):
        FaultPlan().inject(Hang(), times=-1)


async def test_faults_reach_sampling_clients_made_by_a_training_client() -> None:
    faults = FaultPlan().inject(TransientFailure(), port="sampling_client", method="sample")
    client = NoopTrainingClient(faults=faults)
    saved = await (await client.save_weights_for_sampler("s", request_id="s")).result()
    sampler = await client.create_sampling_client(saved.path)
    future = await sampler.sample(ModelInput.from_ints([1, 2]), 1, SamplingParams(max_tokens=2))
    with pytest.raises(TransientBackendError):
        await future.result()

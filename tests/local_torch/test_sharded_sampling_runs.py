"""How a :class:`ShardedSamplingClient` starts its collective runs, on one rank, with a fake
``run`` (the training client's request) and a group whose agreement is recorded: a cancelled
awaiter never leaves a run to be started twice, and a run's agreement names the sampler and
its requests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from _cancelled_awaiter import await_after_a_cancelled_awaiter

from crucible_kitchen.adapters.local_torch import LocalTokenizer, ModelConfig
from crucible_kitchen.adapters.local_torch._distributed import DistributedGroup
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._sharded_sampling import (
    SamplerShards,
    ShardedSamplingClient,
)
from crucible_kitchen.ports import ModelInput, SamplingParams

if TYPE_CHECKING:
    from functools import partial

CONFIG = ModelConfig(
    vocab_size=300, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=32, device="cpu"
)
PARAMS = SamplingParams(max_tokens=2, temperature=0.0)


class _Agreed(Exception):
    """Stops a run after its agreement (the fake group has no collectives)."""


class _RecordingGroup(DistributedGroup):
    """One rank whose agreements are recorded, and stop the run."""

    def __init__(self) -> None:
        super().__init__(rank=0, world_size=1, local_rank=0, backend="gloo", timeout=5.0)
        self.agreed: list[str | None] = []

    def agree(self, method: str, request_id: str | None, *, payload: float = 0.0) -> list[float]:
        self.agreed.append(request_id)
        raise _Agreed


def _sampler(run: Any, name: str, group: DistributedGroup | None = None) -> ShardedSamplingClient:
    return ShardedSamplingClient(
        build_model(CONFIG, seed=0),
        SamplerShards([]),
        LocalTokenizer.named("byte"),
        group=group or _RecordingGroup(),
        run=run,
        name=name,
    )


@pytest.mark.anyio
async def test_a_cancelled_awaiter_leaves_the_run_in_flight_to_the_next_one() -> None:
    """The first awaiter starts the run, then is cancelled: the next awaiter waits for that
    run instead of starting an empty one of its own (a collective on this rank alone)."""
    runs: list[int] = []
    started, release = anyio.Event(), anyio.Event()

    async def run(method: str, work: partial[None]) -> None:
        batch = work.args[0]
        runs.append(len(batch))
        started.set()
        await release.wait()
        for request in batch:
            request.ran, request.value = True, "sampled"

    sampler = _sampler(run, "s")
    future = await sampler.sample(ModelInput.from_ints([1, 2]), 1, PARAMS)
    got = await await_after_a_cancelled_awaiter(future.result, started.wait, release.set)
    assert runs == [1]
    assert got == "sampled"


@pytest.mark.anyio
async def test_a_run_agrees_on_its_sampler_and_requests_not_only_their_number() -> None:
    async def run(method: str, work: partial[None]) -> None:
        await anyio.lowlevel.checkpoint()
        with pytest.raises(_Agreed):
            work()

    group = _RecordingGroup()
    for name, request_id in (("a", "r1"), ("a", "r1"), ("b", "r1"), ("a", "r2")):
        sampler = _sampler(run, name, group)
        future = await sampler.sample(ModelInput.from_ints([1]), 1, PARAMS, request_id=request_id)
        await future.result()  # the run stopped after agreeing: no samples
    same, again, other_sampler, other_request = group.agreed
    assert same == again
    assert same is not None
    assert same.startswith("a: 1 requests")
    assert len({same, other_sampler, other_request}) == 3

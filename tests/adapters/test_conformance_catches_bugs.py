"""The conformance checks fail on adapters that break their port's contract."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.adapters.noop import (
    NoopBlobStore,
    NoopMetricsStore,
    NoopRenderer,
    NoopSamplingClient,
    NoopTrainingClient,
)
from crucible_kitchen.ports import AdamParams, SamplingParams
from crucible_kitchen.testing import (
    check_blob_store,
    check_metrics_store,
    check_renderer,
    check_sampling_client,
    check_training_client,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.adapters.noop import NoopFuture
    from crucible_kitchen.ports import (
        Datum,
        ForwardBackwardOutput,
        LossFnType,
        Message,
        MetricPoint,
        ModelInput,
        OptimStepResponse,
        SampleResponse,
        TensorData,
        TrainOnWhat,
    )

pytestmark = pytest.mark.anyio


class AppliesReSentOptimSteps(NoopTrainingClient):
    """Forgets optimizer step ids: a re-sent step is applied again."""

    _fresh = itertools.count()

    async def optim_step(
        self, adam_params: AdamParams, *, request_id: str
    ) -> NoopFuture[OptimStepResponse]:
        return await super().optim_step(adam_params, request_id=f"{request_id}#{next(self._fresh)}")


class StepsOnEveryBackward(NoopTrainingClient):
    """Slips an optimizer step in after each backward pass."""

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> NoopFuture[ForwardBackwardOutput]:
        future = await super().forward_backward(
            data, loss_fn, loss_fn_config, request_id=request_id
        )
        await super().optim_step(AdamParams(), request_id=f"hidden-{request_id}")
        return future


class IgnoresTheSeed(NoopSamplingClient):
    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> NoopFuture[SampleResponse]:
        unseeded = SamplingParams(max_tokens=sampling_params.max_tokens)
        return await super().sample(
            prompt, num_samples, unseeded, include_prompt_logprobs=include_prompt_logprobs
        )


class LetsKeysEscape(NoopBlobStore):
    async def read(self, key: str) -> bytes:
        if key.startswith(".."):
            return b"/etc/passwd"
        return await super().read(key)


class RecordsTwice(NoopMetricsStore):
    async def record(self, points: Sequence[MetricPoint], *, request_id: str) -> None:
        await super().record(points, request_id=f"{request_id}#{len(await self.read('r1'))}")


class TrainsOnThePrompt(NoopRenderer):
    def build_supervised_example(
        self, messages: Sequence[Message], *, train_on_what: TrainOnWhat = "last_assistant_message"
    ) -> tuple[ModelInput, TensorData]:
        return super().build_supervised_example(messages, train_on_what="all_tokens")


async def test_a_re_applied_optimizer_step_is_caught() -> None:
    with pytest.raises(AssertionError, match="re-sent optim_step: other result"):
        await check_training_client(AppliesReSentOptimSteps)


async def test_hidden_training_is_caught() -> None:
    with pytest.raises(AssertionError, match="trains unlike cross_entropy"):
        await check_training_client(StepsOnEveryBackward)


async def test_an_ignored_seed_is_caught() -> None:
    with pytest.raises(AssertionError, match="the same seed gave other samples"):
        await check_sampling_client(IgnoresTheSeed)


async def test_an_escaping_blob_key_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"read of key '\.\./up': expected InvalidRequest"):
        await check_blob_store(LetsKeysEscape)


async def test_a_double_record_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"read\('r1'\)"):
        await check_metrics_store(RecordsTwice)


def test_weight_on_the_prompt_is_caught() -> None:
    with pytest.raises(AssertionError, match="the prompt carries training weight"):
        check_renderer(TrainsOnThePrompt)

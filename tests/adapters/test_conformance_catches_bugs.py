"""The conformance checks fail on adapters that break their port's contract."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crucible_kitchen.adapters.noop import (
    NoopBlobStore,
    NoopMetricsStore,
    NoopRenderer,
    NoopSamplingClient,
    NoopTrainingClient,
)
from crucible_kitchen.errors import RequestIdConflict, ResourceNotFound
from crucible_kitchen.ports import (
    CHECKPOINT_DIR,
    CHECKPOINT_PAYLOAD,
    FUTURE_DONE,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    SamplingParams,
)
from crucible_kitchen.testing import (
    check_blob_store,
    check_metrics_store,
    check_renderer,
    check_sampling_client,
    check_training_client,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crucible_kitchen.adapters.noop import NoopFuture
    from crucible_kitchen.ports import (
        Capabilities,
        Datum,
        ForwardBackwardOutput,
        LossFnType,
        Message,
        MetricPoint,
        ModelInput,
        OptimStepResponse,
        SampleResponse,
        SaveStateResponse,
        TensorData,
        TrainOnWhat,
    )

pytestmark = pytest.mark.anyio


class KeepsPayloads(NoopTrainingClient):
    """Declares checkpoint payloads and keeps them beside the checkpoints (shared by every
    client made from the same mappings, like files in a directory)."""

    def __init__(self, checkpoints: dict[str, bytes], payloads: dict[str, Any]) -> None:
        super().__init__(seed=0, checkpoints=checkpoints)
        self.checkpoints = checkpoints
        self.payloads = payloads
        self._sent: dict[str, str] = {}

    @property
    def capabilities(self) -> Capabilities:
        return {
            SAVE_STATE_WITH_PAYLOAD: lambda: self.save_state_with_payload,
            CHECKPOINT_PAYLOAD: lambda: self.checkpoint_payload,
        }

    async def save_state_with_payload(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any]
    ) -> NoopFuture[SaveStateResponse]:
        encoded = json.dumps(user_payload, sort_keys=True)
        if self._sent.setdefault(request_id, encoded) != encoded:
            raise RequestIdConflict.reused(
                request_id, earlier="save_state", port="training_client", operation="save_state"
            )
        future = await self.save_state(name, request_id=request_id)
        self.payloads[(await future.result()).path] = json.loads(encoded)
        return future

    async def checkpoint_payload(self, path: str) -> dict[str, Any] | None:
        if path not in self.checkpoints:
            raise ResourceNotFound(
                f"no checkpoint {path}",
                port="training_client",
                operation="checkpoint_payload",
                resource=path,
            )
        payload: dict[str, Any] | None = self.payloads.get(path)
        return payload


def _with(kind: type[KeepsPayloads]) -> Callable[[], KeepsPayloads]:
    checkpoints: dict[str, bytes] = {}
    payloads: dict[str, Any] = {}
    return lambda: kind(checkpoints, payloads)


class LosesPayloads(KeepsPayloads):
    async def checkpoint_payload(self, path: str) -> dict[str, Any] | None:
        await super().checkpoint_payload(path)
        return None


class OverwritesOnConflict(KeepsPayloads):
    """Forgets payload request ids: a re-used id with another payload is a new request."""

    _fresh = itertools.count()

    async def save_state_with_payload(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any]
    ) -> NoopFuture[SaveStateResponse]:
        return await super().save_state_with_payload(
            name, request_id=f"{request_id}#{next(self._fresh)}", user_payload=user_payload
        )


class ClaimsACheckpointDirectory(NoopTrainingClient):
    """Declares a checkpoint directory its checkpoints are not in."""

    @property
    def capabilities(self) -> Capabilities:
        return {CHECKPOINT_DIR: lambda: Path("/nonexistent/checkpoints")}


class DeclaresByName(NoopTrainingClient):
    @property
    def capabilities(self) -> Capabilities:
        return {"checkpoint_dir": lambda: Path("/tmp")}  # type: ignore[dict-item]


class NeverDone:
    """A future that declares ``FUTURE_DONE`` and always says it is not done."""

    def __init__(self, future: NoopFuture[Any]) -> None:
        self._future = future

    @property
    def capabilities(self) -> Capabilities:
        return {FUTURE_DONE: lambda: lambda: False}

    async def result(self) -> Any:
        return await self._future.result()


class SaysItsFuturesAreNeverDone(NoopTrainingClient):
    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> NoopFuture[ForwardBackwardOutput]:
        future = await super().forward(data, loss_fn, loss_fn_config)
        return NeverDone(future)  # type: ignore[return-value]


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


async def test_declared_checkpoint_payloads_that_work_pass() -> None:
    await check_training_client(_with(KeepsPayloads))


async def test_a_lost_checkpoint_payload_is_caught() -> None:
    with pytest.raises(AssertionError, match="CHECKPOINT_PAYLOAD: None, not the payload saved"):
        await check_training_client(_with(LosesPayloads))


async def test_a_payload_overwritten_under_a_reused_request_id_is_caught() -> None:
    with pytest.raises(
        AssertionError,
        match="SAVE_STATE_WITH_PAYLOAD reusing a request_id with another payload: expected",
    ):
        await check_training_client(_with(OverwritesOnConflict))


async def test_a_wrong_checkpoint_directory_is_caught() -> None:
    with pytest.raises(AssertionError, match="CHECKPOINT_DIR: the checkpoint noop://"):
        await check_training_client(ClaimsACheckpointDirectory)


async def test_a_capability_declared_by_name_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"capabilities: .* each key must be a Capability"):
        await check_training_client(DeclaresByName)


async def test_a_future_that_never_says_done_is_caught() -> None:
    with pytest.raises(AssertionError, match="forward: FUTURE_DONE says not done"):
        await check_training_client(SaysItsFuturesAreNeverDone)

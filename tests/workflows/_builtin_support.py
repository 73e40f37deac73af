"""Helpers for the built-in workflow tests: a recording noop backend and event filters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from crucible_kitchen.adapters.noop import NoopSamplingClient, NoopTrainingClient
from crucible_kitchen.kitchen import Adapters
from crucible_kitchen.telemetry import StageStop, TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.ports import (
        AdamParams,
        CustomLossFn,
        Datum,
        ForwardBackwardOutput,
        LossFnType,
        ModelInput,
        SampleResponse,
        SamplingParams,
    )

E = TypeVar("E")

Log = list[tuple[str, str, str | None]]
"""``(what, method, request_id)`` with ``what`` "submit" or "await", in the order it happened."""


class RecordingFuture:
    """A future that logs when it is awaited."""

    def __init__(self, future: Any, log: Log, method: str, request_id: str | None) -> None:
        self._future = future
        self._log = log
        self._method = method
        self._request_id = request_id

    async def result(self) -> Any:
        self._log.append(("await", self._method, self._request_id))
        return await self._future.result()


class RecordingSampler:
    """Wraps a sampling client; keeps every sample request and its response."""

    def __init__(self, inner: NoopSamplingClient, samples: list[tuple[ModelInput, Any]]) -> None:
        self._inner = inner
        self._samples = samples

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> Any:
        future = await self._inner.sample(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs=include_prompt_logprobs,
            request_id=request_id,
        )
        samples = self._samples

        class _Future:
            async def result(self) -> SampleResponse:
                response: SampleResponse = await future.result()
                samples.append((prompt, response))
                return response

        return _Future()

    async def compute_logprobs(self, prompt: ModelInput, *, request_id: str | None = None) -> Any:
        return await self._inner.compute_logprobs(prompt, request_id=request_id)

    def get_tokenizer(self) -> Any:
        return self._inner.get_tokenizer()


class RecordingTrainingClient(NoopTrainingClient):
    """A noop training client that logs submits and awaits and keeps what it computed."""

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.log: Log = []
        self.steps: list[tuple[str, tuple[Datum, ...], Any]] = []
        """``(method, data, future)`` per forward_backward(_custom) call, in order."""
        self.forwards: list[tuple[tuple[Datum, ...], Any]] = []
        self.adam: list[AdamParams] = []
        self.loss_fns: list[tuple[LossFnType, Mapping[str, float | str] | None]] = []
        self.samples: list[tuple[ModelInput, SampleResponse]] = []

    def _wrap(self, future: Any, method: str, request_id: str | None) -> RecordingFuture:
        self.log.append(("submit", method, request_id))
        return RecordingFuture(future, self.log, method, request_id)

    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Any:
        future = await super().forward(data, loss_fn, loss_fn_config)
        self.forwards.append((tuple(data), future))
        return self._wrap(future, "forward", None)

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> Any:
        future = await super().forward_backward(
            data, loss_fn, loss_fn_config, request_id=request_id
        )
        self.steps.append(("forward_backward", tuple(data), future))
        self.loss_fns.append((loss_fn, loss_fn_config))
        return self._wrap(future, "forward_backward", request_id)

    async def forward_backward_custom(
        self, data: Sequence[Datum], loss_fn: CustomLossFn, *, request_id: str
    ) -> Any:
        future = await super().forward_backward_custom(data, loss_fn, request_id=request_id)
        self.steps.append(("forward_backward_custom", tuple(data), future))
        return self._wrap(future, "forward_backward_custom", request_id)

    async def optim_step(self, adam_params: AdamParams, *, request_id: str) -> Any:
        future = await super().optim_step(adam_params, request_id=request_id)
        self.adam.append(adam_params)
        return self._wrap(future, "optim_step", request_id)

    async def create_sampling_client(self, model_path: str) -> Any:
        inner = await super().create_sampling_client(model_path)
        return RecordingSampler(inner, self.samples)

    async def outputs(self) -> list[ForwardBackwardOutput]:
        """The output of every recorded forward_backward(_custom) call, in order."""
        return [await future.result() for _, _, future in self.steps]


def recording_adapters(seed: int, **more: Any) -> tuple[Adapters, RecordingTrainingClient]:
    """The noop adapters with a recording training client (and any ``more`` ports)."""
    client = RecordingTrainingClient(seed=seed)
    return Adapters.noop(seed=seed).replace(training_client=client, **more), client


def of_type(events: Sequence[TelemetryEvent], kind: type[E]) -> list[E]:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, kind)]


def stage_sequence(events: Sequence[TelemetryEvent]) -> list[str]:
    """The stages that completed, in order."""
    return [e.stage for e in of_type(events, StageStop)]


def applied_ids(client: Any) -> list[str]:
    """The request ids of the mutating requests a noop adapter applied, in order."""
    return [request_id for _, request_id in client.counters.log if request_id is not None]


def datum_key(datum: Datum) -> bytes:
    """A hashable identity for a datum."""
    return msgspec.json.encode(datum)


def floats(datum: Datum, key: str) -> list[float]:
    """A datum's loss input as floats."""
    return [float(v) for v in datum.loss_fn_inputs[key].data]

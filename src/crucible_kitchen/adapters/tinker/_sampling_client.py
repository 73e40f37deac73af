"""The SamplingClient port over the official tinker SDK's ``SamplingClient``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from crucible_kitchen.adapters.tinker._convert import (
    model_input_to_sdk,
    sample_from_sdk,
    sampling_params_to_sdk,
)
from crucible_kitchen.adapters.tinker._errors import translated
from crucible_kitchen.adapters.tinker._futures import (
    RequestLedger,
    TinkerFuture,
    in_sdk_context,
)
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import ModelInput, SampleResponse, SamplingParams, request_fingerprint

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    import tinker

    from crucible_kitchen.adapters.tinker._session import TinkerSession
    from crucible_kitchen.ports import Tokenizer

__all__ = ("TinkerSamplingClient",)

_PORT: Final = "sampling_client"


class TinkerSamplingClient:
    """Implements :class:`~crucible_kitchen.ports.SamplingClient` with a Tinker sampler.

    Samples either weights a training client saved (see
    :meth:`TinkerTrainingClient.create_sampling_client`) or a ``base_model`` of the server;
    the latter's SDK client is made on the first request, so building one never blocks.
    A ``request_id`` given with a request returns the first request's future when re-sent.
    The SDK retries a sample itself (backoff on overload and lost connections).

    Args:
        session: the server connection.
        tokenizer: what :meth:`get_tokenizer` returns.
        base_model: the server's model to sample when no ``client`` is given.
        client: a ready SDK sampling client.
    """

    def __init__(
        self,
        session: TinkerSession,
        *,
        tokenizer: Tokenizer,
        base_model: str | None = None,
        client: tinker.SamplingClient | None = None,
    ) -> None:
        if client is None and base_model is None:
            raise ValueError("TinkerSamplingClient needs a base_model or a client")
        self._session = session
        self._tokenizer = tokenizer
        self._base_model = base_model
        self._client = client
        self._ledger = RequestLedger(_PORT)

    async def _sdk(self) -> tinker.SamplingClient:
        if self._client is None:
            self._client = await anyio.to_thread.run_sync(
                lambda: self._session.create_sampling_client_blocking(
                    model_path=None, base_model=self._base_model
                )
            )
        return self._client

    async def _submit(
        self,
        method: str,
        send: Callable[[tinker.SamplingClient], Future[Any]],
        convert: Callable[[Any], Any],
        *,
        request_id: str | None,
        payload: object,
    ) -> TinkerFuture[Any]:
        digest = request_fingerprint(_PORT, method, payload) if request_id is not None else None
        if request_id is not None and digest is not None:
            found = self._ledger.find(method, request_id, digest)
            if found is not None:
                return found
        client = await self._sdk()
        with translated(_PORT, method, request_id):
            raw = in_sdk_context(lambda: send(client))
        future = TinkerFuture(raw, convert, port=_PORT, operation=method, request_id=request_id)
        if request_id is not None and digest is not None:
            self._ledger.record(method, request_id, digest, future)
        return future

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> TinkerFuture[SampleResponse]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.sample`."""
        method = "sample"
        _check_prompt(method, prompt)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise _invalid(method, f"num_samples {num_samples!r} must be an int >= 1")
        if not isinstance(sampling_params, SamplingParams):
            raise _invalid(method, f"sampling_params is a {type(sampling_params).__name__}")
        sdk_prompt = model_input_to_sdk(prompt)
        sdk_params = sampling_params_to_sdk(sampling_params)
        return await self._submit(
            method,
            lambda client: client.sample(
                sdk_prompt,
                num_samples,
                sdk_params,
                include_prompt_logprobs=include_prompt_logprobs,
            ).future(),
            sample_from_sdk,
            request_id=request_id,
            payload=(prompt, num_samples, sampling_params, include_prompt_logprobs),
        )

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> TinkerFuture[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`."""
        method = "compute_logprobs"
        _check_prompt(method, prompt)
        sdk_prompt = model_input_to_sdk(prompt)
        return await self._submit(
            method,
            lambda client: client.compute_logprobs(sdk_prompt).future(),
            tuple,
            request_id=request_id,
            payload=prompt,
        )

    def get_tokenizer(self) -> Tokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._tokenizer


def _invalid(method: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{method}: {message}", port=_PORT, operation=method)


def _check_prompt(method: str, prompt: ModelInput) -> None:
    if not isinstance(prompt, ModelInput):
        raise _invalid(method, f"prompt is a {type(prompt).__name__}")
    if prompt.length == 0:
        raise _invalid(method, "prompt is empty")

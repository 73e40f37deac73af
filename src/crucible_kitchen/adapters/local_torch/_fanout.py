"""Sampling spread over the data-parallel ranks: each rank samples its share of the requests.

Every rank submits the same sample requests in the same order (it runs the same workflow).
Request ``i`` is computed by rank ``i mod W`` alone; the first time a result is awaited, the
ranks exchange every result submitted so far in one all-gather (behind the request agreement
of ``_distributed``), so all ranks hold every result before anything uses it: an RL update
sees every group's samples. A request's samples depend on its seed (``sampling_params.seed``,
else its ``request_id``), not on the rank that draws them, so the results are those of one
process. A request without either is seeded by its call number on the rank that computes it,
which differs with the number of ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio

from crucible_kitchen.adapters.local_torch._requests import RequestQueue
from crucible_kitchen.errors import KitchenError, PermanentBackendError
from crucible_kitchen.ports import FUTURE_DONE

if TYPE_CHECKING:
    from crucible_kitchen.adapters.local_torch._distributed import DistributedGroup
    from crucible_kitchen.adapters.local_torch._requests import CallCounters, LocalFuture
    from crucible_kitchen.adapters.local_torch._sampling_client import LocalTorchSamplingClient
    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
    from crucible_kitchen.ports import Capabilities, ModelInput, SampleResponse, SamplingParams

__all__ = ("FannedOutSamplingClient",)

_PORT: Final = "sampling_client"
_EXCHANGE: Final = "sample_exchange"
_RETAIN: Final = 4096
"""Exchanged results kept (for awaits and re-sends); older ones are dropped."""


class FannedOutSamplingClient:
    """A :class:`LocalTorchSamplingClient` whose ``sample`` requests are spread over the ranks
    of ``group`` (see the module's docstring); ``compute_logprobs`` runs on every rank."""

    def __init__(self, inner: LocalTorchSamplingClient, group: DistributedGroup) -> None:
        self._inner = inner
        self._group = group
        self._queue = RequestQueue(_PORT, device=str(inner.model.device))
        self._submitted = 0
        self._exchanged = 0
        self._owned: dict[int, LocalFuture[SampleResponse]] = {}
        self._refused: dict[int, str] = {}
        self._results: dict[int, SampleResponse | str] = {}
        self._by_request: dict[str, _SharedSample] = {}
        self._lock: anyio.Lock | None = None

    @property
    def inner(self) -> LocalTorchSamplingClient:
        """The client that computes this rank's share."""
        return self._inner

    @property
    def counters(self) -> CallCounters:
        """The inner client's counters (this rank's share of the requests)."""
        return self._inner.counters

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> _SharedSample:
        """See :meth:`crucible_kitchen.ports.SamplingClient.sample`; a re-sent ``request_id``
        gets its first future back. A request the computing rank refuses raises
        :class:`~crucible_kitchen.errors.PermanentBackendError` on every rank when awaited
        (not at submission: the other ranks do not check it)."""
        if request_id is not None and (known := self._by_request.get(request_id)) is not None:
            return known
        index = self._submitted
        self._submitted += 1
        if index % self._group.world_size == self._group.rank:
            try:
                self._owned[index] = await self._inner.sample(
                    prompt,
                    num_samples,
                    sampling_params,
                    include_prompt_logprobs=include_prompt_logprobs,
                    request_id=request_id,
                )
            except KitchenError as exc:
                # Only this rank checked the request: every rank raises it when awaiting.
                self._refused[index] = f"{type(exc).__name__}: {exc}"
        future = _SharedSample(self, index)
        if request_id is not None:
            self._by_request[request_id] = future
        return future

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> LocalFuture[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`."""
        return await self._inner.compute_logprobs(prompt, request_id=request_id)

    def get_tokenizer(self) -> LocalTokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._inner.get_tokenizer()

    def _done(self, index: int) -> bool:
        return index in self._results

    async def _result(self, index: int) -> SampleResponse:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if index not in self._results:
                await self._exchange()
        value = self._results.get(index)
        if value is None:
            raise PermanentBackendError(
                f"sample: the result of request #{index} is no longer kept (only the last "
                f"{_RETAIN} are)",
                port=_PORT,
                operation="sample",
            )
        if isinstance(value, str):
            raise PermanentBackendError(
                f"sample: the rank that computed request #{index} failed: {value}",
                port=_PORT,
                operation="sample",
            )
        return value

    async def _exchange(self) -> None:
        """Share every result submitted so far with every rank (one all-gather)."""
        through = self._submitted
        mine: dict[int, SampleResponse | str] = {}
        for index in range(self._exchanged, through):
            owned = self._owned.pop(index, None)
            if index in self._refused:
                mine[index] = self._refused.pop(index)
            if owned is None:
                continue
            try:
                mine[index] = await owned.result()
            except KitchenError as exc:
                mine[index] = f"{type(exc).__name__}: {exc}"
        label = f"through #{through}"

        def work() -> None:
            self._group.agree(_EXCHANGE, label)
            for part in self._group.gather(_EXCHANGE, label, mine):
                self._results.update(part)

        await self._queue.call(_EXCHANGE, work, record=False)
        self._exchanged = through
        for index in [i for i in self._results if i < through - _RETAIN]:
            del self._results[index]
        while len(self._by_request) > _RETAIN:
            del self._by_request[next(iter(self._by_request))]


class _SharedSample:
    """The future of a fanned-out sample request: its result once the ranks exchanged it."""

    __slots__ = ("_client", "_index")

    def __init__(self, client: FannedOutSamplingClient, index: int) -> None:
        self._client = client
        self._index = index

    def done(self) -> bool:
        """Whether every rank holds the result already."""
        return self._client._done(self._index)

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.FUTURE_DONE`: :meth:`done`."""
        return {FUTURE_DONE: lambda: self.done}

    async def result(self) -> SampleResponse:
        """The samples; the first await exchanges every pending result between the ranks."""
        return await self._client._result(self._index)

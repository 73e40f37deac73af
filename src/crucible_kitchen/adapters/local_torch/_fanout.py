"""Sampling spread over the data-parallel ranks: each rank samples its share of the requests.

Every rank submits the same sample requests to a sampler in the same order (it runs the same
workflow). Request ``i`` is computed by rank ``i mod W`` alone, which publishes the result (or
the error that refused the request) in the process group's key-value store, under the
sampler's name and ``i``; the other ranks read it there when they await it. A rank publishes
every result it owns so far whenever it awaits any result of the sampler, so a result is
published by the time its owner awaits it too.

No step of this exchange is a collective paired by order: it does not matter in which order
the ranks await, nor what else they do meanwhile. Samplers used by concurrent tasks (the
rollouts of an asynchronous RL loop beside its consumer's evaluation) and training requests
issued in between cannot desynchronise it, unlike an all-gather, which pairs the ranks' calls
by their order on each rank. The samplers compute in a worker thread of their own (the
device's ``sampling`` lane, see ``_requests``), and a rank waits for another rank's result in a
thread of its own: a wait never holds up a computation another rank waits for, nor a training
request. A result that does not arrive within the group's timeout raises
:class:`~crucible_kitchen.errors.CollectiveError`: the rank that owns it failed or stopped.

A request's samples depend on its seed (``sampling_params.seed``, else its ``request_id``),
not on the rank that draws them, so the results are those of one process. A request without
either is seeded by its call number on the rank that computes it, which differs with the
number of ranks.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import anyio
import anyio.to_thread
import msgspec

from crucible_kitchen.adapters.local_torch._requests import keep_recent
from crucible_kitchen.errors import CollectiveError, KitchenError, PermanentBackendError
from crucible_kitchen.ports import FUTURE_DONE, SampleResponse

if TYPE_CHECKING:
    from collections.abc import Callable

    from crucible_kitchen.adapters.local_torch._distributed import DistributedGroup
    from crucible_kitchen.adapters.local_torch._requests import CallCounters, LocalFuture
    from crucible_kitchen.adapters.local_torch._sampling_client import LocalTorchSamplingClient
    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
    from crucible_kitchen.ports import Capabilities, ModelInput, SamplingParams

__all__ = (
    "SAMPLING_LANE",
    "FannedOutSamplingClient",
    "SamplerNames",
    "announce",
    "announcement",
)

T = TypeVar("T")

SAMPLING_LANE: Final = "sampling"
"""The worker lane (see ``_requests``) of the samplers whose requests fan out over ranks."""

_PORT: Final = "sampling_client"
_PREFIX: Final = "crucible-kitchen/sample"
_ANNOUNCED: Final = "crucible-kitchen/announced"
_RETAIN: Final = 4096
"""Results kept per sampler (for awaits and re-sends); older ones are dropped."""

_Store: TypeAlias = Any
"""A ``torch.distributed.Store`` (its stubs lack ``clone``)."""

_Outcome = SampleResponse | str
"""A request's samples, or the error its computing rank raised (``"Type: message"``)."""


class SamplerNames:
    """Names for fanned-out samplers that are the same on every rank: the source of a
    sampler's weights (a path, ``"initial"``) and how many samplers of it this client made
    before. Sources are named in the same order on every rank by one task each, so the names
    agree even when concurrent tasks create samplers in a different order on each rank."""

    _clients = 0
    _lock = threading.Lock()

    def __init__(self) -> None:
        with SamplerNames._lock:
            SamplerNames._clients += 1
            self._client = SamplerNames._clients  # clients are made in the same order too
        self._made: dict[str, int] = {}

    def next(self, source: str) -> str:
        """A new name for a sampler of ``source``."""
        count = self._made.get(source, 0)
        self._made[source] = count + 1
        return f"{self._client}/{source}#{count}"


class FannedOutSamplingClient:
    """A :class:`LocalTorchSamplingClient` whose ``sample`` requests are spread over the ranks
    of ``group`` (see the module's docstring); ``compute_logprobs`` runs on every rank.
    ``name`` must be this sampler's on every rank, and no other sampler's (see
    :class:`SamplerNames`)."""

    def __init__(self, inner: LocalTorchSamplingClient, group: DistributedGroup, name: str) -> None:
        self._inner = inner
        self._group = group
        self._name = name
        self._submitted = 0
        self._unpublished: dict[int, LocalFuture[SampleResponse] | str] = {}
        self._results: dict[int, _Outcome] = {}
        self._reading: dict[int, anyio.Event] = {}
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
        if self._owner(index) == self._group.rank:
            try:
                self._unpublished[index] = await self._inner.sample(
                    prompt,
                    num_samples,
                    sampling_params,
                    include_prompt_logprobs=include_prompt_logprobs,
                    request_id=request_id,
                )
            except KitchenError as exc:
                # Only this rank checked the request: every rank raises it when awaiting.
                self._unpublished[index] = f"{type(exc).__name__}: {exc}"
        future = _SharedSample(self, index)
        if request_id is not None:
            keep_recent(self._by_request, request_id, future, limit=_RETAIN)
        return future

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> LocalFuture[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`."""
        return await self._inner.compute_logprobs(prompt, request_id=request_id)

    def get_tokenizer(self) -> LocalTokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._inner.get_tokenizer()

    # ---------------------------------------------------------------------------------------

    def _owner(self, index: int) -> int:
        return index % self._group.world_size

    def _key(self, index: int) -> str:
        return f"{_PREFIX}/{self._name}/{index}"

    def _done(self, index: int) -> bool:
        return index in self._results

    async def _result(self, index: int) -> SampleResponse:
        await self._publish()
        if index not in self._results:
            if self._owner(index) == self._group.rank:
                raise PermanentBackendError(
                    f"sample: the result of request #{index} is no longer kept (only the last "
                    f"{_RETAIN} are)",
                    port=_PORT,
                    operation="sample",
                )
            await self._read(index)
        value = self._results[index]
        if isinstance(value, str):
            raise PermanentBackendError(
                f"sample: the rank that computed request #{index} failed: {value}",
                port=_PORT,
                operation="sample",
            )
        return value

    async def _publish(self) -> None:
        """Publish the results of every request this rank owns that was submitted so far."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if not self._unpublished:
                return
            owned = sorted(self._unpublished)
            for index in owned:
                computing = self._unpublished[index]
                if isinstance(computing, str):
                    self._keep(index, computing)
                    continue
                try:
                    self._keep(index, await computing.result())
                except KitchenError as exc:
                    self._keep(index, f"{type(exc).__name__}: {exc}")
            keys = [self._key(index) for index in owned]
            values = [msgspec.msgpack.encode(self._results[index]) for index in owned]
            await anyio.to_thread.run_sync(self._store_call, lambda s: s.multi_set(keys, values))
            for index in owned:
                del self._unpublished[index]

    async def _read(self, index: int) -> None:
        """Wait for another rank's result of request ``index`` (once, whoever awaits it)."""
        reading = self._reading.get(index)
        if reading is not None:
            await reading.wait()
            if index not in self._results:
                await self._read(index)  # the first reader failed: try again
            return
        reading = self._reading[index] = anyio.Event()
        key = self._key(index)
        readers = self._group.world_size - 1
        timeout = timedelta(seconds=self._group.timeout)

        def read(store: _Store) -> bytes:
            store.wait([key], timeout)
            data: bytes = store.get(key)
            if store.add(f"{key}/read", 1) == readers:  # the last reader removes it
                store.delete_key(key)
                store.delete_key(f"{key}/read")
            return data

        try:
            # Shielded (the wait ends within the group's timeout): the read counts towards the
            # key's removal, so its result must be kept even if the awaiter is cancelled; a
            # second read would count this rank twice and remove the key before the other
            # ranks read it.
            with anyio.CancelScope(shield=True):
                data = await anyio.to_thread.run_sync(self._store_call, read)
                self._keep(index, msgspec.msgpack.decode(data, type=_Outcome))
        finally:
            del self._reading[index]
            reading.set()

    def _keep(self, index: int, outcome: _Outcome) -> None:
        self._results[index] = outcome
        while len(self._results) > _RETAIN:
            del self._results[min(self._results)]

    def _store_call(self, call: Callable[[_Store], T]) -> T:
        """``call`` on this thread's connection to the group's store (worker thread)."""
        try:
            return call(_thread_store(self._group))
        except (RuntimeError, ValueError) as exc:  # DistStoreError is a RuntimeError
            group = self._group
            raise CollectiveError(
                f"rank {group.rank} of {group.world_size}: exchanging the samples of sampler "
                f"{self._name!r} failed: the rank that computes them failed, stopped or did "
                f"not publish them within {group.timeout:g} s ({exc})",
                port=_PORT,
                operation="sample",
                rank=group.rank,
                world_size=group.world_size,
            ) from exc


_local = threading.local()


def _thread_store(group: DistributedGroup) -> _Store:
    """This thread's own connection to the ranks' store: a blocking wait on a shared
    connection would hold up every other thread's calls."""
    store: _Store | None = getattr(_local, "store", None)
    if store is None:
        shared: _Store = group.key_value_store()
        store = _local.store = shared.clone()
    return store


class _SharedSample:
    """The future of a fanned-out sample request: its result once this rank holds it."""

    __slots__ = ("_client", "_index")

    def __init__(self, client: FannedOutSamplingClient, index: int) -> None:
        self._client = client
        self._index = index

    def done(self) -> bool:
        """Whether this rank holds the result already."""
        return self._client._done(self._index)

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.FUTURE_DONE`: :meth:`done`."""
        return {FUTURE_DONE: lambda: self.done}

    async def result(self) -> SampleResponse:
        """The samples; awaiting one publishes the results this rank owns so far."""
        return await self._client._result(self._index)


def announce(group: DistributedGroup, subject: str, failure: str | None) -> None:
    """Tell the other ranks how ``subject`` (a rank-0 effect: a file written) ended: ``None``
    for success, else what failed. Not a collective: it returns at once."""
    _thread_store(group).set(f"{_ANNOUNCED}/{subject}", "" if failure is None else f"!{failure}")


async def announcement(group: DistributedGroup, subject: str) -> str | None:
    """Wait for rank 0's :func:`announce` of ``subject``: ``None`` or what failed.

    Raises:
        CollectiveError: nothing was announced within the group's timeout.
    """
    key = f"{_ANNOUNCED}/{subject}"
    timeout = timedelta(seconds=group.timeout)

    def wait() -> bytes:
        try:
            store = _thread_store(group)
            store.wait([key], timeout)
            said: bytes = store.get(key)
            return said
        except (RuntimeError, ValueError) as exc:
            raise CollectiveError(
                f"rank {group.rank} of {group.world_size}: rank 0 did not say within "
                f"{group.timeout:g} s whether it wrote {subject} ({exc})",
                port="training_client",
                operation="save_weights_for_sampler",
                rank=group.rank,
                world_size=group.world_size,
            ) from exc

    said = (await anyio.to_thread.run_sync(wait, abandon_on_cancel=True)).decode()
    return said[1:] if said else None

"""Sampling under FSDP without a full copy of the model on any rank.

A sampler of a sharded model keeps only this rank's shards of the weights it samples
(:class:`SamplerShards`, ``1/W`` of the model) and generates through the training model
itself, collectively: every rank takes part in every forward pass (whose FSDP units gather
their full parameters one at a time, as in training), with the sampler's shards put in place
of the training weights for the duration (and the training weights put back after).

Requests are not run when submitted: the first await of a result runs every request
submitted so far as one request of the training client (so it is ordered, and agreed, with
the training requests: every rank must await in the same order, as a synchronous workflow
does). In it, sample request ``i`` is decoded by rank ``i mod W``, all of a rank's requests
batched together; a ``compute_logprobs`` request is scored by every rank. Before each forward
pass the ranks agree whether any of them needs one; if so, every rank runs one, a rank with
nothing to compute a pass over one token, so that the passes' all-gathers pair up. The
results are then gathered, so every rank holds every result. A request's samples depend on
its seed, not on the rank that draws them: they are those of one process (up to float
rounding of the gathered weights' products).
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from crucible_kitchen.adapters.local_torch._requests import CallCounters, keep_recent
from crucible_kitchen.adapters.local_torch._sampling import (
    DecodeBatch,
    prompt_logprobs_from_logits,
)
from crucible_kitchen.adapters.local_torch._sampling_client import (
    DEFAULT_MAX_BATCH,
    SampleRequests,
    sample_response,
)
from crucible_kitchen.adapters.local_torch._translate import translated
from crucible_kitchen.errors import KitchenError, PermanentBackendError
from crucible_kitchen.ports import FUTURE_DONE, SampleResponse

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from torch import Tensor

    from crucible_kitchen.adapters.local_torch._distributed import DistributedGroup
    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.adapters.local_torch._sampling import DecodeRequest
    from crucible_kitchen.adapters.local_torch._tokenizer import LocalTokenizer
    from crucible_kitchen.ports import Capabilities, ModelInput, SamplingParams

__all__ = ("SamplerShards", "ShardedSamplingClient")

T = TypeVar("T")

_PORT: Final = "sampling_client"
_RETAIN: Final = 4096
"""Request ids remembered for re-sends, per sampler."""


class SamplerShards:
    """This rank's shards of a sharded model's weights, frozen: what a sampler samples."""

    def __init__(self, shards: list[Tensor]) -> None:
        self._shards = shards

    @classmethod
    def current(cls, model: Transformer) -> SamplerShards:
        """Copies of ``model``'s current shards (no collective)."""
        _reshard(model)
        with torch.no_grad():
            return cls([_local(parameter).clone() for parameter in model.parameters()])

    @classmethod
    def of_full(
        cls, model: Transformer, weights: Mapping[str, Tensor], rank: int, world_size: int
    ) -> SamplerShards:
        """This rank's shards of full ``weights`` (by ``model``'s names), as FSDP splits
        them: the ``rank``-th of ``world_size`` chunks along the first dimension."""
        _reshard(model)
        shards = []
        for name, parameter in model.named_parameters():
            local = _local(parameter)
            chunks = torch.chunk(weights[name], world_size, dim=0)
            shard = chunks[rank] if rank < len(chunks) else weights[name][:0]
            if shard.shape != local.shape:
                raise ValueError(
                    f"{name}: a shard of shape {tuple(shard.shape)}, not {local.shape}"
                )
            shards.append(shard.to(device=local.device, dtype=local.dtype, copy=True))
        return cls(shards)

    @contextlib.contextmanager
    def in_place_of(self, model: Transformer) -> Iterator[None]:
        """Put these shards into ``model`` for the block, its own weights back after."""
        _reshard(model)
        parameters = list(model.parameters())
        with torch.no_grad():
            own = [_local(parameter).clone() for parameter in parameters]
            for parameter, shard in zip(parameters, self._shards, strict=True):
                _local(parameter).copy_(shard)
        try:
            yield
        finally:
            _reshard(model)  # the root unit stays gathered after a forward pass
            with torch.no_grad():
                for parameter, shard in zip(parameters, own, strict=True):
                    _local(parameter).copy_(shard)


def _local(parameter: Tensor) -> Tensor:
    local: Tensor = parameter.to_local()  # type: ignore[attr-defined]
    return local


def _reshard(model: Transformer) -> None:
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class _Request:
    """A request waiting for the next collective run, then its outcome: a sample request
    (``decode``, computed by rank ``owner``) or a prompt to score (``tokens``, every rank)."""

    __slots__ = ("decode", "error", "owner", "ran", "request_id", "tokens", "value")

    def __init__(
        self,
        *,
        request_id: str | None,
        decode: DecodeRequest | None = None,
        owner: int = 0,
        tokens: Tensor | None = None,
    ) -> None:
        self.request_id = request_id
        self.decode = decode
        self.owner = owner
        self.tokens = tokens
        self.ran = False
        self.value: Any = None
        self.error: str | None = None


class ShardedSamplingClient:
    """Implements :class:`~crucible_kitchen.ports.SamplingClient` over ``shards`` of the
    sharded ``model`` that a training client trains (see the module's docstring).

    ``run`` runs a function as a request of the training client (in its worker thread, in
    order with its training requests); ``group`` are the ranks; ``name`` must be this
    sampler's on every rank, and no other sampler's (see ``_fanout.SamplerNames``). Stops,
    seeds and validation are those of :class:`LocalTorchSamplingClient`.
    """

    def __init__(
        self,
        model: Transformer,
        shards: SamplerShards,
        tokenizer: LocalTokenizer,
        *,
        group: DistributedGroup,
        run: Callable[[str, Callable[[], None]], Awaitable[None]],
        name: str,
        seed: int = 0,
        default_max_tokens: int = 128,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._model = model
        self._shards = shards
        self._tokenizer = tokenizer
        self._group = group
        self._run = run
        self._name = name
        self._max_batch = max_batch
        self._requests = SampleRequests(
            model, tokenizer, seed=seed, default_max_tokens=default_max_tokens
        )
        self.counters = CallCounters()
        """Calls received, and the sample requests this rank decoded (``applied``)."""
        self._pending: list[_Request] = []
        self._submitted = 0
        self._by_request: dict[str, _Future[SampleResponse]] = {}
        self._lock: anyio.Lock | None = None

    async def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        request_id: str | None = None,
    ) -> _Future[SampleResponse]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.sample`; a re-sent ``request_id``
        gets its first future back.

        Raises:
            InvalidRequest: as :meth:`LocalTorchSamplingClient.sample` (on every rank).
        """
        method = "sample"
        self.counters.calls[method] += 1
        if request_id is not None and (known := self._by_request.get(request_id)) is not None:
            self.counters.deduplicated[method] += 1
            return known
        decode = self._requests.decode(
            prompt,
            num_samples,
            sampling_params,
            include_prompt_logprobs=include_prompt_logprobs,
            request_id=request_id,
            call_number=self.counters.calls[method] - 1,
        )
        owner = self._submitted % self._group.world_size
        self._submitted += 1
        future: _Future[SampleResponse] = self._queue(
            _Request(request_id=request_id, decode=decode, owner=owner)
        )
        if request_id is not None:
            keep_recent(self._by_request, request_id, future, limit=_RETAIN)
        return future

    async def compute_logprobs(
        self, prompt: ModelInput, *, request_id: str | None = None
    ) -> _Future[tuple[float | None, ...]]:
        """See :meth:`crucible_kitchen.ports.SamplingClient.compute_logprobs`.

        Raises:
            InvalidRequest: an empty prompt, or one too long or with ids outside the vocabulary.
        """
        method = "compute_logprobs"
        self.counters.calls[method] += 1
        tokens = self._requests.prompt_tokens(method, prompt, allow_full=True)
        device = self._model.device
        request = _Request(request_id=request_id, tokens=torch.tensor([tokens], device=device))
        return self._queue(request)

    def get_tokenizer(self) -> LocalTokenizer:
        """See :meth:`crucible_kitchen.ports.SamplingClient.get_tokenizer`."""
        return self._tokenizer

    # ---------------------------------------------------------------------------------------

    def _queue(self, request: _Request) -> _Future[Any]:
        self._pending.append(request)
        return _Future(self, request)

    async def _result(self, request: _Request) -> Any:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if not request.ran:
                batch, self._pending = self._pending, []
                try:
                    # The run goes on if this awaiter is cancelled: the lock is held until it
                    # ends, so that no other awaiter starts a run of its own on this rank alone.
                    with anyio.CancelScope(shield=True):
                        await self._run("sample", partial(self._compute, batch))
                except Exception as exc:  # the run failed: so does every request of it
                    for queued in batch:
                        queued.ran, queued.error = True, f"{type(exc).__name__}: {exc}"
                    raise
        if request.error is not None:
            raise PermanentBackendError(
                f"sample: the rank that computed the request failed: {request.error}",
                port=_PORT,
                operation="sample",
            )
        return request.value

    def _compute(self, batch: list[_Request]) -> None:
        """Every rank's part of ``batch``, then every result on every rank (worker thread,
        a collective)."""
        group = self._group
        ids = hashlib.blake2b(digest_size=8)
        for request in batch:
            ids.update(f"{request.tokens is None}\0{request.request_id}\0".encode())
        group.agree("sample", f"{self._name}: {len(batch)} requests {ids.hexdigest()}")
        model = self._model
        passes = _PairedPasses(model)
        was_training = model.training
        try:
            with (
                group.collectives("sample", None),
                self._shards.in_place_of(model),
                torch.no_grad(),
            ):
                model.eval()
                decoding = DecodeBatch(passes.model, max_rows=self._max_batch)
                for request in batch:
                    if request.tokens is not None:
                        _settle(request, partial(_scored, passes.model, request.tokens))
                    elif request.owner == group.rank:
                        assert request.decode is not None
                        decoding.add(request.decode)
                        self.counters.applied["sample"] += 1
                while decoding.busy:
                    decoding.step()
                passes.until_all_done()
        finally:
            model.train(was_training)
        decoded = {}
        for index, request in enumerate(batch):
            if request.decode is not None and request.owner == group.rank:
                _settle(request, partial(_response, request.decode))
                decoded[index] = (request.value, request.error)
        for part in group.gather("sample", None, decoded):
            for index, (value, error) in part.items():
                batch[index].value, batch[index].error = value, error
        for request in batch:
            request.ran = True


def _scored(model: Transformer, tokens: Tensor) -> tuple[float | None, ...]:
    return prompt_logprobs_from_logits(model(tokens), tokens)


def _response(decode: DecodeRequest) -> SampleResponse:
    return sample_response(decode.outcome())


def _settle(request: _Request, compute: Callable[[], object]) -> None:
    """Run ``compute`` for ``request``: its value, or the error it raised (translated)."""
    try:
        with translated(_PORT, "sample", None, atomic=True):
            request.value = compute()
    except KitchenError as exc:
        request.error = f"{type(exc).__name__}: {exc}"


class _PairedPasses:
    """``model`` for a :class:`DecodeBatch`, whose every forward pass is paired across the
    ranks: before each, the ranks agree whether any of them needs one (see the module's
    docstring)."""

    def __init__(self, model: Transformer) -> None:
        self._inner = model
        self.model: Transformer = _Preceded(model, self._wanted)  # type: ignore[assignment]

    def _agree(self, wanted: bool) -> bool:
        """Whether any rank wants a forward pass now (one small all-reduce)."""
        flag = torch.tensor([int(wanted)], dtype=torch.int64, device=self._inner.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _wanted(self) -> None:
        self._agree(True)

    def until_all_done(self) -> None:
        """Run a pass over one token for each pass another rank still runs."""
        idle = torch.zeros((1, 1), dtype=torch.int64, device=self._inner.device)
        while self._agree(False):
            self._inner(idle)


class _Preceded:
    """A model whose calls run ``before`` first; every other attribute is the model's."""

    def __init__(self, model: Transformer, before: Callable[[], None]) -> None:
        self._model = model
        self._before = before

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._before()
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _Future(Generic[T]):
    """The future of a request to a :class:`ShardedSamplingClient`."""

    __slots__ = ("_client", "_request")

    def __init__(self, client: ShardedSamplingClient, request: _Request) -> None:
        self._client = client
        self._request = request

    def done(self) -> bool:
        """Whether the request has run."""
        return self._request.ran

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.FUTURE_DONE`: :meth:`done`."""
        return {FUTURE_DONE: lambda: self.done}

    async def result(self) -> T:
        """The result; the first await runs every request submitted so far (collectively)."""
        value: T = await self._client._result(self._request)
        return value

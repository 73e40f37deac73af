"""Data-parallel training across processes: the ranks ``torchrun`` starts, and their collectives.

Every rank runs the same workflow and so submits the same requests in the same order. Each
rank keeps a chain digest of every request it executed (its method and request id, folded in
order). A request that needs the other ranks first checks, in one small all-gather, that every
rank has executed as many requests with the same chain: a rank that re-ran, skipped or
deduplicated a request the others did not (one with collectives of its own, or one without,
such as a DDP optimizer step) makes every rank raise
:class:`~crucible_kitchen.errors.CollectiveDesync` at its next agreement, instead of pairing
mismatched collectives or silently diverging. Every collective runs under the process group's
timeout, and a failed or timed-out one raises :class:`~crucible_kitchen.errors.CollectiveError`
naming this rank: a job whose rank died or hangs fails, it never hangs.

Backends: ``gloo`` on the CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``). The same
code path runs on both.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous

from crucible_kitchen.errors import CollectiveDesync, CollectiveError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from torch import Tensor

__all__ = (
    "DEFAULT_COLLECTIVE_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "DistributedGroup",
    "GradientSum",
    "launched_world_size",
)

T = TypeVar("T")

DEFAULT_COLLECTIVE_TIMEOUT: Final = 300.0
"""Seconds a collective (and the start-up rendezvous) may wait for the other ranks, unless the
``CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT`` environment variable says otherwise."""

TIMEOUT_VARIABLE: Final = "CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT"

_PORT: Final = "training_client"

_BUCKET_ELEMENTS: Final = 25 << 18
"""Gradient values per all-reduce of :class:`GradientSum`: 25 MiB of float32, DDP's default
bucket. Unlike DDP there is no small first bucket: with gloo on the CPU, an all-reduce in flight
takes the cores the backward pass runs on, so a model of a few MiB is summed in one all-reduce
after its pass (measured faster than 1 MiB buckets that overlap the pass), while a large model's
buckets still overlap its pass."""


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` that ``torchrun`` (or any launcher using its variables) set; 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


@dataclass(slots=True)
class DistributedGroup:
    """This process's place among the data-parallel ranks, and the collectives they share.

    Build it with :meth:`from_environment` (under ``torchrun``); ``rank`` 0 is the one that
    writes checkpoints. ``timeout`` is in seconds.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout: float
    store: Any = field(default=None, repr=False, compare=False)
    """The ranks' key-value store (a ``torch.distributed.Store``) when this group joined them;
    ``None`` when the process group was initialised before (see :meth:`key_value_store`)."""
    _sequence: int = field(default=0, init=False, repr=False)
    _chain: bytes = field(default=b"", init=False, repr=False)

    @classmethod
    def from_environment(
        cls, *, device: str = "cpu", timeout: float | None = None
    ) -> DistributedGroup:
        """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): ``nccl`` if ``device`` is CUDA,
        else ``gloo``. A group already initialised in this process is reused. ``timeout``
        (seconds) defaults to ``CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT``, else
        :data:`DEFAULT_COLLECTIVE_TIMEOUT`.

        Raises:
            CollectiveError: the variables are missing or invalid, or the rendezvous failed
                or timed out.
        """
        rank = int(os.environ.get("RANK", "0") or "0")
        world_size = launched_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or "0")
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        store = None
        if not dist.is_initialized():
            try:
                if timeout is None:
                    timeout = float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_COLLECTIVE_TIMEOUT))
                if backend == "nccl":
                    torch.cuda.set_device(local_rank)
                # The rendezvous init_process_group makes of env:// (it connects to the store
                # that torchrun's agent hosts, else rank 0 hosts one), done here to keep the
                # store: the samplers exchange their results in it.
                waited = timedelta(seconds=timeout)
                joined, rank, world_size = next(
                    rendezvous("env://", rank, world_size, timeout=waited)
                )
                joined.set_timeout(waited)
                store = PrefixStore("default_pg", joined)
                dist.init_process_group(
                    backend=backend, store=store, rank=rank, world_size=world_size, timeout=waited
                )
            except (RuntimeError, ValueError) as exc:
                raise CollectiveError(
                    f"rank {rank} of {world_size}: could not join the process group "
                    f"({backend}, timeout {timeout} s): {exc}",
                    port=_PORT,
                    operation="init_process_group",
                    rank=rank,
                    world_size=world_size,
                ) from exc
        else:
            backend = str(dist.get_backend())
            rank, world_size = dist.get_rank(), dist.get_world_size()
        timeout = timeout or DEFAULT_COLLECTIVE_TIMEOUT
        return cls(rank, world_size, local_rank, backend, timeout, store)

    def key_value_store(self) -> Any:
        """The ranks' key-value store: :attr:`store`, else that of the process group
        initialised before this group (through a private torch function).

        Raises:
            CollectiveError: neither is available.
        """
        if self.store is not None:
            return self.store
        default_store = getattr(dist.distributed_c10d, "_get_default_store", None)
        if default_store is None:
            raise CollectiveError(
                f"rank {self.rank} of {self.world_size}: the process group was initialised "
                f"before this one joined it, and torch {torch.__version__} does not give its "
                "key-value store: leave initialising it to DistributedGroup.from_environment",
                port=_PORT,
                operation="key_value_store",
                rank=self.rank,
                world_size=self.world_size,
            )
        return default_store()

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes checkpoints (rank 0)."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``device``, on this rank's own GPU when it is CUDA without an index."""
        if str(device) == "cuda":  # no index
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous slice of ``items`` (the slices of all ranks, in rank order,
        are ``items``; a rank may get none when there are fewer items than ranks)."""
        return self.shards(items)[self.rank]

    def shards(self, items: Sequence[T]) -> list[Sequence[T]]:
        """Every rank's :meth:`shard` of ``items``, in rank order."""
        count, ranks = len(items), self.world_size
        return [items[count * rank // ranks : count * (rank + 1) // ranks] for rank in range(ranks)]

    # ---------------------------------------------------------------------------------------
    # Collectives (called in the client's worker thread)

    def note(self, method: str, request_id: str | None) -> None:
        """Count a request this rank executes without collectives of its own (a DDP
        optimizer step): the next :meth:`agree` checks that every rank executed it too."""
        self._sequence += 1
        link = self._chain + f"{method}\0{request_id}".encode()
        self._chain = hashlib.blake2b(link, digest_size=7).digest()

    def agree(self, method: str, request_id: str | None, *, payload: float = 0.0) -> list[float]:
        """Check that every rank is at the same request, after the same ones, before its
        collectives (it counts the request, as :meth:`note` does). The same all-gather
        carries one float per rank: every rank's ``payload``, in rank order, is returned.

        Raises:
            CollectiveDesync: a rank is at another request, or executed other requests
                before it (a one-sided retry or skip).
            CollectiveError: the all-gather failed or timed out.
        """
        return self.start_agreement(method, request_id, payload=payload)()

    def start_agreement(
        self, method: str, request_id: str | None, *, payload: float = 0.0
    ) -> Callable[[], list[float]]:
        """:meth:`agree`, asynchronously: its all-gather starts now, as the request's first
        collective, and the function returned waits for it and checks, raising what
        :meth:`agree` raises (call it before the request's next collective; it may be called
        again). The request's local work (a forward pass) can run in between."""
        self.note(method, request_id)
        chain = int.from_bytes(self._chain, "big")
        # One int64 shape for every agreement, so that ranks at different requests pair theirs.
        bits = torch.tensor([payload], dtype=torch.float64).view(torch.int64)
        mine = torch.cat([torch.tensor([self._sequence, chain], dtype=torch.int64), bits])
        finish = self._all_gather(method, request_id, mine)
        sequence = self._sequence
        outcome: list[list[float]] = []

        def check() -> list[float]:
            if outcome:
                return outcome[0]
            gathered = finish()
            others = [
                rank
                for rank, theirs in enumerate(gathered)
                if not torch.equal(theirs[:2], mine[:2])
            ]
            if others:
                raise CollectiveDesync(
                    f"rank {self.rank} of {self.world_size}: at {method} request "
                    f"{request_id!r} (request #{sequence}), ranks {others} are at another "
                    "request or executed other requests before it: a stage re-ran or skipped "
                    "requests on some ranks only; the job cannot continue (restart it, or "
                    "resume it from its run directory)",
                    port=_PORT,
                    operation=method,
                    request_id=request_id,
                    rank=self.rank,
                    world_size=self.world_size,
                )
            outcome.append(torch.stack(gathered)[:, 2].contiguous().view(torch.float64).tolist())
            return outcome[0]

        return check

    def gather(self, method: str, request_id: str | None, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order."""
        gathered: list[Any] = [None] * self.world_size
        self._collective(method, request_id, lambda: dist.all_gather_object(gathered, value))
        return gathered

    def gather_values(
        self, method: str, request_id: str | None, values: Sequence[float], sizes: Sequence[int]
    ) -> list[list[float]]:
        """Every rank's ``values`` (floats, exact as float64), in rank order, in one
        all-gather: ``sizes`` is how many values each rank sends, which every rank computes
        alike (from the request's data, which every rank holds)."""
        sent = torch.tensor(values, dtype=torch.float64)
        return self.start_gather_values(method, request_id, sent, sizes)()

    def start_gather_values(
        self, method: str, request_id: str | None, values: Tensor, sizes: Sequence[int]
    ) -> Callable[[], list[list[float]]]:
        """:meth:`gather_values` of a 1-d float64 tensor (on the device), asynchronously: the
        all-gather starts now, and the function returned waits for it and gives the values."""
        if values.numel() != sizes[self.rank]:
            raise ValueError(
                f"rank {self.rank} sends {values.numel()} values, not {sizes[self.rank]}"
            )
        mine = torch.zeros(max(1, *sizes), dtype=torch.float64, device=values.device)
        mine[: values.numel()] = values
        finish = self._all_gather(method, request_id, mine)
        return lambda: [part[:size].tolist() for part, size in zip(finish(), sizes, strict=True)]

    def _all_gather(
        self, method: str, request_id: str | None, mine: Tensor
    ) -> Callable[[], list[Tensor]]:
        """Start the all-gather of every rank's ``mine`` (same shape everywhere); the function
        returned waits for it and gives them, on the CPU (nccl gathers on the GPU)."""
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else mine.device
        sent = mine.to(device)
        gathered = [torch.empty_like(sent) for _ in range(self.world_size)]
        work = self._collective(
            method, request_id, lambda: dist.all_gather(gathered, sent, async_op=True)
        )

        def finish() -> list[Tensor]:
            if work is not None:
                self._collective(method, request_id, work.wait)
            return [part.cpu() for part in gathered]

        return finish

    def broadcast(self, method: str, request_id: str | None, value: T) -> T:
        """Rank 0's ``value`` (picklable), on every rank."""
        box: list[Any] = [value]
        self._collective(method, request_id, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def collectives(self, method: str, request_id: str | None) -> Iterator[None]:
        """Turn a failed or timed-out collective of the block (FSDP's, inside the model's
        passes) into :class:`~crucible_kitchen.errors.CollectiveError`; other errors pass."""
        try:
            yield
        except RuntimeError as exc:  # gloo's transport errors are plain RuntimeErrors
            if not (isinstance(exc, dist.DistError) or "gloo" in str(exc)):
                raise
            raise self._failure(method, request_id, exc) from exc

    def _collective(self, method: str, request_id: str | None, call: Callable[[], T]) -> T:
        try:
            return call()
        except (RuntimeError, ValueError) as exc:  # DistBackendError is a RuntimeError
            raise self._failure(method, request_id, exc) from exc

    def _failure(self, method: str, request_id: str | None, exc: Exception) -> CollectiveError:
        return CollectiveError(
            f"rank {self.rank} of {self.world_size}: a {method} collective failed: another "
            f"rank failed, stopped or did not arrive within {self.timeout:g} s ({exc})",
            port=_PORT,
            operation=method,
            request_id=request_id,
            rank=self.rank,
            world_size=self.world_size,
        )


@dataclass(slots=True)
class _Pass:
    """One backward pass of :class:`GradientSum`: the gradients so far, the buckets and their
    all-reduces."""

    method: str
    request_id: str | None
    earlier: Sequence[Tensor | None] | None
    grads: list[Tensor | None]
    missing: list[int]
    flats: list[Tensor] = field(default_factory=list)
    works: list[dist.Work] = field(default_factory=list)
    failure: CollectiveError | None = None


class GradientSum:
    """Sums each backward pass's new gradients over the ranks while the pass runs, as DDP does.

    The trainable ``parameters`` are split, last first (the order a backward pass produces
    their gradients), into buckets of about ``bucket_elements`` values (25 MiB of float32; a
    larger parameter gets a bucket of its own). With several buckets, a hook on each
    parameter notes its gradient during :meth:`reduce`'s backward pass, and a bucket whose
    gradients have all arrived is flattened into one float32 buffer and all-reduced (``SUM``,
    asynchronously) at once, while the pass goes on with the earlier layers; buckets start in
    bucket order on every rank (a ready bucket waits for the ones before it), and those still
    incomplete when the pass ends (a parameter this rank's loss did not reach) start then. A
    single bucket is flattened and all-reduced once the pass is done, without hooks. Each
    buffer ends with one presence flag per parameter, so a parameter without a gradient on
    every rank keeps none (the optimizer skips it, as in one process) and one with a gradient
    somewhere counts as zeros where it has none.

    Why not torch's ``DistributedDataParallel``: its reducer hooks the accumulation into
    ``.grad`` (``Tensor.backward``), while the trainer computes a request's gradients with
    ``torch.autograd.grad`` and adds them to ``.grad`` only once its whole backward pass has
    succeeded (a failed request leaves no partial gradient); it would also need ``no_sync``
    for accumulation over requests, ``find_unused_parameters`` for losses that skip
    parameters, and a rank with no data in a request would still have to run a pass. Here a
    request's contribution alone is summed (gradients accumulated by earlier requests were
    summed by theirs), so accumulation over several requests never sums anything twice, and a
    rank without data sends zeros.
    """

    def __init__(
        self,
        group: DistributedGroup,
        parameters: Sequence[Tensor],
        *,
        bucket_elements: int = _BUCKET_ELEMENTS,
    ) -> None:
        self._group = group
        self._parameters = list(parameters)
        buckets: list[list[int]] = []
        filled = 0
        for index in reversed(range(len(self._parameters))):
            size = self._parameters[index].numel()
            if not buckets or filled + size > bucket_elements:
                buckets.append([])
                filled = 0
            buckets[-1].append(index)
            filled += size
        self._buckets = buckets
        # Where each parameter's values and presence flag sit in its bucket's flat buffer: the
        # values one after the other, then one flag per parameter.
        self._place: dict[int, tuple[int, int, int]] = {}
        self._flags_at: list[int] = []
        for number, indices in enumerate(buckets):
            flags = sum(self._parameters[index].numel() for index in indices)
            offset = 0
            for position, index in enumerate(indices):
                self._place[index] = (number, offset, flags + position)
                offset += self._parameters[index].numel()
            self._flags_at.append(flags)
        self._pass: _Pass | None = None
        if len(buckets) > 1:
            # Hooks on the parameters themselves: they also run in torch.autograd.grad passes.
            for index, parameter in enumerate(self._parameters):
                parameter.register_hook(functools.partial(self._arrived, index))  # type: ignore[no-untyped-call]

    def reduce(
        self,
        method: str,
        request_id: str | None,
        total: Tensor | None,
        earlier: Sequence[Tensor | None] | None,
        *,
        agreed: Callable[[], object] | None = None,
    ) -> list[Tensor | None]:
        """The gradient of ``total`` (``None``, or one that needs none: this rank adds nothing)
        per parameter, plus ``earlier`` ones (the request's earlier micro-batches'), summed
        over the ranks: every rank calls it once per backward request, and gets the same
        float32-summed gradients, in the parameters' dtypes (``None`` where no rank has one).
        ``agreed`` (the request's :meth:`DistributedGroup.start_agreement` check) runs first.

        Raises:
            CollectiveError: an all-reduce failed or timed out.
        """
        if agreed is not None:
            agreed()
        count = len(self._parameters)
        current = _Pass(
            method,
            request_id,
            earlier,
            grads=[None] * count,
            missing=[len(indices) for indices in self._buckets],
        )
        if total is not None and total.requires_grad:
            self._pass = current
            try:
                current.grads = list(
                    torch.autograd.grad(total, self._parameters, allow_unused=True)
                )
            finally:
                self._pass = None
        current.missing = [0] * len(self._buckets)
        self._launch_ready(current)
        if current.failure is not None:
            raise current.failure
        for work in current.works:
            self._group._collective(method, request_id, work.wait)
        flags = zip(current.flats, self._flags_at, strict=True)
        present = [flat[start:].tolist() for flat, start in flags]
        return [self._summed(current, index, present) for index in range(count)]

    def _arrived(self, index: int, grad: Tensor) -> None:
        current = self._pass
        if current is None:  # a backward pass outside reduce (an earlier micro-batch)
            return
        current.grads[index] = grad
        current.missing[self._place[index][0]] -= 1
        self._launch_ready(current)

    def _flat(self, current: _Pass, bucket: int) -> Tensor:
        """Bucket ``bucket``'s buffer: each parameter's gradient (this pass's plus earlier
        micro-batches'; zeros if none) as float32, then one presence flag per parameter."""
        values: list[Tensor] = []
        flags: list[float] = []
        for index in self._buckets[bucket]:
            grad = current.grads[index]
            if current.earlier is not None and (earlier := current.earlier[index]) is not None:
                grad = earlier if grad is None else grad + earlier
            parameter = self._parameters[index]
            if grad is None:
                values.append(parameter.new_zeros(parameter.numel(), dtype=torch.float32))
            else:
                values.append(grad.reshape(-1).to(torch.float32))
            flags.append(0.0 if grad is None else 1.0)
        device = self._parameters[0].device
        return torch.cat([*values, torch.tensor(flags, device=device)])

    def _launch_ready(self, current: _Pass) -> None:
        """Start the all-reduce of each complete bucket whose predecessors have started."""
        while len(current.works) < len(self._buckets) and current.missing[len(current.works)] == 0:
            flat = self._flat(current, len(current.works))
            try:
                work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
            except (RuntimeError, ValueError) as exc:  # raised after the pass, not in its hook
                if current.failure is None:
                    current.failure = self._group._failure(current.method, current.request_id, exc)
                return
            assert work is not None
            current.flats.append(flat)
            current.works.append(work)

    def _summed(self, current: _Pass, index: int, present: list[list[float]]) -> Tensor | None:
        """Parameter ``index``'s summed gradient, ``None`` if no rank had one (``present``:
        each bucket's summed presence flags, read once)."""
        bucket, start, flag = self._place[index]
        if not present[bucket][flag - self._flags_at[bucket]] > 0:
            return None
        parameter = self._parameters[index]
        values = current.flats[bucket][start : start + parameter.numel()].view_as(parameter)
        return values if values.dtype == parameter.dtype else values.to(parameter.dtype)

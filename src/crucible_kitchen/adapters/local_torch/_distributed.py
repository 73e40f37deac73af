"""Data-parallel training across processes: the ranks ``torchrun`` starts, and their collectives.

Every rank runs the same workflow and so submits the same requests in the same order. A
training request that needs the other ranks first checks, in one small all-gather, that every
rank is at the same request (its sequence number and a digest of its method and request id):
a rank that re-ran, skipped or deduplicated a request the others did not makes every rank
raise :class:`~crucible_kitchen.errors.CollectiveDesync` instead of pairing mismatched
collectives. Every collective runs under the process group's timeout, and a failed or timed-out
one raises :class:`~crucible_kitchen.errors.CollectiveError` naming this rank: a job whose
rank died or hangs fails, it never hangs.

Backends: ``gloo`` on the CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``). The same
code path runs on both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import torch
import torch.distributed as dist

from crucible_kitchen.errors import CollectiveDesync, CollectiveError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from torch import Tensor

__all__ = (
    "DEFAULT_COLLECTIVE_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "DistributedGroup",
    "launched_world_size",
)

T = TypeVar("T")

DEFAULT_COLLECTIVE_TIMEOUT: Final = 300.0
"""Seconds a collective (and the start-up rendezvous) may wait for the other ranks, unless the
``CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT`` environment variable says otherwise."""

TIMEOUT_VARIABLE: Final = "CRUCIBLE_KITCHEN_COLLECTIVE_TIMEOUT"

_PORT: Final = "training_client"


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
    _sequence: int = field(default=0, init=False, repr=False)

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
        if not dist.is_initialized():
            try:
                if timeout is None:
                    timeout = float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_COLLECTIVE_TIMEOUT))
                if backend == "nccl":
                    torch.cuda.set_device(local_rank)
                dist.init_process_group(
                    backend=backend,
                    rank=rank,
                    world_size=world_size,
                    timeout=timedelta(seconds=timeout),
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
        return cls(rank, world_size, local_rank, backend, timeout or DEFAULT_COLLECTIVE_TIMEOUT)

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
        count = len(items)
        start = count * self.rank // self.world_size
        stop = count * (self.rank + 1) // self.world_size
        return items[start:stop]

    # ---------------------------------------------------------------------------------------
    # Collectives (called in the client's worker thread)

    def agree(self, method: str, request_id: str | None) -> None:
        """Check that every rank is at the same request, before its collectives.

        Raises:
            CollectiveDesync: a rank is at another request (a one-sided retry or skip).
            CollectiveError: the all-gather failed or timed out.
        """
        self._sequence += 1
        digest = hashlib.blake2b(f"{method}\0{request_id}".encode(), digest_size=7).digest()
        mine = torch.tensor([self._sequence, int.from_bytes(digest, "big")], dtype=torch.int64)
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._collective(method, request_id, lambda: dist.all_gather(gathered, mine))
        others = [rank for rank, theirs in enumerate(gathered) if not torch.equal(theirs, mine)]
        if others:
            raise CollectiveDesync(
                f"rank {self.rank} of {self.world_size}: at {method} request {request_id!r} "
                f"(collective request #{self._sequence}), ranks {others} are at another "
                "request: a stage re-ran or skipped requests on some ranks only; the job "
                "cannot continue (restart it, or resume it from its run directory)",
                port=_PORT,
                operation=method,
                request_id=request_id,
                rank=self.rank,
                world_size=self.world_size,
            )

    def gather(self, method: str, request_id: str | None, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order."""
        gathered: list[Any] = [None] * self.world_size
        self._collective(method, request_id, lambda: dist.all_gather_object(gathered, value))
        return gathered

    def broadcast(self, method: str, request_id: str | None, value: T) -> T:
        """Rank 0's ``value`` (picklable), on every rank."""
        box: list[Any] = [value]
        self._collective(method, request_id, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]  # type: ignore[no-any-return]

    def sum_gradients(
        self, method: str, request_id: str | None, parameters: Sequence[Tensor]
    ) -> None:
        """Sum every parameter's ``.grad`` over the ranks in place, in one flat all-reduce:
        afterwards every rank holds the same gradients. A parameter without a gradient on some
        ranks counts as zeros there; one without a gradient on every rank keeps none (so the
        optimizer skips it, as in one process)."""
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        device = grads[0].device
        present = torch.tensor([p.grad is not None for p in parameters], device=device)
        # One float32 buffer: one collective whatever the parameters' dtypes.
        flat = torch.cat(
            [*(grad.reshape(-1).to(torch.float32) for grad in grads), present.to(torch.float32)]
        )
        self._collective(method, request_id, lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM))
        anywhere = flat[-len(parameters) :].tolist()
        offset = 0
        with torch.no_grad():
            for parameter, grad, count in zip(parameters, grads, anywhere, strict=True):
                size = grad.numel()
                summed = flat[offset : offset + size].view_as(grad).to(grad.dtype, copy=True)
                parameter.grad = summed if count > 0 else None
                offset += size

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

    def _collective(self, method: str, request_id: str | None, call: Callable[[], object]) -> None:
        try:
            call()
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

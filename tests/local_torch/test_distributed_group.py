"""DistributedGroup's slicing and gradient sum, in one process (a gloo group of one rank)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
import torch.distributed as dist

from crucible_kitchen.adapters.local_torch import DistributedGroup

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _group(rank: int, world_size: int) -> DistributedGroup:
    return DistributedGroup(rank, world_size, rank, "gloo", 10.0)


def test_the_ranks_slices_are_contiguous_cover_the_batch_in_order_and_may_be_empty() -> None:
    items = list(range(7))
    assert [list(_group(r, 3).shard(items)) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [list(_group(r, 3).shard(items[:2])) for r in range(3)] == [[], [0], [1]]


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[DistributedGroup]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield _group(0, 1)
    finally:
        dist.destroy_process_group()


def test_a_parameter_without_gradient_anywhere_keeps_none(one_rank: DistributedGroup) -> None:
    used = torch.nn.Parameter(torch.zeros(3))
    unused = torch.nn.Parameter(torch.zeros(2))
    used.grad = torch.tensor([1.5, -2.0, 0.25])
    one_rank.sum_gradients("optim_step", "step-0", [used, unused])
    assert torch.equal(used.grad, torch.tensor([1.5, -2.0, 0.25]))
    assert unused.grad is None
    one_rank.agree("optim_step", "step-1")  # one rank always agrees with itself

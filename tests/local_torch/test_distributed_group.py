"""DistributedGroup's slicing, agreement and gradient sums, in one process (a gloo group of one
rank), and the outputs a rank shares with the others."""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

import pytest
import torch
import torch.distributed as dist

from crucible_kitchen.adapters.local_torch import (
    DistributedGroup,
    LocalTorchTrainingClient,
    StepOptions,
)
from crucible_kitchen.adapters.local_torch._distributed import GradientSum
from crucible_kitchen.adapters.local_torch._trainer import Trainer
from crucible_kitchen.adapters.local_torch._training_client import _unpacked
from crucible_kitchen.errors import CollectiveError
from crucible_kitchen.ports import Datum, ModelInput, TensorData

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _group(rank: int, world_size: int) -> DistributedGroup:
    return DistributedGroup(rank, world_size, rank, "gloo", 10.0)


def test_the_ranks_slices_are_contiguous_cover_the_batch_in_order_and_may_be_empty() -> None:
    items = list(range(7))
    assert [list(_group(r, 3).shard(items)) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [list(_group(r, 3).shard(items[:2])) for r in range(3)] == [[], [0], [1]]
    assert [list(part) for part in _group(1, 3).shards(items)] == [[0, 1], [2, 3], [4, 5, 6]]


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[DistributedGroup]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield _group(0, 1)
    finally:
        dist.destroy_process_group()


def _model() -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.nn.Parameter]:
    first = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    second = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]]))
    unused = torch.nn.Parameter(torch.zeros(2))
    return first, second, unused


def _loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return (first * first).sum() + (second * 3.0).sum() * first[0]


@pytest.mark.parametrize("bucket_elements", [1, 6, 1 << 18], ids=["per-parameter", "2+1", "one"])
def test_a_backward_pass_gradients_come_back_summed_and_an_unused_parameter_keeps_none(
    one_rank: DistributedGroup, bucket_elements: int
) -> None:
    first, second, unused = _model()
    summed = GradientSum(one_rank, [first, second, unused], bucket_elements=bucket_elements)
    grads = summed.reduce("forward_backward", "fb-0", _loss(first, second), None)
    # d/d first = 2 first + [3 * sum(second), 0, 0]; d/d second = 3 first[0]
    assert torch.equal(grads[0], torch.tensor([2.0 + 5.25, 4.0, 6.0]))
    assert torch.equal(grads[1], torch.full((2, 2), 3.0))
    assert grads[2] is None
    assert first.grad is None  # .grad is the caller's to change


def test_earlier_micro_batches_are_added_and_a_rank_without_data_sums_nothing(
    one_rank: DistributedGroup,
) -> None:
    first, second, unused = _model()
    summed = GradientSum(one_rank, [first, second, unused], bucket_elements=4)
    # A backward pass outside reduce (an earlier micro-batch) is left alone by the hooks.
    earlier = list(
        torch.autograd.grad((first * 2.0).sum(), [first, second, unused], allow_unused=True)
    )
    unused_earlier = [None, None, torch.tensor([0.5, 0.5])]
    grads = summed.reduce("forward_backward", "fb-1", _loss(first, second), earlier)
    assert torch.equal(grads[0], torch.tensor([2.0 + 5.25 + 2.0, 6.0, 8.0]))
    assert torch.equal(grads[1], torch.full((2, 2), 3.0))
    assert grads[2] is None
    # Only earlier gradients (this pass reaches no parameter): they still count.
    grads = summed.reduce("forward_backward", "fb-2", torch.tensor(1.0), unused_earlier)
    assert grads[:2] == [None, None]
    assert torch.equal(grads[2], torch.tensor([0.5, 0.5]))
    assert summed.reduce("forward_backward", "fb-3", None, None) == [None, None, None]


def test_one_rank_always_agrees_with_itself_and_gathers_its_values(
    one_rank: DistributedGroup,
) -> None:
    one_rank.note("optim_step", "step-0")
    assert one_rank.agree("forward_backward", "fb-1") == [0.0]
    assert one_rank.agree("optim_step", "step-1", payload=2.5e-3) == [2.5e-3]
    check = one_rank.start_agreement("forward_backward", "fb-2", payload=-1.0)
    assert check() == check() == [-1.0]  # checked once, answered again
    assert one_rank.gather_values("forward", None, [1.5, -2.0], [2]) == [[1.5, -2.0]]


def test_a_group_that_joins_the_ranks_keeps_their_store(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    group = DistributedGroup.from_environment(timeout=10.0)
    try:
        assert dist.is_initialized()
        group.key_value_store().set("kept", "yes")
        # Another connection to it (a thread's own) sees the key.
        assert group.key_value_store().clone().get("kept") == b"yes"
    finally:
        dist.destroy_process_group()


def test_the_store_of_a_group_initialised_before_comes_from_torch_or_a_clear_error(
    one_rank: DistributedGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert one_rank.store is None
    one_rank.key_value_store().set("found", "yes")
    monkeypatch.delattr(dist.distributed_c10d, "_get_default_store")
    torch_version = re.escape(f"torch {torch.__version__} does not give")
    with pytest.raises(CollectiveError, match=torch_version):
        one_rank.key_value_store()


@pytest.mark.parametrize("microbatch_tokens", [None, 40], ids=["one pass", "micro-batches"])
@pytest.mark.parametrize("top_k", [False, True], ids=["one target", "top-K targets"])
def test_shared_outputs_unpack_to_the_outputs_built_in_one_process(
    microbatch_tokens: int | None, top_k: bool
) -> None:
    # What a DDP rank sends to the others' all-gather (one flat tensor, started before the
    # backward pass) unpacks to the outputs one process builds, datum by datum, in order,
    # also when micro-batches (sorted by length) reorder the datums.
    lengths = (9, 3, 14, 6, 3)
    k = 3 if top_k else 1
    data = []
    for number, length in enumerate(lengths):
        tokens = [(7 * number + 3 * position) % 250 for position in range(length + 1)]
        targets = [tokens[1:][i // k] + i % k for i in range(length * k)]
        shape = (length, k) if top_k else None
        weights = tuple(0.5 + (i % 4) / 8 for i in range(length * k))
        data.append(
            Datum(
                model_input=ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(targets), shape=shape),
                    "weights": TensorData(dtype="float32", data=weights, shape=shape),
                },
            )
        )
    config = LocalTorchTrainingClient().config
    options = StepOptions(microbatch_tokens=microbatch_tokens)
    outputs = []
    for backward in (True, False):
        alone = Trainer(config, seed=5, lora=None, options=options)
        expected = alone.forward(data, "cross_entropy", {}, ("weights",), backward=backward)
        shared: list[torch.Tensor] = []
        trainer = Trainer(config, seed=5, lora=None, options=options)
        output = trainer.forward(
            data, "cross_entropy", {}, ("weights",), backward=backward, share=shared.append
        )
        assert output.loss_fn_outputs == ()
        assert output.metrics == expected.metrics
        [values] = shared
        assert values.dtype == torch.float64
        heads, rows = _unpacked([values.tolist()], [data], head=1, with_loss=True)
        assert heads == [[pytest.approx(expected.metrics["loss:sum"], rel=1e-6)]]
        assert rows == list(expected.loss_fn_outputs)
        outputs.append(rows)
        if backward:  # the same gradients either way
            for mine, theirs in zip(trainer.parameters, alone.parameters, strict=True):
                assert torch.equal(mine.grad, theirs.grad)  # type: ignore[arg-type]
    assert outputs[0] == outputs[1]  # forward and forward_backward report the same values

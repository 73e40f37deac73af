"""(N, K) targets on the local training client: soft-target cross-entropy and top-K reverse-KL
distillation through the custom loss :class:`TopKReverseKlLoss`, checked against logprobs
computed independently."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch
import torch.nn.functional as F

from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData
from crucible_kitchen.stages.builtin import TopKReverseKlLoss
from crucible_kitchen.training.losses import topk_reverse_kl_loss

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

pytestmark = pytest.mark.anyio

K = 3
ADAM = AdamParams(learning_rate=1e-2)


def _topk_datum(tokens: Sequence[int], weights_nk: Sequence[Sequence[float]]) -> Datum:
    """Inputs ``tokens``; at position i the K targets ``(tokens[i] + 1 + k) % 200``."""
    n = len(tokens)
    targets = [(tokens[i] + 1 + k) % 200 for i in range(n) for k in range(K)]
    return Datum(
        model_input=ModelInput.from_ints(list(tokens)),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(targets), shape=(n, K)),
            "weights": TensorData(
                dtype="float32", data=tuple(w for row in weights_nk for w in row), shape=(n, K)
            ),
        },
    )


def _data() -> list[Datum]:
    return [
        _topk_datum([10, 20, 30, 40], [[0.5, 0.3, 0.2], [0.6, 0.4, 0.0], [0, 0, 0], [1, 0, 0]]),
        _topk_datum([50, 60], [[0.2, 0.2, 0.6], [0.9, 0.1, 0.0]]),
    ]


def _reference_logprobs(client: LocalTorchTrainingClient, seed: int, datum: Datum) -> torch.Tensor:
    """(N, K) logprobs of the datum's targets under a model built alone, full log-softmax."""
    model = build_model(client.config, seed=seed)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([datum.model_input.to_ints()]))[0]
    targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].tolist())
    return F.log_softmax(logits.double(), dim=-1).gather(-1, targets)


async def test_soft_target_cross_entropy_sums_weights_times_top_k_logprobs(
    tmp_path: Path,
) -> None:
    client = LocalTorchTrainingClient(model="tiny", seed=7, checkpoint_dir=tmp_path)
    data = _data()
    output = await (await client.forward(data, "cross_entropy")).result()
    total = 0.0
    for datum, out in zip(data, output.loss_fn_outputs, strict=True):
        expected = _reference_logprobs(client, 7, datum)
        n = datum.model_input.length
        assert out["logprobs"].dims == (n, K)
        torch.testing.assert_close(
            torch.tensor(out["logprobs"].tolist(), dtype=torch.float64),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )
        weights = torch.tensor(datum.loss_fn_inputs["weights"].tolist(), dtype=torch.float64)
        # Tinker's cross_entropy with (N, K) targets: L = -sum_{t,k} w[t,k] * lp[t,k].
        row = -float((weights * expected).sum())
        assert out["loss"].data[0] == pytest.approx(row, rel=1e-5)
        total += row
    assert output.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)


async def test_top_k_reverse_kl_trains_through_a_custom_loss(tmp_path: Path) -> None:
    client = LocalTorchTrainingClient(model="tiny", seed=3, checkpoint_dir=tmp_path / "a")
    data = _data()
    before = await (await client.forward(data, "cross_entropy")).result()
    result = await (
        await client.forward_backward_custom(data, TopKReverseKlLoss(), request_id="kl")
    ).result()
    # The reported loss is the top-K reverse KL of the independently computed logprobs.
    expected = sum(
        float(
            topk_reverse_kl_loss(
                _reference_logprobs(client, 3, datum),
                torch.tensor(datum.loss_fn_inputs["weights"].tolist(), dtype=torch.float64),
            )
        )
        for datum in data
    )
    assert result.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)
    assert [out["logprobs"] for out in result.loss_fn_outputs] == [
        out["logprobs"] for out in before.loss_fn_outputs
    ]
    # A few steps move the student toward the teacher on its top K.
    for step in range(5):
        await (await client.optim_step(ADAM, request_id=f"opt{step}")).result()
        result = await (
            await client.forward_backward_custom(data, TopKReverseKlLoss(), request_id=f"kl{step}")
        ).result()
    assert result.metrics["loss:sum"] < expected


async def test_top_k_targets_are_refused_where_no_loss_takes_them(tmp_path: Path) -> None:
    client = LocalTorchTrainingClient(model="tiny", checkpoint_dir=tmp_path)
    good = _data()[0]
    n = good.model_input.length
    as_rl = Datum(
        model_input=good.model_input,
        loss_fn_inputs={
            **good.loss_fn_inputs,
            "logprobs": TensorData(dtype="float32", data=(0.0,) * n * K, shape=(n, K)),
            "advantages": TensorData(dtype="float32", data=(1.0,) * n * K, shape=(n, K)),
        },
    )
    one_weight_per_position = Datum(
        model_input=good.model_input,
        loss_fn_inputs={
            "target_tokens": good.loss_fn_inputs["target_tokens"],
            "weights": TensorData(dtype="float32", data=(1.0,) * n),
        },
    )
    other_k = _topk_datum([1, 2], [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    other_k = Datum(
        model_input=other_k.model_input,
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=(1, 2, 3, 4), shape=(2, 2)),
            "weights": TensorData(dtype="float32", data=(1.0, 0.0, 1.0, 0.0), shape=(2, 2)),
        },
    )
    cases = [
        (lambda: client.forward([as_rl], "importance_sampling"), r"\(4,\)"),
        (lambda: client.forward([one_weight_per_position], "cross_entropy"), "'weights'"),
        (lambda: client.forward([good, other_k], "cross_entropy"), "one K"),
    ]
    for call, match in cases:
        with pytest.raises(InvalidRequest, match=match):
            await call()
    assert sum(client.counters.calls.values()) == 0
    assert math.isfinite(
        (await (await client.forward([good], "cross_entropy")).result()).metrics["loss:sum"]
    )

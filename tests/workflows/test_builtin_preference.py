"""The built-in `preference` (DPO) workflow: the loss, the frozen reference, the steps."""

from __future__ import annotations

import math
from typing import Any

import pytest
from _builtin_support import (
    applied_ids,
    datum_key,
    floats,
    of_type,
    recording_adapters,
    stage_sequence,
)

from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.ports import Datum, ModelInput, TensorData
from crucible_kitchen.stages.builtin import DpoLoss
from crucible_kitchen.telemetry import DpoDatasetBuilt, DpoStep, StageException, TelemetryEvent
from crucible_kitchen.testing._stage_faults import KillPoint, StageKiller

pytestmark = pytest.mark.anyio


def datum(weights: list[float]) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(list(range(1, len(weights) + 1))),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(range(2, len(weights) + 2))),
            "weights": TensorData(dtype="float32", data=tuple(weights)),
        },
    )


def tensor(values: list[float]) -> TensorData:
    return TensorData(dtype="float32", data=tuple(values))


# The inventory's fixture: dc = 1.4, dr = -0.2, beta = 0.1 -> logits 0.16, loss ~0.616.
DATA = [datum([0.0, 1.0, 1.0]), datum([0.0, 1.0, 1.0])]
POLICY = [[-3.0, -0.5, -0.6], [-2.0, -1.1, -1.1]]
REFERENCE = ((-1.0, -1.2, -1.3), (-2.0, -1.0, -1.0))


def test_dpo_loss_matches_the_reference_fixture() -> None:
    out = DpoLoss(beta=0.1, reference_logprobs=REFERENCE)(DATA, [tensor(p) for p in POLICY])
    assert out.loss == pytest.approx(-math.log(1 / (1 + math.exp(-0.16))))
    assert out.loss == pytest.approx(0.616, abs=1e-3)
    assert out.metrics["accuracy"] == 1.0
    assert out.metrics["margin"] == pytest.approx(0.16)
    assert out.metrics["chosen_reward"] == pytest.approx(0.14)
    assert out.metrics["rejected_reward"] == pytest.approx(-0.02)
    assert out.metrics["num_pairs"] == 1.0


def test_dpo_loss_gradient_matches_finite_differences() -> None:
    data = [*DATA, datum([1.0, 0.5]), datum([0.0, 1.0])]
    policy = [*POLICY, [-0.3, -2.0], [-1.5, -0.2]]
    reference = (*REFERENCE, (-0.4, -1.0), (-1.0, -0.9))
    loss = DpoLoss(beta=0.7, reference_logprobs=reference)
    out = loss(data, [tensor(p) for p in policy])
    eps = 1e-6
    for d, values in enumerate(policy):
        for t in range(len(values)):
            bumped = [list(p) for p in policy]
            bumped[d][t] += eps
            numeric = (loss(data, [tensor(p) for p in bumped]).loss - out.loss) / eps
            assert out.logprob_grads[d].data[t] == pytest.approx(numeric, abs=1e-5)
    # pair 2: dc = 1 * 0.1 + 0.5 * -1.0 = -0.4, dr = 1 * 0.7 = 0.7
    z = (0.7 * (1.4 - -0.2), 0.7 * (-0.4 - 0.7))
    assert out.loss == pytest.approx(sum(math.log1p(math.exp(-v)) for v in z) / 2)
    assert out.metrics["accuracy"] == 0.5


def test_dpo_loss_refuses_unpaired_data() -> None:
    with pytest.raises(TrainingInputError, match="pairs"):
        DpoLoss(beta=0.1, reference_logprobs=REFERENCE[:1])(DATA[:1], [tensor(POLICY[0])])


async def test_dpo_scores_the_reference_once_then_trains_on_pairs() -> None:
    adapters, client = recording_adapters(seed=12)
    events: list[TelemetryEvent] = []
    config = {"batch_size": 4, "epochs": 1, "dpo_beta": 0.2}
    result = await Kitchen.run(
        "preference", config, adapters=adapters, seed=12, telemetry=[events.append]
    )
    assert result.status == "completed"
    assert result.steps == 16
    assert stage_sequence(events) == [
        "load_dataset", "build_pairs", "reference_logprobs", "load_eval_rows",
        "shuffle", *["submit_step", "await_step"] * 16,
        "drain", "final_run_evaluator", "save_final", "register_model", "flush_metrics",
    ]  # fmt: skip
    assert [(e.num_pairs, e.num_batches) for e in of_type(events, DpoDatasetBuilt)] == [(64, 16)]

    # The reference: every sequence scored once, by the initial weights, before any step.
    methods = [method for method, _ in client.counters.log]
    first_step = methods.index("forward_backward_custom")
    assert methods.count("forward") == methods[:first_step].count("forward") == 16
    fresh = NoopTrainingClient(seed=12)
    reference: dict[bytes, list[float]] = {}
    for data, future in client.forwards:
        output = await future.result()
        initial = await (await fresh.forward(data, "cross_entropy")).result()
        assert output == initial
        for d, out in zip(data, output.loss_fn_outputs, strict=True):
            reference[datum_key(d)] = list(out["logprobs"].data)

    steps = of_type(events, DpoStep)
    assert [e.step for e in steps] == list(range(16))
    outputs = await client.outputs()
    for event, (method, data, _), output in zip(steps, client.steps, outputs, strict=True):
        assert method == "forward_backward_custom"
        assert len(data) == 8  # 4 pairs: chosen, rejected, chosen, ...
        ratios = []
        for d, out in zip(data, output.loss_fn_outputs, strict=True):
            weights = floats(d, "weights")
            policy = list(out["logprobs"].data)
            ratios.append(
                sum(w * (p - r) for w, p, r in zip(weights, policy, reference[datum_key(d)],
                                                    strict=True))
            )  # fmt: skip
        pairs = list(zip(ratios[::2], ratios[1::2], strict=True))
        losses = [math.log1p(math.exp(-0.2 * (c - r))) for c, r in pairs]
        assert event.loss == pytest.approx(sum(losses) / 4, rel=1e-9)
        assert event.accuracy == sum(c > r for c, r in pairs) / 4
        assert event.margin == pytest.approx(sum(0.2 * (c - r) for c, r in pairs) / 4)
        assert event.chosen_reward == pytest.approx(sum(0.2 * c for c, _ in pairs) / 4)
        assert event.rejected_reward == pytest.approx(sum(0.2 * r for _, r in pairs) / 4)
        assert event.beta == 0.2
        assert event.lr == pytest.approx(1e-5 * (1 - event.step / 16))
        assert output.metrics["loss:sum"] == event.loss
    assert steps[0].margin == 0.0  # the policy starts as the reference
    assert result.metrics["dpo/accuracy"] == steps[-1].accuracy
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))
    assert client.counters.applied["forward_backward_custom"] == 16


async def test_killed_dpo_stages_change_nothing() -> None:
    async def run(killer: StageKiller | None) -> tuple[Any, Any, set[str]]:
        adapters, client = recording_adapters(seed=13)
        events: list[TelemetryEvent] = []
        async with Kitchen.open() as kitchen:
            handle = await kitchen.start(
                "preference",
                {"batch_size": 8, "epochs": 2, "pipeline_depth": 2},
                adapters=adapters,
                seed=13,
                run_id="dpo-faults",
                fault_hook=killer,
                telemetry=[events.append],
            )
            result = await handle.wait()
        return result, client, {e.stage for e in of_type(events, StageException)}

    clean, clean_client, _ = await run(None)
    killer = StageKiller(
        KillPoint("reference_logprobs", "awaiting", execution=3),
        KillPoint("submit_step", "after_submit", execution=4, operation="optim_step"),
        KillPoint("await_step", "awaiting", execution=9),
    )
    killed, killed_client, killed_stages = await run(killer)
    assert killed_stages == {"reference_logprobs", "submit_step", "await_step"}
    assert killed.metrics == clean.metrics
    assert killed.steps == clean.steps == 16
    assert set(applied_ids(killed_client)) == set(applied_ids(clean_client))
    assert killed_client.state == clean_client.state

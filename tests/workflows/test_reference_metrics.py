"""The workflows' share of the reference math, on the noop backend: parse-error turns are not
trained, the post-update KL, DPO's hinge and IPO losses with ``num_tokens``, bits per byte in
the supervised evaluation and the teacher KL per dataset in distillation."""

from __future__ import annotations

import math

import pytest
from _builtin_support import floats, of_type, recording_adapters, stage_sequence

from crucible_kitchen.adapters.noop import NoopSamplingClient, NoopTrainingClient
from crucible_kitchen.kitchen import Kitchen
from crucible_kitchen.ports import ModelInput, TokensWithLogprobs, Trajectory, Transition
from crucible_kitchen.stages._common import rl_datums
from crucible_kitchen.stages.builtin import PARSE_ERROR_MASKED
from crucible_kitchen.telemetry import DistillationStep, DpoStep, EvalComplete, TelemetryEvent

pytestmark = pytest.mark.anyio


def _turn(observation: list[int], action: list[int], **metrics: float) -> Transition:
    return Transition(
        observation=ModelInput.from_ints(observation),
        action=TokensWithLogprobs(tokens=tuple(action), logprobs=tuple(-0.5 for _ in action)),
        reward=0.0,
        episode_done=False,
        metrics=metrics,
    )


def test_a_turn_flagged_as_a_parse_error_gets_mask_and_advantage_zero() -> None:
    # Three turns that extend each other: one datum. The middle one failed to parse.
    trajectory = Trajectory(
        transitions=(
            _turn([1, 2], [3, 4]),
            _turn([1, 2, 3, 4, 5], [6, 7, 8], **{PARSE_ERROR_MASKED: 1.0}),
            _turn([1, 2, 3, 4, 5, 6, 7, 8, 9], [10], parse_error=1.0),  # reported, not masked
        ),
        final_observation=ModelInput.empty(),
    )
    [(datum, mask)] = rl_datums(trajectory, 2.0)
    # Targets 2..10: observation 2, action 3 4, observation 5, masked action 6 7 8,
    # observation 9, action 10.
    assert list(datum.loss_fn_inputs["target_tokens"].data) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert mask == (0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert floats(datum, "advantages") == [0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    # The sampler's logprobs stay: they are data, and the advantage 0 keeps them out of the loss.
    assert floats(datum, "logprobs") == [0.0, -0.5, -0.5, 0.0, -0.5, -0.5, -0.5, 0.0, -0.5]


async def test_the_post_update_kl_compares_the_sampler_with_the_updated_weights() -> None:
    seed = 8
    adapters, client = recording_adapters(seed=seed)
    config = {"num_batches": 3, "compute_post_kl": True, "final_eval": False}
    events: list[TelemetryEvent] = []
    result = await Kitchen.run(
        "reinforcement", config, adapters=adapters, seed=seed, telemetry=[events.append]
    )
    assert stage_sequence(events).count("post_update_kl") == 3
    store = adapters["metrics_store"]
    recorded = {
        name: {p.step: p.value for p in await store.read(result.run_id, name=name)}
        for name in ("optim/kl_pre_post_v1", "optim/kl_pre_post_v2")
    }
    for k, (_, data, _) in enumerate(client.steps):
        path = f"noop://{client.model_id}/sampler_weights/post_kl_{k:06d}"
        updated = await client.create_sampling_client(path)
        diffs = []
        for datum in data:
            sequence = datum.model_input.append_int(datum.loss_fn_inputs["target_tokens"].data[-1])
            lp = list(await (await updated.compute_logprobs(sequence)).result())[1:]
            q = floats(datum, "logprobs")
            diffs += [a - b for a, b in zip(q, lp, strict=True) if a != 0.0]
        v1 = sum(diffs) / len(diffs)
        v2 = 0.5 * sum(d * d for d in diffs) / len(diffs)
        assert recorded["optim/kl_pre_post_v1"][k] == pytest.approx(v1, abs=1e-12)
        assert recorded["optim/kl_pre_post_v2"][k] == pytest.approx(v2, abs=1e-12)
        assert v2 > 0.0  # the step moved the weights
    assert result.metrics["optim/kl_pre_post_v1"] == recorded["optim/kl_pre_post_v1"][2]


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
async def test_dpo_trains_with_trl_s_hinge_and_ipo_losses(loss_type: str) -> None:
    adapters, client = recording_adapters(seed=5)
    events: list[TelemetryEvent] = []
    beta = 0.2
    config = {"batch_size": 4, "max_steps": 3, "dpo_beta": beta, "loss_type": loss_type}
    await Kitchen.run("preference", config, adapters=adapters, seed=5, telemetry=[events.append])
    fresh = NoopTrainingClient(seed=5)
    steps = of_type(events, DpoStep)
    outputs = await client.outputs()
    assert len(steps) == 3
    for event, (_, data, _), output in zip(steps, client.steps, outputs, strict=True):
        reference = await (await fresh.forward(data, "cross_entropy")).result()
        ratios, lengths = [], []
        for d, out, ref in zip(
            data, output.loss_fn_outputs, reference.loss_fn_outputs, strict=True
        ):
            weights = floats(d, "weights")
            ratios.append(
                sum(
                    w * (p - r)
                    for w, p, r in zip(weights, out["logprobs"].data, ref["logprobs"].data,
                                       strict=True)
                )
            )  # fmt: skip
            lengths.append(sum(weights))
        losses = []
        for i in range(4):
            c, r = ratios[2 * i], ratios[2 * i + 1]
            if loss_type == "hinge":  # TRL: relu(1 - beta * (dc - dr))
                losses.append(max(0.0, 1.0 - beta * (c - r)))
            else:  # TRL: (dc/|c| - dr/|r| - 1/(2 beta))^2
                gap = c / lengths[2 * i] - r / lengths[2 * i + 1] - 1 / (2 * beta)
                losses.append(gap * gap)
        assert event.loss == pytest.approx(sum(losses) / 4, rel=1e-9)
        assert event.metrics["dpo/num_tokens"] == sum(d.model_input.length for d in data)
    assert steps[0].loss == pytest.approx(1.0 if loss_type == "hinge" else 1 / (2 * beta) ** 2)


async def test_supervised_evaluation_reports_bits_per_byte_beside_the_nll() -> None:
    adapters, client = recording_adapters(seed=3)
    events: list[TelemetryEvent] = []
    config = {"batch_size": 8, "max_steps": 2}
    result = await Kitchen.run(
        "supervised", config, adapters=adapters, seed=3, telemetry=[events.append]
    )
    [evaluation] = [e for e in of_type(events, EvalComplete) if e.model == "training_client"]
    nats, num_bytes = 0.0, 0
    for data, future in client.forwards:
        output = await future.result()
        for datum, out in zip(data, output.loss_fn_outputs, strict=True):
            targets = datum.loss_fn_inputs["target_tokens"].data
            for lp, w, token in zip(
                out["logprobs"].data, floats(datum, "weights"), targets, strict=True
            ):
                # The noop tokenizer: ids 0-3 are special, 4-259 the bytes 0-255.
                if w > 0 and token >= 4:
                    nats -= lp
                    num_bytes += 1
    assert num_bytes > 0
    expected = nats / (math.log(2) * num_bytes)
    assert evaluation.metrics["bpb"] == pytest.approx(expected, rel=1e-12)
    assert result.metrics["eval/bpb"] == evaluation.metrics["bpb"]
    assert result.metrics["eval/loss"] == evaluation.metrics["loss"]


async def test_distillation_reports_the_teacher_kl_per_dataset() -> None:
    seed = 13
    adapters, client = recording_adapters(
        seed, teacher_sampling_client=NoopSamplingClient(seed=seed + 1)
    )
    events: list[TelemetryEvent] = []
    config = {
        "num_batches": 2,
        "prompts_per_batch": 6,
        "samples_per_prompt": 1,
        "extra_datasets": ["other_prompts"],
        "final_eval": False,
    }
    await Kitchen.run(
        "distillation", config, adapters=adapters, seed=seed, telemetry=[events.append]
    )
    store = adapters["dataset_store"]
    by_dataset = {}
    for index, name in enumerate(("chat_tasks", "other_prompts")):
        rows = await store.read_rows(name, split="train")
        by_dataset[index] = {row["question"] for row in rows}
    teacher = NoopSamplingClient(seed=seed + 1)
    steps = of_type(events, DistillationStep)
    assert len(steps) == 2
    seen = set()
    for event, (_, data, _) in zip(steps, client.steps, strict=True):
        kl: dict[int, list[float]] = {0: [], 1: []}
        for datum in data:
            text = client.get_tokenizer().decode(datum.model_input.to_ints())
            [dataset] = [
                i for i, questions in by_dataset.items() if any(q in text for q in questions)
            ]
            sequence = datum.model_input.append_int(datum.loss_fn_inputs["target_tokens"].data[-1])
            lp_teacher = list(await (await teacher.compute_logprobs(sequence)).result())[1:]
            q = floats(datum, "logprobs")
            kl[dataset] += [a - b for a, b in zip(q, lp_teacher, strict=True) if a != 0.0]
        for dataset, values in kl.items():
            key = f"distill/teacher_kl/dataset_{dataset}"
            if values:
                seen.add(dataset)
                assert event.metrics[key] == pytest.approx(sum(values) / len(values), abs=1e-12)
            else:
                assert key not in event.metrics
        every = kl[0] + kl[1]
        assert event.teacher_kl == pytest.approx(sum(every) / len(every), abs=1e-12)
    assert seen == {0, 1}

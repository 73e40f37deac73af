"""The built-in `distillation` workflow: on-policy samples scored by a teacher port."""

from __future__ import annotations

from typing import Any

import pytest
from _builtin_support import applied_ids, floats, of_type, recording_adapters, stage_sequence

from crucible_kitchen.adapters.noop import NoopSamplingClient
from crucible_kitchen.errors import PortError
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.telemetry import DistillationStep, StageException, TelemetryEvent
from crucible_kitchen.testing._stage_faults import KillPoint, StageKiller

pytestmark = pytest.mark.anyio


async def test_distillation_needs_a_teacher_port() -> None:
    # The noop set binds a teacher; without one the run is refused before it starts.
    no_teacher = {k: v for k, v in Adapters.noop().items() if k != "teacher_sampling_client"}
    with pytest.raises(PortError, match="teacher_sampling_client"):
        await Kitchen.run("distillation", {}, adapters=no_teacher)


async def test_the_student_is_trained_on_minus_the_reverse_kl_to_the_teacher() -> None:
    seed = 21
    adapters, client = recording_adapters(
        seed, teacher_sampling_client=NoopSamplingClient(seed=seed + 1)
    )
    events: list[TelemetryEvent] = []
    config = {"num_batches": 3, "prompts_per_batch": 3, "samples_per_prompt": 2, "kl_coef": 0.5}
    result = await Kitchen.run(
        "distillation", config, adapters=adapters, seed=seed, telemetry=[events.append]
    )
    assert result.steps == 3
    batch = ["refresh_sampler", "sample_student", "score_teacher", "train_step", "await_step"]
    assert stage_sequence(events) == [
        "load_prompts", "load_eval_rows", *batch * 3,
        "final_run_evaluator", "save_final", "register_model", "flush_metrics",
    ]  # fmt: skip

    teacher = NoopSamplingClient(seed=seed + 1)
    steps = of_type(events, DistillationStep)
    assert [e.step for e in steps] == [0, 1, 2]
    assert len(client.samples) == 9
    for k, (event, (_, data, _)) in enumerate(zip(steps, client.steps, strict=True)):
        samples = client.samples[3 * k : 3 * k + 3]
        sequences = [(p, s) for p, response in samples for s in response.sequences]
        assert len(data) == len(sequences) == 6
        total_kl = total_mask = loss = 0.0
        for datum, (prompt, sequence) in zip(data, sequences, strict=True):
            full = prompt.to_ints() + list(sequence.tokens)
            assert datum.model_input.to_ints() == full[:-1]
            q = floats(datum, "logprobs")
            mask = [0.0] * (len(prompt.to_ints()) - 1) + [1.0] * len(sequence.tokens)
            assert q == [*[0.0] * (len(mask) - len(sequence.tokens)), *sequence.logprobs]
            future = await teacher.compute_logprobs(datum.model_input.append_int(full[-1]))
            lp_teacher = list(await future.result())[1:]
            rkl = [(a - b) * m for a, b, m in zip(q, lp_teacher, mask, strict=True)]
            assert floats(datum, "advantages") == pytest.approx([-0.5 * x for x in rkl])
            total_kl += sum(rkl)
            total_mask += sum(mask)
            loss += 0.5 * sum(rkl)  # -sum(ratio * A) with ratio 1 on-policy
        assert event.teacher_kl == pytest.approx(total_kl / total_mask)
        assert event.teacher_kl != 0.0  # a one-sample estimate: its sign is not fixed
        assert event.loss == pytest.approx(loss)
        assert event.metrics["optim/kl_sample_train_v1"] == 0.0
        assert event.num_sequences == 6
    assert {fn for fn, _ in client.loss_fns} == {"importance_sampling"}
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))


async def test_killed_distillation_stages_change_nothing() -> None:
    async def run(killer: StageKiller | None) -> tuple[Any, Any, set[str]]:
        teacher = NoopSamplingClient(seed=31)
        adapters, client = recording_adapters(30, teacher_sampling_client=teacher)
        events: list[TelemetryEvent] = []
        async with Kitchen.open() as kitchen:
            handle = await kitchen.start(
                "distillation",
                {"num_batches": 3},
                adapters=adapters,
                seed=30,
                run_id="distill-faults",
                fault_hook=killer,
                telemetry=[events.append],
            )
            result = await handle.wait()
        return result, client, {e.stage for e in of_type(events, StageException)}

    clean, clean_client, _ = await run(None)
    killer = StageKiller(
        KillPoint("score_teacher", "awaiting", execution=5),
        KillPoint("sample_student", "execute", execution=2),
        KillPoint("train_step", "after_submit", execution=1, operation="forward_backward"),
    )
    killed, killed_client, killed_stages = await run(killer)
    assert killed_stages == {"score_teacher", "sample_student", "train_step"}
    assert killed.metrics == clean.metrics
    assert set(applied_ids(killed_client)) == set(applied_ids(clean_client))
    assert killed_client.state == clean_client.state

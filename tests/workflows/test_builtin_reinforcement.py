"""The built-in `reinforcement` workflow on the noop backend: rewards, advantages, policy."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from _builtin_support import (
    applied_ids,
    floats,
    of_type,
    recording_adapters,
    stage_sequence,
)

from crucible_kitchen.adapters.noop import (
    FaultPlan,
    NoopRenderer,
    NoopSamplingClient,
    NoopTokenizer,
    TransientFailure,
)
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.ports import Datum, Message, ModelInput, SampleResponse
from crucible_kitchen.stages._reinforcement import Problem, ProblemEnv
from crucible_kitchen.telemetry import (
    RlAdvantagesComputed,
    RlRolloutComplete,
    RlStep,
    StageException,
    TelemetryEvent,
)
from crucible_kitchen.testing._stage_faults import KillPoint, StageKiller

pytestmark = pytest.mark.anyio

QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


def reward(prompt: ModelInput, tokens: tuple[int, ...]) -> float:
    """The built-in env's reward, recomputed: right integer, minus 0.1 without a stop token."""
    match = QUESTION.search(NoopTokenizer().decode(prompt.to_ints()))
    assert match is not None
    message, ended = NoopRenderer().parse_response(tokens)
    numbers = re.findall(r"-?\d+", message.content)
    correct = 1.0 if numbers and int(numbers[-1]) == int(match[1]) + int(match[2]) else 0.0
    return correct - (0.0 if ended else 0.1)


def group_rewards(samples: list[tuple[ModelInput, SampleResponse]]) -> list[list[float]]:
    return [[reward(prompt, s.tokens) for s in response.sequences] for prompt, response in samples]


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def check_datum(
    datum: Datum, prompt: ModelInput, tokens: tuple[int, ...], logprobs: Any, advantage: float
) -> None:
    """The datum of a one-turn trajectory: prompt then action, shifted; zeros off the action."""
    prompt_tokens = prompt.to_ints()
    pad = [0.0] * (len(prompt_tokens) - 1)
    assert datum.model_input.to_ints() == [*prompt_tokens, *tokens][:-1]
    assert list(datum.loss_fn_inputs["target_tokens"].data) == [*prompt_tokens[1:], *tokens]
    assert floats(datum, "logprobs") == [*pad, *logprobs]
    assert floats(datum, "advantages") == pytest.approx([*pad, *[advantage] * len(tokens)])


async def test_problem_env_rewards_the_right_integer_and_a_proper_ending() -> None:
    renderer = NoopRenderer()
    env = ProblemEnv(Problem(question="What is 2 + 3?", answer=5), renderer, format_coef=0.1)
    prompt, stop = await env.initial_observation()
    assert prompt == renderer.build_generation_prompt(
        [Message(role="user", content="What is 2 + 3?")]
    )
    assert stop == renderer.get_stop_sequences()
    tokenizer = NoopTokenizer()
    right = await env.step([*tokenizer.encode("It is 5", add_special_tokens=False), 2])
    assert (right.reward, right.episode_done, right.metrics) == (
        1.0, True, {"correct": 1.0, "format": 1.0}
    )  # fmt: skip
    wrong = ProblemEnv(Problem(question="q", answer=5), renderer, format_coef=0.1)
    cut_off = await wrong.step(tokenizer.encode("4", add_special_tokens=False))
    assert cut_off.reward == pytest.approx(-0.1)


async def test_on_policy_rl_trains_on_group_centred_rewards() -> None:
    adapters, client = recording_adapters(seed=11)
    events: list[TelemetryEvent] = []
    config = {"num_batches": 3, "groups_per_batch": 3, "group_size": 4}
    result = await Kitchen.run(
        "reinforcement", config, adapters=adapters, seed=11, telemetry=[events.append]
    )
    assert result.status == "completed"
    assert result.steps == 3
    batch = [
        "refresh_sampler", "build_env_groups", "rollouts", "compute_advantages",
        "assemble_batch", "train_step", "await_step",
    ]  # fmt: skip
    assert stage_sequence(events) == [
        "load_problems", "load_eval_rows", *batch * 3,
        "final_run_evaluator", "save_final", "register_model", "flush_metrics",
    ]  # fmt: skip

    steps = of_type(events, RlStep)
    assert [e.step for e in steps] == [0, 1, 2]
    outputs = await client.outputs()
    assert len(client.samples) == 9  # one request per group: num_samples = group_size
    for k, (event, (_, data, _), output) in enumerate(
        zip(steps, client.steps, outputs, strict=True)
    ):
        samples = client.samples[3 * k : 3 * k + 3]
        rewards = group_rewards(samples)
        assert (event.reward_mean, event.reward_std) == pytest.approx(
            mean_std([r for group in rewards for r in group])
        )
        advantages = [r - sum(group) / len(group) for group in rewards for r in group]
        sequences = [(p, s) for p, response in samples for s in response.sequences]
        assert len(data) == len(sequences) == 12
        for datum, (prompt, sequence), advantage in zip(data, sequences, advantages, strict=True):
            check_datum(datum, prompt, sequence.tokens, sequence.logprobs, advantage)
        # On-policy: the sampler's logprobs are the learner's, every ratio is 1, so the
        # importance-sampling loss is -sum(A) over action tokens and the drift is 0.
        assert event.kl_sample_train == 0.0
        expected_loss = -sum(
            a * len(s.tokens) for a, (_, s) in zip(advantages, sequences, strict=True)
        )
        assert event.loss == pytest.approx(expected_loss, abs=1e-9)
        assert output.metrics["loss:sum"] == event.loss
        assert event.num_trajectories == 12
    assert result.metrics["rl/reward_mean"] == steps[-1].reward_mean
    assert len(of_type(events, RlRolloutComplete)) == len(of_type(events, RlAdvantagesComputed))

    assert {fn for fn, _ in client.loss_fns} == {"importance_sampling"}
    assert client.counters.applied["save_weights_for_sampler"] == 3 + 1 + 1  # refresh, eval, final
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))
    assert client.state.step == 3


async def test_a_stale_sampler_is_corrected_by_the_importance_ratio() -> None:
    adapters, client = recording_adapters(seed=4)
    events: list[TelemetryEvent] = []
    config = {"num_batches": 4, "sampler_refresh_every": 2, "final_eval": False}
    await Kitchen.run("reinforcement", config, adapters=adapters, seed=4, telemetry=[events.append])
    drift = [e.kl_sample_train for e in of_type(events, RlStep)]
    assert drift[0] == drift[2] == 0.0
    assert drift[1] != 0.0
    assert drift[3] != 0.0
    assert stage_sequence(events).count("refresh_sampler") == 2
    assert client.counters.applied["save_weights_for_sampler"] == 2 + 1  # refreshes, final
    assert [e.metrics["rl/staleness"] for e in of_type(events, RlStep)] == [0.0, 1.0, 0.0, 1.0]


async def test_the_kl_penalty_is_centred_and_folded_into_the_advantages() -> None:
    seed = 6
    adapters, client = recording_adapters(seed=seed)
    events: list[TelemetryEvent] = []
    config = {
        "num_batches": 3,
        "kl_penalty_coef": 0.05,
        "loss_fn": "ppo",
        "sampler_refresh_every": 1,
        "final_eval": False,
    }
    await Kitchen.run(
        "reinforcement", config, adapters=adapters, seed=seed, telemetry=[events.append]
    )
    assert stage_sequence(events).count("kl_penalty") == 3
    assert client.loss_fns[0] == ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})
    reference = NoopSamplingClient(seed=seed)  # the 'sampling_client' port: initial weights
    for k, (event, (_, data, _)) in enumerate(
        zip(of_type(events, RlStep), client.steps, strict=True)
    ):
        samples = client.samples[4 * k : 4 * k + 4]
        rewards = group_rewards(samples)
        base = [r - sum(g) / len(g) for g in rewards for r in g]
        diffs, masks = [], []
        for datum in data:
            sequence = datum.model_input.append_int(datum.loss_fn_inputs["target_tokens"].data[-1])
            ref = list(await (await reference.compute_logprobs(sequence)).result())[1:]
            q = floats(datum, "logprobs")
            mask = [1.0 if x != 0.0 else 0.0 for x in q]
            diffs.append([(a - b) * m for a, b, m in zip(q, ref, mask, strict=True)])
            masks.append(mask)
        avg = sum(map(sum, diffs)) / sum(map(sum, masks))
        assert event.metrics["rl/kl_policy_base"] == pytest.approx(avg, abs=1e-12)
        for datum, advantage, d, mask in zip(data, base, diffs, masks, strict=True):
            expected = [m * (advantage + 0.05 * (avg - x)) for x, m in zip(d, mask, strict=True)]
            assert floats(datum, "advantages") == pytest.approx(expected, abs=1e-9)
        added = sum(a for datum in data for a in floats(datum, "advantages")) - sum(
            a * sum(m) for a, m in zip(base, masks, strict=True)
        )
        assert added == pytest.approx(0.0, abs=1e-9)  # centred: it only redistributes


async def test_async_mode_samples_ahead_with_bounded_staleness() -> None:
    adapters, client = recording_adapters(seed=8)
    events: list[TelemetryEvent] = []
    config = {"mode": "async", "num_batches": 5, "max_steps_off_policy": 1, "final_eval": False}
    result = await Kitchen.run(
        "reinforcement", config, adapters=adapters, seed=8, telemetry=[events.append]
    )
    assert result.steps == 5
    steps = of_type(events, RlStep)
    assert [e.step for e in steps] == list(range(5))
    assert all(0 <= e.metrics["rl/staleness"] <= 2 for e in steps)
    assert stage_sequence(events).count("refresh_sampler") == 5
    assert client.counters.applied["optim_step"] == 5
    ids = applied_ids(client)
    assert len(ids) == len(set(ids))


async def test_killed_rl_stages_change_nothing() -> None:
    async def run(killer: StageKiller | None) -> tuple[Any, Any]:
        adapters, client = recording_adapters(seed=9)
        events: list[TelemetryEvent] = []
        async with Kitchen.open() as kitchen:
            handle = await kitchen.start(
                "reinforcement",
                {"num_batches": 3, "kl_penalty_coef": 0.1, "save_every": 2},
                adapters=adapters,
                seed=9,
                run_id="rl-faults",
                fault_hook=killer,
                telemetry=[events.append],
            )
            result = await handle.wait()
        assert {e.stage for e in of_type(events, StageException)} == (
            set() if killer is None else {"rollouts", "train_step", "refresh_sampler",
                                          "kl_penalty", "await_step"}
        )  # fmt: skip
        return result, client

    clean, clean_client = await run(None)
    killer = StageKiller(
        KillPoint("rollouts", "execute", execution=2),
        KillPoint("refresh_sampler", "after_submit", execution=2),
        KillPoint("kl_penalty", "execute"),
        KillPoint("train_step", "after_submit", execution=3, operation="optim_step"),
        KillPoint("await_step", "awaiting", execution=2),
    )
    killed, killed_client = await run(killer)
    assert len(killer.kills) == 5
    assert killed.metrics == clean.metrics
    assert killed.steps == clean.steps
    assert set(applied_ids(killed_client)) == set(applied_ids(clean_client))
    assert killed_client.state == clean_client.state


async def test_a_transient_backend_fault_is_retried_and_changes_nothing() -> None:
    config = {"num_batches": 3, "final_eval": False}
    clean = await Kitchen.run("reinforcement", config, seed=5, run_id="rl-transient")
    faults = FaultPlan().inject(TransientFailure(), method="save_weights_for_sampler", calls=2)
    adapters = Adapters.noop(seed=5, faults=faults)
    events: list[TelemetryEvent] = []
    retried = await Kitchen.run(
        "reinforcement", config, adapters=adapters, seed=5, run_id="rl-transient",
        telemetry=[events.append],
    )  # fmt: skip
    assert len(faults.injected) == 1
    [failure] = of_type(events, StageException)
    assert (failure.stage, failure.error_type, failure.will_retry) == (
        "refresh_sampler", "TransientBackendError", True,
    )  # fmt: skip
    assert retried.metrics == clean.metrics

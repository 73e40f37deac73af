"""The main-job recipes ``rl_basic``, ``dpo_basic`` and ``distill_basic`` on the local torch
backend: each runs end to end in a reduced configuration, starts ``init_from`` another run's
weights, and (slow tests, the recipes' defaults) moves its held-out metric the right way."""

from __future__ import annotations

import json
import math
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import torch
from safetensors.torch import load_file

from crucible_kitchen.adapters.local_torch import ArithmeticEvaluator, local_torch_adapters
from crucible_kitchen.errors import ConfigError, PortError
from crucible_kitchen.kitchen import Kitchen, RunHandle, RunResult
from crucible_kitchen.ports import (
    TOPK_PROMPT_LOGPROBS,
    ModelInput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    capability,
)
from crucible_kitchen.recipes import RlBasicConfig
from crucible_kitchen.telemetry import TrainingCheckpoint

if TYPE_CHECKING:
    from pathlib import Path

    from crucible_kitchen.telemetry import TelemetryEvent

pytestmark = pytest.mark.anyio

TEACHER = {"max_examples": 64, "batch_size": 16, "epochs": 1, "eval_every": 0, "save_every": 0}
"""A teacher (or starting point) in a few steps: sl_basic on 64 rows."""
RL_SMALL = {"num_batches": 2, "groups_per_batch": 2, "group_size": 2, "sft_warmup_steps": 2}
RL_SMALL |= {"eval_examples": 4}
DPO_SMALL = {"max_examples": 8, "batch_size": 4, "epochs": 1, "sft_warmup_steps": 2}
DPO_SMALL |= {"eval_examples": 4}
DISTILL_SMALL = {"num_batches": 2, "prompts_per_batch": 2, "max_tokens": 4, "eval_examples": 4}


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints/weights/final/model.safetensors")


def assert_before_and_after(result: RunResult, *names: str) -> None:
    """The run evaluated before its first step and after its last one."""
    assert result.status == "completed", result.error
    for name in names:
        assert f"initial/{name}" in result.metrics, sorted(result.metrics)
        assert name in result.metrics


def _sl_basic_run(run_dir: Path, config: dict[str, Any] | None = None) -> Path:
    result = anyio.run(partial(Kitchen.run, "sl_basic", config, run_dir=run_dir))
    assert result.status == "completed", result.error
    return run_dir


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher (or starting point) run, trained once for the module: tests only read it."""
    return _sl_basic_run(tmp_path_factory.mktemp("teacher") / "teacher", TEACHER)


@pytest.fixture(scope="module")
def default_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sl_basic with its defaults, trained once for the module: tests only read it."""
    return _sl_basic_run(tmp_path_factory.mktemp("default_teacher") / "teacher")


async def test_rl_basic_warms_up_then_trains_and_evaluates_before_and_after(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "rl"
    result = await Kitchen.run("rl_basic", RL_SMALL, run_dir=run_dir)
    assert_before_and_after(result, "eval/correct", "eval/reward", "eval/format")
    assert result.steps == 2
    assert result.metrics["warmup/steps"] == 2.0
    rows = jsonl(run_dir / "metrics.jsonl")
    evaluated = [row["step"] for row in rows if "test/correct" in row]
    assert evaluated == [0, 2]
    assert "registry" in {p.name for p in run_dir.iterdir()}


async def test_dpo_basic_evaluates_held_out_pairs_before_and_after(tmp_path: Path) -> None:
    result = await Kitchen.run("dpo_basic", DPO_SMALL, run_dir=tmp_path / "dpo")
    assert_before_and_after(
        result, "eval/pref_accuracy", "eval/dpo_accuracy", "eval/dpo_margin", "eval/dpo_loss"
    )
    # Before any DPO step the policy is the reference: every implicit reward is zero.
    assert result.metrics["initial/eval/dpo_margin"] == 0.0
    assert result.metrics["initial/eval/dpo_accuracy"] == 0.0
    assert result.metrics["eval/dpo_margin"] != 0.0


@pytest.mark.parametrize("mode", ["on_policy", "off_policy"])
async def test_distill_basic_distils_a_teacher_run_into_a_smaller_student(
    tmp_path: Path, teacher: Path, mode: str
) -> None:
    run_dir = tmp_path / "student"
    config = {**DISTILL_SMALL, "teacher": str(teacher), "mode": mode}
    result = await Kitchen.run("distill_basic", config, run_dir=run_dir)
    assert_before_and_after(result, "eval/teacher_kl")
    assert result.steps == 2
    student, teacher_weights = model_tensors(run_dir), model_tensors(teacher)
    assert sum(t.numel() for t in student.values()) < sum(
        t.numel() for t in teacher_weights.values()
    )
    recorded = json.loads((run_dir / "config.json").read_text())["config"]
    assert recorded["teacher"] == str(teacher / "checkpoints/weights/final")


async def test_top_k_distillation_trains_on_the_teachers_top_k_tokens(
    tmp_path: Path, teacher: Path
) -> None:
    config = {**DISTILL_SMALL, "teacher": str(teacher), "topk": 4, "num_batches": 3}
    result = await Kitchen.run("distill_basic", config, run_dir=tmp_path / "student")
    assert result.status == "completed", result.error
    rows = [row for row in jsonl(tmp_path / "student/metrics.jsonl") if "distill/loss" in row]
    assert len(rows) == 3
    assert all(0.0 <= row["distill/teacher_kl"] < math.inf for row in rows)
    assert all(row["distill/tokens"] > 0 for row in rows)


async def test_the_local_sampler_returns_the_top_k_of_its_logprobs(tmp_path: Path) -> None:
    ports = local_torch_adapters(model="micro")
    sampler = ports["sampling_client"]
    topk = capability(sampler, TOPK_PROMPT_LOGPROBS)
    assert topk is not None
    prompt = ModelInput.from_ints([5, 17, 99, 3])
    top = await (await topk(prompt, 3)).result()
    scored = await (await sampler.compute_logprobs(prompt)).result()  # type: ignore[attr-defined]
    assert top[0] is None
    assert len(top) == 4
    for position in range(1, 4):
        slots = top[position]
        assert slots is not None
        assert len(slots) == 3
        assert [lp for _, lp in slots] == sorted((lp for _, lp in slots), reverse=True)
        # The prompt's own token scores no higher than the best, and equals its slot if there.
        best = slots[0][1]
        assert scored[position] <= best + 1e-6
        for token, logprob in slots:
            if token == prompt.to_ints()[position]:
                assert logprob == pytest.approx(scored[position], abs=1e-5)


async def test_distill_basic_without_a_teacher_stops_at_start() -> None:
    with pytest.raises(PortError, match="teacher_sampling_client"):
        await Kitchen.run("distill_basic", run_dir=False)


def test_init_from_must_name_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"init_from: .*not a checkpoint directory"):
        Kitchen.describe("rl_basic", {"init_from": str(tmp_path)})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="without a final checkpoint"):
        Kitchen.describe("rl_basic", {"init_from": str(tmp_path)})


async def test_init_from_starts_from_another_runs_weights_and_records_it(
    tmp_path: Path, teacher: Path
) -> None:
    source = teacher
    run_dir = tmp_path / "rl"
    config = {**RL_SMALL, "init_from": str(source), "num_batches": 1}
    result = await Kitchen.run("rl_basic", config, run_dir=run_dir)
    assert result.status == "completed", result.error
    checkpoint = str(source / "checkpoints/weights/final")
    assert "warmup/steps" not in result.metrics  # the given weights replace the warm-up
    assert result.artifacts["init_from"] == checkpoint
    assert json.loads((run_dir / "config.json").read_text())["config"]["init_from"] == checkpoint
    entries = list((run_dir / "registry").rglob("*.json"))
    assert any(checkpoint in entry.read_text() for entry in entries)
    # The first evaluation already scores the source's weights, not fresh ones: a fresh
    # tiny model never ends a reply with the stop sequence.
    assert result.metrics["initial/eval/format"] > 0.0


async def test_the_kl_penalty_is_measured_against_the_starting_point_not_fresh_weights(
    tmp_path: Path,
) -> None:
    """After a warm-up the first batch is sampled from the reference itself: KL 0."""
    config = {**RL_SMALL, "sft_warmup_steps": 5, "kl_penalty_coef": 0.1, "num_batches": 1}
    result = await Kitchen.run("rl_basic", config, run_dir=tmp_path / "rl")
    assert result.status == "completed", result.error
    assert result.metrics["rl/kl_policy_base"] == pytest.approx(0.0, abs=1e-5)


async def test_init_from_is_not_applied_again_on_resume(tmp_path: Path, teacher: Path) -> None:
    """A resumed run continues from its own checkpoint: its final weights equal those of the
    uninterrupted run, which started from ``init_from`` once."""
    source = teacher
    config = {**RL_SMALL, "init_from": str(source), "num_batches": 3, "save_every": 2}
    whole = await Kitchen.run("rl_basic", config, run_dir=tmp_path / "whole")
    assert whole.status == "completed"
    handles: list[RunHandle] = []

    def stop_at_the_first_checkpoint(event: TelemetryEvent) -> None:
        if isinstance(event, TrainingCheckpoint):
            handles[0].request_stop()

    async with Kitchen.open() as kitchen:
        handles.append(
            await kitchen.start(
                "rl_basic",
                config,
                run_dir=tmp_path / "parts",
                telemetry=[stop_at_the_first_checkpoint],
            )
        )
        stopped = await handles[0].result()
    assert stopped.status == "cancelled"
    async with Kitchen.open() as kitchen:
        resumed = await (await kitchen.start_resumed(tmp_path / "parts")).result()
    assert resumed.status == "completed", resumed.error
    left, right = model_tensors(tmp_path / "whole"), model_tensors(tmp_path / "parts")
    assert all(torch.equal(left[k], right[k]) for k in left)


class _Replies:
    """A sampling client that answers each prompt with fixed text."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.params: list[SamplingParams] = []
        self.counts: list[int] = []

    async def sample(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams, **_: Any
    ) -> Any:
        self.params.append(sampling_params)
        self.counts.append(num_samples)
        sequence = SampledSequence(tokens=tuple(self.tokens), stop_reason="stop")
        response = SampleResponse(sequences=(sequence,) * num_samples)

        class Done:
            async def result(self) -> SampleResponse:
                return response

        return Done()


async def test_the_arithmetic_evaluator_scores_greedy_replies_as_the_environment() -> None:
    ports = local_torch_adapters()
    renderer = ports["renderer"]
    evaluator = ArithmeticEvaluator(renderer, format_coef=0.1)  # type: ignore[arg-type]
    tokenizer = ports["tokenizer"]
    ended = tokenizer.encode("7<|im_end|>")  # type: ignore[attr-defined]
    model = _Replies(ended)
    rows = [
        {"question": "What is 3 + 4?", "answer": 7},
        {"question": "What is 1 + 1?", "answer": 2},
    ]
    result = await evaluator.evaluate(model, rows)  # type: ignore[arg-type]
    assert result.num_samples == 2
    assert result.metrics == {"correct": 0.5, "format": 1.0, "reward": 0.5}
    assert all(p.temperature == 0.0 for p in model.params)
    cut_off = _Replies(tokenizer.encode("7"))  # type: ignore[attr-defined]
    result = await evaluator.evaluate(cut_off, rows[:1])  # type: ignore[arg-type]
    assert result.metrics == pytest.approx({"correct": 1.0, "format": 0.0, "reward": 0.9})


async def test_the_arithmetic_evaluator_also_scores_sampled_replies() -> None:
    ports = local_torch_adapters()
    evaluator = ArithmeticEvaluator(ports["renderer"], samples=3)  # type: ignore[arg-type]
    model = _Replies(ports["tokenizer"].encode("7<|im_end|>"))  # type: ignore[attr-defined]
    rows = [
        {"question": "What is 3 + 4?", "answer": 7},
        {"question": "What is 1 + 1?", "answer": 2},
    ]
    result = await evaluator.evaluate(model, rows)  # type: ignore[arg-type]
    assert result.num_samples == 2
    assert result.metrics["sampled_correct"] == 0.5  # 3 of the 6 sampled replies
    # Per row: one greedy reply, then 3 at temperature 1, seeded by the row.
    assert model.counts == [1, 3, 1, 3]
    assert [(p.temperature, p.seed) for p in model.params] == [
        (0.0, 0),
        (1.0, 0),
        (0.0, 0),
        (1.0, 1),
    ]


@pytest.mark.parametrize("renderer", ["qwen3", "qwen3_disable_thinking"])
async def test_sl_basic_trains_with_the_qwen3_chat_formats(tmp_path: Path, renderer: str) -> None:
    config = {**TEACHER, "max_examples": 16, "renderer": renderer}
    result = await Kitchen.run("sl_basic", config, run_dir=tmp_path / "run")
    assert result.status == "completed", result.error
    assert json.loads((tmp_path / "run/config.json").read_text())["config"]["renderer"] == renderer


def test_the_main_jobs_defaults_validate() -> None:
    config = RlBasicConfig()
    assert (config.split, config.eval_split, config.initial_eval) == (
        "train[:-64]",
        "train[-64:]",
        True,
    )


# -- the recipes' defaults move their metrics (minutes on two cores) -------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_rl_basic_raises_the_held_out_sampled_correct_rate(tmp_path: Path) -> None:
    # What GRPO maximises, the reward of sampled replies, rises on the held-out problems (8
    # replies to each of 64). Greedy accuracy on them moves by a question or two either way
    # with the CPU's float kernels (AVX2 and AVX-512 runs differ), so it is only reported.
    result = await Kitchen.run("rl_basic", run_dir=tmp_path / "rl")
    metrics = result.metrics
    assert metrics["eval/sampled_correct"] > metrics["initial/eval/sampled_correct"]
    assert metrics["eval/format"] == metrics["initial/eval/format"] == 1.0


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_dpo_basic_raises_held_out_preference_accuracy_and_margin(tmp_path: Path) -> None:
    result = await Kitchen.run("dpo_basic", run_dir=tmp_path / "dpo")
    metrics = result.metrics
    assert metrics["eval/dpo_accuracy"] > metrics["initial/eval/dpo_accuracy"]
    assert metrics["eval/dpo_margin"] > metrics["initial/eval/dpo_margin"]
    assert metrics["eval/pref_accuracy"] >= metrics["initial/eval/pref_accuracy"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["on_policy", "off_policy"])
async def test_distill_basic_lowers_the_students_kl_to_the_teacher(
    tmp_path: Path, default_teacher: Path, mode: str
) -> None:
    config = {"teacher": str(default_teacher), "mode": mode}
    result = await Kitchen.run("distill_basic", config, run_dir=tmp_path / "student")
    metrics = result.metrics
    assert metrics["eval/teacher_kl"] < metrics["initial/eval/teacher_kl"]

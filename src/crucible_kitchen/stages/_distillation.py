"""On-policy distillation stages: the student samples, the teacher scores every sampled token.

The advantage of each sampled token is minus the per-token reverse KL to the teacher
(tinker-cookbook's ``train_on_policy``), trained with the ``importance_sampling`` loss. The
teacher is the sampling client bound to the port ``teacher_sampling_client``; it must share
the student's tokenizer and renderer.

State: ``"prompts"`` (conversations, in run order), ``"distill_batch"`` (an
``RlBatch``), ``"step_metrics"``, plus the shared keys of
``_common`` (``"sampler"`` is the student).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from crucible_kitchen.errors import DataError, TrainingInputError
from crucible_kitchen.ports import (
    CustomLossOutput,
    Message,
    ModelInput,
    SamplingParams,
    TensorData,
    TokensWithLogprobs,
    Trajectory,
    Transition,
)
from crucible_kitchen.stages._common import (
    DATASET,
    EVAL_ROWS,
    LAST_EVAL_STEP,
    LOADS_SPLIT,
    SAMPLER,
    STEP_METRICS,
    SUBMITS_STEPS,
    AwaitTrainingSteps,
    BuiltinStage,
    InFlightStep,
    datum_weights,
    load_split,
    merge_contracts,
    next_token_datum,
    report_evaluation,
    rl_datums,
    row_messages,
    sampler_for_current_weights,
    sequence_logprobs,
    split_rows,
    submit_training_step,
)
from crucible_kitchen.stages._contract import StageContract, StateKey
from crucible_kitchen.stages._reinforcement import (
    ADJUSTS_ADVANTAGES,
    RlBatch,
    adjust_against,
    policy_step_metrics,
)
from crucible_kitchen.stages._supervised import nll_of
from crucible_kitchen.telemetry import DistillationStep
from crucible_kitchen.training import reverse_kl_advantages

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.ports import (
        DatasetRow,
        Datum,
        ForwardBackwardOutput,
        SampledSequence,
        SamplingClient,
    )
    from crucible_kitchen.stages._context import Context

__all__ = (
    "AwaitDistillationSteps",
    "AwaitOffPolicySteps",
    "EvaluateTeacherKl",
    "LoadPrompts",
    "SampleStudent",
    "SampleTeacher",
    "ScoreWithTeacher",
    "SubmitDistillationStep",
    "SubmitOffPolicyStep",
    "TopKReverseKlLoss",
)

_SEED_MASK: Final = 0x7FFFFFFF

PROMPTS: Final = StateKey("prompts", tuple, rebuilt_on_resume=True)
"""The prompts' conversations, in run order."""
PROMPT_DATASETS: Final = StateKey("prompt_datasets", tuple, rebuilt_on_resume=True)
"""Per prompt, the index of the dataset it comes from: 0 for ``dataset``, then
``extra_datasets`` in order."""
DISTILL_BATCH: Final = StateKey("distill_batch", RlBatch)
"""The student's samples of this batch, as training data."""
DISTILL_DATASETS: Final = StateKey("distill_datasets", tuple)
"""Per datum of ``distill_batch``, the index of its prompt's dataset."""
TEACHER_SAMPLES: Final = StateKey("teacher_samples", tuple)
"""Off-policy: this batch's teacher replies, as supervised datums."""
_PROMPT_KEYS: Final = ("prompt", "question", "instruction", "input")


def _position_kl(student: Sequence[float], teacher: Sequence[float]) -> tuple[float, list[float]]:
    """One position's reverse KL over the used slots (teacher probability > 0) and its
    gradient with respect to the student's logprobs of every slot."""
    used = [k for k, q in enumerate(teacher) if q > 0]
    grads = [0.0] * len(student)
    if not used:
        return 0.0, grads
    top = max(student[k] for k in used)
    log_norm = top + math.log(math.fsum(math.exp(student[k] - top) for k in used))
    log_p = {k: student[k] - log_norm for k in used}
    gap = {k: log_p[k] - math.log(teacher[k]) for k in used}
    kl = math.fsum(math.exp(log_p[k]) * gap[k] for k in used)
    for k in used:
        grads[k] = math.exp(log_p[k]) * (gap[k] - kl)
    return kl, grads


@dataclass(frozen=True, slots=True)
class TopKReverseKlLoss:
    """Top-K reverse-KL distillation as a :data:`~crucible_kitchen.ports.CustomLossFn`
    (tinker-cookbook's ``reverse_kl_custom_loss``), torch-free, for any backend's
    ``forward_backward_custom``.

    Each datum has ``(N, K)`` ``target_tokens`` (the teacher's K most likely tokens at each
    position) and ``(N, K)`` ``weights`` holding the teacher's probabilities of them,
    renormalized over the K, 0 for an unused slot or an untrained position. With ``lp`` the
    student's logprobs of those tokens, renormalized over the used slots into ``p``::

        loss = sum over positions of sum_k p[k] * (log p[k] - log q[k])

    with its exact gradient ``p[k] * (log(p[k] / q[k]) - KL)`` per slot (the same math as
    :func:`crucible_kitchen.training.losses.topk_reverse_kl_loss`). Metrics:
    ``topk_reverse_kl`` (mean per trained position) and ``topk_positions``.
    """

    def __call__(self, data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        """The loss of ``data`` given the student's ``(N, K)`` logprobs of each datum.

        Raises:
            TrainingInputError: a datum's weights and logprobs are not both ``(N, K)``.
        """
        if len(data) != len(logprobs):
            raise TrainingInputError(f"{len(data)} data but {len(logprobs)} logprobs")
        total: list[float] = []
        grads: list[TensorData] = []
        for index, (datum, student) in enumerate(zip(data, logprobs, strict=True)):
            teacher = datum.loss_fn_inputs["weights"]
            if len(student.dims) != 2 or teacher.dims != student.dims:
                raise TrainingInputError(
                    f"datum {index}: top-K distillation needs (N, K) weights and logprobs, "
                    f"got {teacher.dims} and {student.dims}"
                )
            width = student.dims[1]
            flat: list[float] = []
            for start in range(0, len(student.data), width):
                teacher_slots = [float(v) for v in teacher.data[start : start + width]]
                kl, grad = _position_kl(
                    [float(v) for v in student.data[start : start + width]], teacher_slots
                )
                if any(v > 0 for v in teacher_slots):
                    total.append(kl)
                flat.extend(grad)
            grads.append(TensorData(dtype="float32", data=tuple(flat), shape=student.dims))
        loss = math.fsum(total)
        metrics = {
            "topk_reverse_kl": loss / len(total) if total else math.nan,
            "topk_positions": float(len(total)),
        }
        return CustomLossOutput(loss=loss, logprob_grads=tuple(grads), metrics=metrics)


def prompt_messages(row: DatasetRow, index: int) -> tuple[Message, ...]:
    """The prompt of a row: its conversation up to the last user turn, or a prompt string.

    Raises:
        DataError: the row has neither.
    """
    if "messages" in row:
        messages = row_messages(row, index)
        while messages and messages[-1].role == "assistant":
            messages.pop()
        if messages:
            return tuple(messages)
    for key in _PROMPT_KEYS:
        value = row.get(key)
        if isinstance(value, str) and value:
            return (Message(role="user", content=value),)
    raise DataError(
        f"row {index}: expected 'messages' or a prompt ({', '.join(_PROMPT_KEYS)}); "
        f"got {sorted(row)}"
    )


class LoadPrompts(BuiltinStage):
    """Read the prompts of ``dataset``/``split`` (and of each of ``extra_datasets``, same
    split) and fix their order for the run; remember each prompt's dataset.

    ``split`` may be a slice of a split (``"train[:-64]"``, see :func:`split_rows`).
    """

    requires: ClassVar[tuple[str, ...]] = ("dataset_store",)
    contract = merge_contracts(
        LOADS_SPLIT,
        StageContract(config=("extra_datasets",), writes=(PROMPTS, PROMPT_DATASETS)),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        sources = [await load_split(ctx)]
        for name in config.extra_datasets:
            sources.append(await split_rows(ctx.port("dataset_store"), name, config.split))
        prompts: list[tuple[int, tuple[Message, ...]]] = []
        for dataset, (name, rows) in enumerate(
            zip((config.dataset, *config.extra_datasets), sources, strict=True)
        ):
            if not rows:
                raise DataError(f"dataset {name!r}/{config.split!r} has no prompts")
            prompts.extend((dataset, prompt_messages(row, index)) for index, row in enumerate(rows))
        ctx.rng("prompt_order").shuffle(prompts)
        ctx.state["prompts"] = tuple(messages for _, messages in prompts)
        ctx.state["prompt_datasets"] = tuple(dataset for dataset, _ in prompts)
        return ctx


async def _sample_prompts(
    ctx: Context,
    sampler: SamplingClient,
    prompts: Sequence[tuple[Message, ...]],
    num_samples: int,
    operation: str,
) -> list[tuple[ModelInput, tuple[SampledSequence, ...]]]:
    """Each prompt's generation prompt and ``num_samples`` replies to it from ``sampler``
    (every request submitted before any is awaited)."""
    config = ctx.config
    renderer = ctx.port("renderer")
    stop = renderer.get_stop_sequences()
    requests = []
    for j, messages in enumerate(prompts):
        prompt = renderer.build_generation_prompt(messages)
        name = f"{operation}/{j}"
        params = SamplingParams(
            max_tokens=int(config.max_tokens),
            temperature=float(config.temperature),
            stop=stop,
            seed=ctx.seed_for(name) & _SEED_MASK,
        )
        future = await sampler.sample(prompt, num_samples, params, request_id=ctx.request_id(name))
        requests.append((prompt, future))
    return [(prompt, (await future.result()).sequences) for prompt, future in requests]


def _batch_prompts(ctx: Context) -> tuple[list[tuple[Message, ...]], list[int]]:
    """This batch's prompts and the index of each one's dataset."""
    prompts: tuple[tuple[Message, ...], ...] = ctx.state["prompts"]
    prompt_datasets: tuple[int, ...] = ctx.state["prompt_datasets"]
    per_batch = int(ctx.config.prompts_per_batch)
    first = ctx.loops["batches"] * per_batch
    positions = [(first + j) % len(prompts) for j in range(per_batch)]
    return [prompts[i] for i in positions], [prompt_datasets[i] for i in positions]


_SAMPLES: Final = ("prompts_per_batch", "samples_per_prompt", "max_tokens", "temperature")


class SampleStudent(BuiltinStage):
    """Sample ``samples_per_prompt`` replies per prompt of this batch from the student."""

    requires: ClassVar[tuple[str, ...]] = ("renderer",)
    contract = StageContract(
        config=_SAMPLES,
        reads=(PROMPTS, PROMPT_DATASETS, SAMPLER),
        writes=(DISTILL_BATCH, DISTILL_DATASETS),
    )

    async def execute(self, ctx: Context) -> Context:
        prompts, datasets_of = _batch_prompts(ctx)
        sampled = await _sample_prompts(
            ctx, ctx.state["sampler"], prompts, int(ctx.config.samples_per_prompt), "sample"
        )
        data: list[Datum] = []
        masks: list[tuple[float, ...]] = []
        datasets: list[int] = []
        for dataset, (prompt, sequences) in zip(datasets_of, sampled, strict=True):
            for sequence in sequences:
                trajectory = Trajectory(
                    transitions=(
                        Transition(
                            observation=prompt,
                            action=TokensWithLogprobs(
                                tokens=sequence.tokens, logprobs=sequence.logprobs
                            ),
                            reward=0.0,
                            episode_done=True,
                        ),
                    ),
                    final_observation=ModelInput.empty(),
                )
                for datum, mask in rl_datums(trajectory, 0.0):
                    data.append(datum)
                    masks.append(mask)
                    datasets.append(dataset)
        if not data:
            raise TrainingInputError("the student's samples produced no training data")
        ctx.state["distill_batch"] = RlBatch(data=tuple(data), masks=tuple(masks))
        ctx.state["distill_datasets"] = tuple(datasets)
        return ctx


def _reply_datum(prompt: ModelInput, reply: Sequence[int]) -> Datum | None:
    """The datum that trains ``reply`` after ``prompt`` (weight on the reply only)."""
    tokens = [*prompt.to_ints(), *reply]
    weights = [0.0] * prompt.length + [1.0] * len(reply)
    return next_token_datum(tokens, weights, len(tokens))


class SampleTeacher(BuiltinStage):
    """Off-policy distillation: sample ``samples_per_prompt`` replies per prompt of this
    batch from the teacher, as supervised examples for the student."""

    requires: ClassVar[tuple[str, ...]] = ("renderer", "teacher_sampling_client")
    contract = StageContract(
        config=_SAMPLES, reads=(PROMPTS, PROMPT_DATASETS), writes=(TEACHER_SAMPLES,)
    )

    async def execute(self, ctx: Context) -> Context:
        prompts, _ = _batch_prompts(ctx)
        sampled = await _sample_prompts(
            ctx,
            ctx.port("teacher_sampling_client"),
            prompts,
            int(ctx.config.samples_per_prompt),
            "teacher_sample",
        )
        data = [
            datum
            for prompt, sequences in sampled
            for sequence in sequences
            if (datum := _reply_datum(prompt, sequence.tokens)) is not None
        ]
        if not data:
            raise TrainingInputError("the teacher's samples produced no training data")
        ctx.state["teacher_samples"] = tuple(data)
        return ctx


class SubmitOffPolicyStep(BuiltinStage):
    """Submit the cross-entropy step on the teacher's samples, unawaited."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = merge_contracts(
        SUBMITS_STEPS, StageContract(config=("num_batches",), reads=(TEACHER_SAMPLES,))
    )

    async def execute(self, ctx: Context) -> Context:
        await submit_training_step(
            ctx,
            ctx.state["teacher_samples"],
            total_steps=int(ctx.config.num_batches),
            loss_fn="cross_entropy",
        )
        return ctx


class AwaitOffPolicySteps(AwaitTrainingSteps):
    """Await the off-policy step and log the student's NLL of the teacher's samples."""

    pipelined: ClassVar[bool] = False

    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        return {
            "distill/loss": nll_of(step.data, output),
            "distill/lr": step.lr,
            "distill/sequences": float(len(step.data)),
            "distill/tokens": math.fsum(w for d in step.data for w in datum_weights(d)),
        }

    def event(self, step: InFlightStep, row: Mapping[str, float]) -> DistillationStep:
        return DistillationStep(
            step=step.step,
            loss=row["distill/loss"],
            num_sequences=int(row["distill/sequences"]),
            num_tokens=int(row["distill/tokens"]),
            lr=step.lr,
            metrics=dict(row),
        )


class EvaluateTeacherKl(BuiltinStage):
    """The student's reverse KL to the teacher on held-out prompts: one reply per
    evaluation prompt from the current weights, scored by both.

    Records ``eval/teacher_kl``: the mean over reply tokens of ``log p_student(token) -
    log p_teacher(token)``, a Monte Carlo estimate of the per-token KL(student || teacher).
    """

    requires: ClassVar[tuple[str, ...]] = (
        "training_client",
        "renderer",
        "teacher_sampling_client",
        "metrics_store",
    )
    contract = StageContract(
        config=("max_tokens", "temperature", "eval_split"),
        reads=(EVAL_ROWS, DATASET),
        writes=(LAST_EVAL_STEP,),
    )

    async def execute(self, ctx: Context) -> Context:
        prompts = [prompt_messages(row, i) for i, row in enumerate(ctx.state["eval_rows"])]
        path, student = await sampler_for_current_weights(ctx, f"eval_{ctx.step:06d}")
        sampled = await _sample_prompts(ctx, student, prompts, 1, f"eval_{ctx.step}/sample")
        replies = [
            (datum, sequence)
            for prompt, (sequence,) in sampled
            if (datum := _reply_datum(prompt, sequence.tokens)) is not None
        ]
        teacher = await sequence_logprobs(
            ctx,
            ctx.port("teacher_sampling_client"),
            [datum for datum, _ in replies],
            f"eval_{ctx.step}/teacher_logprobs",
        )
        gaps = [
            float(own) - theirs
            for (_, sequence), scored in zip(replies, teacher, strict=True)
            for own, theirs in zip(
                sequence.logprobs or (), scored[len(scored) - len(sequence.tokens) :], strict=True
            )
        ]
        kl = math.fsum(gaps) / len(gaps) if gaps else math.nan
        await report_evaluation(ctx, {"teacher_kl": kl}, model=path, sample_count=len(replies))
        return ctx


class ScoreWithTeacher(BuiltinStage):
    """Score the student's samples with the teacher; advantage = -kl_coef * reverse KL.

    Logs ``distill/teacher_kl`` and, per dataset ``i`` of the batch,
    ``distill/teacher_kl/dataset_{i}`` (tinker-cookbook's ``teacher_kl/dataset_{i}``).
    """

    requires: ClassVar[tuple[str, ...]] = ("teacher_sampling_client",)
    contract = merge_contracts(
        ADJUSTS_ADVANTAGES,
        StageContract(
            config=("kl_coef",),
            reads=(DISTILL_BATCH, DISTILL_DATASETS),
            writes=(DISTILL_BATCH, STEP_METRICS),
        ),
    )

    async def execute(self, ctx: Context) -> Context:
        ctx.state["distill_batch"], metrics = await adjust_against(
            ctx,
            ctx.state["distill_batch"],
            ctx.port("teacher_sampling_client"),
            "teacher_logprobs",
            functools.partial(reverse_kl_advantages, dataset_indices=ctx.state["distill_datasets"]),
            coef=float(ctx.config.kl_coef),
        )
        ctx.state["step_metrics"] = {f"distill/{k}": v for k, v in metrics.items()}
        return ctx


class SubmitDistillationStep(BuiltinStage):
    """Submit the distillation batch's ``importance_sampling`` step, unawaited."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = merge_contracts(
        SUBMITS_STEPS,
        StageContract(config=("num_batches",), reads=(DISTILL_BATCH,), may_read=(STEP_METRICS,)),
    )

    async def execute(self, ctx: Context) -> Context:
        batch: RlBatch = ctx.state["distill_batch"]
        await submit_training_step(
            ctx,
            batch.data,
            total_steps=int(ctx.config.num_batches),
            loss_fn="importance_sampling",
            masks=batch.masks,
            metrics=ctx.state.get("step_metrics", {}),
        )
        return ctx


class AwaitDistillationSteps(AwaitTrainingSteps):
    """Await the distillation step (on-policy: at once) and log loss and teacher KL."""

    pipelined: ClassVar[bool] = False

    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        return policy_step_metrics("distill", step, output)

    def event(self, step: InFlightStep, row: Mapping[str, float]) -> DistillationStep:
        teacher_kl = row.get("distill/teacher_kl", math.nan)
        return DistillationStep(
            step=step.step,
            loss=row["distill/loss"],
            teacher_kl=teacher_kl,
            num_sequences=int(row["distill/sequences"]),
            num_tokens=int(row["distill/tokens"]),
            lr=step.lr,
            metrics=dict(row),
        )

"""Supervised fine-tuning stages: load, render, pipelined cross-entropy steps, NLL evaluation.

State: ``"train_rows"`` (read, then replaced by) ``"train_data"`` (the datums), the step plan
(``"num_batches"``, ``"total_steps"``, ``"num_epochs"``), ``"eval_data"``, plus the shared
keys of ``_common``; each stage's ``contract`` says which it reads and writes. Nothing here
draws randomness outside ``ctx.rng``, so a resumed run that repeats these stages rebuilds the
same data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Final

from crucible_kitchen.errors import DataError
from crucible_kitchen.ports import SamplingParams
from crucible_kitchen.stages._common import (
    BATCHES_EPOCHS,
    DATASET,
    EVAL_ROWS,
    LAST_EVAL_STEP,
    STEP_PLAN,
    SUBMITS_STEPS,
    TRAIN_ROWS,
    AwaitTrainingSteps,
    BuiltinStage,
    InFlightStep,
    batch_of,
    datum_weights,
    last_batch_of_epoch,
    merge_contracts,
    plan_steps,
    render_row,
    report_evaluation,
    row_messages,
    sampler_for_current_weights,
    submit_training_step,
    training_logprobs,
)
from crucible_kitchen.stages._contract import StageContract, StateKey
from crucible_kitchen.telemetry import EvalSample, TrainingStep
from crucible_kitchen.training import bits_per_byte, weighted_mean_nll

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.ports import DatasetRow, Datum, ForwardBackwardOutput
    from crucible_kitchen.stages._context import Context

__all__ = (
    "AwaitSupervisedSteps",
    "BuildEvalDataset",
    "BuildSupervisedDataset",
    "EvaluateNll",
    "SampleReplies",
    "SubmitSupervisedStep",
)

TRAIN_DATA: Final = StateKey("train_data", tuple, rebuilt_on_resume=True)
"""The rendered training datums."""
EVAL_DATA: Final = StateKey("eval_data", tuple, rebuilt_on_resume=True)
"""The rendered evaluation datums."""

_RENDERS: Final = ("train_on_what", "max_length")


def _render_rows(ctx: Context, rows: Sequence[DatasetRow]) -> tuple[list[Datum], int]:
    """Every row that renders to a datum with weight, and how many rows did not."""
    renderer, tokenizer = ctx.port("renderer"), ctx.port("tokenizer")
    data: list[Datum] = []
    for index, row in enumerate(rows):
        datum = render_row(
            row,
            index,
            renderer,
            tokenizer,
            train_on_what=ctx.config.train_on_what,
            max_length=int(ctx.config.max_length),
        )
        if datum is not None:
            data.append(datum)
    return data, len(rows) - len(data)


class BuildSupervisedDataset(BuiltinStage):
    """Render the training rows into next-token datums and plan the steps."""

    requires: ClassVar[tuple[str, ...]] = ("renderer", "tokenizer")
    contract = StageContract(
        config=(*_RENDERS, "batch_size", "epochs", "max_steps"),
        reads=(TRAIN_ROWS,),
        writes=(TRAIN_ROWS, TRAIN_DATA, *STEP_PLAN),
    )

    async def execute(self, ctx: Context) -> Context:
        rows: tuple[DatasetRow, ...] = ctx.state.pop("train_rows")
        data, dropped = _render_rows(ctx, rows)
        config = ctx.config
        plan_steps(ctx, len(data), int(config.batch_size), int(config.epochs), config.max_steps)
        ctx.state["train_data"] = tuple(data)
        ctx.metrics["data/train_examples"] = float(len(data))
        ctx.metrics["data/dropped_examples"] = float(dropped)
        return ctx


class BuildEvalDataset(BuiltinStage):
    """Render the evaluation rows into datums for the held-out NLL."""

    requires: ClassVar[tuple[str, ...]] = ("renderer", "tokenizer")
    contract = StageContract(config=_RENDERS, reads=(EVAL_ROWS,), writes=(EVAL_DATA,))

    async def execute(self, ctx: Context) -> Context:
        data, _ = _render_rows(ctx, ctx.state["eval_rows"])
        if not data:
            raise DataError("no evaluation row renders to an example with weight")
        ctx.state["eval_data"] = tuple(data)
        return ctx


class SubmitSupervisedStep(BuiltinStage):
    """Submit this batch's cross-entropy forward-backward and optimizer step, unawaited."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = merge_contracts(
        SUBMITS_STEPS, BATCHES_EPOCHS, StageContract(config=("batch_size",), reads=(TRAIN_DATA,))
    )

    async def execute(self, ctx: Context) -> Context:
        data = batch_of(ctx, "train_data", int(ctx.config.batch_size))
        await submit_training_step(
            ctx,
            data,
            total_steps=int(ctx.state["total_steps"]),
            loss_fn="cross_entropy",
            epoch=ctx.loops["epochs"],
            ends_epoch=last_batch_of_epoch(ctx),
        )
        return ctx


def nll_of(data: Sequence[Datum], output: ForwardBackwardOutput) -> float:
    """Mean negative logprob per unit of weight (tinker-cookbook's ``train_mean_nll``)."""
    logprobs = [item["logprobs"].data for item in output.loss_fn_outputs]
    return weighted_mean_nll(logprobs, [d.loss_fn_inputs["weights"].data for d in data])


class AwaitSupervisedSteps(AwaitTrainingSteps):
    """Await supervised steps, keeping ``pipeline_depth`` in flight; log loss and lr."""

    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        return {
            "train/loss": nll_of(step.data, output),
            "train/lr": step.lr,
            "train/epoch": float(step.epoch),
            "train/progress": (step.step + 1) / step.total_steps,
            "train/sequences": float(len(step.data)),
            "train/tokens": float(sum(d.model_input.length for d in step.data)),
            "train/loss_tokens": math.fsum(
                w for d in step.data for w in d.loss_fn_inputs["weights"].data
            ),
        }

    def event(self, step: InFlightStep, row: Mapping[str, float]) -> TrainingStep:
        return TrainingStep(
            step=step.step,
            total_steps=step.total_steps,
            epoch=step.epoch,
            loss=row["train/loss"],
            lr=step.lr,
            metrics=dict(row),
        )


class EvaluateNll(BuiltinStage):
    """Held-out NLL of the current weights on the evaluation data (``forward``, no gradient).

    Records ``eval/loss`` (mean NLL per weighted token, nats) and ``eval/bpb`` (bits per byte
    of the trained text, :func:`~crucible_kitchen.training.bits_per_byte`), which compares
    models with different tokenizers. Special tokens (those ``decode`` drops with
    ``skip_special_tokens=True``) count in the NLL but not in bits per byte.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "metrics_store", "tokenizer")
    contract = StageContract(
        config=("batch_size", "eval_split"),
        reads=(EVAL_DATA, DATASET),
        writes=(LAST_EVAL_STEP,),
    )

    async def execute(self, ctx: Context) -> Context:
        data: tuple[Datum, ...] = ctx.state["eval_data"]
        client = ctx.port("training_client")
        size = int(ctx.config.batch_size)
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        futures = [await client.forward(chunk, "cross_entropy") for chunk in chunks]
        logprobs: list[list[float]] = []
        for future in futures:
            logprobs.extend(training_logprobs(await future.result()))
        weights = [datum_weights(d) for d in data]
        nll = weighted_mean_nll(logprobs, weights)
        tokenizer = ctx.port("tokenizer")
        targets = [[int(t) for t in d.loss_fn_inputs["target_tokens"].data] for d in data]
        special = {
            token
            for token in {
                t
                for ts, ws in zip(targets, weights, strict=True)
                for t, w in zip(ts, ws, strict=False)
                if w > 0
            }
            if not tokenizer.decode([token], skip_special_tokens=True)
        }
        bpb = bits_per_byte(logprobs, weights, targets, tokenizer.decode, special_ids=special)
        await report_evaluation(
            ctx, {"loss": nll, "bpb": bpb}, model="training_client", sample_count=len(data)
        )
        return ctx


class SampleReplies(BuiltinStage):
    """Sample greedy replies to the first ``eval_generations`` evaluation prompts.

    Each reply is an :class:`~crucible_kitchen.telemetry.EvalSample` event, with the
    dataset's reply as the reference: a look at what the model has learned.

    The weights are saved for sampling as ``sample_<step>``; sampling changes nothing else.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "renderer")
    contract = StageContract(
        config=("eval_generations", "generation_max_tokens"), reads=(EVAL_ROWS,)
    )

    async def execute(self, ctx: Context) -> Context:
        rows: tuple[DatasetRow, ...] = ctx.state["eval_rows"]
        renderer = ctx.port("renderer")
        _, sampler = await sampler_for_current_weights(ctx, f"sample_{ctx.step:06d}")
        params = SamplingParams(
            max_tokens=int(ctx.config.generation_max_tokens),
            temperature=0.0,
            stop=renderer.get_stop_sequences(),
        )
        requests = []
        for index, row in enumerate(rows[: int(ctx.config.eval_generations)]):
            messages = row_messages(row, index)
            reference = None
            if len(messages) > 1 and messages[-1].role == "assistant":
                reference = messages.pop().content
            prompt = renderer.build_generation_prompt(messages)
            future = await sampler.sample(
                prompt, 1, params, request_id=ctx.request_id(f"sample/{index}")
            )
            requests.append((messages[-1].content, reference, future))
        for question, reference, future in requests:
            response = await future.result()
            reply, _ = renderer.parse_response(response.sequences[0].tokens)
            ctx.emit(
                EvalSample(
                    step=ctx.step, prompt=question, completion=reply.content, reference=reference
                )
            )
        return ctx

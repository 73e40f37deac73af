"""DPO stages: preference pairs, reference logprobs (once), custom-loss steps.

The DPO loss is computed on this side of the port from the backend's per-token logprobs
(``forward_backward_custom``), torch-free: :class:`DpoLoss` returns the loss and its exact
gradient with respect to those logprobs.

State: ``"train_rows"`` (read, then replaced by) ``"pairs"`` (``(chosen, rejected)`` datums),
``"reference_logprobs"`` (aligned with ``"pairs"``), the step plan, plus the shared keys of
``_common``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from crucible_kitchen.errors import DataError, RenderError, TrainingInputError
from crucible_kitchen.ports import CustomLossOutput, Message, TensorData
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
    as_message,
    batch_of,
    datum_weights,
    last_batch_of_epoch,
    merge_contracts,
    next_token_datum,
    plan_steps,
    report_evaluation,
    submit_training_step,
    training_logprobs,
)
from crucible_kitchen.stages._contract import StageContract, StateKey
from crucible_kitchen.telemetry import DpoDatasetBuilt, DpoStep

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crucible_kitchen.ports import DatasetRow, Datum, ForwardBackwardOutput, Renderer
    from crucible_kitchen.stages._context import Context
    from crucible_kitchen.training import DPOLossType

__all__ = (
    "AwaitDpoSteps",
    "BuildEvalPairs",
    "BuildPreferenceDataset",
    "ComputeReferenceLogprobs",
    "DpoLoss",
    "EvaluatePreferences",
    "SubmitDpoStep",
)

PAIRS: Final = StateKey("pairs", tuple, rebuilt_on_resume=True)
"""The ``(chosen, rejected)`` datums of each usable row."""
REFERENCE_LOGPROBS: Final = StateKey("reference_logprobs", tuple)
"""The initial weights' logprobs of each pair; a checkpoint keeps them."""
EVAL_PAIRS: Final = StateKey("eval_pairs", tuple, rebuilt_on_resume=True)
"""The ``(chosen, rejected)`` datums of each usable evaluation row."""
EVAL_REFERENCE_LOGPROBS: Final = StateKey("eval_reference_logprobs", tuple)
"""The initial weights' logprobs of each evaluation pair; a checkpoint keeps them."""


def _log_sigmoid(x: float) -> float:
    """``log(sigmoid(x))`` without overflow or cancellation."""
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _pair_loss(
    loss_type: str,
    beta: float,
    label_smoothing: float,
    delta_c: float,
    delta_r: float,
    length_c: float,
    length_r: float,
) -> tuple[float, float, float]:
    """One pair's loss and its derivatives with respect to ``delta_c`` and ``delta_r``."""
    if loss_type == "ipo":
        gap = delta_c / length_c - delta_r / length_r - 1.0 / (2.0 * beta)
        return gap * gap, 2.0 * gap / length_c, -2.0 * gap / length_r
    z = beta * (delta_c - delta_r)
    if loss_type == "hinge":
        slope = -1.0 if z < 1.0 else 0.0
        return max(0.0, 1.0 - z), beta * slope, -beta * slope
    eps = label_smoothing
    loss = -(1.0 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)
    slope = -(1.0 - eps) * _sigmoid(-z) + eps * _sigmoid(z)
    return loss, beta * slope, -beta * slope


@dataclass(frozen=True, slots=True)
class DpoLoss:
    """The DPO loss as a :data:`~crucible_kitchen.ports.CustomLossFn` (tinker-cookbook's
    data layout, TRL's loss variants).

    Data come as pairs: chosen at even, rejected at odd positions. With ``w`` a datum's
    weights (1 on the completion), a sequence's logprob is the weighted token *sum*::

        dc = sum(w * lp(chosen)) - sum(w * lpref(chosen))     # dr likewise for rejected
        z  = beta * (dc - dr)

    and the loss is the mean over pairs of (see
    :func:`crucible_kitchen.training.losses.dpo_loss`, the same math in torch):

    - ``sigmoid``: ``-(1 - eps) * log(sigmoid(z)) - eps * log(sigmoid(-z))``,
      ``eps = label_smoothing``;
    - ``hinge``: ``max(0, 1 - z)``;
    - ``ipo``: ``(dc / |c| - dr / |r| - 1 / (2 * beta)) ** 2``, ``|c| = max(1, sum(w))``.

    The gradient with respect to ``lp[t]`` is ``d(loss)/d(dc) * w[t] / n`` on chosen tokens
    (``d(loss)/d(dr)`` on rejected ones), exact. Metrics (means over pairs): ``dpo_loss``,
    ``accuracy`` (dc > dr), ``chosen_reward`` (beta * dc), ``rejected_reward`` (beta * dr),
    ``margin`` (their difference); ``num_pairs``; and ``num_tokens``, the input tokens of
    the chosen and rejected datums (tinker-cookbook's count).

    Args:
        beta: the DPO temperature.
        reference_logprobs: per datum, the frozen reference's target logprobs.
        loss_type: ``sigmoid``, ``hinge`` or ``ipo``.
        label_smoothing: ``eps`` of the sigmoid loss, in ``[0, 0.5)``.
    """

    beta: float
    reference_logprobs: tuple[tuple[float, ...], ...]
    loss_type: DPOLossType = "sigmoid"
    label_smoothing: float = 0.0

    def __call__(self, data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        """The loss of ``data`` given the policy's ``logprobs`` of each datum.

        Raises:
            TrainingInputError: the data are not pairs, or lengths disagree.
        """
        n = len(data) // 2
        if len(data) % 2 or n == 0:
            raise TrainingInputError(f"DPO needs (chosen, rejected) pairs, got {len(data)} data")
        if not len(logprobs) == len(self.reference_logprobs) == len(data):
            raise TrainingInputError(
                f"{len(data)} data, {len(logprobs)} logprobs, "
                f"{len(self.reference_logprobs)} reference logprobs"
            )
        weights = [datum_weights(d) for d in data]
        policy = [[float(v) for v in lp.data] for lp in logprobs]
        for index, (w, lp, ref) in enumerate(
            zip(weights, policy, self.reference_logprobs, strict=True)
        ):
            if not len(w) == len(lp) == len(ref):
                raise TrainingInputError(
                    f"datum {index}: {len(w)} weights, {len(lp)} logprobs, {len(ref)} reference"
                )
        ratios = [
            math.fsum(wt * (p - r) for wt, p, r in zip(w, lp, ref, strict=True))
            for w, lp, ref in zip(weights, policy, self.reference_logprobs, strict=True)
        ]
        lengths = [max(1.0, math.fsum(w)) for w in weights]
        beta = self.beta
        losses, wins, chosen, rejected = [], [], [], []
        grads: list[TensorData] = []
        for i in range(n):
            c, r = 2 * i, 2 * i + 1
            loss, grad_c, grad_r = _pair_loss(
                self.loss_type,
                beta,
                self.label_smoothing,
                ratios[c],
                ratios[r],
                lengths[c],
                lengths[r],
            )
            losses.append(loss)
            wins.append(1.0 if ratios[c] > ratios[r] else 0.0)
            chosen.append(beta * ratios[c])
            rejected.append(beta * ratios[r])
            for d, grad in ((c, grad_c), (r, grad_r)):
                grads.append(
                    TensorData(
                        dtype="float32",
                        data=tuple(grad * wt / n for wt in weights[d]),
                        shape=logprobs[d].shape,
                    )
                )
        loss = math.fsum(losses) / n
        metrics = {
            "dpo_loss": loss,
            "accuracy": math.fsum(wins) / n,
            "chosen_reward": math.fsum(chosen) / n,
            "rejected_reward": math.fsum(rejected) / n,
            "margin": (math.fsum(chosen) - math.fsum(rejected)) / n,
            "num_pairs": float(n),
            "num_tokens": float(sum(d.model_input.length for d in data)),
        }
        return CustomLossOutput(loss=loss, logprob_grads=tuple(grads), metrics=metrics)


def _as_messages(value: Any, role: str, index: int, key: str) -> list[Message]:
    """A row's prompt or completion: a string (one ``role`` message) or a list of messages."""
    if isinstance(value, str):
        return [Message(role=role, content=value)]
    if isinstance(value, list) and value:
        return [as_message(item, index) for item in value]
    raise DataError(f"row {index}: {key!r} must be a string or a list of messages, got {value!r}")


def _render_pair(
    row: DatasetRow, index: int, renderer: Renderer, max_length: int
) -> tuple[Datum, Datum] | None:
    """The (chosen, rejected) datums of a row, weighted on the completions; None if either
    has nothing left to train on."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise DataError(f"row {index}: a preference pair needs {key!r}; got {sorted(row)}")
    prompt = _as_messages(row["prompt"], "user", index, "prompt")
    pair = []
    for key in ("chosen", "rejected"):
        completion = _as_messages(row[key], "assistant", index, key)
        try:
            model_input, weights = renderer.build_supervised_example(
                [*prompt, *completion], train_on_what="last_assistant_message"
            )
        except RenderError:
            return None
        datum = next_token_datum(
            model_input.to_ints(), [float(w) for w in weights.data], max_length
        )
        if datum is None:
            return None
        pair.append(datum)
    return pair[0], pair[1]


class BuildPreferenceDataset(BuiltinStage):
    """Render each row's (prompt, chosen, rejected) into a pair of datums; plan the steps."""

    requires: ClassVar[tuple[str, ...]] = ("renderer",)
    contract = StageContract(
        config=("max_length", "batch_size", "epochs", "max_steps"),
        reads=(TRAIN_ROWS,),
        writes=(TRAIN_ROWS, PAIRS, *STEP_PLAN),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        rows: tuple[DatasetRow, ...] = ctx.state.pop("train_rows")
        renderer = ctx.port("renderer")
        pairs = []
        for index, row in enumerate(rows):
            pair = _render_pair(row, index, renderer, int(config.max_length))
            if pair is not None:
                pairs.append(pair)
        plan_steps(ctx, len(pairs), int(config.batch_size), int(config.epochs), config.max_steps)
        ctx.state["pairs"] = tuple(pairs)
        ctx.metrics["data/train_pairs"] = float(len(pairs))
        ctx.metrics["data/dropped_pairs"] = float(len(rows) - len(pairs))
        ctx.emit(DpoDatasetBuilt(num_pairs=len(pairs), num_batches=int(ctx.state["num_batches"])))
        return ctx


class ComputeReferenceLogprobs(BuiltinStage):
    """Score every pair once with the initial weights (``forward``), before any step.

    A resumed run keeps the reference logprobs of its snapshot: the reference stays the
    initial policy, not the checkpoint resumed from.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(
        config=("batch_size",),
        reads=(PAIRS,),
        may_read=(REFERENCE_LOGPROBS,),
        writes=(REFERENCE_LOGPROBS,),
    )

    async def execute(self, ctx: Context) -> Context:
        pairs: tuple[tuple[Datum, Datum], ...] = ctx.state["pairs"]
        kept = ctx.state.get("reference_logprobs")
        if kept is not None and len(kept) == len(pairs):
            ctx.state["reference_logprobs"] = tuple((tuple(c), tuple(r)) for c, r in kept)
            return ctx
        ctx.state["reference_logprobs"] = await _score_pairs(ctx, pairs)
        return ctx


async def _score_pairs(
    ctx: Context, pairs: Sequence[tuple[Datum, Datum]]
) -> tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]:
    """The current weights' target logprobs of each pair's chosen and rejected datums."""
    data = [datum for pair in pairs for datum in pair]
    size = 2 * int(ctx.config.batch_size)
    client = ctx.port("training_client")
    futures = [
        await client.forward(data[i : i + size], "cross_entropy") for i in range(0, len(data), size)
    ]
    scored: list[tuple[float, ...]] = []
    for future in futures:
        scored.extend(tuple(lp) for lp in training_logprobs(await future.result()))
    return tuple((scored[2 * i], scored[2 * i + 1]) for i in range(len(pairs)))


class BuildEvalPairs(BuiltinStage):
    """Render the evaluation rows into pairs and score them with the current weights, the
    reference of the held-out DPO metrics (placed where the training pairs are scored).

    A resumed run keeps the reference logprobs of its snapshot.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "renderer")
    contract = StageContract(
        config=("max_length", "batch_size"),
        reads=(EVAL_ROWS,),
        may_read=(EVAL_REFERENCE_LOGPROBS,),
        writes=(EVAL_PAIRS, EVAL_REFERENCE_LOGPROBS),
    )

    async def execute(self, ctx: Context) -> Context:
        renderer = ctx.port("renderer")
        pairs = []
        for index, row in enumerate(ctx.state["eval_rows"]):
            pair = _render_pair(row, index, renderer, int(ctx.config.max_length))
            if pair is not None:
                pairs.append(pair)
        if not pairs:
            raise DataError("no evaluation row renders into a preference pair")
        ctx.state["eval_pairs"] = tuple(pairs)
        kept = ctx.state.get("eval_reference_logprobs")
        if kept is not None and len(kept) == len(pairs):
            ctx.state["eval_reference_logprobs"] = tuple((tuple(c), tuple(r)) for c, r in kept)
        else:
            ctx.state["eval_reference_logprobs"] = await _score_pairs(ctx, pairs)
        return ctx


class EvaluatePreferences(BuiltinStage):
    """Held-out DPO metrics of the current weights on the evaluation pairs (``forward``).

    Records ``eval/pref_accuracy`` (the policy gives the chosen reply a higher total
    logprob than the rejected one: meaningful before any training), and, against the
    reference (TRL's ``rewards/*`` on the eval set), ``eval/dpo_accuracy`` (the chosen
    reply's implicit reward is higher), ``eval/dpo_margin`` (mean reward difference) and
    ``eval/dpo_loss``.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "metrics_store")
    contract = StageContract(
        config=("batch_size", "dpo_beta", "loss_type", "label_smoothing", "eval_split"),
        reads=(EVAL_PAIRS, EVAL_REFERENCE_LOGPROBS, DATASET),
        writes=(LAST_EVAL_STEP,),
    )

    async def execute(self, ctx: Context) -> Context:
        pairs: tuple[tuple[Datum, Datum], ...] = ctx.state["eval_pairs"]
        scored = await _score_pairs(ctx, pairs)
        data = [datum for pair in pairs for datum in pair]
        logprobs = [lp for pair in scored for lp in pair]
        dpo = DpoLoss(
            beta=float(ctx.config.dpo_beta),
            reference_logprobs=tuple(
                lp for pair in ctx.state["eval_reference_logprobs"] for lp in pair
            ),
            loss_type=ctx.config.loss_type,
            label_smoothing=float(ctx.config.label_smoothing),
        )(data, [TensorData(dtype="float32", data=lp) for lp in logprobs])
        totals = [
            math.fsum(w * lp for w, lp in zip(datum_weights(d), lps, strict=True))
            for d, lps in zip(data, logprobs, strict=True)
        ]
        wins = [1.0 if totals[2 * i] > totals[2 * i + 1] else 0.0 for i in range(len(pairs))]
        metrics = {
            "pref_accuracy": math.fsum(wins) / len(pairs),
            "dpo_accuracy": dpo.metrics["accuracy"],
            "dpo_margin": dpo.metrics["margin"],
            "dpo_loss": dpo.metrics["dpo_loss"],
        }
        await report_evaluation(ctx, metrics, model="training_client", sample_count=len(pairs))
        return ctx


class SubmitDpoStep(BuiltinStage):
    """Submit this batch's DPO forward-backward (custom loss) and optimizer step, unawaited."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = merge_contracts(
        SUBMITS_STEPS,
        BATCHES_EPOCHS,
        StageContract(
            config=("batch_size", "dpo_beta", "loss_type", "label_smoothing"),
            reads=(PAIRS, REFERENCE_LOGPROBS),
        ),
    )

    async def execute(self, ctx: Context) -> Context:
        size = int(ctx.config.batch_size)
        pairs: list[tuple[Datum, Datum]] = batch_of(ctx, "pairs", size)
        references: list[tuple[tuple[float, ...], ...]] = batch_of(ctx, "reference_logprobs", size)
        loss = DpoLoss(
            beta=float(ctx.config.dpo_beta),
            reference_logprobs=tuple(lp for pair in references for lp in pair),
            loss_type=ctx.config.loss_type,
            label_smoothing=float(ctx.config.label_smoothing),
        )
        await submit_training_step(
            ctx,
            [datum for pair in pairs for datum in pair],
            total_steps=int(ctx.state["total_steps"]),
            custom_loss=loss,
            epoch=ctx.loops["epochs"],
            ends_epoch=last_batch_of_epoch(ctx),
            metrics={"dpo/beta": float(ctx.config.dpo_beta)},
        )
        return ctx


class AwaitDpoSteps(AwaitTrainingSteps):
    """Await DPO steps, keeping ``pipeline_depth`` in flight; log loss, accuracy, margins."""

    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        metrics = output.metrics
        return {
            "dpo/loss": float(metrics["dpo_loss"]),
            "dpo/accuracy": float(metrics["accuracy"]),
            "dpo/chosen_reward": float(metrics["chosen_reward"]),
            "dpo/rejected_reward": float(metrics["rejected_reward"]),
            "dpo/margin": float(metrics["margin"]),
            "dpo/num_pairs": float(metrics["num_pairs"]),
            "dpo/num_tokens": float(metrics["num_tokens"]),
            "dpo/lr": step.lr,
            "dpo/epoch": float(step.epoch),
            "dpo/progress": (step.step + 1) / step.total_steps,
        }

    def event(self, step: InFlightStep, row: Mapping[str, float]) -> DpoStep:
        return DpoStep(
            step=step.step,
            loss=row["dpo/loss"],
            accuracy=row["dpo/accuracy"],
            chosen_reward=row["dpo/chosen_reward"],
            rejected_reward=row["dpo/rejected_reward"],
            margin=row["dpo/margin"],
            beta=row["dpo/beta"],
            num_pairs=int(row["dpo/num_pairs"]),
            lr=step.lr,
            metrics=dict(row),
        )

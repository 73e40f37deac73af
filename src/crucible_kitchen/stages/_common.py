"""What the built-in workflows share: in-flight training steps, saves, evals, registration.

The state keys shared by several workflows are declared here (:class:`StateKey`; values are
never mutated in place, only replaced); each stage's :class:`StageContract` names the keys
and the ``ctx.config`` fields (of one of the recipes' config models) it reads and writes.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import msgspec

from crucible_kitchen.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PermanentBackendError,
    PortError,
    RenderError,
    TrainingInputError,
    TransientBackendError,
)
from crucible_kitchen.ports import (
    FUTURE_DONE,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    Datum,
    Message,
    MetricPoint,
    ModelArtifact,
    ModelInput,
    TensorData,
    Trajectory,
    capability,
)
from crucible_kitchen.stages._context import ContextSnapshot
from crucible_kitchen.stages._contract import (
    StageContract,
    StateKey,
    declares,
    rebuilt_on_resume,
)
from crucible_kitchen.stages._stage import RetryPolicy, Stage
from crucible_kitchen.telemetry import (
    EvalComplete,
    ModelRegistered,
    TrainingCheckpoint,
    TrainingEpoch,
    TrainingResume,
)
from crucible_kitchen.training import scheduled_learning_rate

if TYPE_CHECKING:
    from crucible_kitchen.ports import (
        BackendFuture,
        CustomLossFn,
        DatasetRow,
        DatasetStore,
        ForwardBackwardOutput,
        LossFnType,
        OptimStepResponse,
        Renderer,
        SamplingClient,
        Tokenizer,
        TrainOnWhat,
    )
    from crucible_kitchen.stages._context import Context
    from crucible_kitchen.telemetry import BaseEvent

__all__ = (
    "PARSE_ERROR_MASKED",
    "RESUME_FROM",
    "AwaitTrainingSteps",
    "BuiltinStage",
    "FlushMetrics",
    "InFlightStep",
    "InitFromWeights",
    "LoadDataset",
    "LoadEvalRows",
    "RefreshSampler",
    "RegisterModel",
    "RestoreCheckpoint",
    "RunEvaluator",
    "SaveCheckpoint",
    "SaveFinalWeights",
    "ShuffleEpoch",
    "batches_this_epoch",
    "checkpoint_due",
    "configured_batches",
    "eval_due",
    "final_eval_due",
    "gather_results",
    "initial_eval_due",
    "next_token_datum",
    "planned_epochs",
    "report_evaluation",
    "resuming",
    "rl_datums",
    "row_messages",
    "sampler_is_stale",
    "snapshot_from_checkpoint",
    "split_rows",
    "starts_from_weights",
)

IN_FLIGHT: Final = "in_flight"

SAMPLER_PATH: Final = "sampler_path"
"""State key of the weights the current sampler samples from (see :class:`RefreshSampler`)."""

RESUME_FROM: Final = "resume_from"
"""State key naming the checkpoint a resumed run starts from (see :class:`RestoreCheckpoint`)."""

CHECKPOINT_CONTEXT: Final = "checkpoint_context"
"""State key of the last checkpoint's context snapshot, when the training client cannot store
it with the checkpoint (see :class:`SaveCheckpoint`)."""

# --------------------------------------------------------------------------------------------
# State keys

IN_FLIGHT_KEY: Final = StateKey(IN_FLIGHT, tuple)
""":class:`InFlightStep` records, oldest first, submitted but not awaited."""
DATASET: Final = StateKey("dataset", str)
"""The name of the dataset trained on (evaluation reads its eval split)."""
TRAIN_ROWS: Final = StateKey("train_rows", tuple, rebuilt_on_resume=True)
EVAL_ROWS: Final = StateKey("eval_rows", tuple, rebuilt_on_resume=True)
LAST_EVAL_STEP: Final = StateKey("last_eval_step", int)
SAMPLER: Final = StateKey("sampler", object)
"""A :class:`~crucible_kitchen.ports.SamplingClient` over the weights after ``sampler_step``."""
SAMPLER_STEP: Final = StateKey("sampler_step", int)
SAMPLER_PATH_KEY: Final = StateKey(SAMPLER_PATH, str)
RESUME_FROM_KEY: Final = StateKey(RESUME_FROM, str)
CHECKPOINT_CONTEXT_KEY: Final = StateKey(CHECKPOINT_CONTEXT, dict, rebuilt_on_resume=True)
CHECKPOINTS: Final = StateKey("checkpoints", tuple)
ARTIFACTS: Final = StateKey("artifacts", dict)
"""What the run result reports as its artifacts, by name."""
FINAL_STATE_PATH: Final = StateKey("final_state_path", str)
FINAL_SAMPLER_PATH: Final = StateKey("final_sampler_path", str)
REGISTERED_MODEL_ID: Final = StateKey("registered_model_id", str)
REGISTERED_MODEL_VERSION: Final = StateKey("registered_model_version", str)
NUM_BATCHES: Final = StateKey("num_batches", int)
TOTAL_STEPS: Final = StateKey("total_steps", int)
NUM_EPOCHS: Final = StateKey("num_epochs", int)
ORDER: Final = StateKey("order", tuple, rebuilt_on_resume=True)
"""This epoch's data order (see :class:`ShuffleEpoch`)."""
STEP_METRICS: Final = StateKey("step_metrics", dict)
"""What the next submitted step's metrics row adds (RL and distillation)."""

STEP_PLAN: Final = (NUM_BATCHES, TOTAL_STEPS, NUM_EPOCHS)
"""The keys :func:`plan_steps` writes."""

SUBMITS_STEPS: Final = StageContract(
    config=("learning_rate", "lr_schedule", "warmup_steps", "adam"),
    may_read=(IN_FLIGHT_KEY,),
    writes=(IN_FLIGHT_KEY,),
)
"""What :func:`submit_training_step` reads and writes; a submitting stage adds its own."""

BATCHES_EPOCHS: Final = StageContract(reads=(ORDER, NUM_BATCHES, TOTAL_STEPS))
"""What :func:`batch_of` and :func:`last_batch_of_epoch` read."""

_BAD_INPUT: Final = (
    PermanentBackendError,
    ConfigError,
    PortError,
    DataError,
    RenderError,
    TrainingInputError,
)


class BuiltinStage(Stage):
    """Base of the built-in stages: a crash is retried, bad data or config is not.

    ``bookkeeping`` marks a stage that only computes on the run's state or flushes metrics
    (recipes give it their short ``timeouts.bookkeeping``); every other built-in stage may wait
    on a backend.
    """

    retry: ClassVar[RetryPolicy] = RetryPolicy(never_retry=_BAD_INPUT)
    bookkeeping: ClassVar[bool] = False


# --------------------------------------------------------------------------------------------
# Data


_PROMPT_REPLY_KEYS: Final = (
    ("prompt", "completion"),
    ("prompt", "response"),
    ("instruction", "response"),
    ("input", "output"),
)


def row_messages(row: DatasetRow, index: int) -> list[Message]:
    """The conversation of a dataset row.

    Accepted shapes: ``messages`` (a list of ``{"role", "content"}``), or a prompt and a reply
    as ``prompt``/``completion``, ``prompt``/``response``, ``instruction``/``response`` or
    ``input``/``output`` (strings).

    Raises:
        DataError: the row has none of these shapes; names the row.
    """
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        return [as_message(item, index) for item in messages]
    for prompt_key, reply_key in _PROMPT_REPLY_KEYS:
        prompt, reply = row.get(prompt_key), row.get(reply_key)
        if isinstance(prompt, str) and isinstance(reply, str):
            return [Message(role="user", content=prompt), Message(role="assistant", content=reply)]
    raise DataError(
        f"row {index}: expected 'messages' or a prompt and a reply "
        f"({', '.join('/'.join(keys) for keys in _PROMPT_REPLY_KEYS)}); got {sorted(row)}"
    )


def as_message(item: object, index: int) -> Message:
    """A ``{"role", "content"}`` mapping of row ``index`` as a message.

    Raises:
        DataError: it is not such a mapping of strings.
    """
    if isinstance(item, Mapping):
        role, content = item.get("role"), item.get("content")
        if isinstance(role, str) and isinstance(content, str):
            return Message(role=role, content=content)
    raise DataError(f"row {index}: a message must have string 'role' and 'content', got {item!r}")


def next_token_datum(
    tokens: Sequence[int], weights: Sequence[float], max_length: int
) -> Datum | None:
    """The datum that predicts ``tokens[1:]`` from ``tokens[:-1]`` with ``weights[1:]``.

    Sequences are cut to their first ``max_length`` tokens first (tinker-cookbook's
    ``datum_from_model_input_weights``). ``None`` when nothing with weight is left.
    """
    tokens, weights = list(tokens[:max_length]), list(weights[:max_length])
    if len(tokens) < 2 or not any(w > 0 for w in weights[1:]):
        return None
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
            "weights": TensorData(dtype="float32", data=tuple(float(w) for w in weights[1:])),
        },
    )


def render_row(
    row: DatasetRow,
    index: int,
    renderer: Renderer,
    tokenizer: Tokenizer,
    *,
    train_on_what: TrainOnWhat,
    max_length: int,
) -> Datum | None:
    """A supervised datum from a row: a conversation through the renderer, or a plain
    ``text`` row through the tokenizer (every token after the first weighted).

    Raises:
        DataError: the row has no usable shape.
        RenderError: ``train_on_what`` selects nothing in the conversation.
    """
    text = row.get("text")
    if isinstance(text, str) and "messages" not in row:
        tokens = tokenizer.encode(text, add_special_tokens=True)
        if tokenizer.eos_token_id is not None:
            tokens.append(tokenizer.eos_token_id)
        return next_token_datum(tokens, [1.0] * len(tokens), max_length)
    model_input, weights = renderer.build_supervised_example(
        row_messages(row, index), train_on_what=train_on_what
    )
    return next_token_datum(model_input.to_ints(), [float(w) for w in weights.data], max_length)


def datum_weights(datum: Datum) -> tuple[float, ...]:
    """The ``weights`` loss input of a datum, as floats."""
    return tuple(float(w) for w in datum.loss_fn_inputs["weights"].data)


def datum_sequence(datum: Datum) -> ModelInput:
    """The whole token sequence of a datum: its input plus its last target token."""
    targets = datum.loss_fn_inputs["target_tokens"].data
    return datum.model_input.append_int(int(targets[-1]))


PARSE_ERROR_MASKED: Final = "parse_error_masked"
"""The transition metric an env sets (to 1) on a turn whose reply could not be parsed and
must not be trained on: :func:`rl_datums` gives its tokens mask 0 and advantage 0
(tinker-cookbook's ``PARSE_ERROR_MASKED_METRIC_KEY``)."""


def rl_datums(trajectory: Trajectory, advantage: float) -> list[tuple[Datum, tuple[float, ...]]]:
    """The training data of one trajectory, each datum with its action mask.

    Turns are merged into one datum while each observation extends the sequence so far
    (tinker-cookbook's ``trajectory_to_data``); otherwise a new datum starts. Per target
    token: ``logprobs`` holds the sampler's logprob (0 on observation tokens) and
    ``advantages`` the trajectory's advantage on action tokens (0 elsewhere). A turn whose
    metrics flag :data:`PARSE_ERROR_MASKED` (>= 1) trains nothing: its action tokens get
    mask 0 and advantage 0, while the other turns train as usual.

    Raises:
        TrainingInputError: an action has no sampler logprobs.
    """
    out: list[tuple[Datum, tuple[float, ...]]] = []
    tokens: list[int] = []
    logprobs: list[float] = []
    mask: list[float] = []

    def flush() -> None:
        if len(tokens) >= 2:
            datum = Datum(
                model_input=ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
                    "logprobs": TensorData(dtype="float32", data=tuple(logprobs[1:])),
                    "advantages": TensorData(
                        dtype="float32", data=tuple(advantage * m for m in mask[1:])
                    ),
                },
            )
            out.append((datum, tuple(mask[1:])))
        tokens.clear()
        logprobs.clear()
        mask.clear()

    for transition in trajectory.transitions:
        observation = transition.observation.to_ints()
        if tokens and observation[: len(tokens)] == tokens:
            observation = observation[len(tokens) :]
        else:
            flush()
        action = transition.action
        if action.logprobs is None:
            raise TrainingInputError("an action has no sampler logprobs; RL needs them")
        tokens.extend(observation)
        logprobs.extend([0.0] * len(observation))
        mask.extend([0.0] * len(observation))
        trained = float(transition.metrics.get(PARSE_ERROR_MASKED, 0.0)) < 1.0
        tokens.extend(action.tokens)
        logprobs.extend(action.logprobs)
        mask.extend([1.0 if trained else 0.0] * len(action.tokens))
    flush()
    return out


def merge_contracts(*contracts: StageContract) -> StageContract:
    """One contract declaring everything ``contracts`` declare."""
    return StageContract(
        config=tuple(dict.fromkeys(f for c in contracts for f in c.config)),
        reads=tuple(dict.fromkeys(k for c in contracts for k in c.reads)),
        may_read=tuple(dict.fromkeys(k for c in contracts for k in c.may_read)),
        writes=tuple(dict.fromkeys(k for c in contracts for k in c.writes)),
    )


def with_advantages(datum: Datum, advantages: Sequence[float]) -> Datum:
    """A copy of an RL datum with other per-token advantages."""
    inputs = dict(datum.loss_fn_inputs)
    inputs["advantages"] = TensorData(dtype="float32", data=tuple(float(a) for a in advantages))
    return Datum(model_input=datum.model_input, loss_fn_inputs=inputs)


async def sequence_logprobs(
    ctx: Context, client: SamplingClient, data: Sequence[Datum], operation: str
) -> list[list[float]]:
    """The target-token logprobs of each datum's sequence under another model.

    Every request is submitted before any is awaited; position 0 (unscored) is dropped so
    the values align with the datums' targets.
    """
    futures = [
        await client.compute_logprobs(
            datum_sequence(datum), request_id=ctx.request_id(f"{operation}/{index}")
        )
        for index, datum in enumerate(data)
    ]
    scored: list[list[float]] = []
    for future in futures:
        values = (await future.result())[1:]
        scored.append([0.0 if v is None else float(v) for v in values])
    return scored


# --------------------------------------------------------------------------------------------
# Optimizer steps


def learning_rate(ctx: Context, step: int, total_steps: int) -> float:
    """The scheduled learning rate of ``step`` (0-based) out of ``total_steps``."""
    config = ctx.config
    total = max(total_steps, step + 1)
    return scheduled_learning_rate(
        step,
        total,
        float(config.learning_rate),
        schedule=config.lr_schedule,
        warmup_steps=min(int(config.warmup_steps), total),
    )


def adam_params(ctx: Context, lr: float) -> AdamParams:
    """The AdamW parameters of one step: the config's ``adam`` settings and ``lr``."""
    adam = ctx.config.adam
    return AdamParams(
        learning_rate=lr,
        beta1=float(adam.beta1),
        beta2=float(adam.beta2),
        eps=float(adam.eps),
        weight_decay=float(adam.weight_decay),
        grad_clip_norm=float(adam.grad_clip_norm),
    )


@dataclass(frozen=True, slots=True)
class InFlightStep:
    """One optimizer step submitted to the backend and not yet awaited.

    ``masks`` holds one mask per datum where the loss needs one beyond the datum itself
    (the action tokens in RL), ``metrics`` what the step's metrics row adds to the result.
    """

    step: int
    total_steps: int
    epoch: int
    lr: float
    data: tuple[Datum, ...]
    forward_backward: BackendFuture[ForwardBackwardOutput]
    optim: BackendFuture[OptimStepResponse]
    masks: tuple[tuple[float, ...], ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    ends_epoch: bool = False


async def submit_training_step(
    ctx: Context,
    data: Sequence[Datum],
    *,
    total_steps: int,
    loss_fn: LossFnType | None = None,
    loss_fn_config: Mapping[str, float | str] | None = None,
    custom_loss: CustomLossFn | None = None,
    epoch: int = 0,
    masks: Sequence[tuple[float, ...]] = (),
    metrics: Mapping[str, float] | None = None,
    ends_epoch: bool = False,
) -> InFlightStep:
    """Submit one forward-backward and its optimizer step without awaiting either.

    Exactly one of ``loss_fn`` (a named backend loss) and ``custom_loss`` is given. The step
    is ``ctx.step``, which then advances; its record joins ``ctx.state["in_flight"]``.
    """
    client = ctx.port("training_client")
    step = ctx.step
    lr = learning_rate(ctx, step, total_steps)
    batch = tuple(data)
    if custom_loss is not None:
        forward_backward = await client.forward_backward_custom(
            batch, custom_loss, request_id=ctx.request_id("forward_backward_custom")
        )
    else:
        assert loss_fn is not None, "a named loss_fn or a custom_loss is needed"
        forward_backward = await client.forward_backward(
            batch, loss_fn, loss_fn_config, request_id=ctx.request_id("forward_backward")
        )
    optim = await client.optim_step(adam_params(ctx, lr), request_id=ctx.request_id("optim_step"))
    record = InFlightStep(
        step=step,
        total_steps=total_steps,
        epoch=epoch,
        lr=lr,
        data=batch,
        forward_backward=forward_backward,
        optim=optim,
        masks=tuple(masks),
        metrics=dict(metrics or {}),
        ends_epoch=ends_epoch,
    )
    ctx.state[IN_FLIGHT] = (*ctx.state.get(IN_FLIGHT, ()), record)
    ctx.step = step + 1
    return record


async def gather_results(*futures: BackendFuture[Any]) -> list[Any]:
    """The results of ``futures``, awaited concurrently: behind a network, one poll round
    trip for all of them instead of one each.

    Futures that know their state without a round trip (they declare
    :data:`~crucible_kitchen.ports.FUTURE_DONE`, as the local backend's do) are awaited in
    turn, which costs no extra time and no tasks.

    Raises:
        Exception: the error of the first future (in argument order) that failed, as is.
    """
    if all(capability(future, FUTURE_DONE) is not None for future in futures):
        return [await future.result() for future in futures]
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(futures)

    async def poll(index: int, future: BackendFuture[Any]) -> None:
        try:
            outcomes[index] = (True, await future.result())
        except Exception as exc:  # re-raised below, unwrapped from the task group
            outcomes[index] = (False, exc)

    async with anyio.create_task_group() as group:
        for index, future in enumerate(futures):
            group.start_soon(poll, index, future)
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]


async def _step_results(step: InFlightStep) -> tuple[ForwardBackwardOutput, OptimStepResponse]:
    """The answers to a submitted step's two requests.

    Raises:
        PermanentBackendError: one failed; a transient error is its ``__cause__``.
    """
    try:
        output, optim = await gather_results(step.forward_backward, step.optim)
    except TransientBackendError as exc:
        raise PermanentBackendError(
            f"step {step.step}: {exc}; the requests submitted after it have run, so "
            "re-sending it would apply it out of order",
            port=exc.port,
            operation=exc.operation,
            request_id=exc.request_id,
        ) from exc
    return output, optim


async def record_metrics(ctx: Context, step: int, row: Mapping[str, float]) -> None:
    """Put a metrics row in ``ctx.metrics`` (latest values win) and the metrics store."""
    ctx.metrics.update(row)
    points = [
        MetricPoint(run_id=ctx.run_id, name=name, step=step, value=float(value))
        for name, value in sorted(row.items())
    ]
    await ctx.port("metrics_store").record(points, request_id=ctx.request_id("record_metrics"))


class AwaitTrainingSteps(BuiltinStage, abc.ABC):
    """Await in-flight steps, oldest first, until at most ``pipeline_depth`` remain.

    With ``drain=True`` (and in workflows without pipelining) it awaits all of them. Each
    awaited step's metrics row goes to ``ctx.metrics`` and the metrics store, and its
    telemetry event is emitted (and the epoch's, after the last step of an epoch).

    A killed or timed-out execution is retried (the futures are in the context), and so is a
    transient error of the metrics store. A failed step is not: a future keeps its error, and
    the requests submitted after the failed one have run, so re-sending it would apply it out
    of order; a transient error there fails at once as a :class:`PermanentBackendError`.
    """

    requires: ClassVar[tuple[str, ...]] = ("metrics_store",)
    pipelined: ClassVar[bool] = True

    def __init__(self, *, drain: bool = False) -> None:
        self.drain = drain
        pipelining = () if drain or not self.pipelined else ("pipeline_depth",)
        self.contract = StageContract(
            config=pipelining, may_read=(IN_FLIGHT_KEY, NUM_EPOCHS), writes=(IN_FLIGHT_KEY,)
        )

    async def execute(self, ctx: Context) -> Context:
        in_flight: tuple[InFlightStep, ...] = ctx.state.get(IN_FLIGHT, ())
        keep = 0 if self.drain or not self.pipelined else int(ctx.config.pipeline_depth)
        while len(in_flight) > keep:
            oldest = in_flight[0]
            output, optim = await _step_results(oldest)
            row = {**oldest.metrics, **self.report(oldest, output)}
            row.update({f"optim/{k}": float(v) for k, v in optim.metrics.items()})
            await record_metrics(ctx, oldest.step, row)
            ctx.emit(self.event(oldest, row))
            if oldest.ends_epoch:
                ctx.emit(
                    TrainingEpoch(
                        epoch=oldest.epoch,
                        total_epochs=ctx.state.get("num_epochs"),
                        step=oldest.step + 1,
                        metrics=dict(ctx.metrics),
                    )
                )
            in_flight = in_flight[1:]
            ctx.state[IN_FLIGHT] = in_flight
        return ctx

    @abc.abstractmethod
    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        """The metrics a finished step's output gives (its own ``metrics`` are added)."""

    @abc.abstractmethod
    def event(self, step: InFlightStep, row: Mapping[str, float]) -> BaseEvent:
        """The telemetry event of a finished step with its whole metrics ``row``."""


def training_logprobs(output: ForwardBackwardOutput) -> list[list[float]]:
    """The learner's target logprobs of each datum, from a forward(-backward) output."""
    return [[float(v) for v in item["logprobs"].data] for item in output.loss_fn_outputs]


# --------------------------------------------------------------------------------------------
# Data order, epochs


class ShuffleEpoch(BuiltinStage):
    """Fix this epoch's data order: a seeded permutation (identity with ``shuffle=False``).

    ``source`` is the state key of the items ordered.
    """

    bookkeeping = True

    def __init__(self, source: StateKey) -> None:
        self.source = source.name
        self.contract = StageContract(config=("shuffle",), reads=(source,), writes=(ORDER,))

    async def execute(self, ctx: Context) -> Context:
        order = list(range(len(ctx.state[self.source])))
        if ctx.config.shuffle:
            ctx.rng("data_order").shuffle(order)
        ctx.state["order"] = tuple(order)
        return ctx


def batch_of(ctx: Context, source: str, batch_size: int) -> list[Any]:
    """The items of ``ctx.state[source]`` in the current batch of the current epoch."""
    index = ctx.loops["batches"]
    order: tuple[int, ...] = ctx.state["order"]
    items: Sequence[Any] = ctx.state[source]
    return [items[i] for i in order[index * batch_size : (index + 1) * batch_size]]


def plan_steps(
    ctx: Context, num_items: int, batch_size: int, epochs: int, max_steps: int | None
) -> None:
    """Store the step plan of an epoch-based workflow: full batches per epoch, total steps.

    Raises:
        DataError: there is not one full batch.
    """
    num_batches = num_items // batch_size
    if num_batches == 0:
        raise DataError(
            f"{num_items} usable examples do not fill one batch of {batch_size}; "
            "lower batch_size or add data"
        )
    total = num_batches * epochs if max_steps is None else min(num_batches * epochs, max_steps)
    ctx.state["num_batches"] = num_batches
    ctx.state["total_steps"] = total
    ctx.state["num_epochs"] = math.ceil(total / num_batches)


@declares(StageContract(reads=(NUM_EPOCHS,)))
def planned_epochs(ctx: Context) -> range:
    """The epoch indices of the step plan (see :func:`plan_steps`)."""
    return range(int(ctx.state["num_epochs"]))


@declares(StageContract(config=("num_batches",)))
def configured_batches(ctx: Context) -> range:
    """The batch indices of a workflow of ``num_batches`` steps."""
    return range(int(ctx.config.num_batches))


def last_batch_of_epoch(ctx: Context) -> bool:
    """Whether the current batch is the last of the current epoch."""
    return ctx.loops["batches"] == len(batches_this_epoch(ctx)) - 1


@declares(StageContract(reads=(NUM_BATCHES, TOTAL_STEPS)))
def batches_this_epoch(ctx: Context) -> range:
    """The batch indices of the current epoch (the last epoch may stop early)."""
    num_batches = int(ctx.state["num_batches"])
    remaining = int(ctx.state["total_steps"]) - ctx.loops["epochs"] * num_batches
    return range(max(0, min(num_batches, remaining)))


_SPLIT: Final = re.compile(r"^(?P<split>[^\[\]]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


async def split_rows(
    store: DatasetStore, dataset: str, spec: str, *, limit: int | None = None
) -> list[DatasetRow]:
    """The rows a split spec names, in order: ``"train"``, or a slice of it, Python-style:
    ``"train[-64:]"`` (the last 64 rows), ``"train[:-64]"`` (all but those), ``"train[10:20]"``.
    At most ``limit`` rows (the first ones).

    Raises:
        DataError: the spec is malformed, or the dataset has no such split.
    """
    match = _SPLIT.match(spec)
    if match is None:
        raise DataError(f"split {spec!r} is not 'NAME' or 'NAME[start:stop]'")
    split = match["split"]
    info = await store.describe(dataset)
    size = info.splits.get(split)
    if size is None:
        raise DataError(
            f"dataset {dataset!r} has no split {split!r} (splits: {', '.join(info.splits)})"
        )
    start, stop = (int(match[key]) if match[key] else None for key in ("start", "stop"))
    indices = range(size)[start:stop]
    if limit is not None:
        indices = indices[:limit]
    return list(await store.read_rows(dataset, split=split, indices=indices))


LOADS_SPLIT: Final = StageContract(config=("dataset", "split"), writes=(DATASET,))
"""What :func:`load_split` reads and writes."""


async def load_split(ctx: Context, *, limit: int | None = None) -> list[DatasetRow]:
    """The rows of the config's ``dataset``/``split`` (at most ``limit``), which becomes the
    run's ``ctx.state["dataset"]``. The loader of every built-in workflow.

    ``split`` may be a slice of a split (``"train[:-64]"``, see :func:`split_rows`).

    Raises:
        DataError: the split spec is malformed, or the dataset has no such split.
    """
    config = ctx.config
    rows = await split_rows(ctx.port("dataset_store"), config.dataset, config.split, limit=limit)
    ctx.state["dataset"] = config.dataset
    return rows


class LoadDataset(BuiltinStage):
    """Read the training rows of ``dataset``/``split`` (at most ``max_examples``).

    ``split`` may be a slice of a split (``"train[:-64]"``, see :func:`split_rows`).
    """

    requires: ClassVar[tuple[str, ...]] = ("dataset_store",)
    contract = merge_contracts(
        LOADS_SPLIT, StageContract(config=("max_examples",), writes=(TRAIN_ROWS,))
    )

    async def execute(self, ctx: Context) -> Context:
        limit = ctx.config.max_examples
        rows = await load_split(ctx, limit=None if limit is None else int(limit))
        ctx.state["train_rows"] = tuple(rows)
        return ctx


# --------------------------------------------------------------------------------------------
# Samplers, checkpoints, evaluation, registration


def _set_artifact(ctx: Context, key: str, value: str) -> None:
    ctx.state["artifacts"] = {**ctx.state.get("artifacts", {}), key: value}


async def sampler_for_current_weights(ctx: Context, name: str) -> tuple[str, SamplingClient]:
    """Save the current weights for sampling as ``name``: their path and a sampling client."""
    client = ctx.port("training_client")
    future = await client.save_weights_for_sampler(
        name, request_id=ctx.request_id("save_weights_for_sampler")
    )
    path = (await future.result()).path
    sampler: SamplingClient = await client.create_sampling_client(path)
    return path, sampler


class RefreshSampler(BuiltinStage):
    """Save the current weights for sampling and sample from them from now on."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(writes=(SAMPLER, SAMPLER_PATH_KEY, SAMPLER_STEP))

    async def execute(self, ctx: Context) -> Context:
        batch = ctx.loops.get("batches")
        name = f"sampler_{ctx.step:06d}" if batch is None else f"sampler_batch_{batch:06d}"
        path, sampler = await sampler_for_current_weights(ctx, name)
        ctx.state["sampler"] = sampler
        ctx.state[SAMPLER_PATH] = path  # data, unlike the client: a checkpoint keeps it
        ctx.state["sampler_step"] = ctx.step
        return ctx


@declares(StageContract(config=("sampler_refresh_every",), may_read=(SAMPLER_STEP, SAMPLER)))
def sampler_is_stale(ctx: Context) -> bool:
    """Whether the sampler is missing or ``sampler_refresh_every`` steps old."""
    last = ctx.state.get("sampler_step")
    if last is None or "sampler" not in ctx.state:
        return True
    return ctx.step - int(last) >= int(ctx.config.sampler_refresh_every)


def checkpoint_snapshot(ctx: Context) -> dict[str, Any]:
    """The context snapshot a checkpoint keeps, as a JSON object (read it back with
    :func:`snapshot_from_checkpoint`).

    Leaves out the state keys declared ``rebuilt_on_resume`` (the data the setup stages and
    the epoch shuffle compute again, identically, when a resumed run repeats them) and
    non-finite metrics (JSON has no NaN). The loop
    position is a list of ``[name, index]`` pairs, outermost first: unlike an object's keys,
    its order survives JSON writers that sort keys (the local torch manifest does).
    """
    snapshot = ctx.snapshot()
    rebuilt = rebuilt_on_resume()
    return {
        "state": {k: v for k, v in snapshot.state.items() if k not in rebuilt},
        "metrics": {k: v for k, v in snapshot.metrics.items() if math.isfinite(v)},
        "step": snapshot.step,
        "loops": [[name, index] for name, index in snapshot.loops.items()],
        "path": snapshot.path,
    }


def snapshot_from_checkpoint(context: Mapping[str, Any]) -> ContextSnapshot:
    """The :class:`ContextSnapshot` a checkpoint's ``{"context": ...}`` payload holds.

    Raises:
        msgspec.ValidationError: it is not a snapshot written by :func:`checkpoint_snapshot`.
    """
    loops = msgspec.convert(context.get("loops"), list[tuple[str, int]])
    return msgspec.convert({**context, "loops": dict(loops)}, ContextSnapshot)


class SaveCheckpoint(BuiltinStage):
    """Save weights, optimizer state and the context as ``<checkpoint_prefix>_<step>``.

    The context snapshot (:func:`checkpoint_snapshot`) goes into the checkpoint as
    ``user_payload={"context": ...}`` when the training client declares
    :data:`~crucible_kitchen.ports.SAVE_STATE_WITH_PAYLOAD` (local torch does), so weights
    and position are committed together; otherwise (noop) it is kept in
    ``ctx.state["checkpoint_context"]``. Workflows drain the steps in
    flight first, so the snapshot's position and the saved weights agree.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(
        config=("checkpoint_prefix",),
        may_read=(CHECKPOINTS, ARTIFACTS),
        writes=(CHECKPOINT_CONTEXT_KEY, CHECKPOINTS, ARTIFACTS),
    )

    async def execute(self, ctx: Context) -> Context:
        name = f"{ctx.config.checkpoint_prefix}_{ctx.step:06d}"
        snapshot = checkpoint_snapshot(ctx)
        client = ctx.port("training_client")
        request_id = ctx.request_id("save_state")
        save_with_payload = capability(client, SAVE_STATE_WITH_PAYLOAD)
        if save_with_payload is not None:
            future = await save_with_payload(
                name, request_id=request_id, user_payload={"context": snapshot}
            )
        else:
            future = await client.save_state(name, request_id=request_id)
            ctx.state[CHECKPOINT_CONTEXT] = snapshot
        path = (await future.result()).path
        ctx.state["checkpoints"] = (*ctx.state.get("checkpoints", ()), path)
        _set_artifact(ctx, "last_checkpoint", path)
        ctx.emit(
            TrainingCheckpoint(step=ctx.step, epoch=ctx.loops.get("epochs"), name=name, path=path)
        )
        return ctx


@declares(StageContract(config=("save_every",)))
def checkpoint_due(ctx: Context) -> bool:
    """Whether to checkpoint after the step just submitted: every ``save_every`` steps, and
    whenever a stop was requested (the run then ends at this iteration's end, resumable)."""
    if ctx.run.stop_requested:
        return True
    every = int(ctx.config.save_every)
    return every > 0 and ctx.step > 0 and ctx.step % every == 0


class RestoreCheckpoint(BuiltinStage):
    """Load the checkpoint a resumed run continues from: weights and optimizer state, and
    the sampler the run sampled from (its weights path is in the snapshot).

    Runs when ``ctx.state["resume_from"]`` names a checkpoint (``Kitchen.resume`` puts it
    there, with the checkpoint's context snapshot); a fresh run skips it.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(
        reads=(RESUME_FROM_KEY,),
        may_read=(SAMPLER_PATH_KEY, CHECKPOINTS, ARTIFACTS),
        writes=(RESUME_FROM_KEY, SAMPLER, CHECKPOINTS, ARTIFACTS),
    )
    retry: ClassVar[RetryPolicy] = RetryPolicy(never_retry=(*_BAD_INPUT, CheckpointError))

    async def execute(self, ctx: Context) -> Context:
        path = str(ctx.state.pop(RESUME_FROM))
        client = ctx.port("training_client")
        future = await client.load_state(
            path, with_optimizer=True, request_id=ctx.request_id("load_state")
        )
        await future.result()
        sampler_path = ctx.state.get(SAMPLER_PATH)
        if sampler_path is not None:
            ctx.state["sampler"] = await client.create_sampling_client(str(sampler_path))
        # The snapshot was taken before its own checkpoint existed: record it as saved.
        checkpoints = tuple(ctx.state.get("checkpoints", ()))
        if path not in checkpoints:
            ctx.state["checkpoints"] = (*checkpoints, path)
        _set_artifact(ctx, "last_checkpoint", path)
        ctx.emit(TrainingResume(step=ctx.step, path=path))
        return ctx


@declares(StageContract(may_read=(RESUME_FROM_KEY,)))
def resuming(ctx: Context) -> bool:
    """Whether the run resumes from a checkpoint (``ctx.state["resume_from"]`` is set)."""
    return RESUME_FROM in ctx.state


INIT_FROM_KEY: Final = StateKey("init_from", str)
"""The checkpoint the run's weights started from (see :class:`InitFromWeights`)."""


@declares(StageContract(config=("init_from",), may_read=(RESUME_FROM_KEY,)))
def starts_from_weights(ctx: Context) -> bool:
    """Whether the run starts from ``init_from`` rather than from a checkpoint of its own."""
    return ctx.config.init_from is not None and RESUME_FROM not in ctx.state


class InitFromWeights(BuiltinStage):
    """Load the weights of ``init_from`` (a checkpoint path) into the training client before
    the first step, without optimizer state; the run's sampler and lineage start there.

    A resumed run skips it (see :func:`starts_from_weights`): its own checkpoint holds the
    weights trained since.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(
        config=("init_from",), may_read=(ARTIFACTS,), writes=(INIT_FROM_KEY, ARTIFACTS)
    )
    retry: ClassVar[RetryPolicy] = RetryPolicy(never_retry=(*_BAD_INPUT, CheckpointError))

    async def execute(self, ctx: Context) -> Context:
        path = str(ctx.config.init_from)
        future = await ctx.port("training_client").load_state(
            path, with_optimizer=False, request_id=ctx.request_id("load_state")
        )
        await future.result()
        ctx.state["init_from"] = path
        _set_artifact(ctx, "init_from", path)
        return ctx


class SaveFinalWeights(BuiltinStage):
    """Save the final state (resumable) and the final sampler weights (to serve)."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(
        may_read=(ARTIFACTS,), writes=(FINAL_STATE_PATH, FINAL_SAMPLER_PATH, ARTIFACTS)
    )

    async def execute(self, ctx: Context) -> Context:
        client = ctx.port("training_client")
        state_future = await client.save_state("final", request_id=ctx.request_id("save_state"))
        sampler_future = await client.save_weights_for_sampler(
            "final", request_id=ctx.request_id("save_weights_for_sampler")
        )
        state, sampler = await gather_results(state_future, sampler_future)
        state_path, sampler_path = state.path, sampler.path
        ctx.state["final_state_path"] = state_path
        ctx.state["final_sampler_path"] = sampler_path
        _set_artifact(ctx, "final_state", state_path)
        _set_artifact(ctx, "final_sampler_weights", sampler_path)
        ctx.emit(TrainingCheckpoint(step=ctx.step, name="final", path=state_path))
        return ctx


class LoadEvalRows(BuiltinStage):
    """Read the evaluation rows: ``eval_split`` of the dataset, at most ``eval_examples``.

    ``eval_split`` may be a slice of a split (``"train[-64:]"``, see :func:`split_rows`).
    """

    requires: ClassVar[tuple[str, ...]] = ("dataset_store",)
    contract = StageContract(
        config=("eval_split", "eval_examples"), reads=(DATASET,), writes=(EVAL_ROWS,)
    )

    async def execute(self, ctx: Context) -> Context:
        dataset = str(ctx.state["dataset"])
        limit = ctx.config.eval_examples
        try:
            rows = await split_rows(
                ctx.port("dataset_store"),
                dataset,
                ctx.config.eval_split,
                limit=None if limit is None else int(limit),
            )
        except DataError as exc:
            raise DataError(
                f"{exc}: nothing to evaluate on; set eval_split, or final_eval=false "
                "and eval_every=0"
            ) from None
        ctx.state["eval_rows"] = tuple(rows)
        return ctx


@declares(StageContract(config=("eval_every",)))
def eval_due(ctx: Context) -> bool:
    """Whether ``eval_every`` calls for an evaluation after the step just submitted."""
    every = int(ctx.config.eval_every)
    return every > 0 and ctx.step > 0 and ctx.step % every == 0


@declares(StageContract(config=("initial_eval",)))
def initial_eval_due(ctx: Context) -> bool:
    """Whether the evaluation before the first step is wanted and no step has run yet."""
    return bool(ctx.config.initial_eval) and ctx.step == 0


INITIAL_PREFIX: Final = "initial/"
"""The prefix under which a run's metrics keep the evaluation before its first step."""


async def report_evaluation(
    ctx: Context,
    metrics: Mapping[str, float],
    *,
    model: str,
    sample_count: int,
    counted: bool = False,
) -> None:
    """Record an evaluation of the weights after ``ctx.step`` steps on ``eval_split``: its
    metrics as ``eval/<name>`` (with ``eval/num_samples`` if ``counted``), the step as the
    last evaluated, and an :class:`EvalComplete` event. The evaluation before the first step
    is also kept as ``initial/eval/<name>``, so a run's metrics show before and after."""
    row = {f"eval/{k}": float(v) for k, v in metrics.items()}
    if counted:
        row["eval/num_samples"] = float(sample_count)
    if ctx.step == 0:
        ctx.metrics.update({f"{INITIAL_PREFIX}{k}": v for k, v in row.items()})
    await record_metrics(ctx, ctx.step, row)
    ctx.state["last_eval_step"] = ctx.step
    ctx.emit(
        EvalComplete(
            model=model,
            dataset=f"{ctx.state['dataset']}/{ctx.config.eval_split}",
            step=ctx.step,
            sample_count=sample_count,
            metrics=dict(metrics),
        )
    )


@declares(StageContract(config=("final_eval",), may_read=(LAST_EVAL_STEP,)))
def final_eval_due(ctx: Context) -> bool:
    """Whether the final evaluation is wanted and the last step was not evaluated already."""
    return bool(ctx.config.final_eval) and ctx.state.get("last_eval_step") != ctx.step


class RunEvaluator(BuiltinStage):
    """Score the current weights with the evaluator port on the evaluation rows."""

    requires: ClassVar[tuple[str, ...]] = ("training_client", "evaluator", "metrics_store")
    contract = StageContract(
        config=("eval_split",), reads=(EVAL_ROWS, DATASET), writes=(LAST_EVAL_STEP,)
    )

    async def execute(self, ctx: Context) -> Context:
        rows = ctx.state["eval_rows"]
        path, sampler = await sampler_for_current_weights(ctx, f"eval_{ctx.step:06d}")
        result = await ctx.port("evaluator").evaluate(sampler, rows)
        await report_evaluation(
            ctx,
            {k: float(v) for k, v in result.metrics.items()},
            model=path,
            sample_count=result.num_samples,
            counted=True,
        )
        return ctx


class RegisterModel(BuiltinStage):
    """Register the final sampler weights, with their metrics and lineage."""

    requires: ClassVar[tuple[str, ...]] = ("training_client", "model_registry")
    contract = StageContract(
        config=("model_name", "model_version"),
        reads=(FINAL_SAMPLER_PATH,),
        may_read=(DATASET, FINAL_STATE_PATH, ARTIFACTS, INIT_FROM_KEY),
        writes=(REGISTERED_MODEL_ID, REGISTERED_MODEL_VERSION, ARTIFACTS),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        info = ctx.port("training_client").get_info()
        version = config.model_version or ctx.run_id
        artifact = ModelArtifact(
            name=config.model_name,
            version=version,
            artifact_uri=ctx.state["final_sampler_path"],
            metadata={
                "base_model": info.base_model,
                "config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
            },
            metrics={k: v for k, v in sorted(ctx.metrics.items()) if math.isfinite(v)},
            lineage={
                "run_id": ctx.run_id,
                "workflow": ctx.run.workflow,
                "dataset": str(ctx.state.get("dataset", "")),
                "steps": str(ctx.step),
                "state": str(ctx.state.get("final_state_path", "")),
                **({"init_from": str(ctx.state["init_from"])} if "init_from" in ctx.state else {}),
            },
        )
        registered = await ctx.port("model_registry").register(
            artifact, request_id=ctx.request_id("register")
        )
        ctx.state["registered_model_id"] = registered.model_id
        ctx.state["registered_model_version"] = version
        _set_artifact(ctx, "model_id", registered.model_id)
        ctx.emit(ModelRegistered(model_id=registered.model_id, name=artifact.name, version=version))
        return ctx


class FlushMetrics(BuiltinStage):
    """Make every recorded metric durable (a cleanup stage: it runs however the run ends)."""

    bookkeeping = True

    requires: ClassVar[tuple[str, ...]] = ("metrics_store",)
    contract = StageContract()

    async def execute(self, ctx: Context) -> Context:
        await ctx.port("metrics_store").flush()
        return ctx

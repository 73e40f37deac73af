"""Telemetry events: frozen, keyword-only msgspec structs tagged with their dotted name.

Every event carries ``run_id``, ``timestamp`` (wall-clock seconds, :func:`time.time`) and ``seq``
(the per-run sequence number). An emitter may leave all three at their defaults:
:meth:`TelemetryBus.emit <crucible_kitchen.telemetry.TelemetryBus.emit>` stamps the run id and
``seq`` and fills a zero timestamp. On the wire the dotted name is the ``"event"`` field::

    {"event": "crucible_kitchen.stage.run.stop", "run_id": "r1", "timestamp": 1.7e9, "seq": 4,
     "stage": "forward_backward", "path": "epochs/batches/forward_backward", ...}

Steps and epochs are 0-based indices, as in tinker-cookbook's ``metrics.jsonl``. Metric
dictionaries hold floats; JSON has no NaN or infinity, so non-finite values are written as
``null``.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from crucible_kitchen.errors import MessageDecodeError

Count: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
Attempt: TypeAlias = Annotated[int, msgspec.Meta(ge=1)]
Seconds: TypeAlias = Annotated[float, msgspec.Meta(ge=0.0)]
Metrics: TypeAlias = dict[str, float]


class BaseEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="event"):
    """Fields common to every event; never emitted itself.

    Events hold plain data and cannot be part of a reference cycle, so they are not tracked by
    the garbage collector (``gc=False``): a busy run allocates fewer tracked objects.
    """

    run_id: str = ""
    timestamp: float = 0.0
    seq: Count = 0


# --- workflow runs --------------------------------------------------------------------------


class WorkflowStart(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.workflow.run.start"
):
    """A run began: the workflow, the recipe it came from, and the resolved config."""

    workflow: str
    recipe: str | None = None
    config: dict[str, Any] = {}


class WorkflowStop(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.workflow.run.stop"):
    """A run ended without error (``completed``) or was cancelled (``cancelled``).

    Exactly one of :class:`WorkflowStop` and :class:`WorkflowException` closes each
    :class:`WorkflowStart`. ``steps`` counts the training steps the run completed.
    """

    workflow: str
    status: Literal["completed", "cancelled"]
    duration_s: Seconds
    steps: Count = 0
    metrics: Metrics = {}


class WorkflowException(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.workflow.run.exception"
):
    """A run failed; ``stage``/``path``/``attempt`` name the failing stage when there is one."""

    workflow: str
    stage: str | None = None
    path: str | None = None
    attempt: Count = 0
    error_type: str
    error_message: str
    duration_s: Seconds


# --- stage executions -----------------------------------------------------------------------


class StageStart(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.stage.run.start"):
    """One execution attempt of a stage began; ``loop`` maps each enclosing loop to its index."""

    stage: str
    path: str
    attempt: Attempt = 1
    loop: dict[str, int] = {}


class StageStop(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.stage.run.stop"):
    """The attempt completed and its context changes were kept."""

    stage: str
    path: str
    attempt: Attempt = 1
    loop: dict[str, int] = {}
    duration_s: Seconds


class StageException(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.stage.run.exception"
):
    """The attempt failed; ``will_retry`` says whether the workflow re-sends it."""

    stage: str
    path: str
    attempt: Attempt = 1
    loop: dict[str, int] = {}
    duration_s: Seconds
    error_type: str
    error_message: str
    will_retry: bool


# --- training -------------------------------------------------------------------------------


class TrainingStep(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.training.step"):
    """One supervised optimizer step finished; ``loss`` is the mean per-token loss."""

    step: Count
    total_steps: Count | None = None
    epoch: Count = 0
    loss: float | None = None
    lr: float | None = None
    metrics: Metrics = {}


class TrainingEpoch(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.training.epoch"):
    """An epoch finished."""

    epoch: Count
    total_epochs: Count | None = None
    step: Count = 0
    metrics: Metrics = {}


class TrainingCheckpoint(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.training.checkpoint"
):
    """A checkpoint was written (atomically) at ``path`` after ``step`` completed steps."""

    step: Count
    epoch: Count | None = None
    name: str
    path: str


class TrainingResume(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.training.resume"):
    """A resumed run loaded the checkpoint at ``path`` and continues after ``step`` steps.

    Step rows after ``step`` that the interrupted process had logged come again after this
    event: readers of a run's logs keep the last row of each step.
    """

    step: Count
    path: str


class TrainingCheckpointDamaged(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.training.checkpoint_damaged"
):
    """A resumed run found the checkpoint at ``path`` damaged (``reason``) and resumes from
    ``resume_from`` instead (``None``: from its first step); the replay writes a new checkpoint
    in the damaged one's place."""

    path: str
    reason: str
    resume_from: str | None = None


class EvalSample(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.eval.sample"):
    """A reply sampled from the current weights for a held-out prompt (a qualitative check).

    ``reference`` is the dataset's own reply, when it has one.
    """

    step: Count | None = None
    prompt: str
    completion: str
    reference: str | None = None


class EvalComplete(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.eval.complete"):
    """An evaluation finished; ``metrics`` holds what it measured (accuracy, nll, ...)."""

    model: str = ""
    dataset: str = ""
    step: Count | None = None
    sample_count: Count = 0
    metrics: Metrics = {}


class ModelRegistered(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.model.registered"
):
    """A model version was added to the model registry."""

    model_id: str
    name: str
    version: str


# --- preference (DPO) -----------------------------------------------------------------------


class DpoDatasetBuilt(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.dpo.dataset_built"
):
    """The preference dataset is ready."""

    num_pairs: Count
    num_batches: Count


class DpoStep(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.dpo.step"):
    """One DPO optimizer step; rewards are ``beta`` times the policy/reference log-ratios."""

    step: Count
    loss: float
    accuracy: float
    chosen_reward: float
    rejected_reward: float
    margin: float
    beta: float
    num_pairs: Count
    lr: float | None = None
    metrics: Metrics = {}


# --- reinforcement learning -----------------------------------------------------------------


class RlEnvGroupBuilt(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.rl.env_group_built"
):
    """The environment group builder for a batch is ready."""

    env_type: str
    group_size: Count
    groups_per_batch: Count


class RlRolloutComplete(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.rl.rollout_complete"
):
    """The rollouts of batch ``step`` finished."""

    step: Count
    duration_s: Seconds
    num_trajectories: Count
    num_env_steps: Count
    reward_mean: float
    reward_std: float


class RlAdvantagesComputed(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.rl.advantages_computed"
):
    """Advantages for batch ``step`` are computed; ``count`` is how many."""

    step: Count
    advantage_mean: float
    advantage_std: float
    count: Count


class RlBatchAssembled(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.rl.batch_assembled"
):
    """The training batch for ``step`` is assembled from its trajectories."""

    step: Count
    num_datums: Count
    num_trajectories: Count


class RlStep(BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.rl.step"):
    """One RL optimizer step, with its rollout rewards and sampler/learner drift."""

    step: Count
    reward_mean: float
    reward_std: float
    loss: float | None = None
    entropy: float | None = None
    kl_sample_train: float | None = None
    num_trajectories: Count = 0
    num_tokens: Count = 0
    lr: float | None = None
    metrics: Metrics = {}


# --- distillation ---------------------------------------------------------------------------


class DistillationStep(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.distillation.step"
):
    """One distillation optimizer step; ``teacher_kl`` is the student-to-teacher KL."""

    step: Count
    loss: float | None = None
    teacher_kl: float | None = None
    num_sequences: Count = 0
    num_tokens: Count = 0
    lr: float | None = None
    metrics: Metrics = {}


# --- feedback loop --------------------------------------------------------------------------


class FeedbackTriggersChecked(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.feedback.triggers_checked"
):
    """Retraining triggers were checked for a deployment."""

    deployment_id: str
    triggers: list[str] = []
    should_retrain: bool


class FeedbackDataCurated(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.feedback.data_curated"
):
    """Feedback examples were curated; ``by_source`` counts them per curation source."""

    deployment_id: str
    count: Count
    by_source: dict[str, int] = {}


class FeedbackDataExported(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.feedback.data_exported"
):
    """Curated feedback was exported as a dataset file."""

    deployment_id: str
    path: str
    format: str
    count: Count | None = None


class FeedbackBaselineUpdated(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.feedback.baseline_updated"
):
    """The deployment's baseline now points at the newly registered model."""

    deployment_id: str
    model_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None


# --- runtime --------------------------------------------------------------------------------


class SupervisorRestart(
    BaseEvent, frozen=True, kw_only=True, tag="crucible_kitchen.supervisor.restart"
):
    """A supervisor restarted a child (a stage or another actor) after it exited abnormally."""

    supervisor: str = ""
    child: str
    attempt: Attempt
    reason: str


TelemetryEvent: TypeAlias = (
    WorkflowStart
    | WorkflowStop
    | WorkflowException
    | StageStart
    | StageStop
    | StageException
    | TrainingStep
    | TrainingEpoch
    | TrainingCheckpoint
    | TrainingResume
    | TrainingCheckpointDamaged
    | EvalSample
    | EvalComplete
    | ModelRegistered
    | DpoDatasetBuilt
    | DpoStep
    | RlEnvGroupBuilt
    | RlRolloutComplete
    | RlAdvantagesComputed
    | RlBatchAssembled
    | RlStep
    | DistillationStep
    | FeedbackTriggersChecked
    | FeedbackDataCurated
    | FeedbackDataExported
    | FeedbackBaselineUpdated
    | SupervisorRestart
)
"""Every telemetry event, as one tagged union (decode with :func:`decode_event`)."""

EVENT_TYPES: tuple[type[TelemetryEvent], ...] = typing.get_args(TelemetryEvent)

STEP_EVENTS: Final = (TrainingStep, DpoStep, RlStep, DistillationStep)
"""The events that mark one optimizer step of a workflow (SFT, DPO, RL, distillation)."""
"""The classes of :data:`TelemetryEvent`, in declaration order."""

_NAMES: dict[type[BaseEvent], str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}
_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[TelemetryEvent] = msgspec.json.Decoder(TelemetryEvent)


def event_name(event: BaseEvent | type[BaseEvent]) -> str:
    """The dotted name of an event or event class, e.g. ``"crucible_kitchen.training.step"``."""
    cls = event if isinstance(event, type) else type(event)
    name = _NAMES.get(cls)
    if name is None:
        name = str(cls.__struct_config__.tag)
        _NAMES[cls] = name
    return name


def encode_event(event: TelemetryEvent) -> bytes:
    """Encode one event as a JSON object (strict: every value must be JSON-able).

    Raises:
        TypeError: a field holds a value msgspec cannot encode (handlers use a lenient encoder).
    """
    return _ENCODER.encode(event)


def decode_event(data: bytes | str) -> TelemetryEvent:
    """Decode and validate one JSON event, choosing its class by the ``"event"`` tag.

    Raises:
        MessageDecodeError: malformed JSON, an unknown event name, or a field of the wrong type;
            the message names the field's path.
    """
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"invalid telemetry event: {exc}") from exc

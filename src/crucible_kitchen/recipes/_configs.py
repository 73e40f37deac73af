"""The config models of the built-in recipes (pydantic v2; unknown keys are errors).

Defaults are small, so that a run on the noop adapters takes well under a second; field
names follow tinker-cookbook's configs. Steps are optimizer steps, counted from 0.

Values are strict: a value of another type is an error, never converted (``epochs=True`` is
not one epoch, ``epochs=2.5`` not two), except that text (``"2"``, ``"1e-3"``, ``"true"``: a
command-line ``key=value`` setting or a config file's string) is read as the field's type.
Floats must be finite, and counts have upper bounds no real run comes near.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import pydantic
from pydantic import Field

from crucible_kitchen._files import FINAL_CHECKPOINT, is_hf_model_dir
from crucible_kitchen.ports import ExportFormat, TrainOnWhat
from crucible_kitchen.training import AdvantageNormalization, DPOLossType, LRSchedule

__all__ = (
    "AdamConfig",
    "DistillBasicConfig",
    "DistillationConfig",
    "DpoBasicConfig",
    "FeedbackLoopConfig",
    "LocalTorchSettings",
    "PreferenceConfig",
    "ReinforcementConfig",
    "RetrySettings",
    "RlBasicConfig",
    "SftWarmupSettings",
    "SlBasicConfig",
    "StageTimeouts",
    "SupervisedConfig",
    "TrainingConfig",
)

_SPLIT_PATTERN = r"^[^\[\]]+(\[-?\d*:-?\d*\])?$"
"""A split name, or a slice of one: ``train``, ``train[-64:]``, ``train[:-64]``."""


_MAX_STEPS = 100_000_000
"""Bound of step counts and cadences: more optimizer steps than any run takes."""
_MAX_ITEMS = 1_000_000_000
"""Bound of example and row counts."""
_MAX_TOKENS = 1_048_576
"""Bound of sequence lengths, in tokens."""
_MAX_SECONDS = 604_800.0
"""Bound of timeouts: a week."""
_MAX_THREADS = 4096
"""Bound of thread counts."""


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def _read_text(annotation: Any, text: str) -> Any:
    """``text`` as a value of ``annotation``: as is if the type takes text, else parsed
    (``"2"`` → 2); unchanged if it is neither, for the field's validation to report."""
    adapter = _adapter(annotation)
    for strict in (True, False):
        try:
            return adapter.validate_python(text, strict=strict)
        except pydantic.ValidationError:
            continue
    return text


class _Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _parse_text(cls, data: Any) -> Any:
        """Read text values as their fields' types; everything else stays strict."""
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            key: _read_text(fields[key].annotation, value)
            if isinstance(value, str) and key in fields
            else value
            for key, value in data.items()
        }


class RetrySettings(_Config):
    """How often a built-in stage's failed execution is tried again: after a crash, a kill,
    a timeout or a transient backend error (a re-sent request keeps its request id, so the
    backend applies it once). Bad input and permanent backend errors fail at once."""

    attempts: int = Field(
        default=6, ge=1, le=100, description="Attempts per stage execution, the first included."
    )
    backoff: float = Field(
        default=0.5,
        ge=0.0,
        le=600.0,
        description="Seconds before the second attempt after an error; doubles for each later "
        "one (the defaults ride out about 15 s of errors). A killed attempt is retried at once.",
    )


class StageTimeouts(_Config):
    """Seconds one execution of a built-in stage may take; then it is killed and retried
    (same request ids), and once its attempts are used up the run fails with ``TimeoutError``.
    ``None``: no limit."""

    backend: float | None = Field(
        default=1800.0,
        gt=0.0,
        le=_MAX_SECONDS,
        description="Stages that may wait on a backend: training steps, sampling, checkpoints, "
        "evaluation, data loading and rendering.",
    )
    bookkeeping: float | None = Field(
        default=120.0,
        gt=0.0,
        le=_MAX_SECONDS,
        description="Stages that only compute on the run's state or flush metrics "
        "(shuffling, advantages, batch assembly).",
    )


class AdamConfig(_Config):
    """AdamW settings of every optimizer step (the learning rate comes from the schedule)."""

    beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="First-moment decay.")
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0, description="Second-moment decay.")
    eps: float = Field(default=1e-8, gt=0.0, le=1.0, description="Denominator epsilon.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="Decoupled weight decay.")
    grad_clip_norm: float = Field(default=0.0, ge=0.0, description="Gradient norm clip; 0 is off.")


class TrainingConfig(_Config):
    """What every built-in training workflow shares: optimizer, schedule, saves, evals."""

    model_name: str = Field(
        default="crucible-model",
        min_length=1,
        description="Name the trained model is registered as.",
    )
    model_version: str | None = Field(
        default=None, min_length=1, description="Registered version; by default the run id."
    )
    init_from: str | None = Field(
        default=None,
        min_length=1,
        description="Start from these weights instead of the adapters' initial ones: a "
        "checkpoint directory, or a run directory (its final checkpoint). Loaded before the "
        "first step (without optimizer state); a resumed run loads its own checkpoint instead.",
    )
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0, description="Base learning rate.")
    lr_schedule: LRSchedule = Field(
        default="linear", description="constant, linear or cosine decay."
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        le=_MAX_STEPS,
        description="Linear warmup steps (capped at the run's total steps).",
    )
    adam: AdamConfig = Field(default_factory=AdamConfig, description="AdamW settings.")
    save_every: int = Field(
        default=0, ge=0, le=_MAX_STEPS, description="Save a checkpoint every N steps; 0 is off."
    )
    checkpoint_prefix: str = Field(
        default="step",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Checkpoint names are '<prefix>_<step:06d>'.",
    )
    eval_every: int = Field(
        default=0, ge=0, le=_MAX_STEPS, description="Evaluate every N steps; 0 is off."
    )
    final_eval: bool = Field(default=True, description="Evaluate once more after the last step.")
    initial_eval: bool = Field(
        default=False,
        description="Also evaluate before the first step (after any warm-up), so that the "
        "summary shows each evaluation metric before and after training.",
    )
    eval_split: str = Field(
        default="test",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split of the dataset to evaluate, or a slice of one ('train[-64:]').",
    )
    eval_examples: int | None = Field(
        default=32,
        ge=1,
        le=_MAX_ITEMS,
        description="Evaluate on at most this many rows; None for the whole split.",
    )
    use_evaluator: bool = Field(
        default=True,
        description="Also score sampler weights with the 'evaluator' port when evaluating.",
    )
    register_model: bool = Field(
        default=True, description="Register the final weights with the 'model_registry' port."
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings, description="How failed stage executions are retried."
    )
    timeouts: StageTimeouts = Field(
        default_factory=StageTimeouts, description="How long one stage execution may take."
    )

    @pydantic.field_validator("init_from")
    @classmethod
    def _weights_exist(cls, value: str | None) -> str | None:
        return None if value is None else weights_path(value)

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates at all."""
        return self.eval_every > 0 or self.final_eval or self.initial_eval


def weights_path(value: str, *, model_dir_ok: bool = False) -> str:
    """The checkpoint that ``value`` names: a checkpoint directory as given, or a run
    directory's final checkpoint (``<run dir>/checkpoints/weights/final``); with
    ``model_dir_ok``, also a Hugging Face model directory as given.

    Raises:
        ValueError: ``value`` is neither (as a config error, with the field's path).
    """
    path = Path(value).expanduser()
    if (path / FINAL_CHECKPOINT).is_dir():
        return str(path / FINAL_CHECKPOINT)
    if is_hf_model_dir(path) and any(path.glob("*.safetensors")):
        if model_dir_ok:
            return str(path)
        raise ValueError(
            f"{value}: a Hugging Face model directory, not a checkpoint: start from it with "
            "model=<the directory>"
        )
    if path.is_dir() and any(path.glob("*.safetensors")):
        return str(path)
    if path.is_dir() and (path / "config.json").is_file():
        raise ValueError(f"{value}: a run directory without a final checkpoint (did it finish?)")
    raise ValueError(f"{value}: not a checkpoint directory nor a run directory")


class _SupervisedTraining(TrainingConfig):
    """Supervised training on rendered conversations, pipelined (also used by the feedback loop)."""

    batch_size: int = Field(
        default=8, ge=1, le=_MAX_ITEMS, description="Examples per optimizer step."
    )
    epochs: int = Field(default=1, ge=1, le=10_000, description="Passes over the dataset.")
    max_steps: int | None = Field(
        default=None, ge=1, le=_MAX_STEPS, description="Stop after this many steps."
    )
    max_length: int = Field(
        default=512, ge=2, le=_MAX_TOKENS, description="Tokens per example; longer ones are cut."
    )
    train_on_what: TrainOnWhat = Field(
        default="last_assistant_message", description="Which tokens of a conversation carry weight."
    )
    shuffle: bool = Field(default=True, description="Reshuffle the examples every epoch.")
    pipeline_depth: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Steps submitted ahead of the one awaited (tinker-cookbook submit_ahead).",
    )
    max_examples: int | None = Field(
        default=None, ge=1, le=_MAX_ITEMS, description="Use at most this many training rows."
    )
    eval_generations: int = Field(
        default=0,
        ge=0,
        le=_MAX_ITEMS,
        description="At each evaluation, sample a greedy reply to the first N evaluation "
        "prompts (eval.sample events); 0 is off.",
    )
    generation_max_tokens: int = Field(
        default=32, ge=1, le=_MAX_TOKENS, description="Tokens per sampled evaluation reply."
    )


class SupervisedConfig(_SupervisedTraining):
    """Supervised fine-tuning (SFT) with the cross-entropy loss."""

    dataset: str = Field(default="chat_tasks", min_length=1, description="Dataset store name.")
    split: str = Field(
        default="train",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split to train on, or a slice of one ('train[:-64]').",
    )


Renderers = Literal["chatml", "llama3", "role_colon", "qwen3", "qwen3_disable_thinking", "jinja"]
"""The chat formats of the local torch renderer."""


class LocalTorchSettings(_Config):
    """The model, tokenizer, renderer, LoRA, device, threads and parallelism of a recipe that
    runs on the ``local_torch`` adapters (passed to ``Adapters.local_torch``)."""

    model: str = Field(
        default="tiny",
        min_length=1,
        description="Local torch model preset: micro, tiny, small (CPU); medium, base, "
        "large (GPU); or the path of a Hugging Face model directory (config.json + "
        "safetensors).",
    )
    tokenizer: str | None = Field(
        default=None,
        min_length=1,
        description="byte (256 ids), bpe (trained on the bundled corpus), or the path of a "
        "Hugging Face model directory or tokenizer.json; by default a model directory's own, "
        "else byte.",
    )
    renderer: Renderers | None = Field(
        default=None,
        description="Chat format of the conversations; jinja renders the tokenizer's own chat "
        "template; by default the one that fits the tokenizer (chatml for byte and bpe).",
    )
    lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Train LoRA adapters of this rank; None trains all.",
    )
    device: str = Field(default="cpu", min_length=1, description="cpu, cuda, cuda:N or auto.")
    threads: int | Literal["auto"] = Field(
        default="auto",
        description="torch's CPU threads; auto: OMP_NUM_THREADS when set, else 1 for a model "
        "under 2M parameters (tiny), else torch's default.",
    )

    parallelism: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="Under torchrun: ddp keeps the whole model on every rank; fsdp shards "
        "parameters, gradients and optimizer state across the ranks (when training outgrows "
        "one device). Outside torchrun, fsdp is refused.",
    )

    @pydantic.field_validator("threads", mode="before")
    @classmethod
    def _thread_count(cls, value: object) -> object:
        """One message for every wrong value, rather than one per member of the union."""
        if value == "auto" or (type(value) is int and 1 <= value <= _MAX_THREADS):
            return value
        raise ValueError(f"must be 'auto' or an int from 1 to {_MAX_THREADS}")

    def local_torch_options(self) -> dict[str, Any]:
        """These settings as ``Adapters.local_torch`` options."""
        return {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "renderer": self.renderer,
            "lora": self.lora_rank,
            "device": self.device,
            "threads": self.threads,
            "parallelism": self.parallelism,
        }


class SlBasicConfig(SupervisedConfig, LocalTorchSettings):
    """``sl_basic``: SFT of a small transformer on CPU with the local torch backend.

    The bundled ``chat_tasks`` has one split: its last 64 rows are held out for the
    evaluation (NLL and sampled replies), the rest are trained on. The model, tokenizer,
    renderer, LoRA, device and threads settings configure the ``local_torch`` adapters.
    """

    split: str = Field(
        default="train[:-64]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split to train on, or a slice of one.",
    )
    eval_split: str = Field(
        default="train[-64:]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Held-out rows to evaluate on (disjoint from 'split').",
    )
    eval_examples: int | None = Field(
        default=None,
        ge=1,
        le=_MAX_ITEMS,
        description="Evaluate on at most this many rows; None for all.",
    )
    batch_size: int = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Examples per optimizer step."
    )
    epochs: int = Field(default=12, ge=1, le=10_000, description="Passes over the training rows.")
    max_length: int = Field(
        default=128, ge=2, le=_MAX_TOKENS, description="Tokens per example; longer ones are cut."
    )
    learning_rate: float = Field(default=5e-3, gt=0.0, le=1.0, description="Peak learning rate.")
    lr_schedule: LRSchedule = Field(
        default="cosine", description="constant, linear or cosine decay."
    )
    warmup_steps: int = Field(default=20, ge=0, le=_MAX_STEPS, description="Linear warmup steps.")
    adam: AdamConfig = Field(
        default_factory=lambda: AdamConfig(grad_clip_norm=1.0), description="AdamW settings."
    )
    eval_every: int = Field(
        default=50, ge=0, le=_MAX_STEPS, description="Evaluate every N steps; 0 is off."
    )
    eval_generations: int = Field(
        default=2,
        ge=0,
        le=_MAX_ITEMS,
        description="Greedy replies sampled at each evaluation; 0 is off.",
    )
    save_every: int = Field(
        default=50,
        ge=0,
        le=_MAX_STEPS,
        description="Save a resumable checkpoint every N steps; 0 is off.",
    )
    use_evaluator: bool = Field(
        default=False, description="Also score with the 'evaluator' port (arithmetic rows only)."
    )


class SftWarmupSettings(_Config):
    """A supervised warm-up before the main training: ``sft_warmup_steps`` cross-entropy
    steps on the answers (RL: each problem's answer; DPO: the chosen replies), so that the
    main phase starts from a model that writes answers in the right format."""

    sft_warmup_steps: int = Field(
        default=0, ge=0, le=_MAX_STEPS, description="Supervised warm-up steps; 0 is off."
    )
    sft_warmup_batch_size: int = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Examples per warm-up step."
    )
    sft_warmup_learning_rate: float = Field(
        default=5e-3, gt=0.0, le=1.0, description="Constant learning rate of the warm-up."
    )


class ReinforcementConfig(TrainingConfig, SftWarmupSettings):
    """GRPO-style RL on verifiable problems (rows with ``question`` and integer ``answer``)."""

    dataset: str = Field(default="arithmetic_rl", min_length=1, description="Dataset store name.")
    split: str = Field(
        default="train",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split the problems come from, or a slice of one ('train[:-64]').",
    )
    learning_rate: float = Field(default=4e-5, gt=0.0, le=1.0, description="Base learning rate.")
    lr_schedule: LRSchedule = Field(
        default="constant", description="constant, linear or cosine decay."
    )
    num_batches: int = Field(
        default=4, ge=1, le=_MAX_STEPS, description="Optimizer steps (one batch of groups each)."
    )
    groups_per_batch: int = Field(default=4, ge=1, le=_MAX_ITEMS, description="Problems per batch.")
    group_size: int = Field(
        default=4, ge=1, le=_MAX_ITEMS, description="Rollouts per problem (samples per prompt)."
    )
    max_tokens: int = Field(
        default=16, ge=1, le=_MAX_TOKENS, description="Tokens per sampled reply."
    )
    temperature: float = Field(default=1.0, ge=0.0, le=100.0, description="Sampling temperature.")
    max_turns: int = Field(
        default=4, ge=1, le=_MAX_ITEMS, description="Episode length limit, in agent turns."
    )
    format_coef: float = Field(
        default=0.1, ge=0.0, description="Reward penalty for a reply that does not end properly."
    )
    loss_fn: Literal["importance_sampling", "ppo"] = Field(
        default="importance_sampling", description="Backend policy loss."
    )
    clip_low_threshold: float = Field(default=0.8, gt=0.0, description="PPO ratio clip, low side.")
    clip_high_threshold: float = Field(
        default=1.2, gt=0.0, description="PPO ratio clip, high side."
    )
    advantage_normalization: AdvantageNormalization = Field(
        default="none", description="none (tinker-cookbook), group_std or batch_std (TRL)."
    )
    remove_constant_reward_groups: bool = Field(
        default=False, description="Drop groups whose rewards are all equal (they teach nothing)."
    )
    kl_penalty_coef: float = Field(
        default=0.0,
        ge=0.0,
        description="KL penalty against the 'sampling_client' port (the reference); 0 is off.",
    )
    kl_discount_factor: float = Field(
        default=0.0, ge=0.0, le=1.0, description="KL penalty discount."
    )
    compute_post_kl: bool = Field(
        default=False,
        description="After each step, log the KL between the sampler and the updated policy "
        "on the batch (optim/kl_pre_post_*); costs a weights save and a scoring pass.",
    )
    sampler_refresh_every: int = Field(
        default=1,
        ge=1,
        le=_MAX_STEPS,
        description="Save weights for the sampler every N steps (1 is on-policy).",
    )
    mode: Literal["sync", "async"] = Field(
        default="sync",
        description="sync: deterministic on-policy loop; async: sample while training.",
    )
    max_steps_off_policy: int = Field(
        default=1,
        ge=1,
        le=16,
        description="async mode: batches sampled ahead of training (staleness).",
    )

    @pydantic.model_validator(mode="after")
    def _clip_range(self) -> ReinforcementConfig:
        if self.clip_low_threshold >= self.clip_high_threshold:
            raise ValueError("clip_low_threshold must be below clip_high_threshold")
        return self


class PreferenceConfig(TrainingConfig, SftWarmupSettings):
    """DPO on (prompt, chosen, rejected) rows, against the frozen initial weights."""

    dataset: str = Field(
        default="preference_tasks", min_length=1, description="Dataset store name."
    )
    split: str = Field(
        default="train",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split to train on, or a slice of one ('train[:-32]').",
    )
    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0, description="Base learning rate.")
    dpo_beta: float = Field(default=0.1, gt=0.0, description="DPO temperature beta.")
    loss_type: DPOLossType = Field(
        default="sigmoid", description="sigmoid (DPO), hinge or ipo, as TRL defines them."
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Conservative DPO: the chance a preference label is flipped (sigmoid only).",
    )
    batch_size: int = Field(
        default=4, ge=1, le=_MAX_ITEMS, description="Preference pairs per optimizer step."
    )
    epochs: int = Field(default=1, ge=1, le=10_000, description="Passes over the pairs.")
    max_steps: int | None = Field(
        default=None, ge=1, le=_MAX_STEPS, description="Stop after this many steps."
    )
    max_length: int = Field(
        default=512, ge=2, le=_MAX_TOKENS, description="Tokens per sequence; longer ones are cut."
    )
    max_examples: int | None = Field(
        default=None, ge=1, le=_MAX_ITEMS, description="Use at most this many pairs."
    )
    shuffle: bool = Field(default=True, description="Reshuffle the pairs every epoch.")
    pipeline_depth: int = Field(
        default=1, ge=0, le=16, description="Steps submitted ahead of the one awaited."
    )
    eval_pairs: bool = Field(
        default=False,
        description="Evaluate the held-out pairs of 'eval_split': preference accuracy and, "
        "against the reference, DPO accuracy, margin and loss.",
    )

    @pydantic.model_validator(mode="after")
    def _smoothing_is_sigmoid(self) -> PreferenceConfig:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing applies to loss_type 'sigmoid' only")
        return self


class DistillationConfig(TrainingConfig):
    """Distillation from the 'teacher_sampling_client' port.

    ``mode="on_policy"``: the student samples, the teacher scores each sampled token, and the
    student is trained on minus the per-token reverse KL (tinker-cookbook's on-policy
    distillation); with ``topk > 0`` it is trained instead on the reverse KL over the
    teacher's ``topk`` most likely tokens at each position. ``mode="off_policy"``: the teacher
    samples the replies and the student is trained on them with cross-entropy.
    """

    mode: Literal["on_policy", "off_policy"] = Field(
        default="on_policy",
        description="on_policy: reverse KL on the student's samples; off_policy: "
        "cross-entropy on the teacher's samples.",
    )
    topk: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="on_policy: train on the reverse KL over the teacher's top-K tokens per "
        "position (the sampling client must return top-K logprobs); 0 uses the sampled "
        "tokens only.",
    )

    dataset: str = Field(
        default="chat_tasks", min_length=1, description="Dataset store name (prompts)."
    )
    split: str = Field(
        default="train",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description="Split the prompts come from, or a slice of one ('train[:-64]').",
    )
    extra_datasets: tuple[str, ...] = Field(
        default=(),
        strict=False,  # a JSON list (config.json, a config file) is a tuple here
        max_length=64,
        description="More prompt datasets (the same split), mixed in; the teacher KL is also "
        "logged per dataset (distill/teacher_kl/dataset_<i>, 0 is 'dataset').",
    )
    lr_schedule: LRSchedule = Field(
        default="constant", description="constant, linear or cosine decay."
    )
    num_batches: int = Field(default=4, ge=1, le=_MAX_STEPS, description="Optimizer steps.")
    prompts_per_batch: int = Field(default=4, ge=1, le=_MAX_ITEMS, description="Prompts per batch.")
    samples_per_prompt: int = Field(
        default=2, ge=1, le=_MAX_ITEMS, description="Student samples per prompt."
    )
    max_tokens: int = Field(
        default=16, ge=1, le=_MAX_TOKENS, description="Tokens per sampled reply."
    )
    temperature: float = Field(default=1.0, ge=0.0, le=100.0, description="Sampling temperature.")
    kl_coef: float = Field(default=1.0, gt=0.0, description="Weight of the per-token reverse KL.")
    kl_discount_factor: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Reverse-KL discount."
    )
    sampler_refresh_every: int = Field(
        default=1,
        ge=1,
        le=_MAX_STEPS,
        description="Save weights for the sampler every N steps (1 is on-policy).",
    )
    eval_teacher_kl: bool = Field(
        default=False,
        description="Evaluate the student's reverse KL to the teacher on the prompts of "
        "'eval_split' (eval/teacher_kl).",
    )


def _trained_split(held_out: int, what: str) -> Any:
    """A main job's ``split``: every row but the last ``held_out``."""
    return Field(
        default=f"train[:-{held_out}]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description=f"{what} to train on: all but the last {held_out}.",
    )


def _held_out_split(held_out: int, what: str) -> Any:
    """A main job's ``eval_split``: the last ``held_out`` rows."""
    return Field(
        default=f"train[-{held_out}:]",
        min_length=1,
        pattern=_SPLIT_PATTERN,
        description=f"Held-out {what} to evaluate on (disjoint from 'split').",
    )


_EVERY_EVAL_ROW: Final = Field(
    default=None, ge=1, le=_MAX_ITEMS, description="Evaluate on at most this many; None for all."
)


class RlBasicConfig(ReinforcementConfig, LocalTorchSettings):
    """``rl_basic``: GRPO on the bundled arithmetic problems with the local torch backend.

    A supervised warm-up teaches the answer format first (skipped with ``init_from``), then
    GRPO trains on the first 192 problems; the last 64 are held out and scored before and
    after RL by the local arithmetic evaluator: greedily (``eval/correct``,
    ``eval/reward``) and on 8 replies each sampled as the rollouts are
    (``eval/sampled_correct``, what GRPO raises).
    """

    split: str = _trained_split(64, "Problems")
    eval_split: str = _held_out_split(64, "problems")
    eval_examples: int | None = _EVERY_EVAL_ROW
    initial_eval: bool = Field(default=True, description="Also evaluate before RL.")
    sft_warmup_steps: int = Field(
        default=200, ge=0, le=_MAX_STEPS, description="Supervised warm-up steps; 0 is off."
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="Base learning rate.")
    num_batches: int = Field(
        default=80, ge=1, le=_MAX_STEPS, description="Optimizer steps (one batch of groups each)."
    )
    groups_per_batch: int = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Problems per batch."
    )
    group_size: int = Field(
        default=8, ge=1, le=_MAX_ITEMS, description="Rollouts per problem (samples per prompt)."
    )
    adam: AdamConfig = Field(
        default_factory=lambda: AdamConfig(grad_clip_norm=1.0), description="AdamW settings."
    )

    @pydantic.model_validator(mode="after")
    def _async_needs_ddp(self) -> RlBasicConfig:
        if self.mode == "async" and self.parallelism == "fsdp":
            raise ValueError(
                "mode 'async' needs parallelism 'ddp': under fsdp the rollouts sample through "
                "the sharded training model, in order with the training requests, which a "
                "producer sampling beside training cannot keep"
            )
        return self


class DpoBasicConfig(PreferenceConfig, LocalTorchSettings):
    """``dpo_basic``: DPO on the bundled preference pairs with the local torch backend.

    A supervised warm-up on the chosen replies makes the supervised starting point (skipped
    with ``init_from``, e.g. an ``sl_basic`` run); it is also DPO's frozen reference. The last
    40 pairs are held out: their preference accuracy and reward margin are measured before
    and after DPO (``eval/pref_accuracy``, ``eval/dpo_accuracy``, ``eval/dpo_margin``).
    """

    split: str = _trained_split(40, "Pairs")
    eval_split: str = _held_out_split(40, "pairs")
    eval_examples: int | None = _EVERY_EVAL_ROW
    initial_eval: bool = Field(default=True, description="Also evaluate before DPO.")
    eval_pairs: bool = Field(default=True, description="Evaluate the held-out pairs.")
    use_evaluator: bool = Field(
        default=False, description="Also score with the 'evaluator' port (arithmetic only)."
    )
    sft_warmup_steps: int = Field(
        default=60, ge=0, le=_MAX_STEPS, description="Supervised warm-up steps; 0 is off."
    )
    learning_rate: float = Field(default=5e-3, gt=0.0, le=1.0, description="Base learning rate.")
    dpo_beta: float = Field(default=0.5, gt=0.0, description="DPO temperature beta.")
    batch_size: int = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Preference pairs per optimizer step."
    )
    epochs: int = Field(default=4, ge=1, le=10_000, description="Passes over the pairs.")
    max_length: int = Field(
        default=128, ge=2, le=_MAX_TOKENS, description="Tokens per sequence; longer ones are cut."
    )


class DistillBasicConfig(DistillationConfig, LocalTorchSettings):
    """``distill_basic``: distil a teacher into a smaller student with the local torch backend.

    ``teacher`` is a run directory (e.g. of ``sl_basic``), a checkpoint or a Hugging Face
    model directory; the student is
    ``model`` (default ``micro``, smaller than ``sl_basic``'s ``tiny``), trained from fresh
    weights (or ``init_from``). The last 64 prompts of ``chat_tasks`` are held out: the
    student's reverse KL to the teacher on its own samples of them is measured before and
    after (``eval/teacher_kl``).
    """

    teacher: str | None = Field(
        default=None,
        min_length=1,
        description="The teacher's weights, required: a run directory (its final checkpoint, "
        "e.g. of `kitchen run sl_basic`), a checkpoint directory or a Hugging Face model "
        "directory; it must use the "
        "student's tokenizer. Without one the run stops at start: no "
        "'teacher_sampling_client'.",
    )
    model: str = Field(
        default="micro", min_length=1, description="The student's local torch model preset."
    )
    split: str = _trained_split(64, "Prompts")
    eval_split: str = _held_out_split(64, "prompts")
    eval_examples: int | None = _EVERY_EVAL_ROW
    initial_eval: bool = Field(default=True, description="Also evaluate before distilling.")
    eval_teacher_kl: bool = Field(
        default=True, description="Evaluate the held-out reverse KL to the teacher."
    )
    use_evaluator: bool = Field(
        default=False, description="Also score with the 'evaluator' port (arithmetic only)."
    )
    learning_rate: float = Field(default=3e-3, gt=0.0, le=1.0, description="Base learning rate.")
    num_batches: int = Field(default=60, ge=1, le=_MAX_STEPS, description="Optimizer steps.")
    prompts_per_batch: int = Field(
        default=16, ge=1, le=_MAX_ITEMS, description="Prompts per batch."
    )
    samples_per_prompt: int = Field(
        default=2, ge=1, le=_MAX_ITEMS, description="Samples per prompt."
    )
    max_tokens: int = Field(
        default=24, ge=1, le=_MAX_TOKENS, description="Tokens per sampled reply."
    )
    adam: AdamConfig = Field(
        default_factory=lambda: AdamConfig(grad_clip_norm=1.0), description="AdamW settings."
    )

    @pydantic.field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, value: str | None) -> str | None:
        return None if value is None else weights_path(value, model_dir_ok=True)


class FeedbackLoopConfig(_SupervisedTraining):
    """Retrain a deployed model on its curated production feedback when a trigger fires."""

    deployment_id: str = Field(
        default="default", min_length=1, description="The deployment to watch."
    )
    curate_limit: int | None = Field(
        default=64,
        ge=1,
        le=_MAX_ITEMS,
        description="Curate at most this many examples; None for all.",
    )
    min_examples: int = Field(
        default=8,
        ge=1,
        le=_MAX_ITEMS,
        description="Retrain only with at least this many curated examples.",
    )
    export_format: ExportFormat = Field(default="jsonl", description="File format of the export.")
    feedback_root: str | None = Field(
        default=None,
        min_length=1,
        description="On the local_torch adapters: the directory of the filesystem feedback "
        "client (feedback in '<deployment_id>.jsonl', exports under 'exports/').",
    )
    final_eval: bool = Field(
        default=True, description="Evaluate the retrained model before registering."
    )
    batch_size: int = Field(
        default=4, ge=1, le=_MAX_ITEMS, description="Examples per optimizer step."
    )

    @pydantic.model_validator(mode="after")
    def _registers(self) -> FeedbackLoopConfig:
        if not self.register_model:
            raise ValueError("register_model must be true: the new baseline is a registered model")
        return self

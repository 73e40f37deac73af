"""Built-in telemetry handlers (console, JSONL event log, metrics JSONL, callbacks) and specs.

Every handler here is a synchronous callable ``handler(event)`` with a ``close()``, except a
:class:`CallbackHandler` wrapping an ``async def``. The file handlers open their file once,
unbuffered, and hand each line to the OS with one ``write`` (no fsync: a crash loses nothing the
OS already has, and a write costs microseconds where an fsync costs a fraction of a millisecond).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias

import msgspec

from crucible_kitchen.errors import TelemetryError

from ._bus import Handler
from ._events import (
    STEP_EVENTS,
    BaseEvent,
    DistillationStep,
    DpoDatasetBuilt,
    DpoStep,
    EvalComplete,
    EvalSample,
    FeedbackBaselineUpdated,
    FeedbackDataCurated,
    FeedbackDataExported,
    FeedbackTriggersChecked,
    ModelRegistered,
    RlAdvantagesComputed,
    RlBatchAssembled,
    RlEnvGroupBuilt,
    RlRolloutComplete,
    RlStep,
    StageException,
    StageStart,
    StageStop,
    SupervisorRestart,
    TelemetryEvent,
    TrainingCheckpoint,
    TrainingCheckpointDamaged,
    TrainingEpoch,
    TrainingResume,
    TrainingStep,
    WorkflowException,
    WorkflowStart,
    WorkflowStop,
    event_name,
)

if TYPE_CHECKING:
    import io
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from rich.console import Console

__all__ = (
    "CallbackHandler",
    "ConsoleHandler",
    "HandlerSpec",
    "JsonlHandler",
    "MetricsJsonlHandler",
    "build_handler",
    "build_handlers",
    "metrics_row",
)

HandlerSpec: TypeAlias = str | tuple[str, Any] | Handler
"""What :func:`build_handler` accepts: ``"console"``, ``("console", level)``,
``("jsonl", path)``, ``("metrics", path)``, a callable or a handler instance."""

Level: TypeAlias = Literal["debug", "info", "warning", "error"]
_LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_STYLES: dict[int, str] = {10: "dim", 20: "", 30: "yellow", 40: "bold red"}


# --- console --------------------------------------------------------------------------------


class ConsoleHandler:
    """Prints one readable line per event with rich, e.g. ``[Kitchen] Step 4/10 | loss=0.6931``.

    Each event has a level: stage starts and stops and the RL/DPO bookkeeping events are
    ``debug``; runs, steps, epochs, checkpoints, evals and registrations are ``info``; retried
    stage failures, restarts and cancelled runs are ``warning``; failures are ``error`` and show
    the real error type and message. Only events at ``level`` or above are printed. Steps and
    epochs print 1-based ("Step 1/10" is the event with ``step=0``); ``step_every=n`` prints only
    every n-th step event (and the last one, when the total is known).

    Args:
        console: the rich console to print to; default: a new one on stderr.
        level: the lowest level printed (a name or a :mod:`logging` number).
        step_every: print every n-th training/DPO/RL/distillation step.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        level: Level | int = "info",
        step_every: int = 1,
    ) -> None:
        from rich.text import Text

        if isinstance(level, str):
            if level not in _LEVELS:
                raise TelemetryError(
                    f"unknown console level {level!r}: use one of {', '.join(_LEVELS)}"
                )
            level = _LEVELS[level]
        if step_every < 1:
            raise TelemetryError(f"step_every must be at least 1, got {step_every}")
        self.console = console if console is not None else stderr_console()
        self.level = level
        self.step_every = step_every
        self._text = Text

    def __call__(self, event: TelemetryEvent) -> None:
        formatted = self.format(event)
        if formatted is None:
            return
        level, line = formatted
        if level < self.level:
            return
        self.console.print(self._text(line, style=_STYLES.get(level, "")), soft_wrap=True)

    def close(self) -> None:
        """Nothing to release; present so every handler can be closed alike."""

    def __repr__(self) -> str:
        return f"ConsoleHandler(level={self.level})"

    def format(self, event: BaseEvent) -> tuple[int, str] | None:
        """The event's level and line, or ``None`` for an event not printed (a skipped step)."""
        if isinstance(event, STEP_EVENTS) and not self._shows(event):
            return None
        lines = _LINES.get(type(event))
        return None if lines is None else lines(event)  # None: a type added later

    def _shows(self, event: TrainingStep | DpoStep | RlStep | DistillationStep) -> bool:
        total = event.total_steps if isinstance(event, TrainingStep) else None
        return (
            self.step_every == 1
            or event.step % self.step_every == 0
            or (total is not None and event.step == total - 1)
        )


Line: TypeAlias = tuple[int, str]
"""A console line and its level (a :mod:`logging` number)."""


def _workflow_line(event: BaseEvent) -> Line | None:
    match event:
        case WorkflowStart(workflow=workflow, recipe=recipe):
            source = f"recipe {recipe}, " if recipe else ""
            return 20, f"[Kitchen] Workflow {workflow} started ({source}run {event.run_id})"
        case WorkflowStop(status="completed"):
            return 20, (
                f"[Kitchen] Workflow {event.workflow} completed in "
                f"{_duration(event.duration_s)} ({event.steps} steps){_metrics(event.metrics)}"
            )
        case WorkflowStop():
            return 30, (
                f"[Kitchen] Workflow {event.workflow} {event.status} after "
                f"{_duration(event.duration_s)} ({event.steps} steps)"
            )
        case WorkflowException():
            where = (
                f" in stage {event.stage} ({event.path}, attempt {event.attempt})"
                if event.stage
                else ""
            )
            return 40, (
                f"[Kitchen] Workflow {event.workflow} failed after "
                f"{_duration(event.duration_s)}{where}: "
                f"{_error(event.error_type, event.error_message)}"
            )
    return None


def _stage_line(event: BaseEvent) -> Line | None:
    match event:
        case StageStart():
            return 10, (
                f"[Kitchen] Stage {event.stage} started{_loop(event.loop)}{_attempt(event.attempt)}"
            )
        case StageStop():
            return 10, (
                f"[Kitchen] Stage {event.stage} completed in {_duration(event.duration_s)}"
                f"{_loop(event.loop)}{_attempt(event.attempt)}"
            )
        case StageException():
            retry = ", will retry" if event.will_retry else ""
            return 30 if event.will_retry else 40, (
                f"[Kitchen] Stage {event.stage} failed after {_duration(event.duration_s)}"
                f"{_loop(event.loop)} (attempt {event.attempt}{retry}): "
                f"{_error(event.error_type, event.error_message)}"
            )
    return None


def _training_line(event: BaseEvent) -> Line | None:
    match event:
        case TrainingStep():
            return 20, (
                f"[Kitchen] Step {event.step + 1}/{_opt(event.total_steps)}"
                f" | loss={_num(event.loss, '.4f')} | lr={_num(event.lr, '.3e')}"
            )
        case TrainingEpoch():
            return 20, (
                f"[Kitchen] Epoch {event.epoch + 1}/{_opt(event.total_epochs)} complete"
                f"{_metrics(event.metrics)}"
            )
        case TrainingCheckpoint():
            return 20, (
                f"[Kitchen] Checkpoint saved: {event.name} at {event.path} "
                f"(after {event.step} steps)"
            )
        case TrainingResume():
            return 20, f"[Kitchen] Resumed from {event.path} (after {event.step} steps)"
        case TrainingCheckpointDamaged():
            return 30, (
                f"[Kitchen] Checkpoint {event.path} is damaged ({event.reason}); resuming "
                f"from {event.resume_from or 'the first step'}, and replacing it"
            )
    return None


def _evaluation_line(event: BaseEvent) -> Line | None:
    match event:
        case EvalSample():
            reference = "" if event.reference is None else f" (reference: {event.reference!r})"
            return 20, (
                f"[Kitchen] Sample at step {_opt(event.step)}: {event.prompt!r} -> "
                f"{event.completion!r}{reference}"
            )
        case EvalComplete():
            parts = [
                f"for {event.model}" if event.model else "",
                event.dataset and f"on {event.dataset}",
            ]
            what = "".join(f" {part}" for part in parts if part)
            return 20, (
                f"[Kitchen] Evaluation complete{what} ({event.sample_count} samples)"
                f"{_metrics(event.metrics)}"
            )
        case ModelRegistered():
            return 20, (
                f"[Kitchen] Model registered: {event.name} {_version(event.version)} "
                f"(id: {event.model_id})"
            )
    return None


def _algorithm_line(event: BaseEvent) -> Line | None:
    """DPO, RL and distillation: their steps (info) and their bookkeeping (debug)."""
    match event:
        case DpoDatasetBuilt():
            return 10, (
                f"[Kitchen] DPO dataset built: {event.num_pairs} pairs "
                f"in {event.num_batches} batches"
            )
        case DpoStep():
            return 20, (
                f"[Kitchen] DPO step {event.step + 1} | loss={event.loss:.4f} "
                f"| acc={event.accuracy:.3f} | margin={event.margin:.4f} "
                f"| lr={_num(event.lr, '.3e')}"
            )
        case RlEnvGroupBuilt():
            return 10, (
                f"[Kitchen] RL env groups built: {event.groups_per_batch} x "
                f"{event.group_size} {event.env_type}"
            )
        case RlRolloutComplete():
            return 10, (
                f"[Kitchen] RL rollouts {event.step + 1}: {event.num_trajectories} "
                f"trajectories in {_duration(event.duration_s)}, "
                f"reward={event.reward_mean:.4f}±{event.reward_std:.4f}"
            )
        case RlAdvantagesComputed():
            return 10, (
                f"[Kitchen] RL advantages {event.step + 1}: {event.count} "
                f"(mean={event.advantage_mean:.4f}, std={event.advantage_std:.4f})"
            )
        case RlBatchAssembled():
            return 10, (
                f"[Kitchen] RL batch {event.step + 1}: {event.num_datums} datums "
                f"from {event.num_trajectories} trajectories"
            )
        case RlStep():
            return 20, (
                f"[Kitchen] RL step {event.step + 1} "
                f"| reward={event.reward_mean:.4f}±{event.reward_std:.4f} "
                f"| loss={_num(event.loss, '.4f')} | kl={_num(event.kl_sample_train, '.2e')} "
                f"| lr={_num(event.lr, '.3e')}"
            )
        case DistillationStep():
            return 20, (
                f"[Kitchen] Distillation step {event.step + 1} "
                f"| loss={_num(event.loss, '.4f')} "
                f"| teacher_kl={_num(event.teacher_kl, '.4f')} | lr={_num(event.lr, '.3e')}"
            )
    return None


def _feedback_line(event: BaseEvent) -> Line | None:
    match event:
        case FeedbackTriggersChecked():
            triggers = ", ".join(event.triggers) or "none"
            verdict = "retraining" if event.should_retrain else "no retraining"
            return 20, (
                f"[Kitchen] Feedback triggers for {event.deployment_id}: {triggers} ({verdict})"
            )
        case FeedbackDataCurated():
            return 20, (
                f"[Kitchen] Feedback curated for {event.deployment_id}: {event.count} examples"
            )
        case FeedbackDataExported():
            return 20, (
                f"[Kitchen] Feedback exported for {event.deployment_id}: "
                f"{event.path} ({event.format})"
            )
        case FeedbackBaselineUpdated():
            model = event.model_name or event.model_id or "?"
            version = f" {_version(event.model_version)}" if event.model_version else ""
            return 20, f"[Kitchen] Baseline of {event.deployment_id} updated to {model}{version}"
    return None


def _restart_line(event: BaseEvent) -> Line | None:
    if isinstance(event, SupervisorRestart):
        return 30, f"[Kitchen] Restarted {event.child} (attempt {event.attempt}): {event.reason}"
    return None


_LINES: dict[type[BaseEvent], Callable[[BaseEvent], Line | None]] = {
    **dict.fromkeys((WorkflowStart, WorkflowStop, WorkflowException), _workflow_line),
    **dict.fromkeys((StageStart, StageStop, StageException), _stage_line),
    **dict.fromkeys(
        (
            TrainingStep,
            TrainingEpoch,
            TrainingCheckpoint,
            TrainingResume,
            TrainingCheckpointDamaged,
        ),
        _training_line,
    ),
    **dict.fromkeys((EvalSample, EvalComplete, ModelRegistered), _evaluation_line),
    **dict.fromkeys(
        (
            DpoDatasetBuilt,
            DpoStep,
            RlEnvGroupBuilt,
            RlRolloutComplete,
            RlAdvantagesComputed,
            RlBatchAssembled,
            RlStep,
            DistillationStep,
        ),
        _algorithm_line,
    ),
    **dict.fromkeys(
        (
            FeedbackTriggersChecked,
            FeedbackDataCurated,
            FeedbackDataExported,
            FeedbackBaselineUpdated,
        ),
        _feedback_line,
    ),
    SupervisorRestart: _restart_line,
}
"""The line of each event type the console knows, by family."""


def _version(version: str) -> str:
    """``v3`` for a version number, ``version sl_basic-1a2b`` for a name."""
    return f"v{version}" if version.isdigit() else f"version {version}"


def _duration(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60.0:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(seconds, 60.0)
    if minutes < 60:
        return f"{int(minutes)}m{rest:04.1f}s"
    hours, minutes = divmod(minutes, 60.0)
    return f"{int(hours)}h{int(minutes):02d}m"


def _num(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def _error(error_type: str, message: str) -> str:
    return f"{error_type}: {message}" if message else error_type


def _attempt(attempt: int) -> str:
    return f" (attempt {attempt})" if attempt > 1 else ""


def _loop(loop: dict[str, int]) -> str:
    if not loop:
        return ""
    return " [" + " ".join(f"{name}={index}" for name, index in loop.items()) + "]"


def _metrics(metrics: dict[str, float]) -> str:
    if not metrics:
        return ""
    return " | " + " ".join(f"{key}={value:.4g}" for key, value in metrics.items())


# --- JSON lines -----------------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    """Turns what msgspec cannot encode into something it can; never raises."""
    try:
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, BaseException):
            return f"{type(obj).__name__}: {obj}"
        if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
            return obj.item()  # numpy and torch scalars
        return repr(obj)
    except Exception:
        return f"<unrepresentable {type(obj).__qualname__}>"


def _sanitize(obj: Any, active: set[int], depth: int = 0) -> Any:
    """A plain JSON-able copy of ``obj``: string keys, no cycles, odd values as strings."""
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, str):
        try:
            obj.encode()
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode()
        return obj
    if depth > 64:
        return "<too deep>"
    if id(obj) in active:
        return "<cycle>"
    if isinstance(obj, msgspec.Struct):
        fields = {name: getattr(obj, name) for name in obj.__struct_fields__}
        return _sanitize(fields, active, depth)
    if isinstance(obj, dict | list | tuple | set | frozenset):
        active.add(id(obj))
        try:
            if isinstance(obj, dict):
                return {
                    _sanitize(_key(key), active, depth + 1): _sanitize(value, active, depth + 1)
                    for key, value in obj.items()
                }
            return [_sanitize(item, active, depth + 1) for item in obj]
        finally:
            active.discard(id(obj))
    return _sanitize(_enc_hook(obj), active, depth + 1)


def _key(key: object) -> str:
    return key if isinstance(key, str) else str(_enc_hook(key))


def _resolve(path: str | os.PathLike[str], default_name: str) -> Path:
    raw = os.fspath(path)
    resolved = Path(raw)
    separators = tuple(s for s in (os.sep, os.altsep) if s)
    if raw.endswith(separators) or resolved.is_dir():
        resolved = resolved / default_name
    return resolved


class _JsonLinesFile:
    """One append-mode file written a line at a time, each line with one unbuffered write."""

    default_name = "events.jsonl"
    row_name = "row"
    """What a line that cannot be encoded is called in its fallback (events use their name)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _resolve(path, self.default_name)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: io.FileIO | None = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise TelemetryError(f"cannot open telemetry log {self.path}: {exc}") from exc
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
        self._buffer = bytearray()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called; a closed handler ignores events."""
        return self._file is None

    def _write(self, obj: object) -> None:
        file = self._file
        if file is None:
            return
        buffer = self._buffer
        try:
            self._encoder.encode_into(obj, buffer)
        except Exception as exc:  # cycles, huge ints, bad unicode: fall back, never raise
            buffer.clear()
            name = event_name(obj) if isinstance(obj, BaseEvent) else self.row_name
            try:
                plain = _sanitize(obj, set())
                if isinstance(obj, BaseEvent):
                    plain = {"event": name, **plain}
                self._encoder.encode_into(plain, buffer)
            except Exception:
                buffer.clear()
                fallback = {"event": name, "encode_error": f"{type(exc).__name__}: {exc}"}
                self._encoder.encode_into(fallback, buffer)
        buffer.extend(b"\n")
        written = file.write(buffer)
        while written < len(buffer):  # a short write: rare for a regular file, but allowed
            written += file.write(buffer[written:])

    def flush(self) -> None:
        """Nothing to do: every line reaches the operating system as it is written."""

    def close(self) -> None:
        """Close the file; idempotent."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class JsonlHandler(_JsonLinesFile):
    """Appends every event to a JSON-lines file, one object a line, flushed after each event.

    Each line is the event's JSON form (``{"event": "crucible_kitchen.stage.run.stop",
    "run_id": ..., "seq": ..., ...}``), readable back with :func:`decode_event`. Values msgspec
    cannot encode (in a config or metadata) are written as their ``repr``; cycles and non-string
    keys are made JSON-able too, so an event never fails to be written.

    Args:
        path: the file, or a directory (existing, or written with a trailing slash) to hold
            ``events.jsonl``. Missing parent directories are created; the file is appended to.

    Raises:
        TelemetryError: the file cannot be opened.
    """

    default_name = "events.jsonl"

    __call__ = _JsonLinesFile._write  # writes the event as one line; no wrapper call per event


class MetricsJsonlHandler(_JsonLinesFile):
    """Writes the step events as flat rows in tinker-cookbook's ``metrics.jsonl`` form.

    Only training, eval, DPO, RL and distillation step events are written, one row each, as
    :func:`metrics_row` builds them: ``{"step": 3, "learning_rate": 1e-4, "train_mean_nll":
    0.69, ...}``.

    Args:
        path: the file, or a directory to hold ``metrics.jsonl``.

    Raises:
        TelemetryError: the file cannot be opened.
    """

    default_name = "metrics.jsonl"
    row_name = "metrics"

    def __call__(self, event: TelemetryEvent) -> None:
        row = metrics_row(event)
        if row is not None:
            self._write(row)


def metrics_row(event: TelemetryEvent) -> dict[str, Any] | None:
    """The flat metrics row of a step event, or ``None`` for other events.

    Keys follow tinker-cookbook: ``step`` (0-based), ``epoch``, ``progress``,
    ``learning_rate``; supervised loss as ``train_mean_nll``; DPO's ``dpo_loss``, ``accuracy``,
    ``chosen_reward``, ``rejected_reward``, ``margin``, ``num_pairs``; RL's
    ``env/all/reward/total`` (and ``..._std``), ``optim/entropy``,
    ``optim/kl_sample_train_v1``; eval metrics under ``test/``. The event's free-form
    ``metrics`` are merged in; the typed fields win on a clash. Fields that are ``None`` are
    left out.
    """
    match event:
        case TrainingStep():
            progress = (event.step + 1) / event.total_steps if event.total_steps else None
            typed: dict[str, Any] = {
                "epoch": event.epoch,
                "progress": progress,
                "learning_rate": event.lr,
                "train_mean_nll": event.loss,
            }
            return _row(event.step, event.metrics, typed)
        case EvalComplete():
            row: dict[str, Any] = {} if event.step is None else {"step": event.step}
            for key, value in event.metrics.items():
                row[key if key.startswith("test/") else f"test/{key}"] = value
            if event.sample_count:
                row["test/num_samples"] = event.sample_count
            return row
        case DpoStep():
            typed = {
                "dpo_loss": event.loss,
                "accuracy": event.accuracy,
                "chosen_reward": event.chosen_reward,
                "rejected_reward": event.rejected_reward,
                "margin": event.margin,
                "num_pairs": event.num_pairs,
                "learning_rate": event.lr,
            }
            return _row(event.step, event.metrics, typed)
        case RlStep():
            typed = {
                "env/all/reward/total": event.reward_mean,
                "env/all/reward/total_std": event.reward_std,
                "loss": event.loss,
                "optim/entropy": event.entropy,
                "optim/kl_sample_train_v1": event.kl_sample_train,
                "num_trajectories": event.num_trajectories,
                "num_tokens": event.num_tokens,
                "learning_rate": event.lr,
            }
            return _row(event.step, event.metrics, typed)
        case DistillationStep():
            typed = {
                "loss": event.loss,
                "teacher_kl": event.teacher_kl,
                "num_sequences": event.num_sequences,
                "num_tokens": event.num_tokens,
                "learning_rate": event.lr,
            }
            return _row(event.step, event.metrics, typed)
    return None


def _row(step: int, metrics: dict[str, float], typed: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step, **metrics}
    row.update((key, value) for key, value in typed.items() if value is not None)
    row["step"] = step
    return row


# --- callbacks and specs --------------------------------------------------------------------


class CallbackHandler:
    """Calls ``fn(event)`` for the events whose name matches ``events``.

    ``fn`` may be a plain function or an ``async def`` (then :attr:`is_async` is true and the
    bus awaits it in its async-handler sink). ``events`` are dotted prefixes matched on whole
    segments, with or without the ``crucible_kitchen.`` head: ``"training"`` matches
    ``crucible_kitchen.training.step`` and ``.epoch`` but not ``...trainingx``; ``None`` matches
    every event.
    """

    def __init__(
        self,
        fn: Callable[[TelemetryEvent], Any],
        events: str | Iterable[str] | None = None,
    ) -> None:
        if not callable(fn):
            raise TelemetryError(f"telemetry callback must be callable, got {fn!r}")
        self.fn = fn
        self.is_async: bool = inspect.iscoroutinefunction(fn) or (
            inspect.iscoroutinefunction(type(fn).__call__)
        )
        if events is None:
            self.prefixes: tuple[str, ...] | None = None
        else:
            names = (events,) if isinstance(events, str) else tuple(events)
            self.prefixes = tuple(
                n if n.startswith("crucible_kitchen.") else f"crucible_kitchen.{n}"
                for n in (name.strip(".") for name in names)
            )
        self._matches: dict[str, bool] = {}

    def accepts(self, name: str) -> bool:
        """Whether an event called ``name`` passes the filter."""
        if self.prefixes is None:
            return True
        matched = self._matches.get(name)
        if matched is None:
            matched = any(name == p or name.startswith(p + ".") for p in self.prefixes)
            self._matches[name] = matched
        return matched

    def __call__(self, event: TelemetryEvent) -> Any:
        if self.prefixes is not None and not self.accepts(event_name(event)):
            return None
        return self.fn(event)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"CallbackHandler({name})"


_HANDLER_TYPES = (ConsoleHandler, JsonlHandler, MetricsJsonlHandler, CallbackHandler)


def build_handler(spec: HandlerSpec) -> Handler:
    """Turn a handler spec into a handler.

    Specs: ``"console"``; ``("console", level)``; ``("jsonl", path)`` (a directory gets
    ``events.jsonl``); ``("metrics", path)`` (a directory gets ``metrics.jsonl``); a handler
    instance (returned as it is); any other callable, sync or async (wrapped in a
    :class:`CallbackHandler`).

    Raises:
        TelemetryError: the spec is none of these, or a log file cannot be opened.
    """
    if isinstance(spec, _HANDLER_TYPES):
        return spec
    if isinstance(spec, str):
        if spec == "console":
            return ConsoleHandler()
        if spec in ("jsonl", "metrics"):
            raise TelemetryError(f"telemetry spec {spec!r} needs a path: use ({spec!r}, path)")
        raise TelemetryError(_bad_spec(spec))
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str):
            raise TelemetryError(_bad_spec(spec))
        kind, arg = spec
        if kind == "console":
            if not isinstance(arg, str | int):
                raise TelemetryError(f"console level must be a name or a number, got {arg!r}")
            return ConsoleHandler(level=arg)  # type: ignore[arg-type]  # checked inside
        if kind in ("jsonl", "metrics"):
            if not isinstance(arg, str | os.PathLike):
                raise TelemetryError(f"telemetry spec ({kind!r}, ...) needs a path, got {arg!r}")
            return JsonlHandler(arg) if kind == "jsonl" else MetricsJsonlHandler(arg)
        raise TelemetryError(_bad_spec(spec))
    if callable(spec):
        return CallbackHandler(spec)
    raise TelemetryError(_bad_spec(spec))


def build_handlers(specs: Iterable[HandlerSpec]) -> list[Handler]:
    """Build every spec; if one is bad, close those already built and raise.

    Raises:
        TelemetryError: as for :func:`build_handler`.
    """
    built: list[Handler] = []
    try:
        for spec in specs:
            built.append(build_handler(spec))
    except BaseException:
        for handler in built:
            close = getattr(handler, "close", None)
            if callable(close):
                close()
        raise
    return built


def _bad_spec(spec: object) -> str:
    return (
        f"unknown telemetry handler spec {spec!r}: expected 'console', ('console', level), "
        "('jsonl', path), ('metrics', path), a handler or a callable"
    )


def stderr_console() -> Console:
    """A rich console on stderr that falls silent when its reader goes away (``| head``), and
    that wraps no line when stderr is not a terminal (a log file or a pipe gets whole lines).

    Rich's default is to raise ``SystemExit`` from whatever code printed, which would end the
    run (or the host application) from inside a telemetry handler, and to wrap at 80 columns
    anything that is not a terminal, splitting paths.
    """
    from rich.console import Console

    class _StderrConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True

    console = _StderrConsole(stderr=True)
    console.soft_wrap = not console.is_terminal
    return console

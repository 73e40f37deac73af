"""The Kitchen facade: run workflows and recipes, watch them, cancel them.

::

    result = await Kitchen.run("supervised", {"epochs": 2}, adapters="noop")

    async with Kitchen.open(telemetry=["console"]) as kitchen:
        run = await kitchen.start("supervised", config)
        async for event in run.events(): ...
        result = await run.wait()

The Kitchen is a root supervisor; each run is a temporary child: a run supervisor with the
run's stage actors and its workflow actor (see ``crucible_kitchen.workflows._engine``).

A run may keep a **run directory** (``run_dir=``; by default ``runs/<run_id>/`` for recipes
that ask for one, such as ``sl_basic``)::

    config.json     run id, recipe, workflow, seed, adapter set, resolved config, version
                    (written atomically at the start)
    events.jsonl    every telemetry event, one JSON object a line, flushed per line
    metrics.jsonl   tinker-cookbook metrics rows ({"step": ..., "train_mean_nll": ...})
    traces.jsonl    OpenTelemetry spans of the run and its stages (when the SDK is installed
                    and the Kitchen has no tracer provider of its own)
    checkpoints/    the training client's checkpoints: weights/<name>/ (resumable: weights,
                    optimizer, context snapshot) and sampler_weights/<name>/ (final weights
                    in sampler_weights/final/)
    tokenizer.json, blobs/, registry/   what the local adapters keep
    summary.json    the RunResult (written atomically when the run ends)

``Kitchen.resume(run_dir)`` continues such a run from its latest complete checkpoint with the
same run id, seed and config; the final weights are those of an uninterrupted run. Resumed
runs append to the logs: step rows after the checkpoint that the interrupted process had
written appear again after a ``crucible_kitchen.training.resume`` event.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import time
import types
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

import anyio
import anyio.to_thread
import msgspec

from crucible_kitchen.errors import (
    CheckpointError,
    PortError,
    RecipeNotFound,
    RunCancelled,
    RunDirectoryError,
    StageFailed,
    TelemetryError,
    WorkflowError,
)
from crucible_kitchen.ports import PORT_PROTOCOLS, protocol_problems
from crucible_kitchen.recipes import BUILTIN_RECIPES, Recipe
from crucible_kitchen.stages import (
    RESUME_FROM,
    Context,
    ContextSnapshot,
    RestoreCheckpoint,
    RunInfo,
    snapshot_from_checkpoint,
)
from crucible_kitchen.supervisors import ChildSpec, Supervisor, open_supervisor
from crucible_kitchen.telemetry import (
    BusStatistics,
    JsonlHandler,
    MetricsJsonlHandler,
    TelemetryBus,
    TelemetryEvent,
    build_handler,
    configure_tracing,
    get_tracer,
)
from crucible_kitchen.workflows import Workflow
from crucible_kitchen.workflows._engine import RunOutcome, RunPlan, build_run_supervisor

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from crucible_kitchen.stages._context import FaultHook

__all__ = (
    "Adapters",
    "DryRun",
    "Kitchen",
    "RecipeInfo",
    "RunHandle",
    "RunRecord",
    "RunResult",
    "read_run_record",
)

logger = logging.getLogger("crucible_kitchen.kitchen")

Target = str | Recipe | Workflow

RunDir = str | os.PathLike[str] | bool | None
"""Where a run keeps its files: a directory; ``True`` for ``<runs_root>/<run_id>``; ``False``
for none; ``None`` for the recipe's default (``Recipe.writes_run_dir``)."""

CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.jsonl"
TRACES_FILE = "traces.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
RUN_FORMAT = "crucible-kitchen/run"
RUN_FORMAT_VERSION = 1


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a run ended."""

    run_id: str
    workflow: str
    recipe: str | None
    status: Literal["completed", "failed", "cancelled"]
    metrics: dict[str, float]
    artifacts: dict[str, str]
    steps: int
    duration_s: float
    error: str | None = None
    failed_stage: str | None = None
    attempts: int | None = None


class RecipeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``kitchen.recipes()``."""

    name: str
    description: str
    workflow: str
    adapters: str


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A run directory's ``config.json``: what it takes to start the run again."""

    format: str = RUN_FORMAT
    format_version: int = RUN_FORMAT_VERSION
    run_id: str
    recipe: str | None
    workflow: str
    seed: int
    adapters: str | None
    """The adapter set the Kitchen built by name (rebuilt the same way on resume), or ``None``
    for adapters the caller built (an ``Adapters`` or a mapping: pass them again to resume)."""
    config: dict[str, Any]
    version: str
    """The crucible-kitchen version that started the run."""
    created: float


def read_run_record(run_dir: str | os.PathLike[str]) -> RunRecord:
    """The ``config.json`` of a run directory.

    Raises:
        RunDirectoryError: no run directory there, or its ``config.json`` is unreadable.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        record = msgspec.json.decode(path.read_bytes(), type=RunRecord)
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{run_dir} is not a run directory: it has no {CONFIG_FILE}", path=str(run_dir)
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc}", path=str(run_dir)) from exc
    if record.format != RUN_FORMAT or record.format_version != RUN_FORMAT_VERSION:
        raise RunDirectoryError(
            f"{path}: format {record.format!r} version {record.format_version} is not "
            f"{RUN_FORMAT!r} version {RUN_FORMAT_VERSION}",
            path=str(run_dir),
        )
    return record


class Adapters(Mapping[str, Any]):
    """The adapters of a run, by port name (``adapters["training_client"]``).

    ``name`` is the built-in set they came from (``"noop"``, ``"local_torch"``), if any.
    """

    def __init__(self, ports: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        self._ports: dict[str, Any] = {**(ports or {}), **more}
        self.name: str | None = None

    def __getitem__(self, port: str) -> Any:
        return self._ports[port]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ports)

    def __len__(self) -> int:
        return len(self._ports)

    def __repr__(self) -> str:
        return f"Adapters({', '.join(f'{k}={type(v).__name__}' for k, v in self._ports.items())})"

    def replace(self, **ports: Any) -> Adapters:
        """A copy with some ports bound to other adapters."""
        return Adapters(self._ports, **ports)

    @classmethod
    def noop(cls, *, seed: int = 0, **options: Any) -> Adapters:
        """Every port bound to a deterministic in-memory noop adapter (for tests and demos)."""
        from crucible_kitchen.adapters.noop import NoopSamplingClient, noop_adapters

        ports: dict[str, Any] = {
            str(port): adapter for port, adapter in noop_adapters(seed=seed, **options).items()
        }
        ports["teacher_sampling_client"] = NoopSamplingClient(seed=seed + 1)  # distillation
        adapters = cls(ports)
        adapters.name = "noop"
        return adapters

    @classmethod
    def local_torch(
        cls,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        model: Any = "tiny",
        tokenizer: Any = "byte",
        renderer: str = "chatml",
        lora: Any = None,
        device: str = "cpu",
        data_root: str | os.PathLike[str] | None = None,
    ) -> Adapters:
        """Real training and sampling on this machine (needs the ``torch`` extra).

        - ``training_client``, ``sampling_client``, ``tokenizer``, ``renderer``: local torch
          (``local_torch_adapters``: a transformer from the ``model`` preset or config, seeded
          by ``seed``; checkpoints under ``run_dir/checkpoints``);
        - ``dataset_store`` (the bundled data, or ``data_root``), ``blob_store`` and
          ``model_registry`` (under ``run_dir``): filesystem;
        - ``metrics_store``: the in-memory noop store, as there is no durable local one (a
          run directory's ``metrics.jsonl`` is the durable record).

        No ``evaluator`` is bound: a run that asks for one fails at start with a
        :class:`~crucible_kitchen.errors.PortError`. Without ``run_dir`` everything goes to
        temporary directories.

        Raises:
            ConfigError: an invalid model, LoRA, tokenizer or device.
        """
        from crucible_kitchen.adapters.filesystem import filesystem_adapters
        from crucible_kitchen.adapters.local_torch import local_torch_adapters
        from crucible_kitchen.adapters.noop import NoopMetricsStore

        local = local_torch_adapters(
            model=model,
            seed=seed,
            lora=lora,
            device=device,
            tokenizer=tokenizer,
            renderer=renderer,
            run_dir=run_dir,
        )
        files = filesystem_adapters(data_root=data_root, run_dir=run_dir)
        ports: dict[str, Any] = {str(port): adapter for port, adapter in files.items()}
        ports.update((str(port), adapter) for port, adapter in local.items())
        ports["metrics_store"] = NoopMetricsStore()
        adapters = cls(ports)
        adapters.name = "local_torch"
        return adapters

    @classmethod
    def named(
        cls,
        name: str,
        *,
        seed: int = 0,
        run_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Adapters:
        """A built-in adapter set by name, with its ``options``.

        ``"noop"`` (:meth:`noop`; in memory, ``run_dir`` unused), ``"local_torch"``
        (:meth:`local_torch`: ``model=``, ``tokenizer=``, ``renderer=``, ``lora=``,
        ``device=``, ``data_root=``) or ``"none"`` (no ports bound).

        Raises:
            PortError: no adapter set has that name.
        """
        if name == "noop":
            return cls.noop(seed=seed, **options)
        if name == "local_torch":
            return cls.local_torch(seed=seed, run_dir=run_dir, **options)
        if name == "none":
            return cls()
        raise PortError(f"no adapter set named {name!r}; known: local_torch, noop, none", port="*")


@dataclass(frozen=True)
class DryRun:
    """What a run would do: its workflow, validated config and bound ports."""

    workflow: Workflow
    config: Any
    adapters: Adapters

    def describe(self) -> str:
        ports = ", ".join(f"{k}={type(v).__name__}" for k, v in self.adapters.items())
        return f"{self.workflow.describe()}\nports: {ports}"


class RunHandle:
    """A run in progress: its events, its status, waiting for it, cancelling it.

    ``run_dir`` is its run directory (``None`` if it keeps none); ``resumed_from`` the
    checkpoint a resumed run continues from.
    """

    def __init__(
        self,
        *,
        run_id: str,
        plan: RunPlan,
        supervisor: Supervisor,
        bus: TelemetryBus,
        recipe: str | None,
        run_dir: Path | None = None,
        resumed_from: str | None = None,
        tracer_provider: SdkTracerProvider | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = plan.workflow.name
        self.recipe = recipe
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self._plan = plan
        self._supervisor = supervisor
        self._bus = bus
        self._tracer_provider = tracer_provider
        self._started = time.perf_counter()
        self._result: RunResult | None = None
        self._finishing = anyio.Lock()
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.status}>"

    @property
    def outcome(self) -> RunOutcome:
        return self._plan.outcome

    @property
    def status(self) -> Literal["running", "completed", "failed", "cancelled"]:
        """``running`` until the workflow actor has finished."""
        return self._plan.outcome.status

    async def events(self) -> AsyncGenerator[TelemetryEvent, None]:
        """Every telemetry event of this run, in order, from its first; ends with the run."""
        with self._bus.subscribe(replay=True) as stream:
            async for event in stream:
                yield event

    def telemetry_statistics(self) -> BusStatistics:
        """How the run's telemetry handlers fared: events delivered, failures, drops."""
        return self._bus.statistics()

    async def wait(self) -> RunResult:
        """Wait until the run has ended and every one of its actors has stopped.

        Raises:
            StageFailed: a stage failed for good (names the stage, path and attempt; the
                original error is ``__cause__``).
            RunCancelled: the run was cancelled.
            WorkflowError: the run failed outside any stage.
        """
        result = await self.result()
        outcome = self._plan.outcome
        if result.status == "cancelled":
            raise RunCancelled(self.run_id)
        if result.status == "failed":
            error = outcome.error
            if isinstance(error, WorkflowError):
                raise error
            raise WorkflowError(f"run {self.run_id!r} failed: {result.error}") from error
        return result

    async def result(self) -> RunResult:
        """Like :meth:`wait`, but returns the result whatever the status, never raising.

        With a run directory, the result is written to its ``summary.json`` first.
        """
        async with self._finishing:
            result = self._result
            if result is None:
                reason = await self._supervisor.wait()
                with anyio.CancelScope(shield=True):
                    result = self._result = await self._finish(reason)
        assert result is not None  # mypy: a shielded scope might swallow an exception
        return result

    async def _finish(self, reason: object) -> RunResult:
        self._bus.close()
        outcome = self._plan.outcome
        if outcome.status == "running":  # the workflow actor died without a word
            outcome.status = "cancelled" if self._cancelled else "failed"
            outcome.error = outcome.error or WorkflowError(
                f"run {self.run_id!r} ended without finishing its workflow: {reason}"
            )
        result = self._build_result()
        if self.run_dir is not None:
            data = msgspec.json.format(msgspec.json.encode(result), indent=2)
            try:
                await anyio.to_thread.run_sync(_write_atomic, self.run_dir / SUMMARY_FILE, data)
            except OSError:
                logger.exception("run %r: cannot write %s", self.run_id, SUMMARY_FILE)
        if self._tracer_provider is not None:
            await anyio.to_thread.run_sync(self._tracer_provider.shutdown)
        return result

    def request_stop(self) -> None:
        """Ask the run to stop at the next loop iteration boundary, after the current one's
        stages (a checkpoint among them: ``checkpoint_due``-style predicates see
        ``ctx.run.stop_requested``); cleanup stages run and the run ends as cancelled.
        A second, harder stop is :meth:`cancel`."""
        self._plan.run.stop_requested = True

    async def cancel(self) -> RunResult:
        """Stop the run: the running stage is cancelled within its shutdown timeout, the
        cleanup stages run, then every actor of the run stops. Returns the final result."""
        self._cancelled = True
        await self._supervisor.stop()
        return await self.result()

    def _build_result(self) -> RunResult:
        outcome = self._plan.outcome
        ctx = outcome.context or self._plan.initial
        error = outcome.error
        status = outcome.status
        assert status != "running"
        artifacts = ctx.state.get("artifacts", {})
        return RunResult(
            run_id=self.run_id,
            workflow=self.workflow,
            recipe=self.recipe,
            status=status,
            metrics={k: float(v) for k, v in ctx.metrics.items()},
            artifacts={str(k): str(v) for k, v in artifacts.items()},
            steps=ctx.step,
            duration_s=time.perf_counter() - self._started,
            error=None if error is None else f"{type(error).__name__}: {error}",
            failed_stage=error.stage if isinstance(error, StageFailed) else None,
            attempts=error.attempt if isinstance(error, StageFailed) else None,
        )


_K = TypeVar("_K", bound="Kitchen")
_CP = ParamSpec("_CP")
_IP = ParamSpec("_IP")
_CR = TypeVar("_CR")
_IR = TypeVar("_IR")


class _ClassOrInstanceMethod(Generic[_K, _CP, _CR, _IP, _IR]):
    """A method that is ``on_class`` when looked up on the class, ``on_instance`` on an
    instance (``Kitchen.resume`` runs to the end, ``kitchen.resume`` returns a handle)."""

    def __init__(
        self,
        on_class: Callable[Concatenate[type[_K], _CP], _CR],
        on_instance: Callable[Concatenate[_K, _IP], _IR],
    ) -> None:
        self._on_class = on_class
        self._on_instance = on_instance
        self.__doc__ = on_instance.__doc__

    @overload
    def __get__(self, obj: None, owner: type[_K]) -> Callable[_CP, _CR]: ...

    @overload
    def __get__(self, obj: _K, owner: type[_K] | None = None) -> Callable[_IP, _IR]: ...

    def __get__(
        self, obj: _K | None, owner: type[_K] | None = None
    ) -> Callable[_CP, _CR] | Callable[_IP, _IR]:
        if obj is None:
            assert owner is not None
            return cast("Callable[_CP, _CR]", types.MethodType(self._on_class, owner))
        return cast("Callable[_IP, _IR]", types.MethodType(self._on_instance, obj))


async def _resume_to_end(
    cls: type[Kitchen],
    run_dir: str | os.PathLike[str],
    *,
    adapters: str | Mapping[str, Any] | None = None,
    telemetry: Sequence[Any] = (),
    tracer_provider: Any = None,
    recipes: Sequence[Recipe] = (),
) -> RunResult:
    """Continue the run in ``run_dir`` to its end and return the result.

    ``Kitchen.resume(run_dir)`` on the class; on a Kitchen instance, ``resume`` starts
    the run and returns its handle (see :meth:`_resume_handle`).

    Raises:
        RunDirectoryError: as :meth:`_resume_handle`; StageFailed, RunCancelled,
            WorkflowError: as :meth:`RunHandle.wait`.
    """
    async with cls.open(tracer_provider=tracer_provider, recipes=recipes) as kitchen:
        run = await kitchen.resume(run_dir, adapters=adapters, telemetry=telemetry)
        result = await run.wait()
    return result  # noqa: RET504


class Kitchen:
    """Runs recipes and workflows on the actor runtime (asyncio or trio).

    Args:
        supervisor: the root supervisor (use :meth:`open`).
        telemetry: handler specs every run gets.
        tracer_provider: OpenTelemetry spans of every run go there.
        recipes: recipes besides the built-in ones.
        runs_root: where run directories go by default (``<runs_root>/<run_id>``).
        trace_run_dirs: write a run directory's spans to its ``traces.jsonl`` (needs the
            OpenTelemetry SDK; off when ``tracer_provider`` is given).
    """

    _default_telemetry: ClassVar[list[Any]] = []

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        telemetry: Sequence[Any] = (),
        tracer_provider: Any = None,
        recipes: Sequence[Recipe] = (),
        runs_root: str | os.PathLike[str] = "runs",
        trace_run_dirs: bool = True,
    ) -> None:
        self._supervisor = supervisor
        self._telemetry = list(telemetry)
        self._tracer = None if tracer_provider is None else get_tracer(tracer_provider)
        self._recipes: dict[str, Recipe] = {r.name: r for r in (*BUILTIN_RECIPES, *recipes)}
        self._runs: dict[str, RunHandle] = {}
        self.runs_root = Path(runs_root)
        self._trace_run_dirs = trace_run_dirs

    # ------------------------------------------------------------------ one-shot

    @classmethod
    async def run(
        cls,
        target: Target,
        config: Any = None,
        *,
        adapters: str | Mapping[str, Any] | None = None,
        telemetry: Sequence[Any] = (),
        tracer_provider: Any = None,
        seed: int = 0,
        run_id: str | None = None,
        resume: ContextSnapshot | None = None,
        recipes: Sequence[Recipe] = (),
        run_dir: RunDir = None,
    ) -> RunResult:
        """Run ``target`` to its end and return the result (see :meth:`RunHandle.wait`).

        ``recipes`` adds recipes that ``target`` may name, besides the built-in ones;
        ``run_dir`` is as for :meth:`start`.
        """
        async with cls.open(tracer_provider=tracer_provider, recipes=recipes) as kitchen:
            run = await kitchen.start(
                target,
                config,
                adapters=adapters,
                telemetry=telemetry,
                seed=seed,
                run_id=run_id,
                resume=resume,
                run_dir=run_dir,
            )
            result = await run.wait()
        return result  # noqa: RET504  (mypy: the context manager might swallow an exception)

    @classmethod
    def open(
        cls,
        *,
        telemetry: Sequence[Any] = (),
        tracer_provider: Any = None,
        recipes: Sequence[Recipe] = (),
        runs_root: str | os.PathLike[str] = "runs",
        trace_run_dirs: bool = True,
    ) -> _KitchenContext:
        """A long-lived Kitchen for several concurrent runs; closing it stops every run."""
        return _KitchenContext(
            cls,
            telemetry=telemetry,
            tracer_provider=tracer_provider,
            recipes=recipes,
            runs_root=runs_root,
            trace_run_dirs=trace_run_dirs,
        )

    # ------------------------------------------------------------------ telemetry defaults

    @classmethod
    def attach_telemetry(cls, kind: Any, target: str | None = None) -> None:
        """Add a handler to every run from now on: ``"console"``, ``("jsonl", path)`` ...

        ``Kitchen.attach_telemetry("jsonl", "runs/events.jsonl")`` is the seed README's form.
        """
        spec = kind if target is None else (kind, target)
        handler = build_handler(spec)  # fail now on a bad spec, not at the next run
        close = getattr(handler, "close", None)
        if handler is not spec and callable(close):
            close()
        cls._default_telemetry.append(spec)

    @classmethod
    def detach_telemetry(cls) -> None:
        """Forget every handler added with :meth:`attach_telemetry`."""
        cls._default_telemetry.clear()

    # ------------------------------------------------------------------ recipes

    def recipes(self) -> list[RecipeInfo]:
        """The recipes this Kitchen knows, built-in ones first."""
        return [
            RecipeInfo(
                name=r.name,
                description=r.description,
                workflow=r.build(r.config(None)).name,
                adapters=r.adapters,
            )
            for r in self._recipes.values()
        ]

    def recipe(self, name: str) -> Recipe:
        """A recipe by name.

        Raises:
            RecipeNotFound: no such recipe.
        """
        try:
            return self._recipes[name]
        except KeyError:
            raise RecipeNotFound(name, known=sorted(self._recipes)) from None

    @staticmethod
    def describe(target: Target, config: Any = None) -> str:
        """The workflow of ``target`` as an indented tree."""
        recipe = _resolve({r.name: r for r in BUILTIN_RECIPES}, target)
        return recipe.build(recipe.config(config)).describe()

    # ------------------------------------------------------------------ runs

    def _prepare(
        self,
        recipe: Recipe,
        validated: Any,
        adapters: str | Mapping[str, Any] | None,
        *,
        seed: int,
        run_dir: Path | None = None,
    ) -> tuple[Workflow, Adapters]:
        """Build the workflow and adapters and check everything a run needs, before it runs."""
        workflow = recipe.build(validated)
        workflow.check_config(validated)
        bound = _adapters(adapters, recipe, validated, seed=seed, run_dir=run_dir)
        _check_ports(workflow, recipe, bound)
        ctx = Context(
            RunInfo(
                run_id="validate",
                workflow=workflow.name,
                config=validated,
                ports=bound,
                seed=seed,
                telemetry=TelemetryBus("validate"),
            )
        )
        for node in workflow.stages():
            node.stage.validate(ctx)
        return workflow, bound

    def dry_run(
        self, target: Target, config: Any = None, *, adapters: str | Mapping[str, Any] | None = None
    ) -> DryRun:
        """Validate config, adapters and every stage's ``validate`` without running anything.

        Raises:
            ConfigError: the config is invalid (every problem listed).
            PortError: a required port is unbound or its adapter does not fit its port.
            RecipeNotFound: unknown target name.
        """
        recipe = _resolve(self._recipes, target)
        validated = recipe.config(config)
        workflow, bound = self._prepare(recipe, validated, adapters, seed=0)
        return DryRun(workflow, validated, bound)

    def run_directory(self, target: Target, run_id: str, run_dir: RunDir = None) -> Path | None:
        """Where a run of ``target`` with ``run_id`` keeps its files (see :meth:`start`)."""
        recipe = _resolve(self._recipes, target)
        if run_dir is None:
            run_dir = recipe.writes_run_dir
        if run_dir is False:
            return None
        if run_dir is True:
            return self.runs_root / run_id
        return Path(run_dir)

    async def start(
        self,
        target: Target,
        config: Any = None,
        *,
        adapters: str | Mapping[str, Any] | None = None,
        telemetry: Sequence[Any] = (),
        seed: int = 0,
        run_id: str | None = None,
        fault_hook: FaultHook | None = None,
        cleanup_timeout: float = 60.0,
        initial_state: Mapping[str, Any] | None = None,
        resume: ContextSnapshot | None = None,
        run_dir: RunDir = None,
    ) -> RunHandle:
        """Start a run and return its handle once all of its actors are ready.

        Raises:
            ConfigError, PortError, RecipeNotFound: as :meth:`dry_run`, before anything starts.
            RunDirectoryError: the run directory holds a run already (resume it instead).

        ``run_id`` defaults to ``<recipe>-<8 hex digits>``. ``run_dir`` is a directory for
        the run's files (see the module docstring), ``True`` for
        ``<runs_root>/<run_id>``, ``False`` for none; by default the recipe decides
        (``sl_basic`` keeps one). Named adapter sets get the run directory (checkpoints go
        to its ``checkpoints/``) and the recipe's options (the model preset, ...).

        ``resume`` continues a run from a checkpoint's :class:`ContextSnapshot`: its state,
        metrics and step are restored and the loops skip the iterations already done (see
        ``RunPlan.resume_loops``). Backend state (weights, optimizer) is the stages' business:
        with ``initial_state={"resume_from": path}`` the supervised workflow loads that
        checkpoint first. :meth:`resume` does all of this from a run directory.
        """
        recipe = _resolve(self._recipes, target)
        validated = recipe.config(config)
        run_id = run_id or f"{recipe.name}-{uuid.uuid4().hex[:8]}"
        directory = self.run_directory(recipe, run_id, run_dir)
        if directory is not None and (directory / CONFIG_FILE).exists():
            raise RunDirectoryError(
                f"{directory} holds a run already; resume it (kitchen resume {directory}) "
                "or choose another run directory",
                path=str(directory),
            )
        workflow, bound = self._prepare(recipe, validated, adapters, seed=seed, run_dir=directory)
        if adapters is None:
            adapters = recipe.adapters
        return await self._launch(
            validated,
            workflow,
            bound,
            adapter_set=adapters if isinstance(adapters, str) else None,
            recipe_name=None if isinstance(target, Workflow) else recipe.name,
            telemetry=telemetry,
            seed=seed,
            run_id=run_id,
            run_dir=directory,
            fault_hook=fault_hook,
            cleanup_timeout=cleanup_timeout,
            initial_state=initial_state,
            resume=resume,
        )

    async def _resume_handle(
        self,
        run_dir: str | os.PathLike[str],
        *,
        adapters: str | Mapping[str, Any] | None = None,
        telemetry: Sequence[Any] = (),
        fault_hook: FaultHook | None = None,
        cleanup_timeout: float = 60.0,
    ) -> RunHandle:
        """Start the run of ``run_dir`` again where its latest complete checkpoint left it.

        ``kitchen.resume(run_dir)`` on an instance; ``Kitchen.resume(run_dir)`` on the class
        runs it to its end (see :meth:`_resume_to_end`).

        The recipe, config, seed, run id and adapter set come from its ``config.json``
        (``adapters`` replaces the set, e.g. for a run started with a mapping of adapters).
        The latest checkpoint with a context snapshot is found among the training client's
        checkpoints (a complete one has its manifest; a half-written one is ignored); its
        snapshot is restored and the workflow loads its weights and optimizer state first.
        Without any, the run starts again from its first step. The logs are appended to.

        Raises:
            RunDirectoryError: not a run directory, a run that completed already, a recipe
                this Kitchen does not know, a training client that keeps no checkpoints
                (its ``checkpoint_payload`` method), or a checkpoint of a workflow that
                cannot resume (no ``RestoreCheckpoint`` stage, e.g. async RL).
        """
        directory = Path(run_dir)
        record = read_run_record(directory)
        _check_unfinished(directory, record)
        if record.recipe is None:
            raise RunDirectoryError(
                f"{directory}: run {record.run_id!r} ran a bare workflow, not a recipe; "
                "only recipe runs can be resumed from their directory",
                path=str(directory),
            )
        try:
            recipe = self.recipe(record.recipe)
        except RecipeNotFound as exc:
            raise RunDirectoryError(
                f"{directory}: {exc}; pass the Kitchen its recipes", path=str(directory)
            ) from exc
        if adapters is None:
            if record.adapters is None:
                raise RunDirectoryError(
                    f"{directory}: run {record.run_id!r} was given adapters built by its "
                    "caller, which its directory cannot rebuild; pass adapters= to resume it",
                    path=str(directory),
                )
            adapters = record.adapters
        validated = recipe.config(record.config)
        workflow, bound = self._prepare(
            recipe, validated, adapters, seed=record.seed, run_dir=directory
        )
        point = await _latest_checkpoint(directory, bound)
        snapshot, initial_state = None, None
        if point is not None:
            path, snapshot = point
            if not any(isinstance(node.stage, RestoreCheckpoint) for node in workflow.stages()):
                raise RunDirectoryError(
                    f"{directory}: the {workflow.name} workflow of recipe {record.recipe!r}, "
                    f"as configured, cannot resume from a checkpoint (it has no restore "
                    f"stage) and would train on from fresh weights; start a new run",
                    path=str(directory),
                )
            initial_state = {RESUME_FROM: path}
        return await self._launch(
            validated,
            workflow,
            bound,
            adapter_set=record.adapters,
            recipe_name=record.recipe,
            telemetry=telemetry,
            seed=record.seed,
            run_id=record.run_id,
            run_dir=directory,
            fault_hook=fault_hook,
            cleanup_timeout=cleanup_timeout,
            initial_state=initial_state,
            resume=snapshot,
            resuming=True,
        )

    async def _launch(
        self,
        validated: Any,
        workflow: Workflow,
        bound: Adapters,
        *,
        adapter_set: str | None,
        recipe_name: str | None,
        telemetry: Sequence[Any],
        seed: int,
        run_id: str,
        run_dir: Path | None,
        fault_hook: FaultHook | None,
        cleanup_timeout: float,
        initial_state: Mapping[str, Any] | None,
        resume: ContextSnapshot | None,
        resuming: bool = False,
    ) -> RunHandle:
        """Open the run's files and telemetry, build its supervision tree and start it."""
        bus = TelemetryBus(run_id)
        provider: SdkTracerProvider | None = None
        try:
            tracer = self._tracer
            if run_dir is not None:
                if not resuming:
                    record = RunRecord(
                        run_id=run_id,
                        recipe=recipe_name,
                        workflow=workflow.name,
                        seed=seed,
                        adapters=adapter_set,
                        config=_jsonable(validated),
                        version=_version(),
                        created=time.time(),
                    )
                    data = msgspec.json.format(msgspec.json.encode(record), indent=2)
                    await anyio.to_thread.run_sync(_write_atomic, run_dir / CONFIG_FILE, data)
                else:
                    await anyio.to_thread.run_sync(_drop_partial_lines, run_dir)
                bus.add_handler(JsonlHandler(run_dir / EVENTS_FILE), owned=True)
                bus.add_handler(MetricsJsonlHandler(run_dir / METRICS_FILE), owned=True)
                if tracer is None and self._trace_run_dirs:
                    provider = _run_tracing(run_dir / TRACES_FILE)
                    tracer = None if provider is None else get_tracer(provider)
            for spec in (*Kitchen._default_telemetry, *self._telemetry, *telemetry):
                handler = build_handler(spec)
                bus.add_handler(handler, owned=handler is not spec)  # we close what we built
            info = RunInfo(
                run_id=run_id,
                workflow=workflow.name,
                config=validated,
                ports=bound,
                seed=seed,
                telemetry=bus,
                tracer=tracer,
                recipe=recipe_name,
                run_dir=None if run_dir is None else str(run_dir),
                fault_hook=fault_hook,
            )
            initial = Context(info) if resume is None else Context.restore(info, resume)
            initial.state.update(initial_state or {})
            plan = RunPlan(
                workflow=workflow,
                run=info,
                initial=initial,
                resume_loops={} if resume is None else dict(resume.loops),
                cleanup_timeout=cleanup_timeout,
            )
            supervisor = build_run_supervisor(plan)
            await self._supervisor.start_child(
                ChildSpec(run_id, lambda: supervisor, restart="temporary", shutdown="infinity")
            )
        except BaseException:
            bus.close()
            if provider is not None:
                provider.shutdown()
            raise
        handle = RunHandle(
            run_id=run_id,
            plan=plan,
            supervisor=supervisor,
            bus=bus,
            recipe=info.recipe,
            run_dir=run_dir,
            resumed_from=None if initial_state is None else initial_state.get(RESUME_FROM),
            tracer_provider=provider,
        )
        self._runs[run_id] = handle
        return handle

    resume = _ClassOrInstanceMethod(_resume_to_end, _resume_handle)
    """``Kitchen.resume(run_dir, ...) -> RunResult`` (runs to the end, like :meth:`run`);
    ``kitchen.resume(run_dir, ...) -> RunHandle`` (like :meth:`start`)."""

    def runs(self) -> list[RunHandle]:
        """Every run started by this Kitchen, oldest first."""
        return list(self._runs.values())


class _KitchenContext:
    def __init__(self, cls: type[Kitchen], **options: Any) -> None:
        self._cls = cls
        self._options = options
        self._root = open_supervisor(name="kitchen", intensity=0)
        self._kitchen: Kitchen | None = None

    async def __aenter__(self) -> Kitchen:
        supervisor = await self._root.__aenter__()
        self._kitchen = self._cls(supervisor, **self._options)
        return self._kitchen

    async def __aexit__(self, *exc_info: Any) -> bool:
        try:
            return await self._root.__aexit__(*exc_info)
        finally:
            if self._kitchen is not None:
                with anyio.CancelScope(shield=True):
                    for run in self._kitchen.runs():
                        run._cancelled = True
                        await run.result()


def _resolve(recipes: Mapping[str, Recipe], target: Target) -> Recipe:
    if isinstance(target, Recipe):
        return target
    if isinstance(target, Workflow):
        return Recipe(target.name, target.description, target, adapters="none")
    if isinstance(target, str):
        try:
            return recipes[target]
        except KeyError:
            raise RecipeNotFound(target, known=sorted(recipes)) from None
    raise TypeError(f"target must be a recipe name, a Recipe or a Workflow, not {target!r}")


def _adapters(
    value: str | Mapping[str, Any] | None,
    recipe: Recipe,
    config: Any,
    *,
    seed: int,
    run_dir: Path | None,
) -> Adapters:
    if value is None:
        value = recipe.adapters
    if isinstance(value, str):
        return Adapters.named(
            value, seed=seed, run_dir=run_dir, **recipe.options_for(config, value)
        )
    return value if isinstance(value, Adapters) else Adapters(value)


# ---------------------------------------------------------------------------------- run dirs


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a temporary file, fsynced, renamed over it, dir fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # like the logs, not mkstemp's 0o600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _drop_partial_lines(run_dir: Path) -> None:
    """Cut a line that a killed process left half-written at the end of a run's logs, so
    that a resumed run appends whole lines after whole lines."""
    for name in (EVENTS_FILE, METRICS_FILE, TRACES_FILE):
        try:
            with open(run_dir / name, "r+b") as file:
                size = file.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                file.seek(max(0, size - (1 << 20)))
                tail = file.read()
                if tail.endswith(b"\n"):
                    continue
                cut = tail.rfind(b"\n") + 1
                file.truncate(size - len(tail) + cut if cut else max(0, size - len(tail)))
        except FileNotFoundError:
            continue


def _version() -> str:
    try:
        return importlib.metadata.version("crucible-kitchen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(config: Any) -> dict[str, Any]:
    dump = getattr(config, "model_dump", None)
    value = dump(mode="json") if callable(dump) else config
    return dict(msgspec.to_builtins(value)) if isinstance(value, Mapping) else {"config": value}


def _run_tracing(path: Path) -> SdkTracerProvider | None:
    """A private tracer provider writing the run's spans to ``path``; ``None`` without the
    OpenTelemetry SDK."""
    try:
        return configure_tracing(f"jsonl:{path}")
    except TelemetryError:
        return None


def _check_unfinished(directory: Path, record: RunRecord) -> None:
    try:
        summary = msgspec.json.decode((directory / SUMMARY_FILE).read_bytes())
    except (OSError, msgspec.DecodeError):
        return
    if isinstance(summary, dict) and summary.get("status") == "completed":
        raise RunDirectoryError(
            f"run {record.run_id!r} in {directory} completed already; nothing to resume",
            path=str(directory),
        )


async def _latest_checkpoint(
    directory: Path, adapters: Adapters
) -> tuple[str, ContextSnapshot] | None:
    """The latest complete checkpoint with a context snapshot, and its snapshot.

    Looks at every ``<checkpoint dir>/<kind>/<name>/`` with a manifest and reads its payload
    through the training client's ``checkpoint_payload``; unreadable ones are skipped.
    """
    client = adapters.get("training_client")
    read_payload = getattr(client, "checkpoint_payload", None)
    if read_payload is None:
        raise RunDirectoryError(
            f"{directory}: the training client ({type(client).__name__}) keeps no checkpoints "
            "that a new process can read (it has no checkpoint_payload); cannot resume",
            path=str(directory),
        )
    root = Path(getattr(client, "checkpoint_dir", directory / CHECKPOINTS_DIR))
    manifests = await anyio.to_thread.run_sync(lambda: sorted(root.glob("*/*/manifest.json")))
    best: tuple[str, ContextSnapshot] | None = None
    for manifest in manifests:
        checkpoint = manifest.parent
        if checkpoint.name.startswith("."):
            continue  # a staging directory: never a complete checkpoint
        try:
            payload = await read_payload(str(checkpoint))
            context = None if payload is None else payload.get("context")
            if not isinstance(context, dict):
                continue  # weights for sampling, the final state: nothing to resume from
            snapshot = snapshot_from_checkpoint(context)
        except (CheckpointError, msgspec.ValidationError) as exc:
            logger.warning("skipping checkpoint %s: %s", checkpoint, exc)
            continue
        if best is None or snapshot.step > best[1].step:
            best = (str(checkpoint), snapshot)
    return best


def _check_ports(workflow: Workflow, recipe: Recipe, adapters: Adapters) -> None:
    problems: list[tuple[str, str]] = []
    for port in sorted(workflow.required_ports() | set(recipe.requires)):
        if port not in adapters:
            needed_by = [n.name for n in workflow.stages() if port in n.stage.requires]
            problems.append(
                (
                    port,
                    f"port {port!r} has no adapter (needed by "
                    f"{', '.join(needed_by) or recipe.name})",
                )
            )
            continue
        protocol = PORT_PROTOCOLS.get(port)  # type: ignore[call-overload]
        if protocol is not None:
            problems.extend(
                (port, f"port {port!r}: {p}") for p in protocol_problems(protocol, adapters[port])
            )
    if problems:
        texts = [text for _, text in problems]
        raise PortError(
            "the adapters do not fit the workflow:\n" + "\n".join(f"  - {t}" for t in texts),
            port=problems[0][0],
            problems=texts,
        )

"""The Kitchen: a root supervisor that starts, resumes and keeps track of runs."""

from __future__ import annotations

import contextlib
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypedDict, Unpack

import anyio
import anyio.to_thread

from crucible_kitchen._json import config_json
from crucible_kitchen.errors import (
    ConfigError,
    PortError,
    RecipeNotFound,
    RunDirectoryError,
    TelemetryError,
)
from crucible_kitchen.kitchen._adapters import Adapters
from crucible_kitchen.kitchen._checkpoints import find_resume_point
from crucible_kitchen.kitchen._handle import RunHandle
from crucible_kitchen.kitchen._registry import RecipeBook
from crucible_kitchen.kitchen._results import DryRun, RecipeInfo, RunResult
from crucible_kitchen.kitchen._run_dir import (
    CONFIG_FILE,
    EVENTS_FILE,
    METRICS_FILE,
    TRACES_FILE,
    RunDir,
    RunRecord,
    check_unfinished,
    drop_partial_lines,
    package_version,
    read_run_record,
    removed_on_failure,
    shared_run_id,
    write_json,
    writes_run_files,
)
from crucible_kitchen.ports import PORT_PROTOCOLS, protocol_problems
from crucible_kitchen.recipes import Recipe
from crucible_kitchen.stages import (
    RESUME_FROM,
    Context,
    ContextSnapshot,
    RunInfo,
)
from crucible_kitchen.stages.builtin import RestoreCheckpoint
from crucible_kitchen.supervisors import ChildSpec, Supervisor, open_supervisor
from crucible_kitchen.telemetry import (
    JsonlHandler,
    MetricsJsonlHandler,
    TelemetryBus,
    TrainingCheckpointDamaged,
    build_handler,
    configure_tracing,
    get_tracer,
)
from crucible_kitchen.workflows import RunPlan, Workflow, build_run_supervisor

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from anyio.abc import TaskGroup
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from crucible_kitchen.kitchen._checkpoints import ResumePoint
    from crucible_kitchen.stages import FaultHook

__all__ = ("Kitchen", "KitchenOptions", "RunOptions", "StartOptions", "Target")

Target = str | Recipe | Workflow


class KitchenOptions(TypedDict, total=False):
    """The settings of a Kitchen, as :meth:`Kitchen.open` and the constructor take them (see
    :class:`Kitchen`)."""

    telemetry: Sequence[Any]
    tracer_provider: Any
    recipes: Sequence[Recipe]
    runs_root: str | os.PathLike[str]
    trace_run_dirs: bool
    keep_finished: int


class RunOptions(TypedDict, total=False):
    """How a run executes: the keyword arguments shared by :meth:`Kitchen.start`,
    :meth:`Kitchen.run`, :meth:`Kitchen.start_resumed` and :meth:`Kitchen.resume`.

    - ``adapters``: a registered adapter set's name, an :class:`Adapters` or a mapping of
      port names to adapters (default: the recipe's set; on resume, the run's).
    - ``telemetry``: handler specs for this run, besides the Kitchen's.
    - ``fault_hook``: called at each stage's fault points (``crucible_kitchen.testing``).
    - ``cleanup_timeout``: seconds the cleanup stages of a stopped run may take (60.0).
    """

    adapters: str | Mapping[str, Any] | None
    telemetry: Sequence[Any]
    fault_hook: FaultHook | None
    cleanup_timeout: float


class StartOptions(RunOptions, total=False):
    """:class:`RunOptions` and what only a new run is given.

    - ``seed`` (0), ``run_id`` (default ``<recipe>-<8 hex digits>``).
    - ``run_dir``: a directory for the run's files, ``True`` for ``<runs_root>/<run_id>``,
      ``False`` for none; by default the recipe decides (``sl_basic`` keeps one).
    - ``resume``: a checkpoint's :class:`ContextSnapshot` to continue from, with
      ``initial_state={"resume_from": path}`` for the workflow to load its backend state
      (what :meth:`Kitchen.start_resumed` does from a run directory).
    - ``initial_state``: entries put into the context's state before the first stage.
    """

    seed: int
    run_id: str | None
    run_dir: RunDir
    resume: ContextSnapshot | None
    initial_state: Mapping[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class _Launch:
    """A run checked and ready to start: everything :meth:`Kitchen._launch` needs."""

    run_id: str
    recipe: str | None
    workflow: Workflow
    config: Any
    adapters: Adapters
    adapter_set: str | None
    seed: int
    run_dir: Path | None
    resuming: bool = False
    """The run directory holds this run already: append to it."""
    resume: ContextSnapshot | None = None
    initial_state: Mapping[str, Any] | None = None
    notices: tuple[TrainingCheckpointDamaged, ...] = ()
    """Events to emit before the workflow starts."""


class _KitchenContext:
    """Opens the root supervisor, and a task group of reapers below it: one per run, which
    waits for the run's end, finishes it (its result and ``summary.json``) and retires it."""

    def __init__(self, cls: type[Kitchen], **options: Unpack[KitchenOptions]) -> None:
        self._cls = cls
        self._options = options
        self._stack = contextlib.AsyncExitStack()
        self._kitchen: Kitchen | None = None

    async def __aenter__(self) -> Kitchen:
        async with contextlib.AsyncExitStack() as stack:
            reapers = anyio.create_task_group()
            await reapers.__aenter__()
            # Left without the body's exception: it is the root supervisor's to handle, and a
            # task group would wrap it in an exception group.
            stack.push_async_callback(reapers.__aexit__, None, None, None)
            stack.push_async_callback(self._finish_runs)
            supervisor = await stack.enter_async_context(
                open_supervisor(name="kitchen", intensity=0)
            )
            self._kitchen = self._cls(supervisor, **self._options)
            self._kitchen._reapers = reapers
            self._stack = stack.pop_all()
        return self._kitchen

    async def __aexit__(self, *exc_info: Any) -> bool:
        return bool(await self._stack.__aexit__(*exc_info))

    async def _finish_runs(self) -> None:
        """Once the root supervisor has stopped every run: finish those not finished yet."""
        if self._kitchen is None:
            return
        with anyio.CancelScope(shield=True):
            for run in self._kitchen.runs():
                run._cancelled = True
                await run.result()


class Kitchen:
    """Runs recipes and workflows on the actor runtime (asyncio or trio).

    Args:
        supervisor: the root supervisor (use :meth:`open`).
        telemetry: handler specs every run gets.
        tracer_provider: OpenTelemetry spans of every run go there.
        recipes: recipes besides the built-in and the registered ones (they win over a
            registered recipe of the same name).
        runs_root: where run directories go by default (``<runs_root>/<run_id>``).
        trace_run_dirs: write a run directory's spans to its ``traces.jsonl`` (needs the
            OpenTelemetry SDK; off when ``tracer_provider`` is given).
        keep_finished: how many results of finished runs :meth:`finished` keeps.

    A Kitchen that lives for months keeps its memory flat: once a run has ended, the Kitchen
    keeps only its :class:`RunResult` (the ``keep_finished`` newest), and the run's events
    and state live on only as long as its caller keeps the :class:`RunHandle` (the full
    record is in its run directory, if it has one).
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
        keep_finished: int = 1000,
    ) -> None:
        self._supervisor = supervisor
        self._telemetry = list(telemetry)
        self._tracer = None if tracer_provider is None else get_tracer(tracer_provider)
        self._recipes = RecipeBook(recipes)
        self._handles: weakref.WeakValueDictionary[str, RunHandle] = weakref.WeakValueDictionary()
        self._unfinished: dict[str, RunHandle] = {}
        self._finished: deque[RunResult] = deque(maxlen=keep_finished)
        self._reapers: TaskGroup | None = None
        self.runs_root = Path(runs_root)
        self._trace_run_dirs = trace_run_dirs

    # ------------------------------------------------------------------ one-shot

    @classmethod
    async def run(
        cls,
        target: Target,
        config: Any = None,
        *,
        tracer_provider: Any = None,
        recipes: Sequence[Recipe] = (),
        **options: Unpack[StartOptions],
    ) -> RunResult:
        """Run ``target`` to its end in a Kitchen of its own and return the result.

        ``options`` are those of :meth:`start`; ``tracer_provider`` and ``recipes`` those of
        :meth:`open`.

        Raises:
            as :meth:`start`, then as :meth:`RunHandle.wait`.
        """
        async with cls.open(tracer_provider=tracer_provider, recipes=recipes) as kitchen:
            run = await kitchen.start(target, config, **options)
            result = await run.wait()
        return result  # noqa: RET504  (mypy: the context manager might swallow an exception)

    @classmethod
    async def resume(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        tracer_provider: Any = None,
        recipes: Sequence[Recipe] = (),
        settings: Mapping[str, Any] | None = None,
        **options: Unpack[RunOptions],
    ) -> RunResult:
        """Continue the run in ``run_dir`` to its end in a Kitchen of its own and return
        the result: :meth:`start_resumed` as :meth:`run` is :meth:`start`.

        Raises:
            as :meth:`start_resumed`, then as :meth:`RunHandle.wait`.
        """
        async with cls.open(tracer_provider=tracer_provider, recipes=recipes) as kitchen:
            run = await kitchen.start_resumed(run_dir, settings=settings, **options)
            result = await run.wait()
        return result  # noqa: RET504

    @classmethod
    def open(cls, **options: Unpack[KitchenOptions]) -> _KitchenContext:
        """A long-lived Kitchen for several concurrent runs; closing it stops every run."""
        return _KitchenContext(cls, **options)

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
        """The recipes this Kitchen knows: built-in ones first, then those registered by
        installed packages (``crucible_kitchen.recipes`` entry points) and its own.

        Raises:
            RegistryError: a registered recipe cannot be loaded.
        """
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
            RegistryError: a registered recipe of that name cannot be loaded.
        """
        return _resolve(self._recipes, name)

    @staticmethod
    def describe(target: Target, config: Any = None) -> str:
        """The workflow of ``target`` (built-in or registered recipe) as an indented tree."""
        recipe = _resolve(RecipeBook(), target)
        return recipe.build(recipe.config(config)).describe()

    # ------------------------------------------------------------------ runs

    def dry_run(
        self, target: Target, config: Any = None, *, adapters: str | Mapping[str, Any] | None = None
    ) -> DryRun:
        """Validate config, adapters and every stage's ``validate`` without running anything.

        Raises:
            ConfigError: the config is invalid (every problem listed).
            PortError: a required port is unbound or its adapter does not fit its port
                (:class:`~crucible_kitchen.errors.AdapterSetNotFound`: no set by that name).
            RecipeNotFound: unknown target name.
        """
        recipe = _resolve(self._recipes, target)
        validated = recipe.config(config)
        workflow, bound = _prepare(recipe, validated, adapters, seed=0)
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
        self, target: Target, config: Any = None, **options: Unpack[StartOptions]
    ) -> RunHandle:
        """Start a run and return its handle once all of its actors are ready.

        ``options`` are described in :class:`StartOptions` and :class:`RunOptions`. Named
        adapter sets get the run directory (checkpoints go to its ``checkpoints/``) and the
        recipe's options (the model preset, ...).

        Everything is checked before anything is written: if the config, the adapters or a
        stage's ``validate`` fail, or the start-up is interrupted, the run directory is left
        as it was (a new one is removed).

        Raises:
            ConfigError, PortError, RecipeNotFound: as :meth:`dry_run`, before anything starts.
            RunDirectoryError: the run directory holds a run already (resume it instead).
        """
        recipe = _resolve(self._recipes, target)
        validated = recipe.config(config)
        seed = options.get("seed", 0)
        run_id = (
            options.get("run_id")
            or shared_run_id(recipe.name, options.get("run_dir"))
            or f"{recipe.name}-{uuid.uuid4().hex[:8]}"
        )
        directory = self.run_directory(recipe, run_id, options.get("run_dir"))
        writer = writes_run_files()
        if writer and directory is not None and (directory / CONFIG_FILE).exists():
            raise RunDirectoryError(
                f"{directory} holds a run already; resume it (kitchen resume {directory}) "
                "or choose another run directory",
                path=str(directory),
            )
        adapters = options.get("adapters")
        if adapters is None:
            adapters = recipe.adapters
        with removed_on_failure(directory):
            workflow, bound = _prepare(recipe, validated, adapters, seed=seed, run_dir=directory)
            launch = _Launch(
                run_id=run_id,
                recipe=None if isinstance(target, Workflow) else recipe.name,
                workflow=workflow,
                config=validated,
                adapters=bound,
                adapter_set=adapters if isinstance(adapters, str) else None,
                seed=seed,
                run_dir=directory,
                resume=options.get("resume"),
                initial_state=options.get("initial_state"),
            )
            return await self._launch(launch, options)

    async def start_resumed(
        self,
        run_dir: str | os.PathLike[str],
        *,
        settings: Mapping[str, Any] | None = None,
        **options: Unpack[RunOptions],
    ) -> RunHandle:
        """Start the run of ``run_dir`` again where its newest sound checkpoint left it, and
        return its handle (:meth:`resume` runs it to its end).

        The recipe, config, seed, run id and adapter set come from its ``config.json``
        (``adapters`` replaces the set, e.g. for a run started with a mapping of adapters).
        ``settings`` may change how the run executes, not what it computes: the config
        keys in :data:`RESUME_SETTINGS` (``{"parallelism": "ddp"}`` resumes a run trained
        under FSDP in one process; its checkpoints hold the full state).
        The newest checkpoint with a context snapshot that verifies is found among the
        training client's checkpoints; its snapshot is restored and the workflow loads its
        weights and optimizer state first. Damaged checkpoints are passed over, each
        reported by a ``crucible_kitchen.training.checkpoint_damaged`` event, and the replay
        writes new ones in their place. Without any sound checkpoint the run starts again
        from its first step. The logs are appended to.

        Raises:
            ConfigError: ``settings`` names a key outside :data:`RESUME_SETTINGS`, or the
                run's config with them is invalid.
            RunDirectoryError: not a run directory, a run that completed already, a recipe
                this Kitchen does not know, a training client that keeps no checkpoints
                (no ``CHECKPOINT_PAYLOAD`` capability), or a checkpoint of a workflow that
                cannot resume (no ``RestoreCheckpoint`` stage, e.g. async RL).
        """
        directory = Path(run_dir)
        _check_resume_settings(settings or {})
        record = read_run_record(directory)
        check_unfinished(directory, record)
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
        adapters = options.get("adapters")
        if adapters is None:
            if record.adapters is None:
                raise RunDirectoryError(
                    f"{directory}: run {record.run_id!r} was given adapters built by its "
                    "caller, which its directory cannot rebuild; pass adapters= to resume it",
                    path=str(directory),
                )
            adapters = record.adapters
        validated = recipe.config({**record.config, **(settings or {})})
        workflow, bound = _prepare(recipe, validated, adapters, seed=record.seed, run_dir=directory)
        point = await find_resume_point(directory, bound)
        if point.path is not None and not any(
            isinstance(node.stage, RestoreCheckpoint) for node in workflow.stages()
        ):
            raise RunDirectoryError(
                f"{directory}: the {workflow.name} workflow of recipe {record.recipe!r}, "
                f"as configured, cannot resume from a checkpoint (it has no restore "
                f"stage) and would train on from fresh weights; start a new run",
                path=str(directory),
            )
        launch = _Launch(
            run_id=record.run_id,
            recipe=record.recipe,
            workflow=workflow,
            config=validated,
            adapters=bound,
            adapter_set=record.adapters,
            seed=record.seed,
            run_dir=directory,
            resuming=True,
            resume=point.snapshot,
            initial_state=None if point.path is None else {RESUME_FROM: point.path},
            notices=_damage_notices(point),
        )
        return await self._launch(launch, options)

    async def _launch(self, launch: _Launch, options: RunOptions) -> RunHandle:
        """Open the run's files and telemetry, build its supervision tree and start it.

        Under ``torchrun`` only rank 0 writes the run directory and telemetry.
        """
        run_dir = launch.run_dir
        writer = writes_run_files()
        bus = TelemetryBus(launch.run_id)
        provider: SdkTracerProvider | None = None
        try:
            tracer = self._tracer
            if run_dir is not None and writer:
                if launch.resuming:
                    await anyio.to_thread.run_sync(drop_partial_lines, run_dir)
                else:
                    record = RunRecord(
                        run_id=launch.run_id,
                        recipe=launch.recipe,
                        workflow=launch.workflow.name,
                        seed=launch.seed,
                        adapters=launch.adapter_set,
                        config=config_json(launch.config),
                        version=package_version(),
                        created=time.time(),
                    )
                    await anyio.to_thread.run_sync(write_json, run_dir / CONFIG_FILE, record)
                bus.add_handler(JsonlHandler(run_dir / EVENTS_FILE), owned=True)
                bus.add_handler(MetricsJsonlHandler(run_dir / METRICS_FILE), owned=True)
                if tracer is None and self._trace_run_dirs:
                    provider = _run_tracing(run_dir / TRACES_FILE)
                    tracer = None if provider is None else get_tracer(provider)
            telemetry = options.get("telemetry", ())
            specs = (*Kitchen._default_telemetry, *self._telemetry, *telemetry) if writer else ()
            for spec in specs:
                handler = build_handler(spec)
                bus.add_handler(handler, owned=handler is not spec)  # we close what we built
            info = RunInfo(
                run_id=launch.run_id,
                workflow=launch.workflow.name,
                config=launch.config,
                ports=launch.adapters,
                seed=launch.seed,
                telemetry=bus,
                tracer=tracer,
                recipe=launch.recipe,
                run_dir=None if run_dir is None else str(run_dir),
                fault_hook=options.get("fault_hook"),
            )
            resume = launch.resume
            initial = Context(info) if resume is None else Context.restore(info, resume)
            initial.state.update(launch.initial_state or {})
            plan = RunPlan(
                workflow=launch.workflow,
                run=info,
                initial=initial,
                resume_loops={} if resume is None else dict(resume.loops),
                cleanup_timeout=options.get("cleanup_timeout", 60.0),
            )
            for notice in launch.notices:
                bus.emit(notice)
            supervisor = build_run_supervisor(plan)
            await self._supervisor.start_child(
                ChildSpec(
                    launch.run_id, lambda: supervisor, restart="temporary", shutdown="infinity"
                )
            )
        except BaseException:
            bus.close()
            if provider is not None:
                provider.shutdown()
            raise
        handle = RunHandle(
            run_id=launch.run_id,
            plan=plan,
            supervisor=supervisor,
            bus=bus,
            recipe=info.recipe,
            run_dir=run_dir,
            resumed_from=None
            if launch.initial_state is None
            else launch.initial_state.get(RESUME_FROM),
            tracer_provider=provider,
            on_finish=self._retire,
        )
        self._handles[launch.run_id] = handle
        self._unfinished[launch.run_id] = handle
        if self._reapers is not None:
            self._reapers.start_soon(self._reap, handle)
        return handle

    @staticmethod
    async def _reap(handle: RunHandle) -> None:
        """Finish the run when it ends, whether or not anyone waits for it."""
        await handle.result()

    def _retire(self, handle: RunHandle, result: RunResult) -> None:
        """Keep only the result of a finished run (the caller may still hold its handle)."""
        self._finished.append(result)
        del self._unfinished[handle.run_id]

    def runs(self) -> list[RunHandle]:
        """The runs of this Kitchen that have not finished, and those finished whose handles
        are still held somewhere, oldest first."""
        return list(self._handles.values())

    def finished(self) -> list[RunResult]:
        """The results of the newest finished runs (``keep_finished`` of them), oldest first."""
        return list(self._finished)


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


def _prepare(
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


def _damage_notices(point: ResumePoint) -> tuple[TrainingCheckpointDamaged, ...]:
    return tuple(
        TrainingCheckpointDamaged(path=damaged.path, reason=damaged.reason, resume_from=point.path)
        for damaged in point.damaged
    )


def _run_tracing(path: Path) -> SdkTracerProvider | None:
    """A private tracer provider writing the run's spans to ``path``; ``None`` without the
    OpenTelemetry SDK."""
    try:
        return configure_tracing(f"jsonl:{path}")
    except TelemetryError:
        return None


RESUME_SETTINGS: Final = ("parallelism", "threads")
"""The config keys a resumed run may change (:meth:`Kitchen.start_resumed`): how it executes,
not what it computes."""


def _check_resume_settings(settings: Mapping[str, Any]) -> None:
    problems = [
        f"{key}: a resumed run keeps its settings; only {', '.join(RESUME_SETTINGS)} may "
        "change (how it runs, not what it computes)"
        for key in settings
        if key not in RESUME_SETTINGS
    ]
    if problems:
        raise ConfigError(problems, source="resume settings")

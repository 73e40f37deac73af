"""The Kitchen facade: run workflows and recipes, watch them, cancel them.

::

    result = await Kitchen.run("supervised", {"epochs": 2}, adapters="noop")

    async with Kitchen.open(telemetry=["console"]) as kitchen:
        run = await kitchen.start("supervised", config)
        async for event in run.events(): ...
        result = await run.wait()

The Kitchen is a root supervisor; each run is a temporary child: a run supervisor with the
run's stage actors and its workflow actor (see ``crucible_kitchen.workflows._engine``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import msgspec

from crucible_kitchen.errors import (
    PortError,
    RecipeNotFound,
    RunCancelled,
    StageFailed,
    WorkflowError,
)
from crucible_kitchen.ports import PORT_PROTOCOLS, protocol_problems
from crucible_kitchen.recipes import BUILTIN_RECIPES, Recipe
from crucible_kitchen.stages import Context, ContextSnapshot, RunInfo
from crucible_kitchen.supervisors import ChildSpec, Supervisor, open_supervisor
from crucible_kitchen.telemetry import (
    BusStatistics,
    TelemetryBus,
    TelemetryEvent,
    build_handler,
    get_tracer,
)
from crucible_kitchen.workflows import Workflow
from crucible_kitchen.workflows._engine import RunOutcome, RunPlan, build_run_supervisor

if TYPE_CHECKING:
    from crucible_kitchen.stages._context import FaultHook

__all__ = ("Adapters", "DryRun", "Kitchen", "RecipeInfo", "RunHandle", "RunResult")

Target = str | Recipe | Workflow


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


class Adapters(Mapping[str, Any]):
    """The adapters of a run, by port name (``adapters["training_client"]``)."""

    def __init__(self, ports: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        self._ports: dict[str, Any] = {**(ports or {}), **more}

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
        return cls(ports)

    @classmethod
    def named(cls, name: str, *, seed: int = 0) -> Adapters:
        """A built-in adapter set by name: ``"noop"``, or ``"none"`` (no ports bound)."""
        if name == "noop":
            return cls.noop(seed=seed)
        if name == "none":
            return cls()
        raise PortError(f"no adapter set named {name!r}; known: noop, none", port="*")


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
    """A run in progress: its events, its status, waiting for it, cancelling it."""

    def __init__(
        self,
        *,
        run_id: str,
        plan: RunPlan,
        supervisor: Supervisor,
        bus: TelemetryBus,
        recipe: str | None,
    ) -> None:
        self.run_id = run_id
        self.workflow = plan.workflow.name
        self.recipe = recipe
        self._plan = plan
        self._supervisor = supervisor
        self._bus = bus
        self._started = time.perf_counter()
        self._result: RunResult | None = None
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
        """Like :meth:`wait`, but returns the result whatever the status, never raising."""
        if self._result is None:
            reason = await self._supervisor.wait()
            self._bus.close()
            outcome = self._plan.outcome
            if outcome.status == "running":  # the workflow actor died without a word
                outcome.status = "cancelled" if self._cancelled else "failed"
                outcome.error = outcome.error or WorkflowError(
                    f"run {self.run_id!r} ended without finishing its workflow: {reason}"
                )
            self._result = self._build_result()
        return self._result

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


class Kitchen:
    """Runs recipes and workflows on the actor runtime (asyncio or trio)."""

    _default_telemetry: ClassVar[list[Any]] = []

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        telemetry: Sequence[Any] = (),
        tracer_provider: Any = None,
        recipes: Sequence[Recipe] = (),
    ) -> None:
        self._supervisor = supervisor
        self._telemetry = list(telemetry)
        self._tracer = None if tracer_provider is None else get_tracer(tracer_provider)
        self._recipes: dict[str, Recipe] = {r.name: r for r in (*BUILTIN_RECIPES, *recipes)}
        self._runs: dict[str, RunHandle] = {}

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
    ) -> RunResult:
        """Run ``target`` to its end and return the result (see :meth:`RunHandle.wait`).

        ``recipes`` adds recipes that ``target`` may name, besides the built-in ones.
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
    ) -> _KitchenContext:
        """A long-lived Kitchen for several concurrent runs; closing it stops every run."""
        return _KitchenContext(cls, telemetry, tracer_provider, recipes)

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
        target: Target,
        config: Any,
        adapters: str | Mapping[str, Any] | None,
        *,
        seed: int,
    ) -> tuple[Recipe, Any, Workflow, Adapters]:
        """Resolve, validate and check everything a run needs, before anything runs."""
        recipe = _resolve(self._recipes, target)
        validated = recipe.config(config)
        workflow = recipe.build(validated)
        bound = _adapters(adapters, recipe, seed=seed)
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
        return recipe, validated, workflow, bound

    def dry_run(
        self, target: Target, config: Any = None, *, adapters: str | Mapping[str, Any] | None = None
    ) -> DryRun:
        """Validate config, adapters and every stage's ``validate`` without running anything.

        Raises:
            ConfigError: the config is invalid (every problem listed).
            PortError: a required port is unbound or its adapter does not fit its port.
            RecipeNotFound: unknown target name.
        """
        _, validated, workflow, bound = self._prepare(target, config, adapters, seed=0)
        return DryRun(workflow, validated, bound)

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
        max_restarts: int = 3,
        restart_window: float = 5.0,
        cleanup_timeout: float = 60.0,
        initial_state: Mapping[str, Any] | None = None,
        resume: ContextSnapshot | None = None,
    ) -> RunHandle:
        """Start a run and return its handle once all of its actors are ready.

        Raises:
            ConfigError, PortError, RecipeNotFound: as :meth:`dry_run`, before anything starts.

        ``resume`` continues a run from a checkpoint's :class:`ContextSnapshot`: its state,
        metrics and step are restored and the loops skip the iterations already done (see
        ``RunPlan.resume_loops``). Backend state (weights, optimizer) is the stages' business:
        they find the snapshot's state and load the checkpoint it names.
        """
        recipe, validated, workflow, bound = self._prepare(target, config, adapters, seed=seed)
        run_id = run_id or f"{workflow.name}-{uuid.uuid4().hex[:8]}"
        bus = TelemetryBus(run_id)
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
            tracer=self._tracer,
            recipe=None if isinstance(target, Workflow) else recipe.name,
            fault_hook=fault_hook,
        )
        initial = Context(info) if resume is None else Context.restore(info, resume)
        initial.state.update(initial_state or {})
        plan = RunPlan(
            workflow=workflow,
            run=info,
            initial=initial,
            resume_loops={} if resume is None else dict(resume.loops),
            max_restarts=max_restarts,
            restart_window=restart_window,
            cleanup_timeout=cleanup_timeout,
        )
        supervisor = build_run_supervisor(plan)
        await self._supervisor.start_child(
            ChildSpec(run_id, lambda: supervisor, restart="temporary", shutdown="infinity")
        )
        handle = RunHandle(
            run_id=run_id, plan=plan, supervisor=supervisor, bus=bus, recipe=info.recipe
        )
        self._runs[run_id] = handle
        return handle

    def runs(self) -> list[RunHandle]:
        """Every run started by this Kitchen, oldest first."""
        return list(self._runs.values())


class _KitchenContext:
    def __init__(
        self,
        cls: type[Kitchen],
        telemetry: Sequence[Any],
        tracer_provider: Any,
        recipes: Sequence[Recipe],
    ) -> None:
        self._cls = cls
        self._args = (telemetry, tracer_provider, recipes)
        self._root = open_supervisor(name="kitchen", intensity=0)
        self._kitchen: Kitchen | None = None

    async def __aenter__(self) -> Kitchen:
        supervisor = await self._root.__aenter__()
        telemetry, tracer_provider, recipes = self._args
        self._kitchen = self._cls(
            supervisor, telemetry=telemetry, tracer_provider=tracer_provider, recipes=recipes
        )
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


def _adapters(value: str | Mapping[str, Any] | None, recipe: Recipe, *, seed: int) -> Adapters:
    if value is None:
        value = recipe.adapters
    if isinstance(value, str):
        return Adapters.named(value, seed=seed)
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

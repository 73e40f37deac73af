"""The Context: everything a stage sees, and the only state a run carries between stages."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, cast, overload

import msgspec
from typing_extensions import TypeVar

from crucible_kitchen.errors import PortError
from crucible_kitchen.training import derive_seed

if TYPE_CHECKING:
    from crucible_kitchen.ports import (
        BlobStore,
        DatasetStore,
        Evaluator,
        FeedbackClient,
        MetricsStore,
        ModelRegistry,
        Renderer,
        SamplingClient,
        Tokenizer,
        TrainingClient,
    )
    from crucible_kitchen.telemetry import TelemetryBus

__all__ = ("Context", "ContextSnapshot", "RunInfo")

FaultHook = Callable[[str, "Context", str], Awaitable[None]]
"""``await hook(point, ctx, operation)`` at each fault point (see ``stages._faults``)."""

_NO_LOOPS: Final[dict[str, int]] = {}

ConfigT = TypeVar("ConfigT", default=Any)
"""The type of a run's config, as a stage sees it (``Context[MyConfig]``; ``Any`` unsaid)."""


class ContextSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a checkpoint keeps of a context, to resume the run exactly where it was.

    ``state`` holds the values that serialize to JSON (the others, such as datasets and
    futures, are rebuilt by the stages that run again on resume); ``loops`` is the position,
    outermost loop first; ``path`` the stage that took it.
    """

    state: dict[str, Any]
    metrics: dict[str, float]
    step: int
    loops: dict[str, int]
    path: str


class RunInfo:
    """What every context of one run shares: identity, seed, ports, telemetry, tracing."""

    __slots__ = (
        "config",
        "fault_hook",
        "ports",
        "recipe",
        "run_dir",
        "run_id",
        "seed",
        "stop_requested",
        "telemetry",
        "tracer",
        "workflow",
    )

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        config: Any,
        ports: Mapping[str, Any],
        seed: int,
        telemetry: TelemetryBus,
        tracer: Any = None,
        recipe: str | None = None,
        run_dir: str | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.config = config
        self.ports = ports
        self.seed = seed
        self.telemetry = telemetry
        self.tracer = tracer
        self.recipe = recipe
        self.run_dir = run_dir
        self.fault_hook = fault_hook
        self.stop_requested = False
        """Set by ``RunHandle.request_stop()``: finish the current loop iteration (checkpoint
        predicates should say yes), then end the run as cancelled."""


class Context(Generic[ConfigT]):
    """A run's state as one stage execution sees it.

    ``Context`` is generic in its config: annotate ``ctx: Context[MyConfig]`` in a stage to
    have ``ctx.config`` type-checked as ``MyConfig`` (a bare ``Context`` has an ``Any``
    config). The annotation is a promise to the type checker; what is checked at run time is
    the stage's :class:`~crucible_kitchen.stages.StageContract`.

    A stage gets a private copy (:meth:`fork`) and may change it freely: ``state`` (any
    values, replaced rather than mutated in place), ``metrics`` (floats for the result),
    ``step``. The workflow commits the copy only if the stage succeeds, so a crashed attempt
    leaves no trace. Everything else is read-only: ``config``, ports (:meth:`port`), the loop
    position (``loops``, :meth:`item`), deterministic RNG streams (:meth:`rng`) and request ids
    (:meth:`request_id`).
    """

    __slots__ = (
        "_position",
        "_position_of",
        "_request_counts",
        "attempt",
        "items",
        "loops",
        "metrics",
        "path",
        "run",
        "state",
        "step",
    )

    def __init__(
        self,
        run: RunInfo,
        *,
        state: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        loops: dict[str, int] | None = None,
        items: dict[str, Any] | None = None,
        step: int = 0,
        path: str = "",
        attempt: int = 0,
    ) -> None:
        self.run = run
        self.state: dict[str, Any] = {} if state is None else state
        self.metrics: dict[str, float] = {} if metrics is None else metrics
        self.loops: dict[str, int] = _NO_LOOPS if loops is None else loops
        self.items: dict[str, Any] = {} if items is None else items
        self.step = step
        self.path = path
        self.attempt = attempt
        self._request_counts: dict[str, int] | None = None
        self._position_of: dict[str, int] | None = None if self.loops else self.loops
        self._position = ""
        """The loop position as ``request_id`` writes it; ``_position_of`` is the ``loops`` dict
        it was built from (``None``: build it again)."""

    def __repr__(self) -> str:
        return (
            f"<Context run={self.run.run_id} path={self.path!r} step={self.step} "
            f"loops={self.loops} state={sorted(self.state)}>"
        )

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def config(self) -> ConfigT:
        """The run's validated configuration (a pydantic model for recipes)."""
        return cast("ConfigT", self.run.config)

    def fork(self, *, path: str | None = None, attempt: int | None = None) -> Context[ConfigT]:
        """A copy whose ``state`` and ``metrics`` can change independently.

        ``loops`` and ``items`` are shared: the engine replaces them, never changes them in
        place (:meth:`enter_loop`, :meth:`leave_loop`), and stages only read them.
        """
        ctx: Context[ConfigT] = object.__new__(Context)  # one per stage: skip __init__'s defaults
        ctx.run = self.run
        ctx.state = dict(self.state)
        ctx.metrics = dict(self.metrics)
        ctx.loops = self.loops
        ctx.items = self.items
        ctx.step = self.step
        ctx.path = self.path if path is None else path
        ctx.attempt = self.attempt if attempt is None else attempt
        ctx._request_counts = None
        ctx._position_of = self._position_of
        ctx._position = self._position
        return ctx

    def enter_loop(self, name: str, index: int, item: Any) -> Context[ConfigT]:
        """A copy positioned at ``index`` (with ``item``) of the loop ``name``."""
        ctx = self.fork()
        loops = ctx.loops = {**self.loops, name: index}
        ctx.items = {**self.items, name: item}
        if self._position_of is self.loops and name not in self.loops:  # the parent's + this
            head = self._position
            ctx._position = f"{head},{name}={index}" if head else f"{name}={index}"
            ctx._position_of = loops
        return ctx

    def leave_loop(self, name: str) -> None:
        """Forget the position in loop ``name`` (this context only)."""
        if name in self.loops:
            loops = dict(self.loops)
            del loops[name]
            self.loops = loops
        if name in self.items:
            items = dict(self.items)
            del items[name]
            self.items = items

    def item(self, loop: str) -> Any:
        """The current item of the enclosing loop ``loop``."""
        try:
            return self.items[loop]
        except KeyError:
            raise KeyError(
                f"not inside a loop named {loop!r} (loops: {list(self.loops)})"
            ) from None

    @overload
    def port(self, name: Literal["blob_store"]) -> BlobStore: ...
    @overload
    def port(self, name: Literal["dataset_store"]) -> DatasetStore: ...
    @overload
    def port(self, name: Literal["evaluator"]) -> Evaluator: ...
    @overload
    def port(self, name: Literal["feedback_client"]) -> FeedbackClient: ...
    @overload
    def port(self, name: Literal["metrics_store"]) -> MetricsStore: ...
    @overload
    def port(self, name: Literal["model_registry"]) -> ModelRegistry: ...
    @overload
    def port(self, name: Literal["renderer"]) -> Renderer: ...
    @overload
    def port(
        self, name: Literal["sampling_client", "teacher_sampling_client"]
    ) -> SamplingClient: ...
    @overload
    def port(self, name: Literal["tokenizer"]) -> Tokenizer: ...
    @overload
    def port(self, name: Literal["training_client"]) -> TrainingClient: ...
    @overload
    def port(self, name: str) -> Any: ...
    def port(self, name: str) -> Any:
        """The adapter bound to the port ``name`` (e.g. ``"training_client"``).

        Typed by name: ``ctx.port("training_client")`` is a
        :class:`~crucible_kitchen.ports.TrainingClient` to a type checker (each name of
        :data:`~crucible_kitchen.ports.PortName` is its Protocol); a port name of your own is
        ``Any``.

        Raises:
            PortError: no adapter is bound to that port in this run.
        """
        try:
            adapter = self.run.ports[name]
        except KeyError:
            raise PortError(
                f"no adapter for port {name!r} in this run (bound: {sorted(self.run.ports)})",
                port=name,
            ) from None
        hook = self.run.fault_hook
        if hook is not None:
            from crucible_kitchen.stages._faults import FaultProxy

            return FaultProxy(adapter, self, hook)
        return adapter

    def request_id(self, operation: str) -> str:
        """A deterministic id for a mutating port call made by this stage execution.

        It depends on the run, the stage's node path, the loop position, the operation and how
        many times this execution asked for that operation before — never on the attempt — so
        a stage re-executed after a crash sends the same ids and adapters apply each effect once.
        """
        counts = self._request_counts
        if counts is None:
            counts = self._request_counts = {}
        n = counts.get(operation, 0)
        counts[operation] = n + 1
        loops = self.loops
        if self._position_of is not loops:  # made once per loop position, shared by forks
            self._position = ",".join(f"{k}={v}" for k, v in loops.items())
            self._position_of = loops
        return f"{self.run.run_id}/{self.path}[{self._position}]/{operation}#{n}"

    def rng(self, name: str) -> random.Random:
        """A random stream named ``name``, fixed by the run seed, stage path and loop position.

        A re-executed stage draws exactly the same numbers.
        """
        return random.Random(
            derive_seed(self.run.seed, name, self.path, sorted(self.loops.items()))
        )

    def seed_for(self, name: str) -> int:
        """A 64-bit seed for libraries with their own generators (torch, numpy)."""
        return derive_seed(self.run.seed, name, self.path, sorted(self.loops.items()))

    def snapshot(self) -> ContextSnapshot:
        """This context as a :class:`ContextSnapshot` (for a checkpoint's payload)."""
        state = {}
        for key, value in self.state.items():
            try:
                state[key] = msgspec.json.decode(msgspec.json.encode(value))
            except (TypeError, msgspec.EncodeError):
                continue  # not data: rebuilt on resume by the stages that made it
        return ContextSnapshot(
            state=state,
            metrics=dict(self.metrics),
            step=self.step,
            loops=dict(self.loops),
            path=self.path,
        )

    @classmethod
    def restore(cls, run: RunInfo, snapshot: ContextSnapshot) -> Context:
        """A context to resume a run from ``snapshot`` (outside any loop)."""
        return cls(
            run, state=dict(snapshot.state), metrics=dict(snapshot.metrics), step=snapshot.step
        )

    def emit(self, event: Any) -> None:
        """Send a telemetry event for this run."""
        self.run.telemetry.emit(event)

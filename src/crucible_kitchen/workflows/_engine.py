"""How a run executes: the run's supervision tree, the stage actors and the workflow actor.

::

    run supervisor (one_for_one, auto_shutdown=any_significant)
    ├── stages supervisor   one StageActor per main stage (restarted on crash or kill)
    ├── cleanup supervisor  one StageActor per cleanup stage (outlives a failed main tree)
    └── workflow actor      significant: walks the tree and owns the committed Context

The workflow actor sends ``Execute`` to a stage's actor with ``call(timeout=stage timeout)``
and commits the context it gets back. If the stage actor crashes, is killed or overruns its
timeout, its supervisor restarts it and the workflow actor re-sends the same ``Execute``
(attempt + 1) as the stage's :class:`~crucible_kitchen.stages.RetryPolicy` allows; once the
policy says no more, the run fails with :class:`StageFailed`.

One retry budget: the stage's policy. A stage actor only fails while it executes an
``Execute`` that the workflow actor sent and counts, so its restarts are bounded by the
policies' ``max_attempts``; the stage supervisors therefore set no restart intensity of their
own (an intensity window would cap the same retries a second time, by how long each attempt
took).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from crucible_kitchen._json import config_json
from crucible_kitchen.errors import (
    ActorExited,
    ActorNotRunning,
    CallTimeout,
    StageFailed,
    WorkflowError,
)
from crucible_kitchen.stages import current_stage_context, current_stage_kill
from crucible_kitchen.supervisors import (
    Actor,
    ActorRef,
    ChildSpec,
    ExitKind,
    Message,
    Supervisor,
)
from crucible_kitchen.telemetry import (
    ATTR_ATTEMPT,
    ATTR_LOOP_PREFIX,
    StageException,
    StageStart,
    StageStop,
    SupervisorRestart,
    TelemetryBus,
    WorkflowException,
    WorkflowStart,
    WorkflowStop,
    add_event,
    extract_context,
    inject_context,
    record_exception,
    run_attributes,
    stage_attributes,
    start_run_span,
)

from ._dsl import (
    AsyncLoopNode,
    ConditionalNode,
    LoopNode,
    Node,
    ParallelNode,
    StageNode,
    StreamLoopNode,
    Workflow,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from crucible_kitchen.stages import Context, RunInfo

__all__ = ("Execute", "RunOutcome", "RunPlan", "RunStatus", "build_run_supervisor")

logger = logging.getLogger("crucible_kitchen.workflows")

RunStatus = Literal["running", "completed", "failed", "cancelled"]

_MISSING = object()

_STAGE_RESTARTS_UNBOUNDED = sys.maxsize
"""The stage supervisors' restart intensity: the stages' retry policies bound their restarts
(see the module docstring)."""

_AttemptFailure = CallTimeout | ActorExited | ActorNotRunning
_ATTEMPT_FAILURES = (CallTimeout, ActorExited, ActorNotRunning)
"""How an ``Execute`` call to a stage's actor fails: the stage overran, or its actor exited
(the stage's error is the exit reason) or was not running; see ``_failed_attempt``."""


class _StopRequested(Exception):
    """Unwinds the interpreter when a stop was requested at a loop iteration boundary."""


class Execute(Message, gc=False):
    """Run your stage on this context (attempt ``attempt``) and reply with the new context.

    Not tracked by the garbage collector (it cannot be part of a cycle): one is sent per stage
    execution, and fewer tracked allocations mean fewer collections.
    """

    context: Any
    attempt: int
    trace: dict[str, str] | None = None


@dataclass
class RunOutcome:
    """Filled in by the workflow actor as the run ends."""

    status: RunStatus = "running"
    context: Context | None = None
    error: BaseException | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class RunPlan:
    """Everything one run needs, fixed before it starts."""

    workflow: Workflow
    run: RunInfo
    initial: Context
    cleanup_timeout: float = 60.0
    outcome: RunOutcome = field(default_factory=RunOutcome)
    run_supervisor: Supervisor | None = None
    resume_loops: dict[str, int] = field(default_factory=dict)
    """Where a resumed run continues: the loop positions (outermost first) at which its last
    checkpoint was taken. Those loops skip the iterations already done; the innermost one
    continues with the iteration after the checkpoint. Nodes outside those iterations run again,
    so they must be repeatable (loading, shuffling by ``ctx.rng``, rendering)."""


class StageActor(Actor[Execute]):
    """Runs one stage node; a crash here is the stage's crash, and its supervisor restarts it."""

    def __init__(self, node: StageNode, path: str) -> None:
        self.node = node
        self.path = path
        self._carrier: dict[str, str] | None = None
        self._parent: Any = None
        self._attributes: dict[str, Any] | None = None

    def _span(self, run: RunInfo, message: Execute, loops: dict[str, int]) -> Any:
        """Start this execution's span under the run's, parsing the carrier once per run."""
        if message.trace is not self._carrier:
            self._carrier = message.trace
            self._parent = extract_context(message.trace or {})
            self._attributes = None
        if self._attributes is None:
            self._attributes = stage_attributes(
                run_id=run.run_id,
                workflow=run.workflow,
                stage=self.node.name,
                path=self.path,
                attempt=1,
            )
        attributes = {**self._attributes, ATTR_ATTEMPT: message.attempt}
        for name, index in loops.items():
            attributes[ATTR_LOOP_PREFIX + name] = index
        # The attributes are all primitives already: skip start_stage_span's cleaning pass.
        return run.tracer.start_span(self.node.name, context=self._parent, attributes=attributes)

    async def handle_call(self, message: Execute) -> Context:
        node = self.node
        ctx: Context = message.context.fork(path=self.path, attempt=message.attempt)
        run = ctx.run
        loops = ctx.loops  # the fork's own copy
        run.telemetry.emit(
            StageStart(stage=node.name, path=self.path, attempt=message.attempt, loop=loops)
        )
        span = None if run.tracer is None else self._span(run, message, loops)
        started = time.perf_counter()
        try:
            if run.fault_hook is None:
                result = await node.stage.execute(ctx)
            else:  # fault injection reaches the stage through these
                kill_token = current_stage_kill.set(self.ref.kill)
                context_token = current_stage_context.set(ctx)
                try:
                    await run.fault_hook("execute", ctx, node.name)
                    result = await node.stage.execute(ctx)
                finally:
                    current_stage_kill.reset(kill_token)
                    current_stage_context.reset(context_token)
        except BaseException as exc:
            if span is not None:
                record_exception(span, exc)
                span.end()
            raise
        if span is not None:
            span.end()
        if result is not None:
            ctx = result
        run.telemetry.emit(
            StageStop(
                stage=node.name,
                path=self.path,
                attempt=message.attempt,
                loop=loops,
                duration_s=time.perf_counter() - started,
            )
        )
        return ctx


class TelemetrySink(Actor[Any]):
    """Feeds the run's async telemetry handlers; on stop, closes the bus and lets them drain."""

    def __init__(self, bus: TelemetryBus) -> None:
        self.bus = bus

    async def run(self) -> None:
        await self.bus.run_async_handlers()

    def on_stop_request(self) -> bool:
        self.bus.close()
        return True


class WorkflowActor(Actor[Any]):
    """Walks the workflow tree, sending each stage to its actor; owns the committed context."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.committed: Context = plan.initial
        self.refs: dict[str, ActorRef[Execute]] = {}
        self.trace: dict[str, str] | None = None
        self.span: Any = None
        self.resume = dict(plan.resume_loops)
        self.last_errors: dict[str, BaseException | None] = {}

    async def on_start(self) -> None:
        sup = self.plan.run_supervisor
        assert sup is not None
        workflow = self.plan.workflow
        cleanup = workflow.cleanup_stage_names()
        for node in workflow.stages():
            group = "cleanup" if node.name in cleanup else "stages"
            self.refs[node.name] = sup.child_supervisor(group).ref(node.name)

    async def run(self) -> None:
        plan, run = self.plan, self.plan.run
        outcome = plan.outcome
        started = time.perf_counter()
        run.telemetry.emit(
            WorkflowStart(workflow=run.workflow, recipe=run.recipe, config=config_json(run.config))
        )
        span = None
        if run.tracer is not None:
            span = start_run_span(
                run.tracer,
                f"workflow {run.workflow}",
                run_attributes(run_id=run.run_id, workflow=run.workflow, recipe=run.recipe),
            )
            self.trace = inject_context(span)
            self.span = span
        try:
            self.committed = await self._run_nodes(plan.workflow.nodes, plan.initial)
            outcome.status = "completed"
        except anyio.get_cancelled_exc_class():
            outcome.status = "cancelled"
            raise
        except _StopRequested:
            outcome.status = "cancelled"
        except Exception as exc:
            outcome.status = "failed"
            outcome.error = exc
        finally:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + plan.cleanup_timeout
                await self._cleanup()
            outcome.context = self.committed
            cancelled: bool = outcome.status == "cancelled"
            duration = time.perf_counter() - started
            if outcome.error is None:
                run.telemetry.emit(
                    WorkflowStop(
                        workflow=run.workflow,
                        status="cancelled" if cancelled else "completed",
                        duration_s=duration,
                        steps=self.committed.step,
                        metrics=dict(self.committed.metrics),
                    )
                )
            else:
                error = outcome.error
                run.telemetry.emit(
                    WorkflowException(
                        workflow=run.workflow,
                        stage=getattr(error, "stage", None),
                        path=getattr(error, "path", None),
                        attempt=getattr(error, "attempt", 0),
                        error_type=type(error).__name__,
                        error_message=str(error),
                        duration_s=duration,
                    )
                )
            if span is not None:
                if outcome.error is not None:
                    record_exception(span, outcome.error)
                span.end()
            outcome.finished.set()

    async def _cleanup(self) -> None:
        """Run the cleanup nodes on the last committed context; their errors are reported."""
        if not self.plan.workflow.cleanup:
            return
        try:
            self.committed = await self._run_nodes(self.plan.workflow.cleanup, self.committed)
        except Exception as exc:
            outcome = self.plan.outcome
            if outcome.error is None:
                outcome.status = "failed"
                outcome.error = exc
            else:
                logger.error(
                    "run %r: a cleanup stage failed after the run had failed",
                    self.plan.run.run_id,
                    exc_info=exc,
                )

    # ------------------------------------------------------------------ the interpreter
    #
    # ``commit``: whether the nodes run on the run's own line of contexts, so that what their
    # stages return becomes the committed context (what a failed or stopped run reports).
    # Parallel branches and an async loop's producer work on copies, merged or passed on
    # later: they do not commit.

    async def _run_nodes(
        self, nodes: tuple[Node, ...], ctx: Context, *, commit: bool = True
    ) -> Context:
        for node in nodes:
            if isinstance(node, StageNode):  # the common case: its first attempt awaited here
                started = time.perf_counter()
                try:
                    result: Context = await self.refs[node.name].call(
                        Execute(context=ctx, attempt=1, trace=self.trace), timeout=node.timeout
                    )
                except _ATTEMPT_FAILURES as exc:
                    failed: tuple[_AttemptFailure, float] | None = (
                        exc,
                        time.perf_counter() - started,
                    )
                else:
                    failed = None
                if failed is not None:  # retried outside the handler: no exception in flight
                    result = await self._retry(node, ctx, *failed)
                if commit:
                    self.committed = result
                ctx = result
            else:
                ctx = await self._run_node(node, ctx, commit)
        return ctx

    async def _run_node(self, node: Node, ctx: Context, commit: bool) -> Context:
        """A node that holds other nodes (:meth:`_run_nodes` runs stage nodes itself)."""
        match node:
            case LoopNode(name=name, over=over, body=body):
                items = range(over) if isinstance(over, int) else over(ctx)
                start = self._resume_from(name)
                for index, item in enumerate(items):
                    if index < start:
                        continue
                    if ctx.run.stop_requested:
                        raise _StopRequested
                    ctx = await self._run_nodes(
                        body, ctx.enter_loop(name, index, item), commit=commit
                    )
                    ctx.leave_loop(name)
                return ctx
            case ConditionalNode(when=when, then=then, otherwise=otherwise):
                return await self._run_nodes(then if when(ctx) else otherwise, ctx, commit=commit)
            case ParallelNode():
                merged = await self._parallel(node, ctx)
                if commit:
                    self.committed = merged
                return merged
            case AsyncLoopNode():
                return await self._async_loop(node, ctx, commit)
            case StreamLoopNode():
                return await self._stream_loop(node, ctx, commit)
        raise AssertionError(node)

    def _resume_from(self, loop: str) -> int:
        """The first index a loop runs: 0, or where a resumed run left it."""
        if not self.resume or next(iter(self.resume)) != loop:
            return 0
        index = self.resume.pop(loop)
        return index if self.resume else index + 1  # the innermost loop resumes after it

    async def _retry(
        self,
        node: StageNode,
        ctx: Context,
        exc: _AttemptFailure,
        duration: float,
    ) -> Context:
        """After the first attempt of a stage node failed with ``exc``, after ``duration`` s:
        retry it (one ``Execute`` call to the stage's actor per attempt) until an attempt
        succeeds or its retry policy says no more.

        Raises:
            StageFailed: the stage failed for good (after its ``cleanup`` hook ran).
        """
        ref = self.refs[node.name]
        attempt = 1
        while True:
            failed = _failed_attempt(node, ref, exc)
            error = failed.error
            will_retry = failed.retryable and node.retry.retries(error, attempt)
            self._report_failure(node, ctx, attempt, error, will_retry, duration)
            if not will_retry:
                path = self.plan.workflow.paths[node.name]
                await _rollback(node, ctx.fork(path=path, attempt=attempt), error)
                raise StageFailed(
                    f"stage {node.name!r} failed on attempt {attempt}: {_describe(error)}",
                    stage=node.name,
                    path=path,
                    attempt=attempt,
                ) from error
            delay = node.retry.delay(error, attempt)
            if delay > 0:
                await anyio.sleep(delay)
            attempt += 1
            started = time.perf_counter()
            try:
                result: Context = await ref.call(
                    Execute(context=ctx, attempt=attempt, trace=self.trace), timeout=node.timeout
                )
            except _ATTEMPT_FAILURES as caught:
                exc = caught
                duration = time.perf_counter() - started
            else:
                return result

    def _report_failure(
        self,
        node: StageNode,
        ctx: Context,
        attempt: int,
        error: BaseException | None,
        will_retry: bool,
        duration: float,
    ) -> None:
        """The telemetry and span events of a failed attempt."""
        run = ctx.run
        error_type = "Killed" if error is None else type(error).__name__
        run.telemetry.emit(
            StageException(
                stage=node.name,
                path=self.plan.workflow.paths[node.name],
                attempt=attempt,
                loop=dict(ctx.loops),
                duration_s=duration,
                error_type=error_type,
                error_message="the stage's actor was killed" if error is None else str(error),
                will_retry=will_retry,
            )
        )
        if self.span is not None:
            add_event(
                self.span,
                "stage.retry" if will_retry else "stage.failed",
                {
                    "crucible_kitchen.stage": node.name,
                    "crucible_kitchen.attempt": attempt,
                    "exception.type": error_type,
                    "exception.message": "killed" if error is None else str(error),
                },
            )
        run.telemetry.emit(
            SupervisorRestart(
                supervisor=f"{run.run_id}/stages",
                child=node.name,
                attempt=attempt + 1,
                reason="killed" if error is None else f"{error_type}: {error}",
            )
        )

    async def _parallel(self, node: ParallelNode, base: Context) -> Context:
        results: list[Context | None] = [None] * len(node.branches)
        limiter = anyio.CapacityLimiter(node.max_concurrency or len(node.branches))

        async def branch(index: int, nodes: tuple[Node, ...]) -> None:
            async with limiter:
                results[index] = await self._run_nodes(nodes, base.fork(), commit=False)

        await _first_error(
            lambda tg: [tg.start_soon(branch, i, b) for i, b in enumerate(node.branches)]
        )
        finished = [ctx for ctx in results if ctx is not None]
        if node.merge is not None:
            return node.merge(base, finished)
        return _merge(node.name, base, finished)

    async def _async_loop(self, node: AsyncLoopNode, ctx: Context, commit: bool) -> Context:
        send, receive = anyio.create_memory_object_stream[Any](node.buffer)
        latest = [ctx]
        items = range(node.over) if isinstance(node.over, int) else node.over(ctx)

        async def produce() -> None:
            async with send:
                for index, item in enumerate(items):
                    produced = await self._run_nodes(
                        node.produce, latest[0].enter_loop(node.name, index, item), commit=False
                    )
                    await send.send(produced.state.get(node.output))

        consume = partial(
            self._consume, node.name, node.consume, receive, latest, start=0, commit=commit
        )
        await _first_error(lambda tg: [tg.start_soon(produce), tg.start_soon(consume)])
        return latest[0]

    async def _stream_loop(self, node: StreamLoopNode, ctx: Context, commit: bool) -> Context:
        send, receive = anyio.create_memory_object_stream[Any](node.prefetch)
        source = node.source(ctx)
        latest = [ctx]

        async def fetch() -> None:
            async with send:
                if isinstance(source, AsyncIterable):
                    async for item in source:
                        await send.send(item)
                else:
                    for item in source:
                        await send.send(item)

        start = self._resume_from(node.name)
        consume = partial(
            self._consume, node.name, node.body, receive, latest, start=start, commit=commit
        )
        await _first_error(lambda tg: [tg.start_soon(fetch), tg.start_soon(consume)])
        return latest[0]

    async def _consume(
        self,
        loop: str,
        body: tuple[Node, ...],
        receive: MemoryObjectReceiveStream[Any],
        latest: list[Context],
        *,
        start: int,
        commit: bool,
    ) -> None:
        """The consuming side of an async or stream loop: ``body`` on each item, in order.

        Item ``index`` (counted from 0) runs on ``latest[0]`` positioned there, and its result
        becomes ``latest[0]``; items before ``start`` (a resumed run's) are skipped. A stop
        request ends the loop before the next item.
        """
        async with receive:
            index = 0
            async for item in receive:
                if index >= start:
                    if self.plan.run.stop_requested:
                        raise _StopRequested
                    done = await self._run_nodes(
                        body, latest[0].enter_loop(loop, index, item), commit=commit
                    )
                    done.leave_loop(loop)
                    latest[0] = done
                index += 1


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that failed: ``error`` is None when the stage's actor was killed."""

    error: BaseException | None
    retryable: bool = True


def _failed_attempt(node: StageNode, ref: ActorRef[Execute], exc: _AttemptFailure) -> _Failed:
    """Why an ``Execute`` call to a stage's actor failed; an overrun kills the actor."""
    if isinstance(exc, CallTimeout):
        ref.kill()
        return _Failed(TimeoutError(f"stage {node.name!r} took longer than {node.timeout} s"))
    if isinstance(exc, ActorExited):
        reason = exc.reason
        return _Failed(reason.error if reason.kind is ExitKind.CRASH else None)
    return _Failed(exc, retryable=False)  # its supervisor has stopped: nothing can run it again


async def _first_error(start: Callable[[anyio.abc.TaskGroup], object]) -> None:
    """Run tasks in a group; on failure raise the first real error, not an exception group."""
    try:
        async with anyio.create_task_group() as tg:
            start(tg)
    except BaseExceptionGroup as group:
        cancelled = anyio.get_cancelled_exc_class()
        real, _ = group.split(lambda e: not isinstance(e, cancelled | BaseExceptionGroup))
        if real is None:
            raise
        leaf: BaseException = real
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def _merge(name: str, base: Context, branches: list[Context]) -> Context:
    merged = base.fork()
    owners: dict[tuple[str, str], int] = {}
    for index, branch in enumerate(branches):
        for section in ("state", "metrics"):
            before: dict[str, Any] = getattr(base, section)
            after: dict[str, Any] = getattr(branch, section)
            for key, value in after.items():
                if before.get(key, _MISSING) is value:
                    continue
                if (section, key) in owners:
                    raise WorkflowError(
                        f"parallel {name!r}: branches {owners[(section, key)]} and {index} "
                        f"both changed {section}[{key!r}]; pass merge= to combine them"
                    )
                owners[(section, key)] = index
                getattr(merged, section)[key] = value
    merged.step = max([base.step, *(b.step for b in branches)])
    return merged


async def _rollback(node: StageNode, ctx: Context, error: BaseException | None) -> None:
    """The stage's own cleanup hook after it failed for good; its errors are only logged."""
    try:
        await node.stage.cleanup(ctx, error)
    except Exception:
        logger.exception("stage %r: cleanup after failure raised", node.name)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "its actor was killed"
    return f"{type(error).__name__}: {error}"


def build_run_supervisor(plan: RunPlan) -> Supervisor:
    """The supervision tree of one run (see the module docstring)."""
    workflow = plan.workflow
    cleanup = workflow.cleanup_stage_names()

    def stage_group(name: str, nodes: Iterable[StageNode]) -> ChildSpec:
        specs = [
            ChildSpec(node.name, StageActor, (node, workflow.paths[node.name]), mailbox_size=4)
            for node in nodes
        ]
        return ChildSpec(
            name,
            lambda: Supervisor(
                specs, intensity=_STAGE_RESTARTS_UNBOUNDED, name=f"{plan.run.run_id}/{name}"
            ),
            restart="temporary",
            shutdown="infinity",
        )

    stages = workflow.stages()
    children = [
        ChildSpec("telemetry", TelemetrySink, (plan.run.telemetry,), restart="temporary"),
        stage_group("stages", [n for n in stages if n.name not in cleanup]),
        stage_group("cleanup", [n for n in stages if n.name in cleanup]),
        ChildSpec(
            "workflow",
            WorkflowActor,
            (plan,),
            restart="temporary",
            significant=True,
            shutdown=plan.cleanup_timeout + 5.0
            if math.isfinite(plan.cleanup_timeout)
            else "infinity",
        ),
    ]
    supervisor = Supervisor(
        children, auto_shutdown="any_significant", intensity=0, name=f"run {plan.run.run_id}"
    )
    plan.run_supervisor = supervisor
    return supervisor

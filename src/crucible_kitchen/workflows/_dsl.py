"""The workflow DSL: stage, loop, conditional, parallel, async_loop, stream_loop.

A workflow is a tree of immutable nodes built by the functions here, nestable to any depth,
with plain Python callables wherever a decision is made from the context::

    workflow = Workflow(
        "supervised",
        stage("load", LoadDataset),
        loop("epochs", lambda ctx: range(ctx.config.epochs),
             loop("batches", lambda ctx: ctx.state["batches"],
                  stage("train_step", TrainStep)),
             conditional("every_10", lambda ctx: ctx.step % 10 == 0,
                         then=[stage("checkpoint", Checkpoint)])),
        cleanup=[stage("close", CloseSession)],
    )

Everything is checked when the workflow is defined: unknown nodes, duplicate names, missing
callables, bad limits and stage contracts that disagree (a state key declared with two types,
or one that a stage reads and no stage writes) raise :class:`WorkflowDefinitionError` listing
every problem. Before a run starts, :meth:`Workflow.check_config` checks that the run's config
has every field the stages declare they read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from crucible_kitchen.errors import ConfigError, WorkflowDefinitionError
from crucible_kitchen.stages import (
    RetryPolicy,
    Stage,
    StageContract,
    as_stage,
    config_problems,
    contract_of,
    state_problems,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
    from types import EllipsisType

    from crucible_kitchen.stages import Context

__all__ = (
    "AsyncLoopNode",
    "ConditionalNode",
    "LoopNode",
    "Node",
    "ParallelNode",
    "StageNode",
    "StreamLoopNode",
    "Workflow",
    "async_loop",
    "conditional",
    "loop",
    "parallel",
    "stage",
    "stream_loop",
)

Over: TypeAlias = "Callable[[Context], Iterable[Any]] | int"
Merge: TypeAlias = "Callable[[Context, list[Context]], Context]"


@dataclass(frozen=True, slots=True)
class StageNode:
    """Run one stage in its own supervised actor."""

    name: str
    stage: Stage
    timeout: float | None
    retry: RetryPolicy


@dataclass(frozen=True, slots=True)
class LoopNode:
    """Run ``body`` once per item of ``over(ctx)`` (or ``range(over)``), in order."""

    name: str
    over: Callable[[Context], Iterable[Any]] | int
    body: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ConditionalNode:
    """Run ``then`` if ``when(ctx)`` is true, else ``otherwise``."""

    name: str
    when: Callable[[Context], bool]
    then: tuple[Node, ...]
    otherwise: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ParallelNode:
    """Run the branches concurrently, at most ``max_concurrency`` at once, then merge.

    Each branch works on its own copy of the context. If every branch succeeds, their changes
    are merged into the context (``merge(base, branch_contexts)`` if given; otherwise each
    branch's changed ``state`` and ``metrics`` keys are applied, two branches changing the
    same key is an error, and ``step`` becomes the largest branch's). If a branch fails, the
    others are cancelled, nothing is merged and the parallel node fails with that branch's
    error.
    """

    name: str
    branches: tuple[tuple[Node, ...], ...]
    max_concurrency: int | None
    merge: Merge | None


@dataclass(frozen=True, slots=True)
class AsyncLoopNode:
    """Producer/consumer with a bounded buffer (off-policy RL: sample while training).

    For each item of ``over(ctx)`` the producer runs ``produce`` on a copy of the *current*
    context (so it sees the consumer's latest commits) and its ``ctx.state[output]`` goes into a
    buffer of ``buffer`` items; the consumer takes them in order, puts each in
    ``ctx.items[name]`` and runs ``consume`` on the run's context. The producer waits when the
    buffer is full; the loop ends when the producer is done and the buffer is drained. Nothing
    is dropped: a failure on either side cancels the other and fails the node.
    """

    name: str
    over: Callable[[Context], Iterable[Any]] | int
    produce: tuple[Node, ...]
    consume: tuple[Node, ...]
    buffer: int
    output: str


@dataclass(frozen=True, slots=True)
class StreamLoopNode:
    """Run ``body`` per item of a lazy source, fetching up to ``prefetch`` items ahead.

    ``source(ctx)`` returns an iterable or an async iterable; it is read in a background task
    as the body runs, never materialized.
    """

    name: str
    source: Callable[[Context], Iterable[Any] | AsyncIterable[Any]]
    body: tuple[Node, ...]
    prefetch: int


Node: TypeAlias = (
    StageNode | LoopNode | ConditionalNode | ParallelNode | AsyncLoopNode | StreamLoopNode
)
_NODE_TYPES = (StageNode, LoopNode, ConditionalNode, ParallelNode, AsyncLoopNode, StreamLoopNode)
_KINDS: dict[type, str] = {
    StageNode: "stage",
    LoopNode: "loop",
    ConditionalNode: "conditional",
    ParallelNode: "parallel",
    AsyncLoopNode: "async_loop",
    StreamLoopNode: "stream_loop",
}


def stage(
    name: str,
    stage: object,
    *,
    timeout: float | EllipsisType | None = ...,
    retry: RetryPolicy | None = None,
) -> StageNode:
    """A stage node: a Stage instance or subclass, or an ``async def fn(ctx)``.

    ``timeout`` (seconds, or None for no limit) and ``retry`` override the stage's own class
    attributes; left out, the stage's own apply.
    """
    unit = as_stage(stage)
    return StageNode(name, unit, unit.timeout if timeout is ... else timeout, retry or unit.retry)


def loop(name: str, over: Callable[[Context], Iterable[Any]] | int, *body: Node) -> LoopNode:
    """Run ``body`` for each item of ``over(ctx)``; ``ctx.loops[name]`` is the index."""
    return LoopNode(name, over, tuple(body))


def conditional(
    name: str,
    when: Callable[[Context], bool],
    *,
    then: Sequence[Node],
    otherwise: Sequence[Node] = (),
) -> ConditionalNode:
    """Run ``then`` when ``when(ctx)`` holds, else ``otherwise``."""
    return ConditionalNode(name, when, tuple(then), tuple(otherwise))


def parallel(
    name: str,
    *branches: Sequence[Node],
    max_concurrency: int | None = None,
    merge: Merge | None = None,
) -> ParallelNode:
    """Run ``branches`` concurrently (see :class:`ParallelNode` for merge and errors)."""
    return ParallelNode(name, tuple(tuple(b) for b in branches), max_concurrency, merge)


def async_loop(
    name: str,
    over: Callable[[Context], Iterable[Any]] | int,
    *,
    produce: Sequence[Node],
    consume: Sequence[Node],
    buffer: int = 1,
    output: str | None = None,
) -> AsyncLoopNode:
    """A bounded producer/consumer loop (see :class:`AsyncLoopNode`)."""
    return AsyncLoopNode(name, over, tuple(produce), tuple(consume), buffer, output or name)


def stream_loop(
    name: str,
    source: Callable[[Context], Iterable[Any] | AsyncIterable[Any]],
    *body: Node,
    prefetch: int = 2,
) -> StreamLoopNode:
    """Run ``body`` per item of a lazy source with prefetch (see :class:`StreamLoopNode`)."""
    return StreamLoopNode(name, source, tuple(body), prefetch)


def _children(node: Node) -> Iterator[tuple[str, tuple[Node, ...]]]:
    match node:
        case LoopNode(body=body) | StreamLoopNode(body=body):
            yield "body", body
        case ConditionalNode(then=then, otherwise=otherwise):
            yield "then", then
            yield "otherwise", otherwise
        case ParallelNode(branches=branches):
            for i, branch in enumerate(branches):
                yield f"branch {i}", branch
        case AsyncLoopNode(produce=produce, consume=consume):
            yield "produce", produce
            yield "consume", consume
        case _:
            return


def _map_stages(
    nodes: tuple[Node, ...], change: Callable[[StageNode], StageNode]
) -> tuple[Node, ...]:
    """``nodes`` with every stage node in them, at any depth, replaced by ``change(node)``."""
    return tuple(_map_node(node, change) for node in nodes)


def _map_node(node: Node, change: Callable[[StageNode], StageNode]) -> Node:
    match node:
        case StageNode():
            return change(node)
        case LoopNode(body=body) | StreamLoopNode(body=body):
            return replace(node, body=_map_stages(body, change))
        case ConditionalNode(then=then, otherwise=otherwise):
            return replace(
                node, then=_map_stages(then, change), otherwise=_map_stages(otherwise, change)
            )
        case ParallelNode(branches=branches):
            return replace(node, branches=tuple(_map_stages(b, change) for b in branches))
        case AsyncLoopNode(produce=produce, consume=consume):
            return replace(
                node, produce=_map_stages(produce, change), consume=_map_stages(consume, change)
            )
    raise AssertionError(node)


class Workflow:
    """A named tree of nodes, plus cleanup nodes that run however the run ends.

    Raises:
        WorkflowDefinitionError: every problem found in the tree, at once.
    """

    def __init__(
        self,
        name: str,
        *nodes: Node,
        cleanup: Sequence[Node] = (),
        description: str = "",
    ) -> None:
        self.name = name
        self.nodes = tuple(nodes)
        self.cleanup = tuple(cleanup)
        self.description = description
        problems = self._problems()
        if problems:
            raise WorkflowDefinitionError(name, problems)
        self.paths: dict[str, str] = {}
        """Stage name → node path (``epochs/batches/train_step``)."""
        for path, node in self.walk():
            if isinstance(node, StageNode):
                self.paths[node.name] = path

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.stages())} stages>"

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every node with its path, depth first, main nodes then cleanup nodes."""

        def visit(nodes: tuple[Node, ...], prefix: str) -> Iterator[tuple[str, Node]]:
            for node in nodes:
                path = f"{prefix}{node.name}"
                yield path, node
                for _, body in _children(node):
                    yield from visit(body, path + "/")

        yield from visit(self.nodes, "")
        yield from visit(self.cleanup, "cleanup/")

    def stages(self) -> list[StageNode]:
        """Every stage node, in definition order."""
        return [node for _, node in self.walk() if isinstance(node, StageNode)]

    def map_stages(self, change: Callable[[StageNode], StageNode]) -> Workflow:
        """A copy in which every stage node, cleanup nodes included, is ``change(node)``.

        For settings that apply across a workflow, e.g. a recipe's timeouts and retries:
        ``workflow.map_stages(lambda node: dataclasses.replace(node, timeout=60.0))``.
        """
        return Workflow(
            self.name,
            *_map_stages(self.nodes, change),
            cleanup=_map_stages(self.cleanup, change),
            description=self.description,
        )

    def cleanup_stage_names(self) -> set[str]:
        return {
            path.rsplit("/", 1)[-1]
            for path, n in self.walk()
            if isinstance(n, StageNode) and path.startswith("cleanup/")
        }

    def contracts(self) -> list[tuple[str, StageContract]]:
        """Each node's name and the contracts its stage or its functions of the context
        (``over``, ``when``, ``source``, ``merge``) declare, in definition order."""
        found = []
        for _, node in self.walk():
            match node:
                case StageNode(stage=unit):
                    parts: tuple[object, ...] = (unit,)
                case LoopNode(over=over) | AsyncLoopNode(over=over):
                    parts = (over,)
                case ConditionalNode(when=when):
                    parts = (when,)
                case StreamLoopNode(source=source):
                    parts = (source,)
                case ParallelNode(merge=merge):
                    parts = (merge,)
            for part in parts:
                contract = contract_of(part)
                if contract is not None:
                    found.append((node.name, contract))
        return found

    def check_config(self, config: object) -> None:
        """Check that ``config`` has every field the stages' contracts read.

        Raises:
            ConfigError: every missing field, each with the stage that reads it.
        """
        problems = config_problems(self.contracts(), config)
        if problems:
            raise ConfigError(problems, source=f"config for workflow {self.name!r}")

    def required_ports(self) -> set[str]:
        """The ports any of its stages requires."""
        return {port for node in self.stages() for port in node.stage.requires}

    def describe(self) -> str:
        """The tree as indented text."""
        lines = [f"workflow {self.name}" + (f" — {self.description}" if self.description else "")]

        def show(nodes: tuple[Node, ...], depth: int) -> None:
            for node in nodes:
                pad = "  " * depth
                match node:
                    case StageNode(name=name, stage=unit):
                        extra = f"  [{unit.description}]" if unit.description else ""
                        lines.append(f"{pad}stage {name} ({type(unit).__name__}){extra}")
                    case _:
                        lines.append(f"{pad}{_KINDS[type(node)]} {node.name}")
                        for label, body in _children(node):
                            if not body:
                                continue
                            if len(list(_children(node))) > 1:
                                lines.append(f"{pad}  {label}:")
                                show(body, depth + 2)
                            else:
                                show(body, depth + 1)

        show(self.nodes, 1)
        if self.cleanup:
            lines.append("  cleanup:")
            show(self.cleanup, 2)
        return "\n".join(lines)

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            problems.append("the workflow needs a non-empty name")
        seen: dict[str, str] = {}

        def check(nodes: tuple[Node, ...], where: str) -> None:
            for node in nodes:
                if not isinstance(cast("object", node), _NODE_TYPES):
                    problems.append(
                        f"{where}: {node!r} is not a workflow node (use stage(), "
                        "loop(), conditional(), parallel(), async_loop(), "
                        "stream_loop())"
                    )
                    continue
                path = f"{where}/{node.name}" if where else node.name
                if not isinstance(node.name, str) or not node.name or "/" in node.name:
                    problems.append(f"{path}: a node needs a non-empty name without '/'")
                elif node.name in seen:
                    problems.append(
                        f"{path}: duplicate name {node.name!r} (also at {seen[node.name]})"
                    )
                else:
                    seen[node.name] = path
                self._check_node(node, path, problems)
                for label, body in _children(node):
                    if not body and label not in ("otherwise",):
                        problems.append(f"{path}: {label} is empty")
                    check(body, path)

        check(self.nodes, "")
        check(self.cleanup, "cleanup")
        if not self.nodes:
            problems.append("the workflow has no nodes")
        if not problems:
            complete = all(node.stage.contract is not None for node in self.stages())
            problems.extend(state_problems(self.contracts(), complete=complete))
        return problems

    @staticmethod
    def _check_node(node: Node, path: str, problems: list[str]) -> None:
        match node:
            case StageNode(timeout=timeout, retry=retry):
                if timeout is not None and not timeout > 0:
                    problems.append(f"{path}: timeout must be None or > 0")
                if retry.max_attempts < 1:
                    problems.append(f"{path}: retry.max_attempts must be >= 1")
            case LoopNode(over=over) | AsyncLoopNode(over=over):
                if not (callable(over) or (isinstance(over, int) and over >= 0)):
                    problems.append(f"{path}: over must be a callable or a count >= 0")
            case ConditionalNode(when=when):
                if not callable(cast("object", when)):
                    problems.append(f"{path}: when must be callable")
            case StreamLoopNode(source=source, prefetch=prefetch):
                if not callable(cast("object", source)):
                    problems.append(f"{path}: source must be callable")
                if prefetch < 1:
                    problems.append(f"{path}: prefetch must be >= 1")
            case ParallelNode(max_concurrency=limit, merge=merge):
                if limit is not None and limit < 1:
                    problems.append(f"{path}: max_concurrency must be None or >= 1")
                if merge is not None and not callable(cast("object", merge)):
                    problems.append(f"{path}: merge must be callable")
        if isinstance(node, AsyncLoopNode) and node.buffer < 1:
            problems.append(f"{path}: buffer must be >= 1")

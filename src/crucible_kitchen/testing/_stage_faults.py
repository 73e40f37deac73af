"""Kill stage actors at chosen points of a run, or at random ones (chaos), reproducibly.

Pass a killer as the run's fault hook::

    killer = StageKiller(KillPoint("optim_step", "awaiting", execution=3))
    run = await kitchen.start("supervised", config, fault_hook=killer)
    result = await run.wait()
    assert killer.kills  # it fired, and the run still finished

The points are those of :mod:`crucible_kitchen.stages._faults`: ``"execute"`` (a stage
execution begins), ``"before_call"`` (a port call is about to be made), ``"after_submit"`` (the
port call returned its future: the backend has the request), ``"awaiting"`` (a future is being
awaited). A kill there is the real thing: the stage's actor is killed through the runtime, its
supervisor restarts it, and the workflow re-sends the stage.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import anyio.lowlevel

from crucible_kitchen.stages import current_stage_kill

if TYPE_CHECKING:
    from crucible_kitchen.stages import Context

__all__ = ("POINTS", "ChaosMonkey", "FaultTrace", "Kill", "KillPoint", "StageKiller")

Point = Literal["execute", "before_call", "after_submit", "awaiting"]
POINTS: tuple[Point, ...] = get_args(Point)


@dataclass(frozen=True, slots=True)
class KillPoint:
    """Kill ``stage`` the ``execution``-th time it reaches ``point`` (optionally only at port
    method ``operation``)."""

    stage: str
    point: Point
    execution: int = 1
    operation: str | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """A kill that happened: where, and on which attempt of the stage."""

    stage: str
    point: Point
    operation: str
    attempt: int
    loops: tuple[tuple[str, int], ...]


def _stage_of(ctx: Context) -> str:
    return ctx.path.rsplit("/", 1)[-1]


async def _kill_current_stage() -> None:
    kill = current_stage_kill.get()
    if kill is None:
        raise RuntimeError("a fault hook fired outside a stage execution")
    kill()
    await anyio.lowlevel.checkpoint()  # the kill is a cancellation: it lands here


class FaultTrace:
    """A fault hook that only records which (stage, point, operation) a run reaches."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, Point, str]] = Counter()

    async def __call__(self, point: str, ctx: Context, operation: str) -> None:
        self.seen[(_stage_of(ctx), point, operation)] += 1  # type: ignore[index]


class StageKiller:
    """A fault hook that kills stage actors at the given :class:`KillPoint`\\ s."""

    def __init__(self, *points: KillPoint) -> None:
        self.points = points
        self.kills: list[Kill] = []
        self._reached: Counter[KillPoint] = Counter()

    async def __call__(self, point: str, ctx: Context, operation: str) -> None:
        stage = _stage_of(ctx)
        fire: KillPoint | None = None
        for kill_point in self.points:  # count every matching point, even when one fires
            if (kill_point.stage, kill_point.point) != (stage, point):
                continue
            if kill_point.operation not in (None, operation):
                continue
            self._reached[kill_point] += 1
            if self._reached[kill_point] == kill_point.execution and fire is None:
                fire = kill_point
        if fire is not None:
            self.kills.append(
                Kill(stage, fire.point, operation, ctx.attempt, tuple(ctx.loops.items()))
            )
            await _kill_current_stage()


class ChaosMonkey:
    """Kills stages at random points with probability ``rate``, reproducibly from ``seed``.

    ``max_kills`` bounds the total, ``max_kills_per_execution`` the kills of one stage at one
    loop position (keep it below the stage's retry attempts, or the run fails, as it should);
    ``stages`` limits it to some stages. A given seed and run give the same kills every time,
    because the order of fault points in a run is fixed.
    """

    def __init__(
        self,
        seed: int,
        *,
        rate: float = 0.05,
        max_kills: int | None = None,
        max_kills_per_execution: int = 1,
        stages: set[str] | None = None,
        points: tuple[Point, ...] = POINTS,
    ) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.max_kills = max_kills
        self.max_kills_per_execution = max_kills_per_execution
        self.stages = stages
        self._per_execution: Counter[tuple[str, tuple[tuple[str, int], ...]]] = Counter()
        self.points = points
        self.kills: list[Kill] = []

    async def __call__(self, point: str, ctx: Context, operation: str) -> None:
        stage = _stage_of(ctx)
        if point not in self.points or (self.stages is not None and stage not in self.stages):
            return
        if self.max_kills is not None and len(self.kills) >= self.max_kills:
            return
        execution = (stage, tuple(ctx.loops.items()))
        if self._per_execution[execution] >= self.max_kills_per_execution:
            return
        if self.rng.random() < self.rate:
            self._per_execution[execution] += 1
            self.kills.append(Kill(stage, point, operation, ctx.attempt, tuple(ctx.loops.items())))
            await _kill_current_stage()

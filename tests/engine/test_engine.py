"""The engine: every DSL construct for real, commits, retries, timeouts, cleanup, cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from crucible_kitchen.errors import (
    ConfigError,
    PermanentBackendError,
    PortError,
    RecipeNotFound,
    RunCancelled,
    StageFailed,
    WorkflowError,
)
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.recipes import Recipe
from crucible_kitchen.stages import Context, RetryPolicy, Stage
from crucible_kitchen.telemetry import StageException, StageStart, TelemetryEvent
from crucible_kitchen.testing import KillPoint, StageKiller
from crucible_kitchen.workflows import (
    Workflow,
    async_loop,
    conditional,
    loop,
    parallel,
    stage,
    stream_loop,
)

pytestmark = pytest.mark.anyio


def events_of(collected: list[TelemetryEvent], kind: type[Any]) -> list[Any]:
    return [e for e in collected if isinstance(e, kind)]


async def add_item(ctx: Context) -> None:
    """Add the current batch to the total."""
    ctx.step += 1
    ctx.metrics["total"] = ctx.metrics.get("total", 0.0) + ctx.item("batches")


async def test_loops_and_conditionals_run_in_order_and_commit() -> None:
    seen: list[tuple[int, int]] = []

    async def record(ctx: Context) -> None:
        seen.append((ctx.loops["epochs"], ctx.loops["batches"]))

    async def odd(ctx: Context) -> None:
        ctx.metrics["odd"] = ctx.metrics.get("odd", 0.0) + 1

    wf = Workflow(
        "loops",
        loop(
            "epochs",
            2,
            loop(
                "batches",
                lambda ctx: [10, 20, 30],
                stage("add", add_item),
                stage("record", record),
                conditional("odd?", lambda ctx: ctx.step % 2 == 1, then=[stage("odd", odd)]),
            ),
        ),
    )
    result = await Kitchen.run(wf, adapters={})
    assert result.status == "completed"
    assert (result.steps, result.metrics) == (6, {"total": 120.0, "odd": 3.0})
    assert seen == [(e, b) for e in range(2) for b in range(3)]


async def test_a_failed_attempt_leaves_no_trace_and_is_retried() -> None:
    attempts: list[int] = []

    async def flaky(ctx: Context) -> None:
        ctx.state["scratch"] = ctx.state.get("scratch", 0) + 1
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"flake {ctx.attempt}")

    collected: list[TelemetryEvent] = []
    wf = Workflow("flaky", stage("flaky", flaky))
    result = await Kitchen.run(wf, adapters={}, telemetry=[collected.append])
    assert result.status == "completed"
    assert attempts == [1, 2, 3]
    failures = events_of(collected, StageException)
    assert [(e.attempt, e.will_retry, e.error_message) for e in failures] == [
        (1, True, "flake 1"),
        (2, True, "flake 2"),
    ]
    assert [e.seq for e in collected] == list(range(1, len(collected) + 1))


async def test_a_permanent_error_fails_at_once_naming_stage_and_attempt() -> None:
    async def broken(ctx: Context) -> None:
        raise PermanentBackendError("no such model", port="training_client", operation="forward")

    cleaned: list[str] = []

    async def close(ctx: Context) -> None:
        cleaned.append("closed")

    wf = Workflow(
        "broken", loop("epochs", 1, stage("train", broken)), cleanup=[stage("close", close)]
    )
    with pytest.raises(StageFailed) as caught:
        await Kitchen.run(wf, adapters={})
    error = caught.value
    assert (error.stage, error.path, error.attempt) == ("train", "epochs/train", 1)
    assert isinstance(error.__cause__, PermanentBackendError)
    assert "no such model" in str(error)
    assert cleaned == ["closed"]


async def test_retries_exhausted_fails_with_the_last_error() -> None:
    async def always(ctx: Context) -> None:
        raise ValueError(f"bad {ctx.attempt}")

    wf = Workflow("always", stage("always", always, retry=RetryPolicy(max_attempts=2)))
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(wf, adapters={})
        with pytest.raises(StageFailed, match="attempt 2: ValueError: bad 2"):
            await run.wait()
        result = await run.result()
        assert (result.status, result.failed_stage, result.attempts) == ("failed", "always", 2)


async def test_a_stage_past_its_timeout_is_killed_and_retried() -> None:
    calls: list[int] = []

    async def slow_once(ctx: Context) -> None:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.sleep_forever()

    # The timeout also bounds attempt 2 (a restarted actor and a quick stage): large enough
    # that a stalled process on a loaded machine does not time that one out too.
    wf = Workflow("slow", stage("slow", slow_once, timeout=0.5))
    result = await Kitchen.run(wf, adapters={})
    assert result.status == "completed"
    assert calls == [1, 2]


async def test_a_stage_failing_for_good_runs_its_cleanup_and_the_workflow_cleanup() -> None:
    cleaned: list[bool] = []

    async def doomed(ctx: Context) -> None:
        raise RuntimeError("always crashes")

    async def close(ctx: Context) -> None:
        cleaned.append(True)

    wf = Workflow(
        "doomed",
        stage("doomed", doomed, retry=RetryPolicy(max_attempts=7)),
        cleanup=[stage("close", close)],
    )
    with pytest.raises(StageFailed, match="attempt 7: RuntimeError: always crashes") as caught:
        await Kitchen.run(wf, adapters={})
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert cleaned == [True]


async def _run_killed(kills: int) -> tuple[Any, list[tuple[int, int]], StageKiller]:
    """Three executions of a stage allowed 6 attempts, the first killed on its first
    ``kills`` attempts: the result (or error), the (loop index, attempt) of each execution
    that ran, and the killer."""
    ran: list[tuple[int, int]] = []

    async def fragile(ctx: Context) -> None:
        ran.append((ctx.loops["l"], ctx.attempt))
        ctx.step += 1

    workflow = Workflow(
        "fragile", loop("l", 3, stage("fragile", fragile, retry=RetryPolicy(max_attempts=6)))
    )
    killer = StageKiller(
        *(KillPoint("fragile", "execute", execution=n) for n in range(1, kills + 1))
    )
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(workflow, adapters={}, fault_hook=killer)
        try:
            outcome: Any = await run.wait()
        except StageFailed as error:
            outcome = error
    return outcome, ran, killer


async def test_a_stage_killed_one_time_less_than_its_attempts_succeeds_however_fast() -> None:
    # Five kills in far less than a second: the stage's policy alone decides.
    result, ran, killer = await _run_killed(5)
    assert len(killer.kills) == 5
    assert (result.status, result.steps) == ("completed", 3)
    assert ran == [(0, 6), (1, 1), (2, 1)]


async def test_a_stage_killed_as_often_as_its_attempts_fails_naming_stage_and_attempts() -> None:
    error, ran, killer = await _run_killed(6)
    assert len(killer.kills) == 6
    assert isinstance(error, StageFailed)
    assert (error.stage, error.path, error.attempt) == ("fragile", "l/fragile", 6)
    assert str(error) == "stage 'fragile' failed on attempt 6: its actor was killed"
    assert ran == []


async def test_parallel_branches_really_run_concurrently_and_merge() -> None:
    a_started, b_started = anyio.Event(), anyio.Event()

    async def a(ctx: Context) -> None:
        a_started.set()
        await b_started.wait()  # deadlocks unless b runs at the same time
        ctx.state["a"] = "A"

    async def b(ctx: Context) -> None:
        b_started.set()
        await a_started.wait()
        ctx.state["b"] = "B"
        ctx.metrics["b"] = 1.0

    async def check(ctx: Context) -> None:
        assert (ctx.state["a"], ctx.state["b"]) == ("A", "B")

    wf = Workflow("par", parallel("both", [stage("a", a)], [stage("b", b)]), stage("check", check))
    result = await Kitchen.run(wf, adapters={})
    assert result.metrics == {"b": 1.0}


async def test_parallel_respects_max_concurrency() -> None:
    running = 0
    peak = 0

    def branch(name: str) -> list[Any]:
        async def work(ctx: Context) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.lowlevel.checkpoint()
            running -= 1

        return [stage(name, work)]

    wf = Workflow("limited", parallel("p", *(branch(f"w{i}") for i in range(5)), max_concurrency=2))
    await Kitchen.run(wf, adapters={})
    assert peak == 2


async def test_parallel_conflicting_writes_and_failing_branches() -> None:
    async def x1(ctx: Context) -> None:
        ctx.state["x"] = 1

    async def x2(ctx: Context) -> None:
        ctx.state["x"] = 2

    with pytest.raises(WorkflowError, match="both changed state"):
        await Kitchen.run(
            Workflow("conflict", parallel("p", [stage("x1", x1)], [stage("x2", x2)])), adapters={}
        )

    cancelled: list[bool] = []

    async def waits(ctx: Context) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)

    async def fails(ctx: Context) -> None:
        raise PermanentBackendError("nope", port="p", operation="o")

    wf = Workflow("one_fails", parallel("p", [stage("waits", waits)], [stage("fails", fails)]))
    with pytest.raises(StageFailed) as caught:
        await Kitchen.run(wf, adapters={})
    assert caught.value.stage == "fails"
    assert cancelled == [True]


async def test_parallel_with_a_custom_merge() -> None:
    async def one(ctx: Context) -> None:
        ctx.state["x"] = 1

    async def two(ctx: Context) -> None:
        ctx.state["x"] = 2

    def add(base: Context, branches: list[Context]) -> Context:
        merged = base.fork()
        merged.metrics["x"] = float(sum(b.state["x"] for b in branches))
        return merged

    wf = Workflow("merge", parallel("p", [stage("one", one)], [stage("two", two)], merge=add))
    assert (await Kitchen.run(wf, adapters={})).metrics == {"x": 3.0}


async def test_async_loop_producer_sees_fresh_context_within_a_bounded_buffer() -> None:
    produced: list[tuple[int, float]] = []

    async def produce(ctx: Context) -> None:
        produced.append((ctx.item("rl"), ctx.metrics.get("learned", 0.0)))
        ctx.state["rl"] = ctx.item("rl") * 10

    async def consume(ctx: Context) -> None:
        ctx.metrics["learned"] = ctx.metrics.get("learned", 0.0) + ctx.item("rl")

    wf = Workflow(
        "rl",
        async_loop(
            "rl",
            6,
            produce=[stage("produce", produce)],
            consume=[stage("consume", consume)],
            buffer=1,
        ),
    )
    result = await Kitchen.run(wf, adapters={})
    assert result.metrics == {"learned": 150.0}  # every item consumed, none dropped
    # The producer is at most buffer + 2 items ahead of what has been learned: the buffered
    # one, the one being consumed, and the one it is producing.
    for index, learned in produced:
        consumed_items = round(learned / 10)
        assert consumed_items >= index - 3
    assert produced[-1][1] > 0  # it saw the consumer's commits
    assert max(index - round(learned / 10) for index, learned in produced) >= 1  # it ran ahead


async def test_stream_loop_is_lazy_with_prefetch() -> None:
    pulled: list[int] = []
    eaten: list[int] = []

    def source(ctx: Context) -> Any:
        for i in range(10):
            pulled.append(i)
            yield i

    async def eat(ctx: Context) -> None:
        eaten.append(ctx.item("s"))
        assert len(pulled) <= len(eaten) + 3  # prefetch 2, plus the one in hand

    async def aiter_source(ctx: Context) -> Any:
        for i in range(3):
            yield i

    async def eat_async(ctx: Context) -> None:
        ctx.metrics["n"] = ctx.metrics.get("n", 0.0) + 1

    wf = Workflow(
        "stream",
        stream_loop("s", source, stage("eat", eat), prefetch=2),
        stream_loop("a", aiter_source, stage("eat_async", eat_async)),
    )
    result = await Kitchen.run(wf, adapters={})
    assert eaten == list(range(10))
    assert result.metrics == {"n": 3.0}


async def test_request_ids_and_rng_are_the_same_on_re_execution() -> None:
    seen: list[tuple[str, str, float]] = []

    async def draw(ctx: Context) -> None:
        seen.append((ctx.request_id("op"), ctx.request_id("op"), ctx.rng("x").random()))
        if ctx.attempt == 1:
            raise RuntimeError("again")

    wf = Workflow("ids", loop("epochs", 1, stage("draw", draw)))
    await Kitchen.run(wf, adapters={}, run_id="r1", seed=7)
    first, second = seen
    assert first == second
    assert first[0] == "r1/epochs/draw[epochs=0]/op#0"
    assert first[1].endswith("op#1")


async def test_cancel_is_graceful_and_runs_cleanup() -> None:
    started = anyio.Event()
    cleaned: list[bool] = []

    async def forever(ctx: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    async def close(ctx: Context) -> None:
        cleaned.append(True)

    wf = Workflow("forever", stage("forever", forever), cleanup=[stage("close", close)])
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(wf, adapters={})
        await started.wait()
        assert run.status == "running"
        result = await run.cancel()
        assert result.status == "cancelled"
        with pytest.raises(RunCancelled):
            await run.wait()
    assert cleaned == [True]


async def test_closing_the_kitchen_stops_concurrent_runs_cleanly() -> None:
    gate = anyio.Event()

    async def wait_gate(ctx: Context) -> None:
        await gate.wait()

    wf = Workflow("gated", stage("gate", wait_gate))
    async with Kitchen.open() as kitchen:
        runs = [await kitchen.start(wf, adapters={}) for _ in range(3)]
        done = await kitchen.start(Workflow("quick", stage("q", add_item_free)), adapters={})
        assert (await done.wait()).status == "completed"
    assert [r.status for r in runs] == ["cancelled"] * 3


async def add_item_free(ctx: Context) -> None:
    ctx.step += 1


async def test_events_stream_every_event_of_the_run_in_order() -> None:
    wf = Workflow("ev", loop("epochs", 2, stage("tick", add_item_free)))
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(wf, adapters={})
        names = [type(e).__name__ async for e in run.events()]
        await run.wait()
    assert names == [
        "WorkflowStart",
        "StageStart",
        "StageStop",
        "StageStart",
        "StageStop",
        "WorkflowStop",
    ]


class NeedsTrainer(Stage):
    """Needs a training client."""

    requires = ("training_client",)

    async def execute(self, ctx: Context) -> None:
        return None


async def test_required_ports_and_config_are_checked_before_the_run() -> None:
    wf = Workflow("needs", stage("needs", NeedsTrainer))
    async with Kitchen.open() as kitchen:
        with pytest.raises(PortError, match="'training_client' has no adapter"):
            await kitchen.start(wf, adapters={})
        with pytest.raises(PortError, match="training_client"):
            kitchen.dry_run(wf, adapters={"training_client": object()})
        dry = kitchen.dry_run(wf, adapters=Adapters.noop())
        assert "stage needs (NeedsTrainer)" in dry.describe()
        with pytest.raises(RecipeNotFound):
            await kitchen.start("no-such-recipe")

    import pydantic

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        epochs: int = pydantic.Field(1, ge=1)
        lr: float = pydantic.Field(1e-4, gt=0)

    recipe = Recipe("strict", "a strict recipe", wf, Config)
    with pytest.raises(ConfigError) as caught:
        await Kitchen.run(recipe, {"epochs": 0, "lr": -1, "typo": 3}, adapters=Adapters.noop())
    assert len(caught.value.problems) == 3
    assert any(p.startswith("epochs:") for p in caught.value.problems)
    assert any(p.startswith("typo:") for p in caught.value.problems)


async def test_collects_stage_starts_with_loop_indices() -> None:
    collected: list[TelemetryEvent] = []
    wf = Workflow("idx", loop("epochs", 2, stage("tick", add_item_free)))
    await Kitchen.run(wf, adapters={}, telemetry=[collected.append])
    starts = events_of(collected, StageStart)
    assert [s.loop for s in starts] == [{"epochs": 0}, {"epochs": 1}]
    assert [s.path for s in starts] == ["epochs/tick", "epochs/tick"]


async def test_request_stop_finishes_the_iteration_then_runs_cleanup() -> None:
    seen: list[int] = []
    cleaned: list[bool] = []
    handle_box: list[Any] = []

    async def work(ctx: Context) -> None:
        seen.append(ctx.loops["i"])
        ctx.step += 1
        if ctx.loops["i"] == 2:
            handle_box[0].request_stop()

    async def save_if_stopping(ctx: Context) -> None:
        ctx.metrics["saved_at"] = float(ctx.step)

    async def close(ctx: Context) -> None:
        cleaned.append(True)

    wf = Workflow(
        "stoppable",
        loop(
            "i",
            10,
            stage("work", work),
            conditional(
                "stopping",
                lambda ctx: ctx.run.stop_requested,
                then=[stage("save", save_if_stopping)],
            ),
        ),
        cleanup=[stage("close", close)],
    )
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(wf, adapters={})
        handle_box.append(run)
        result = await run.result()
    assert seen == [0, 1, 2]
    assert (result.status, result.steps, result.metrics) == ("cancelled", 3, {"saved_at": 3.0})
    assert cleaned == [True]


async def test_an_async_loop_producer_finishing_last_does_not_roll_the_run_back() -> None:
    # The producer works on copies of the consumer's context; a copy it finishes after the
    # consumer's latest commit is not the run's context (a stopped run reported its step).
    handle_box: list[Any] = []

    async def produce(ctx: Context) -> None:
        if ctx.item("l") == 2:
            await anyio.wait_all_tasks_blocked()  # the consumer has committed item 1
        ctx.state["out"] = ctx.item("l")

    async def consume(ctx: Context) -> None:
        ctx.step += 1
        if ctx.step == 2:
            handle_box[0].request_stop()

    body = async_loop(
        "l", 10, produce=[stage("p", produce)], consume=[stage("c", consume)], output="out"
    )
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(Workflow("late_producer", body), adapters={})
        handle_box.append(run)
        result = await run.result()
    assert (result.status, result.steps) == ("cancelled", 2)


@pytest.mark.parametrize("kind", ["async_loop", "stream_loop"])
async def test_request_stop_also_ends_async_and_stream_loops_after_the_iteration(
    kind: str,
) -> None:
    handle_box: list[Any] = []
    consumed: list[int] = []

    async def produce(ctx: Context) -> None:
        ctx.state["out"] = ctx.item("l")

    async def consume(ctx: Context) -> None:
        consumed.append(ctx.item("l"))
        ctx.step += 1
        if len(consumed) == 2:
            handle_box[0].request_stop()

    body: Any
    if kind == "async_loop":
        body = async_loop(
            "l", 10, produce=[stage("p", produce)], consume=[stage("c", consume)], output="out"
        )
    else:
        body = stream_loop("l", lambda ctx: iter(range(10)), stage("c", consume))
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(Workflow("stoppable", body), adapters={})
        handle_box.append(run)
        result = await run.result()
    assert consumed == [0, 1]
    assert (result.status, result.steps) == ("cancelled", 2)

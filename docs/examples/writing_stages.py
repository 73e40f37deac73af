"""The example of docs/guides/writing-stages.md: stages, pipelined futures, fault injection.

Run it with ``python docs/examples/writing_stages.py``: ``main`` runs on asyncio, then on trio.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

import anyio

from crucible_kitchen import Adapters, Context, Kitchen, RetryPolicy, RunResult, Stage, Workflow
from crucible_kitchen.adapters.noop import FaultPlan, Hang
from crucible_kitchen.errors import (
    ConfigError,
    PermanentBackendError,
    StageFailed,
    WorkflowDefinitionError,
)
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData
from crucible_kitchen.stages import StageContract, StateKey
from crucible_kitchen.telemetry import StageException, TelemetryEvent
from crucible_kitchen.testing import ChaosMonkey, KillPoint, StageKiller
from crucible_kitchen.workflows import loop, stage

if TYPE_CHECKING:
    from collections.abc import Callable

TEXTS = tuple(f"example number {i} of a tiny corpus" for i in range(8))

BATCHES = StateKey("batches", tuple, rebuilt_on_resume=True)  # the loader makes it again
IN_FLIGHT = StateKey("in_flight", tuple)
ARTIFACTS = StateKey("artifacts", dict)


def next_token_datum(tokens: list[int]) -> Datum:
    targets = tokens[1:]
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(targets)),
            "weights": TensorData(dtype="float32", data=(1.0,) * len(targets)),
        },
    )


class LoadBatches(Stage):
    """Tokenize the corpus and shuffle it into batches, reproducibly."""

    requires = ("training_client",)
    contract = StageContract(config=("batch_size",), writes=(BATCHES,))

    async def execute(self, ctx: Context) -> None:
        tokenizer = ctx.port("training_client").get_tokenizer()
        data = [next_token_datum(tokenizer.encode(text)) for text in TEXTS]
        ctx.rng("shuffle").shuffle(data)  # same seed, same order, on every attempt
        size = ctx.config.batch_size
        ctx.state["batches"] = tuple(tuple(data[i : i + size]) for i in range(0, len(data), size))


class SubmitStep(Stage):
    """Submit one training step; do not wait for it."""

    requires = ("training_client",)
    contract = StageContract(config=("learning_rate",), may_read=(IN_FLIGHT,), writes=(IN_FLIGHT,))
    timeout = 30.0
    retry = RetryPolicy(max_attempts=5)

    def validate(self, ctx: Context) -> None:
        if not ctx.config.learning_rate > 0:
            raise ConfigError([f"learning_rate: must be > 0 (got {ctx.config.learning_rate})"])

    async def execute(self, ctx: Context) -> None:
        client = ctx.port("training_client")
        batch = ctx.item("batches")
        backward = await client.forward_backward(
            batch, "cross_entropy", request_id=ctx.request_id("forward_backward")
        )
        step = await client.optim_step(
            AdamParams(learning_rate=ctx.config.learning_rate),
            request_id=ctx.request_id("optim_step"),
        )
        tokens = sum(datum.model_input.length for datum in batch)
        # Replace the tuple; never append to the one in the context.
        ctx.state["in_flight"] = (*ctx.state.get("in_flight", ()), (backward, step, tokens))


async def finish(ctx: Context, keep: int) -> None:
    """Await the in-flight steps, oldest first, until only ``keep`` remain."""
    in_flight = ctx.state.get("in_flight", ())
    done, still = in_flight[: len(in_flight) - keep], in_flight[len(in_flight) - keep :]
    for backward, step, tokens in done:
        output = await backward.result()
        await step.result()
        ctx.step += 1
        ctx.metrics["loss"] = output.metrics["loss:sum"] / tokens
    ctx.state["in_flight"] = still


class CollectStep(Stage):
    """Await every step but the newest: one step stays in flight (pipelining)."""

    contract = StageContract(may_read=(IN_FLIGHT,), writes=(IN_FLIGHT,))

    async def execute(self, ctx: Context) -> None:
        await finish(ctx, keep=1)


class Drain(Stage):
    """Await the last in-flight step."""

    contract = StageContract(may_read=(IN_FLIGHT,), writes=(IN_FLIGHT,))

    async def execute(self, ctx: Context) -> None:
        await finish(ctx, keep=0)


class SaveState(Stage):
    """Save the weights; a hung save is killed after `timeout` and tried again."""

    requires = ("training_client",)
    contract = StageContract(may_read=(ARTIFACTS,), writes=(ARTIFACTS,))
    timeout = 0.25
    retry = RetryPolicy(max_attempts=3)

    async def execute(self, ctx: Context) -> None:
        client = ctx.port("training_client")
        saving = await client.save_state("final", request_id=ctx.request_id("save_state"))
        saved = await saving.result()
        ctx.state["artifacts"] = {**ctx.state.get("artifacts", {}), "final": saved.path}


training = Workflow(
    "pipelined",
    stage("load", LoadBatches),
    loop(
        "epochs",
        lambda ctx: range(ctx.config.epochs),
        loop(
            "batches",
            lambda ctx: ctx.state["batches"],
            stage("submit", SubmitStep),
            stage("collect", CollectStep),
        ),
    ),
    stage("drain", Drain),
    stage("save", SaveState),
)

CONFIG = {"epochs": 2, "batch_size": 2, "learning_rate": 1e-3}


async def train(
    adapters: Adapters, *, fault_hook: StageKiller | ChaosMonkey | None = None
) -> tuple[RunResult, list[TelemetryEvent]]:
    events: list[TelemetryEvent] = []
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            training,
            CONFIG,
            adapters=adapters,
            run_id="demo",  # request ids start with the run id: fix it to compare two runs
            telemetry=[events.append],
            fault_hook=fault_hook,
        )
        result = await run.wait()
    return result, events


class Publish(Stage):
    """Publish the model; undo the half-done upload if publishing fails for good."""

    async def execute(self, ctx: Context) -> None:
        ctx.state["uploaded"] = "mem://models/demo"
        raise PermanentBackendError(
            "registry refused the model", port="model_registry", operation="register"
        )

    async def cleanup(self, ctx: Context, error: BaseException | None) -> None:
        rolled_back.append(repr(error))


rolled_back: list[str] = []


def refusal(check: Callable[[], object]) -> list[str]:
    """The problems listed by the ``ConfigError`` or ``WorkflowDefinitionError`` of ``check``."""
    try:
        check()
    except (ConfigError, WorkflowDefinitionError) as exc:
        return exc.problems
    raise AssertionError("it was not refused")


class NeedsBatches(Stage):
    """Count the batches (and forget to load them)."""

    contract = StageContract(reads=(BATCHES,))

    async def execute(self, ctx: Context) -> None:
        ctx.metrics["batches"] = float(len(ctx.state["batches"]))


async def main() -> None:
    rolled_back.clear()

    # An undisturbed run: the reference.
    calm = Adapters.noop(seed=0)
    reference, _ = await train(calm)
    assert reference.steps == 8  # 2 epochs x 4 batches
    assert reference.artifacts == {"final": "noop://noop-0/weights/final"}
    calm_client: Any = calm["training_client"]

    # The same run with a stage actor killed at each kind of fault point.
    killer = StageKiller(
        KillPoint("submit", "execute", execution=2),
        KillPoint("submit", "before_call", execution=3, operation="optim_step"),
        KillPoint("submit", "after_submit", execution=5, operation="forward_backward"),
        KillPoint("collect", "execute", execution=4),
        KillPoint("collect", "awaiting", execution=6),
        KillPoint("save", "awaiting", operation="save_state"),
    )
    shaken = Adapters.noop(seed=0)
    result, events = await train(shaken, fault_hook=killer)
    shaken_client: Any = shaken["training_client"]

    assert len(killer.kills) == 6  # every kill point fired ...
    killed = [e for e in events if isinstance(e, StageException)]
    assert [e.error_type for e in killed] == ["Killed"] * 6
    assert all(e.will_retry for e in killed)
    # ... and the run still ended exactly as the undisturbed one:
    assert (result.metrics, result.steps, result.artifacts) == (
        reference.metrics,
        reference.steps,
        reference.artifacts,
    )
    assert shaken_client.state == calm_client.state  # identical weights and optimizer state
    assert shaken_client.counters.log == calm_client.counters.log  # each effect applied once
    assert shaken_client.counters.deduplicated["forward_backward"] >= 1  # re-sent, not re-applied
    first_method, first_id = calm_client.counters.log[0]
    assert (first_method, first_id) == (
        "forward_backward",
        "demo/epochs/batches/submit[epochs=0,batches=0]/forward_backward#0",
    )

    # Random kills, reproducible from a seed: the same result again.
    monkey = ChaosMonkey(seed=3, rate=0.2, max_kills=6)
    chaotic = Adapters.noop(seed=0)
    result, _ = await train(chaotic, fault_hook=monkey)
    assert monkey.kills
    assert result.metrics == reference.metrics
    assert chaotic["training_client"].state == calm_client.state

    # A save that hangs: the stage times out, its actor is killed, the retry re-sends it.
    faults = FaultPlan().inject(Hang(), method="save_state", calls=1)
    hung = Adapters.noop(seed=0, faults=faults)
    result, events = await train(hung)
    timeouts = [e for e in events if isinstance(e, StageException)]
    assert [(e.stage, e.error_type) for e in timeouts] == [("save", "TimeoutError")]
    assert result.artifacts == reference.artifacts
    assert hung["training_client"].state == calm_client.state

    async with Kitchen.open() as kitchen:
        # validate() refuses a bad config before anything runs (dry_run calls it).
        bad = {**CONFIG, "learning_rate": 0.0}
        assert refusal(lambda: kitchen.dry_run(training, bad, adapters=Adapters.noop())) == [
            "learning_rate: must be > 0 (got 0.0)"
        ]
        # So is a config without a field that a stage's contract reads: every one is listed.
        small = {"epochs": 2}
        assert refusal(lambda: kitchen.dry_run(training, small, adapters=Adapters.noop())) == [
            "batch_size: missing; 'load' reads it",
            "learning_rate: missing; 'submit' reads it",
        ]

    # A stage that reads a state key no stage writes is refused when the workflow is defined.
    assert refusal(lambda: Workflow("no_loader", stage("train", NeedsBatches))) == [
        "train: reads state key 'batches', which no stage of the workflow writes"
    ]

    # cleanup() is the stage's rollback hook, called once when it has failed for good.
    try:
        await Kitchen.run(Workflow("publishing", stage("publish", Publish)), adapters={})
    except StageFailed as exc:
        attempts = exc.attempt
    else:
        raise AssertionError("publishing fails")
    assert attempts == 1  # a PermanentBackendError is never retried
    assert rolled_back == ["PermanentBackendError('registry refused the model')"]


if __name__ == "__main__":
    # Each kill and crash of a stage is logged; the ones here are on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.CRITICAL)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")

"""The example of docs/guides/getting-started.md: a tiny training workflow on the noop backend.

Run it with ``python docs/examples/getting_started.py``: ``main`` runs on asyncio, then on trio.
"""

from __future__ import annotations

import importlib.util
import logging

import anyio

from crucible_kitchen import Adapters, Context, Kitchen, RetryPolicy, Stage, Workflow
from crucible_kitchen.errors import RunCancelled, StageFailed
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData
from crucible_kitchen.telemetry import StageStop, event_name
from crucible_kitchen.workflows import loop, stage

TEXTS = (
    "The quick brown fox jumps over the lazy dog",
    "Pack my box with five dozen liquor jugs",
    "How vexingly quick daft zebras jump",
    "Sphinx of black quartz, judge my vow",
)


def next_token_datum(tokens: list[int]) -> Datum:
    """Position i of the input predicts token i + 1; every target counts in the loss."""
    targets = tokens[1:]
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(targets)),
            "weights": TensorData(dtype="float32", data=(1.0,) * len(targets)),
        },
    )


class LoadData(Stage):
    """Tokenize the texts into batches of two examples."""

    requires = ("training_client",)

    async def execute(self, ctx: Context) -> None:
        tokenizer = ctx.port("training_client").get_tokenizer()
        data = [next_token_datum(tokenizer.encode(text)) for text in TEXTS]
        ctx.state["batches"] = (tuple(data[:2]), tuple(data[2:]))


class TrainStep(Stage):
    """One gradient step on the current batch."""

    requires = ("training_client",)

    async def execute(self, ctx: Context) -> None:
        client = ctx.port("training_client")
        batch: tuple[Datum, ...] = ctx.item("batches")
        backward = await client.forward_backward(
            batch, "cross_entropy", request_id=ctx.request_id("forward_backward")
        )
        step = await client.optim_step(
            AdamParams(learning_rate=ctx.config.learning_rate),
            request_id=ctx.request_id("optim_step"),
        )
        output = await backward.result()
        await step.result()
        tokens = sum(datum.model_input.length for datum in batch)
        ctx.step += 1
        ctx.metrics["loss"] = output.metrics["loss:sum"] / tokens
        ctx.metrics.setdefault("first_loss", ctx.metrics["loss"])


workflow = Workflow(
    "tiny_sft",
    stage("load", LoadData),
    loop(
        "epochs",
        lambda ctx: range(ctx.config.epochs),
        loop("batches", lambda ctx: ctx.state["batches"], stage("train_step", TrainStep)),
    ),
    description="next-token training on four sentences",
)


async def explode(ctx: Context) -> None:
    raise ValueError(f"bad batch (attempt {ctx.attempt})")


broken = Workflow(
    "broken",
    loop("epochs", 1, stage("explode", explode, retry=RetryPolicy(max_attempts=2))),
)


MAIN_JOBS = ("sl_basic", "rl_basic", "dpo_basic", "distill_basic", "smollm2_lora")
BUILTIN = (*MAIN_JOBS, "supervised", "reinforcement", "preference", "distillation", "feedback_loop")


async def run_builtin_recipes() -> None:
    """Built-in recipes: one call trains with a recipe's defaults and its adapter set."""
    async with Kitchen.open() as kitchen:
        recipes = {info.name: info.adapters for info in kitchen.recipes()}
    assert tuple(recipes) == BUILTIN
    assert all(recipes[name] == "local_torch" for name in MAIN_JOBS)  # real training
    assert all(recipes[name] == "noop" for name in BUILTIN[len(MAIN_JOBS) :])

    result = await Kitchen.run("supervised", {"epochs": 1})
    assert (result.status, result.recipe) == ("completed", "supervised")
    assert result.steps > 0
    assert "train/loss" in result.metrics
    for name in BUILTIN[len(MAIN_JOBS) + 1 :]:  # each runs, on the noop adapters, with defaults
        assert (await Kitchen.run(name)).status == "completed"
    assert "stage submit_step (SubmitSupervisedStep)" in Kitchen.describe("supervised")


async def main() -> None:
    # 1. One call: run the workflow to its end.
    adapters = Adapters.noop(seed=0)
    config = {"epochs": 3, "learning_rate": 1e-3}
    result = await Kitchen.run(workflow, config, adapters=adapters)
    assert result.status == "completed"
    assert result.steps == 6  # 3 epochs x 2 batches
    assert result.metrics["loss"] < result.metrics["first_loss"]  # it learned
    assert adapters["training_client"].counters.applied["optim_step"] == 6

    # 2. A long-lived Kitchen: start a run, watch its events, wait for the result.
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(workflow, config, adapters=Adapters.noop())
        names = [event_name(event) async for event in run.events()]
        result = await run.wait()
    assert names[0] == "crucible_kitchen.workflow.run.start"
    assert names[-1] == "crucible_kitchen.workflow.run.stop"
    assert names.count("crucible_kitchen.stage.run.stop") == 7  # load + 6 train steps
    assert result.steps == 6

    # 3. Cancel a run that would take long.
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(
            workflow, {"epochs": 10_000, "learning_rate": 1e-3}, adapters=Adapters.noop()
        )
        async for event in run.events():  # the stream ends when the run has ended
            if (
                isinstance(event, StageStop)
                and event.stage == "train_step"
                and run.status == "running"
            ):
                await run.cancel()  # one training step is enough
        result = await run.result()
        assert result.status == "cancelled"
        assert 1 <= result.steps < 20_000
        try:
            await run.wait()
        except RunCancelled:
            pass
        else:
            raise AssertionError("wait() of a cancelled run raises RunCancelled")

    # 4. A stage that fails for good: a typed error naming the stage, its path and attempt.
    try:
        await Kitchen.run(broken, adapters={})
    except StageFailed as exc:
        error = exc
    else:
        raise AssertionError("the broken workflow should fail")
    assert (error.stage, error.path, error.attempt) == ("explode", "epochs/explode", 2)
    assert isinstance(error.__cause__, ValueError)
    async with Kitchen.open() as kitchen:
        run = await kitchen.start(broken, adapters={})
        failed = await run.result()  # never raises
    assert (failed.status, failed.failed_stage, failed.attempts) == ("failed", "explode", 2)
    assert str(failed.error).startswith("StageFailed: stage 'explode' failed on attempt 2")

    # 5. The built-in recipes.
    await run_builtin_recipes()


if __name__ == "__main__":
    # Each crash of a stage is logged with its traceback; the crashes here are on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.CRITICAL)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")

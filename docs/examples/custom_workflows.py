"""The example of docs/guides/custom-workflows.md: every DSL construct, and a recipe.

Run it with ``python docs/examples/custom_workflows.py``: ``main`` runs on asyncio, then on trio.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pydantic

from crucible_kitchen import Context, Kitchen, Recipe, RetryPolicy, Workflow
from crucible_kitchen.errors import ConfigError, StageFailed, WorkflowDefinitionError, WorkflowError
from crucible_kitchen.recipes import SupervisedConfig
from crucible_kitchen.stages.builtin import (
    TRAIN_DATA,
    AwaitSupervisedSteps,
    BuildSupervisedDataset,
    FlushMetrics,
    LoadDataset,
    ShuffleEpoch,
    SubmitSupervisedStep,
    batches_this_epoch,
    planned_epochs,
)
from crucible_kitchen.workflows import (
    async_loop,
    conditional,
    loop,
    parallel,
    stage,
    stream_loop,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

closed: list[str] = []  # what the cleanup stage saw, run by run

# --- 1. stage, loop, conditional, cleanup -------------------------------------------------


async def load(ctx: Context) -> None:
    """Split the examples into batches."""
    size = ctx.config.batch_size
    examples = list(range(ctx.config.examples))
    ctx.state["batches"] = tuple(
        tuple(examples[i : i + size]) for i in range(0, len(examples), size)
    )


async def train(ctx: Context) -> None:
    """Count the batch's examples as one step."""
    ctx.step += 1
    ctx.metrics["examples"] = ctx.metrics.get("examples", 0.0) + len(ctx.item("batches"))


async def checkpoint(ctx: Context) -> None:
    """Record a checkpoint as a run artifact."""
    ctx.state["artifacts"] = {  # replace the dict, never mutate it in place
        **ctx.state.get("artifacts", {}),
        f"epoch-{ctx.loops['epochs']}": f"mem://checkpoints/{ctx.step}",
    }


async def close(ctx: Context) -> None:
    """Release what the run holds; runs however the run ends."""
    closed.append(f"{ctx.run.workflow} at step {ctx.step}")


class TrainingConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    epochs: int = pydantic.Field(2, ge=1)
    examples: int = pydantic.Field(6, ge=1)
    batch_size: int = pydantic.Field(2, ge=1)
    checkpoint_every: int = pydantic.Field(2, ge=1)


training = Workflow(
    "counting",
    stage("load", load),
    loop(
        "epochs",
        lambda ctx: range(ctx.config.epochs),
        loop("batches", lambda ctx: ctx.state["batches"], stage("train", train)),
        conditional(
            "checkpoint_due",
            lambda ctx: (ctx.loops["epochs"] + 1) % ctx.config.checkpoint_every == 0,
            then=[stage("checkpoint", checkpoint)],
        ),
    ),
    cleanup=[stage("close", close)],
    description="count examples, checkpoint every few epochs",
)

recipe = Recipe("count_examples", "Count examples in batches", training, TrainingConfig)

# --- 2. commit on success ------------------------------------------------------------------


async def flaky(ctx: Context) -> None:
    ctx.metrics["attempts_seen"] = ctx.metrics.get("attempts_seen", 0.0) + 1
    if ctx.attempt == 1:
        raise RuntimeError("lost connection")  # this attempt's changes are thrown away


async def fail(ctx: Context) -> None:
    raise ValueError("no more data")


# --- 3. parallel ---------------------------------------------------------------------------


async def evaluate(ctx: Context) -> None:
    ctx.metrics["eval_accuracy"] = 0.75


async def export(ctx: Context) -> None:
    ctx.state["exported"] = "mem://export/model"


async def set_lr_a(ctx: Context) -> None:
    ctx.metrics["lr"] = 1e-4


async def set_lr_b(ctx: Context) -> None:
    ctx.metrics["lr"] = 1e-4  # an equal value, but a second writer: a conflict


def keep_lowest_lr(base: Context, branches: list[Context]) -> Context:
    merged = base.fork()
    merged.metrics["lr"] = min(branch.metrics["lr"] for branch in branches)
    return merged


# --- 4. async_loop -------------------------------------------------------------------------

produced: list[tuple[int, int]] = []  # (rollout index, batches learned when it started)


async def rollout(ctx: Context) -> None:
    index: int = ctx.item("rl")
    produced.append((index, int(ctx.metrics.get("learned", 0.0))))
    ctx.state["rl"] = {"batch": index, "reward": float(index % 3)}  # the item passed on


async def learn(ctx: Context) -> None:
    batch = ctx.item("rl")  # what the producer put in ctx.state["rl"]
    await anyio.sleep(0.001)  # learning is slower than sampling
    ctx.step += 1
    ctx.metrics["learned"] = ctx.metrics.get("learned", 0.0) + 1
    ctx.metrics["reward"] = ctx.metrics.get("reward", 0.0) + batch["reward"]


# --- 5. stream_loop ------------------------------------------------------------------------

pulled: list[int] = []
max_ahead = [0]


def read_shards(ctx: Context) -> Iterator[int]:
    for shard in range(ctx.config.shards):
        pulled.append(shard)  # a real source would read a file here
        yield shard


async def tokenize(ctx: Context) -> None:
    started = ctx.loops["shards"] + 1  # items the body has taken so far
    max_ahead[0] = max(max_ahead[0], len(pulled) - started)
    ctx.metrics["shards"] = ctx.metrics.get("shards", 0.0) + 1


async def live_prompts(ctx: Context) -> AsyncIterator[str]:
    for prompt in ("2+2=", "3*3=", "10-7="):
        await anyio.lowlevel.checkpoint()  # e.g. waiting on a queue or a socket
        yield prompt


async def answer(ctx: Context) -> None:
    ctx.metrics["prompts"] = ctx.metrics.get("prompts", 0.0) + 1


# --- 6. built-in stages in a workflow of your own -------------------------------------------
# Supervised fine-tuning as the built-in workflow does it, without evaluation or checkpoints.
lean_sft = Workflow(
    "lean_sft",
    stage("load_dataset", LoadDataset),
    stage("build_dataset", BuildSupervisedDataset),
    loop(
        "epochs",
        planned_epochs,
        stage("shuffle", ShuffleEpoch(TRAIN_DATA)),
        loop(
            "batches",
            batches_this_epoch,
            stage("submit_step", SubmitSupervisedStep),  # forward_backward + optim_step, unawaited
            stage("await_step", AwaitSupervisedSteps()),  # keeps `pipeline_depth` in flight
        ),
    ),
    stage("drain", AwaitSupervisedSteps(drain=True)),
    cleanup=[stage("flush_metrics", FlushMetrics)],
)


async def main() -> None:
    closed.clear()
    produced.clear()
    pulled.clear()
    max_ahead[0] = 0

    # 1. A recipe: the config is validated, then the workflow runs.
    async with Kitchen.open(recipes=[recipe]) as kitchen:
        assert "count_examples" in [info.name for info in kitchen.recipes()]
        run = await kitchen.start("count_examples", {"epochs": 4}, adapters={})
        result = await run.wait()
    assert result.steps == 12  # 4 epochs x 3 batches
    assert result.metrics == {"examples": 24.0}
    assert result.artifacts == {
        "epoch-1": "mem://checkpoints/6",
        "epoch-3": "mem://checkpoints/12",
    }
    assert closed == ["counting at step 12"]

    try:
        await Kitchen.run(recipe, {"epochs": 0, "batch_size": "two", "epoch": 3}, adapters={})
    except ConfigError as exc:
        problems = exc.problems
    else:
        raise AssertionError("the config is invalid")
    assert [problem.split(":")[0] for problem in problems] == ["epochs", "batch_size", "epoch"]

    # 2. Commit on success; cleanup nodes run when the run fails too.
    result = await Kitchen.run(Workflow("commit", stage("flaky", flaky)), adapters={})
    assert result.metrics == {"attempts_seen": 1.0}  # the failed attempt left no trace

    doomed = Workflow(
        "doomed",
        stage("fail", fail, retry=RetryPolicy(max_attempts=1)),
        cleanup=[stage("close", close)],
    )
    try:
        await Kitchen.run(doomed, adapters={})
    except StageFailed as exc:
        failed_stage = exc.stage
    else:
        raise AssertionError("the stage fails")
    assert failed_stage == "fail"
    assert closed[-1] == "doomed at step 0"

    # 3. parallel: branches on copies, merged if all succeed.
    both = Workflow(
        "both", parallel("finish", [stage("evaluate", evaluate)], [stage("export", export)])
    )
    result = await Kitchen.run(both, adapters={})
    assert result.metrics == {"eval_accuracy": 0.75}

    clash = parallel("lr", [stage("a", set_lr_a)], [stage("b", set_lr_b)])
    try:
        await Kitchen.run(Workflow("clash", clash), adapters={})
    except WorkflowError as exc:
        message = str(exc)
    else:
        raise AssertionError("two branches wrote metrics['lr']")
    assert "both changed metrics['lr']" in message

    merged = parallel("lr", [stage("a", set_lr_a)], [stage("b", set_lr_b)], merge=keep_lowest_lr)
    result = await Kitchen.run(Workflow("merged", merged), adapters={})
    assert result.metrics == {"lr": 1e-4}

    # 4. async_loop: the producer runs ahead of the consumer, by a bounded amount.
    buffer = 2
    rl = Workflow(
        "off_policy",
        async_loop(
            "rl",
            12,
            produce=[stage("rollout", rollout)],
            consume=[stage("learn", learn)],
            buffer=buffer,
        ),
    )
    result = await Kitchen.run(rl, adapters={})
    assert result.metrics == {"learned": 12.0, "reward": 12.0}  # every item, in order
    assert all(index - learned <= buffer + 1 for index, learned in produced)
    assert any(index - learned > 0 for index, learned in produced)  # it did run ahead

    # 5. stream_loop: a lazy source read ahead by at most `prefetch` (+1 in hand).
    streaming = Workflow(
        "streaming",
        stream_loop("shards", read_shards, stage("tokenize", tokenize), prefetch=2),
        stream_loop("prompts", live_prompts, stage("answer", answer)),
    )
    result = await Kitchen.run(streaming, {"shards": 50}, adapters={})
    assert result.metrics == {"shards": 50.0, "prompts": 3.0}
    assert max_ahead[0] <= 2 + 1

    # 6. Definition-time checks: every problem at once.
    try:
        Workflow(
            "bad",
            stage("train", train),
            loop("epochs", -1, stage("train", train)),
            parallel("eval", [stage("a", evaluate)], max_concurrency=0),
        )
    except WorkflowDefinitionError as exc:
        problems = exc.problems
    else:
        raise AssertionError("the workflow is invalid")
    assert problems == [
        "epochs: over must be a callable or a count >= 0",
        "epochs/train: duplicate name 'train' (also at train)",
        "eval: max_concurrency must be None or >= 1",
    ]

    # 7. describe(): the tree as text.
    assert training.describe().splitlines() == [
        "workflow counting — count examples, checkpoint every few epochs",
        "  stage load (FunctionStage)  [Split the examples into batches.]",
        "  loop epochs",
        "    loop batches",
        "      stage train (FunctionStage)  [Count the batch's examples as one step.]",
        "    conditional checkpoint_due",
        "      then:",
        "        stage checkpoint (FunctionStage)  [Record a checkpoint as a run artifact.]",
        "  cleanup:",
        "    stage close (FunctionStage)  [Release what the run holds; runs however the run ends.]",
    ]

    # 8. Built-in stages: they read a recipe's config model, and their contracts are checked.
    lean = Recipe("lean_sft", "SFT from built-in stages", lean_sft, SupervisedConfig)
    result = await Kitchen.run(lean, {"epochs": 1, "batch_size": 32}, adapters="noop")
    assert (result.status, result.steps) == ("completed", 2)
    try:
        Workflow("no_dataset", *[node for node in lean_sft.nodes if node.name != "build_dataset"])
    except WorkflowDefinitionError as exc:
        problems = exc.problems
    else:
        raise AssertionError("nothing writes what the training stages read")
    unwritten = "which no stage of the workflow writes"
    assert problems == [
        f"epochs: reads state key 'num_epochs', {unwritten}",
        f"shuffle: reads state key 'train_data', {unwritten}",
        f"batches: reads state key 'num_batches', {unwritten}",
        f"batches: reads state key 'total_steps', {unwritten}",
        f"submit_step: reads state key 'num_batches', {unwritten}",
        f"submit_step: reads state key 'total_steps', {unwritten}",
        f"submit_step: reads state key 'train_data', {unwritten}",
    ]


if __name__ == "__main__":
    # Each crash of a stage is logged with its traceback; the crashes here are on purpose.
    logging.getLogger("crucible_kitchen.supervisors").setLevel(logging.CRITICAL)
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")

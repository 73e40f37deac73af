"""A supervised warm-up before RL or DPO: a few cross-entropy steps on the answers.

RL from a model that never writes an answer in the expected format has no reward to learn
from, and DPO is meant to start from a supervised model (its frozen reference). The warm-up
makes that starting point inside the run: ``sft_warmup_steps`` constant-rate steps on the
answer examples (RL: each training problem with its answer; DPO: each pair's chosen reply).
It is not counted in the run's steps, and a run started ``init_from`` other weights or
resumed from its own checkpoint skips it.

State: ``"warmup_data"`` (the datums).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final

from crucible_kitchen.errors import TrainingInputError
from crucible_kitchen.ports import Message
from crucible_kitchen.stages._common import (
    INIT_FROM_KEY,
    RESUME_FROM_KEY,
    BuiltinStage,
    adam_params,
    next_token_datum,
    record_metrics,
)
from crucible_kitchen.stages._contract import StageContract, StateKey, declares
from crucible_kitchen.stages._preference import PAIRS
from crucible_kitchen.stages._reinforcement import PROBLEMS
from crucible_kitchen.stages._supervised import nll_of

if TYPE_CHECKING:
    from crucible_kitchen.ports import Datum
    from crucible_kitchen.stages._context import Context
    from crucible_kitchen.stages._reinforcement import Problem

__all__ = ("AnswerExamples", "ChosenExamples", "SftWarmup", "warmup_due")

WARMUP_DATA: Final = StateKey("warmup_data", tuple, rebuilt_on_resume=True)
"""The supervised examples of the warm-up."""

_NO_CUT: Final = 1 << 20


class AnswerExamples(BuiltinStage):
    """The warm-up examples of an RL run: each problem's question, answered with its
    answer (weight on the answer and the end of the reply)."""

    bookkeeping = True

    requires: ClassVar[tuple[str, ...]] = ("renderer",)
    contract = StageContract(reads=(PROBLEMS,), writes=(WARMUP_DATA,))

    async def execute(self, ctx: Context) -> Context:
        problems: tuple[Problem, ...] = ctx.state["problems"]
        renderer = ctx.port("renderer")
        data: list[Datum] = []
        for problem in problems:
            model_input, weights = renderer.build_supervised_example(
                [
                    Message(role="user", content=problem.question),
                    Message(role="assistant", content=str(problem.answer)),
                ],
                train_on_what="last_assistant_message",
            )
            datum = next_token_datum(
                model_input.to_ints(), [float(w) for w in weights.data], _NO_CUT
            )
            if datum is not None:
                data.append(datum)
        ctx.state["warmup_data"] = tuple(data)
        return ctx


class ChosenExamples(BuiltinStage):
    """The warm-up examples of a DPO run: the chosen datum of each pair."""

    bookkeeping = True

    contract = StageContract(reads=(PAIRS,), writes=(WARMUP_DATA,))

    async def execute(self, ctx: Context) -> Context:
        ctx.state["warmup_data"] = tuple(chosen for chosen, _ in ctx.state["pairs"])
        return ctx


@declares(StageContract(config=("sft_warmup_steps",), may_read=(RESUME_FROM_KEY, INIT_FROM_KEY)))
def warmup_due(ctx: Context) -> bool:
    """Whether the run warms up: ``sft_warmup_steps`` > 0, and it neither resumes nor
    started from ``init_from`` weights."""
    return (
        int(ctx.config.sft_warmup_steps) > 0
        and RESUME_FROM_KEY.name not in ctx.state
        and INIT_FROM_KEY.name not in ctx.state
    )


class SftWarmup(BuiltinStage):
    """Train ``sft_warmup_steps`` cross-entropy steps of ``sft_warmup_batch_size`` examples
    (reshuffled every pass) at the constant ``sft_warmup_learning_rate``.

    Records ``warmup/loss_first`` and ``warmup/loss_last`` (mean NLL per answer token of the
    first and last step) and ``warmup/steps``. A re-executed warm-up re-sends the same
    request ids, so no step is applied twice.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "metrics_store")
    contract = StageContract(
        config=("sft_warmup_steps", "sft_warmup_batch_size", "sft_warmup_learning_rate", "adam"),
        reads=(WARMUP_DATA,),
    )

    async def execute(self, ctx: Context) -> Context:
        data: tuple[Datum, ...] = ctx.state["warmup_data"]
        if not data:
            raise TrainingInputError("the supervised warm-up has no examples")
        steps, size = int(ctx.config.sft_warmup_steps), int(ctx.config.sft_warmup_batch_size)
        rng = ctx.rng("sft_warmup")
        order: list[int] = []
        client = ctx.port("training_client")
        params = adam_params(ctx, float(ctx.config.sft_warmup_learning_rate))
        submitted = []
        for step in range(steps):
            while len(order) < size:
                block = list(range(len(data)))
                rng.shuffle(block)
                order.extend(block)
            batch = [data[i] for i in order[:size]]
            del order[:size]
            forward_backward = await client.forward_backward(
                batch,
                "cross_entropy",
                None,
                request_id=ctx.request_id(f"warmup_{step}/forward_backward"),
            )
            optim = await client.optim_step(
                params, request_id=ctx.request_id(f"warmup_{step}/optim_step")
            )
            submitted.append((batch, forward_backward, optim))
        losses = []
        for batch, forward_backward, optim in submitted:
            losses.append(nll_of(batch, await forward_backward.result()))
            await optim.result()
        row = {
            "warmup/loss_first": losses[0],
            "warmup/loss_last": losses[-1],
            "warmup/steps": float(steps),
        }
        await record_metrics(ctx, ctx.step, row)
        return ctx

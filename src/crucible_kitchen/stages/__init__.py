"""Stages: the Stage contract and the Context a stage works on.

A stage is a :class:`Stage` (or an ``async def fn(ctx)`` wrapped in a :class:`FunctionStage`)
with a :class:`RetryPolicy`; it talks to backends only through ports (``ctx.port(name)``),
never through adapters. It declares what it reads and writes in a :class:`StageContract` of
config fields and typed state keys (:class:`StateKey`; :func:`declares` for the functions a
workflow calls on the context), checked before a run. The names not in ``__all__`` are engine
plumbing shared with the library's other packages, not public.

The built-in stages, their state keys and the conditions the built-in workflows branch on are
in :mod:`crucible_kitchen.stages.builtin`, for composing workflows of your own from them.
"""

from __future__ import annotations

from crucible_kitchen.stages._common import RESUME_FROM as RESUME_FROM
from crucible_kitchen.stages._common import snapshot_from_checkpoint as snapshot_from_checkpoint
from crucible_kitchen.stages._context import Context as Context
from crucible_kitchen.stages._context import ContextSnapshot as ContextSnapshot
from crucible_kitchen.stages._context import FaultHook as FaultHook
from crucible_kitchen.stages._context import RunInfo as RunInfo
from crucible_kitchen.stages._contract import StageContract as StageContract
from crucible_kitchen.stages._contract import StateKey as StateKey
from crucible_kitchen.stages._contract import config_problems as config_problems
from crucible_kitchen.stages._contract import contract_of as contract_of
from crucible_kitchen.stages._contract import declares as declares
from crucible_kitchen.stages._contract import state_problems as state_problems
from crucible_kitchen.stages._faults import current_stage_context as current_stage_context
from crucible_kitchen.stages._faults import current_stage_kill as current_stage_kill
from crucible_kitchen.stages._stage import FunctionStage as FunctionStage
from crucible_kitchen.stages._stage import RetryPolicy as RetryPolicy
from crucible_kitchen.stages._stage import Stage as Stage
from crucible_kitchen.stages._stage import as_stage as as_stage

__all__ = (
    "Context",
    "ContextSnapshot",
    "FunctionStage",
    "RetryPolicy",
    "Stage",
    "StageContract",
    "StateKey",
    "contract_of",
    "declares",
)

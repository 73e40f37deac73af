"""Stages: the Stage contract, the Context a stage works on, and the built-in stages.

Stages talk to backends only through ports (``ctx.port(name)``); they never import adapters.
"""

from __future__ import annotations

from crucible_kitchen.stages._context import Context as Context
from crucible_kitchen.stages._context import ContextSnapshot as ContextSnapshot
from crucible_kitchen.stages._context import RunInfo as RunInfo
from crucible_kitchen.stages._context import derive_seed as derive_seed
from crucible_kitchen.stages._stage import FunctionStage as FunctionStage
from crucible_kitchen.stages._stage import RetryPolicy as RetryPolicy
from crucible_kitchen.stages._stage import Stage as Stage
from crucible_kitchen.stages._stage import as_stage as as_stage

__all__ = (
    "Context",
    "ContextSnapshot",
    "FunctionStage",
    "RetryPolicy",
    "RunInfo",
    "Stage",
    "as_stage",
    "derive_seed",
)

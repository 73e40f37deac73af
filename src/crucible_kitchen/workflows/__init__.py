"""Workflows: the DSL, the engine that runs a workflow as a supervised tree, built-in workflows.

See ``docs/guides/custom-workflows.md``.
"""

from __future__ import annotations

from crucible_kitchen.workflows._dsl import Workflow as Workflow
from crucible_kitchen.workflows._dsl import async_loop as async_loop
from crucible_kitchen.workflows._dsl import conditional as conditional
from crucible_kitchen.workflows._dsl import loop as loop
from crucible_kitchen.workflows._dsl import parallel as parallel
from crucible_kitchen.workflows._dsl import stage as stage
from crucible_kitchen.workflows._dsl import stream_loop as stream_loop

__all__ = (
    "Workflow",
    "async_loop",
    "conditional",
    "loop",
    "parallel",
    "stage",
    "stream_loop",
)

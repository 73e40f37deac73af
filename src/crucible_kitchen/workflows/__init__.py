"""Workflows: the DSL, the engine that runs a workflow as a supervised tree, built-in workflows.

See ``docs/guides/custom-workflows.md``. The engine's entry point (``RunPlan``,
``RunOutcome``, ``RunStatus``, ``build_run_supervisor``) is shared with the Kitchen, not public.
"""

from __future__ import annotations

from crucible_kitchen.workflows._builtin import distillation_workflow as distillation_workflow
from crucible_kitchen.workflows._builtin import feedback_loop_workflow as feedback_loop_workflow
from crucible_kitchen.workflows._builtin import preference_workflow as preference_workflow
from crucible_kitchen.workflows._builtin import reinforcement_workflow as reinforcement_workflow
from crucible_kitchen.workflows._builtin import supervised_workflow as supervised_workflow
from crucible_kitchen.workflows._dsl import StageNode as StageNode
from crucible_kitchen.workflows._dsl import Workflow as Workflow
from crucible_kitchen.workflows._dsl import async_loop as async_loop
from crucible_kitchen.workflows._dsl import conditional as conditional
from crucible_kitchen.workflows._dsl import loop as loop
from crucible_kitchen.workflows._dsl import parallel as parallel
from crucible_kitchen.workflows._dsl import stage as stage
from crucible_kitchen.workflows._dsl import stream_loop as stream_loop
from crucible_kitchen.workflows._engine import RunOutcome as RunOutcome
from crucible_kitchen.workflows._engine import RunPlan as RunPlan
from crucible_kitchen.workflows._engine import RunStatus as RunStatus
from crucible_kitchen.workflows._engine import build_run_supervisor as build_run_supervisor

__all__ = (
    "StageNode",
    "Workflow",
    "async_loop",
    "conditional",
    "distillation_workflow",
    "feedback_loop_workflow",
    "loop",
    "parallel",
    "preference_workflow",
    "reinforcement_workflow",
    "stage",
    "stream_loop",
    "supervised_workflow",
)

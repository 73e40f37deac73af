"""What the Kitchen hands back: how a run ended, the recipes it knows, what a run would do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from crucible_kitchen.kitchen._adapters import Adapters
    from crucible_kitchen.workflows import Workflow

__all__ = ("DryRun", "RecipeInfo", "RunResult")


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """How a run ended."""

    run_id: str
    workflow: str
    recipe: str | None
    status: Literal["completed", "failed", "cancelled"]
    metrics: dict[str, float]
    artifacts: dict[str, str]
    steps: int
    duration_s: float
    error: str | None = None
    failed_stage: str | None = None
    attempts: int | None = None


class RecipeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``kitchen.recipes()``."""

    name: str
    description: str
    workflow: str
    adapters: str


@dataclass(frozen=True)
class DryRun:
    """What a run would do: its workflow, validated config and bound ports."""

    workflow: Workflow
    config: Any
    adapters: Adapters

    def describe(self) -> str:
        ports = ", ".join(f"{k}={type(v).__name__}" for k, v in self.adapters.items())
        return f"{self.workflow.describe()}\nports: {ports}"

"""The JSON bodies of the API, as msgspec structs (requests are decoded strictly)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from crucible_kitchen.kitchen import RecipeInfo

__all__ = (
    "Health",
    "MetricsHistory",
    "RecipeList",
    "RunList",
    "RunView",
    "StartRun",
    "StatusFilter",
)

RunStatus = Literal["running", "completed", "failed", "cancelled"]
StatusFilter = RunStatus


class StartRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /runs``: a recipe of the registry, config overrides, an allowed adapter set.

    There is deliberately no field for a run directory, telemetry or code: the run's files
    go to ``<root>/<run_id>``, and recipes and adapter sets are names looked up in the
    Kitchen's registry.
    """

    recipe: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    config: dict[str, Any] = {}
    adapters: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /runs/{id}``: where a run stands.

    ``stage`` is the stage executing now (``None`` between stages and after the end);
    ``steps`` the training steps done; ``metrics`` the latest value of each metric; ``artifacts``
    what the run produced (once it ended); ``error`` why it failed.
    """

    run_id: str
    recipe: str | None
    workflow: str
    adapters: str | None
    status: RunStatus
    created: float
    stage: str | None
    steps: int
    metrics: dict[str, float]
    artifacts: dict[str, str]
    error: str | None = None
    failed_stage: str | None = None


class RunList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /runs``: one page of runs, oldest first; ``next_offset`` is ``None`` on the last."""

    runs: list[RunView]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class MetricsHistory(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /runs/{id}/metrics``: every metrics row (tinker-cookbook keys), in order."""

    run_id: str
    rows: list[dict[str, Any]]


class RecipeList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /recipes``: the recipes a run may name, and the adapter sets it may ask for
    (``None``: every registered set)."""

    recipes: list[RecipeInfo]
    adapter_sets: list[str] | None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /health``: ``ok`` while runs are accepted, ``stopping`` once shutdown began,
    ``failed`` once the Kitchen's worker process died (no runs can start)."""

    status: Literal["ok", "stopping", "failed"]
    version: str
    runs_running: int

"""Feedback-loop stages: triggers, curation, export, reading the export back, new baseline.

The retraining itself reuses the supervised stages on the exported dataset.

State: ``"triggers"``, ``"should_retrain"``, ``"curated"``, ``"feedback_export"``,
``"baseline_model_id"``, plus ``"dataset"``/``"train_rows"`` for the supervised stages.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, ClassVar, Final

from crucible_kitchen.ports import FeedbackExport
from crucible_kitchen.stages._common import (
    DATASET,
    REGISTERED_MODEL_ID,
    REGISTERED_MODEL_VERSION,
    TRAIN_ROWS,
    BuiltinStage,
)
from crucible_kitchen.stages._contract import StageContract, StateKey, declares
from crucible_kitchen.telemetry import (
    FeedbackBaselineUpdated,
    FeedbackDataCurated,
    FeedbackDataExported,
    FeedbackTriggersChecked,
)

if TYPE_CHECKING:
    from crucible_kitchen.ports import CuratedExample
    from crucible_kitchen.stages._context import Context

__all__ = (
    "CheckTriggers",
    "CurateFeedback",
    "ExportFeedback",
    "LoadFeedbackDataset",
    "UpdateBaseline",
    "enough_feedback",
    "triggers_fired",
)

TRIGGERS: Final = StateKey("triggers", tuple)
SHOULD_RETRAIN: Final = StateKey("should_retrain", bool)
CURATED: Final = StateKey("curated", tuple)
FEEDBACK_EXPORT: Final = StateKey("feedback_export", FeedbackExport)
BASELINE_MODEL_ID: Final = StateKey("baseline_model_id", str)


class CheckTriggers(BuiltinStage):
    """Ask whether the deployment needs retraining (drift, quality, data volume, ...)."""

    requires: ClassVar[tuple[str, ...]] = ("feedback_client",)
    contract = StageContract(config=("deployment_id",), writes=(TRIGGERS, SHOULD_RETRAIN))

    async def execute(self, ctx: Context) -> Context:
        deployment = ctx.config.deployment_id
        triggers = await ctx.port("feedback_client").check_triggers(deployment)
        ctx.state["triggers"] = tuple(triggers)
        ctx.state["should_retrain"] = bool(triggers)
        ctx.metrics["feedback/triggers"] = float(len(triggers))
        ctx.emit(
            FeedbackTriggersChecked(
                deployment_id=deployment,
                triggers=[t.kind for t in triggers],
                should_retrain=bool(triggers),
            )
        )
        return ctx


class CurateFeedback(BuiltinStage):
    """Select the feedback worth training on (at most ``curate_limit`` examples)."""

    requires: ClassVar[tuple[str, ...]] = ("feedback_client",)
    contract = StageContract(config=("deployment_id", "curate_limit"), writes=(CURATED,))

    async def execute(self, ctx: Context) -> Context:
        deployment = ctx.config.deployment_id
        examples = await ctx.port("feedback_client").curate(
            deployment, limit=ctx.config.curate_limit
        )
        ctx.state["curated"] = tuple(examples)
        ctx.metrics["feedback/curated"] = float(len(examples))
        by_source = Counter(example.source for example in examples)
        ctx.emit(
            FeedbackDataCurated(
                deployment_id=deployment,
                count=len(examples),
                by_source=dict(sorted(by_source.items())),
            )
        )
        return ctx


@declares(StageContract(reads=(SHOULD_RETRAIN,)))
def triggers_fired(ctx: Context) -> bool:
    """Whether :class:`CheckTriggers` found a reason to retrain."""
    return bool(ctx.state["should_retrain"])


@declares(StageContract(config=("min_examples",), reads=(CURATED,)))
def enough_feedback(ctx: Context) -> bool:
    """The retrain decision: at least ``min_examples`` curated examples."""
    return len(ctx.state["curated"]) >= int(ctx.config.min_examples)


class ExportFeedback(BuiltinStage):
    """Export the curated examples as a dataset the dataset store can read."""

    requires: ClassVar[tuple[str, ...]] = ("feedback_client",)
    contract = StageContract(
        config=("deployment_id", "export_format"), reads=(CURATED,), writes=(FEEDBACK_EXPORT,)
    )

    async def execute(self, ctx: Context) -> Context:
        deployment = ctx.config.deployment_id
        curated: tuple[CuratedExample, ...] = ctx.state["curated"]
        exported = await ctx.port("feedback_client").export(
            deployment,
            curated,
            format=ctx.config.export_format,
            request_id=ctx.request_id("export"),
        )
        ctx.state["feedback_export"] = exported
        ctx.emit(
            FeedbackDataExported(
                deployment_id=deployment,
                path=f"{exported.dataset}/{exported.split}",
                format=exported.format,
                count=exported.num_examples,
            )
        )
        return ctx


class LoadFeedbackDataset(BuiltinStage):
    """Read the exported feedback back through the dataset store, as training rows."""

    requires: ClassVar[tuple[str, ...]] = ("dataset_store",)
    contract = StageContract(reads=(FEEDBACK_EXPORT,), writes=(DATASET, TRAIN_ROWS))

    async def execute(self, ctx: Context) -> Context:
        exported: FeedbackExport = ctx.state["feedback_export"]
        rows = await ctx.port("dataset_store").read_rows(exported.dataset, split=exported.split)
        ctx.state["dataset"] = exported.dataset
        ctx.state["train_rows"] = tuple(rows)
        return ctx


class UpdateBaseline(BuiltinStage):
    """Make the newly registered model the deployment's baseline."""

    requires: ClassVar[tuple[str, ...]] = ("feedback_client",)
    contract = StageContract(
        config=("deployment_id", "model_name"),
        reads=(REGISTERED_MODEL_ID, REGISTERED_MODEL_VERSION),
        writes=(BASELINE_MODEL_ID,),
    )

    async def execute(self, ctx: Context) -> Context:
        deployment = ctx.config.deployment_id
        model_id = str(ctx.state["registered_model_id"])
        await ctx.port("feedback_client").update_baseline(
            deployment, model_id, request_id=ctx.request_id("update_baseline")
        )
        ctx.state["baseline_model_id"] = model_id
        ctx.metrics["feedback/retrained"] = 1.0
        ctx.emit(
            FeedbackBaselineUpdated(
                deployment_id=deployment,
                model_id=model_id,
                model_name=ctx.config.model_name,
                model_version=ctx.state["registered_model_version"],
            )
        )
        return ctx

"""The public surface is small, sorted, and pinned."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "crucible_kitchen": (
        "Actor",
        "ActorRef",
        "Adapters",
        "ChildSpec",
        "Context",
        "ExitKind",
        "ExitReason",
        "Kitchen",
        "KitchenError",
        "Message",
        "Recipe",
        "RetryPolicy",
        "RunHandle",
        "RunResult",
        "Stage",
        "Supervisor",
        "Workflow",
        "__version__",
        "open_supervisor",
    ),
    "crucible_kitchen.kitchen": (
        "Adapters",
        "DryRun",
        "Kitchen",
        "RecipeInfo",
        "RunHandle",
        "RunOptions",
        "RunRecord",
        "RunResult",
        "StartOptions",
        "read_run_record",
    ),
    "crucible_kitchen.workflows": (
        "RunOutcome",
        "RunPlan",
        "RunStatus",
        "Workflow",
        "async_loop",
        "build_run_supervisor",
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
    ),
    "crucible_kitchen.supervisors": (
        "Actor",
        "ActorRef",
        "ActorStatistics",
        "AutoShutdown",
        "ChildCounts",
        "ChildInfo",
        "ChildSpec",
        "ExitKind",
        "ExitReason",
        "ExitRecord",
        "Message",
        "MessageCodec",
        "Monitor",
        "PendingCall",
        "ReplyHandle",
        "RestartType",
        "Strategy",
        "Supervisor",
        "SupervisorStatistics",
        "exponential_backoff",
        "open_supervisor",
    ),
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_is_the_pinned_sorted_tuple(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert isinstance(module.__all__, tuple)
    assert list(module.__all__) == sorted(module.__all__)
    assert module.__all__ == PUBLIC[module_name]
    for name in module.__all__:
        assert hasattr(module, name), name


def test_every_error_descends_from_the_one_root() -> None:
    errors = importlib.import_module("crucible_kitchen.errors")
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.KitchenError), name
        assert name in (errors.__doc__ or ""), f"{name} is missing from the tree in the docstring"

"""The built-in recipes: one per built-in workflow, on the noop adapters by default."""

from __future__ import annotations

from crucible_kitchen.recipes._configs import (
    DistillationConfig,
    FeedbackLoopConfig,
    PreferenceConfig,
    ReinforcementConfig,
    SupervisedConfig,
)
from crucible_kitchen.recipes._recipe import Recipe
from crucible_kitchen.workflows import (
    distillation_workflow,
    feedback_loop_workflow,
    preference_workflow,
    reinforcement_workflow,
    supervised_workflow,
)

__all__ = ("BUILTIN_RECIPES",)

BUILTIN_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "supervised",
        "Supervised fine-tuning on conversations (cross-entropy, pipelined steps)",
        supervised_workflow,
        SupervisedConfig,
    ),
    Recipe(
        "reinforcement",
        "GRPO-style RL on verifiable problems (group-relative advantages, on-policy)",
        reinforcement_workflow,
        ReinforcementConfig,
    ),
    Recipe(
        "preference",
        "DPO on preference pairs against the frozen initial weights",
        preference_workflow,
        PreferenceConfig,
    ),
    Recipe(
        "distillation",
        "On-policy distillation from the 'teacher_sampling_client' port (reverse KL)",
        distillation_workflow,
        DistillationConfig,
    ),
    Recipe(
        "feedback_loop",
        "Retrain a deployment on its curated production feedback when a trigger fires",
        feedback_loop_workflow,
        FeedbackLoopConfig,
    ),
)
"""Every built-in recipe, by the name of its workflow."""

"""The built-in recipes: one per built-in workflow on the noop adapters, and ``sl_basic``
(real SFT on CPU with the local torch adapters, writing a run directory)."""

from __future__ import annotations

from typing import Any

from crucible_kitchen.recipes._configs import (
    DistillationConfig,
    FeedbackLoopConfig,
    PreferenceConfig,
    ReinforcementConfig,
    SlBasicConfig,
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


def _local_torch_options(config: SlBasicConfig, adapters: str) -> dict[str, Any]:
    """The model, tokenizer and renderer of an ``sl_basic`` run on ``local_torch``."""
    if adapters != "local_torch":
        return {}
    return {
        "model": config.model,
        "tokenizer": config.tokenizer,
        "renderer": config.renderer,
        "lora": config.lora_rank,
        "device": config.device,
    }


BUILTIN_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "sl_basic",
        "Supervised fine-tuning of a small transformer on CPU (local torch, chat_tasks); "
        "checkpoints and resumes",
        supervised_workflow,
        SlBasicConfig,
        adapters="local_torch",
        adapter_options=_local_torch_options,
        writes_run_dir=True,
    ),
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

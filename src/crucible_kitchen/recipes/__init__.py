"""Recipes: the Recipe contract (WHAT to train) and the built-in recipes' config models.

The built-in recipes are listed by ``Kitchen.recipes()`` and run by name; ``BUILTIN_RECIPES`` is
re-exported for the Kitchen's registry, not public.
"""

from __future__ import annotations

from crucible_kitchen.recipes._builtin import BUILTIN_RECIPES as BUILTIN_RECIPES
from crucible_kitchen.recipes._configs import AdamConfig as AdamConfig
from crucible_kitchen.recipes._configs import DistillationConfig as DistillationConfig
from crucible_kitchen.recipes._configs import DistillBasicConfig as DistillBasicConfig
from crucible_kitchen.recipes._configs import DpoBasicConfig as DpoBasicConfig
from crucible_kitchen.recipes._configs import FeedbackLoopConfig as FeedbackLoopConfig
from crucible_kitchen.recipes._configs import LocalTorchSettings as LocalTorchSettings
from crucible_kitchen.recipes._configs import PreferenceConfig as PreferenceConfig
from crucible_kitchen.recipes._configs import ReinforcementConfig as ReinforcementConfig
from crucible_kitchen.recipes._configs import RetrySettings as RetrySettings
from crucible_kitchen.recipes._configs import RlBasicConfig as RlBasicConfig
from crucible_kitchen.recipes._configs import SftWarmupSettings as SftWarmupSettings
from crucible_kitchen.recipes._configs import SlBasicConfig as SlBasicConfig
from crucible_kitchen.recipes._configs import StageTimeouts as StageTimeouts
from crucible_kitchen.recipes._configs import SupervisedConfig as SupervisedConfig
from crucible_kitchen.recipes._configs import TrainingConfig as TrainingConfig
from crucible_kitchen.recipes._recipe import Recipe as Recipe
from crucible_kitchen.recipes._smollm2 import SmolLM2LoraConfig as SmolLM2LoraConfig

__all__ = (
    "AdamConfig",
    "DistillBasicConfig",
    "DistillationConfig",
    "DpoBasicConfig",
    "FeedbackLoopConfig",
    "LocalTorchSettings",
    "PreferenceConfig",
    "Recipe",
    "ReinforcementConfig",
    "RetrySettings",
    "RlBasicConfig",
    "SftWarmupSettings",
    "SlBasicConfig",
    "SmolLM2LoraConfig",
    "StageTimeouts",
    "SupervisedConfig",
    "TrainingConfig",
)

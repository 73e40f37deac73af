"""Recipes: the Recipe contract (WHAT to train) and the built-in recipes and their configs."""

from __future__ import annotations

from crucible_kitchen.recipes._builtin import BUILTIN_RECIPES as BUILTIN_RECIPES
from crucible_kitchen.recipes._recipe import Recipe as Recipe
from crucible_kitchen.recipes._recipe import validate_config as validate_config

__all__ = ("BUILTIN_RECIPES", "Recipe", "validate_config")

"""The built-in recipes: one per built-in workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crucible_kitchen.recipes._recipe import Recipe

__all__ = ("BUILTIN_RECIPES",)

BUILTIN_RECIPES: tuple[Recipe, ...] = ()

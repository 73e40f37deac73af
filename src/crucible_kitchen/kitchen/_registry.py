"""Adapter sets and recipes registered by installed packages, through entry points.

A package registers them in its ``pyproject.toml``::

    [project.entry-points."crucible_kitchen.adapters"]
    my_backend = "my_package.kitchen:my_adapters"   # (seed=, run_dir=, **options) -> Adapters

    [project.entry-points."crucible_kitchen.recipes"]
    my_recipe = "my_package.kitchen:MY_RECIPE"      # a Recipe named "my_recipe"

crucible-kitchen registers its own adapter sets (``noop``, ``local_torch``, ``none``) the same
way, so every set is found alike, by name. Entry points are read when a name is first looked
up, and read again only once ``sys.path`` or a directory on it has changed (a package installed
or a path added since); a package's code is imported only when one of its names is used.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from crucible_kitchen.errors import AdapterSetNotFound, RegistryError
from crucible_kitchen.recipes import BUILTIN_RECIPES, Recipe

__all__ = (
    "ADAPTERS_GROUP",
    "RECIPES_GROUP",
    "AdapterFactory",
    "RecipeBook",
    "adapter_factory",
    "adapter_set_names",
)

ADAPTERS_GROUP: Final = "crucible_kitchen.adapters"
RECIPES_GROUP: Final = "crucible_kitchen.recipes"

AdapterFactory = Callable[..., Mapping[str, Any]]
"""``factory(seed=, run_dir=, **options)``: the adapters of a set, by port name."""


_EntryPoints = Mapping[str, tuple[importlib.metadata.EntryPoint, ...]]
_PathState = tuple[tuple[int, ...], tuple[tuple[str, int | None], ...]]

_found: dict[str, tuple[_PathState, _EntryPoints]] = {}
"""The entry points of each group read so far, with the state of the paths they were read from."""


def _path_state() -> _PathState:
    """The metadata finders, and each ``sys.path`` entry with its modification time: what
    ``importlib.metadata``'s own directory listings are keyed on, so a package installed into
    a directory on the path, or a path added, changes it."""
    entries: list[tuple[str, int | None]] = []
    for entry in sys.path:
        try:
            entries.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            entries.append((entry, None))
    return tuple(map(id, sys.meta_path)), tuple(entries)


def _entry_points(group: str) -> _EntryPoints:
    """The entry points of ``group`` by name (reading the installed packages' metadata costs
    milliseconds: it is read again only once the paths have changed)."""
    state = _path_state()
    cached = _found.get(group)
    if cached is not None and cached[0] == state:
        return cached[1]
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for point in importlib.metadata.entry_points(group=group):
        found.setdefault(point.name, []).append(point)
    points = {name: tuple(group_points) for name, group_points in found.items()}
    _found[group] = (state, points)
    return points


def _origin(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    package = "an unknown package" if dist is None else f"{dist.name} {dist.version}"
    return f"{point.value!r} of {package}"


def _load(group: str, name: str, points: Sequence[importlib.metadata.EntryPoint]) -> object:
    if len(points) > 1:
        raise RegistryError(
            f"{group} entry point {name!r} is registered more than once: "
            + ", ".join(_origin(p) for p in points),
            group=group,
            name=name,
        )
    (point,) = points
    try:
        return point.load()
    except Exception as exc:
        raise RegistryError(
            f"{group} entry point {name!r} ({_origin(point)}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}",
            group=group,
            name=name,
        ) from exc


def adapter_set_names() -> list[str]:
    """The names of every registered adapter set, sorted."""
    return sorted(_entry_points(ADAPTERS_GROUP))


def adapter_factory(name: str) -> AdapterFactory:
    """The factory of the adapter set registered as ``name``.

    Raises:
        AdapterSetNotFound: no package registers that name (the error lists those that are).
        RegistryError: it cannot be loaded, is registered twice, or is not callable.
    """
    points = _entry_points(ADAPTERS_GROUP)
    if name not in points:
        raise AdapterSetNotFound(name, known=sorted(points), group=ADAPTERS_GROUP)
    factory = _load(ADAPTERS_GROUP, name, points[name])
    if not callable(factory):
        raise RegistryError(
            f"{ADAPTERS_GROUP} entry point {name!r} is {factory!r}, not a factory "
            "(seed=, run_dir=, **options) -> Adapters",
            group=ADAPTERS_GROUP,
            name=name,
        )
    return factory


class RecipeBook(Mapping[str, Recipe]):
    """The recipes a Kitchen knows, by name: the built-in ones, those registered by
    installed packages, and the Kitchen's own (which win over a registered namesake).

    A registered recipe is loaded when it is first looked up; iterating gives the names,
    built-in ones first, without loading anything.
    """

    def __init__(self, extra: Sequence[Recipe] = ()) -> None:
        self._loaded: dict[str, Recipe] = {r.name: r for r in (*BUILTIN_RECIPES, *extra)}
        self._registered = {
            name: points
            for name, points in _entry_points(RECIPES_GROUP).items()
            if name not in self._loaded
        }

    def __getitem__(self, name: str) -> Recipe:
        recipe = self._loaded.get(name)
        if recipe is None:
            recipe = self._load(name, self._registered[name])
            self._loaded[name] = recipe
        return recipe

    def __iter__(self) -> Iterator[str]:
        yield from self._loaded
        yield from (name for name in self._registered if name not in self._loaded)

    def __len__(self) -> int:
        return len(self._loaded) + sum(name not in self._loaded for name in self._registered)

    @staticmethod
    def _load(name: str, points: Sequence[importlib.metadata.EntryPoint]) -> Recipe:
        recipe = _load(RECIPES_GROUP, name, points)
        if not isinstance(recipe, Recipe) or recipe.name != name:
            raise RegistryError(
                f"{RECIPES_GROUP} entry point {name!r} ({_origin(points[0])}) must name a "
                f"Recipe called {name!r}, not {recipe!r}",
                group=RECIPES_GROUP,
                name=name,
            )
        return recipe

"""Adapter sets and recipes registered by an installed package, found through entry points.

The package is real: a module and a ``.dist-info`` directory with an ``entry_points.txt`` on
``sys.path``, read by ``importlib.metadata`` exactly as an installed wheel would be.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from crucible_kitchen import Adapters, Kitchen
from crucible_kitchen.cli import main
from crucible_kitchen.errors import AdapterSetNotFound, PortError, RecipeNotFound, RegistryError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

COOKBOOK = '''
from crucible_kitchen import Adapters, Recipe
from crucible_kitchen.recipes import SupervisedConfig
from crucible_kitchen.workflows import supervised_workflow

CALLS = []


def cookbook_adapters(*, seed, run_dir, **options):
    """The cookbook's adapter set: the noop adapters, recording how it was built."""
    CALLS.append({"seed": seed, "run_dir": run_dir, **options})
    return dict(Adapters.noop(seed=seed))


def not_a_mapping(*, seed, run_dir):
    return 42


COOKBOOK_SFT = Recipe(
    "cookbook_sft",
    "The cookbook's own supervised recipe, on the cookbook's adapters",
    supervised_workflow,
    SupervisedConfig,
    adapters="cookbook",
    adapter_options=lambda config, name: {"flavour": "spicy"} if name == "cookbook" else {},
)
'''

ENTRY_POINTS = """
[crucible_kitchen.adapters]
cookbook = kitchen_cookbook:cookbook_adapters

[crucible_kitchen.recipes]
cookbook_sft = kitchen_cookbook:COOKBOOK_SFT
"""

BROKEN_ENTRY_POINTS = """
[crucible_kitchen.adapters]
unloadable = kitchen_cookbook_gone:factory
returns_42 = kitchen_cookbook:not_a_mapping
cookbook = kitchen_cookbook:cookbook_adapters

[crucible_kitchen.recipes]
misnamed = kitchen_cookbook:COOKBOOK_SFT
"""


def _install(root: Path, name: str, entry_points: str) -> None:
    """A ``.dist-info`` directory as pip writes one, in ``root``."""
    dist_info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def cookbook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The ``kitchen-cookbook`` distribution, installed on ``sys.path`` for one test."""
    (tmp_path / "kitchen_cookbook.py").write_text(COOKBOOK)
    _install(tmp_path, "kitchen-cookbook", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import kitchen_cookbook  # type: ignore[import-not-found]

    yield kitchen_cookbook
    del sys.modules["kitchen_cookbook"]


@pytest.fixture
def broken(cookbook: object, tmp_path: Path) -> None:
    """A second package whose registrations are broken, one of them a name taken twice."""
    _install(tmp_path, "kitchen-broken", BROKEN_ENTRY_POINTS)


def test_the_built_in_adapter_sets_are_registered_like_any_other() -> None:
    assert {"local_torch", "noop", "none"} <= set(Adapters.names())
    assert Adapters.named("none") == Adapters()
    assert Adapters.named("noop", seed=3).name == "noop"


@pytest.mark.anyio
async def test_a_packages_recipe_runs_on_its_adapter_set(cookbook: object, tmp_path: Path) -> None:
    assert "cookbook" in Adapters.names()
    result = await Kitchen.run("cookbook_sft", {"max_steps": 2}, seed=5)
    assert (result.status, result.recipe, result.steps) == ("completed", "cookbook_sft", 2)
    assert cookbook.CALLS == [{"seed": 5, "run_dir": None, "flavour": "spicy"}]  # type: ignore[attr-defined]

    async with Kitchen.open() as kitchen:
        names = [info.name for info in kitchen.recipes()]
        assert names[-1] == "cookbook_sft"  # after the built-in ones
        assert kitchen.recipe("cookbook_sft") is cookbook.COOKBOOK_SFT  # type: ignore[attr-defined]
        assert kitchen.dry_run("supervised", adapters="cookbook").adapters.name == "cookbook"


def test_the_cli_lists_a_packages_recipes(
    cookbook: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recipes"]) == 0
    assert "cookbook_sft" in capsys.readouterr().out
    assert main(["describe", "cookbook_sft"]) == 0
    assert capsys.readouterr().out.startswith("workflow supervised")


@pytest.mark.anyio
async def test_an_unknown_adapter_set_is_a_typed_error_listing_the_known_ones(
    cookbook: object,
) -> None:
    with pytest.raises(AdapterSetNotFound) as caught:
        await Kitchen.run("supervised", {"max_steps": 1}, adapters="fireworks")
    assert isinstance(caught.value, PortError | LookupError)
    assert caught.value.known == sorted(Adapters.names())
    assert (
        "no adapter set named 'fireworks'; known: cookbook, local_torch, none, noop, tinker"
        in str(caught.value)
    )


def test_a_broken_registration_names_the_entry_point_and_its_package(
    broken: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RegistryError, match=r"'unloadable'.*kitchen-broken 1\.0.*cannot be loaded"):
        Adapters.named("unloadable")
    with pytest.raises(RegistryError, match="'cookbook' is registered more than once"):
        Adapters.named("cookbook")
    with pytest.raises(RegistryError, match="returned int, not Adapters"):
        Adapters.named("returns_42")
    with pytest.raises(RegistryError, match="must name a Recipe called 'misnamed'") as caught:
        Kitchen.describe("misnamed")
    assert (caught.value.group, caught.value.name) == ("crucible_kitchen.recipes", "misnamed")
    with pytest.raises(RecipeNotFound, match="cookbook_sft"):
        Kitchen.describe("cookbook_sfx")
    assert main(["recipes"]) != 0  # a broken recipe is reported, not skipped
    assert "'misnamed'" in capsys.readouterr().err


def test_entry_points_are_read_once_until_a_package_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[dict[str, Any]] = []
    read = importlib.metadata.entry_points

    def counted(**params: Any) -> importlib.metadata.EntryPoints:
        reads.append(params)
        return read(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", counted)
    monkeypatch.syspath_prepend(str(tmp_path))  # a path added: read again
    assert "cookbook" not in Adapters.names()
    assert Adapters.named("noop").name == "noop"
    assert "cookbook" not in Adapters.names()
    assert reads == [{"group": "crucible_kitchen.adapters"}]

    (tmp_path / "kitchen_cookbook.py").write_text(COOKBOOK)
    _install(tmp_path, "kitchen-cookbook", ENTRY_POINTS)
    # A directory's mtime has the clock's coarse resolution: make sure the install shows.
    stamp = tmp_path.stat().st_mtime_ns + 1_000_000_000
    os.utime(tmp_path, ns=(stamp, stamp))
    try:
        assert "cookbook" in Adapters.names()
        assert len(reads) == 2
        assert Adapters.named("cookbook", seed=1).name == "cookbook"
        assert len(reads) == 2
    finally:
        sys.modules.pop("kitchen_cookbook", None)

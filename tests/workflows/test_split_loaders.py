"""The three loaders (SFT rows, RL problems, distillation prompts) read splits alike: a split
name or a Python-style slice of one, and refuse a malformed spec or an unknown split."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from crucible_kitchen.adapters.noop import noop_adapters
from crucible_kitchen.errors import ConfigError, DataError
from crucible_kitchen.recipes import BUILTIN_RECIPES
from crucible_kitchen.stages import Context, RunInfo, Stage
from crucible_kitchen.stages.builtin import LoadDataset, LoadProblems, LoadPrompts
from crucible_kitchen.telemetry import TelemetryBus

pytestmark = pytest.mark.anyio

LOADERS: dict[str, tuple[type[Stage], str]] = {  # the recipe, its loader, the key it fills
    "supervised": (LoadDataset, "train_rows"),
    "reinforcement": (LoadProblems, "problems"),
    "distillation": (LoadPrompts, "prompts"),
}


async def load(recipe: str, split: str) -> tuple[Any, ...]:
    """What the recipe's loader puts in the state from ``split`` of 40 synthetic rows."""
    loader, key = LOADERS[recipe]
    config = SimpleNamespace(
        dataset="arithmetic", split=split, max_examples=None, extra_datasets=()
    )
    run = RunInfo(
        run_id="r",
        workflow=recipe,
        config=config,
        ports=noop_adapters(seed=4, num_rows=40),
        seed=4,
        telemetry=TelemetryBus("r"),
    )
    ctx = await loader().execute(Context(run, path="load"))
    assert ctx is not None
    assert ctx.state["dataset"] == "arithmetic"
    return tuple(ctx.state[key])


@pytest.mark.parametrize("recipe", sorted(LOADERS))
async def test_every_loader_reads_a_slice_of_a_split(recipe: str) -> None:
    everything = await load(recipe, "train")
    head, tail = await load(recipe, "train[:-8]"), await load(recipe, "train[-8:]")
    assert (len(everything), len(head), len(tail)) == (40, 32, 8)
    assert sorted(map(repr, head + tail)) == sorted(map(repr, everything))
    assert len(await load(recipe, "train[10:20]")) == 10
    assert len(await load(recipe, "test")) == 10


@pytest.mark.parametrize("recipe", sorted(LOADERS))
async def test_every_loader_refuses_a_bad_split(recipe: str) -> None:
    with pytest.raises(DataError, match="is not 'NAME' or 'NAME\\[start:stop\\]'"):
        await load(recipe, "train[::2]")
    with pytest.raises(DataError, match="has no split 'dev'"):
        await load(recipe, "dev")


@pytest.mark.parametrize("recipe", sorted(LOADERS))
def test_every_recipe_config_takes_a_slice_and_refuses_a_malformed_split(recipe: str) -> None:
    (model,) = (r for r in BUILTIN_RECIPES if r.name == recipe)
    assert model.config({"split": "train[:-64]"}).split == "train[:-64]"
    with pytest.raises(ConfigError, match="split"):
        model.config({"split": "train[1:2:3]"})

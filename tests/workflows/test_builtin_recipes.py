"""The built-in recipes: names, config-shaped workflow trees, ports, reproducibility."""

from __future__ import annotations

from typing import Any

import pytest

from crucible_kitchen.adapters.noop import NoopSamplingClient
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.ports import PORT_PROTOCOLS
from crucible_kitchen.recipes import BUILTIN_RECIPES
from crucible_kitchen.stages import Stage

NAMES = ("supervised", "reinforcement", "preference", "distillation", "feedback_loop")


def required_ports(name: str, config: dict[str, Any]) -> set[str]:
    recipe = next(r for r in BUILTIN_RECIPES if r.name == name)
    return recipe.build(recipe.config(config)).required_ports()


def test_there_is_one_noop_recipe_per_builtin_workflow() -> None:
    noop = [r for r in BUILTIN_RECIPES if r.adapters == "noop"]
    assert tuple(r.name for r in noop) == NAMES
    main_jobs = {r.name: r for r in BUILTIN_RECIPES if r.adapters != "noop"}
    assert {name: recipe.build(recipe.config({})).name for name, recipe in main_jobs.items()} == {
        "sl_basic": "supervised",
        "rl_basic": "reinforcement",
        "dpo_basic": "preference",
        "distill_basic": "distillation",
        "smollm2_lora": "supervised",
    }
    for recipe in main_jobs.values():
        assert (recipe.adapters, recipe.writes_run_dir) == ("local_torch", True)
    for recipe in BUILTIN_RECIPES:
        workflow = recipe.build(recipe.config({}))
        assert workflow.name == recipe.name or recipe.name in main_jobs
        for node in workflow.stages():
            assert isinstance(node.stage, Stage)
            assert node.stage.description, node.name  # a one-line docstring
            assert set(node.stage.requires) <= {*PORT_PROTOCOLS, "teacher_sampling_client"}


def test_a_workflow_holds_only_the_stages_its_config_asks_for() -> None:
    plain = Kitchen.describe("reinforcement")
    assert "kl_penalty" not in plain
    assert "async_loop" not in plain
    assert "kl_penalty" in Kitchen.describe("reinforcement", {"kl_penalty_coef": 0.1})
    assert "async_loop batches" in Kitchen.describe("reinforcement", {"mode": "async"})
    assert "sampling_client" not in required_ports("reinforcement", {})
    assert "sampling_client" in required_ports("reinforcement", {"kl_penalty_coef": 0.1})
    quiet = {"final_eval": False, "register_model": False}
    assert required_ports("supervised", quiet) == {
        "dataset_store", "renderer", "tokenizer", "training_client", "metrics_store",
    }  # fmt: skip
    assert {"evaluator", "model_registry"} <= required_ports("supervised", {})
    assert "checkpoint" in Kitchen.describe("preference", {"save_every": 2})
    assert "teacher_sampling_client" in required_ports("distillation", {})


@pytest.mark.anyio
@pytest.mark.parametrize("name", NAMES)
async def test_every_builtin_recipe_is_reproducible(name: str) -> None:
    async def run(seed: int) -> Any:
        adapters = Adapters.noop(seed=seed).replace(
            teacher_sampling_client=NoopSamplingClient(seed=seed + 100)
        )
        return await Kitchen.run(name, {}, adapters=adapters, seed=seed, run_id=f"{name}-run")

    first, second, other = await run(1), await run(1), await run(2)
    assert first.status == "completed"
    assert first.steps > 0
    assert (first.metrics, first.artifacts) == (second.metrics, second.artifacts)
    assert first.metrics != other.metrics

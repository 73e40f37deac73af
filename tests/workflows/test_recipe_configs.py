"""The built-in recipes' configs: strict values, text parsed, finite floats, bounds, every
error at once; the retry and timeout settings reach every stage."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest

from crucible_kitchen.cli import parse_overrides
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.recipes import BUILTIN_RECIPES, Recipe
from crucible_kitchen.stages import RetryPolicy

RECIPES = {recipe.name: recipe for recipe in BUILTIN_RECIPES}


def float_fields(model: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    """Every float field of a config model, nested models included, as a dotted path."""
    paths: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            paths += float_fields(annotation, f"{prefix}{name}.")
        elif annotation in (float, float | None):
            paths.append(f"{prefix}{name}")
    return paths


def nested(path: str, value: object) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    settings: dict[str, Any] = {leaf: value}
    for parent in reversed(parents):
        settings = {parent: settings}
    return settings


def problems(recipe: Recipe, settings: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        recipe.config(settings)
    return list(info.value.problems)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_float_setting_must_be_finite(name: str) -> None:
    recipe = RECIPES[name]
    paths = float_fields(recipe.config_model)
    assert {"learning_rate", "adam.eps", "retry.backoff", "timeouts.backend"} <= set(paths)
    for path in paths:
        for value in (math.inf, -math.inf, math.nan):
            [problem] = problems(recipe, nested(path, value))
            assert problem.startswith(f"{path}: Input should be a finite number"), problem


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("epochs", True),  # would run one epoch
        ("batch_size", False),
        ("learning_rate", True),
        ("epochs", 2.5),
        ("epochs", 2.0),
        ("shuffle", 1),
        ("final_eval", "maybe"),
        ("max_steps", "ten"),
        ("model_name", 7),
    ],
)
def test_python_values_of_another_type_are_refused_not_converted(
    setting: str, value: object
) -> None:
    [problem] = problems(RECIPES["supervised"], {setting: value})
    assert problem.startswith(f"{setting}: Input should be a valid"), problem


def test_text_is_read_as_the_field_type() -> None:
    config = RECIPES["supervised"].config(
        {
            "epochs": "3",
            "learning_rate": ".001",
            "shuffle": "false",
            "max_steps": "40",
            "adam": {"beta1": "0.8"},
            "timeouts": {"backend": "60"},
            "model_version": "2",
            "eval_split": "train[-8:]",
        }
    )
    assert (config.epochs, config.learning_rate, config.shuffle) == (3, 0.001, False)
    assert (config.max_steps, config.adam.beta1, config.timeouts.backend) == (40, 0.8, 60.0)
    assert (config.model_version, config.eval_split) == ("2", "train[-8:]")


def test_command_line_settings_still_reach_the_config() -> None:
    overrides = parse_overrides(
        [
            "epochs=2",
            "learning_rate=1e-3",
            "warmup_steps=0",
            "adam.beta1=0.8",
            "shuffle=false",
            "eval_examples=null",
            "retry.attempts=4",
            "timeouts.bookkeeping=30",
            "lr_schedule=cosine",
            "split=train[:-8]",
            "model_version=v2",
        ]
    )
    config = RECIPES["supervised"].config(overrides)
    assert (config.epochs, config.learning_rate, config.adam.beta1) == (2, 0.001, 0.8)
    assert (config.shuffle, config.eval_examples, config.lr_schedule) == (False, None, "cosine")
    assert (config.retry.attempts, config.timeouts.bookkeeping) == (4, 30.0)
    assert (config.split, config.model_version) == ("train[:-8]", "v2")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_validated_config_survives_its_json_record(name: str) -> None:
    # config.json keeps model_dump(mode="json"); resume validates it again.
    recipe = RECIPES[name]
    config = recipe.config({"retry": {"backoff": 2}, "timeouts": {"backend": None}})
    assert recipe.config(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("epochs", 10**30),
        ("epochs", 1e30),
        ("batch_size", 10**12),
        ("max_steps", 10**15),
        ("max_length", 10**9),
        ("learning_rate", 1e6),
        ("retry", {"attempts": 10**6}),
        ("timeouts", {"backend": 1e12}),
    ],
)
def test_values_no_run_can_mean_are_refused(setting: str, value: object) -> None:
    [problem] = problems(RECIPES["supervised"], {setting: value})
    assert problem.split(":")[0].startswith(setting)


def test_every_problem_is_listed_at_once_with_its_path() -> None:
    found = problems(
        RECIPES["supervised"],
        {
            "epochs": True,
            "learning_rate": math.inf,
            "adam": {"beta1": math.nan},
            "retry": {"attempts": 0},
            "timeouts": {"bookkeeping": -1},
        },
    )
    paths = [problem.split(":")[0] for problem in found]
    assert sorted(paths) == [
        "adam.beta1",
        "epochs",
        "learning_rate",
        "retry.attempts",
        "timeouts.bookkeeping",
    ]


def test_the_retry_and_timeout_settings_reach_every_stage() -> None:
    recipe = RECIPES["supervised"]
    config = recipe.config(
        {"retry": {"attempts": 4, "backoff": 0.25}, "timeouts": {"backend": 90, "bookkeeping": 9}}
    )
    nodes = {node.name: node for node in recipe.build(config).stages()}
    assert nodes["submit_step"].timeout == 90.0
    assert nodes["shuffle"].timeout == 9.0
    assert nodes["flush_metrics"].timeout == 9.0  # a cleanup stage too
    for node in nodes.values():
        assert (node.retry.max_attempts, node.retry.backoff) == (4, 0.25)
    # Each stage keeps its own judgement of which errors are worth a retry.
    assert nodes["build_dataset"].retry.never_retry != RetryPolicy().never_retry

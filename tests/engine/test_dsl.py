"""Workflows are checked when they are defined, not mid-run."""

from __future__ import annotations

import pytest

from crucible_kitchen.errors import WorkflowDefinitionError
from crucible_kitchen.stages import Context, RetryPolicy, Stage
from crucible_kitchen.workflows import (
    Workflow,
    async_loop,
    conditional,
    loop,
    parallel,
    stage,
    stream_loop,
)


class Train(Stage):
    """Train one step."""

    requires = ("training_client",)


async def noop(ctx: Context) -> None:
    """Do nothing."""


def test_a_valid_tree_of_every_construct_nested() -> None:
    wf = Workflow(
        "demo",
        stage("load", noop),
        loop(
            "epochs",
            2,
            parallel("both", [stage("a", noop)], [stage("b", noop)], max_concurrency=1),
            conditional(
                "maybe", lambda ctx: True, then=[stage("c", noop)], otherwise=[stage("d", noop)]
            ),
            async_loop(
                "rl", 3, produce=[stage("sample", noop)], consume=[stage("learn", Train)], buffer=2
            ),
            stream_loop("stream", lambda ctx: iter(range(3)), stage("eat", noop), prefetch=1),
        ),
        cleanup=[stage("close", noop)],
    )
    assert wf.paths["learn"] == "epochs/rl/learn"
    assert wf.paths["close"] == "cleanup/close"
    assert wf.required_ports() == {"training_client"}
    assert wf.cleanup_stage_names() == {"close"}
    text = wf.describe()
    assert "stage learn (Train)  [Train one step.]" in text
    assert "async_loop rl" in text


def test_every_problem_is_reported_at_definition() -> None:
    with pytest.raises(WorkflowDefinitionError) as caught:
        Workflow(
            "bad",
            stage("x", noop),
            stage("x", noop),
            loop("l", -1, stage("y", noop)),
            loop("empty", 1),
            conditional("c", "not callable", then=[stage("z", noop)]),  # type: ignore[arg-type]
            stream_loop("s", lambda ctx: [], stage("w", noop), prefetch=0),
            parallel("p", [stage("v", noop)], max_concurrency=0),
            stage("r", noop, retry=RetryPolicy(max_attempts=0)),
            "not a node",  # type: ignore[arg-type]
        )
    problems = "\n".join(caught.value.problems)
    for expected in (
        "duplicate name 'x'",
        "l: over must be",
        "empty: body is empty",
        "c: when must be callable",
        "s: prefetch",
        "p: max_concurrency",
        "r: retry.max_attempts",
        "is not a workflow node",
    ):
        assert expected in problems
    assert isinstance(caught.value, ValueError)


def test_a_stage_must_be_a_stage_or_an_async_function() -> None:
    with pytest.raises(TypeError, match="expected a Stage"):
        stage("sync", lambda ctx: None)


def test_stage_names_default_from_the_class() -> None:
    class LoadDataset(Stage):
        pass

    assert LoadDataset.name == "load_dataset"

"""Workflows are checked when they are defined, not mid-run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from crucible_kitchen.errors import ConfigError, WorkflowDefinitionError
from crucible_kitchen.stages import (
    Context,
    FunctionStage,
    RetryPolicy,
    Stage,
    StageContract,
    StateKey,
)
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


ROWS = StateKey("rows", tuple)
TOTAL = StateKey("total", int)


class Load(Stage):
    """Read the rows."""

    contract = StageContract(config=("dataset",), writes=(ROWS,))


class Count(Stage):
    """Count the rows."""

    contract = StageContract(config=("scale",), reads=(ROWS,), writes=(TOTAL,))


def test_stage_contracts_that_disagree_are_reported_at_definition() -> None:
    Workflow("fine", stage("load", Load), stage("count", Count))
    retyped = StageContract(reads=(StateKey("rows", list),), writes=(StateKey("total", str),))
    with pytest.raises(WorkflowDefinitionError) as caught:
        Workflow(
            "bad",
            stage("count", Count),
            stage("again", FunctionStage(noop, contract=retyped)),
        )
    assert caught.value.problems == [
        "again: state key 'rows' is declared as StateKey(name='rows', type=<class 'list'>, "
        "rebuilt_on_resume=False), but as StateKey(name='rows', type=<class 'tuple'>, "
        "rebuilt_on_resume=False) by count",
        "again: state key 'total' is declared as StateKey(name='total', type=<class 'str'>, "
        "rebuilt_on_resume=False), but as StateKey(name='total', type=<class 'int'>, "
        "rebuilt_on_resume=False) by count",
        "count: reads state key 'rows', which no stage of the workflow writes",
        "again: reads state key 'rows', which no stage of the workflow writes",
    ]


def test_a_stage_without_a_contract_may_write_what_the_others_read() -> None:
    """A stage that declares nothing may write anything: reads go unchecked then."""
    workflow = Workflow("mixed", stage("load", noop), stage("count", Count))
    assert [name for name, _ in workflow.contracts()] == ["count"]


def test_a_config_without_declared_fields_is_refused_with_every_field() -> None:
    workflow = Workflow("fine", stage("load", Load), stage("count", Count))
    workflow.check_config(SimpleNamespace(dataset="d", scale=2))
    with pytest.raises(ConfigError) as caught:
        workflow.check_config(SimpleNamespace())
    assert caught.value.problems == [
        "dataset: missing; 'load' reads it",
        "scale: missing; 'count' reads it",
    ]
    assert caught.value.source == "config for workflow 'fine'"

"""Stage contracts hold: every built-in stage reads and writes exactly what it declares.

Each built-in stage's ``execute`` (and each declared function of the context the built-in
workflows call: loop ranges, conditions) is wrapped so that it sees its config and state
through recording proxies; then every built-in workflow runs on the noop adapters (with the options
that add its optional stages, and resumed from a checkpoint). A stage that touches a config
field or state key it did not declare, writes a value of another type than its key's, or
declares something no run ever touches, fails the test: declarations cannot rot.

The built-in recipes' configs have every field their workflows' stages declare, with any
options; a config without some is refused before the run starts, every missing field listed.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

import crucible_kitchen.stages as stages
import crucible_kitchen.workflows._builtin as builtin_workflows
from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.kitchen import Adapters, Kitchen, RunHandle
from crucible_kitchen.recipes import BUILTIN_RECIPES, Recipe, TrainingConfig
from crucible_kitchen.stages import (
    RESUME_FROM,
    Context,
    RunInfo,
    Stage,
    StageContract,
    StateKey,
    contract_of,
    declares,
    snapshot_from_checkpoint,
)
from crucible_kitchen.stages.builtin import SaveCheckpoint
from crucible_kitchen.telemetry import TrainingCheckpoint
from crucible_kitchen.workflows import Workflow, stage, supervised_workflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from crucible_kitchen.telemetry import TelemetryEvent

WORKFLOWS = ("supervised", "reinforcement", "preference", "distillation", "feedback_loop")

OPTIONS: dict[str, list[dict[str, Any]]] = {
    "supervised": [{"epochs": 2, "save_every": 3, "eval_every": 4, "eval_generations": 1}],
    "reinforcement": [
        {
            "num_batches": 2,
            "kl_penalty_coef": 0.1,
            "eval_every": 1,
            "save_every": 1,
            "compute_post_kl": True,
        },
        {"num_batches": 1, "sft_warmup_steps": 2, "initial_eval": True},
        {
            "num_batches": 3,
            "mode": "async",
            "loss_fn": "ppo",
            "remove_constant_reward_groups": True,
        },
    ],
    "preference": [
        {"epochs": 2, "save_every": 2, "eval_every": 3},
        {"sft_warmup_steps": 2, "initial_eval": True, "eval_pairs": True, "eval_split": "train"},
    ],
    "distillation": [
        {"num_batches": 3, "save_every": 2, "eval_every": 2},
        {"num_batches": 1, "initial_eval": True, "eval_teacher_kl": True, "eval_split": "train"},
        {"num_batches": 2, "mode": "off_policy"},
    ],
    "feedback_loop": [{"eval_every": 1, "save_every": 1}],
}
ON_DISK_ONLY = frozenset(("InitFromWeights", "starts_from_weights"))
"""Stages and predicates of ``init_from``, which names weights on disk that the noop backend
cannot load: tests/local_torch/test_main_jobs.py runs them."""
RESUMED: dict[str, dict[str, Any]] = {
    "supervised": {"batch_size": 8, "epochs": 2},
    "reinforcement": {"num_batches": 4, "sampler_refresh_every": 3},
    "preference": {"batch_size": 8},
    "distillation": {"num_batches": 4},
}


@dataclass
class Usage:
    """What one stage class was seen to touch, over every run."""

    config: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    declared: set[StageContract] = field(default_factory=set)


class RecordingState(dict[str, Any]):
    """A state dict that notes each key read (before this execution wrote it: reading back
    what it wrote is no input) and each key written or removed."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__(state)
        self.reads: set[str] = set()
        self.writes: dict[str, list[Any]] = defaultdict(list)

    def _read(self, key: object) -> None:
        if key not in self.writes:
            self.reads.add(str(key))

    def __getitem__(self, key: str) -> Any:
        self._read(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._read(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._read(key)
        return super().__contains__(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key].append(value)
        super().__setitem__(key, value)

    def pop(self, key: str, *default: Any) -> Any:
        self._read(key)
        self.writes.setdefault(key, [])  # a removal: a write with no value to type-check
        return super().pop(key, *default)

    def __delitem__(self, key: str) -> None:
        self.writes.setdefault(key, [])
        super().__delitem__(key)


class RecordingConfig:
    """A config whose field reads (fields and properties of its model) are noted."""

    def __init__(self, config: Any, seen: set[str]) -> None:
        self._config = config
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        model = type(self._config)
        if name in getattr(model, "model_fields", {}) or isinstance(
            getattr(model, name, None), property
        ):
            self._seen.add(name)
        return getattr(self._config, name)


def _with_config(run: RunInfo, config: Any) -> RunInfo:
    info = RunInfo(
        run_id=run.run_id,
        workflow=run.workflow,
        config=config,
        ports=run.ports,
        seed=run.seed,
        telemetry=run.telemetry,
        tracer=run.tracer,
        recipe=run.recipe,
        run_dir=run.run_dir,
        fault_hook=run.fault_hook,
    )
    info.stop_requested = run.stop_requested
    return info


def _builtin_stage_classes() -> Iterator[type[Stage]]:
    """The built-in stage classes that define ``execute`` (not the Stage contract's own)."""
    for name in stages.__all__:
        value = getattr(stages, name)
        if (
            isinstance(value, type)
            and issubclass(value, Stage)
            and "execute" in vars(value)
            and value.__module__ != Stage.__module__
        ):
            yield value


def _builtin_predicates() -> list[tuple[str, Callable[[Context], Any]]]:
    """The declared functions of the context the built-in workflows call."""
    return [
        (name, value)
        for name, value in vars(builtin_workflows).items()
        if inspect.isfunction(value) and contract_of(value) is not None
    ]


def _is_instance(value: Any, key: StateKey) -> bool:
    if getattr(key.type, "_is_protocol", False):
        return True  # a Protocol without runtime checks: the port conformance tests cover it
    return isinstance(value, key.type)


def _violations(
    where: str, contract: StageContract | None, config: set[str], state: RecordingState
) -> list[str]:
    if contract is None:
        return [f"{where}: declares no contract"]
    problems = [f"{where}: reads config.{f}, undeclared" for f in config - set(contract.config)]
    readable = {k.name for k in (*contract.reads, *contract.may_read)}
    problems += [f"{where}: reads state {k!r}, undeclared" for k in state.reads - readable]
    writable = {k.name: k for k in contract.writes}
    for name, values in state.writes.items():
        key = writable.get(name)
        if key is None:
            problems.append(f"{where}: writes state {name!r}, undeclared")
            continue
        problems += [
            f"{where}: writes state {name!r} a {type(v).__name__}, not {key.type.__name__}"
            for v in values
            if not _is_instance(v, key)
        ]
    return problems


@contextmanager
def _recorded(
    ctx: Context, declared: StageContract | None, where: str, seen: Usage, problems: list[str]
) -> Iterator[RecordingState]:
    """Let ``ctx`` record what is done with it, then check that against ``declared``."""
    run, state, config_seen = ctx.run, ctx.state, set[str]()
    recording = RecordingState(state)
    ctx.run = _with_config(run, RecordingConfig(run.config, config_seen))
    ctx.state = recording
    try:
        yield recording
    finally:
        ctx.run, ctx.state = run, state
    problems.extend(_violations(where, declared, config_seen, recording))
    seen.config |= config_seen
    seen.reads |= recording.reads
    seen.writes |= set(recording.writes)
    if declared is not None:
        seen.declared.add(declared)


def _recording_predicate(
    fn: Callable[[Context], Any], usage: dict[str, Usage], problems: list[str]
) -> Callable[[Context], Any]:
    def recorded(ctx: Context) -> Any:
        with _recorded(ctx, contract_of(fn), fn.__name__, usage[fn.__name__], problems):
            return fn(ctx)

    return declares(contract_of(fn) or StageContract())(recorded)


def _recording(
    cls: type[Stage], usage: dict[str, Usage], problems: list[str]
) -> Callable[[Stage, Context], Awaitable[Context | None]]:
    """``cls.execute``, recording; what it touches is noted under ``cls`` (the base class,
    for stages that inherit its ``execute``)."""
    execute = cls.execute

    async def recorded(self: Stage, ctx: Context) -> Context | None:
        where = type(self).__name__
        with _recorded(ctx, self.contract, where, usage[cls.__name__], problems) as state:
            result = await execute(self, ctx)
        if result is None or result is ctx:
            ctx.state = dict(state)  # what the stage did, in a plain dict again
        else:
            result.run = ctx.run
            if result.state is state:
                result.state = dict(state)
        return result

    return recorded


async def _stop_and_resume(workflow: str, config: dict[str, Any]) -> None:
    """Stop a run after its step 1 (a stop checkpoints), then resume it from that checkpoint."""
    checkpoints: dict[str, bytes] = {}
    handles: list[RunHandle] = []
    events: list[TelemetryEvent] = []

    def stop(event: TelemetryEvent) -> None:
        events.append(event)
        if getattr(event, "step", None) == 1:
            handles[0].request_stop()

    def adapters() -> Adapters:
        client = NoopTrainingClient(seed=3, checkpoints=checkpoints)
        return Adapters.noop(seed=3).replace(training_client=client)

    async with Kitchen.open() as kitchen:
        handles.append(await kitchen.start(workflow, config, adapters=adapters(), telemetry=[stop]))
        await handles[0].result()
        context = handles[0].outcome.context
        assert context is not None
        (saved,) = [e for e in events if isinstance(e, TrainingCheckpoint)]
        resumed = await kitchen.start(
            workflow,
            config,
            adapters=adapters(),
            resume=snapshot_from_checkpoint(context.state["checkpoint_context"]),
            initial_state={RESUME_FROM: saved.path},
        )
        assert (await resumed.wait()).status == "completed"


@pytest.mark.anyio
async def test_every_builtin_stage_reads_and_writes_what_it_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usage: dict[str, Usage] = defaultdict(Usage)
    problems: list[str] = []
    for cls in _builtin_stage_classes():
        monkeypatch.setattr(cls, "execute", _recording(cls, usage, problems))
    for name, fn in _builtin_predicates():
        monkeypatch.setattr(builtin_workflows, name, _recording_predicate(fn, usage, problems))
    for workflow in WORKFLOWS:
        for config in [{}, *OPTIONS[workflow]]:
            result = await Kitchen.run(workflow, config, adapters="noop", seed=2)
            assert result.status == "completed", (workflow, config)
    for workflow, config in RESUMED.items():
        await _stop_and_resume(workflow, config)

    assert problems == [], "\n".join(problems)
    unused = []
    names = [c.__name__ for c in _builtin_stage_classes()] + [n for n, _ in _builtin_predicates()]
    for name in names:
        if name in ON_DISK_ONLY:
            continue
        seen = usage.pop(name, None)
        assert seen is not None, f"no run executed {name}"
        for contract in seen.declared:
            unused += [f"{name}: config.{f}" for f in set(contract.config) - seen.config]
            unused += [
                f"{name}: reads {k.name!r}"
                for k in (*contract.reads, *contract.may_read)
                if k.name not in seen.reads
            ]
            unused += [
                f"{name}: writes {k.name!r}" for k in contract.writes if k.name not in seen.writes
            ]
    assert unused == [], "declared, never touched by any run:\n" + "\n".join(unused)


def test_every_builtin_stage_declares_a_contract() -> None:
    for recipe in BUILTIN_RECIPES:
        for options in [{}, *OPTIONS.get(recipe.name, [])]:
            workflow = recipe.build(recipe.config(options))
            undeclared = [n.name for n in workflow.stages() if n.stage.contract is None]
            assert undeclared == [], recipe.name
            for _, node in workflow.walk():
                for part in ("over", "when", "source"):
                    fn = getattr(node, part, None)
                    assert fn is None or contract_of(fn) is not None, (recipe.name, node.name)


@pytest.mark.parametrize("recipe", BUILTIN_RECIPES, ids=lambda r: r.name)
def test_builtin_recipe_configs_have_every_field_their_stages_read(recipe: Recipe) -> None:
    for options in [{}, *OPTIONS.get(recipe.name, [])]:
        config = recipe.config(options)
        workflow = recipe.build(config)
        workflow.check_config(config)
        fields = {f for _, contract in workflow.contracts() for f in contract.config}
        assert fields <= set(type(config).model_fields), recipe.name


class _TooSmall(TrainingConfig):
    """A config the supervised workflow can be built from, but whose stages lack fields."""

    eval_generations: int = 0
    batch_size: int = 4


@pytest.mark.anyio
async def test_a_config_without_fields_the_stages_read_is_refused_before_the_run() -> None:
    recipe = Recipe("too_small", "lacks fields", supervised_workflow, _TooSmall)
    async with Kitchen.open() as kitchen:
        with pytest.raises(ConfigError) as caught:
            kitchen.dry_run(recipe, {}, adapters="noop")
    missing = {p.split(":")[0] for p in caught.value.problems}
    assert missing == {
        "dataset", "split", "max_examples", "train_on_what", "max_length", "epochs",
        "max_steps", "shuffle", "pipeline_depth",
    }  # fmt: skip
    assert "dataset: missing; 'load_dataset' reads it" in caught.value.problems
    assert caught.value.source == "config for workflow 'supervised'"


SCRATCH = StateKey("scratch_rows", tuple, rebuilt_on_resume=True)
KEPT = StateKey("kept_rows", tuple)


class MakeRows(Stage):
    """Make rows: some to checkpoint, some to make again on resume."""

    contract = StageContract(writes=(SCRATCH, KEPT))

    async def execute(self, ctx: Context) -> None:
        ctx.state["scratch_rows"] = (1, 2)
        ctx.state["kept_rows"] = (3,)


@pytest.mark.anyio
async def test_checkpoints_leave_out_every_key_declared_rebuilt_on_resume() -> None:
    """Built-in keys and a new stage's own: no list elsewhere names them."""
    workflow = Workflow("rows", stage("make", MakeRows), stage("checkpoint", SaveCheckpoint))
    async with Kitchen.open() as kitchen:
        runs = [
            await kitchen.start(workflow, {"checkpoint_prefix": "c"}, adapters="noop"),
            await kitchen.start("supervised", {"save_every": 2}, adapters="noop"),
        ]
        kept = []
        for run in runs:
            assert (await run.wait()).status == "completed"
            context = run.outcome.context
            assert context is not None
            kept.append(set(context.state["checkpoint_context"]["state"]))
    assert kept[0] == {"kept_rows"}
    assert {"dataset", "num_batches", "total_steps", "num_epochs"} <= kept[1]
    assert not {"train_rows", "train_data", "order", "eval_rows", "eval_data"} & kept[1]

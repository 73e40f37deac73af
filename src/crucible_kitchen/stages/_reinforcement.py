"""Reinforcement-learning stages: problems → env groups → rollouts → advantages → steps.

The built-in environment poses a dataset problem (a ``question`` with an integer ``answer``)
in one turn: reward 1 for the right integer, minus ``format_coef`` when the reply does not
end properly (tinker-cookbook's math environments). Any :class:`~crucible_kitchen.ports.Env`
works with the rollout stage, multi-turn ones included.

State: ``"problems"``, ``"env_groups"``, ``"rollouts"`` (a :class:`RolloutBatch`),
``"advantages"``, ``"rl_batch"`` (an :class:`RlBatch`), ``"step_metrics"``, plus the shared
keys of ``_common`` (``"sampler"`` is the policy sampled from).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from crucible_kitchen.errors import DataError, TrainingInputError
from crucible_kitchen.ports import (
    Message,
    ModelInput,
    SamplingParams,
    StepResult,
    TokensWithLogprobs,
    Trajectory,
    Transition,
)
from crucible_kitchen.stages._common import (
    DATASET,
    LOADS_SPLIT,
    RESUME_FROM_KEY,
    SAMPLER,
    SAMPLER_STEP,
    STEP_METRICS,
    SUBMITS_STEPS,
    AwaitTrainingSteps,
    BuiltinStage,
    InFlightStep,
    load_split,
    merge_contracts,
    record_metrics,
    rl_datums,
    sampler_for_current_weights,
    sequence_logprobs,
    submit_training_step,
    training_logprobs,
    with_advantages,
)
from crucible_kitchen.stages._contract import StageContract, StateKey, declares
from crucible_kitchen.telemetry import (
    RlAdvantagesComputed,
    RlBatchAssembled,
    RlEnvGroupBuilt,
    RlRolloutComplete,
    RlStep,
)
from crucible_kitchen.training import (
    arithmetic_reward,
    compute_advantages,
    kl_penalty_advantages,
    kl_sample_train_metrics,
    nonconstant_group_indices,
    post_update_kl_metrics,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crucible_kitchen.ports import (
        Datum,
        Env,
        EnvGroupBuilder,
        ForwardBackwardOutput,
        Renderer,
        SamplingClient,
        StopCondition,
    )
    from crucible_kitchen.stages._context import Context
    from crucible_kitchen.training import AdvantageAdjustment

__all__ = (
    "ApplyKlPenalty",
    "AssembleRlBatch",
    "AwaitRlSteps",
    "BuildEnvGroups",
    "ComputeAdvantages",
    "ComputePostUpdateKl",
    "DoRollouts",
    "LoadProblems",
    "Problem",
    "ProblemEnv",
    "ProblemGroupBuilder",
    "ReceiveRollouts",
    "RlBatch",
    "RolloutBatch",
    "RolloutGroup",
    "SaveReferenceWeights",
    "SubmitRlStep",
    "adjust_against",
    "starts_fresh",
)

_SEED_MASK: Final = 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class Problem:
    """A question whose answer is an integer."""

    question: str
    answer: int


class ProblemEnv:
    """One attempt at a :class:`Problem` (an :class:`~crucible_kitchen.ports.Env`): one turn.

    Reward: 1 if the reply's last integer is the answer, else 0; minus ``format_coef`` if
    the reply did not end properly (no stop sequence). Metrics: ``correct``, ``format``.
    """

    def __init__(self, problem: Problem, renderer: Renderer, *, format_coef: float) -> None:
        self._problem = problem
        self._renderer = renderer
        self._format_coef = format_coef
        self._done = False

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        """The question as a generation prompt, and the renderer's stop sequences."""
        prompt = [Message(role="user", content=self._problem.question)]
        return self._renderer.build_generation_prompt(prompt), self._renderer.get_stop_sequences()

    async def step(self, action: Sequence[int]) -> StepResult:
        """Score the reply; the episode ends here.

        Raises:
            TrainingInputError: the episode has already ended.
        """
        if self._done:
            raise TrainingInputError("ProblemEnv.step: the episode has ended")
        self._done = True
        message, ended = self._renderer.parse_response(action)
        correct = arithmetic_reward(message.content, self._problem.answer)
        return StepResult(
            reward=correct - self._format_coef * (0.0 if ended else 1.0),
            episode_done=True,
            next_observation=ModelInput.empty(),
            metrics={"correct": correct, "format": 1.0 if ended else 0.0},
        )


class ProblemGroupBuilder:
    """``group_size`` :class:`ProblemEnv` on one problem (an ``EnvGroupBuilder``).

    There is no group reward: each episode's reward is its own.
    """

    def __init__(
        self,
        problem: Problem,
        renderer: Renderer,
        *,
        group_size: int,
        format_coef: float,
        tag: str = "problems",
    ) -> None:
        self.problem = problem
        self._renderer = renderer
        self._group_size = group_size
        self._format_coef = format_coef
        self._tag = tag

    async def make_envs(self) -> list[ProblemEnv]:
        """``group_size`` fresh environments on the problem."""
        return [
            ProblemEnv(self.problem, self._renderer, format_coef=self._format_coef)
            for _ in range(self._group_size)
        ]

    async def compute_group_rewards(
        self, trajectories: Sequence[Trajectory]
    ) -> list[tuple[float, dict[str, float]]]:
        """No final reward: 0 for each trajectory."""
        return [(0.0, {}) for _ in trajectories]

    def logging_tags(self) -> tuple[str, ...]:
        """The dataset's name."""
        return (self._tag,)


@dataclass(frozen=True, slots=True)
class RolloutGroup:
    """The trajectories of one env group and each one's total reward (steps plus final)."""

    trajectories: tuple[Trajectory, ...]
    rewards: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class RolloutBatch:
    """The rollouts of one batch, the metrics they gave, and the step the sampler was at."""

    groups: tuple[RolloutGroup, ...]
    sampler_step: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RlBatch:
    """Training datums of RL-style losses and each one's action-token mask."""

    data: tuple[Datum, ...]
    masks: tuple[tuple[float, ...], ...]

    def advantages(self) -> list[list[float]]:
        """The per-token advantages of each datum."""
        return [_floats(d, "advantages") for d in self.data]

    def sampling_logprobs(self) -> list[list[float]]:
        """The sampler's per-token logprobs of each datum."""
        return [_floats(d, "logprobs") for d in self.data]

    def with_advantages(self, advantages: Sequence[Sequence[float]]) -> RlBatch:
        """The same batch with each datum's per-token advantages replaced."""
        data = tuple(with_advantages(d, a) for d, a in zip(self.data, advantages, strict=True))
        return RlBatch(data=data, masks=self.masks)


async def adjust_against(
    ctx: Context,
    batch: RlBatch,
    scorer: SamplingClient,
    operation: str,
    adjust: Callable[..., AdvantageAdjustment],
    *,
    coef: float,
) -> tuple[RlBatch, Mapping[str, float]]:
    """Score ``batch`` with another model (``operation`` names its requests) and fold the
    ``adjust`` of its logprobs against the sampler's into the advantages; also returns the
    adjustment's metrics. Used for the KL penalty (RL) and the teacher (distillation)."""
    other = await sequence_logprobs(ctx, scorer, batch.data, operation)
    adjusted = adjust(
        batch.advantages(),
        batch.sampling_logprobs(),
        other,
        [list(m) for m in batch.masks],
        coef=coef,
        discount_factor=float(ctx.config.kl_discount_factor),
    )
    return batch.with_advantages(adjusted.advantages), adjusted.metrics


ADJUSTS_ADVANTAGES: Final = StageContract(config=("kl_discount_factor",))
"""What :func:`adjust_against` reads of the config."""

PROBLEMS: Final = StateKey("problems", tuple, rebuilt_on_resume=True)
"""The problems, in run order."""
ENV_GROUPS: Final = StateKey("env_groups", tuple)
"""This batch's ``EnvGroupBuilder`` objects."""
ROLLOUTS: Final = StateKey("rollouts", RolloutBatch)
ADVANTAGES: Final = StateKey("advantages", tuple)
"""Per group, each trajectory's advantage."""
RL_BATCH: Final = StateKey("rl_batch", RlBatch)


def _floats(datum: Datum, key: str) -> list[float]:
    return [float(v) for v in datum.loss_fn_inputs[key].data]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std; NaN for no values."""
    if not values:
        return math.nan, math.nan
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


class LoadProblems(BuiltinStage):
    """Read the problems (``question``, integer ``answer``) of ``dataset``/``split`` and fix
    their order for the run.

    ``split`` may be a slice of a split (``"train[:-64]"``, see :func:`split_rows`).
    """

    requires: ClassVar[tuple[str, ...]] = ("dataset_store",)
    contract = merge_contracts(LOADS_SPLIT, StageContract(writes=(PROBLEMS,)))

    async def execute(self, ctx: Context) -> Context:
        rows = await load_split(ctx)
        problems = [_problem(row, index) for index, row in enumerate(rows)]
        if not problems:
            raise DataError(f"dataset {ctx.config.dataset!r}/{ctx.config.split!r} has no problems")
        ctx.rng("problem_order").shuffle(problems)
        ctx.state["problems"] = tuple(problems)
        return ctx


def _problem(row: Mapping[str, Any], index: int) -> Problem:
    question, answer = row.get("question"), row.get("answer")
    if isinstance(answer, str):
        try:
            answer = int(answer.strip())
        except ValueError:
            answer = None
    if not isinstance(question, str) or type(answer) is not int:
        raise DataError(
            f"row {index}: a problem needs a string 'question' and an integer 'answer', got {row!r}"
        )
    return Problem(question=question, answer=answer)


class BuildEnvGroups(BuiltinStage):
    """Build this batch's env groups: ``groups_per_batch`` problems, ``group_size`` envs each."""

    bookkeeping = True

    requires: ClassVar[tuple[str, ...]] = ("renderer",)
    contract = StageContract(
        config=("groups_per_batch", "group_size", "format_coef"),
        reads=(PROBLEMS, DATASET),
        writes=(ENV_GROUPS,),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        problems: tuple[Problem, ...] = ctx.state["problems"]
        per_batch, size = int(config.groups_per_batch), int(config.group_size)
        first = ctx.loops["batches"] * per_batch
        renderer = ctx.port("renderer")
        ctx.state["env_groups"] = tuple(
            ProblemGroupBuilder(
                problems[(first + j) % len(problems)],
                renderer,
                group_size=size,
                format_coef=float(config.format_coef),
                tag=str(ctx.state["dataset"]),
            )
            for j in range(per_batch)
        )
        ctx.emit(
            RlEnvGroupBuilt(env_type="ProblemEnv", group_size=size, groups_per_batch=per_batch)
        )
        return ctx


@dataclass(slots=True)
class _Episode:
    env: Env
    observation: ModelInput
    stop: StopCondition
    transitions: list[Transition] = field(default_factory=list)
    final: ModelInput | None = None


class DoRollouts(BuiltinStage):
    """Run every env group's episodes against the current sampler, turn by turn.

    Each turn, the requests of all groups are submitted before any is awaited; the envs of a
    group that share an observation get one request with ``num_samples`` = their number.
    Seeds and request ids derive from (group, turn, request), so a re-executed stage draws
    the same samples.
    """

    contract = StageContract(
        config=("max_turns", "max_tokens", "temperature"),
        reads=(ENV_GROUPS, SAMPLER, SAMPLER_STEP),
        writes=(ROLLOUTS,),
    )

    async def execute(self, ctx: Context) -> Context:
        started = time.perf_counter()
        builders: tuple[EnvGroupBuilder, ...] = ctx.state["env_groups"]
        sampler: SamplingClient = ctx.state["sampler"]
        groups: list[list[_Episode]] = []
        for builder in builders:
            envs = list(await builder.make_envs())
            if not envs:
                raise TrainingInputError("an env group builder made no environments")
            episodes = []
            for env in envs:
                observation, stop = await env.initial_observation()
                episodes.append(_Episode(env, observation, stop))
            groups.append(episodes)
        for turn in range(int(ctx.config.max_turns)):
            if not await self._turn(ctx, sampler, groups, turn):
                break
        rollouts = []
        for builder, episodes in zip(builders, groups, strict=True):
            trajectories = tuple(
                Trajectory(
                    transitions=tuple(e.transitions),
                    final_observation=e.observation if e.final is None else e.final,
                )
                for e in episodes
            )
            finals = await builder.compute_group_rewards(trajectories)
            rewards = tuple(
                math.fsum(t.reward for t in trajectory.transitions) + final
                for trajectory, (final, _) in zip(trajectories, finals, strict=True)
            )
            rollouts.append(RolloutGroup(trajectories, rewards))
        batch = RolloutBatch(
            groups=tuple(rollouts),
            sampler_step=int(ctx.state["sampler_step"]),
            metrics=_rollout_metrics(rollouts),
        )
        ctx.state["rollouts"] = batch
        ctx.emit(
            RlRolloutComplete(
                step=ctx.step,
                duration_s=time.perf_counter() - started,
                num_trajectories=int(batch.metrics["rl/num_trajectories"]),
                num_env_steps=int(batch.metrics["rl/env_steps"]),
                reward_mean=batch.metrics["rl/reward_mean"],
                reward_std=batch.metrics["rl/reward_std"],
            )
        )
        return ctx

    async def _turn(
        self, ctx: Context, sampler: SamplingClient, groups: list[list[_Episode]], turn: int
    ) -> bool:
        """Sample and step every unfinished episode once; False when none was left."""
        pending = []
        for g, episodes in enumerate(groups):
            requests: dict[tuple[ModelInput, StopCondition], list[_Episode]] = defaultdict(list)
            for episode in episodes:
                if episode.final is None:
                    requests[(episode.observation, episode.stop)].append(episode)
            for k, ((observation, stop), waiting) in enumerate(requests.items()):
                operation = f"sample/{g}/{turn}/{k}"
                params = SamplingParams(
                    max_tokens=int(ctx.config.max_tokens),
                    temperature=float(ctx.config.temperature),
                    stop=stop,
                    seed=ctx.seed_for(operation) & _SEED_MASK,
                )
                future = await sampler.sample(
                    observation, len(waiting), params, request_id=ctx.request_id(operation)
                )
                pending.append((waiting, future))
        for waiting, future in pending:
            response = await future.result()
            if len(response.sequences) != len(waiting):
                raise TrainingInputError(
                    f"the sampler returned {len(response.sequences)} sequences for "
                    f"{len(waiting)} samples"
                )
            for episode, sequence in zip(waiting, response.sequences, strict=True):
                action = TokensWithLogprobs(tokens=sequence.tokens, logprobs=sequence.logprobs)
                result = await episode.env.step(sequence.tokens)
                episode.transitions.append(
                    Transition(
                        observation=episode.observation,
                        action=action,
                        reward=result.reward,
                        episode_done=result.episode_done,
                        metrics=result.metrics,
                    )
                )
                if result.episode_done:
                    episode.final = result.next_observation
                else:
                    episode.observation = result.next_observation
                    episode.stop = result.next_stop_condition
        return bool(pending)


def _rollout_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    rewards = [r for group in groups for r in group.rewards]
    mean, std = _mean_std(rewards)
    transitions = [t for g in groups for traj in g.trajectories for t in traj.transitions]
    mixed = nonconstant_group_indices([g.rewards for g in groups], keep_one_if_all_constant=False)
    metrics = {
        "rl/reward_mean": mean,
        "rl/reward_std": std,
        "rl/num_trajectories": float(len(rewards)),
        "rl/env_steps": float(len(transitions)),
        "rl/action_tokens": float(sum(len(t.action.tokens) for t in transitions)),
        "rl/frac_mixed_groups": len(mixed) / len(groups) if groups else math.nan,
    }
    per_key: dict[str, list[float]] = defaultdict(list)
    for transition in transitions:
        for key, value in transition.metrics.items():
            per_key[key].append(float(value))
    for key, values in sorted(per_key.items()):
        metrics[f"rl/env/{key}"] = math.fsum(values) / len(values)
    return metrics


class ReceiveRollouts(BuiltinStage):
    """Take the rollouts the producer of an async loop handed over (``ctx.item("batches")``)."""

    bookkeeping = True

    contract = StageContract(writes=(ROLLOUTS,))

    async def execute(self, ctx: Context) -> Context:
        batch: RolloutBatch = ctx.item("batches")
        ctx.state["rollouts"] = batch
        return ctx


class ComputeAdvantages(BuiltinStage):
    """Group-relative advantages of the rollouts; optionally drop constant-reward groups."""

    bookkeeping = True

    contract = StageContract(
        config=("remove_constant_reward_groups", "advantage_normalization"),
        reads=(ROLLOUTS,),
        writes=(ROLLOUTS, ADVANTAGES),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        batch: RolloutBatch = ctx.state["rollouts"]
        groups = batch.groups
        if config.remove_constant_reward_groups:
            keep = nonconstant_group_indices([g.rewards for g in groups])
            groups = tuple(groups[i] for i in keep)
            batch = RolloutBatch(
                groups=groups, sampler_step=batch.sampler_step, metrics=batch.metrics
            )
            ctx.state["rollouts"] = batch
        advantages = compute_advantages(
            [g.rewards for g in groups], normalization=config.advantage_normalization
        )
        ctx.state["advantages"] = tuple(tuple(a) for a in advantages)
        flat = [a for group in advantages for a in group]
        mean, std = _mean_std(flat)
        ctx.emit(
            RlAdvantagesComputed(
                step=ctx.step,
                advantage_mean=0.0 if not flat else mean,
                advantage_std=0.0 if not flat else std,
                count=len(flat),
            )
        )
        return ctx


class AssembleRlBatch(BuiltinStage):
    """Turn trajectories and advantages into ``importance_sampling``/``ppo`` datums."""

    bookkeeping = True

    contract = StageContract(reads=(ROLLOUTS, ADVANTAGES), writes=(RL_BATCH, STEP_METRICS))

    async def execute(self, ctx: Context) -> Context:
        batch: RolloutBatch = ctx.state["rollouts"]
        advantages: tuple[tuple[float, ...], ...] = ctx.state["advantages"]
        data: list[Datum] = []
        masks: list[tuple[float, ...]] = []
        for group, group_advantages in zip(batch.groups, advantages, strict=True):
            for trajectory, advantage in zip(group.trajectories, group_advantages, strict=True):
                for datum, mask in rl_datums(trajectory, advantage):
                    data.append(datum)
                    masks.append(mask)
        if not data:
            raise TrainingInputError("the rollouts produced no training data")
        ctx.state["rl_batch"] = RlBatch(data=tuple(data), masks=tuple(masks))
        ctx.state["step_metrics"] = dict(batch.metrics) | {
            "rl/staleness": float(ctx.step - batch.sampler_step)
        }
        ctx.emit(
            RlBatchAssembled(
                step=ctx.step,
                num_datums=len(data),
                num_trajectories=sum(len(g.trajectories) for g in batch.groups),
            )
        )
        return ctx


REFERENCE_PATH: Final = StateKey("reference_path", str)
"""The weights the KL penalty's reference samples from, when not the adapters' initial ones
(see :class:`SaveReferenceWeights`)."""


@declares(StageContract(may_read=(RESUME_FROM_KEY,)))
def starts_fresh(ctx: Context) -> bool:
    """Whether the run starts at its first step rather than resuming from a checkpoint."""
    return RESUME_FROM_KEY.name not in ctx.state


class SaveReferenceWeights(BuiltinStage):
    """Save the weights the run starts from (after ``init_from`` and the warm-up) for
    sampling: the KL penalty's reference, instead of the adapters' initial weights. A
    checkpoint keeps the path, so a resumed run keeps its reference."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = StageContract(writes=(REFERENCE_PATH,))

    async def execute(self, ctx: Context) -> Context:
        future = await ctx.port("training_client").save_weights_for_sampler(
            "reference", request_id=ctx.request_id("save_weights_for_sampler")
        )
        ctx.state["reference_path"] = (await future.result()).path
        return ctx


class ApplyKlPenalty(BuiltinStage):
    """Fold a KL penalty against the reference into the advantages: the port
    ``sampling_client`` (the initial weights), or the weights of ``reference_path`` when the
    run saved its starting point (:class:`SaveReferenceWeights`)."""

    requires: ClassVar[tuple[str, ...]] = ("sampling_client", "training_client")
    contract = merge_contracts(
        ADJUSTS_ADVANTAGES,
        StageContract(
            config=("kl_penalty_coef",),
            reads=(RL_BATCH,),
            may_read=(STEP_METRICS, REFERENCE_PATH),
            writes=(RL_BATCH, STEP_METRICS),
        ),
    )

    async def execute(self, ctx: Context) -> Context:
        path = ctx.state.get("reference_path")
        reference = (
            ctx.port("sampling_client")
            if path is None
            else await ctx.port("training_client").create_sampling_client(str(path))
        )
        ctx.state["rl_batch"], metrics = await adjust_against(
            ctx,
            ctx.state["rl_batch"],
            reference,
            "reference_logprobs",
            kl_penalty_advantages,
            coef=float(ctx.config.kl_penalty_coef),
        )
        ctx.state["step_metrics"] = {
            **ctx.state.get("step_metrics", {}),
            "rl/kl_policy_base": metrics["kl_policy_base"],
        }
        return ctx


class SubmitRlStep(BuiltinStage):
    """Submit the RL batch's policy-loss forward-backward and optimizer step."""

    requires: ClassVar[tuple[str, ...]] = ("training_client",)
    contract = merge_contracts(
        SUBMITS_STEPS,
        StageContract(
            config=("loss_fn", "clip_low_threshold", "clip_high_threshold", "num_batches"),
            reads=(RL_BATCH,),
            may_read=(STEP_METRICS,),
        ),
    )

    async def execute(self, ctx: Context) -> Context:
        config = ctx.config
        batch: RlBatch = ctx.state["rl_batch"]
        loss_config: dict[str, float | str] | None = None
        if config.loss_fn == "ppo":
            loss_config = {
                "clip_low_threshold": float(config.clip_low_threshold),
                "clip_high_threshold": float(config.clip_high_threshold),
            }
        await submit_training_step(
            ctx,
            batch.data,
            total_steps=int(config.num_batches),
            loss_fn=config.loss_fn,
            loss_fn_config=loss_config,
            masks=batch.masks,
            metrics=ctx.state.get("step_metrics", {}),
        )
        return ctx


def policy_step_metrics(
    prefix: str, step: InFlightStep, output: ForwardBackwardOutput
) -> dict[str, float]:
    """Loss, lr and sampler/learner drift (``optim/kl_sample_train_*``) of an RL-style step."""
    sampled = [_floats(d, "logprobs") for d in step.data]
    masks = [list(m) for m in step.masks]
    drift = kl_sample_train_metrics(sampled, training_logprobs(output), masks)
    return {
        f"{prefix}/loss": float(output.metrics.get("loss:sum", math.nan)),
        f"{prefix}/lr": step.lr,
        f"{prefix}/sequences": float(len(step.data)),
        f"{prefix}/tokens": float(sum(sum(m) for m in step.masks)),
        **drift,
    }


class AwaitRlSteps(AwaitTrainingSteps):
    """Await the RL step (on-policy: at once) and log rewards, loss and drift."""

    pipelined: ClassVar[bool] = False

    def report(self, step: InFlightStep, output: ForwardBackwardOutput) -> dict[str, float]:
        return policy_step_metrics("rl", step, output)

    def event(self, step: InFlightStep, row: Mapping[str, float]) -> RlStep:
        return RlStep(
            step=step.step,
            reward_mean=row["rl/reward_mean"],
            reward_std=row["rl/reward_std"],
            loss=row["rl/loss"],
            entropy=row["optim/entropy"],
            kl_sample_train=row["optim/kl_sample_train_v1"],
            num_trajectories=int(row["rl/num_trajectories"]),
            num_tokens=int(row["rl/tokens"]),
            lr=step.lr,
            metrics=dict(row),
        )


class ComputePostUpdateKl(BuiltinStage):
    """How far the step just awaited moved the policy on its own batch (tinker-cookbook's
    ``compute_post_kl``): the updated weights score the batch's sampled tokens, compared
    with the sampler's logprobs.

    Records ``optim/kl_pre_post_v1`` (mean ``q - lp``) and ``optim/kl_pre_post_v2`` (half
    the mean square) over the action tokens, at the step just awaited. Costs one save of
    the weights for sampling (``post_kl_<step>``) and a scoring pass per datum.
    """

    requires: ClassVar[tuple[str, ...]] = ("training_client", "metrics_store")
    contract = StageContract(reads=(RL_BATCH,))

    async def execute(self, ctx: Context) -> Context:
        batch: RlBatch = ctx.state["rl_batch"]
        step = ctx.step - 1
        _, sampler = await sampler_for_current_weights(ctx, f"post_kl_{step:06d}")
        updated = await sequence_logprobs(ctx, sampler, batch.data, "post_update_logprobs")
        metrics = post_update_kl_metrics(
            batch.sampling_logprobs(), updated, [list(m) for m in batch.masks]
        )
        await record_metrics(ctx, step, {f"optim/{k}": v for k, v in metrics.items()})
        return ctx

"""A one-step RL environment whose reward is a fixed function of the action."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer
from crucible_kitchen.errors import InvalidRequest
from crucible_kitchen.ports import ModelInput, StepResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports import StopCondition, Trajectory

__all__ = ("NoopEnv", "NoopEnvGroupBuilder")


class NoopEnv:
    """Implements :class:`~crucible_kitchen.ports.Env`: one step, rewarded by even tokens.

    The reward is the fraction of the action's tokens that are even, so it varies between
    samples and a policy could learn it. The episode ends after one step.
    """

    def __init__(self, *, prompt: ModelInput, stop: StopCondition) -> None:
        self._prompt = prompt
        self._stop = stop
        self._done = False

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        """See :meth:`crucible_kitchen.ports.Env.initial_observation`."""
        return self._prompt, self._stop

    async def step(self, action: Sequence[int]) -> StepResult:
        """See :meth:`crucible_kitchen.ports.Env.step`.

        Raises:
            InvalidRequest: the episode already ended.
        """
        if self._done:
            raise InvalidRequest("step: the episode has ended", port="env", operation="step")
        self._done = True
        even = sum(1 for token in action if token % 2 == 0)
        return StepResult(
            reward=even / len(action) if action else 0.0,
            episode_done=True,
            next_observation=ModelInput.empty(),
            metrics={"action_tokens": float(len(action))},
        )


class NoopEnvGroupBuilder:
    """Implements :class:`~crucible_kitchen.ports.EnvGroupBuilder`: ``group_size`` copies of one
    problem, named by the seed and the problem index; no group reward.
    """

    def __init__(self, *, seed: int = 0, index: int = 0, group_size: int = 4) -> None:
        if group_size < 1:
            raise ValueError(f"group_size {group_size} must be >= 1")
        self._seed = seed
        self._index = index
        self._group_size = group_size
        self._tokenizer = NoopTokenizer()

    async def make_envs(self) -> list[NoopEnv]:
        """See :meth:`crucible_kitchen.ports.EnvGroupBuilder.make_envs`."""
        prompt = ModelInput.from_ints(
            self._tokenizer.encode(f"Problem {self._seed}-{self._index}:")
        )
        stop = (self._tokenizer.eos_token_id,)
        return [NoopEnv(prompt=prompt, stop=stop) for _ in range(self._group_size)]

    async def compute_group_rewards(
        self, trajectories: Sequence[Trajectory]
    ) -> list[tuple[float, dict[str, float]]]:
        """See :meth:`crucible_kitchen.ports.EnvGroupBuilder.compute_group_rewards`: all 0."""
        return [(0.0, {}) for _ in trajectories]

    def logging_tags(self) -> tuple[str, ...]:
        """``("noop",)``."""
        return ("noop",)

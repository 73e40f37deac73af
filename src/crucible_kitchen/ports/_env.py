"""The RL environment port: one episode of one agent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._types import ModelInput, StepResult, StopCondition

__all__ = ("Env",)


class Env(Protocol):
    """A stateful environment for one episode (tinker-cookbook: ``Env``); discard it after."""

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        """The first prompt, and what stops the agent's reply to it."""
        ...

    async def step(self, action: Sequence[int]) -> StepResult:
        """Take the agent's reply (sampled token ids); return its reward and what comes next.

        After a result with ``episode_done`` the environment takes no more steps.
        """
        ...

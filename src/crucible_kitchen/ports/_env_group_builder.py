"""The RL environment group port: environments that are rewarded together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crucible_kitchen.ports._env import Env
    from crucible_kitchen.ports._types import Trajectory

__all__ = ("EnvGroupBuilder",)


class EnvGroupBuilder(Protocol):
    """Builds a group of environments (tinker-cookbook: ``EnvGroupBuilder``).

    For GRPO-style training every environment of a group poses the same problem, so that
    rewards can be centred within the group.
    """

    async def make_envs(self) -> Sequence[Env]:
        """Fresh environments for one group of episodes."""
        ...

    async def compute_group_rewards(
        self, trajectories: Sequence[Trajectory]
    ) -> list[tuple[float, dict[str, float]]]:
        """A final reward and metrics per trajectory, from the whole group's trajectories.

        The return of an episode is the sum of its step rewards plus this final reward.
        """
        ...

    def logging_tags(self) -> tuple[str, ...]:
        """Tags that group this builder's metrics (e.g. the dataset's name)."""
        ...

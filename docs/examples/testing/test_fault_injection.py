"""Fault-injection tests with crucible-kitchen's pytest plugin: copy this file into your tests.

The plugin comes with the package (entry point ``crucible_kitchen``) and provides the
fixtures ``noop_kitchen``, ``stage_killer``, ``chaos_seed`` and ``chaos_monkey``. The tests are
plain ``async def`` functions; run them with either async test runner:

- pytest-trio: ``trio_mode = true`` in your pytest configuration;
- anyio's plugin: ``anyio_mode = auto`` (or mark the tests ``@pytest.mark.anyio``), on
  asyncio, or on trio too with an ``anyio_backend`` fixture that returns ``"trio"``.

When one fails, its report lists the kills made and the chaos seed: ``pytest
--chaos-seed=N`` replays the same kills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.errors import StageFailed
from crucible_kitchen.testing import KillPoint, assert_same_outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from crucible_kitchen.testing import ChaosMonkey, NoopKitchen, StageKiller

WORKFLOW = "supervised"
CONFIG = {"epochs": 2, "save_every": 3}


async def test_a_stage_killed_while_awaiting_its_step_changes_nothing(
    noop_kitchen: NoopKitchen, stage_killer: Callable[..., StageKiller]
) -> None:
    clean = await noop_kitchen.run(WORKFLOW, CONFIG)
    # The third time `drain_for_checkpoint` awaits an optimizer step: the backend has applied
    # it, the stage dies before it records the result. The retry must not apply it again.
    killer = stage_killer(
        KillPoint("drain_for_checkpoint", "awaiting", execution=3, operation="optim_step")
    )
    killed = await noop_kitchen.run(WORKFLOW, CONFIG, fault_hook=killer)
    assert len(killer.kills) == 1
    assert_same_outcome(clean, killed)


async def test_seeded_chaos_changes_nothing(
    noop_kitchen: NoopKitchen, chaos_monkey: ChaosMonkey
) -> None:
    clean = await noop_kitchen.run(WORKFLOW, CONFIG)
    chaotic = await noop_kitchen.run(WORKFLOW, CONFIG, fault_hook=chaos_monkey)
    assert chaos_monkey.kills
    assert_same_outcome(clean, chaotic)


async def test_a_stage_killed_on_every_attempt_fails_the_run(
    noop_kitchen: NoopKitchen, stage_killer: Callable[..., StageKiller]
) -> None:
    config = {**CONFIG, "retry": {"attempts": 2}}
    killer = stage_killer(*(KillPoint("submit_step", "execute", execution=n) for n in (1, 2)))
    with pytest.raises(StageFailed, match="its actor was killed") as failed:
        await noop_kitchen.run(WORKFLOW, config, fault_hook=killer)
    assert (failed.value.stage, failed.value.attempt) == ("submit_step", 2)

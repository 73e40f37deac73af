"""The pytest plugin of ``crucible_kitchen.testing`` (entry point ``crucible_kitchen``).

Installed with the package, it gives every test session these fixtures:

- ``noop_kitchen``: a :class:`~crucible_kitchen.testing.NoopKitchen` (seed 0) that runs a
  workflow or recipe on fresh noop adapters and returns its
  :class:`~crucible_kitchen.testing.RunOutcome`.
- ``stage_killer``: makes :class:`~crucible_kitchen.testing.StageKiller`\\ s,
  ``stage_killer(KillPoint(...), ...)``.
- ``chaos_seed`` and ``chaos_monkey``: a :class:`~crucible_kitchen.testing.ChaosMonkey`
  seeded per test (from the test's id, or ``--chaos-seed``).

When a test that used them fails, its report lists the kills made and the chaos seed, so
``pytest --chaos-seed=N`` replays the same kills. The fixtures are synchronous, so they work
under every async test runner: anyio's pytest plugin, pytest-trio (``trio_mode`` too).
Disable the plugin with ``-p no:crucible_kitchen``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from crucible_kitchen.testing._outcomes import NoopKitchen
from crucible_kitchen.testing._stage_faults import ChaosMonkey, StageKiller
from crucible_kitchen.training import derive_seed

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from crucible_kitchen.testing._stage_faults import Kill, KillPoint

__all__ = (
    "chaos_monkey",
    "chaos_seed",
    "noop_kitchen",
    "pytest_addoption",
    "pytest_runtest_makereport",
    "stage_killer",
)

CHAOS_RATE = 0.1
"""The probability that the ``chaos_monkey`` fixture kills a stage at a fault point."""

CHAOS_MAX_KILLS = 3
"""The most kills of the ``chaos_monkey`` fixture: fewer than any stage's attempts."""

_KILLERS = pytest.StashKey[list[tuple[str, "Callable[[], list[Kill]]"]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("crucible_kitchen").addoption(
        "--chaos-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed every chaos_monkey fixture with N (default: derived from each test's id)",
    )


def _watch(request: pytest.FixtureRequest, name: str, kills: Callable[[], list[Kill]]) -> None:
    request.node.stash.setdefault(_KILLERS, []).append((name, kills))


@pytest.fixture
def noop_kitchen() -> NoopKitchen:
    """Runs workflows and recipes on fresh, seeded noop adapters (see ``NoopKitchen``)."""
    return NoopKitchen(seed=0)


@pytest.fixture
def stage_killer(request: pytest.FixtureRequest) -> Callable[..., StageKiller]:
    """``stage_killer(*points)``: a :class:`StageKiller` whose kills a failed test reports."""

    def make(*points: KillPoint) -> StageKiller:
        killer = StageKiller(*points)
        _watch(request, "stage_killer", lambda: killer.kills)
        return killer

    return make


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """``--chaos-seed``, else a 32-bit seed derived from the test's id (stable across runs)."""
    given: int | None = request.config.getoption("chaos_seed")
    return derive_seed("chaos", request.node.nodeid) % 2**32 if given is None else given


@pytest.fixture
def chaos_monkey(request: pytest.FixtureRequest, chaos_seed: int) -> ChaosMonkey:
    """A :class:`ChaosMonkey` seeded with ``chaos_seed``: kill probability
    :data:`CHAOS_RATE` at each fault point, at most :data:`CHAOS_MAX_KILLS` kills, one per
    stage execution. Build your own from ``chaos_seed`` for other settings."""
    monkey = ChaosMonkey(chaos_seed, rate=CHAOS_RATE, max_kills=CHAOS_MAX_KILLS)
    _watch(request, f"chaos_monkey (--chaos-seed={chaos_seed})", lambda: monkey.kills)
    return monkey


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the kills of the test's killers and monkeys to the report of a failed test."""
    report = yield
    killers = item.stash.get(_KILLERS, [])
    if report.failed and killers:
        lines = []
        for name, kills in killers:
            made = kills()
            lines.append(f"{name}: {len(made)} kill(s)")
            lines.extend(
                f"  {kill.stage} at {kill.point} ({kill.operation}), attempt {kill.attempt}, "
                f"loops {dict(kill.loops)}"
                for kill in made
            )
        report.sections.append(("crucible_kitchen fault injection", "\n".join(lines)))
    return report

"""``NoopKitchen`` runs and ``assert_same_outcome``: equal runs pass, every difference is named."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from crucible_kitchen.testing import (
    KillPoint,
    NoopKitchen,
    RunOutcome,
    StageKiller,
    assert_same_outcome,
)

pytestmark = pytest.mark.anyio

CONFIG = {"epochs": 1}


async def _clean() -> RunOutcome:
    return await NoopKitchen(seed=4).run("supervised", CONFIG)


async def test_two_undisturbed_runs_end_the_same() -> None:
    first, second = await _clean(), await _clean()
    assert first.result.status == "completed"
    assert first.steps == 8
    assert first.metrics == first.result.metrics
    assert first.applied["training_client"][:2] == (
        ("forward_backward", first.applied["training_client"][0][1]),
        ("optim_step", first.applied["training_client"][1][1]),
    )
    assert first.model_state.step == 8
    assert_same_outcome(first, second)


async def test_another_seed_or_config_is_another_outcome() -> None:
    clean = await _clean()
    reseeded = await NoopKitchen(seed=5).run("supervised", CONFIG)
    with pytest.raises(AssertionError, match="metrics: expected") as raised:
        assert_same_outcome(clean, reseeded, where="seed 5")
    assert str(raised.value).startswith("seed 5: the runs ended differently:")
    assert "model state: expected" in str(raised.value)
    longer = await NoopKitchen(seed=4).run("supervised", {"epochs": 2})
    with pytest.raises(AssertionError, match=r"steps: expected 8, got 16") as raised:
        assert_same_outcome(clean, longer)
    assert "training_client applied other requests: missing [], extra [(" in str(raised.value)


async def test_a_request_applied_twice_is_named() -> None:
    clean = await _clean()
    requests = clean.applied["training_client"]
    doubled = dataclasses.replace(
        clean, applied={**clean.applied, "training_client": (*requests, requests[0])}
    )
    with pytest.raises(AssertionError) as raised:
        assert_same_outcome(clean, doubled)
    assert f"the actual run's training_client applied {requests[0]!r} more than once" in str(
        raised.value
    )


async def test_a_killed_stage_that_recovers_ends_the_same() -> None:
    clean = await _clean()
    killer = StageKiller(KillPoint("submit_step", "after_submit", execution=3))
    killed = await NoopKitchen(seed=4).run("supervised", CONFIG, fault_hook=killer)
    assert len(killer.kills) == 1
    assert_same_outcome(clean, killed)
    failed = msgspec.structs.replace(killed.result, status="failed")
    with pytest.raises(AssertionError, match="status: expected 'completed', got 'failed'"):
        assert_same_outcome(clean, dataclasses.replace(killed, result=failed))

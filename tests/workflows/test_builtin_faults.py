"""Backend faults the built-in workflows ride out, and those they fail on, clearly.

A transient error when a training step or a metrics row is sent is retried (same request id,
with backoff) and the run ends exactly like an undisturbed one; a permanent error fails at
once; a hung call is killed at the stage timeout, retried, and fails with ``TimeoutError``
once the attempts are used up, after which the cleanup stage still runs.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from crucible_kitchen.adapters.noop import (
    CallInfo,
    FaultPlan,
    Hang,
    PermanentFailure,
    TransientFailure,
)
from crucible_kitchen.errors import PermanentBackendError, StageFailed
from crucible_kitchen.kitchen import Adapters, Kitchen, RunResult
from crucible_kitchen.telemetry import StageException, StageStart, TelemetryEvent

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio

CONFIGS: dict[str, dict[str, Any]] = {
    "supervised": {"epochs": 2, "pipeline_depth": 1},
    "preference": {"epochs": 1},
    "reinforcement": {"num_batches": 2},
    "distillation": {"num_batches": 2},
}
RETRIED = frozenset({"forward_backward", "forward_backward_custom", "optim_step", "record"})
FAILURES_PER_REQUEST = 3


def first_sends_fail(times: int) -> Callable[[CallInfo], bool]:
    """A fault filter: the first ``times`` sends of each request of the retried methods."""
    sends: Counter[str | None] = Counter()

    def when(call: CallInfo) -> bool:
        if call.method not in RETRIED or call.request_id is None:
            return False
        sends[call.request_id] += 1
        return sends[call.request_id] <= times

    return when


async def run(
    workflow: str,
    faults: FaultPlan | None,
    settings: dict[str, Any],
    events: list[TelemetryEvent] | None = None,
) -> tuple[RunResult, Adapters]:
    adapters = Adapters.noop(seed=4, faults=faults)
    async with Kitchen.open() as kitchen:
        handle = await kitchen.start(
            workflow,
            {**CONFIGS[workflow], **settings},
            adapters=adapters,
            seed=4,
            run_id=f"{workflow}-faults",
            telemetry=[] if events is None else [events.append],
        )
        return await handle.wait(), adapters


async def effects(adapters: Adapters, run_id: str) -> dict[str, Any]:
    """What the backends hold: the applied requests with an id, in order (calls without
    one, such as ``forward``, change nothing and may be repeated), the model state and the
    stored metrics."""
    store = adapters["metrics_store"]
    client = adapters["training_client"]
    return {
        "training": [entry for entry in client.counters.log if entry[1] is not None],
        "model": client.state,
        "metrics_log": store.counters.log,
        "metrics": await store.read(run_id),
    }


@pytest.mark.parametrize("workflow", sorted(CONFIGS))
async def test_transient_errors_on_every_step_and_metrics_call_change_nothing(
    workflow: str,
) -> None:
    # Each request fails 3 times before it gets through; a stage sends up to two of them.
    retry = {"retry": {"attempts": 2 * FAILURES_PER_REQUEST + 1, "backoff": 0.001}}
    clean, clean_adapters = await run(workflow, None, retry)
    faults = FaultPlan().inject(
        TransientFailure(on_submit=True), when=first_sends_fail(FAILURES_PER_REQUEST)
    )
    events: list[TelemetryEvent] = []
    result, adapters = await run(workflow, faults, retry, events)

    methods = {call.method for call, _ in faults.injected}
    assert methods >= {"optim_step", "record"}
    assert methods & {"forward_backward", "forward_backward_custom"}
    failures = [e for e in events if isinstance(e, StageException)]
    assert len(failures) == len(faults.injected)
    assert all(e.error_type == "TransientBackendError" and e.will_retry for e in failures)
    assert (result.metrics, result.steps) == (clean.metrics, clean.steps)
    run_id = f"{workflow}-faults"
    assert await effects(adapters, run_id) == await effects(clean_adapters, run_id)


async def test_the_retry_backoff_doubles_after_each_error() -> None:
    faults = FaultPlan().inject(
        TransientFailure(on_submit=True), method="optim_step", calls=[1, 2, 3]
    )
    events: list[TelemetryEvent] = []
    started = anyio.current_time()
    await run("supervised", faults, {"retry": {"attempts": 4, "backoff": 0.05}}, events)
    assert anyio.current_time() - started >= 0.05 + 0.1 + 0.2
    failures = [e for e in events if isinstance(e, StageException)]
    assert [(e.stage, e.attempt) for e in failures] == [("submit_step", n) for n in (1, 2, 3)]


async def test_a_burst_longer_than_the_attempts_fails_naming_the_stage() -> None:
    faults = FaultPlan().inject(TransientFailure(on_submit=True), method="optim_step", times=3)
    with pytest.raises(StageFailed) as info:
        await run("supervised", faults, {"retry": {"attempts": 3, "backoff": 0.0}})
    assert (info.value.stage, info.value.attempt) == ("submit_step", 3)
    assert "TransientBackendError: optim_step: injected transient failure" in str(info.value)


async def test_a_permanent_error_fails_at_once() -> None:
    faults = FaultPlan().inject(PermanentFailure(on_submit=True), method="forward_backward")
    with pytest.raises(StageFailed) as info:
        await run("supervised", faults, {})
    assert (info.value.stage, info.value.attempt) == ("submit_step", 1)
    assert isinstance(info.value.__cause__, PermanentBackendError)


SHORT = {
    "timeouts": {"backend": 0.2, "bookkeeping": 0.2},
    "retry": {"attempts": 2, "backoff": 0.0},
}


async def test_a_hung_step_is_retried_then_fails_with_a_timeout_and_cleanup_runs() -> None:
    faults = FaultPlan().inject(Hang(), method="optim_step", calls=2)
    events: list[TelemetryEvent] = []
    started = anyio.current_time()
    with pytest.raises(StageFailed) as info:
        await run("supervised", faults, SHORT, events)
    elapsed = anyio.current_time() - started
    error = info.value
    assert (error.stage, error.attempt) == ("await_step", 2)
    assert isinstance(error.__cause__, TimeoutError)
    assert "took longer than 0.2 s" in str(error)
    assert 0.4 <= elapsed < 5.0  # two timed-out attempts, not a hang
    failures = [
        (e.stage, e.attempt, e.error_type, e.will_retry)
        for e in events
        if isinstance(e, StageException)
    ]
    assert failures == [
        ("await_step", 1, "TimeoutError", True),
        ("await_step", 2, "TimeoutError", False),
    ]
    assert [e.stage for e in events if isinstance(e, StageStart)][-1] == "flush_metrics"


async def test_a_hung_metrics_call_is_sent_again_with_its_request_id_and_changes_nothing() -> None:
    clean, clean_adapters = await run("supervised", None, SHORT)
    faults = FaultPlan().inject(Hang(), method="record", calls=1)
    result, adapters = await run("supervised", faults, SHORT)
    [(hung, _)] = faults.injected
    assert adapters["metrics_store"].counters.log[0] == ("record", hung.request_id)
    assert (result.metrics, result.steps) == (clean.metrics, clean.steps)
    run_id = "supervised-faults"
    assert await effects(adapters, run_id) == await effects(clean_adapters, run_id)

"""Runs on fresh noop adapters, and how to tell that two of them ended the same way.

The promise fault injection tests: a run whose stages were killed ends exactly like an
undisturbed one. :class:`NoopKitchen` runs a workflow or recipe on a fresh
:class:`~crucible_kitchen.Kitchen` with fresh, seeded noop adapters and returns its
:class:`RunOutcome`; :func:`assert_same_outcome` compares two::

    clean = await noop_kitchen.run("supervised", {"epochs": 2})
    killed = await noop_kitchen.run("supervised", {"epochs": 2}, fault_hook=killer)
    assert_same_outcome(clean, killed)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crucible_kitchen import Adapters, Kitchen, RunResult
from crucible_kitchen.adapters.noop import CallCounters, NoopTrainingState

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("NoopKitchen", "RunOutcome", "assert_same_outcome")

Applied = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run on noop adapters ended, in the terms two runs are compared by.

    Attributes:
        result: the run's :class:`~crucible_kitchen.RunResult`.
        applied: for each port whose adapter counts its calls, every request that took
            effect, as ``(method, request_id)`` in the order applied. Calls without a
            request id (reads, ``create_sampling_client``) change nothing and may repeat,
            so they are left out.
        model_state: the noop training client's final state (weights, optimizer, step).
    """

    result: RunResult
    applied: Mapping[str, Applied]
    model_state: NoopTrainingState

    @property
    def metrics(self) -> dict[str, float]:
        """The run's final metrics."""
        return self.result.metrics

    @property
    def steps(self) -> int:
        """The training steps the run took."""
        return self.result.steps

    @classmethod
    def of(cls, result: RunResult, adapters: Mapping[str, Any]) -> RunOutcome:
        """The outcome of ``result``, a run on the noop ``adapters``."""
        applied = {
            port: tuple(
                (method, request_id)
                for method, request_id in adapter.counters.log
                if request_id is not None
            )
            for port, adapter in sorted(adapters.items())
            if isinstance(getattr(adapter, "counters", None), CallCounters)
        }
        return cls(result=result, applied=applied, model_state=adapters["training_client"].state)


def assert_same_outcome(expected: RunOutcome, actual: RunOutcome, *, where: str = "") -> None:
    """Assert that ``actual`` ended exactly like ``expected``.

    Compared: the status, the metrics, the step count, the requests each backend applied
    (as sets: killed stages may change the order of independent requests, never which ones
    took effect) and the model's final state. Each run must also have applied every request
    once.

    Raises:
        AssertionError: naming every difference (prefixed by ``where``).
    """
    problems = _applied_twice(expected, "expected") + _applied_twice(actual, "actual")
    for what, want, got in (
        ("status", expected.result.status, actual.result.status),
        ("metrics", expected.metrics, actual.metrics),
        ("steps", expected.steps, actual.steps),
        ("model state", expected.model_state, actual.model_state),
    ):
        if want != got:
            problems.append(f"{what}: expected {want!r}, got {got!r}")
    for port in sorted(expected.applied.keys() | actual.applied.keys()):
        want_set = set(expected.applied.get(port, ()))
        got_set = set(actual.applied.get(port, ()))
        if want_set != got_set:
            missing = sorted(want_set - got_set)
            extra = sorted(got_set - want_set)
            problems.append(f"{port} applied other requests: missing {missing}, extra {extra}")
    if problems:
        prefix = f"{where}: " if where else ""
        raise AssertionError(prefix + "the runs ended differently:\n  " + "\n  ".join(problems))


def _applied_twice(outcome: RunOutcome, which: str) -> list[str]:
    return [
        f"the {which} run's {port} applied {request} more than once"
        for port, requests in outcome.applied.items()
        for request in sorted({r for r in requests if requests.count(r) > 1})
    ]


class NoopKitchen:
    """Runs workflows and recipes on a fresh Kitchen with fresh noop adapters.

    Every run gets new adapters (``Adapters.noop(seed=seed, **adapter_options)``), the same
    seed and the same run id, so two runs of the same target and config send the same
    requests and can be compared with :func:`assert_same_outcome`.

    Args:
        seed: the seed of the adapters and of each run.
        run_id: the id of each run (request ids derive from it).
        adapter_options: passed to :meth:`Adapters.noop <crucible_kitchen.Adapters.noop>`.
    """

    def __init__(self, *, seed: int = 0, run_id: str = "noop-run", **adapter_options: Any):
        self.seed = seed
        self.run_id = run_id
        self.adapter_options = adapter_options

    async def run(self, target: Any, config: Any = None, **start_options: Any) -> RunOutcome:
        """Run ``target`` (a workflow or recipe, by name or object) to its end.

        ``start_options`` go to :meth:`Kitchen.start <crucible_kitchen.Kitchen.start>`
        (``fault_hook``, ``telemetry``, ...); by default the run keeps no
        run directory.

        Raises:
            StageFailed: the run failed (as ``RunHandle.wait`` raises it).
        """
        adapters = Adapters.noop(seed=self.seed, **self.adapter_options)
        start_options.setdefault("run_dir", False)
        async with Kitchen.open() as kitchen:
            run = await kitchen.start(
                target,
                config,
                adapters=adapters,
                seed=self.seed,
                run_id=self.run_id,
                **start_options,
            )
            result = await run.wait()
        return RunOutcome.of(result, adapters)

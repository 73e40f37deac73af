"""A run in progress: its events, its status, waiting for it, stopping it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread

from crucible_kitchen.errors import RunCancelled, StageFailed, WorkflowError
from crucible_kitchen.kitchen._results import RunResult
from crucible_kitchen.kitchen._run_dir import SUMMARY_FILE, write_json, writes_run_files

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable
    from pathlib import Path

    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    from crucible_kitchen.supervisors import Supervisor
    from crucible_kitchen.telemetry import BusStatistics, TelemetryBus, TelemetryEvent
    from crucible_kitchen.workflows import RunOutcome, RunPlan

__all__ = ("RunHandle",)

logger = logging.getLogger("crucible_kitchen.kitchen")


class RunHandle:
    """A run in progress: its events, its status, waiting for it, cancelling it.

    ``run_dir`` is its run directory (``None`` if it keeps none); ``resumed_from`` the
    checkpoint a resumed run continues from; ``on_finish`` is called with the result once
    the run has been finished.
    """

    def __init__(
        self,
        *,
        run_id: str,
        plan: RunPlan,
        supervisor: Supervisor,
        bus: TelemetryBus,
        recipe: str | None,
        run_dir: Path | None = None,
        resumed_from: str | None = None,
        tracer_provider: SdkTracerProvider | None = None,
        on_finish: Callable[[RunHandle, RunResult], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = plan.workflow.name
        self.recipe = recipe
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self._plan = plan
        self._supervisor = supervisor
        self._bus = bus
        self._tracer_provider = tracer_provider
        self._on_finish = on_finish
        self._started = time.perf_counter()
        self._result: RunResult | None = None
        self._finishing = anyio.Lock()
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.status}>"

    @property
    def outcome(self) -> RunOutcome:
        return self._plan.outcome

    @property
    def status(self) -> Literal["running", "completed", "failed", "cancelled"]:
        """``running`` until the workflow actor has finished."""
        return self._plan.outcome.status

    async def events(self) -> AsyncGenerator[TelemetryEvent, None]:
        """Every telemetry event of this run, in order, from its first; ends with the run."""
        with self._bus.subscribe(replay=True) as stream:
            async for event in stream:
                yield event

    def telemetry_statistics(self) -> BusStatistics:
        """How the run's telemetry handlers fared: events delivered, failures, drops."""
        return self._bus.statistics()

    async def wait(self) -> RunResult:
        """Wait until the run has ended and every one of its actors has stopped.

        Raises:
            StageFailed: a stage failed for good (names the stage, path and attempt; the
                original error is ``__cause__``).
            RunCancelled: the run was cancelled.
            WorkflowError: the run failed outside any stage.
        """
        result = await self.result()
        outcome = self._plan.outcome
        if result.status == "cancelled":
            raise RunCancelled(self.run_id)
        if result.status == "failed":
            error = outcome.error
            if isinstance(error, WorkflowError):
                raise error
            raise WorkflowError(f"run {self.run_id!r} failed: {result.error}") from error
        return result

    async def result(self) -> RunResult:
        """Like :meth:`wait`, but returns the result whatever the status, never raising.

        With a run directory, the result is written to its ``summary.json`` first.
        """
        async with self._finishing:
            result = self._result
            if result is None:
                reason = await self._supervisor.wait()
                with anyio.CancelScope(shield=True):
                    result = self._result = await self._finish(reason)
        assert result is not None  # mypy: a shielded scope might swallow an exception
        return result

    async def _finish(self, reason: object) -> RunResult:
        self._bus.close()
        outcome = self._plan.outcome
        if outcome.status == "running":  # the workflow actor died without a word
            outcome.status = "cancelled" if self._cancelled else "failed"
            outcome.error = outcome.error or WorkflowError(
                f"run {self.run_id!r} ended without finishing its workflow: {reason}"
            )
        result = self._build_result()
        if self.run_dir is not None and writes_run_files():
            try:
                await anyio.to_thread.run_sync(write_json, self.run_dir / SUMMARY_FILE, result)
            except OSError:
                logger.exception("run %r: cannot write %s", self.run_id, SUMMARY_FILE)
        if self._tracer_provider is not None:
            await anyio.to_thread.run_sync(self._tracer_provider.shutdown)
        if self._on_finish is not None:
            self._on_finish(self, result)
        return result

    def request_stop(self) -> None:
        """Ask the run to stop at the next loop iteration boundary, after the current one's
        stages (a checkpoint among them: ``checkpoint_due``-style predicates see
        ``ctx.run.stop_requested``); cleanup stages run and the run ends as cancelled.
        A second, harder stop is :meth:`cancel`."""
        self._plan.run.stop_requested = True

    async def cancel(self) -> RunResult:
        """Stop the run: the running stage is cancelled within its shutdown timeout, the
        cleanup stages run, then every actor of the run stops. Returns the final result."""
        self._cancelled = True
        await self._supervisor.stop()
        return await self.result()

    def _build_result(self) -> RunResult:
        outcome = self._plan.outcome
        ctx = outcome.context or self._plan.initial
        error = outcome.error
        status = outcome.status
        assert status != "running"
        artifacts = ctx.state.get("artifacts", {})
        return RunResult(
            run_id=self.run_id,
            workflow=self.workflow,
            recipe=self.recipe,
            status=status,
            metrics={k: float(v) for k, v in ctx.metrics.items()},
            artifacts={str(k): str(v) for k, v in artifacts.items()},
            steps=ctx.step,
            duration_s=time.perf_counter() - self._started,
            error=None if error is None else f"{type(error).__name__}: {error}",
            failed_stage=error.stage if isinstance(error, StageFailed) else None,
            attempts=error.attempt if isinstance(error, StageFailed) else None,
        )

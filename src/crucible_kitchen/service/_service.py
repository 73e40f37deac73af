"""The Kitchen behind the HTTP API: its lifetime, the runs it started, stopping them."""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from crucible_kitchen import Kitchen
from crucible_kitchen.errors import ConfigError, RunDirectoryError
from crucible_kitchen.telemetry import (
    EvalComplete,
    StageException,
    StageStart,
    StageStop,
    metrics_row,
)

from ._past import PastRun, read_past_run, run_directory, scan_past_runs
from ._problems import Problem
from ._schema import RunStatus, RunView

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence

    from anyio.abc import TaskGroup

    from crucible_kitchen import Recipe, RunHandle, RunResult
    from crucible_kitchen.telemetry import TelemetryEvent

__all__ = ("KitchenService", "ServiceSettings", "TrackedRun")


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """How the embedded service behaves.

    - ``root``: run directories go to ``<root>/<run_id>`` (for recipes that keep one).
    - ``token``: bearer token(s). One string, or ``{client name: token}`` to tell clients
      apart for the per-client limit. Without a token only loopback peers are served.
    - ``adapter_sets``: the adapter sets a request may name; ``None`` allows every
      registered set (entry points of the installed packages).
    - ``recipes``: recipes besides the built-in and registered ones (given by the host
      application, never by a request).
    - ``max_body_bytes``: a larger request body is refused with 413.
    - ``max_runs_per_client``: runs one client may have running at once (``None``: no limit).
    - ``stop_grace_s``: on shutdown (and ``POST /runs/{id}/cancel``) a run is asked to stop
      at its next step boundary (checkpointing if its recipe does so); after this many
      seconds it is cancelled.
    - ``heartbeat_s``: an idle event stream sends a comment this often, so that a client
      that went away is noticed.
    - ``tracer_provider``: OpenTelemetry spans of requests and runs go there.
    - ``page_size``, ``max_page_size``: ``GET /runs`` pagination.

    Raises:
        ConfigError: every invalid setting (an empty token, a limit below 1, ...).
    """

    root: str | os.PathLike[str] = "runs"
    token: str | Mapping[str, str] | None = None
    adapter_sets: Collection[str] | None = None
    recipes: Sequence[Recipe] = ()
    max_body_bytes: int = 64 * 1024
    max_runs_per_client: int | None = 4
    stop_grace_s: float = 30.0
    heartbeat_s: float = 15.0
    tracer_provider: Any = None
    page_size: int = 50
    max_page_size: int = 500

    def __post_init__(self) -> None:
        problems = []
        tokens = {"token": self.token} if isinstance(self.token, str) else dict(self.token or {})
        problems += [f"{name}: a token must not be empty" for name, t in tokens.items() if not t]
        for name in ("max_body_bytes", "page_size", "max_page_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_runs_per_client is not None and self.max_runs_per_client < 1:
            problems.append(
                f"max_runs_per_client: must be at least 1 or None, got {self.max_runs_per_client}"
            )
        for name in ("stop_grace_s", "heartbeat_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be more than 0 seconds, got {getattr(self, name)}")
        if problems:
            raise ConfigError(problems, source="service settings")


@dataclass(eq=False)
class TrackedRun:
    """A run started through the service, with what its events told so far.

    It is a synchronous telemetry handler of its run: each event updates the stage, the step,
    the latest metrics and the metrics history.
    """

    handle: RunHandle
    client: str
    adapters: str | None
    created: float = field(default_factory=time.time)
    stage: str | None = None
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    result: RunResult | None = None

    def __call__(self, event: TelemetryEvent) -> None:
        match event:
            case StageStart():
                self.stage = event.stage
            case StageStop() | StageException() if self.stage == event.stage:
                self.stage = None
        row = metrics_row(event)
        if row is None:
            return
        self.history.append(row)
        if not isinstance(event, EvalComplete):  # an evaluation's step is not one more done
            self.steps = max(self.steps, row["step"] + 1)
        self.metrics.update(
            (key, float(value))
            for key, value in row.items()
            if key != "step" and isinstance(value, int | float) and math.isfinite(value)
        )

    @property
    def status(self) -> RunStatus:
        return self.handle.status if self.result is None else self.result.status

    def view(self) -> RunView:
        result = self.result
        return RunView(
            run_id=self.handle.run_id,
            recipe=self.handle.recipe,
            workflow=self.handle.workflow,
            adapters=self.adapters,
            status=self.status,
            created=self.created,
            stage=None if result is not None else self.stage,
            steps=self.steps if result is None else result.steps,
            metrics=dict(self.metrics),
            artifacts={} if result is None else dict(result.artifacts),
            error=None if result is None else result.error,
            failed_stage=None if result is None else result.failed_stage,
        )


class KitchenService:
    """Owns a Kitchen for the lifetime of an aiohttp application and the runs started over
    HTTP.

    :meth:`lifespan` is the application's ``cleanup_ctx``: the Kitchen lives in a task of its
    own (so that the anyio scopes it opens are entered and left in one task, whichever tasks
    aiohttp starts and stops the application from). :meth:`shutdown` stops every run
    gracefully; it runs on the application's ``on_shutdown``, before aiohttp waits for open
    requests, so that event streams see their runs end.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._kitchen: Kitchen | None = None
        self._task_group: TaskGroup | None = None
        self._runs: dict[str, TrackedRun] = {}
        self._past: dict[str, PastRun] = {}
        self._resuming: set[str] = set()
        self._closing = anyio.Event()
        self._stopping = False
        self._streams = 0
        self._streams_closed = anyio.Event()
        self._streams_closed.set()

    @property
    def kitchen(self) -> Kitchen:
        """The Kitchen, while the application runs.

        Raises:
            RuntimeError: the application has not started or has stopped.
        """
        if self._kitchen is None:
            raise RuntimeError("the kitchen service is not running (start its application)")
        return self._kitchen

    @property
    def stopping(self) -> bool:
        """Whether shutdown began (new runs are refused)."""
        return self._stopping

    # ------------------------------------------------------------------ lifetime

    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """The ``cleanup_ctx`` of the application: start the Kitchen, and at cleanup stop
        every run and close the Kitchen."""
        ready = asyncio.get_running_loop().create_future()
        owner = asyncio.create_task(self._own_kitchen(ready), name="crucible-kitchen")
        await asyncio.wait((owner, ready), return_when=asyncio.FIRST_COMPLETED)
        if owner.done():
            owner.result()  # raises what failed the start
        try:
            yield
        finally:
            self._closing.set()
            await owner

    async def _own_kitchen(self, ready: asyncio.Future[None]) -> None:
        settings = self.settings
        past = await anyio.to_thread.run_sync(scan_past_runs, Path(settings.root))
        self._past = {run.run_id: run for run in past}
        async with (
            Kitchen.open(
                runs_root=Path(settings.root),
                recipes=settings.recipes,
                tracer_provider=settings.tracer_provider,
            ) as kitchen,
            anyio.create_task_group() as task_group,
        ):
            self._kitchen, self._task_group = kitchen, task_group
            ready.set_result(None)
            try:
                await self._closing.wait()
                await self.shutdown()
            finally:
                self._kitchen = self._task_group = None

    async def shutdown(self) -> None:
        """Refuse new runs, then stop every run (see :meth:`stop_run`) and wait until each
        has ended with its final status. Idempotent."""
        self._stopping = True
        async with anyio.create_task_group() as task_group:
            for run in self._runs.values():
                if run.result is None:
                    task_group.start_soon(self.stop_run, run)

    async def stop_run(self, run: TrackedRun) -> RunResult:
        """Ask ``run`` to stop at its next step boundary (its checkpoint stage runs when the
        recipe checkpoints), and cancel it if it has not ended after ``stop_grace_s``."""
        run.handle.request_stop()
        with anyio.move_on_after(self.settings.stop_grace_s):
            return await run.handle.result()
        return await run.handle.cancel()

    # ------------------------------------------------------------------ runs

    async def start_run(
        self,
        *,
        client: str,
        recipe: str,
        config: Mapping[str, Any],
        adapters: str | None,
        seed: int,
    ) -> TrackedRun:
        """Start a run of a registered recipe for ``client``.

        Raises:
            Problem: shutting down (503), the adapter set is not allowed (422), the client has
                too many runs running (429).
            ConfigError, PortError, RecipeNotFound: from :meth:`Kitchen.start`.
        """
        task_group = self._accepting()
        kitchen = self.kitchen
        adapter_set = adapters or kitchen.recipe(recipe).adapters
        self._check_adapter_set(adapter_set)
        self._check_client_limit(client)
        tracker = _Tracker()
        handle = await kitchen.start(
            recipe, dict(config), adapters=adapter_set, seed=seed, telemetry=[tracker]
        )
        return self._track(task_group, handle, tracker, client=client, adapters=adapter_set)

    async def resume_run(self, *, client: str, run_id: str) -> TrackedRun:
        """Start the run ``<root>/<run_id>`` again where its newest checkpoint left it (see
        :meth:`Kitchen.start_resumed`), for ``client``: a run that an earlier process (or
        this one) stopped before it completed.

        Raises:
            Problem: shutting down (503), no such run (404), the run is running (409) or
                cannot be resumed (409: it completed, its recipe is unknown here, ...), its
                adapter set is not allowed (422), the client has too many runs running (429).
        """
        task_group = self._accepting()
        directory = run_directory(Path(self.settings.root), run_id)
        current = self._runs.get(run_id)
        if run_id in self._resuming or (current is not None and current.result is None):
            raise Problem(409, "run-running", f"run {run_id!r} is running; nothing to resume")
        self._resuming.add(run_id)  # one resume at a time: two would share the directory
        try:
            past = await anyio.to_thread.run_sync(read_past_run, directory)
            if past is None:
                raise Problem(404, "unknown-run", f"no run with id {run_id!r} on disk to resume")
            if past.adapters is not None:
                self._check_adapter_set(past.adapters)
            self._check_client_limit(client)
            tracker = _Tracker()
            try:
                handle = await self.kitchen.start_resumed(directory, telemetry=[tracker])
            except RunDirectoryError as exc:  # the server's paths are no business of clients
                detail = str(exc).replace(str(directory.parent), "<root>")
                raise Problem(409, "cannot-resume", detail) from None
        finally:
            self._resuming.discard(run_id)
        self._past.pop(run_id, None)
        self._runs.pop(run_id, None)  # listed again at the end, as the newest run
        return self._track(task_group, handle, tracker, client=client, adapters=past.adapters)

    def _accepting(self) -> TaskGroup:
        """The task group that runs' result watchers go to, while new runs are accepted."""
        if self._stopping or self._task_group is None:
            raise Problem(503, "stopping", "the kitchen is shutting down and takes no new runs")
        return self._task_group

    def _check_adapter_set(self, adapter_set: str) -> None:
        allowed = self.settings.adapter_sets
        if allowed is not None and adapter_set not in allowed:
            raise Problem(
                422,
                "adapter-set-not-allowed",
                f"adapter set {adapter_set!r} is not allowed here; allowed: "
                f"{', '.join(sorted(allowed)) or 'none'}",
            )

    def _check_client_limit(self, client: str) -> None:
        limit = self.settings.max_runs_per_client
        if limit is None:
            return
        running = sum(
            1 for run in self._runs.values() if run.client == client and run.result is None
        )
        if running >= limit:
            raise Problem(
                429,
                "too-many-runs",
                f"client {client!r} has {running} runs running, the most allowed; "
                "wait for one to end or cancel one",
            )

    def _track(
        self,
        task_group: TaskGroup,
        handle: RunHandle,
        tracker: _Tracker,
        *,
        client: str,
        adapters: str | None,
    ) -> TrackedRun:
        run = TrackedRun(handle=handle, client=client, adapters=adapters)
        tracker.attach(run)
        self._runs[handle.run_id] = run
        task_group.start_soon(self._record_result, run)
        if self.stopping:  # shutdown began while the run started: it stops with the others
            task_group.start_soon(self.stop_run, run)
        return run

    async def _record_result(self, run: TrackedRun) -> None:
        run.result = await run.handle.result()

    def cancel_run(self, run: TrackedRun) -> None:
        """Stop ``run`` in the background, as :meth:`stop_run` does.

        Raises:
            Problem: the run has ended already (409).
        """
        if run.result is not None or self._task_group is None:
            raise Problem(
                409, "run-ended", f"run {run.handle.run_id!r} has ended already ({run.status})"
            )
        self._task_group.start_soon(self.stop_run, run)

    def run(self, run_id: str) -> TrackedRun:
        """A run started through the service.

        Raises:
            Problem: no such run (404 ``unknown-run``), or a run that ended before the service
                started (404 ``past-run``: only its view is served).
        """
        try:
            return self._runs[run_id]
        except KeyError:
            if run_id in self._past:
                raise Problem(
                    404,
                    "past-run",
                    f"run {run_id!r} ended before this service started: GET /runs/{run_id} "
                    "shows it, and its metrics and events are in its run directory",
                ) from None
            raise Problem(404, "unknown-run", f"no run with id {run_id!r}") from None

    def runs(self, status: str | None = None) -> list[TrackedRun]:
        """The runs started through the service, oldest first, those with ``status`` only."""
        return [run for run in self._runs.values() if status is None or run.status == status]

    def all_runs(self, status: str | None = None) -> list[TrackedRun | PastRun]:
        """The runs found on disk when the service started (oldest first), then those started
        through it; those with ``status`` only."""
        runs: list[TrackedRun | PastRun] = [*self._past.values(), *self._runs.values()]
        return [run for run in runs if status is None or run.status == status]

    async def view(self, run_id: str) -> RunView:
        """Where the run ``run_id`` stands: a run started here, else its run directory.

        Raises:
            Problem: no such run (404).
        """
        run = self._runs.get(run_id) or self._past.get(run_id)
        if run is None:
            directory = run_directory(Path(self.settings.root), run_id)
            run = await anyio.to_thread.run_sync(read_past_run, directory)
        if run is None:
            raise Problem(404, "unknown-run", f"no run with id {run_id!r}")
        return run.view()

    # ------------------------------------------------------------------ event streams

    @property
    def open_streams(self) -> int:
        """How many event streams are being served now."""
        return self._streams

    async def streams_closed(self) -> None:
        """Wait until no event stream is being served."""
        await self._streams_closed.wait()

    @contextmanager
    def stream(self) -> Iterator[None]:
        """Count an event stream while it is served (a context manager's body)."""
        if self._streams == 0:
            self._streams_closed = anyio.Event()
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1
            if self._streams == 0:
                self._streams_closed.set()


class _Tracker:
    """The run's telemetry handler: events emitted while :meth:`Kitchen.start` returns are
    kept until the :class:`TrackedRun` exists, then handed to it."""

    def __init__(self) -> None:
        self._run: TrackedRun | None = None
        self._early: list[TelemetryEvent] = []

    def attach(self, run: TrackedRun) -> None:
        self._run = run
        for event in self._early:
            run(event)
        self._early.clear()

    def __call__(self, event: TelemetryEvent) -> None:
        if self._run is None:
            self._early.append(event)
        else:
            self._run(event)

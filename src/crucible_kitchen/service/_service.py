"""The Kitchen behind the HTTP API: its lifetime, the runs it started, stopping them.

With ``kitchen="process"`` the Kitchen runs in a worker process (see ``_worker``), and this
process keeps its record of each run from the news the worker sends. By default
(``kitchen="thread"``) the Kitchen runs on an event loop of its own, in a thread of its own
(the *kitchen loop*); the host application's loop only serves HTTP. A run's work (its
actors, its stages, what the adapters compute in Python) thus never queues the host's
requests behind it, and the host's loop stays the host's. Whatever touches the Kitchen or a
run's handle runs on the kitchen loop (:meth:`KitchenService.on_kitchen`); the service's own
records of the runs (:class:`TrackedRun`, the index of runs) change on the host's loop only,
except for what a run's telemetry handler writes into its record (its stage, step and latest
metrics, and the events and metrics rows of a run without a run directory).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import math
import os
import sys
import threading
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast

import anyio
from opentelemetry import trace

from crucible_kitchen import Kitchen, RunResult
from crucible_kitchen.errors import ConfigError, RecipeNotFound, RunDirectoryError
from crucible_kitchen.telemetry import (
    EvalComplete,
    StageException,
    StageStart,
    StageStop,
    encode_event,
    event_name,
    inject_context,
    metrics_row,
)

from ._past import (
    PastRun,
    StoredEvent,
    read_event_lines,
    read_metrics_rows,
    read_past_run,
    run_directory,
    scan_past_runs,
)
from ._problems import Problem
from ._schema import RunStatus, RunView

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Coroutine,
        Iterator,
        Mapping,
        Sequence,
    )

    from anyio.abc import TaskGroup

    from crucible_kitchen import Recipe, RunHandle
    from crucible_kitchen.kitchen import RecipeInfo
    from crucible_kitchen.telemetry import TelemetryEvent

    from ._worker import Ended, KitchenWorker, ResumeRun, RunProgress, Started, StartRun

__all__ = ("KitchenService", "ServiceSettings", "TrackedRun")

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """How the embedded service behaves.

    - ``kitchen``: where the Kitchen runs. ``"thread"``: in this process, on an event loop
      of its own in a thread of its own (the host may then reach it from Python:
      :attr:`KitchenService.kitchen`, :meth:`KitchenService.on_kitchen`, adapters and
      telemetry registered in this process). ``"process"``: in a worker process of its own
      (started with multiprocessing's *spawn* method), so that its work, its interpreter lock
      and its garbage collector never hold up the host's requests; recipes and adapter sets
      are then those registered by installed packages (entry points), and the runs' spans go
      to ``worker_tracing``.
    - ``worker_tracing``: with ``kitchen="process"``, where the worker's spans (runs and
      stages) go: an exporter spec of :func:`~crucible_kitchen.telemetry.configure_tracing`
      (``"otlp:<endpoint>"``, ``"jsonl:<path>"``, ``"console"``). The run span of a
      ``POST /runs`` is a child of the request's span (with ``tracer_provider``) all the same.
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
    - ``keep_finished``: how many finished runs keep their summary in memory. An older run
      with a run directory is then read from it when asked for (its view, metrics and
      events); an older run without one is forgotten.
    - ``kitchen_niceness``: on Linux, the Kitchen's thread or worker process (and the threads
      it starts, such as those computing a local torch step) runs this many niceness steps
      below the process (0: the same priority; at most 19), so that when the cores are busy the
      operating system serves the host's HTTP thread first. Elsewhere it is ignored.
    - ``gc_young_threshold``: while the service runs, Python's garbage collector leaves the
      objects that existed when it started alone (``gc.freeze()``) and collects its youngest
      generation every this many allocations at least (Python's default is 700), so that
      collections, which stop every thread of the process, come rarely while many runs are
      alive. The previous thresholds come back when the service stops (and the objects are
      unfrozen, unless some were frozen before it started). ``None`` leaves the collector
      as it is.
    - ``switch_interval_s``: while the service runs, a thread that waits for the interpreter
      lock (the host's, with a request to answer) gets it from the thread that holds it (the
      Kitchen's, running runs) after this many seconds (``sys.setswitchinterval``; Python's
      default is 0.005). The previous interval comes back when the service stops. ``None``
      leaves it as it is.

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
    keep_finished: int = 200
    kitchen_niceness: int = 10
    gc_young_threshold: int | None = 10_000
    switch_interval_s: float | None = 0.0005
    kitchen: Literal["thread", "process"] = "thread"
    worker_tracing: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kitchen not in ("thread", "process"):
            problems.append(f"kitchen: must be 'thread' or 'process', got {self.kitchen!r}")
        elif self.kitchen == "process" and self.recipes:
            problems.append(
                "recipes: the host's own recipes cannot reach a worker process; register them "
                "by entry point, or use kitchen='thread'"
            )
        elif self.kitchen == "thread" and self.worker_tracing is not None:
            problems.append("worker_tracing: only a kitchen='process' has a worker to trace")
        tokens = {"token": self.token} if isinstance(self.token, str) else dict(self.token or {})
        problems += [f"{name}: a token must not be empty" for name, t in tokens.items() if not t]
        for name in ("max_body_bytes", "page_size", "max_page_size", "keep_finished"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_runs_per_client is not None and self.max_runs_per_client < 1:
            problems.append(
                f"max_runs_per_client: must be at least 1 or None, got {self.max_runs_per_client}"
            )
        for name in ("stop_grace_s", "heartbeat_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be more than 0 seconds, got {getattr(self, name)}")
        if not 0 <= self.kitchen_niceness <= 19:
            problems.append(f"kitchen_niceness: must be from 0 to 19, got {self.kitchen_niceness}")
        if self.gc_young_threshold is not None and self.gc_young_threshold < 1:
            problems.append(
                f"gc_young_threshold: must be at least 1 or None, got {self.gc_young_threshold}"
            )
        if self.switch_interval_s is not None and not self.switch_interval_s > 0:
            problems.append(
                f"switch_interval_s: must be more than 0 seconds or None, "
                f"got {self.switch_interval_s}"
            )
        if problems:
            raise ConfigError(problems, source="service settings")


@dataclass(eq=False)
class TrackedRun:
    """A run started through the service: what its events told so far, then its result.

    It is a synchronous telemetry handler of its run (called on the kitchen loop): each event
    updates the stage, the step and the latest metrics. A run with a run directory keeps
    nothing more: its metrics history and events are read back from there when asked for.
    A run without one keeps them here, compactly (each event as its JSON); the service keeps
    that only for its ``keep_finished`` newest finished runs. Once the run has ended,
    ``handle`` is dropped, and with it the run's telemetry history and state.

    With the Kitchen in a worker process, the worker keeps such a record of each run and sends
    its news; the service's record has no ``handle`` and keeps the events of a running run.
    """

    run_id: str
    recipe: str | None
    workflow: str
    run_dir: Path | None
    client: str
    adapters: str | None
    handle: RunHandle | None
    created: float = field(default_factory=time.time)
    stage: str | None = None
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] | None = None
    events: list[StoredEvent] | None = None
    result: RunResult | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on the host's loop once ``result`` is recorded."""

    @classmethod
    def begun(
        cls,
        run: RunHandle | Started,
        *,
        handle: RunHandle | None,
        client: str = "",
        adapters: str | None = None,
        keep_events: bool = False,
    ) -> TrackedRun:
        """The record of ``run``, just started: its handle, or (in the service's process,
        the Kitchen in a worker) the worker's word that it started. A run without a run
        directory keeps its metrics rows and events here; ``keep_events``: a run with one
        keeps its events too (until the worker sends them, or the run ends)."""
        run_dir = None if run.run_dir is None else Path(run.run_dir)
        return cls(
            run_id=run.run_id,
            recipe=run.recipe,
            workflow=run.workflow,
            run_dir=run_dir,
            client=client,
            adapters=adapters,
            handle=handle,
            history=[] if run_dir is None else None,
            events=[] if keep_events or run_dir is None else None,
        )

    def __call__(self, event: TelemetryEvent) -> None:
        match event:
            case StageStart():
                self.stage = event.stage
            case StageStop() | StageException() if self.stage == event.stage:
                self.stage = None
        if self.events is not None:
            self.events.append(StoredEvent(event.seq, event_name(event), encode_event(event)))
        row = metrics_row(event)
        if row is None:
            return
        if self.history is not None:
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
        if self.result is not None:
            return self.result.status
        if self.handle is None:  # in a worker process: running until its result comes
            return "running"
        return self.handle.status

    def view(self) -> RunView:
        result = self.result
        return RunView(
            run_id=self.run_id,
            recipe=self.recipe,
            workflow=self.workflow,
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


class _OnDisk(NamedTuple):
    """A finished run the service no longer keeps a summary of: its run directory has it."""

    run_id: str
    status: RunStatus


Listed = TrackedRun | PastRun | _OnDisk
"""One entry of the service's list of runs."""


class KitchenService:
    """Owns a Kitchen for the lifetime of an aiohttp application and the runs started over
    HTTP.

    :meth:`lifespan` is the application's ``cleanup_ctx``: it starts the Kitchen on an event
    loop of its own in a new thread (its anyio scopes are entered and left in one task there)
    and, at cleanup, stops it and waits for the thread; with ``kitchen="process"`` it starts
    the Kitchen's worker process instead, and at cleanup waits for it to exit (see
    ``_worker``). :meth:`shutdown` stops every run
    gracefully; it runs on the application's ``on_shutdown``, before aiohttp waits for open
    requests, so that event streams see their runs end.

    Every method is called on the host's loop, except the coroutines given to
    :meth:`on_kitchen`, which run on the kitchen loop.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._kitchen: Kitchen | None = None
        self._task_group: TaskGroup | None = None
        self._kitchen_loop: asyncio.AbstractEventLoop | None = None
        self._host_loop: asyncio.AbstractEventLoop | None = None
        self._wakeups: _Wakeups | None = None
        self._runs: dict[str, TrackedRun | _OnDisk] = {}
        self._finished: deque[str] = (
            deque()
        )  # finished runs with a summary, in the order they ended
        self._past: dict[str, PastRun] = {}
        self._resuming: set[str] = set()
        self._stopping = False
        self._streams = 0
        self._streams_closed = anyio.Event()
        self._streams_closed.set()
        self._worker: KitchenWorker | None = None
        self._live: dict[str, TrackedRun] = {}  # runs in the worker that have not ended
        self._news: dict[str, asyncio.Event] = {}  # set when a run in the worker has news
        self._failure: str | None = None

    @property
    def kitchen(self) -> Kitchen:
        """The Kitchen, while the application runs. It lives on the kitchen loop: await its
        coroutines (and those of its run handles) through :meth:`on_kitchen`.

        Raises:
            RuntimeError: the application has not started or has stopped, or the Kitchen
                runs in a worker process (``kitchen="process"``).
        """
        if self._kitchen is None:
            raise self._not_here()
        return self._kitchen

    def _not_here(self) -> RuntimeError:
        if self.settings.kitchen == "process":
            return RuntimeError(
                "the Kitchen runs in a worker process (kitchen='process'): reach it over "
                "HTTP, or serve it with kitchen='thread'"
            )
        return RuntimeError("the kitchen service is not running (start its application)")

    @property
    def stopping(self) -> bool:
        """Whether shutdown began (new runs are refused)."""
        return self._stopping

    @property
    def failure(self) -> str | None:
        """Why the service can start no more runs (its worker process died), else ``None``."""
        return self._failure

    @property
    def worker_pid(self) -> int | None:
        """The process id of the Kitchen's worker process (``kitchen="process"``, while the
        application runs), else ``None``."""
        return None if self._worker is None else self._worker.pid

    def recipes(self) -> list[RecipeInfo]:
        """The recipes runs may be started of, while the application runs.

        Raises:
            RuntimeError: the application has not started or has stopped.
        """
        if self._worker is not None:
            return list(self._worker.recipes)
        return self.kitchen.recipes()

    def _default_adapters(self, recipe: str) -> str:
        """The adapter set of the recipe named ``recipe``.

        Raises:
            RecipeNotFound: no such recipe.
        """
        if self._worker is None:
            return self.kitchen.recipe(recipe).adapters
        known = {info.name: info.adapters for info in self._worker.recipes}
        if recipe not in known:
            raise RecipeNotFound(recipe, known=sorted(known))
        return known[recipe]

    async def on_kitchen(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the kitchen loop and return its result here, on the host's
        loop, without blocking it; cancelling the caller cancels the coroutine. Context
        variables (the current OpenTelemetry span among them) go along.

        Raises:
            RuntimeError: the application has not started or has stopped.
        """
        loop = self._kitchen_loop
        if loop is None:
            coroutine.close()
            raise self._not_here()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))

    # ------------------------------------------------------------------ lifetime

    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """The ``cleanup_ctx`` of the application: start the Kitchen (on its own loop, or in
        its worker process), and at cleanup stop every run, close the Kitchen and wait for its
        thread (or process)."""
        self._host_loop = asyncio.get_running_loop()
        owned = self._in_worker() if self.settings.kitchen == "process" else self._in_thread()
        async with owned:
            with (
                _tuned_collector(self.settings.gc_young_threshold),
                _switch_interval(self.settings.switch_interval_s),
            ):
                yield

    @asynccontextmanager
    async def _in_thread(self) -> AsyncIterator[None]:
        assert self._host_loop is not None
        self._wakeups = _Wakeups(self._host_loop)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        closing: concurrent.futures.Future[None] = concurrent.futures.Future()
        ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._kitchen_thread, args=(ready, closing, ended), name="crucible-kitchen"
        )
        thread.start()
        owner = asyncio.wrap_future(ended)
        try:
            await asyncio.wait((owner, asyncio.wrap_future(ready)), return_when=FIRST_COMPLETED)
            if owner.done():
                owner.result()  # raises what failed the start
            yield
        finally:
            closing.set_result(None)  # whenever the Kitchen gets there, it stops
            try:
                await asyncio.shield(owner)
            finally:
                thread.join()

    @asynccontextmanager
    async def _in_worker(self) -> AsyncIterator[None]:
        from ._worker import KitchenWorker, WorkerSettings

        settings = self.settings
        past = await anyio.to_thread.run_sync(scan_past_runs, Path(settings.root))
        self._past = {run.run_id: run for run in past}
        worker = await KitchenWorker.start(
            WorkerSettings(
                root=os.fspath(settings.root),
                stop_grace_s=settings.stop_grace_s,
                niceness=settings.kitchen_niceness,
                tracing=settings.worker_tracing,
            )
        )
        self._worker = worker
        hearing = asyncio.ensure_future(self._hear(worker))
        try:
            yield
        finally:
            try:
                await self.shutdown()
                await worker.close()
            finally:
                await hearing
                self._worker = None

    async def _hear(self, worker: KitchenWorker) -> None:
        """Keep the records of the worker's runs from its news; if it dies, or sends what
        cannot be handled (it is killed then), fail every run that had not ended, and refuse
        new ones."""
        code: int | None = None
        try:
            code = await worker.receive(self._progressed, self._run_ended)
        except Exception:
            logger.exception("the service could not handle what its kitchen's worker sent")
        finally:
            if code is None or self._live or not self._stopping:  # not told to exit
                self._lose_worker(worker.pid, code)

    def _lose_worker(self, pid: int, code: int | None) -> None:
        """The worker has exited with status ``code`` (``None``: it was killed because what
        it sent could not be handled): fail every run that had not ended."""
        how = "was killed" if code is None else f"exited with status {code}"
        self._failure = f"the kitchen's worker process (pid {pid}) {how}"
        if self._live:
            self._failure += " while runs were running"
        for run in list(self._live.values()):
            failed = RunResult(
                run_id=run.run_id,
                workflow=run.workflow,
                recipe=run.recipe,
                status="failed",
                metrics=dict(run.metrics),
                artifacts={},
                steps=run.steps,
                duration_s=time.time() - run.created,
                error=self._failure,
                failed_stage=run.stage,
            )
            self._finish_live(run, failed)

    def _progressed(self, progress: RunProgress) -> None:
        run = self._live.get(progress.run_id)
        if run is None:
            return
        run.stage, run.steps = progress.stage, progress.steps
        run.metrics = progress.metrics
        assert run.events is not None  # kept while the run is live
        run.events.extend(progress.events)
        if run.history is not None:
            run.history.extend(progress.rows)
        self._tell_followers(run.run_id)

    def _run_ended(self, ended: Ended) -> None:
        if (run := self._live.get(ended.run_id)) is not None:
            self._finish_live(run, ended.result)

    def _finish_live(self, run: TrackedRun, result: RunResult) -> None:
        del self._live[run.run_id]
        if run.run_dir is not None:  # its events are read back from there from now on
            run.events = None
        self._ended(run, result)
        self._tell_followers(run.run_id)

    def _tell_followers(self, run_id: str) -> None:
        if (news := self._news.pop(run_id, None)) is not None:
            news.set()

    def _kitchen_thread(
        self,
        ready: concurrent.futures.Future[None],
        closing: concurrent.futures.Future[None],
        ended: concurrent.futures.Future[None],
    ) -> None:
        try:
            _lower_thread_priority(self.settings.kitchen_niceness)
            anyio.run(self._own_kitchen, ready, closing, backend="asyncio")
        except BaseException as exc:  # handed to the host's loop, which raises it
            ended.set_exception(exc)
        else:
            ended.set_result(None)

    async def _own_kitchen(
        self, ready: concurrent.futures.Future[None], closing: concurrent.futures.Future[None]
    ) -> None:
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
            self._kitchen_loop = asyncio.get_running_loop()
            ready.set_result(None)
            try:
                await asyncio.wrap_future(closing)
                await self._stop_runs()
            finally:
                self._kitchen = self._task_group = self._kitchen_loop = None

    async def shutdown(self) -> None:
        """Refuse new runs, then stop every run (see :meth:`stop_run`) and wait until each
        has ended with its final status. Idempotent."""
        self._stopping = True
        if self._worker is not None:
            from ._worker import StopAll

            self._worker.send(StopAll())
            await self._worker.starts_settled()  # a run that starts now is tracked by then
            while self._live:
                await next(iter(self._live.values())).ended.wait()
        elif self._kitchen_loop is not None:
            await self.on_kitchen(self._stop_runs())

    async def _stop_runs(self) -> None:
        async with anyio.create_task_group() as task_group:
            for handle in self._kitchen.runs() if self._kitchen is not None else ():
                if handle.status == "running":
                    task_group.start_soon(self.stop_run, handle)

    async def stop_run(self, handle: RunHandle) -> RunResult:
        """Ask the run to stop at its next step boundary (its checkpoint stage runs when the
        recipe checkpoints), and cancel it if it has not ended after ``stop_grace_s``. On the
        kitchen loop."""
        return await stop_gracefully(handle, self.settings.stop_grace_s)

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
        self._accepting()
        adapter_set = adapters or self._default_adapters(recipe)
        self._check_adapter_set(adapter_set)
        self._check_client_limit(client)
        if self._worker is not None:
            from ._worker import StartRun

            trace = _trace_carrier()
            return await self._start_in_worker(
                lambda request: StartRun(
                    request=request,
                    recipe=recipe,
                    config=dict(config),
                    adapters=adapter_set,
                    seed=seed,
                    trace=trace,
                ),
                client=client,
                adapters=adapter_set,
            )
        kitchen = self.kitchen

        async def start(tracker: _Tracker) -> RunHandle:
            return await kitchen.start(
                recipe, dict(config), adapters=adapter_set, seed=seed, telemetry=[tracker]
            )

        return await self.on_kitchen(self._launch(start, client=client, adapters=adapter_set))

    async def resume_run(self, *, client: str, run_id: str) -> TrackedRun:
        """Start the run ``<root>/<run_id>`` again where its newest checkpoint left it (see
        :meth:`Kitchen.start_resumed`), for ``client``: a run that an earlier process (or
        this one) stopped before it completed.

        Raises:
            Problem: shutting down (503), no such run (404), the run is running (409) or
                cannot be resumed (409: it completed, its recipe is unknown here, ...), its
                adapter set is not allowed (422), the client has too many runs running (429).
        """
        self._accepting()
        directory = run_directory(Path(self.settings.root), run_id)
        current = self._runs.get(run_id)
        if run_id in self._resuming or (isinstance(current, TrackedRun) and current.result is None):
            raise Problem(409, "run-running", f"run {run_id!r} is running; nothing to resume")
        self._resuming.add(run_id)  # one resume at a time: two would share the directory
        try:
            past = await anyio.to_thread.run_sync(read_past_run, directory)
            if past is None:
                raise Problem(404, "unknown-run", f"no run with id {run_id!r} on disk to resume")
            if past.adapters is not None:
                self._check_adapter_set(past.adapters)
            self._check_client_limit(client)
            if self._worker is not None:
                from ._worker import ResumeRun

                trace = _trace_carrier()
                return await self._start_in_worker(
                    lambda request: ResumeRun(
                        request=request, run_dir=os.fspath(directory), trace=trace
                    ),
                    client=client,
                    adapters=past.adapters,
                )
            kitchen = self.kitchen

            async def start(tracker: _Tracker) -> RunHandle:
                return await start_resumed(kitchen, directory, tracker)

            return await self.on_kitchen(self._launch(start, client=client, adapters=past.adapters))
        finally:
            self._resuming.discard(run_id)

    def _accepting(self) -> None:
        """Raise unless new runs are accepted."""
        if self._failure is not None:
            raise Problem(503, "kitchen-worker-died", f"{self._failure}; it takes no new runs")
        if self._stopping or (self._kitchen_loop is None and self._worker is None):
            raise Problem(503, "stopping", "the kitchen is shutting down and takes no new runs")

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
        running = sum(1 for run in self.runs("running") if run.client == client)
        if running >= limit:
            raise Problem(
                429,
                "too-many-runs",
                f"client {client!r} has {running} runs running, the most allowed; "
                "wait for one to end or cancel one",
            )

    async def _launch(
        self,
        start: Callable[[_Tracker], Awaitable[RunHandle]],
        *,
        client: str,
        adapters: str | None,
    ) -> TrackedRun:
        """On the kitchen loop: start the run, track it, watch for its result."""
        task_group, host = self._task_group, self._host_loop
        if task_group is None or host is None:
            raise Problem(503, "stopping", "the kitchen is shutting down and takes no new runs")
        tracker = _Tracker()
        handle = await start(tracker)
        run = TrackedRun.begun(handle, handle=handle, client=client, adapters=adapters)
        tracker.attach(run)
        host.call_soon_threadsafe(self._add, run)  # before the result is: callbacks keep order
        task_group.start_soon(self._watch, run, handle, host)
        if self._stopping:  # shutdown began while the run started: it stops with the others
            task_group.start_soon(self.stop_run, handle)
        return run

    async def _start_in_worker(
        self,
        message: Callable[[int], StartRun | ResumeRun],
        *,
        client: str,
        adapters: str | None,
    ) -> TrackedRun:
        """Have the worker start the run that ``message`` asks for, and track it."""
        self._accepting()  # again: shutdown may have begun while the caller awaited
        assert self._worker is not None

        def track(started: Started) -> TrackedRun:  # before any news of the run is heard
            run = TrackedRun.begun(
                started, handle=None, client=client, adapters=adapters, keep_events=True
            )
            self._live[run.run_id] = run
            self._add(run)
            return run

        return await self._worker.start_run(message, track)

    async def _watch(
        self, run: TrackedRun, handle: RunHandle, host: asyncio.AbstractEventLoop
    ) -> None:
        """On the kitchen loop: hand the run's result to the host's loop once it ended."""
        result = await handle.result()
        host.call_soon_threadsafe(self._ended, run, result)

    def _add(self, run: TrackedRun) -> None:
        """List ``run`` last (a resumed run is listed again, as the newest)."""
        self._past.pop(run.run_id, None)
        self._runs.pop(run.run_id, None)
        self._runs[run.run_id] = run

    def _ended(self, run: TrackedRun, result: RunResult) -> None:
        """Keep a summary of the run; past ``keep_finished`` summaries, the oldest gives way
        to its run directory (or is forgotten without one)."""
        run.result = result
        run.handle = None
        run.ended.set()
        self._finished.append(run.run_id)
        while len(self._finished) > self.settings.keep_finished:
            oldest = self._finished.popleft()
            entry = self._runs.get(oldest)
            if not isinstance(entry, TrackedRun):
                continue
            if entry.run_dir is None:
                del self._runs[oldest]
            else:
                self._runs[oldest] = _OnDisk(oldest, entry.status)

    async def result(self, run: TrackedRun) -> RunResult:
        """Wait until ``run`` has ended and its result is recorded here."""
        await run.ended.wait()
        assert run.result is not None
        return run.result

    def cancel_run(self, run: TrackedRun) -> None:
        """Stop ``run`` in the background, as :meth:`stop_run` does.

        Raises:
            Problem: the run has ended already (409).
        """
        if run.result is not None:
            raise Problem(409, "run-ended", f"run {run.run_id!r} has ended already ({run.status})")
        if self._worker is not None:
            from ._worker import StopRun

            self._worker.send(StopRun(run_id=run.run_id))
            return
        assert run.handle is not None  # dropped only once the result is recorded
        asyncio.run_coroutine_threadsafe(self.stop_run(run.handle), self._loop())

    def run(self, run_id: str) -> TrackedRun:
        """A run started through the service whose summary is kept here.

        Raises:
            Problem: no such run (404 ``unknown-run``), or a run whose summary is kept in its
                run directory only (404 ``past-run``: it ended before the service started, or
                long ago).
        """
        entry = self._runs.get(run_id)
        if isinstance(entry, TrackedRun):
            return entry
        if entry is not None or run_id in self._past:
            raise Problem(
                404,
                "past-run",
                f"run {run_id!r} ended before this service started or long ago: "
                f"GET /runs/{run_id} shows it from its run directory",
            )
        raise Problem(404, "unknown-run", f"no run with id {run_id!r}")

    def runs(self, status: str | None = None) -> list[TrackedRun]:
        """The runs started through the service whose summaries are kept here, oldest first,
        those with ``status`` only."""
        return [
            run
            for run in self._runs.values()
            if isinstance(run, TrackedRun) and (status is None or run.status == status)
        ]

    def all_runs(self, status: str | None = None) -> list[Listed]:
        """The runs found on disk when the service started (oldest first), then those started
        through it; those with ``status`` only."""
        runs: list[Listed] = [*self._past.values(), *self._runs.values()]
        return [run for run in runs if status is None or run.status == status]

    async def views(self, runs: Sequence[Listed]) -> list[RunView]:
        """The views of ``runs``; those kept only on disk are read from there."""
        root = Path(self.settings.root)

        def read_page() -> list[TrackedRun | PastRun | None]:  # one thread trip for the page
            return [
                read_past_run(root / run.run_id) if isinstance(run, _OnDisk) else run
                for run in runs
            ]

        # None: removed from disk meanwhile
        return [run.view() for run in await anyio.to_thread.run_sync(read_page) if run is not None]

    async def view(self, run_id: str) -> RunView:
        """Where the run ``run_id`` stands: a run started here, else its run directory.

        Raises:
            Problem: no such run (404).
        """
        run = self._runs.get(run_id) or self._past.get(run_id)
        if isinstance(run, TrackedRun | PastRun):
            return run.view()
        directory = run_directory(Path(self.settings.root), run_id)
        found = await anyio.to_thread.run_sync(read_past_run, directory)
        if found is None:
            raise Problem(404, "unknown-run", f"no run with id {run_id!r}")
        return found.view()

    def _stored_directory(self, run_id: str) -> Path:
        """The run directory of a run known here but not kept in memory.

        Raises:
            Problem: no such run (404).
        """
        if run_id not in self._runs and run_id not in self._past:
            raise Problem(404, "unknown-run", f"no run with id {run_id!r}")
        return run_directory(Path(self.settings.root), run_id)

    async def metrics_history(self, run_id: str) -> list[dict[str, Any]]:
        """Every metrics row of the run ``run_id``: from memory for a run without a run
        directory, else from its ``metrics.jsonl``.

        Raises:
            Problem: no such run (404).
        """
        entry = self._runs.get(run_id)
        if isinstance(entry, TrackedRun) and entry.history is not None:
            return list(entry.history)
        directory = self._stored_directory(run_id)
        return await anyio.to_thread.run_sync(read_metrics_rows, directory)

    def events(self, run_id: str, after: int) -> AsyncGenerator[StoredEvent, None]:
        """The events of the run ``run_id`` after the one numbered ``after``, in order, one
        at a time (see :meth:`event_batches`).

        Raises:
            Problem: no such run (404); raised here, before the events are iterated.
        """
        return _one_by_one(self.event_batches(run_id, after))

    def event_batches(self, run_id: str, after: int) -> AsyncGenerator[list[StoredEvent], None]:
        """The events of the run ``run_id`` after the one numbered ``after``, in order, in
        batches (never empty) of those that were ready together: of a running run from its telemetry
        (every event since its first, so nothing is missed until it ends), of an ended one
        from memory (without a run directory) or from its run directory.

        Raises:
            Problem: no such run (404); raised here, before the batches are iterated.
        """
        entry = self._runs.get(run_id)
        if isinstance(entry, TrackedRun):
            if entry.handle is not None:
                return self._live_events(entry.handle, after, self._loop(), self._host_wakeups())
            if entry.events is not None:
                if entry.result is None:  # a live run in the worker
                    return self._followed_events(entry, entry.events, after)
                return _kept_events(entry.events, after)
        return self._stored_events(self._stored_directory(run_id), after)

    @staticmethod
    async def _stored_events(
        directory: Path, after: int
    ) -> AsyncGenerator[list[StoredEvent], None]:
        if stored := await anyio.to_thread.run_sync(read_event_lines, directory, after):
            yield stored

    @staticmethod
    async def _live_events(
        handle: RunHandle,
        after: int,
        kitchen_loop: asyncio.AbstractEventLoop,
        wakeups: _Wakeups,
    ) -> AsyncGenerator[list[StoredEvent], None]:
        handoff = _Handoff[StoredEvent | None](wakeups)

        async def forward() -> None:  # on the kitchen loop
            try:
                async for event in handle.events():
                    if event.seq > after:
                        handoff.put(StoredEvent(event.seq, event_name(event), encode_event(event)))
            finally:
                handoff.put(None)

        forwarding = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(forward(), kitchen_loop))
        try:
            while True:
                batch = await handoff.take()
                if batch[-1] is None:
                    if len(batch) > 1:
                        yield cast("list[StoredEvent]", batch[:-1])
                    await forwarding  # raises what ended the forwarding early
                    return
                yield cast("list[StoredEvent]", batch)
        finally:
            forwarding.cancel()

    async def _followed_events(
        self, run: TrackedRun, events: list[StoredEvent], after: int
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """The events of a run in the worker, from its record's ``events`` (taken when the
        stream is asked for: the record drops them once the run has ended), as its news
        arrive."""
        position = 0
        while True:
            ended = run.result is not None  # then every event of the run is in ``events``
            new = events[position:]
            position += len(new)
            if batch := [stored for stored in new if stored.seq > after]:
                yield batch
            if ended and position == len(events):
                return
            # Checked again after the yield, without a suspension before the wait: news that
            # came meanwhile (the run's end among them) is read now, not waited for.
            if position == len(events) and run.result is None:
                await self._news.setdefault(run.run_id, asyncio.Event()).wait()

    async def final_status(self, run_id: str) -> RunStatus:
        """The status of the run ``run_id`` once it has ended (waiting for that).

        Raises:
            Problem: no such run (404).
        """
        entry = self._runs.get(run_id) or self._past.get(run_id)
        if entry is None:
            raise Problem(404, "unknown-run", f"no run with id {run_id!r}")
        if isinstance(entry, TrackedRun):
            return (await self.result(entry)).status
        return entry.status

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._kitchen_loop is None:
            raise Problem(503, "stopping", "the kitchen has stopped")
        return self._kitchen_loop

    def _host_wakeups(self) -> _Wakeups:
        if self._wakeups is None:
            raise Problem(503, "stopping", "the kitchen has stopped")
        return self._wakeups

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


async def stop_gracefully(handle: RunHandle, grace_s: float) -> RunResult:
    """Ask the run to stop at its next step boundary, and cancel it if it has not ended after
    ``grace_s`` seconds; its result."""
    handle.request_stop()
    with anyio.move_on_after(grace_s):
        return await handle.result()
    return await handle.cancel()


async def start_resumed(kitchen: Kitchen, directory: Path, tracker: _Tracker) -> RunHandle:
    """Start the run in ``directory`` again where its newest checkpoint left it
    (:meth:`Kitchen.start_resumed`), its events told to ``tracker``.

    Raises:
        Problem: it cannot be resumed (409 ``cannot-resume``; the detail shows the runs'
            root as ``<root>``: the server's paths are no business of clients).
    """
    try:
        return await kitchen.start_resumed(directory, telemetry=[tracker])
    except RunDirectoryError as exc:
        detail = str(exc).replace(str(directory.parent), "<root>")
        raise Problem(409, "cannot-resume", detail) from None


def _trace_carrier() -> dict[str, str]:
    """The W3C trace context of the current span (the request's), for a worker process."""
    return inject_context(trace.get_current_span())


@contextmanager
def _tuned_collector(young_threshold: int | None) -> Iterator[None]:
    """Freeze the objects alive now and collect the youngest generation every
    ``young_threshold`` allocations at least, until the end of the block (then the
    thresholds come back, and the objects are unfrozen unless some were frozen before)."""
    if young_threshold is None:
        yield
        return
    previous = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(max(previous[0], young_threshold), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        if not frozen_before:  # what someone else froze stays frozen
            gc.unfreeze()


@contextmanager
def _switch_interval(seconds: float | None) -> Iterator[None]:
    """The interpreter's switch interval is ``seconds`` until the end of the block."""
    if seconds is None:
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _lower_thread_priority(steps: int) -> None:
    """Make the calling thread ``steps`` niceness steps nicer (Linux only: elsewhere a
    thread has no niceness of its own). Threads it starts inherit that niceness."""
    if steps and sys.platform == "linux":
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness + steps))


class _Wakeups:
    """Wakes handoffs on the host's loop from the kitchen's thread: one wake-up of that loop
    (a write to its self-pipe, which also hands the interpreter lock over) serves every
    handoff that became ready before the loop got to it, whichever stream it belongs to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: deque[_Handoff[Any]] = deque()
        self._wake_pending = False

    def wake(self, handoff: _Handoff[Any]) -> None:
        """On any thread: wake ``handoff`` on the host's loop soon."""
        self._due.append(handoff)  # before the check: a pending wake-up will see it
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake_due)

    def _wake_due(self) -> None:
        self._wake_pending = False
        due = self._due
        for _ in range(len(due)):
            due.popleft().ready()


class _Handoff(Generic[T]):
    """Items put on any thread and taken on the host's loop, with one wake-up per batch of
    items rather than per item."""

    def __init__(self, wakeups: _Wakeups) -> None:
        self._wakeups = wakeups
        self._items: deque[T] = deque()
        self._wake_pending = False
        self._ready = asyncio.Event()

    def put(self, item: T) -> None:
        self._items.append(item)  # before the check: a pending wake-up will see it
        if not self._wake_pending:
            self._wake_pending = True
            self._wakeups.wake(self)

    def ready(self) -> None:
        """On the host's loop: items were put."""
        self._wake_pending = False
        self._ready.set()

    async def take(self) -> list[T]:
        """The items put so far, oldest first, waiting for one if there is none."""
        while not self._items:
            self._ready.clear()
            if not self._items:
                await self._ready.wait()
        items = self._items
        return [items.popleft() for _ in range(len(items))]


async def _kept_events(
    events: Sequence[StoredEvent], after: int
) -> AsyncGenerator[list[StoredEvent], None]:
    if batch := [stored for stored in events if stored.seq > after]:
        yield batch


async def _one_by_one(batches: AsyncGenerator[list[T], None]) -> AsyncGenerator[T, None]:
    async with aclosing(batches):
        async for batch in batches:
            for item in batch:
                yield item


class _Tracker:
    """The run's telemetry handler: events emitted while :meth:`Kitchen.start` returns are
    kept until the :class:`TrackedRun` exists, then handed to it."""

    def __init__(self) -> None:
        self._run: Callable[[TelemetryEvent], None] | None = None
        self._early: list[TelemetryEvent] = []

    def attach(self, run: Callable[[TelemetryEvent], None]) -> None:
        self._run = run
        for event in self._early:
            run(event)
        self._early.clear()

    def __call__(self, event: TelemetryEvent) -> None:
        if self._run is None:
            self._early.append(event)
        else:
            self._run(event)

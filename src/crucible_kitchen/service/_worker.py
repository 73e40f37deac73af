"""The Kitchen in a worker process of its own (``ServiceSettings(kitchen="process")``).

The service's process serves HTTP and keeps its record of each run (:class:`TrackedRun`);
the worker, a fresh interpreter (spawned: executed anew, as multiprocessing's *spawn* method
does, so nothing of the service's threads is forked, and without re-running the host's main
module), owns the Kitchen and runs the runs. They talk over a socket pair in length-prefixed
msgpack frames:

- service → worker: :class:`StartRun`, :class:`ResumeRun`, :class:`StopRun`, :class:`StopAll`,
  :class:`Close`;
- worker → service: :class:`Ready` (the recipes it knows; or :class:`Unready`, why it
  cannot open its Kitchen), :class:`Started` or
  :class:`Refused` (the answer to a start or a resume), :class:`Progress` (every run's news:
  its new events, stage, steps and latest metrics), :class:`Ended` (a run's result, after
  its last news).

The news of every run travel together, at most once every :data:`BATCH_S`, so the service's
process wakes up rarely however many runs are alive; the worker's Python work and its garbage
collections hold neither the service's interpreter lock nor its collector. When the service's
end of the socket closes (the service stopped, or died), the worker stops every run at its
next step boundary, cancels those still going after the grace period, and exits. When the
worker's end closes first, the worker has died: the service fails the runs that had not ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import struct
import sys
from contextlib import AsyncExitStack, suppress
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
from opentelemetry import context as otel_context

from crucible_kitchen import Kitchen, RunResult
from crucible_kitchen.kitchen import RecipeInfo
from crucible_kitchen.telemetry import configure_tracing, extract_context

from ._past import StoredEvent
from ._problems import INTERNAL_ERROR_DETAIL, Problem, start_problem
from ._service import TrackedRun, _Tracker, start_resumed, stop_gracefully

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup

    from crucible_kitchen import RunHandle
    from crucible_kitchen.telemetry import TelemetryEvent

__all__ = ("KitchenWorker",)

logger = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_S = 0.01
"""The longest a run's news wait in the worker for others to travel with them."""
STOP_TIMEOUT_S = 10.0
"""How long the service waits for a worker to exit, beyond the time its runs may take to stop
(``stop_grace_s``, when it is told to close), before it kills it."""
READY_TIMEOUT_S = 120.0
"""How long the service waits for a new worker to open its Kitchen before it kills it."""

_HEADER = struct.Struct(">I")
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from crucible_kitchen.service._worker import worker_main; worker_main()"
)
"""The worker's program: the service's import path (as multiprocessing's spawn passes it),
then :func:`worker_main`."""


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker is started with."""

    root: str
    stop_grace_s: float
    niceness: int
    tracing: str | None


class StartRun(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    request: int
    recipe: str
    config: dict[str, Any]
    adapters: str
    seed: int
    trace: dict[str, str]
    """The W3C trace context of the request that starts the run (its span parents the run's)."""


class ResumeRun(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    request: int
    run_dir: str
    trace: dict[str, str]


class StopRun(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Stop the run at its next step boundary; cancel it after the grace period."""

    run_id: str


class StopAll(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Stop every run as :class:`StopRun` does, and each that starts from now on."""


class Close(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Every run has ended: close the Kitchen and exit."""


ToWorker = StartRun | ResumeRun | StopRun | StopAll | Close


class Ready(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    recipes: list[RecipeInfo]


class Unready(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The worker could not open its Kitchen: why."""

    error: str


class Started(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    request: int
    run_id: str
    recipe: str | None
    workflow: str
    run_dir: str | None


class Refused(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A start or resume failed: the problem the service answers with."""

    request: int
    status: int
    kind: str
    detail: str
    errors: list[str]


class RunProgress(msgspec.Struct, frozen=True, array_like=True):
    """A run's news since its last: new events and metrics rows (the rows only for a run
    without a run directory), then where it stands."""

    run_id: str
    events: list[StoredEvent]
    rows: list[dict[str, Any]]
    stage: str | None
    steps: int
    metrics: dict[str, float]


class Progress(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    runs: list[RunProgress]


class Ended(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    run_id: str
    result: RunResult


ToService = Ready | Started | Refused | Progress | Ended

_ENCODER = msgspec.msgpack.Encoder()


def _frame(message: msgspec.Struct) -> bytes:
    payload = _ENCODER.encode(message)
    return _HEADER.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload; ``None`` once the other end has closed (or died)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        return await reader.readexactly(_HEADER.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


# ---------------------------------------------------------------------- the service's end


class KitchenWorker:
    """The service's end of the worker process: starts it, sends it requests, and hands what
    it tells to the service (on the service's loop)."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        recipes: list[RecipeInfo],
        stop_grace_s: float,
    ) -> None:
        self.process = process
        self.recipes = recipes
        self._reader = reader
        self._writer = writer
        self._stop_grace_s = stop_grace_s
        self._requests = count()
        self._pending: dict[int, tuple[Callable[[Started], Any], asyncio.Future[Any]]] = {}
        self._settled = asyncio.Event()  # set while no start waits for the worker's answer
        self._settled.set()
        self._open = True
        self._decoder = msgspec.msgpack.Decoder(ToService)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, settings: WorkerSettings) -> KitchenWorker:
        """Start the worker and wait until its Kitchen is open.

        Raises:
            RuntimeError: the worker could not open its Kitchen, exited before, or was not
                ready within :data:`READY_TIMEOUT_S` (then it is killed, as it is when the
                caller is cancelled meanwhile).
        """
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOTSTRAP,
                json.dumps(sys.path),
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            _kill(process)
            raise
        try:
            writer.write(_frame(settings))
            with anyio.move_on_after(READY_TIMEOUT_S) as waiting:
                payload = await _read_frame(reader)
            if waiting.cancelled_caught:
                raise RuntimeError(
                    f"the kitchen's worker process was not ready within {READY_TIMEOUT_S} s"
                )
            if payload is None:
                code = await _exit_code(process, STOP_TIMEOUT_S)
                raise RuntimeError(
                    f"the kitchen's worker process exited with status {code} before it was ready"
                )
            ready = msgspec.msgpack.decode(payload, type=Ready | Unready)
            if isinstance(ready, Unready):
                await _exit_code(process, STOP_TIMEOUT_S)
                raise RuntimeError(f"the kitchen's worker process failed to start: {ready.error}")
        except BaseException:
            writer.close()
            _kill(process)
            raise
        return cls(process, reader, writer, ready.recipes, settings.stop_grace_s)

    def send(self, message: ToWorker) -> None:
        if self._open:
            self._writer.write(_frame(message))

    async def start_run(
        self, message: Callable[[int], StartRun | ResumeRun], track: Callable[[Started], T]
    ) -> T:
        """Send the start (or resume) that ``message`` builds for a new request number; when
        the worker has started the run, ``track(started)`` is called before any news of the
        run is handed on (even if the caller has stopped waiting), and its result returned.

        Raises:
            Problem: the worker refused it, or died first (503).
        """
        if not self._open:
            raise _worker_died(self.process.returncode)
        request = next(self._requests)
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[request] = (track, answer)
        self._settled.clear()
        self.send(message(request))
        return await answer

    async def starts_settled(self) -> None:
        """Wait until every start sent so far has been answered (a started run is tracked
        by then), or failed because the worker died; even those whose callers stopped
        waiting."""
        await self._settled.wait()

    async def receive(
        self, on_progress: Callable[[RunProgress], None], on_ended: Callable[[Ended], None]
    ) -> int:
        """Hand the worker's news to the callbacks until its end of the socket closes; then
        fail every start still waiting and return the worker's exit status.

        Raises:
            Exception: what the worker sent could not be handled (undecodable, an answer to
                no request, a callback failed): the worker is killed and every start still
                waiting fails first.
        """
        try:
            while (payload := await _read_frame(self._reader)) is not None:
                self._hand_on(self._decoder.decode(payload), on_progress, on_ended)
        except BaseException:
            self._open = False
            self._writer.close()
            _kill(self.process)
            self._fail_pending(None)
            raise
        self._open = False
        self._writer.close()
        code = await _exit_code(self.process, STOP_TIMEOUT_S)
        self._fail_pending(code)
        return code

    def _hand_on(
        self,
        message: ToService,
        on_progress: Callable[[RunProgress], None],
        on_ended: Callable[[Ended], None],
    ) -> None:
        match message:
            case Progress(runs=runs):
                for progress in runs:
                    on_progress(progress)
            case Ended() as ended:
                on_ended(ended)
            case Started(request=request) as started:
                track, answer = self._pending[request]
                tracked = track(started)
                del self._pending[request]
                if not answer.done():
                    answer.set_result(tracked)
            case Refused(request=request) as refused:
                _, answer = self._pending.pop(request)
                if not answer.done():
                    answer.set_exception(
                        Problem(refused.status, refused.kind, refused.detail, errors=refused.errors)
                    )
        if not self._pending:
            self._settled.set()

    def _fail_pending(self, code: int | None) -> None:
        for _, answer in self._pending.values():
            if not answer.done():
                answer.set_exception(_worker_died(code))
        self._pending.clear()
        self._settled.set()

    async def close(self) -> None:
        """Tell the worker to exit once every run has ended (it stops those still running,
        as :class:`StopAll` does) and wait for it; kill it if it has not exited after
        ``stop_grace_s`` plus :data:`STOP_TIMEOUT_S`."""
        self.send(Close())
        await _exit_code(self.process, self._stop_grace_s + STOP_TIMEOUT_S)


def _worker_died(code: int | None) -> Problem:
    """``code``: the worker's exit status, ``None`` if it was killed because what it sent
    could not be handled."""
    how = "was killed" if code is None else f"exited (status {code})"
    return Problem(
        503, "kitchen-worker-died", f"the kitchen's worker process {how}; it runs no more runs"
    )


async def _exit_code(process: asyncio.subprocess.Process, timeout_s: float) -> int:
    """Wait for ``process`` to exit, killing it after ``timeout_s``; its exit status (the
    negated number of the signal that ended it, if one did)."""
    with anyio.move_on_after(timeout_s):
        return await process.wait()
    _kill(process)
    return await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` unless it has exited already."""
    with suppress(ProcessLookupError):  # it exited (and was reaped) meanwhile
        process.kill()


# ---------------------------------------------------------------------- the worker's end


def worker_main() -> None:
    """The worker process: serve the service at the other end of the socket whose file
    descriptor is the second argument, until it closes its end or sends :class:`Close`."""
    # The service stops its runs when it is told to stop (Ctrl-C reaches the whole process
    # group, a service manager may signal every process of the service): the worker follows
    # the service, and ends its runs when the service says so or goes away.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = socket.socket(fileno=int(sys.argv[2]))
    anyio.run(_serve_worker, connection, backend="asyncio")


async def _serve_worker(connection: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=connection)
    payload = await _read_frame(reader)
    if payload is None:
        return
    settings = msgspec.msgpack.decode(payload, type=WorkerSettings)
    if settings.niceness and sys.platform == "linux":
        os.nice(settings.niceness)  # before any thread starts: they all inherit it
    try:
        async with AsyncExitStack() as opened:
            try:
                provider = configure_tracing(settings.tracing) if settings.tracing else None
                if provider is not None:
                    opened.callback(provider.shutdown)  # after the Kitchen closed: flushes
                kitchen = await opened.enter_async_context(
                    Kitchen.open(runs_root=Path(settings.root), tracer_provider=provider)
                )
            except Exception as exc:
                writer.write(_frame(Unready(error=f"{type(exc).__name__}: {exc}")))
                await writer.drain()
                return
            await _Worker(kitchen, reader, writer, settings).serve()
    finally:
        writer.close()


class _Worker:
    """Runs what the service asks for and sends it the runs' news, in batches."""

    def __init__(
        self,
        kitchen: Kitchen,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: WorkerSettings,
    ) -> None:
        self._kitchen = kitchen
        self._reader = reader
        self._writer = writer
        self._settings = settings
        self._handles: dict[str, RunHandle] = {}
        self._news: dict[str, TrackedRun] = {}  # runs with news since the last batch
        self._outbox: list[bytes] = []
        self._due = asyncio.Event()
        self._service_gone = False
        self._stopping = False
        self._closing = False

    async def serve(self) -> None:
        async with anyio.create_task_group() as sending:
            sending.start_soon(self._send)
            async with anyio.create_task_group() as runs:
                self._post(Ready(recipes=self._kitchen.recipes()))
                await self._receive(runs)
                self._stop_all(runs)
            self._closing = True  # every run has ended: the last news and results go out
            self._due.set()

    async def _receive(self, runs: TaskGroup) -> None:
        """Serve the service's requests until it closes its end or sends :class:`Close`."""
        decoder = msgspec.msgpack.Decoder(ToWorker)
        while (payload := await _read_frame(self._reader)) is not None:
            match decoder.decode(payload):
                case StartRun() | ResumeRun() as request:
                    runs.start_soon(self._run, request)
                case StopRun(run_id=run_id):
                    if (handle := self._handles.get(run_id)) is not None:
                        runs.start_soon(stop_gracefully, handle, self._settings.stop_grace_s)
                case StopAll():
                    self._stop_all(runs)
                case Close():
                    return

    def _stop_all(self, runs: TaskGroup) -> None:
        self._stopping = True
        for handle in self._handles.values():
            runs.start_soon(stop_gracefully, handle, self._settings.stop_grace_s)

    async def _run(self, request: StartRun | ResumeRun) -> None:
        """Start the run, answer the service, relay the run's news and its result."""
        tracker = _Tracker()
        attached = otel_context.attach(extract_context(request.trace))
        try:
            handle = await self._start(request, tracker)
        except Exception as exc:
            problem = exc if isinstance(exc, Problem) else _refusal(exc, request)
            self._post(
                Refused(
                    request=request.request,
                    status=problem.status,
                    kind=problem.kind,
                    detail=problem.detail,
                    errors=problem.errors,
                )
            )
            return
        finally:
            otel_context.detach(attached)
        run = TrackedRun.begun(handle, handle=handle, keep_events=True)
        self._handles[run.run_id] = handle
        self._post(
            Started(
                request=request.request,
                run_id=run.run_id,
                recipe=run.recipe,
                workflow=run.workflow,
                run_dir=None if run.run_dir is None else str(run.run_dir),
            )
        )

        def relay(event: TelemetryEvent) -> None:
            run(event)
            self._news[run.run_id] = run
            self._due.set()

        tracker.attach(relay)  # after Started: the service hears of the run before its news
        if self._stopping:
            await stop_gracefully(handle, self._settings.stop_grace_s)
        result = await handle.result()
        del self._handles[run.run_id]
        self._post(Ended(run_id=run.run_id, result=result))

    async def _start(self, request: StartRun | ResumeRun, tracker: _Tracker) -> RunHandle:
        if isinstance(request, StartRun):
            return await self._kitchen.start(
                request.recipe,
                request.config,
                adapters=request.adapters,
                seed=request.seed,
                telemetry=[tracker],
            )
        return await start_resumed(self._kitchen, Path(request.run_dir), tracker)

    # ------------------------------------------------------------------ sending

    def _post(self, message: Ready | Started | Refused | Ended) -> None:
        """Send ``message`` soon, after every run's news so far."""
        self._take_news()
        self._outbox.append(_frame(message))
        self._due.set()

    def _take_news(self) -> None:
        if not self._news:
            return
        runs = [_progress(run) for run in self._news.values()]
        self._news.clear()
        self._outbox.append(_frame(Progress(runs=runs)))

    async def _send(self) -> None:
        """Send what is due, the news of every run in one frame: news alone wait
        :data:`BATCH_S` for more to gather; an answer or a result goes without waiting, with
        the news gathered so far. Return once closing and all is sent."""
        while True:
            await self._due.wait()
            if not self._outbox and not self._closing:  # news only: let more of it gather
                await anyio.sleep(BATCH_S)
            self._due.clear()
            self._take_news()
            frames, self._outbox = self._outbox, []
            if frames and not self._service_gone:
                try:
                    self._writer.write(b"".join(frames))
                    await self._writer.drain()
                except ConnectionError:  # the service has gone: its runs stop all the same
                    self._service_gone = True
            if self._closing and not self._due.is_set():
                return


def _progress(run: TrackedRun) -> RunProgress:
    """The run's news since the last, taken from its record."""
    events, run.events = run.events or [], []
    rows: list[dict[str, Any]] = []
    if run.history is not None:
        rows, run.history = run.history, []
    return RunProgress(run.run_id, events, rows, run.stage, run.steps, dict(run.metrics))


def _refusal(exc: Exception, request: StartRun | ResumeRun) -> Problem:
    """The problem a failed start answers with; an unexpected failure is logged here, and
    the service hears only that one happened (its text may hold paths and internals)."""
    recipe = request.recipe if isinstance(request, StartRun) else request.run_dir
    if (problem := start_problem(exc, recipe)) is not None:
        return problem
    logger.exception("the kitchen failed to start a run")
    return Problem(500, "internal-error", INTERNAL_ERROR_DETAIL)

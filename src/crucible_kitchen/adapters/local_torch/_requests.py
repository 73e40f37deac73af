"""Requests to a local backend: dedup on ``request_id``, strict FIFO execution in a worker thread.

Execution model. Every client on one device shares that device's worker thread (a
single-thread executor, made on first use and kept for the process). A submitted request joins
the worker's queue and runs as soon as the requests before it have run, whether or not anyone
awaits its future: like a remote backend, which starts a request when it arrives. So each
client's requests are applied exactly in its submission order, one at a time, and equal
request sequences have equal effects. One thread per device, not per client: torch already
spreads one op over all of a device's cores, so two clients computing at once would only fight
over them, and every new thread that calls torch builds its own OpenMP thread pool. Before each
request the worker sets torch's intra-op thread count to the client's (``threads``, see
``_threads``). A client may name a ``lane`` instead: its requests then run in that lane's own
worker thread of the device (the data-parallel samplers, whose ranks wait for each other).

Awaiting a future only waits for its request, so the event loop stays free while torch
computes, and cancelling a waiter never cancels the request. Futures may be awaited from any
event loop, asyncio or trio: the worker wakes each waiter in its own loop. At interpreter exit
the worker finishes the requests already submitted, then stops (no request is cut off inside
torch).

The request-id ledger keeps the results of the last ``retain`` answered requests, so a re-sent
request gets its answer again. An older request keeps only its method and fingerprint, so a
re-send is refused with :class:`~crucible_kitchen.errors.RequestExpired` instead of being
applied twice; a successful checkpoint request (``checkpoint=True``) forgets those entirely.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import anyio
import anyio.lowlevel

from crucible_kitchen.adapters.local_torch._threads import use_threads
from crucible_kitchen.errors import (
    PermanentBackendError,
    RequestExpired,
    RequestIdConflict,
)
from crucible_kitchen.ports import FUTURE_DONE

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from crucible_kitchen.ports import Capabilities

__all__ = ("CallCounters", "LocalFuture", "RequestQueue", "device_worker", "keep_recent")

T = TypeVar("T")
K = TypeVar("K")


_QUEUED: Final = 0
_DONE: Final = 1


class CallCounters:
    """Per-method counts that tests inspect: ``client.counters.applied["optim_step"] == 3``.

    ``calls`` counts every submission, ``applied`` the requests that ran and succeeded,
    ``failed`` those that ran and raised, ``deduplicated`` the re-sent requests answered from
    an earlier one. ``log`` lists every applied request in execution order as
    ``(method, request_id)``: compare it between runs to prove exactly-once effects.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.deduplicated: Counter[str] = Counter()
        self.log: list[tuple[str, str | None]] = []


class _Job(Generic[T]):
    """One submitted request: its work, its state and, once run, its outcome and waiters."""

    __slots__ = (
        "checkpoint",
        "error",
        "method",
        "record",
        "request_id",
        "state",
        "traceback",
        "value",
        "waiters",
        "work",
    )

    def __init__(
        self,
        method: str,
        request_id: str | None,
        work: Callable[[], T],
        *,
        record: bool,
        checkpoint: bool,
    ) -> None:
        self.method = method
        self.request_id = request_id
        self.work: Callable[[], T] | None = work
        self.record = record
        self.checkpoint = checkpoint
        self.state = _QUEUED
        self.value: T | None = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.waiters: list[Callable[[], None]] = []

    def execute(self, port: str) -> None:
        """Run the work and record its outcome; called in the worker thread."""
        work, self.work = self.work, None  # drop the closure (and the data it holds) once run
        assert work is not None
        try:
            self.value = work()
        except Exception as exc:
            self.error = exc
        except BaseException as exc:  # e.g. SystemExit from user code: the worker survives
            error = PermanentBackendError(
                f"{self.method}: the request was interrupted by {type(exc).__name__}",
                port=port,
                operation=self.method,
                request_id=self.request_id,
            )
            error.__cause__ = exc
            self.error = error
        if self.error is not None:
            self.traceback = self.error.__traceback__

    def outcome(self) -> T:
        """The result, or the recorded error raised again (same object, original traceback)."""
        if self.error is not None:
            raise self.error.with_traceback(self.traceback)
        return cast("T", self.value)


class LocalFuture(Generic[T]):
    """The pending result of one request (a :class:`~crucible_kitchen.ports.BackendFuture`)."""

    __slots__ = ("_job", "_queue")

    def __init__(self, queue: RequestQueue, job: _Job[T]) -> None:
        self._queue = queue
        self._job = job

    def done(self) -> bool:
        """Whether the request has run (successfully or not)."""
        return self._job.state == _DONE

    @property
    def capabilities(self) -> Capabilities:
        """:data:`~crucible_kitchen.ports.FUTURE_DONE`: :meth:`done`, known in-process."""
        return {FUTURE_DONE: lambda: self.done}

    async def result(self) -> T:
        """Wait for the request to run and return its result.

        May be awaited any number of times, from any task or event loop; every await
        returns the same value or raises the same error. Cancelling a waiter does not
        cancel the request.
        """
        await self._queue.wait(self._job)
        return self._job.outcome()


@dataclass(frozen=True, slots=True)
class _Record:
    """A ledger entry; ``future`` is ``None`` once the request's result is no longer kept."""

    method: str
    fingerprint: bytes
    future: LocalFuture[Any] | None


class RequestQueue:
    """The request-id ledger, the counters and the pending requests of one client.

    Args:
        port: the port name reported in errors (``"training_client"``).
        device: the device the client computes on; its requests run in that device's worker.
        threads: torch's intra-op thread count for this client's requests, set in the worker
            thread before each one (clients sharing the worker may use different counts);
            ``None`` leaves the worker's count as it is.
        retain: how many answered requests with an id keep their result for re-sends.
        lane: run in another worker thread of the device, the one of this name, instead of
            its shared one (data-parallel samplers: their ranks wait for each other, and must
            never queue behind a training request that waits for another rank).
    """

    def __init__(
        self,
        port: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        retain: int = 256,
        lane: str = "",
    ) -> None:
        if retain < 1:
            raise ValueError(f"retain must be >= 1, got {retain}")
        self.port = port
        self.counters = CallCounters()
        self.threads = threads
        self._worker = device_worker(device, lane)
        self._retain = retain
        self._lock = threading.Lock()
        self._pending = 0
        self._last: _Job[Any] | None = None
        self._records: dict[str, _Record] = {}
        self._answered: deque[str] = deque()  # ids whose results are kept, oldest first
        self._expired: list[str] = []  # ids whose results were dropped

    def submit(
        self,
        method: str,
        work: Callable[[], T],
        *,
        request_id: str | None = None,
        fingerprint: bytes = b"",
        record: bool = True,
        checkpoint: bool = False,
        on_queued: Callable[[], None] | None = None,
    ) -> LocalFuture[T]:
        """Queue ``work`` as one request and return its future; it runs when its turn comes.

        A request whose ``request_id`` was already accepted, and has not failed, returns
        that request's future (the same object) without queueing ``work``. ``record=False``
        keeps a request (an inspection, not an effect) out of the counters' ``applied`` and
        ``log``. ``checkpoint=True`` marks a request that makes every earlier effect durable.
        ``on_queued`` is called once ``work`` is queued (not for a re-sent request), in
        submission order, before any later request is queued.

        Raises:
            RequestIdConflict: ``request_id`` was accepted for another method or content.
            RequestExpired: ``request_id`` was applied so long ago that its result is gone.
            PermanentBackendError: the interpreter is shutting down.
        """
        with self._lock:
            self.counters.calls[method] += 1
            if request_id is not None and (known := self._records.get(request_id)) is not None:
                return cast("LocalFuture[T]", self._resent(known, method, request_id, fingerprint))
            job = _Job(method, request_id, work, record=record, checkpoint=checkpoint)
            if on_queued is not None:
                on_queued()
            try:
                self._worker.submit(self._run, job)
            except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
                raise PermanentBackendError(
                    f"{method}: the local backend has shut down: {exc}",
                    port=self.port,
                    operation=method,
                    request_id=request_id,
                ) from exc
            future = LocalFuture(self, job)
            if request_id is not None:
                self._records[request_id] = _Record(method, fingerprint, future)
            self._pending += 1
            self._last = job
        return future

    async def call(
        self,
        method: str,
        work: Callable[[], T],
        *,
        request_id: str | None = None,
        fingerprint: bytes = b"",
        record: bool = True,
    ) -> T:
        """Like :meth:`submit`, then wait for the result: for calls without futures."""
        future = self.submit(
            method, work, request_id=request_id, fingerprint=fingerprint, record=record
        )
        return await future.result()

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return self._pending

    async def wait(self, job: _Job[Any]) -> None:
        """Return once ``job`` has run (a cancellation point even if it has)."""
        await anyio.lowlevel.checkpoint()
        if job.state == _DONE:
            return
        finished = anyio.Event()
        wake = _waker(finished)
        with self._lock:
            if job.state == _DONE:
                return
            job.waiters.append(wake)
        try:
            await finished.wait()
        finally:
            with self._lock:
                if wake in job.waiters:  # cancelled before the request finished
                    job.waiters.remove(wake)

    async def drain(self) -> None:
        """Return once every request submitted so far has run."""
        last = self._last
        if last is None:
            await anyio.lowlevel.checkpoint()
        else:
            await self.wait(last)

    def _resent(
        self, known: _Record, method: str, request_id: str, digest: bytes
    ) -> LocalFuture[Any]:
        if known.method != method or known.fingerprint != digest:
            raise RequestIdConflict.reused(
                request_id, earlier=known.method, port=self.port, operation=method
            )
        if known.future is None:
            raise RequestExpired(
                f"{method}: request_id {request_id!r} was applied, but its result is no longer "
                f"kept (only the last {self._retain} answered requests keep theirs); it is "
                "not applied again",
                port=self.port,
                operation=method,
                request_id=request_id,
            )
        self.counters.deduplicated[method] += 1
        return known.future

    def _run(self, job: _Job[Any]) -> None:
        """Run one request in the worker thread, record it, wake its waiters."""
        if self.threads is not None:
            use_threads(self.threads)
        job.execute(self.port)
        with self._lock:
            self._pending -= 1
            self._settle(job)
            waiters, job.waiters = job.waiters, []
        for wake in waiters:
            wake()

    def _settle(self, job: _Job[Any]) -> None:
        """Record a finished request's outcome in the counters and the ledger (lock held)."""
        job.state = _DONE
        request_id = job.request_id
        known = None if request_id is None else self._records.get(request_id)
        own = known is not None and known.future is not None and known.future._job is job
        if job.error is not None:
            self.counters.failed[job.method] += 1
            if own:
                assert request_id is not None
                del self._records[request_id]  # a failed request is forgotten
            return
        if job.record:
            self.counters.applied[job.method] += 1
            self.counters.log.append((job.method, request_id))
        if not own:
            return
        assert request_id is not None
        self._answered.append(request_id)
        while len(self._answered) > self._retain:
            old_id = self._answered.popleft()
            old = self._records[old_id]
            self._records[old_id] = _Record(old.method, old.fingerprint, None)
            self._expired.append(old_id)
        if job.checkpoint:
            for old_id in self._expired:
                del self._records[old_id]
            self._expired.clear()


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A function that any thread may call to set ``event`` in the current event loop."""
    loop = anyio.lowlevel.current_token().native_token  # an asyncio loop or a TrioToken
    schedule: Callable[[Callable[[], None]], object] = getattr(
        loop, "run_sync_soon", None
    ) or getattr(loop, "call_soon_threadsafe")  # noqa: B009

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            schedule(event.set)

    return wake


_workers: dict[str, ThreadPoolExecutor] = {}
_workers_lock = threading.Lock()


def device_worker(device: str, lane: str = "") -> ThreadPoolExecutor:
    """The single-thread executor that runs every local request on ``device`` (or, given a
    ``lane``, those of that lane)."""
    key = f"{device} {lane}".strip()
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"crucible-kitchen {key}"
            )
        return worker


def keep_recent(memo: dict[K, T], key: K, value: T, *, limit: int) -> None:
    """Set ``memo[key]`` as its newest entry (an existing key moves to the end), then drop
    the oldest entries beyond ``limit``: with ``move_to_end`` on reads, a least-recently-used
    cache."""
    memo.pop(key, None)
    memo[key] = value
    while len(memo) > limit:
        del memo[next(iter(memo))]

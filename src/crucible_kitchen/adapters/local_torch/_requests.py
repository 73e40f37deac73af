"""Requests to a local backend: dedup on ``request_id``, and strict FIFO execution off the loop.

Execution model. A client's requests wait in one FIFO queue. Nothing runs at submission:
the task that awaits a future (``await future.result()``) becomes the queue's runner and
executes the queued requests one at a time, oldest first, each in a worker thread
(``anyio.to_thread.run_sync``), until its own request is done. Other tasks that await
meanwhile wait for the runner, then take over if their request is still queued. So requests
are applied exactly in submission order, one at a time, however many are in flight and
whichever is awaited first, and the event loop stays free while torch computes.

A request still queued when nobody awaits it waits for the next await of this client's
futures (or :meth:`RequestQueue.drain`); cancelling a waiter never cancels its request. A
request that has started always finishes: cancellation reaches the runner only after the
worker thread returned and the outcome was recorded.

A queue belongs to one event loop at a time (its synchronisation lives in that loop); the
work functions it runs must be safe to run in a worker thread, one at a time.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from crucible_kitchen.errors import InvalidRequest, PermanentBackendError, RequestIdConflict

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ("CallCounters", "LocalFuture", "RequestQueue", "fingerprint")

T = TypeVar("T")

_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")

_PENDING: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2


def fingerprint(port: str, method: str, payload: object) -> bytes:
    """A digest of a request's content, to tell a re-sent request from a conflicting one.

    Raises:
        InvalidRequest: the payload holds values that msgpack cannot encode.
    """
    try:
        return hashlib.blake2b(_ENCODER.encode(payload), digest_size=16).digest()
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidRequest(
            f"{method}: request cannot be serialised: {exc}", port=port, operation=method
        ) from exc


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
    """One submitted request: its work, its state and, once run, its outcome."""

    __slots__ = (
        "error",
        "finished",
        "has_value",
        "method",
        "record",
        "request_id",
        "started",
        "state",
        "traceback",
        "value",
        "work",
    )

    def __init__(
        self, method: str, request_id: str | None, work: Callable[[], T], *, record: bool
    ) -> None:
        self.method = method
        self.request_id = request_id
        self.work: Callable[[], T] | None = work
        self.record = record
        self.state = _PENDING
        self.started = False
        self.has_value = False
        self.value: T | None = None
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.finished: anyio.Event | None = None

    def execute(self) -> None:
        """Run the work and record its outcome; called in a worker thread."""
        self.started = True
        work, self.work = self.work, None  # drop the closure (and the data it holds) once run
        assert work is not None
        try:
            self.value = work()
            self.has_value = True
        except Exception as exc:
            self.error = exc
            self.traceback = exc.__traceback__

    def outcome(self) -> T:
        """The result, or the recorded error raised again (same object, original traceback)."""
        if self.error is not None:
            raise self.error.with_traceback(self.traceback)
        return cast("T", self.value)


class LocalFuture(Generic[T]):
    """The pending result of one request (a :class:`~crucible_kitchen.ports.BackendFuture`).

    Awaiting :meth:`result` runs the client's queued requests up to this one, in order.
    """

    __slots__ = ("_job", "_queue")

    def __init__(self, queue: RequestQueue, job: _Job[T]) -> None:
        self._queue = queue
        self._job = job

    def done(self) -> bool:
        """Whether the request has run (successfully or not)."""
        return self._job.state == _DONE

    async def result(self) -> T:
        """Wait for the request (running queued requests before it) and return its result.

        May be awaited any number of times, from any task of the queue's event loop; every
        await returns the same value or raises the same error. Cancelling a waiter does not
        cancel the request.
        """
        await self._queue.wait(self._job)
        return self._job.outcome()


@dataclass(frozen=True, slots=True)
class _Record:
    method: str
    fingerprint: bytes
    future: LocalFuture[Any]


class RequestQueue:
    """The FIFO queue, the request-id ledger and the counters of one client.

    Args:
        port: the port name reported in errors (``"training_client"``).
    """

    def __init__(self, port: str) -> None:
        self.port = port
        self.counters = CallCounters()
        self._records: dict[str, _Record] = {}
        self._pending: deque[_Job[Any]] = deque()
        self._running: _Job[Any] | None = None

    def submit(
        self,
        method: str,
        work: Callable[[], T],
        *,
        request_id: str | None = None,
        fingerprint: bytes = b"",
        record: bool = True,
    ) -> LocalFuture[T]:
        """Queue ``work`` as one request and return its future; nothing runs yet.

        A request whose ``request_id`` was already accepted, and has not failed, returns
        that request's future (the same object) without queueing ``work``. ``record=False``
        keeps a request (an inspection, not an effect) out of the counters' ``applied`` and
        ``log``.

        Raises:
            RequestIdConflict: ``request_id`` was accepted for another method or content.
        """
        self.counters.calls[method] += 1
        if request_id is not None and (known := self._records.get(request_id)) is not None:
            if known.method != method or known.fingerprint != fingerprint:
                raise RequestIdConflict(
                    f"request_id {request_id!r} was already used for a different "
                    f"{known.method} request",
                    port=self.port,
                    operation=method,
                    request_id=request_id,
                )
            self.counters.deduplicated[method] += 1
            return cast("LocalFuture[T]", known.future)
        job = _Job(method, request_id, work, record=record)
        future = LocalFuture(self, job)
        self._pending.append(job)
        if request_id is not None:
            self._records[request_id] = _Record(method, fingerprint, future)
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
        return len(self._pending) + (self._running is not None)

    async def wait(self, job: _Job[Any]) -> None:
        """Return once ``job`` has run, running the queue in order as needed."""
        await anyio.lowlevel.checkpoint()
        while job.state != _DONE:
            running = self._running
            if running is not None:
                assert running.finished is not None
                await running.finished.wait()
                continue
            await self._run(self._pending.popleft())

    async def drain(self) -> None:
        """Run every request queued so far; return when the last has finished."""
        await anyio.lowlevel.checkpoint()
        while self._pending or self._running is not None:
            target = self._pending[-1] if self._pending else self._running
            assert target is not None
            await self.wait(target)

    async def _run(self, job: _Job[Any]) -> None:
        job.state = _RUNNING
        job.finished = anyio.Event()
        self._running = job
        try:
            # Not abandoned on cancel: a started request always finishes and is recorded.
            await anyio.to_thread.run_sync(job.execute)
        finally:
            self._running = None
            if job.started:
                self._settle(job)
            else:  # cancelled before the worker thread picked it up: it keeps its place
                job.state = _PENDING
                self._pending.appendleft(job)
            job.finished.set()

    def _settle(self, job: _Job[Any]) -> None:
        job.state = _DONE
        if not job.has_value and job.error is None:
            job.error = PermanentBackendError(
                f"{job.method}: the request was interrupted",
                port=self.port,
                operation=job.method,
                request_id=job.request_id,
            )
        if job.error is not None:
            self.counters.failed[job.method] += 1
            if job.request_id is not None:
                known = self._records.get(job.request_id)
                if known is not None and known.future._job is job:
                    del self._records[job.request_id]  # a failed request is forgotten
            return
        if job.record:
            self.counters.applied[job.method] += 1
            self.counters.log.append((job.method, job.request_id))

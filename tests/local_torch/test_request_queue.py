"""The local backends' request queue: eager FIFO execution in a worker thread, waiters woken in
their own event loop, the bounded request-id ledger, and a worker that comes and goes."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from crucible_kitchen.adapters.local_torch import _requests
from crucible_kitchen.adapters.local_torch._requests import RequestQueue
from crucible_kitchen.errors import PermanentBackendError, RequestExpired, RequestIdConflict

pytestmark = pytest.mark.anyio


def _append(log: list[int], value: int) -> int:
    log.append(value)
    return value


async def test_requests_run_in_submission_order_without_being_awaited() -> None:
    queue, log = RequestQueue("test"), []
    gate = threading.Event()
    first = queue.submit("blocked", lambda: gate.wait(10), request_id="r0")
    futures = [queue.submit("append", lambda i=i: _append(log, i)) for i in range(100)]
    assert queue.pending == 101
    gate.set()
    last_done = threading.Event()
    queue.submit("signal", last_done.set, record=False)
    assert await anyio.to_thread.run_sync(last_done.wait, 10)  # nothing was awaited
    assert log == list(range(100))
    assert [await future.result() for future in reversed(futures)] == list(range(99, -1, -1))
    assert await first.result() is True
    assert queue.pending == 0
    assert queue.counters.applied == {"blocked": 1, "append": 100}


async def test_futures_wake_waiters_of_any_event_loop() -> None:
    queue = RequestQueue("test")
    gate = threading.Event()
    future = queue.submit("work", lambda: gate.wait(10) and 42)

    def in_another_loop(backend: str) -> int:
        return anyio.run(future.result, backend=backend)

    async with anyio.create_task_group() as group:
        results: list[int] = []

        async def other(backend: str) -> None:
            results.append(await anyio.to_thread.run_sync(in_another_loop, backend))

        group.start_soon(other, "asyncio")
        group.start_soon(other, "trio")
        gate.set()
        results.append(await future.result())
    assert results == [42, 42, 42]


async def test_a_failed_request_is_forgotten_and_the_next_still_runs() -> None:
    queue = RequestQueue("test")

    def fail() -> None:
        raise ValueError("boom")

    failed = queue.submit("fail", fail, request_id="r")
    after = queue.submit("ok", lambda: "after")
    with pytest.raises(ValueError, match="boom"):
        await failed.result()
    assert await after.result() == "after"
    retried = queue.submit("fail", lambda: "fine", request_id="r")  # forgotten: runs again
    assert retried is not failed
    assert await retried.result() == "fine"
    assert queue.counters.failed == {"fail": 1}
    assert queue.counters.applied == {"ok": 1, "fail": 1}


async def test_a_base_exception_in_the_work_fails_only_its_request() -> None:
    queue = RequestQueue("test")

    def exit_() -> None:
        raise SystemExit(3)

    with pytest.raises(PermanentBackendError, match="interrupted by SystemExit") as info:
        await queue.submit("exit", exit_).result()
    assert isinstance(info.value.__cause__, SystemExit)
    assert await queue.submit("ok", lambda: 1).result() == 1


async def test_the_ledger_keeps_the_last_results_and_refuses_older_resends() -> None:
    queue = RequestQueue("test", retain=3)
    futures = [queue.submit("step", lambda i=i: i, request_id=f"r{i}") for i in range(6)]
    await queue.drain()
    assert queue.submit("step", lambda: -1, request_id="r5") is futures[5]
    assert queue.submit("step", lambda: -1, request_id="r3") is futures[3]
    with pytest.raises(RequestExpired, match=r"'r2'.*last 3"):
        queue.submit("step", lambda: -1, request_id="r2")
    with pytest.raises(RequestIdConflict):  # a conflict is still a conflict
        queue.submit("other", lambda: -1, request_id="r0")
    assert sum(r.future is not None for r in queue._records.values()) == 3
    assert queue.counters.deduplicated == {"step": 2}

    await queue.submit("save", lambda: "saved", request_id="ckpt", checkpoint=True).result()
    assert set(queue._records) == {"r4", "r5", "ckpt"}  # expired entries are gone for good
    assert await queue.submit("step", lambda: "again", request_id="r0").result() == "again"


async def test_the_ledger_stays_bounded_over_a_long_run() -> None:
    queue = RequestQueue("test", retain=8)
    for step in range(1000):
        queue.submit("fb", lambda: bytes(1000), request_id=f"fb{step}")
        queue.submit("optim", lambda: None, request_id=f"optim{step}")
        if step % 100 == 99:
            save = queue.submit("save", lambda: None, request_id=f"save{step}", checkpoint=True)
            await save.result()
    await queue.drain()
    assert sum(r.future is not None for r in queue._records.values()) == 8
    assert len(queue._records) <= 8 + 2 * 100


async def test_the_worker_thread_exits_when_idle_and_returns_on_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_requests, "IDLE_SECONDS", 0.01)
    queue = RequestQueue("test")
    assert await queue.submit("one", lambda: 1).result() == 1
    worker = queue._worker
    assert worker is not None
    await anyio.to_thread.run_sync(worker.join, 10)
    assert not worker.is_alive()
    assert queue._worker is None
    assert await queue.submit("two", lambda: 2).result() == 2
    assert queue._worker is not worker
    assert queue.counters.log == [("one", None), ("two", None)]


async def test_drain_waits_for_everything_submitted() -> None:
    queue, log = RequestQueue("test"), []
    await queue.drain()  # nothing submitted: returns at once
    for i in range(20):
        queue.submit("append", lambda i=i: _append(log, i))
    await queue.drain()
    assert log == list(range(20))
    assert queue.pending == 0


def test_retain_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retain"):
        RequestQueue("test", retain=0)

"""The local backends' request queue: eager FIFO execution in the device's worker thread,
waiters woken in their own event loop, the bounded request-id ledger, and a clean exit."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from crucible_kitchen.adapters.local_torch._requests import RequestQueue
from crucible_kitchen.errors import PermanentBackendError, RequestExpired, RequestIdConflict

if TYPE_CHECKING:
    from pathlib import Path

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
    last_done, token = anyio.Event(), anyio.lowlevel.current_token()
    signal = queue.submit(
        "signal", lambda: anyio.from_thread.run_sync(last_done.set, token=token), record=False
    )
    await last_done.wait()  # nothing was awaited
    assert log == list(range(100))
    await signal.result()  # the signal request itself has finished: nothing is pending
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


async def test_clients_on_one_device_share_its_worker_and_keep_their_own_order() -> None:
    first, second, other_device = (
        RequestQueue("a"),
        RequestQueue("b"),
        RequestQueue("c", device="elsewhere"),
    )
    runs: list[tuple[str, int, int]] = []

    def work(name: str, index: int) -> None:
        runs.append((name, index, threading.get_ident()))

    for index in range(5):
        first.submit("work", lambda i=index: work("a", i))
        second.submit("work", lambda i=index: work("b", i))
    other_device.submit("work", lambda: work("c", 0))
    await first.drain()
    await second.drain()
    await other_device.drain()
    assert [(n, i) for n, i, _ in runs if n == "a"] == [("a", i) for i in range(5)]
    assert [(n, i) for n, i, _ in runs if n == "b"] == [("b", i) for i in range(5)]
    threads = {n: {t for m, _, t in runs if m == n} for n in "abc"}
    assert len(threads["a"]) == 1
    assert threads["a"] == threads["b"] != threads["c"]
    assert threading.get_ident() not in threads["a"]  # never the event loop's thread


def test_the_worker_finishes_submitted_requests_when_the_interpreter_exits(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks.txt"
    script = f"""
import anyio
from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
from crucible_kitchen.ports import CustomLossOutput, Datum, ModelInput, TensorData

def loss(batch, logprobs):
    with open({str(marks)!r}, "a") as out:
        out.write("ran\\n")
    grads = tuple(TensorData(dtype="float32", data=(-1.0,) * len(lp.data)) for lp in logprobs)
    return CustomLossOutput(loss=1.0, logprob_grads=grads)

async def main():
    client = LocalTorchTrainingClient(model="tiny", seed=0)
    datum = Datum(
        model_input=ModelInput.from_ints(list(range(1, 40))),
        loss_fn_inputs={{"target_tokens": TensorData(dtype="int64", data=tuple(range(2, 41)))}},
    )
    for i in range(4):
        await client.forward_backward_custom([datum] * 8, loss, request_id=f"fb{{i}}")
    # exit at once: nothing awaited

anyio.run(main)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert marks.read_text().splitlines() == ["ran"] * 4


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

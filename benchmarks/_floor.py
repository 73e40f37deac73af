"""The reference loop every benchmark divides by (``bare_b0``).

Two tasks, a request and a reply anyio memory stream, both buffer 0, int payload. Shared by
the scripts in this folder, which run as ``python benchmarks/<script>.py`` (so this folder is
on ``sys.path``); it imports only anyio, as ``triotp_bench.py`` runs in another environment.
"""

from __future__ import annotations

import gc
from time import perf_counter

import anyio

__all__ = ("bare_b0",)


async def bare_b0(n: int, warmup: int) -> float:
    """Microseconds per round trip of the bare ping-pong, after ``warmup`` round trips."""
    req_tx, req_rx = anyio.create_memory_object_stream[int](0)
    rep_tx, rep_rx = anyio.create_memory_object_stream[int](0)

    async def server() -> None:
        async with req_rx, rep_tx:
            async for m in req_rx:
                await rep_tx.send(m)

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with req_tx, rep_rx:
            for i in range(warmup):
                await req_tx.send(i)
                if await rep_rx.receive() != i:
                    raise AssertionError("bare ping-pong echoed the wrong value")
            gc.collect()
            t0 = perf_counter()
            for i in range(n):
                await req_tx.send(i)
                await rep_rx.receive()
            t1 = perf_counter()
    return (t1 - t0) / n * 1e6

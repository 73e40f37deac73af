"""triotp ``gen_server.call`` echo against the bare anyio ping-pong, in the same trio run.

Runs under Python >= 3.13 only (triotp 0.3 requires it), from a separate venv::

    /root/.pyenv/versions/3.13.0/bin/python3.13 -m venv .venv313
    .venv313/bin/pip install anyio trio msgspec triotp
    .venv313/bin/python benchmarks/triotp_bench.py [--reps 7] [--n 10000] [--json]

It does not import crucible_kitchen. The shape follows triotp's guide "A simple application":
this module is the echo ``gen_server`` (``init``/``terminate``/``handle_call``/``handle_cast``,
``handle_call`` matches ``("echo", m)`` and replies ``m``) and the application (``start``); a
server and a client run as TRANSIENT children of ``supervisor.start`` inside ``node.run``. One
``node.run`` per repetition; the client runs every variant in an order rotating with the
repetition, then stops the server, so the node returns. The ratios are per repetition against
the anyio buffer-0 ping-pong of the same run; medians over repetitions are printed.
``benchmarks/runtime_bench.py`` runs this script and puts its figures in its table.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio
import trio.lowlevel
from triotp import application, gen_server, mailbox, node, supervisor

from _floor import bare_b0

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

SERVER: Final = "bench_echo_server"
VARIANTS: Final = ("triotp_call", "triotp_call_timeout5", "anyio_bare_b0", "trio_channel_b0")
REFERENCE: Final = "anyio_bare_b0"

perf_counter = time.perf_counter


@dataclass
class _Run:
    """What the client of one node.run needs and produces (triotp passes no context)."""

    n: int
    warmup: int
    rep: int
    figures: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None


_current: _Run | None = None


# --------------------------------------------------------------------------- the gen_server


async def server_start() -> None:
    await gen_server.start(sys.modules[__name__], init_arg=None, name=SERVER)


async def echo(message: Any, timeout: float | None = None) -> Any:
    return await gen_server.call(SERVER, ("echo", message), timeout)


async def stop() -> None:
    await gen_server.cast(SERVER, "stop")


async def init(_init_arg: Any) -> str:
    return "nostate"


async def terminate(reason: BaseException | None, state: Any) -> None:
    pass


async def handle_call(message: Any, _caller: Any, state: Any) -> tuple[Any, Any]:
    match message:
        case ("echo", payload):
            return (gen_server.Reply(payload), state)
        case _:
            return (gen_server.Reply(NotImplementedError("unknown command")), state)


async def handle_cast(message: Any, state: Any) -> tuple[Any, Any]:
    match message:
        case "stop":
            return (gen_server.Stop(), state)
        case _:
            return (gen_server.Stop(NotImplementedError("unknown command")), state)


# --------------------------------------------------------------------------- the variants


async def triotp_call(n: int, warmup: int, timeout: float | None) -> float:
    for i in range(warmup):
        if await echo(i, timeout) != i:
            raise AssertionError("triotp echoed the wrong value")
    gc.collect()
    t0 = perf_counter()
    for i in range(n):
        await echo(i, timeout)
    t1 = perf_counter()
    return (t1 - t0) / n * 1e6


async def trio_channel_b0(n: int, warmup: int) -> float:
    """Raw trio memory channels, buffer 0 (no anyio)."""
    req_tx, req_rx = trio.open_memory_channel[int](0)
    rep_tx, rep_rx = trio.open_memory_channel[int](0)

    async def server() -> None:
        async with req_rx, rep_tx:
            async for m in req_rx:
                await rep_tx.send(m)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with req_tx, rep_rx:
            for i in range(warmup):
                await req_tx.send(i)
                await rep_rx.receive()
            gc.collect()
            t0 = perf_counter()
            for i in range(n):
                await req_tx.send(i)
                await rep_rx.receive()
            t1 = perf_counter()
    return (t1 - t0) / n * 1e6


async def client_run() -> None:
    run = _current
    assert run is not None
    try:
        while mailbox._resolve(SERVER) is None:  # the server registers its name on its first step
            await trio.lowlevel.checkpoint()
        variants: dict[str, Callable[[], Awaitable[float]]] = {
            "triotp_call": lambda: triotp_call(run.n, run.warmup, None),
            "triotp_call_timeout5": lambda: triotp_call(run.n, run.warmup, 5.0),
            "anyio_bare_b0": lambda: bare_b0(run.n, run.warmup),
            "trio_channel_b0": lambda: trio_channel_b0(run.n, run.warmup),
        }
        k = run.rep % len(VARIANTS)
        for name in (*VARIANTS[k:], *VARIANTS[:k]):
            run.figures[name] = await variants[name]()
    except Exception as exc:  # reported by main(); a crash here would only be restarted
        run.error = exc
    finally:
        await stop()


# --------------------------------------------------------------------------- the application


async def start(_start_arg: Any) -> None:
    children = [
        supervisor.child_spec(
            id="server", task=server_start, args=[], restart=supervisor.restart_strategy.TRANSIENT
        ),
        supervisor.child_spec(
            id="client", task=client_run, args=[], restart=supervisor.restart_strategy.TRANSIENT
        ),
    ]
    await supervisor.start(children, supervisor.options(max_restarts=3, max_seconds=5))


def one_repetition(n: int, warmup: int, rep: int) -> dict[str, float]:
    global _current
    _current = run = _Run(n=n, warmup=warmup, rep=rep)
    try:
        spec = application.app_spec(module=sys.modules[__name__], start_arg=None, permanent=False)
        node.run(apps=[spec])
    finally:
        _current = None
    if run.error is not None:
        raise run.error
    return run.figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triotp_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args(argv)

    reps = [one_repetition(args.n, args.warmup, rep) for rep in range(args.reps)]
    median_us = {v: statistics.median(r[v] for r in reps) for v in VARIANTS}
    median_ratio = {v: statistics.median(r[v] / r[REFERENCE] for r in reps) for v in VARIANTS}
    versions = {p: importlib.metadata.version(p) for p in ("triotp", "trio", "anyio", "msgspec")}
    if args.json:
        summary = {
            "python": platform.python_version(),
            "versions": versions,
            "reps": args.reps,
            "n": args.n,
            "per_rep": reps,
            "median_us": median_us,
            "median_ratio": median_ratio,
        }
        print(json.dumps(summary))
    else:
        print(
            f"Python {platform.python_version()}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
        )
        print(f"reps={args.reps}, N={args.n}; µs per round trip, ratio to {REFERENCE} (same run)")
        for v in VARIANTS:
            print(f"  {v:22s} {median_us[v]:7.1f} µs  {median_ratio[v]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

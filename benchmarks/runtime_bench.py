"""Actor-runtime micro-benchmarks, each beside its same-run reference loop.

Run::

    .venv/bin/python benchmarks/runtime_bench.py                 # defaults: 7 reps, N = 10,000
    .venv/bin/python benchmarks/runtime_bench.py --quick         # a few seconds, small N
    .venv/bin/python benchmarks/runtime_bench.py --backend trio --reps 3 --json out.json

What it measures: every repetition makes
one ``anyio.run`` per backend (backend order alternates), and inside it runs every variant of a
group in an order that rotates with the repetition. A variant's figure is the mean over N
operations after a warm-up and a ``gc.collect()`` (GC stays on). Ratios are computed per
repetition against the reference loop of the same run; the table shows medians over
repetitions.

1. ``call``: ``ActorRef.call(Ping, timeout=5.0)`` and ``timeout=None`` to an echo actor under a
   supervisor, against the bare anyio ping-pong with buffer 0 (the floor), plus the hand-built
   ``full_call_nowait_b16`` (the cheapest complete call measured in calibration) for context.
2. ``spawn``: ``await supervisor.start_child(ChildSpec(...))`` of a trivial actor, against
   ``TaskGroup.start()`` of a child that calls ``task_status.started()``, same N live children;
   teardown (cancel the group, or stop the supervisor) is reported for information.
3. ``restart``: one_for_one, from ``ref.kill()`` or a crash inside ``handle_call`` to the
   replacement's ``on_start`` (stamped inside it) and to its first reply; median and p99 over
   every restart of every repetition.
4. pykka ``ask`` (threads), in the same process right after each repetition's event loops,
   against a two-``queue.Queue`` thread ping-pong.
5. triotp ``gen_server.call`` (trio), by running ``benchmarks/triotp_bench.py`` under
   ``.venv313/bin/python`` (Python 3.13) when that interpreter exists.

Importing this module has no side effects; :func:`main` runs it. It is a benchmark, never a
timed test.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import anyio

from _floor import bare_b0
from crucible_kitchen.errors import ActorExited
from crucible_kitchen.supervisors import Actor, ChildSpec, Message, open_supervisor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus

    from crucible_kitchen.supervisors import ActorRef

__all__ = ("Config", "main", "run")

Backend: TypeAlias = Literal["asyncio", "trio"]

ROOT: Final = Path(__file__).resolve().parent.parent
TRIOTP_SCRIPT: Final = Path(__file__).resolve().parent / "triotp_bench.py"
TRIOTP_PYTHON: Final = ROOT / ".venv313" / "bin" / "python"
RUNTIME_LOGGER: Final = "crucible_kitchen.supervisors"

perf_counter = time.perf_counter


# --------------------------------------------------------------------------- messages, actors


class Ping(Message):
    seq: int
    body: str


class Crash(Message):
    pass


class Echo(Actor[Ping]):
    """Replies with the request itself."""

    async def handle_call(self, message: Ping) -> Ping:
        return message


class Idle(Actor[Ping]):
    """The trivial actor for the spawn benchmark: the default run loop, nothing else."""


class Stamps:
    """Shared by every incarnation of one :class:`Phoenix`."""

    __slots__ = ("crash_at", "ready_at")

    def __init__(self) -> None:
        self.crash_at = 0.0
        self.ready_at = 0.0


class Phoenix(Actor[Ping | Crash]):
    """Stamps the end of ``on_start`` and the moment it crashes; replies with its incarnation."""

    def __init__(self, stamps: Stamps) -> None:
        self.stamps = stamps

    async def on_start(self) -> None:
        self.stamps.ready_at = perf_counter()

    async def handle_call(self, message: Ping | Crash) -> int:
        if isinstance(message, Crash):
            self.stamps.crash_at = perf_counter()
            raise RuntimeError("benchmark crash")
        return self.incarnation


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    reps: int = 7
    n: int = 10_000
    """Round trips per timed loop (call, pykka and triotp)."""
    spawn_n: int = 1_000
    restarts: int = 300
    """Restarts per kind (kill, crash) per repetition and backend."""
    warmup: int = 500
    backends: tuple[Backend, ...] = ("asyncio", "trio")
    pykka: bool = True
    triotp: bool = True
    triotp_python: Path = TRIOTP_PYTHON
    json_path: Path | None = None


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="runtime_bench.py",
        description="Actor-runtime benchmarks (call, spawn, restart) beside same-run floors.",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 7)")
    parser.add_argument("--n", type=int, default=None, help="round trips per loop (10000)")
    parser.add_argument("--spawn-n", type=int, default=None, help="children spawned (1000)")
    parser.add_argument("--restarts", type=int, default=None, help="restarts per kind (300)")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--no-pykka", action="store_true", help="skip the pykka comparison")
    parser.add_argument("--no-triotp", action="store_true", help="skip the triotp subprocess")
    parser.add_argument("--triotp-python", type=Path, default=TRIOTP_PYTHON)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    base = Config(reps=2, n=300, spawn_n=50, restarts=20, warmup=50) if args.quick else Config()
    backends: tuple[Backend, ...] = (
        ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    )
    config = Config(
        reps=args.reps if args.reps is not None else base.reps,
        n=args.n if args.n is not None else base.n,
        spawn_n=args.spawn_n if args.spawn_n is not None else base.spawn_n,
        restarts=args.restarts if args.restarts is not None else base.restarts,
        warmup=base.warmup,
        backends=backends,
        pykka=not args.no_pykka,
        triotp=not args.no_triotp,
        triotp_python=args.triotp_python,
        json_path=args.json,
    )
    if min(config.reps, config.n, config.spawn_n, config.restarts) < 1:
        parser.error("--reps, --n, --spawn-n and --restarts must be >= 1")
    return config


def rotated(items: Sequence[str], rep: int) -> list[str]:
    """The variants in the order for repetition ``rep``: each goes first in turn."""
    k = rep % len(items)
    return [*items[k:], *items[:k]]


# --------------------------------------------------------------------------- 1. call


async def actor_call(ref: ActorRef[Ping], n: int, warmup: int, timeout: float | None) -> float:
    """Our ``call``: a fresh frozen tagged Struct per request, echoed back."""
    call = ref.call
    for i in range(warmup):
        if await call(Ping(seq=i, body="x"), timeout=timeout) != Ping(seq=i, body="x"):
            raise AssertionError("the echo actor replied with something else")
    gc.collect()
    t0 = perf_counter()
    for i in range(n):
        await call(Ping(seq=i, body="x"), timeout=timeout)
    t1 = perf_counter()
    return (t1 - t0) / n * 1e6


class _Envelope:
    __slots__ = ("event", "message", "result")

    def __init__(self, message: Ping) -> None:
        self.message = message
        self.event = anyio.Event()
        self.result: object = None


async def floor_nowait_b16(n: int, warmup: int) -> float:
    """``full_call_nowait_b16``, a call built by hand: Struct + Event/slot + ``fail_after(5)``."""
    tx, rx = anyio.create_memory_object_stream[_Envelope](16)

    async def server() -> None:
        async with rx:
            async for env in rx:
                match env.message:
                    case Ping():
                        env.result = env.message
                env.event.set()

    async def call(message: Ping) -> object:
        env = _Envelope(message)
        try:
            tx.send_nowait(env)
        except anyio.WouldBlock:
            await tx.send(env)
        with anyio.fail_after(5.0):
            await env.event.wait()
        return env.result

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with tx:
            for i in range(warmup):
                await call(Ping(seq=i, body="x"))
            gc.collect()
            t0 = perf_counter()
            for i in range(n):
                await call(Ping(seq=i, body="x"))
            t1 = perf_counter()
    return (t1 - t0) / n * 1e6


async def call_group(config: Config, rep: int, out: dict[str, float]) -> None:
    n, warmup = config.n, config.warmup
    async with open_supervisor([ChildSpec("echo", Echo)], name="bench-call") as sup:
        ref: ActorRef[Ping] = sup.ref("echo")
        variants: dict[str, Callable[[], Awaitable[float]]] = {
            "bare_b0": lambda: bare_b0(n, warmup),
            "call_t5": lambda: actor_call(ref, n, warmup, 5.0),
            "call_tnone": lambda: actor_call(ref, n, warmup, None),
            "floor_nowait_b16": lambda: floor_nowait_b16(n, warmup),
        }
        for name in rotated(list(variants), rep):
            out[name] = await variants[name]()


# --------------------------------------------------------------------------- 2. spawn


async def _parked_child(
    parked: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await parked.wait()


async def spawn_tg_start(n: int) -> tuple[float, float]:
    """The reference: ``await tg.start(child)`` N times; teardown = cancel the group."""
    parked = anyio.Event()
    async with anyio.create_task_group() as tg:
        gc.collect()
        t0 = perf_counter()
        for _ in range(n):
            await tg.start(_parked_child, parked)
        t1 = perf_counter()
        tg.cancel_scope.cancel()
    t2 = perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


async def spawn_start_child(n: int) -> tuple[float, float]:
    """Ours: ``await sup.start_child(ChildSpec(...))`` N times; teardown = leave the block."""
    ids = [f"w{i}" for i in range(n)]
    async with open_supervisor(name="bench-spawn") as sup:
        gc.collect()
        t0 = perf_counter()
        for child_id in ids:
            await sup.start_child(ChildSpec(child_id, Idle))
        t1 = perf_counter()
        if sup.count_children().active != n:
            raise AssertionError("not every child is running")
    t2 = perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


async def spawn_group(config: Config, rep: int, out: dict[str, float]) -> None:
    variants: dict[str, Callable[[int], Awaitable[tuple[float, float]]]] = {
        "tg_start": spawn_tg_start,
        "start_child": spawn_start_child,
    }
    for name in rotated(list(variants), rep):
        spawn, teardown = await variants[name](config.spawn_n)
        out[f"spawn_{name}"] = spawn
        out[f"teardown_{name}"] = teardown


# --------------------------------------------------------------------------- 3. restart


async def restart_kill(
    ref: ActorRef[Ping | Crash], stamps: Stamps, count: int, lat: dict[str, list[float]]
) -> None:
    """``kill()`` the idle actor; wait for its monitor, then call the replacement."""
    probe = Ping(seq=0, body="x")
    ready, reply = lat.setdefault("kill_ready", []), lat.setdefault("kill_reply", [])
    for _ in range(count):
        before = await ref.call(probe)
        monitor = ref.monitor()
        t0 = perf_counter()
        ref.kill()
        await monitor.wait()
        after = await ref.call(probe)
        t1 = perf_counter()
        if after != before + 1:
            raise AssertionError(f"expected incarnation {before + 1}, got {after}")
        ready.append((stamps.ready_at - t0) * 1e6)
        reply.append((t1 - t0) * 1e6)


async def restart_crash(
    ref: ActorRef[Ping | Crash], stamps: Stamps, count: int, lat: dict[str, list[float]]
) -> None:
    """Crash inside ``handle_call`` (the caller gets ActorExited), then call the replacement."""
    probe, crash = Ping(seq=0, body="x"), Crash()
    ready, reply = lat.setdefault("crash_ready", []), lat.setdefault("crash_reply", [])
    for _ in range(count):
        before = await ref.call(probe)
        try:
            await ref.call(crash)
        except ActorExited:
            pass
        else:
            raise AssertionError("the crash call returned")
        after = await ref.call(probe)
        t1 = perf_counter()
        if after != before + 1:
            raise AssertionError(f"expected incarnation {before + 1}, got {after}")
        t0 = stamps.crash_at
        ready.append((stamps.ready_at - t0) * 1e6)
        reply.append((t1 - t0) * 1e6)


async def restart_group(config: Config, rep: int, lat: dict[str, list[float]]) -> None:
    stamps = Stamps()
    spec = ChildSpec("phoenix", Phoenix, (stamps,))
    # A huge intensity so the supervisor never gives up during the run.
    async with open_supervisor([spec], name="bench-restart", intensity=10**9, period=1.0) as sup:
        ref: ActorRef[Ping | Crash] = sup.ref("phoenix")
        variants: dict[str, Callable[[int, dict[str, list[float]]], Awaitable[None]]] = {
            "kill": lambda k, into: restart_kill(ref, stamps, k, into),
            "crash": lambda k, into: restart_crash(ref, stamps, k, into),
        }
        for name in rotated(list(variants), rep):
            await variants[name](min(20, config.restarts), {})  # warm-up, discarded
            gc.collect()
            await variants[name](config.restarts, lat)


# --------------------------------------------------------------------------- one repetition


@dataclass
class RepResult:
    figures: dict[str, float] = field(default_factory=dict)
    """Mean µs per operation of each variant in this repetition."""
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Every single restart latency in µs."""


async def one_repetition(config: Config, rep: int) -> RepResult:
    result = RepResult()
    await call_group(config, rep, result.figures)
    await spawn_group(config, rep, result.figures)
    await restart_group(config, rep, result.latencies)
    return result


# --------------------------------------------------------------------------- 4. pykka


_pykka_echo: type[Any] | None = None


def _pykka_echo_class() -> type[Any]:
    global _pykka_echo
    if _pykka_echo is None:
        import pykka

        class PykkaEcho(pykka.ThreadingActor):
            def on_receive(self, message: Any) -> Any:
                return message

        _pykka_echo = PykkaEcho
    return _pykka_echo


def pykka_ask(n: int, warmup: int) -> float:
    ref = _pykka_echo_class().start()
    try:
        for i in range(warmup):
            if ref.ask(Ping(seq=i, body="x"), timeout=5.0) != Ping(seq=i, body="x"):
                raise AssertionError("pykka echoed something else")
        gc.collect()
        t0 = perf_counter()
        for i in range(n):
            ref.ask(Ping(seq=i, body="x"), timeout=5.0)
        t1 = perf_counter()
    finally:
        ref.stop()
    return (t1 - t0) / n * 1e6


def thread_queue_pingpong(n: int, warmup: int) -> float:
    """pykka's floor: a request and a reply ``queue.Queue`` between two OS threads."""
    requests: queue.Queue[Ping | None] = queue.Queue()
    replies: queue.Queue[Ping] = queue.Queue()

    def server() -> None:
        while (m := requests.get()) is not None:
            replies.put(m)

    thread = threading.Thread(target=server, name="bench-queue-echo", daemon=True)
    thread.start()
    try:
        for i in range(warmup):
            requests.put(Ping(seq=i, body="x"))
            replies.get()
        gc.collect()
        t0 = perf_counter()
        for i in range(n):
            requests.put(Ping(seq=i, body="x"))
            replies.get()
        t1 = perf_counter()
    finally:
        requests.put(None)
        thread.join()
    return (t1 - t0) / n * 1e6


def pykka_repetition(config: Config, rep: int) -> dict[str, float]:
    variants: dict[str, Callable[[], float]] = {
        "pykka_ask": lambda: pykka_ask(config.n, config.warmup),
        "thread_queue": lambda: thread_queue_pingpong(config.n, config.warmup),
    }
    return {name: variants[name]() for name in rotated(list(variants), rep)}


def pykka_available() -> bool:
    try:
        import pykka  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- 5. triotp


def run_triotp(config: Config) -> dict[str, Any] | str:
    """Run triotp_bench.py under the 3.13 venv; its JSON summary, or why not."""
    python = config.triotp_python
    if not python.exists():
        return f"skipped: {python} not found (see docs/benchmarks.md to create .venv313)"
    command = [
        str(python),
        str(TRIOTP_SCRIPT),
        "--reps",
        str(config.reps),
        "--n",
        str(config.n),
        "--warmup",
        str(config.warmup),
        "--json",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    if done.returncode != 0:
        return f"failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
    try:
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        return f"failed: unreadable output ({exc})"
    return summary


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def p99(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Results:
    config: Config
    environment: dict[str, str]
    reps: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per backend (and ``"pykka"``): the figures of each repetition."""
    latencies: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Per backend: every restart latency, pooled over the repetitions."""
    triotp: dict[str, Any] | str | None = None

    def figure(self, key: str, name: str) -> float:
        return median([r[name] for r in self.reps.get(key, []) if name in r])

    def ratio(self, key: str, name: str, reference: str) -> float:
        return median(
            [r[name] / r[reference] for r in self.reps.get(key, []) if name in r and reference in r]
        )

    def versus_pykka(self, backend: str, ours: str) -> float:
        """Our figure / pykka's ask, per repetition (same process, seconds apart)."""
        pairs = zip(self.reps.get("pykka", []), self.reps.get(backend, []), strict=False)
        return median([b[ours] / p["pykka_ask"] for p, b in pairs if ours in b])


def environment() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "load_before": " ".join(f"{x:.2f}" for x in load),
        **{p: version(p) for p in ("anyio", "trio", "msgspec", "pykka", "crucible-kitchen")},
    }


# --------------------------------------------------------------------------- the run


def run(config: Config, *, echo: Callable[[str], None] = print) -> Results:
    """Run every benchmark of ``config`` and return the raw figures."""
    results = Results(config=config, environment=environment())
    with_pykka = config.pykka and pykka_available()
    runtime_logger = logging.getLogger(RUNTIME_LOGGER)
    # Restarts log a warning each. Keep building the records (part of the cost), print none.
    null_handler = logging.NullHandler()
    saved_propagate = runtime_logger.propagate
    runtime_logger.addHandler(null_handler)
    runtime_logger.propagate = False
    try:
        for rep in range(config.reps):
            order = config.backends if rep % 2 == 0 else config.backends[::-1]
            for backend in order:
                started = perf_counter()
                result = anyio.run(one_repetition, config, rep, backend=backend)
                results.reps.setdefault(backend, []).append(result.figures)
                pooled = results.latencies.setdefault(backend, {})
                for name, values in result.latencies.items():
                    pooled.setdefault(name, []).extend(values)
                echo(f"  rep {rep + 1}/{config.reps} {backend}: {perf_counter() - started:.1f} s")
            if with_pykka:
                started = perf_counter()
                results.reps.setdefault("pykka", []).append(pykka_repetition(config, rep))
                echo(f"  rep {rep + 1}/{config.reps} pykka: {perf_counter() - started:.1f} s")
    finally:
        runtime_logger.removeHandler(null_handler)
        runtime_logger.propagate = saved_propagate
    if not with_pykka:
        results.reps.pop("pykka", None)
    if config.triotp:
        started = perf_counter()
        results.triotp = run_triotp(config)
        echo(f"  triotp subprocess: {perf_counter() - started:.1f} s")
    return results


# --------------------------------------------------------------------------- the report


def _us(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def _x(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x"


def _verdict(values: Sequence[float], limit: float) -> str:
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return "—"
    return "met" if all(v <= limit for v in present) else "**MISSED**"


def report(results: Results) -> str:
    """The results as Markdown tables."""
    cfg = results.config
    backends = ("asyncio", "trio")
    env = results.environment
    lines = [
        f"Python {env['python']} on {env['platform']}; {env['cpu']}; "
        f"load before {env['load_before']}",
        f"anyio {env['anyio']}, trio {env['trio']}, msgspec {env['msgspec']}, "
        f"pykka {env['pykka']}, crucible-kitchen {env['crucible-kitchen']}",
        f"reps={cfg.reps}, N={cfg.n} round trips, spawn N={cfg.spawn_n} live children, "
        f"{cfg.restarts} restarts per kind per rep, warm-up {cfg.warmup}",
        "",
        "| figure | asyncio µs | trio µs | asyncio ratio | trio ratio | reference (same run) "
        "| target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(
        label: str, name: str, reference: str, target: str = "", limit: float | None = None
    ) -> None:
        us = [results.figure(b, name) for b in backends]
        ratios = [results.ratio(b, name, reference) for b in backends]
        verdict = "" if limit is None else _verdict(ratios, limit)
        ref_label = reference.removeprefix("spawn_").removeprefix("teardown_")
        lines.append(
            f"| {label} | {_us(us[0])} | {_us(us[1])} | {_x(ratios[0])} | {_x(ratios[1])} "
            f"| {ref_label} | {target} | {verdict} |"
        )

    row("bare anyio ping-pong, buffer 0 (floor)", "bare_b0", "bare_b0")
    row(
        "`call(Ping, timeout=5.0)`",
        "call_t5",
        "bare_b0",
        "≤ 1.00x (stretch 0.85x)",
        1.0,
    )
    row("`call(Ping, timeout=None)`", "call_tnone", "bare_b0", "≤ 0.90x (calibration T1b)", 0.9)
    row("hand-built `full_call_nowait_b16` (info)", "floor_nowait_b16", "bare_b0")
    row("`TaskGroup.start()` spawn", "spawn_tg_start", "spawn_tg_start")
    row(
        "`start_child(ChildSpec)` spawn",
        "spawn_start_child",
        "spawn_tg_start",
        "≤ 1.50x",
        1.5,
    )
    row("teardown: cancel the task group (per child)", "teardown_tg_start", "teardown_tg_start")
    row(
        "teardown: stop the supervisor (per child, info)",
        "teardown_start_child",
        "teardown_tg_start",
        "(T2b ≤ 1.50x, info)",
    )

    lines += [
        "",
        "Restart latency (one_for_one, pooled over every restart of every repetition; µs):",
        "",
        "| restart | asyncio median | asyncio p99 | trio median | trio p99 | samples "
        "| target (median) | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    restart_rows = (
        ("`kill()` → replacement's `on_start` done", "kill_ready", False),
        ("`kill()` → first reply from the replacement", "kill_reply", True),
        ("crash in `handle_call` → replacement's `on_start` done", "crash_ready", False),
        ("crash in `handle_call` → first reply from the replacement", "crash_reply", True),
    )
    for label, name, judged in restart_rows:
        samples = [results.latencies.get(b, {}).get(name, []) for b in backends]
        medians = [median(s) for s in samples]
        verdict = _verdict(medians, 1000.0) if judged else "(≤ reply)"
        lines.append(
            f"| {label} | {_us(medians[0])} | {_us(p99(samples[0]))} | {_us(medians[1])} "
            f"| {_us(p99(samples[1]))} | {' / '.join(str(len(s)) for s in samples)} "
            f"| ≤ 1000 | {verdict} |"
        )

    if "pykka" in results.reps:
        pk_ask = results.figure("pykka", "pykka_ask")
        pk_queue = results.figure("pykka", "thread_queue")
        pk_ratio = results.ratio("pykka", "pykka_ask", "thread_queue")
        vs = [results.versus_pykka(b, "call_t5") for b in backends]
        ours = [results.figure(b, "call_t5") for b in backends]
        lines += [
            "",
            "pykka (threads, run in the same process right after each repetition's event loops):",
            "",
            "| figure | µs / round trip | ratio |",
            "|---|---|---|",
            f"| pykka `ref.ask(Ping, timeout=5.0)` echo | {_us(pk_ask)} "
            f"| {_x(pk_ratio)} of the thread-queue ping-pong |",
            f"| two `queue.Queue` thread ping-pong (pykka's floor) | {_us(pk_queue)} | 1 |",
            f"| ours, `call(timeout=5.0)` asyncio / trio | {_us(ours[0])} / {_us(ours[1])} "
            f"| ours ÷ pykka: {_x(vs[0])} / {_x(vs[1])} (per-rep ratio) |",
        ]
    elif cfg.pykka:
        lines += ["", "pykka: skipped (not installed)"]

    tri = results.triotp
    if isinstance(tri, dict):
        med, rat = tri["median_us"], tri["median_ratio"]
        ours_trio = results.ratio("trio", "call_t5", "bare_b0")
        ours_trio_none = results.ratio("trio", "call_tnone", "bare_b0")
        lines += [
            "",
            f"triotp {tri['versions'].get('triotp')} on Python {tri['python']} (trio "
            f"{tri['versions'].get('trio')}), subprocess, its own same-run anyio bare_b0 "
            f"(reps={tri['reps']}, N={tri['n']}):",
            "",
            "| figure (trio) | µs / round trip | ÷ anyio bare_b0 (same run) | ours ÷ bare_b0 |",
            "|---|---|---|---|",
            f"| anyio bare ping-pong, buffer 0 | {_us(med['anyio_bare_b0'])} | 1 | 1 |",
            f"| triotp `gen_server.call` (no timeout) | {_us(med['triotp_call'])} "
            f"| {_x(rat['triotp_call'])} | {_x(ours_trio_none)} (`timeout=None`) |",
            f"| triotp `gen_server.call(..., timeout=5)` | {_us(med['triotp_call_timeout5'])} "
            f"| {_x(rat['triotp_call_timeout5'])} | {_x(ours_trio)} (`timeout=5.0`) |",
            f"| raw trio channel ping-pong, buffer 0 | {_us(med['trio_channel_b0'])} "
            f"| {_x(rat['trio_channel_b0'])} | |",
        ]
    elif isinstance(tri, str):
        lines += ["", f"triotp: {tri}"]
    return "\n".join(lines)


def to_json(results: Results) -> dict[str, Any]:
    cfg = asdict(results.config)
    cfg["triotp_python"] = str(cfg["triotp_python"])
    cfg["json_path"] = None if cfg["json_path"] is None else str(cfg["json_path"])
    return {
        "config": cfg,
        "environment": results.environment,
        "reps": results.reps,
        "restart_latencies_us": {
            b: {
                name: {"median": median(v), "p99": p99(v), "samples": len(v)}
                for name, v in lat.items()
            }
            for b, lat in results.latencies.items()
        },
        "triotp": results.triotp,
    }


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    print(
        f"runtime_bench: reps={config.reps} n={config.n} spawn_n={config.spawn_n} "
        f"restarts={config.restarts} backends={','.join(config.backends)}",
        flush=True,
    )
    started = perf_counter()
    results = run(config, echo=lambda line: print(line, flush=True))
    print()
    print(report(results))
    print(f"\ntotal {perf_counter() - started:.1f} s")
    if config.json_path is not None:
        config.json_path.write_text(json.dumps(to_json(results), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The embedded service under load, and a Kitchen that lives long, on asyncio (aiohttp).

Run::

    .venv/bin/python benchmarks/service_bench.py            # 10,000 runs, 100 concurrent, sl_basic
    .venv/bin/python benchmarks/service_bench.py --quick    # a smoke run of a few seconds
    .venv/bin/python benchmarks/service_bench.py --json out.json
    .venv/bin/python benchmarks/service_bench.py --only load --repeat 3  # both kitchens in turn
    .venv/bin/python benchmarks/service_bench.py --only load --repeat 3 \
        --variant "kitchen_niceness=0,gc_young_threshold=None,switch_interval_s=None" --variant ""

What it measures, in one process:

1. ``memory``: one ``Kitchen.open()`` runs ``--runs`` noop ``supervised`` runs one after the
   other; the resident set size (RSS, from ``/proc/self/statm``) is sampled ten times. Flat
   means last ÷ first (after the first tenth, the warm-up) stays near 1. ``service_memory``:
   the same number of runs one after the other through the service, each started with
   ``POST /runs`` and followed over its event stream to its end, once per variant (below;
   the RSS adds the Kitchen's worker process's to the service's).
2. ``load``: the service (``create_app``) on 127.0.0.1, started with aiohttp's ``AppRunner``;
   ``--concurrent`` noop runs are started with ``POST /runs`` at once, and for each run one
   client polls ``GET /runs/{id}`` until the run ended while another reads its
   ``GET /runs/{id}/events`` stream to the ``end`` event (a poller waits ``--poll-interval``
   between its requests; 0 makes 100 clients ask back to back). The clients run in a child
   process of their own, as real clients would, so that their work does not share the
   service's event loop and interpreter lock; a stream's client takes its bytes as they come
   and counts its events at the end. Reported: p50/p99 latency of ``GET /runs/{id}`` as the
   clients see it, with the verdict on the target (p99 < 50 ms); the p99 lag of the host's
   event loop and of the clients' (each a probe that sleeps 10 ms again and again and records
   the overshoot); the load average when the part started; events delivered over SSE against
   events emitted (counted by each run's telemetry handler where the Kitchen runs; they must
   be equal) and RSS growth per run (of the service's process and the Kitchen's worker
   process, if any).
3. ``lag``: while one ``sl_basic`` run trains on local torch in the same process (started
   over HTTP), a probe sleeps 10 ms again and again and records the overshoot (the event
   loop's lag; target p99 < 50 ms), and a client asks ``GET /health`` every 50 ms.

``--variant name=value,...`` runs the load and the lag with those service settings
(repeatable: the variants alternate, ``--repeat`` times), for side-by-side comparisons.
Without it the two kitchens alternate: ``kitchen='thread'`` (the Kitchen on a thread of the
service's process) and ``kitchen='process'`` (in a worker process); a last line per variant
gives the median p99 and how many runs met the target.

Importing this module has no side effects; :func:`main` runs it. It is a benchmark, never a
timed test.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from crucible_kitchen import Kitchen
from crucible_kitchen.service import SERVICE_KEY, create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from aiohttp.typedefs import Handler

    from crucible_kitchen.service import TrackedRun

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
NOOP_RUN: dict[str, Any] = {"recipe": "supervised", "adapters": "noop"}


@dataclass(frozen=True)
class Config:
    runs: int = 10_000
    noop_steps: int = 3
    concurrent: int = 100
    load_steps: int = 20
    poll_interval_s: float = 0.05
    train_steps: int = 400


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / MIB


def service_rss_mib(app: web.Application) -> float:
    """The RSS of this process, plus that of the Kitchen's worker process if it has one."""
    worker = app[SERVICE_KEY].worker_pid
    return rss_mib() + (0.0 if worker is None else rss_mib(worker))


def last_seq(run: TrackedRun) -> int:
    """How many events ``run`` emitted: the number of its last event, kept in its record (a
    run without a run directory keeps its events)."""
    assert run.events, f"run {run.run_id} kept no events"
    return run.events[-1].seq


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- 1. memory


async def long_lived_memory(config: Config, root: Path) -> dict[str, Any]:
    every = max(1, config.runs // 10)
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    async with Kitchen.open(runs_root=root) as kitchen:
        for index in range(1, config.runs + 1):
            run = await kitchen.start(
                "supervised", {"max_steps": config.noop_steps}, adapters="noop"
            )
            result = await run.wait()
            assert result.status == "completed", result
            del run
            if index % every == 0:
                samples.append((index, rss_mib()))
        kept = len(kitchen.finished())
    return {**memory_figures(samples, time.perf_counter() - started), "finished_kept": kept}


def memory_figures(samples: list[tuple[int, float]], elapsed_s: float) -> dict[str, Any]:
    """RSS samples ``(runs done, MiB)`` as figures: flat means last ÷ first near 1."""
    first, last = samples[0][1], samples[-1][1]
    return {
        "runs": samples[-1][0],
        "rss_mib": samples,
        "first_mib": first,
        "last_mib": last,
        "last_over_first": last / first,
        "growth_kib_per_run": (last - first) * 1024 / max(1, samples[-1][0] - samples[0][0]),
        "runs_per_s": samples[-1][0] / elapsed_s,
    }


# --------------------------------------------------------------------------- serving


@asynccontextmanager
async def served(
    middlewares: Sequence[Any] = (), **settings: Any
) -> AsyncIterator[tuple[str, web.Application]]:
    app = create_app(**settings)
    app.middlewares[:0] = middlewares
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- 2. load


class PauseRecorder:
    """What holds up requests in the service's process during the load: how long the
    ``GET /runs/{id}`` handler took (a middleware), the garbage collector's pauses
    (``gc.callbacks``), and how late a thread that sleeps 1 ms again and again wakes up (it
    waits for the interpreter lock and for a core)."""

    def __init__(self) -> None:
        self.handler: list[float] = []
        self.collections: list[tuple[int, float]] = []
        self.thread_lags: list[float] = []
        self._collecting_since = 0.0
        self._stop = threading.Event()

    @web.middleware
    async def timing(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            resource = request.match_info.route.resource
            if resource is not None and resource.canonical == "/runs/{run_id}":
                self.handler.append(time.perf_counter() - started)

    def _collector(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting_since = time.perf_counter()
        else:
            self.collections.append(
                (info["generation"], time.perf_counter() - self._collecting_since)
            )

    def _probe(self) -> None:
        while not self._stop.is_set():
            sent = time.perf_counter()
            time.sleep(0.001)
            self.thread_lags.append(time.perf_counter() - sent - 0.001)

    @contextmanager
    def recording(self) -> Iterator[None]:
        gc.callbacks.append(self._collector)
        probe = threading.Thread(target=self._probe, name="pause-probe")
        probe.start()
        try:
            yield
        finally:
            self._stop.set()
            probe.join()
            gc.callbacks.remove(self._collector)

    def figures(self) -> dict[str, Any]:
        by_generation = {
            f"gc{generation}": [d for g, d in self.collections if g == generation]
            for generation in (0, 1, 2)
        }
        return {
            "handler_p99_ms": percentile(self.handler, 0.99) * 1000,
            "handler_max_ms": max(self.handler) * 1000,
            "thread_lag_p99_ms": percentile(self.thread_lags, 0.99) * 1000,
            "thread_lag_max_ms": max(self.thread_lags) * 1000,
            **{
                name: {
                    "count": len(pauses),
                    "total_ms": sum(pauses) * 1000,
                    "longest_ms": max(pauses, default=0.0) * 1000,
                }
                for name, pauses in by_generation.items()
            },
        }


async def poll(
    session: aiohttp.ClientSession, url: str, latencies: list[float], interval_s: float
) -> None:
    while True:
        sent = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
        latencies.append(time.perf_counter() - sent)
        assert response.status == 200, body
        if msgspec.json.decode(body)["status"] != "running":
            return
        await asyncio.sleep(interval_s)


async def stream(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """The number of events an SSE stream delivered (lines ``id: n``) and the final status.

    The client takes the stream's bytes as they arrive and counts the events once it ended:
    the server sends every event as it happens either way, and the client's own process
    (which shares the machine's cores with the server's) does not parse line by line.
    """
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        body = await response.read()
    delivered, last_event, final = 0, "", ""
    for line in body.decode().split("\n"):
        if line.startswith("id: "):
            delivered += 1
        elif line.startswith("event: "):
            last_event = line.removeprefix("event: ")
        elif line.startswith("data: ") and last_event == "end":
            final = msgspec.json.decode(line.removeprefix("data: "))["status"]
    return delivered, final


async def lag_probe(lags: list[float], until: asyncio.Future[Any]) -> None:
    """Sleep 10 ms again and again until ``until`` is done, recording the overshoot."""
    while not until.done():
        sent = time.perf_counter()
        await asyncio.sleep(0.010)
        lags.append(time.perf_counter() - sent - 0.010)


async def clients(base: str, config: Config) -> dict[str, Any]:
    """The load's clients: start the runs, poll them and stream their events."""
    # No client-side pool limit: 100 open event streams must not queue the polls.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        body = {**NOOP_RUN, "config": {"max_steps": config.load_steps}}
        for _ in range(3):  # warm-up: imports, first-request costs
            async with session.post("/runs", json=body) as response:
                await stream(session, f"/runs/{(await response.json())['run_id']}/events")

        async def start() -> str:
            async with session.post("/runs", json=body) as response:
                assert response.status == 202, await response.text()
                return str((await response.json())["run_id"])

        started = time.perf_counter()
        run_ids = await asyncio.gather(*(start() for _ in range(config.concurrent)))
        latencies: list[float] = []
        polls = [
            poll(session, f"/runs/{run_id}", latencies, config.poll_interval_s)
            for run_id in run_ids
        ]
        streams = [stream(session, f"/runs/{run_id}/events") for run_id in run_ids]
        work = asyncio.gather(*polls, *streams)
        lags: list[float] = []
        await asyncio.gather(work, lag_probe(lags, work))
        results = work.result()
        elapsed = time.perf_counter() - started
    delivered = [result for result in results if isinstance(result, tuple)]
    return {
        "run_ids": run_ids,
        "latencies": latencies,
        "client_lags": lags,
        "events_delivered": sum(count for count, _ in delivered),
        "final_statuses": dict(Counter(status for _, status in delivered)),
        "wall_s": elapsed,
    }


async def load(
    config: Config, root: Path, *, pauses: bool = False, **settings: Any
) -> dict[str, Any]:
    """The service in this process; its clients in another one (as real clients are), so
    that their own work does not share this process's event loop and interpreter lock.
    ``settings`` go to the service (``kitchen``, ``kitchen_niceness``, ...).

    Events emitted are counted where the Kitchen runs (this process, or its worker process),
    which numbers each run's events from 1 in order: a run emitted as many as the number of
    its last event (kept in the run's record: a noop run has no run directory). ``pauses``:
    record what holds up requests in this process (:class:`PauseRecorder`)."""
    load_average = os.getloadavg()[0]
    host_lags: list[float] = []
    recorder = PauseRecorder()
    middlewares = [recorder.timing] if pauses else []
    async with (
        served(middlewares, root=root, max_runs_per_client=None, **settings) as (base, app),
    ):
        before = service_rss_mib(app)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--clients-of",
            base,
            "--client-config",
            json.dumps(asdict(config)),
            stdout=asyncio.subprocess.PIPE,
        )
        communicating = asyncio.ensure_future(client.communicate())
        with recorder.recording() if pauses else nullcontext():
            await asyncio.gather(communicating, lag_probe(host_lags, communicating))
        output, _ = communicating.result()
        assert client.returncode == 0, f"the clients failed (exit {client.returncode})"
        seen = json.loads(output)
        after = service_rss_mib(app)
        service = app[SERVICE_KEY]
        settings_used = service.settings
        emitted = sum(last_seq(service.run(run_id)) for run_id in seen["run_ids"])
    latencies, client_lags = seen["latencies"], seen["client_lags"]
    return {
        "concurrent": config.concurrent,
        "poll_interval_s": config.poll_interval_s,
        "settings": {name: getattr(settings_used, name, None) for name in TUNING},
        "load_average_1min": load_average,
        "get_run_p50_ms": percentile(latencies, 0.5) * 1000,
        "get_run_p99_ms": percentile(latencies, 0.99) * 1000,
        "get_run_requests": len(latencies),
        "host_loop_lag_p99_ms": percentile(host_lags, 0.99) * 1000,
        "client_loop_lag_p99_ms": percentile(client_lags, 0.99) * 1000,
        "events_delivered": seen["events_delivered"],
        "events_emitted": emitted,
        "final_statuses": seen["final_statuses"],
        "rss_growth_kib_per_run": (after - before) * 1024 / config.concurrent,
        "wall_s": seen["wall_s"],
        **({"pauses": recorder.figures()} if pauses else {}),
    }


async def service_memory(config: Config, root: Path, **settings: Any) -> dict[str, Any]:
    """``--runs`` noop runs one after the other through the service: each started with
    ``POST /runs`` and followed over its event stream to its end; RSS (of the service's
    process and the Kitchen's worker process, if any) sampled ten times. ``settings`` go to
    the service."""
    every = max(1, config.runs // 10)
    samples: list[tuple[int, float]] = []
    body = {**NOOP_RUN, "config": {"max_steps": config.noop_steps}}
    started = time.perf_counter()
    async with (
        served(root=root, **settings) as (base, app),
        aiohttp.ClientSession(base) as session,
    ):
        for index in range(1, config.runs + 1):
            async with session.post("/runs", json=body) as response:
                assert response.status == 202, await response.text()
                run_id = (await response.json())["run_id"]
            delivered, final = await stream(session, f"/runs/{run_id}/events")
            assert (final, delivered > 0) == ("completed", True), (final, delivered)
            if index % every == 0:
                samples.append((index, service_rss_mib(app)))
        kept = len(app[SERVICE_KEY].runs())
        settings_used = app[SERVICE_KEY].settings
    return {
        **memory_figures(samples, time.perf_counter() - started),
        "summaries_kept": kept,
        "settings": {name: getattr(settings_used, name, None) for name in TUNING},
    }


# --------------------------------------------------------------------------- 3. lag


async def lag_while_training(config: Config, root: Path, **settings: Any) -> dict[str, Any]:
    """``settings`` go to the service."""
    train = {
        "recipe": "sl_basic",
        "config": {
            "max_examples": 512,
            "batch_size": 8,
            "max_steps": config.train_steps,
            "eval_every": 1000,
            "save_every": 1000,
            "eval_generations": 0,
        },
    }
    lags: list[float] = []
    health: list[float] = []
    failures = 0
    load_average = os.getloadavg()[0]
    async with (
        served(root=root, **settings) as (base, app),
        aiohttp.ClientSession(base) as session,
    ):
        settings_used = app[SERVICE_KEY].settings
        async with session.post("/runs", json=train) as response:
            assert response.status == 202, await response.text()
            run_id = (await response.json())["run_id"]
        service = app[SERVICE_KEY]
        waiter = asyncio.ensure_future(service.result(service.run(run_id)))

        async def ask_health() -> None:
            nonlocal failures
            while not waiter.done():
                sent = time.perf_counter()
                async with session.get("/health") as response:
                    await response.read()
                health.append(time.perf_counter() - sent)
                failures += response.status != 200
                await asyncio.sleep(0.050)

        started = time.perf_counter()
        await asyncio.gather(lag_probe(lags, waiter), ask_health())
        result = waiter.result()
        elapsed = time.perf_counter() - started
    return {
        "settings": {name: getattr(settings_used, name, None) for name in TUNING},
        "load_average_1min": load_average,
        "status": result.status,
        "steps": result.steps,
        "train_s": elapsed,
        "lag_p50_ms": percentile(lags, 0.5) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "lag_max_ms": max(lags) * 1000,
        "health_answers": len(health),
        "health_failures": failures,
        "health_p99_ms": percentile(health, 0.99) * 1000,
    }


# --------------------------------------------------------------------------- the run

PARTS = ("memory", "service_memory", "load", "lag")
TUNING = ("kitchen", "kitchen_niceness", "gc_young_threshold", "switch_interval_s")
"""The service settings that the load report shows."""
P99_TARGET_MS = 50.0


async def measure(
    config: Config,
    parts: Sequence[str],
    variants: Sequence[dict[str, Any]],
    repeat: int,
    *,
    pauses: bool = False,
) -> dict[str, Any]:
    """The ``parts`` asked for; the service memory once per variant (service settings), the
    load and the lag once per variant and repetition, the variants alternating; ``pauses``:
    see :func:`load`."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        root = Path(tmp)
        if "memory" in parts:
            figures["memory"] = await long_lived_memory(config, root / "memory")
        if "service_memory" in parts:
            figures["service_memory"] = [
                await service_memory(config, root / f"service-memory-{number}", **settings)
                for number, settings in enumerate(variants)
            ]
        if "load" in parts:
            figures["load"] = [
                await load(config, root / f"load-{index}-{number}", pauses=pauses, **settings)
                for index in range(repeat)
                for number, settings in enumerate(variants)
            ]
        if "lag" in parts:
            figures["lag"] = [
                await lag_while_training(config, root / f"lag-{index}-{number}", **settings)
                for index in range(repeat)
                for number, settings in enumerate(variants)
            ]
    return figures


def report_load(load_: dict[str, Any]) -> str:
    p99 = load_["get_run_p99_ms"]
    verdict = "MET" if p99 < P99_TARGET_MS else "NOT MET"
    return (
        f"2. load ({tuning(load_)}; load average "
        f"{load_['load_average_1min']:.2f}): {load_['concurrent']} concurrent noop runs over "
        f"HTTP in {load_['wall_s']:.2f} s (polls every {load_['poll_interval_s']} s); "
        f"GET /runs/{{id}} p50 {load_['get_run_p50_ms']:.1f} ms, p99 {p99:.1f} ms "
        f"({load_['get_run_requests']} requests): target p99 < {P99_TARGET_MS:.0f} ms "
        f"{verdict}; loop lag p99: host {load_['host_loop_lag_p99_ms']:.1f} ms, clients "
        f"{load_['client_loop_lag_p99_ms']:.1f} ms; events delivered "
        f"{load_['events_delivered']} / emitted {load_['events_emitted']}; "
        f"final {load_['final_statuses']}; RSS +{load_['rss_growth_kib_per_run']:.1f} KiB per run"
    )


def report_pauses(pauses: dict[str, Any]) -> str:
    collections = "; ".join(
        f"gen {generation}: {pauses[f'gc{generation}']['count']} in "
        f"{pauses[f'gc{generation}']['total_ms']:.1f} ms, longest "
        f"{pauses[f'gc{generation}']['longest_ms']:.1f} ms"
        for generation in (0, 1, 2)
    )
    return (
        f"   in the service's process: GET /runs/{{id}} handler p99 "
        f"{pauses['handler_p99_ms']:.2f} ms (max {pauses['handler_max_ms']:.1f}); collections "
        f"{collections}; a thread sleeping 1 ms wakes late by p99 "
        f"{pauses['thread_lag_p99_ms']:.1f} ms (max {pauses['thread_lag_max_ms']:.1f})"
    )


def tuning(figures: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in figures["settings"].items())


def report_lag(lag: dict[str, Any]) -> str:
    return (
        f"3. lag ({tuning(lag)}; load average {lag['load_average_1min']:.2f}): sl_basic on "
        f"local torch, {lag['steps']} steps in {lag['train_s']:.1f} s ({lag['status']}); loop "
        f"lag p50 {lag['lag_p50_ms']:.2f} ms, p99 {lag['lag_p99_ms']:.2f} ms, max "
        f"{lag['lag_max_ms']:.1f} ms; /health answered {lag['health_answers']} times, "
        f"{lag['health_failures']} failures, p99 {lag['health_p99_ms']:.1f} ms"
    )


def report(figures: dict[str, Any]) -> str:
    lines = []
    if "memory" in figures:
        memory = figures["memory"]
        samples = ", ".join(f"{n}: {mib:.1f}" for n, mib in memory["rss_mib"])
        lines += [
            f"1. memory: {memory['runs']} sequential noop runs in one Kitchen "
            f"({memory['runs_per_s']:.0f} runs/s); RSS MiB by run: {samples}",
            f"   last/first {memory['last_over_first']:.3f}, "
            f"{memory['growth_kib_per_run']:.2f} KiB per run; "
            f"finished results kept: {memory['finished_kept']}",
        ]
    for service in figures.get("service_memory", ()):
        service_samples = ", ".join(f"{n}: {mib:.1f}" for n, mib in service["rss_mib"])
        lines += [
            f"1b. service memory ({tuning(service)}): {service['runs']} sequential noop runs "
            f"over HTTP ({service['runs_per_s']:.0f} runs/s); RSS MiB by run: {service_samples}",
            f"   last/first {service['last_over_first']:.3f}, "
            f"{service['growth_kib_per_run']:.2f} KiB per run; "
            f"run summaries kept: {service['summaries_kept']}",
        ]
    for load_ in figures.get("load", ()):
        lines.append(report_load(load_))
        if "pauses" in load_:
            lines.append(report_pauses(load_["pauses"]))
    lines += summarize_loads(figures.get("load", ()))
    lines += [report_lag(lag) for lag in figures.get("lag", ())]
    return "\n".join(lines)


def summarize_loads(loads: Sequence[dict[str, Any]]) -> list[str]:
    """Per variant of the load: the median p99 over the repetitions and the runs that met
    the target."""
    by_variant: dict[str, list[float]] = {}
    for load_ in loads:
        by_variant.setdefault(tuning(load_), []).append(load_["get_run_p99_ms"])
    return [
        f"   {variant}: GET /runs/{{id}} p99 median {percentile(p99s, 0.5):.1f} ms over "
        f"{len(p99s)} runs ({', '.join(f'{p99:.1f}' for p99 in p99s)}); target met in "
        f"{sum(p99 < P99_TARGET_MS for p99 in p99s)} of {len(p99s)}"
        for variant, p99s in by_variant.items()
    ]


def variant_settings(text: str) -> dict[str, Any]:
    """``"kitchen_niceness=0,gc_young_threshold=None"`` as settings (``""``: the defaults)."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    return {name.strip(): ast.literal_eval(value.strip()) for name, _, value in pairs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--poll-interval", type=float, default=Config.poll_interval_s, help="seconds"
    )
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run this part only (repeatable)"
    )
    parser.add_argument(
        "--variant",
        type=variant_settings,
        action="append",
        help="service settings of the load and lag parts, as name=value,... (Python literals); "
        "repeatable: the variants alternate. Default: kitchen='thread', then kitchen='process'",
    )
    parser.add_argument("--repeat", type=int, default=1, help="times to run the load and lag")
    parser.add_argument(
        "--runs", type=int, default=Config.runs, help="sequential runs of the memory parts"
    )
    parser.add_argument(
        "--pauses",
        action="store_true",
        help="load: also record, in the service's process, the GET /runs/{id} handler's time, "
        "the garbage collector's pauses and how late a sleeping thread wakes up",
    )
    parser.add_argument("--clients-of", help=argparse.SUPPRESS)  # the load's client process
    parser.add_argument("--client-config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients_of is not None:
        config = Config(**json.loads(args.client_config))
        print(json.dumps(asyncio.run(clients(args.clients_of, config))))
        return 0
    config = Config(runs=args.runs, poll_interval_s=args.poll_interval)
    if args.quick:
        config = replace(config, runs=200, concurrent=10, load_steps=5, train_steps=3)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"config: {asdict(config)}")
    variants = args.variant or [{"kitchen": "thread"}, {"kitchen": "process"}]
    figures = asyncio.run(
        measure(config, args.only or PARTS, variants, args.repeat, pauses=args.pauses)
    )
    print(report(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    loads = figures.get("load", ())
    if any(load_["events_delivered"] != load_["events_emitted"] for load_ in loads):
        print("events were lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

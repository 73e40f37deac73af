"""Workflow-engine overhead per stage, beside same-run reference loops (targets T3, T3b).

Run::

    .venv/bin/python benchmarks/engine_bench.py                    # 10,000 steps, 7 reps, both
    .venv/bin/python benchmarks/engine_bench.py --quick            # a smoke run of a few seconds
    .venv/bin/python benchmarks/engine_bench.py --backend trio --steps 5000 --reps 3 --json o.json

The workflow has the shape of a supervised training loop, on the noop adapters::

    loop("steps", N,
         stage("forward_backward", ForwardBackward),
         stage("optim_step", OptimStep))

``ForwardBackward`` awaits ``tc.forward_backward(batch, "cross_entropy",
request_id=ctx.request_id("forward_backward"))`` and the future's result and puts the loss in
``ctx.metrics``; ``OptimStep`` awaits ``tc.optim_step(adam, request_id=...)`` and its result and
counts ``ctx.step``.

It runs through ``Kitchen.run(workflow, adapters=..., telemetry=[JsonlHandler(tmp)],
tracer_provider=...)``: every stage emits 2 JSONL events (stage start and stop; telemetry is
always on) and, with tracing on, one OpenTelemetry SDK span. The batch is one 8-token ``Datum``,
built once.

Variants, all in the same ``anyio.run`` of one repetition, in an order that rotates with the
repetition (with both backends, the backend order alternates too):

- ``bare``: the reference loop, the anyio memory-stream ping-pong with buffer 0
  (two tasks, int payload); figure: µs per round trip over 2N round trips, after a warm-up.
- ``direct``: a hand-written anyio loop making the same adapter calls as the stages, with
  request ids of the same form: the floor for the work itself; figure: µs per "stage" (one
  adapter call and awaiting its future).
- ``engine_off``: the workflow with tracing off (no tracer provider).
- ``engine_batch``: the workflow with OpenTelemetry SDK spans as users run them:
  ``configure_tracing(exporter)``, i.e. the SDK's BatchSpanProcessor (default settings) feeding
  an exporter that counts the spans and drops them, as an OTLP exporter does once it has sent
  them (without the network). The target T3 applies here.
- ``engine_memory`` (for information): the same spans through ``configure_tracing("memory")``,
  a SimpleSpanProcessor into an InMemorySpanExporter, which keeps every span until the run's
  end; beside ``engine_batch`` it shows what keeping every span alive costs in garbage
  collection.

A stage is timed from the start of one stage body to the start of the next (a ``perf_counter()``
stamp at the top of each body), so it holds the stage's own work plus all the engine does around
it: the reply, the commit, the loop bookkeeping, the ``Execute`` call to the next stage's actor,
the context fork, 2 events and the span. The direct loop stamps the same points. The first
``--warmup`` steps are not timed; a ``gc.collect()`` runs at the boundary (GC stays enabled).
Per repetition a figure is the mean over the 2N timed stages; p50 and p99
pool every timed stage of every repetition. The time spent in the cyclic GC (``gc.callbacks``)
and the process CPU time in the same windows are reported beside.

The targets T3 and T3b are ratios computed per repetition, reported as the median (and range)
of the per-repetition values::

    overhead ratio = (engine mean µs/stage - direct mean µs/stage) / bare mean µs/round trip
    T3  (SDK spans, batch processor): <= 2.75        T3b (tracing off): <= 1.5

During every variant the run counts ``os.fsync``/``os.fdatasync``/``os.sync`` and
``anyio.to_thread.run_sync`` (how ``anyio.open_file`` does its I/O). The exit status is 1 if
any of them happened, or if an engine run wrote fewer JSONL events or spans than its stages
need; a missed target does not change it (timing depends on the machine).

Importing this module has no side effects; :func:`main` runs it. It is a benchmark, never a
timed test.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import anyio
import anyio.to_thread
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from crucible_kitchen.adapters.noop import NoopTrainingClient
from crucible_kitchen.kitchen import Adapters, Kitchen
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData
from crucible_kitchen.stages import Stage
from crucible_kitchen.telemetry import JsonlHandler, configure_tracing, get_span_exporter
from crucible_kitchen.workflows import Workflow, loop, stage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from crucible_kitchen.stages import Context

__all__ = ("Config", "main", "run")

Backend: TypeAlias = Literal["asyncio", "trio"]

VARIANTS: Final = ("bare", "direct", "engine_off", "engine_batch", "engine_memory")
ENGINES: Final = ("engine_off", "engine_batch", "engine_memory")
TRACED: Final = ("engine_batch", "engine_memory")
TARGETS: Final = {
    "engine_off": ("T3b", 1.5),
    "engine_batch": ("T3", 2.75),
    "engine_memory": ("in-memory exporter (information, T3's limit beside)", 2.75),
}
RUN_ID: Final = "bench"
LOSS_FN: Final = "cross_entropy"
ROOT: Final = Path(__file__).resolve().parent.parent

perf_counter = time.perf_counter
process_time = time.process_time


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One variant in one repetition; times in µs per stage (per round trip for ``bare``)."""

    mean_us: float
    intervals_us: list[float] = field(default_factory=list)
    """Every timed stage (empty for ``bare``)."""
    gc_us: float = 0.0
    """Time in the cyclic garbage collector within the timed window."""
    cpu_us: float = 0.0
    """Process CPU time within the timed window (robust to other processes' load)."""
    run_s: float = 0.0
    """Engine: the whole ``Kitchen.run``, start-up and shutdown included."""
    events: int = 0
    spans: int = 0


class GcClock:
    """Seconds spent in the cyclic garbage collector while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = perf_counter()
        else:
            self.total += perf_counter() - self._started

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


GC_CLOCK: Final = GcClock()


class Marks:
    """Stage-start stamps: ``mark()`` at the top of every stage body.

    Stamps ``2 * warmup`` to ``2 * (warmup + steps)`` are the timed window: right before the
    first of them it collects garbage, and it notes GC and CPU time at both ends.
    """

    __slots__ = ("collect_at", "cpu_s", "gc_s", "last", "times")

    def __init__(self, warmup_steps: int, steps: int) -> None:
        self.collect_at = 2 * warmup_steps
        self.last = 2 * (warmup_steps + steps)
        self.times: list[float] = []
        self.gc_s = 0.0
        self.cpu_s = 0.0

    def mark(self) -> None:
        times = self.times
        n = len(times)
        if n == self.collect_at:
            gc.collect()
            self.gc_s = -GC_CLOCK.total
            self.cpu_s = -process_time()
        elif n == self.last:
            self.gc_s += GC_CLOCK.total
            self.cpu_s += process_time()
        times.append(perf_counter())

    def sample(self, **more: Any) -> Sample:
        """The timed window as a :class:`Sample`."""
        times = self.times[self.collect_at : self.last + 1]
        count = len(times) - 1
        if count != self.last - self.collect_at:
            raise RuntimeError(f"expected {self.last + 1} stamps, got {len(self.times)}")
        return Sample(
            mean_us=(times[-1] - times[0]) / count * 1e6,
            intervals_us=[(b - a) * 1e6 for a, b in itertools.pairwise(times)],
            gc_us=self.gc_s / count * 1e6,
            cpu_us=self.cpu_s / count * 1e6,
            **more,
        )


# --------------------------------------------------------------------------- the workload


def tiny_batch() -> list[Datum]:
    """One 8-token datum with cross-entropy inputs."""
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    return [
        Datum(
            model_input=ModelInput.from_ints(tokens),
            loss_fn_inputs={
                "target_tokens": TensorData.from_list([*tokens[1:], 9], dtype="int64"),
                "weights": TensorData.from_list([1.0] * len(tokens), dtype="float32"),
            },
        )
    ]


BATCH: Final = tiny_batch()
ADAM: Final = AdamParams(learning_rate=1e-4)


class ForwardBackward(Stage):
    """forward_backward on the tiny batch; records the loss."""

    requires = ("training_client",)

    def __init__(self, marks: Marks) -> None:
        self.marks = marks

    async def execute(self, ctx: Context) -> Context | None:
        self.marks.mark()
        tc = ctx.port("training_client")
        future = await tc.forward_backward(
            BATCH, LOSS_FN, request_id=ctx.request_id("forward_backward")
        )
        output = await future.result()
        ctx.metrics["loss"] = output.metrics["loss:sum"]
        return None


class OptimStep(Stage):
    """optim_step; counts the step."""

    requires = ("training_client",)

    def __init__(self, marks: Marks) -> None:
        self.marks = marks

    async def execute(self, ctx: Context) -> Context | None:
        self.marks.mark()
        tc = ctx.port("training_client")
        future = await tc.optim_step(ADAM, request_id=ctx.request_id("optim_step"))
        await future.result()
        ctx.step += 1
        return None


class LastStamp(Stage):
    """Only stamps, after the loop: ends the last timed stage's interval."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks

    async def execute(self, ctx: Context) -> Context | None:
        self.marks.mark()
        return None


def workflow(steps: int, marks: Marks) -> Workflow:
    return Workflow(
        "bench_supervised",
        loop(
            "steps",
            steps,
            stage("forward_backward", ForwardBackward(marks)),
            stage("optim_step", OptimStep(marks)),
        ),
        stage("last_stamp", LastStamp(marks)),
    )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    steps: int = 10_000
    """Timed steps per run; a step is 2 stages (forward_backward, optim_step)."""
    reps: int = 7
    warmup: int = 250
    """Untimed steps first (and 2x as many untimed round trips for the ping-pong)."""
    backends: tuple[Backend, ...] = ("asyncio", "trio")
    json_path: Path | None = None


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="engine_bench.py",
        description="Workflow-engine overhead per stage beside same-run floors (T3, T3b).",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (10000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (7)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (250)")
    parser.add_argument("--backend", choices=("asyncio", "trio", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    base = Config(steps=300, reps=2, warmup=30) if args.quick else Config()
    backends: tuple[Backend, ...] = (
        ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    )
    config = Config(
        steps=args.steps if args.steps is not None else base.steps,
        reps=args.reps if args.reps is not None else base.reps,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        backends=backends,
        json_path=args.json,
    )
    if min(config.steps, config.reps) < 1 or config.warmup < 0:
        parser.error("--steps and --reps must be >= 1, --warmup >= 0")
    return config


def rotated(items: Sequence[str], rep: int) -> list[str]:
    """The variants in the order for repetition ``rep``: each goes first in turn."""
    k = rep % len(items)
    return [*items[k:], *items[:k]]


# --------------------------------------------------------------------------- hot-path guard


class BlockingIOCounter:
    """Counts fsync-family calls and anyio worker-thread hops while installed."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._saved: list[tuple[object, str, object]] = []

    def _wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        counts = self.counts
        counts[label] = 0

        def counting(*args: Any, **kwargs: Any) -> Any:
            counts[label] += 1
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, counting)

    def install(self) -> None:
        for name in ("fsync", "fdatasync", "sync"):
            self._wrap(os, name, f"os.{name}")
        self._wrap(anyio.to_thread, "run_sync", "anyio.to_thread.run_sync")

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- variants


async def bare_b0(n: int, warmup: int) -> Sample:
    """The reference loop: two tasks, request and reply streams, buffer 0, int payload."""
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
                await rep_rx.receive()
            gc.collect()
            gc_s, cpu_s = -GC_CLOCK.total, -process_time()
            started = perf_counter()
            for i in range(n):
                await req_tx.send(i)
                await rep_rx.receive()
            elapsed = perf_counter() - started
            gc_s, cpu_s = gc_s + GC_CLOCK.total, cpu_s + process_time()
    return Sample(mean_us=elapsed / n * 1e6, gc_us=gc_s / n * 1e6, cpu_us=cpu_s / n * 1e6)


async def direct(config: Config) -> Sample:
    """The stages' adapter calls in a plain loop, stamped at the same points: the work's floor."""
    tc = NoopTrainingClient(seed=0)
    marks = Marks(config.warmup, config.steps)
    mark = marks.mark
    metrics: dict[str, float] = {"step": 0.0}  # what the stages put in ctx.metrics, ctx.step
    prefix = f"{RUN_ID}/steps/"
    for i in range(config.warmup + config.steps):
        mark()
        future = await tc.forward_backward(
            BATCH, LOSS_FN, request_id=f"{prefix}forward_backward[steps={i}]/forward_backward#0"
        )
        output = await future.result()
        metrics["loss"] = output.metrics["loss:sum"]
        mark()
        optim = await tc.optim_step(ADAM, request_id=f"{prefix}optim_step[steps={i}]/optim_step#0")
        await optim.result()
        metrics["step"] += 1
    mark()
    return marks.sample()


class DroppingExporter(SpanExporter):
    """Counts the spans it is given and keeps none (as a network exporter would)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


Tracing: TypeAlias = Literal["off", "memory", "batch"]


async def engine(config: Config, *, tracing: Tracing, folder: Path, tag: str) -> Sample:
    """The workflow through ``Kitchen.run``, JSONL events always; no spans (``off``), SDK spans
    into the in-memory exporter (``memory``), or through a BatchSpanProcessor into a dropping
    exporter (``batch``)."""
    marks = Marks(config.warmup, config.steps)
    steps = config.warmup + config.steps
    dropping = DroppingExporter()
    provider = None
    if tracing != "off":
        provider = configure_tracing("memory" if tracing == "memory" else dropping)
    log = folder / f"{tag}.jsonl"
    handler = JsonlHandler(log)
    try:
        started = perf_counter()
        result = await Kitchen.run(
            workflow(steps, marks),
            adapters=Adapters(training_client=NoopTrainingClient(seed=0)),
            telemetry=[handler],
            tracer_provider=provider,
            run_id=RUN_ID,
        )
        run_s = perf_counter() - started
    finally:
        handler.close()
    if result.status != "completed" or result.steps != steps:
        raise RuntimeError(f"the benchmark run did not complete: {result}")
    with log.open("rb") as lines:
        events = sum(1 for _ in lines)
    log.unlink()
    spans = 0
    if provider is not None and tracing == "memory":
        exporter: Any = get_span_exporter(provider)  # an InMemorySpanExporter
        spans = len(exporter.get_finished_spans())
        provider.shutdown()
        exporter.clear()
    elif provider is not None:
        provider.shutdown()  # exports what the batch processor still holds
        spans = dropping.exported
    return marks.sample(run_s=run_s, events=events, spans=spans)


TRACING: Final[dict[str, Tracing]] = {
    "engine_off": "off",
    "engine_batch": "batch",
    "engine_memory": "memory",
}


async def one_repetition(config: Config, rep: int, folder: Path) -> dict[str, Sample]:
    samples: dict[str, Sample] = {}
    for variant in rotated(VARIANTS, rep):
        if variant == "bare":
            samples[variant] = await bare_b0(2 * config.steps, 2 * config.warmup)
        elif variant == "direct":
            samples[variant] = await direct(config)
        else:
            tracing = TRACING[variant]
            samples[variant] = await engine(config, tracing=tracing, folder=folder, tag=variant)
    return samples


# --------------------------------------------------------------------------- running


@dataclass
class Results:
    config: Config
    environment: dict[str, str]
    reps: dict[str, list[dict[str, Sample]]] = field(default_factory=dict)
    io_counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


def environment() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "-"
    packages = ("anyio", "trio", "msgspec", "opentelemetry-sdk")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "commit": commit,
        **{package: version(package) for package in packages},
        "load average at start": _load(),
    }


def run(config: Config, *, echo: Callable[[str], None] = print) -> Results:
    """Run every repetition of ``config`` and return the raw figures."""
    results = Results(config=config, environment=environment())
    guard = BlockingIOCounter()
    with tempfile.TemporaryDirectory(prefix="engine_bench_") as tmp:
        guard.install()
        GC_CLOCK.install()
        try:
            for rep in range(config.reps):
                order = config.backends if rep % 2 == 0 else config.backends[::-1]
                for backend in order:
                    started = perf_counter()
                    samples = anyio.run(one_repetition, config, rep, Path(tmp), backend=backend)
                    results.reps.setdefault(backend, []).append(samples)
                    echo(
                        f"  rep {rep + 1}/{config.reps} {backend}: {perf_counter() - started:.1f} s"
                    )
        finally:
            GC_CLOCK.uninstall()
            guard.uninstall()
    results.environment["load average at end"] = _load()
    results.io_counts = dict(guard.counts)
    results.problems = check(results, guard.total)
    return results


def check(results: Results, blocking_calls: int) -> list[str]:
    """What fails the run: blocking file I/O, or telemetry that did not happen."""
    problems: list[str] = []
    if blocking_calls:
        problems.append(f"blocking file I/O during the runs: {results.io_counts}")
    config = results.config
    stages = 2 * (config.warmup + config.steps) + 1
    for backend, reps in results.reps.items():
        for i, samples in enumerate(reps):
            where = f"{backend} rep {i + 1}"
            for variant in ENGINES:
                events = samples[variant].events
                if events < 2 * stages:
                    problems.append(f"{where} {variant}: {events} JSONL events, {stages} stages")
            for variant in TRACED:
                spans = samples[variant].spans
                if spans < stages:
                    problems.append(f"{where} {variant}: {spans} spans for {stages} stages")
    return problems


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class Summary:
    """One backend: medians over repetitions, and per-stage percentiles pooled over them."""

    mean: dict[str, float]
    gc: dict[str, float]
    cpu: dict[str, float]
    p50: dict[str, float]
    p99: dict[str, float]
    ratios: dict[str, float]
    """Medians of the per-repetition ratios."""
    spread: dict[str, tuple[float, float]]
    """Lowest and highest per-repetition ratio."""
    run_s: dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summarize(reps: list[dict[str, Sample]]) -> Summary:
    def median(variant: str, attribute: str) -> float:
        return float(statistics.median(getattr(r[variant], attribute) for r in reps))

    pooled = {v: [x for r in reps for x in r[v].intervals_us] for v in VARIANTS if v != "bare"}
    per_rep: dict[str, list[float]] = {}
    for r in reps:
        bare, work = r["bare"], r["direct"]
        per_rep.setdefault("direct/bare", []).append(work.mean_us / bare.mean_us)
        for v in ENGINES:
            sample = r[v]
            per_rep.setdefault(f"{v}:overhead/bare", []).append(
                (sample.mean_us - work.mean_us) / bare.mean_us
            )
            per_rep.setdefault(f"{v}:cpu_overhead/bare", []).append(
                (sample.cpu_us - work.cpu_us) / bare.cpu_us
            )
            per_rep.setdefault(f"{v}/direct", []).append(sample.mean_us / work.mean_us)
            per_rep.setdefault(f"{v}/bare", []).append(sample.mean_us / bare.mean_us)
    return Summary(
        mean={v: median(v, "mean_us") for v in VARIANTS},
        gc={v: median(v, "gc_us") for v in VARIANTS},
        cpu={v: median(v, "cpu_us") for v in VARIANTS},
        p50={v: statistics.median(xs) for v, xs in pooled.items()},
        p99={v: percentile(xs, 99) for v, xs in pooled.items()},
        ratios={k: statistics.median(v) for k, v in per_rep.items()},
        spread={k: (min(v), max(v)) for k, v in per_rep.items()},
        run_s={v: median(v, "run_s") for v in ENGINES},
    )


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(summary: Summary, variant: str) -> tuple[str, float, bool]:
    name, limit = TARGETS[variant]
    value = summary.ratios[f"{variant}:overhead/bare"]
    return name, value, value <= limit


def gc_cell(summary: Summary, variant: str) -> str:
    return f"{summary.gc[variant]:.1f}"


def run_cell(summary: Summary, variant: str) -> str:
    return f"{summary.run_s[variant]:.2f}"


def ratio_cell(suffix: str) -> Callable[[Summary, str], str]:
    return lambda summary, variant: f"{summary.ratios[variant + suffix]:.2f}x"


def report(results: Results) -> str:
    config = results.config
    backends = list(results.reps)
    summaries = {b: summarize(results.reps[b]) for b in backends}

    def row(label: str, cell: Callable[[Summary], str]) -> list[str]:
        return [label, *(cell(summaries[b]) for b in backends)]

    def times(v: str) -> Callable[[Summary], str]:
        return lambda s: f"{s.mean[v]:.1f} / {s.p50[v]:.1f} / {s.p99[v]:.1f}"

    def minus_direct(v: str) -> Callable[[Summary], str]:
        return lambda s: f"{s.mean[v] - s.mean['direct']:.1f} / {s.p50[v] - s.p50['direct']:.1f}"

    def target(v: str) -> Callable[[Summary], str]:
        def cell(s: Summary) -> str:
            _, value, met = verdict(s, v)
            low, high = s.spread[f"{v}:overhead/bare"]
            return f"{value:.2f}x ({low:.2f}-{high:.2f}) {'met' if met else 'MISSED'}"

        return cell

    def each(label: str, variants: Sequence[str], cell: Callable[[Summary, str], str]) -> list[str]:
        return row(label, lambda s: " / ".join(cell(s, v) for v in variants))

    rows = [
        ["", *backends],
        row("bare ping-pong b0, µs/round trip", lambda s: f"{s.mean['bare']:.1f}"),
        row("direct adapter calls, µs/stage: mean / p50 / p99", times("direct")),
        row("engine, tracing off, µs/stage: mean / p50 / p99", times("engine_off")),
        row("engine, SDK spans, batch: mean / p50 / p99", times("engine_batch")),
        row("(info) SDK spans, in-memory: mean / p50 / p99", times("engine_memory")),
        row("engine off - direct, µs/stage: mean / p50", minus_direct("engine_off")),
        row("engine batch - direct, µs/stage: mean / p50", minus_direct("engine_batch")),
        row("(info) memory - direct, µs/stage: mean / p50", minus_direct("engine_memory")),
        each("in GC, µs/stage: direct / off / batch / memory", ("direct", *ENGINES), gc_cell),
        each("off / direct, batch / direct, memory / direct", ENGINES, ratio_cell("/direct")),
        each("off / bare, batch / bare, memory / bare", ENGINES, ratio_cell("/bare")),
        row("direct / bare", lambda s: f"{s.ratios['direct/bare']:.2f}x"),
        row("T3b: (off - direct) / bare <= 1.5x", target("engine_off")),
        row("T3:  (batch - direct) / bare <= 2.75x", target("engine_batch")),
        row("(info) (memory - direct) / bare", target("engine_memory")),
        each("the 3 ratios on process CPU time", ENGINES, ratio_cell(":cpu_overhead/bare")),
        each("Kitchen.run wall time, s: off / batch / memory", ENGINES, run_cell),
    ]
    env = results.environment
    out = [
        f"engine_bench: {config.steps} timed steps = {2 * config.steps} timed stages per run "
        f"(after {config.warmup} warm-up steps), {config.reps} reps, "
        f"backends {', '.join(backends)}",
        "  " + "; ".join(f"{k} {v}" for k, v in env.items()),
        "",
        table(rows),
        "",
        "A stage: from the start of one stage body to the start of the next (its work and "
        "the engine around it).",
        "mean: over the timed stages of a rep, median over reps; p50/p99: every timed stage "
        "of every rep.",
        "Target ratio per rep = (engine mean µs/stage - direct mean µs/stage) / bare mean "
        "µs/round trip, all from one anyio.run; shown: median (lowest-highest) over reps.",
        f"Blocking file I/O during the runs: {results.io_counts} "
        f"({'none' if not sum(results.io_counts.values()) else 'FOUND'}).",
    ]
    if results.problems:
        out.append("PROBLEMS:")
        out.extend(f"  - {p}" for p in results.problems)
    return "\n".join(out)


def to_json(results: Results) -> dict[str, Any]:
    config = results.config
    return {
        "config": {
            "steps": config.steps,
            "reps": config.reps,
            "warmup": config.warmup,
            "backends": list(config.backends),
        },
        "environment": results.environment,
        "summary": {
            backend: {
                "mean_us": s.mean,
                "p50_us": s.p50,
                "p99_us": s.p99,
                "gc_us": s.gc,
                "cpu_us": s.cpu,
                "ratios": s.ratios,
                "targets": {
                    name: {"ratio": value, "limit": TARGETS[v][1], "met": met}
                    for v in ENGINES
                    for name, value, met in [verdict(s, v)]
                },
            }
            for backend, s in ((b, summarize(r)) for b, r in results.reps.items())
        },
        "reps": [
            {
                "backend": backend,
                "rep": i,
                "variant": variant,
                "mean_us": sample.mean_us,
                "gc_us": sample.gc_us,
                "cpu_us": sample.cpu_us,
                "run_s": sample.run_s,
                "events": sample.events,
                "spans": sample.spans,
            }
            for backend, reps in results.reps.items()
            for i, samples in enumerate(reps)
            for variant, sample in samples.items()
        ],
        "io_counts": results.io_counts,
        "problems": results.problems,
    }


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    print(
        f"engine_bench: steps={config.steps} reps={config.reps} warmup={config.warmup} "
        f"backends={','.join(config.backends)}",
        flush=True,
    )
    started = perf_counter()
    results = run(config, echo=lambda line: print(line, flush=True))
    print()
    print(report(results))
    print(f"\ntotal {perf_counter() - started:.1f} s")
    if config.json_path is not None:
        config.json_path.write_text(json.dumps(to_json(results), indent=1), encoding="utf-8")
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

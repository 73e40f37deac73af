"""CPU threads of the local torch backend: torch's default count vs ``threads="auto"``, idle and
under a synthetic CPU load.

Run::

    .venv/bin/python benchmarks/threads_bench.py                 # defaults, a few minutes
    .venv/bin/python benchmarks/threads_bench.py --quick         # smoke run (no evaluation)
    .venv/bin/python benchmarks/threads_bench.py --only main --steps 372 --reps 1

Two conditions (``--condition`` picks), one after the other in one process: **idle** (whatever
else the machine runs), then **loaded**: ``--load`` busy-loop processes that this script starts
and stops (each also stops by itself after ``--load-limit`` seconds, should the script die).
In each:

1. **sizes**: the milliseconds of one training step (``forward_backward`` with cross-entropy,
   then ``optim_step``, through ``LocalTorchTrainingClient``) of models from 0.12 M to 6.4 M
   parameters, on 16 sequences of 64 random byte tokens, with 1 thread and with torch's default
   count. It shows where a second thread starts to pay: the threshold of ``"auto"``.
2. **main**: the main job, ``Kitchen.run("sl_basic", ...)`` with the recipe's defaults but
   ``max_steps=--steps`` and no run directory, on ``Adapters.local_torch`` (seed 0), with
   ``threads`` at torch's default count (what the backend used before ``"auto"``) and at
   ``"auto"``; wall seconds of the whole run, and the final training loss. The variants
   alternate, their order rotating with the repetition.

Every ratio is ``default / auto`` (or 2 threads / 1 thread): above 1, ``"auto"`` is faster.
``torch's default`` is ``torch.get_num_threads()`` at start; run without ``OMP_NUM_THREADS``,
which both sides would follow. Exit status 1 if a loaded ``"auto"`` main job took more than
``--max-collapse`` times its idle time. Importing this module has no side effects; :func:`main`
runs it. It is a benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from training_bench import discard

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from crucible_kitchen.ports import Datum

SEED = 0
ROWS, TOKENS = 16, 64
BUSY_LOOP = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int
    reps: int
    size_steps: int
    load: int
    load_limit: float
    max_collapse: float
    parts: tuple[str, ...]
    sizes: tuple[str, ...]
    evaluate: bool


# ------------------------------------------------------------------------------ the CPU load


@contextlib.contextmanager
def busy_load(processes: int, limit: float) -> Iterator[None]:
    """``processes`` busy loops for the duration of the block (each ends after ``limit`` s)."""
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(limit)]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.terminate()
        for loop in loops:
            loop.wait()


# ------------------------------------------------------------------------------ 1. sizes


def size_configs() -> dict[str, Any]:
    """The models of part 1, by name: presets and widened ones, with the byte vocabulary."""
    from crucible_kitchen.adapters.local_torch import PRESETS

    tiny, small = PRESETS["tiny"], PRESETS["small"]
    return {
        "tiny": dataclasses.replace(tiny, vocab_size=265),
        "tiny-96": dataclasses.replace(tiny, vocab_size=265, d_model=96, d_ff=256),
        "tiny-128": dataclasses.replace(tiny, vocab_size=265, d_model=128, d_ff=352, n_layers=4),
        "small": dataclasses.replace(small, vocab_size=265),
        "small-8": dataclasses.replace(small, vocab_size=265, n_layers=8),
    }


def random_batch(rows: int, tokens: int) -> list[Datum]:
    """``rows`` datums of ``tokens`` random byte tokens, every target weighted 1."""
    from crucible_kitchen.ports import Datum, ModelInput, TensorData

    generator = random.Random(SEED)
    batch = []
    for _ in range(rows):
        ids = [generator.randrange(256) for _ in range(tokens + 1)]
        inputs = {
            "target_tokens": TensorData(dtype="int64", data=tuple(ids[1:])),
            "weights": TensorData(dtype="float32", data=(1.0,) * tokens),
        }
        batch.append(Datum(model_input=ModelInput.from_ints(ids[:-1]), loss_fn_inputs=inputs))
    return batch


async def step_ms(config: Any, threads: int, steps: int) -> float:
    """Median milliseconds of one training step after one untimed step."""
    from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
    from crucible_kitchen.ports import AdamParams

    client = LocalTorchTrainingClient(model=config, seed=SEED, threads=threads)
    batch, adam = random_batch(ROWS, TOKENS), AdamParams(learning_rate=1e-3)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        backward = await client.forward_backward(batch, "cross_entropy", request_id=f"fb{step}")
        optim = await client.optim_step(adam, request_id=f"opt{step}")
        await backward.result()
        await optim.result()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


async def sizes_part(settings: Settings, default_threads: int) -> list[dict[str, Any]]:
    from crucible_kitchen.adapters.local_torch import parameter_count

    configs = size_configs()
    rows = []
    for name in settings.sizes:
        config = configs[name]
        one = await step_ms(config, 1, settings.size_steps)
        many = await step_ms(config, default_threads, settings.size_steps)
        rows.append(
            {
                "model": name,
                "parameters": parameter_count(config),
                "ms_1_thread": one,
                f"ms_{default_threads}_threads": many,
                "speedup": one / many,
            }
        )
        print(
            f"  {name:9s} {parameter_count(config) / 1e6:5.2f} M params: "
            f"1 thread {one:8.1f} ms/step, {default_threads} threads {many:8.1f} ms/step, "
            f"speed-up {one / many:5.2f}x",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------ 2. main job


async def main_job(steps: int, threads: int | str, *, evaluate: bool) -> tuple[float, float]:
    """Wall seconds and final training loss of sl_basic cut to ``steps`` steps."""
    from crucible_kitchen import Adapters, Kitchen

    config: dict[str, Any] = {"max_steps": steps}
    if not evaluate:
        config.update(eval_every=0, final_eval=False)
    start = time.perf_counter()
    adapters = Adapters.local_torch(seed=SEED, threads=threads)  # type: ignore[arg-type]
    try:
        result = await Kitchen.run("sl_basic", config, adapters=adapters, seed=SEED, run_dir=False)
    finally:
        discard(adapters)
    seconds = time.perf_counter() - start
    if result.status != "completed":
        raise RuntimeError(f"sl_basic {result.status}: {result.error}")
    return seconds, float(result.metrics["train/loss"])


async def main_part(settings: Settings, default_threads: int) -> list[dict[str, Any]]:
    variants: list[tuple[str, int | str]] = [("default", default_threads), ("auto", "auto")]
    rows = []
    for rep in range(settings.reps):
        order = variants[rep % 2 :] + variants[: rep % 2]
        row: dict[str, Any] = {"rep": rep}
        for name, threads in order:
            seconds, loss = await main_job(settings.steps, threads, evaluate=settings.evaluate)
            row[f"{name}_s"], row[f"{name}_loss"] = seconds, loss
        row["ratio"] = row["default_s"] / row["auto_s"]
        rows.append(row)
        print(
            f"  rep {rep}: default ({default_threads} threads) {row['default_s']:7.2f} s "
            f"(loss {row['default_loss']:.4f}), auto {row['auto_s']:7.2f} s "
            f"(loss {row['auto_loss']:.4f}): default/auto {row['ratio']:5.2f}x",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------ the report


def median_of(rows: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


def summary(results: dict[str, dict[str, Any]], default_threads: int) -> list[str]:
    lines = []
    if all("main" in results[c] for c in results):
        lines.append("main job, median wall seconds:")
        lines.append(f"  {'':8s} {'default':>9s} {'auto':>9s} {'default/auto':>13s}")
        for condition, parts in results.items():
            rows = parts["main"]
            lines.append(
                f"  {condition:8s} {median_of(rows, 'default_s'):9.2f} "
                f"{median_of(rows, 'auto_s'):9.2f} {median_of(rows, 'ratio'):12.2f}x"
            )
        if {"idle", "loaded"} <= results.keys():
            for variant in ("default", "auto"):
                idle = median_of(results["idle"]["main"], f"{variant}_s")
                loaded = median_of(results["loaded"]["main"], f"{variant}_s")
                lines.append(f"  loaded/idle, {variant}: {loaded / idle:.2f}x")
    lines.append(f"(default: {default_threads} threads, torch's count at start)")
    return lines


def parse(argv: Sequence[str] | None) -> tuple[Settings, str | None, tuple[str, ...]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=62, help="main job steps (2 epochs)")
    parser.add_argument("--reps", type=int, default=2, help="main job repetitions per condition")
    parser.add_argument("--size-steps", type=int, default=5, help="timed steps per model size")
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes when loaded")
    parser.add_argument("--load-limit", type=float, default=600.0, help="seconds, at most")
    parser.add_argument("--max-collapse", type=float, default=5.0, help="loaded/idle bound")
    parser.add_argument("--only", choices=("sizes", "main"), action="append")
    parser.add_argument("--condition", choices=("idle", "loaded"), action="append")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    sizes: tuple[str, ...] = ("tiny", "tiny-96", "tiny-128", "small", "small-8")
    if args.quick:
        args.steps, args.reps, args.size_steps, sizes = 2, 1, 1, ("tiny",)
        args.load, args.load_limit, args.max_collapse = 1, 60.0, float("inf")
    settings = Settings(
        steps=args.steps,
        reps=args.reps,
        size_steps=args.size_steps,
        load=args.load,
        load_limit=args.load_limit,
        max_collapse=args.max_collapse,
        parts=tuple(args.only or ("sizes", "main")),
        sizes=sizes,
        evaluate=not args.quick,
    )
    return settings, args.json, tuple(args.condition or ("idle", "loaded"))


async def run(
    settings: Settings, conditions: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    import torch

    default_threads = torch.get_num_threads()
    await main_job(
        2, "auto", evaluate=False
    )  # warm-up: imports, the dataset, the first torch calls
    results: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        processes = settings.load if condition == "loaded" else 0
        print(f"\n## {condition} ({processes} busy-loop processes)", flush=True)
        parts: dict[str, Any] = {}
        with busy_load(processes, settings.load_limit):
            if "sizes" in settings.parts:
                print("1. training step by model size", flush=True)
                parts["sizes"] = await sizes_part(settings, default_threads)
            if "main" in settings.parts:
                print(f"2. main job: sl_basic, {settings.steps} steps", flush=True)
                parts["main"] = await main_part(settings, default_threads)
        results[condition] = parts
    return results, default_threads


def main(argv: Sequence[str] | None = None) -> int:
    settings, json_path, conditions = parse(argv)
    import torch

    print(
        f"threads_bench: Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        flush=True,
    )
    results, default_threads = anyio.run(lambda: run(settings, conditions))
    print()
    print("\n".join(summary(results, default_threads)))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if "main" in settings.parts and {"idle", "loaded"} <= results.keys():
        collapse = median_of(results["loaded"]["main"], "auto_s") / median_of(
            results["idle"]["main"], "auto_s"
        )
        if collapse > settings.max_collapse:
            print(f"FAIL: auto took {collapse:.2f}x its idle time under load", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

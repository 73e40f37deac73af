"""The cost of the Tinker wire: kitchen SFT through ``kitchen serve --tinker`` against the same
training in process, and how pipelining across the wire hides it.

Run::

    .venv/bin/python benchmarks/tinker_bench.py                 # tiny and small, depths 1-8
    .venv/bin/python benchmarks/tinker_bench.py --quick         # a smoke run of a few seconds
    .venv/bin/python benchmarks/tinker_bench.py --json out.json

What it measures:

1. ``sft``: ``sl_basic`` (LoRA rank 8, no evaluation, no checkpoints until the end) once on
   ``adapters="local_torch"`` and once on ``adapters="tinker"`` against ``kitchen serve
   --tinker`` started as a separate process on 127.0.0.1, for each ``--models`` preset. The
   rate is steps over the time between the first and the last step event (the steady state:
   model creation and the final save are left out). Reported: steps/s of each and their
   ratio (targets: >= 0.8 on ``tiny``, >= 0.95 on a model whose step takes >= 50 ms).
2. ``pipelining``: one training client through the wire keeps ``depth`` ``forward``
   requests (8 sequences of 64 tokens each) in flight, for each depth in ``--depths``:
   requests per second against depth.

Both sides compute on one torch thread each (``OMP_NUM_THREADS=1``), so the server and the
client do not fight over cores. Importing this module has no side effects; :func:`main`
runs it. It is a benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crucible_kitchen import Kitchen
from crucible_kitchen.adapters.local_torch import LocalTokenizer
from crucible_kitchen.adapters.tinker import TinkerSession, TinkerTrainingClient
from crucible_kitchen.ports import Datum, ModelInput, TensorData
from crucible_kitchen.telemetry import STEP_EVENTS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crucible_kitchen.telemetry import TelemetryEvent

API_KEY = "tml-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def tinker_server(root: Path) -> Iterator[str]:
    """``kitchen serve --tinker`` in a child process; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "crucible_kitchen.cli", "serve", "--tinker"]
    command += ["--port", str(port), "--root", str(root), "--api-key", API_KEY]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=1):
                    break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("kitchen serve --tinker did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        child.wait(60)


async def sft_rate(model: str, steps: int, adapters: str) -> float:
    """Steady-state steps/s of ``sl_basic`` on ``model`` through ``adapters``."""
    stamps: list[float] = []

    def on_event(event: TelemetryEvent) -> None:
        if isinstance(event, STEP_EVENTS):
            stamps.append(time.perf_counter())

    config = {
        "model": model,
        "lora_rank": 8,
        "max_steps": steps,
        "batch_size": 8,
        "eval_every": 0,
        "save_every": 0,
        "final_eval": False,
        "register_model": False,
    }
    with tempfile.TemporaryDirectory() as run_dir:
        result = await Kitchen.run(
            "sl_basic", config, adapters=adapters, seed=0, run_dir=run_dir, telemetry=[on_event]
        )
    if result.status != "completed":
        raise RuntimeError(f"sl_basic on {adapters}: {result.status} {result.error}")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


async def pipelining(url: str, depths: list[int], requests: int) -> dict[int, float]:
    """``forward`` requests per second through the wire with ``depth`` of them in flight."""
    tokenizer = LocalTokenizer.byte()
    client = TinkerTrainingClient(
        TinkerSession(base_url=url, api_key=API_KEY),
        base_model="tiny",
        lora_rank=8,
        seed=0,
        tokenizer=tokenizer,
    )
    tokens = tuple(tokenizer.encode("the quick brown fox jumps over the lazy dog " * 2)[:65])
    datum = Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tokens[1:]),
            "weights": TensorData(dtype="float32", data=(1.0,) * (len(tokens) - 1)),
        },
    )
    batch = [datum] * 8
    await (await client.forward(batch, "cross_entropy")).result()  # creates the model
    rates = {}
    for depth in depths:
        in_flight = [await client.forward(batch, "cross_entropy") for _ in range(depth)]
        start = time.perf_counter()
        for _ in range(requests):
            await in_flight.pop(0).result()
            in_flight.append(await client.forward(batch, "cross_entropy"))
        for future in in_flight:
            await future.result()
        rates[depth] = (requests + depth) / (time.perf_counter() - start)
    return rates


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "sft": {},
    }
    with tempfile.TemporaryDirectory() as root, tinker_server(Path(root)) as url:
        os.environ["TINKER_BASE_URL"] = url
        os.environ["TINKER_API_KEY"] = API_KEY
        for model in args.models:
            local = await sft_rate(model, args.steps, "local_torch")
            remote = await sft_rate(model, args.steps, "tinker")
            report["sft"][model] = {
                "local_steps_per_s": round(local, 2),
                "tinker_steps_per_s": round(remote, 2),
                "local_step_ms": round(1000 / local, 1),
                "ratio": round(remote / local, 3),
            }
            print(f"sft {model}: {report['sft'][model]}", flush=True)
        rates = await pipelining(url, args.depths, args.requests)
        report["pipelining"] = {str(depth): round(rate, 1) for depth, rate in rates.items()}
        print(f"pipelining (forward requests/s by depth): {report['pipelining']}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=40, help="sl_basic steps per run")
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=100, help="requests per depth")
    parser.add_argument("--quick", action="store_true", help="tiny only, few steps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.depths, args.requests = ["tiny"], 6, [1, 4], 10
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Data-parallel training steps per second: 1 vs 2 processes, the kitchen vs plain DDP and FSDP.

Run::

    .venv/bin/python benchmarks/ddp_bench.py              # defaults, about 75 s
    .venv/bin/python benchmarks/ddp_bench.py --quick      # smoke run (2 processes only)
    .venv/bin/python benchmarks/ddp_bench.py --steps 40 --batch 32 --width 128
    .venv/bin/python benchmarks/ddp_bench.py --repeat 3   # medians of 3 interleaved rounds

Each variant runs under ``torchrun --standalone`` (gloo on the CPU, or nccl with
``--device cuda``) with ``--nproc`` processes, on one model and one global batch of
``--batch`` sequences of 64 random tokens, for ``--steps`` timed steps after 3 untimed ones:

- **kitchen**: ``LocalTorchTrainingClient`` (``forward_backward`` with cross-entropy, then
  ``optim_step``): each rank computes its slice of the global batch, the gradients are summed
  over the ranks during the backward pass (bucketed all-reduces, as DDP does), the outputs
  are gathered in one all-gather, and ``forward_backward`` first agrees across ranks;
- **plain**: a hand-written loop on the same model, the same loss and the same global batch:
  ``torch.nn.parallel.DistributedDataParallel``, each rank on its slice, AdamW;
- **kitchen-fsdp** and **plain-fsdp** (``--nproc`` processes only): the same two with the
  parameters sharded by FSDP2 (``parallelism="fsdp"``; ``fully_shard`` on each block and on
  the model, gradients reduce-scattered as sums, as the kitchen does).

It prints steps per second of each (rank 0's wall clock; with ``--repeat N``, the median of N
rounds that each run every variant once) and rank 0's process CPU time per step (its threads
together: less sensitive to other processes' load, blind to waiting), and the ratios
``2 processes / 1`` and ``kitchen / plain`` (also on CPU time). On a machine with fewer free
cores than processes the 2-process figures measure contention, not scaling. Importing this
module has no side effects; :func:`main` runs it. It is a benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

WARMUP = 3
SEQ_LEN = 64
VARIANTS = ("kitchen", "plain", "kitchen-fsdp", "plain-fsdp")


def _config(width: int, device: str) -> Any:
    from crucible_kitchen.adapters.local_torch import ModelConfig

    return ModelConfig(
        vocab_size=512,
        d_model=width,
        n_layers=2,
        n_heads=4,
        d_ff=width * 4,
        max_seq_len=SEQ_LEN + 1,
        device=device,
    )


def _tokens(batch: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(256) for _ in range(SEQ_LEN + 1)] for _ in range(batch)]


async def _kitchen(args: argparse.Namespace) -> tuple[float, float]:
    from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient
    from crucible_kitchen.ports import AdamParams, Datum, ModelInput, TensorData

    client = LocalTorchTrainingClient(
        model=_config(args.width, args.device),
        seed=0,
        threads=1,
        parallelism="fsdp" if args.worker == "kitchen-fsdp" else "ddp",
    )
    data = [
        Datum(
            model_input=ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
                "weights": TensorData(dtype="float32", data=(1.0,) * SEQ_LEN),
            },
        )
        for tokens in _tokens(args.batch)
    ]
    adam = AdamParams(learning_rate=1e-3)
    start = cpu = 0.0
    for step in range(WARMUP + args.steps):
        if step == WARMUP:
            start, cpu = time.perf_counter(), time.process_time()
        fb = await client.forward_backward(data, "cross_entropy", request_id=f"fb{step}")
        opt = await client.optim_step(adam, request_id=f"opt{step}")
        await fb.result()
        await opt.result()
    return time.perf_counter() - start, time.process_time() - cpu


async def _initial_model(config: Any) -> Any:
    """The kitchen's model with its initial weights (seed 0), trainable again."""
    from crucible_kitchen.adapters.local_torch import (
        LocalTorchSamplingClient,
        LocalTorchTrainingClient,
    )

    client = LocalTorchTrainingClient(model=config, seed=0, distributed=None)
    saved = await client.save_weights_for_sampler("initial", request_id="initial")
    sampler = await client.create_sampling_client((await saved.result()).path)
    assert isinstance(sampler, LocalTorchSamplingClient)
    return sampler.model.requires_grad_(True).train()


def _plain(args: argparse.Namespace) -> tuple[float, float]:
    import anyio
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = _config(args.width, str(device))
    model = anyio.run(_initial_model, config)
    if args.worker == "plain-fsdp":
        units = [fully_shard(block) for block in model.layers]
        units.append(fully_shard(model))
        for unit in units:  # sums (gloo has no averaging reduce-scatter), as the kitchen does
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    else:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    rows = _tokens(args.batch)
    mine = rows[len(rows) * rank // world : len(rows) * (rank + 1) // world]
    batch = torch.tensor(mine, device=device)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    start = cpu = 0.0
    for step in range(WARMUP + args.steps):
        if step == WARMUP:
            start, cpu = time.perf_counter(), time.process_time()
        logits = model(inputs)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        loss = -logprobs.gather(-1, targets[..., None]).sum()
        torch.autograd.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)
    return time.perf_counter() - start, time.process_time() - cpu


def _worker(args: argparse.Namespace) -> None:
    import anyio

    kitchen = args.worker.startswith("kitchen")
    elapsed, cpu = anyio.run(_kitchen, args) if kitchen else _plain(args)
    if int(os.environ.get("RANK", "0")) == 0:
        figures = {"steps_per_s": args.steps / elapsed, "cpu_ms": 1e3 * cpu / args.steps}
        print(json.dumps(figures), flush=True)
    os._exit(0)  # no process-group teardown to wait for


def _launch(args: argparse.Namespace, variant: str, nproc: int) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        __file__,
        f"--worker={variant}",
        f"--steps={args.steps}",
        f"--batch={args.batch}",
        f"--width={args.width}",
        f"--device={args.device}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    figures = json.loads(lines[-1])
    return float(figures["steps_per_s"]), float(figures["cpu_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--width", type=int, default=128, help="d_model")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nproc", type=int, default=2, help="processes of the wide variant")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every variant")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker(args)
        return
    counts: tuple[int, ...] = (1, args.nproc)
    if args.quick:  # every variant once, at --nproc processes only (each launch takes seconds)
        args.steps, args.batch, args.width = 2, 4, 32
        counts = (args.nproc,)
    jobs = [
        (variant, nproc)
        for nproc in counts
        for variant in VARIANTS
        if nproc > 1 or not variant.endswith("fsdp")  # FSDP shards over 2 or more ranks
    ]
    rates: dict[tuple[str, int], list[float]] = {job: [] for job in jobs}
    cpu_ms: dict[tuple[str, int], list[float]] = {job: [] for job in jobs}
    for _ in range(args.repeat):  # rounds of every job, so that a load change hits them all
        for variant, nproc in jobs:
            rate, cpu_time = _launch(args, variant, nproc)
            rates[variant, nproc].append(rate)
            cpu_ms[variant, nproc].append(cpu_time)
    figures = {job: statistics.median(values) for job, values in rates.items()}
    cpu = {job: statistics.median(values) for job, values in cpu_ms.items()}
    print(
        f"model d_model={args.width} n_layers=2, global batch {args.batch} x {SEQ_LEN} tokens, "
        f"{args.steps} steps, device {args.device}, median of {args.repeat} round(s)"
    )
    for (variant, nproc), rate in figures.items():
        print(
            f"  {variant:12s} {nproc} process(es): {rate:7.2f} steps/s, "
            f"rank 0 CPU {cpu[variant, nproc]:6.1f} ms/step"
        )
    for variant in ("kitchen", "plain"):
        if (variant, 1) in figures:
            ratio = figures[variant, args.nproc] / figures[variant, 1]
            print(f"  {variant:12s} {args.nproc} / 1 processes: {ratio:.2f}x")
    pairs = [(f"DDP at {nproc} process(es)", "", nproc) for nproc in counts]
    pairs.append((f"FSDP at {args.nproc} processes", "-fsdp", args.nproc))
    for label, suffix, nproc in pairs:
        kitchen, plain = (f"kitchen{suffix}", nproc), (f"plain{suffix}", nproc)
        pairs_per_round = zip(rates[kitchen], rates[plain], strict=True)
        rounds = ", ".join(f"{mine / theirs:.2f}" for mine, theirs in pairs_per_round)
        print(
            f"  kitchen / plain {label}: {figures[kitchen] / figures[plain]:.2f}x "
            f"(on rank 0's CPU time: {cpu[plain] / cpu[kitchen]:.2f}x; rounds: {rounds})"
        )


if __name__ == "__main__":
    main()

"""Training-step and rollout throughput of the local torch backend beside plain PyTorch loops.

Run::

    .venv/bin/python benchmarks/gpu_bench.py                       # on a GPU: base and large
    .venv/bin/python benchmarks/gpu_bench.py --model-dir path/to/hf-model
    .venv/bin/python benchmarks/gpu_bench.py --cpu-smoke           # tiny, a few steps (CI)
    .venv/bin/python benchmarks/gpu_bench.py --quick               # the same as --cpu-smoke

1. **Training step** at ``--batch`` x ``--seq`` tokens (16 x 1024 by default; every token
   weighted, loss ``cross_entropy``, AdamW), per preset (``--presets``, default ``base large``)
   and for ``--model-dir`` (the architecture of its ``config.json`` with random weights:
   throughput does not depend on the weights' values). Variants, in one process:

   - ``plain eager`` / ``plain compiled``: a hand-written loop on the same model
     (``logits.float()`` -> ``F.cross_entropy`` over (positions, vocabulary),
     ``loss.backward()``, AdamW fused on CUDA), eager and under ``torch.compile``;
   - ``backend``: the backend's ``Trainer`` (``forward(backward=True)`` + ``optim_step``) with
     the default settings; ``backend fast``: ``loss_chunk=--loss-chunk``; ``backend compiled``:
     the same plus ``compile=True``; ``backend mixed``: float32 weights under bf16 autocast
     (a float32 model, so compare it with itself, not with the bf16 plain loop).

   Figures: tokens/s (median of ``--steps`` timed steps after ``--warmup``), the ratio to
   the plain loop of the same mode, and MFU = 6 x parameters x tokens/s / ``--peak-tflops``.
   Deterministic CUDA kernels are switched on last, process-wide, for ``backend
   deterministic`` (their cost).
2. **Rollouts**: ``--requests`` concurrent ``sample`` requests of ``--samples`` samples x
   ``--new-tokens`` tokens each, prompts of mixed lengths (``--prompt-lengths``), temperature 1,
   through the sampling client with ``max_batch=1`` (one request at a time: the behaviour
   before batching across requests) and with ``max_batch=--max-batch`` (continuous batching),
   beside a plain batched decode loop (all samples of all requests in one batch over the
   model's KV cache, prompts cut to the shortest length). Figure: generated tokens/s.

Prints one line per measurement; ``--json PATH`` writes them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import torch
import torch.nn.functional as F

from crucible_kitchen.adapters.local_torch import (
    LocalTokenizer,
    LocalTorchSamplingClient,
    ModelConfig,
    parameter_count,
)
from crucible_kitchen.adapters.local_torch._config import enable_determinism, preset
from crucible_kitchen.adapters.local_torch._hf_checkpoint import read_hf_model
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._trainer import StepOptions, Trainer
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, SamplingParams, TensorData

if TYPE_CHECKING:
    from collections.abc import Callable

ADAM = AdamParams(learning_rate=1e-4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(
    steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each step: ``warmup`` untimed calls each, then ``reps`` rounds in
    which every step runs once, one after the other (so machine noise hits all alike)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def config_from_model_dir(path: Path, device: str) -> ModelConfig:
    """The architecture of a Hugging Face model directory, as the backend reads it (bfloat16
    on a GPU). The weights are not loaded: their values do not change a step's speed."""
    config = read_hf_model(path, device=device).config
    return dataclasses.replace(config, dtype="bfloat16" if device != "cpu" else "float32")


def _plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor):  # type: ignore[no-untyped-def]
    def step() -> None:
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _datums(tokens: torch.Tensor) -> list[Datum]:
    rows = tokens.tolist()
    return [
        Datum(
            model_input=ModelInput.from_ints(row[:-1]),
            loss_fn_inputs={
                "target_tokens": TensorData(dtype="int64", data=tuple(row[1:])),
                "weights": TensorData(dtype="float32", data=(1.0,) * (len(row) - 1)),
            },
        )
        for row in rows
    ]


def bench_training(
    name: str, config: ModelConfig, args: argparse.Namespace
) -> list[dict[str, Any]]:
    device = torch.device(config.device)
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, args.seq))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=generator)
    data = _datums(tokens)
    fused = device.type == "cuda"
    steps: dict[str, Callable[[], None]] = {}
    references: dict[str, str | None] = {}
    for mode, compiled in [("eager", False)] + ([] if args.no_compile else [("compiled", True)]):
        model = build_model(config, seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
        runnable = torch.compile(model) if compiled else model
        steps[f"plain {mode}"] = _plain_step(runnable, optimizer, tokens.to(device))
        references[f"plain {mode}"] = None
    chunked = StepOptions(loss_chunk=args.loss_chunk)
    variants = [
        ("backend", config, StepOptions(), "plain eager"),
        ("backend fast", config, chunked, "plain eager"),
        (
            "backend mixed",
            dataclasses.replace(config, dtype="float32"),
            StepOptions(precision="mixed", loss_chunk=args.loss_chunk),
            None,
        ),
    ]
    if not args.no_compile:
        compiled_options = StepOptions(loss_chunk=args.loss_chunk, compile=True)
        variants.append(("backend compiled", config, compiled_options, "plain compiled"))
    for variant, variant_config, options, reference in variants:
        trainer = Trainer(variant_config, seed=0, lora=None, options=options)

        def step(trainer: Trainer = trainer) -> None:
            trainer.forward(data, "cross_entropy", {}, ("weights",), backward=True)
            trainer.optim_step(ADAM)

        steps[variant] = step
        references[variant] = reference
    times = _interleaved(steps, device, args.warmup, args.steps)
    return [
        _training_line(name, variant, times, references[variant], config, args) for variant in steps
    ]


def _training_line(
    name: str,
    variant: str,
    times: dict[str, list[float]],
    reference: str | None,
    config: ModelConfig,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Tokens/s (median), the median per-round ratio to ``reference``, and MFU."""
    rate = args.batch * args.seq / statistics.median(times[variant])
    ratio = None
    if reference is not None:
        pairs = zip(times[reference], times[variant], strict=True)
        ratio = round(statistics.median(ref / mine for ref, mine in pairs), 3)
    line = {
        "model": name,
        "variant": variant,
        "tokens_per_s": round(rate, 1),
        "vs_plain": ratio,
        "mfu": round(6 * parameter_count(config) * rate / (args.peak_tflops * 1e12), 4),
    }
    print(json.dumps(line), flush=True)
    return line


def _plain_decode(model: torch.nn.Module, prompts: list[list[int]], samples: int, new: int) -> int:
    """All samples of all requests in one batch, prompts cut to the shortest; tokens made."""
    shortest = min(len(prompt) for prompt in prompts)
    rows = torch.tensor([prompt[:shortest] for prompt in prompts for _ in range(samples)])
    rows = rows.to(model.device)  # type: ignore[arg-type]
    generator = torch.Generator(device=model.device).manual_seed(0)  # type: ignore[arg-type]
    with torch.inference_mode():
        cache = model.new_cache(rows.shape[0], capacity=shortest + new)  # type: ignore[operator]
        logits = model(rows, cache=cache)[:, -1]
        for _ in range(new - 1):
            probs = torch.softmax(logits.float(), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            logits = model(token, cache=cache)[:, -1]
    return rows.shape[0] * new


async def _rollout(
    sampler: LocalTorchSamplingClient, prompts: list[list[int]], args: argparse.Namespace
) -> int:
    params = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, stop=())
    futures = [
        await sampler.sample(ModelInput.from_ints(prompt), args.samples, params)
        for prompt in prompts
    ]
    made = 0
    for future in futures:
        made += sum(len(s.tokens) for s in (await future.result()).sequences)
    return made


def bench_rollouts(
    name: str, config: ModelConfig, args: argparse.Namespace
) -> list[dict[str, Any]]:
    device = torch.device(config.device)
    tokenizer = LocalTokenizer.byte()
    config = dataclasses.replace(config, vocab_size=max(config.vocab_size, tokenizer.vocab_size))
    model = build_model(config, seed=0).eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    lengths = [args.prompt_lengths[i % len(args.prompt_lengths)] for i in range(args.requests)]
    prompts = [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]
    results: list[dict[str, Any]] = []

    def record(variant: str, tokens: int, seconds: float) -> None:
        line = {
            "model": name,
            "variant": variant,
            "generated_tokens_per_s": round(tokens / seconds, 1),
        }
        results.append(line)
        print(json.dumps(line), flush=True)

    for variant, max_batch in (
        ("one request at a time (max_batch=1)", 1),
        (f"batched (max_batch={args.max_batch})", args.max_batch),
    ):
        sampler = LocalTorchSamplingClient(
            model, tokenizer, max_batch=max_batch, threads=torch.get_num_threads()
        )
        anyio.run(_rollout, sampler, prompts[:1], args)  # warm-up
        _sync(device)
        start = time.perf_counter()
        made = anyio.run(_rollout, sampler, prompts, args)
        _sync(device)
        record(variant, made, time.perf_counter() - start)
    _plain_decode(model, prompts[:1], args.samples, 2)
    start = time.perf_counter()
    made = _plain_decode(model, prompts, args.samples, args.new_tokens)
    _sync(device)
    record("plain batched decode loop", made, time.perf_counter() - start)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cpu-smoke",
        "--quick",
        action="store_true",
        dest="smoke",
        help="tiny model, a few steps, on CPU",
    )
    parser.add_argument("--presets", nargs="*", default=["base", "large"])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loss-chunk", type=int, default=4096)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H200: 989)"
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-lengths", type=int, nargs="*", default=[17, 39, 80, 160])
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--no-rollouts", action="store_true")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.presets, args.batch, args.seq = "cpu", ["tiny"], 2, 32
        args.steps, args.warmup, args.loss_chunk, args.no_compile = 2, 1, 16, True
        args.requests, args.samples, args.new_tokens, args.max_batch = 4, 2, 8, 8
        args.prompt_lengths = [3, 9]
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    models = [(name, preset(name, device=device)) for name in args.presets]
    if args.model_dir is not None:
        models.append((str(args.model_dir), config_from_model_dir(args.model_dir, device)))
    if device == "cpu":
        models = [(name, dataclasses.replace(config, dtype="float32")) for name, config in models]
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
                "torch": torch.__version__,
            }
        )
    )
    results: list[dict[str, Any]] = []
    for name, config in models:
        if not args.no_training:
            results += bench_training(name, config, args)
        if not args.no_rollouts:
            results += bench_rollouts(name, config, args)
    if device != "cpu" and not args.no_training:
        enable_determinism()  # process-wide, so last: the cost of deterministic kernels
        for name, config in models:
            wide = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, args.seq))
            tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))
            data = _datums(tokens)
            trainer = Trainer(
                wide, seed=0, lora=None, options=StepOptions(loss_chunk=args.loss_chunk)
            )

            def step(trainer: Trainer = trainer, data: list[Datum] = data) -> None:
                trainer.forward(data, "cross_entropy", {}, ("weights",), backward=True)
                trainer.optim_step(ADAM)

            times = _interleaved(
                {"backend fast deterministic": step}, torch.device(device), args.warmup, args.steps
            )
            results.append(
                _training_line(name, "backend fast deterministic", times, None, wide, args)
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

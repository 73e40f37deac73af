"""Training throughput of ``sl_basic`` on the local torch backend, beside same-run references.

Run::

    .venv/bin/python benchmarks/training_bench.py                 # defaults, about 2-3 minutes
    .venv/bin/python benchmarks/training_bench.py --quick         # smoke run, under 30 s
    .venv/bin/python benchmarks/training_bench.py --only 1 --steps 372 --reps 3 --json o.json

Three parts in one run. Every ratio is computed per repetition between variants that ran in the
same process seconds apart (their order rotates with the repetition); the summary lines give the
median of those ratios and their range.

1. **Kitchen vs a hand-written PyTorch loop.** ``Kitchen.run("sl_basic", ...)`` (the supervised
   workflow, pipelined with ``pipeline_depth=1``) on the adapters the recipe builds
   (``Adapters.local_torch``: tiny model, byte tokenizer, chatml, seed 0), ``run_dir=False``, and
   as its only telemetry handler a callback on ``training.step`` events that stamps the time.
   The config is sl_basic's with ``max_steps=--steps`` and evaluations and periodic checkpoints
   off (``eval_every=0, final_eval=False, save_every=0, register_model=False``); the final save
   (``save_final``) still runs, as in every run. The reference is a plain synchronous loop over
   the same model (``_model.build_model``, same preset and seed), the same batches (the exact
   datums the workflow sends, captured from an untimed warm-up run of the same config), the
   same learning rates (``scheduled_learning_rate``, the config's cosine schedule and warmup),
   the same optimizer (``_optim.build_optimizer`` / ``optimizer_step`` with the same
   ``AdamParams``) and the same reduction as the backend (each datum's weighted token sum, then
   their sum; ``loss.backward()``). Figures: steady-state steps/s (first to last-but-one step
   stamp) and end-to-end steps/s (kitchen: adapters and model, data, rendering, training, final
   save; loop: model and training). Loss curves: ``max |loss_kitchen - loss_loop|`` over every
   step, both computed with ``weighted_mean_nll`` from each step's target logprobs; final
   weights: ``torch.equal`` on every tensor.

   Breakdown (``--no-breakdown`` skips it): each repetition also makes one kitchen run under
   :class:`RequestTimers` (timers around the backend's request execution): per step, the
   backend's busy time and its idle time. Then the event-loop pieces of a step are timed
   alone, and the backend's step (``Trainer``) is timed beside the hand-written step,
   interleaved in one thread.
2. **Pipelining under network latency.** The local training client behind
   ``crucible_kitchen.testing.with_latency(client, --latency)``: each call and each future's
   ``result()`` is one round trip. The backend runs each request as soon as it arrives, as a
   remote one does. Variants on the same batches: the pipelined workflow
   (``Kitchen.run("sl_basic", ...)`` with ``pipeline_depth=--pipeline-depth``); a naive loop that
   awaits each call and each result before the next; and the **backend-bound limit**: the
   steps/s of the same, unwrapped client driven back to back without latency (forward_backward,
   its result, optim_step, its result), i.e. the backend's own time per step. Every variant runs
   under :class:`RequestTimers`, which also gives the fraction of the time the backend computed.
   A workflow step makes three sequential round trips (submit forward_backward, submit
   optim_step, then poll both results at once), so no client of this protocol exceeds the
   **network bound** of one step per three round trips; the **attainable limit** is the lower
   of the two bounds. Two regimes: the sl_basic tiny model, whose step computes in less time
   than one round trip (network-bound), and (unless ``--no-heavy``) the ``--heavy-model``
   preset (same data), whose step computes for longer than its round trips (backend-bound:
   the regime of a remote GPU backend, and the one the target is about).
3. **Peak memory.** Each side once more in a fresh subprocess: the kitchen run of part 1, and the
   hand-written loop on the same datums (each once, and the order, in a temporary msgpack
   file). Each reports its peak RSS (``VmHWM``) and its RSS after its imports; then runs once
   more under ``tracemalloc`` for the peak of Python-side allocations.

Threads: ``torch.set_num_threads(--threads)`` for the whole process, and ``OMP_NUM_THREADS``
set to the same, which the kitchen's ``threads="auto"`` follows in its worker thread; the same
in the children; with one thread the process is pinned to one CPU
(``--cpus``, see :func:`pin`). Event loop: asyncio (``anyio.run``). The temporary directories
the kitchen's adapters make (the checkpoints of ``save_final``, empty stores) are removed after
each run.

Exit status 1 if a kitchen run diverged from its reference (loss curve or weights not
identical). Importing this module has no side effects; :func:`main` runs it. It is a benchmark,
never a timed test.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from torch import Tensor

    from crucible_kitchen import Adapters
    from crucible_kitchen.adapters.local_torch import ModelConfig
    from crucible_kitchen.adapters.local_torch._model import Transformer
    from crucible_kitchen.ports import AdamParams, Datum
    from crucible_kitchen.telemetry import TelemetryEvent

RECIPE = "sl_basic"
SEED = 0

Batches = list[tuple["Datum", ...]]


@dataclass(frozen=True)
class Settings:
    """What one invocation measures."""

    steps: int
    reps: int
    pipe_reps: int
    threads: int
    latency: float
    pipe_steps: int
    heavy_steps: int
    heavy_model: str | None
    pipeline_depth: int
    breakdown: bool
    parts: frozenset[str]
    cpus: str


# -------------------------------------------------------------------------------- the recipe


def overrides(steps: int, *, model: str | None = None, depth: int = 1) -> dict[str, Any]:
    """The sl_basic config of every kitchen run here: ``steps`` steps, no evaluations, no
    periodic checkpoints, no registration; everything else is the recipe's default."""
    config: dict[str, Any] = {
        "max_steps": steps,
        "eval_every": 0,
        "final_eval": False,
        "save_every": 0,
        "register_model": False,
        "pipeline_depth": depth,
    }
    if model is not None:
        config["model"] = model
    return config


def sl_config(config: Mapping[str, Any]) -> Any:
    """The validated ``SlBasicConfig``."""
    from crucible_kitchen.recipes import SlBasicConfig

    return SlBasicConfig(**config)


def local_adapters(validated: Any) -> Adapters:
    """The adapters ``Kitchen.run("sl_basic", config, run_dir=False)`` builds itself."""
    from crucible_kitchen import Adapters
    from crucible_kitchen.recipes import BUILTIN_RECIPES

    recipe = next(r for r in BUILTIN_RECIPES if r.name == RECIPE)
    return Adapters.named("local_torch", seed=SEED, **recipe.options_for(validated, "local_torch"))


def new_client(validated: Any) -> Any:
    """A fresh local training client, as the recipe builds it."""
    adapters = local_adapters(validated)
    discard(adapters)  # the client makes its checkpoint directory only when it first saves
    return adapters["training_client"]


def discard(adapters: Adapters) -> None:
    """Remove the temporary directories that adapters built without a ``run_dir`` made: the
    filesystem stores' base and the training client's checkpoints (``save_final``)."""
    import shutil

    directories = [
        adapters["blob_store"].root.parent,
        getattr(adapters["training_client"], "_checkpoint_dir", None),
    ]
    for directory in directories:
        if directory is not None and Path(directory).name.startswith("crucible-kitchen-"):
            shutil.rmtree(directory, ignore_errors=True)


def model_config(validated: Any) -> ModelConfig:
    """The architecture the local training client builds (the preset, the tokenizer's vocab;
    a preset's default tokenizer is the byte one)."""
    from crucible_kitchen.adapters.local_torch import LocalTokenizer
    from crucible_kitchen.adapters.local_torch._config import preset

    vocab = LocalTokenizer.named(validated.tokenizer or "byte").vocab_size
    return preset(validated.model, vocab_size=vocab, device=validated.device)


def adam_for(validated: Any, step: int, total: int) -> AdamParams:
    """The AdamW parameters of ``step``: the schedule's learning rate and the config's Adam."""
    from crucible_kitchen.ports import AdamParams
    from crucible_kitchen.training import scheduled_learning_rate

    lr = scheduled_learning_rate(
        step,
        total,
        float(validated.learning_rate),
        schedule=validated.lr_schedule,
        warmup_steps=min(int(validated.warmup_steps), total),
    )
    adam = validated.adam
    return AdamParams(
        learning_rate=lr,
        beta1=float(adam.beta1),
        beta2=float(adam.beta2),
        eps=float(adam.eps),
        weight_decay=float(adam.weight_decay),
        grad_clip_norm=float(adam.grad_clip_norm),
    )


def mean_nll(logprobs: Sequence[Sequence[float]], batch: Sequence[Datum]) -> float:
    """The workflow's ``train/loss`` of one step (``weighted_mean_nll``)."""
    from crucible_kitchen.training import weighted_mean_nll

    weights = [[float(w) for w in d.loss_fn_inputs["weights"].data] for d in batch]
    return weighted_mean_nll(logprobs, weights)


# ------------------------------------------------------------------------------- measurements


@dataclass
class Timed:
    """One variant's run: a stamp per finished step, the wall time, the loss of each step."""

    name: str
    wall: float
    stamps: list[float]
    losses: list[float] = field(default_factory=list)

    @property
    def window(self) -> tuple[float, float, int]:
        """Start, end and steps of the steady-state window: first to last-but-one stamp.

        The last step is left out everywhere: a pipelined run awaits it in its ``drain``
        stage, with no next step to submit, so its interval is shorter than a steady one.
        """
        stamps = self.stamps[:-1] if len(self.stamps) > 2 else self.stamps
        return stamps[0], stamps[-1], len(stamps) - 1

    @property
    def steady(self) -> float:
        """Steps per second in the steady-state window."""
        start, end, steps = self.window
        return steps / (end - start) if steps > 0 else float("nan")

    @property
    def end_to_end(self) -> float:
        """Steps per second over the whole wall time."""
        return len(self.stamps) / self.wall


def med(values: Sequence[float]) -> float:
    """The median, NaN for none."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``median (min-max)``, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{med(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def max_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """``max |a_i - b_i|``; infinite when the lengths differ."""
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ------------------------------------------------------------------------------- kitchen runs


class _Recorder:
    """A training client that records the batches and Adam parameters it is sent."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.batches: Batches = []
        self.adam: list[AdamParams] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: Any,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> Any:
        self.batches.append(tuple(data))
        return await self._inner.forward_backward(
            data, loss_fn, loss_fn_config, request_id=request_id
        )

    async def optim_step(self, adam_params: AdamParams, *, request_id: str) -> Any:
        self.adam.append(adam_params)
        return await self._inner.optim_step(adam_params, request_id=request_id)


async def kitchen_run(
    config: Mapping[str, Any],
    *,
    wrap: Callable[[Any], Any] | None = None,
    name: str = "kitchen",
    keep: list[Adapters] | None = None,
) -> Timed:
    """``Kitchen.run("sl_basic", config, run_dir=False)`` stamped per finished step.

    ``wrap`` replaces the training client by ``wrap(client)``; ``keep`` receives the adapters.
    """
    from crucible_kitchen import Kitchen
    from crucible_kitchen.telemetry import CallbackHandler

    stamps: list[float] = []
    losses: list[float] = []

    def on_step(event: TelemetryEvent) -> None:
        stamps.append(time.perf_counter())
        losses.append(float(getattr(event, "loss", math.nan)))

    gc.collect()
    start = time.perf_counter()
    base = local_adapters(sl_config(config))
    try:
        adapters = base
        if wrap is not None:
            adapters = base.replace(training_client=wrap(base["training_client"]))
        result = await Kitchen.run(
            RECIPE,
            dict(config),
            adapters=adapters,
            telemetry=[CallbackHandler(on_step, events="training.step")],
            seed=SEED,
            run_dir=False,
        )
        wall = time.perf_counter() - start
    finally:
        discard(base)
    if result.status != "completed" or len(stamps) != config["max_steps"]:
        raise RuntimeError(f"{name}: the run ended {result.status} after {len(stamps)} steps")
    if keep is not None:
        keep.append(base)
    return Timed(name, wall, stamps, losses)


async def capture(steps: int) -> tuple[Batches, list[AdamParams], Timed]:
    """The exact batches and Adam parameters an sl_basic run of ``steps`` steps sends."""
    recorders: list[_Recorder] = []

    def wrap(client: Any) -> Any:
        recorders.append(_Recorder(client))
        return recorders[-1]

    timed = await kitchen_run(overrides(steps), wrap=wrap, name="capture")
    return recorders[0].batches, recorders[0].adam, timed


# --------------------------------------------------------------------- the hand-written loop


def collate(batch: Sequence[Datum]) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
    """Right-padded inputs, targets, mask and weights of a batch, and the lengths."""
    import torch

    inputs = [d.model_input.to_ints() for d in batch]
    lengths = [len(tokens) for tokens in inputs]
    width = max(lengths)
    rows: list[list[int]] = []
    targets: list[list[Any]] = []
    weights: list[list[Any]] = []
    for datum, tokens in zip(batch, inputs, strict=True):
        pad = [0] * (width - len(tokens))
        rows.append(tokens + pad)
        targets.append([*datum.loss_fn_inputs["target_tokens"].data, *pad])
        weights.append([*datum.loss_fn_inputs["weights"].data, *pad])
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return (
        torch.tensor(rows, dtype=torch.int64),
        torch.tensor(targets, dtype=torch.int64),
        mask,
        torch.tensor(weights, dtype=torch.float32),
        lengths,
    )


def new_model(cfg: ModelConfig) -> tuple[Transformer, Any]:
    """The model (seeded as the backend seeds it) and its AdamW, ready to train."""
    from crucible_kitchen.adapters.local_torch._model import build_model
    from crucible_kitchen.adapters.local_torch._optim import build_optimizer

    model = build_model(cfg, seed=SEED)
    model.train()
    return model, build_optimizer(model)


def raw_step(model: Transformer, optimizer: Any, batch: Sequence[Datum], params: Any) -> Tensor:
    """One hand-written training step; the (detached) target logprobs."""
    import torch

    from crucible_kitchen.adapters.local_torch._model import target_logprobs
    from crucible_kitchen.adapters.local_torch._optim import optimizer_step

    inputs, targets, mask, weights, lengths = collate(batch)
    logprobs = target_logprobs(model, inputs, targets, mask)
    # The backend's reduction: each datum's weighted token sum, then the sum of those.
    rows = [-(logprobs[r, :n] * weights[r, :n]).sum() for r, n in enumerate(lengths)]
    torch.stack(rows).sum().backward()  # type: ignore[no-untyped-call]
    optimizer_step(optimizer, params)
    return logprobs.detach()


def raw_loop(
    cfg: ModelConfig, batches: Batches, adam: Sequence[AdamParams]
) -> tuple[Timed, Transformer]:
    """Train a fresh model on ``batches`` with the hand-written loop; the run and the model."""
    gc.collect()
    start = time.perf_counter()
    model, optimizer = new_model(cfg)
    stamps: list[float] = []
    kept: list[Tensor] = []
    for batch, params in zip(batches, adam, strict=True):
        kept.append(raw_step(model, optimizer, batch, params))
        stamps.append(time.perf_counter())
    wall = time.perf_counter() - start
    losses = []  # outside the timed loop: the same figure as the workflow's train/loss
    for logprobs, batch in zip(kept, batches, strict=True):
        rows = logprobs.tolist()
        lengths = [d.model_input.length for d in batch]
        losses.append(mean_nll([r[:n] for r, n in zip(rows, lengths, strict=True)], batch))
    return Timed("loop", wall, stamps, losses), model


def same_weights(model: Transformer, adapters: Adapters) -> bool:
    """Whether the loop's model and the kitchen's model hold bit-identical weights."""
    import torch

    ours = model.state_dict()
    theirs = adapters["training_client"]._trainer.model.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------ latency and server models


def behind_network(
    run: Callable[[Callable[[Any], Any]], Awaitable[Timed]], latency: float
) -> Awaitable[Timed]:
    """``run(wrap)``, where ``wrap`` puts a client behind ``with_latency``."""
    from crucible_kitchen.testing import with_latency

    return run(lambda client: with_latency(client, latency))


async def direct_loop(
    client: Any, batches: Batches, adam: Sequence[AdamParams], name: str
) -> Timed:
    """Await each call and each result before the next: forward_backward, then optim_step."""
    stamps: list[float] = []
    losses: list[float] = []
    gc.collect()
    start = time.perf_counter()
    for step, (batch, params) in enumerate(zip(batches, adam, strict=True)):
        fb = await client.forward_backward(
            batch, "cross_entropy", request_id=f"{name}/{step}/forward_backward"
        )
        output = await fb.result()
        optim = await client.optim_step(params, request_id=f"{name}/{step}/optim_step")
        await optim.result()
        stamps.append(time.perf_counter())
        logprobs = [[float(v) for v in o["logprobs"].data] for o in output.loss_fn_outputs]
        losses.append(mean_nll(logprobs, batch))
    return Timed(name, time.perf_counter() - start, stamps, losses)


# ------------------------------------------------------------------------------------ part 1


async def part1(s: Settings, batches: Batches, adam: list[AdamParams], out: dict[str, Any]) -> None:
    """Kitchen vs the hand-written loop, then where the kitchen's extra time goes."""
    config = overrides(s.steps)
    validated = sl_config(config)
    cfg = model_config(validated)
    batches = batches[: s.steps]
    print(
        f"\n## 1. kitchen sl_basic vs a hand-written PyTorch loop: {s.steps} steps of "
        f"{validated.batch_size} examples, model {validated.model} (d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers), {s.threads} torch thread(s), {s.reps} reps",
        flush=True,
    )
    sides = ["kitchen", "loop", "instrumented"] if s.breakdown else ["kitchen", "loop"]
    rows: list[dict[str, Any]] = []
    for rep in range(s.reps):
        kept: list[Adapters] = []
        runs: dict[str, Timed] = {}
        split: dict[str, float] = {}
        model: Transformer | None = None
        for side in sides[rep % len(sides) :] + sides[: rep % len(sides)]:
            if side == "kitchen":
                runs[side] = await kitchen_run(config, keep=kept)
            elif side == "loop":
                runs[side], model = raw_loop(cfg, batches, adam)
            else:
                split = await instrumented_run(config)
        kitchen, loop = runs["kitchen"], runs["loop"]
        assert model is not None
        row: dict[str, Any] = {
            "kitchen": kitchen.steady,
            "loop": loop.steady,
            "kitchen_e2e": kitchen.end_to_end,
            "loop_e2e": loop.end_to_end,
            "ratio": kitchen.steady / loop.steady,
            "ratio_e2e": kitchen.end_to_end / loop.end_to_end,
            "kitchen_fixed": (kitchen.wall - s.steps / kitchen.steady) * 1e3,
            "loop_fixed": (loop.wall - s.steps / loop.steady) * 1e3,
            "max_dloss": max_delta(kitchen.losses, loop.losses),
            "same_weights": same_weights(model, kept[0]),
            "losses": kitchen.losses,
            **{f"split_{k}": v for k, v in split.items()},
        }
        if split:
            row["split_busy_vs_loop"] = split["busy"] - 1e3 / loop.steady
        rows.append(row)
        print(
            f"  rep {rep}: kitchen {row['kitchen']:.2f} steps/s (end-to-end "
            f"{row['kitchen_e2e']:.2f}), loop {row['loop']:.2f} ({row['loop_e2e']:.2f}); "
            f"ratio {row['ratio']:.3f} (end-to-end {row['ratio_e2e']:.3f}); max |dloss| "
            f"{row['max_dloss']:.3g}; weights equal: {row['same_weights']}"
            + (
                f"; instrumented: {split['kitchen']:.2f} ms/step = busy {split['busy']:.2f} + "
                f"idle {split['idle']:.2f}"
                if split
                else ""
            ),
            flush=True,
        )
    ratio, e2e = [r["ratio"] for r in rows], [r["ratio_e2e"] for r in rows]
    print(
        f"  => kitchen {med([r['kitchen'] for r in rows]):.2f} steps/s, loop "
        f"{med([r['loop'] for r in rows]):.2f} steps/s; kitchen/loop steady {spread(ratio)} "
        f"(target >= 0.9: {verdict(med(ratio) >= 0.9)}), end-to-end {spread(e2e)}"
    )
    print(
        f"  => fixed cost per run (wall minus steps at the steady rate): kitchen "
        f"{med([r['kitchen_fixed'] for r in rows]):.0f} ms (adapters, model, data, rendering, "
        f"actors, final save), loop {med([r['loop_fixed'] for r in rows]):.0f} ms (model)"
    )
    losses = rows[0]["losses"]
    print(
        f"  => loss {losses[0]:.4f} -> {losses[-1]:.4f}; max |dloss| over {s.steps} steps x "
        f"{s.reps} reps: {max(r['max_dloss'] for r in rows):.3g}; final weights bit-identical "
        f"in every rep: {all(r['same_weights'] for r in rows)}"
    )
    out["part1"] = {"steps": s.steps, "reps": rows}
    if s.breakdown:
        out["part1"]["breakdown"] = breakdown(s, rows, validated, batches, adam)


class RequestTimers:
    """Timers around the local backend's request execution, for diagnostics (this process).

    While entered, ``spans`` gets ``(start, end)`` of each request's execution in a worker
    thread (the backend is busy): two ``perf_counter()`` calls and a list append per request.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def __enter__(self) -> RequestTimers:
        from crucible_kitchen.adapters.local_torch import _requests

        execute = self._restore = _requests._Job.execute
        spans = self.spans

        def timed_execute(job: Any, port: str) -> None:
            start = time.perf_counter()
            try:
                execute(job, port)
            finally:
                spans.append((start, time.perf_counter()))

        _requests._Job.execute = timed_execute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        from crucible_kitchen.adapters.local_torch import _requests

        _requests._Job.execute = self._restore  # type: ignore[method-assign]

    def busy(self, timed: Timed) -> float:
        """The fraction of ``timed``'s steady-state window in which the backend computed."""
        start, end = timed.window[:2]
        busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)
        return busy / (end - start)


async def instrumented_run(config: Mapping[str, Any]) -> dict[str, float]:
    """A kitchen run under :class:`RequestTimers`: ms per step in the steady-state window of
    the run (``kitchen``), of the backend's execution (``busy``) and of the rest (``idle``)."""
    with RequestTimers() as timers:
        timed = await kitchen_run(config, name="instrumented")
    start, end, steps = timed.window
    busy = sum(min(b, end) - max(a, start) for a, b in timers.spans if a < end and b > start)
    kitchen = (end - start) / steps * 1e3
    busy = busy / steps * 1e3
    return {"kitchen": kitchen, "busy": busy, "idle": kitchen - busy}


def breakdown(
    s: Settings,
    rows: Sequence[Mapping[str, Any]],
    validated: Any,
    batches: Batches,
    adam: Sequence[AdamParams],
) -> dict[str, float]:
    """Where a kitchen step's time goes, in ms per step (medians over the reps)."""
    from crucible_kitchen.adapters.local_torch._trainer import Trainer
    from crucible_kitchen.ports import request_fingerprint
    from crucible_kitchen.stages._common import InFlightStep
    from crucible_kitchen.stages.builtin import AwaitSupervisedSteps

    result = {
        key: med([r[f"split_{key}"] for r in rows])
        for key in ("kitchen", "busy", "idle", "busy_vs_loop")
    }
    # Event-loop pieces of one step, each timed alone (best of 5 rounds).
    client = new_client(validated)
    batch, params = batches[len(batches) // 2], adam[0]
    output = client._trainer.forward(batch, "cross_entropy", {}, ("weights",), backward=False)
    record = InFlightStep(
        step=1,
        total_steps=s.steps,
        epoch=0,
        lr=params.learning_rate,
        data=batch,
        forward_backward=None,  # type: ignore[arg-type]  # report() reads neither future
        optim=None,  # type: ignore[arg-type]
    )
    awaiter = AwaitSupervisedSteps()

    def submit_checks() -> None:  # what forward_backward and optim_step do before queueing
        client._check_loss_inputs("forward_backward", "cross_entropy", batch)
        client._loss_config("forward_backward", "cross_entropy", None)
        request_fingerprint(
            "training_client", "forward_backward", (list(batch), "cross_entropy", [])
        )
        request_fingerprint("training_client", "optim_step", params)

    def best_ms(fn: Callable[[], object], n: int = 200) -> float:
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            rounds.append((time.perf_counter() - t0) / n * 1e3)
        return min(rounds)

    result["checks"] = best_ms(submit_checks)
    result["metrics"] = best_ms(lambda: awaiter.report(record, output))
    result["rest"] = result["idle"] - result["checks"] - result["metrics"]
    # The backend's step beside the hand-written step: interleaved, one thread, twin models.
    cfg = model_config(validated)
    trainer = Trainer(cfg, seed=SEED, lora=None)
    model, optimizer = new_model(cfg)
    times: dict[str, list[float]] = {"trainer": [], "hand": []}
    for index, (b, p) in enumerate(zip(batches, adam, strict=True)):
        for side in ("trainer", "hand") if index % 2 == 0 else ("hand", "trainer"):
            t0 = time.perf_counter()
            if side == "trainer":
                trainer.forward(b, "cross_entropy", {}, ("weights",), backward=True)
                trainer.optim_step(p)
            else:
                raw_step(model, optimizer, b, p)
            times[side].append((time.perf_counter() - t0) * 1e3)
    result["trainer_step"] = med(times["trainer"])
    result["hand_step"] = med(times["hand"])
    r = result
    print(
        f"  breakdown, ms per step, medians over the reps' instrumented runs:\n"
        f"    kitchen {r['kitchen']:.2f} = backend busy {r['busy']:.2f} + backend idle "
        f"{r['idle']:.2f} ({r['idle'] / r['kitchen']:.1%}: the backend waits for the event "
        f"loop)\n"
        f"    idle, timed alone: submission checks (datum validation, loss dry run, 2 "
        f"fingerprints) {r['checks']:.3f}, metrics (report(): train/loss via "
        f"weighted_mean_nll, token sums) {r['metrics']:.3f}; the rest (stage actors, context "
        f"forks, telemetry events, metrics store, loop iterations, waking the event loop) "
        f"{r['rest']:.3f}\n"
        f"    busy: {r['busy_vs_loop']:+.2f} vs the same rep's loop step; the backend's step "
        f"(Trainer.forward + optim_step) {r['trainer_step']:.2f} vs the hand-written step "
        f"{r['hand_step']:.2f}, interleaved in one thread "
        f"({r['trainer_step'] - r['hand_step']:+.2f}: padding from Python tuples, per-datum "
        f"losses, logprobs back to lists)"
    )
    return result


# ------------------------------------------------------------------------------------ part 2


def pipelining_variants(
    config: Mapping[str, Any], data: Batches, adam: Sequence[AdamParams], latency: float
) -> dict[str, Callable[[], Awaitable[Timed]]]:
    """Part 2's variants by name; each call runs one (a fresh client and model each time)."""
    validated = sl_config(config)

    def limit() -> Awaitable[Timed]:
        return direct_loop(new_client(validated), data, adam, "limit")

    def pipelined() -> Awaitable[Timed]:
        return behind_network(
            lambda wrap: kitchen_run(config, wrap=wrap, name="pipelined"), latency
        )

    def naive() -> Awaitable[Timed]:
        return behind_network(
            lambda wrap: direct_loop(wrap(new_client(validated)), data, adam, "naive"), latency
        )

    return {"limit": limit, "pipelined": pipelined, "naive": naive}


async def part2(s: Settings, batches: Batches, out: dict[str, Any]) -> None:
    """Pipelining under latency, in each regime."""
    regimes: list[tuple[str, str | None, int]] = [("tiny", None, s.pipe_steps)]
    if s.heavy_model is not None:
        regimes.append((s.heavy_model, s.heavy_model, s.heavy_steps))
    results: dict[str, Any] = {}
    for label, model, steps in regimes:
        config = overrides(steps, model=model, depth=s.pipeline_depth)
        validated = sl_config(config)
        data = batches[:steps]  # the data order depends on the seed, not on the model
        adam = [adam_for(validated, i, steps) for i in range(steps)]
        print(
            f"\n## 2. pipelining, model {label}: {steps} steps, {s.latency * 1e3:g} ms each "
            f"way, pipeline_depth {s.pipeline_depth}, {s.threads} torch thread(s), "
            f"{s.pipe_reps} reps",
            flush=True,
        )
        variants = pipelining_variants(config, data, adam, s.latency)
        names = list(variants)
        reps: list[dict[str, float]] = []
        losses: dict[str, list[float]] = {}
        for rep in range(s.pipe_reps):
            shift = rep % len(names)
            row: dict[str, float] = {}
            for name in names[shift:] + names[:shift]:
                with RequestTimers() as timers:
                    timed = await variants[name]()
                row[name] = timed.steady
                row[f"{name}/busy"] = timers.busy(timed)
                losses.setdefault(name, timed.losses)
            for name in names:
                row[f"{name}/limit"] = row[name] / row["limit"]
            reps.append(row)
            print(
                f"  rep {rep}: "
                + ", ".join(
                    f"{n} {row[n]:.2f}/s ({row[f'{n}/limit']:.0%}, busy {row[f'{n}/busy']:.0%})"
                    for n in names
                ),
                flush=True,
            )
        limit = med([r["limit"] for r in reps])
        network = 1 / (3 * 2 * s.latency)  # a step's three sequential round trips
        attainable = min(limit, network)
        bound = "network" if network < limit else "backend"
        print(
            f"  backend-bound limit {limit:.2f} steps/s ({1e3 / limit:.1f} ms per step, the "
            f"backend busy {med([r['limit/busy'] for r in reps]):.0%} of it); network bound "
            f"{network:.2f} steps/s (3 sequential round trips per workflow step = "
            f"{6e3 * s.latency:.0f} ms): this regime is {bound}-bound, attainable "
            f"{attainable:.2f} steps/s"
        )
        deltas = {n: max_delta(losses[n], losses["limit"]) for n in names}
        for name in names[1:]:
            ratios = [r[f"{name}/limit"] for r in reps]
            reached = [r[name] / attainable for r in reps]
            busy = [r[f"{name}/busy"] for r in reps]
            target = (
                f" (target >= 0.8: {verdict(med(ratios) >= 0.8)})" if name == "pipelined" else ""
            )
            print(
                f"  {name:10s} {med([r[name] for r in reps]):6.2f} steps/s = {spread(ratios)} of "
                f"the backend-bound limit{target}, {spread(reached)} of the attainable limit; "
                f"backend busy {spread(busy, 2)} of the time; max |dloss| vs the limit run "
                f"{deltas[name]:.3g}"
            )
        results[label] = {"steps": steps, "reps": reps, "max_dloss": deltas}
    out["part2"] = {"latency": s.latency, "depth": s.pipeline_depth, "regimes": results}


# ------------------------------------------------------------------------------------ part 3


def part3(s: Settings, batches: Batches, adam: Sequence[AdamParams], out: dict[str, Any]) -> None:
    """Peak memory of each side in a fresh subprocess."""
    import msgspec

    print(f"\n## 3. peak memory, a fresh subprocess per side, {s.steps} steps", flush=True)
    # The loop gets what the workflow holds: each rendered datum once, and the order.
    unique: dict[int, int] = {}
    data: list[Datum] = []
    order: list[list[int]] = []
    for batch in batches[: s.steps]:
        for datum in batch:
            if id(datum) not in unique:
                unique[id(datum)] = len(data)
                data.append(datum)
        order.append([unique[id(d)] for d in batch])
    payload = (data, order, list(adam[: s.steps]))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        path = Path(tmp) / "batches.msgpack"
        path.write_bytes(msgspec.msgpack.encode(payload))
        if load_batches(str(path)) != (batches[: s.steps], payload[2]):
            raise RuntimeError("the batches do not survive the trip through the file")
        for side in ("kitchen", "loop"):
            command = [sys.executable, str(Path(__file__).resolve()), "--child", side]
            command += ["--steps", str(s.steps), "--threads", str(s.threads)]
            command += ["--cpus", s.cpus]
            command += ["--batches-file", str(path)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"the {side} child failed:\n{done.stderr[-3000:]}")
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    header = f"{'peak RSS':>9s} {'RSS after imports':>18s} {'growth':>7s} {'Python peak':>12s}"
    print(f"  {'MiB':8s} {header}")
    for side, r in results.items():
        print(
            f"  {side:8s} {r['peak_mib']:9.1f} {r['imports_mib']:18.1f} "
            f"{r['peak_mib'] - r['imports_mib']:7.1f} {r['python_peak_mib']:12.2f}"
        )
    k, lp = results["kitchen"], results["loop"]
    print(
        f"  => kitchen/loop: peak RSS {k['peak_mib'] / lp['peak_mib']:.3f}, growth "
        f"{k['peak_mib'] - k['imports_mib'] - (lp['peak_mib'] - lp['imports_mib']):+.1f} MiB, "
        f"Python peak {k['python_peak_mib'] - lp['python_peak_mib']:+.2f} MiB "
        f"({k['python_peak_mib'] / lp['python_peak_mib']:.2f}x)"
    )
    out["part3"] = results


def load_batches(path: str) -> tuple[Batches, list[AdamParams]]:
    """The batches and Adam parameters part 3 writes to ``path``."""
    import msgspec

    from crucible_kitchen.ports import AdamParams, Datum

    kind = tuple[list[Datum], list[list[int]], list[AdamParams]]
    data, order, adam = msgspec.msgpack.decode(Path(path).read_bytes(), type=kind)
    return [tuple(data[i] for i in indices) for indices in order], adam


def _rss_mib() -> float:
    """The resident set size now (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return _peak_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """This process's peak resident set size (``VmHWM``).

    Not ``ru_maxrss``: on Linux it keeps the high-water mark of the process image that
    ``exec`` replaced, i.e. the parent's size at fork.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def child(side: str, steps: int, batches_file: str) -> None:
    """One side of part 3 in this fresh process; prints one JSON line.

    First the side runs once for the RSS figures; then once more under ``tracemalloc`` for
    the peak of Python allocations (torch's tensor memory is not traced).
    """
    import tracemalloc

    import anyio

    from crucible_kitchen import Kitchen  # noqa: F401  (both sides import the same modules)
    from crucible_kitchen.adapters.local_torch import _model, _optim, _training_client  # noqa: F401

    config = overrides(steps)
    cfg = model_config(sl_config(config))

    def run() -> None:
        if side == "kitchen":
            anyio.run(kitchen_run, config)
        else:
            batches, adam = load_batches(batches_file)
            raw_loop(cfg, batches, adam)

    imports = _rss_mib()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    peak = _peak_mib()
    gc.collect()
    tracemalloc.start()
    run()
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    record = {"side": side, "steps": steps, "wall": wall, "imports_mib": imports}
    print(json.dumps({**record, "peak_mib": peak, "python_peak_mib": python_peak / 2**20}))


# -------------------------------------------------------------------------------------- main


def pin(spec: str, threads: int) -> str:
    """Pin every thread of this process (and so its future threads and children) to the CPUs
    ``spec`` names; returns what it did, for the report.

    With one torch thread a training step keeps one CPU busy: the loop in its thread, the
    kitchen in its event-loop thread and its worker thread, which take turns. Pinned to one
    CPU, both sides get the same CPU; unpinned, on this shared 2-vCPU VM, the kitchen's two
    threads are exposed to whichever vCPU another tenant slows down at the time.
    """
    if not hasattr(os, "sched_setaffinity") or spec == "all" or (spec == "auto" and threads > 1):
        return "all"
    allowed = sorted(os.sched_getaffinity(0))
    wanted = {allowed[0]} if spec == "auto" else {int(cpu) for cpu in spec.split(",")}
    for task in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(task), wanted)
    return ",".join(map(str, sorted(wanted)))


def machine() -> dict[str, Any]:
    """Versions and machine facts for the report."""
    import torch

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anyio": version("anyio"),
        "crucible_kitchen": version("crucible-kitchen"),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def parse(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="training_bench.py",
        description="sl_basic on local torch vs a hand-written loop, pipelining, memory.",
    )
    add = parser.add_argument
    add("--steps", type=int, help="steps of parts 1 and 3 (default 62, quick 4)")
    add("--reps", type=int, help="part 1: repetitions (default 9, quick 1)")
    add("--pipe-reps", type=int, help="part 2: repetitions (default 3, quick 1)")
    add("--threads", type=int, default=1, help="torch threads, both sides (default 1)")
    add(
        "--cpus",
        default="auto",
        help="pin the process to these CPUs ('0', '0,1'); 'all': no pinning; 'auto' "
        "(default): the first allowed CPU with --threads 1, else no pinning",
    )
    add("--latency", type=float, default=0.020, help="part 2: seconds each way (default 0.020)")
    add("--pipe-steps", type=int, help="part 2: steps, tiny model (default 24, quick 3)")
    add("--heavy-steps", type=int, help="part 2: steps, heavy model (default 10)")
    add("--heavy-model", default="small", help="part 2: the heavy regime's preset (small)")
    add("--no-heavy", action="store_true", help="part 2: skip the heavy regime")
    add("--pipeline-depth", type=int, default=1, help="part 2: the workflow's pipeline_depth")
    add("--no-breakdown", action="store_true", help="part 1: skip the breakdown")
    add("--only", choices=("1", "2", "3"), action="append", help="run only these parts")
    add("--quick", action="store_true", help="a smoke run: few steps, 1 rep, no heavy regime")
    add("--json", help="write every figure to this file")
    add("--child", choices=("kitchen", "loop"), help=argparse.SUPPRESS)
    add("--batches-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: int | None, default: int, small: int) -> int:
        return value if value is not None else (small if quick else default)

    settings = Settings(
        steps=pick(args.steps, 62, 4),
        reps=pick(args.reps, 9, 1),
        pipe_reps=pick(args.pipe_reps, 3, 1),
        threads=args.threads,
        latency=args.latency,
        pipe_steps=pick(args.pipe_steps, 24, 3),
        heavy_steps=pick(args.heavy_steps, 10, 3),
        heavy_model=None if args.no_heavy or quick else args.heavy_model,
        pipeline_depth=args.pipeline_depth,
        breakdown=not args.no_breakdown,
        parts=frozenset(args.only or ("1", "2", "3")),
        cpus=args.cpus,
    )
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 1 if a kitchen run diverged from its reference, else 0."""
    settings, args = parse(argv)
    import anyio
    import torch

    torch.set_num_threads(settings.threads)
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)  # the kitchen's threads="auto" too
    cpus = pin(args.cpus, settings.threads)
    if args.child is not None:
        child(args.child, settings.steps, args.batches_file)
        return 0
    started = time.perf_counter()
    out: dict[str, Any] = {"machine": {**machine(), "cpus_used": cpus}, "args": vars(args)}
    print(f"training_bench: {json.dumps(out['machine'])}", flush=True)
    parts = settings.parts

    async def measure() -> tuple[Batches, list[AdamParams]]:
        needed = {"1": settings.steps, "3": settings.steps}
        needed["2"] = max(settings.pipe_steps, settings.heavy_steps)
        steps = max(needed[part] for part in parts)
        batches, sent, warm = await capture(steps)  # also the warm-up
        print(f"capture/warm-up run: {steps} steps, {warm.steady:.1f} steps/s", flush=True)
        if sent != [adam_for(sl_config(overrides(steps)), i, steps) for i in range(steps)]:
            raise RuntimeError("the workflow's Adam parameters are not the config's schedule")
        validated = sl_config(overrides(settings.steps))
        adam = [adam_for(validated, i, settings.steps) for i in range(settings.steps)]
        if "1" in parts:
            await part1(settings, batches, adam, out)
        if "2" in parts:
            await part2(settings, batches, out)
        return batches, adam

    batches, adam = anyio.run(measure)
    if "3" in parts:
        part3(settings, batches, adam, out)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    reps = out.get("part1", {}).get("reps", [])
    return 1 if any(r["max_dloss"] != 0 or not r["same_weights"] for r in reps) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

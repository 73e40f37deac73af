"""One rank of the data-parallel tests, run under ``torchrun`` (or alone, as 1 process).

``python ddp_worker.py OUT MODE [CHECKPOINT]``, by MODE:

- ``train``: the tiny model trains a few steps on one fixed global batch (the second step
  accumulates the gradients of two ``forward_backward`` requests, on two parts of the batch;
  the fourth goes through a custom loss that weighs each datum by its position in the batch,
  so that a rank back-propagating another slice's gradients would show; the fifth on one
  datum, which leaves rank 1 without a share, with clipped gradients); saves to
  ``OUT/rank<R>.pt`` the per-step ``loss:sum`` and ``grad_norm`` and the final state tensors;
- ``crash``: rank 1 raises before its second step (the others must fail with a
  ``CollectiveError``, not hang);
- ``desync``: rank 1 re-sends a request the others do not (all must raise
  ``CollectiveDesync``); ``skip``: rank 1 skips an optimizer step the others take (likewise);
- ``sample``: 5 seeded sample requests, submitted then awaited; then saves ``s0`` again, by
  another request (refused) and by the first one's id (its answer), and samples the first
  two prompts again from ``s0``; saves the samples, how many this rank drew and the outcomes;
- ``dropout``: alone, trains a model with dropout one step and saves it; under torchrun,
  loads that checkpoint (every rank must raise ``WorldSizeMismatch``);
- ``fsdp``: ``train`` with the model sharded (FSDP), saving a checkpoint ``mid`` after step
  2, then drawing greedy samples from the final weights (every rank gathers them); then, given
  a CHECKPOINT (of one process), loads it and saves the state tensors as ``loaded``;
- ``resume``: alone, loads ``OUT/checkpoints/weights/mid`` (of an ``fsdp`` run) and trains the
  remaining steps; saves to ``OUT/resumed.pt``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import torch

from crucible_kitchen.adapters.local_torch import (
    FannedOutSamplingClient,
    LocalTorchSamplingClient,
    LocalTorchTrainingClient,
    ModelConfig,
)
from crucible_kitchen.errors import (
    CollectiveError,
    InvalidRequest,
    PermanentBackendError,
    WorldSizeMismatch,
)
from crucible_kitchen.ports import (
    AdamParams,
    CustomLossOutput,
    Datum,
    ModelInput,
    SamplingParams,
    TensorData,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

STEPS = 5
ACCUMULATED = 1
MID = 2
CUSTOM = 3
GLOBAL_BATCH = 6
CONFIG = ModelConfig(
    vocab_size=300, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, device="cpu"
)


def global_batch(step: int) -> list[Datum]:
    """The same global batch on every rank: datums of several lengths (so shards pad)."""
    data = []
    for index in range(GLOBAL_BATCH):
        length = 5 + (index * 3 + step) % 9
        tokens = [(step * 31 + index * 7 + position * 13) % 256 for position in range(length)]
        data.append(
            Datum(
                model_input=ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
                    "weights": TensorData(dtype="float32", data=(1.0,) * (length - 1)),
                },
            )
        )
    return data


def weighted_loss(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
    """Negative log-likelihood with datum ``i`` weighted ``i + 1``."""
    loss = -sum((i + 1) * sum(lp.data) for i, lp in enumerate(logprobs))
    grads = tuple(
        TensorData(dtype="float32", data=(-(i + 1.0),) * len(lp.data), shape=lp.shape)
        for i, lp in enumerate(logprobs)
    )
    return CustomLossOutput(loss=loss, logprob_grads=grads)


async def sample(client: LocalTorchTrainingClient, out: Path, rank: int) -> None:
    saved = await client.save_weights_for_sampler("s0", request_id="save-s0")
    sampler = await client.create_sampling_client((await saved.result()).path)
    futures = [
        await sampler.sample(
            ModelInput.from_ints([1 + group, 2, 3]),
            2,
            SamplingParams(max_tokens=6, temperature=1.0, seed=100 + group),
            request_id=f"sample-{group}",
        )
        for group in range(5)
    ]
    samples = [[s.tokens for s in (await future.result()).sequences] for future in futures]
    refused = ""
    if isinstance(sampler, FannedOutSamplingClient):
        # Request 5 is rank 1's: only it checks it, yet every rank raises when awaiting.
        bad = await sampler.sample(ModelInput.from_ints([1]), 1, SamplingParams(max_tokens=999))
        try:
            await bad.result()
        except PermanentBackendError as exc:
            refused = str(exc)
    inner = sampler if isinstance(sampler, LocalTorchSamplingClient) else sampler.inner
    drawn = inner.counters.applied["sample"]
    try:
        await (await client.save_weights_for_sampler("s0", request_id="save-s0-again")).result()
        resaved = "saved"
    except InvalidRequest as exc:
        resaved = f"{type(exc).__name__}: {exc}"
    resent = await (await client.save_weights_for_sampler("s0", request_id="save-s0")).result()
    again = await client.create_sampling_client(resent.path)
    resampled = []
    # Each awaited before the next is submitted: rank 1 publishes the second only once it has
    # read the first, so rank 0 (which hosts the store) waits for that before it exits.
    for group in range(2):
        future = await again.sample(
            ModelInput.from_ints([1 + group, 2, 3]),
            2,
            SamplingParams(max_tokens=6, temperature=1.0, seed=100 + group),
        )
        resampled.append([s.tokens for s in (await future.result()).sequences])
    torch.save(
        {
            "samples": samples,
            "drawn": drawn,
            "refused": refused,
            "resaved": resaved,
            "resampled": resampled,
        },
        out / f"rank{rank}.pt",
    )


async def dropout(client: LocalTorchTrainingClient, rank: int) -> None:
    if client.distributed is None:
        fb = await client.forward_backward(global_batch(0), "cross_entropy", request_id="fb")
        await fb.result()
        await (await client.optim_step(AdamParams(), request_id="step")).result()
        await (await client.save_state("final", request_id="save")).result()
        return
    path = str(client.checkpoint_dir / "weights" / "final")
    try:
        await (await client.load_state(path, request_id="load")).result()
    except WorldSizeMismatch as exc:
        print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(4) from exc


async def greedy_samples(client: LocalTorchTrainingClient) -> list[tuple[int, ...]]:
    """Greedy completions of 2 prompts by the current weights (requests fan out over ranks)."""
    saved = await client.save_weights_for_sampler("final", request_id="save-sampler")
    sampler = await client.create_sampling_client((await saved.result()).path)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    futures = [
        await sampler.sample(ModelInput.from_ints([5 + prompt, 9]), 1, params)
        for prompt in range(2)
    ]
    return [(await future.result()).sequences[0].tokens for future in futures]


async def train(out: Path, mode: str) -> None:
    config = dataclasses.replace(CONFIG, dropout=0.1) if mode == "dropout" else CONFIG
    checkpoints = out / ("resumed" if mode == "resume" else "checkpoints")
    client = LocalTorchTrainingClient(
        model=config,
        seed=3,
        checkpoint_dir=checkpoints,
        parallelism="fsdp" if mode == "fsdp" else "ddp",
    )
    rank = 0 if client.distributed is None else client.distributed.rank
    if mode == "dropout":
        await dropout(client, rank)
        return
    if mode == "sample":
        await sample(client, out, rank)
        return
    adam = AdamParams(learning_rate=1e-2)
    losses = []
    norms = []
    first = 0
    if mode == "resume":
        mid = str(out / "checkpoints" / "weights" / "mid")
        await (await client.load_state(mid, request_id="load-mid")).result()
        first = MID
    try:
        for step in range(first, STEPS):
            part = 0.0  # the loss of the step's first request, when it accumulates two
            if mode == "fsdp" and step == MID:
                await (await client.save_state("mid", request_id="save-mid")).result()
            if mode == "crash" and rank == 1 and step == 1:
                raise RuntimeError("injected crash on rank 1")
            if mode == "desync" and rank == 1 and step == 1:
                # A one-sided retry: rank 1 re-runs a request the others do not.
                await (await client.optim_step(adam, request_id="extra")).result()
            if step == CUSTOM:
                fb = await client.forward_backward_custom(
                    global_batch(step), weighted_loss, request_id=f"fb-{step}"
                )
            elif step == ACCUMULATED:
                whole = global_batch(step)
                first_part = await client.forward_backward(
                    whole[:4], "cross_entropy", request_id=f"fb-{step}-a"
                )
                fb = await client.forward_backward(
                    whole[4:], "cross_entropy", request_id=f"fb-{step}"
                )
                part = (await first_part.result()).metrics["loss:sum"]
            elif step == STEPS - 1:
                one = global_batch(step)[:1]
                first_half = await client.forward_backward(
                    one, "cross_entropy", request_id="fb-one"
                )
                losses.append((await first_half.result()).metrics["loss:sum"])
                fb = await client.forward_backward_custom(one, weighted_loss, request_id="fbc-one")
                adam = AdamParams(learning_rate=1e-2, grad_clip_norm=1.0)
            else:
                fb = await client.forward_backward(
                    global_batch(step), "cross_entropy", request_id=f"fb-{step}"
                )
            losses.append(part + (await fb.result()).metrics["loss:sum"])
            if mode == "skip" and rank == 1 and step == 1:
                continue  # a one-sided skip: rank 1 leaves out a step the others take
            stepped = await client.optim_step(adam, request_id=f"step-{step}")
            norms.append((await stepped.result()).metrics["grad_norm"])
        evaluation = await client.forward(global_batch(0)[:1], "cross_entropy")
        losses.append((await evaluation.result()).metrics["loss:sum"])
        await (await client.save_state("final", request_id="save")).result()
    except CollectiveError as exc:
        print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from exc
    state = await client.state_tensors()
    samples = await greedy_samples(client) if mode in ("fsdp", "train") else None
    loaded = None
    if mode == "fsdp" and len(sys.argv) > 3:
        await (await client.load_state(sys.argv[3], request_id="load-other")).result()
        loaded = await client.state_tensors()
    name = "resumed.pt" if mode == "resume" else f"rank{rank}.pt"
    result = {
        "losses": losses,
        "norms": norms,
        "state": state,
        "samples": samples,
        "loaded": loaded,
    }
    torch.save(result, out / name)


if __name__ == "__main__":
    torch.manual_seed(0)
    anyio.run(train, Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "train")
    os._exit(0)  # no lingering process-group teardown

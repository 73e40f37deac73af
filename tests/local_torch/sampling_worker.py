"""One rank of the FSDP sampling test (``python sampling_worker.py OUT``), or one process alone;
``python sampling_worker.py OUT lost`` is the test of a lost rank instead (see :func:`lost`).

Under ``torchrun`` the model is sharded (``parallelism="fsdp"``): samplers keep shards and
generate through the sharded training model. The script samples the initial weights, trains
a step, saves sampler weights ``s1``, trains on (so the training weights are no longer the
sampler's), samples ``s1`` (from memory), saves ``s2`` and ``s3`` (``s1`` leaves memory),
samples ``s1`` again (read from the disk), and trains a last step: its loss shows that
sampling gave the training weights back. Saves ``OUT/rank<R>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import torch

from crucible_kitchen.adapters.local_torch import LocalTorchTrainingClient, ModelConfig
from crucible_kitchen.errors import CollectiveError
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, SamplingParams, TensorData

CONFIG = ModelConfig(
    vocab_size=300, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, device="cpu"
)
PROMPTS = [[5, 9], [17, 3, 200, 41], [1], [250, 7, 7, 7, 9, 11], [60, 2, 99]]


def batch(step: int) -> list[Datum]:
    data = []
    for index in range(4):
        tokens = [(step * 31 + index * 7 + position * 13) % 256 for position in range(6 + index)]
        data.append(
            Datum(
                model_input=ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
                    "weights": TensorData(dtype="float32", data=(1.0,) * (len(tokens) - 1)),
                },
            )
        )
    return data


async def train_step(client: LocalTorchTrainingClient, step: int) -> float:
    fb = await client.forward_backward(batch(step), "cross_entropy", request_id=f"fb-{step}")
    loss = (await fb.result()).metrics["loss:sum"]
    await (await client.optim_step(AdamParams(learning_rate=5e-2), request_id=f"s-{step}")).result()
    return loss


async def draw(sampler: object) -> dict[str, object]:
    """Greedy samples of every prompt (2 each, with prompt logprobs), a seeded sample at
    temperature 1, and the logprobs of two prompts; requests submitted before any await."""
    greedy = SamplingParams(max_tokens=10, temperature=0.0)
    futures = [
        await sampler.sample(  # type: ignore[attr-defined]
            ModelInput.from_ints(prompt), 2, greedy, include_prompt_logprobs=True
        )
        for prompt in PROMPTS
    ]
    seeded = await sampler.sample(  # type: ignore[attr-defined]
        ModelInput.from_ints([4, 8]), 3, SamplingParams(max_tokens=6, seed=11)
    )
    scored = [
        await sampler.compute_logprobs(ModelInput.from_ints(p))  # type: ignore[attr-defined]
        for p in PROMPTS[:2]
    ]
    responses = [await future.result() for future in futures]
    return {
        "greedy": [[s.tokens for s in response.sequences] for response in responses],
        "prompt_logprobs": [response.prompt_logprobs for response in responses],
        "seeded": [s.tokens for s in (await seeded.result()).sequences],
        "logprobs": [await future.result() for future in scored],
    }


async def lost() -> None:
    """Under DDP, rank 1 stops before it publishes the result of its sample request: rank 0,
    awaiting it, must fail with a ``CollectiveError`` (exit status 3) within the timeout."""
    client = LocalTorchTrainingClient(model=CONFIG, seed=3)
    sampler = client._initial_sampling_client()
    params = SamplingParams(max_tokens=4, seed=1)
    futures = [await sampler.sample(ModelInput.from_ints([1, 2]), 1, params) for _ in range(2)]
    assert client.distributed is not None
    if client.distributed.rank == 1:
        os._exit(0)
    try:
        await futures[1].result()
    except CollectiveError as exc:
        print(f"rank 0: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(3)


async def main(out: Path) -> None:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    client = LocalTorchTrainingClient(
        model=CONFIG,
        seed=3,
        checkpoint_dir=out / "checkpoints",
        parallelism="fsdp" if distributed else "ddp",
    )
    initial = client._initial_sampling_client()
    drawn = {"initial": await draw(initial)}
    losses = [await train_step(client, 0)]
    saved = await (await client.save_weights_for_sampler("s1", request_id="save-s1")).result()
    losses.append(await train_step(client, 1))
    sampler = await client.create_sampling_client(saved.path)
    drawn["s1"] = await draw(sampler)
    for name in ("s2", "s3"):
        await (await client.save_weights_for_sampler(name, request_id=f"save-{name}")).result()
    drawn["s1_from_disk"] = await draw(await client.create_sampling_client(saved.path))
    losses.append(await train_step(client, 2))
    rank = 0 if client.distributed is None else client.distributed.rank
    torch.save(
        {
            "drawn": drawn,
            "losses": losses,
            "state": await client.state_tensors(),
            "sampler": type(sampler).__name__,
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    if sys.argv[2:] == ["lost"]:
        anyio.run(lost)
    anyio.run(main, Path(sys.argv[1]))
    os._exit(0)  # no lingering process-group teardown

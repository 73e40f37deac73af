"""The example of docs/guides/local-training.md: real training on the local PyTorch backend.

Run it with ``python docs/examples/local_training.py`` (it needs the ``torch`` extra): ``main``
runs on asyncio, then on trio. It trains the ``tiny`` preset on the CPU, downloads nothing and
writes only to a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import torch

from crucible_kitchen import Kitchen
from crucible_kitchen.adapters.local_torch import (
    LocalTorchSamplingClient,
    LocalTorchTrainingClient,
)
from crucible_kitchen.errors import (
    CheckpointCorrupted,
    CheckpointMismatch,
    RequestExpired,
    RequestIdConflict,
    RunDirectoryError,
)
from crucible_kitchen.ports import (
    AdamParams,
    CustomLossOutput,
    Datum,
    ModelInput,
    SamplingParams,
    TensorData,
)
from crucible_kitchen.telemetry import TrainingStep

if TYPE_CHECKING:
    from collections.abc import Sequence

QUICK = {  # sl_basic cut down to a few seconds: 24 steps, no evaluation
    "max_steps": 24,
    "warmup_steps": 4,
    "save_every": 8,
    "eval_every": 0,
    "final_eval": False,
}
FINAL_WEIGHTS = "checkpoints/sampler_weights/final/model.safetensors"

TEXTS = (
    "The quick brown fox jumps over the lazy dog",
    "Pack my box with five dozen liquor jugs",
    "How vexingly quick daft zebras jump",
    "Sphinx of black quartz, judge my vow",
)


# ------------------------------------------------------------------------------------------
# 1. The sl_basic recipe: a run directory, a falling loss, stop and resume


async def run_sl_basic(run_dir: Path) -> None:
    """A short sl_basic run writes its run directory, and its loss falls."""
    result = await Kitchen.run("sl_basic", QUICK, run_id="quick", run_dir=run_dir)
    assert result.status == "completed"
    assert result.steps == 24
    for name in ("config.json", "events.jsonl", "metrics.jsonl", "summary.json", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    if importlib.util.find_spec("opentelemetry.sdk") is not None:  # the otel extra
        assert (run_dir / "traces.jsonl").is_file()
    assert (run_dir / "checkpoints/weights/step_000008/manifest.json").is_file()
    assert result.artifacts["final_sampler_weights"] == str(
        run_dir / "checkpoints/sampler_weights/final"
    )

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_mean_nll"] for row in rows]  # tinker-cookbook's key
    assert [row["step"] for row in rows] == list(range(24))
    assert sum(losses[-4:]) < sum(losses[:4])  # it learned

    record = json.loads((run_dir / "config.json").read_text())
    assert (record["recipe"], record["adapters"]) == ("sl_basic", "local_torch")
    assert record["config"]["model"] == "tiny"  # the resolved config, defaults included


async def stop_then_resume(run_dir: Path, reference: Path) -> None:
    """Stop a run as the first Ctrl-C does, resume it: the final weights are bit-identical."""
    async with Kitchen.open() as kitchen:
        run = await kitchen.start("sl_basic", QUICK, run_id="quick", run_dir=run_dir)
        async for event in run.events():  # the stream ends with the run
            if isinstance(event, TrainingStep) and event.step == 2:
                run.request_stop()  # finish this step, checkpoint, stop
        stopped = await run.result()
    assert stopped.status == "cancelled"
    assert stopped.steps < 24
    assert stopped.artifacts["last_checkpoint"].endswith(f"step_{stopped.steps:06d}")

    result = await Kitchen.resume(run_dir)  # the same run id, seed and config
    assert result.status == "completed"
    assert result.steps == 24
    assert (run_dir / FINAL_WEIGHTS).read_bytes() == (reference / FINAL_WEIGHTS).read_bytes()
    try:
        await Kitchen.resume(run_dir)
    except RunDirectoryError:
        pass  # it completed: nothing to resume
    else:
        raise AssertionError("a completed run cannot be resumed")


# ------------------------------------------------------------------------------------------
# 2. The training client directly


def next_token_datum(tokens: list[int]) -> Datum:
    """Position i of the input predicts token i + 1; every target counts in the loss."""
    targets = tokens[1:]
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(targets)),
            "weights": TensorData(dtype="float32", data=(1.0,) * len(targets)),
        },
    )


def weighted_nll(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
    """Cross-entropy as a custom loss: L = -sum(w * lp), so dL/dlp = -w."""
    loss = 0.0
    grads = []
    for datum, target_logprobs in zip(data, logprobs, strict=True):
        weights = datum.loss_fn_inputs["weights"].data
        loss -= sum(w * lp for w, lp in zip(weights, target_logprobs.data, strict=True))
        grads.append(TensorData(dtype="float32", data=tuple(-w for w in weights)))
    return CustomLossOutput(loss=loss, logprob_grads=tuple(grads))


def broken_loss(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
    raise ValueError("this loss always fails")


async def same_state(client: LocalTorchTrainingClient, expected: dict[str, torch.Tensor]) -> bool:
    """Whether the client's weights, gradients, AdamW state and RNG equal ``expected``."""
    state = await client.state_tensors()
    same = all(torch.equal(tensor, expected[name]) for name, tensor in state.items())
    return state.keys() == expected.keys() and same


async def train_directly(checkpoint_dir: Path) -> None:
    client = LocalTorchTrainingClient(model="tiny", seed=0, checkpoint_dir=checkpoint_dir)
    tokenizer = client.get_tokenizer()
    batch = [next_token_datum(tokenizer.encode(text)) for text in TEXTS]
    weight = sum(sum(datum.loss_fn_inputs["weights"].data) for datum in batch)
    adam = AdamParams(learning_rate=1e-2)

    # Submitting returns a future at once, and the request starts running: nobody awaits
    # these two, and still they run, in submission order.
    backward = await client.forward_backward(batch, "cross_entropy", request_id="fb-0")
    step = await client.optim_step(adam, request_id="step-0")
    with anyio.fail_after(30):
        while not step.done():  # noqa: ASYNC110  (polling on purpose: nothing awaits them)
            await anyio.sleep(0.01)
    first_loss = (await backward.result()).metrics["loss:sum"] / weight  # sum-reduced

    # A re-sent request gets the same future back and is not applied again; the same id
    # with another request is refused.
    again = await client.forward_backward(batch, "cross_entropy", request_id="fb-0")
    assert again is backward
    assert client.counters.applied["forward_backward"] == 1
    assert client.counters.deduplicated["forward_backward"] == 1
    try:
        await client.optim_step(AdamParams(learning_rate=0.5), request_id="step-0")
    except RequestIdConflict:
        pass
    else:
        raise AssertionError("reusing an id for another request is a conflict")

    # Pipelined: each step is submitted without waiting for the one before.
    for index in range(1, 60):
        await client.forward_backward(batch, "cross_entropy", request_id=f"fb-{index}")
        await client.optim_step(adam, request_id=f"step-{index}")
    evaluation = await (await client.forward(batch, "cross_entropy")).result()  # no gradient
    # 5.60 -> 0.55 to 0.58 per token, by the CPU's float kernels and thread count
    assert evaluation.metrics["loss:sum"] / weight < first_loss / 5

    # Cancelling a waiter does not cancel the request.
    pending = await client.forward_backward(batch, "cross_entropy", request_id="fb-cancel")
    with anyio.move_on_after(0):
        await pending.result()
    await client.drain()  # wait for everything submitted so far
    assert pending.done()
    step_output = await (await client.optim_step(adam, request_id="step-cancel")).result()
    assert step_output.metrics["gradients_applied"] == 1.0  # its gradient was there

    # A custom loss: the same value as the built-in cross_entropy. A request that failed is
    # forgotten, so its id can be sent again.
    reference = await (await client.forward(batch, "cross_entropy")).result()
    failed = await client.forward_backward_custom(batch, broken_loss, request_id="custom")
    try:
        await failed.result()
    except ValueError:
        pass
    else:
        raise AssertionError("the custom loss raised")
    retried = await client.forward_backward_custom(batch, weighted_nll, request_id="custom")
    assert retried is not failed
    custom_loss = (await retried.result()).metrics["loss:sum"]
    assert abs(custom_loss - reference.metrics["loss:sum"]) < 1e-3 * abs(custom_loss)
    await client.optim_step(adam, request_id="step-custom")

    # Sample from saved weights; a seed fixes the samples.
    saved = await (await client.save_weights_for_sampler("s1", request_id="sampler-1")).result()
    sampler = await client.create_sampling_client(saved.path)
    prompt = ModelInput.from_ints(tokenizer.encode("The quick"))
    params = SamplingParams(max_tokens=12, temperature=0.7, top_k=20, top_p=0.95, seed=7)
    first = await (await sampler.sample(prompt, 2, params)).result()
    second = await (await sampler.sample(prompt, 2, params)).result()
    assert first == second
    assert len(first.sequences) == 2
    for sequence in first.sequences:
        assert sequence.logprobs is not None
        assert len(sequence.logprobs) == len(sequence.tokens) <= 12
    greedy = SamplingParams(max_tokens=6, temperature=0.0, stop=())
    reply = (await (await sampler.sample(prompt, 1, greedy)).result()).sequences[0]
    assert tokenizer.decode(reply.tokens) == " brown"  # it has learned the first sentence
    served = LocalTorchSamplingClient.from_checkpoint(saved.path, tokenizer)  # e.g. elsewhere
    assert (await (await served.sample(prompt, 1, greedy)).result()).sequences[0] == reply

    # save_state / load_state: weights, AdamW state and dropout RNG, bit for bit.
    state = await (await client.save_state("trained", request_id="save-1")).result()
    saved_state = await client.state_tensors()
    await client.forward_backward(batch, "cross_entropy", request_id="fb-more")
    await client.optim_step(adam, request_id="step-more")
    assert not await same_state(client, saved_state)
    await (await client.load_state(state.path, request_id="load-1")).result()
    assert await same_state(client, saved_state)

    fresh = LocalTorchTrainingClient(model="tiny", seed=1, checkpoint_dir=checkpoint_dir / "b")
    await (await fresh.load_state(state.path, request_id="load-1")).result()
    assert await same_state(fresh, saved_state)

    # A damaged checkpoint, or one of another model, is refused and changes nothing.
    broken = checkpoint_dir / "broken"
    damage_copy(Path(state.path), broken)
    try:
        await (await client.load_state(str(broken), request_id="load-broken")).result()
    except CheckpointCorrupted:
        pass
    else:
        raise AssertionError("a damaged checkpoint must not load")
    assert await same_state(client, saved_state)

    lora = LocalTorchTrainingClient(model="tiny", lora=4, checkpoint_dir=checkpoint_dir / "c")
    assert (lora.get_info().is_lora, lora.get_info().lora_rank) == (True, 4)
    try:
        await (await lora.load_state(state.path, request_id="load-lora")).result()
    except CheckpointMismatch as exc:
        mismatch = exc
    else:
        raise AssertionError("a full fine-tuning checkpoint does not fit a LoRA model")
    assert any(line.startswith("lora:") for line in mismatch.differences)


def damage_copy(source: Path, target: Path) -> None:
    """Copy a checkpoint and cut its weights file short."""
    target.mkdir()
    for file in source.iterdir():
        data = file.read_bytes()
        (target / file.name).write_bytes(data[:100] if file.name == "model.safetensors" else data)


async def expire_request_ids(checkpoint_dir: Path) -> None:
    """Only the last 256 answered requests keep their results for a re-send."""
    client = LocalTorchTrainingClient(model="tiny", checkpoint_dir=checkpoint_dir)
    idle = AdamParams(learning_rate=0.0)
    futures = [await client.optim_step(idle, request_id=f"step-{i}") for i in range(257)]
    await client.drain()
    assert await client.optim_step(idle, request_id="step-256") is futures[256]
    try:
        await client.optim_step(idle, request_id="step-0")
    except RequestExpired:
        pass  # refused rather than applied twice
    else:
        raise AssertionError("step-0 was answered 257 requests ago")
    await (await client.save_state("durable", request_id="save")).result()
    applied = client.counters.applied["optim_step"]
    await (await client.optim_step(idle, request_id="step-0")).result()  # forgotten: new now
    assert client.counters.applied["optim_step"] == applied + 1


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        await run_sl_basic(root / "quick")
        await stop_then_resume(root / "stopped", reference=root / "quick")
        await train_directly(root / "direct")
        await expire_request_ids(root / "expire")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the tiny model gains nothing from more; see the guide
    for backend in ("asyncio", "trio"):
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: skipped (not installed)")
            continue
        anyio.run(main, backend=backend)
        print(f"{backend}: ok")

"""Training-step speed settings and batched sampling across concurrent requests."""

from __future__ import annotations

import anyio
import pytest
import torch

from crucible_kitchen.adapters.local_torch import (
    LocalTokenizer,
    LocalTorchTrainingClient,
    StepOptions,
)
from crucible_kitchen.adapters.local_torch._model import build_model
from crucible_kitchen.adapters.local_torch._optim import build_optimizer, optimizer_step
from crucible_kitchen.adapters.local_torch._sampling import (
    DecodeBatch,
    DecodeRequest,
    SamplingOptions,
)
from crucible_kitchen.adapters.local_torch._sampling_client import LocalTorchSamplingClient
from crucible_kitchen.adapters.local_torch._trainer import Trainer, chunked_target_logprobs
from crucible_kitchen.errors import ConfigError
from crucible_kitchen.kitchen import Adapters
from crucible_kitchen.ports import AdamParams, Datum, ModelInput, SamplingParams, TensorData

pytestmark = pytest.mark.anyio

TEXTS = ("the quick brown fox", "jumps over the lazy dog and keeps running", "hi")


def _datum(text: str) -> Datum:
    tokens = list(text.encode())
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:])),
            "weights": TensorData(dtype="float32", data=tuple(1.0 for _ in tokens[1:])),
        },
    )


# ------------------------------------------------------------------------------------------
# Settings and their validation


def test_step_options_list_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        StepOptions(precision="half", compile="yes", loss_chunk=0, microbatch_tokens=-1)  # type: ignore[arg-type]
    text = str(caught.value)
    for field in ("precision", "compile", "loss_chunk", "microbatch_tokens"):
        assert field in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sampling_max_batch": 0}, "sampling_max_batch"),
        ({"loss_chunk": 0}, "loss_chunk"),
    ],
)
def test_the_adapters_refuse_invalid_speed_settings(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Adapters.local_torch(**settings)


def test_mixed_precision_refuses_another_parameter_dtype() -> None:
    with pytest.raises(ConfigError, match="precision 'mixed'"):
        LocalTorchTrainingClient(precision="mixed", dtype="bfloat16")


def test_mixed_precision_keeps_float32_parameters_and_settings_reach_the_clients() -> None:
    adapters = Adapters.local_torch(
        model="small",
        precision="mixed",
        loss_chunk=64,
        microbatch_tokens=512,
        sampling_max_batch=4,
    )
    client = adapters["training_client"]
    assert isinstance(client, LocalTorchTrainingClient)
    assert client.config.dtype == "float32"  # the small preset's own dtype, kept for mixed
    assert client.step_options == StepOptions(
        precision="mixed", loss_chunk=64, microbatch_tokens=512
    )
    assert adapters["sampling_client"].max_batch == 4


# ------------------------------------------------------------------------------------------
# The training step


def test_chunked_target_logprobs_match_the_full_log_softmax_and_its_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=generator)
    upstream = torch.randn(37, generator=generator, dtype=torch.float64)
    full = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets[:, None])[:, 0]
    expected = torch.autograd.grad((full * upstream).sum(), (hidden, weight))
    chunked = chunked_target_logprobs(hidden, weight, targets, chunk=8)
    got = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(chunked.double(), full, rtol=1e-6, atol=1e-6)
    for mine, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-6)


async def _train(client: LocalTorchTrainingClient, steps: int = 2) -> list[float]:
    data = [_datum(text) for text in TEXTS]
    losses = []
    for step in range(steps):
        output = await (
            await client.forward_backward(data, "cross_entropy", request_id=f"fb{step}")
        ).result()
        losses.append(output.metrics["loss:sum"])
        await (
            await client.optim_step(AdamParams(learning_rate=1e-2), request_id=f"o{step}")
        ).result()
    return losses


@pytest.mark.parametrize(
    "settings",
    [
        {"loss_chunk": 7},
        {"microbatch_tokens": 80},
        {"precision": "mixed"},
        {"loss_chunk": 16, "microbatch_tokens": 64, "precision": "mixed"},
    ],
    ids=["chunked-loss", "micro-batches", "mixed", "all"],
)
async def test_each_setting_trains_like_the_reference_path_and_reproducibly(
    settings: dict[str, object],
) -> None:
    reference = await _train(LocalTorchTrainingClient(seed=3))
    first = LocalTorchTrainingClient(seed=3, **settings)  # type: ignore[arg-type]
    second = LocalTorchTrainingClient(seed=3, **settings)  # type: ignore[arg-type]
    losses = await _train(first)
    assert losses == await _train(second)
    tolerance = 3e-2 if settings.get("precision") == "mixed" else 1e-4
    assert losses == pytest.approx(reference, rel=tolerance)
    state, again = await first.state_tensors(), await second.state_tensors()
    assert all(torch.equal(state[name], again[name]) for name in state)


async def test_micro_batches_return_outputs_in_the_datums_order() -> None:
    data = [_datum(text) for text in TEXTS]
    whole = await (await LocalTorchTrainingClient(seed=1).forward(data, "cross_entropy")).result()
    split = await (
        await LocalTorchTrainingClient(seed=1, microbatch_tokens=50).forward(data, "cross_entropy")
    ).result()
    for mine, reference in zip(split.loss_fn_outputs, whole.loss_fn_outputs, strict=True):
        assert mine["logprobs"].dims == reference["logprobs"].dims
        assert mine["logprobs"].data == pytest.approx(reference["logprobs"].data, abs=1e-5)


def test_fused_adamw_takes_the_same_step_as_the_default() -> None:
    config_model = LocalTorchTrainingClient(seed=2).config
    models = [build_model(config_model, seed=2) for _ in range(2)]
    for model, fused in zip(models, (False, True), strict=True):
        optimizer = build_optimizer(model, fused=fused)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer_step(optimizer, AdamParams(learning_rate=1e-2, weight_decay=0.1))
    for default, fused in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(fused, default)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own imports under compile
def test_compile_trains_like_the_eager_model() -> None:
    config = LocalTorchTrainingClient().config
    data = [_datum(text) for text in TEXTS]
    losses = []
    for options in (StepOptions(), StepOptions(compile=True)):
        trainer = Trainer(config, seed=4, lora=None, options=options)
        output = trainer.forward(data, "cross_entropy", {}, ("weights",), backward=True)
        trainer.optim_step(AdamParams(learning_rate=1e-2))
        again = trainer.forward(data, "cross_entropy", {}, ("weights",), backward=False)
        losses.append((output.metrics["loss:sum"], again.metrics["loss:sum"]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


# ------------------------------------------------------------------------------------------
# Batched sampling


PROMPTS = ((3, 141, 59), (26, 53, 58, 97, 93, 23, 84), (62,), (64, 33, 83, 27, 95))


def _requests(model: object, seed: int = 0) -> list[DecodeRequest]:
    return [
        DecodeRequest(
            model,  # type: ignore[arg-type]
            prompt,
            SamplingOptions(max_tokens=4 + 3 * index, num_samples=1 + index % 3, seed=seed + index),
            None,
        )
        for index, prompt in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped-attention", "masked-attention"])
def test_a_request_samples_the_same_bits_alone_or_batched_with_others(grouped: bool) -> None:
    model = build_model(LocalTorchTrainingClient().config, seed=0)
    alone = []
    for request in _requests(model):
        batch = DecodeBatch(model, max_rows=8, grouped_attention=grouped)
        batch.add(request)
        alone.append(batch.run_until(request))
    together = DecodeBatch(model, max_rows=8, grouped_attention=grouped)
    requests = _requests(model)
    for request in requests:
        together.add(request)
    # The last request drives the batch; the others finished on the way, each on its own.
    last = together.run_until(requests[-1])
    assert [together.run_until(request) for request in requests[:-1]] + [last] == alone
    assert together.steps == max(request.max_tokens for request in requests) - 1
    # Both attention layouts compute the same samples, up to float rounding.
    other = DecodeBatch(model, max_rows=8, grouped_attention=not grouped)
    requests = _requests(model)
    for request in requests:
        other.add(request)
    for request, expected in zip(requests, alone, strict=True):
        result = other.run_until(request)
        assert [s.tokens for s in result.sequences] == [s.tokens for s in expected.sequences]
        for mine, reference in zip(result.sequences, expected.sequences, strict=True):
            assert mine.logprobs == pytest.approx(reference.logprobs, abs=1e-5)


def test_slots_are_reused_by_later_requests_once_their_rows_leave() -> None:
    model = build_model(LocalTorchTrainingClient().config, seed=0)
    batch = DecodeBatch(model, max_rows=4)
    short = DecodeRequest(model, (5, 6), SamplingOptions(max_tokens=2, num_samples=2, seed=1), None)
    long = DecodeRequest(model, (7,), SamplingOptions(max_tokens=6, num_samples=2, seed=2), None)
    late = DecodeRequest(
        model, (8, 9, 10), SamplingOptions(max_tokens=3, num_samples=2, seed=3), None
    )
    for request in (short, long, late):
        batch.add(request)
    batch.run_until(short)
    assert late.result is None  # waiting: the four slots were held
    assert [len(s.tokens) for s in batch.run_until(late).sequences] == [3, 3]
    assert [len(s.tokens) for s in batch.run_until(long).sequences] == [6, 6]
    reference = DecodeBatch(model, max_rows=4)
    again = DecodeRequest(
        model, (8, 9, 10), SamplingOptions(max_tokens=3, num_samples=2, seed=3), None
    )
    reference.add(again)
    assert reference.run_until(again) == late.result


def test_a_larger_request_runs_alone_and_a_full_batch_makes_others_wait() -> None:
    model = build_model(LocalTorchTrainingClient().config, seed=0)
    batch = DecodeBatch(model, max_rows=2)
    wide = DecodeRequest(model, (1, 2), SamplingOptions(max_tokens=3, num_samples=3, seed=1), None)
    narrow = DecodeRequest(model, (4,), SamplingOptions(max_tokens=3, num_samples=1, seed=2), None)
    batch.add(wide)
    batch.add(narrow)
    assert len(batch.run_until(wide).sequences) == 3
    assert narrow.result is None  # it did not fit beside the wide one
    assert len(batch.run_until(narrow).sequences) == 1
    assert batch.steps == 4


async def _sample_all(
    sampler: LocalTorchSamplingClient, prompts: tuple[tuple[int, ...], ...]
) -> list[object]:
    params = [SamplingParams(max_tokens=6 + 2 * index, seed=index) for index in range(len(prompts))]
    futures = [
        await sampler.sample(ModelInput.from_ints(list(prompt)), 2, param)
        for prompt, param in zip(prompts, params, strict=True)
    ]
    results: list[object] = [None] * len(futures)

    async def wait(index: int) -> None:
        results[index] = await futures[index].result()

    async with anyio.create_task_group() as group:
        for index in range(len(futures)):
            group.start_soon(wait, index)
    return results


async def test_concurrent_requests_are_decoded_together_with_the_samples_of_one_at_a_time() -> None:
    tokenizer = LocalTokenizer.byte()
    model = build_model(LocalTorchTrainingClient().config, seed=0).eval()
    batched = LocalTorchSamplingClient(model, tokenizer, max_batch=16)
    one_at_a_time = LocalTorchSamplingClient(model, tokenizer, max_batch=16)
    prompts = PROMPTS * 2
    together = await _sample_all(batched, prompts)
    alone = []
    for index, prompt in enumerate(prompts):
        response = await (
            await one_at_a_time.sample(
                ModelInput.from_ints(list(prompt)),
                2,
                SamplingParams(max_tokens=6 + 2 * index, seed=index),
            )
        ).result()
        alone.append(response)
    assert together == alone
    sequential_steps = sum(5 + 2 * index for index in range(len(prompts)))
    assert one_at_a_time._batch.steps == sequential_steps
    assert batched._batch.steps < sequential_steps / 2  # requests joined a running batch


def test_a_failing_stop_check_fails_only_its_own_request() -> None:
    model = build_model(LocalTorchTrainingClient().config, seed=0)
    batch = DecodeBatch(model, max_rows=8)

    def broken(generated: object) -> bool:
        raise RuntimeError("stop check failed")

    failing = DecodeRequest(model, (1, 2), SamplingOptions(max_tokens=5, seed=1), broken)
    healthy = DecodeRequest(model, (3,), SamplingOptions(max_tokens=5, seed=2), None)
    batch.add(failing)
    batch.add(healthy)
    with pytest.raises(RuntimeError, match="stop check failed"):
        batch.run_until(failing)
    assert len(batch.run_until(healthy).sequences[0].tokens) == 5


class _FailingForward(torch.nn.Module):
    """Wraps a model; its batched decode passes raise while ``fail`` is set."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.fail = True

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, tokens: torch.Tensor, **options: object) -> torch.Tensor:
        if self.fail and options.get("positions") is not None:
            raise RuntimeError("decode step failed")
        result: torch.Tensor = self.inner(tokens, **options)
        return result


def test_a_failing_decode_step_fails_the_running_requests_and_the_batch_recovers() -> None:
    model = _FailingForward(build_model(LocalTorchTrainingClient().config, seed=0))
    batch = DecodeBatch(model, max_rows=8)  # type: ignore[arg-type]
    first = DecodeRequest(model, (1, 2), SamplingOptions(max_tokens=4, seed=1), None)  # type: ignore[arg-type]
    second = DecodeRequest(model, (3,), SamplingOptions(max_tokens=4, seed=2), None)  # type: ignore[arg-type]
    batch.add(first)
    batch.add(second)
    with pytest.raises(RuntimeError, match="decode step failed"):
        batch.run_until(first)
    with pytest.raises(RuntimeError, match="decode step failed"):
        batch.run_until(second)
    model.fail = False
    later = DecodeRequest(model, (3,), SamplingOptions(max_tokens=4, seed=2), None)  # type: ignore[arg-type]
    batch.add(later)
    assert len(batch.run_until(later).sequences[0].tokens) == 4


def test_a_request_longer_than_the_cache_is_refused() -> None:
    model = build_model(LocalTorchTrainingClient().config, seed=0)
    batch = DecodeBatch(model, max_rows=2, capacity=8)
    request = DecodeRequest(model, (1, 2, 3), SamplingOptions(max_tokens=6, seed=1), None)
    with pytest.raises(ValueError, match="exceeds the cache's 8"):
        batch.add(request)
    with pytest.raises(RuntimeError, match="never added"):
        batch.run_until(request)

"""The local torch adapters: conformance, loss semantics, exactly-once ordered requests,
sampler snapshots, stop strings, determinism and bit-identical resume."""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
import torch

from crucible_kitchen.adapters.local_torch import (
    LocalRenderer,
    LocalTokenizer,
    LocalTorchSamplingClient,
    LocalTorchTrainingClient,
    LoraConfig,
    local_torch_adapters,
)
from crucible_kitchen.adapters.local_torch._config import preset
from crucible_kitchen.adapters.local_torch._model import build_model, target_logprobs
from crucible_kitchen.errors import (
    CheckpointMismatch,
    ConfigError,
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
)
from crucible_kitchen.ports import (
    PORT_PROTOCOLS,
    AdamParams,
    CustomLossOutput,
    Datum,
    LossFnType,
    ModelInput,
    SamplingParams,
    TensorData,
    check_adapter,
)
from crucible_kitchen.testing import (
    check_renderer,
    check_sampling_client,
    check_tokenizer,
    check_training_client,
)
from crucible_kitchen.training.losses import builtin_loss

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

pytestmark = pytest.mark.anyio

ADAM = AdamParams(learning_rate=1e-2)
TEXTS = ("The quick brown fox jumps", "Pack my box with five dozen jugs", "Sphinx of black quartz")
MEMORISED = "The cat sat on the mat.\n\nUser: and then?"

MakeClient: TypeAlias = "Callable[..., LocalTorchTrainingClient]"


@pytest.fixture
def make_client(tmp_path: Path) -> MakeClient:
    """Fresh tiny clients, each with its own checkpoint directory under ``tmp_path``."""
    counter = itertools.count()

    def make(**kwargs: Any) -> LocalTorchTrainingClient:
        kwargs.setdefault("model", "tiny")
        kwargs.setdefault("checkpoint_dir", tmp_path / f"client-{next(counter)}")
        return LocalTorchTrainingClient(**kwargs)

    return make


def _datum(tokenizer: LocalTokenizer, text: str, **loss_inputs: Sequence[float]) -> Datum:
    tokens = tokenizer.encode(text)
    n = len(tokens) - 1
    inputs = {"target_tokens": TensorData(dtype="int64", data=tuple(tokens[1:]))}
    inputs["weights"] = TensorData(dtype="float32", data=(1.0,) * n)
    for key, values in loss_inputs.items():
        inputs[key] = TensorData(dtype="float32", data=tuple(float(v) for v in values[:n]))
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def _data(client: LocalTorchTrainingClient) -> list[Datum]:
    return [_datum(client.get_tokenizer(), text) for text in TEXTS]


async def _train(
    client: LocalTorchTrainingClient, steps: Sequence[Sequence[Datum]], prefix: str = "s"
) -> None:
    for index, batch in enumerate(steps):
        fb = await client.forward_backward(batch, "cross_entropy", request_id=f"{prefix}{index}")
        step = await client.optim_step(ADAM, request_id=f"{prefix}{index}-opt")
        await fb.result()
        await step.result()


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different}"


# ------------------------------------------------------------------------------------------
# Structure and conformance


async def test_importing_the_adapter_package_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import crucible_kitchen.adapters.local_torch as lt\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "lt.LocalTokenizer.byte(); lt.LocalRenderer\n"
        "assert 'torch' not in sys.modules, 'tokenizer'\n"
    )
    result = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_training_client_passes_the_conformance_checks(make_client: MakeClient) -> None:
    await check_training_client(make_client)


async def test_lora_training_client_passes_the_conformance_checks(
    make_client: MakeClient,
) -> None:
    await check_training_client(lambda: make_client(lora=LoraConfig(rank=4, alpha=8.0)))


async def test_sampling_client_tokenizers_and_renderers_pass_the_conformance_checks() -> None:
    adapters = local_torch_adapters(seed=3)
    sampler = adapters["sampling_client"]
    assert isinstance(sampler, LocalTorchSamplingClient)
    await check_sampling_client(lambda: sampler)
    for tokenizer in (LocalTokenizer.byte(), LocalTokenizer.bpe()):
        check_tokenizer(lambda tokenizer=tokenizer: tokenizer)
        for name in ("chatml", "llama3", "role_colon", "qwen3", "qwen3_disable_thinking"):
            check_renderer(lambda tokenizer=tokenizer, name=name: LocalRenderer(tokenizer, name))


async def test_the_bundle_gives_a_real_adapter_for_each_of_its_ports(tmp_path: Path) -> None:
    adapters = local_torch_adapters(
        model="tiny", seed=1, lora=2, tokenizer="bpe", renderer="llama3", run_dir=tmp_path
    )
    assert set(adapters) == {
        "training_client",
        "sampling_client",
        "tokenizer",
        "renderer",
        "evaluator",
    }
    for port, adapter in adapters.items():
        check_adapter(port, adapter)
        assert port in PORT_PROTOCOLS
    training = adapters["training_client"]
    assert isinstance(training, LocalTorchTrainingClient)
    tokenizer = adapters["tokenizer"]
    assert isinstance(tokenizer, LocalTokenizer)
    assert training.get_tokenizer() is tokenizer
    info = training.get_info()
    assert info.is_lora
    assert info.lora_rank == 2
    assert info.tokenizer_id == tokenizer.tokenizer_id
    assert training.config.vocab_size == tokenizer.vocab_size == 1024
    saved = LocalTokenizer.load(tmp_path / "tokenizer.json")
    assert saved.tokenizer_id == info.tokenizer_id
    path = (await (await training.save_state("x", request_id="x")).result()).path
    assert path.startswith(str(tmp_path / "checkpoints"))


async def test_tokenizers_add_and_skip_special_tokens_and_round_trip_through_files(
    tmp_path: Path,
) -> None:
    for tokenizer in (LocalTokenizer.byte(), LocalTokenizer.bpe()):
        text = "<|im_start|>user\nhé<|im_end|>"
        plain = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.encode(text) == [tokenizer.bos_token_id, *plain]
        assert tokenizer.decode(plain) == text
        assert tokenizer.decode(plain, skip_special_tokens=True) == "user\nhé"
        assert tokenizer.special_token_id("<|im_end|>") in plain
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            tokenizer.decode([tokenizer.vocab_size])
        saved = tokenizer.save(tmp_path / f"{tokenizer.tokenizer_id}.json")
        loaded = LocalTokenizer.load(saved)
        assert loaded.tokenizer_id == tokenizer.tokenizer_id
        assert loaded.encode(text) == tokenizer.encode(text)
    assert LocalTokenizer.byte().tokenizer_id != LocalTokenizer.bpe().tokenizer_id
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a saved tokenizer"):
        LocalTokenizer.load(tmp_path / "junk.json")


async def test_bad_configurations_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model preset"):
        LocalTorchTrainingClient(model="huge")
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        LocalTorchTrainingClient(model=preset("tiny"))  # 256 ids, the byte tokenizer has 265
    with pytest.raises(ConfigError, match="rank"):
        LocalTorchTrainingClient(lora=0)
    with pytest.raises(ConfigError, match="unknown name"):
        LocalTokenizer.named("sentencepiece")


# ------------------------------------------------------------------------------------------
# Loss semantics


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("cross_entropy", {}),
        ("importance_sampling", {}),
        ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
        ("cispo", {}),
        ("dro", {"beta": 0.5}),
    ],
)
async def test_losses_are_token_sums_over_independently_computed_logprobs(
    make_client: MakeClient, loss_fn: LossFnType, config: dict[str, float]
) -> None:
    client = make_client(seed=5)
    tokenizer = client.get_tokenizer()
    data = [
        _datum(
            tokenizer,
            text,
            weights=[(i % 3) / 2 for i in range(64)],
            logprobs=[-0.5 - (i % 5) / 4 for i in range(64)],
            advantages=[(-1) ** i * (1 + i % 4) / 3 for i in range(64)],
        )
        for text in TEXTS[:2]
    ]
    output = await (await client.forward_backward(data, loss_fn, config, request_id="fb")).result()

    reference = build_model(client.config, seed=5)
    expected_total = 0.0
    for datum, datum_output in zip(data, output.loss_fn_outputs, strict=True):
        tokens = torch.tensor([datum.model_input.to_ints()])
        targets = torch.tensor([datum.loss_fn_inputs["target_tokens"].data])
        with torch.no_grad():
            logprobs = target_logprobs(reference, tokens, targets)[0]
        inputs = {k: torch.tensor(v.data) for k, v in datum.loss_fn_inputs.items()}
        expected = float(builtin_loss(loss_fn, logprobs, inputs, config))
        expected_total += expected
        got = datum_output["logprobs"].data
        torch.testing.assert_close(torch.tensor(got), logprobs, rtol=1e-5, atol=1e-5)
        assert math.isclose(datum_output["loss"].data[0], expected, rel_tol=1e-5, abs_tol=1e-5)
    assert output.loss_fn_output_type == loss_fn
    assert math.isclose(output.metrics["loss:sum"], expected_total, rel_tol=1e-5, abs_tol=1e-5)
    if loss_fn == "cross_entropy":  # the formula itself, spelled out
        by_hand = -sum(
            lp * w
            for datum, out in zip(data, output.loss_fn_outputs, strict=True)
            for lp, w in zip(
                out["logprobs"].data, datum.loss_fn_inputs["weights"].data, strict=True
            )
        )
        assert math.isclose(output.metrics["loss:sum"], by_hand, rel_tol=1e-5)


async def test_gradients_accumulate_until_the_optimizer_step(make_client: MakeClient) -> None:
    split, joint = make_client(seed=2), make_client(seed=2)
    data = _data(split)
    await (await split.forward_backward(data[:1], "cross_entropy", request_id="a")).result()
    await (await split.forward_backward(data[1:], "cross_entropy", request_id="b")).result()
    await (await joint.forward_backward(data, "cross_entropy", request_id="ab")).result()
    split_state, joint_state = await split.state_tensors(), await joint.state_tensors()
    grads = [name for name in joint_state if name.startswith("grad/")]
    assert grads
    for name in grads:
        torch.testing.assert_close(split_state[name], joint_state[name], rtol=1e-4, atol=1e-6)

    one = await (await split.optim_step(ADAM, request_id="opt")).result()
    assert one.metrics["gradients_applied"] == 2
    assert one.metrics["grad_norm"] > 0
    after = await split.state_tensors()
    assert not any(name.startswith("grad/") for name in after), "optim_step keeps gradients"
    assert not torch.equal(after["model/embed.weight"], split_state["model/embed.weight"])


async def test_forward_changes_neither_gradients_nor_weights_nor_rng(
    make_client: MakeClient,
) -> None:
    client = make_client(model=dataclasses.replace(preset("tiny", vocab_size=265), dropout=0.2))
    data = _data(client)
    await (await client.forward_backward(data[:1], "cross_entropy", request_id="fb")).result()
    before = await client.state_tensors()
    first = await (await client.forward(data, "cross_entropy")).result()
    second = await (await client.forward(data, "cross_entropy")).result()
    assert first == second  # eval mode: no dropout
    _assert_bit_identical(before, await client.state_tensors())


async def test_custom_loss_is_called_once_with_the_logprobs_and_backpropagated(
    make_client: MakeClient,
) -> None:
    custom, reference = make_client(seed=4), make_client(seed=4)
    data = _data(custom)[:2]
    calls: list[list[tuple[float, ...]]] = []

    def loss_fn(batch: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        calls.append([tuple(lp.data) for lp in logprobs])
        weights = [datum.loss_fn_inputs["weights"].data for datum in batch]
        return CustomLossOutput(
            loss=-sum(
                value * weight
                for lp, ws in zip(logprobs, weights, strict=True)
                for value, weight in zip(lp.data, ws, strict=True)
            ),
            logprob_grads=tuple(
                TensorData(dtype="float32", data=tuple(-w for w in ws)) for ws in weights
            ),
            metrics={"calls:sum": 1.0},
        )

    result = await (await custom.forward_backward_custom(data, loss_fn, request_id="c")).result()
    expected = await (
        await reference.forward_backward(data, "cross_entropy", request_id="c")
    ).result()
    assert len(calls) == 1
    assert [out["logprobs"] for out in result.loss_fn_outputs] == [
        out["logprobs"] for out in expected.loss_fn_outputs
    ]
    assert result.metrics["calls:sum"] == 1.0
    assert math.isclose(result.metrics["loss:sum"], expected.metrics["loss:sum"], rel_tol=1e-6)
    _assert_bit_identical(await custom.state_tensors(), await reference.state_tensors())


async def test_a_failing_custom_loss_has_no_effect_and_is_forgotten(
    make_client: MakeClient,
) -> None:
    client = make_client()
    data = _data(client)[:1]
    before = await client.state_tensors()

    class Boom(Exception):
        pass

    def failing(batch: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        raise Boom

    def wrong_shape(batch: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        return CustomLossOutput(loss=0.0, logprob_grads=(TensorData(dtype="float32", data=(1.0,)),))

    future = await client.forward_backward_custom(data, failing, request_id="c")
    with pytest.raises(Boom):
        await future.result()
    with pytest.raises(Boom):  # the same error, every time
        await future.result()
    bad = await client.forward_backward_custom(data, wrong_shape, request_id="w")
    with pytest.raises(InvalidRequest, match="gradient 0 has shape"):
        await bad.result()
    _assert_bit_identical(before, await client.state_tensors())
    # Forgotten: re-sending the same request_id runs it again.
    retry = await client.forward_backward_custom(data, wrong_shape, request_id="c")
    assert retry is not future
    assert client.counters.failed["forward_backward_custom"] == 2


# ------------------------------------------------------------------------------------------
# Exactly once, in order


async def test_a_resent_request_gets_the_same_future_and_is_applied_once(
    make_client: MakeClient,
) -> None:
    client, once = make_client(), make_client()
    data = _data(client)
    first = await client.forward_backward(data, "cross_entropy", request_id="fb")
    again = await client.forward_backward(data, "cross_entropy", request_id="fb")
    assert again is first
    assert await first.result() == await again.result()
    step = await client.optim_step(ADAM, request_id="opt")
    assert await step.result() == await (await client.optim_step(ADAM, request_id="opt")).result()
    assert client.counters.applied == {"forward_backward": 1, "optim_step": 1}
    assert client.counters.deduplicated == {"forward_backward": 1, "optim_step": 1}
    await _train(once, [data])
    _assert_bit_identical(await client.state_tensors(), await once.state_tensors())

    with pytest.raises(RequestIdConflict, match="fb"):
        await client.forward_backward(data[:1], "cross_entropy", request_id="fb")
    with pytest.raises(RequestIdConflict):
        await client.optim_step(AdamParams(learning_rate=0.5), request_id="opt")
    with pytest.raises(RequestIdConflict):
        await client.save_state("x", request_id="fb")


async def test_requests_apply_in_submission_order_whatever_is_awaited_first(
    make_client: MakeClient,
) -> None:
    client, sequential = make_client(), make_client()
    data = _data(client)
    futures = [
        await client.forward(data, "cross_entropy"),
        await client.forward_backward(data[:2], "cross_entropy", request_id="fb1"),
        await client.optim_step(ADAM, request_id="opt1"),
        await client.forward(data, "cross_entropy"),
        await client.forward_backward(data[2:], "cross_entropy", request_id="fb2"),
        await client.optim_step(ADAM, request_id="opt2"),
        await client.forward(data, "cross_entropy"),
    ]
    results: dict[int, object] = {}
    async with anyio.create_task_group() as group:
        for index in reversed(range(len(futures))):  # the last submitted is awaited first

            async def wait(index: int = index) -> None:
                results[index] = await futures[index].result()

            group.start_soon(wait)
    assert [method for method, _ in client.counters.log] == [
        "forward", "forward_backward", "optim_step", "forward",
        "forward_backward", "optim_step", "forward",
    ]  # fmt: skip

    expected = [await (await sequential.forward(data, "cross_entropy")).result()]
    await _train(sequential, [data[:2]], prefix="a")
    expected.append(await (await sequential.forward(data, "cross_entropy")).result())
    await _train(sequential, [data[2:]], prefix="b")
    expected.append(await (await sequential.forward(data, "cross_entropy")).result())
    assert [results[0], results[3], results[6]] == expected
    assert expected[0] != expected[1] != expected[2]


async def test_cancelled_waiters_neither_cancel_nor_repeat_their_requests(
    make_client: MakeClient,
) -> None:
    client = make_client()
    data = _data(client)[:1]
    # No wall-clock bounds: the device's worker thread is shared by the whole process and may
    # still be busy with earlier requests on a loaded machine. The request signals this loop
    # when it starts, and is held until the test releases it (always, in the finally).
    entered, release, token = anyio.Event(), threading.Event(), anyio.lowlevel.current_token()

    def slow_loss(batch: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        anyio.from_thread.run_sync(entered.set, token=token)
        release.wait()
        grads = tuple(TensorData(dtype="float32", data=(-1.0,) * len(lp.data)) for lp in logprobs)
        return CustomLossOutput(loss=1.0, logprob_grads=grads)

    try:
        slow = await client.forward_backward_custom(data, slow_loss, request_id="slow")
        queued = await client.forward_backward(data, "cross_entropy", request_id="queued")
        await entered.wait()  # running, though nobody awaits
        async with anyio.create_task_group() as group:
            group.start_soon(slow.result)
            group.start_soon(queued.result)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
        assert not slow.done()  # the waiters' cancellation reached neither request
    finally:
        release.set()
    assert (await slow.result()).metrics["loss:sum"] == 1.0
    await queued.result()
    assert client.counters.applied == {"forward_backward_custom": 1, "forward_backward": 1}
    assert [request_id for _, request_id in client.counters.log] == ["slow", "queued"]


async def test_requests_run_without_being_awaited(make_client: MakeClient) -> None:
    client = make_client()
    data = _data(client)[:1]
    ran, token = anyio.Event(), anyio.lowlevel.current_token()

    def loss(batch: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        anyio.from_thread.run_sync(ran.set, token=token)
        grads = tuple(TensorData(dtype="float32", data=(0.0,) * len(lp.data)) for lp in logprobs)
        return CustomLossOutput(loss=0.0, logprob_grads=grads)

    await client.forward_backward(data, "cross_entropy", request_id="first")
    await client.forward_backward_custom(data, loss, request_id="second")
    await ran.wait()  # no future was ever awaited
    await client.drain()
    assert [request_id for _, request_id in client.counters.log] == ["first", "second"]


async def test_a_request_is_frozen_when_submitted(make_client: MakeClient) -> None:
    client, reference = make_client(), make_client()
    batch = _data(client)
    future = await client.forward_backward(batch, "cross_entropy", request_id="fb")
    expected = await (
        await reference.forward_backward(list(batch), "cross_entropy", request_id="fb")
    ).result()
    batch.clear()  # the request runs later; the caller's list must not matter
    assert await future.result() == expected


# ------------------------------------------------------------------------------------------
# Samplers


async def test_a_sampler_is_a_snapshot_unaffected_by_later_training(
    make_client: MakeClient,
) -> None:
    client = make_client()
    data = _data(client)
    prompt = ModelInput.from_ints(client.get_tokenizer().encode(TEXTS[0]))
    saved = await (await client.save_weights_for_sampler("s0", request_id="save-s0")).result()
    await _train(client, [data, data])  # submitted after the save, so not in the snapshot
    sampler = await client.create_sampling_client(saved.path)
    before = await (await sampler.compute_logprobs(prompt)).result()
    await _train(client, [data], prefix="more")
    assert await (await sampler.compute_logprobs(prompt)).result() == before
    trained = await (await client.save_weights_for_sampler("s1", request_id="save-s1")).result()
    newer = await client.create_sampling_client(trained.path)
    assert await (await newer.compute_logprobs(prompt)).result() != before

    fresh = make_client(checkpoint_dir=client.checkpoint_dir / "other")
    from_disk = await fresh.create_sampling_client(saved.path)  # not cached there: read back
    assert await (await from_disk.compute_logprobs(prompt)).result() == pytest.approx(before)
    loaded = LocalTorchSamplingClient.from_checkpoint(trained.path, client.get_tokenizer())
    expected = await (await newer.compute_logprobs(prompt)).result()
    assert await (await loaded.compute_logprobs(prompt)).result() == pytest.approx(expected)


async def test_a_trained_model_stops_at_stop_strings_and_stop_tokens(
    make_client: MakeClient,
) -> None:
    client = make_client(seed=0)
    tokenizer = client.get_tokenizer()
    datum = _datum(tokenizer, MEMORISED)
    for step in range(40):
        fb = await client.forward_backward([datum], "cross_entropy", request_id=f"fb{step}")
        opt = await client.optim_step(AdamParams(learning_rate=3e-3), request_id=f"o{step}")
    await fb.result()
    await opt.result()
    sampler = await client.create_sampling_client(
        (await (await client.save_weights_for_sampler("m", request_id="m")).result()).path
    )
    prompt = ModelInput.from_ints(tokenizer.encode("The cat"))

    async def greedy(**params: Any) -> list[tuple[str, str]]:
        sampling = SamplingParams(temperature=0.0, **params)
        response = await (await sampler.sample(prompt, 2, sampling)).result()
        return [(tokenizer.decode(s.tokens), s.stop_reason) for s in response.sequences]

    assert (
        await greedy(max_tokens=40, stop=("\n\nUser:",))
        == [(" sat on the mat.\n\nUser:", "stop")] * 2
    )
    assert await greedy(max_tokens=40, stop=("mat", "on")) == [(" sat on", "stop")] * 2
    assert await greedy(max_tokens=10) == [(" sat on th", "length")] * 2
    colon = tokenizer.encode(".", add_special_tokens=False)[0]
    assert await greedy(max_tokens=40, stop=(colon,)) == [(" sat on the mat.", "stop")] * 2
    # The renderer parses what the sampler returns.
    message, ended = LocalRenderer(tokenizer, "role_colon").parse_response(
        (
            await (
                await sampler.sample(
                    prompt, 1, SamplingParams(temperature=0.0, max_tokens=40, stop=("\n\nUser:",))
                )
            ).result()
        )
        .sequences[0]
        .tokens
    )
    assert ended
    assert message.content == "sat on the mat."


async def test_sampling_is_reproducible_and_validated() -> None:
    sampler = local_torch_adapters(seed=9)["sampling_client"]
    assert isinstance(sampler, LocalTorchSamplingClient)
    tokenizer = sampler.get_tokenizer()
    prompt = ModelInput.from_ints(tokenizer.encode("Hello"))
    params = SamplingParams(max_tokens=6, temperature=1.0, top_k=50, top_p=0.9)
    by_id = await (await sampler.sample(prompt, 4, params, request_id="r")).result()
    other_sampler = local_torch_adapters(seed=9)["sampling_client"]
    assert isinstance(other_sampler, LocalTorchSamplingClient)
    replay = await (await other_sampler.sample(prompt, 4, params, request_id="r")).result()
    assert replay == by_id  # unseeded requests draw from (client seed, request_id)
    other = await (await sampler.sample(prompt, 4, params, request_id="r2")).result()
    assert other != by_id
    for sequence in by_id.sequences:
        assert sequence.logprobs is not None
        assert len(sequence.logprobs) == len(sequence.tokens)
    scored = await (await sampler.sample(prompt, 1, params, include_prompt_logprobs=True)).result()
    assert scored.prompt_logprobs == await (await sampler.compute_logprobs(prompt)).result()

    limit = sampler.model.config.max_seq_len
    for bad in (
        lambda: sampler.sample(prompt, 0, params),
        lambda: sampler.sample(ModelInput.empty(), 1, params),
        lambda: sampler.sample(ModelInput.from_ints([10_000]), 1, params),
        lambda: sampler.sample(ModelInput.from_ints([1] * (limit - 2)), 1, params),
        lambda: sampler.compute_logprobs(ModelInput.from_ints([1] * (limit + 1))),
    ):
        with pytest.raises(InvalidRequest):
            await bad()


# ------------------------------------------------------------------------------------------
# Determinism, checkpoints and resume


async def test_equal_seeds_train_bit_identically_and_other_seeds_do_not(
    make_client: MakeClient,
) -> None:
    first, second, other = make_client(seed=7), make_client(seed=7), make_client(seed=8)
    data = _data(first)
    for client in (first, second, other):
        await _train(client, [data[:2], data[1:], data])
    _assert_bit_identical(await first.state_tensors(), await second.state_tensors())
    theirs = await other.state_tensors()
    assert not torch.equal(
        (await first.state_tensors())["model/embed.weight"], theirs["model/embed.weight"]
    )
    assert first.counters.log == second.counters.log


async def test_resuming_from_a_checkpoint_is_bit_identical_to_an_uninterrupted_run(
    make_client: MakeClient,
) -> None:
    config = dataclasses.replace(preset("tiny", vocab_size=265), dropout=0.1)  # RNG matters
    uninterrupted = make_client(model=config, seed=11)
    interrupted = make_client(model=config, seed=11)
    data = _data(uninterrupted)
    steps = [data[:2], data[1:], data, data[:1]]
    await _train(uninterrupted, steps)

    await _train(interrupted, steps[:2])
    payload = {"loop": {"epoch": 0, "batch": 2}, "rng": [1, 2, 3]}
    saved = await (
        await interrupted.save_state("resume", request_id="save", user_payload=payload)
    ).result()
    resumed = make_client(model=config, seed=999)  # a new process would start elsewhere
    await (await resumed.load_state(saved.path, request_id="load")).result()
    assert await resumed.checkpoint_payload(saved.path) == payload
    await _train(resumed, steps[2:], prefix="late")
    await _train(interrupted, steps[2:], prefix="late")  # and the saver itself goes on
    expected = await uninterrupted.state_tensors()
    _assert_bit_identical(await resumed.state_tensors(), expected)
    _assert_bit_identical(await interrupted.state_tensors(), expected)

    weights_only = make_client(model=config, seed=11)
    await (
        await weights_only.load_state(saved.path, with_optimizer=False, request_id="load")
    ).result()
    state = await weights_only.state_tensors()
    assert not any(name.startswith("optimizer/") for name in state)


async def test_a_resent_save_finds_its_own_checkpoint_in_a_new_process(
    make_client: MakeClient, tmp_path: Path
) -> None:
    directory = tmp_path / "shared"
    first = make_client(checkpoint_dir=directory)
    saved = await (await first.save_state("ckpt", request_id="save-1")).result()
    restarted = make_client(checkpoint_dir=directory)  # same run directory, empty ledger
    again = await (await restarted.save_state("ckpt", request_id="save-1")).result()
    assert again == saved
    with pytest.raises(InvalidRequest, match="already exists"):
        await (await restarted.save_state("ckpt", request_id="save-2")).result()
    for name in ("", "a/b", "..", "x\x00"):
        with pytest.raises(InvalidRequest, match="name"):
            await restarted.save_state(name, request_id=f"bad-{name}")
    with pytest.raises(InvalidRequest, match="user_payload"):
        await restarted.save_state("p", request_id="p", user_payload={"x": float("nan")})


async def test_checkpoints_of_another_model_or_tokenizer_are_refused(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = make_client()
    saved = await (await client.save_state("c", request_id="c")).result()
    wider = make_client(model=preset("tiny", vocab_size=265, d_model=32))
    with pytest.raises(CheckpointMismatch, match="d_model"):
        await (await wider.load_state(saved.path, request_id="l")).result()
    other_tokenizer = make_client(
        tokenizer=LocalTokenizer.byte(
            special_tokens=("<a>", "<b>"), bos_token="<a>", eos_token="<b>"
        ),
        model=preset("tiny", vocab_size=265),
    )
    with pytest.raises(CheckpointMismatch, match="tokenizer"):
        await (await other_tokenizer.load_state(saved.path, request_id="l")).result()
    with pytest.raises(ResourceNotFound):
        await (await client.load_state(str(tmp_path / "nowhere"), request_id="n")).result()
    with pytest.raises(ResourceNotFound):
        await client.checkpoint_payload(str(tmp_path / "nowhere"))


async def test_lora_trains_only_the_adapters_and_samplers_merge_them(
    make_client: MakeClient,
) -> None:
    client = make_client(lora=4)
    data = _data(client)
    before = await client.state_tensors()
    await _train(client, [data, data])
    after = await client.state_tensors()
    changed = {
        name
        for name in before
        if name.startswith("model/") and not torch.equal(before[name], after[name])
    }
    assert changed
    assert all("lora_" in name for name in changed)
    prompt = ModelInput.from_ints(client.get_tokenizer().encode(TEXTS[1]))
    sampler = await client.create_sampling_client(
        (await (await client.save_weights_for_sampler("l", request_id="l")).result()).path
    )
    scored = await (await sampler.compute_logprobs(prompt)).result()
    forward = await (
        await client.forward([_datum(client.get_tokenizer(), TEXTS[1])], "cross_entropy")
    ).result()
    assert scored[1:] == pytest.approx(forward.loss_fn_outputs[0]["logprobs"].data, abs=1e-4)


async def test_bad_training_requests_are_refused_at_submission(make_client: MakeClient) -> None:
    client = make_client()
    tokenizer = client.get_tokenizer()
    good = _datum(tokenizer, TEXTS[0])
    long = _datum(tokenizer, "x" * (client.config.max_seq_len + 5))
    no_weights = Datum(
        model_input=good.model_input,
        loss_fn_inputs={"target_tokens": good.loss_fn_inputs["target_tokens"]},
    )
    out_of_vocab = Datum(
        model_input=ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=(1, 2, 10_000)),
            "weights": TensorData(dtype="float32", data=(1.0, 1.0, 1.0)),
        },
    )
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: client.forward_backward([], "cross_entropy", request_id="a"), "empty"),
        (lambda: client.forward_backward([good], "hinge", request_id="b"), "unknown loss_fn"),  # type: ignore[arg-type]
        (lambda: client.forward_backward([long], "cross_entropy", request_id="c"), "tokens"),
        (lambda: client.forward_backward([no_weights], "cross_entropy", request_id="d"), "weights"),
        (lambda: client.forward([out_of_vocab], "cross_entropy"), "target_tokens"),
        (lambda: client.forward([good], "importance_sampling"), "logprobs"),
        (lambda: client.forward([good], "cross_entropy", {"beta": 1.0}), "beta"),
        (lambda: client.forward([good], "cross_entropy", {"x": "y"}), "loss_fn_config"),
        (lambda: client.optim_step({"learning_rate": 1.0}, request_id="e"), "adam_params"),  # type: ignore[arg-type]
    ]
    dro = _datum(tokenizer, TEXTS[0], logprobs=[0.0] * 64, advantages=[1.0] * 64)
    cases.append((lambda: client.forward([dro], "dro"), "beta"))
    for call, match in cases:
        with pytest.raises(InvalidRequest, match=match):
            await call()
    assert sum(client.counters.calls.values()) == 0  # nothing was queued

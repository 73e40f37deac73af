"""The noop adapters: port conformance, exactly-once requests, determinism, validation."""

from __future__ import annotations

import ast
import importlib
import itertools
import math
import pathlib
from typing import TYPE_CHECKING

import msgspec
import pytest

import crucible_kitchen.adapters.noop as noop
import crucible_kitchen.testing as testing
from crucible_kitchen.adapters.noop import (
    NoopBlobStore,
    NoopDatasetStore,
    NoopEnvGroupBuilder,
    NoopEvaluator,
    NoopMetricsStore,
    NoopModelRegistry,
    NoopRenderer,
    NoopSamplingClient,
    NoopTokenizer,
    NoopTrainingClient,
    noop_adapters,
)
from crucible_kitchen.errors import InvalidRequest, RenderError, RequestIdConflict
from crucible_kitchen.ports import (
    PORT_PROTOCOLS,
    AdamParams,
    CustomLossOutput,
    Datum,
    ImageChunk,
    LossFnType,
    Message,
    MetricPoint,
    ModelArtifact,
    ModelInput,
    SamplingParams,
    TensorData,
    check_adapter,
)
from crucible_kitchen.testing import (
    check_blob_store,
    check_dataset_store,
    check_env_group_builder,
    check_evaluator,
    check_metrics_store,
    check_model_registry,
    check_renderer,
    check_sampling_client,
    check_tokenizer,
    check_training_client,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

pytestmark = pytest.mark.anyio

ADAM = AdamParams(learning_rate=1e-3)


def make_datum(
    tokens: Sequence[int], *, logprobs: Sequence[float] | None = None, advantage: float = 1.0
) -> Datum:
    """A next-token datum over ``tokens`` with inputs for every named loss."""
    targets = tuple(tokens[1:])
    inputs = {
        "target_tokens": TensorData(dtype="int64", data=targets),
        "weights": TensorData(dtype="float32", data=(1.0,) * len(targets)),
        "advantages": TensorData(dtype="float32", data=(advantage,) * len(targets)),
        "logprobs": TensorData(
            dtype="float32", data=tuple(logprobs) if logprobs else (-1.0,) * len(targets)
        ),
    }
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


BATCH = [make_datum([1, 40, 41, 42, 43]), make_datum([1, 50, 51, 52])]


async def train(client: NoopTrainingClient, steps: int, *, prefix: str = "") -> list[float]:
    """``steps`` pipelined forward-backward + optimizer steps; the losses of each."""
    losses = []
    for step in range(steps):
        fwd = await client.forward_backward(BATCH, "cross_entropy", request_id=f"{prefix}fb{step}")
        opt = await client.optim_step(ADAM, request_id=f"{prefix}opt{step}")
        losses.append((await fwd.result()).metrics["loss:sum"])
        await opt.result()
    return losses


# ------------------------------------------------------------------------------------------
# Conformance


async def test_training_client_conforms() -> None:
    await check_training_client(lambda: NoopTrainingClient(seed=3))


async def test_sampling_client_conforms() -> None:
    await check_sampling_client(lambda: NoopSamplingClient(seed=3))


async def test_stores_and_registry_conform() -> None:
    await check_dataset_store(lambda: NoopDatasetStore(names=["arith"]), dataset="arith")
    rows = {"train": [{"q": "1+1", "a": 2}], "test": []}
    await check_dataset_store(lambda: NoopDatasetStore(datasets={"mine": rows}), dataset="mine")
    await check_blob_store(NoopBlobStore)
    await check_metrics_store(NoopMetricsStore)
    await check_model_registry(NoopModelRegistry)


async def test_evaluator_and_env_group_builder_conform() -> None:
    await check_evaluator(NoopEvaluator, model=NoopSamplingClient(), rows=[{"a": 1}, {"b": [2]}])
    await check_env_group_builder(lambda: NoopEnvGroupBuilder(seed=1, group_size=3))


def test_tokenizer_and_renderer_conform() -> None:
    check_tokenizer(NoopTokenizer)
    check_renderer(NoopRenderer)


def test_the_bundle_binds_every_port() -> None:
    adapters = noop_adapters(seed=5)
    assert set(adapters) == set(PORT_PROTOCOLS)
    for port_name, adapter in adapters.items():
        check_adapter(port_name, adapter)


def test_exports_are_a_tuple_of_every_private_modules_exports() -> None:
    assert isinstance(noop.__all__, tuple)
    assert len(set(noop.__all__)) == len(noop.__all__)
    directory = pathlib.Path(noop.__file__).parent
    modules = [
        importlib.import_module(f"{noop.__name__}.{path.stem}")
        for path in directory.glob("_*.py")
        if path.name != "__init__.py"
    ]
    assert set(noop.__all__) == {name for m in modules for name in getattr(m, "__all__", ())}


def test_testing_re_exports_the_checks_and_the_latency_wrapper() -> None:
    from crucible_kitchen.testing import _latency, _port_conformance

    for module in (_latency, _port_conformance):
        for name in module.__all__:
            assert getattr(testing, name) is getattr(module, name)
            assert name in testing.__all__


def test_noop_imports_only_ports_errors_and_its_libraries() -> None:
    allowed = (
        "crucible_kitchen.ports",
        "crucible_kitchen.errors",
        "crucible_kitchen.adapters.noop",
    )
    package = pathlib.Path(noop.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "crucible_kitchen"
            ):
                assert (node.module or "").startswith(allowed), f"{path.name}: {node.module}"


# ------------------------------------------------------------------------------------------
# Exactly once


async def test_a_re_sent_request_returns_the_same_future_and_applies_once() -> None:
    client = NoopTrainingClient(seed=0)
    first = await client.forward_backward(BATCH, "cross_entropy", request_id="fb")
    again = await client.forward_backward(BATCH, "cross_entropy", request_id="fb")
    assert again is first
    await client.optim_step(ADAM, request_id="opt")
    await client.optim_step(ADAM, request_id="opt")

    assert client.counters.calls["forward_backward"] == 2
    assert client.counters.applied["forward_backward"] == 1
    assert client.counters.deduplicated["forward_backward"] == 1
    assert client.counters.applied["optim_step"] == 1
    assert client.state.step == 1

    reference = NoopTrainingClient(seed=0)
    await reference.forward_backward(BATCH, "cross_entropy", request_id="x")
    await reference.optim_step(ADAM, request_id="y")
    assert client.state == reference.state


async def test_a_gradient_applied_twice_changes_the_weights() -> None:
    once, twice = NoopTrainingClient(seed=0), NoopTrainingClient(seed=0)
    await once.forward_backward(BATCH, "cross_entropy", request_id="a")
    for request_id in ("a", "b"):
        await twice.forward_backward(BATCH, "cross_entropy", request_id=request_id)
    assert once.state.weights_digest == twice.state.weights_digest  # not applied yet
    await once.optim_step(ADAM, request_id="opt")
    await twice.optim_step(ADAM, request_id="opt")
    assert once.state.step == twice.state.step == 1
    assert once.state.weights_digest != twice.state.weights_digest


async def test_reusing_a_request_id_for_another_request_conflicts() -> None:
    client = NoopTrainingClient(seed=0)
    await client.forward_backward(BATCH, "cross_entropy", request_id="fb")
    with pytest.raises(RequestIdConflict, match="already used for a different forward_backward"):
        await client.forward_backward(BATCH[:1], "cross_entropy", request_id="fb")
    with pytest.raises(RequestIdConflict) as raised:
        await client.optim_step(ADAM, request_id="fb")
    assert (raised.value.port, raised.value.operation, raised.value.request_id) == (
        "training_client",
        "optim_step",
        "fb",
    )
    assert client.counters.applied["forward_backward"] == 1


async def test_stores_apply_a_re_sent_write_once() -> None:
    blobs = NoopBlobStore()
    for _ in range(2):
        await blobs.write("k", b"v", request_id="w")
    assert (blobs.counters.applied["write"], blobs.counters.deduplicated["write"]) == (1, 1)

    registry = NoopModelRegistry(seed=1)
    artifact = ModelArtifact(name="m", version="1", artifact_uri="blob://m")
    models = [await registry.register(artifact, request_id="r") for _ in range(2)]
    assert models[0] == models[1]
    assert registry.counters.applied["register"] == 1
    assert (
        models[0].model_id
        == (await NoopModelRegistry(seed=1).register(artifact, request_id="x")).model_id
    )

    metrics = NoopMetricsStore()
    point = MetricPoint(run_id="run", name="loss", step=0, value=1.0)
    for _ in range(2):
        await metrics.record([point], request_id="p")
    assert await metrics.read("run") == [point]


# ------------------------------------------------------------------------------------------
# Determinism and the noop model


async def test_equal_seeds_give_identical_runs_and_other_seeds_do_not() -> None:
    runs = [NoopTrainingClient(seed=seed) for seed in (7, 7, 8)]
    losses = [await train(client, 3) for client in runs]
    assert losses[0] == losses[1]
    assert runs[0].state == runs[1].state
    assert losses[0] != losses[2]
    assert runs[0].state.weights_digest != runs[2].state.weights_digest


async def test_the_loss_falls_as_training_goes_on() -> None:
    losses = await train(NoopTrainingClient(seed=1), 5)
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))


async def test_named_losses_follow_tinkers_formulas() -> None:
    client = NoopTrainingClient(seed=2)
    tokens = [1, 60, 61, 62]
    logprobs = await (await client.forward([make_datum(tokens)], "cross_entropy")).result()
    on_policy = tuple(logprobs.loss_fn_outputs[0]["logprobs"].data)
    assert math.isclose(logprobs.metrics["loss:sum"], -sum(on_policy))

    datum = make_datum(tokens, logprobs=on_policy, advantage=2.0)  # ratio exactly 1
    expected: dict[LossFnType, float] = {
        "importance_sampling": -2.0 * 3,
        "ppo": -2.0 * 3,
        "cispo": -2.0 * sum(on_policy),
        "dro": -2.0 * sum(on_policy),
    }
    for loss_fn, value in expected.items():
        config = {"beta": 0.5} if loss_fn == "dro" else None
        output = await (await client.forward([datum], loss_fn, config)).result()
        assert math.isclose(output.metrics["loss:sum"], value), loss_fn
        assert output.loss_fn_output_type == loss_fn

    clipped = make_datum(tokens, logprobs=[v - 1.0 for v in on_policy], advantage=1.0)
    output = await (await client.forward([clipped], "ppo")).result()
    assert math.isclose(output.metrics["loss:sum"], -1.2 * 3)  # ratio e > 1.2: clipped


async def test_custom_loss_gets_logprobs_and_its_metrics_come_back() -> None:
    client = NoopTrainingClient(seed=0)
    seen: list[int] = []

    def loss_fn(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        seen.append(len(data))
        grads = tuple(TensorData(dtype="float32", data=(0.5,) * len(lp.data)) for lp in logprobs)
        return CustomLossOutput(loss=1.25, logprob_grads=grads, metrics={"pairs:sum": 2.0})

    future = await client.forward_backward_custom(BATCH, loss_fn, request_id="c")
    again = await client.forward_backward_custom(BATCH, loss_fn, request_id="c")
    output = await again.result()
    assert seen == [2]  # the loss ran once: the re-sent request was deduplicated
    assert output == await future.result()
    assert output.metrics == {"pairs:sum": 2.0, "loss:sum": 1.25}
    assert [len(out["logprobs"].data) for out in output.loss_fn_outputs] == [4, 3]
    assert client.state.pending_gradients == 1


async def test_custom_loss_takes_n_by_k_targets_scoring_each_slot_as_its_position() -> None:
    """Top-K distillation's (N, K) targets: one logprob per slot, the slot's token scored at
    its row's position (as a 1-D datum of that token would be)."""
    client = NoopTrainingClient(seed=0)
    targets = TensorData(dtype="int64", data=(5, 6, 7, 8, 9, 10), shape=(3, 2))
    weights = TensorData(dtype="float32", data=(0.5,) * 6, shape=(3, 2))
    datum = Datum(
        model_input=ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )
    seen: list[TensorData] = []

    def loss_fn(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        seen.extend(logprobs)
        grads = tuple(
            TensorData(dtype="float32", data=(0.0,) * len(lp.data), shape=lp.shape)
            for lp in logprobs
        )
        return CustomLossOutput(loss=0.0, logprob_grads=grads)

    await (await client.forward_backward_custom([datum], loss_fn, request_id="k")).result()
    [scored] = seen
    assert scored.dims == (3, 2)
    flat = [
        Datum(
            model_input=ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={
                "target_tokens": TensorData(dtype="int64", data=column),
                "weights": TensorData(dtype="float32", data=(1.0,) * 3),
            },
        )
        for column in ((5, 7, 9), (6, 8, 10))
    ]
    output = await (await NoopTrainingClient(seed=0).forward(flat, "cross_entropy")).result()
    by_column = [out["logprobs"].data for out in output.loss_fn_outputs]
    assert scored.data == tuple(v for row in zip(*by_column, strict=True) for v in row)


async def test_custom_loss_errors() -> None:
    client = NoopTrainingClient(seed=0)

    def broken(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        raise ZeroDivisionError("user bug")

    def short(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
        return CustomLossOutput(loss=0.0, logprob_grads=())

    with pytest.raises(ZeroDivisionError, match="user bug"):
        await client.forward_backward_custom(BATCH, broken, request_id="a")
    with pytest.raises(InvalidRequest, match="returned 0 gradients for 2 datums"):
        await client.forward_backward_custom(BATCH, short, request_id="a")
    assert client.counters.applied["forward_backward_custom"] == 0
    assert client.state.pending_gradients == 0


async def test_sampled_logprobs_match_the_trainer_on_policy() -> None:
    client = NoopTrainingClient(seed=4)
    await train(client, 2)
    saved = await (await client.save_weights_for_sampler("s2", request_id="s")).result()
    sampler = await client.create_sampling_client(saved.path)
    prompt = [1, 70, 71]
    params = SamplingParams(max_tokens=6, seed=0)
    sequence = await (await sampler.sample(ModelInput.from_ints(prompt), 1, params)).result()
    sampled = sequence.sequences[0]
    tokens = prompt + list(sampled.tokens)
    output = await (await client.forward([make_datum(tokens)], "cross_entropy")).result()
    trained = output.loss_fn_outputs[0]["logprobs"].data[len(prompt) - 1 :]
    assert trained == sampled.logprobs


async def test_checkpoints_resume_in_a_new_client() -> None:
    checkpoints: dict[str, bytes] = {}
    first = NoopTrainingClient(seed=9, checkpoints=checkpoints)
    await train(first, 2)
    saved = await (await first.save_state("two", request_id="save")).result()
    assert saved.path == "noop://noop-9/weights/two"
    await train(first, 1, prefix="more-")

    resumed = NoopTrainingClient(seed=9, checkpoints=checkpoints)
    await (await resumed.load_state(saved.path, request_id="load")).result()
    await train(resumed, 1, prefix="more-")
    assert resumed.state == first.state

    weights_only = NoopTrainingClient(seed=9, checkpoints=checkpoints)
    await (await weights_only.load_state(saved.path, with_optimizer=False, request_id="l")).result()
    assert weights_only.state.step == 2
    restored = msgspec.msgpack.decode(checkpoints[saved.path], type=noop.NoopTrainingState)
    assert weights_only.state.weights_digest == restored.weights_digest
    assert weights_only.state.optimizer_digest != restored.optimizer_digest


async def test_a_corrupt_checkpoint_is_translated_at_the_edge() -> None:
    client = NoopTrainingClient(seed=0, checkpoints={"noop://x/weights/bad": b"\xc1garbage"})
    with pytest.raises(InvalidRequest, match="is corrupt") as raised:
        await client.load_state("noop://x/weights/bad", request_id="l")
    assert isinstance(raised.value.__cause__, msgspec.DecodeError)


# ------------------------------------------------------------------------------------------
# Requests a backend refuses


@pytest.mark.parametrize(
    ("data", "loss_fn", "config", "message"),
    [
        ([], "cross_entropy", None, "data is empty"),
        (BATCH, "hinge", None, "unknown loss_fn 'hinge'"),
        (BATCH, "dro", None, "needs loss_fn_config\\['beta'\\]"),
        (BATCH, "ppo", {"clip_low_threshold": "low"}, "loss_fn_config\\['clip_low_threshold'\\]"),
        (
            [Datum(model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={})],
            "cross_entropy",
            None,
            "data\\[0\\] lacks loss input 'target_tokens'",
        ),
        (
            [
                Datum(
                    model_input=ModelInput.from_ints([1, 2]),
                    loss_fn_inputs={
                        "target_tokens": TensorData(dtype="int64", data=(2, 999)),
                        "weights": TensorData(dtype="float32", data=(1.0, 1.0)),
                    },
                )
            ],
            "cross_entropy",
            None,
            "target_tokens must be int64 ids below 260",
        ),
        (
            [
                Datum(
                    model_input=ModelInput.from_ints([1, 2, 3]),
                    loss_fn_inputs={
                        "target_tokens": TensorData(dtype="int64", data=(2, 3, 4)),
                        "weights": TensorData(dtype="float32", data=(1.0,)),
                    },
                )
            ],
            "cross_entropy",
            None,
            "'weights' has 1 values for 3 positions",
        ),
        (
            [
                Datum(
                    model_input=ModelInput(chunks=(ImageChunk(data=b"", format="png"),)),
                    loss_fn_inputs={},
                )
            ],
            "cross_entropy",
            None,
            "expected_tokens is None",
        ),
    ],
)
async def test_invalid_training_requests_are_refused(
    data: list[Datum], loss_fn: str, config: dict[str, str] | None, message: str
) -> None:
    client = NoopTrainingClient(seed=0)
    with pytest.raises(InvalidRequest, match=message):
        await client.forward_backward(data, loss_fn, config, request_id="r")  # type: ignore[arg-type]
    assert client.counters.calls["forward_backward"] == 0


async def test_bad_checkpoint_names_and_paths() -> None:
    client = NoopTrainingClient(seed=0)
    with pytest.raises(InvalidRequest, match="must be non-empty and have no '/'"):
        await client.save_state("a/b", request_id="s")


# ------------------------------------------------------------------------------------------
# Sampling


async def test_sampling_is_deterministic_and_honours_its_parameters() -> None:
    prompt = ModelInput.from_ints([1, 80, 81])
    sampler = NoopSamplingClient(seed=1)

    greedy = SamplingParams(max_tokens=5, temperature=0.0)
    response = await (await sampler.sample(prompt, 4, greedy)).result()
    assert len(set(response.sequences)) == 1

    never_stop = SamplingParams(max_tokens=5, stop=())
    response = await (await sampler.sample(prompt, 20, never_stop)).result()
    assert {(s.stop_reason, len(s.tokens)) for s in response.sequences} == {("length", 5)}

    stop_string = SamplingParams(max_tokens=12, stop=("END",))
    response = await (await sampler.sample(prompt, 20, stop_string)).result()
    stopped = [s for s in response.sequences if s.stop_reason == "stop"]
    assert stopped  # about half of 20 samples stop early
    stop_tokens = tuple(NoopTokenizer().encode("END", add_special_tokens=False))
    assert all(s.tokens[-len(stop_tokens) :] == stop_tokens for s in stopped)

    unseeded = SamplingParams(max_tokens=8)
    first = await (await sampler.sample(prompt, 1, unseeded)).result()
    second = await (await sampler.sample(prompt, 1, unseeded)).result()
    assert first != second  # each call draws anew
    replay = await (await NoopSamplingClient(seed=1).sample(prompt, 1, greedy)).result()
    assert replay == await (await sampler.sample(prompt, 1, greedy)).result()


async def test_sampling_refuses_prompts_it_cannot_read() -> None:
    sampler = NoopSamplingClient()
    image = ModelInput(chunks=(ImageChunk(data=b"", format="png", expected_tokens=1),))
    with pytest.raises(InvalidRequest, match="chunk of type 'ImageChunk'") as raised:
        await sampler.sample(image, 1, SamplingParams())
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(InvalidRequest, match="the prompt is empty"):
        await sampler.compute_logprobs(ModelInput.empty())


# ------------------------------------------------------------------------------------------
# Stores, evaluator, environments, tokenizer, renderer


async def test_synthetic_datasets_serve_every_workflow_and_follow_the_seed() -> None:
    store = NoopDatasetStore(seed=1, num_rows=8)
    info = await store.describe("anything")
    assert info.splits == {"train": 8, "test": 2}
    rows = await store.read_rows("anything")
    row = rows[3]
    a, b = (int(n) for n in row["question"].removeprefix("What is ").removesuffix("?").split("+"))
    assert row["answer"] == row["chosen"] == str(a + b) != row["rejected"]
    assert row["messages"][-1] == {"role": "assistant", "content": row["answer"]}
    assert await NoopDatasetStore(seed=1, num_rows=8).read_rows("anything") == rows
    assert await NoopDatasetStore(seed=2, num_rows=8).read_rows("anything") != rows
    assert await store.read_rows("other") != rows


async def test_evaluation_improves_as_the_model_trains() -> None:
    client = NoopTrainingClient(seed=0)
    rows = await NoopDatasetStore(num_rows=4).read_rows("eval")
    evaluator = NoopEvaluator()
    scores = []
    for steps in (0, 3):
        await train(client, steps, prefix=f"{steps}-")
        saved = await (
            await client.save_weights_for_sampler(f"s{steps}", request_id=f"s{steps}")
        ).result()
        sampler = await client.create_sampling_client(saved.path)
        scores.append((await evaluator.evaluate(sampler, rows)).metrics["nll"])
    assert scores[1] < scores[0]


async def test_environments_reward_even_tokens_once() -> None:
    envs = await NoopEnvGroupBuilder(seed=3, index=1, group_size=2).make_envs()
    observations = [await env.initial_observation() for env in envs]
    assert observations[0] == observations[1]  # one problem per group
    result = await envs[0].step([4, 5, 6, 8])
    assert (result.reward, result.episode_done) == (0.75, True)
    with pytest.raises(InvalidRequest, match="the episode has ended"):
        await envs[0].step([4])
    with pytest.raises(ValueError, match="group_size 0"):
        NoopEnvGroupBuilder(group_size=0)


def test_tokenizer_round_trips_text_and_names_special_tokens() -> None:
    tokenizer = NoopTokenizer()
    tokens = tokenizer.encode("héllo")
    assert tokens[0] == tokenizer.bos_token_id
    assert tokenizer.decode(tokens) == "<s>héllo"
    assert tokenizer.decode([*tokens, 2], skip_special_tokens=True) == "héllo"
    with pytest.raises(InvalidRequest, match="outside the vocabulary of 260"):
        tokenizer.decode([260])


@pytest.mark.parametrize(
    ("train_on_what", "weighted"),
    [
        ("last_assistant_message", ["b"]),
        ("all_assistant_messages", ["a", "b"]),
        ("all_messages", ["q", "a", "r", "b"]),
    ],
)
def test_renderer_weighs_what_it_is_asked_to(train_on_what: str, weighted: list[str]) -> None:
    tokenizer = NoopTokenizer()
    conversation = [
        Message(role="user", content="q"),
        Message(role="assistant", content="a"),
        Message(role="user", content="r"),
        Message(role="assistant", content="b"),
    ]
    model_input, weights = NoopRenderer(tokenizer).build_supervised_example(
        conversation,
        train_on_what=train_on_what,  # type: ignore[arg-type]
    )
    tokens = model_input.to_ints()
    trained = [t for t, w in zip(tokens, weights.data, strict=True) if w > 0]
    expected = [
        t for text in weighted for t in [*tokenizer.encode(text, add_special_tokens=False), 2]
    ]
    assert trained == expected


def test_renderer_refuses_a_conversation_without_a_reply() -> None:
    with pytest.raises(RenderError, match="selects no message"):
        NoopRenderer().build_supervised_example([Message(role="user", content="q")])
    _, weights = NoopRenderer().build_supervised_example(
        [Message(role="user", content="q")], train_on_what="all_tokens"
    )
    assert all(w == 1.0 for w in weights.data)

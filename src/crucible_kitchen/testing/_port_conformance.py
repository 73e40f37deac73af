"""Conformance checks: does an adapter keep its port's contract?

Each ``check_<port>(make_adapter)`` builds fresh adapters with ``make_adapter`` and raises
``AssertionError`` naming the first broken promise. Run them against every adapter::

    async def test_my_training_client() -> None:
        await check_training_client(lambda: MyTrainingClient(seed=0))

``make_adapter`` must return adapters in the same initial state each time (same seed, same
initial weights): several checks compare two fresh adapters given the same requests.

What an adapter declares beyond its Protocol (its ``capabilities``, see
:func:`crucible_kitchen.ports.capability`) is checked too: a declared capability must really
work, and one left undeclared is not required.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from crucible_kitchen.errors import (
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
)
from crucible_kitchen.ports import (
    CHECKPOINT_DIR,
    CHECKPOINT_PAYLOAD,
    FUTURE_DONE,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    BlobInfo,
    BlobStore,
    CustomLossOutput,
    DatasetStore,
    Datum,
    EnvGroupBuilder,
    EvalResult,
    Evaluator,
    Message,
    MetricPoint,
    MetricsStore,
    ModelArtifact,
    ModelInput,
    ModelRegistry,
    Renderer,
    SampleResponse,
    SamplingClient,
    SamplingParams,
    StepResult,
    TensorData,
    Tokenizer,
    TokensWithLogprobs,
    TrainingClient,
    Trajectory,
    Transition,
    capability,
    declared_capabilities,
    protocol_problems,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from crucible_kitchen.ports import BackendFuture, DatasetRow, ForwardBackwardOutput

__all__ = (
    "check_blob_store",
    "check_dataset_store",
    "check_env_group_builder",
    "check_evaluator",
    "check_metrics_store",
    "check_model_registry",
    "check_renderer",
    "check_sampling_client",
    "check_tokenizer",
    "check_training_client",
)

AdapterT = TypeVar("AdapterT")
T = TypeVar("T")


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _conforms(protocol: type, adapter: AdapterT) -> AdapterT:
    problems = protocol_problems(protocol, adapter)
    _expect(not problems, f"{type(adapter).__name__} is not a {protocol.__name__}: {problems}")
    _declares_well(adapter)
    return adapter


def _declares_well(obj: object) -> None:
    try:
        declared_capabilities(obj)
    except TypeError as exc:
        raise AssertionError(f"capabilities: {exc}") from None


async def _result(what: str, future: BackendFuture[T]) -> T:
    """Await ``future``; if it declares ``FUTURE_DONE``, that must then say it is done."""
    _declares_well(future)
    value = await future.result()
    done = capability(future, FUTURE_DONE)
    _expect(done is None or done(), f"{what}: FUTURE_DONE says not done after the result")
    return value


async def _expect_error(
    kind: type[Exception], what: str, call: Callable[[], Awaitable[Any]]
) -> None:
    """``call`` (or the future it returns) must raise ``kind``."""
    try:
        answer = await call()
        if hasattr(answer, "result"):
            await answer.result()
    except kind:
        return
    raise AssertionError(f"{what}: expected {kind.__name__}, nothing was raised")


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance) for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------------------------------
# Training and sampling


def _cross_entropy_datum(tokenizer: Tokenizer, text: str) -> Datum:
    tokens = tokenizer.encode(text, add_special_tokens=False)
    _expect(len(tokens) >= 3, f"tokenizer gave {len(tokens)} tokens for {text!r}")
    targets = tokens[1:]
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(dtype="int64", data=tuple(targets)),
            "weights": TensorData(dtype="float32", data=(1.0,) * len(targets)),
        },
    )


async def _logprobs(client: TrainingClient, datum: Datum) -> tuple[float, ...]:
    output = await (await client.forward([datum], "cross_entropy")).result()
    return tuple(float(v) for v in output.loss_fn_outputs[0]["logprobs"].data)


def _negated_sum_loss(data: Sequence[Datum], logprobs: Sequence[TensorData]) -> CustomLossOutput:
    """-sum(logprobs): cross-entropy with unit weights, written as a custom loss."""
    return CustomLossOutput(
        loss=-sum(float(v) for lp in logprobs for v in lp.data),
        logprob_grads=tuple(
            TensorData(dtype="float32", data=(-1.0,) * len(lp.data), shape=lp.shape)
            for lp in logprobs
        ),
        metrics={"custom:sum": 1.0},
    )


async def check_training_client(
    make_adapter: Callable[[], TrainingClient],
    *,
    tolerance: float = 1e-5,
    sampler_tolerance: float = 1e-3,
) -> None:
    """Check the :class:`~crucible_kitchen.ports.TrainingClient` contract.

    Checked: structure; forward outputs and the ``"loss:sum"`` metric; an optimizer step
    changes the model; a re-sent ``forward_backward`` or ``optim_step`` returns an equal
    result and is applied once (the model then equals one that got each request once, and
    differs from one that got a gradient twice); a reused ``request_id`` with another
    request raises ``RequestIdConflict``; ``forward_backward_custom`` with -sum(logprobs)
    trains like ``cross_entropy`` with unit weights; ``load_state`` restores a saved state;
    unknown paths raise ``ResourceNotFound``; a sampling client made from saved weights
    conforms and scores a sequence as the training client does.

    Args:
        make_adapter: returns a fresh client, in the same initial state every time.
        tolerance: relative and absolute tolerance when comparing training logprobs.
        sampler_tolerance: the same, between the sampling and the training client.
    """
    client = _conforms(TrainingClient, make_adapter())
    tokenizer = _conforms(Tokenizer, client.get_tokenizer())
    _expect(bool(client.get_info().model_id), "get_info().model_id is empty")
    datum = _cross_entropy_datum(tokenizer, "The quick brown fox jumps")
    length = datum.model_input.length

    output = await _result("forward", await client.forward([datum], "cross_entropy"))
    _expect(len(output.loss_fn_outputs) == 1, "forward: one output per datum")
    before = tuple(float(v) for v in output.loss_fn_outputs[0]["logprobs"].data)
    _expect(len(before) == length, f"forward: {len(before)} logprobs for {length} positions")
    _expect(all(v <= 0 and math.isfinite(v) for v in before), f"forward: logprobs {before}")
    loss = output.metrics.get("loss:sum")
    _expect(
        loss is not None and math.isclose(loss, -sum(before), rel_tol=1e-3, abs_tol=1e-4),
        f"forward: loss:sum {loss} is not -sum(logprobs) = {-sum(before)}",
    )

    # Two different datums: under Adam a gradient doubled alone gives the same first update
    # (Adam ignores the gradient's scale), but g1 + g2 and 2*g1 + g2 point elsewhere.
    other = _cross_entropy_datum(tokenizer, "Pack my box with five dozen jugs")
    adam = AdamParams(learning_rate=1e-2)

    async def accumulate(
        trainee: TrainingClient, steps: Sequence[tuple[Datum, str]]
    ) -> list[ForwardBackwardOutput]:
        futures = [
            await trainee.forward_backward([item], "cross_entropy", request_id=request_id)
            for item, request_id in steps
        ]
        return [await _result("forward_backward", future) for future in futures]

    results = await accumulate(client, [(datum, "cc-fb"), (datum, "cc-fb"), (other, "cc-fb2")])
    _expect(results[0] == results[1], "re-sent forward_backward: other result")
    step = await _result("optim_step", await client.optim_step(adam, request_id="cc-opt"))
    step_again = await (await client.optim_step(adam, request_id="cc-opt")).result()
    _expect(step == step_again, "re-sent optim_step: other result")
    trained = await _logprobs(client, datum)
    _expect(not _close(trained, before, tolerance), "optim_step did not change the model")
    await _expect_error(
        RequestIdConflict,
        "optim_step reusing a forward_backward's request_id",
        lambda: client.optim_step(adam, request_id="cc-fb"),
    )

    once = make_adapter()
    await accumulate(once, [(datum, "a"), (other, "c")])
    await (await once.optim_step(adam, request_id="b")).result()
    _expect(
        _close(await _logprobs(once, datum), trained, tolerance),
        "a re-sent request was applied twice: the model differs from one trained once",
    )
    twice = make_adapter()
    await accumulate(twice, [(datum, "a"), (datum, "x"), (other, "c")])
    await (await twice.optim_step(adam, request_id="b")).result()
    _expect(
        not _close(await _logprobs(twice, datum), trained, tolerance),
        "a gradient applied twice trains like one applied once",
    )

    custom = make_adapter()
    custom_future = await custom.forward_backward_custom([datum], _negated_sum_loss, request_id="a")
    custom_output = await custom_future.result()
    _expect(
        "loss:sum" in custom_output.metrics and "custom:sum" in custom_output.metrics,
        f"forward_backward_custom: metrics {custom_output.metrics}",
    )
    await accumulate(custom, [(other, "c")])
    await (await custom.optim_step(adam, request_id="b")).result()
    _expect(
        _close(await _logprobs(custom, datum), trained, tolerance),
        "forward_backward_custom(-sum(logprobs)) trains unlike cross_entropy with unit weights",
    )

    restored = make_adapter()
    saved = await (await restored.save_state("cc-initial", request_id="save")).result()
    await (await restored.forward_backward([datum], "cross_entropy", request_id="fb")).result()
    await (await restored.optim_step(adam, request_id="opt")).result()
    await (await restored.load_state(saved.path, request_id="load")).result()
    _expect(
        _close(await _logprobs(restored, datum), before, tolerance),
        "load_state did not restore the saved weights",
    )
    await _expect_error(
        ResourceNotFound,
        "load_state of an unknown path",
        lambda: restored.load_state(saved.path + "-missing", request_id="load-missing"),
    )
    await _expect_error(
        ResourceNotFound,
        "create_sampling_client of an unknown path",
        lambda: restored.create_sampling_client(saved.path + "-missing"),
    )

    for_sampler = await (await client.save_weights_for_sampler("cc", request_id="sw")).result()
    sampler = _conforms(SamplingClient, await client.create_sampling_client(for_sampler.path))
    sequence = (*datum.model_input.to_ints(), int(datum.loss_fn_inputs["target_tokens"].data[-1]))
    scored = await (await sampler.compute_logprobs(ModelInput.from_ints(sequence))).result()
    _expect(scored[0] is None, "compute_logprobs: position 0 must be None")
    _expect(
        _close([float(v) for v in scored[1:] if v is not None], trained, sampler_tolerance),
        "the sampling client scores the sequence unlike the training client",
    )
    await _check_checkpoint_capabilities(make_adapter, datum, before, tolerance)


async def _check_checkpoint_capabilities(
    make_adapter: Callable[[], TrainingClient],
    datum: Datum,
    initial: Sequence[float],
    tolerance: float,
) -> None:
    """``SAVE_STATE_WITH_PAYLOAD``, ``CHECKPOINT_PAYLOAD`` and ``CHECKPOINT_DIR``, if declared."""
    client = make_adapter()
    save_with_payload = capability(client, SAVE_STATE_WITH_PAYLOAD)
    read_payload = capability(client, CHECKPOINT_PAYLOAD)
    directory = capability(client, CHECKPOINT_DIR)
    payload = {"context": {"step": 3, "loops": [["epochs", 1]], "state": {"x": [1.5, None]}}}
    saved = await (await client.save_state("cc-plain", request_id="cc-plain")).result()
    if save_with_payload is not None:
        what = "SAVE_STATE_WITH_PAYLOAD"
        first = await save_with_payload("cc-payload", request_id="cc-sp", user_payload=payload)
        with_payload = await _result(what, first)
        again = await save_with_payload("cc-payload", request_id="cc-sp", user_payload=payload)
        _expect(await again.result() == with_payload, f"{what}: a re-sent request, other answer")
        await _expect_error(
            RequestIdConflict,
            f"{what} reusing a request_id with another payload",
            lambda: save_with_payload("cc-payload", request_id="cc-sp", user_payload={"x": 1}),
        )
        await (await client.forward_backward([datum], "cross_entropy", request_id="fb")).result()
        await (await client.optim_step(AdamParams(learning_rate=1e-2), request_id="o")).result()
        await (await client.load_state(with_payload.path, request_id="load")).result()
        _expect(
            _close(await _logprobs(client, datum), initial, tolerance),
            f"{what}: load_state did not restore the weights saved with the payload",
        )
        if read_payload is not None:
            # Resuming reads the payload in a new process: through a new client.
            read_again = capability(make_adapter(), CHECKPOINT_PAYLOAD)
            _expect(read_again is not None, "CHECKPOINT_PAYLOAD: declared by one client only")
            assert read_again is not None
            stored = await read_again(with_payload.path)
            _expect(
                stored == payload,
                f"CHECKPOINT_PAYLOAD: {stored!r}, not the payload saved with the checkpoint",
            )
    if read_payload is not None:
        stored = await read_payload(saved.path)
        _expect(stored is None, f"CHECKPOINT_PAYLOAD: {stored!r} for a checkpoint saved without")
        await _expect_error(
            ResourceNotFound,
            "CHECKPOINT_PAYLOAD of an unknown path",
            lambda: read_payload(saved.path + "-missing"),
        )
    if directory is not None:
        _expect(isinstance(directory, Path), f"CHECKPOINT_DIR: {directory!r} is not a Path")
        checkpoint = Path(saved.path)

        def laid_out() -> bool:
            return (
                checkpoint.resolve().parent.parent == directory.resolve()
                and (checkpoint / "manifest.json").is_file()
            )

        _expect(
            await anyio.to_thread.run_sync(laid_out),
            f"CHECKPOINT_DIR: the checkpoint {saved.path} is not <{directory}>/<kind>/<name>/ "
            "with a manifest.json",
        )


async def check_sampling_client(make_adapter: Callable[[], SamplingClient]) -> None:
    """Check the :class:`~crucible_kitchen.ports.SamplingClient` contract.

    Checked: structure; sequence count, lengths, logprobs and stop reasons; a seeded request
    repeats its samples; a re-sent request returns its first answer; prompt logprobs and
    ``compute_logprobs`` score every position after the first; ``num_samples`` 0 is refused.
    """
    client = _conforms(SamplingClient, make_adapter())
    tokenizer = _conforms(Tokenizer, client.get_tokenizer())
    tokens = tokenizer.encode("Once upon a time")
    prompt = ModelInput.from_ints(tokens)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7)

    response = await _result("sample", await client.sample(prompt, 3, params))
    _expect(isinstance(response, SampleResponse), "sample: not a SampleResponse")
    _expect(len(response.sequences) == 3, f"sample: {len(response.sequences)} sequences for 3")
    for sequence in response.sequences:
        _expect(1 <= len(sequence.tokens) <= 8, f"sample: {len(sequence.tokens)} tokens, max 8")
        _expect(
            sequence.stop_reason == "stop" or len(sequence.tokens) == 8,
            "sample: a sequence ended by length is shorter than max_tokens",
        )
        _expect(
            sequence.logprobs is not None and all(v <= 0 for v in sequence.logprobs),
            f"sample: logprobs {sequence.logprobs}",
        )
    repeated = await (await client.sample(prompt, 3, params)).result()
    _expect(repeated == response, "sample: the same seed gave other samples")

    unseeded = SamplingParams(max_tokens=8)
    first = await (await client.sample(prompt, 2, unseeded, request_id="cs-1")).result()
    again = await (await client.sample(prompt, 2, unseeded, request_id="cs-1")).result()
    _expect(first == again, "sample: a re-sent request gave other samples")

    with_prompt = await client.sample(prompt, 1, params, include_prompt_logprobs=True)
    prompt_logprobs = (await with_prompt.result()).prompt_logprobs
    _expect(
        prompt_logprobs is not None and len(prompt_logprobs) == len(tokens),
        f"sample: prompt_logprobs {prompt_logprobs} for {len(tokens)} prompt tokens",
    )
    scored = await (await client.compute_logprobs(prompt)).result()
    _expect(
        len(scored) == len(tokens) and scored[0] is None,
        f"compute_logprobs: {scored} for {len(tokens)} tokens",
    )
    _expect(
        all(v is not None and v <= 0 for v in scored[1:]),
        f"compute_logprobs: {scored[1:]} must be logprobs",
    )
    await _expect_error(
        InvalidRequest, "sample with num_samples=0", lambda: client.sample(prompt, 0, params)
    )


# ------------------------------------------------------------------------------------------
# Stores and registry


async def check_dataset_store(make_adapter: Callable[[], DatasetStore], *, dataset: str) -> None:
    """Check the :class:`~crucible_kitchen.ports.DatasetStore` contract on ``dataset``.

    Checked: every split reads back whole and by index (repeats and any order); returned
    rows are the caller's own; bad indices, splits and names raise the documented errors.
    """
    store = _conforms(DatasetStore, make_adapter())
    info = await store.describe(dataset)
    _expect(bool(info.splits), f"describe({dataset!r}): no splits")
    for split, size in info.splits.items():
        rows = await store.read_rows(dataset, split=split)
        _expect(len(rows) == size, f"read_rows({split!r}): {len(rows)} rows, describe says {size}")
        if not rows:
            continue
        last = size - 1
        picked = await store.read_rows(dataset, split=split, indices=[last, 0, 0])
        _expect(picked == [rows[last], rows[0], rows[0]], f"read_rows({split!r}) by index")
        picked[0]["__mutated__"] = True
        fresh = await store.read_rows(dataset, split=split, indices=[last])
        _expect("__mutated__" not in fresh[0], "read_rows: changing a row changed the store")
        await _expect_error(
            InvalidRequest,
            f"read_rows({split!r}) at index {size}",
            functools.partial(store.read_rows, dataset, split=split, indices=[size]),
        )
    await _expect_error(
        ResourceNotFound,
        "read_rows of an unknown split",
        lambda: store.read_rows(dataset, split="no-such-split"),
    )
    await _expect_error(
        ResourceNotFound,
        "describe of an unknown dataset",
        lambda: store.describe("no-such-dataset/" + dataset),
    )


_BAD_BLOB_KEYS = (
    "",
    "/abs",
    "../up",
    "a/../b",
    "a//b",
    "./a",
    "a/.",
    "a\\b",
    "a\x00b",
    "a/.ck-tmp-b",
    ".ck-tmp-c",
)


async def check_blob_store(make_adapter: Callable[[], BlobStore]) -> None:
    """Check the :class:`~crucible_kitchen.ports.BlobStore` contract.

    Checked: write, read, exists, list and delete; re-sent writes and deletes return their
    first answer; a reused ``request_id`` with other data raises ``RequestIdConflict``;
    missing keys raise ``ResourceNotFound``; keys that could escape the store are refused.
    """
    store = _conforms(BlobStore, make_adapter())
    data = b"\x00blob\xff"
    expected = BlobInfo(key="a/b.bin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    info = await store.write("a/b.bin", data, request_id="cb-w1")
    _expect(info == expected, f"write: {info}, expected {expected}")
    _expect(await store.read("a/b.bin") == data, "read: other bytes than written")
    _expect(await store.exists("a/b.bin"), "exists: False after write")
    _expect(not await store.exists("a/c.bin"), "exists: True for a key never written")
    await store.write("a/c.bin", b"c", request_id="cb-w2")
    await store.write("z.bin", b"z", request_id="cb-w3")
    keys = await store.list_keys("a/")
    _expect(keys == ["a/b.bin", "a/c.bin"], f"list_keys('a/'): {keys}")

    _expect(
        await store.write("a/b.bin", data, request_id="cb-w1") == info,
        "write: a re-sent request gave another answer",
    )
    await _expect_error(
        RequestIdConflict,
        "write reusing a request_id with other data",
        lambda: store.write("a/b.bin", b"other", request_id="cb-w1"),
    )
    await store.write("a/b.bin", b"new", request_id="cb-w4")
    _expect(await store.read("a/b.bin") == b"new", "write: did not replace the old bytes")

    _expect(await store.delete("a/b.bin", request_id="cb-d1"), "delete: False for a stored key")
    _expect(await store.delete("a/b.bin", request_id="cb-d1"), "delete: re-sent, other answer")
    _expect(not await store.exists("a/b.bin"), "exists: True after delete")
    await _expect_error(ResourceNotFound, "read of a deleted key", lambda: store.read("a/b.bin"))
    for key in _BAD_BLOB_KEYS:
        write = functools.partial(store.write, key, b"x", request_id=f"cb-bad-{key}")
        await _expect_error(InvalidRequest, f"write to key {key!r}", write)
        read = functools.partial(store.read, key)
        await _expect_error(InvalidRequest, f"read of key {key!r}", read)


async def check_metrics_store(make_adapter: Callable[[], MetricsStore]) -> None:
    """Check the :class:`~crucible_kitchen.ports.MetricsStore` contract.

    Checked: points read back by run, by name, ordered by step then record order; a re-sent
    record adds nothing; a reused ``request_id`` with other points raises
    ``RequestIdConflict``; ``flush`` returns.
    """
    store = _conforms(MetricsStore, make_adapter())
    points = [
        MetricPoint(run_id="r1", name="loss", step=2, value=0.5),
        MetricPoint(run_id="r1", name="loss", step=1, value=0.9),
        MetricPoint(run_id="r1", name="lr", step=1, value=1e-3, tags={"phase": "warmup"}),
        MetricPoint(run_id="r2", name="loss", step=1, value=0.7),
    ]
    await store.record(points, request_id="cm-1")
    await store.record(points, request_id="cm-1")
    await store.flush()
    run = await store.read("r1")
    _expect(run == [points[1], points[2], points[0]], f"read('r1'): {run}")
    losses = await store.read("r1", name="loss")
    _expect(losses == [points[1], points[0]], f"read('r1', name='loss'): {losses}")
    _expect(await store.read("r2") == [points[3]], "read('r2'): other points")
    await _expect_error(
        RequestIdConflict,
        "record reusing a request_id with other points",
        lambda: store.record(points[:1], request_id="cm-1"),
    )


async def check_model_registry(make_adapter: Callable[[], ModelRegistry]) -> None:
    """Check the :class:`~crucible_kitchen.ports.ModelRegistry` contract.

    Checked: register, get, list (all and by name); a re-sent register returns its first
    answer; registering a name and version twice is refused; unknown ids raise
    ``ResourceNotFound``.
    """
    registry = _conforms(ModelRegistry, make_adapter())
    artifact = ModelArtifact(
        name="cc-model", version="1", artifact_uri="blob://cc/1", metrics={"loss": 0.5}
    )
    model = await registry.register(artifact, request_id="cr-1")
    _expect(model.artifact == artifact, f"register: stored {model.artifact}, not {artifact}")
    _expect(
        await registry.register(artifact, request_id="cr-1") == model,
        "register: a re-sent request gave another answer",
    )
    _expect(await registry.get(model.model_id) == model, "get: not the registered model")
    other = await registry.register(
        ModelArtifact(name="cc-other", version="1", artifact_uri="blob://o/1"), request_id="cr-2"
    )
    _expect(await registry.list_models() == [model, other], "list_models: not both, in order")
    _expect(await registry.list_models(name="cc-model") == [model], "list_models(name=...)")
    await _expect_error(
        InvalidRequest,
        "register of a name and version already registered",
        lambda: registry.register(artifact, request_id="cr-3"),
    )
    await _expect_error(
        ResourceNotFound, "get of an unknown id", lambda: registry.get(model.model_id + "-x")
    )


async def check_evaluator(
    make_adapter: Callable[[], Evaluator], *, model: SamplingClient, rows: Sequence[DatasetRow]
) -> None:
    """Check the :class:`~crucible_kitchen.ports.Evaluator` contract on ``rows``.

    Checked: an ``EvalResult`` of finite metrics that counts every row.
    """
    evaluator = _conforms(Evaluator, make_adapter())
    result = await evaluator.evaluate(model, rows)
    _expect(isinstance(result, EvalResult), "evaluate: not an EvalResult")
    _expect(result.num_samples == len(rows), f"evaluate: {result.num_samples} of {len(rows)}")
    _expect(
        bool(result.metrics) and all(math.isfinite(v) for v in result.metrics.values()),
        f"evaluate: metrics {result.metrics}",
    )


# ------------------------------------------------------------------------------------------
# Tokenizer, renderer, environments


def check_tokenizer(make_adapter: Callable[[], Tokenizer]) -> None:
    """Check the :class:`~crucible_kitchen.ports.Tokenizer` contract.

    Checked: ids are in the vocabulary; plain text decodes back to itself.
    """
    tokenizer = _conforms(Tokenizer, make_adapter())
    _expect(tokenizer.vocab_size > 0, f"vocab_size {tokenizer.vocab_size}")
    for special in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        _expect(
            special is None or 0 <= special < tokenizer.vocab_size,
            f"special token {special} outside the vocabulary",
        )
    text = "Hello, world! 42"
    plain = tokenizer.encode(text, add_special_tokens=False)
    _expect(all(0 <= t < tokenizer.vocab_size for t in plain), f"encode: ids {plain} out of range")
    _expect(
        tokenizer.decode(plain) == text,
        f"decode(encode(t)) is {tokenizer.decode(plain)!r}, not {text!r}",
    )
    _expect(len(tokenizer.encode(text)) >= len(plain), "encode: special tokens removed tokens")


def check_renderer(make_adapter: Callable[[], Renderer]) -> None:
    """Check the :class:`~crucible_kitchen.ports.Renderer` contract.

    Checked: a supervised example extends the generation prompt of its history, weighs
    only the reply, and its reply parses back to the assistant message; a reply cut
    before its stop tokens parses as unfinished.
    """
    renderer = _conforms(Renderer, make_adapter())
    history = [Message(role="user", content="What is 2 + 2?")]
    reply = Message(role="assistant", content="4")
    prompt = renderer.build_generation_prompt(history).to_ints()
    model_input, weights = renderer.build_supervised_example([*history, reply])
    tokens = model_input.to_ints()
    _expect(
        weights.dims == (len(tokens),), f"weights of shape {weights.dims}, {len(tokens)} tokens"
    )
    _expect(tokens[: len(prompt)] == prompt, "the example does not start with the prompt")
    _expect(all(w == 0 for w in weights.data[: len(prompt)]), "the prompt carries training weight")
    _expect(any(w > 0 for w in weights.data[len(prompt) :]), "the reply carries no weight")
    completion = tokens[len(prompt) :]
    parsed, finished = renderer.parse_response(completion)
    _expect(
        finished and parsed == reply, f"parse_response: {parsed}, {finished} instead of {reply}"
    )
    stop = renderer.get_stop_sequences()
    _expect(bool(stop), "get_stop_sequences: empty")
    if all(isinstance(s, int) for s in stop):
        cut = list(completion)
        while cut and cut[-1] in stop:
            cut.pop()
        _, finished = renderer.parse_response(cut)
        _expect(not finished, "parse_response: a reply without its stop token is finished")


async def check_env_group_builder(make_adapter: Callable[[], EnvGroupBuilder]) -> None:
    """Check the :class:`~crucible_kitchen.ports.EnvGroupBuilder` and ``Env`` contracts.

    Checked: environments start with a non-empty observation, answer an action with a
    finite reward, and the group reward covers every trajectory.
    """
    builder = _conforms(EnvGroupBuilder, make_adapter())
    envs = await builder.make_envs()
    _expect(len(envs) > 0, "make_envs: no environments")
    trajectories = []
    for env in envs:
        observation, _stop = await env.initial_observation()
        _expect(observation.length > 0, "initial_observation: empty")
        action = TokensWithLogprobs(tokens=tuple(observation.to_ints()[-3:]))
        result = await env.step(action.tokens)
        _expect(isinstance(result, StepResult), "step: not a StepResult")
        _expect(math.isfinite(result.reward), f"step: reward {result.reward}")
        transition = Transition(
            observation=observation,
            action=action,
            reward=result.reward,
            episode_done=result.episode_done,
        )
        trajectories.append(
            Trajectory(transitions=(transition,), final_observation=result.next_observation)
        )
    rewards = await builder.compute_group_rewards(trajectories)
    _expect(len(rewards) == len(envs), f"compute_group_rewards: {len(rewards)} for {len(envs)}")
    tags = builder.logging_tags()
    _expect(all(isinstance(tag, str) for tag in tags), f"logging_tags: {tags}")

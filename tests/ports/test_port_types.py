"""The ports' data types: msgspec round trips, validation, and helpers."""

from __future__ import annotations

import math
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import crucible_kitchen.ports as ports
from crucible_kitchen.ports import (
    LOSS_FN_INPUTS,
    AdamParams,
    BlobInfo,
    CuratedExample,
    CustomLossOutput,
    DatasetInfo,
    Datum,
    EncodedTextChunk,
    EvalResult,
    FeedbackExport,
    FeedbackTrigger,
    ForwardBackwardOutput,
    ImageChunk,
    LoadStateResponse,
    LossFnType,
    Message,
    MetricPoint,
    ModelArtifact,
    ModelInfo,
    ModelInput,
    ModelInputChunk,
    OptimStepResponse,
    RegisteredModel,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    SaveStateResponse,
    SaveWeightsForSamplerResponse,
    StepResult,
    TensorData,
    TokensWithLogprobs,
    Trajectory,
    Transition,
)

# ------------------------------------------------------------------------------------------
# Strategies: one per struct type

finite = st.floats(allow_nan=False, allow_infinity=False)
logprob = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)
token_id = st.integers(min_value=0, max_value=2**31)
name = st.text(max_size=12)
metrics = st.dictionaries(name, finite, max_size=3)
tags = st.dictionaries(name, name, max_size=3)

encoded_text_chunks = st.builds(EncodedTextChunk, tokens=st.lists(token_id, max_size=8).map(tuple))
image_chunks = st.builds(
    ImageChunk,
    data=st.binary(max_size=16),
    format=st.sampled_from(["png", "jpeg"]),
    expected_tokens=st.none() | st.integers(min_value=0, max_value=64),
)
model_inputs = st.builds(
    ModelInput, chunks=st.lists(encoded_text_chunks | image_chunks, max_size=3).map(tuple)
)
stop_conditions = st.lists(name, max_size=3).map(tuple) | st.lists(token_id, max_size=3).map(tuple)


@st.composite
def tensors(draw: st.DrawFn) -> TensorData:
    dtype: ports.TensorDType = draw(st.sampled_from(get_args(ports.TensorDType)))
    shape = draw(st.none() | st.lists(st.integers(0, 3), max_size=3).map(tuple))
    size = draw(st.integers(0, 6)) if shape is None else math.prod(shape)
    values = st.integers(-(2**63), 2**63 - 1) if dtype == "int64" else finite
    data = draw(st.lists(values, min_size=size, max_size=size))
    return TensorData(dtype=dtype, data=tuple(data), shape=shape)


@st.composite
def sampled_sequences(draw: st.DrawFn) -> SampledSequence:
    tokens = draw(st.lists(token_id, max_size=6))
    logprobs = draw(st.none() | st.lists(logprob, min_size=len(tokens), max_size=len(tokens)))
    return SampledSequence(
        tokens=tuple(tokens),
        logprobs=None if logprobs is None else tuple(logprobs),
        stop_reason=draw(st.sampled_from(["stop", "length"])),
    )


@st.composite
def tokens_with_logprobs(draw: st.DrawFn) -> TokensWithLogprobs:
    tokens = draw(st.lists(token_id, max_size=6))
    logprobs = draw(st.none() | st.lists(logprob, min_size=len(tokens), max_size=len(tokens)))
    return TokensWithLogprobs(
        tokens=tuple(tokens), logprobs=None if logprobs is None else tuple(logprobs)
    )


tensor_maps = st.dictionaries(name, tensors(), max_size=3)
transitions = st.builds(
    Transition,
    observation=model_inputs,
    action=tokens_with_logprobs(),
    reward=finite,
    episode_done=st.booleans(),
    metrics=metrics,
)
model_artifacts = st.builds(
    ModelArtifact,
    name=name,
    version=name,
    artifact_uri=name,
    metadata=tags,
    metrics=metrics,
    lineage=tags,
)

STRATEGIES: dict[type[msgspec.Struct], st.SearchStrategy[Any]] = {
    AdamParams: st.builds(
        AdamParams,
        learning_rate=st.floats(0, 1),
        beta1=st.floats(0, 1, exclude_max=True),
        beta2=st.floats(0, 1, exclude_max=True),
        eps=st.floats(1e-15, 1e-3),
        weight_decay=st.floats(0, 1),
        grad_clip_norm=st.floats(0, 10),
    ),
    BlobInfo: st.builds(BlobInfo, key=name, size=st.integers(0, 2**40), sha256=name),
    CustomLossOutput: st.builds(
        CustomLossOutput,
        loss=finite,
        logprob_grads=st.lists(tensors(), max_size=3).map(tuple),
        metrics=metrics,
    ),
    DatasetInfo: st.builds(
        DatasetInfo,
        name=name,
        splits=st.dictionaries(name, st.integers(0, 10**6), max_size=3),
        columns=st.lists(name, max_size=4).map(tuple),
    ),
    Datum: st.builds(Datum, model_input=model_inputs, loss_fn_inputs=tensor_maps),
    EncodedTextChunk: encoded_text_chunks,
    EvalResult: st.builds(EvalResult, metrics=metrics, num_samples=st.integers(0, 10**6)),
    ForwardBackwardOutput: st.builds(
        ForwardBackwardOutput,
        loss_fn_output_type=name,
        loss_fn_outputs=st.lists(tensor_maps, max_size=3).map(tuple),
        metrics=metrics,
    ),
    ImageChunk: image_chunks,
    LoadStateResponse: st.builds(LoadStateResponse, path=name),
    Message: st.builds(Message, role=name, content=st.text(max_size=40)),
    MetricPoint: st.builds(
        MetricPoint,
        run_id=name,
        name=name,
        step=st.integers(0, 10**9),
        value=finite,
        tags=tags,
    ),
    ModelArtifact: model_artifacts,
    ModelInfo: st.builds(
        ModelInfo,
        model_id=name,
        base_model=name,
        is_lora=st.booleans(),
        lora_rank=st.none() | st.integers(1, 256),
        tokenizer_id=st.none() | name,
    ),
    ModelInput: model_inputs,
    OptimStepResponse: st.builds(OptimStepResponse, metrics=metrics),
    RegisteredModel: st.builds(RegisteredModel, model_id=name, artifact=model_artifacts),
    SampleResponse: st.builds(
        SampleResponse,
        sequences=st.lists(sampled_sequences(), max_size=3).map(tuple),
        prompt_logprobs=st.none() | st.lists(st.none() | logprob, max_size=5).map(tuple),
    ),
    SampledSequence: sampled_sequences(),
    SamplingParams: st.builds(
        SamplingParams,
        max_tokens=st.none() | st.integers(1, 4096),
        temperature=st.floats(0, 2),
        top_k=st.just(-1) | st.integers(1, 100),
        top_p=st.floats(0, 1, exclude_min=True),
        stop=st.none() | stop_conditions,
        seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    ),
    SaveStateResponse: st.builds(SaveStateResponse, path=name),
    SaveWeightsForSamplerResponse: st.builds(SaveWeightsForSamplerResponse, path=name),
    StepResult: st.builds(
        StepResult,
        reward=finite,
        episode_done=st.booleans(),
        next_observation=model_inputs,
        next_stop_condition=stop_conditions,
        metrics=metrics,
    ),
    TensorData: tensors(),
    TokensWithLogprobs: tokens_with_logprobs(),
    Trajectory: st.builds(
        Trajectory,
        transitions=st.lists(transitions, max_size=2).map(tuple),
        final_observation=model_inputs,
    ),
    Transition: transitions,
    FeedbackTrigger: st.builds(
        FeedbackTrigger, kind=name, value=finite, threshold=finite, detail=name
    ),
    CuratedExample: st.builds(
        CuratedExample, example_id=name, prompt=name, response=name, source=name, score=finite
    ),
    FeedbackExport: st.builds(
        FeedbackExport,
        dataset=name,
        split=name,
        num_examples=st.integers(0, 100),
        format=st.sampled_from(["jsonl", "parquet"]),
    ),
}

STRUCT_TYPES = sorted(STRATEGIES, key=lambda cls: cls.__name__)


def test_every_exported_struct_has_a_strategy() -> None:
    exported = {
        obj
        for obj in (getattr(ports, name) for name in ports.__all__)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct)
    }
    assert exported == set(STRATEGIES)


@pytest.mark.parametrize("struct_type", STRUCT_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_round_trip(struct_type: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[struct_type])
    assert msgspec.json.decode(msgspec.json.encode(value), type=struct_type) == value


@pytest.mark.parametrize("struct_type", STRUCT_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_msgpack_round_trip(struct_type: type[msgspec.Struct], data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[struct_type])
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=struct_type) == value


@given(chunk=encoded_text_chunks | image_chunks)
def test_chunks_decode_through_their_tagged_union(chunk: ModelInputChunk) -> None:
    encoded = msgspec.json.encode(chunk)
    assert msgspec.json.decode(encoded, type=ModelInputChunk) == chunk
    assert msgspec.json.decode(encoded)["type"] in ("encoded_text", "image")


def test_msgpack_carries_infinite_logprobs() -> None:
    tensor = TensorData(dtype="float32", data=(-math.inf, 0.0))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(tensor), type=TensorData) == tensor


# ------------------------------------------------------------------------------------------
# Invalid payloads


@pytest.mark.parametrize(
    ("struct_type", "payload", "message"),
    [
        (
            TensorData,
            b'{"dtype": "int64", "data": [1, 2, 3], "shape": [2, 2]}',
            "shape (2, 2) holds 4 values, data has 3",
        ),
        (TensorData, b'{"dtype": "int64", "data": [1.5]}', "int64 data[0] is 1.5"),
        (TensorData, b'{"dtype": "bfloat16", "data": []}', "at `$.dtype`"),
        (TensorData, b'{"dtype": "float32", "data": [-1], "shape": [-1]}', "negative dimension"),
        (EncodedTextChunk, b'{"type": "encoded_text", "tokens": [3, -1]}', "token 1 is -1"),
        (ModelInput, b'{"chunks": [{"type": "audio"}]}', "at `$.chunks[0].type`"),
        (ImageChunk, b'{"type": "image", "data": "", "format": "gif"}', "at `$.format`"),
        (Datum, b'{"loss_fn_inputs": {}}', "missing required field `model_input`"),
        (
            Datum,
            b'{"model_input": {}, "loss_fn_inputs": {"weights": {"dtype": "x", "data": []}}}',
            "at `$.loss_fn_inputs[...].dtype`",
        ),
        (SamplingParams, b'{"temperature": -1}', "temperature -1.0 must be >= 0"),
        (SamplingParams, b'{"top_p": 0}', "top_p 0.0 must be in (0, 1]"),
        (SamplingParams, b'{"top_k": 0}', "top_k 0 must be -1 (off) or >= 1"),
        (SamplingParams, b'{"max_tokens": 0}', "max_tokens 0 must be >= 1"),
        (SamplingParams, b'{"stop": ["a", 1]}', "all strings or all token ids"),
        (AdamParams, b'{"beta1": 1.0, "eps": 0}', "beta1 1.0 must be in [0, 1); eps 0.0"),
        (
            SampledSequence,
            b'{"tokens": [1], "logprobs": [-1, -2], "stop_reason": "stop"}',
            "2 logprobs for 1 tokens",
        ),
        (SampledSequence, b'{"tokens": [], "stop_reason": "eos"}', "at `$.stop_reason`"),
        (StepResult, b'{"reward": "high"}', "Expected `float`, got `str`"),
    ],
)
def test_invalid_payloads_are_rejected_naming_the_problem(
    struct_type: type[msgspec.Struct], payload: bytes, message: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(payload, type=struct_type)
    assert message in str(raised.value)


def test_construction_runs_the_same_checks_as_decoding() -> None:
    with pytest.raises(ValueError, match="shape"):
        TensorData(dtype="float32", data=(1.0,), shape=(2,))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError, match="learning_rate"):
        AdamParams(learning_rate=math.nan)
    with pytest.raises(ValueError, match="all strings or all token ids"):
        StepResult(
            reward=0.0,
            episode_done=True,
            next_observation=ModelInput(),
            next_stop_condition=("a", 2),
        )


# ------------------------------------------------------------------------------------------
# Helpers


def test_model_input_helpers() -> None:
    model_input = ModelInput.from_ints([5, 6]).append_int(7)
    assert model_input.chunks == (EncodedTextChunk(tokens=(5, 6, 7)),)
    assert model_input.to_ints() == [5, 6, 7]
    assert ModelInput.empty().length == 0

    with_image = model_input.append(ImageChunk(data=b"", format="png", expected_tokens=4))
    assert with_image.length == 7
    assert with_image.append_int(8).chunks[-1] == EncodedTextChunk(tokens=(8,))
    with pytest.raises(ValueError, match="chunk of type 'ImageChunk'"):
        with_image.to_ints()
    with pytest.raises(ValueError, match="expected_tokens is None"):
        _ = ModelInput(chunks=(ImageChunk(data=b"", format="png"),)).length


def test_tensor_from_nested_list_and_back() -> None:
    tensor = TensorData.from_list([[1, 2, 3], [4, 5, 6]])
    assert (tensor.dtype, tensor.shape, tensor.data) == ("int64", (2, 3), (1, 2, 3, 4, 5, 6))
    assert tensor.tolist() == [[1, 2, 3], [4, 5, 6]]

    flat = TensorData.from_list([1, 2.5])
    assert (flat.dtype, flat.shape, flat.dims, flat.data) == ("float32", None, (2,), (1.0, 2.5))
    assert TensorData.from_list([1, 2], dtype="float32").data == (1.0, 2.0)
    assert TensorData.from_list([[], []]).dims == (2, 0)
    assert TensorData(dtype="float32", data=(1.5,), shape=()).tolist() == 1.5


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        ([[1, 2], [3]], None, "ragged"),
        ([[1, 2], 3], None, r"ragged nesting at values\[1\]"),
        ([1.5], "int64", r"int64 data\[0\] is 1.5"),
        (["a"], "float32", "must be numbers"),
    ],
)
def test_tensor_from_list_rejects_bad_values(
    values: list[Any], dtype: ports.TensorDType | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TensorData.from_list(values, dtype=dtype)


@given(tensor=tensors())
def test_tensor_list_round_trip(tensor: TensorData) -> None:
    values = tensor.tolist()
    assume(isinstance(values, list))  # a 0-d tensor's tolist() is a bare number
    assert isinstance(values, list)
    assert TensorData.from_list(values, dtype=tensor.dtype).data == tensor.data


def test_every_loss_lists_its_inputs() -> None:
    assert set(LOSS_FN_INPUTS) == set(get_args(LossFnType))
    assert all("target_tokens" in keys for keys in LOSS_FN_INPUTS.values())


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(
    "field", ["learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"]
)
def test_adam_params_refuse_non_finite_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{field} .* must be finite"):
        AdamParams(**{field: value})


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_sampling_params_refuse_a_non_finite_temperature(value: float) -> None:
    with pytest.raises(ValueError, match=r"temperature .* must be >= 0 and finite"):
        SamplingParams(temperature=value)

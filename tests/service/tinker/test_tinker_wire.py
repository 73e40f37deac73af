"""The wire codecs against the SDK's own encoders and decoders: sparse CSR tensors in,
records of mixed shapes out, malformed bodies refused with the field named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)

from crucible_kitchen.ports import (
    ForwardBackwardOutput,
    SampledSequence,
    SampleResponse,
    TensorData,
)
from crucible_kitchen.service.tinker._errors import WireError
from crucible_kitchen.service.tinker._wire import (
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
)


def _request_bytes(datum: types.Datum, **config: float | str) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=[datum], loss_fn="cross_entropy", loss_fn_config=config or None
        ),
        model_id="sess-0000000000000000:train:0",
        seq_id=7,
    )
    message = forward_backward_request_to_proto(request)
    message.forward_only = True
    encoded: bytes = message.SerializeToString()
    return encoded


def test_sparse_targets_and_loss_config_decode_to_dense_port_tensors() -> None:
    weights = torch.zeros(2, 8)
    weights[0, 1], weights[1, 6] = 0.5, 0.75
    targets = torch.zeros(2, 8, dtype=torch.int64)
    targets[0, 1], targets[1, 6] = 7, 9
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([5, 6]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_torch_sparse(targets),
            "weights": types.TensorData.from_torch_sparse(weights),
        },
    )
    assert datum.loss_fn_inputs["weights"].sparse_crow_indices is not None
    call = decode_forward_backward(_request_bytes(datum, beta=0.5, mode="fast"))
    assert (call.model_id, call.seq_id, call.forward_only) == (
        "sess-0000000000000000:train:0",
        7,
        True,
    )
    assert call.loss_fn_config == {"beta": 0.5, "mode": "fast"}
    (decoded,) = call.data
    assert decoded.model_input.to_ints() == [5, 6]
    assert decoded.loss_fn_inputs["weights"] == TensorData(
        dtype="float32", data=tuple(weights.flatten().tolist()), shape=(2, 8)
    )
    assert decoded.loss_fn_inputs["target_tokens"].data == tuple(targets.flatten().tolist())


def test_malformed_bodies_are_refused_with_the_field_named() -> None:
    with pytest.raises(WireError, match="not a protobuf"):
        decode_forward_backward(b"\xff\xff\xff")
    message = pb.ForwardBackwardRequest(model_id="m", seq_id=1, loss_fn="cross_entropy")
    datum = message.data.add()
    datum.model_input.add().encoded_text.tokens = np.array([1, 2], dtype="<i4").tobytes()
    weights = datum.loss_fn_inputs["weights"]
    weights.dtype = pb.DTYPE_FLOAT32
    weights.dense = np.array([1.0, 2.0], dtype="<f4").tobytes()
    weights.shape.extend([3])
    with pytest.raises(WireError, match=r"data\[0\].loss_fn_inputs\['weights'\]: shape \[3\]"):
        decode_forward_backward(message.SerializeToString())
    datum.model_input.add().image.data = b"png"
    with pytest.raises(WireError, match=r"model_input\[1\]: only encoded_text"):
        decode_forward_backward(message.SerializeToString())


def test_outputs_of_mixed_shapes_round_trip_through_the_sdk_decoder() -> None:
    output = ForwardBackwardOutput(
        loss_fn_output_type="cross_entropy",
        loss_fn_outputs=(
            {"logprobs": TensorData(dtype="float32", data=(-1.0, -2.0))},
            {"logprobs": TensorData(dtype="float32", data=(-3.0,))},
            {"logprobs": TensorData(dtype="float32", data=(-1.5, -0.5), shape=(1, 2))},
        ),
        metrics={"loss:sum": 8.0},
    )
    decoded = deserialize_forward_backward_output(encode_forward_backward_output(output))
    assert decoded.metrics == {"loss:sum": 8.0}
    assert [out["logprobs"].tolist() for out in decoded.loss_fn_outputs] == [
        [-1.0, -2.0],
        [-3.0],
        [[-1.5, -0.5]],
    ]


def test_sample_responses_round_trip_through_the_sdk_decoder() -> None:
    response = SampleResponse(
        sequences=(
            SampledSequence(tokens=(4, 5), logprobs=(-0.5, -0.25), stop_reason="stop"),
            SampledSequence(tokens=(6,), logprobs=None, stop_reason="length"),
        ),
        prompt_logprobs=(None, -1.0, -2.0),
    )
    top = (
        np.array([[0, 0], [3, 1], [2, 9]]),
        np.array([[-99999.0] * 2, [-0.1, -2.0], [-0.2, -3.0]], dtype=np.float32),
    )
    decoded = deserialize_sample_response(encode_sample_response(response, top))
    assert [s.tokens for s in decoded.sequences] == [[4, 5], [6]]
    assert [s.stop_reason for s in decoded.sequences] == ["stop", "length"]
    assert decoded.sequences[0].logprobs == [-0.5, -0.25]
    assert decoded.sequences[1].logprobs is None
    assert decoded.prompt_logprobs == [None, -1.0, -2.0]
    assert decoded.topk_prompt_logprobs is not None
    assert decoded.topk_prompt_logprobs[0] is None
    assert decoded.topk_prompt_logprobs[1] == [(3, pytest.approx(-0.1)), (1, -2.0)]

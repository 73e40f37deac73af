"""Tinker's wire formats to and from the port types: the protobuf forward-backward request
and outputs, the protobuf sample response, and the JSON sampling types.

The protobuf schema is the SDK's own (``tinker.proto.tinker_public_pb2``). Every decoding
error is a :class:`WireError` naming the field; the server answers it as the client's fault.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import msgspec
import numpy as np
from tinker.proto import tinker_public_pb2 as pb

from crucible_kitchen.ports import (
    Datum,
    EncodedTextChunk,
    ModelInput,
    SamplingParams,
    TensorData,
)

from ._errors import WireError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import NDArray
    from tinker import types as tinker_types

    from crucible_kitchen.ports import ForwardBackwardOutput, SampleResponse, TensorDType

__all__ = (
    "FORWARD_BACKWARD_OUTPUT_TYPE",
    "ForwardBackwardCall",
    "decode_forward_backward",
    "encode_forward_backward_output",
    "encode_sample_response",
    "model_input_from_sdk",
    "sampling_params_from_sdk",
)

FORWARD_BACKWARD_OUTPUT_TYPE: Final = "ArrayRecord"

_DENSE_DTYPES: Final[Mapping[int, tuple[TensorDType, np.dtype[np.generic]]]] = {
    pb.DTYPE_FLOAT32: ("float32", np.dtype(np.float32)),
    pb.DTYPE_INT64: ("int64", np.dtype(np.int64)),
}
_OUTPUT_DTYPES: Final[Mapping[str, tuple[int, np.dtype[np.generic]]]] = {
    "float32": (pb.DTYPE_FLOAT32, np.dtype(np.float32)),
    "int64": (pb.DTYPE_INT64, np.dtype(np.int64)),
}


class ForwardBackwardCall(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded ``POST /api/v1/forward_backward`` body."""

    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]
    forward_only: bool
    data: tuple[Datum, ...]


def decode_forward_backward(body: bytes) -> ForwardBackwardCall:
    """Decode a protobuf ``ForwardBackwardRequest`` (already decompressed).

    Raises:
        WireError: the bytes are not the message, or a datum is malformed (a non-text
            chunk, a tensor whose bytes do not fit its dtype and shape, ...).
    """
    message = pb.ForwardBackwardRequest()
    try:
        message.ParseFromString(body)
    except Exception as exc:  # protobuf raises its own DecodeError (a plain Exception)
        raise WireError(f"the body is not a protobuf ForwardBackwardRequest: {exc}") from exc
    config: dict[str, float | str] = dict(message.loss_fn_config)
    for key, value in message.loss_fn_config_v2.items():
        config[key] = value.text if value.WhichOneof("value") == "text" else value.number
    data = tuple(_datum(index, datum) for index, datum in enumerate(message.data))
    return ForwardBackwardCall(
        model_id=message.model_id,
        seq_id=message.seq_id,
        loss_fn=message.loss_fn,
        loss_fn_config=config,
        forward_only=message.forward_only,
        data=data,
    )


def _datum(index: int, message: pb.Datum) -> Datum:
    tokens: list[int] = []
    for position, chunk in enumerate(message.model_input):
        if chunk.WhichOneof("chunk") != "encoded_text":
            raise WireError(
                f"data[{index}].model_input[{position}]: only encoded_text chunks are "
                f"supported, got {chunk.WhichOneof('chunk')}"
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise WireError(f"data[{index}].model_input[{position}]: tokens are not int32s")
        tokens.extend(np.frombuffer(raw, dtype="<i4").tolist())
    inputs = {
        name: _tensor(f"data[{index}].loss_fn_inputs[{name!r}]", tensor)
        for name, tensor in message.loss_fn_inputs.items()
    }
    try:
        return Datum(model_input=ModelInput.from_ints(tokens), loss_fn_inputs=inputs)
    except ValueError as exc:
        raise WireError(f"data[{index}]: {exc}") from exc


def _tensor(where: str, message: pb.Tensor) -> TensorData:
    known = _DENSE_DTYPES.get(message.dtype)
    if known is None:
        raise WireError(f"{where}: dtype {message.dtype} is neither float32 nor int64")
    dtype, np_dtype = known
    shape = tuple(int(dim) for dim in message.shape)
    try:
        if message.WhichOneof("encoding") == "sparse_csr":
            array = _dense_from_csr(message.sparse_csr, np_dtype, shape)
        else:
            array = np.frombuffer(message.dense, dtype=np_dtype.newbyteorder("<"))
        if shape and math.prod(shape) != array.size:
            raise ValueError(f"shape {list(shape)} does not hold {array.size} values")
        return TensorData(
            dtype=dtype, data=tuple(array.tolist()), shape=shape if len(shape) > 1 else None
        )
    except ValueError as exc:
        raise WireError(f"{where}: {exc}") from exc


def _dense_from_csr(
    csr: pb.SparseCsr, np_dtype: np.dtype[np.generic], shape: tuple[int, ...]
) -> NDArray[np.generic]:
    if len(shape) != 2:
        raise ValueError(f"a sparse tensor needs a 2-d shape, got {list(shape)}")
    rows, cols = shape
    values = np.frombuffer(csr.values, dtype=np_dtype.newbyteorder("<"))
    crow = np.frombuffer(csr.crow_indices, dtype="<i8")
    col = np.frombuffer(csr.col_indices, dtype="<i8")
    if len(crow) != rows + 1 or len(col) != len(values) or (len(col) and col.max() >= cols):
        raise ValueError("sparse CSR indices do not fit the shape")
    dense = np.zeros(shape, dtype=np_dtype)
    row_of = np.repeat(np.arange(rows), np.diff(crow))
    dense[row_of, col] = values
    return dense.reshape(-1)


def encode_forward_backward_output(output: ForwardBackwardOutput) -> bytes:
    """The protobuf ``ForwardBackwardOutput`` of a port result.

    Datums whose fields share one trailing shape go into one ``ArrayRecord``; a datum whose
    shapes differ starts a new record (the SDK concatenates records).
    """
    message = pb.ForwardBackwardOutput(loss_fn_output_type=FORWARD_BACKWARD_OUTPUT_TYPE)
    for key, value in output.metrics.items():
        message.metrics[key] = float(value)
    group: list[Mapping[str, TensorData]] = []
    signature: tuple[tuple[str, str, tuple[int, ...]], ...] | None = None
    for datum in output.loss_fn_outputs:
        shape = tuple(
            (name, tensor.dtype, tensor.dims[1:]) for name, tensor in sorted(datum.items())
        )
        if group and shape != signature:
            _add_record(message, group)
            group = []
        group.append(datum)
        signature = shape
    if group:
        _add_record(message, group)
    encoded: bytes = message.SerializeToString()
    return encoded


def _add_record(
    message: pb.ForwardBackwardOutput, datums: Sequence[Mapping[str, TensorData]]
) -> None:
    record = message.loss_fn_outputs.add(
        type_tag=FORWARD_BACKWARD_OUTPUT_TYPE, num_datums=len(datums)
    )
    for name, first in datums[0].items():
        proto_dtype, np_dtype = _OUTPUT_DTYPES[first.dtype]
        arrays = [np.asarray(datum[name].data, dtype=np_dtype) for datum in datums]
        offsets = np.zeros(len(arrays) + 1, dtype="<i8")
        offsets[1:] = np.cumsum([array.nbytes for array in arrays])
        field = record.fields[name]
        field.data = b"".join(array.tobytes() for array in arrays)
        field.offsets = offsets.tobytes()
        field.dtype = proto_dtype
        field.trailing_shape.extend(first.dims[1:])


def encode_sample_response(
    response: SampleResponse,
    topk_prompt: tuple[NDArray[np.int64], NDArray[np.float32]] | None = None,
) -> bytes:
    """The protobuf ``SampleResponse`` of a port result; ``topk_prompt`` adds the top-k
    prompt logprobs as ``(token_ids, logprobs)``, both shaped ``(prompt length, k)``."""
    message = pb.SampleResponse()
    for sequence in response.sequences:
        entry = message.sequences.add(
            stop_reason=pb.STOP_REASON_STOP
            if sequence.stop_reason == "stop"
            else pb.STOP_REASON_LENGTH,
            tokens=np.asarray(sequence.tokens, dtype="<i4").tobytes(),
        )
        if sequence.logprobs is not None:
            entry.logprobs = np.asarray(sequence.logprobs, dtype="<f4").tobytes()
    if response.prompt_logprobs is not None:
        values = [math.nan if lp is None else lp for lp in response.prompt_logprobs]
        message.prompt_logprobs = np.asarray(values, dtype="<f4").tobytes()
    if topk_prompt is not None:
        token_ids, logprobs = topk_prompt
        length, k = token_ids.shape
        message.topk_prompt_logprobs.token_ids = token_ids.astype("<i4").tobytes()
        message.topk_prompt_logprobs.logprobs = logprobs.astype("<f4").tobytes()
        message.topk_prompt_logprobs.k = k
        message.topk_prompt_logprobs.length = length
    encoded: bytes = message.SerializeToString()
    return encoded


def model_input_from_sdk(model_input: tinker_types.ModelInput) -> ModelInput:
    """The port's model input of an SDK one (text chunks only).

    Raises:
        WireError: a chunk is not text.
    """
    chunks = []
    for position, chunk in enumerate(model_input.chunks):
        if chunk.type != "encoded_text":
            raise WireError(f"prompt.chunks[{position}]: only encoded_text chunks are supported")
        try:
            chunks.append(EncodedTextChunk(tokens=tuple(chunk.tokens)))
        except ValueError as exc:
            raise WireError(f"prompt.chunks[{position}]: {exc}") from exc
    return ModelInput(chunks=tuple(chunks))


def sampling_params_from_sdk(params: tinker_types.SamplingParams) -> SamplingParams:
    """The port's sampling parameters of the SDK's.

    Raises:
        WireError: a value is out of range, or ``stop`` mixes strings and token ids.
    """
    stop = params.stop
    try:
        return SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            stop=None if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop)),
            seed=params.seed,
        )
    except ValueError as exc:
        raise WireError(f"sampling_params: {exc}") from exc

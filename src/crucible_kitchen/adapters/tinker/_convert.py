"""Conversions between the ports' msgspec types and the tinker SDK's types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np
import tinker

from crucible_kitchen.ports import (
    AdamParams,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInfo,
    ModelInput,
    OptimStepResponse,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    TensorData,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = (
    "adam_to_sdk",
    "datum_to_sdk",
    "fwdbwd_from_sdk",
    "info_from_sdk",
    "model_input_to_sdk",
    "optim_from_sdk",
    "sample_from_sdk",
    "sampling_params_to_sdk",
    "tensor_from_sdk",
    "tensor_to_sdk",
)

_NUMPY_DTYPES: Final = {"int64": np.int64, "float32": np.float32}


def model_input_to_sdk(model_input: ModelInput) -> tinker.ModelInput:
    """The SDK's ``ModelInput`` with the same chunks."""
    chunks: list[Any] = []
    for chunk in model_input.chunks:
        if isinstance(chunk, EncodedTextChunk):
            chunks.append(tinker.EncodedTextChunk(tokens=list(chunk.tokens)))
        elif isinstance(chunk, ImageChunk):
            chunks.append(
                tinker.types.ImageChunk(
                    data=chunk.data, format=chunk.format, expected_tokens=chunk.expected_tokens
                )
            )
        else:  # pragma: no cover - the chunk union is closed
            raise TypeError(f"unknown model input chunk {type(chunk).__name__}")
    return tinker.ModelInput(chunks=chunks)


def tensor_to_sdk(tensor: TensorData) -> tinker.TensorData:
    """The SDK's ``TensorData`` holding the same values (float32 rounds here)."""
    array = np.asarray(tensor.data, dtype=_NUMPY_DTYPES[tensor.dtype]).reshape(tensor.dims)
    return tinker.TensorData.from_numpy(array)


def tensor_from_sdk(tensor: tinker.TensorData) -> TensorData:
    """The port's ``TensorData``: one-dimensional tensors without a shape, as local ones."""
    array = tensor.to_numpy()
    shape = None if array.ndim == 1 else tuple(int(dim) for dim in array.shape)
    if np.issubdtype(array.dtype, np.integer):
        ints = array.astype(np.int64).reshape(-1).tolist()
        return TensorData(dtype="int64", data=tuple(ints), shape=shape)
    floats = array.astype(np.float32).reshape(-1).tolist()
    return TensorData(dtype="float32", data=tuple(floats), shape=shape)


def datum_to_sdk(datum: Datum) -> tinker.Datum:
    """The SDK's ``Datum`` with the same input and loss inputs."""
    return tinker.Datum(
        model_input=model_input_to_sdk(datum.model_input),
        loss_fn_inputs={key: tensor_to_sdk(value) for key, value in datum.loss_fn_inputs.items()},
    )


def fwdbwd_from_sdk(output: tinker.ForwardBackwardOutput) -> ForwardBackwardOutput:
    """The port's ``ForwardBackwardOutput`` of an SDK one."""
    return ForwardBackwardOutput(
        loss_fn_output_type=output.loss_fn_output_type,
        loss_fn_outputs=tuple(
            {key: tensor_from_sdk(value) for key, value in record.items()}
            for record in output.loss_fn_outputs
        ),
        metrics={key: float(value) for key, value in output.metrics.items()},
    )


def adam_to_sdk(params: AdamParams) -> tinker.AdamParams:
    """The SDK's ``AdamParams`` with the same hyper-parameters."""
    return tinker.AdamParams(
        learning_rate=params.learning_rate,
        beta1=params.beta1,
        beta2=params.beta2,
        eps=params.eps,
        weight_decay=params.weight_decay,
        grad_clip_norm=params.grad_clip_norm,
    )


def optim_from_sdk(response: tinker.OptimStepResponse) -> OptimStepResponse:
    """The port's ``OptimStepResponse``."""
    return OptimStepResponse(
        metrics={key: float(value) for key, value in (response.metrics or {}).items()}
    )


def sampling_params_to_sdk(params: SamplingParams) -> tinker.SamplingParams:
    """The SDK's ``SamplingParams``; ``stop=()`` stays an empty list (no stop, not even EOS)."""
    return tinker.SamplingParams(
        max_tokens=params.max_tokens,
        seed=params.seed,
        stop=None if params.stop is None else list(params.stop),  # type: ignore[arg-type]
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
    )


def sample_from_sdk(response: tinker.SampleResponse) -> SampleResponse:
    """The port's ``SampleResponse``: tokens, logprobs, stop reasons and prompt logprobs."""
    prompt = response.prompt_logprobs
    return SampleResponse(
        sequences=tuple(
            SampledSequence(
                tokens=tuple(sequence.tokens),
                logprobs=None if sequence.logprobs is None else tuple(sequence.logprobs),
                stop_reason=sequence.stop_reason,
            )
            for sequence in response.sequences
        ),
        prompt_logprobs=None if prompt is None else tuple(prompt),
    )


def info_from_sdk(info: tinker.types.GetInfoResponse, base_model: str) -> ModelInfo:
    """The port's ``ModelInfo`` of the SDK's ``GetInfoResponse``."""
    data = info.model_data
    return ModelInfo(
        model_id=str(info.model_id),
        base_model=data.model_name or base_model,
        is_lora=bool(info.is_lora),
        lora_rank=info.lora_rank,
        tokenizer_id=data.tokenizer_id,
    )


def cross_entropy_data(
    data: Sequence[Datum], weights: Mapping[int, TensorData] | None = None
) -> list[tinker.Datum]:
    """The SDK datums of a ``cross_entropy`` pass over ``data``'s ``target_tokens``: with
    ``weights[i]`` for datum ``i`` when given, else zeros (a pass that only scores)."""
    converted = []
    for index, datum in enumerate(data):
        targets = datum.loss_fn_inputs["target_tokens"]
        weight = (
            weights[index]
            if weights is not None
            else TensorData(dtype="float32", data=(0.0,) * len(targets.data), shape=targets.shape)
        )
        converted.append(
            tinker.Datum(
                model_input=model_input_to_sdk(datum.model_input),
                loss_fn_inputs={
                    "target_tokens": tensor_to_sdk(targets),
                    "weights": tensor_to_sdk(weight),
                },
            )
        )
    return converted

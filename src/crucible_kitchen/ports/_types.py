"""The data types that cross the ports, as frozen msgspec structs.

They mirror the Tinker SDK's types (``tinker.types``) field for field where Tinker has one, so a
Tinker adapter only converts. Sequences are tuples, so a struct cannot change under a holder's
feet; maps are plain dicts (do not mutate them). Decoding checks every field's type; decoding
and construction both run each struct's own checks (shapes, ranges, token ids). A bad payload
raises ``msgspec.ValidationError`` naming the field's path; a bad constructor call, ValueError.

JSON cannot carry NaN or infinity (msgspec writes ``null``); send tensors holding them as msgpack.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import msgspec

from crucible_kitchen.errors import InvalidRequest

__all__ = (
    "LOSS_FN_INPUTS",
    "AdamParams",
    "BlobInfo",
    "CustomLossFn",
    "CustomLossOutput",
    "DatasetInfo",
    "DatasetRow",
    "Datum",
    "EncodedTextChunk",
    "EvalResult",
    "ForwardBackwardOutput",
    "ImageChunk",
    "LoadStateResponse",
    "LossFnType",
    "Message",
    "MetricPoint",
    "ModelArtifact",
    "ModelInfo",
    "ModelInput",
    "ModelInputChunk",
    "OptimStepResponse",
    "RegisteredModel",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "SaveStateResponse",
    "SaveWeightsForSamplerResponse",
    "StepResult",
    "StopCondition",
    "StopReason",
    "TensorDType",
    "TensorData",
    "TokensWithLogprobs",
    "TrainOnWhat",
    "Trajectory",
    "Transition",
    "request_fingerprint",
)

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


_FLOAT_TYPES: Final = frozenset((int, float))
_INT_TYPES: Final = frozenset((int,))


def _plain_values(data: tuple[int | float, ...], dtype: str) -> bool:
    """Whether every value fits ``dtype``, checked in C (a per-value loop in Python costs more
    than the tensor math of a small training step); if not, the caller finds the first."""
    kinds = set(map(type, data))
    if dtype != "int64":
        return kinds <= _FLOAT_TYPES
    if not kinds <= _INT_TYPES:
        return False
    return not data or (min(data) >= _INT64_MIN and max(data) <= _INT64_MAX)


def _check_token_ids(owner: str, tokens: Sequence[int]) -> None:
    for index, token in enumerate(tokens):
        if type(token) is not int or token < 0:
            raise ValueError(f"{owner}: token {index} is {token!r}, expected an int >= 0")


# --------------------------------------------------------------------------------------------
# Model input


class EncodedTextChunk(
    msgspec.Struct, frozen=True, kw_only=True, tag="encoded_text", tag_field="type"
):
    """A run of token ids (Tinker: ``EncodedTextChunk``)."""

    tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_token_ids("EncodedTextChunk", self.tokens)

    @property
    def length(self) -> int:
        """Number of tokens."""
        return len(self.tokens)


class ImageChunk(msgspec.Struct, frozen=True, kw_only=True, tag="image", tag_field="type"):
    """An encoded image (Tinker: ``ImageChunk``); ``data`` travels as base64 in JSON.

    ``expected_tokens`` is how many model positions the image takes; ``None`` if unknown.
    """

    data: bytes
    format: Literal["png", "jpeg"]
    expected_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.expected_tokens is not None and self.expected_tokens < 0:
            raise ValueError(f"ImageChunk: expected_tokens {self.expected_tokens} must be >= 0")

    @property
    def length(self) -> int:
        """Model positions the image takes.

        Raises:
            ValueError: ``expected_tokens`` is not known.
        """
        if self.expected_tokens is None:
            raise ValueError("ImageChunk: length unknown, expected_tokens is None")
        return self.expected_tokens


ModelInputChunk: TypeAlias = EncodedTextChunk | ImageChunk
"""One chunk of a model input, tagged on the ``type`` field as in Tinker's wire format."""


class ModelInput(msgspec.Struct, frozen=True, kw_only=True):
    """What the model reads: a sequence of chunks (Tinker: ``ModelInput``)."""

    chunks: tuple[ModelInputChunk, ...] = ()

    @classmethod
    def empty(cls) -> ModelInput:
        """A model input with no chunks."""
        return cls()

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        """One text chunk holding ``tokens``."""
        return cls(chunks=(EncodedTextChunk(tokens=tuple(tokens)),))

    def to_ints(self) -> list[int]:
        """All token ids, in order.

        Raises:
            ValueError: a chunk is not text.
        """
        tokens: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(f"ModelInput.to_ints: chunk of type {type(chunk).__name__!r}")
            tokens.extend(chunk.tokens)
        return tokens

    @property
    def length(self) -> int:
        """Number of model positions (tokens plus image positions)."""
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """A new model input with ``chunk`` added at the end."""
        return ModelInput(chunks=(*self.chunks, chunk))

    def append_int(self, token: int) -> ModelInput:
        """A new model input with one more token, merged into a trailing text chunk."""
        if self.chunks and isinstance(last := self.chunks[-1], EncodedTextChunk):
            merged = EncodedTextChunk(tokens=(*last.tokens, token))
            return ModelInput(chunks=(*self.chunks[:-1], merged))
        return self.append(EncodedTextChunk(tokens=(token,)))


# --------------------------------------------------------------------------------------------
# Tensors and datums

TensorDType: TypeAlias = Literal["int64", "float32"]
"""Element types a tensor may have on the wire (Tinker widens bfloat16 to float32)."""


class TensorData(msgspec.Struct, frozen=True, kw_only=True):
    """A dense tensor as a flat tuple plus a shape (Tinker: ``TensorData``).

    ``shape`` ``None`` means one dimension of ``len(data)``. ``int64`` data holds ints;
    ``float32`` data holds Python numbers, and a backend rounds them when it materialises
    the tensor.
    """

    dtype: TensorDType
    data: tuple[int | float, ...]
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            if any(dim < 0 for dim in self.shape):
                raise ValueError(f"TensorData: negative dimension in shape {self.shape}")
            if math.prod(self.shape) != len(self.data):
                raise ValueError(
                    f"TensorData: shape {self.shape} holds {math.prod(self.shape)} values, "
                    f"data has {len(self.data)}"
                )
        if _plain_values(self.data, self.dtype):
            return
        if self.dtype == "int64":
            for index, value in enumerate(self.data):
                if not _is_int(value) or not _INT64_MIN <= value <= _INT64_MAX:
                    raise ValueError(f"TensorData: int64 data[{index}] is {value!r}")
        else:
            for index, value in enumerate(self.data):
                if not _is_number(value):
                    raise ValueError(f"TensorData: float32 data[{index}] is {value!r}")

    @classmethod
    def from_list(cls, values: Sequence[Any], *, dtype: TensorDType | None = None) -> TensorData:
        """A tensor from a flat or rectangular nested list.

        Args:
            values: numbers, or equally long lists of them, to any depth.
            dtype: the element type; by default ``int64`` when every value is an int,
                else ``float32``.

        Raises:
            ValueError: the nesting is ragged, or a value does not fit ``dtype``.
        """
        shape = _shape_of(values)
        flat = list(_flatten(values, shape))
        if dtype is None:
            dtype = "int64" if all(_is_int(v) for v in flat) else "float32"
        data: tuple[int | float, ...]
        if dtype == "float32":
            if not all(_is_number(v) for v in flat):
                raise ValueError("TensorData.from_list: float32 values must be numbers")
            data = tuple(float(v) for v in flat)
        else:
            data = tuple(flat)
        return cls(dtype=dtype, data=data, shape=shape if len(shape) != 1 else None)

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape, with a missing shape spelled out as ``(len(data),)``."""
        return self.shape if self.shape is not None else (len(self.data),)

    def tolist(self) -> list[Any] | int | float:
        """The values as nested lists following the shape; a 0-d tensor gives its one value."""
        dims = self.dims
        if not dims:
            return self.data[0]
        return _nest(list(self.data), dims)


def _shape_of(values: Sequence[Any]) -> tuple[int, ...]:
    shape = [len(values)]
    probe: Any = values
    while len(probe) > 0 and isinstance(probe[0], (list, tuple)):
        probe = probe[0]
        shape.append(len(probe))
    return tuple(shape)


def _flatten(values: Sequence[Any], shape: tuple[int, ...], path: str = "") -> Iterator[Any]:
    if len(values) != shape[0]:
        raise ValueError(
            f"TensorData.from_list: ragged nesting at values{path}: "
            f"{len(values)} items where {shape[0]} were expected"
        )
    for index, value in enumerate(values):
        nested = isinstance(value, (list, tuple))
        if nested != (len(shape) > 1):
            raise ValueError(f"TensorData.from_list: ragged nesting at values{path}[{index}]")
        if nested:
            yield from _flatten(value, shape[1:], f"{path}[{index}]")
        else:
            yield value


def _nest(flat: list[Any], dims: tuple[int, ...]) -> list[Any]:
    if len(dims) == 1:
        return flat
    step = len(flat) // dims[0] if dims[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]


LossFnType: TypeAlias = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"]
"""The named, token-wise, sum-reduced losses a training backend computes (Tinker's names)."""

LOSS_FN_INPUTS: Final[Mapping[LossFnType, tuple[str, ...]]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
}
"""The ``loss_fn_inputs`` keys each loss requires; each holds one value per model position."""


class Datum(msgspec.Struct, frozen=True, kw_only=True):
    """One training example (Tinker: ``Datum``).

    Position ``i`` of ``model_input`` predicts ``loss_fn_inputs["target_tokens"][i]``; every
    loss input has one value per model position (see :data:`LOSS_FN_INPUTS`).
    """

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = {}


class ForwardBackwardOutput(msgspec.Struct, frozen=True, kw_only=True):
    """Result of a forward or forward-backward pass (Tinker: ``ForwardBackwardOutput``).

    ``loss_fn_outputs`` has one map per datum, holding at least ``"logprobs"``: the target
    tokens' log-probabilities. Metric keys carry their reduction after one colon
    (``"loss:sum"``), so results of several chunks can be combined.
    """

    loss_fn_output_type: str
    loss_fn_outputs: tuple[dict[str, TensorData], ...]
    metrics: dict[str, float] = {}


class CustomLossOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What a custom loss function returns: its value and its gradient.

    ``logprob_grads[i]`` is d(loss)/d(logprobs of datum i), shaped like that datum's logprobs.
    The backend then back-propagates ``sum(grad * logprobs)``, which has that same gradient,
    so no autograd library is needed on the caller's side of the port.
    """

    loss: float
    logprob_grads: tuple[TensorData, ...]
    metrics: dict[str, float] = {}


CustomLossFn: TypeAlias = Callable[[Sequence[Datum], Sequence[TensorData]], CustomLossOutput]
"""``loss_fn(data, logprobs)``: the target logprobs of each datum in, loss and gradient out."""


class AdamParams(msgspec.Struct, frozen=True, kw_only=True):
    """AdamW hyper-parameters for one optimizer step (Tinker: ``AdamParams``).

    ``grad_clip_norm`` ``0`` means no clipping; semantics are ``torch.optim.AdamW``'s.
    """

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} {value} must be finite"
            for name, value in msgspec.structs.asdict(self).items()
            if not math.isfinite(value)
        ]
        if not self.learning_rate >= 0:
            problems.append(f"learning_rate {self.learning_rate} must be >= 0")
        for name, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= beta < 1:
                problems.append(f"{name} {beta} must be in [0, 1)")
        if not self.eps > 0:
            problems.append(f"eps {self.eps} must be > 0")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay {self.weight_decay} must be >= 0")
        if not self.grad_clip_norm >= 0:
            problems.append(f"grad_clip_norm {self.grad_clip_norm} must be >= 0")
        if problems:
            raise ValueError("AdamParams: " + "; ".join(problems))


class OptimStepResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Result of an optimizer step (Tinker: ``OptimStepResponse``)."""

    metrics: dict[str, float] = {}


class SaveStateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Where weights and optimizer state were saved (Tinker: ``SaveWeightsResponse``)."""

    path: str


class SaveWeightsForSamplerResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Where sampler weights were saved (Tinker: ``SaveWeightsForSamplerResponse``)."""

    path: str


class LoadStateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Which checkpoint was loaded (Tinker: ``LoadWeightsResponse``)."""

    path: str


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a training client trains (Tinker: ``GetInfoResponse``, flattened)."""

    model_id: str
    base_model: str
    is_lora: bool = False
    lora_rank: int | None = None
    tokenizer_id: str | None = None


# --------------------------------------------------------------------------------------------
# Sampling

StopReason: TypeAlias = Literal["stop", "length"]
"""Why a sampled sequence ended: a stop sequence or end-of-sequence, or ``max_tokens``."""

StopCondition: TypeAlias = tuple[str | int, ...]
"""Stop strings, or stop token ids; never both kinds at once."""


def _check_stop(owner: str, stop: StopCondition) -> None:
    kinds = {type(item) for item in stop}
    if kinds - {str, int} or len(kinds) > 1:
        raise ValueError(f"{owner}: stop must be all strings or all token ids, got {stop!r}")


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to sample (Tinker: ``SamplingParams``).

    ``stop`` ``None`` stops at end-of-sequence; ``()`` never stops early, not even there.
    ``top_k`` ``-1`` and ``top_p`` ``1`` disable those filters. ``max_tokens`` ``None`` lets
    the backend choose. With a ``seed``, the same request gives the same samples.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    stop: StopCondition | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append(f"max_tokens {self.max_tokens} must be >= 1")
        if not 0 <= self.temperature < math.inf:
            problems.append(f"temperature {self.temperature} must be >= 0 and finite")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k {self.top_k} must be -1 (off) or >= 1")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be in (0, 1]")
        if problems:
            raise ValueError("SamplingParams: " + "; ".join(problems))
        if self.stop is not None:
            _check_stop("SamplingParams", self.stop)


class SampledSequence(msgspec.Struct, frozen=True, kw_only=True):
    """One completion (Tinker: ``SampledSequence``); ``logprobs`` match ``tokens`` one to one."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None
    stop_reason: StopReason

    def __post_init__(self) -> None:
        _check_token_ids("SampledSequence", self.tokens)
        if self.logprobs is not None and len(self.logprobs) != len(self.tokens):
            raise ValueError(
                f"SampledSequence: {len(self.logprobs)} logprobs for {len(self.tokens)} tokens"
            )


class SampleResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The completions of one prompt (Tinker: ``SampleResponse``).

    ``prompt_logprobs``, when asked for, has one entry per prompt position; position 0,
    which nothing predicts, is ``None``.
    """

    sequences: tuple[SampledSequence, ...]
    prompt_logprobs: tuple[float | None, ...] | None = None


# --------------------------------------------------------------------------------------------
# Conversations and RL environments


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One turn of a conversation."""

    role: str
    content: str


TrainOnWhat: TypeAlias = Literal[
    "last_assistant_message", "all_assistant_messages", "all_messages", "all_tokens"
]
"""Which tokens of a conversation a supervised example puts weight on."""


class TokensWithLogprobs(msgspec.Struct, frozen=True, kw_only=True):
    """Sampled tokens and, when known, their logprobs (tinker-cookbook's action type)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _check_token_ids("TokensWithLogprobs", self.tokens)
        if self.logprobs is not None and len(self.logprobs) != len(self.tokens):
            raise ValueError(
                f"TokensWithLogprobs: {len(self.logprobs)} logprobs for {len(self.tokens)} tokens"
            )


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an environment returns for one action."""

    reward: float
    episode_done: bool
    next_observation: ModelInput
    next_stop_condition: StopCondition = ()
    metrics: dict[str, float] = {}

    def __post_init__(self) -> None:
        _check_stop("StepResult", self.next_stop_condition)


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One step of an episode: observation, action, reward."""

    observation: ModelInput
    action: TokensWithLogprobs
    reward: float
    episode_done: bool
    metrics: dict[str, float] = {}


class Trajectory(msgspec.Struct, frozen=True, kw_only=True):
    """One episode: its transitions and the observation it ended on."""

    transitions: tuple[Transition, ...]
    final_observation: ModelInput


# --------------------------------------------------------------------------------------------
# Stores, registry, evaluation

DatasetRow: TypeAlias = dict[str, Any]
"""One dataset row: JSON-like values keyed by column name."""


class DatasetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A dataset's splits, with their row counts, and its column names."""

    name: str
    splits: dict[str, int]
    columns: tuple[str, ...] = ()


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored blob: its key, size in bytes and sha256 hex digest."""

    key: str
    size: int
    sha256: str


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One value of one metric of one run, at one step."""

    run_id: str
    name: str
    step: int
    value: float
    tags: dict[str, str] = {}


class ModelArtifact(msgspec.Struct, frozen=True, kw_only=True):
    """A trained model to register: where its weights are and what it came from."""

    name: str
    version: str
    artifact_uri: str
    metadata: dict[str, str] = {}
    metrics: dict[str, float] = {}
    lineage: dict[str, str] = {}


class RegisteredModel(msgspec.Struct, frozen=True, kw_only=True):
    """A registered model: the registry's id for it and the artifact as registered."""

    model_id: str
    artifact: ModelArtifact


class EvalResult(msgspec.Struct, frozen=True, kw_only=True):
    """An evaluation's metrics and the number of rows it scored."""

    metrics: dict[str, float]
    num_samples: int


_FINGERPRINT_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")


def request_fingerprint(port: str, method: str, payload: object) -> bytes:
    """A 16-byte digest of ``payload`` (deterministic msgpack), telling a re-sent request,
    which gets the first one's result, from a conflicting one under the same id.

    Raises:
        InvalidRequest: the payload holds values msgpack cannot encode.
    """
    try:
        return hashlib.blake2b(_FINGERPRINT_ENCODER.encode(payload), digest_size=16).digest()
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidRequest(
            f"{method}: request cannot be serialised: {exc}", port=port, operation=method
        ) from exc

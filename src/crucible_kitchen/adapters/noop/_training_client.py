"""A training client with no model: seeded, instant, exactly-once, and checkable."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import msgspec

from crucible_kitchen.adapters.noop._determinism import (
    digest_key,
    fold,
    initial_weights_digest,
    stable_digest,
    token_logprob,
)
from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.adapters.noop._sampling_client import NoopSamplingClient
from crucible_kitchen.adapters.noop._tokenizer import NoopTokenizer
from crucible_kitchen.errors import InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import (
    LOSS_FN_INPUTS,
    CustomLossOutput,
    Datum,
    ForwardBackwardOutput,
    LoadStateResponse,
    ModelInfo,
    OptimStepResponse,
    SaveStateResponse,
    SaveWeightsForSamplerResponse,
    TensorData,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping, Sequence

    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters, NoopFuture
    from crucible_kitchen.ports import AdamParams, CustomLossFn, LossFnType

__all__ = ("NoopTrainingClient", "NoopTrainingState")

_PORT: Final = "training_client"
_MAX_LOG_RATIO: Final = 80.0  # keeps exp() finite for absurd sampler logprobs
_REQUIRED_INPUTS: Final[Mapping[str, tuple[str, ...]]] = {
    str(loss_fn): keys for loss_fn, keys in LOSS_FN_INPUTS.items()
}
_LOSS_DEFAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
}


class NoopTrainingState(msgspec.Struct, frozen=True, kw_only=True):
    """What a noop model "is": equal states mean identical training histories.

    ``weights_digest`` chains every applied gradient and optimizer step, in order, so one
    gradient applied twice (or lost) changes it, as it would change real weights.
    """

    step: int
    weights_digest: str
    optimizer_digest: str
    gradient_digest: str = ""
    pending_gradients: int = 0


class NoopTrainingClient:
    """Implements :class:`~crucible_kitchen.ports.TrainingClient` without a model.

    Logprobs are a fixed function of the seed, the training step, the position and the
    token (see ``token_logprob``), shrinking as steps are applied, so losses fall as training
    goes on and two runs with the same seed and inputs give identical numbers. The losses
    follow Tinker's formulas on those logprobs.

    Args:
        seed: determines every number the client produces.
        base_model: reported by :meth:`get_info`.
        faults: faults to inject into this client's calls (and its sampling clients').
        checkpoints: where saved states live; share one mapping between clients to resume
            in a new client. Values are msgpack-encoded :class:`NoopTrainingState`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        base_model: str = "noop-model",
        faults: FaultPlan | None = None,
        checkpoints: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self._seed = seed
        self._base_model = base_model
        self._faults = faults
        self._ledger = RequestLedger(_PORT, faults)
        self._checkpoints: MutableMapping[str, bytes] = {} if checkpoints is None else checkpoints
        self._tokenizer = NoopTokenizer()
        initial = initial_weights_digest(seed)
        self._state = NoopTrainingState(
            step=0, weights_digest=initial, optimizer_digest=fold(initial, "optimizer")
        )

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    @property
    def state(self) -> NoopTrainingState:
        """The current state; compare it between runs to prove identical training."""
        return self._state

    @property
    def model_id(self) -> str:
        """The id in checkpoint paths: ``noop://{model_id}/weights/{name}``."""
        return f"noop-{self._seed}"

    # ---------------------------------------------------------------------------------------
    # The port

    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> NoopFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward`."""
        self._check_data("forward", data, loss_fn)
        config = self._loss_config("forward", loss_fn, loss_fn_config)
        return await self._ledger.submit(
            "forward", lambda: self._evaluate(data, loss_fn, config)[0]
        )

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> NoopFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward`."""
        method = "forward_backward"
        self._check_data(method, data, loss_fn)
        config = self._loss_config(method, loss_fn, loss_fn_config)
        fingerprint = self._ledger.fingerprint(method, (list(data), loss_fn, config))

        def effect() -> ForwardBackwardOutput:
            output, grads = self._evaluate(data, loss_fn, config)
            self._accumulate(data, grads)
            return output

        return await self._ledger.submit(
            method, effect, request_id=request_id, fingerprint=fingerprint
        )

    async def forward_backward_custom(
        self, data: Sequence[Datum], loss_fn: CustomLossFn, *, request_id: str
    ) -> NoopFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward_custom`.

        Exceptions ``loss_fn`` raises propagate unchanged.
        """
        method = "forward_backward_custom"
        self._check_data(method, data, None)
        fingerprint = self._ledger.fingerprint(method, list(data))

        def effect() -> ForwardBackwardOutput:
            logprobs = [self._logprobs(datum) for datum in data]
            custom = loss_fn(data, logprobs)
            self._check_custom_output(custom, logprobs)
            self._accumulate(data, [grad.data for grad in custom.logprob_grads])
            return ForwardBackwardOutput(
                loss_fn_output_type="custom",
                loss_fn_outputs=tuple({"logprobs": lp} for lp in logprobs),
                metrics={**custom.metrics, "loss:sum": custom.loss},
            )

        return await self._ledger.submit(
            method, effect, request_id=request_id, fingerprint=fingerprint
        )

    async def optim_step(
        self, adam_params: AdamParams, *, request_id: str
    ) -> NoopFuture[OptimStepResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.optim_step`."""
        fingerprint = self._ledger.fingerprint("optim_step", adam_params)

        def effect() -> OptimStepResponse:
            state = self._state
            self._state = NoopTrainingState(
                step=state.step + 1,
                weights_digest=fold(state.weights_digest, state.gradient_digest, fingerprint),
                optimizer_digest=fold(state.optimizer_digest, state.gradient_digest),
            )
            return OptimStepResponse(
                metrics={
                    "step": float(state.step + 1),
                    "learning_rate": adam_params.learning_rate,
                    "gradients_applied": float(state.pending_gradients),
                }
            )

        return await self._ledger.submit(
            "optim_step", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def save_state(self, name: str, *, request_id: str) -> NoopFuture[SaveStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_state`."""
        path = self._path("save_state", "weights", name)

        def effect() -> SaveStateResponse:
            self._save(path)
            return SaveStateResponse(path=path)

        return await self._ledger.submit(
            "save_state", effect, request_id=request_id, fingerprint=path.encode()
        )

    async def load_state(
        self, path: str, *, with_optimizer: bool = True, request_id: str
    ) -> NoopFuture[LoadStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.load_state`."""

        def effect() -> LoadStateResponse:
            saved = self._load("load_state", path)
            self._state = NoopTrainingState(
                step=saved.step,
                weights_digest=saved.weights_digest,
                optimizer_digest=(
                    saved.optimizer_digest
                    if with_optimizer
                    else fold(saved.weights_digest, "optimizer")
                ),
            )
            return LoadStateResponse(path=path)

        fingerprint = self._ledger.fingerprint("load_state", (path, with_optimizer))
        return await self._ledger.submit(
            "load_state", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def save_weights_for_sampler(
        self, name: str, *, request_id: str
    ) -> NoopFuture[SaveWeightsForSamplerResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_weights_for_sampler`."""
        path = self._path("save_weights_for_sampler", "sampler_weights", name)

        def effect() -> SaveWeightsForSamplerResponse:
            self._save(path)
            return SaveWeightsForSamplerResponse(path=path)

        return await self._ledger.submit(
            "save_weights_for_sampler", effect, request_id=request_id, fingerprint=path.encode()
        )

    async def create_sampling_client(self, model_path: str) -> NoopSamplingClient:
        """A :class:`NoopSamplingClient` whose logprobs match this model's at save time."""

        def effect() -> NoopSamplingClient:
            saved = self._load("create_sampling_client", model_path)
            return NoopSamplingClient(
                seed=self._seed,
                step=saved.step,
                weights_digest=saved.weights_digest,
                faults=self._faults,
            )

        return await self._ledger.call("create_sampling_client", effect)

    def get_info(self) -> ModelInfo:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_info`."""
        return ModelInfo(
            model_id=self.model_id, base_model=self._base_model, tokenizer_id="noop-bytes"
        )

    def get_tokenizer(self) -> NoopTokenizer:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_tokenizer`."""
        return self._tokenizer

    # ---------------------------------------------------------------------------------------
    # The noop model

    def _logprobs(self, datum: Datum) -> TensorData:
        state = self._state
        key = digest_key(state.weights_digest)
        targets = datum.loss_fn_inputs["target_tokens"]
        width = targets.dims[1] if len(targets.dims) == 2 else 1  # (N, K): K tokens a position
        values = tuple(
            token_logprob(self._seed, key, state.step, index // width, int(token))
            for index, token in enumerate(targets.data)
        )
        return TensorData(dtype="float32", data=values, shape=targets.shape)

    def _evaluate(
        self, data: Sequence[Datum], loss_fn: LossFnType, config: Mapping[str, float]
    ) -> tuple[ForwardBackwardOutput, list[tuple[float, ...]]]:
        """The output of a forward pass, and d(loss)/d(logprobs) of each datum."""
        outputs: list[dict[str, TensorData]] = []
        grads: list[tuple[float, ...]] = []
        total = 0.0
        for datum in data:
            logprobs = self._logprobs(datum)
            loss, grad = _loss(loss_fn, config, datum.loss_fn_inputs, logprobs.data)
            total += loss
            grads.append(grad)
            outputs.append({"logprobs": logprobs})
        output = ForwardBackwardOutput(
            loss_fn_output_type=loss_fn, loss_fn_outputs=tuple(outputs), metrics={"loss:sum": total}
        )
        return output, grads

    def _accumulate(self, data: Sequence[Datum], grads: Sequence[Sequence[float]]) -> None:
        """Add a gradient: what it is matters, not which loss or request produced it."""
        state = self._state
        digest = state.gradient_digest
        for datum, grad in zip(data, grads, strict=True):
            targets = datum.loss_fn_inputs["target_tokens"].data
            values = tuple(float(g) for g in grad)
            digest = fold(digest, stable_digest((datum.model_input, targets, values)))
        self._state = msgspec.structs.replace(
            state, gradient_digest=digest, pending_gradients=state.pending_gradients + 1
        )

    def _save(self, path: str) -> None:
        saved = msgspec.structs.replace(self._state, gradient_digest="", pending_gradients=0)
        self._checkpoints[path] = msgspec.msgpack.encode(saved)

    def _load(self, operation: str, path: str) -> NoopTrainingState:
        blob = self._checkpoints.get(path)
        if blob is None:
            raise ResourceNotFound(
                f"{operation}: no checkpoint at {path!r}",
                port=_PORT,
                operation=operation,
                resource=path,
            )
        try:
            return msgspec.msgpack.decode(blob, type=NoopTrainingState)
        except msgspec.DecodeError as exc:
            raise self._invalid(operation, f"checkpoint {path!r} is corrupt: {exc}") from exc

    # ---------------------------------------------------------------------------------------
    # Validation: what a real backend would refuse

    def _invalid(self, operation: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{operation}: {message}", port=_PORT, operation=operation)

    def _path(self, operation: str, kind: str, name: str) -> str:
        if not name or "/" in name:
            raise self._invalid(operation, f"name {name!r} must be non-empty and have no '/'")
        return f"noop://{self.model_id}/{kind}/{name}"

    def _check_data(self, operation: str, data: Sequence[Datum], loss_fn: str | None) -> None:
        required = _REQUIRED_INPUTS.get(loss_fn, ()) if loss_fn is not None else ("target_tokens",)
        if not required:
            known = ", ".join(_REQUIRED_INPUTS)
            raise self._invalid(operation, f"unknown loss_fn {loss_fn!r}; known: {known}")
        if not data:
            raise self._invalid(operation, "data is empty")
        vocab = self._tokenizer.vocab_size
        for index, datum in enumerate(data):
            if not isinstance(datum, Datum):
                raise self._invalid(operation, f"data[{index}] is a {type(datum).__name__}")
            try:
                length = datum.model_input.length
            except ValueError as exc:
                raise self._invalid(operation, f"data[{index}]: {exc}") from exc
            for key in required:
                tensor = datum.loss_fn_inputs.get(key)
                if tensor is None:
                    raise self._invalid(operation, f"data[{index}] lacks loss input {key!r}")
                if tensor.dims[0] != length:
                    raise self._invalid(
                        operation,
                        f"data[{index}]: {key!r} has {tensor.dims[0]} values "
                        f"for {length} positions",
                    )
            targets = datum.loss_fn_inputs["target_tokens"]
            if targets.dtype != "int64" or not all(0 <= t < vocab for t in targets.data):
                raise self._invalid(
                    operation, f"data[{index}]: target_tokens must be int64 ids below {vocab}"
                )

    def _loss_config(
        self, operation: str, loss_fn: str, config: Mapping[str, float | str] | None
    ) -> dict[str, float]:
        merged: dict[str, float] = dict(_LOSS_DEFAULTS.get(loss_fn, {}))
        for key, value in (config or {}).items():
            try:
                merged[key] = float(value)
            except (TypeError, ValueError) as exc:
                raise self._invalid(operation, f"loss_fn_config[{key!r}]: {exc}") from exc
        if loss_fn == "dro" and "beta" not in merged:
            raise self._invalid(operation, "loss_fn 'dro' needs loss_fn_config['beta']")
        return merged

    def _check_custom_output(self, custom: object, logprobs: Sequence[TensorData]) -> None:
        operation = "forward_backward_custom"
        if not isinstance(custom, CustomLossOutput):
            raise self._invalid(operation, f"loss_fn returned a {type(custom).__name__}")
        if len(custom.logprob_grads) != len(logprobs):
            raise self._invalid(
                operation,
                f"loss_fn returned {len(custom.logprob_grads)} gradients "
                f"for {len(logprobs)} datums",
            )
        for index, (grad, lp) in enumerate(zip(custom.logprob_grads, logprobs, strict=True)):
            if grad.dims != lp.dims:
                raise self._invalid(
                    operation, f"gradient {index} has shape {grad.dims}, logprobs {lp.dims}"
                )


def _loss(
    loss_fn: str,
    config: Mapping[str, float],
    inputs: Mapping[str, TensorData],
    logprobs: Sequence[float],
) -> tuple[float, tuple[float, ...]]:
    """Tinker's token-wise, sum-reduced losses in plain Python, with d(loss)/d(logprobs)."""
    if loss_fn == "cross_entropy":
        weights = inputs["weights"].data
        loss = -sum(lp * w for lp, w in zip(logprobs, weights, strict=True))
        return loss, tuple(-float(w) for w in weights)
    sampled = inputs["logprobs"].data
    advantages = inputs["advantages"].data
    total, grad = 0.0, []
    for lp, slp, adv in zip(logprobs, sampled, advantages, strict=True):
        ratio = math.exp(min(lp - slp, _MAX_LOG_RATIO))
        if loss_fn == "importance_sampling":
            total -= ratio * adv
            grad.append(-ratio * adv)
        elif loss_fn == "ppo":
            clipped = min(max(ratio, config["clip_low_threshold"]), config["clip_high_threshold"])
            unclipped_wins = ratio * adv <= clipped * adv
            total -= min(ratio * adv, clipped * adv)
            grad.append(-ratio * adv if unclipped_wins else 0.0)
        elif loss_fn == "cispo":
            clipped = min(max(ratio, config["clip_low_threshold"]), config["clip_high_threshold"])
            total -= clipped * lp * adv
            grad.append(-clipped * adv)
        else:  # dro
            total -= lp * adv - 0.5 * config["beta"] * (lp - slp) ** 2
            grad.append(-adv + config["beta"] * (lp - slp))
    return total, tuple(grad)

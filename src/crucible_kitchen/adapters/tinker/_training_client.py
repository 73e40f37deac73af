"""The TrainingClient port over the official tinker SDK's ``TrainingClient``."""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from crucible_kitchen.adapters.tinker._checkpoints import CheckpointRecords, RecordedSave
from crucible_kitchen.adapters.tinker._convert import (
    adam_to_sdk,
    cross_entropy_data,
    datum_to_sdk,
    fwdbwd_from_sdk,
    info_from_sdk,
    optim_from_sdk,
)
from crucible_kitchen.adapters.tinker._errors import translated
from crucible_kitchen.adapters.tinker._futures import (
    RequestLedger,
    TinkerFuture,
    in_sdk_context,
    wait_for,
)
from crucible_kitchen.adapters.tinker._tokenizer import HfTokenizer
from crucible_kitchen.errors import (
    CheckpointCorrupted,
    InvalidRequest,
    PermanentBackendError,
    ResourceNotFound,
)
from crucible_kitchen.ports import (
    CHECKPOINT_PAYLOAD,
    LOSS_FN_INPUTS,
    SAVE_STATE_WITH_PAYLOAD,
    AdamParams,
    CustomLossOutput,
    Datum,
    ForwardBackwardOutput,
    LoadStateResponse,
    SaveStateResponse,
    SaveWeightsForSamplerResponse,
    request_fingerprint,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

    import tinker

    from crucible_kitchen.adapters.tinker._checkpoints import RemoteCheckpoint
    from crucible_kitchen.adapters.tinker._sampling_client import TinkerSamplingClient
    from crucible_kitchen.adapters.tinker._session import TinkerSession
    from crucible_kitchen.ports import (
        BackendFuture,
        Capabilities,
        CustomLossFn,
        LossFnType,
        ModelInfo,
        OptimStepResponse,
        TensorData,
        Tokenizer,
    )

__all__ = ("TinkerTrainingClient",)

_PORT: Final = "training_client"
T = TypeVar("T")


class TinkerTrainingClient:
    """Implements :class:`~crucible_kitchen.ports.TrainingClient` with a Tinker LoRA model.

    The model is created on the server (``create_lora_training_client`` of ``base_model``
    with ``lora_rank`` and ``seed``) when the first request needs it, not when the client
    is built, so building one never blocks an event loop. Requests go out in submission
    order and may be pipelined: each returns its future as soon as the SDK has queued it.

    ``request_id``\\ s are kept on this side of the wire (the API has none): see
    ``_futures.RequestLedger``. ``forward_backward_custom`` scores the data with a
    ``cross_entropy`` forward pass, calls the loss once, then sends the gradient as the
    weights of a ``cross_entropy`` backward pass (weights ``-dLoss/dlogprobs``: the same
    linearisation as the SDK's own, without torch); requests submitted meanwhile wait for
    it, so order is kept. ``load_state`` swaps in a new server-side model created from the
    checkpoint (the SDK's ``create_training_client_from_state[_with_optimizer]``).

    With a ``checkpoint_dir``, each ``save_state`` is also recorded there (see
    ``_checkpoints``) with the ``user_payload`` given, so a run can be resumed in a new
    process: the client then declares ``SAVE_STATE_WITH_PAYLOAD`` and
    ``CHECKPOINT_PAYLOAD``, and ``load_state`` takes a record directory as well as a
    ``tinker://`` path.

    Args:
        session: the connection (base URL, API key) shared with the sampling clients.
        base_model: the server's name of the model to fine-tune.
        lora_rank: the LoRA adapters' rank.
        seed: seeds the LoRA adapters' initial weights on the server.
        tokenizer: what :meth:`get_tokenizer` returns; by default the tokenizer the
            server's model info names, loaded by the SDK (``transformers``).
        tokenizer_id: the id the server's model info must give for ``tokenizer``, if known:
            a model whose info names another tokenizer is refused with
            :class:`~crucible_kitchen.errors.PermanentBackendError` (its token ids would mean
            other text).
        checkpoint_dir: where ``save_state`` records its checkpoints (a run directory's
            ``checkpoints``); ``None`` records nothing.
    """

    def __init__(
        self,
        session: TinkerSession,
        *,
        base_model: str,
        lora_rank: int = 32,
        seed: int | None = None,
        tokenizer: Tokenizer | None = None,
        tokenizer_id: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if lora_rank < 1:
            raise InvalidRequest(
                f"lora_rank {lora_rank} must be >= 1", port=_PORT, operation="create_model"
            )
        self._session = session
        self._base_model = base_model
        self._lora_rank = lora_rank
        self._seed = seed
        self._tokenizer = tokenizer
        self._tokenizer_id = tokenizer_id
        self._records = None if checkpoint_dir is None else CheckpointRecords(Path(checkpoint_dir))
        self._client: tinker.TrainingClient | None = None
        self._ledger = RequestLedger(_PORT)
        self._order = anyio.Lock()  # held while a request is being put in line
        self._last: Future[Any] | None = None  # the SDK future of the last request sent

    # ---------------------------------------------------------------------------------------
    # The SDK client, created on first use

    async def _sdk(self) -> tinker.TrainingClient:
        if self._client is None:
            self._client = self._checked(
                await self._session.create_training_client(
                    base_model=self._base_model, rank=self._lora_rank, seed=self._seed
                )
            )
        return self._client

    def _sdk_now(self) -> tinker.TrainingClient:
        """The SDK client, created here and now (blocking) if no request made it yet."""
        if self._client is None:
            self._client = self._checked(
                self._session.create_training_client_blocking(
                    base_model=self._base_model, rank=self._lora_rank, seed=self._seed
                )
            )
        return self._client

    def _checked(self, client: tinker.TrainingClient) -> tinker.TrainingClient:
        served = client.get_info().model_data.tokenizer_id
        if self._tokenizer_id is not None and served != self._tokenizer_id:
            raise PermanentBackendError(
                f"create_model: the server's {self._base_model!r} uses tokenizer {served!r}, "
                f"this client's is {self._tokenizer_id!r}",
                port=_PORT,
                operation="create_model",
            )
        return client

    async def _submit(
        self,
        method: str,
        send: Callable[[tinker.TrainingClient], Future[Any]],
        convert: Callable[[Any], T],
        *,
        request_id: str | None,
        digest: bytes | None,
    ) -> TinkerFuture[T]:
        if request_id is not None and digest is not None:
            found = self._ledger.find(method, request_id, digest)
            if found is not None:
                return found
        async with self._order:
            client = await self._sdk()
            with translated(_PORT, method, request_id):
                raw = in_sdk_context(lambda: send(client))
            self._last = raw
        future = TinkerFuture(raw, convert, port=_PORT, operation=method, request_id=request_id)
        if request_id is not None and digest is not None:
            self._ledger.record(method, request_id, digest, future)
        return future

    # ---------------------------------------------------------------------------------------
    # Checkpoints a new process can resume from

    @property
    def capabilities(self) -> Capabilities:
        """With a ``checkpoint_dir``: :data:`~crucible_kitchen.ports.SAVE_STATE_WITH_PAYLOAD`
        (:meth:`save_state` with ``user_payload``) and
        :data:`~crucible_kitchen.ports.CHECKPOINT_PAYLOAD` (:meth:`checkpoint_payload`)."""
        if self._records is None:
            return {}
        return {
            SAVE_STATE_WITH_PAYLOAD: lambda: self.save_state,
            CHECKPOINT_PAYLOAD: lambda: self.checkpoint_payload,
        }

    async def checkpoint_payload(self, path: str) -> dict[str, Any] | None:
        """The ``user_payload`` recorded with the checkpoint at ``path`` (a record directory
        or the ``tinker://`` path), once the server confirms it still holds the checkpoint.

        Raises:
            ResourceNotFound: no checkpoint is recorded at ``path``.
            CheckpointCorrupted: the record is unreadable, or the server no longer holds
                the checkpoint it names.
            BackendError: the server could not be asked (translated).
        """
        record, remote = await anyio.to_thread.run_sync(self._record, "checkpoint_payload", path)
        await self._require_remote(record, remote.tinker_path, "checkpoint_payload")
        return remote.user_payload

    def _record(self, operation: str, path: str) -> tuple[Path, RemoteCheckpoint]:
        if self._records is None:
            raise _invalid(operation, "this client records no checkpoints (no checkpoint_dir)")
        return self._records.read(path)

    async def _require_remote(self, record: Path, tinker_path: str, operation: str) -> None:
        try:
            await anyio.to_thread.run_sync(
                lambda: self._session.require_weights(tinker_path, operation=operation)
            )
        except ResourceNotFound as exc:
            raise _gone(record, tinker_path) from exc

    # ---------------------------------------------------------------------------------------
    # The port

    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> TinkerFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward`."""
        method = "forward"
        converted = self._converted(method, data, loss_fn)
        config = dict(loss_fn_config) if loss_fn_config else None
        return await self._submit(
            method,
            lambda client: client.forward(converted, loss_fn, config).future(),
            fwdbwd_from_sdk,
            request_id=None,
            digest=None,
        )

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> TinkerFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward`."""
        method = "forward_backward"
        config = dict(loss_fn_config) if loss_fn_config else None
        digest = request_fingerprint(
            _PORT, method, (list(data), loss_fn, sorted((config or {}).items()))
        )
        found = self._ledger.find(method, request_id, digest)
        if found is not None:
            return found
        converted = self._converted(method, data, loss_fn)
        return await self._submit(
            method,
            lambda client: client.forward_backward(converted, loss_fn, config).future(),
            fwdbwd_from_sdk,
            request_id=request_id,
            digest=digest,
        )

    async def forward_backward_custom(
        self, data: Sequence[Datum], loss_fn: CustomLossFn, *, request_id: str
    ) -> TinkerFuture[ForwardBackwardOutput]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.forward_backward_custom`.

        Returns once the backward pass is queued (the forward pass has run by then);
        ``loss_fn`` runs in the caller's task, and an exception it raises comes out of this
        call unchanged, with nothing applied.
        """
        method = "forward_backward_custom"
        data = tuple(data)
        digest = request_fingerprint(_PORT, method, list(data))
        found = self._ledger.find(method, request_id, digest)
        if found is not None:
            return found
        self._check_data(method, data, ())
        scoring = cross_entropy_data(data)
        async with self._order:
            client = await self._sdk()
            with translated(_PORT, method, request_id):
                forward = in_sdk_context(lambda: client.forward(scoring, "cross_entropy").future())
            scored = await TinkerFuture(
                forward, fwdbwd_from_sdk, port=_PORT, operation=method, request_id=request_id
            ).result()
            logprobs = tuple(output["logprobs"] for output in scored.loss_fn_outputs)
            custom = loss_fn(data, logprobs)
            self._check_custom_output(request_id, custom, logprobs)
            weights = {index: _negated(grad) for index, grad in enumerate(custom.logprob_grads)}
            with translated(_PORT, method, request_id):
                backward = cross_entropy_data(data, weights)
                raw = in_sdk_context(
                    lambda: client.forward_backward(backward, "cross_entropy").future()
                )
            self._last = raw

        def convert(sdk_output: Any) -> ForwardBackwardOutput:
            del sdk_output  # the surrogate loss's output; the caller's loss is what counts
            return ForwardBackwardOutput(
                loss_fn_output_type="custom",
                loss_fn_outputs=tuple({"logprobs": lp} for lp in logprobs),
                metrics={**custom.metrics, "loss:sum": float(custom.loss)},
            )

        future = TinkerFuture(raw, convert, port=_PORT, operation=method, request_id=request_id)
        return self._ledger.record(method, request_id, digest, future)

    async def optim_step(
        self, adam_params: AdamParams, *, request_id: str
    ) -> TinkerFuture[OptimStepResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.optim_step`."""
        method = "optim_step"
        if not isinstance(adam_params, AdamParams):
            raise _invalid(method, f"adam_params is a {type(adam_params).__name__}")
        params = adam_to_sdk(adam_params)
        return await self._submit(
            method,
            lambda client: client.optim_step(params).future(),
            optim_from_sdk,
            request_id=request_id,
            digest=request_fingerprint(_PORT, method, adam_params),
        )

    async def save_state(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any] | None = None
    ) -> BackendFuture[SaveStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_state`.

        The path is the server's ``tinker://<run>/weights/<name>``. With a
        ``checkpoint_dir``, the result comes once the checkpoint is also recorded there,
        with ``user_payload`` (a JSON object); without one, a payload is refused.

        Raises:
            InvalidRequest: a bad name, or a payload and no ``checkpoint_dir``.
        """
        method = "save_state"
        _check_name(method, name)
        if user_payload is not None and self._records is None:
            raise _invalid(method, "a user_payload needs a checkpoint_dir to record it in")
        saved = await self._submit(
            method,
            lambda client: client.save_state(name).future(),
            lambda response: SaveStateResponse(path=response.path),
            request_id=request_id,
            digest=request_fingerprint(_PORT, method, (name, user_payload)),
        )
        if self._records is None:
            return saved
        return RecordedSave(saved, self._records, user_payload)

    async def load_state(
        self, path: str, *, with_optimizer: bool = True, request_id: str
    ) -> TinkerFuture[LoadStateResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.load_state`.

        Creates the server-side model from the checkpoint, then sends every later request
        to it; returns once it exists (the requests before it have been applied by then).
        ``path`` is a ``tinker://`` path or, with a ``checkpoint_dir``, a directory where
        this client recorded one.

        Raises:
            ResourceNotFound: the server holds no checkpoint at the ``tinker://`` path, or
                nothing is recorded in the directory.
            CheckpointCorrupted: the record is unreadable, or the server no longer holds
                (or cannot load) the checkpoint it names.
        """
        method = "load_state"
        digest = request_fingerprint(_PORT, method, (path, with_optimizer))
        found = self._ledger.find(method, request_id, digest)
        if found is not None:
            return found
        record: Path | None = None
        tinker_path = path
        if self._records is not None and not path.startswith("tinker://"):
            record, remote = await anyio.to_thread.run_sync(self._record, method, path)
            tinker_path = remote.tinker_path
        async with self._order:
            if self._last is not None:  # the old model's requests finish first
                with contextlib.suppress(Exception):  # their own futures report failures
                    await wait_for(self._last)
            try:
                created = await self._session.create_training_client_from_state(
                    tinker_path, with_optimizer=with_optimizer, request_id=request_id
                )
            except (ResourceNotFound, InvalidRequest) as exc:
                if record is None:
                    raise
                raise _gone(record, tinker_path, exc) from exc
            self._client = self._checked(created)
        done: Future[Any] = _done_future(LoadStateResponse(path=path))
        future = TinkerFuture(done, lambda response: response, port=_PORT, operation=method)
        return self._ledger.record(method, request_id, digest, future)

    async def save_weights_for_sampler(
        self, name: str, *, request_id: str
    ) -> TinkerFuture[SaveWeightsForSamplerResponse]:
        """See :meth:`crucible_kitchen.ports.TrainingClient.save_weights_for_sampler`.

        The path is the server's ``tinker://<run>/sampler_weights/<name>``.
        """
        method = "save_weights_for_sampler"
        _check_name(method, name)
        return await self._submit(
            method,
            lambda client: client.save_weights_for_sampler(name).future(),
            lambda response: SaveWeightsForSamplerResponse(path=response.path),
            request_id=request_id,
            digest=request_fingerprint(_PORT, method, name),
        )

    async def create_sampling_client(self, model_path: str) -> TinkerSamplingClient:
        """See :meth:`crucible_kitchen.ports.TrainingClient.create_sampling_client`."""
        return await self._session.sampling_client(
            model_path=model_path, tokenizer=self.get_tokenizer()
        )

    def get_info(self) -> ModelInfo:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_info`.

        The info the server sent when the model was created (the model is created now,
        blocking, if no request has been sent yet).
        """
        return info_from_sdk(self._sdk_now().get_info(), self._base_model)

    def get_tokenizer(self) -> Tokenizer:
        """See :meth:`crucible_kitchen.ports.TrainingClient.get_tokenizer`."""
        if self._tokenizer is None:
            client = self._sdk_now()
            with translated(_PORT, "get_tokenizer"):
                self._tokenizer = HfTokenizer(client.get_tokenizer())
        return self._tokenizer

    # ---------------------------------------------------------------------------------------
    # Validation: what the port refuses before anything is sent

    def _converted(self, method: str, data: Sequence[Datum], loss_fn: str) -> list[tinker.Datum]:
        required = LOSS_FN_INPUTS.get(loss_fn)  # type: ignore[call-overload]
        if required is None:
            raise _invalid(
                method, f"unknown loss_fn {loss_fn!r}; known: {', '.join(LOSS_FN_INPUTS)}"
            )
        self._check_data(method, data, required)
        with translated(_PORT, method):
            return [datum_to_sdk(datum) for datum in data]

    def _check_data(self, method: str, data: Sequence[Datum], keys: Sequence[str]) -> None:
        if not data:
            raise _invalid(method, "data is empty")
        for index, datum in enumerate(data):
            if not isinstance(datum, Datum):
                raise _invalid(method, f"data[{index}] is a {type(datum).__name__}")
            if datum.model_input.length == 0:
                raise _invalid(method, f"data[{index}] has an empty model input")
            for key in ("target_tokens", *keys):
                if key not in datum.loss_fn_inputs:
                    raise _invalid(method, f"data[{index}] lacks loss input {key!r}")

    def _check_custom_output(
        self, request_id: str, custom: object, logprobs: Sequence[TensorData]
    ) -> None:
        method = "forward_backward_custom"
        if not isinstance(custom, CustomLossOutput):
            raise _invalid(
                method, f"loss_fn returned a {type(custom).__name__}, not a CustomLossOutput"
            )
        if len(custom.logprob_grads) != len(logprobs):
            raise _invalid(
                method,
                f"loss_fn returned {len(custom.logprob_grads)} gradients for "
                f"{len(logprobs)} datums",
            )
        for index, (grad, lp) in enumerate(zip(custom.logprob_grads, logprobs, strict=True)):
            if grad.dims != lp.dims:
                raise _invalid(
                    method, f"gradient {index} has shape {grad.dims}, logprobs {lp.dims}"
                )
            if not all(math.isfinite(value) for value in grad.data):
                raise _invalid(method, f"gradient {index} is not finite")
        if not math.isfinite(custom.loss):
            raise _invalid(method, f"loss {custom.loss} is not finite")


def _invalid(method: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{method}: {message}", port=_PORT, operation=method)


def _gone(record: Path, tinker_path: str, cause: Exception | None = None) -> CheckpointCorrupted:
    """The error of a recorded checkpoint the server no longer holds or cannot load."""
    gone = cause is None or isinstance(cause, ResourceNotFound)
    why = "no longer holds it" if gone else f"cannot load it: {cause}"
    return CheckpointCorrupted(
        f"{record}: records the Tinker checkpoint {tinker_path}, but the server {why}",
        path=str(record),
    )


def _check_name(method: str, name: str) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise _invalid(method, f"name {name!r} must be non-empty, not '.' or '..', without /")


def _negated(grad: TensorData) -> TensorData:
    """The ``cross_entropy`` weights whose gradient w.r.t. the logprobs is ``grad``."""
    return type(grad)(dtype="float32", data=tuple(-float(v) for v in grad.data), shape=grad.shape)


def _done_future(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future

"""The training client port: gradients, optimizer steps and checkpoints on a backend model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from crucible_kitchen.ports._capabilities import Capability

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from crucible_kitchen.ports._future import BackendFuture
    from crucible_kitchen.ports._sampling_client import SamplingClient
    from crucible_kitchen.ports._tokenizer import Tokenizer
    from crucible_kitchen.ports._types import (
        AdamParams,
        CustomLossFn,
        Datum,
        ForwardBackwardOutput,
        LoadStateResponse,
        LossFnType,
        ModelInfo,
        OptimStepResponse,
        SaveStateResponse,
        SaveWeightsForSamplerResponse,
    )

__all__ = (
    "CHECKPOINT_DIR",
    "CHECKPOINT_PAYLOAD",
    "SAVE_STATE_WITH_PAYLOAD",
    "ReadCheckpointPayload",
    "SaveStateWithPayload",
    "TrainingClient",
)


class TrainingClient(Protocol):
    """One model being trained on a backend (Tinker: ``TrainingClient``).

    Submitting methods return a :class:`BackendFuture` as soon as the backend has accepted
    the request; the backend applies requests in submission order. Every mutating method
    takes a ``request_id``: a request re-sent with an id the backend has already accepted
    returns that request's future and is not applied again; a request that failed is
    forgotten, so re-sending it runs it. The same id with a different request raises
    :class:`~crucible_kitchen.errors.RequestIdConflict`.

    Errors: submitting raises :class:`~crucible_kitchen.errors.InvalidRequest` for a request
    the backend refuses; backend failures surface as
    :class:`~crucible_kitchen.errors.TransientBackendError` or
    :class:`~crucible_kitchen.errors.PermanentBackendError`, from the call or the future.
    """

    async def forward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> BackendFuture[ForwardBackwardOutput]:
        """Compute the loss and logprobs of ``data`` without touching gradients.

        Args:
            data: the examples; each holds the inputs ``loss_fn`` requires.
            loss_fn: the named loss; its sum over tokens is the ``"loss:sum"`` metric.
            loss_fn_config: loss settings such as PPO's ``clip_low_threshold``.

        Returns:
            A future of one output map per datum (``"logprobs"`` at least) and the metrics.
        """
        ...

    async def forward_backward(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: str,
    ) -> BackendFuture[ForwardBackwardOutput]:
        """Like :meth:`forward`, and add the loss's gradient to the accumulated gradients.

        Gradients accumulate until the next :meth:`optim_step`.
        """
        ...

    async def forward_backward_custom(
        self, data: Sequence[Datum], loss_fn: CustomLossFn, *, request_id: str
    ) -> BackendFuture[ForwardBackwardOutput]:
        """Accumulate the gradient of a loss computed by the caller.

        The backend computes the target logprobs of ``data`` (which needs ``target_tokens``),
        calls ``loss_fn(data, logprobs)`` once, and back-propagates the returned gradient.
        The result's metrics are the loss's own plus ``"loss:sum"``.
        """
        ...

    async def optim_step(
        self, adam_params: AdamParams, *, request_id: str
    ) -> BackendFuture[OptimStepResponse]:
        """Apply one AdamW step with the accumulated gradients, then clear them."""
        ...

    async def save_state(self, name: str, *, request_id: str) -> BackendFuture[SaveStateResponse]:
        """Save weights and optimizer state under ``name``; the response holds the path."""
        ...

    async def load_state(
        self, path: str, *, with_optimizer: bool = True, request_id: str
    ) -> BackendFuture[LoadStateResponse]:
        """Replace weights, and optimizer state if ``with_optimizer``, by a saved state.

        Accumulated gradients are dropped. An unknown path raises
        :class:`~crucible_kitchen.errors.ResourceNotFound`.
        """
        ...

    async def save_weights_for_sampler(
        self, name: str, *, request_id: str
    ) -> BackendFuture[SaveWeightsForSamplerResponse]:
        """Save the current weights for sampling; the path is for :meth:`create_sampling_client`."""
        ...

    async def create_sampling_client(self, model_path: str) -> SamplingClient:
        """A sampling client over weights saved by :meth:`save_weights_for_sampler`.

        Raises:
            ResourceNotFound: nothing was saved at ``model_path``.
        """
        ...

    def get_info(self) -> ModelInfo:
        """What this client trains. Needs no request."""
        ...

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer of the model being trained. Needs no request."""
        ...


# ------------------------------------------------------------------------------------------
# Optional capabilities (see ``crucible_kitchen.ports.capability``)


class SaveStateWithPayload(Protocol):
    """:meth:`TrainingClient.save_state` that also stores a JSON object with the checkpoint."""

    async def __call__(
        self, name: str, *, request_id: str, user_payload: Mapping[str, Any]
    ) -> BackendFuture[SaveStateResponse]: ...


class ReadCheckpointPayload(Protocol):
    """Reads back the payload stored with a checkpoint (``None`` if it was saved without)."""

    async def __call__(self, path: str) -> dict[str, Any] | None: ...


SAVE_STATE_WITH_PAYLOAD: Final[Capability[SaveStateWithPayload]] = Capability(
    "save_state_with_payload",
    """Save a state like ``save_state`` and store ``user_payload`` (a JSON object) in the
    same checkpoint, committed together with the weights; the workflows put the context
    snapshot there, so a new process can resume from the checkpoint alone. A re-sent
    request (same ``request_id``, same payload) returns the first answer; another payload
    under the same id raises ``RequestIdConflict``.""",
)

CHECKPOINT_PAYLOAD: Final[Capability[ReadCheckpointPayload]] = Capability(
    "checkpoint_payload",
    """Read the ``user_payload`` stored by ``SAVE_STATE_WITH_PAYLOAD`` in the checkpoint at
    ``path`` (a ``SaveStateResponse.path``); ``None`` for a checkpoint saved without one.
    Works in a new process on a new client. Raises ``ResourceNotFound`` for an unknown
    path and ``CheckpointError`` for an unreadable checkpoint.""",
)

CHECKPOINT_DIR: Final[Capability[Path]] = Capability(
    "checkpoint_dir",
    """The local directory the client's checkpoints are written to: every path that
    ``save_state`` returns is a directory ``<checkpoint_dir>/<kind>/<name>/`` holding a
    ``manifest.json``, written when the checkpoint is complete. Resume lists it to find a
    run's checkpoints.""",
)

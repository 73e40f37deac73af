"""One connection to a Tinker server: the SDK's ``ServiceClient``, made on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread
import tinker

from crucible_kitchen.adapters.tinker._errors import translated
from crucible_kitchen.adapters.tinker._futures import in_sdk_context

if TYPE_CHECKING:
    from crucible_kitchen.adapters.tinker._sampling_client import TinkerSamplingClient
    from crucible_kitchen.ports import Tokenizer

__all__ = ("TinkerSession",)

_PORT: Final = "training_client"


class TinkerSession:
    """The base URL and API key of a Tinker server, and the SDK session opened with them.

    ``base_url`` and ``api_key`` default to what the SDK itself reads: ``TINKER_BASE_URL``
    and ``TINKER_API_KEY`` (then ``TINKER_CREDENTIAL_CMD`` and the saved credentials of
    ``tinker auth login``). The SDK refuses API keys that do not start with ``tml-``.
    The session is opened (a blocking round trip) by the first client that needs it, in a
    worker thread.
    """

    def __init__(self, *, base_url: str | None = None, api_key: str | None = None) -> None:
        self.base_url = base_url
        self._api_key = api_key
        self._service: tinker.ServiceClient | None = None
        self._rest: tinker.RestClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TinkerSession(base_url={self.base_url!r})"

    def service(self) -> tinker.ServiceClient:
        """The SDK's ``ServiceClient`` (made once; it opens the session when first used)."""
        with self._lock:
            if self._service is None:
                self._service = tinker.ServiceClient(base_url=self.base_url, api_key=self._api_key)
            return self._service

    def require_weights(self, path: str, *, operation: str, request_id: str | None = None) -> None:
        """Check that the server holds a checkpoint at ``path`` (blocking).

        Raises:
            ResourceNotFound: it does not.
        """
        with translated(_PORT, operation, request_id, resource=path):
            with self._lock:
                if self._rest is None:
                    self._rest = tinker.RestClient(base_url=self.base_url, api_key=self._api_key)
                rest = self._rest
            in_sdk_context(lambda: rest.get_weights_info_by_tinker_path(path).future()).result()

    def create_training_client_blocking(
        self, *, base_model: str, rank: int, seed: int | None
    ) -> tinker.TrainingClient:
        """A new LoRA model of ``base_model`` on the server; blocks until it exists.

        Raises:
            BackendError: the server refused it or could not be reached (translated).
        """
        with translated(_PORT, "create_model", resource=base_model):
            service = self.service()
            future = in_sdk_context(
                lambda: service.create_lora_training_client(
                    base_model=base_model, rank=rank, seed=seed
                ).future()
            )
            return future.result()

    async def create_training_client(
        self, *, base_model: str, rank: int, seed: int | None
    ) -> tinker.TrainingClient:
        """:meth:`create_training_client_blocking` in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: self.create_training_client_blocking(
                base_model=base_model, rank=rank, seed=seed
            )
        )

    async def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool, request_id: str | None = None
    ) -> tinker.TrainingClient:
        """A new model on the server holding the checkpoint at ``path``.

        Raises:
            ResourceNotFound: the server knows no checkpoint at ``path``.
            BackendError: another failure (translated).
        """

        def create() -> tinker.TrainingClient:
            self.require_weights(path, operation="load_state", request_id=request_id)
            with translated(_PORT, "load_state", request_id, resource=path):
                service = self.service()
                future = in_sdk_context(
                    lambda: (
                        service.create_training_client_from_state_with_optimizer(path)
                        if with_optimizer
                        else service.create_training_client_from_state(path)
                    ).future()
                )
                return future.result()

        return await anyio.to_thread.run_sync(create)

    def create_sampling_client_blocking(
        self, *, model_path: str | None, base_model: str | None
    ) -> tinker.SamplingClient:
        """An SDK sampling client of saved weights or of a base model; blocks until ready.

        Raises:
            ResourceNotFound: the server knows no weights at ``model_path``.
            BackendError: another failure (translated).
        """
        with translated("sampling_client", "create_sampling_client", resource=model_path):
            service = self.service()
            future: Any = in_sdk_context(
                lambda: service.create_sampling_client(
                    model_path=model_path, base_model=base_model
                ).future()
            )
            client: tinker.SamplingClient = future.result()
            return client

    async def sampling_client(
        self, *, model_path: str, tokenizer: Tokenizer
    ) -> TinkerSamplingClient:
        """A ready sampling client of the weights saved at ``model_path``.

        Raises:
            ResourceNotFound: the server knows no weights at ``model_path``.
        """
        from crucible_kitchen.adapters.tinker._sampling_client import TinkerSamplingClient

        sdk = await anyio.to_thread.run_sync(
            lambda: self.create_sampling_client_blocking(model_path=model_path, base_model=None)
        )
        return TinkerSamplingClient(self, tokenizer=tokenizer, client=sdk)

"""An in-memory model registry with deterministic ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._determinism import mix, text_key
from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.errors import InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import RegisteredModel

if TYPE_CHECKING:
    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters
    from crucible_kitchen.ports import ModelArtifact

__all__ = ("NoopModelRegistry",)

_PORT: Final = "model_registry"


class NoopModelRegistry:
    """Implements :class:`~crucible_kitchen.ports.ModelRegistry` in memory.

    A model's id is a function of the seed, its name and its version.

    Args:
        seed: determines the ids.
        faults: faults to inject into this registry's calls.
    """

    def __init__(self, *, seed: int = 0, faults: FaultPlan | None = None) -> None:
        self._seed = seed
        self._models: dict[str, RegisteredModel] = {}
        self._ledger = RequestLedger(_PORT, faults)

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def register(self, artifact: ModelArtifact, *, request_id: str) -> RegisteredModel:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.register`."""
        fingerprint = self._ledger.fingerprint("register", artifact)

        def effect() -> RegisteredModel:
            key = mix(self._seed, text_key(artifact.name), text_key(artifact.version))
            model_id = f"noop-{key:016x}"
            if model_id in self._models:
                raise InvalidRequest(
                    f"register: {artifact.name!r} version {artifact.version!r} is already "
                    f"registered as {model_id!r}",
                    port=_PORT,
                    operation="register",
                    request_id=request_id,
                )
            model = RegisteredModel(model_id=model_id, artifact=artifact)
            self._models[model_id] = model
            return model

        return await self._ledger.call(
            "register", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def get(self, model_id: str) -> RegisteredModel:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.get`."""

        def effect() -> RegisteredModel:
            model = self._models.get(model_id)
            if model is None:
                raise ResourceNotFound(
                    f"get: no model {model_id!r}", port=_PORT, operation="get", resource=model_id
                )
            return model

        return await self._ledger.call("get", effect)

    async def list_models(self, *, name: str | None = None) -> list[RegisteredModel]:
        """See :meth:`crucible_kitchen.ports.ModelRegistry.list_models`."""
        return await self._ledger.call(
            "list_models",
            lambda: [m for m in self._models.values() if name in (None, m.artifact.name)],
        )

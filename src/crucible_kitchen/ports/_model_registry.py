"""The model registry port: trained models, their artifacts and lineage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from crucible_kitchen.ports._types import ModelArtifact, RegisteredModel

__all__ = ("ModelRegistry",)


class ModelRegistry(Protocol):
    """Records trained models so that they can be found and deployed later."""

    async def register(self, artifact: ModelArtifact, *, request_id: str) -> RegisteredModel:
        """Register ``artifact`` and return it with the id the registry gave it.

        Raises:
            InvalidRequest: the registry already holds this name and version.
        """
        ...

    async def get(self, model_id: str) -> RegisteredModel:
        """The model registered under ``model_id``.

        Raises:
            ResourceNotFound: no model has that id.
        """
        ...

    async def list_models(self, *, name: str | None = None) -> list[RegisteredModel]:
        """Registered models, oldest first; only those called ``name`` if given."""
        ...

"""The blob store port: bytes under slash-separated keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from crucible_kitchen.ports._types import BlobInfo

__all__ = ("BlobStore",)


class BlobStore(Protocol):
    """Bytes stored under relative, slash-separated keys such as ``"runs/r1/ckpt/0001.bin"``.

    A key is refused with :class:`~crucible_kitchen.errors.InvalidRequest` if it is empty,
    absolute, contains a backslash or a NUL, or has an empty, ``.`` or ``..`` segment, so no
    key can escape the store. A write is all or nothing: a reader sees the old bytes or the
    new ones, never a mix.
    """

    async def read(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            ResourceNotFound: nothing is stored under ``key``.
        """
        ...

    async def write(self, key: str, data: bytes, *, request_id: str) -> BlobInfo:
        """Store ``data`` under ``key``, replacing what was there."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether something is stored under ``key``."""
        ...

    async def delete(self, key: str, *, request_id: str) -> bool:
        """Remove ``key`` and return whether it existed; a re-sent request gets the first answer."""
        ...

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every stored key that starts with ``prefix``, sorted."""
        ...

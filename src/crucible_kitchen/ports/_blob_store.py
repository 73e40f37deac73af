"""The blob store port: bytes under slash-separated keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from crucible_kitchen._files import TEMP_PREFIX
from crucible_kitchen.errors import InvalidRequest

if TYPE_CHECKING:
    from crucible_kitchen.ports._types import BlobInfo

__all__ = ("RESERVED_KEY_PREFIX", "BlobStore", "check_blob_key")

RESERVED_KEY_PREFIX: Final = TEMP_PREFIX
"""Key segments starting with this are reserved for a store's writes in progress (the
temporary files of the package's atomic writer)."""


def check_blob_key(
    key: object, *, operation: str, port: str = "blob_store", what: str = "blob key"
) -> str:
    """``key`` if it is a valid key: the one rule every store applies (see :class:`BlobStore`).

    Refused: a non-string or empty key, an absolute one, a backslash or NUL, an empty,
    ``.`` or ``..`` segment, or a segment starting with :data:`RESERVED_KEY_PREFIX`. Such a
    key could escape a store's root or collide with its temporary files; a key that passes
    is valid in every store, so data moves between stores unchanged.

    Args:
        key: the key to check.
        operation: the port method being called, for the error.
        port: the port being called, for the error (other keyed stores share the rule).
        what: what the key names, for the error's message.

    Raises:
        InvalidRequest: naming the key and the rule it breaks.
    """
    problem = None
    if not isinstance(key, str) or not key:
        problem = "must be a non-empty string"
    elif key.startswith("/"):
        problem = "must be relative"
    elif "\\" in key or "\x00" in key:
        problem = "must not contain a backslash or NUL"
    elif any(segment in ("", ".", "..") for segment in key.split("/")):
        problem = "must not have empty, '.' or '..' segments"
    elif any(segment.startswith(RESERVED_KEY_PREFIX) for segment in key.split("/")):
        problem = f"must not have a segment starting with the reserved {RESERVED_KEY_PREFIX!r}"
    if problem is not None:
        raise InvalidRequest(
            f"{operation}: {what} {key!r} {problem}", port=port, operation=operation
        )
    assert isinstance(key, str)
    return key


class BlobStore(Protocol):
    """Bytes stored under relative, slash-separated keys such as ``"runs/r1/ckpt/0001.bin"``.

    A key is refused with :class:`~crucible_kitchen.errors.InvalidRequest` if it is empty,
    absolute, contains a backslash or a NUL, has an empty, ``.`` or ``..`` segment, or a
    segment starting with the reserved ``.ck-tmp-``, so no key can escape the store; every
    store applies this one rule through :func:`check_blob_key`. A write is all or nothing: a
    reader sees the old bytes or the new ones, never a mix.
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

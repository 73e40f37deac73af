"""An in-memory blob store."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

from crucible_kitchen.adapters.noop._ledger import RequestLedger
from crucible_kitchen.errors import InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import BlobInfo, check_blob_key

if TYPE_CHECKING:
    from crucible_kitchen.adapters.noop._faults import FaultPlan
    from crucible_kitchen.adapters.noop._ledger import CallCounters

__all__ = ("NoopBlobStore",)

_PORT: Final = "blob_store"


class NoopBlobStore:
    """Implements :class:`~crucible_kitchen.ports.BlobStore` in a dict owned by the instance.

    Args:
        faults: faults to inject into this store's calls.
    """

    def __init__(self, *, faults: FaultPlan | None = None) -> None:
        self._blobs: dict[str, bytes] = {}
        self._ledger = RequestLedger(_PORT, faults)

    @property
    def counters(self) -> CallCounters:
        """Calls received, applied, deduplicated and faulted, per method."""
        return self._ledger.counters

    async def read(self, key: str) -> bytes:
        """See :meth:`crucible_kitchen.ports.BlobStore.read`."""
        check_blob_key(key, operation="read")

        def effect() -> bytes:
            data = self._blobs.get(key)
            if data is None:
                raise ResourceNotFound(
                    f"read: no blob {key!r}", port=_PORT, operation="read", resource=key
                )
            return data

        return await self._ledger.call("read", effect)

    async def write(self, key: str, data: bytes, *, request_id: str) -> BlobInfo:
        """See :meth:`crucible_kitchen.ports.BlobStore.write`."""
        check_blob_key(key, operation="write")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidRequest(
                f"write: data is a {type(data).__name__}, not bytes", port=_PORT, operation="write"
            )
        content = bytes(data)
        digest = hashlib.sha256(content).hexdigest()

        def effect() -> BlobInfo:
            self._blobs[key] = content
            return BlobInfo(key=key, size=len(content), sha256=digest)

        fingerprint = f"{key}\x00{digest}".encode()
        return await self._ledger.call(
            "write", effect, request_id=request_id, fingerprint=fingerprint
        )

    async def exists(self, key: str) -> bool:
        """See :meth:`crucible_kitchen.ports.BlobStore.exists`."""
        check_blob_key(key, operation="exists")
        return await self._ledger.call("exists", lambda: key in self._blobs)

    async def delete(self, key: str, *, request_id: str) -> bool:
        """See :meth:`crucible_kitchen.ports.BlobStore.delete`."""
        check_blob_key(key, operation="delete")
        return await self._ledger.call(
            "delete",
            lambda: self._blobs.pop(key, None) is not None,
            request_id=request_id,
            fingerprint=key.encode(),
        )

    async def list_keys(self, prefix: str = "") -> list[str]:
        """See :meth:`crucible_kitchen.ports.BlobStore.list_keys`."""
        return await self._ledger.call(
            "list_keys", lambda: sorted(key for key in self._blobs if key.startswith(prefix))
        )

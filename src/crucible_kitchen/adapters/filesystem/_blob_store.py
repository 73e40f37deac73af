"""A blob store in a directory: one file per key, written atomically, confined to its root."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio.to_thread

from crucible_kitchen._files import TEMP_PREFIX, atomic_write
from crucible_kitchen.adapters.filesystem._files import (
    RequestLedger,
    confined_path,
    os_error,
)
from crucible_kitchen.errors import InvalidRequest, ResourceNotFound
from crucible_kitchen.ports import BlobInfo, check_blob_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

__all__ = ("FilesystemBlobStore",)

_PORT: Final = "blob_store"


class FilesystemBlobStore:
    """Implements :class:`~crucible_kitchen.ports.BlobStore` with files under ``root``.

    Key ``"a/b.bin"`` is the file ``root/a/b.bin``. Keys that could leave the root are
    refused with :class:`InvalidRequest`: absolute keys, ``..`` segments, backslashes, NULs
    (the port's rules), and keys that lead outside ``root`` through a symbolic link. A
    write goes to a temporary file (``.ck-tmp-*``, never listed), is fsynced and renamed
    into place, so readers see the old bytes or the new, never a mix. Directories left
    empty by a delete are removed. Re-sent writes and deletes are answered from an
    in-memory ledger (per instance).

    Args:
        root: the store's directory; created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        self._root = Path(os.path.realpath(root))
        self._ledger = RequestLedger(_PORT)

    @property
    def root(self) -> Path:
        """The store's directory, resolved."""
        return self._root

    def _path(self, operation: str, key: object) -> tuple[str, Path]:
        checked = check_blob_key(key, operation=operation)
        return checked, confined_path(self._root, checked, port=_PORT, operation=operation)

    async def _io(self, operation: str, work: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(work)
        except OSError as exc:
            raise os_error(exc, port=_PORT, operation=operation) from exc

    async def read(self, key: str) -> bytes:
        """See :meth:`crucible_kitchen.ports.BlobStore.read`."""
        key, path = self._path("read", key)

        def work() -> bytes:
            try:
                return path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise ResourceNotFound(
                    f"read: no blob {key!r}", port=_PORT, operation="read", resource=key
                ) from None

        return await self._io("read", work)

    async def write(self, key: str, data: bytes, *, request_id: str) -> BlobInfo:
        """See :meth:`crucible_kitchen.ports.BlobStore.write`.

        Raises:
            InvalidRequest: a bad key, data that is not bytes, or a key whose path is a
                directory (a prefix of other keys) or runs through a stored blob.
        """
        key, path = self._path("write", key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidRequest(
                f"write: data is a {type(data).__name__}, not bytes", port=_PORT, operation="write"
            )
        content = bytes(data)
        digest = hashlib.sha256(content).hexdigest()

        def work() -> BlobInfo:
            try:
                if path.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
                atomic_write(path, content)
            except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
                raise InvalidRequest(
                    f"write: key {key!r} cannot be stored: {exc.strerror or exc} "
                    "(a key cannot be both a blob and a prefix of other keys)",
                    port=_PORT,
                    operation="write",
                    request_id=request_id,
                ) from exc
            except OSError as exc:
                raise os_error(exc, port=_PORT, operation="write", request_id=request_id) from exc
            return BlobInfo(key=key, size=len(content), sha256=digest)

        return await self._ledger.run(
            "write", work, request_id=request_id, fingerprint=f"{key}\x00{digest}".encode()
        )

    async def exists(self, key: str) -> bool:
        """See :meth:`crucible_kitchen.ports.BlobStore.exists`."""
        _, path = self._path("exists", key)
        return await self._io("exists", path.is_file)

    async def delete(self, key: str, *, request_id: str) -> bool:
        """See :meth:`crucible_kitchen.ports.BlobStore.delete`."""
        key, path = self._path("delete", key)

        def work() -> bool:
            try:
                if not path.is_file():
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise os_error(exc, port=_PORT, operation="delete", request_id=request_id) from exc
            self._prune(path.parent)
            return True

        return await self._ledger.run(
            "delete", work, request_id=request_id, fingerprint=key.encode()
        )

    async def list_keys(self, prefix: str = "") -> list[str]:
        """See :meth:`crucible_kitchen.ports.BlobStore.list_keys`.

        Symbolic links to files outside the root are not listed.
        """
        if not isinstance(prefix, str):
            raise InvalidRequest(
                f"list_keys: prefix is a {type(prefix).__name__}", port=_PORT, operation="list_keys"
            )
        return await self._io("list_keys", lambda: self._list(prefix))

    def _list(self, prefix: str) -> list[str]:
        keys = []
        for directory, subdirectories, files in os.walk(self._root):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(TEMP_PREFIX)]
            base = Path(directory)
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = base / name
                key = path.relative_to(self._root).as_posix()
                if not key.startswith(prefix):
                    continue
                real = Path(os.path.realpath(path))
                if real.is_relative_to(self._root) and real.is_file():
                    keys.append(key)
        return sorted(keys)

    def _prune(self, directory: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, up to the root."""
        while directory != self._root and directory.is_relative_to(self._root):
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            directory = directory.parent

"""Paths confined to a root, OS errors translated, and the request ledger of the filesystem
adapters (atomic writes: :mod:`crucible_kitchen._files`)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from crucible_kitchen.errors import (
    InvalidRequest,
    KitchenError,
    PermanentBackendError,
    RequestIdConflict,
    TransientBackendError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("RequestLedger", "confined_path", "os_error")

T = TypeVar("T")

_TRANSIENT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY})


def confined_path(root: Path, key: str, *, port: str, operation: str) -> Path:
    """The path of ``key`` under ``root`` (a resolved directory), refusing symlink escapes.

    ``key`` must have passed :func:`~crucible_kitchen.ports.check_blob_key`. The path is
    resolved, following every symbolic link that exists; if the result lies outside ``root``
    the key is refused.
    (A link swapped in between this check and the use of the path is not caught.)

    Raises:
        InvalidRequest: the key leads outside ``root`` through a symbolic link.
    """
    path = root.joinpath(*key.split("/"))
    real = Path(os.path.realpath(path))
    if real != root and not real.is_relative_to(root):
        raise InvalidRequest(
            f"{operation}: key {key!r} leads outside the store's root {root} "
            f"(through a symbolic link, to {real})",
            port=port,
            operation=operation,
        )
    return path


def os_error(
    exc: OSError, *, port: str, operation: str, request_id: str | None = None
) -> KitchenError:
    """The error-tree twin of an ``OSError`` from an operation that had no effect.

    A full disk, an I/O error or a busy resource may pass: transient. Anything else
    (permissions, a file where a directory should be) is permanent.
    """
    kind = TransientBackendError if exc.errno in _TRANSIENT_ERRNOS else PermanentBackendError
    return kind(f"{operation}: {exc}", port=port, operation=operation, request_id=request_id)


@dataclass(slots=True)
class _Record(Generic[T]):
    method: str
    fingerprint: bytes
    done: anyio.Event
    value: Any = None
    succeeded: bool = False


class RequestLedger:
    """Runs mutating requests once per ``request_id``, each in a worker thread.

    A re-sent request (same id, method and fingerprint) gets the first one's answer,
    waiting for it if it is still running; the same id with another request raises
    :class:`RequestIdConflict`; a failed request is forgotten, so re-sending it runs it. A
    request whose work finished is recorded even if its caller was cancelled meanwhile.
    """

    def __init__(self, port: str) -> None:
        self.port = port
        self._records: dict[str, _Record[Any]] = {}

    async def run(
        self, method: str, work: Callable[[], T], *, request_id: str, fingerprint: bytes
    ) -> T:
        """Run ``work`` for this request, or return the answer it already got.

        Raises:
            RequestIdConflict: ``request_id`` was used for another method or content.
        """
        await anyio.lowlevel.checkpoint()
        while (known := self._records.get(request_id)) is not None:
            if known.method != method or known.fingerprint != fingerprint:
                raise RequestIdConflict.reused(
                    request_id, earlier=known.method, port=self.port, operation=method
                )
            if known.succeeded:
                value: T = known.value
                return value
            await known.done.wait()  # still running; it succeeds, or is forgotten
        record: _Record[T] = _Record(method, fingerprint, anyio.Event())
        self._records[request_id] = record

        def job() -> None:
            record.value = work()
            record.succeeded = True

        try:
            await anyio.to_thread.run_sync(job)
        finally:
            if not record.succeeded:
                del self._records[request_id]
            record.done.set()
        result: T = record.value
        return result

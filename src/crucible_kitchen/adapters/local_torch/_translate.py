"""Foreign exceptions of the torch engine, translated into crucible-kitchen's error tree."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import torch

from crucible_kitchen.errors import (
    InvalidRequest,
    KitchenError,
    PermanentBackendError,
    TrainingInputError,
    TransientBackendError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("translated",)

_TRANSIENT_ERRNOS: Final = frozenset(
    {errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR}
)


@contextmanager
def translated(
    port: str, operation: str, request_id: str | None = None, *, atomic: bool = False
) -> Iterator[None]:
    """Re-raise foreign errors of the block as the error tree's, with ``raise ... from``.

    - ``TrainingInputError``, ``ValueError``, ``IndexError``, ``TypeError`` →
      :class:`InvalidRequest` (the request's content was refused);
    - other :class:`KitchenError`\\ s (``CheckpointError``, ``InvalidRequest``, ...) pass;
    - ``torch.OutOfMemoryError`` → :class:`TransientBackendError` when the block is
      ``atomic`` (it left no trace, so re-sending can succeed), else
      :class:`PermanentBackendError`;
    - ``OSError`` → transient for a full disk, an I/O error or a busy resource when
      ``atomic``, else permanent;
    - any other ``Exception`` (torch's ``RuntimeError``, ...) → :class:`PermanentBackendError`.
    """
    try:
        yield
    except TrainingInputError as exc:
        raise InvalidRequest(
            f"{operation}: {exc}", port=port, operation=operation, request_id=request_id
        ) from exc
    except KitchenError:
        raise
    except torch.OutOfMemoryError as exc:
        kind = TransientBackendError if atomic else PermanentBackendError
        raise kind(
            f"{operation}: out of memory: {exc}",
            port=port,
            operation=operation,
            request_id=request_id,
        ) from exc
    except OSError as exc:
        transient = atomic and exc.errno in _TRANSIENT_ERRNOS
        kind = TransientBackendError if transient else PermanentBackendError
        raise kind(
            f"{operation}: {exc}", port=port, operation=operation, request_id=request_id
        ) from exc
    except (ValueError, IndexError, TypeError) as exc:
        raise InvalidRequest(
            f"{operation}: {exc}", port=port, operation=operation, request_id=request_id
        ) from exc
    except Exception as exc:
        raise PermanentBackendError(
            f"{operation}: {type(exc).__name__}: {exc}",
            port=port,
            operation=operation,
            request_id=request_id,
        ) from exc

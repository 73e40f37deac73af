"""The tinker SDK's exceptions, translated into crucible-kitchen's error tree."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import tinker

from crucible_kitchen.errors import (
    BackendError,
    InvalidRequest,
    KitchenError,
    PermanentBackendError,
    ResourceNotFound,
    TransientBackendError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("translate", "translated")

_TRANSIENT = (
    tinker.APIConnectionError,  # also APITimeoutError
    tinker.RateLimitError,
    tinker.ConflictError,
    tinker.InternalServerError,
)
_REFUSED = (tinker.BadRequestError, tinker.UnprocessableEntityError)


def translate(
    exc: BaseException,
    *,
    port: str,
    operation: str,
    request_id: str | None = None,
    resource: str | None = None,
) -> KitchenError:
    """The error-tree twin of ``exc``, an exception the SDK raised for a request.

    - connection errors and timeouts, HTTP 409, 429 and 5xx (once the SDK's own retries
      gave up) → :class:`TransientBackendError`;
    - HTTP 400 and 422, and a request the server failed as the user's fault
      (``RequestFailedError`` of category ``"user"``) → :class:`InvalidRequest`;
    - HTTP 404 → :class:`ResourceNotFound` (naming ``resource``, when the call has one);
    - anything else (401, 402, 403, a server-side failure, a poisoned client) →
      :class:`PermanentBackendError`. A :class:`KitchenError` is returned unchanged.
    """
    if isinstance(exc, KitchenError):
        return exc
    message = f"{operation}: {type(exc).__name__}: {exc}"
    kind: type[BackendError]
    if isinstance(exc, tinker.NotFoundError):
        return ResourceNotFound(
            message,
            port=port,
            operation=operation,
            resource=resource or "",
            request_id=request_id,
        )
    if isinstance(exc, _TRANSIENT):
        kind = TransientBackendError
    elif isinstance(exc, _REFUSED) or (
        isinstance(exc, tinker.RequestFailedError) and str(exc.category) == "user"
    ):
        kind = InvalidRequest
    else:
        kind = PermanentBackendError
    return kind(message, port=port, operation=operation, request_id=request_id)


@contextmanager
def translated(
    port: str, operation: str, request_id: str | None = None, *, resource: str | None = None
) -> Iterator[None]:
    """Re-raise the SDK's exceptions of the block with :func:`translate`, ``from`` the original.

    ``ValueError`` and ``TypeError`` (the SDK refusing an argument before sending anything)
    become :class:`InvalidRequest`.
    """
    try:
        yield
    except KitchenError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"{operation}: {exc}", port=port, operation=operation, request_id=request_id
        ) from exc
    except Exception as exc:
        raise translate(
            exc, port=port, operation=operation, request_id=request_id, resource=resource
        ) from exc

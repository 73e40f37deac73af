"""The server's errors, in the kitchen's tree, and which are the client's fault (Tinker's
error ``category``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from crucible_kitchen.errors import (
    CheckpointError,
    ConfigError,
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
    TransientBackendError,
)

if TYPE_CHECKING:
    from ._futures import ErrorCategory

__all__ = (
    "PORT",
    "QueueFull",
    "ServerClosed",
    "WireError",
    "category_of",
    "invalid",
    "not_found",
)

PORT: Final = "tinker_server"
"""The ``port`` of the errors this server raises."""


class WireError(InvalidRequest):
    """A request body that does not decode: what was wrong and where (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, port=PORT, operation="decode")


class QueueFull(TransientBackendError):
    """A model's or sampler's queue holds its limit of unfinished requests (HTTP 429: the
    client re-sends later)."""

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(
            f"{owner} has {limit} unfinished requests; re-send later", port=PORT, operation="submit"
        )
        self.owner = owner


class ServerClosed(TransientBackendError):
    """The server is shutting down and takes no new requests (HTTP 503)."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down", port=PORT, operation="submit")


def invalid(message: str) -> InvalidRequest:
    """The error of a request the server refuses (HTTP 400, or a ``user`` failure)."""
    return InvalidRequest(message, port=PORT, operation="tinker_request")


def not_found(message: str, *, resource: str) -> ResourceNotFound:
    """The error of an unknown session, model, sampler, request or checkpoint (HTTP 404)."""
    return ResourceNotFound(message, port=PORT, operation="tinker_request", resource=resource)


_USER_ERRORS: Final = (
    CheckpointError,
    ConfigError,
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
)


def category_of(exc: Exception) -> ErrorCategory:
    """``user`` for a request the backend refused (bad input, unknown checkpoint), else
    ``server``."""
    return "user" if isinstance(exc, _USER_ERRORS) else "server"

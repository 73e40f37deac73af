"""Which failures are the client's fault: Tinker's error ``category``."""

from __future__ import annotations

from crucible_kitchen.errors import (
    CheckpointError,
    ConfigError,
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
)

from ._futures import ErrorCategory
from ._wire import WireError

__all__ = ("PORT", "category_of", "invalid", "not_found")

PORT = "tinker_server"
"""The ``port`` of the errors this server raises."""

_USER_ERRORS = (
    CheckpointError,
    ConfigError,
    InvalidRequest,
    RequestIdConflict,
    ResourceNotFound,
    WireError,
)


def category_of(exc: Exception) -> ErrorCategory:
    """``user`` for a request the backend refused (bad input, unknown checkpoint), else
    ``server``."""
    return "user" if isinstance(exc, _USER_ERRORS) else "server"


def invalid(message: str) -> InvalidRequest:
    """The error of a request the server refuses (HTTP 400, or a ``user`` failure)."""
    return InvalidRequest(message, port=PORT, operation="tinker_request")


def not_found(message: str, *, resource: str) -> ResourceNotFound:
    """The error of an unknown session, model, sampler, request or checkpoint (HTTP 404)."""
    return ResourceNotFound(message, port=PORT, operation="tinker_request", resource=resource)

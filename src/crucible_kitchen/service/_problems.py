"""Errors as RFC 9457 problem details (``application/problem+json``)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from crucible_kitchen.errors import (
    AdapterSetNotFound,
    ConfigError,
    PortError,
    RecipeNotFound,
    RunDirectoryError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiohttp.typedefs import Handler

__all__ = (
    "INTERNAL_ERROR_DETAIL",
    "PROBLEM_CONTENT_TYPE",
    "Problem",
    "problem_middleware",
    "start_problem",
)

logger = logging.getLogger("crucible_kitchen.service")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:crucible-kitchen:problem:"
INTERNAL_ERROR_DETAIL = "the service failed to handle the request; its log has the details"
"""The detail of every unexpected failure (500): what failed is logged, never sent."""


class ProblemBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A problem document: ``type`` is ``urn:crucible-kitchen:problem:<kind>``; ``errors``
    lists every field error of an invalid request or config."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[str] = []


class Problem(Exception):
    """Raised by a handler to answer with a problem document.

    Args:
        status: the HTTP status.
        kind: the last part of the problem ``type`` (``malformed-json``, ``unknown-run``, ...).
        detail: what exactly was wrong, for a person.
        errors: each field error, when there are several.
        headers: extra response headers (``Allow``, ``WWW-Authenticate``, ...).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        errors: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body = ProblemBody(
            type=PROBLEM_TYPE_PREFIX + self.kind,
            title=HTTPStatus(self.status).phrase,
            status=self.status,
            detail=self.detail,
            errors=self.errors,
        )
        return web.Response(
            status=self.status,
            body=msgspec.json.encode(body),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer :class:`Problem`, aiohttp's own HTTP errors (no route, wrong method, body too
    large) and unexpected failures (500, logged) with problem documents."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_error(request, exc).response()
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return Problem(500, "internal-error", INTERNAL_ERROR_DETAIL).response()


def _from_http_error(request: web.Request, exc: web.HTTPException) -> Problem:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return Problem(
            405,
            "method-not-allowed",
            f"{request.method} is not allowed on {request.path}; allowed: {allowed}",
            headers={"Allow": allowed},
        )
    if exc.status == 404:
        return Problem(404, "not-found", f"no resource at {request.path}")
    if exc.status == 413:
        return Problem(413, "body-too-large", exc.text or exc.reason)
    return Problem(exc.status, "http-error", exc.text or exc.reason)


def start_problem(exc: Exception, recipe: str) -> Problem | None:
    """The problem that starting a run of ``recipe`` answers with when :meth:`Kitchen.start`
    raised ``exc``; ``None`` for an unexpected error."""
    match exc:
        case RecipeNotFound():
            return Problem(
                422,
                "unknown-recipe",
                f"no recipe named {exc.name!r}; known: {', '.join(exc.known)}",
            )
        case ConfigError():
            return Problem(
                422,
                "invalid-config",
                f"invalid config for recipe {recipe!r}: {len(exc.problems)} problem(s)",
                errors=exc.problems,
            )
        case AdapterSetNotFound():
            return Problem(422, "unknown-adapter-set", str(exc))
        case PortError():
            return Problem(422, "adapters-do-not-fit", str(exc), errors=exc.problems)
        case RunDirectoryError():
            return Problem(409, "run-directory-taken", str(exc))
    return None

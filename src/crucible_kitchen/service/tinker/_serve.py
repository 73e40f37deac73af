"""``kitchen serve --tinker``: the Tinker-compatible server standalone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from crucible_kitchen.errors import ConfigError

from .._app import is_loopback_host
from ._app import create_tinker_app
from ._settings import TinkerSettings

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("serve_tinker",)


def serve_tinker(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    print: Callable[..., None] | None = print,
    **settings: Any,
) -> None:
    """Serve the Tinker API on ``host:port`` until SIGINT or SIGTERM (``settings``: the
    fields of :class:`TinkerSettings`).

    Raises:
        ConfigError: ``host`` is not a loopback address and no ``api_key`` was given, or a
            setting is invalid.
    """
    tinker_settings = TinkerSettings(**settings)
    if tinker_settings.api_key is None and not is_loopback_host(host):
        raise ConfigError(
            [
                f"host {host!r} is reachable from other machines: give an API key "
                "(--api-key or TINKER_API_KEY), or serve on 127.0.0.1"
            ],
            source="kitchen serve --tinker settings",
        )
    web.run_app(create_tinker_app(tinker_settings), host=host, port=port, print=print)

"""``kitchen serve``: the kitchen application standalone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from crucible_kitchen.errors import ConfigError

from ._app import create_app, is_loopback_host

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

__all__ = ("serve",)


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    root: str | os.PathLike[str] = "runs",
    token: str | None = None,
    print: Callable[..., None] | None = print,
    **settings: Any,
) -> None:
    """Serve the kitchen on ``host:port`` until SIGINT or SIGTERM, then stop every run
    gracefully (see :class:`ServiceSettings` for ``settings``). The Kitchen runs in a worker
    process of its own unless ``kitchen="thread"`` is given.

    Raises:
        ConfigError: ``host`` is not a loopback address and no ``token`` was given.
    """
    if token is None and not is_loopback_host(host):
        raise ConfigError(
            [
                f"host {host!r} is reachable from other machines: give a bearer token "
                "(--token or KITCHEN_TOKEN), or serve on 127.0.0.1"
            ],
            source="kitchen serve settings",
        )
    app = create_app(root=root, token=token, **{"kitchen": "process", **settings})
    web.run_app(app, host=host, port=port, print=print)

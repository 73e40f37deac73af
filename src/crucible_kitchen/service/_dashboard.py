"""The dashboard: ``GET /`` (the page) and ``GET /static/{name}`` (its files).

Only the plain files of the package's ``static`` folder whose suffix has a known content type
are served, looked up by name in a table built when the application is created: no path from a
request reaches the file system. Every answer carries an ``ETag`` and ``Cache-Control:
no-cache`` (a browser revalidates, and gets ``304`` while the file is unchanged).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ._problems import Problem

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

__all__ = ("add_dashboard",)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
"""What the static folder may serve, by file suffix; other files stay unreachable."""

PAGE = "index.html"
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str

    def response(self, request: web.Request, headers: dict[str, str] | None = None) -> web.Response:
        common = {
            "ETag": self.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        }
        if self.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=common)
        return web.Response(body=self.body, headers={"Content-Type": self.content_type, **common})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _load_assets() -> dict[str, _Asset]:
    assets = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[entry.name] = _Asset(body, CONTENT_TYPES[suffix], etag)
    return assets


def add_dashboard(app: web.Application) -> frozenset[Handler]:
    """Add the dashboard's routes to ``app``.

    Returns:
        Their handlers, which need no token: the page and its files hold no data, and a
        browser cannot send a bearer token when it loads a page.
    """
    assets = _load_assets()

    async def page(request: web.Request) -> web.Response:
        return assets[PAGE].response(request, {"Content-Security-Policy": _PAGE_POLICY})

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = assets.get(name)
        if asset is None:
            raise Problem(404, "not-found", f"no static file named {name!r}")
        return asset.response(request)

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    return frozenset({page, static})

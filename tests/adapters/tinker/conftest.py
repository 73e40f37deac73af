"""A Tinker-compatible server (``kitchen serve --tinker``'s app) on loopback, for the
official SDK to talk to: it runs in its own thread and event loop, as a separate process
would, so the SDK's blocking calls never wait on the test's own loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from crucible_kitchen.service.tinker import create_tinker_app

if TYPE_CHECKING:
    from collections.abc import Iterator

API_KEY = "tml-kitchen-test"


class ServerThread:
    """Serves ``create_tinker_app(root=..., **settings)`` on 127.0.0.1 (a free port) until
    closed; checkpoints go under ``root``."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self.root = Path(settings["root"])
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self._thread = threading.Thread(target=self._main, name="tinker-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_tinker_app(**self._settings))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="session")
def tinker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the session: base weights seeded 0, checkpoints in a temp dir."""
    root: Path = tmp_path_factory.mktemp("tinker-server")
    with ServerThread(root=root, api_key=API_KEY, base_seed=0) as server:
        yield server


@pytest.fixture
def tinker_env(tinker_server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    """The server, named by the SDK's own environment variables."""
    monkeypatch.setenv("TINKER_BASE_URL", tinker_server.base_url)
    monkeypatch.setenv("TINKER_API_KEY", API_KEY)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    return tinker_server


# The SDK drops some of its HTTP connections to the server without closing them (its
# per-request connection pools); Python reports each when it is collected. Only those
# reports are ignored here: any other unraisable exception still fails a test.
_SDK_UNCLOSED = (
    r"ignore:Exception ignored in. <(socket\.socket|function _SelectorTransport\.__del__)"
    r":pytest.PytestUnraisableExceptionWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.filterwarnings(_SDK_UNCLOSED))

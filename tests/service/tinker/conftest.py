"""The Tinker server tests need the SDK (the ``tinker`` extra); its telemetry stays off."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("tinker", reason="the tinker extra is not installed")


def pytest_configure(config: pytest.Config) -> None:
    # The SDK drops the connection pool of its one-off configuration fetch without closing
    # it; the garbage collector then reports its socket.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Exception ignored in.*(socket|_SelectorTransport):"
        "pytest.PytestUnraisableExceptionWarning",
    )


@pytest.fixture(autouse=True)
def _sdk_without_telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    yield
    gc.collect()  # report the SDK's dropped sockets now, under the filter above

"""The Tinker server tests need the SDK (the ``tinker`` extra); its telemetry stays off."""

from __future__ import annotations

import pytest

pytest.importorskip("tinker", reason="the tinker extra is not installed")


def pytest_configure(config: pytest.Config) -> None:
    # The SDK drops the connection pool of its one-off configuration fetch without closing
    # it; the garbage collector then reports the socket, in whichever test runs next.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Exception ignored in.*(socket|_SelectorTransport):"
        "pytest.PytestUnraisableExceptionWarning",
    )


@pytest.fixture(autouse=True)
def _no_sdk_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")

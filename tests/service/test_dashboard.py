"""The dashboard: its page and static files over HTTP, and the page itself in a real browser.

The browser test drives Debian's headless ``chromium`` through ``chromedriver`` (Selenium); it
skips when they are missing, except under ``CI=true`` where it fails (``make test`` installs
them). The kitchen is mounted under a prefix with a token, served on loopback from a thread;
its ``paced`` recipe takes one step per permit the test hands out, so the test decides how far
the chart has grown when it looks.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import threading
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crucible_kitchen import Context, Recipe, Workflow
from crucible_kitchen.service import PROBLEM_CONTENT_TYPE, mount_kitchen
from crucible_kitchen.telemetry import RlStep
from crucible_kitchen.workflows import loop, stage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.chrome.webdriver import WebDriver

PREFIX = "/lab/kitchen"
TOKEN = "dashboard-test-token"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.anyio  # the browser test is synchronous: the plugin leaves it be


class _Links(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def _host(tmp_path: Path, **settings: Any) -> web.Application:
    host = web.Application()
    mount_kitchen(host, PREFIX, root=tmp_path / "runs", token=TOKEN, **settings)
    return host


# ---------------------------------------------------------------------- the page over HTTP


async def test_the_page_and_its_files_are_served_under_the_prefix_without_a_token(
    tmp_path: Path,
) -> None:
    async with TestClient(TestServer(_host(tmp_path))) as client:
        page = await client.get(f"{PREFIX}/")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Cache-Control"] == "no-cache"
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        links = _Links()
        links.feed(await page.text())
        # relative URLs only, so that the page works under any prefix
        assert links.urls
        assert not [url for url in links.urls if url.startswith("/") or "//" in url]
        types = {}
        for url in links.urls:
            response = await client.get(f"{PREFIX}/{url}")
            assert response.status == 200, url
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            types[url] = response.headers["Content-Type"]
        assert types == {
            "static/uPlot.min.css": "text/css; charset=utf-8",
            "static/dashboard.css": "text/css; charset=utf-8",
            "static/uPlot.iife.min.js": "text/javascript; charset=utf-8",
            "static/dashboard.js": "text/javascript; charset=utf-8",
            "static/uPlot.LICENSE": "text/plain; charset=utf-8",
        }
        # the API itself still wants the token
        assert (await client.get(f"{PREFIX}/runs")).status == 401


async def test_an_unchanged_file_is_revalidated_with_its_etag(tmp_path: Path) -> None:
    async with TestClient(TestServer(_host(tmp_path))) as client:
        first = await client.get(f"{PREFIX}/static/dashboard.js")
        etag = first.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        again = await client.get(
            f"{PREFIX}/static/dashboard.js", headers={"If-None-Match": f'"other", W/{etag}'}
        )
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert await again.read() == b""
        changed = await client.get(
            f"{PREFIX}/static/dashboard.js", headers={"If-None-Match": '"other"'}
        )
        assert changed.status == 200
        assert await changed.read() == await first.read()


@pytest.mark.parametrize(
    "name",
    [
        "missing.js",
        "..%2F_app.py",
        "..%2F..%2F__init__.py",
        "%2Fetc%2Fpasswd",
        "__init__.py",
        ".hidden.js",
    ],
)
async def test_nothing_outside_the_static_files_is_reachable(tmp_path: Path, name: str) -> None:
    async with TestClient(TestServer(_host(tmp_path))) as client:
        response = await client.get(f"{PREFIX}/static/{name}")
        assert response.status == 404
        assert response.content_type == PROBLEM_CONTENT_TYPE


# ---------------------------------------------------------------------- the page in a browser


class Turnstile:
    """Each step of a ``paced`` run waits for a permit; the test hands permits out from its
    own thread with :meth:`let_through` (the steps wait on the kitchen's loop, in a thread
    of its own). :meth:`stop_requested` tells whether the run that waits was asked to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._permits = 0
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._waiting: Context | None = None

    async def passage(self, ctx: Context) -> None:
        self._waiting = ctx
        while True:
            with self._lock:
                if self._permits:
                    self._permits -= 1
                    return
                loop = asyncio.get_running_loop()
                waiter = loop.create_future()
                self._wake = (loop, waiter)
            await waiter

    def stop_requested(self) -> bool:
        return self._waiting is not None and bool(self._waiting.run.stop_requested)

    def let_through(self, steps: int) -> None:
        with self._lock:
            self._permits += steps
            wake, self._wake = self._wake, None
        if wake is not None:
            loop, waiter = wake
            loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PacedConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    steps: int = pydantic.Field(default=1000, ge=1)


def paced_recipe(turnstile: Turnstile) -> Recipe:
    async def train(ctx: Context) -> None:
        await turnstile.passage(ctx)
        ctx.run.telemetry.emit(
            RlStep(
                step=ctx.step,
                reward_mean=ctx.step / 10,
                reward_std=0.0,
                loss=2.0 / (ctx.step + 1),
                lr=1e-3 * 0.9**ctx.step,
            )
        )
        ctx.step += 1

    def build(config: PacedConfig) -> Workflow:
        return Workflow("paced", loop("steps", config.steps, stage("train", train)))

    return Recipe("paced", "one step per permit", build, config_model=PacedConfig)


@contextmanager
def served_in_a_thread(
    tmp_path: Path,
) -> Iterator[tuple[str, Turnstile]]:
    """The kitchen mounted under ``PREFIX`` of a host served on 127.0.0.1 by an event loop in
    a thread of its own; yields the host's base URL and the ``paced`` recipe's turnstile."""
    server_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=server_loop.run_forever, name="kitchen-server")
    thread.start()

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, server_loop).result(timeout=30)

    try:
        turnstile = Turnstile()
        runner = web.AppRunner(
            _host(tmp_path, recipes=[paced_recipe(turnstile)], adapter_sets=["noop"])
        )
        call(runner.setup())
        try:
            call(web.TCPSite(runner, "127.0.0.1", 0).start())
            _, port = runner.addresses[0][:2]
            yield f"http://127.0.0.1:{port}", turnstile
        finally:
            turnstile.let_through(1_000_000)  # a run still going reaches its next boundary
            call(runner.cleanup())
    finally:
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join()
        server_loop.close()


@contextmanager
def chromium(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        reason = (
            f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason}; under CI the browser test must run")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_browser_fails_the_test_under_ci_and_skips_it_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no-chromium missing"), chromium(tmp_path):
        pytest.fail("the browser started")


def _screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    """Save the page as ``name`` in the test's directory and in ``test-artifacts/``."""
    screenshot = tmp_path / name
    assert driver.save_screenshot(str(screenshot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS / name)


@pytest.mark.slow
def test_a_run_started_from_the_page_is_charted_live_and_cancelled_from_it(
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    with served_in_a_thread(tmp_path) as (base, turnstile), chromium(tmp_path) as driver:
        wait = WebDriverWait(driver, 30)

        def text(element_id: str) -> str:
            return str(driver.find_element(By.ID, element_id).text)

        def points(chart: str) -> int:
            attribute = driver.find_element(By.ID, f"chart-{chart}").get_attribute("data-points")
            return int(attribute or 0)

        driver.get(f"{base}{PREFIX}/")
        # without the token the API refuses, and the page says why
        wait.until(lambda _: "bearer token is required" in text("notice"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#recipe option[value=paced]"))
        assert not driver.find_element(By.ID, "notice").is_displayed()

        Select(driver.find_element(By.ID, "recipe")).select_by_value("paced")
        Select(driver.find_element(By.ID, "adapters")).select_by_value("noop")
        config = driver.find_element(By.ID, "config")
        config.clear()
        config.send_keys('{"steps": 500}')
        driver.find_element(By.ID, "start").click()
        wait.until(lambda _: text("run-status") == "RUNNING")  # shown upper-case by CSS
        run_id = text("run-id")
        assert driver.find_element(By.CSS_SELECTOR, f"#runs [data-run-id='{run_id}']")

        turnstile.let_through(3)
        wait.until(lambda _: points("loss") == 3)
        turnstile.let_through(5)
        wait.until(lambda _: points("loss") == 8)  # the chart grew with the stream
        assert (points("reward"), points("lr"), text("run-step")) == (8, 8, "8")
        assert text("run-stage") == "steps/train"  # the ninth step waits at the turnstile
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-loss canvas")
        _screenshot(driver, tmp_path, "dashboard-running.png")

        driver.find_element(By.ID, "cancel").click()
        wait.until(lambda _: turnstile.stop_requested())
        turnstile.let_through(1)  # the waiting step ends: the run stops at that boundary
        wait.until(lambda _: text("run-status") == "CANCELLED")
        wait.until(lambda _: points("loss") == 9)
        assert not driver.find_element(By.ID, "cancel").is_enabled()
        assert text("run-stage") == "—"
        status = driver.find_element(By.CSS_SELECTOR, f"#runs [data-run-id='{run_id}'] .status")
        wait.until(lambda _: status.text == "CANCELLED")

        _screenshot(driver, tmp_path, "dashboard-cancelled.png")

        errors = [
            entry
            for entry in driver.get_log("browser")
            if entry["source"] in {"javascript", "security"}
        ]
        assert errors == []

"""Headless Chromium for the dashboard tests: Debian's ``chromium`` driven by Playwright.

Never ``playwright install`` (it downloads browsers); the system browser is used instead.
Screenshots go to the test's tmp dir, and also to ``$BILLQ_SCREENSHOTS`` when set
(``make screenshots`` points it at docs/screenshots).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import testkit

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        )
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    p = await context.new_page()
    p.set_default_timeout(20_000)
    yield p
    await context.close()


# The ones the README shows; every screenshot lands in the test's tmp dir.
DOCUMENTED = {"overview", "run", "dlq", "confirm", "jobs", "account"}


class Shots:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        docs = os.environ.get("BILLQ_SCREENSHOTS")
        self.docs = Path(docs) if docs else None

    async def take(self, page: Any, name: str) -> None:
        dirs = [self.tmp] + ([self.docs] if self.docs and name in DOCUMENTED else [])
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(d / f"{name}.png"), full_page=False)


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path / "screenshots")


class Dashboard:
    """A ``billq dashboard`` subprocess."""

    def __init__(self, env: dict[str, str], log: Path, *flags: str) -> None:
        self.port = testkit.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = testkit.spawn("dashboard", "--port", str(self.port), *flags, env=env, log=log)
        testkit.wait_http(self.base + "/healthz", self.proc)

    def stop(self) -> None:
        assert testkit.stop_process(self.proc) == 0


@pytest.fixture
def dashboard_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Dashboard] = []

    def start(env: dict[str, str], *flags: str) -> Dashboard:
        d = Dashboard(env, tmp_path / f"dashboard{len(started)}.log", *flags)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()

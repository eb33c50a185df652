"""The console in real Chromium: a gunicorn server on the test database, a headless browser, logged-in pages.

Browser test modules import the fixtures they use (`from tests.browser import chromium, server`) and open
pages with `console_page`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live import ROOT, gunicorn_server

CHROMIUM = os.environ.get("HOTSWAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"]
ARTIFACTS = ROOT / "var" / "test-artifacts"
PASSWORD = "s3cret-Passw0rd"
WAIT_MS = 15_000  # a few of the console's 3 s polls


def _chromium_or_explain() -> None:
    # Skipping only on an explicit request: a CI machine without a browser must fail, not pass quietly.
    if os.environ.get("HOTSWAP_SKIP_BROWSER") == "1":
        pytest.skip("HOTSWAP_SKIP_BROWSER=1: the console's browser tests are skipped on request")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -r requirements-dev.txt (`make test` does it).",
                    pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}. `make test` installs Debian's chromium when run as root; "
                    "otherwise run `apt-get install -y chromium`, point HOTSWAP_CHROMIUM at another binary, or "
                    "set HOTSWAP_SKIP_BROWSER=1 to skip these tests explicitly.", pytrace=False)


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    _chromium_or_explain()
    with django_db_blocker.unblock(), gunicorn_server() as (base_url, _process):
        yield base_url


@pytest.fixture(scope="module")
def chromium(server):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; Django would take the test's own ORM calls
    # for calls from async code and refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@contextmanager
def console_page(chromium, server: str, user, *, start: str, artifact: str, width: int = 1400, height: int = 1000):
    """A page logged in as `user` (password PASSWORD) at `start`, in a width x height window; a screenshot of
    where it ended is kept as var/test-artifacts/<artifact>.png."""
    context = chromium.new_context(base_url=server, viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(f"/admin/login/?next={start}")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"**{start}")
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{artifact}.png"), full_page=True)
        context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)

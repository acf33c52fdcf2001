"""Debian's chromium, driven by Playwright's Python client, for the operator console's tests.

No browser is downloaded: Playwright launches `/usr/bin/chromium` (`executable_path`). The
console is plain HTTP to 127.0.0.1, so instead of a private network namespace (which would
have to hold switchboard and SIPp too) the browser is shut in on loopback: every host name
resolves to nothing but 127.0.0.1 (`--host-resolver-rules`), the background services that
phone home are off, and every request the pages make is routed through `only_loopback`, which
aborts anything not for http://127.0.0.1 and records it; `console_page` fails the test if
one was tried.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Page, Route, async_playwright

CHROMIUM_ARGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-pings",
    "--metrics-recording-only",
)


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium not installed (apt-get install chromium, or run scripts/test)")
    return found


@asynccontextmanager
async def console_page(base_url: str, shots: Path) -> AsyncIterator[Page]:
    """A page of a headless chromium that may reach only `base_url`'s loopback server;
    a screenshot of it is saved in `shots` when the block ends (as it is then)."""
    refused: list[str] = []

    async def only_loopback(route: Route) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort()

    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=list(CHROMIUM_ARGS))
        try:
            # The page's Content-Security-Policy forbids evaluating strings, which is how
            # Playwright's `wait_for_function` polls; the policy itself is checked by the
            # tests on the served headers.
            context = await browser.new_context(base_url=base_url, bypass_csp=True,
                                                viewport={"width": 1400, "height": 1000})
            await context.route("**/*", only_loopback)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            try:
                yield page
            finally:  # the page as it was at the end, failed or not
                await page.screenshot(path=str(shots / "last.png"), full_page=True)
            assert not errors, errors
        finally:
            await browser.close()
    assert not refused, f"the page tried to leave loopback: {refused}"

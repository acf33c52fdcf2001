"""Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol.

Owns: starting the browser with a throwaway profile and the flags a test asks for, finding
its DevTools port (the `DevToolsActivePort` file Chromium writes into the profile when asked
for port 0), opening tabs, and one CDP session per tab: commands (`send`, `evaluate`), the
events the tab reports (`events`: network, console, exceptions) and screenshots. Stopping
kills the browser's whole process group. Speaks CDP over aiohttp's WebSocket client, on an
event loop of its own in a background thread, so that tests call it synchronously.
Knows nothing about SIP or about the page a test loads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

BINARY = "chromium"

# Quiet, self-contained, and usable as root: no first-run UI, no background traffic (none
# could leave the test's network namespace anyway), no sandbox (root cannot have it).
BASE_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--mute-audio",
    # Every tab is a phone the test watches: none is a background tab to throttle.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=900,700",
)


class CdpError(RuntimeError):
    """A CDP command failed, or the page threw while evaluating an expression."""


def missing() -> str | None:
    """Why Chromium cannot run here (None when it can)."""
    if shutil.which(BINARY) is None:
        return "chromium not installed (apt-get install chromium, or run scripts/test)"
    return None


class Page:
    """One tab and its CDP session. Events are kept in arrival order in `events`."""

    def __init__(self, browser: Chromium, target_id: str, ws_url: str, name: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.name = name
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._ws_url = ws_url
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._cond = threading.Condition()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._log = (browser.directory / f"{name}.cdp.log").open("w", encoding="utf-8")

    async def _connect(self) -> None:
        self._ws = await self.browser.session.ws_connect(self._ws_url, max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method, params = data.get("method", ""), data.get("params", {})
            self._log.write(f"{time.monotonic():.3f} {method} {json.dumps(params)[:2000]}\n")
            with self._cond:
                self.events.append((method, params))
                self._cond.notify_all()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError(f"{self.name}: DevTools connection closed"))

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        return await future

    def send(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Run a CDP command on this tab; its `result`, or CdpError with its `error`."""
        reply = self.browser.run(self._send(method, params), timeout)
        if "error" in reply:
            raise CdpError(f"{self.name}: {method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def evaluate(self, expression: str, timeout: float = 15.0) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{self.name}: {expression[:80]!r} threw: {text}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float = 15.0, what: str = "") -> Any:
        """Evaluate `expression` until it is truthy; that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what or expression!r} not true within "
                                     f"{timeout} s")
            time.sleep(0.1)

    def wait_event(self, method: str, match: Callable[[dict[str, Any]], bool] = lambda p: True,
                   timeout: float = 15.0) -> dict[str, Any]:
        """The params of the first CDP event `method` (received so far or next) that match."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for name, params in self.events:
                    if name == method and match(params):
                        return params
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {method} event within {timeout} s")
                self._cond.wait(left)

    def of(self, method: str) -> list[dict[str, Any]]:
        """The params of every `method` event received so far."""
        with self._cond:
            return [params for name, params in self.events if name == method]

    def screenshot(self, path: Path) -> Path:
        # Only the tab in front is painted: a screenshot of another would wait forever.
        self.send("Page.bringToFront")
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.run(self._close(), 5)
        self._log.close()


class Chromium:
    """A headless Chromium with a fresh profile in `directory` and `flags` added."""

    def __init__(self, directory: Path, flags: Iterable[str] = (), *,
                 start_timeout: float = 30.0) -> None:
        self.directory = directory
        profile = directory / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError(missing())
        self.args = [binary, *BASE_FLAGS, f"--user-data-dir={profile}",
                     "--remote-debugging-port=0", *flags, "about:blank"]
        self.log_path = directory / "chromium.log"
        self._output = self.log_path.open("wb")
        # HOME too: Chromium keeps crash reports and caches under it whatever the profile.
        env = dict(os.environ, HOME=str(directory))
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._output,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pages: list[Page] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chromium-cdp")
        self._thread.start()
        try:
            self.port = self._devtools_port(profile / "DevToolsActivePort", start_timeout)
            self.session: aiohttp.ClientSession = self.run(self._new_session(), 10)
        except BaseException:
            self.close()
            raise

    async def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def _devtools_port(self, path: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}:\n"
                                   f"{self.describe()}")
            with contextlib.suppress(OSError, ValueError):
                return int(path.read_text().split("\n", 1)[0])
            time.sleep(0.1)
        raise RuntimeError(f"chromium wrote no DevTools port in {timeout} s:\n{self.describe()}")

    def run(self, coroutine: Any, timeout: float) -> Any:
        """Run a coroutine on the CDP thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _new_target(self, url: str) -> dict[str, Any]:
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as resp:
            resp.raise_for_status()
            target: dict[str, Any] = await resp.json()
            return target

    def open(self, url: str, name: str) -> Page:
        """A new tab loading `url`, with its Page, Runtime and Network events on."""
        target = self.run(self._new_target("about:blank"), 15)
        page = Page(self, target["id"], target["webSocketDebuggerUrl"], name)
        self.run(page._connect(), 15)
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Network"):
            page.send(f"{domain}.enable")
        page.send("Page.navigate", url=url)
        # about:blank is complete too: wait for the new document's own load.
        page.wait_until(f"location.href === {json.dumps(url)} && "
                        "document.readyState === 'complete'", what=f"{url} loaded")
        return page

    def describe(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"chromium: {' '.join(self.args)}\nlog ({self.log_path}):\n{tail}"

    def close(self) -> None:
        for page in self.pages:
            page.close()
        if hasattr(self, "session"):
            with contextlib.suppress(Exception):
                self.run(self.session.close(), 5)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # What the browser left in its process group (zygote, renderers) goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._output.close()

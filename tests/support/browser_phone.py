"""The browser phone of tests/interop/browser/: JsSIP bundled with esbuild at test time, a
page server for it, and `BrowserPhone`, the test's handle on one tab running it.

JsSIP ships no browser build: `build_page` bundles phone.js with it (esbuild, both from npm
at the versions in that directory's package-lock.json, installed by scripts/test) into a
directory of the test's own, beside phone.html. Nothing generated is kept in the tree.
`serve_page` serves that directory over HTTP on 127.0.0.1 (a page on a loopback origin is a
secure context, so it may open the microphone). `BrowserPhone` reads what the page reports
(`window.phone`, see phone.js) and what the browser's network stack saw (CDP Network events:
the WebSocket handshake and every frame).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support import chromium
from tests.support.chromium import Page
from tests.support.ports import HOST

PHONE_DIR = Path(__file__).resolve().parents[1] / "interop" / "browser"
ESBUILD = PHONE_DIR / "node_modules" / ".bin" / "esbuild"


def missing() -> str | None:
    """Why the browser phone cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node not installed (apt-get install nodejs npm, or run scripts/test)"
    if not ESBUILD.exists() or not (PHONE_DIR / "node_modules" / "jssip").is_dir():
        return f"npm packages missing: npm ci --prefix {PHONE_DIR} (scripts/test does)"
    return chromium.missing()


def build_page(directory: Path) -> Path:
    """phone.html and phone.bundle.js (phone.js with JsSIP, for the browser) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ESBUILD), str(PHONE_DIR / "phone.js"), "--bundle", "--format=iife",
                    "--platform=browser", "--target=es2020",
                    f"--outfile={directory / 'phone.bundle.js'}"],
                   cwd=PHONE_DIR, check=True, capture_output=True, timeout=120)
    shutil.copy(PHONE_DIR / "phone.html", directory / "phone.html")
    return directory


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_page(directory: Path) -> Iterator[str]:
    """Serve `directory` on http://127.0.0.1:PORT; yields the page's URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="page-server")
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/phone.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class BrowserPhone:
    """One tab running phone.html: `start` registers it, then the test reads its events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.name = page.name
        self._taken: set[int] = set()

    def start(self, ws_url: str, uri: str) -> dict[str, Any]:
        """Register at `ws_url` as `uri`; the `registered` event."""
        self.page.evaluate(f"window.phone.start({json.dumps(ws_url)}, {json.dumps(uri)})")
        return self.wait_event("registered")

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.page.evaluate("window.phone.events")
        return events

    def wait_event(self, name: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first event `name` with these field values not returned before."""
        def find() -> dict[str, Any] | None:
            for number, event in enumerate(self.events()):
                if (number not in self._taken and event["event"] == name
                        and all(event.get(k) == v for k, v in fields.items())):
                    self._taken.add(number)
                    return event
            return None
        try:
            found: dict[str, Any] = _poll(find, timeout)
        except AssertionError:
            raise AssertionError(f"{self.name}: no {name!r} event {fields or ''} in {timeout} s"
                                 f"\n{self.describe()}") from None
        return found

    def state(self) -> dict[str, Any]:
        """The UA and its sessions as JsSIP reports them now (phone.js `describe`)."""
        state: dict[str, Any] = self.page.evaluate("window.phone.state()")
        return state

    def media(self, index: int) -> dict[str, Any]:
        """What WebRTC reports of session `index`'s media (ICE state, RTP counters)."""
        media: dict[str, Any] = self.page.evaluate(f"window.phone.media({index})")
        return media

    def hangup(self) -> None:
        self.page.evaluate("window.phone.hangup()")

    # -- the browser's network stack, as CDP reports it

    def handshakes(self) -> list[dict[str, Any]]:
        """The WebSocket handshake requests the tab sent (url and headers)."""
        return [p["request"] | {"url": _socket_url(self.page, p["requestId"])}
                for p in self.page.of("Network.webSocketWillSendHandshakeRequest")]

    def handshake_responses(self) -> list[dict[str, Any]]:
        return [p["response"] for p in self.page.of("Network.webSocketHandshakeResponseReceived")]

    def frames(self, direction: str) -> list[str]:
        """The payloads of the WebSocket frames `sent` or `received`, in order."""
        method = "Network.webSocketFrameSent" if direction == "sent" else \
            "Network.webSocketFrameReceived"
        return [str(p["response"]["payloadData"]) for p in self.page.of(method)]

    def describe(self) -> str:
        try:
            events = self.events()
        except Exception as exc:  # a description must not fail
            events = [{"event": f"(events unreadable: {exc})"}]
        lines = [json.dumps(e)[:300] for e in events]
        for p in self.page.of("Runtime.consoleAPICalled")[-40:]:
            words = (str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            lines.append(f"console: {' '.join(words)}"[:300])
        lines += [f"exception: {p['exceptionDetails']}"[:500]
                  for p in self.page.of("Runtime.exceptionThrown")]
        return f"{self.name} events:\n" + "\n".join(lines)


def _socket_url(page: Page, request_id: str) -> str:
    for p in page.of("Network.webSocketCreated"):
        if p["requestId"] == request_id:
            return str(p["url"])
    return ""


def _poll(find: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timeout")
        time.sleep(0.1)

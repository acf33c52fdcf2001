"""A webhook receiver for tests: an aiohttp server on 127.0.0.1 (a free port) in a thread of
its own, so that synchronous tests (SIPp runs, `switchboard serve` subprocesses) can use it.

Every request is kept in arrival order with its raw body, its signature header and the status
it was answered with. `fail_with` lists statuses to answer the next requests with (then 200);
`hang()` makes every later request wait until the receiver stops. Signatures are checked
with `verify`, the function the README shows (taken from it, so the README's example is the
one tested). Given a `Certificate` (tests/support/certs.py), it serves HTTPS with it instead.

Example::

    with WebhookReceiver(b"secret") as hooks:
        server = switchboard_server("--event-webhook", hooks.url, ...)
        ...
        hooks.wait_for(lambda rs: len(hooks.delivered()) >= 4)
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.certs import Certificate
from tests.support.ports import HOST

README = Path(__file__).resolve().parents[2] / "README.md"
SIGNATURE_HEADER = "X-Switchboard-Signature"


def readme_verify() -> Callable[..., bool]:
    """`verify(secret, header, body, tolerance=300)` as the README's webhook section has it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n### Webhooks\n"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README: no python block in the webhook section"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md (webhooks)", "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


verify = readme_verify()


@dataclass(frozen=True)
class Request:
    """One request as received and how it was answered (None: never answered)."""

    body: bytes
    signature: str
    content_type: str
    status: int | None
    secure: bool = False  # it came over TLS

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, secret: bytes, host: str = HOST, *,
                 certificate: Certificate | None = None) -> None:
        self.secret = secret
        self.host = host
        self.certificate = certificate
        self.port = 0
        self.fail_with: list[int] = []
        self._hang = False
        self._cond = threading.Condition()
        self._requests: list[Request] = []
        # The connections requests came on (see `_serve`), by the loop's thread only.
        self._transports: set[asyncio.Transport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.certificate is None else "https"
        return f"{scheme}://{self.host}:{self.port}/hooks/events"

    def hang(self) -> None:
        """Answer no request from now on (they wait until the receiver stops)."""
        self._hang = True

    def requests(self) -> list[Request]:
        with self._cond:
            return list(self._requests)

    def delivered(self) -> list[Request]:
        """The requests answered 2xx, in order."""
        return [r for r in self.requests() if r.status is not None and 200 <= r.status < 300]

    def wait_for(self, ok: Callable[[list[Request]], bool], what: str,
                 timeout: float = 15.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok(list(self._requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook receiver: not {what} after {timeout} s; "
                                         f"{len(self._requests)} requests: {self._requests!r}")
                self._cond.wait(left)
            return list(self._requests)

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        print(f"webhook receiver: {len(self._requests)} requests")
        for request in self._requests[-40:]:
            print(f"  {request.status} {request.body[:300]!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # shown to the test by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks/events", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0, ssl_context=self._ssl_context())
        await site.start()
        assert site._server is not None and site._server.sockets  # type: ignore[attr-defined]
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        await self._stopping.wait()
        await runner.cleanup()
        # A TLS connection closed by the cleanup waits for the peer's close_notify, which
        # may not come before this loop ends: its socket would be left open (a
        # ResourceWarning at some later garbage collection). Aborting closes it now.
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        await asyncio.sleep(0)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.certificate is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate.certificate, self.certificate.private_key)
        return context

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        content_type = request.headers.get("Content-Type", "")
        secure = request.secure
        if request.transport is not None:
            self._transports.add(request.transport)
        if self._hang:
            self._record(Request(body, signature, content_type, None, secure))
            assert self._stopping is not None
            await self._stopping.wait()
            return web.Response(status=503, text="stopping")
        status = self.fail_with.pop(0) if self.fail_with else 200
        self._record(Request(body, signature, content_type, status, secure))
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    def _record(self, request: Request) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

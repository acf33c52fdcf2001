"""The MI over HTTP: an aiohttp server speaking OpenSIPS `mi_http` conventions.

`POST /<root>` with a JSON-RPC body answers HTTP 200 with the JSON-RPC response, errors
included (OpenSIPS tools treat any other status as a transport failure), 202 with no body for
a notification, 405 for other methods on the path. With a token configured, a request
without `Authorization: Bearer <token>` gets 401 before anything is parsed. The server runs
in the caller's event loop; it knows nothing of what the commands do.

The same server answers the operations probes, which need no token and reveal no call data:
`GET /livez` (200 while the process serves HTTP), `GET /readyz` (200, or 503 listing what is
not ready, from the `ready` callable) and `GET /metrics` (the Prometheus exposition the
`metrics` callable renders; absent when none is given).

The REST API (`switchboard.rest`) is mounted on the same server, behind the same token, and
the operator console (`switchboard.console`) at `/`, whose page uses that API.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from switchboard.api import ControlApi
from switchboard.console import mount as mount_console
from switchboard.mi.commands import REGISTRY
from switchboard.mi.dispatch import encode_response_parts, handle_request
from switchboard.mi.registry import CommandContext, Registry
from switchboard.rest import mount as mount_rest

log = logging.getLogger(__name__)

# Requests are small JSON documents; refuse anything that is clearly not one.
MAX_REQUEST_BYTES = 1 << 20

_CONTEXT_KEY: web.AppKey[CommandContext] = web.AppKey("switchboard.mi.context")
_TOKEN_KEY: web.AppKey[bytes | None] = web.AppKey("switchboard.mi.token")

# `metrics(accept_header)` → (body, content type); `ready()` → what is not ready (empty: ready).
MetricsRenderer = Callable[[str], Awaitable[tuple[bytes, str]]]
ReadinessCheck = Callable[[], Awaitable[list[str]]]
_METRICS_KEY: web.AppKey[MetricsRenderer] = web.AppKey("switchboard.mi.metrics")
_READY_KEY: web.AppKey[ReadinessCheck | None] = web.AppKey("switchboard.mi.ready")


class MIServer:
    """A running MI HTTP server. `port` is the bound port (useful after binding port 0)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, path: str) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self.path = path

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def close(self) -> None:
        await self._runner.cleanup()


async def _handle(request: web.Request) -> web.StreamResponse:
    token = request.app[_TOKEN_KEY]
    if token is not None and not _authorized(request, token):
        return web.Response(
            status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
        )
    body = await request.read()
    reply = await handle_request(body, request.app[_CONTEXT_KEY])
    if reply is None:
        return web.Response(status=202)
    answer = await encode_response_parts(reply)
    if len(answer) == 1:
        return web.Response(status=200, body=answer[0], content_type="application/json")
    # A long answer goes out part by part; each write waits while the socket's buffer is
    # full, so a slow reader holds up only itself.
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = sum(len(part) for part in answer)
    await response.prepare(request)
    for part in answer:
        await response.write(part)
    await response.write_eof()
    return response


async def _livez(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.StreamResponse:
    check = request.app[_READY_KEY]
    problems = await check() if check is not None else []
    if problems:
        return web.Response(status=503, text="".join(f"not ready: {p}\n" for p in problems))
    return web.Response(text="ready\n")


async def _metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = await request.app[_METRICS_KEY](request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _authorized(request: web.Request, token: bytes) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Constant-time comparison: the token is a secret.
    return hmac.compare_digest(credentials.strip().encode(), token)


async def start_mi_server(
    api: ControlApi,
    host: str,
    port: int,
    *,
    root: str = "mi",
    token: str | None = None,
    registry: Registry | None = None,
    metrics: MetricsRenderer | None = None,
    ready: ReadinessCheck | None = None,
) -> MIServer:
    """Serve the MI on `host:port` (port 0 picks a free one) at `/<root>`.

    `registry` defaults to the built-in commands. An empty `token` means no authentication.
    `/livez` and `/readyz` are always served (ready when `ready` is None), `/metrics` when
    `metrics` is given.
    """
    if registry is None:
        registry = REGISTRY
    path = "/" + root.strip("/")
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[_CONTEXT_KEY] = CommandContext(api=api, registry=registry)
    app[_TOKEN_KEY] = token.encode() if token else None
    app.router.add_post(path, _handle)
    # The REST API (/api/v1, /openapi.json), behind the same token.
    secret = app[_TOKEN_KEY]
    mount_rest(app, api, lambda request: secret is None or _authorized(request, secret))
    mount_console(app)
    app[_READY_KEY] = ready
    app.router.add_get("/livez", _livez)
    app.router.add_get("/readyz", _readyz)
    if metrics is not None:
        app[_METRICS_KEY] = metrics
        app.router.add_get("/metrics", _metrics)
    # The access log would record every poll by monitoring tools at INFO; leave it off.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = next((a for a in runner.addresses if isinstance(a, tuple)), None)
    actual_port = int(bound[1]) if bound is not None else port
    log.debug("MI listening on %s:%d%s", host, actual_port, path)
    return MIServer(runner, host, actual_port, path)

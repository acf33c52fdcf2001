"""The operator console: a page served at `/` of the management HTTP server, with its script
and style sheet under `/console/`. Static files shipped in the package, no build step; the
page itself talks only to the REST API (`switchboard.rest`), with the bearer token the
operator gives it. Serving them needs no token: they hold no call data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

STATIC: Final = Path(__file__).resolve().parent / "static"
# The page loads nothing from elsewhere and runs no inline script; say so to the browser.
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES: Final = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
FILES: Final = ("index.html", "console.js", "console.css")


def mount(app: web.Application) -> None:
    """`GET /` (the page) and `GET /console/{file}` (its script and style sheet)."""
    app.router.add_get("/", _index)
    app.router.add_get("/console/{name}", _file)


def _serve(name: str) -> web.Response:
    path = STATIC / name
    return web.Response(body=path.read_bytes(),
                        headers={**_HEADERS, "Content-Type": _TYPES[path.suffix]})


async def _index(request: web.Request) -> web.StreamResponse:
    return _serve("index.html")


async def _file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    # Only the files shipped: no path from the request ever reaches the file system.
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _serve(name)

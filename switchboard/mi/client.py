"""A small synchronous JSON-RPC client for the MI, used by `switchboard mi`.

Plain urllib, no event loop: one POST per call. A JSON-RPC error answer raises
`MIClientError` with the server's code, message and data; failing to reach the server or to
read its answer raises `MIConnectionError`.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

_ids = itertools.count(1)


class MIClientError(Exception):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}" + (f" ({data})" if data else ""))
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class MIConnectionError(Exception):
    """The MI could not be reached, or its answer was not a JSON-RPC response."""


def call(
    url: str,
    method: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    token: str | None = None,
    timeout: float = 10.0,
) -> Any:
    """Call `method` at `url` and return its result."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise MIConnectionError(f"MI URL must be http:// or https://, not {url!r}")
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None:
        request["params"] = params if isinstance(params, Mapping | list) else list(params)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http_request = urllib.request.Request(
        url, data=json.dumps(request).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection open
        raise MIConnectionError(f"MI at {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MIConnectionError(f"cannot reach the MI at {url}: {reason}") from None
    try:
        response = json.loads(body)
    except ValueError:
        raise MIConnectionError(f"MI at {url} sent something that is not JSON") from None
    if not isinstance(response, dict):
        raise MIConnectionError(f"MI at {url} sent something that is not a JSON-RPC response")
    error = response.get("error")
    if isinstance(error, dict):
        raise MIClientError(
            int(error.get("code", -32603)), str(error.get("message", "")), error.get("data")
        )
    if "result" not in response:
        raise MIConnectionError(f"MI at {url} sent a response with neither result nor error")
    return response["result"]

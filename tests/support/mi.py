"""A small JSON-RPC client for switchboard's MI over HTTP, for the bench (and the tests).

One kept-alive HTTP/1.1 connection (`http.client`), so that a command costs one request on an
open socket, not a TCP handshake: what the bench times is the server. `call` returns the
result or raises `MiError` with the JSON-RPC error; `timed_call` also says how long the answer
took and how many bytes it was (for `dialog:list` at 100,000 dialogs).
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.parse
from typing import Any


class MiError(RuntimeError):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}" + (f" ({data})" if data else ""))
        self.code = code
        self.message = message
        self.data = data


class MiClient:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/mi"
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def timed_call(self, method: str, params: Any = None, timeout: float = 30.0,
                   decode: bool = True) -> tuple[Any, float, int]:
        """(result, seconds from sending to the whole answer read, answer size in bytes);
        with `decode=False` the result is the answer's bytes (`decode_result` later)."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            request["params"] = params
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection(timeout)
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body, headers)
                reply = conn.getresponse()
                data = reply.read()
            except (http.client.HTTPException, ConnectionError) as exc:
                self.close()
                if attempt == 2:
                    raise MiError(-1, f"MI at {self.url}: {exc}") from None
                continue
            elapsed = time.perf_counter() - t0
            if reply.status != 200:
                raise MiError(-1, f"MI at {self.url} answered HTTP {reply.status}")
            return (decode_result(data) if decode else data), elapsed, len(data)
        raise AssertionError("unreachable")

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        return self.timed_call(method, params, timeout)[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def decode_result(data: bytes) -> Any:
    """The result of a JSON-RPC answer's bytes; its error raised as `MiError`."""
    answer = json.loads(data)
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        raise MiError(int(error.get("code", -32603)), str(error.get("message", "")),
                      error.get("data"))
    return answer.get("result")

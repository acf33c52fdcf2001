"""A small JSON-RPC client for switchboard's MI over HTTP, for the tests and the bench.

One HTTP/1.1 connection (`http.client`), kept alive by default so that a command costs one
request on an open socket, not a TCP handshake: what the bench times is the server
(`keep_alive=False` opens one a call, as a user's tool does). `call` returns the result or
raises `MiError` with the JSON-RPC error; `timed_call` also says how long the answer took and
how many bytes it was (for `dialog:list` at 100,000 dialogs); `reply` returns the answer object
as it came, `error` included, for the tests of the answers themselves.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.parse
from typing import Any


class MiError(RuntimeError):
    """A JSON-RPC error answer (or, with code -1, no answer at all)."""

    def __init__(self, code: int, message: str, data: Any = None, *, method: str = "") -> None:
        text = f"MI {method}: error {code}: {message}" if method else f"{code} {message}"
        super().__init__(text + (f" ({data})" if data else ""))
        self.code = code
        self.message = message
        self.data = data
        self.method = method


class MiClient:
    def __init__(self, url: str, *, keep_alive: bool = True) -> None:
        self.url = url
        self.keep_alive = keep_alive
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/mi"
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if not self.keep_alive:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def _request(self, method: str, params: Any) -> bytes:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            request["params"] = params
        return json.dumps(request).encode()

    def _post(self, body: bytes, timeout: float) -> tuple[int, str, bytes, float]:
        """(HTTP status, reason, answer bytes, seconds from sending to the whole answer read)."""
        headers = {"Content-Type": "application/json",
                   "Connection": "keep-alive" if self.keep_alive else "close"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            reused = self.keep_alive and self._conn is not None
            conn = self._connection(timeout)
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body, headers)
                reply = conn.getresponse()
                data = reply.read()
            except (http.client.HTTPException, ConnectionError) as exc:
                conn.close()
                self._conn = None
                if attempt == 2 or not reused:
                    raise MiError(-1, f"MI at {self.url}: {exc}") from None
                continue
            finally:
                if not self.keep_alive:
                    conn.close()
            return reply.status, reply.reason, data, time.perf_counter() - t0
        raise AssertionError("unreachable")

    def timed_call(self, method: str, params: Any = None, timeout: float = 30.0,
                   decode: bool = True) -> tuple[Any, float, int]:
        """(result, seconds from sending to the whole answer read, answer size in bytes);
        with `decode=False` the result is the answer's bytes (`decode_result` later)."""
        status, _, data, elapsed = self._post(self._request(method, params), timeout)
        if status != 200:
            raise MiError(-1, f"MI at {self.url} answered HTTP {status}")
        return (decode_result(data) if decode else data), elapsed, len(data)

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        return self.timed_call(method, params, timeout)[0]

    def reply(self, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """The JSON-RPC answer object as it came, `result` or `error` included. mi_http answers
        200 even for JSON-RPC errors; another status is kept as `_http_status` in the answer, so
        that the test can show it (an answer that is not a JSON object fails the test)."""
        status, reason, data, _ = self._post(self._request(method, params), timeout)
        try:
            answer = json.loads(data)
        except ValueError:
            raise AssertionError(f"MI {method}: HTTP {status} {reason}: {data[:2000]!r}") from None
        if not isinstance(answer, dict):
            raise AssertionError(f"MI {method}: HTTP {status}: not a JSON object: {answer!r}")
        if not 200 <= status < 300:
            answer.setdefault("_http_status", status)
        return answer

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

"""Make a Python attack tool send from an untrusted loopback address, and record its traffic.

SIPVicious (`svwar`, `svcrack`, `svmap`) binds its UDP socket to every address whatever its
`-b` option says, so on one machine its requests would come from 127.0.0.1. Python imports
`sitecustomize` at start-up from PYTHONPATH, before the tool's own code: with this directory
on PYTHONPATH and `SB_ATTACK_SOURCE=127.0.0.66`, a bind to the wildcard address (or a send
from a socket never bound) binds 127.0.0.66 instead. Sends to anything outside 127.0.0.0/8
are refused, so a mistyped target cannot leave the machine.

With `SB_ATTACK_CAPTURE=FILE`, every bind, datagram sent and datagram received is appended to
FILE as one JSON object per line (`{"op": "bind"|"send"|"recv", "local": [ip, port],
"peer": [ip, port], "data": "<latin-1 text>", "t": seconds}`), so a test can read what the
tool saw without parsing its console output.

This shadows Debian's own sitecustomize (the apport hook), which attack runs do not need.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from typing import Any

_SOURCE = os.environ.get("SB_ATTACK_SOURCE", "")
_CAPTURE = os.environ.get("SB_ATTACK_CAPTURE", "")
_WILDCARDS = ("", "0.0.0.0")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_lock = threading.Lock()


def _record(op: str, sock: socket.socket, peer: Any = None, data: bytes = b"") -> None:
    if not _CAPTURE:
        return
    try:
        local = list(sock.getsockname())
    except OSError:
        local = None
    entry = {
        "op": op,
        "t": time.time(),
        "local": local,
        "peer": list(peer) if isinstance(peer, tuple) else peer,
        "data": data.decode("latin-1"),
    }
    with _lock, open(_CAPTURE, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def _check_destination(address: Any) -> None:
    if isinstance(address, tuple) and address:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(str(address[0])))
        except (OSError, ValueError):
            raise OSError(f"attack shim: refusing to send to {address!r}") from None
        if ip not in _LOOPBACK:
            raise OSError(f"attack shim: {ip} is outside 127.0.0.0/8, not sending")


def _install() -> None:
    original_bind = socket.socket.bind
    original_sendto = socket.socket.sendto
    original_connect = socket.socket.connect
    original_recvfrom = socket.socket.recvfrom

    def _unbound(sock: socket.socket) -> bool:
        try:
            host, port = sock.getsockname()[:2]
        except (OSError, ValueError):
            return False
        return host in _WILDCARDS and port == 0

    def bind(self: socket.socket, address: Any) -> None:
        if (self.family == socket.AF_INET and isinstance(address, tuple)
                and address[0] in _WILDCARDS):
            address = (_SOURCE, *address[1:])
        original_bind(self, address)
        _record("bind", self)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        _check_destination(address)
        if self.family == socket.AF_INET and _unbound(self):
            bind(self, ("", 0))
        sent: int = original_sendto(self, data, *args)
        _record("send", self, address, bytes(data))
        return sent

    def connect(self: socket.socket, address: Any) -> None:
        _check_destination(address)
        if self.family == socket.AF_INET and _unbound(self):
            bind(self, ("", 0))
        original_connect(self, address)

    def recvfrom(self: socket.socket, *args: Any) -> Any:
        data, peer = original_recvfrom(self, *args)
        _record("recv", self, peer, data)
        return data, peer

    socket.socket.bind = bind  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.recvfrom = recvfrom  # type: ignore[method-assign]


if _SOURCE:
    _install()

"""A HEP3 collector on 127.0.0.1 for one test: switchboard's `--hep udp:127.0.0.1:PORT`
mirror sends it a copy of every SIP message switchboard sent or received, on any transport
(a WebSocket's messages after TLS and framing are taken off). The test reads them back as
`Captured` messages: the wire as switchboard saw it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.hep import by_type
from tests.support.ports import HOST
from tests.support.sip import StartLine

# Generic HEP3 chunk types (sipcapture's HEP spec).
IPV4_SRC, IPV4_DST, SRC_PORT, DST_PORT, PAYLOAD = 3, 4, 7, 8, 15


@dataclass(frozen=True)
class Captured(StartLine):
    """One SIP message from the mirror, with the addresses it went between."""

    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    @property
    def start_line(self) -> str:
        return self.text.split("\r\n", 1)[0]

    @property
    def body(self) -> str:
        return self.text.partition("\r\n\r\n")[2]

    def headers(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive; one entry per header line)."""
        out = []
        for line in self.text.partition("\r\n\r\n")[0].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                out.append(value.strip())
        return out

    def header(self, name: str) -> str:
        values = self.headers(name)
        return values[0] if values else ""

    def __str__(self) -> str:
        return f"{self.src[0]}:{self.src[1]} -> {self.dst[0]}:{self.dst[1]} {self.start_line}"


def _decode(packet: bytes) -> Captured:
    chunks = by_type(packet)
    return Captured(
        (socket.inet_ntoa(chunks[IPV4_SRC]), struct.unpack("!H", chunks[SRC_PORT])[0]),
        (socket.inet_ntoa(chunks[IPV4_DST]), struct.unpack("!H", chunks[DST_PORT])[0]),
        chunks[PAYLOAD])


class HepCollector:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port: int = self.sock.getsockname()[1]
        self.messages: list[Captured] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="hep-collector")
        self._thread.start()

    @property
    def address(self) -> str:
        """What `--hep` takes."""
        return f"udp:{HOST}:{self.port}"

    def _pump(self) -> None:
        while True:
            try:
                packet = self.sock.recv(65535)
            except OSError:
                return
            if not packet:  # shut down by close()
                return
            with self._cond:
                self.messages.append(_decode(packet))
                self._cond.notify_all()

    def wait_for(self, match: Callable[[Captured], bool], timeout: float = 10.0,
                 what: str = "a message") -> Captured:
        """The first message captured so far or next that `match`es."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if match(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"HEP: no {what} within {timeout} s; captured:\n"
                                         + "\n".join(map(str, self.messages)))
                self._cond.wait(left)

    def all(self, match: Callable[[Captured], bool]) -> list[Captured]:
        with self._cond:
            return [m for m in self.messages if match(m)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

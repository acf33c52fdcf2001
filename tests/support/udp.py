"""A UDP socket on a loopback address with a thread that reads it: the event subscribers, the
sinks and the fake user agents of the interop tests are built on it.

`DatagramReader` binds a kernel-picked port on `host` (127.0.0.1 unless another 127.x address
is asked for) and hands every datagram to `on_datagram` on its own thread until `close`. A
subclass sets up whatever `on_datagram` uses before it calls `DatagramReader.__init__`: the
thread starts there.
"""

from __future__ import annotations

import socket
import threading
from typing import Self

from tests.support.ports import HOST


class DatagramReader:
    """One UDP socket and the thread that reads it (see the module's docstring)."""

    def __init__(self, host: str = HOST, name: str = "datagram-reader") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        # The reader wakes up this often to see whether it was closed.
        self.sock.settimeout(0.2)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.host, self.port = self.address
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        """Called on the reader thread for each datagram, in arrival order."""

    def _read(self) -> None:
        while not self._stopped.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:  # closed under the reader
                return
            self.on_datagram(data, source)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

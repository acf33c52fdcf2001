"""uvloop's `transport.sendto` against `socket.sendto` on the same (duplicated) socket.

    python -m bench.sendpath

Sends 100,000 datagrams of 600 bytes over loopback each way, three rounds, draining the
receiving socket every 1,000 in the same process, and prints the process CPU time per
datagram (sender and drain). It answers whether `UdpEndpoint.send` would gain by bypassing
uvloop's transport when its buffer is empty.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import uvloop

DATAGRAMS = 100_000
DATA = b"x" * 600


async def _main() -> None:
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
    rx.setblocking(False)
    dest = ("127.0.0.1", rx.getsockname()[1])
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    fd = transport.get_extra_info("socket").fileno()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=os.dup(fd))
    raw.setblocking(False)

    def drain() -> None:
        try:
            while True:
                rx.recv(2048)
        except BlockingIOError:
            pass

    ways: list[tuple[str, Callable[[bytes, tuple[str, int]], object]]] = [
        ("uvloop transport.sendto", transport.sendto), ("socket.sendto", raw.sendto)]
    for _round in range(3):
        for name, send in ways:
            t0 = time.process_time()
            for _ in range(DATAGRAMS // 1000):
                for _ in range(1000):
                    send(DATA, dest)
                drain()
            spent = time.process_time() - t0
            print(f"{name:<24} {spent / DATAGRAMS * 1e6:5.2f} us per datagram")
    transport.close()
    raw.close()
    rx.close()


if __name__ == "__main__":
    uvloop.run(_main())

"""Listening sockets whose connections are admitted one by one before any handshake.

The TLS and WebSocket listeners accept on a socket of their own (not through
`loop.create_server`) so that each connection counts against its source's limit from the
moment it is accepted: a source holding many silent handshakes meets the limit, not only
the handshake timeout. `open_listener` binds, `accept_loop` accepts and hands each socket to
the endpoint's `admit`, `reset` refuses one so that its party learns at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 100  # as asyncio's create_server

# admit(sock, host, port): take the accepted, still blocking socket, or refuse it.
Admit = Callable[[socket.socket, str, int], None]


async def open_listener(loop: asyncio.AbstractEventLoop, host: str, port: int, *,
                        reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening socket on `host:port` (its first address)."""
    info = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listener = socket.create_server(info[0][4][:2], family=info[0][0], backlog=LISTEN_BACKLOG,
                                    reuse_port=reuse_port)
    listener.setblocking(False)
    return listener


async def accept_loop(loop: asyncio.AbstractEventLoop, listener: socket.socket, admit: Admit,
                      name: str) -> None:
    """Accept until `listener` is closed; a failure to accept or admit one connection never
    stops the loop."""
    while True:
        try:
            sock, address = await loop.sock_accept(listener)
        except OSError as exc:  # out of descriptors, say: this accept only
            if listener.fileno() < 0:
                return  # closed
            log.warning("%s accept failed: %s", name, exc)
            await asyncio.sleep(0.1)
            continue
        while True:
            try:
                admit(sock, str(address[0]), int(address[1]))
            except Exception:  # that connection only: the listener keeps accepting
                log.exception("%s: accepting a connection from %s failed", name, address)
                sock.close()
            try:  # the rest of the backlog without going round the loop each time
                sock, address = listener.accept()
            except OSError:  # BlockingIOError when it is empty
                break


def reset(sock: socket.socket) -> None:
    """Close with a reset rather than a FIN: the refused party learns at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

"""A UDP listener: one datagram is one SIP message (RFC 3261 §18)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from ..sip.wire import Address
from .base import Receiver

log = logging.getLogger(__name__)

# Sources remembered as `Address` values: a peer's datagrams keep coming from the same
# (host, port), and making the value anew for each one costs more than a dict lookup. Bounded,
# so a flood from many sources cannot grow it: it starts over when full.
SOURCES_KEPT = 4096


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, local: Address, receiver: Receiver) -> None:
        self.local = local
        self.receiver = receiver
        self._transport: asyncio.DatagramTransport | None = None
        self._sources: dict[tuple[str | int, ...], Address] = {}
        self.socket: socket.socket | None = None

    @classmethod
    async def bind(cls, host: str, port: int, receiver: Receiver, *, reuse_port: bool = False
                   ) -> UdpEndpoint:
        """With `reuse_port`, every worker of a node binds the same address (SO_REUSEPORT):
        the kernel spreads what comes in over their sockets by source, and each worker
        sends from that one address."""
        loop = asyncio.get_running_loop()
        endpoint = cls(Address("udp", host, port), receiver)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: endpoint, local_addr=(host, port), reuse_port=reuse_port or None
        )
        sockname = transport.get_extra_info("sockname")
        endpoint.local = Address("udp", host, sockname[1])
        endpoint.socket = transport.get_extra_info("socket")
        _grow_receive_buffer(endpoint.socket)
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            source = self._sources.get(addr)
            if source is None:
                source = self._source(addr)
            self.receiver(data, source, self.local)
        except Exception:  # one bad datagram must never stop the listener
            log.exception("error handling a datagram from %s", addr)

    def _source(self, addr: tuple[str | int, ...]) -> Address:
        sources = self._sources
        if len(sources) >= SOURCES_KEPT:
            sources.clear()
        source = sources[addr] = Address("udp", str(addr[0]), int(addr[1]))
        return source

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction timers deal with the loss.
        log.debug("udp error on %s: %s", self.local, exc)

    def send(self, data: bytes, dest: Address) -> bool:
        if self._transport is None:
            return False
        self._transport.sendto(data, (dest.host, dest.port))
        return True  # a loss is the transaction timers' to notice

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# A burst of datagrams must wait in the kernel while the loop is busy; Linux's default
# (about 208 KiB) overflows at a few hundred calls per second and every lost 200 costs a
# retransmission. Ask for more; as root, past net.core.rmem_max too.
RECEIVE_BUFFER = 8 * 1024 * 1024


def _grow_receive_buffer(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if force is not None and granted < RECEIVE_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, force, RECEIVE_BUFFER)
    except OSError as exc:
        log.debug("cannot grow the receive buffer: %s", exc)

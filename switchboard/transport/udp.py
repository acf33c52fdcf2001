"""A UDP listener: one datagram is one SIP message (RFC 3261 §18)."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from ..sip.wire import Address
from .base import Receiver

log = logging.getLogger(__name__)


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, local: Address, receiver: Receiver) -> None:
        self.local = local
        self._receiver = receiver
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def bind(cls, host: str, port: int, receiver: Receiver) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        endpoint = cls(Address("udp", host, port), receiver)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: endpoint, local_addr=(host, port)
        )
        sockname = transport.get_extra_info("sockname")
        endpoint.local = Address("udp", host, sockname[1])
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            self._receiver(data, Address("udp", str(addr[0]), int(addr[1])), self.local)
        except Exception:  # one bad datagram must never stop the listener
            log.exception("error handling a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction timers deal with the loss.
        log.debug("udp error on %s: %s", self.local, exc)

    def send(self, data: bytes, dest: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(data, (dest.host, dest.port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

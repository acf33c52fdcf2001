"""A TCP listener plus the connections it accepts or opens (RFC 3261 §18.3).

Connections are keyed by the peer's address; responses and requests toward a peer reuse an
open connection, or a new one is opened and the bytes wait for it. A connection whose framing
breaks is closed; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from ..sip.errors import ParseError
from ..sip.framing import StreamFramer
from ..sip.wire import Address
from .base import Receiver

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    def __init__(self, owner: TcpEndpoint, peer: Address | None) -> None:
        self.owner = owner
        self.peer = peer
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = self.transport.get_extra_info("peername")[:2]
            self.peer = Address("tcp", str(host), int(port))
        self.owner.connections[self.peer] = self
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            log.info("closing tcp connection from %s: %s", self.peer, exc.detail)
            if self.transport is not None:
                self.transport.close()
            return
        assert self.peer is not None
        for message in messages:
            try:
                self.owner.receiver(message, self.peer, self.owner.local)
            except Exception:
                log.exception("error handling a message from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)


class TcpEndpoint:
    def __init__(self, local: Address, receiver: Receiver) -> None:
        self.local = local
        self.receiver = receiver
        self.connections: dict[Address, _Connection] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def bind(cls, host: str, port: int, receiver: Receiver) -> TcpEndpoint:
        endpoint = cls(Address("tcp", host, port), receiver)
        loop = asyncio.get_running_loop()
        endpoint._server = await loop.create_server(
            lambda: _Connection(endpoint, None), host, port, reuse_address=True
        )
        bound = endpoint._server.sockets[0].getsockname()
        endpoint.local = Address("tcp", host, bound[1])
        return endpoint

    def send(self, data: bytes, dest: Address) -> None:
        conn = self.connections.get(dest)
        if conn is None:
            conn = _Connection(self, dest)
            self.connections[dest] = conn
            task = asyncio.get_running_loop().create_task(self._connect(conn, dest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn.write(data)

    async def _connect(self, conn: _Connection, dest: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: conn, dest.host, dest.port)
        except OSError as exc:
            log.info("tcp connect to %s failed: %s", dest, exc)
            if self.connections.get(dest) is conn:
                del self.connections[dest]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in self._tasks:
            task.cancel()

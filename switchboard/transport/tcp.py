"""A TCP listener plus the connections it accepts or opens (RFC 3261 §18.3).

Connections are keyed by the peer's address; responses and requests toward a peer reuse an
open connection, or a new one is opened and the bytes wait for it. A connection whose framing
breaks is closed; nothing else is affected. Limits against abuse: inbound connections per
source address, and an idle time after which a connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from ..sip.errors import ParseError
from ..sip.framing import StreamFramer
from ..sip.message import MAX_MESSAGE_SIZE
from ..sip.wire import Address
from .base import Receiver

log = logging.getLogger(__name__)


class _Connection(asyncio.Protocol):
    def __init__(self, owner: TcpEndpoint, peer: Address | None) -> None:
        self.owner = owner
        self.peer = peer
        self.inbound = peer is None
        self.framer = StreamFramer(owner.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.last_active = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = self.transport.get_extra_info("peername")[:2]
            self.peer = Address("tcp", str(host), int(port))
            if not self.owner.admit(self.peer.host):
                log.info("tcp: too many connections from %s, refusing one", self.peer.host)
                self.owner.refused += 1
                self.transport.abort()
                return
        self.owner.connections[self.peer] = self
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.owner.loop.time()
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
            if self.inbound:
                self.owner.release(self.peer.host)

    def write(self, data: bytes) -> None:
        self.last_active = self.owner.loop.time()
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)


class TcpEndpoint:
    def __init__(self, local: Address, receiver: Receiver, *, max_per_source: int = 64,
                 idle_timeout: float = 600.0, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.local = local
        self.receiver = receiver
        self.loop = asyncio.get_running_loop()
        self.connections: dict[Address, _Connection] = {}
        self.max_per_source = max_per_source
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.refused = 0  # inbound connections refused by the per-source limit
        self._per_source: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        if idle_timeout > 0:
            self._sweeper = self.loop.call_later(min(idle_timeout, 10.0), self._sweep)

    def admit(self, host: str) -> bool:
        count = self._per_source.get(host, 0)
        if self.max_per_source and count >= self.max_per_source:
            return False
        self._per_source[host] = count + 1
        return True

    def release(self, host: str) -> None:
        count = self._per_source.get(host, 0) - 1
        if count > 0:
            self._per_source[host] = count
        else:
            self._per_source.pop(host, None)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.idle_timeout
        for conn in list(self.connections.values()):
            if conn.last_active < deadline and conn.transport is not None:
                log.debug("tcp: closing idle connection %s", conn.peer)
                conn.transport.close()
        self._sweeper = self.loop.call_later(min(self.idle_timeout, 10.0), self._sweep)

    @classmethod
    async def bind(cls, host: str, port: int, receiver: Receiver, **limits: Any) -> TcpEndpoint:
        endpoint = cls(Address("tcp", host, port), receiver, **limits)
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
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in self._tasks:
            task.cancel()

"""A stream listener plus the connections it accepts or opens: TCP (RFC 3261 §18.3), and TLS
over it when given TLS contexts (`tls.py` makes those; RFC 3261 §26, RFC 5630).

Connections are keyed by the peer's address; responses and requests toward a peer reuse an
open connection, or a new one is opened and the bytes wait for it. A connection is also
known by the sent-by of the requests that came over it (RFC 5923 aliasing, limited to the
connection's own IP address): a UA that registered or called over a connection from an
ephemeral port is reached again over that connection, at the address its Contact names,
for as long as the connection is up.

A connection whose framing breaks is closed; nothing else is affected. Limits against
abuse: inbound connections per source address, an idle time after which a connection is
closed, and for TLS a time limit on the handshake. An inbound connection holds a place of its
source from accept: a TLS listener accepts the TCP connections itself and hands each one to
the loop's TLS layer only once counted (`loop.connect_accepted_socket`), so a source that
opens many handshakes and finishes none meets the same limit as one opening TCP connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from ..sip.addressing import request_sent_by
from ..sip.errors import ParseError
from ..sip.framing import StreamFramer
from ..sip.message import MAX_MESSAGE_SIZE
from ..sip.wire import Address, default_port
from .accept import accept_loop, open_listener, reset
from .base import ConnectionClosed, Receiver, Undelivered

log = logging.getLogger(__name__)

MAX_ALIASES = 4  # sent-by addresses one connection may be known by


class _Connection(asyncio.Protocol):
    def __init__(self, owner: TcpEndpoint, peer: Address | None, *, inbound: bool = False
                 ) -> None:
        """`peer` None: accepted by a TCP listener, known once connected. An inbound TLS
        connection comes with its peer, already holding its source's place."""
        self.owner = owner
        self.peer = peer
        self.inbound = inbound or peer is None
        self.counted = inbound  # holds one of its source's places
        self.framer = StreamFramer(owner.max_message_size)
        self.transport: asyncio.Transport | None = None
        # What waits for the connection to open, each with whom to tell should it not
        # (None: the endpoint's `undelivered`).
        self.pending: list[tuple[bytes, Undelivered | None]] = []
        self.aliases: list[Address] = []
        self.learning = True  # until the first request told its sent-by
        self.last_active = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # With TLS this comes after the handshake.
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = self.transport.get_extra_info("peername")[:2]
            self.peer = Address(self.owner.transport, str(host), int(port))
            if not self.owner.admit(self.peer.host):
                self.owner.refuse(self.peer.host)
                self.transport.abort()
                return
            self.counted = True
        self.owner.connections[self.peer] = self
        for data, _ in self.pending:
            self.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.owner.loop.time()
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            log.info("closing %s connection from %s: %s", self.owner.transport, self.peer,
                     exc.detail)
            if self.transport is not None:
                self.transport.close()
            return
        assert self.peer is not None
        for message in messages:
            if self.learning:
                self.owner.learn_alias(self, message)
            try:
                self.owner.receiver(message, self.peer, self.owner.local)
            except Exception:
                log.exception("error handling a message from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        for alias in self.aliases:
            if owner.aliases.get(alias) is self:
                del owner.aliases[alias]
        peer = self.peer
        if peer is not None and owner.connections.get(peer) is self:
            del owner.connections[peer]
        else:
            peer = None  # never up, or refused: nothing came over it
        self.release()
        if peer is not None and owner.connection_closed is not None:
            owner.connection_closed(peer)

    def release(self) -> None:
        """Give the source's place back, once, however the connection ended."""
        if self.counted and self.peer is not None:
            self.counted = False
            self.owner.release(self.peer.host)

    def write(self, data: bytes, undelivered: Undelivered | None = None) -> None:
        self.last_active = self.owner.loop.time()
        if self.transport is None:
            self.pending.append((data, undelivered))
        else:
            self.transport.write(data)


class TcpEndpoint:
    """TCP, or TLS with `server_ssl` (listening) and `client_ssl` (connecting): the
    transport name is `tcp` or `tls` accordingly."""

    def __init__(self, local: Address, receiver: Receiver, *, max_per_source: int = 64,
                 idle_timeout: float = 600.0, max_message_size: int = MAX_MESSAGE_SIZE,
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None,
                 handshake_timeout: float = 10.0,
                 server_names: dict[str, str] | None = None) -> None:
        self.local = local
        self.transport = local.transport
        self.receiver = receiver
        self.loop = asyncio.get_running_loop()
        self.connections: dict[Address, _Connection] = {}
        self.aliases: dict[Address, _Connection] = {}
        self.max_per_source = max_per_source
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.handshake_timeout = handshake_timeout
        # An IP address we connect to → the name its certificate must carry (SNI too);
        # without one the certificate must name the IP address.
        self.server_names = server_names or {}
        self.refused = 0  # inbound connections refused by the per-source limit
        # Told of each message that waited for a connection that failed to open (the
        # worker, so the transaction that sent it fails now, RFC 3261 §17.1.4).
        self.undelivered: Undelivered | None = None
        # Workers sharing one address: asked (data, dest, local) before a connection is
        # opened; True when another worker of the node holds a connection to `dest` and
        # took the bytes for it (`cluster/shared_port.py`).
        self.relay: Callable[[bytes, Address, Address], bool] | None = None
        # Told of each connection that ended (the worker: the bindings over it go).
        self.connection_closed: ConnectionClosed | None = None
        self._per_source: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None  # a TLS listener's, accepted from here
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

    def refuse(self, host: str) -> None:
        log.info("%s: too many connections from %s, refusing one", self.transport, host)
        self.refused += 1

    def counted_from(self, host: str) -> int:
        """Inbound connections from `host` holding a place, handshakes included."""
        return self._per_source.get(host, 0)

    def release(self, host: str) -> None:
        count = self._per_source.get(host, 0) - 1
        if count > 0:
            self._per_source[host] = count
        else:
            self._per_source.pop(host, None)

    def learn_alias(self, conn: _Connection, message: bytes) -> None:
        """Know `conn` also by the sent-by of the request `message` (RFC 5923 §5), when that
        names the connection's own IP address and no other live connection has it."""
        sent_by = request_sent_by(message)
        if sent_by is None:
            return  # a response: wait for a request
        conn.learning = False
        peer = conn.peer
        _, host, port = sent_by
        alias = Address(self.transport, host, port or default_port(self.transport))
        if peer is None or alias == peer or host != peer.host.lower():
            return
        if alias not in self.aliases and len(conn.aliases) < MAX_ALIASES:
            self.aliases[alias] = conn
            conn.aliases.append(alias)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.idle_timeout
        for conn in list(self.connections.values()):
            if conn.last_active < deadline and conn.transport is not None:
                log.debug("%s: closing idle connection %s", self.transport, conn.peer)
                conn.transport.close()
        self._sweeper = self.loop.call_later(min(self.idle_timeout, 10.0), self._sweep)

    @classmethod
    async def bind(cls, host: str, port: int, receiver: Receiver, *, reuse_port: bool = False,
                   **options: Any) -> TcpEndpoint:
        """With `reuse_port`, every worker of a node listens on the same address
        (SO_REUSEPORT): the kernel spreads new connections over them, and a connection
        lives in the worker that accepted it."""
        transport = "tls" if options.get("server_ssl") is not None else "tcp"
        endpoint = cls(Address(transport, host, port), receiver, **options)
        loop = asyncio.get_running_loop()
        if endpoint.server_ssl is None:
            endpoint._server = await loop.create_server(
                lambda: _Connection(endpoint, None), host, port, reuse_address=True,
                reuse_port=reuse_port or None)
            bound = endpoint._server.sockets[0].getsockname()
        else:
            listener = await open_listener(loop, host, port, reuse_port=reuse_port)
            endpoint._listener = listener
            bound = listener.getsockname()
            endpoint._spawn(accept_loop(loop, listener, endpoint._admit_accepted,
                                        endpoint.transport))
        endpoint.local = Address(transport, host, bound[1])
        return endpoint

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit_accepted(self, sock: socket.socket, host: str, port: int) -> None:
        if not self.admit(host):
            self.refuse(host)
            reset(sock)
            return
        sock.setblocking(False)
        conn = _Connection(self, Address(self.transport, host, port), inbound=True)
        self._spawn(self._handshake(conn, sock))

    async def _handshake(self, conn: _Connection, sock: socket.socket) -> None:
        """The server side of an accepted connection's TLS handshake, within the handshake
        timeout; one that does not finish gives its source's place back."""
        try:
            await self.loop.connect_accepted_socket(
                lambda: conn, sock, ssl=self.server_ssl,
                ssl_handshake_timeout=self.handshake_timeout)
        except Exception as exc:  # timed out, garbage, reset: this connection only
            log.debug("%s handshake with %s failed: %s", self.transport, conn.peer, exc)
            sock.close()
            conn.release()
        except asyncio.CancelledError:  # the endpoint is closing
            sock.close()
            conn.release()
            raise

    def peer_of(self, dest: Address) -> Address:
        conn = self.connections.get(dest) or self.aliases.get(dest)
        return dest if conn is None or conn.peer is None else conn.peer

    def send(self, data: bytes, dest: Address) -> bool:
        """Over the connection to `dest` (or aliased to it), else over another worker's
        connection to it (`relay`), else over a new one; True always, since a connection can
        be opened. The messages waiting for one that fails to open (refused, TLS handshake
        failed, timed out) go to `undelivered`."""
        conn = self.connections.get(dest) or self.aliases.get(dest)
        if conn is None:
            relay = self.relay
            if relay is not None and relay(data, dest, self.local):
                return True
        return self.send_here(data, dest)

    def send_here(self, data: bytes, dest: Address, undelivered: Undelivered | None = None
                  ) -> bool:
        """`send` over a connection of this endpoint only (an existing one or a new one);
        `undelivered`, when given, is told instead of the endpoint's should `data` wait for
        a connection that fails to open (bytes another worker of the node asked this one to
        write: that worker's transaction must learn it)."""
        conn = self.connections.get(dest) or self.aliases.get(dest)
        if conn is None:
            conn = _Connection(self, dest)
            self.connections[dest] = conn
            self._spawn(self._connect(conn, dest))
        conn.write(data, undelivered)
        return True

    async def _connect(self, conn: _Connection, dest: Address) -> None:
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.client_ssl is not None:
            # RFC 5922 §7.2: the certificate must name the host we meant to reach; SNI
            # tells a server with several certificates which one that is.
            tls = {"ssl": self.client_ssl,
                   "server_hostname": self.server_names.get(dest.host, dest.host),
                   "ssl_handshake_timeout": self.handshake_timeout}
        try:
            await loop.create_connection(lambda: conn, dest.host, dest.port, **tls)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.info("%s connect to %s failed: %s", self.transport, dest, exc)
            if self.connections.get(dest) is conn:
                del self.connections[dest]
            waiting, conn.pending = conn.pending, []
            for data, told in waiting:
                report = told or self.undelivered
                if report is None:
                    continue
                try:
                    report(data, dest, self.local)
                except Exception:
                    log.exception("reporting a message to %s undelivered failed", dest)

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
        if self._listener is not None:  # its accept is cancelled now
            self._listener.close()

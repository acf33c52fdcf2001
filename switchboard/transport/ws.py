"""SIP over WebSocket (RFC 7118): a `ws:` or `wss:` listener and the connections browsers and
other WebSocket clients open to it. aiohttp does the HTTP upgrade and the framing.

- The handshake must offer the subprotocol `sip` (RFC 7118 §4): one that does not is
  answered 400 and closed. An upgrade that is not done within the handshake time (TLS
  included for `wss:`) is closed.
- A connection holds a place of its source from accept, as a TLS one does (`tcp.py`): the
  listener accepts itself and hands a connection to aiohttp (and for `wss:` to the loop's
  TLS layer) only once counted, so silent or slow handshakes meet the per-source limit too;
  one over it is reset at once.
- One SIP message per frame, text or binary (§5.1); we send text when the message is UTF-8.
  A frame larger than the limit closes the connection with 1009; a frame that is not SIP is
  the core's to refuse, and the connection stays.
- Pings every `ping_interval` keep NAT bindings open; a peer that stops answering is closed.
- A WebSocket client cannot be connected to: requests toward it go over the connection it
  opened, found by the name in the sent-by of its requests (its Via and Contact host, a
  `.invalid` name for a browser, §5). The `ws:` and `wss:` listeners of a worker share that
  table (`flows`), since a client on WSS still writes `transport=ws` in its Contact. When
  the connection ends, `connection_closed` is told, so what was registered over it goes.
- Workers that share one address bind the listener with SO_REUSEPORT, as TCP's: the kernel
  spreads new connections over them, and a connection lives in the worker that accepted it.
  What another worker sends toward it goes through `relay` to that worker, which writes it
  with `send_here` (`cluster/shared_port.py`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from ..sip.addressing import request_sent_by
from ..sip.message import MAX_MESSAGE_SIZE
from ..sip.wire import Address
from .accept import accept_loop, open_listener, reset
from .base import ConnectionClosed, Receiver, Undelivered

log = logging.getLogger(__name__)

SUBPROTOCOL = "sip"  # RFC 7118 §4, registered with IANA


class WsConnection:
    """One accepted WebSocket and the messages waiting to be sent on it, in order."""

    __slots__ = ("learning", "names", "outbox", "peer", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, peer: Address,
                 transport: asyncio.BaseTransport | None) -> None:
        self.ws = ws
        self.peer = peer
        self.transport = transport
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.names: list[str] = []
        self.learning = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Flows(dict[str, WsConnection]):
    """The WebSocket connections of a worker by the names their clients use."""

    def transport_of(self, name: str) -> str | None:
        """ws or wss: the transport of the live connection known by `name`."""
        conn = self.get(name)
        return conn.peer.transport if conn is not None and not conn.ws.closed else None


class _CountingServer(web.Server):
    """aiohttp's connection manager, telling its endpoint when a connection it took ends."""

    def __init__(self, endpoint: WsEndpoint) -> None:
        super().__init__(endpoint._handle, access_log=None)
        self.endpoint = endpoint

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None
                        ) -> None:
        super().connection_lost(handler, exc)
        self.endpoint._release(handler)


class WsEndpoint:
    def __init__(self, local: Address, receiver: Receiver, *,
                 server_ssl: ssl.SSLContext | None = None, max_per_source: int = 64,
                 idle_timeout: float = 600.0, ping_interval: float = 30.0,
                 max_message_size: int = MAX_MESSAGE_SIZE, handshake_timeout: float = 10.0,
                 flows: Flows | None = None) -> None:
        self.local = local
        self.transport = local.transport
        self.receiver = receiver
        self.server_ssl = server_ssl
        self.max_per_source = max_per_source
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self.handshake_timeout = handshake_timeout
        self.flows = Flows() if flows is None else flows
        self.connections: dict[Address, WsConnection] = {}
        self.refused = 0  # handshakes refused: no `sip`, too slow
        self.refused_connections = 0  # reset at accept: too many from one source
        self.undeliverable = 0  # messages toward a client whose connection is gone
        # Told of each upgraded connection that ended (the worker: the bindings over it go).
        self.connection_closed: ConnectionClosed | None = None
        # Workers sharing one address: asked (data, dest, local) when this worker has no
        # connection to `dest`; True when another worker of the node holds one and took the
        # bytes for it (`cluster/shared_port.py`).
        self.relay: Callable[[bytes, Address, Address], bool] | None = None
        self._loop = asyncio.get_running_loop()
        self._per_source: dict[str, int] = {}
        self._holders: dict[RequestHandler, str] = {}  # accepted connections → source host
        self._activity: dict[WsConnection, float] = {}
        self._upgrading: dict[RequestHandler, asyncio.TimerHandle] = {}
        self._web = _CountingServer(self)
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        if idle_timeout > 0 and ping_interval <= 0:
            self._sweeper = self._loop.call_later(min(idle_timeout, 10.0), self._sweep)

    @classmethod
    async def bind(cls, transport: str, host: str, port: int, receiver: Receiver, *,
                   reuse_port: bool = False, **options: Any) -> WsEndpoint:
        """With `reuse_port`, every worker of a node listens on the same address
        (SO_REUSEPORT), as `TcpEndpoint.bind`."""
        endpoint = cls(Address(transport, host, port), receiver, **options)
        if transport == "wss" and endpoint.server_ssl is None:
            raise ValueError("a wss listener needs a TLS context")
        loop = endpoint._loop
        listener = await open_listener(loop, host, port, reuse_port=reuse_port)
        endpoint._listener = listener
        endpoint.local = Address(transport, host, listener.getsockname()[1])
        endpoint._spawn(accept_loop(loop, listener, endpoint._admit_accepted, transport))
        return endpoint

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit_accepted(self, sock: socket.socket, host: str, port: int) -> None:
        count = self._per_source.get(host, 0)
        if self.max_per_source and count >= self.max_per_source:
            log.info("%s: too many connections from %s, refusing one", self.transport, host)
            self.refused_connections += 1
            reset(sock)
            return
        self._per_source[host] = count + 1
        sock.setblocking(False)
        handler = self._web()
        self._holders[handler] = host
        self._upgrading[handler] = self._loop.call_later(
            self.handshake_timeout, self._too_slow, handler)
        self._spawn(self._connect(handler, sock))

    async def _connect(self, handler: RequestHandler, sock: socket.socket) -> None:
        """Give the accepted `sock` to aiohttp's `handler`, after the TLS handshake for
        `wss:` (within the handshake time); one that does not get there gives its place
        back."""
        tls: dict[str, Any] = {}
        if self.server_ssl is not None:
            tls = {"ssl": self.server_ssl, "ssl_handshake_timeout": self.handshake_timeout}
        try:
            await self._loop.connect_accepted_socket(lambda: handler, sock, **tls)
        except Exception as exc:  # timed out, garbage, reset: this connection only
            log.debug("%s handshake failed: %s", self.transport, exc)
            sock.close()
            self._release(handler)
        except asyncio.CancelledError:  # the endpoint is closing
            sock.close()
            self._release(handler)
            raise

    def _release(self, handler: RequestHandler) -> None:
        """Give the source's place back, once, however the connection ended."""
        timer = self._upgrading.pop(handler, None)
        if timer is not None:
            timer.cancel()
        host = self._holders.pop(handler, None)
        if host is None:
            return
        count = self._per_source.get(host, 0) - 1
        if count > 0:
            self._per_source[host] = count
        else:
            self._per_source.pop(host, None)

    def counted_from(self, host: str) -> int:
        """Connections from `host` holding a place, handshakes included."""
        return self._per_source.get(host, 0)

    def _too_slow(self, handler: RequestHandler) -> None:
        if self._upgrading.pop(handler, None) is not None and handler.transport is not None:
            log.info("%s: no WebSocket upgrade from %s in time, closing", self.transport,
                     handler.transport.get_extra_info("peername"))
            self.refused += 1
            handler.force_close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        timer = self._upgrading.pop(request.protocol, None)
        if timer is not None:
            timer.cancel()
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                   .split(",")]
        if SUBPROTOCOL not in offered:
            return self._refuse(request, 400, "SIP over WebSocket needs the subprotocol sip")
        peername = request.transport.get_extra_info("peername") if request.transport else None
        if not peername:
            return self._refuse(request, 400, "no peer address")
        peer = Address(self.transport, str(peername[0]), int(peername[1]))
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), heartbeat=self.ping_interval or None,
            max_msg_size=self.max_message_size, compress=False)
        if not ws.can_prepare(request).ok:
            return self._refuse(request, 400, "not a WebSocket handshake")
        await ws.prepare(request)
        conn = WsConnection(ws, peer, request.transport)
        self.connections[peer] = conn
        self._activity[conn] = self._loop.time()
        sender = self._loop.create_task(self._pump(conn))
        try:
            await self._read(conn)
        finally:
            sender.cancel()
            self._forget(conn)
            await ws.close()
        return ws

    def _refuse(self, request: web.BaseRequest, status: int, reason: str) -> web.Response:
        log.info("%s: refusing a WebSocket handshake from %s: %s", self.transport,
                 request.remote, reason)
        self.refused += 1
        response = web.Response(status=status, text=reason + "\n")
        response.force_close()
        return response

    async def _read(self, conn: WsConnection) -> None:
        async for frame in conn.ws:
            if frame.type is WSMsgType.TEXT:
                data = str(frame.data).encode("utf-8")
            elif frame.type is WSMsgType.BINARY:
                data = bytes(frame.data)
            else:  # ERROR: an oversize or broken frame; aiohttp has closed with its code
                log.info("%s: closing the connection from %s: %s", self.transport, conn.peer,
                         conn.ws.exception())
                return
            self._activity[conn] = self._loop.time()
            if conn.learning:
                self._learn(conn, data)
            try:
                self.receiver(data, conn.peer, self.local)
            except Exception:
                log.exception("error handling a message from %s", conn.peer)

    async def _pump(self, conn: WsConnection) -> None:
        ws = conn.ws
        try:
            while True:
                data = await conn.outbox.get()
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # closing underneath us
            log.debug("%s: sending to %s stopped: %s", self.transport, conn.peer, exc)

    def _learn(self, conn: WsConnection, data: bytes) -> None:
        sent_by = request_sent_by(data)
        if sent_by is None:
            return
        conn.learning = False
        _, host, port = sent_by
        name = host if port is None else f"{host}:{port}"
        holder = self.flows.get(name)
        if holder is None or holder.ws.closed:
            self.flows[name] = conn
            conn.names.append(name)

    def _forget(self, conn: WsConnection) -> None:
        for name in conn.names:
            if self.flows.get(name) is conn:
                del self.flows[name]
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        self._activity.pop(conn, None)
        if self.connection_closed is not None:
            try:
                self.connection_closed(conn.peer)
            except Exception:
                log.exception("reporting the end of %s failed", conn.peer)

    def _sweep(self) -> None:
        deadline = self._loop.time() - self.idle_timeout
        for conn, last in list(self._activity.items()):
            if last < deadline:
                log.debug("%s: closing idle connection %s", self.transport, conn.peer)
                conn.close()
        self._sweeper = self._loop.call_later(min(self.idle_timeout, 10.0), self._sweep)

    def _connection(self, dest: Address) -> WsConnection | None:
        return (self.connections.get(dest) or self.flows.get(f"{dest.host}:{dest.port}")
                or self.flows.get(dest.host))

    def peer_of(self, dest: Address) -> Address:
        conn = self._connection(dest)
        return dest if conn is None else conn.peer

    def send(self, data: bytes, dest: Address) -> bool:
        """Over this worker's connection known by `dest`, else over another worker's
        (`relay`); False when there is none (the core fails the transaction at once)."""
        if self._write(data, dest):
            return True
        relay = self.relay
        if relay is not None and relay(data, dest, self.local):
            return True
        return self._undeliverable(dest)

    def send_here(self, data: bytes, dest: Address, undelivered: Undelivered | None = None
                  ) -> bool:
        """`send` over a connection of this endpoint only; `undelivered`, when given, is
        told at once when there is none (bytes another worker of the node asked this one to
        write: that worker's transaction must learn it), as `TcpEndpoint.send_here` does
        once its connection fails to open."""
        if self._write(data, dest):
            return True
        if undelivered is not None:
            undelivered(data, dest, self.local)
        return self._undeliverable(dest)

    def _write(self, data: bytes, dest: Address) -> bool:
        """Queue `data` on this endpoint's open connection known by `dest`, if there is one."""
        conn = self._connection(dest)
        if conn is None or conn.ws.closed:
            return False
        conn.outbox.put_nowait(data)
        return True

    def _undeliverable(self, dest: Address) -> bool:
        # RFC 7118 §5: a WebSocket server does not connect to clients.
        self.undeliverable += 1
        log.info("%s: no connection to %s, message dropped", self.transport, dest)
        return False

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for timer in self._upgrading.values():
            timer.cancel()
        for handler in list(self._holders):
            if handler.transport is not None:
                handler.transport.close()
        for task in self._tasks:
            task.cancel()
        if self._listener is not None:  # its accept is cancelled now
            self._listener.close()

"""One worker of a node whose workers share one address: its end of the hand-off channel,
who owns what, and the hook in its receive path.

Every worker binds the node's listen addresses with SO_REUSEPORT, so each can send from
them (a UA behind NAT accepts messages only from the address it sent to). The kernel gives
a UDP datagram to one of those sockets by its source; the worker that gets it asks
`Ownership` whose it is and, when it is another worker's, hands the bytes over
(`transport/handoff.py`); the owner runs it through its core as if it had received it and
answers from the shared address. Each worker marks its Record-Route and Via branches
(`Addressing.worker_mark`) so that later messages name it.

A stream connection (TCP, TLS, WebSocket) lives in the worker that accepted it. A message
that came over it and belongs to another worker is handed over too (`HANDED_STREAM`); the
owner notes which worker holds a connection from that address, and by which other names it
is known (the sent-by its requests name: at the connection's own IP address over TCP and
TLS, RFC 5923; any name over a WebSocket, a browser's `.invalid` one, RFC 7118 §5), and what
it sends there goes back through that worker (`SEND`, through the endpoint's `relay` hook),
which writes it on its connection. When that worker cannot (the connection is gone and none
opens), the bytes come back (`UNDELIVERED`) and the owner's transaction fails at once, as
for a connection of its own that did not open.

Every worker keeps a copy of the node's location table (`cluster/bindings.py`): what one
registrar changes, the others apply, and a worker that starts asks for the whole table. A
connection that ends is told to the other workers at once (`CLOSED`): they send nothing more
to its peer (nor to the names it was known by) through this worker, and drop the bindings
registered over it.

The node's workers are the sockets in the channel's directory, looked at again when a worker
joins (it says so over the channel) and every `MEMBERS_INTERVAL`: a worker that restarts
keeps its place (its socket file stays), one that is added or removed changes the Call-ID
hash of new transactions only.

Knows nothing of Ray: the runtime gives it the directory and the worker's number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from ..actors.worker import Worker
from ..capture import TappedEndpoint
from ..hep import MirroredEndpoint
from ..sip.addressing import request_sent_by
from ..sip.errors import ParseError
from ..sip.registrar import BindingChange
from ..sip.uri import parse_sip_uri
from ..sip.wire import Address, default_port
from ..transport.base import ConnectionClosed
from ..transport.handoff import (
    BINDINGS,
    CLOSED,
    HANDED,
    HANDED_STREAM,
    SEND,
    TABLE,
    UNDELIVERED,
    HandoffChannel,
)
from ..transport.tcp import TcpEndpoint
from ..transport.ws import WsEndpoint
from .bindings import NodeBindings
from .owner import Ownership

log = logging.getLogger(__name__)

MEMBERS_INTERVAL: Final = 1.0  # seconds between two looks at the node's workers
EARLY_LIMIT: Final = 1024  # messages handed over before the worker is ready, kept for it
MAX_CONNECTIONS: Final = 65536  # peer addresses remembered as reached over another worker
MAX_ALIASES: Final = 4  # other names one peer's connection is remembered by, as `tcp.py`
WEBSOCKET: Final = ("ws", "wss")

Stream = TcpEndpoint | WsEndpoint


class SharedPort:
    """Open with `open` (before the worker's sockets are bound, so peers find it), then
    `attach` the worker once built, then `start` once it may serve (after a restart: once
    its dialogs are restored)."""

    def __init__(self, me: int, channel: HandoffChannel, ownership: Ownership) -> None:
        self.me = me
        self.channel = channel
        self.ownership = ownership
        self.worker: Worker | None = None
        # Peer address → the worker of this node whose connection brought messages from it.
        self.connections: dict[Address, int] = {}
        # Peer address → the worker whose connection a binding was registered over (told by
        # the location changes; kept until that connection or that worker ends).
        self.held: dict[Address, int] = {}
        # Peer address → the other names (sent-by, a WebSocket client's name) it was put
        # under in `connections` or `held`: they go when its connection does.
        self._aliases: dict[Address, list[Address]] = {}
        self._streams: dict[Address, Stream] = {}
        self.bindings: NodeBindings | None = None
        # The endpoints whose `connection_closed` this worker wrapped, and what it was.
        self._closers: list[tuple[Stream, ConnectionClosed | None]] = []
        # The worker's own lookup of a WebSocket client's transport by name (its `flows`).
        self._transport_here: Callable[[str], str | None] | None = None
        self._early: list[tuple[int, int, bytes, Address, Address]] | None = []
        self._refresher: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, directory: str, me: int, match_param: str) -> SharedPort:
        """`match_param`: the transfer's Request-URI parameter that names a dialog id
        (`[callops] match_param` in param mode), "" when transfers do not name one."""
        box: list[SharedPort] = []

        def deliver(kind: int, sender: int, data: bytes, source: Address,
                    local: Address) -> None:
            box[0].deliver(kind, sender, data, source, local)

        def joined(worker: int) -> None:
            if box:
                box[0].joined(worker)

        channel = await HandoffChannel.open(directory, me, deliver, joined)
        shared = cls(me, channel, Ownership(channel.members(), match_param))
        box.append(shared)
        return shared

    def attach(self, worker: Worker) -> None:
        """Mark what `worker` writes and route what it receives; call with no await since
        its sockets were bound, so that nothing leaves unmarked."""
        self.worker = worker
        worker.proxy.addressing.worker_mark = f"{self.me:x}"
        worker.router = self.route
        for endpoint in worker.endpoints.values():
            inner = endpoint
            while isinstance(inner, (MirroredEndpoint, TappedEndpoint)):
                inner = inner.inner
            if isinstance(inner, (TcpEndpoint, WsEndpoint)):
                inner.relay = self.relay
                self._streams[inner.local] = inner
                self._closers.append((inner, inner.connection_closed))
                inner.connection_closed = self._closer(inner.local, inner.connection_closed)
        addressing = worker.proxy.addressing
        self._transport_here = addressing.connection_transport
        addressing.connection_transport = self.connection_transport
        self.bindings = NodeBindings(self.me, self.channel, worker.proxy.location, worker.now,
                                     self._holder_of, self._hold)
        self.refresh()

    def start(self) -> None:
        """Serve what was handed over meanwhile, and keep the node's workers up to date."""
        worker = self.worker
        assert worker is not None
        early, self._early = self._early, None
        for kind, sender, data, source, local in early or ():
            self.deliver(kind, sender, data, source, local)
        assert self.bindings is not None
        self.bindings.ask_table()
        self._refresher = asyncio.get_running_loop().call_later(MEMBERS_INTERVAL, self._tick)

    def joined(self, worker: int) -> None:
        """`worker` started listening: a new process, which holds none of the connections
        its predecessor (if any) held; what was registered over them is gone too."""
        self.refresh()
        if self.worker is None:
            return
        for peers in (self.connections, self.held):
            for peer in [p for p, holder in peers.items() if holder == worker]:
                self._lost(worker, peer)

    def refresh(self) -> None:
        members = self.channel.members()
        if tuple(members) != self.ownership.members:
            log.info("worker %d: the workers sharing its address are %s", self.me, members)
            self.ownership.update(members)

    def _tick(self) -> None:
        try:
            self.refresh()
        finally:
            self._refresher = asyncio.get_running_loop().call_later(MEMBERS_INTERVAL,
                                                                    self._tick)

    # -- the receive path -----------------------------------------------------------------

    def route(self, data: bytes, source: Address, local: Address) -> bool:
        """Hand `data` to the worker that owns it; False when that is this one, when no
        worker of the node can be named, or when the owner cannot be reached: the caller
        handles it then."""
        if local.transport == "udp":
            kind = HANDED
        elif local in self._streams:
            kind = HANDED_STREAM
        else:
            return False
        owner = self.ownership.owner(data)
        if owner is None or owner == self.me:
            return False
        return self.channel.send(owner, data, source, local, kind)

    def deliver(self, kind: int, sender: int, data: bytes, source: Address,
                local: Address) -> None:
        """A frame another worker sent: a message to run through the core, or bytes to
        write on one of this worker's connections."""
        worker = self.worker
        if self._early is not None or worker is None:
            if self._early is not None and len(self._early) < EARLY_LIMIT:
                self._early.append((kind, sender, data, source, local))
            return
        if kind == SEND:
            self._write(sender, data, source, local)
            return
        if kind == UNDELIVERED:
            # What this worker sent through `sender`, which could not write it: the same
            # entry as a connection of this worker's own that did not open.
            worker.undelivered(data, source, local)
            return
        if kind in (BINDINGS, TABLE, CLOSED):
            self._location(kind, sender, data, source)
            return
        if kind == HANDED_STREAM:
            self._learn(sender, data, source)
        worker.receive_handed(data, source, local)

    def _location(self, kind: int, sender: int, data: bytes, source: Address) -> None:
        bindings = self.bindings
        assert bindings is not None and self.worker is not None
        if kind == BINDINGS:
            bindings.received(sender, data)
        elif kind == TABLE:
            bindings.send_table(sender)
        else:
            self._lost(sender, source)

    def _write(self, sender: int, data: bytes, dest: Address, local: Address) -> None:
        """Bytes `sender` asked this worker to write on its connection to `dest` (never
        relayed again); when that cannot be done they go back to it."""
        def undelivered(data: bytes, dest: Address, local: Address) -> None:
            self.channel.tell(sender, UNDELIVERED, data, dest, local)

        stream = self._streams.get(local)
        if stream is None:
            undelivered(data, dest, local)
        else:
            stream.send_here(data, dest, undelivered)

    def _lost(self, holder: int, peer: Address) -> None:
        """`holder`'s connection to `peer` ended: nothing more goes there (nor to the names
        it was known by) through it, and what was registered over it goes."""
        for known in (peer, *self._aliases.pop(peer, ())):
            for peers in (self.connections, self.held):
                if peers.get(known) == holder:
                    del peers[known]
        assert self.worker is not None
        self.worker.proxy.location.drop_flow(peer, self.worker.now())

    def _closer(self, local: Address, closed: ConnectionClosed | None) -> ConnectionClosed:
        """`closed` (the worker's: the bindings over the connection go), then the other
        workers told."""
        def connection_closed(peer: Address) -> None:
            if closed is not None:
                closed(peer)
            self.channel.tell_all(CLOSED, b"", peer, local)
        return connection_closed

    def _holder_of(self, source: Address) -> int:
        """The worker of the node whose connection a message from `source` came over."""
        holder = self.connections.get(source)
        return self.held.get(source, self.me) if holder is None else holder

    def _hold(self, change: BindingChange, worker: int) -> None:
        """Another worker's change says the binding's connection is `worker`'s; a WebSocket
        client is also reached by the name its Contact gives (a browser's `.invalid` one)."""
        source = change.source
        self.held[source] = worker
        if source.transport in WEBSOCKET:
            try:
                uri = parse_sip_uri(change.contact)
            except ParseError:
                return
            self._alias(self.held, source, uri.host.strip("[]").lower(), uri.port, worker)

    def _learn(self, sender: int, data: bytes, source: Address) -> None:
        """`source` is reached over `sender`'s connection, and so is the sent-by its request
        names: at the same IP address over TCP and TLS (RFC 5923 §5), any name over a
        WebSocket (RFC 7118 §5), as the endpoints themselves know their connections."""
        connections = self.connections
        if len(connections) >= MAX_CONNECTIONS:
            connections.clear()
            self._aliases.clear()
        connections[source] = sender
        sent_by = request_sent_by(data)
        if sent_by is not None:
            _, host, port = sent_by
            if host == source.host.lower() or source.transport in WEBSOCKET:
                self._alias(connections, source, host, port, sender)

    def _alias(self, peers: dict[Address, int], peer: Address, host: str, port: int | None,
               holder: int) -> None:
        """Know `peer`'s connection in `peers` also as `host:port` (over its transport)."""
        alias = Address(peer.transport, host, port or default_port(peer.transport))
        if alias == peer:
            return
        known = self._aliases.setdefault(peer, [])
        if alias not in known:
            if len(known) >= MAX_ALIASES:
                return
            known.append(alias)
        peers[alias] = holder

    def connection_transport(self, name: str) -> str | None:
        """ws or wss: the transport of the live WebSocket connection a client's name is
        known by, this worker's or another's (a client on WSS still writes `transport=ws`,
        and the core goes out on the listener its connection really uses)."""
        here = self._transport_here
        found = here(name) if here is not None else None
        if found is not None:
            return found
        for transport in WEBSOCKET:
            alias = Address(transport, name, default_port(transport))
            if alias in self.connections or alias in self.held:
                return transport
        return None

    def relay(self, data: bytes, dest: Address, local: Address) -> bool:
        """A stream endpoint of this worker has no connection to `dest`: when another
        worker's connection brought messages from there, or a binding was registered over
        it, the bytes go through that worker."""
        worker = self.connections.get(dest)
        if worker is None:
            worker = self.held.get(dest)
            if worker is None:
                return False
        if self.channel.send(worker, data, dest, local, SEND):
            return True
        self.connections.pop(dest, None)
        self.held.pop(dest, None)
        return False

    def statistics(self) -> dict[str, int]:
        stats = self.channel.statistics()
        if self.bindings is not None:
            stats.update(self.bindings.statistics())
        return stats

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self.worker is not None:
            self.worker.router = None
            self.worker.proxy.addressing.connection_transport = self._transport_here
        for stream in self._streams.values():
            stream.relay = None
        for endpoint, closed in self._closers:
            endpoint.connection_closed = closed
        if self.bindings is not None:
            self.bindings.close()
        self.channel.close()

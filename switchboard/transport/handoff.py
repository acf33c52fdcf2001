"""The node-local channel between workers that share one address: a message the kernel gave
one worker goes, as bytes with where it came from, to the worker that owns it.

Each worker listens on a Unix stream socket, `<directory>/w<worker>.sock` (one directory per
serving session and node), and keeps one connection to each peer it has handed something
to. A stream, not datagrams: a Unix datagram socket refuses a sender once a few datagrams
wait at the receiver (`net.unix.max_dgram_qlen`), a stream only when megabytes do.

A frame is an envelope: its kind, the worker that sent it, the message's source and the
local address it reached, then the message. The kinds:

- `HANDED`: a datagram handed to its owner, and `HANDED_STREAM`: a message that came over a
  connection the sending worker holds. The owner gives it to its core itself, as if it had
  received it, and never hands it on.
- `SEND`: bytes for the receiving worker to write on its own connection to the address
  given as the source (the owner answering over the connection a message came in on). The
  receiving worker writes them or opens a connection itself; it never passes them on.
- `UNDELIVERED`: the bytes of a `SEND` the receiving worker could not write (it has no
  connection there any more, and none could be opened), back to the worker that sent them,
  so that the transaction that sent them fails now (RFC 3261 §17.1.4) rather than at its
  timeout. Never answered.
- `JOINED` (no message): what a worker that starts listening tells the workers already
  there, so that they count it at once (and know that it holds no connection yet). A worker
  binds its socket before it looks for the others, so of two that start together the later
  one sees the earlier and tells it.
- `BINDINGS`: changes of the sender's location table (msgpack, `cluster/bindings.py`), for
  the receiver's copy; `TABLE` (no message): "send me your whole table", which comes back as
  `BINDINGS` frames.
- `CLOSED` (no message): the sender's connection to the source address ended (the bindings
  registered over it go, and nothing more is sent to it through the sender).

`JOINED`, `BINDINGS`, `TABLE`, `CLOSED` and `UNDELIVERED` are the workers' own business:
`tell` and `tell_all` send them, uncounted in the statistics of handed messages.

Whatever the workers believe about each other, a message crosses the channel at most once
(and its answer at most once back, or the news that it could not be written): no loop
between workers is possible.

Knows addresses and bytes, not SIP (`cluster/owner.py` says who owns what).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import struct
from collections.abc import Callable
from typing import Final

from ..sip.wire import Address

log = logging.getLogger(__name__)

HANDED: Final = 1  # a datagram handed to the worker that owns it: delivered, never routed
JOINED: Final = 2  # a worker that just started listening: look at the node's workers again
HANDED_STREAM: Final = 3  # a message of a connection the sender holds, handed to its owner
SEND: Final = 4  # bytes to write on the receiver's connection to `source`, never passed on
BINDINGS: Final = 5  # changes of the sender's location table, for the receiver's copy
CLOSED: Final = 6  # the sender's connection to `source` ended
TABLE: Final = 7  # a worker that starts asks for the whole location table
UNDELIVERED: Final = 8  # the bytes of a SEND that could not be written, back to its sender
_MESSAGES: Final = (HANDED, HANDED_STREAM, SEND)
_OWN: Final = (BINDINGS, CLOSED, TABLE, UNDELIVERED)
NOWHERE: Final = Address("udp", "", 0)
# Frame: length of the rest, kind, sending worker, source port, local port, then the lengths
# of the transport name and of the two hosts; then those texts and the message.
_HEADER: Final = struct.Struct("!IBHHHBBB")
# (kind, sending worker, message, source, local) of a frame that carries a message.
Deliver = Callable[[int, int, bytes, Address, Address], None]
_SOCKET_NAME: Final = re.compile(r"w(\d+)\.sock")
# What one connection may hold unsent before its peer is given up on (it stopped reading).
MAX_BACKLOG: Final = 8 * 1024 * 1024


def socket_path(directory: str, worker: int) -> str:
    return os.path.join(directory, f"w{worker}.sock")


def encode(kind: int, sender: int, data: bytes, source: Address, local: Address) -> bytes:
    transport = source.transport.encode()
    src = source.host.encode()
    loc = local.host.encode()
    size = _HEADER.size - 4 + len(transport) + len(src) + len(loc) + len(data)
    return b"".join((_HEADER.pack(size, kind, sender, source.port, local.port,
                                  len(transport), len(src), len(loc)), transport, src, loc,
                     data))


def decode(frame: bytes | memoryview) -> tuple[int, int, bytes, Address, Address]:
    """(kind, sender, message, source, local) of one whole frame (its length prefix
    included)."""
    _, kind, sender, sport, lport, tlen, slen, llen = _HEADER.unpack_from(frame)
    at = _HEADER.size
    transport = bytes(frame[at:at + tlen]).decode()
    at += tlen
    src = bytes(frame[at:at + slen]).decode()
    at += slen
    loc = bytes(frame[at:at + llen]).decode()
    at += llen
    return (kind, sender, bytes(frame[at:]), Address(transport, src, sport),
            Address(transport, loc, lport))


class _Inbound(asyncio.Protocol):
    """One peer's connection into this worker: frames in, each delivered in turn."""

    def __init__(self, channel: HandoffChannel) -> None:
        self.channel = channel
        self.buffer = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.channel.inbound.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.inbound.discard(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        size = len(buffer)
        view = memoryview(buffer)
        try:
            while size - at >= 4:
                end = at + 4 + int.from_bytes(view[at:at + 4], "big")
                if end > size:
                    break
                self.channel.deliver_frame(view[at:end])
                at = end
        finally:
            view.release()
        if at:
            del buffer[:at]


class _Outbound:
    """This worker's connection to one peer: frames written at once, what the socket does
    not take now written when it can."""

    __slots__ = ("backlog", "channel", "sock", "worker")

    def __init__(self, channel: HandoffChannel, worker: int, sock: socket.socket) -> None:
        self.channel = channel
        self.worker = worker
        self.sock = sock
        self.backlog = bytearray()

    def write(self, frame: bytes) -> bool:
        if self.backlog:
            if len(self.backlog) + len(frame) > MAX_BACKLOG:
                self.close()
                return False
            self.backlog += frame
            return True
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return False
        if sent < len(frame):
            self.backlog += frame[sent:]
            self.channel.loop.add_writer(self.sock.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        try:
            sent = self.sock.send(self.backlog)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.backlog[:sent]
        if not self.backlog:
            self.channel.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self.channel.outbound.get(self.worker) is self:
            del self.channel.outbound[self.worker]
        if self.backlog:
            self.channel.loop.remove_writer(self.sock.fileno())
            self.channel.lost += 1
            self.backlog.clear()
        self.sock.close()


class HandoffChannel:
    """One worker's end of the channel: `send` hands a message to another worker, and the
    frames other workers send this one go to `deliver` (which gives a handed message to the
    worker's core, not its router)."""

    def __init__(self, directory: str, me: int, deliver: Deliver,
                 joined: Callable[[int], None] | None = None) -> None:
        self.directory = directory
        self.me = me
        self.path = socket_path(directory, me)
        self.deliver = deliver
        self.joined = joined
        self.loop = asyncio.get_running_loop()
        self.outbound: dict[int, _Outbound] = {}
        self.inbound: set[_Inbound] = set()
        self.sent = 0  # messages handed to another worker
        self.received = 0  # messages handed to this one
        self.refused = 0  # messages whose owner could not be reached (handled here instead)
        self.lost = 0  # connections dropped with messages still unsent
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    async def open(cls, directory: str, me: int, deliver: Deliver,
                   joined: Callable[[int], None] | None = None) -> HandoffChannel:
        """Listen at this worker's path in `directory` (made if missing, for this user only)
        and tell the workers already there; a socket file left by a process this worker
        replaces is removed first. `joined(worker)` is called when another worker joins."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        channel = cls(directory, me, deliver, joined)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(channel.path)
        channel._server = await channel.loop.create_unix_server(
            lambda: _Inbound(channel), channel.path)
        for worker in channel.members():
            if worker != me:
                conn = channel.outbound.get(worker) or channel._connect(worker)
                if conn is not None:
                    conn.write(encode(JOINED, me, b"", NOWHERE, NOWHERE))
        return channel

    def members(self) -> list[int]:
        """The workers listening in this channel's directory now (this one included)."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                m = _SOCKET_NAME.fullmatch(entry.name)
                if m is not None:
                    found.append(int(m.group(1)))
        return sorted(found)

    def send(self, worker: int, data: bytes, source: Address, local: Address,
             kind: int = HANDED) -> bool:
        """Hand `data` (from `source`, reached at `local`) to `worker`; False when that worker
        cannot be reached (no socket, nobody listening): the caller handles it itself."""
        if not self._write(worker, encode(kind, self.me, data, source, local)):
            self.refused += 1
            return False
        self.sent += 1
        return True

    def tell(self, worker: int, kind: int, data: bytes = b"", source: Address = NOWHERE,
             local: Address = NOWHERE) -> bool:
        """A frame of the workers' own (`BINDINGS`, `CLOSED`, `TABLE`, `UNDELIVERED`) to
        `worker`; False when it cannot be reached."""
        return self._write(worker, encode(kind, self.me, data, source, local))

    def tell_all(self, kind: int, data: bytes = b"", source: Address = NOWHERE,
                 local: Address = NOWHERE) -> int:
        """`tell` every other worker listening in the directory now (one that is starting
        gets what is told after its socket is bound); how many were reached."""
        frame = encode(kind, self.me, data, source, local)
        return sum(self._write(worker, frame) for worker in self.members() if worker != self.me)

    def backlog(self, worker: int) -> int:
        """Bytes waiting to be written to `worker`."""
        conn = self.outbound.get(worker)
        return 0 if conn is None else len(conn.backlog)

    def _write(self, worker: int, frame: bytes) -> bool:
        conn = self.outbound.get(worker)
        if conn is None or not conn.write(frame):
            # No connection yet, or it broke (the worker restarted): one fresh try.
            conn = self._connect(worker)
            if conn is None or not conn.write(frame):
                return False
        return True

    def _connect(self, worker: int) -> _Outbound | None:
        # A Unix socket's connect completes at once (or is refused): nothing to wait for.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_path(self.directory, worker))
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                log.warning("handoff to worker %d: %s", worker, exc)
            return None
        sock.setblocking(False)
        conn = self.outbound[worker] = _Outbound(self, worker, sock)
        return conn

    def deliver_frame(self, frame: memoryview) -> None:
        try:
            kind, sender, data, source, local = decode(frame)
        except (struct.error, UnicodeDecodeError) as exc:
            log.warning("worker %d: a bad handoff frame dropped: %s", self.me, exc)
            return
        if kind == JOINED:
            if self.joined is not None:
                self.joined(sender)
            return
        if kind in _MESSAGES:
            self.received += 1
        elif kind not in _OWN:
            log.warning("worker %d: a handoff frame of unknown kind %d dropped", self.me, kind)
            return
        try:
            self.deliver(kind, sender, data, source, local)
        except Exception:  # one bad message must never stop the channel
            log.exception("error handling a message handed over from %s", source)

    def statistics(self) -> dict[str, int]:
        return {"handoff:sent": self.sent, "handoff:received": self.received,
                "handoff:refused": self.refused, "handoff:lost": self.lost}

    def close(self) -> None:
        for conn in list(self.outbound.values()):
            conn.close()
        for inbound in list(self.inbound):
            if inbound.transport is not None:
                inbound.transport.close()
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)  # the last worker of the node to go removes it


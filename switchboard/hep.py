"""HEP v3 (EEP) capture: encode a copy of each SIP packet and send it to a collector.

A HEP3 packet is `"HEP3"`, its total length (u16), then chunks of `vendor u16 | type u16 |
length u16 (header included) | data`, all big-endian (sipcapture HEP spec; `hep-c`
`core_hep.h`). Homer and `sngrep -L udp:IP:PORT` decode it. `HepMirror` is the asyncio sink
every SIP message sent or received goes through (`MirroredEndpoint` and `mirrored_receiver`
wrap an endpoint and a receiver, so nothing changes when capture is off). It never fails the
caller: a packet it cannot encode or send is counted and dropped. This module knows addresses
and bytes, not SIP: the payload is the message's bytes as they went, never decoded, so a byte
that is not UTF-8 reaches the collector as it was. Only the addresses are read: a message sent
over a connection names the peer it went to (`ConnectionEndpoint.peer_of`); one HEP still
cannot carry (a host that is not an IP literal) makes the packet one of those dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from typing import Final, cast

from .sip.wire import Address
from .transport.base import ConnectionEndpoint, Endpoint, Receiver

log = logging.getLogger(__name__)

HEP3_MAGIC: Final = b"HEP3"
DEFAULT_CAPTURE_ID: Final = 1

# Generic chunk types (vendor 0).
IP_FAMILY, IP_PROTO, IPV4_SRC, IPV4_DST, IPV6_SRC, IPV6_DST = 1, 2, 3, 4, 5, 6
SRC_PORT, DST_PORT, TS_SEC, TS_USEC, PROTO_TYPE, CAPTURE_ID = 7, 8, 9, 10, 11, 12
AUTH_KEY, PAYLOAD, CORRELATION_ID = 14, 15, 17

AF_INET, AF_INET6 = 2, 10  # the values HEP uses, whatever the host's socket module says
IPPROTO_TCP, IPPROTO_UDP = 6, 17
PROTO_SIP = 1

_HEADER = struct.Struct("!4sH")
_CHUNK = struct.Struct("!HHH")
# The chunks every packet has, in order: family, proto, then (after the addresses) ports,
# timestamp, protocol type and capture id.
_U8 = struct.Struct("!HHHB")
_U16 = struct.Struct("!HHHH")
_U32 = struct.Struct("!HHHI")
MAX_PACKET: Final = 0xFFFF


def _chunk(kind: int, data: bytes) -> bytes:
    length = _CHUNK.size + len(data)
    if length > MAX_PACKET:
        raise ValueError(f"HEP chunk of {length} bytes exceeds {MAX_PACKET}")
    return _CHUNK.pack(0, kind, length) + data


def encode_hep3(
    payload: bytes,
    source: Address,
    dest: Address,
    timestamp: float,
    *,
    capture_id: int = DEFAULT_CAPTURE_ID,
    auth_key: bytes = b"",
    correlation_id: bytes = b"",
) -> bytes:
    """One HEP3 packet carrying `payload` (a SIP message) sent from `source` to `dest`.

    Both hosts must be IP literals; when either is IPv6 both are sent as IPv6 (an IPv4
    address as `::ffff:a.b.c.d`). Raises ValueError for a host that is not an IP address, a
    port outside 0..65535, or a packet longer than HEP's 16-bit length allows.
    """
    src = ipaddress.ip_address(source.host)
    dst = ipaddress.ip_address(dest.host)
    for port in (source.port, dest.port):
        # struct would raise its own error, which `HepMirror.mirror` must not let through.
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"HEP cannot carry port {port!r}")
    if src.version == 4 and dst.version == 4:
        family, src_kind, dst_kind = AF_INET, IPV4_SRC, IPV4_DST
    else:
        family, src_kind, dst_kind = AF_INET6, IPV6_SRC, IPV6_DST
        src, dst = _as_v6(src), _as_v6(dst)
    seconds = int(timestamp)
    micros = min(int((timestamp - seconds) * 1_000_000), 999_999)
    proto = IPPROTO_UDP if source.transport == "udp" else IPPROTO_TCP
    parts = [
        _U8.pack(0, IP_FAMILY, _U8.size, family),
        _U8.pack(0, IP_PROTO, _U8.size, proto),
        _chunk(src_kind, src.packed),
        _chunk(dst_kind, dst.packed),
        _U16.pack(0, SRC_PORT, _U16.size, source.port),
        _U16.pack(0, DST_PORT, _U16.size, dest.port),
        _U32.pack(0, TS_SEC, _U32.size, seconds & 0xFFFFFFFF),
        _U32.pack(0, TS_USEC, _U32.size, micros),
        _U8.pack(0, PROTO_TYPE, _U8.size, PROTO_SIP),
        _U32.pack(0, CAPTURE_ID, _U32.size, capture_id & 0xFFFFFFFF),
    ]
    if auth_key:
        parts.append(_chunk(AUTH_KEY, auth_key))
    if correlation_id:
        parts.append(_chunk(CORRELATION_ID, correlation_id))
    parts.append(_chunk(PAYLOAD, payload))
    body = b"".join(parts)
    total = _HEADER.size + len(body)
    if total > MAX_PACKET:
        raise ValueError(f"HEP packet of {total} bytes exceeds {MAX_PACKET}")
    return _HEADER.pack(HEP3_MAGIC, total) + body


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(f"::ffff:{address}")


class HepMirror(asyncio.DatagramProtocol):
    """Sends a HEP3 copy of every packet given to `mirror` to one collector over UDP."""

    def __init__(self, collector: Address, capture_id: int) -> None:
        self.collector = collector
        self.capture_id = capture_id
        self.sent = 0
        self.dropped = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._warned = False

    @classmethod
    async def connect(
        cls, host: str, port: int, *, capture_id: int = DEFAULT_CAPTURE_ID
    ) -> HepMirror:
        loop = asyncio.get_running_loop()
        mirror = cls(Address("udp", host, port), capture_id)
        await loop.create_datagram_endpoint(lambda: mirror, remote_addr=(host, port))
        return mirror

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # Usually ICMP port unreachable: no collector listens. Capture must never disturb
        # signalling, so say it once and go on.
        if not self._warned:
            self._warned = True
            log.warning("HEP collector %s: %s", self.collector, exc)

    def mirror(self, data: bytes, source: Address, dest: Address) -> None:
        """Capture one SIP message that went from `source` to `dest` (now)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self.dropped += 1
            return
        try:
            packet = encode_hep3(data, source, dest, time.time(), capture_id=self.capture_id)
        except ValueError:
            self.dropped += 1
            return
        transport.sendto(packet)
        self.sent += 1

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class MirroredEndpoint:
    """`inner`, with a HEP copy of every message it sends. What `inner.send` answers is
    passed on, so a message it could not deliver is still reported to the core; such a
    message never reached the network and is not mirrored.

    Over a connection the copy names the peer the bytes went to: HEP carries IP addresses,
    and a WebSocket client is addressed by its `.invalid` name, a TCP one by its alias."""

    def __init__(self, inner: Endpoint, mirror: HepMirror) -> None:
        self.inner = inner
        self.local = inner.local
        self._mirror = mirror.mirror
        self._peer_of = inner.peer_of if isinstance(inner, ConnectionEndpoint) else None

    def send(self, data: bytes, dest: Address) -> bool | None:
        sent = self.inner.send(data, dest)
        if sent is not False:
            self._mirror(data, self.local, dest if self._peer_of is None else self._peer_of(dest))
        return sent

    def close(self) -> None:
        self.inner.close()


def mirrored_receiver(receiver: Receiver, mirror: HepMirror) -> Receiver:
    """`receiver`, with a HEP copy of every message before it is handled."""
    capture = mirror.mirror

    def receive(data: bytes, source: Address, local: Address) -> None:
        capture(data, source, local)
        receiver(data, source, local)

    return receive

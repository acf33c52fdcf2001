"""HEP v3 encoding, the UDP mirror and its wrappers, and the [hep] configuration.

The packets are taken apart by the test kit's decoder (`tests.support.hep`, written from the
HEP3 layout independently of the encoder); tests/interop/test_hep_sngrep.py has sngrep decode
them too.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from switchboard import hep
from switchboard.config import ConfigError, HostPort, apply_overrides, parse_config
from switchboard.hep import HepMirror, MirroredEndpoint, encode_hep3, mirrored_receiver
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.support.hep import by_type, decode
from tests.unit.kit.endpoint import RecordingEndpoint

DATA = Path(__file__).resolve().parents[1] / "data"
INVITE = b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nCall-ID: abc\r\nContent-Length: 0\r\n\r\n"
A = Address("udp", "127.0.0.1", 5062)
B = Address("udp", "10.1.2.3", 5060)


def u(data: bytes) -> int:
    return int.from_bytes(data, "big")


def test_ipv4_udp_packet_has_every_generic_chunk() -> None:
    packet = encode_hep3(INVITE, A, B, 1_700_000_000.25, capture_id=2001)
    chunks = by_type(packet)
    assert [kind for _, kind, _ in decode(packet)] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15]
    assert u(chunks[1]) == 2 and len(chunks[1]) == 1  # AF_INET
    assert u(chunks[2]) == 17 and len(chunks[2]) == 1  # UDP
    assert chunks[3] == bytes([127, 0, 0, 1])
    assert chunks[4] == bytes([10, 1, 2, 3])
    assert (u(chunks[7]), u(chunks[8])) == (5062, 5060)
    assert len(chunks[7]) == len(chunks[8]) == 2
    assert u(chunks[9]) == 1_700_000_000 and len(chunks[9]) == 4
    assert u(chunks[10]) == 250_000 and len(chunks[10]) == 4
    assert u(chunks[11]) == 1  # SIP
    assert u(chunks[12]) == 2001 and len(chunks[12]) == 4
    assert chunks[15] == INVITE


def test_tcp_is_ip_protocol_6() -> None:
    src = Address("tcp", "127.0.0.1", 40000)
    dst = Address("tcp", "127.0.0.1", 5060)
    assert u(by_type(encode_hep3(INVITE, src, dst, 0.0))[2]) == 6


def test_ipv6_and_mixed_families() -> None:
    v6 = Address("udp", "2001:db8::1", 5060)
    chunks = by_type(encode_hep3(INVITE, v6, Address("udp", "::1", 5070), 1.0))
    assert u(chunks[1]) == 10
    assert 3 not in chunks and 4 not in chunks
    assert chunks[5] == ipaddress.IPv6Address("2001:db8::1").packed
    assert chunks[6] == ipaddress.IPv6Address("::1").packed
    # An IPv4 peer of an IPv6 socket goes out v4-mapped.
    mixed = by_type(encode_hep3(INVITE, v6, A, 1.0))
    assert u(mixed[1]) == 10
    assert mixed[6] == ipaddress.IPv6Address("::ffff:127.0.0.1").packed


def test_optional_chunks_and_timestamp_rounding() -> None:
    packet = encode_hep3(
        INVITE, A, B, 5.9999999, auth_key=b"secret", correlation_id=b"abc"
    )
    chunks = by_type(packet)
    assert chunks[14] == b"secret" and chunks[17] == b"abc"
    assert u(chunks[9]) == 5 and u(chunks[10]) <= 999_999
    # The payload comes last, so a truncating reader still finds the addresses first.
    assert decode(packet)[-1][1] == 15


def test_what_cannot_be_encoded_raises() -> None:
    with pytest.raises(ValueError):
        encode_hep3(INVITE, Address("udp", "proxy.example.com", 5060), B, 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        encode_hep3(b"x" * 65_535, A, B, 0.0)
    # The largest payload that fits is accepted.
    overhead = len(encode_hep3(b"", A, B, 0.0))
    assert len(encode_hep3(b"x" * (0xFFFF - overhead), A, B, 0.0)) == 0xFFFF


def test_a_port_hep_cannot_carry_is_a_value_error() -> None:
    # struct's own error would escape `HepMirror.mirror`, which only drops ValueErrors.
    for port in (-1, 65_536):
        with pytest.raises(ValueError, match="port"):
            encode_hep3(INVITE, A, B._replace(port=port), 0.0)


def test_bytes_that_are_not_utf8_go_to_the_collector_as_they_were() -> None:
    message = (DATA / "readout" / "invite-bad-utf8-from-uri.sip").read_bytes()
    assert by_type(encode_hep3(message, A, B, 1.0))[hep.PAYLOAD] == message


@pytest.mark.parametrize(
    ("maddr", "host"),
    [
        (b"evil.example.com", "127.0.0.1"),  # a name: never looked up
        (b"\xff\xfe", "127.0.0.1"),  # not text at all
        (b"[::1]", "127.0.0.1"),  # the other family than the socket that answers
        (b"192.0.2.7", "192.0.2.7"),  # an IPv4 address, as RFC 3261 §18.2.2 says
    ],
)
def test_the_core_answers_only_addresses_a_socket_and_hep_can_take(maddr: bytes,
                                                                   host: str) -> None:
    """A Via `maddr` used to become the answer's address as written: with uvloop, sending to
    a name or to the other family raises, and the worker stopped sending anything."""
    proxy = Proxy(ProxyConfig(listeners=(Address("udp", "127.0.0.1", 5060),)),
                  lambda: "r1")
    request = (b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
               b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-m;maddr=" + maddr + b"\r\n"
               b"Max-Forwards: 0\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
               b"Call-ID: maddr\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    proxy.receive(request, A, Address("udp", "127.0.0.1", 5060), 1.0)
    (answer,) = proxy.outbox
    assert answer.data.startswith(b"SIP/2.0 ")  # the proxy answers it itself
    assert answer.dest == Address("udp", host, 5062)
    assert by_type(encode_hep3(answer.data, answer.local, answer.dest, 1.0))[hep.PAYLOAD] \
        == answer.data


# --- the mirror on a real loopback socket --------------------------------------------------


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.packets.put_nowait(data)


async def test_mirror_sends_to_the_collector() -> None:
    loop = asyncio.get_running_loop()
    collector = _Collector()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: collector, local_addr=("127.0.0.1", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        mirror = await HepMirror.connect("127.0.0.1", port, capture_id=7)
        try:
            mirror.mirror(INVITE, A, B)
            mirror.mirror(INVITE, Address("udp", "not-an-ip", 1), B)  # dropped, not raised
            packet = await asyncio.wait_for(collector.packets.get(), 5)
        finally:
            mirror.close()
        chunks = by_type(packet)
        assert chunks[15] == INVITE and u(chunks[12]) == 7
        assert (mirror.sent, mirror.dropped) == (1, 1)
        # Closed: counted as dropped, nothing raised.
        mirror.mirror(INVITE, A, B)
        assert mirror.dropped == 2
    finally:
        transport.close()


class _FakeMirror(HepMirror):
    def __init__(self) -> None:
        super().__init__(Address("udp", "127.0.0.1", 9060), 1)
        self.seen: list[tuple[bytes, Address, Address]] = []

    def mirror(self, data: bytes, source: Address, dest: Address) -> None:
        self.seen.append((data, source, dest))


def test_wrappers_capture_both_directions() -> None:
    mirror = _FakeMirror()
    inner = RecordingEndpoint(Address("udp", "127.0.0.1", 5060))
    endpoint = MirroredEndpoint(inner, mirror)
    assert endpoint.local == inner.local
    endpoint.send(INVITE, B)
    assert inner.sent == [(INVITE, B)]
    assert mirror.seen == [(INVITE, inner.local, B)]
    endpoint.close()
    assert inner.closed

    got: list[tuple[bytes, Address, Address]] = []
    receive = mirrored_receiver(lambda d, s, loc: got.append((d, s, loc)), mirror)
    receive(INVITE, B, inner.local)
    assert got == [(INVITE, B, inner.local)]
    assert mirror.seen[-1] == (INVITE, B, inner.local)


class _Reporting:
    """An endpoint that says whether it could send, over connections known by other names."""

    def __init__(self, reachable: bool, peers: dict[Address, Address]) -> None:
        self.local = Address("ws", "127.0.0.1", 8080)
        self.reachable = reachable
        self.peers = peers
        self.sent: list[Address] = []

    def peer_of(self, dest: Address) -> Address:
        return self.peers.get(dest, dest)

    def send(self, data: bytes, dest: Address) -> bool:
        if self.reachable:
            self.sent.append(dest)
        return self.reachable

    def close(self) -> None:
        pass


CLIENT = Address("ws", "k2h3.invalid", 80)
CLIENT_PEER = Address("ws", "127.0.0.1", 41000)


def test_the_mirror_passes_on_what_the_send_answered() -> None:
    """An undeliverable send is still reported to the core (False) and, having never reached
    the network, not mirrored; a sent one is True and mirrored."""
    mirror = _FakeMirror()
    assert MirroredEndpoint(_Reporting(False, {}), mirror).send(INVITE, CLIENT) is False
    assert mirror.seen == []
    up = _Reporting(True, {CLIENT: CLIENT_PEER})
    assert MirroredEndpoint(up, mirror).send(INVITE, CLIENT) is True
    assert up.sent == [CLIENT]
    # The copy names the peer the connection reached, not the name it was sent to.
    assert mirror.seen == [(INVITE, up.local, CLIENT_PEER)]


def test_a_message_to_a_client_known_by_an_invalid_name_is_encoded() -> None:
    """HEP needs IP addresses: with the connection's peer resolved, the mirror drops nothing."""
    mirror = HepMirror(Address("udp", "127.0.0.1", 9060), 1)
    packets: list[bytes] = []

    class Transport:
        def is_closing(self) -> bool:
            return False

        def sendto(self, data: bytes) -> None:
            packets.append(data)

    mirror.connection_made(Transport())  # type: ignore[arg-type]
    endpoint = MirroredEndpoint(_Reporting(True, {CLIENT: CLIENT_PEER}), mirror)
    endpoint.send(INVITE, CLIENT)
    assert (mirror.sent, mirror.dropped) == (1, 0)
    chunks = by_type(packets[0])
    assert chunks[4] == bytes([127, 0, 0, 1]) and u(chunks[8]) == CLIENT_PEER.port
    assert u(chunks[2]) == 6  # WebSocket runs over TCP


# --- configuration ---------------------------------------------------------------------------


def test_hep_config_defaults_and_values() -> None:
    default = parse_config("")
    assert default.hep.collector is None and default.hep.capture_id == hep.DEFAULT_CAPTURE_ID
    config = parse_config('[hep]\ncollector = "udp:127.0.0.1:9060"\ncapture_id = 2001\n')
    assert config.hep.collector == HostPort("127.0.0.1", 9060)
    assert config.hep.capture_id == 2001
    assert parse_config('[hep]\ncollector = ""\n').hep.collector is None
    assert parse_config('[hep]\ncollector = "udp:[::1]:9060"\n').hep.collector == HostPort(
        "::1", 9060
    )


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('[hep]\ncollector = "tcp:127.0.0.1:9060"\n', "hep.collector", 2),
        ('[hep]\n\ncollector = "udp:127.0.0.1:0"\n', "hep.collector", 3),
        ('[hep]\ncollector = "127.0.0.1:9060"\n', "hep.collector", 2),
        ("[hep]\ncapture_id = -1\n", "hep.capture_id", 2),
        ("[hep]\ncapture_id = 4294967296\n", "hep.capture_id", 2),
        ("[hep]\nport = 9060\n", "hep.port", 2),
    ],
)
def test_hep_config_errors_name_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="sb.toml")
    assert (err.value.key, err.value.line) == (key, line)
    assert str(err.value).startswith(f"sb.toml:{line}: {key}: ")


def test_hep_flag_overrides_the_file() -> None:
    config = parse_config('[hep]\ncollector = "udp:127.0.0.1:9060"\ncapture_id = 3\n')
    flagged = apply_overrides(config, hep="udp:127.0.0.2:9061")
    assert flagged.hep.collector == HostPort("127.0.0.2", 9061)
    assert flagged.hep.capture_id == 3
    assert apply_overrides(config, hep="").hep.collector is None
    assert apply_overrides(config).hep == config.hep
    with pytest.raises(ConfigError, match="--hep"):
        apply_overrides(config, hep="udp:nowhere:1")

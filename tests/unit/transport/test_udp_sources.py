"""The UDP listener hands each datagram on with its source as an `Address`, kept per peer."""

from __future__ import annotations

import pytest

from switchboard.sip.wire import Address
from switchboard.transport import udp
from switchboard.transport.udp import UdpEndpoint

LOCAL = Address("udp", "127.0.0.1", 5060)


def _endpoint() -> tuple[UdpEndpoint, list[tuple[bytes, Address, Address]]]:
    got: list[tuple[bytes, Address, Address]] = []
    return UdpEndpoint(LOCAL, lambda data, source, local: got.append((data, source, local))), got


def test_source_is_the_peer_address_and_reused_for_the_same_peer() -> None:
    endpoint, got = _endpoint()
    endpoint.datagram_received(b"one", ("127.0.0.2", 5070))
    endpoint.datagram_received(b"two", ("127.0.0.2", 5070))
    endpoint.datagram_received(b"three", ("127.0.0.3", 5070))
    assert [(d, s, loc) for d, s, loc in got] == [
        (b"one", Address("udp", "127.0.0.2", 5070), LOCAL),
        (b"two", Address("udp", "127.0.0.2", 5070), LOCAL),
        (b"three", Address("udp", "127.0.0.3", 5070), LOCAL),
    ]
    assert got[0][1] is got[1][1]


def test_remembered_sources_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udp, "SOURCES_KEPT", 3)
    endpoint, got = _endpoint()
    for port in range(5000, 5010):
        endpoint.datagram_received(b"x", ("127.0.0.2", port))
    assert [s.port for _, s, _ in got] == list(range(5000, 5010))
    assert len(endpoint._sources) <= 3


def test_a_failing_receiver_does_not_stop_the_listener() -> None:
    calls: list[bytes] = []

    def receiver(data: bytes, source: Address, local: Address) -> None:
        calls.append(data)
        if data == b"bad":
            raise ValueError("bad datagram")

    endpoint = UdpEndpoint(LOCAL, receiver)
    endpoint.datagram_received(b"bad", ("127.0.0.2", 5070))
    endpoint.datagram_received(b"good", ("127.0.0.2", 5070))
    assert calls == [b"bad", b"good"]

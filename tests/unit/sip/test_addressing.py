"""Addressing for every transport: next hops for tls/ws/wss (transport names in any case,
`sips:` only over TLS), the Via and Record-Route we write on each listener, the listener that
faces a WebSocket client, and the sent-by a connection is aliased under."""

from __future__ import annotations

import pytest

from switchboard.sip.addressing import Addressing, request_sent_by, rr_uri, via
from switchboard.sip.uri import SipUri, parse_uri
from switchboard.sip.wire import Address

UDP = Address("udp", "127.0.0.1", 5060)
TLS = Address("tls", "127.0.0.1", 5061)
WS = Address("ws", "127.0.0.1", 8080)
WSS = Address("wss", "127.0.0.1", 8443)


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:a@192.0.2.1;transport=TLS", Address("tls", "192.0.2.1", 5061)),
    ("sip:a@192.0.2.1:5071;transport=tls", Address("tls", "192.0.2.1", 5071)),
    ("sips:a@192.0.2.1", Address("tls", "192.0.2.1", 5061)),
    ("sips:a@192.0.2.1;transport=tcp", Address("tls", "192.0.2.1", 5061)),  # RFC 5630 §3.1.1
    ("sips:a@192.0.2.1;transport=ws", Address("wss", "192.0.2.1", 443)),
    ("sip:a@df7jal23ls0d.invalid;transport=ws", Address("ws", "df7jal23ls0d.invalid", 80)),
    ("sip:a@DF7.invalid;transport=WSS", Address("wss", "df7.invalid", 443)),
    ("sip:a@192.0.2.1;transport=Tcp", Address("tcp", "192.0.2.1", 5060)),
    ("sips:a@192.0.2.1;transport=udp", None),  # never a sips: over UDP
    ("sip:a@unknown.example;transport=tls", None),  # no DNS
    ("sip:a@192.0.2.1;transport=sctp", None),
])
def test_resolve(uri: str, expected: Address | None) -> None:
    assert Addressing((UDP, TLS, WS), (), ()).resolve(sip(uri)) == expected


def test_a_websocket_client_is_reached_on_the_transport_of_its_live_connection() -> None:
    addressing = Addressing((UDP, WS, WSS), (), ())
    addressing.connection_transport = {"df7.invalid": "wss"}.get
    assert addressing.resolve(sip("sip:a@df7.invalid;transport=ws")) == Address(
        "wss", "df7.invalid", 443)
    assert addressing.resolve(sip("sip:a@other.invalid;transport=ws")) == Address(
        "ws", "other.invalid", 80)


def test_local_for_a_websocket_client_falls_back_to_the_other_websocket_listener() -> None:
    only_wss = Addressing((UDP, WSS), (), ())
    assert only_wss.local_for(Address("ws", "x.invalid", 80)) == WSS
    assert Addressing((UDP, WS), (), ()).local_for(Address("wss", "x.invalid", 443)) == WS
    assert Addressing((UDP,), (), ()).local_for(Address("tls", "192.0.2.1", 5061)) is None


@pytest.mark.parametrize(("local", "rr", "top_via"), [
    (UDP, "sip:127.0.0.1:5060;lr", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx"),
    (TLS, "sip:127.0.0.1:5061;transport=tls;lr", "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx"),
    (WS, "sip:127.0.0.1:8080;transport=ws;lr", "SIP/2.0/WS 127.0.0.1:8080;branch=z9hG4bKx"),
    (WSS, "sip:127.0.0.1:8443;transport=wss;lr", "SIP/2.0/WSS 127.0.0.1:8443;branch=z9hG4bKx"),
])
def test_record_route_and_via_per_listener(local: Address, rr: str, top_via: str) -> None:
    assert rr_uri(local, "") == rr
    assert str(via(local, "z9hG4bKx")) == top_via


def test_the_sent_by_of_a_request() -> None:
    assert request_sent_by(
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS df7JAL.invalid;branch=z9hG4bK1\r\n"
        b"v: SIP/2.0/UDP 192.0.2.9\r\n\r\n") == ("wss", "df7jal.invalid", None)
    assert request_sent_by(
        b"INVITE sip:b@x SIP/2.0\r\nTo: <sip:b@x>\r\nv:SIP/2.0/TLS [2001:db8::1]:5071;branch=z9,"
        b" SIP/2.0/UDP 192.0.2.9\r\n\r\n") == ("tls", "2001:db8::1", 5071)
    assert request_sent_by(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.0.2.1\r\n\r\n") is None
    assert request_sent_by(b"INVITE sip:b@x SIP/2.0\r\nVia: nonsense\r\n\r\n") is None
    assert request_sent_by(b"\x00\x01 not SIP") is None


UDP_B = Address("udp", "127.0.0.2", 5060)  # a second UDP listener (a node with two addresses)
TRUNK = Address("udp", "192.0.2.9", 5060)


def test_a_dialogs_request_leaves_from_the_socket_that_faces_its_party() -> None:
    """A UA behind NAT accepts only the address it sent to: in a dialog, the leg's socket
    wins over the first listener of the transport."""
    addressing = Addressing((UDP, UDP_B, TLS), (), ())
    assert addressing.local_for(TRUNK) == UDP
    assert addressing.local_toward(TRUNK, UDP_B) == UDP_B
    assert addressing.local_toward(TRUNK, None) == UDP
    # A socket of another transport cannot reach it: the listener that can does.
    assert addressing.local_toward(TRUNK, TLS) == UDP

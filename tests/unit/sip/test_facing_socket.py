"""A node with two UDP addresses: whatever the proxy sends into a dialog leaves from the
socket that faces the party it goes to (the leg's `local`), not from the first listener of
the transport. A UA behind NAT accepts messages only from the address it sent to."""

from __future__ import annotations

from switchboard.sip import Request
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address, Datagram
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    BOB_CONTACT,
    ROUTE_SECRET,
    SDP,
    counter,
    invite,
    parsed,
    reply,
    sip_request,
)

FIRST = Address("udp", "127.0.0.1", 5060)  # the first UDP listener: what Bob is reached on
SECOND = Address("udp", "127.0.0.3", 5060)  # the one Alice sends to


def _send(proxy: Proxy, data: bytes, source: Address, local: Address) -> list[Datagram]:
    proxy.receive(data, source, local, 0.0)
    out = list(proxy.outbox)
    del proxy.outbox[:]
    return out


def test_a_callees_bye_reaches_the_caller_from_the_address_she_called() -> None:
    proxy = Proxy(ProxyConfig(listeners=(FIRST, SECOND), route_secret=ROUTE_SECRET),
                  counter())
    out = _send(proxy, invite(), ALICE, SECOND)
    (at_bob,) = [m for d, m in parsed(out) if d == BOB]
    assert isinstance(at_bob, Request)
    # The request changed socket: two Record-Route entries (RFC 5658), Bob's side on top.
    top, below = at_bob.values("record-route")[:2]
    assert "127.0.0.1:5060" in top and "127.0.0.3:5060" in below
    _send(proxy, reply(at_bob, 200, body=SDP), BOB, FIRST)

    bye = sip_request("BYE", "sip:alice@127.0.0.1:5061", branch="z9hG4bKb-bye",
                      from_tag="bob-tag", to_tag="alice-tag", cseq=1,
                      from_uri="sip:bob@127.0.0.1", to_uri="sip:alice@127.0.0.1",
                      via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKb-bye",
                      routes=[top, below], contact=BOB_CONTACT)
    (to_alice,) = [d for d in _send(proxy, bye, BOB, FIRST) if d.dest == ALICE]
    assert to_alice.local == SECOND
    assert b"Via: SIP/2.0/UDP 127.0.0.3:5060;" in to_alice.data

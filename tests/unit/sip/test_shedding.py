"""New calls refused at the door under overload: a stateless 503 + Retry-After (RFC 3261
§8.2.7), no transaction, no dialog; its ACK ends here. Nothing here touches a socket."""

from __future__ import annotations

import itertools

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import invite, sip_request

PROXY = Address("udp", "192.0.2.10", 5060)
CALLER = Address("udp", "198.51.100.7", 5060)
FAR = "sip:bob@203.0.113.5:5060"
VIA = "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKs1"


def proxy() -> Proxy:
    numbers = itertools.count(1)
    return Proxy(ProxyConfig(listeners=(PROXY,), trusted=("0.0.0.0/0",)),
                 lambda: f"r{next(numbers)}")


def receive(p: Proxy, data: bytes) -> list[Request | Response]:
    p.receive(data, CALLER, PROXY, 0.0)
    out = [parse_message(d.data) for d in p.outbox]
    p.outbox.clear()
    return out


def ack_of(answer: Response, branch: str = "z9hG4bKs1") -> bytes:
    """The caller's ACK of a non-2xx final answer (RFC 3261 §17.1.1.3)."""
    to_tag = answer.to_tag
    assert to_tag is not None
    return sip_request("ACK", FAR, branch=branch, to_tag=to_tag,
                       via=VIA.replace("z9hG4bKs1", branch))


def test_a_refused_call_gets_a_stateless_503_and_leaves_nothing_behind() -> None:
    p = proxy()
    p.shed_fraction = 1.0
    p.receive(invite(ruri=FAR, via=VIA), CALLER, PROXY, 0.0)
    assert [d.dest for d in p.outbox] == [CALLER]
    out = [parse_message(d.data) for d in p.outbox]
    p.outbox.clear()
    assert len(out) == 1  # no 100 Trying: a stateless answer has no provisional (§8.2.7)
    answer = out[0]
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.get("retry-after") == "2"
    assert answer.top_via.branch == "z9hG4bKs1"
    assert p.server_txns == {} and len(p.dialogs) == 0 and p.next_deadline() is None
    assert p.statistics()["core:shed_requests"] == 1
    # Its ACK is ours to end: not relayed toward the callee, who never heard of the call.
    assert receive(p, ack_of(answer)) == []
    # A retransmitted INVITE (the 503 was lost) gets the same answer, To tag included.
    again = receive(p, invite(ruri=FAR, via=VIA))
    assert len(again) == 1 and isinstance(again[0], Response)
    assert again[0].status == 503 and again[0].to_tag == answer.to_tag


def test_when_the_load_drops_a_new_call_goes_through() -> None:
    p = proxy()
    p.shed_fraction = 1.0
    receive(p, invite(ruri=FAR, via=VIA))
    p.shed_fraction = 0.0
    out = receive(p, invite(ruri=FAR, via=VIA.replace("s1", "s2"), call_id="call-2@alice"))
    assert [type(m) for m in out] == [Response, Request]
    assert isinstance(out[0], Response) and out[0].status == 100
    assert isinstance(out[1], Request) and out[1].method == "INVITE"
    assert len(p.dialogs) == 1


def test_an_ack_of_another_call_is_still_relayed_while_shedding() -> None:
    p = proxy()
    p.shed_fraction = 1.0
    receive(p, invite(ruri=FAR, via=VIA))
    ack = sip_request("ACK", FAR, branch="z9hG4bKa2", to_tag="bob-tag",
                      via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKa2")
    p.receive(ack, CALLER, PROXY, 0.0)
    assert [d.data.split(b" ", 2)[:2] for d in p.outbox] == [[b"ACK", FAR.encode()]]


def test_a_new_call_that_replaces_or_was_referred_is_not_refused_at_the_door() -> None:
    for header in ("Replaces: call-9@alice;to-tag=b;from-tag=a",
                   "Referred-By: <sip:carol@198.51.100.9>"):
        p = proxy()
        p.shed_fraction = 1.0  # the door lets none through; what passes is the exempt
        out = receive(p, invite(ruri=FAR, via=VIA, extra=(header,)))
        # It reaches the policy, which refuses it statefully: its transfer learns of it.
        assert isinstance(out[0], Response) and out[0].status == 100
        assert isinstance(out[-1], Response) and out[-1].status == 503
        assert p.statistics()["core:shed_requests"] == 1

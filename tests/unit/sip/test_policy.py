"""No open relay and overload shedding in the proxy core (issue 6), with addresses outside
loopback so the default trusted networks do not apply. Nothing here touches a socket."""

from __future__ import annotations

import itertools

from switchboard.sip import Response, parse_message
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import invite, sip_request

PROXY = Address("udp", "192.0.2.10", 5060)
STRANGER = Address("udp", "198.51.100.7", 5060)
USER = Address("udp", "198.51.100.8", 5070)
FAR = "sip:bob@203.0.113.5:5060"


def proxy(**config: object) -> Proxy:
    numbers = itertools.count(1)
    return Proxy(ProxyConfig(listeners=(PROXY,), **config),  # type: ignore[arg-type]
                 lambda: f"r{next(numbers)}")


def send(p: Proxy, data: bytes, source: Address) -> list[tuple[Address, str]]:
    p.receive(data, source, PROXY, 0.0)
    out = [(d.dest, d.data.split(b"\r\n", 1)[0].decode()) for d in p.outbox]
    p.outbox.clear()
    return out


def from_stranger(**kw: object) -> bytes:
    return invite(ruri=FAR, via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKs1", **kw)


def test_a_stranger_cannot_relay_through_us() -> None:
    p = proxy()
    out = send(p, from_stranger(), STRANGER)
    assert out == [(STRANGER, "SIP/2.0 100 Trying"), (STRANGER, "SIP/2.0 403 Relaying Denied")]
    assert p.statistics()["core:relay_denied"] == 1


def test_a_trusted_network_may_relay() -> None:
    p = proxy(trusted=("198.51.100.0/24",))
    out = send(p, from_stranger(), STRANGER)
    assert out[-1] == (Address("udp", "203.0.113.5", 5060), f"INVITE {FAR} SIP/2.0")


def test_requests_for_our_domain_are_served_from_anywhere() -> None:
    p = proxy(domains=("example.org",))
    out = send(p, invite(ruri="sip:nobody@example.org",
                         via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKs2"), STRANGER)
    assert out[-1] == (STRANGER, "SIP/2.0 404 Not Found")  # not 403: we serve that domain


def test_a_registered_user_may_call_out_from_where_it_registered() -> None:
    p = proxy(domains=("example.org",))
    register = sip_request(
        "REGISTER", "sip:example.org", branch="z9hG4bKreg",
        via="SIP/2.0/UDP 198.51.100.8:5070;branch=z9hG4bKreg",
        from_uri="sip:alice@example.org", to_uri="sip:alice@example.org",
        contact="sip:alice@198.51.100.8:5070", extra=("Expires: 600",))
    assert send(p, register, USER)[-1] == (USER, "SIP/2.0 200 OK")
    call = invite(ruri=FAR, from_uri="sip:alice@example.org",
                  via="SIP/2.0/UDP 198.51.100.8:5070;branch=z9hG4bKu1")
    assert send(p, call, USER)[-1][1] == f"INVITE {FAR} SIP/2.0"
    # The same identity from somewhere else is a stranger.
    forged = invite(ruri=FAR, from_uri="sip:alice@example.org",
                    via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKu2")
    assert send(p, forged, STRANGER)[-1] == (STRANGER, "SIP/2.0 403 Relaying Denied")


def test_overload_sheds_new_calls_with_retry_after_but_not_dialogs() -> None:
    p = proxy(trusted=("0.0.0.0/0",))
    p.shed_fraction = 1.0
    p.receive(from_stranger(), STRANGER, PROXY, 0.0)
    answers = [parse_message(d.data) for d in p.outbox]
    p.outbox.clear()
    final = answers[-1]
    assert isinstance(final, Response) and final.status == 503
    assert final.get("retry-after") == "2"
    assert p.statistics()["core:shed_requests"] == 1
    assert len(p.dialogs) == 0
    # An in-dialog request is still relayed: calls already up keep working.
    bye = sip_request("BYE", FAR, branch="z9hG4bKbye", to_tag="bob-tag",
                      via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye")
    assert send(p, bye, STRANGER)[-1][1] == f"BYE {FAR} SIP/2.0"


def test_a_flooding_untrusted_source_is_cut_off_and_others_are_not() -> None:
    p = proxy(rate_limit=10.0, rate_burst=20.0, domains=("example.org",))
    options = [sip_request("OPTIONS", "sip:example.org", branch=f"z9hG4bKf{i}",
                           via=f"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKf{i}")
               for i in range(100)]
    answered = sum(len(send(p, o, STRANGER)) for o in options)
    assert answered == 20  # the burst, then silence
    assert p.statistics()["core:rate_limited"] == 80
    # Another source is not affected, and the first one recovers with time.
    other = sip_request("OPTIONS", "sip:example.org", branch="z9hG4bKo",
                        via="SIP/2.0/UDP 198.51.100.8:5070;branch=z9hG4bKo")
    assert send(p, other, USER) == [(USER, "SIP/2.0 200 OK")]
    p.receive(sip_request("OPTIONS", "sip:example.org", branch="z9hG4bKlate",
                          via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKlate"),
              STRANGER, PROXY, 1.0)
    assert len(p.outbox) == 1


def test_trusted_sources_are_not_rate_limited() -> None:
    p = proxy(rate_limit=1.0, rate_burst=1.0, trusted=("198.51.100.0/24",),
              domains=("example.org",))
    for i in range(10):
        out = send(p, sip_request("OPTIONS", "sip:example.org", branch=f"z9hG4bKt{i}",
                                  via=f"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKt{i}"),
                   STRANGER)
        assert out == [(STRANGER, "SIP/2.0 200 OK")]

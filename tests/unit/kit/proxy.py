"""The sans-IO proxy kit: a `Proxy` on a fake clock, and user agents written by hand.

A `Net` wraps one `Proxy` listening on `udp:127.0.0.1:5060` and `tcp:127.0.0.1:5060`, with a
fake clock (a float moved by hand) and a counter for randomness. The user agents are plain
functions that write SIP the way a UA (or an upstream proxy) would: `sip_request`, `invite`,
`reply`, the two ACKs; `signed` is our Record-Route as the proxy writes it; a `Call` is Alice
calling Bob through the proxy step by step. `one`, `parsed` and friends read what the proxy
sent. The call operations kit (`tests.unit.kit.callops`) builds on this one.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.dialog import DialogStateChanged
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address, Datagram

PROXY_UDP = Address("udp", "127.0.0.1", 5060)
PROXY_TCP = Address("tcp", "127.0.0.1", 5060)
ALICE = Address("udp", "127.0.0.1", 5061)
BOB = Address("udp", "127.0.0.1", 5062)
BOB_TCP = Address("tcp", "127.0.0.1", 5062)
P1 = Address("udp", "127.0.0.1", 5070)  # an upstream proxy
P2 = Address("udp", "127.0.0.1", 5080)  # a downstream proxy
P1_RR = "<sip:127.0.0.1:5070;lr>"  # their Record-Route entries
P2_RR = "<sip:127.0.0.1:5080;lr>"
ALICE_CONTACT = "sip:alice@127.0.0.1:5061"
BOB_CONTACT = "sip:bob@127.0.0.1:5062"
ROUTE_SECRET = "test-secret"


def signed(rr: str, call_id: str = "call-1@alice", tag: str = "alice-tag",
           target: str = "sip:alice@127.0.0.1:5061", secret: str = ROUTE_SECRET) -> str:
    """Our Record-Route entry as the proxy writes it: signed with a keyed BLAKE2s for the
    dialog (Call-ID, caller's tag) and the remote target requests along it go to (scheme,
    user, host, port), so that it cannot be forged or aimed elsewhere."""
    key = hashlib.sha256(secret.encode()).digest()
    scheme, _, rest = target.partition(":")
    user, _, hostport = rest.rpartition("@")
    host, _, port = hostport.partition(";")[0].partition(":")
    canonical = f"{scheme}:{user}@{host.lower()}:{port or 0}"
    data = f"{call_id}\0{tag}\0{canonical}".encode()
    sig = hashlib.blake2s(data, key=key, digest_size=8).hexdigest()
    return f"{rr[:-1]};sb={sig}>"


# Our Record-Route: unsigned, since every party here is on a trusted network (loopback).
OUR_RR = "<sip:127.0.0.1:5060;lr>"
OUR_RR_TCP = "<sip:127.0.0.1:5060;transport=tcp;lr>"
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


# -- user agents -------------------------------------------------------------------------------


def finish(lines: list[str], extra: Iterable[str], body: bytes,
           content_type: str = "application/sdp") -> bytes:
    """A message's bytes: its `lines` so far, then the `extra` header lines, Content-Type (when
    there is a body), Content-Length, the blank line and the body."""
    lines = [*lines, *extra]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sip_request(
    method: str,
    ruri: str,
    *,
    branch: str,
    from_tag: str = "alice-tag",
    to_tag: str | None = None,
    call_id: str = "call-1@alice",
    cseq: int = 1,
    cseq_method: str | None = None,
    via: str | None = None,
    vias: Iterable[str] = (),
    from_uri: str = "sip:alice@127.0.0.1",
    to_uri: str = "sip:bob@127.0.0.1",
    contact: str | None = ALICE_CONTACT,
    routes: Iterable[str] = (),
    record_routes: Iterable[str] = (),
    max_forwards: int | None = 70,
    extra: Iterable[str] = (),
    body: bytes = b"",
    content_type: str = "application/sdp",
) -> bytes:
    """A request as a UA (or an upstream proxy, with `vias`/`record_routes`) writes it."""
    lines = [f"{method} {ruri} SIP/2.0"]
    lines.append(f"Via: {via or f'SIP/2.0/UDP 127.0.0.1:5061;branch={branch}'}")
    lines += [f"Via: {v}" for v in vias]
    lines += [f"Record-Route: {r}" for r in record_routes]
    lines += [f"Route: {r}" for r in routes]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines.append(f"From: <{from_uri}>;tag={from_tag}")
    lines.append(f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {call_id}")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    if contact is not None:
        lines.append(f"Contact: <{contact}>")
    return finish(lines, extra, body, content_type)


def invite(branch: str = "z9hG4bKa-inv", ruri: str = BOB_CONTACT, **kw: Any) -> bytes:
    kw.setdefault("body", SDP)
    return sip_request("INVITE", ruri, branch=branch, **kw)


def reply(
    req: Request | Response,
    status: int,
    *,
    to_tag: str | None = "bob-tag",
    contact: str | None = BOB_CONTACT,
    record_routes: Iterable[str] | None = None,
    extra: Iterable[str] = (),
    body: bytes = b"",
) -> bytes:
    """A response as the UAS builds it from the request it received (§8.2.6.2, §12.1.1)."""
    assert isinstance(req, Request)
    lines = [f"SIP/2.0 {status} Reason"]
    for key, name, text in req.headers:
        if key == "via" or (key == "record-route" and record_routes is None):
            lines.append(f"{name}: {text}")
    lines += [f"Record-Route: {r}" for r in record_routes or ()]
    for key in ("from", "to", "call-id", "cseq"):
        value = req.get(key)
        assert value is not None
        if key == "to" and to_tag and status > 100 and ";tag=" not in value:
            value += f";tag={to_tag}"
        lines.append(f"{key.title()}: {value}")
    if contact is not None and status > 100:
        lines.append(f"Contact: <{contact}>")
    return finish(lines, extra, body)


def ack_for_2xx(
    branch: str = "z9hG4bKa-ack", cseq: int = 1, routes: Iterable[str] = (OUR_RR,),
    ruri: str = BOB_CONTACT, **kw: Any,
) -> bytes:
    """The caller's end-to-end ACK: a new branch, the route set, the remote target."""
    kw.setdefault("to_tag", "bob-tag")
    return sip_request("ACK", ruri, branch=branch, cseq=cseq, routes=routes,
                       **kw)


def ack_for_non_2xx(invite_bytes: bytes, response: Request | Response) -> bytes:
    """§17.1.1.3: the ACK a UAC's INVITE transaction sends for a non-2xx final response."""
    inv = parse_message(invite_bytes)
    assert isinstance(inv, Request) and isinstance(response, Response)
    lines = [f"ACK {inv.uri} SIP/2.0", f"Via: {inv.get('via')}", "Max-Forwards: 70",
             f"From: {inv.get('from')}", f"To: {response.get('to')}",
             f"Call-ID: {inv.call_id}", f"CSeq: {inv.cseq.number} ACK", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the proxy under test ------------------------------------------------------------------------


def counter() -> Callable[[], str]:
    """Deterministic `rand`: r1, r2, r3 ..."""
    numbers = itertools.count(1)
    return lambda: f"r{next(numbers)}"


class Net:
    """One proxy, a fake clock, and helpers to feed it and collect what it sends."""

    start = 0.0  # where the clock starts

    def __init__(self, **config: Any) -> None:
        config.setdefault("route_secret", ROUTE_SECRET)
        self.proxy = Proxy(
            ProxyConfig(listeners=(PROXY_UDP, PROXY_TCP), **config),
            counter(),
        )
        self.now = self.start

    def send(self, data: bytes, source: Address, local: Address = PROXY_UDP
             ) -> list[Datagram]:
        self.proxy.receive(data, source, local, self.now)
        return self.take()

    def take(self) -> list[Datagram]:
        out = list(self.proxy.outbox)
        del self.proxy.outbox[:]  # the proxy appends to this very list
        return out

    def events(self) -> list[DialogStateChanged]:
        out = list(self.proxy.events)
        del self.proxy.events[:]
        return out

    def advance(self, to: float) -> list[Datagram]:
        """Move the clock to `to`, firing each timer at its own deadline on the way."""
        while (deadline := self.proxy.next_deadline()) is not None and deadline <= to:
            self.now = deadline
            self.proxy.handle_timers(deadline)
        self.now = to
        return self.take()

    def run_all_timers(self) -> list[Datagram]:
        return self.advance(self.now + 10_000.0)

    def stats(self) -> dict[str, int]:
        return self.proxy.statistics()

    def assert_idle(self) -> None:
        """No transaction, dialog or timer left behind."""
        assert self.proxy.server_txns == {}
        assert self.proxy.client_txns == {}
        assert len(self.proxy.dialogs) == 0
        assert self.proxy.next_deadline() is None


def one(datagrams: list[Datagram], dest: Address | None = None) -> tuple[Datagram, Request | Response]:
    assert len(datagrams) == 1, [d.data.split(b"\r\n", 1)[0] for d in datagrams]
    d = datagrams[0]
    if dest is not None:
        assert d.dest == dest
    return d, parse_message(d.data)


def one_request(datagrams: list[Datagram], dest: Address | None = None) -> Request:
    _, msg = one(datagrams, dest)
    assert isinstance(msg, Request)
    return msg


def one_response(datagrams: list[Datagram], dest: Address | None = None) -> Response:
    _, msg = one(datagrams, dest)
    assert isinstance(msg, Response)
    return msg


def parsed(datagrams: list[Datagram]) -> list[tuple[Address, Request | Response]]:
    return [(d.dest, parse_message(d.data)) for d in datagrams]


def first_line(msg: Request | Response) -> str:
    return msg.start_line()


def statuses(out: list[tuple[Address, Request | Response]]) -> list[tuple[Address, int]]:
    return [(dest, m.status if isinstance(m, Response) else 0) for dest, m in out]


class Call:
    """Alice (udp :5061) calls Bob (udp :5062) through the proxy, step by step."""

    def __init__(self, net: Net, **invite_kw: Any) -> None:
        self.net = net
        self.invite_bytes = invite(**invite_kw)
        self.at_bob: Request | None = None

    def send_invite(self) -> Request:
        out = parsed(self.net.send(self.invite_bytes, ALICE))
        assert [(dest, first_line(m)) for dest, m in out] == [
            (ALICE, "SIP/2.0 100 Trying"),
            (BOB, f"INVITE {BOB_CONTACT} SIP/2.0"),
        ]
        fwd = out[1][1]
        assert isinstance(fwd, Request)
        self.at_bob = fwd
        return fwd

    def bob_replies(self, status: int, **kw: Any) -> list[Datagram]:
        assert self.at_bob is not None
        return self.net.send(reply(self.at_bob, status, **kw), BOB)

    def ring(self) -> Response:
        return one_response(self.bob_replies(180), ALICE)

    def answer(self) -> Response:
        return one_response(self.bob_replies(200, body=SDP), ALICE)

    def ack(self) -> Request:
        return one_request(self.net.send(ack_for_2xx(), ALICE), BOB)

    def establish(self) -> None:
        self.send_invite()
        self.ring()
        self.answer()
        self.ack()

    def bye(self) -> Request:
        """Alice hangs up: her BYE (CSeq 2) along the route set; returns it as Bob gets it."""
        bye = sip_request("BYE", BOB_CONTACT, branch="z9hG4bKa-bye", to_tag="bob-tag", cseq=2,
                          routes=[OUR_RR], contact=None)
        return one_request(self.net.send(bye, ALICE), BOB)

    def bob_accepts(self, bye: Request) -> list[Datagram]:
        """Bob's 200 for `bye`; returns what the proxy sent."""
        return self.net.send(reply(bye, 200, to_tag=None, contact=None), BOB)

    def hang_up(self) -> list[Datagram]:
        """`bye`, then `bob_accepts`."""
        return self.bob_accepts(self.bye())

"""The call operations kit: user agents by name, a dialog through the proxy, and the events
the proxy reports.

`UA`s (alice, bob, carol) write SIP the way user agents do (`request`, `answer`, `sdp`); a
`Call` sets up a dialog through the proxy and writes the in-dialog requests of either side;
`Net` is the proxy kit's `Net` (`tests.unit.kit.proxy`) with call operations on top
(`net.callops`), its clock at 100 s, a `UA` as a sender and only the call events in
`events()`, each as it is published (`Reported`: the OpenSIPS name and parameters, made by
`switchboard.events.opensips` from the core's event values). The rest reads what the proxy sent and builds the events the tests expect.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from switchboard.events.opensips import opensips_event
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.dialog import Dialog, DialogStateChanged
from switchboard.sip.operations import Refused
from switchboard.sip.wire import Address, Datagram
from tests.unit.kit.proxy import OUR_RR, P1_RR, PROXY_UDP, finish, sip_request
from tests.unit.kit.proxy import Net as ProxyNet


def sdp(owner: str, version: int, port: int, direction: str | None = None) -> bytes:
    lines = ["v=0", f"o={owner} 1000 {version} IN IP4 127.0.0.1", "s=-",
             "c=IN IP4 127.0.0.1", "t=0 0", f"m=audio {port} RTP/AVP 0",
             "a=rtpmap:0 PCMU/8000"]
    if direction:
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class UA:
    name: str
    address: Address

    @property
    def aor(self) -> str:
        return f"sip:{self.name}@example.com"

    @property
    def contact(self) -> str:
        return f"sip:{self.name}@{self.address.host}:{self.address.port}"


ALICE = UA("alice", Address("udp", "127.0.0.1", 5061))
BOB = UA("bob", Address("udp", "127.0.0.1", 5062))
CAROL = UA("carol", Address("udp", "127.0.0.1", 5063))
SDP_A = sdp("alice", 10, 4000)
SDP_B = sdp("bob", 20, 5000)
SDP_C = sdp("carol", 30, 6000)

_branches = itertools.count(1)


def branch() -> str:
    return f"z9hG4bK-ua{next(_branches)}"


def request(
    method: str,
    ruri: str,
    sender: UA,
    *,
    call_id: str,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    to_tag: str | None,
    cseq: int,
    routes: Iterable[str] = (),
    contact: str | None = None,
    extra: Iterable[str] = (),
    body: bytes = b"",
    content_type: str = "application/sdp",
    via_branch: str | None = None,
) -> bytes:
    """A request as a user agent writes it: the proxy kit's `sip_request` from `sender`."""
    via_branch = via_branch or branch()
    return sip_request(
        method, ruri, branch=via_branch,
        via=f"SIP/2.0/UDP {sender.address.host}:{sender.address.port};branch={via_branch}",
        call_id=call_id, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri, to_tag=to_tag,
        cseq=cseq, routes=routes, contact=contact, extra=extra, body=body,
        content_type=content_type,
    )


def answer(
    req: Request | Response,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    contact: str | None = None,
    record_routes: Iterable[str] | None = None,
    body: bytes = b"",
    extra: Iterable[str] = (),
) -> bytes:
    """The response a UAS builds for `req` (RFC 3261 §8.2.6.2); Record-Route echoed unless
    `record_routes` says otherwise."""
    assert isinstance(req, Request)
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    if record_routes is None:
        lines += [f"Record-Route: {r}" for r in req.get_all("record-route")]
    else:
        lines += [f"Record-Route: {r}" for r in record_routes]
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
              f"CSeq: {req.get('cseq')}"]
    if contact is not None:
        lines.append(f"Contact: <{contact}>")
    return finish(lines, extra, body)


class Net(ProxyNet):
    """One proxy and a fake clock (the proxy kit's `Net`) with call operations on top, as the
    call operations tests use it: the clock starts at 100 s, a `UA` can send, and `events()`
    returns the call events only."""

    start = 100.0

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.callops = CallOps(self.proxy)

    def send(self, data: bytes, source: UA | Address, local: Address = PROXY_UDP
             ) -> list[Datagram]:
        address = source.address if isinstance(source, UA) else source
        return super().send(data, address, local)

    def events(self) -> list[Reported]:  # type: ignore[override]
        """The call events since the last look (dialog state changes left out), as
        published."""
        out = [Reported(*opensips_event(e)) for e in self.proxy.events
               if not isinstance(e, DialogStateChanged)]
        del self.proxy.events[:]
        return out


def msgs(out: list[Datagram]) -> list[tuple[Address, Request | Response]]:
    return [(d.dest, parse_message(d.data)) for d in out]


def lines_of(out: list[Datagram]) -> list[tuple[Address, str]]:
    return [(dest, m.start_line()) for dest, m in msgs(out)]


def line_set(out: list[Datagram]) -> set[tuple[Address, str]]:
    return set(lines_of(out))


def only(out: list[Datagram], dest: UA | Address) -> Datagram:
    address = dest.address if isinstance(dest, UA) else dest
    assert len(out) == 1, lines_of(out)
    assert out[0].dest == address, lines_of(out)
    assert out[0].local == PROXY_UDP
    return out[0]


def only_request(out: list[Datagram], dest: UA | Address) -> Request:
    msg = parse_message(only(out, dest).data)
    assert isinstance(msg, Request)
    return msg


def relayed_invite(out: list[Datagram], sender: UA, dest: UA) -> Request:
    """An INVITE relayed: our 100 Trying back to the sender, the INVITE on to `dest`."""
    got = msgs(out)
    assert [(d, m.start_line().split(" ", 1)[0]) for d, m in got] == [
        (sender.address, "SIP/2.0"), (dest.address, "INVITE")], lines_of(out)
    assert isinstance(got[0][1], Response) and got[0][1].status == 100
    fwd = got[1][1]
    assert isinstance(fwd, Request)
    return fwd


def only_response(out: list[Datagram], dest: UA | Address) -> Response:
    msg = parse_message(only(out, dest).data)
    assert isinstance(msg, Response)
    return msg


def normalized(data: bytes) -> str:
    """The datagram as text, with the random part of our Via branch masked."""
    return re.sub(r"branch=z9hG4bKr\d+", "branch=z9hG4bK*", data.decode())


def wire(*lines: str, body: bytes = b"") -> str:
    return "\r\n".join(lines) + "\r\n\r\n" + body.decode()


@dataclass(frozen=True)
class Reported:
    """A call event as the worker publishes it."""

    name: str
    params: dict[str, Any]


def transfer_event(callid: str, leg: str, transfer_callid: str, destination: str, state: str,
                   status: str = "") -> Reported:
    return Reported("E_CALL_TRANSFER", {
        "callid": callid, "leg": leg, "transfer_callid": transfer_callid,
        "destination": destination, "state": state, "status": status,
    })


def hold_event(callid: str, leg: str, action: str, state: str) -> Reported:
    return Reported("E_CALL_HOLD", {"callid": callid, "leg": leg, "action": action,
                                    "state": state})


@dataclass
class Call:
    """A dialog `caller` → `callee` through the proxy, and the requests each side sends in it."""

    net: Net
    caller: UA = ALICE
    callee: UA = BOB
    call_id: str = "call-1@alice"
    caller_tag: str = "alice-tag"
    callee_tag: str = "bob-tag"
    caller_sdp: bytes = SDP_A
    callee_sdp: bytes = SDP_B
    to_uri: str | None = None
    cseq: dict[str, int] = field(default_factory=lambda: {"caller": 1, "callee": 0})
    at_callee: Request | None = None

    @property
    def dialog(self) -> Dialog:
        dialog = self.net.proxy.dialogs.by_call_id(self.call_id)
        assert dialog is not None
        return dialog

    def invite(self) -> bytes:
        return request("INVITE", self.callee.contact, self.caller, call_id=self.call_id,
                       from_uri=self.caller.aor, from_tag=self.caller_tag,
                       to_uri=self.to_uri or self.callee.aor, to_tag=None, cseq=1,
                       contact=self.caller.contact, body=self.caller_sdp)

    def send_invite(self) -> Request:
        out = msgs(self.net.send(self.invite(), self.caller))
        assert [(d, m.start_line()) for d, m in out] == [
            (self.caller.address, "SIP/2.0 100 Trying"),
            (self.callee.address, f"INVITE {self.callee.contact} SIP/2.0"),
        ]
        fwd = out[1][1]
        assert isinstance(fwd, Request)
        self.at_callee = fwd
        return fwd

    def ring(self) -> None:
        assert self.at_callee is not None
        only_response(self.net.send(answer(self.at_callee, 180, "Ringing", to_tag=self.callee_tag,
                                           contact=self.callee.contact), self.callee),
                      self.caller)

    def answer(self) -> None:
        assert self.at_callee is not None
        only_response(self.net.send(answer(self.at_callee, 200, "OK", to_tag=self.callee_tag,
                                           contact=self.callee.contact, body=self.callee_sdp),
                                    self.callee), self.caller)

    def ack(self) -> None:
        only_request(self.net.send(self.request("caller", "ACK"), self.caller), self.callee)

    def establish(self) -> Call:
        self.send_invite()
        self.ring()
        self.answer()
        self.ack()
        self.net.events()
        del self.net.proxy.events[:]
        return self

    def request(self, side: str, method: str, *, body: bytes = b"",
                content_type: str = "application/sdp", extra: Iterable[str] = (),
                cseq: int | None = None) -> bytes:
        """An in-dialog request from `side` (`caller`/`callee`) along its route set."""
        if side == "caller":
            sender, receiver = self.caller, self.callee
            from_tag, to_tag = self.caller_tag, self.callee_tag
            from_uri, to_uri = self.caller.aor, self.to_uri or self.callee.aor
        else:
            sender, receiver = self.callee, self.caller
            from_tag, to_tag = self.callee_tag, self.caller_tag
            from_uri, to_uri = self.to_uri or self.callee.aor, self.caller.aor
        if cseq is None:
            if method != "ACK":
                self.cseq[side] += 1
            cseq = self.cseq[side]
        contact = sender.contact if method in ("INVITE", "UPDATE", "NOTIFY", "REFER") else None
        return request(method, receiver.contact, sender, call_id=self.call_id,
                       from_uri=from_uri, from_tag=from_tag, to_uri=to_uri, to_tag=to_tag,
                       cseq=cseq, routes=[OUR_RR], contact=contact, extra=extra, body=body,
                       content_type=content_type)

    def notify(self, side: str, frag: bytes, state: str = "active;expires=60",
               content_type: str = "message/sipfrag;version=2.0") -> bytes:
        """The NOTIFY (Event: refer) a transferee sends toward whoever it thinks REFERred it."""
        return self.request(side, "NOTIFY", body=frag, content_type=content_type,
                            extra=["Event: refer", f"Subscription-State: {state}"])


def established(net: Net, **kw: Any) -> Call:
    return Call(net, **kw).establish()


def new_invite(ruri: str, *, call_id: str = "call-2@alice", to_uri: str | None = None,
               extra: Iterable[str] = (), sender: UA = ALICE) -> bytes:
    """The INVITE the transferee sends to the Refer-To target."""
    return request("INVITE", ruri, sender, call_id=call_id, from_uri=sender.aor,
                   from_tag=f"{sender.name}-new", to_uri=to_uri or ruri, to_tag=None, cseq=1,
                   contact=sender.contact, body=SDP_A, extra=extra)


CAROL_URI = CAROL.contact  # sip:carol@127.0.0.1:5063


def invite_via_p1(call_id: str, cseq: int) -> bytes:
    """Alice's INVITE to Bob as P1, a proxy in front of her, relays it to us: P1's Via on top
    and its Record-Route."""
    inv = request("INVITE", BOB.contact, ALICE, call_id=call_id, from_uri=ALICE.aor,
                  from_tag="alice-tag", to_uri=BOB.aor, to_tag=None, cseq=cseq,
                  contact=ALICE.contact, body=SDP_A)
    return inv.replace(b"Via: SIP/2.0/UDP 127.0.0.1:5061;",
                       b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKp1\r\n"
                       b"Record-Route: " + P1_RR.encode() + b"\r\n"
                       b"Via: SIP/2.0/UDP 127.0.0.1:5061;")


def expect_error(code: int, message: str, fn: Callable[..., object], *args: Any
                 ) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args)
    assert (info.value.status, info.value.reason) == (code, message)
    return info.value


def start_blind(net: Net, call: Call, leg: str = "caller", destination: str = CAROL_URI
                ) -> Request:
    """Transfer `leg` and answer the REFER 202."""
    net.callops.transfer(call.call_id, leg, destination, net.now)
    target = call.caller if leg == "caller" else call.callee
    refer = only_request(net.take(), target)
    assert net.send(answer(refer, 202, "Accepted"), target) == []
    net.events()
    return refer


def reinvites(net: Net, *targets: UA) -> list[Request]:
    """The proxy's re-INVITEs, one per target, in this order."""
    got = msgs(net.take())
    assert [(d, m.start_line()) for d, m in got] == [
        (t.address, f"INVITE {t.contact} SIP/2.0") for t in targets]
    out = []
    for _, m in got:
        assert isinstance(m, Request)
        out.append(m)
    return out


def accept(net: Net, reinvite: Request, ua: UA, body: bytes) -> Request:
    """`ua` answers our re-INVITE 200; the proxy ACKs it itself. Returns the ACK."""
    ack = only_request(net.send(answer(reinvite, 200, "OK", contact=ua.contact, body=body), ua),
                       ua)
    assert ack.method == "ACK"
    return ack

"""Both parties of the calls the bench operates on (hold, transfer), in Python, in asyncio.

One UDP socket on 127.0.0.1 plays every user agent of these calls: the caller (`a`), the
callee (`b`) and, for transfers that are carried out, the transfer target (`c`). The proxy
tells them apart by the Request-URI user (`sip:a@`, `sip:b@`, `sip:c@`), the party by the
Call-ID and its own tag. It places calls through the proxy (INVITE with SDP, ACK of the 200),
answers calls the proxy brings (200 with SDP), answers re-INVITEs (200 with SDP), REFERs (202,
then the NOTIFY that ends the subscription) and BYEs (200).

Every datagram is stamped by the kernel when it arrives (SO_TIMESTAMPNS, the realtime clock),
so the time a REFER or re-INVITE reached this socket does not depend on when Python got round
to reading it: `arrivals` hands those stamps to whoever waits for them (the call-operation
bench compares them with the time it sent the MI command).

Transfers: with `follow_refer` the REFERed party makes the new call to the Refer-To target
through the proxy (which links it to the old call), ACKs its 200 and only then NOTIFYs
"200 OK" — a whole blind transfer, after which the proxy ends the old call; without it, the
party NOTIFYs "200 OK" straight away and the old call stays up (no new call is made), which
is enough to time the REFER and keeps the set of calls fixed.

Not a general user agent: no retransmissions (loopback does not lose datagrams unless a
socket buffer overflows), no authentication, UDP only.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: SO_TIMESTAMPNS(_OLD) = 35
BUFFER = 4 * 1024 * 1024

SDP = (
    "v=0\r\no={user} {sess} {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
            "l": "content-length", "c": "content-type", "r": "refer-to", "e": "content-encoding",
            "k": "supported", "o": "event"}
_MULTI = {"via", "record-route", "route", "contact"}


# --- parsing (pure) -------------------------------------------------------------------------


@dataclass(slots=True)
class Msg:
    """A SIP message as the party needs it: first line, headers in order, body."""

    method: str | None  # a request's method, None for a response
    uri: str
    status: int
    headers: list[tuple[str, str]]  # (lower-case full name, value), one per value
    body: bytes

    def get(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("cseq") or "0 ?").partition(" ")
        return int(num), method.strip()


def split_commas(value: str) -> list[str]:
    """A header value split at the commas that separate values (not inside <> or quotes)."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif ch == "," and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse(data: bytes) -> Msg:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    first = lines[0].split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        name = _COMPACT.get(name, name)
        value = value.strip()
        if name in _MULTI:
            headers.extend((name, v) for v in split_commas(value))
        else:
            headers.append((name, value))
    if first[0] == "SIP/2.0":
        return Msg(None, "", int(first[1]), headers, body)
    return Msg(first[0], first[1], 0, headers, body)


def uri_of(name_addr: str) -> str:
    """The URI of a name-addr (`"x" <sip:a@b>;tag=1` → `sip:a@b`) or of a bare addr-spec."""
    m = re.search(r"<([^>]*)>", name_addr)
    if m:
        return m.group(1)
    return name_addr.split(";", 1)[0].strip()


def tag_of(value: str) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", value.split(">")[-1] if ">" in value else value)
    return m.group(1) if m else ""


def user_of(uri: str) -> str:
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    return rest.split("@", 1)[0] if "@" in rest else ""


def sipfrag_ok(status: int = 200) -> bytes:
    return f"SIP/2.0 {status} {'OK' if status == 200 else 'Trying'}\r\n".encode()


# --- the party ----------------------------------------------------------------------------


@dataclass(slots=True)
class Leg:
    """One user agent's side of one dialog."""

    call_id: str
    role: str  # a, b or c: the user part of our URI
    local_tag: str
    local: str  # our From/To value without the tag
    remote: str = ""  # the other side's value, with its tag
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    cseq: int = 0
    state: str = "calling"  # calling, confirmed, ended, failed
    sdp_version: int = 1
    invite_branch: str = ""
    refer_from: tuple[str, str] | None = None  # (call_id, local_tag) of the REFERed leg


Arrival = Callable[[str, str, int], None]
"""(method, Call-ID, arrival time in ns of the realtime clock)"""


class Party:
    def __init__(self, proxy: tuple[str, int], *, follow_refer: bool = False,
                 on_arrival: Arrival | None = None) -> None:
        self.proxy = proxy
        self.follow_refer = follow_refer
        self.on_arrival = on_arrival
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.kernel_stamps = True
        except OSError:
            self.kernel_stamps = False
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.legs: dict[tuple[str, str], Leg] = {}  # (call_id, local_tag)
        self.ids = itertools.count(1)
        self.prefix = uuid.uuid4().hex[:6]
        self.counts: dict[str, int] = {}
        self.confirmed: dict[str, asyncio.Future[bool]] = {}  # call_id -> placed call up
        self.transfers_done = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- sending ------------------------------------------------------------------------

    def _send(self, text: str, body: bytes = b"") -> None:
        data = text.encode() + body
        try:
            self.sock.sendto(data, self.proxy)
        except BlockingIOError:
            self._count("send_dropped")

    def _tag(self) -> str:
        return f"{self.prefix}{next(self.ids):x}"

    def _branch(self) -> str:
        return f"z9hG4bK-p{self.prefix}{next(self.ids):x}"

    def _contact(self, role: str) -> str:
        return f"<sip:{role}@{self.host}>"

    def _sdp(self, leg: Leg) -> bytes:
        leg.sdp_version += 1
        return SDP.format(user=leg.role, sess=abs(hash(leg.call_id)) % 10**9,
                          version=leg.sdp_version, port=6000 + self.port % 1000).encode()

    def place_call(self, to_role: str = "b", from_role: str = "a", uri: str | None = None,
                   refer_from: tuple[str, str] | None = None) -> str:
        """INVITE sip:<to_role>@us (or `uri`) through the proxy; returns the Call-ID."""
        call_id = f"{self.prefix}-{next(self.ids)}@bench-party"
        tag = self._tag()
        target = uri or f"sip:{to_role}@{self.host}"
        leg = Leg(call_id, from_role, tag, f"<sip:{from_role}@{self.host}>", cseq=1,
                  invite_branch=self._branch(), refer_from=refer_from)
        leg.remote = f"<{target.split(';', 1)[0]}>" if uri else f"<sip:{to_role}@{self.host}>"
        self.legs[(call_id, tag)] = leg
        if self._loop is not None:
            self.confirmed[call_id] = self._loop.create_future()
        body = self._sdp(leg)
        self._send(
            f"INVITE {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host};branch={leg.invite_branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {leg.local};tag={tag}\r\nTo: {leg.remote}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: {self._contact(from_role)}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n", body)
        self._count("invite_sent")
        return call_id

    def _in_dialog(self, leg: Leg, method: str, extra: str = "", body: bytes = b"",
                   cseq: int | None = None, branch: str | None = None) -> None:
        if cseq is None:
            leg.cseq += 1
            cseq = leg.cseq
        routes = "".join(f"Route: {r}\r\n" for r in leg.route_set)
        self._send(
            f"{method} {leg.remote_target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host};branch={branch or self._branch()};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {leg.local};tag={leg.local_tag}\r\nTo: {leg.remote}\r\n"
            f"Call-ID: {leg.call_id}\r\nCSeq: {cseq} {method}\r\n{routes}"
            f"Contact: {self._contact(leg.role)}\r\n{extra}Content-Length: {len(body)}\r\n\r\n",
            body)

    def hang_up(self, call_id: str) -> bool:
        """BYE from the caller side of a call we placed (whichever leg of ours is up)."""
        for leg in list(self.legs.values()):
            if leg.call_id == call_id and leg.state == "confirmed":
                self._in_dialog(leg, "BYE")
                leg.state = "ended"
                self._count("bye_sent")
                return True
        return False

    def _reply(self, req: Msg, status: int, reason: str, to_tag: str | None = None,
               extra: str = "", body: bytes = b"", content_type: str = "") -> None:
        vias = "".join(f"Via: {v}\r\n" for v in req.all("via"))
        rrs = "".join(f"Record-Route: {r}\r\n" for r in req.all("record-route"))
        to = req.get("to") or ""
        if to_tag and not tag_of(to):
            to = f"{to};tag={to_tag}"
        ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
        self._send(
            f"SIP/2.0 {status} {reason}\r\n{vias}From: {req.get('from')}\r\nTo: {to}\r\n"
            f"Call-ID: {req.call_id}\r\nCSeq: {req.get('cseq')}\r\n"
            f"{rrs if req.method == 'INVITE' else ''}{extra}{ctype}"
            f"Content-Length: {len(body)}\r\n\r\n", body)

    # -- receiving ---------------------------------------------------------------------

    def _readable(self) -> None:
        for _ in range(256):  # bounded: give the loop back now and then
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65535, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    stamp = sec * 1_000_000_000 + nsec
            if not stamp:
                stamp = time.time_ns()
            try:
                self._handle(parse(data), stamp)
            except Exception:  # a message we cannot make sense of: count it, go on
                self._count("unparsed")

    def _handle(self, msg: Msg, stamp: int) -> None:
        if msg.method is None:
            self._on_response(msg)
        else:
            self._on_request(msg, stamp)

    def _leg_for(self, msg: Msg, ours: str) -> Leg | None:
        return self.legs.get((msg.call_id, tag_of(ours)))

    def _on_response(self, resp: Msg) -> None:
        num, method = resp.cseq
        leg = self._leg_for(resp, resp.get("from") or "")
        self._count(f"{resp.status // 100}xx_{method}")
        if leg is None or method != "INVITE" or resp.status < 200:
            return
        if resp.status >= 300:
            # ACK a failed INVITE (same branch, R-URI as the INVITE's; through the proxy).
            self._send(
                f"ACK {uri_of(leg.remote)} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.host};branch={leg.invite_branch};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: {leg.local};tag={leg.local_tag}\r\n"
                f"To: {resp.get('to')}\r\nCall-ID: {leg.call_id}\r\nCSeq: {num} ACK\r\n"
                "Content-Length: 0\r\n\r\n")
            leg.state = "failed"
            self._settle(leg.call_id, False)
            return
        if leg.state == "calling":
            leg.remote = resp.get("to") or leg.remote
            leg.route_set = list(reversed(resp.all("record-route")))
            contact = resp.get("contact")
            leg.remote_target = uri_of(contact) if contact else uri_of(leg.remote)
            leg.state = "confirmed"
        self._in_dialog(leg, "ACK", cseq=num)
        self._settle(leg.call_id, True)
        if leg.refer_from is not None:
            # The new call of a transfer is up: tell the transferor (NOTIFY 200, terminated).
            old = self.legs.get(leg.refer_from)
            leg.refer_from = None
            if old is not None and old.state == "confirmed":
                self._notify(old, 200)
                self.transfers_done += 1

    def _settle(self, call_id: str, ok: bool) -> None:
        fut = self.confirmed.get(call_id)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    def _notify(self, leg: Leg, status: int) -> None:
        body = sipfrag_ok(status)
        state = "terminated;reason=noresource" if status >= 200 else "active;expires=60"
        self._in_dialog(leg, "NOTIFY", f"Event: refer\r\nSubscription-State: {state}\r\n"
                        "Content-Type: message/sipfrag;version=2.0\r\n", body)
        self._count("notify_sent")

    def _on_request(self, req: Msg, stamp: int) -> None:
        method = req.method or ""
        self._count(f"rcv_{method}")
        to = req.get("to") or ""
        if method == "ACK":
            return
        if method == "INVITE" and not tag_of(to):
            self._new_call(req)
            return
        leg = self._leg_for(req, to)
        if leg is None:
            self._reply(req, 481, "Call/Transaction Does Not Exist")
            return
        if self.on_arrival is not None and method in ("INVITE", "REFER"):
            self.on_arrival(method, req.call_id, stamp)
        if method == "INVITE":
            contact = req.get("contact")
            if contact:
                leg.remote_target = uri_of(contact)
            body = self._sdp(leg)
            self._reply(req, 200, "OK", extra=f"Contact: {self._contact(leg.role)}\r\n",
                        body=body, content_type="application/sdp")
        elif method == "REFER":
            self._reply(req, 202, "Accepted", extra=f"Contact: {self._contact(leg.role)}\r\n")
            refer_to = uri_of(req.get("refer-to") or "")
            if self.follow_refer and refer_to:
                self._notify(leg, 100)
                self.place_call(uri=refer_to, from_role=leg.role,
                                refer_from=(leg.call_id, leg.local_tag))
            else:
                self._notify(leg, 200)
        elif method == "BYE":
            leg.state = "ended"
            self._reply(req, 200, "OK")
        else:
            self._reply(req, 200, "OK")

    def _new_call(self, req: Msg) -> None:
        role = user_of(uri_of(req.uri)) or "b"
        tag = self._tag()
        contact = req.get("contact")
        leg = Leg(req.call_id, role, tag, req.get("to") or f"<sip:{role}@{self.host}>",
                  remote=req.get("from") or "",
                  remote_target=uri_of(contact) if contact else "",
                  route_set=list(req.all("record-route")), cseq=100, state="confirmed")
        self.legs[(req.call_id, tag)] = leg
        body = self._sdp(leg)
        self._reply(req, 200, "OK", to_tag=tag,
                    extra=f"Contact: {self._contact(role)}\r\n", body=body,
                    content_type="application/sdp")

    # -- views ----------------------------------------------------------------------------

    def up_calls(self, role: str = "a") -> list[str]:
        """Call-IDs of calls up whose `role` leg is ours and confirmed."""
        return [leg.call_id for leg in self.legs.values()
                if leg.role == role and leg.state == "confirmed"]

    def forget_ended(self) -> None:
        for key, leg in list(self.legs.items()):
            if leg.state in ("ended", "failed"):
                del self.legs[key]
                self.confirmed.pop(leg.call_id, None)

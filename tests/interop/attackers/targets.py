"""What the attacks in test_attacks.py aim at, and the probes that check what got through.

`Phone` is alice's phone: a UDP user agent on 127.0.0.1 that registers with digest
credentials (SHA-256 or MD5, qop=auth, as the registrar offers), answers every request it is
sent with 200 and records them, so any attack request that reaches it shows. `Catcher` stands
for a host outside our network (a premium-rate carrier, say): a UDP socket on another
loopback address that records what it receives and never answers. `probe` sends one request
from a chosen loopback address and collects the answers. These are our own fakes, never the
attackers: the attacks themselves are made with SIPVicious, sipsak and SIPp.

Everything stays on 127.0.0.0/8; ports are picked by the kernel.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.support.udp import DatagramReader

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
            "l": "content-length", "c": "content-type", "k": "supported"}
_AUTH_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


@dataclass
class SipMessage:
    """One received SIP message, split just enough for the checks."""

    first_line: str
    headers: list[tuple[str, str]]  # (lower-case full name, value), in wire order
    body: bytes
    raw: bytes
    source: tuple[str, int]
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int]) -> SipMessage:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((_COMPACT.get(name, name), value.strip()))
        return cls(lines[0], headers, body, data, source)

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ", 2)[1]) if self.is_response else 0

    @property
    def method(self) -> str:
        if self.is_response:
            return self.get("cseq").split()[-1]
        return self.first_line.split(" ", 1)[0]

    @property
    def uri(self) -> str:
        return self.first_line.split(" ")[1]

    def get(self, name: str) -> str:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), "")

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    @property
    def header_names(self) -> list[str]:
        return [n for n, _ in self.headers]


def auth_params(value: str) -> dict[str, str]:
    """`Digest realm="r", nonce="n", ...` → {"realm": "r", "nonce": "n", ...}."""
    _, _, rest = value.partition(" ")
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _AUTH_PARAM.finditer(rest)}


_HASHES = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


def digest_authorization(challenges: Sequence[str], user: str, password: str, method: str,
                         uri: str) -> str:
    """The Authorization value answering the first challenge whose algorithm we know
    (RFC 7616 §3.4 / RFC 8760, qop=auth with nc=1, or the RFC 2069 form without qop)."""
    for challenge in challenges:
        params = auth_params(challenge)
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm in _HASHES:
            break
    else:
        raise AssertionError(f"no digest challenge we can answer in {challenges!r}")

    def h(text: str) -> str:
        return _HASHES[algorithm](text.encode()).hexdigest()

    realm, nonce = params["realm"], params["nonce"]
    ha1 = h(f"{user}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    value = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
             f"algorithm={algorithm}")
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce, nc = secrets.token_hex(8), "00000001"
        response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        value += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = h(f"{ha1}:{nonce}:{ha2}")
    value += f', response="{response}"'
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


class _UdpPeer(DatagramReader):
    """A UDP socket with a reader thread that records every message it receives."""

    def __init__(self, host: str, name: str) -> None:
        self.name = name
        self.received: list[SipMessage] = []
        self._cond = threading.Condition()
        super().__init__(host, name)

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            msg = SipMessage.parse(data, source)
        except (ValueError, IndexError):
            msg = SipMessage("<unparsable>", [], b"", data, source)
        # Recorded before it is answered: once the answer has gone back through the proxy,
        # a test that reads what this peer got must find it.
        with self._cond:
            self.received.append(msg)
            self._cond.notify_all()
        self.on_message(msg)

    def on_message(self, msg: SipMessage) -> None:
        """Called for each message once it is recorded (a phone answers it here)."""

    def wait_for(self, ok: object, timeout: float) -> SipMessage | None:
        """The first recorded message (from `start` on) for which `ok(msg)` is true."""
        assert callable(ok)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.received:
                    if ok(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def requests(self, method: str | None = None) -> list[SipMessage]:
        with self._cond:
            return [m for m in self.received
                    if not m.is_response and (method is None or m.method == method)]

    def describe(self) -> str:
        with self._cond:
            got = list(self.received)
        lines = [f"{self.name} on {self.address[0]}:{self.address[1]}: {len(got)} messages"]
        lines += [f"  from {m.source}: {m.raw[:600]!r}" for m in got[:6]]
        if len(got) > 6:
            lines.append(f"  ... and {len(got) - 6} more: "
                         + ", ".join(m.first_line for m in got[6:20]))
        return "\n".join(lines)


class Catcher(_UdpPeer):
    """An outside host: records everything it is sent, answers nothing."""

    def __init__(self, host: str = "127.0.0.99") -> None:
        super().__init__(host, "catcher")

    @property
    def uri_host(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class Phone(_UdpPeer):
    """A registered user's phone: answers every request 200 (an INVITE with SDP and a To
    tag) and records it. Registers itself through `proxy` with digest credentials."""

    def __init__(self, user: str, password: str, proxy: tuple[str, int],
                 host: str = "127.0.0.1") -> None:
        self.user = user
        self.password = password
        self.proxy = proxy
        self._answers: dict[tuple[str, str], bytes] = {}
        super().__init__(host, f"phone-{user}")
        self.contact = f"sip:{user}@{self.address[0]}:{self.address[1]}"
        self.authorization = ""  # the last Authorization header this phone sent

    def on_message(self, msg: SipMessage) -> None:
        if msg.is_response or msg.method == "ACK":
            return
        key = (msg.get("call-id"), msg.get("cseq"))
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._answer(msg)
        self.sock.sendto(answer, msg.source)

    def _answer(self, req: SipMessage) -> bytes:
        lines = ["SIP/2.0 200 OK"]
        lines += [f"Via: {v}" for v in req.all("via")]
        lines += [f"Record-Route: {v}" for v in req.all("record-route")]
        to = req.get("to")
        if ";tag=" not in to:
            to += f";tag={secrets.token_hex(6)}"
        lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}",
                  f"CSeq: {req.get('cseq')}", f"Contact: <{self.contact}>"]
        body = b""
        if req.method == "INVITE":
            ip, port = self.address
            body = (f"v=0\r\no=alice 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
                    f"m=audio {port + 2} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def register(self, expires: int = 3600, timeout: float = 5.0) -> SipMessage:
        """REGISTER with credentials; returns the final answer (asserts a 200)."""
        host, port = self.proxy
        uri = f"sip:{host}:{port}"
        call_id = f"reg-{secrets.token_hex(6)}@{self.address[0]}"
        tag = secrets.token_hex(4)
        authorization = ""
        answer: SipMessage | None = None
        for cseq in (1, 2):
            branch = f"z9hG4bK-reg-{secrets.token_hex(6)}"
            lines = [
                f"REGISTER {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP {self.address[0]}:{self.address[1]};branch={branch};rport",
                "Max-Forwards: 70",
                f"From: <sip:{self.user}@{host}:{port}>;tag={tag}",
                f"To: <sip:{self.user}@{host}:{port}>",
                f"Call-ID: {call_id}",
                f"CSeq: {cseq} REGISTER",
                f"Contact: <{self.contact}>",
                f"Expires: {expires}",
            ]
            if authorization:
                lines.append(f"Authorization: {authorization}")
            lines.append("Content-Length: 0")
            self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), self.proxy)
            answer = self.wait_for(
                lambda m, b=branch: m.is_response and m.status >= 200 and branch_of(m) == b,
                timeout)
            assert answer is not None, f"{self.name}: no answer to REGISTER ({self.describe()})"
            if answer.status != 401 or authorization:
                break
            authorization = digest_authorization(
                answer.all("www-authenticate"), self.user, self.password, "REGISTER", uri)
            self.authorization = authorization
        assert answer is not None and answer.status == 200, (
            f"{self.name}: REGISTER answered {answer.first_line if answer else None!r}\n"
            f"{answer.raw.decode(errors='replace') if answer else ''}")
        return answer


class Caller(Phone):
    """A UA that places one call through the proxy (INVITE, ACK; BYE when told) and, like a
    phone, answers 200 to whatever the other side sends it."""

    def __init__(self, proxy: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__("carol", "", proxy, host)
        self.call_id = ""
        self.from_tag = ""
        self.to_tag = ""
        self.target = ""
        self.remote_target = ""
        self.route_set: list[str] = []
        self._cseq = 0

    def _send(self, method: str, uri: str, to_tag: str = "", body: bytes = b"") -> str:
        self._cseq += 0 if method == "ACK" else 1
        branch = f"z9hG4bK-{method.lower()}-{secrets.token_hex(6)}"
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.address[0]}:{self.address[1]};branch={branch};rport"]
        lines += [f"Route: {r}" for r in self.route_set]
        lines += ["Max-Forwards: 70", f"From: <{self.contact}>;tag={self.from_tag}",
                  f"To: <{self.target}>" + (f";tag={to_tag}" if to_tag else ""),
                  f"Call-ID: {self.call_id}", f"CSeq: {self._cseq} {method}",
                  f"Contact: <{self.contact}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, self.proxy)
        return branch

    def _final(self, branch: str, timeout: float) -> SipMessage:
        answer = self.wait_for(
            lambda m: m.is_response and m.status >= 200 and branch_of(m) == branch, timeout)
        assert answer is not None, f"{self.name}: no final answer\n{self.describe()}"
        return answer

    def call(self, target: str, timeout: float = 5.0) -> SipMessage:
        """INVITE `target`, ACK its 200; returns the 200 (asserted)."""
        self.call_id = f"call-{secrets.token_hex(6)}@{self.address[0]}"
        self.from_tag = secrets.token_hex(4)
        self.target = target
        ip = self.address[0]
        sdp = (f"v=0\r\no=carol 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
               "m=audio 4002 RTP/AVP 0\r\n").encode()
        ok = self._final(self._send("INVITE", target, body=sdp), timeout)
        assert ok.status == 200, f"the call to {target} was answered {ok.first_line!r}"
        match = re.search(r";\s*tag=([^;>\s]+)", ok.get("to"))
        self.to_tag = match.group(1) if match else ""
        self.remote_target = ok.get("contact").strip("<>")
        self.route_set = list(reversed(ok.all("record-route")))  # RFC 3261 §12.1.2
        self._send("ACK", self.remote_target, self.to_tag)  # the INVITE's CSeq number
        return ok

    def hang_up(self, timeout: float = 5.0) -> SipMessage:
        return self._final(self._send("BYE", self.remote_target, self.to_tag), timeout)


def branch_of(msg: SipMessage) -> str:
    via = msg.get("via")
    m = re.search(r";\s*branch=([^;,\s]+)", via)
    return m.group(1) if m else ""


def probe(source_host: str, destination: tuple[str, int], request: bytes,
          timeout: float = 2.0, final_only: bool = True) -> list[SipMessage]:
    """Send `request` once from `source_host` (a loopback address) and return what comes
    back within `timeout` seconds: every answer, or only up to the first final one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source_host, 0))
        sock.sendto(request.replace(b"LOCAL_PORT", str(sock.getsockname()[1]).encode()),
                    destination)
        answers: list[SipMessage] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                break
            msg = SipMessage.parse(data, source)
            answers.append(msg)
            if final_only and msg.is_response and msg.status >= 200:
                break
        return answers


def build_request(method: str, uri: str, headers: Iterable[tuple[str, str]],
                  body: bytes = b"") -> bytes:
    """A request without a Via (sipsak puts its own on top), Content-Length computed."""
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

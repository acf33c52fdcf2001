"""Header names and the structured header values a proxy reads (Via, CSeq).

Owns the compact-form table (RFC 3261 §7.3.3 and later RFCs), the canonical spelling used
when we print a header, and the value types for Via and CSeq. Address headers live in
`uri.py` (`NameAddr`).
"""

from __future__ import annotations

import re

from .errors import ParseError
from .uri import Params, _parse_params, _split_hostport, format_params

# Compact forms → the lower-case long name we key headers by.
COMPACT: dict[str, str] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "s": "subject",
    "r": "refer-to",
    "b": "referred-by",
    "o": "event",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

_CANONICAL: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}


def header_key(name: str) -> str:
    """The lookup key of a header name as written: lower case, compact forms expanded."""
    key = name.lower()
    return COMPACT.get(key, key) if len(key) == 1 else key


def canonical_name(key: str) -> str:
    """How we print a header we add: `call-id` → `Call-ID`, `max-forwards` → `Max-Forwards`."""
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(p.capitalize() for p in key.split("-"))
    return name


# Written out, not `@dataclass`: see `uri.SipUri` (the generated methods run interpreted).


class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`."""

    __slots__ = ("host", "params", "port", "transport")

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: Params | None = None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params: Params = {} if params is None else params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport == other.transport and self.host == other.host
                and self.port == other.port and self.params == other.params)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (f"Via(transport={self.transport!r}, host={self.host!r}, port={self.port!r}, "
                f"params={self.params!r})")

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host.lower(), self.port

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hostport}{format_params(self.params)}"


# RFC 3261 §25.1 `token`: methods, and each part of a Via sent-protocol.
TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")

# sent-protocol with white space around the slashes: SLASH = SWS "/" SWS (RFC 3261 §25.1),
# as in RFC 4475 §3.1.1.1 `SIP  /   2.0 /UDP`. Only tried when the plain split fails.
_SENT_PROTOCOL_LWS = re.compile(
    r"[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]+(.*)\Z", re.S
)


def parse_via(text: str) -> Via:
    proto, sep, rest = text.strip().partition(" ")
    if not sep:
        # tolerate `SIP/2.0/UDP\thost`
        proto, sep, rest = text.strip().partition("\t")
    parts = [p.strip(" \t") for p in proto.split("/")]
    if len(parts) != 3:
        m = _SENT_PROTOCOL_LWS.match(text)
        if m is not None:
            parts, sep, rest = [m[1], m[2], m[3]], " ", m[4]
    if (
        not sep
        or len(parts) != 3
        or parts[0].upper() != "SIP"
        or not all(TOKEN.match(part) for part in parts[1:])
    ):
        raise ParseError(f"bad Via {text!r}")
    hostport, _, params_text = rest.strip().partition(";")
    host, port = _split_hostport(hostport.strip())
    return Via(parts[2].upper(), host, port, _parse_params(params_text, "Via"))


class CSeq:
    """`number method`. Not changed once made."""

    __slots__ = ("method", "number")

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))

    def __repr__(self) -> str:
        return f"CSeq(number={self.number!r}, method={self.method!r})"

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    if "\t" in text:  # LWS between number and method may be a tab (RFC 3261 §20.16)
        text = text.replace("\t", " ")
    num, _, method = text.strip().partition(" ")
    method = method.strip()
    if not num.isascii() or not num.isdigit() or len(num) > 10 or not method or " " in method:
        raise ParseError(f"bad CSeq {text!r}")
    number = int(num)
    if number >= 2**31:
        raise ParseError(f"CSeq number out of range {text!r}")
    return CSeq(number, method)

"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1).

Owns parsing and printing of `sip:`/`sips:` URIs (user, password, host including IPv6
references, port, `;params`, `?headers`), of other absolute URIs (kept opaque), and of the
`name-addr / addr-spec` form used by From, To, Contact, Route, Record-Route and Refer-To.
Knows nothing about messages or transports.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ParseError
from .memo import remember

Params = dict[str, str | None]

# Characters that cannot stand unescaped where we look for them (one regex search instead of
# a Python loop per character: URIs are parsed several times per message).
# A host is a hostname, an IPv4 address or an IPv6 reference (RFC 3261 §25.1): never a
# control character (a CR kept in a Via host came back out inside the header line we print).
_BAD_HOST = re.compile(r'[\x00-\x20\x7f<>"]')
_BAD_OPAQUE = re.compile(r"[ \t\r\n<>]")
_BAD_SIP = re.compile(r'[ \t\r\n<>"]')


def _parse_params(text: str, what: str) -> Params:
    """`;a=1;b;c=2` (without the leading `;`) → ordered dict; flag params map to None."""
    params: Params = {}
    if not text:
        return params
    for item in text.split(";"):
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:
            raise ParseError(f"empty parameter name in {what}")
        params[name] = value.strip() if eq else None
    return params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# `host[:port]` texts already split: a proxy sees the same few hosts (its own, its peers') in
# every message's Via, Route and URIs, and a lookup costs a tenth of a split. Bounded, since
# the texts come off the wire; only valid ones are kept.
_HOSTPORTS: dict[str, tuple[str, int | None]] = {}
HOSTPORTS_KEPT: Final = 4096


def _split_hostport(text: str) -> tuple[str, int | None]:
    known = _HOSTPORTS.get(text)
    if known is None:
        known = remember(_HOSTPORTS, text, _parse_hostport(text), HOSTPORTS_KEPT)
    return known


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError(f"bad host:port {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = ""
        if ":" in port_text:
            raise ParseError(f"bad host:port {text!r}")
    if not host or _BAD_HOST.search(host):
        raise ParseError(f"bad host in {text!r}")
    if not port_text:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ParseError(f"bad port in {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ParseError(f"bad port in {text!r}")
    return host, port


# The value classes here are written out rather than made with `@dataclass`: mypyc compiles a
# class's own methods, but the `__init__`, `__eq__` and `__repr__` that `@dataclass` writes at
# import time run interpreted. Building a SipUri that way cost ~3,900 instructions; several
# URIs are built per message (bench/README.md, "CPU levers").


class SipUri:
    """A `sip:` or `sips:` URI. `headers` is the raw text after `?` (kept escaped)."""

    __slots__ = ("headers", "host", "params", "password", "port", "scheme", "user")

    def __init__(self, host: str, user: str | None = None, password: str | None = None,
                 port: int | None = None, params: Params | None = None,
                 headers: str | None = None, scheme: str = "sip") -> None:
        self.host = host
        self.user = user
        self.password = password
        self.port = port
        self.params: Params = {} if params is None else params
        self.headers = headers
        self.scheme = scheme

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return (self.host == other.host and self.user == other.user
                and self.password == other.password and self.port == other.port
                and self.params == other.params and self.headers == other.headers
                and self.scheme == other.scheme)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (f"SipUri(host={self.host!r}, user={self.user!r}, password={self.password!r}, "
                f"port={self.port!r}, params={self.params!r}, headers={self.headers!r}, "
                f"scheme={self.scheme!r})")

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        if self.params:
            out.append(format_params(self.params))
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        return value.lower() if value else ("tls" if self.scheme == "sips" else "udp")

    def has_param(self, name: str) -> bool:
        lname = name.lower()
        return any(k.lower() == lname for k in self.params)

    def copy(self) -> SipUri:
        return SipUri(
            self.host, self.user, self.password, self.port, dict(self.params), self.headers,
            self.scheme,
        )


class AbsoluteUri:
    """Any non-SIP URI (`tel:`, `urn:`, `http:` ...), kept as written. Not changed once made."""

    __slots__ = ("rest", "scheme")

    def __init__(self, scheme: str, rest: str) -> None:
        self.scheme = scheme
        self.rest = rest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteUri):
            return NotImplemented
        return self.scheme == other.scheme and self.rest == other.rest

    def __hash__(self) -> int:
        return hash((self.scheme, self.rest))

    def __repr__(self) -> str:
        return f"AbsoluteUri(scheme={self.scheme!r}, rest={self.rest!r})"

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | AbsoluteUri

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def parse_uri(text: str) -> Uri:
    """Parse an absolute URI; `sip`/`sips` in full, anything else opaquely."""
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise ParseError(f"bad URI {text!r}")
    lscheme = scheme.lower()
    if lscheme != "sip" and lscheme != "sips":
        # Any other scheme: checked character by character (`sip`, `sips` need no check).
        if not scheme or not scheme[0].isalpha() or not set(scheme) <= _SCHEME_CHARS:
            raise ParseError(f"bad URI {text!r}")
        if not rest or _BAD_OPAQUE.search(rest):
            raise ParseError(f"bad URI {text!r}")
        return AbsoluteUri(lscheme, rest)
    if _BAD_SIP.search(rest):
        raise ParseError(f"bad SIP URI {text!r}")
    rest, qmark, headers = rest.partition("?")
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            raise ParseError(f"empty user in {text!r}")
    hostport, _, params_text = rest.partition(";")
    host, port = _split_hostport(hostport)
    return SipUri(
        host=host,
        user=user,
        password=password,
        port=port,
        params=_parse_params(params_text, "URI"),
        headers=headers if qmark else None,
        scheme=lscheme,
    )


def parse_sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise ParseError(f"not a SIP URI: {text!r}", 416, "Unsupported URI Scheme")
    return uri


class NameAddr:
    """`"Display" <uri>;params` or a bare `uri;params`, or `*` (RFC 3261 §10.2.2)."""

    __slots__ = ("display", "params", "uri")

    def __init__(self, uri: Uri | None, display: str | None = None,
                 params: Params | None = None) -> None:
        self.uri = uri  # None only for the wildcard Contact `*`
        self.display = display  # as written, quotes included
        self.params: Params = {} if params is None else params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.uri == other.uri and self.display == other.display
                and self.params == other.params)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"NameAddr(uri={self.uri!r}, display={self.display!r}, params={self.params!r})"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def is_wildcard(self) -> bool:
        return self.uri is None

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise ParseError(f"not a SIP URI: {self.uri}", 416, "Unsupported URI Scheme")
        return self.uri

    def __str__(self) -> str:
        if self.uri is None:
            return "*"
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + format_params(self.params) if self.params else head


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    if text == "*":
        return NameAddr(None)
    if not text:
        raise ParseError("empty address")
    display: str | None = None
    if text[0] == '"':
        end = _closing_quote(text, 0)
        display = text[: end + 1]
        rest = text[end + 1 :].lstrip()
        if not rest.startswith("<"):
            raise ParseError(f"display name without <uri> in {text!r}")
    else:
        lt = text.find("<")
        if lt > 0:
            display = text[:lt].strip() or None
        rest = text[lt:] if lt >= 0 else text
    if rest.startswith("<"):
        gt = rest.find(">")
        if gt < 0:
            raise ParseError(f"unterminated <uri> in {text!r}")
        uri = parse_uri(rest[1:gt].strip())
        tail = rest[gt + 1 :].strip()
        if tail and not tail.startswith(";"):
            raise ParseError(f"junk after <uri> in {text!r}")
        return NameAddr(uri, display, _parse_params(tail[1:], "header"))
    # addr-spec: everything after the first `;` belongs to the header (RFC 3261 §20).
    uri_text, _, params_text = rest.partition(";")
    return NameAddr(parse_uri(uri_text.strip()), None, _parse_params(params_text, "header"))


def _closing_quote(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    raise ParseError(f"unterminated quoted string in {text!r}")


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, honouring quotes and `<...>` (RFC 3261 §7.3.1)."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    if quoted:
        raise ParseError(f"unterminated quoted string in {value!r}")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out

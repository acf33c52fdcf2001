"""SIP messages: parsing, lazy typed header access, and serialization (RFC 3261 §7, §20).

A message keeps its header lines as `(key, name, value)` triples in wire order: `key` is the
lower-case long form used for lookups (compact forms expanded), `name` is the spelling we print,
`value` the unfolded text. Nothing is parsed beyond that until it is asked for; structured
values (Via, CSeq, From/To, Contact, Route...) are parsed on first access and cached until the
header changes. Bytes are decoded as UTF-8 with `surrogateescape`, so a message with invalid
UTF-8 is neither rejected nor altered when relayed.

Knows nothing about sockets, transactions or dialogs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from .errors import ParseError
from .headers import TOKEN, CSeq, Via, canonical_name, header_key, parse_cseq, parse_via
from .memo import remember
from .uri import NameAddr, SipUri, Uri, parse_name_addr, parse_uri, split_header_values

MAX_MESSAGE_SIZE: Final = 65535
MAX_HEADERS: Final = 256
SIP_VERSION: Final = "SIP/2.0"

# Headers that may carry several comma-separated values on one line (RFC 3261 §7.3.1) and
# that a proxy reads value by value.
# Header name as written -> (lookup key, the name itself): one string object per name
# seen, shared by every message that writes it so (thousands of transactions keep their
# messages for 32 s).
_KEYS: dict[str, tuple[str, str]] = {}
_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.I)
_BRANCH = re.compile(r";\s*branch\s*=\s*([^;,\s]+)")  # as `Via.branch`: lower case

REASONS: Final[dict[int, str]] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

Header = tuple[str, str, str]

_SHARED = frozenset(("call-id", "cseq", "from", "to", "from#tag", "to#tag", "@ruri", "@ruri-text"))


# The keys of what a header's value is cached as besides itself (`addresses`, `_tag`), by
# header key: made once, not per call.
_DERIVED: dict[str, tuple[str, str]] = {
    key: (key + "#addr", key + "#tag")
    for key in ("via", "from", "to", "contact", "route", "record-route", "path")
}


def _derived(key: str) -> tuple[str, str]:
    """`_DERIVED[key]`, made and kept the first time (header names come off the wire)."""
    derived = _DERIVED.get(key)
    if derived is None:
        derived = remember(_DERIVED, key, (key + "#addr", key + "#tag"), 4096)
    return derived


class Message:
    """Common part of requests and responses."""

    __slots__ = ("_cache", "body", "headers")

    def __init__(self, headers: list[Header], body: bytes = b"") -> None:
        self.headers = headers
        self.body = body
        self._cache: dict[str, Any] = {}

    # -- raw access ---------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """Value of the first header line with this key (lower-case long form)."""
        for k, _, v in self.headers:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        return [v for k, _, v in self.headers if k == key]

    def values(self, key: str) -> list[str]:
        """All comma-separated values of a multi-value header, across lines, in order."""
        out: list[str] = []
        for k, _, v in self.headers:
            if k == key:
                out.extend(split_header_values(v))
        return out

    def has(self, key: str) -> bool:
        return any(k == key for k, _, _ in self.headers)

    def set(self, key: str, value: str) -> None:
        """Replace every line of this header with one line holding `value`."""
        self._forget(key)
        for i, (k, name, _) in enumerate(self.headers):
            if k == key:
                self.headers[i] = (k, name, value)
                self.headers[i + 1 :] = [h for h in self.headers[i + 1 :] if h[0] != key]
                return
        self.headers.append((key, canonical_name(key), value))

    def remove(self, key: str) -> None:
        self._forget(key)
        self.headers = [h for h in self.headers if h[0] != key]

    def prepend(self, key: str, value: str) -> None:
        """Add a value in front of the others of its header (Via, Record-Route, Route)."""
        self._forget(key)
        for i, h in enumerate(self.headers):
            if h[0] == key:
                self.headers.insert(i, (key, canonical_name(key), value))
                return
        self.headers.insert(0, (key, canonical_name(key), value))

    def prepend_via(self, via: Via) -> None:
        """Put our own Via on top, keeping its parsed value: the client transaction reads
        the branch back at once, and parsing what we just printed would be wasted."""
        self.prepend("via", str(via))
        self._cache["via#top"] = via

    def append(self, key: str, value: str) -> None:
        self._forget(key)
        self.headers.append((key, canonical_name(key), value))

    def pop_first_value(self, key: str) -> str | None:
        """Remove and return the first comma-separated value of a header (top Via, Route)."""
        for i, (k, name, v) in enumerate(self.headers):
            if k == key:
                self._forget(key)
                parts = split_header_values(v)
                if len(parts) <= 1:
                    del self.headers[i]
                else:
                    self.headers[i] = (k, name, ", ".join(parts[1:]))
                return parts[0] if parts else None
        return None

    def shrink(self) -> None:
        """Drop the parsed values (they are parsed again if asked for): for messages kept
        only to absorb retransmissions."""
        self._cache.clear()

    def _forget(self, key: str) -> None:
        # Every cache a header can feed: the typed value, `addresses(key)`, `_tag`.
        cache = self._cache
        if not cache:
            return
        derived = _derived(key)
        cache.pop(key, None)
        cache.pop(derived[0], None)
        cache.pop(derived[1], None)
        if key == "via":
            cache.pop("via#top", None)

    # -- typed, cached access -------------------------------------------------------------

    def _cached_addr(self, key: str) -> NameAddr:
        hit = self._cache.get(key)
        if hit is None:
            raw = self.get(key)
            if raw is None:
                raise ParseError(f"missing {canonical_name(key)} header")
            hit = self._cache[key] = parse_name_addr(raw)
        return hit

    @property
    def call_id(self) -> str:
        hit = self._cache.get("call-id")
        if hit is None:
            raw = self.get("call-id")
            if not raw:
                raise ParseError("missing Call-ID header")
            hit = self._cache["call-id"] = raw
        return hit

    @property
    def cseq(self) -> CSeq:
        hit = self._cache.get("cseq")
        if hit is None:
            raw = self.get("cseq")
            if raw is None:
                raise ParseError("missing CSeq header")
            hit = self._cache["cseq"] = parse_cseq(raw)
        return hit

    @property
    def from_(self) -> NameAddr:
        return self._cached_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._cached_addr("to")

    @property
    def from_tag(self) -> str | None:
        return self._tag("from", "from#tag")

    @property
    def to_tag(self) -> str | None:
        return self._tag("to", "to#tag")

    def _tag(self, key: str, cache_key: str) -> str | None:
        """The `tag` parameter of From/To without parsing the URI: a proxy reads tags on
        every message (about twenty times a call), the URIs rarely. Same answer as
        `from_.tag` for valid values. `cache_key` is a literal, not made per call."""
        parsed = self._cache.get(key)
        if parsed is not None:
            return parsed.tag  # type: ignore[no-any-return]
        if cache_key in self._cache:
            return self._cache[cache_key]  # type: ignore[no-any-return]
        raw = self.get(key)
        if raw is None:
            raise ParseError(f"missing {canonical_name(key)} header")
        gt = raw.rfind(">")
        m = _TAG.search(raw, gt + 1) if gt >= 0 else _TAG.search(raw)
        tag = m.group(1) if m else None
        self._cache[cache_key] = tag
        return tag

    @property
    def vias(self) -> list[Via]:
        hit = self._cache.get("via")
        if hit is None:
            values = self.values("via")
            if not values:
                raise ParseError("missing Via header")
            top = self._cache.get("via#top") or parse_via(values[0])  # a request's is parsed
            hit = self._cache["via"] = [top, *(parse_via(v) for v in values[1:])]
        return hit

    @property
    def top_via(self) -> Via:
        """The first Via value, parsed alone (the others are read only by loop detection and
        stateless forwarding)."""
        hit = self._cache.get("via")
        if hit is not None:
            return hit[0]  # type: ignore[no-any-return]
        top = self._cache.get("via#top")
        if top is None:
            raw = self.get("via")
            if raw is None:
                raise ParseError("missing Via header")
            values = split_header_values(raw)
            if not values:
                raise ParseError("missing Via header")
            top = self._cache["via#top"] = parse_via(values[0])
        return top

    @property
    def top_branch(self) -> str:
        """The branch of the first Via ("" without one). A proxy matches every response to
        its client transaction by the branch of its own Via on top (RFC 3261 §17.1.3): the
        rest of that Via is ours and is popped unread."""
        cache = self._cache
        if "via" in cache or "via#top" in cache:
            return self.top_via.branch or ""
        raw = self.get("via")
        if raw is None or "," in raw:
            return self.top_via.branch or ""  # missing (raises) or several values: in full
        m = _BRANCH.search(raw)
        return m.group(1) if m else ""

    def addresses(self, key: str) -> list[NameAddr]:
        """Parsed values of Contact, Route, Record-Route, Path... (cached)."""
        cache_key = _derived(key)[0]
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = self._cache[cache_key] = [parse_name_addr(v) for v in self.values(key)]
        return hit

    @property
    def contacts(self) -> list[NameAddr]:
        return self.addresses("contact")

    @property
    def content_type(self) -> str | None:
        raw = self.get("content-type")
        return raw.split(";", 1)[0].strip().lower() if raw else None

    # -- output -----------------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        body = self.body
        lines = [self.start_line()]
        has_length = False
        for key, name, value in self.headers:
            if key == "content-length":
                if has_length:
                    continue
                has_length = True
                value = str(len(body))
            lines.append(f"{name}: {value}")
        if not has_length:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _copy_into(self, other: Message) -> None:
        # Parsed values nobody changes in place may be shared with the copy (a proxy copies
        # every request it relays and reads these again): a change to the copy's header, or
        # a new Request-URI, replaces them there and leaves the original alone.
        cache = self._cache
        if cache:
            other._cache = {k: v for k, v in cache.items() if k in _SHARED}


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: list[Header], body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    @property
    def ruri(self) -> Uri:
        """The Request-URI, parsed (cached until `uri` is reassigned through `set_uri`)."""
        hit = self._cache.get("@ruri")
        if hit is None or self._cache.get("@ruri-text") != self.uri:
            hit = self._cache["@ruri"] = parse_uri(self.uri)
            self._cache["@ruri-text"] = self.uri
        return hit

    @property
    def sip_ruri(self) -> SipUri:
        uri = self.ruri
        if not isinstance(uri, SipUri):
            raise ParseError(f"unsupported URI scheme {uri}", 416, "Unsupported URI Scheme")
        return uri

    @property
    def max_forwards(self) -> int | None:
        raw = self.get("max-forwards")
        if raw is None:
            return None
        raw = raw.strip()
        # Leading zeros are legal (RFC 4475 §3.1.1.1); isascii() keeps int() from seeing
        # other Unicode digits ('²'.isdigit() is true).
        digits = raw.lstrip("0")
        if not raw.isascii() or not raw.isdigit() or len(digits) > 3:
            raise ParseError(f"bad Max-Forwards {raw!r}")
        return int(digits or "0")

    def copy(self) -> Request:
        other = Request(self.method, self.uri, list(self.headers), self.body)
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: str, headers: list[Header], body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Response:
        other = Response(self.status, self.reason, list(self.headers), self.body)
        self._copy_into(other)
        return other

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def parse_message(
    data: bytes,
    *,
    max_size: int = MAX_MESSAGE_SIZE,
    datagram: bool = True,
    check_body: bool = True,
) -> Request | Response:
    """Parse one message. Malformed input raises `ParseError` carrying the status to answer.

    With `datagram`, a Content-Length shorter than the body truncates it and a longer one
    is an error (RFC 3261 §18.3); a stream framer hands over exactly one message. Without
    `check_body` the body is taken as it is and a request of another SIP version is
    accepted: that is how the proxy reads a broken request far enough to answer it.
    """
    if len(data) > max_size:
        raise ParseError("message too large", 513, "Message Too Large")
    start = 0
    while data.startswith((b"\r\n", b"\n"), start):  # keep-alive CRLFs before a message
        start += 2 if data[start] == 13 else 1
    end = _head_end(data, start)
    if end is None:
        head_bytes, body = data[start:], b""
    else:
        head_bytes, body = data[start : end[0]], data[end[1] :]
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    if head.count("\n") >= len(lines):  # bare LFs too (tolerated, RFC 3261 §7.5)
        lines = head.replace("\r\n", "\n").split("\n")
    first = lines[0].strip()
    if not first:
        raise ParseError("empty message")
    headers = _parse_header_lines(lines, "\n " in head or "\n\t" in head)
    if check_body:
        body = _check_body(headers, body, datagram)
    if first.startswith("SIP/"):
        version, _, rest = first.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise ParseError(f"unsupported version {version!r}", 505, "Version Not Supported")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or code[0] == "0":
            raise ParseError(f"bad status line {first!r}")
        return Response(int(code), reason.strip(), headers, body)
    parts = first.split()
    if len(parts) != 3:
        raise ParseError(f"bad request line {first!r}")
    method, uri, version = parts
    if not TOKEN.match(method):
        raise ParseError(f"bad method {method!r}")
    if version.upper() != SIP_VERSION and check_body:
        raise ParseError(f"unsupported version {version!r}", 505, "Version Not Supported")
    return Request(method, uri, headers, body)


def _head_end(data: bytes, start: int) -> tuple[int, int] | None:
    """Where the header section ends: the first empty line, CRLF or bare LF in any mix
    (the span of `\\r?\\n\\r?\\n`), found by two byte searches instead of a regex that
    tries every line end; None without one."""
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf < 0 or 0 <= crlf < lf:
        if crlf < 0:
            return None
        at, width = crlf, 3
    else:
        at, width = lf, 2
    begin = at - 1 if at > start and data[at - 1] == 13 else at
    return begin, at + width


def _parse_header_lines(lines: list[str], folded: bool = True) -> list[Header]:
    """(key, name, value) per header line; `folded`: continuation lines may be present."""
    headers: list[Header] = []
    for line in lines[1:]:
        if folded and line[:1] in (" ", "\t"):
            # Folded continuation (RFC 3261 §7.3.1): joins the previous line with one space.
            if not headers:
                raise ParseError("continuation line before any header")
            more = line.strip()
            if more:  # a blank continuation adds nothing, not a trailing space
                k, n, v = headers[-1]
                headers[-1] = (k, n, f"{v} {more}" if v else more)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"bad header line {line[:80]!r}")
        known = _KEYS.get(name)
        if known is not None:
            key, name = known
        else:
            bare = name.rstrip(" \t")
            if not bare or not TOKEN.match(bare):
                raise ParseError(f"bad header line {line[:80]!r}")
            key = header_key(bare)
            if bare == name and len(_KEYS) < 4096:  # names seen on the wire, checked once
                _KEYS[name] = (key, name)
            name = bare
        headers.append((key, name, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise ParseError("too many headers")
    return headers


def _check_body(headers: list[Header], body: bytes, datagram: bool) -> bytes:
    length: int | None = None
    for k, _, v in headers:
        if k == "content-length":
            v = v.strip()
            if not v.isascii() or not v.isdigit() or len(v) > 9:
                raise ParseError(f"bad Content-Length {v!r}")
            if length is not None and length != int(v):
                raise ParseError("conflicting Content-Length headers")
            length = int(v)
    if length is None:
        if not datagram and body:
            raise ParseError("Content-Length required on a stream transport")
        return body
    if length > len(body):
        raise ParseError("body shorter than Content-Length")
    return body[:length] if length < len(body) else body


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` as a UAS builds it (RFC 3261 §8.2.6.2)."""
    headers: list[Header] = [h for h in request.headers if h[0] == "via"]
    for key in ("from", "to", "call-id", "cseq"):
        for h in request.headers:
            if h[0] == key:
                headers.append(h)
                break
    if to_tag is not None and status > 100:
        for i, (k, name, value) in enumerate(headers):
            if k == "to" and ";tag=" not in value.replace(" ", "").lower():
                headers[i] = (k, name, f"{value};tag={to_tag}")
    for key, value in extra:
        headers.append((header_key(key), key, value))
    return Response(status, reason or REASONS.get(status, "Unknown"), headers, body)

"""Transfer values: Refer-To for blind and attended transfers (RFC 3515, RFC 3891), the
Replaces header, and the sipfrag a NOTIFY reports (RFC 3420).

Pure string work. User input is validated here — a destination that could smuggle a header
(CR, LF, `<`, `>`), or that is not a SIP URI, raises `LocalProtocolError` — so nothing a
management client sends can reach the wire unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LocalProtocolError, ParseError
from .uri import SipUri, parse_uri

# RFC 3261 §25.1: what may stand unescaped in a URI parameter value (`paramchar`) and in a
# URI header value (`hvalue`).
_UNRESERVED = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()"
)
_PARAM_OK = _UNRESERVED | frozenset("[]/:&+$")
_HVALUE_OK = _UNRESERVED | frozenset("[]/?:+$")


def _escape(text: str, keep: frozenset[str]) -> str:
    out = []
    for ch in text:
        if ch in keep:
            out.append(ch)
        else:
            # A byte that is not UTF-8 (a Call-ID or tag as the parser kept it, a lone
            # surrogate) is escaped as that byte, so the Replaces it ends up in matches.
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def escape_param(text: str) -> str:
    return _escape(text, _PARAM_OK)


def escape_header_value(text: str) -> str:
    return _escape(text, _HVALUE_OK)


def check_text(value: str, what: str) -> None:
    """No control characters (CR/LF above all) in anything we put in a header, and no
    character without bytes to send."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise LocalProtocolError(f"{what} contains a control character")
    if not sendable(value):
        raise LocalProtocolError(f"{what} contains a lone surrogate")


def sendable(value: str) -> bool:
    """Whether `value` has bytes to send: no lone surrogate but those the parser makes of
    bytes that are not UTF-8 (U+DC80..U+DCFF, `surrogateescape`), which go out as those
    bytes. A management request can send any other one as a JSON escape."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def parse_destination(destination: str) -> SipUri:
    """A transfer destination: a SIP URI, optionally in `<>`; nothing else."""
    check_text(destination, "destination")
    text = destination.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text or "<" in text or ">" in text or '"' in text or " " in text:
        raise LocalProtocolError("destination must be a bare SIP URI")
    try:
        uri = parse_uri(text)
    except ParseError as exc:
        raise LocalProtocolError(f"destination is not a valid URI: {exc.detail}") from None
    if not isinstance(uri, SipUri):
        raise LocalProtocolError("destination must be a sip: or sips: URI")
    return uri


def blind_refer_to(destination: str, match_param: str | None, value: str | None) -> str:
    """Refer-To for a blind transfer; the match parameter goes inside the URI, before any
    `?headers`, so the new INVITE's Request-URI carries it back to us."""
    uri = parse_destination(destination).copy()
    if match_param and value is not None:
        uri.params[match_param] = escape_param(value)
    return f"<{uri}>"


def attended_refer_to(destination: str, call_id: str, to_tag: str, from_tag: str) -> str:
    """Refer-To carrying `Replaces` as an escaped URI header (RFC 3891 §3)."""
    for value, what in ((call_id, "Call-ID"), (to_tag, "to-tag"), (from_tag, "from-tag")):
        check_text(value, what)
    uri = parse_destination(destination).copy()
    replaces = escape_header_value(f"{call_id};to-tag={to_tag};from-tag={from_tag}")
    uri.headers = f"{uri.headers}&Replaces={replaces}" if uri.headers else f"Replaces={replaces}"
    return f"<{uri}>"


@dataclass(frozen=True, slots=True)
class Replaces:
    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


def parse_replaces(value: str) -> Replaces:
    """The Replaces header of an INVITE (RFC 3891 §6.1)."""
    call_id, _, rest = value.strip().partition(";")
    params: dict[str, str] = {}
    early_only = False
    for item in rest.split(";"):
        name, eq, val = item.partition("=")
        name = name.strip()  # RFC 3261 §25.1: EQUAL = SWS "=" SWS
        if not name:
            continue
        if name.lower() == "early-only":
            early_only = True
        elif eq:
            params[name.lower()] = val.strip()
    if not call_id.strip() or "to-tag" not in params or "from-tag" not in params:
        raise ParseError(f"bad Replaces header {value!r}")
    return Replaces(call_id.strip(), params["to-tag"], params["from-tag"], early_only)


def sipfrag_status(body: bytes) -> str | None:
    """`200 OK` from a `message/sipfrag` body `SIP/2.0 200 OK...`; None if it is not one."""
    if len(body) <= 7 or not body.startswith(b"SIP/2.0"):
        return None
    first = body[7:].split(b"\n", 1)[0].strip()
    if not first or not first[:3].isdigit():
        return None
    return first.decode("utf-8", "replace")

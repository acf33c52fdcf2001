"""Differential test: our parser against `sipmessage` 0.7.1 as an independent oracle.

Both parsers read every corpus message in `tests/data/`; the fields a proxy relies on are
reduced to plain comparable values and must agree. A field that a parser rejects becomes
`REJECTED`, so "both refuse this malformed value" counts as agreement (the OpenSIPS traces
carry a few, e.g. `Contact: <>`).

sipmessage is wrong or unable on some inputs (DESIGN.md §5). Those files are listed in
`EXCLUDED` with the reason and the fields that disagree, and a test checks that each of them
still disagrees on exactly those fields, so the list cannot rot: if sipmessage or our parser
changes, the list has to be revisited.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sipmessage

from switchboard.sip import ParseError, Request, parse_message
from switchboard.sip.uri import AbsoluteUri, NameAddr, SipUri, Uri

DATA = Path(__file__).parents[2] / "data"
CORPUS = sorted(DATA.glob("*.sip"))

REJECTED = "<rejected>"
WHOLE_MESSAGE = "message"  # sipmessage refused the message as a whole

# file name → (fields on which sipmessage fails or disagrees, why it is sipmessage's fault)
EXCLUDED: dict[str, tuple[frozenset[str], str]] = {
    "refer-replaces.sip": (
        frozenset({"refer-to"}),
        "sipmessage's URI grammar has no `?headers` part, so "
        "`Refer-To: <sip:carol@...?Replaces=...>` is refused (RFC 3261 §19.1.1 allows it)",
    ),
    "opensips-s5-f019-PROXY-to-A-REFER.sip": (
        frozenset({"refer-to"}),
        "`Refer-To: <sip:c@...?Replaces=...>` (attended transfer): no `?headers` in sipmessage",
    ),
    "opensips-s8-f043-PROXY-to-B-REFER.sip": (
        frozenset({"refer-to"}),
        "`Refer-To: <sip:override@...?Replaces=...>`: no `?headers` in sipmessage",
    ),
    "opensips-s8-f041-PROXY-to-A-REFER.sip": (
        frozenset({"refer-to"}),
        "`Refer-To: <sip:c@...?X-Foo=bar;osid=...>`: no `?headers` in sipmessage",
    ),
    "register-contact-star.sip": (
        frozenset({"contact"}),
        "sipmessage reads `Contact: *` as an addr-spec and refuses `*` as a URI "
        "(RFC 3261 §10.2.2 wildcard)",
    ),
    "subscribe-folded-headers.sip": (
        frozenset({WHOLE_MESSAGE}),
        "no unfolding: a continuation line is split at its first colon or, without one, "
        "makes `Message.parse` fail (RFC 3261 §7.3.1 folding)",
    ),
    "invite-tortuous-wsinv-style.sip": (
        frozenset({WHOLE_MESSAGE}),
        "folded headers (and LWS around `:`), as in RFC 4475 §3.1.1.1",
    ),
    "invite-bad-utf8-display.sip": (
        frozenset({WHOLE_MESSAGE}),
        "decodes the header section as strict UTF-8; a Latin-1 display name raises "
        "UnicodeDecodeError",
    ),
    "message-bare-lf.sip": (
        frozenset({WHOLE_MESSAGE}),
        "only CRLF ends a line; with bare LF it finds no header/body separator "
        "(RFC 3261 §7.5 allows receivers to accept LF)",
    ),
    "resp-200-register-contacts.sip": (
        frozenset({"contact"}),
        "its quoted-string pattern is greedy: with two quoted display names on one line "
        '(`"Desk, 2nd floor" <sip:...>;expires=3600, "Mobile \\"work\\"" <sip:...>`) the first '
        "name runs to the last quote, swallowing the first value, and the list loses an entry",
    ),
}


# -- reducing both parsers' results to comparable values ------------------------------------


def _attempt(fn: Callable[[], Any], errors: tuple[type[Exception], ...]) -> Any:
    try:
        return fn()
    except errors:
        return REJECTED


def _params(params: Any) -> dict[str, str | None]:
    """Our parameters as sipmessage reports them: %-escapes decoded in names and values."""
    return {unquote(k): None if v is None else unquote(v) for k, v in params.items()}


def _unquote_display(display: str | None) -> str:
    if not display:
        return ""
    if display.startswith('"'):
        return re.sub(r"\\(.)", r"\1", display[1:-1])
    return display


def _our_uri(uri: Uri | None) -> Any:
    if uri is None:
        return "*"
    if isinstance(uri, AbsoluteUri):
        subscriber, _, params = uri.rest.partition(";")
        pairs = (p.partition("=") for p in params.split(";") if p)
        return (uri.scheme, subscriber, _params({k: v if eq else None for k, eq, v in pairs}))
    assert isinstance(uri, SipUri)
    return (
        uri.scheme,
        None if uri.user is None else unquote(uri.user),
        None if uri.password is None else unquote(uri.password),
        uri.host.lower(),
        uri.port,
        _params(uri.params),
        uri.headers,  # sipmessage cannot hold URI headers: None on its side
    )


def _their_uri(uri: sipmessage.URI) -> Any:
    if uri.scheme == "tel":
        return (uri.scheme, uri.user, dict(uri.parameters))
    return (
        uri.scheme,
        uri.user,
        uri.password,
        uri.host.lower(),
        uri.port,
        dict(uri.parameters),  # already %-decoded by sipmessage
        None,
    )


def _our_addr(addr: NameAddr) -> Any:
    return (_our_uri(addr.uri), _unquote_display(addr.display), _params(addr.params))


def _their_addr(addr: sipmessage.Address) -> Any:
    return (_their_uri(addr.uri), addr.name, dict(addr.parameters))


def ours(data: bytes) -> dict[str, Any]:
    msg = parse_message(data)

    def get(fn: Callable[[], Any]) -> Any:
        return _attempt(fn, (ParseError,))

    fields: dict[str, Any] = {}
    if isinstance(msg, Request):
        fields["start"] = (msg.method, get(lambda: _our_uri(msg.ruri)))
    else:
        fields["start"] = (msg.status, msg.reason)
    fields["call-id"] = get(lambda: msg.call_id)
    fields["cseq"] = get(lambda: (msg.cseq.number, msg.cseq.method))
    fields["from"] = get(lambda: _our_addr(msg.from_))
    fields["to"] = get(lambda: _our_addr(msg.to))
    fields["via"] = get(
        lambda: [(v.transport.upper(), v.host.lower(), v.port, v.branch) for v in msg.vias]
    )

    def addresses(key: str) -> list[Any]:
        return [_our_addr(a) for a in msg.addresses(key)]

    for key in ("contact", "route", "record-route", "refer-to"):
        fields[key] = get(partial(addresses, key))
    fields["body"] = msg.body
    return fields


def theirs(data: bytes) -> dict[str, Any]:
    try:
        msg = sipmessage.Message.parse(data)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return {WHOLE_MESSAGE: REJECTED}

    def get(fn: Callable[[], Any]) -> Any:
        # KeyError: a header it needs is missing; ValueError: a value it cannot parse.
        return _attempt(fn, (ValueError, KeyError))

    fields: dict[str, Any] = {}
    if isinstance(msg, sipmessage.Request):
        fields["start"] = (msg.method, _their_uri(msg.uri))
    else:
        fields["start"] = (msg.code, msg.phrase)
    fields["call-id"] = get(lambda: msg.call_id)
    fields["cseq"] = get(lambda: (msg.cseq.sequence, msg.cseq.method))
    fields["from"] = get(lambda: _their_addr(msg.from_address))
    fields["to"] = get(lambda: _their_addr(msg.to_address))
    fields["via"] = get(
        lambda: [
            (v.transport.upper(), v.host.lower(), v.port, v.parameters.get("branch"))
            for v in msg.via
        ]
    )
    fields["contact"] = get(lambda: [_their_addr(a) for a in msg.contact])
    fields["route"] = get(lambda: [_their_addr(a) for a in msg.route])
    fields["record-route"] = get(lambda: [_their_addr(a) for a in msg.record_route])
    fields["refer-to"] = get(
        lambda: [
            _their_addr(a)
            for value in msg.headers.getlist("Refer-To")
            for a in sipmessage.Address.parse_many(value)
        ]
    )
    fields["body"] = msg.body
    return fields


def disagreements(data: bytes) -> set[str]:
    mine, other = ours(data), theirs(data)
    if WHOLE_MESSAGE in other:
        return {WHOLE_MESSAGE}
    assert mine.keys() == other.keys()
    return {key for key in mine if mine[key] != other[key]}


# -- tests ----------------------------------------------------------------------------------


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 60
    assert {p.name for p in CORPUS} >= EXCLUDED.keys(), "an excluded file is gone"


@pytest.mark.parametrize(
    "path", [p for p in CORPUS if p.name not in EXCLUDED], ids=lambda p: p.name
)
def test_agrees_with_sipmessage(path: Path) -> None:
    data = path.read_bytes()
    mine, other = ours(data), theirs(data)
    assert WHOLE_MESSAGE not in other
    for key in mine:
        assert mine[key] == other[key], key


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_exclusion_is_still_needed(name: str) -> None:
    """sipmessage really fails or disagrees on each excluded file, on exactly those fields."""
    fields, _why = EXCLUDED[name]
    assert disagreements((DATA / name).read_bytes()) == fields


def test_the_comparison_sees_something() -> None:
    """Guard against a vacuous oracle: the compared fields are populated, not all rejected."""
    data = (DATA / "resp-180-multi-value-one-line.sip").read_bytes()
    mine = ours(data)
    assert mine["via"] == [
        ("UDP", "proxy.biloxi.example.com", 5060, "z9hG4bK83842.1"),
        ("UDP", "pc33.atlanta.example.com", None, "z9hG4bK776asdhds"),
    ]
    assert len(mine["record-route"]) == 2
    assert mine["to"][2] == {"tag": "a6c85cf"}
    assert REJECTED not in mine.values()


def test_both_reject_the_same_broken_values() -> None:
    """`Contact: <>` (OpenSIPS early-dialog REFER) is refused by both: that is agreement."""
    data = (DATA / "opensips-s6-f006-PROXY-to-A-REFER.sip").read_bytes()
    assert ours(data)["contact"] == REJECTED
    assert theirs(data)["contact"] == REJECTED

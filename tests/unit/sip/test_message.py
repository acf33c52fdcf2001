"""SIP messages: parsing, header access and mutation, serialization, framing, limits.

Recorded messages come from `tests/data/` (see its README); malformed ones from
`tests/data/malformed/`, with the status each must be answered with in `MALFORMED`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from switchboard.sip import (
    CSeq,
    ParseError,
    Request,
    Response,
    SipUri,
    Via,
    build_response,
    parse_message,
)
from switchboard.sip.framing import StreamFramer
from switchboard.sip.message import MAX_HEADERS, MAX_MESSAGE_SIZE, Message
from switchboard.sip.uri import AbsoluteUri

DATA = Path(__file__).parents[2] / "data"
CORPUS = sorted(DATA.glob("*.sip"))
MALFORMED_DIR = DATA / "malformed"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def req(name: str) -> Request:
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    return msg


def resp(name: str) -> Response:
    msg = parse_message(load(name))
    assert isinstance(msg, Response)
    return msg


INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/UDP pc33.example.com;branch=z9hG4bK2\r\n"
    b"Via: SIP/2.0/TCP client.example.com:5070;branch=z9hG4bK3;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def invite() -> Request:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    return msg


# -- the recorded corpus --------------------------------------------------------------------


def test_corpus_size() -> None:
    assert len([p for p in CORPUS if p.name.startswith("opensips-")]) == 44
    assert len(CORPUS) >= 64
    assert (DATA / "README.md").exists()


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_parses_and_reserializes(path: Path) -> None:
    data = path.read_bytes()
    msg = parse_message(data)
    assert msg.call_id
    assert isinstance(msg.cseq, CSeq)
    assert msg.from_.uri is not None and msg.to.uri is not None
    assert msg.vias and all(v.branch for v in msg.vias)
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
        assert msg.ruri is not None
    # Our output is canonical: it reparses to the same headers and body, and is a fixed point.
    out = msg.to_bytes()
    again = parse_message(out)
    assert again.start_line() == msg.start_line()
    assert again.headers == msg.headers
    assert again.body == msg.body
    assert again.to_bytes() == out
    # The stream framer cuts each recorded message exactly where it ends.
    assert StreamFramer().feed(data) == [data]
    assert parse_message(data, datagram=False).headers == msg.headers


@pytest.mark.parametrize(
    "name",
    [
        "resp-487-request-terminated.sip",
        "invite-bad-utf8-display.sip",
        "invite-multipart-binary-body.sip",
        "opensips-s4-f010-PROXY-to-A-REFER.sip",
        "refer-replaces.sip",
    ],
)
def test_canonical_messages_round_trip_byte_for_byte(name: str) -> None:
    data = load(name)
    assert parse_message(data).to_bytes() == data


def test_request_basics() -> None:
    msg = invite()
    assert msg.method == "INVITE"
    assert msg.uri == "sip:bob@biloxi.example.com"
    assert msg.ruri == SipUri(host="biloxi.example.com", user="bob")
    assert msg.sip_ruri.user == "bob"
    assert msg.call_id == "a84b4c76e66710@pc33.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.from_tag == "1928301774"
    assert msg.to_tag is None
    assert msg.max_forwards == 70
    assert msg.content_type == "application/sdp"
    assert msg.body == b"v=0\n"
    assert msg.start_line() == "INVITE sip:bob@biloxi.example.com SIP/2.0"
    assert repr(msg) == "<Request INVITE sip:bob@biloxi.example.com>"


def test_response_basics() -> None:
    msg = resp("resp-180-multi-value-one-line.sip")
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.start_line() == "SIP/2.0 180 Ringing"
    assert msg.to_tag == "a6c85cf"
    assert repr(msg) == "<Response 180 Ringing>"
    for name, status, reason in [
        ("resp-200-invite-sdp.sip", 200, "OK"),
        ("resp-487-request-terminated.sip", 487, "Request Terminated"),
        ("resp-100-empty-reason.sip", 100, ""),
        ("resp-200-unusual-reason.sip", 200, "= 2**3 * 5**2, alles gut — très bien ✓"),
    ]:
        r = resp(name)
        assert (r.status, r.reason) == (status, reason)


def test_multi_value_headers_on_one_line_and_several() -> None:
    msg = invite()
    assert [v.branch for v in msg.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert msg.top_via == Via("UDP", "proxy.example.com", None, {"branch": "z9hG4bK1"})
    assert msg.vias[2].sent_by == ("client.example.com", 5070)
    assert msg.vias[2].params == {"branch": "z9hG4bK3", "rport": None}
    assert [str(a.uri) for a in msg.addresses("route")] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    several = req("invite-multi-value-several-lines.sip")
    assert [v.host for v in several.vias] == [
        "proxy2.biloxi.example.com",
        "proxy1.atlanta.example.com",
        "edge.atlanta.example.com",
        "pc33.atlanta.example.com",
    ]
    assert several.vias[2].transport == "TCP"
    assert [a.sip_uri.host for a in several.addresses("route")] == [
        "inner1.biloxi.example.com",
        "inner2.biloxi.example.com",
        "inner3.biloxi.example.com",
    ]
    assert several.addresses("route")[2].sip_uri.port == 5070
    assert len(several.addresses("record-route")) == 2
    rr = resp("resp-180-multi-value-one-line.sip")
    assert [a.sip_uri.host for a in rr.addresses("record-route")] == [
        "proxy2.biloxi.example.com",
        "proxy1.atlanta.example.com",
    ]
    assert rr.vias[1].params["received"] == "192.0.2.101"


def test_addresses_of_an_absent_header_is_empty() -> None:
    assert invite().addresses("record-route") == []
    assert resp("resp-487-request-terminated.sip").contacts == []


# -- header access and mutation ---------------------------------------------------------------


def test_get_values_has() -> None:
    msg = invite()
    assert msg.get("max-forwards") == "70"
    assert msg.get("Max-Forwards") is None  # keys are the lower-case long form
    assert msg.get("x-absent") is None
    assert msg.get_all("via") == [
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/UDP pc33.example.com;branch=z9hG4bK2",
        "SIP/2.0/TCP client.example.com:5070;branch=z9hG4bK3;rport",
    ]
    assert msg.values("via") == [
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1",
        "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK2",
        "SIP/2.0/TCP client.example.com:5070;branch=z9hG4bK3;rport",
    ]
    assert msg.values("x-absent") == []
    assert msg.has("route") and not msg.has("record-route")


def test_set_replaces_every_line_and_invalidates_the_cache() -> None:
    msg = invite()
    assert len(msg.vias) == 3
    msg.set("via", "SIP/2.0/UDP only.example.com;branch=z9hG4bKonly")
    assert msg.get_all("via") == ["SIP/2.0/UDP only.example.com;branch=z9hG4bKonly"]
    assert [v.host for v in msg.vias] == ["only.example.com"]
    assert msg.headers[0] == ("via", "Via", "SIP/2.0/UDP only.example.com;branch=z9hG4bKonly")
    assert msg.cseq.number == 314159
    msg.set("cseq", "314160 INVITE")
    assert msg.cseq == CSeq(314160, "INVITE")
    msg.set("from", "<sip:carol@chicago.example.com>;tag=new")
    assert msg.from_tag == "new"


def test_set_appends_an_absent_header_with_its_canonical_name() -> None:
    msg = invite()
    msg.set("call-id", "x@y")  # present: replaced in place, keeps the wire spelling
    assert msg.call_id == "x@y"
    msg.set("www-authenticate", 'Digest realm="x"')
    msg.set("x-custom-thing", "1")
    assert msg.headers[-2:] == [
        ("www-authenticate", "WWW-Authenticate", 'Digest realm="x"'),
        ("x-custom-thing", "X-Custom-Thing", "1"),
    ]


def test_prepend_puts_a_value_on_top() -> None:
    msg = invite()
    branches = [v.branch for v in msg.vias]
    msg.prepend("via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
    assert [v.branch for v in msg.vias] == ["z9hG4bKme", *branches]
    msg.prepend("record-route", "<sip:me.example.com;lr>")
    assert msg.headers[0] == ("record-route", "Record-Route", "<sip:me.example.com;lr>")
    assert [str(a) for a in msg.addresses("record-route")] == ["<sip:me.example.com;lr>"]
    # A second prepend lands before the first, and the cached list is refreshed.
    msg.prepend("record-route", "<sip:me2.example.com;lr>")
    assert [a.sip_uri.host for a in msg.addresses("record-route")] == [
        "me2.example.com",
        "me.example.com",
    ]


def test_prepend_before_a_compact_via() -> None:
    msg = req("invite-compact-forms.sip")
    msg.prepend("via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
    assert [v.host for v in msg.vias] == ["me.example.com", "pc33.atlanta.example.com"]
    assert msg.to_bytes().startswith(
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP me.example.com;branch=z9hG4bKme\r\n"
        b"v: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds\r\n"
    )


def test_append() -> None:
    msg = invite()
    msg.append("route", "<sip:p3.example.com;lr>")
    assert [a.sip_uri.host for a in msg.addresses("route")] == [
        "p1.example.com",
        "p2.example.com",
        "p3.example.com",
    ]


def test_pop_first_value() -> None:
    msg = invite()
    assert msg.vias[0].branch == "z9hG4bK1"
    top = msg.pop_first_value("via")
    assert top == "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1"
    # The rest of the line stays, the cache is dropped.
    assert msg.get_all("via")[0] == "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK2"
    assert [v.branch for v in msg.vias] == ["z9hG4bK2", "z9hG4bK3"]
    assert msg.pop_first_value("via") == "SIP/2.0/UDP pc33.example.com;branch=z9hG4bK2"
    assert msg.get_all("via") == ["SIP/2.0/TCP client.example.com:5070;branch=z9hG4bK3;rport"]
    assert msg.pop_first_value("via") is not None
    assert msg.pop_first_value("via") is None
    assert not msg.has("via")
    with pytest.raises(ParseError, match="missing Via"):
        msg.vias  # noqa: B018


def test_pop_first_value_keeps_quoted_commas() -> None:
    msg = resp("resp-200-register-contacts.sip")
    assert len(msg.contacts) == 3
    first = msg.pop_first_value("contact")
    assert first == '"Desk, 2nd floor" <sip:bob@192.0.2.4>;expires=3600'
    assert [c.display for c in msg.contacts] == [r'"Mobile \"work\""', None]


def test_pop_first_value_route_set() -> None:
    msg = invite()
    assert msg.pop_first_value("route") == "<sip:p1.example.com;lr>"
    assert [a.sip_uri.host for a in msg.addresses("route")] == ["p2.example.com"]
    assert msg.pop_first_value("x-absent") is None


def test_remove() -> None:
    msg = invite()
    assert msg.addresses("route")
    msg.remove("route")
    assert not msg.has("route")
    assert msg.addresses("route") == []
    msg.remove("x-absent")  # no error
    assert b"Route" not in msg.to_bytes()


def test_copy_is_independent() -> None:
    msg = invite()
    cseq = msg.cseq
    other = msg.copy()
    assert other.cseq is cseq  # immutable parsed values are shared
    other.prepend("via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
    other.set("max-forwards", "69")
    other.uri = "sip:carol@chicago.example.com"
    other.body = b""
    assert len(msg.vias) == 3 and len(other.vias) == 4
    assert msg.max_forwards == 70 and other.max_forwards == 69
    assert msg.ruri == SipUri(host="biloxi.example.com", user="bob")
    assert other.ruri == SipUri(host="chicago.example.com", user="carol")
    assert msg.body == b"v=0\n"
    assert parse_message(other.to_bytes()).get("content-length") == "0"
    r = resp("resp-200-invite-sdp.sip")
    rc = r.copy()
    rc.status, rc.reason = 183, "Session Progress"
    assert (r.status, r.reason) == (200, "OK")
    assert rc.start_line() == "SIP/2.0 183 Session Progress"


def test_ruri_follows_reassignment() -> None:
    msg = invite()
    assert msg.sip_ruri.host == "biloxi.example.com"
    msg.uri = "tel:+12015550123"
    assert msg.ruri == AbsoluteUri("tel", "+12015550123")
    with pytest.raises(ParseError) as err:
        msg.sip_ruri  # noqa: B018
    assert err.value.status == 416


# -- build_response ----------------------------------------------------------------------------


def test_build_response() -> None:
    msg = invite()
    r = build_response(msg, 180, to_tag="as83kd9bs")
    assert (r.status, r.reason) == (180, "Ringing")
    assert r.values("via") == msg.values("via")
    assert [k for k, _, _ in r.headers] == ["via", "via", "from", "to", "call-id", "cseq"]
    assert r.to_tag == "as83kd9bs"
    assert r.from_tag == msg.from_tag
    assert r.call_id == msg.call_id and r.cseq == msg.cseq
    assert r.body == b""
    # The request is not touched.
    assert msg.to_tag is None
    wire = r.to_bytes()
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")
    back = parse_message(wire)
    assert isinstance(back, Response)
    assert back.to_tag == "as83kd9bs"
    assert [v.branch for v in back.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]


def test_build_response_to_tag_rules() -> None:
    msg = invite()
    assert build_response(msg, 100, to_tag="x").to_tag is None  # RFC 3261 §8.2.6.2: not on 100
    assert build_response(msg, 487).to_tag is None
    dialog = req("opensips-s4-f010-PROXY-to-A-REFER.sip")
    assert dialog.to_tag == "16627A1"
    assert build_response(dialog, 200, to_tag="other").to_tag == "16627A1"  # never replaced


def test_build_response_reason_extra_and_body() -> None:
    msg = invite()
    assert build_response(msg, 487).reason == "Request Terminated"
    assert build_response(msg, 299).reason == "Unknown"
    r = build_response(
        msg,
        200,
        "Fine",
        to_tag="t",
        extra=[("Contact", "<sip:bob@192.0.2.4>")],
        body=b"v=0\r\n",
    )
    assert r.reason == "Fine"
    assert r.headers[-1] == ("contact", "Contact", "<sip:bob@192.0.2.4>")
    assert r.contacts[0].sip_uri.host == "192.0.2.4"
    assert parse_message(r.to_bytes()).body == b"v=0\r\n"


def test_build_response_from_compact_request() -> None:
    msg = req("invite-compact-forms.sip")
    r = build_response(msg, 486, to_tag="busy")
    assert r.reason == "Busy Here"
    back = parse_message(r.to_bytes())
    assert back.to_tag == "busy"
    assert back.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert back.get("via") == msg.get("via")


# -- compact forms, folding, bare LF, case, IPv6, wildcard --------------------------------------


def test_compact_forms() -> None:
    msg = req("invite-compact-forms.sip")
    keys = [k for k, _, _ in msg.headers]
    assert keys[:4] == ["via", "from", "to", "call-id"]
    assert "contact" in keys and "supported" in keys and "content-type" in keys
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.from_.display == '"Alice"'
    assert msg.to.display == "Bob"
    assert msg.contacts[0].sip_uri.host == "pc33.atlanta.example.com"
    assert msg.content_type == "application/sdp"
    assert msg.values("supported") == ["timer", "100rel"]
    assert len(msg.body) == int(msg.get("content-length") or "")
    assert msg.get("v") is None  # compact names are expanded in keys...
    assert msg.headers[0][1] == "v"  # ...and kept as written for printing
    refer = req("refer-replaces.sip")
    assert refer.get("referred-by") == "<sip:alice@atlanta.example.com>"  # `b:`


@pytest.mark.parametrize(
    ("compact", "key"),
    [
        ("v", "via"),
        ("f", "from"),
        ("t", "to"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("k", "supported"),
        ("r", "refer-to"),
        ("b", "referred-by"),
        ("o", "event"),
        ("u", "allow-events"),
        ("x", "session-expires"),
        ("s", "subject"),
        ("e", "content-encoding"),
        ("V", "via"),
        ("L", "content-length"),
    ],
)
def test_every_compact_form(compact: str, key: str) -> None:
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\n{compact}: 0\r\n\r\n".encode())
    assert msg.headers == [(key, compact, "0")]


def test_folded_headers() -> None:
    msg = req("subscribe-folded-headers.sip")
    # A blank continuation line after Call-ID used to leave a trailing space in the value.
    assert msg.call_id == "folded-1@client.example.com"
    assert msg.vias[0].branch == "z9hG4bKfold01"
    assert msg.get("via") == "SIP/2.0/TCP client.example.com:5060 ;branch=z9hG4bKfold01"
    assert msg.from_.display == '"Folded Name"'
    assert msg.from_tag == "fold-from-1"
    assert msg.to.sip_uri.user == "presence"
    assert msg.cseq == CSeq(7, "SUBSCRIBE")
    assert msg.get("subject") == "a subject that goes on and on"
    assert msg.values("accept") == ["application/pidf+xml", "application/xpidf+xml"]
    # Output is unfolded: one line per header.
    out = msg.to_bytes()
    assert b"Subject: a subject that goes on and on\r\n" in out
    assert b"\r\n " not in out and b"\r\n\t" not in out


def test_tortuous_message() -> None:
    """RFC 4475 §3.1.1.1-style: odd spacing, folding, case, escapes, LWS around `/` and `:`."""
    msg = req("invite-tortuous-wsinv-style.sip")
    assert msg.uri == "sip:carol@chicago.example.com;unknownparam"
    assert msg.sip_ruri.params == {"unknownparam": None}
    assert msg.to.sip_uri.user == "carol" and msg.to_tag == "8321234356"
    assert msg.from_.display == r'"Alice \"the \\ Great\""'
    assert msg.from_tag == "1928301774"
    assert msg.max_forwards == 70  # written `0070`
    assert msg.cseq == CSeq(42, "INVITE")  # written `0042` + folded method
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.101", "z9hG4bKtortuous1"),
        ("TCP", "edge.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.0.2.111", "z9hG4bK30239"),
    ]
    assert msg.get("subject") == ""  # `s :` with an empty value
    assert msg.get("weirdnewheader") == "first part second part"
    assert msg.get("oddvalueheader") == ";;,,;;,;"
    assert msg.addresses("route")[0].sip_uri.params == {
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    contact = msg.contacts[0]
    assert contact.display == r'"Quoted \"\""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 211


def test_header_names_are_case_insensitive() -> None:
    msg = req("ack-mixed-case-names.sip")
    assert [k for k, _, _ in msg.headers] == [
        "via",
        "route",
        "max-forwards",
        "from",
        "to",
        "call-id",
        "cseq",
        "content-length",
    ]
    assert msg.cseq == CSeq(314159, "ACK")  # written with a tab: `314159\tACK`
    assert msg.headers[0][1] == "VIA"  # spelling kept for relaying


def test_bare_lf_line_ends() -> None:
    msg = req("message-bare-lf.sip")
    assert msg.method == "MESSAGE"
    assert msg.from_.sip_uri.user == "user1"
    assert msg.body == b"Watson, come here.\nI want to see you.\n"
    assert msg.to_bytes().count(b"\r\n") == len(msg.headers) + 2  # we always send CRLF


def test_mixed_line_ends() -> None:
    # OpenSIPS ends its Retry-After with a bare LF and every other line with CRLF.
    msg = resp("opensips-s4-f013-PROXY-to-A-resp480.sip")
    assert msg.get("retry-after") == "1 (not found)"
    assert msg.get("server") == "OpenSIPS (4.1.0-dev (x86_64/linux))"


def test_ipv6() -> None:
    msg = req("invite-ipv6.sip")
    assert msg.sip_ruri.host == "[2001:db8::10]" and msg.sip_ruri.port == 5060
    assert msg.vias[0] == Via(
        "UDP", "[2001:db8::1]", 5060, {"branch": "z9hG4bKv6hop2", "rport": None}
    )
    assert msg.vias[1].sent_by == ("[2001:db8::9:1]", None)
    assert msg.contacts[0].sip_uri.hostport == "[2001:db8::1]:5060"
    assert msg.from_.sip_uri.host == "[2001:db8::1]"
    assert msg.addresses("route")[0].sip_uri.host == "[2001:db8::20]"
    assert str(msg.vias[0]) == "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKv6hop2;rport"


def test_register_wildcard_contact() -> None:
    msg = req("register-contact-star.sip")
    assert msg.method == "REGISTER"
    assert [c.is_wildcard for c in msg.contacts] == [True]
    assert msg.get("expires") == "0"
    assert str(msg.contacts[0]) == "*"


def test_refer_to_with_replaces() -> None:
    msg = req("refer-replaces.sip")
    (refer_to,) = msg.addresses("refer-to")
    assert refer_to.sip_uri.user == "carol"
    assert refer_to.sip_uri.headers is not None
    assert refer_to.sip_uri.headers.startswith("Replaces=12345%40192.0.2.3%3Bto-tag%3D12345")
    attended = req("opensips-s5-f019-PROXY-to-A-REFER.sip")
    assert attended.addresses("refer-to")[0].sip_uri.headers == (
        "Replaces=att2-1%40127.0.0.1%3Bto-tag%3D16859C1%3Bfrom-tag%3D16861D1"
    )


def test_tel_uri() -> None:
    msg = req("invite-tel-uri.sip")
    assert msg.ruri == AbsoluteUri("tel", "+1-201-555-0123")
    assert msg.to.uri == AbsoluteUri("tel", "+1-201-555-0123")
    with pytest.raises(ParseError) as err:
        msg.sip_ruri  # noqa: B018
    assert err.value.status == 416


def test_display_names() -> None:
    msg = req("invite-display-names.sip")
    assert msg.from_.display == r'"Doe, John \"JD\" \\ Jr."'
    assert msg.from_tag == "dn-1"
    assert msg.to.display == "Mr. Bob Smith"
    assert msg.contacts[0].display == '"<not a uri>, really"'
    assert len(msg.addresses("p-asserted-identity")) == 2
    regs = resp("resp-200-register-contacts.sip")
    assert [(c.display, c.params.get("expires")) for c in regs.contacts] == [
        ('"Desk, 2nd floor"', "3600"),
        (r'"Mobile \"work\""', "60"),
        (None, "120"),
    ]


def test_params_without_values() -> None:
    msg = req("options-params-without-values.sip")
    assert msg.sip_ruri.params == {"lr": None, "ob": None, "transport": "tcp"}
    assert msg.top_via.params == {"rport": None, "branch": "z9hG4bKflag1", "alias": None}
    assert msg.from_.params == {"tag": "flag-from", "silent": None}
    assert msg.contacts[0].params["expires"] is None
    assert (
        msg.contacts[0].params["+sip.instance"]
        == '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
    )


def test_invalid_utf8_is_kept_not_rejected() -> None:
    data = load("invite-bad-utf8-display.sip")
    msg = parse_message(data)
    assert msg.from_tag == "latin1-1"
    assert msg.from_.display is not None
    assert msg.from_.display.encode("utf-8", "surrogateescape") == b'"Jos\xe9 \xff\xfe Mar\xc3"'
    assert msg.to_bytes() == data
    msg.prepend("via", "SIP/2.0/UDP me.example.com;branch=z9hG4bKme")
    assert b'From: "Jos\xe9 \xff\xfe Mar\xc3" <sip:jose@' in msg.to_bytes()


def test_utf8_body_length_is_in_bytes() -> None:
    msg = req("message-utf8-body.sip")
    assert msg.body.decode() == "Grüße aus Köln ☕\r\n\r\nzweite Zeile\r\n"
    assert msg.from_.display == '"Jürgen Groß"'
    assert msg.content_type == "text/plain"


def test_unusual_method_and_transports() -> None:
    msg = req("request-unusual-method.sip")
    assert msg.method == "~odd.Method_42!%*+`'"
    assert msg.cseq.method == msg.method
    many = req("options-many-transports.sip")
    assert [v.transport for v in many.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP", "WSS"]


def test_body_may_contain_blank_lines_and_binary() -> None:
    msg = req("invite-multipart-binary-body.sip")
    assert b"\x00\x01\x02\r\n\r\n\xff\xfe\x00SIP/2.0 200 OK" in msg.body
    assert msg.body.endswith(b"--boundary42--\r\n")
    assert msg.content_type == "multipart/mixed"


# -- parser fixes found by these tests (each has a recorded message) ----------------------------


@pytest.mark.parametrize("key", ["contact", "route", "record-route"])
def test_address_cache_follows_every_mutation(key: str) -> None:
    # `addresses()` used to keep serving the list it parsed first after set/remove/prepend/
    # append/pop_first_value, so a proxy popping its own Route saw the old route set.
    msg = invite()
    msg.set(key, "<sip:one.example.com>, <sip:two.example.com>")

    def hosts() -> list[str]:
        return [a.sip_uri.host for a in msg.addresses(key)]

    assert hosts() == ["one.example.com", "two.example.com"]
    msg.pop_first_value(key)
    assert hosts() == ["two.example.com"]
    msg.prepend(key, "<sip:zero.example.com>")
    assert hosts() == ["zero.example.com", "two.example.com"]
    msg.append(key, "<sip:three.example.com>")
    assert hosts() == ["zero.example.com", "two.example.com", "three.example.com"]
    msg.set(key, "<sip:only.example.com>")
    assert hosts() == ["only.example.com"]
    msg.remove(key)
    assert hosts() == []


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        ("SIP  /   2.0 /UDP     192.0.2.2;branch=390skdjuw", ("UDP", "192.0.2.2", None)),
        ("SIP / 2.0 / TCP edge.example.com:5070 ; branch = z9", ("TCP", "edge.example.com", 5070)),
        ("SIP/2.0/UDP\thost.example.com;branch=1", ("UDP", "host.example.com", None)),
        ("sip/2.0/udp host.example.com", ("UDP", "host.example.com", None)),
    ],
)
def test_via_with_white_space_around_slashes(via: str, expected: tuple[object, ...]) -> None:
    # RFC 3261 §25.1 SLASH = SWS "/" SWS; RFC 4475 §3.1.1.1. Used to raise ParseError.
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\n\r\n".encode())
    v = msg.top_via
    assert (v.transport, v.host, v.port) == expected


@pytest.mark.parametrize(
    ("cseq", "expected"),
    [
        ("0042 INVITE", CSeq(42, "INVITE")),
        ("1\tINVITE", CSeq(1, "INVITE")),
        ("  7   BYE ", CSeq(7, "BYE")),
        ("2147483647 ACK", CSeq(2**31 - 1, "ACK")),
    ],
)
def test_cseq_forms(cseq: str, expected: CSeq) -> None:
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nCSeq: {cseq}\r\n\r\n".encode())
    assert msg.cseq == expected


@pytest.mark.parametrize(
    "cseq",
    [
        "",
        "1",
        "INVITE",
        "1 INVITE BYE",
        "-1 INVITE",
        "2147483648 INVITE",
        "\u00b9 INVITE",
        "12345678901 INVITE",
    ],
)
def test_bad_cseq(cseq: str) -> None:
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nCSeq: {cseq}\r\n\r\n".encode())
    with pytest.raises(ParseError) as err:
        msg.cseq  # noqa: B018
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("value", "expected"), [("70", 70), ("0", 0), ("0068", 68), ("0000", 0), (" 255 ", 255)]
)
def test_max_forwards(value: str, expected: int) -> None:
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: {value}\r\n\r\n".encode())
    assert isinstance(msg, Request)
    assert msg.max_forwards == expected


@pytest.mark.parametrize("value", ["", "-1", "7O", "1000", "\u00b2", "\u0667", "1 2"])
def test_bad_max_forwards(value: str) -> None:
    msg = parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: {value}\r\n\r\n".encode())
    assert isinstance(msg, Request)
    with pytest.raises(ParseError):
        msg.max_forwards  # noqa: B018


def test_max_forwards_absent() -> None:
    msg = req("refer-replaces.sip")
    msg.remove("max-forwards")
    assert msg.max_forwards is None


@pytest.mark.parametrize(
    "data",
    [
        "SIP/2.0 \u00b2\u00b2\u00b2 OK\r\n\r\n".encode(),  # '²'.isdigit() but int('²') fails
        "SIP/2.0 \u0662\u0660\u0660 OK\r\n\r\n".encode(),  # Arabic-Indic 200
        "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: \u00b3\r\n\r\nabc".encode(),
        "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: \u0663\r\n\r\nabc".encode(),
    ],
)
def test_non_ascii_digits_are_parse_errors(data: bytes) -> None:
    # These used to escape as ValueError from int().
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == 400


# -- Content-Length and datagrams ----------------------------------------------------------------


def _options(body: bytes, length: str | None) -> bytes:
    head = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: cl\r\n"
    if length is not None:
        head += b"Content-Length: " + length.encode() + b"\r\n"
    return head + b"\r\n" + body


def test_datagram_body_longer_than_content_length_is_truncated() -> None:
    # RFC 3261 §18.3: extra bytes in a datagram are discarded.
    assert parse_message(_options(b"hello world", "5")).body == b"hello"
    assert parse_message(_options(b"trailing junk", "0")).body == b""


def test_content_length_longer_than_body_is_an_error() -> None:
    with pytest.raises(ParseError) as err:
        parse_message(_options(b"hello", "6"))
    assert err.value.status == 400
    with pytest.raises(ParseError):
        parse_message(_options(b"hello", "6"), datagram=False)


def test_datagram_without_content_length_takes_the_rest() -> None:
    assert parse_message(_options(b"hello", None)).body == b"hello"


def test_stream_message_needs_content_length() -> None:
    with pytest.raises(ParseError, match="Content-Length required"):
        parse_message(_options(b"hello", None), datagram=False)
    assert parse_message(_options(b"", None), datagram=False).body == b""


def test_duplicate_equal_content_lengths_are_accepted() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\nl: 2\r\n\r\nhi"
    msg = parse_message(data)
    assert msg.body == b"hi"
    assert msg.to_bytes().count(b"Content-Length") + msg.to_bytes().count(b"\r\nl:") == 1


@pytest.mark.parametrize("value", ["abc", "-1", "1 2", "", "1234567890", "0x1"])
def test_bad_content_length(value: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_message(_options(b"", value))
    assert err.value.status == 400


def test_to_bytes_recomputes_content_length() -> None:
    msg = invite()
    msg.body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    assert len(msg.body) == 31
    out = msg.to_bytes()
    assert b"Content-Length: 31\r\n\r\nv=0" in out
    assert parse_message(out).body == msg.body
    msg.remove("content-length")
    assert msg.to_bytes().endswith(b"Content-Length: 31\r\n\r\n" + msg.body)
    assert bytes(msg) == msg.to_bytes()


def test_no_header_end_means_no_body() -> None:
    msg = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x")
    assert msg.call_id == "x" and msg.body == b""


def test_keep_alive_crlfs_before_a_datagram_message() -> None:
    msg = parse_message(b"\r\n\r\n\n" + load("resp-487-request-terminated.sip"))
    assert isinstance(msg, Response) and msg.status == 487


def test_a_keep_alive_alone_is_not_a_message() -> None:
    for data in (b"", b"\r\n\r\n", b"\n", b"   \r\n"):
        with pytest.raises(ParseError):
            parse_message(data)


# -- size limits ----------------------------------------------------------------------------------


def test_size_limit() -> None:
    base = _options(b"", "0")
    at_limit = base.replace(
        b"Call-ID: cl", b"Call-ID: " + b"x" * (MAX_MESSAGE_SIZE - len(base) + 2)
    )
    assert len(at_limit) == MAX_MESSAGE_SIZE
    assert parse_message(at_limit).call_id.startswith("xxx")
    with pytest.raises(ParseError) as err:
        parse_message(at_limit + b" ")
    assert err.value.status == 513
    assert err.value.reason == "Message Too Large"
    with pytest.raises(ParseError) as err:
        parse_message(base, max_size=len(base) - 1)
    assert err.value.status == 513


def test_header_count_limit() -> None:
    lines = b"".join(b"X-H: %d\r\n" % i for i in range(MAX_HEADERS))
    assert (
        len(parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n" + lines + b"\r\n").headers) == MAX_HEADERS
    )
    with pytest.raises(ParseError, match="too many headers"):
        parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n" + lines + b"X-H: 1\r\n\r\n")


# -- the malformed corpus --------------------------------------------------------------------------

# file → (where the error shows up, status to answer with). "parse" means parse_message itself;
# otherwise the message parses (lazily) and the named accessor raises.
MALFORMED: dict[str, tuple[str, int]] = {
    "bad-start-line.sip": ("parse", 400),
    "bad-version-request.sip": ("parse", 505),
    "bad-version-response.sip": ("parse", 505),
    "bad-status-code.sip": ("parse", 400),
    "unicode-digit-status.sip": ("parse", 400),
    "missing-colon.sip": ("parse", 400),
    "bad-header-name.sip": ("parse", 400),
    "continuation-first.sip": ("parse", 400),
    "nul-in-method.sip": ("parse", 400),
    "nul-bytes-line.sip": ("parse", 400),
    "bad-content-length.sip": ("parse", 400),
    "negative-content-length.sip": ("parse", 400),
    "unicode-digit-content-length.sip": ("parse", 400),
    "content-length-exceeds-body.sip": ("parse", 400),
    "conflicting-content-length.sip": ("parse", 400),
    "oversize.sip": ("parse", 513),
    "unterminated-quote.sip": ("from_", 400),
    "unterminated-angle.sip": ("to", 400),
    "bad-cseq.sip": ("cseq", 400),
    "cseq-without-method.sip": ("cseq", 400),
    "bad-max-forwards.sip": ("max_forwards", 400),
    "bad-via.sip": ("vias", 400),
    "unterminated-ipv6-via.sip": ("vias", 400),
    # found by tests/fuzz/fuzz_parser.py: a CR in a Via host was kept and printed back
    "via-host-control-char.sip": ("vias", 400),
    # found by the fuzz smoke test in CI: a CR inside the Via transport was kept
    "via-transport-control-char.sip": ("vias", 400),
    "bad-ruri-port.sip": ("ruri", 400),
    "missing-call-id.sip": ("call_id", 400),
}

ACCESSORS = ("call_id", "cseq", "from_", "to", "vias", "contacts", "ruri", "max_forwards")


def test_malformed_table_matches_the_directory() -> None:
    assert {p.name for p in MALFORMED_DIR.glob("*.sip")} == MALFORMED.keys()


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed(name: str) -> None:
    stage, status = MALFORMED[name]
    data = (MALFORMED_DIR / name).read_bytes()
    if stage == "parse":
        with pytest.raises(ParseError) as err:
            parse_message(data)
    else:
        msg: Message = parse_message(data)
        for accessor in ACCESSORS:
            if accessor == stage:
                break
            if hasattr(msg, accessor):
                getattr(msg, accessor)  # the fields before it are fine
        with pytest.raises(ParseError) as err:
            getattr(msg, stage)
    assert err.value.status == status
    assert err.value.detail


def test_malformed_on_a_stream() -> None:
    with pytest.raises(ParseError) as err:
        StreamFramer().feed((MALFORMED_DIR / "oversize.sip").read_bytes())
    assert err.value.status == 513
    with pytest.raises(ParseError):
        StreamFramer().feed((MALFORMED_DIR / "conflicting-content-length.sip").read_bytes())
    # A Content-Length longer than the body only means "wait for more" on a stream.
    framer = StreamFramer()
    assert framer.feed((MALFORMED_DIR / "content-length-exceeds-body.sip").read_bytes()) == []


# -- the stream framer ------------------------------------------------------------------------------


def test_framer_byte_by_byte() -> None:
    data = load("resp-200-invite-sdp.sip")
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(data)):
        got = framer.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert got == []
        out += got
    assert out == [data]
    assert framer.feed(b"") == []


def test_framer_is_linear_in_a_slow_header() -> None:
    """Regression (found while fuzzing): every read used to search the whole buffer for the
    end of the header section again, so a 65 kB header sent one byte per TCP segment cost
    about 13 s of CPU. The search now resumes where it stopped."""
    head = b"OPTIONS sip:a@example.com SIP/2.0\r\nX-Long: " + b"a" * 60000
    message = head + b"\r\nContent-Length: 3\r\n\r\nabc"
    framer = StreamFramer()
    out: list[bytes] = []
    started = time.process_time()
    for i in range(len(message)):
        out += framer.feed(message[i : i + 1])
    assert out == [message]
    assert time.process_time() - started < 2.0
    # A header end split across two reads is still found.
    framer = StreamFramer()
    assert framer.feed(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\n\r") == []
    assert framer.feed(b"\n") == [b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\n"]


def test_framer_pipelined_messages_and_keep_alives() -> None:
    names = [
        "invite-compact-forms.sip",
        "resp-180-multi-value-one-line.sip",
        "invite-multipart-binary-body.sip",
        "message-bare-lf.sip",
    ]
    messages = [load(n) for n in names]
    stream = b"\r\n\r\n" + b"\r\n".join(messages) + b"\r\n\r\n"
    framer = StreamFramer()
    assert framer.feed(stream) == messages
    assert framer.feed(b"\r\n") == []
    # Split at every point in two: still the same messages.
    for cut in range(0, len(stream), 7):
        framer = StreamFramer()
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == messages


def test_framer_compact_content_length_and_partial_body() -> None:
    framer = StreamFramer()
    head = b"MESSAGE sip:a@b SIP/2.0\r\nl: 10\r\n\r\n"
    assert framer.feed(head + b"01234") == []
    assert framer.feed(b"5678") == []
    assert framer.feed(b"9OPTIONS") == [head + b"0123456789"]
    assert framer.feed(b" sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n") == [
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    ]


def test_framer_errors() -> None:
    with pytest.raises(ParseError, match="Content-Length required"):
        StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n")
    with pytest.raises(ParseError, match="bad Content-Length"):
        StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n")
    with pytest.raises(ParseError, match="bad Content-Length"):
        StreamFramer().feed(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1234567890\r\n\r\n")
    with pytest.raises(ParseError) as err:
        StreamFramer(max_size=100).feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 90\r\n\r\n")
    assert err.value.status == 513
    framer = StreamFramer(max_size=100)
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 60) == []
    with pytest.raises(ParseError) as err:
        framer.feed(b"y" * 60)  # no end of headers in sight and over the limit
    assert err.value.status == 513


def test_framer_output_parses_as_a_stream_message() -> None:
    framer = StreamFramer()
    (one,) = framer.feed(load("opensips-s4-f012-A-to-PROXY-NOTIFY.sip"))
    msg = parse_message(one, datagram=False)
    assert msg.body == b"SIP/2.0 100 Trying\r\n"
    assert msg.content_type == "message/sipfrag"


@pytest.mark.parametrize(
    ("vias", "branch"),
    [
        (["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours.1"], "z9hG4bKours.1"),
        (["SIP/2.0/UDP host ; branch = z9hG4bKx ;rport"], "z9hG4bKx"),
        (["SIP/2.0/UDP host;rport", "SIP/2.0/UDP other;branch=z9hG4bKtheirs"], ""),
        # several values on one line: parsed in full, so the second value's branch is not
        # taken for the first's
        (["SIP/2.0/UDP host;rport, SIP/2.0/UDP other;branch=z9hG4bKtheirs"], ""),
        (["SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"], "z9hG4bK1"),
    ],
)
def test_top_branch_reads_the_first_via_only(vias: list[str], branch: str) -> None:
    lines = "".join(f"Via: {v}\r\n" for v in vias)
    msg = parse_message(f"SIP/2.0 200 OK\r\n{lines}CSeq: 1 BYE\r\n\r\n".encode())
    assert msg.top_branch == branch == (msg.top_via.branch or "")

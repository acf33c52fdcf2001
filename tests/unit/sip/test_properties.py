"""Property tests of the parser, serializer and stream framer (hypothesis).

Every test runs a fixed number of examples with `derandomize=True` and no example database,
so a CI run is deterministic (same examples every time) and the module takes ~10 s.

- arbitrary and SIP-shaped bytes: `parse_message` and every accessor raise nothing but
  `ParseError`, and whatever parses re-serializes to a message that parses the same;
- generated valid messages survive `to_bytes()` → `parse_message` unchanged;
- mutated corpus messages (flips, truncation, insertion, deletion) also raise nothing but
  `ParseError`, and re-serialize when they parse;
- the stream framer cuts a concatenation of corpus messages, fed in random chunks, back into
  exactly those messages.
"""

from __future__ import annotations

import contextlib
import re
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchboard.sip import CSeq, ParseError, Request, Response, Via, parse_message
from switchboard.sip.framing import StreamFramer
from switchboard.sip.headers import header_key
from switchboard.sip.message import Header, Message, _head_end
from switchboard.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri
from tests.unit.kit.message import read_every_value

DATA = Path(__file__).parents[2] / "data"
CORPUS = [p.read_bytes() for p in sorted(DATA.glob("*.sip"))]

BASE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- (a) arbitrary input ------------------------------------------------------------------------


def exercise(data: bytes, *, datagram: bool = True) -> Message | None:
    """Parse and read every field; only ParseError may come out. Returns the message."""
    try:
        msg = parse_message(data, datagram=datagram)
    except ParseError:
        return None
    read_every_value(msg, lambda: [str(v) for v in msg.vias],
                     lambda: [str(a) for a in msg.contacts])
    return msg


def assert_reserializes(msg: Message) -> None:
    """What we parsed, we print as a message that parses to the same thing."""
    out = msg.to_bytes()
    again = parse_message(out)
    assert again.start_line() == msg.start_line()
    assert [h for h in again.headers if h[0] != "content-length"] == [
        h for h in msg.headers if h[0] != "content-length"
    ]
    assert again.body == msg.body
    assert again.to_bytes() == out


# Pieces that steer random input into the interesting corners of the grammar.
# fmt: off
FRAGMENTS = [
    b"sip:", b"sips:", b"tel:", b"<", b">", b'"', b"\\", b",", b";", b"=", b"tag", b"branch",
    b"@", b":", b"[", b"]", b"2001:db8::1", b"example.com", b"192.0.2.1", b"5060", b"65536",
    b"SIP/2.0/UDP ", b"SIP / 2.0 / TCP ", b"INVITE", b" ", b"\t", b"\r\n ", b"\n\t", b"0", b"7",
    b"\xc2\xb2", b"\xd9\xa3", b"\xff", b"\xc3", b"\x00", b"*", b"?", b"%41", b"lr", b"\r",
    b"\n", b"\r\n", b"\r\n\r\n", b"rport", b"received", b"99999999999",
]
# fmt: on
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, len(FRAGMENTS) - 1)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, arg in ops:
        pos = where % (len(buf) + 1)
        if op == "flip" and pos < len(buf):
            buf[pos] ^= arg
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = FRAGMENTS[arg]
        elif op == "delete":
            del buf[pos : pos + arg]
    return bytes(buf)


ADDRESSES = [
    b'"Alice \\"A\\", Jr" <sip:alice:pw@example.com:5060;transport=tcp?X=1>;tag=a1',
    b"<sip:[2001:db8::1]:5060;lr>",
    b"sip:bob@example.com;tag=9",
    b"*",
    b"<tel:+1-201-555-0123>;tag=t",
    b"Bob <sips:b@h.example.com>, <sip:c@192.0.2.1;lr>",
    b"<sip:c@x?Replaces=a%40b%3Bto-tag%3D1>",
]
TEMPLATES: dict[bytes, list[bytes]] = {
    b"via": [
        b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        b"SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK2, SIP/2.0/UDP h.example.com;received=x",
        b"SIP / 2.0 / UDP h.example.com ;branch= z9hG4bK3",
    ],
    b"from": ADDRESSES,
    b"to": ADDRESSES,
    b"contact": ADDRESSES,
    b"route": ADDRESSES,
    b"record-route": ADDRESSES,
    b"refer-to": ADDRESSES,
    b"cseq": [b"1 INVITE", b"0042 BYE", b"4294967296 X", b"7\tACK"],
    b"call-id": [b"a84b4c76e66710@pc33.example.com"],
    b"max-forwards": [b"70", b"0070", b"256"],
    b"content-length": [b"0", b"4", b"10"],
    b"content-type": [b"application/sdp;charset=x"],
    b"x-odd": [b";;,,;;,;", b""],
}
HEADER_NAMES: dict[bytes, bytes] = {
    b"Via": b"via",
    b"v": b"via",
    b"VIA": b"via",
    b"From": b"from",
    b"f": b"from",
    b"To": b"to",
    b"t": b"to",
    b"Call-ID": b"call-id",
    b"i": b"call-id",
    b"CSeq": b"cseq",
    b"Contact": b"contact",
    b"m": b"contact",
    b"Max-Forwards": b"max-forwards",
    b"Route": b"route",
    b"Record-Route": b"record-route",
    b"Refer-To": b"refer-to",
    b"r": b"refer-to",
    b"Content-Length": b"content-length",
    b"l": b"content-length",
    b"Content-Type": b"content-type",
    b"c": b"content-type",
    b"X-Odd": b"x-odd",
}

fragment = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=4))
wire_value = st.lists(fragment, max_size=10).map(b"".join)


def noisy(template: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid piece, half the time left alone, otherwise damaged by an edit or two."""
    return template | st.builds(mutate, template, st.lists(mutation, min_size=1, max_size=2))


request_line = noisy(
    st.sampled_from(
        [
            b"INVITE sip:bob@example.com:5060;transport=udp SIP/2.0",
            b"OPTIONS sip:[2001:db8::1] SIP/2.0",
            b"REFER tel:+12015550123 SIP/2.0",
            b"X!~ sips:a:b@h.example.com?h=v SIP/2.0",
        ]
    )
)
status_line = noisy(st.sampled_from([b"SIP/2.0 200 OK", b"SIP/2.0 180 ", b"SIP/2.0 487 x y"]))


_VALUES = {
    key: st.one_of(noisy(st.sampled_from(values)), wire_value) for key, values in TEMPLATES.items()
}
_SEPARATORS = st.sampled_from([b": ", b": ", b": ", b":", b" : ", b"\t:\r\n "])
header_line = st.one_of(
    [
        st.builds(
            lambda name, sep, value: name + sep + value, st.just(name), _SEPARATORS, _VALUES[key]
        )
        for name, key in sorted(HEADER_NAMES.items())
    ]
)


sip_shaped = st.builds(
    lambda start, lines, e, sep, body: start + e + e.join(lines) + sep + body,
    st.one_of(request_line, status_line),
    st.lists(header_line, max_size=12),
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]),
    st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
    st.binary(max_size=40),
)


@settings(BASE, max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_parse_error(data: bytes) -> None:
    exercise(data)
    exercise(data, datagram=False)


@settings(BASE, max_examples=1000)
@given(sip_shaped)
def test_sip_shaped_bytes_raise_only_parse_error(data: bytes) -> None:
    msg = exercise(data)
    if msg is not None:
        assert_reserializes(msg)
    exercise(data, datagram=False)


# -- (b) generated valid messages round-trip ------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"

token = st.text(TOKEN_CHARS, min_size=1, max_size=10)
escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}")
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostname = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(label, max_size=3),
    st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True),
)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: "[" + ":".join(f"{x:x}" for x in g) + "]"
) | st.sampled_from(["[::1]", "[2001:db8::1]", "[::ffff:192.0.2.1]", "[fe80::1%25eth0]"])
host = st.one_of(hostname, ipv4, ipv6)
port = st.none() | st.integers(0, 65535)
# User parts may hold `;` and escapes; `?` is left out because the parser (leniently, like
# OpenSIPS) takes the first `?` as the start of the URI headers.
user = st.lists(
    st.one_of(st.text(UNRESERVED + "&=+$,;/", min_size=1, max_size=4), escaped),
    min_size=1,
    max_size=4,
).map("".join)
password = st.text(UNRESERVED + "&=+$,", max_size=6)
param_chars = UNRESERVED + "[]/:&+$"
uri_params = st.dictionaries(
    st.text(param_chars, min_size=1, max_size=8),
    st.none() | st.text(param_chars, min_size=1, max_size=8),
    max_size=4,
)
uri_headers = st.none() | st.lists(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.text(UNRESERVED, min_size=1, max_size=6),
        st.lists(st.text(UNRESERVED + "[]/?:+$", min_size=1, max_size=4) | escaped, max_size=3).map(
            "".join
        ),
    ),
    min_size=1,
    max_size=3,
).map("&".join)


@st.composite
def sip_uris(draw: st.DrawFn, *, with_headers: bool = True) -> SipUri:
    u = draw(st.none() | user)
    return SipUri(
        host=draw(host),
        user=u,
        password=None if u is None else draw(st.none() | password),
        port=draw(port),
        params=draw(uri_params),
        headers=draw(uri_headers) if with_headers else None,
        scheme=draw(st.sampled_from(["sip", "sips"])),
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


display = (
    st.none()
    | st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=12).map(_quote)
    | st.lists(token, min_size=1, max_size=3).map(" ".join)
)
header_params = st.dictionaries(
    token,
    st.none() | token | st.text(UNRESERVED + " ,:<>@", max_size=8).map(_quote),
    max_size=3,
)


@st.composite
def name_addrs(draw: st.DrawFn, *, tag: bool | None = None) -> NameAddr:
    params = draw(header_params)
    params.pop("tag", None)
    if tag or (tag is None and draw(st.booleans())):
        params = {"tag": draw(token), **params}
    return NameAddr(draw(sip_uris(with_headers=False)), draw(display), params)


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params: dict[str, str | None] = {"branch": "z9hG4bK" + draw(token)}
    params.update(
        draw(st.dictionaries(token.filter(lambda t: t != "branch"), st.none() | token, max_size=3))
    )
    return Via(draw(token).upper(), draw(host), draw(port), params)


def _spellings(name: str) -> st.SearchStrategy[str]:
    compact = {"via": "v", "from": "f", "to": "t", "call-id": "i", "contact": "m"}
    forms = [name, name.upper(), name.lower(), name.title()]
    if name.lower() in compact:
        forms.append(compact[name.lower()])
    return st.sampled_from(forms)


# A header name as a peer might write it: any letter case, or its compact form.
_SPELLED = {n: _spellings(n) for n in ("Via", "From", "To", "Call-ID", "CSeq", "Contact")}


def spelled(name: str) -> st.SearchStrategy[str]:
    return _SPELLED[name]


# Headers `messages()` writes itself; extra random headers must not collide with them.
_BUILT_IN = frozenset(
    {"content-length", "via", "from", "to", "call-id", "cseq", "contact", "max-forwards"}
)
header_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=30
).filter(lambda v: v == v.strip())


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, dict[str, Any]]:
    """A valid message and the structured values it was built from."""
    expect: dict[str, Any] = {
        "vias": draw(st.lists(vias(), min_size=1, max_size=4)),
        "from": draw(name_addrs(tag=True)),
        "to": draw(name_addrs()),
        "call-id": draw(st.text(TOKEN_CHARS + '()<>:\\"/[]?{}', min_size=1, max_size=20)),
        "cseq": CSeq(draw(st.integers(0, 2**31 - 1)), draw(token)),
        "contacts": draw(st.lists(name_addrs(tag=False), max_size=3)),
    }
    ordered: list[Header] = []  # lines whose relative order carries meaning
    free: list[Header] = []

    def add(lines: list[Header], name: str, value: str) -> None:
        lines.append((header_key(name), name, value))

    # Multi-value headers: all on one line, one per line, or a mix.
    via_values = [str(v) for v in expect["vias"]]
    split = draw(st.integers(0, len(via_values)))
    for chunk in (via_values[:split], via_values[split:]):
        if chunk:
            add(ordered, draw(spelled("Via")), ", ".join(chunk))
    for contact in expect["contacts"]:
        add(ordered, draw(spelled("Contact")), str(contact))
    add(free, draw(spelled("From")), str(expect["from"]))
    add(free, draw(spelled("To")), str(expect["to"]))
    add(free, draw(spelled("Call-ID")), expect["call-id"])
    add(free, draw(spelled("CSeq")), str(expect["cseq"]))
    for name, value in draw(st.lists(st.tuples(token, header_text), max_size=5)):
        if header_key(name) not in _BUILT_IN:
            add(free, name, value)
    # Interleave: the free lines in any order, the ordered ones in theirs.
    free = draw(st.permutations(free))
    picks = draw(st.permutations([True] * len(ordered) + [False] * len(free)))
    ordered_iter, free_iter = iter(ordered), iter(free)
    headers = [next(ordered_iter) if pick else next(free_iter) for pick in picks]
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        uri = draw(sip_uris())
        expect["ruri"] = uri
        method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "REFER", "NOTIFY"]) | token)
        expect["max-forwards"] = draw(st.integers(0, 255))
        headers.insert(
            draw(st.integers(0, len(headers))),
            ("max-forwards", "Max-Forwards", str(expect["max-forwards"])),
        )
        return Request(method, str(uri), headers, body), expect
    reason = draw(header_text)
    return Response(draw(st.integers(100, 699)), reason, headers, body), expect


@settings(BASE, max_examples=200)
@given(messages())
def test_generated_messages_round_trip(case: tuple[Message, dict[str, Any]]) -> None:
    msg, expect = case
    wire = msg.to_bytes()
    for datagram in (True, False):
        back = parse_message(wire, datagram=datagram)
        assert type(back) is type(msg)
        assert back.start_line() == msg.start_line()
        assert [h for h in back.headers if h[0] != "content-length"] == msg.headers
        assert back.get("content-length") == str(len(msg.body))
        assert back.body == msg.body
    assert StreamFramer().feed(wire) == [wire]
    # The structured values come back as they were built.
    assert back.vias == expect["vias"]
    assert back.from_ == expect["from"]
    assert back.to == expect["to"]
    assert back.from_tag == expect["from"].tag
    assert back.call_id == expect["call-id"]
    assert back.cseq == expect["cseq"]
    assert back.contacts == expect["contacts"]
    if isinstance(back, Request):
        assert back.ruri == expect["ruri"]
        assert back.max_forwards == expect["max-forwards"]
    else:
        assert isinstance(msg, Response)
        assert (back.status, back.reason) == (msg.status, msg.reason)


@settings(BASE, max_examples=200)
@given(sip_uris())
def test_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@settings(BASE, max_examples=200)
@given(name_addrs())
def test_name_addr_round_trip(addr: NameAddr) -> None:
    assert parse_name_addr(str(addr)) == addr


# -- (c) mutated corpus messages ----------------------------------------------------------------


@settings(BASE, max_examples=1000)
@given(st.sampled_from(CORPUS), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_corpus_raises_only_parse_error(
    data: bytes, ops: list[tuple[str, int, int]]
) -> None:
    mutated = mutate(data, ops)
    msg = exercise(mutated)
    if msg is not None:
        assert_reserializes(msg)
    exercise(mutated, datagram=False)
    with contextlib.suppress(ParseError):
        for frame in StreamFramer().feed(mutated):
            exercise(frame, datagram=False)


# -- (d) the stream framer ------------------------------------------------------------------------


@settings(BASE, max_examples=200)
@given(
    st.lists(st.sampled_from(CORPUS), min_size=1, max_size=6),
    st.lists(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"]), min_size=7, max_size=7),
    st.lists(st.integers(1, 400), min_size=1, max_size=50),
)
def test_framer_splits_a_stream_back_into_its_messages(
    msgs: list[bytes], keep_alives: list[bytes], chunk_sizes: list[int]
) -> None:
    stream = b"".join(ka + m for ka, m in zip(keep_alives, msgs, strict=False)) + keep_alives[-1]
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = chunk_sizes[i % len(chunk_sizes)]
        out += framer.feed(stream[pos : pos + size])
        pos += size
        i += 1
    assert out == msgs
    assert framer.feed(b"") == []


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@BASE
@given(st.binary(max_size=64) | st.lists(st.sampled_from([b"\r", b"\n", b"a", b" "]),
                                          max_size=24).map(b"".join),
       st.integers(min_value=0, max_value=4))
def test_head_end_is_the_first_blank_line(data: bytes, start: int) -> None:
    # The byte searches that replaced the regex find the same span, whatever mix of CRLF,
    # bare LF and bare CR surrounds it.
    m = _BLANK_LINE.search(data, start)
    assert _head_end(data, start) == (None if m is None else (m.start(), m.end()))

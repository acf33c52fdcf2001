"""URIs and name-addr values: parsing, printing and the errors malformed ones raise."""

from __future__ import annotations

import pytest

from switchboard.sip import ParseError
from switchboard.sip.uri import (
    AbsoluteUri,
    NameAddr,
    SipUri,
    format_params,
    parse_name_addr,
    parse_sip_uri,
    parse_uri,
    split_header_values,
)

# -- SIP URIs ---------------------------------------------------------------------------------


def test_full_sip_uri() -> None:
    uri = parse_uri("sip:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=x&h=y")
    assert uri == SipUri(
        host="atlanta.example.com",
        user="alice",
        password="secret",
        port=5061,
        params={"transport": "tcp", "lr": None},
        headers="subject=x&h=y",
    )
    assert uri.hostport == "atlanta.example.com:5061"
    assert uri.transport == "tcp"


def test_minimal_sip_uri() -> None:
    uri = parse_uri("sip:example.com")
    assert uri == SipUri(host="example.com")
    assert uri.user is None and uri.port is None and uri.params == {} and uri.headers is None
    assert uri.transport == "udp"
    assert uri.hostport == "example.com"


def test_scheme_is_case_insensitive_and_printed_lower() -> None:
    uri = parse_uri("SIPS:bob@biloxi.example.com")
    assert isinstance(uri, SipUri)
    assert uri.scheme == "sips"
    assert uri.transport == "tls"
    assert str(uri) == "sips:bob@biloxi.example.com"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:alice@[2001:db8::1]:5060", "[2001:db8::1]", 5060),
        ("sip:[2001:db8::10]:5060;transport=udp", "[2001:db8::10]", 5060),
        ("sip:[::ffff:192.0.2.1]:5070", "[::ffff:192.0.2.1]", 5070),
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060),
    ],
)
def test_hosts(text: str, host: str, port: int | None) -> None:
    uri = parse_sip_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_refer_to_replaces_headers_are_kept_escaped() -> None:
    text = (
        "sip:carol@chicago.example.com?Replaces=12345%40192.0.2.3%3Bto-tag%3D12345"
        "%3Bfrom-tag%3D5FFE-3994"
    )
    uri = parse_sip_uri(text)
    assert uri.host == "chicago.example.com"
    assert uri.params == {}
    assert uri.headers == "Replaces=12345%40192.0.2.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994"
    assert str(uri) == text


def test_params_without_values_keep_order_and_print_back() -> None:
    uri = parse_sip_uri("sip:carol@chicago.example.com;lr;ob;transport=TCP;maddr=192.0.2.9")
    assert list(uri.params.items()) == [
        ("lr", None),
        ("ob", None),
        ("transport", "TCP"),
        ("maddr", "192.0.2.9"),
    ]
    assert uri.transport == "tcp"
    assert uri.has_param("LR")
    assert not uri.has_param("rport")
    assert str(uri) == "sip:carol@chicago.example.com;lr;ob;transport=TCP;maddr=192.0.2.9"


def test_semicolon_and_escapes_in_user_part() -> None:
    # RFC 4475 §3.1.1.7 (semiuri): the `;` belongs to the user part, before the `@`.
    uri = parse_sip_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == {}
    esc = parse_sip_uri("sip:sips%3Auser%40example.com@example.net")
    assert esc.user == "sips%3Auser%40example.com"  # kept escaped, printed unchanged
    assert str(esc) == "sip:sips%3Auser%40example.com@example.net"


def test_empty_password() -> None:
    uri = parse_sip_uri("sip:alice:@example.com")
    assert uri.user == "alice" and uri.password == ""
    assert str(uri) == "sip:alice:@example.com"


def test_copy_is_independent() -> None:
    uri = parse_sip_uri("sip:a@example.com;lr")
    other = uri.copy()
    other.params["x"] = "1"
    other.port = 5070
    assert uri.params == {"lr": None} and uri.port is None
    assert other == SipUri(host="example.com", user="a", port=5070, params={"lr": None, "x": "1"})


# -- other schemes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
        "urn:service:sos",
        "http://www.example.com/x?y=1",
    ],
)
def test_other_schemes_are_opaque(text: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, AbsoluteUri)
    assert str(uri) == text
    with pytest.raises(ParseError) as err:
        parse_sip_uri(text)
    assert err.value.status == 416


def test_tel_scheme_is_lowered() -> None:
    assert parse_uri("TEL:+12015550123") == AbsoluteUri("tel", "+12015550123")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@example.com",  # no scheme
        ":alice@example.com",
        "1sip:alice@example.com",
        "s!p:alice@example.com",
        "sip:alice @example.com",
        "sip:alice@example.com>",
        "sip:<alice@example.com",
        'sip:"alice"@example.com',
        "sip:@example.com",  # empty user
        "sip:",
        "sip:alice@",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:123456",
        "sip:alice@example.com:50x0",
        "sip:alice@example.com:5060:5060",
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]5060",
        "sip:alice@example.com;=value",
        "tel:",
        "tel:+1 201",
        "sip:alice@example.com:\u00b2",  # '²'.isdigit() is true, int('²') is not
        "sip:alice@example.com:\u0665\u0660\u0666\u0660",  # Arabic-Indic digits
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_uri(text)
    assert err.value.status == 400


# -- name-addr --------------------------------------------------------------------------------


def test_quoted_display_name_with_escapes_and_comma() -> None:
    addr = parse_name_addr(r'"Doe, John \"JD\" \\ Jr." <sip:jdoe@example.com>;tag=dn-1')
    assert addr.display == r'"Doe, John \"JD\" \\ Jr."'
    assert addr.uri == SipUri(host="example.com", user="jdoe")
    assert addr.tag == "dn-1"
    assert str(addr) == r'"Doe, John \"JD\" \\ Jr." <sip:jdoe@example.com>;tag=dn-1'


def test_token_display_name() -> None:
    addr = parse_name_addr("Mr. Bob Smith <sip:bob@example.net>")
    assert addr.display == "Mr. Bob Smith"
    assert str(addr) == "Mr. Bob Smith <sip:bob@example.net>"


def test_angle_brackets_without_display() -> None:
    addr = parse_name_addr("  <sip:bob@example.net;transport=tcp> ;tag=abc;expires")
    assert addr.display is None
    assert addr.sip_uri.params == {"transport": "tcp"}
    assert addr.params == {"tag": "abc", "expires": None}
    assert str(addr) == "<sip:bob@example.net;transport=tcp>;tag=abc;expires"


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 §20: without <>, everything after the first `;` is a header parameter.
    addr = parse_name_addr("sip:carol@chicago.example.com ;   tag    = 8321234356")
    assert addr.uri == SipUri(host="chicago.example.com", user="carol")
    assert addr.tag == "8321234356"
    assert str(addr) == "<sip:carol@chicago.example.com>;tag=8321234356"


def test_quoted_parameter_value_with_angle_brackets() -> None:
    addr = parse_name_addr('<sip:u@192.0.2.5;ob>;+sip.instance="<urn:uuid:f81d4fae>";reg-id=1')
    assert addr.params == {"+sip.instance": '"<urn:uuid:f81d4fae>"', "reg-id": "1"}


def test_display_name_with_angle_bracket_inside_quotes() -> None:
    addr = parse_name_addr('"<not a uri>, really" <sip:jdoe@host1.example.com>')
    assert addr.display == '"<not a uri>, really"'
    assert addr.sip_uri.host == "host1.example.com"


def test_invalid_utf8_display_survives() -> None:
    raw = b'"Jos\xe9 \xff" <sip:jose@example.com>;tag=1'.decode("utf-8", "surrogateescape")
    addr = parse_name_addr(raw)
    assert (
        str(addr).encode("utf-8", "surrogateescape")
        == b'"Jos\xe9 \xff" <sip:jose@example.com>;tag=1'
    )


def test_wildcard_contact() -> None:
    addr = parse_name_addr(" * ")
    assert addr.is_wildcard
    assert addr.uri is None
    assert str(addr) == "*"
    with pytest.raises(ParseError):
        addr.sip_uri  # noqa: B018


def test_tel_uri_in_name_addr() -> None:
    addr = parse_name_addr("<tel:+1-201-555-0123>;tag=t1")
    assert addr.uri == AbsoluteUri("tel", "+1-201-555-0123")
    assert not addr.is_wildcard
    with pytest.raises(ParseError) as err:
        addr.sip_uri  # noqa: B018
    assert err.value.status == 416


def test_refer_to_with_replaces() -> None:
    addr = parse_name_addr("<sip:c@127.0.0.1:5090?Replaces=att2-1%40127.0.0.1%3Bto-tag%3D16859C1>")
    assert addr.sip_uri.headers == "Replaces=att2-1%40127.0.0.1%3Bto-tag%3D16859C1"
    assert addr.sip_uri.port == 5090
    assert str(addr) == "<sip:c@127.0.0.1:5090?Replaces=att2-1%40127.0.0.1%3Bto-tag%3D16859C1>"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '"Alice <sip:alice@example.com>;tag=1',  # unterminated quote
        '"Alice" sip:alice@example.com',  # quoted display without <uri>
        "<sip:alice@example.com",  # unterminated <
        "Alice <sip:alice@example.com> junk",
        "<sip:alice@example.com>;;=x",
        "<>",  # OpenSIPS' Contact in an early-dialog REFER
        "<<sip:c@127.0.0.1:5090>;osid=547>",  # OpenSIPS pasting a name-addr into <>
        "sip:alice@example.com>",
    ],
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_name_addr(text)
    assert err.value.status == 400


def test_name_addr_print_forms() -> None:
    uri = SipUri(host="example.com", user="a")
    assert str(NameAddr(uri)) == "<sip:a@example.com>"
    assert str(NameAddr(uri, '"A"', {"tag": "x", "lr": None})) == '"A" <sip:a@example.com>;tag=x;lr'
    assert format_params({}) == ""


# -- comma-separated values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("", []),
        ("  ", []),
        ("a", ["a"]),
        ("a, b ,c", ["a", "b", "c"]),
        ("a,,b,", ["a", "b"]),
        ('"Doe, John" <sip:a@x>, <sip:b@x>', ['"Doe, John" <sip:a@x>', "<sip:b@x>"]),
        (r'"a \", b" <sip:a@x>, c', [r'"a \", b" <sip:a@x>', "c"]),
        ("<sip:a@x;p=1,2>, <sip:b@x>", ["<sip:a@x;p=1,2>", "<sip:b@x>"]),
        (
            "SIP/2.0/UDP a;branch=1, SIP/2.0/TCP [2001:db8::1]:5060;branch=2",
            ["SIP/2.0/UDP a;branch=1", "SIP/2.0/TCP [2001:db8::1]:5060;branch=2"],
        ),
    ],
)
def test_split_header_values(value: str, parts: list[str]) -> None:
    assert split_header_values(value) == parts


def test_split_header_values_unterminated_quote() -> None:
    with pytest.raises(ParseError):
        split_header_values('"a, <sip:a@x>, b')

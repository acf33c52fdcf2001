"""Transfer values: Refer-To for blind and attended transfers, Replaces, sipfrag status.

Refer-To is what a management client's `destination` becomes on the wire, so besides the
exact text of each mode (spec §2.3, §3.3; RFC 3515, RFC 3891) these tests pin down what is
refused: anything that could smuggle a header or is not a SIP URI.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from switchboard.sip.errors import LocalProtocolError, ParseError
from switchboard.sip.refer import (
    Replaces,
    attended_refer_to,
    blind_refer_to,
    check_text,
    escape_header_value,
    escape_param,
    parse_destination,
    parse_replaces,
    sipfrag_status,
)
from switchboard.sip.uri import parse_name_addr

# -- blind: param mode ---------------------------------------------------------------------------


def test_param_mode_puts_the_dialog_id_inside_the_uri() -> None:
    assert blind_refer_to("sip:carol@127.0.0.1:5063", "osid", "3a1.5f2") == (
        "<sip:carol@127.0.0.1:5063;osid=3a1.5f2>"
    )


def test_param_goes_after_existing_params_and_before_the_headers() -> None:
    refer_to = blind_refer_to("sip:c@example.com:5070;transport=tcp;user=phone?Subject=hi%20there",
                              "osid", "0.1")
    assert refer_to == "<sip:c@example.com:5070;transport=tcp;user=phone;osid=0.1?Subject=hi%20there>"


def test_destination_given_in_angle_brackets_is_unwrapped() -> None:
    assert blind_refer_to("<sip:c@x.example>", "osid", "0.1") == "<sip:c@x.example;osid=0.1>"
    assert blind_refer_to("  < sip:c@x.example;lr >  ", "osid", "0.1") == (
        "<sip:c@x.example;lr;osid=0.1>"
    )


def test_another_match_param_name_is_used_as_configured() -> None:
    assert blind_refer_to("sips:c@x.example", "xfer", "7.ff") == "<sips:c@x.example;xfer=7.ff>"


def test_the_refer_to_value_parses_back_with_the_param_on_the_uri() -> None:
    na = parse_name_addr(blind_refer_to("sip:c@x?h=v", "osid", "0.1"))
    assert na.params == {}  # on the URI, not a header parameter
    assert str(na.uri) == "sip:c@x;osid=0.1?h=v"


# -- blind: callid and manual modes ----------------------------------------------------------------


def test_callid_mode_escapes_the_call_id() -> None:
    # `@`, `;` and `=` would end or split the URI parameter (RFC 3261 §25.1 paramchar).
    assert blind_refer_to("sip:c@x", "osid", "abc@host;x=1") == "<sip:c@x;osid=abc%40host%3Bx%3D1>"
    assert blind_refer_to("sip:c@x", "osid", "a b?c>") == "<sip:c@x;osid=a%20b%3Fc%3E>"


def test_callid_mode_keeps_param_chars_and_round_trips() -> None:
    call_id = "Ab-9_.!~*'()[]/:&+$@;=,?%"
    refer_to = blind_refer_to("sip:c@x", "osid", call_id)
    na = parse_name_addr(refer_to)
    value = na.uri.params["osid"]  # type: ignore[union-attr]
    assert value is not None
    assert unquote(value) == call_id
    assert value.startswith("Ab-9_.!~*'()[]/:&+$%40%3B%3D%2C%3F%25")


def test_callid_mode_encodes_non_ascii_as_utf8() -> None:
    assert escape_param("é") == "%C3%A9"


def test_manual_mode_appends_nothing() -> None:
    assert blind_refer_to("sip:c@x;p=1?h=v", "osid", None) == "<sip:c@x;p=1?h=v>"
    assert blind_refer_to("<sip:c@x>", None, None) == "<sip:c@x>"


# -- attended (RFC 3891 §3) ----------------------------------------------------------------------


def test_attended_refer_to_matches_the_rfc_3891_example() -> None:
    # RFC 3891 §3, the Refer-To of the example: separators and `@` escaped.
    refer_to = attended_refer_to("sips:bob@biloxi.example.com", "12345@192.168.118.3",
                                 "12345", "5FFE-3994")
    assert refer_to == (
        "<sips:bob@biloxi.example.com?Replaces=12345%40192.168.118.3%3Bto-tag%3D12345"
        "%3Bfrom-tag%3D5FFE-3994>"
    )


def test_attended_refer_to_appends_to_existing_headers() -> None:
    refer_to = attended_refer_to("<sip:c@x;transport=tcp?Subject=hi>", "z@h", "ct", "bt")
    assert refer_to == (
        "<sip:c@x;transport=tcp?Subject=hi&Replaces=z%40h%3Bto-tag%3Dct%3Bfrom-tag%3Dbt>"
    )


def test_attended_escapes_what_would_break_the_header_value() -> None:
    # A Call-ID may hold `<`, `>` and `%` (RFC 3261 `word`), a tag `%` and `+`: `>` would end
    # the Refer-To, `%` would be read as an escape.
    refer_to = attended_refer_to("sip:c@x", "a<b>c%d@h", "t+1%", "f`'~")
    assert refer_to == "<sip:c@x?Replaces=a%3Cb%3Ec%25d%40h%3Bto-tag%3Dt+1%25%3Bfrom-tag%3Df%60'~>"
    header = refer_to[1:-1].split("?", 1)[1]
    name, _, value = header.partition("=")
    assert name == "Replaces"
    assert parse_replaces(unquote(value)) == Replaces("a<b>c%d@h", "t+1%", "f`'~")


def test_attended_keeps_hvalue_characters() -> None:
    assert escape_header_value("a/b?c:d+e$f[g]") == "a/b?c:d+e$f[g]"
    assert escape_header_value("a;b=c@d&e%f") == "a%3Bb%3Dc%40d%26e%25f"


def test_attended_refuses_control_characters_in_call_id_and_tags() -> None:
    with pytest.raises(LocalProtocolError, match="Call-ID"):
        attended_refer_to("sip:c@x", "z\r\nVia: evil", "t", "f")
    with pytest.raises(LocalProtocolError, match="to-tag"):
        attended_refer_to("sip:c@x", "z", "t\n", "f")
    with pytest.raises(LocalProtocolError, match="from-tag"):
        attended_refer_to("sip:c@x", "z", "t", "f\x00")


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "destination",
    [
        "sip:c@x\r\nVia: SIP/2.0/UDP evil",
        "sip:c@x\nX: y",
        "sip:c@x\r",
        "sip:c@x\t",
        "sip:c@x>;evil=1",
        "<sip:c@x>>",
        "<<sip:c@x>",
        "sip:<c@x",
        "sip:c@x>",
        '"Carol" <sip:c@x>',
        "sip:c@x y",
        "tel:+15551234",
        "http://example.com/",
        "urn:service:sos",
        "carol@example.com",
        "",
        "   ",
        "<>",
        "< >",
        "sip:",
        "sip:c@",
        "sip:c@x:99999",
    ],
)
def test_bad_destinations_are_refused(destination: str) -> None:
    with pytest.raises(LocalProtocolError):
        blind_refer_to(destination, "osid", "0.1")
    with pytest.raises(LocalProtocolError):
        attended_refer_to(destination, "z@h", "t", "f")


def test_non_sip_scheme_is_named_in_the_error() -> None:
    with pytest.raises(LocalProtocolError, match="sip: or sips:"):
        parse_destination("tel:+15551234")


def test_check_text_refuses_every_control_character() -> None:
    for code in [*range(32), 127]:
        with pytest.raises(LocalProtocolError, match="destination"):
            check_text(f"a{chr(code)}b", "destination")
    check_text("ok é ~", "destination")


# -- Replaces (RFC 3891 §6.1) ----------------------------------------------------------------------


def test_parse_replaces() -> None:
    assert parse_replaces("425928@bobster.example.org;to-tag=7743;from-tag=6472") == Replaces(
        "425928@bobster.example.org", "7743", "6472", False)
    assert parse_replaces(" z@h ; From-Tag = b ; TO-TAG=a ; early-only ") == Replaces(
        "z@h", "a", "b", True)
    # Other parameters are allowed and ignored.
    assert parse_replaces("z;to-tag=a;x=y;from-tag=b").call_id == "z"


@pytest.mark.parametrize("value", ["", ";to-tag=a;from-tag=b", "z;to-tag=a", "z;from-tag=b",
                                   "z", "z;to-tag;from-tag"])
def test_bad_replaces_is_a_parse_error(value: str) -> None:
    with pytest.raises(ParseError):
        parse_replaces(value)


# -- sipfrag (RFC 3420) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"SIP/2.0 100 Trying", "100 Trying"),
        (b"SIP/2.0 200 OK\r\n", "200 OK"),
        (b"SIP/2.0 486 Busy Here\r\nContact: <sip:c@x>\r\n\r\n", "486 Busy Here"),
        (b"SIP/2.0 603 Declined\n", "603 Declined"),
        (b"SIP/2.0  180 Ringing  \r\n", "180 Ringing"),
    ],
)
def test_sipfrag_status(body: bytes, status: str) -> None:
    assert sipfrag_status(body) == status


@pytest.mark.parametrize(
    "body",
    [b"", b"SIP/2.0", b"SIP/2.0 ", b"SIP/2.0 \r\n200 OK", b"sip/2.0 200 OK", b"SIP/2.0 OK",
     b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", b"INVITE sip:c@x SIP/2.0\r\n"],
)
def test_not_a_sipfrag(body: bytes) -> None:
    assert sipfrag_status(body) is None

"""Subscription table (fake `now`), sink socket strings and the event envelope."""

from __future__ import annotations

import json

import pytest

from switchboard.events import KNOWN_EVENTS
from switchboard.events.envelope import encode_event
from switchboard.events.sinks import SinkAddress, parse_sink
from switchboard.events.subscriptions import Subscription, SubscriptionTable

UDP = "udp:127.0.0.1:9000"
TCP = "tcp:127.0.0.1:9001"


# --- the table ---------------------------------------------------------------------------------


def test_subscribe_and_expire() -> None:
    table = SubscriptionTable()
    sub = table.subscribe("E_CALL_HOLD", UDP, 60, now=100.0)
    assert sub == Subscription("E_CALL_HOLD", UDP, 160.0)
    assert table.sockets_for("E_CALL_HOLD", 159.9) == [UDP]
    assert table.sockets_for("E_CALL_TRANSFER", 100.0) == []
    # Expired at exactly now + expire.
    assert table.sockets_for("E_CALL_HOLD", 160.0) == []
    assert table.expire(159.0) == []
    assert table.expire(160.0) == [sub]
    assert len(table) == 0


def test_subscribing_again_renews_and_keeps_order() -> None:
    table = SubscriptionTable()
    table.subscribe("E_CALL_HOLD", UDP, 60, now=0.0)
    table.subscribe("E_CALL_HOLD", TCP, 60, now=0.0)
    table.subscribe("E_CALL_HOLD", UDP, 600, now=50.0)
    assert table.sockets_for("E_CALL_HOLD", 100.0) == [UDP]
    assert table.sockets_for("E_CALL_HOLD", 10.0) == [UDP, TCP]
    assert table.next_expiry() == 60.0


def test_expire_zero_unsubscribes() -> None:
    table = SubscriptionTable()
    table.subscribe("E_CALL_HOLD", UDP, 60, now=0.0)
    assert table.subscribe("E_CALL_HOLD", UDP, 0, now=1.0) is None
    assert table.sockets_for("E_CALL_HOLD", 1.0) == []
    # Unsubscribing what does not exist is fine.
    assert table.subscribe("E_CALL_HOLD", UDP, 0, now=1.0) is None


def test_static_subscriptions_never_expire_and_resist_run_time_changes() -> None:
    table = SubscriptionTable()
    static = table.subscribe("E_CALL_TRANSFER", UDP, None, now=0.0)
    assert static is not None and static.static
    assert table.sockets_for("E_CALL_TRANSFER", 1e12) == [UDP]
    assert table.subscribe("E_CALL_TRANSFER", UDP, 0, now=5.0) == static
    assert table.subscribe("E_CALL_TRANSFER", UDP, 10, now=5.0) == static
    assert not table.unsubscribe("E_CALL_TRANSFER", UDP)
    assert table.expire(1e12) == []
    assert table.next_expiry() is None
    # remove() is for the bus to undo a subscription whose sink could not open.
    assert table.remove("E_CALL_TRANSFER", UDP)
    assert len(table) == 0


def test_a_static_subscription_replaces_a_run_time_one() -> None:
    table = SubscriptionTable()
    table.subscribe("E_CALL_HOLD", UDP, 10, now=0.0)
    table.subscribe("E_CALL_HOLD", UDP, None, now=1.0)
    assert table.sockets_for("E_CALL_HOLD", 1000.0) == [UDP]


def test_unsubscribe_and_sockets() -> None:
    table = SubscriptionTable()
    table.subscribe("E_CALL_HOLD", UDP, 10, now=0.0)
    table.subscribe("E_CALL_TRANSFER", UDP, 10, now=0.0)
    table.subscribe("E_CALL_TRANSFER", TCP, 10, now=0.0)
    assert table.sockets() == {UDP, TCP}
    assert table.unsubscribe("E_CALL_TRANSFER", TCP)
    assert not table.unsubscribe("E_CALL_TRANSFER", TCP)
    assert table.sockets() == {UDP}
    assert [(s.event, s.socket) for s in table] == [
        ("E_CALL_HOLD", UDP),
        ("E_CALL_TRANSFER", UDP),
    ]


def test_negative_expire_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        SubscriptionTable().subscribe("E_CALL_HOLD", UDP, -1, now=0.0)


# --- socket strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:9000", SinkAddress("udp", "127.0.0.1", 9000)),
        ("tcp:10.0.0.1:65535", SinkAddress("tcp", "10.0.0.1", 65535)),
        ("udp:[::1]:9000", SinkAddress("udp", "::1", 9000)),
        (" udp:127.0.0.1:1 ", SinkAddress("udp", "127.0.0.1", 1)),
    ],
)
def test_parse_sink(text: str, expected: SinkAddress) -> None:
    assert parse_sink(text) == expected


def test_sink_address_prints_canonically() -> None:
    assert str(parse_sink("udp:[0:0::1]:9000")) == "udp:[::1]:9000"
    assert str(parse_sink("tcp:127.0.0.1:9")) == "tcp:127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected udp:IP:PORT"),
        ("127.0.0.1:9000", "unsupported transport '127.0.0.1'"),
        ("unix:/tmp/x", "unsupported transport 'unix'"),
        ("UDP:127.0.0.1:9000", "unsupported transport 'UDP'"),
        ("udp:127.0.0.1", "expected IP:PORT"),
        ("udp::9000", "expected IP:PORT"),
        ("udp:localhost:9000", "not an IP address"),
        ("udp:::1:9000", "brackets"),
        ("udp:[127.0.0.1]:9000", "not an IPv6 address"),
        ("udp:[::1]9000", "[IPv6]:PORT"),
        ("udp:127.0.0.1:0", "1..65535"),
        ("udp:127.0.0.1:65536", "1..65535"),
        ("udp:127.0.0.1:-1", "1..65535"),
        ("tcp:127.0.0.1:9000/E_METHOD", "suffix"),
    ],
)
def test_parse_sink_refusals(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="bad event socket") as err:
        parse_sink(text)
    assert problem in str(err.value)


# --- the envelope ------------------------------------------------------------------------------


def test_envelope_is_compact_json_rpc_notification_in_param_order() -> None:
    payload = encode_event(
        "E_CALL_TRANSFER",
        {
            "callid": "X",
            "leg": "caller",
            "transfer_callid": "Y",
            "destination": "sip:c@d",
            "state": "start",
            "status": "",
        },
    )
    assert payload == (
        b'{"jsonrpc":"2.0","method":"E_CALL_TRANSFER","params":{"callid":"X","leg":"caller",'
        b'"transfer_callid":"Y","destination":"sip:c@d","state":"start","status":""}}'
    )


def test_envelope_carries_utf8_and_numbers() -> None:
    payload = encode_event("E_DLG_STATE_CHANGED", {"from_uri": "sip:jörg@x", "new_state": 4})
    assert json.loads(payload)["params"] == {"from_uri": "sip:jörg@x", "new_state": 4}
    assert "jörg".encode() in payload


def test_known_events() -> None:
    assert set(KNOWN_EVENTS) == {"E_DLG_STATE_CHANGED", "E_CALL_TRANSFER", "E_CALL_HOLD"}

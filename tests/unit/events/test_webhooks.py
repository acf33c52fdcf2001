"""Webhooks without sockets: the signature, the retry rules and schedule, webhook URLs as
sink addresses, the body, and what the bus refuses without a secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from switchboard.actors.eventbus import EventBus, webhook_settings
from switchboard.config import EventsConfig
from switchboard.events.envelope import encode_webhook
from switchboard.events.sinks import SinkAddress, parse_sink
from switchboard.events.webhooks import Backoff, WebhookSettings, retryable, sign
from tests.support.webhooks import verify

SECRET = b"s3cr3t"
BODY = b'{"event":"E_CALL_HOLD"}'
# printf '1700000000.{"event":"E_CALL_HOLD"}' | openssl dgst -sha256 -hmac s3cr3t
OPENSSL_HEX = "4a354d43d78e0e110ef95e76a2947706cbf85a0c6a11dd2139ff7d5e096efa19"


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    assert sign(SECRET, 1_700_000_000, BODY) == f"t=1700000000,v1={OPENSSL_HEX}"


def test_the_readme_verifier_accepts_ours_and_refuses_the_rest() -> None:
    old = sign(SECRET, 1_700_000_000, BODY)
    # The README's `verify` reads the clock itself: sign with the current time for it.
    fresh = sign(SECRET, int(time.time()), BODY)
    assert verify(SECRET, fresh, BODY)
    assert not verify(b"wrong secret", fresh, BODY)
    assert not verify(SECRET, fresh, BODY + b" ")
    assert not verify(SECRET, old, BODY)  # years old: a replay
    assert not verify(SECRET, "v1=" + OPENSSL_HEX, BODY)
    assert not verify(SECRET, "", BODY)


def test_only_server_errors_are_retried() -> None:
    assert [s for s in (200, 204, 301, 400, 401, 404, 408, 429, 500, 502, 503, 504)
            if retryable(s)] == [500, 502, 503, 504]


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [Backoff(first=1, factor=3, cap=10).delay(n) for n in range(4)] == [1, 3, 9, 10]


@pytest.mark.parametrize(("url", "address", "text"), [
    ("http://127.0.0.1:8080/hook", SinkAddress("http", "127.0.0.1", 8080, "/hook"),
     "http://127.0.0.1:8080/hook"),
    ("HTTPS://Hooks.Example.COM/a/b?x=1&y=2", SinkAddress(
        "https", "hooks.example.com", 443, "/a/b?x=1&y=2"),
     "https://hooks.example.com/a/b?x=1&y=2"),
    ("http://[::1]:80", SinkAddress("http", "::1", 80, "/"), "http://[::1]/"),
    ("https://h.example:8443/", SinkAddress("https", "h.example", 8443, "/"),
     "https://h.example:8443/"),
])
def test_webhook_urls_are_sink_addresses(url: str, address: SinkAddress, text: str) -> None:
    assert parse_sink(url) == address
    assert str(address) == text
    assert parse_sink(text) == address
    assert address.webhook


@pytest.mark.parametrize(("url", "problem"), [
    ("http://user:pw@h.example/", "credentials"),
    ("http://h.example/#frag", "fragment"),
    ("http://h.example/a b", "spaces"),
    ("http://h.example/\r\nX-Evil: 1", "control"),
    ("http://-h-/", "not a host name"),
    ("http:///path", "no host"),
    ("http://h.example:0/", "port"),
    ("http://h.example:70000/", "out of range"),
    ("ftp://h.example/", "unsupported transport"),
])
def test_bad_webhook_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sink(url)


def test_the_body_names_the_event_and_repeats_the_operation_id() -> None:
    params = {"callid": "c\udcff", "leg": "caller", "action": "hold", "state": "ok"}
    body = encode_webhook("E_CALL_HOLD", params, "e1")
    assert body == (b'{"id":"e1","event":"E_CALL_HOLD","params":{"callid":"c\\\\xff",'
                    b'"leg":"caller","action":"hold","state":"ok"}}')
    with_op = json.loads(encode_webhook("E_CALL_HOLD", {**params, "operation_id": "op7"}, "e2"))
    assert with_op["operation_id"] == "op7" == with_op["params"]["operation_id"]
    with pytest.raises(TypeError):
        encode_webhook("E_CALL_HOLD", {"x": object()}, "e3")


def test_settings_come_from_the_events_section() -> None:
    assert webhook_settings(EventsConfig()) is None
    settings = webhook_settings(EventsConfig(
        webhook_secret="k", webhook_timeout=7, webhook_retries=2, webhook_queue=9))
    assert settings == WebhookSettings(b"k", 7.0, Backoff(retries=2), 9)
    with pytest.raises(ValueError, match="secret"):
        WebhookSettings(b"")


def test_static_subscriptions_include_every_event_for_each_webhook() -> None:
    events = EventsConfig(webhooks=("http://127.0.0.1:9/h",), datagram=("udp:127.0.0.1:9",))
    pairs = [(s.event, s.socket) for s in events.static_subscriptions()]
    assert ("E_CALL_HOLD", "http://127.0.0.1:9/h") in pairs
    assert len(pairs) == 6
    assert events.missing_secret()
    assert not EventsConfig(webhooks=events.webhooks, webhook_secret="k").missing_secret()


async def test_the_bus_refuses_a_webhook_without_a_secret() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="webhook_secret"):
        await bus.subscribe("E_CALL_HOLD", "http://127.0.0.1:9/hook")
    assert bus.subscriptions() == []
    await bus.close()


def test_hmac_of_the_documented_string() -> None:
    # The same digest, computed from the documented recipe rather than from `sign`.
    mac = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert mac == OPENSSL_HEX

"""Webhooks fed by real calls: SIPp callers and callees through `switchboard serve`, the events
POSTed to a receiver on 127.0.0.1 that checks every signature with the README's `verify`.

A datagram subscriber (`events`) gets the same events as the webhook: it is the reference for
their order, and the proof that a webhook that hangs holds back neither SIP nor other sinks.

The HTTPS receivers hold certificates of a CA made for the test, which `switchboard serve`
trusts through `SSL_CERT_FILE` (in place of the system's CAs, as the README says).
"""

from __future__ import annotations

import itertools
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.certs import TestPki, make_pki
from tests.support.events import EventCollector
from tests.support.ports import free_port
from tests.support.server import StartServer, SwitchboardServer
from tests.support.sipp import StartSipp, wait_clean
from tests.support.webhooks import WebhookReceiver, verify

pytestmark = [pytest.mark.sipp, pytest.mark.interop]

SECRET = "whsec-7f3a9c"
ENDED = 5  # E_DLG_STATE_CHANGED new_state of an ended dialog


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_pki(tmp_path / "pki")


def _config(tmp_path: Path, **events: object) -> str:
    lines = [f'webhook_secret = "{SECRET}"', *(f"{k} = {v}" for k, v in events.items())]
    path = tmp_path / "switchboard.toml"
    path.write_text("[events]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _calls(sipp: StartSipp, server: SwitchboardServer, calls: int) -> None:
    uas_port = free_port("udp")
    uas = sipp("uas", "uas.xml", local_port=uas_port, calls=calls).wait_listening()
    uac = sipp("uac", "uac.xml", remote=f"{server.host}:{server.udp_port}",
               local_port=free_port("udp"), calls=calls, rate=5, keys={"uas_port": uas_port})
    wait_clean(uac, uas, calls=calls)


def _metrics(server: SwitchboardServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = server.mi_url.rsplit("/", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _accounted(server: SwitchboardServer, events: int, timeout: float = 90.0
               ) -> dict[str, int]:
    """The `evi:` statistics once the webhook sinks have dealt with `events` events (each
    delivered, or dropped for some reason)."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, int] = server.mi_result("statistics:get", statistics=["evi:"])
        done = stats["evi:webhook_delivered_events"] + sum(
            stats[f"evi:webhook_{reason}"]
            for reason in ("queue_full_drops", "rejected_events", "failed_events"))
        if done >= events:
            return stats
        assert time.monotonic() < deadline, f"{done} of {events} events accounted for: {stats}"
        time.sleep(0.2)


def _as_sent(events: EventCollector) -> list[tuple[str, dict[str, object]]]:
    return [(n.method, n.params) for n in events.all()]


def test_events_of_calls_arrive_signed_in_order_after_503s(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
) -> None:
    calls = 3
    with WebhookReceiver(SECRET.encode()) as hooks:
        hooks.fail_with = [503, 503]
        server = switchboard_server("--config", _config(tmp_path), "--event-webhook", hooks.url,
                                    "--event-datagram", events.socket)
        _calls(sipp, server, calls)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["new_state"] == ENDED, count=calls)
        expected = _as_sent(events)
        hooks.wait_for(lambda _: len(hooks.delivered()) >= len(expected),
                       f"{len(expected)} events delivered")
        requests = hooks.requests()

    # In order, every one of them, after the first one was refused twice with a 503.
    assert [(r.json["event"], r.json["params"]) for r in hooks.delivered()] == expected
    assert [r.status for r in requests[:3]] == [503, 503, 200]
    assert requests[0].body == requests[1].body == requests[2].body
    assert len(requests) == len(expected) + 2
    assert len({r.json["id"] for r in hooks.delivered()}) == len(expected)
    for request in requests:
        assert request.content_type == "application/json"
        assert verify(SECRET.encode(), request.signature, request.body)
        assert not verify(b"not the secret", request.signature, request.body)

    stats = server.mi_result("statistics:get", statistics=["evi:"])
    assert stats["evi:webhook_retries"] == 2
    assert stats["evi:webhook_delivered_events"] == len(expected)
    assert stats["evi:dropped_events"] == 0
    samples = _metrics(server)
    assert samples[("switchboard_webhook_retries_total", ())] == 2
    assert samples[("switchboard_webhook_events_delivered_total", ())] == len(expected)


def test_a_hanging_webhook_drops_what_its_queue_cannot_hold_and_holds_back_nothing(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
) -> None:
    calls, queue = 5, 2
    with WebhookReceiver(SECRET.encode()) as hooks:
        hooks.hang()
        config = _config(tmp_path, webhook_queue=queue, webhook_timeout=600)
        server = switchboard_server("--config", config, "--event-webhook", hooks.url,
                                    "--event-datagram", events.socket)
        # Every call completes and the datagram subscriber gets every event, while the
        # webhook has not answered its first request.
        _calls(sipp, server, calls)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["new_state"] == ENDED, count=calls)
        sent = len(events.all())
        stats = server.mi_result("statistics:get", statistics=["evi:"])
        samples = _metrics(server)
        assert len(hooks.requests()) == 1
        assert hooks.delivered() == []

    # One event in flight, `queue` waiting: the rest dropped and counted.
    dropped = sent - 1 - queue
    assert dropped > 0
    assert stats["evi:webhook_queue_full_drops"] == dropped
    assert stats["evi:dropped_events"] == dropped
    assert stats["evi:webhook_delivered_events"] == 0
    assert samples[("switchboard_webhook_events_dropped_total", (("reason", "queue_full"),))] == (
        dropped)
    assert samples[("switchboard_events_dropped_total", ())] == dropped


def test_evi_subscribe_takes_a_webhook_url(
    sipp: StartSipp, switchboard_server: StartServer, tmp_path: Path,
) -> None:
    with WebhookReceiver(SECRET.encode()) as hooks:
        server = switchboard_server("--config", _config(tmp_path))
        assert server.mi_result("evi:subscribe", event="E_DLG_STATE_CHANGED",
                                socket=hooks.url, expire=60) == "OK"
        subscribed = server.mi_result("statistics:get", statistics=["evi:subscriptions"])
        assert subscribed == {"evi:subscriptions": 1}
        _calls(sipp, server, 1)
        hooks.wait_for(lambda _: any(r.json["params"]["new_state"] == ENDED
                                     for r in hooks.delivered()), "the call's end")
    states = [(r.json["params"]["old_state"], r.json["params"]["new_state"])
              for r in hooks.delivered()]
    assert states[-1][1] == ENDED
    # One dialog's states, each change starting where the previous one ended.
    assert all(a[1] == b[0] for a, b in itertools.pairwise(states))
    for request in hooks.requests():
        assert request.json["event"] == "E_DLG_STATE_CHANGED"
        assert verify(SECRET.encode(), request.signature, request.body)


def test_a_webhook_needs_a_secret(switchboard_server: StartServer) -> None:
    server = switchboard_server()
    reply = server.mi("evi:subscribe", event="E_CALL_HOLD", socket="http://127.0.0.1:9/h")
    assert reply["error"]["code"] == -32602
    assert "webhook_secret" in reply["error"]["message"] + str(reply["error"].get("data"))


def test_events_arrive_signed_over_https_to_a_receiver_of_a_trusted_ca(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
    pki: TestPki,
) -> None:
    calls = 2
    with WebhookReceiver(SECRET.encode(), certificate=pki.issue("hooks")) as hooks:
        assert hooks.url.startswith("https://127.0.0.1:")
        server = switchboard_server("--config", _config(tmp_path), "--event-webhook", hooks.url,
                                    "--event-datagram", events.socket,
                                    env={"SSL_CERT_FILE": str(pki.ca_file)})
        _calls(sipp, server, calls)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["new_state"] == ENDED, count=calls)
        expected = _as_sent(events)
        hooks.wait_for(lambda _: len(hooks.delivered()) >= len(expected),
                       f"{len(expected)} events delivered")
        requests = hooks.requests()

    assert [(r.json["event"], r.json["params"]) for r in hooks.delivered()] == expected
    assert len(requests) == len(expected)
    for request in requests:
        assert request.secure
        assert verify(SECRET.encode(), request.signature, request.body)
        assert not verify(b"not the secret", request.signature, request.body)
    stats = server.mi_result("statistics:get", statistics=["evi:"])
    assert stats["evi:webhook_delivered_events"] == len(expected)
    assert stats["evi:webhook_retries"] == 0
    assert stats["evi:dropped_events"] == 0


@pytest.mark.parametrize("stranger", ["self-signed", "other CA"])
def test_a_receiver_whose_certificate_is_not_trusted_gets_nothing_and_sip_goes_on(
    sipp: StartSipp, switchboard_server: StartServer, events: EventCollector, tmp_path: Path,
    pki: TestPki, stranger: str,
) -> None:
    # Valid for 127.0.0.1, but signed by no CA switchboard trusts.
    certificate = (pki.self_signed("hooks") if stranger == "self-signed"
                   else make_pki(tmp_path / "other-ca").issue("hooks"))
    calls, retries = 2, 1
    with WebhookReceiver(SECRET.encode(), certificate=certificate) as hooks:
        config = _config(tmp_path, webhook_retries=retries)
        server = switchboard_server("--config", config, "--event-webhook", hooks.url,
                                    "--event-datagram", events.socket,
                                    env={"SSL_CERT_FILE": str(pki.ca_file)})
        # Every call completes and the datagram subscriber gets every event: a call's end
        # is its last, so once both ended the count is final.
        _calls(sipp, server, calls)
        events.wait_for("E_DLG_STATE_CHANGED", lambda p: p["new_state"] == ENDED, count=calls)
        sent = len(events.all())
        # Each event is tried 1 + `retries` times, then given up and counted; the sink goes
        # through them one at a time, so the last is accounted for well after the calls
        # ended. Wait until each one is, however it ended, then say how.
        stats = _accounted(server, sent)
        server.wait_for_output(r"certificate verify failed", 5)
        samples = _metrics(server)
        # The handshake failed before any request: the receiver saw none.
        assert hooks.requests() == []

    assert stats["evi:webhook_failed_events"] == sent
    assert stats["evi:webhook_retries"] == sent * retries
    assert stats["evi:webhook_delivered_events"] == 0
    assert stats["evi:dropped_events"] == sent
    assert samples[("switchboard_webhook_events_dropped_total", (("reason", "failed"),))] == sent
    assert samples[("switchboard_webhook_events_delivered_total", ())] == 0

"""The console's message capture: what it keeps of a message, its bounds, and the worker's
tap, through which a real proxy core's INVITE and its answers reach it (and after which the
worker sends and receives exactly as before); the switch answering the REST API
(`CaptureControl`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from switchboard.actors.worker import Worker
from switchboard.capture import CaptureControl, CaptureSwitch, MessageCapture, TappedEndpoint
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from tests.unit.kit.endpoint import RecordingEndpoint

DATA = Path(__file__).resolve().parents[1] / "data"
US = Address("udp", "127.0.0.1", 5060)
ALICE = Address("udp", "127.0.0.1", 5061)
BOB = Address("udp", "127.0.0.1", 5062)


def invite(call_id: str = "c1@alice", extra: bytes = b"") -> bytes:
    return (b"INVITE sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-" + call_id.encode() + b"\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\n"
            b"To: <sip:bob@127.0.0.1>\r\nCall-ID: " + call_id.encode() + b"\r\n"
            b"CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5061>\r\n" + extra +
            b"Content-Length: 0\r\n\r\n")


def test_keeps_first_line_direction_peer_and_cseq() -> None:
    capture = MessageCapture(clock=lambda: 12.5)
    capture.received(invite(), ALICE, US)
    capture.sent(b"SIP/2.0 100 Trying\r\ni: c1@alice\r\nCSeq:  1   INVITE\r\n\r\n", ALICE, US)
    first, second = capture.messages("c1@alice") or []
    assert first.view() == {"at": 12.5, "direction": "in", "peer": "udp:127.0.0.1:5061",
                            "local": "udp:127.0.0.1:5060",
                            "first_line": "INVITE sip:bob@127.0.0.1:5062 SIP/2.0",
                            "cseq": "1 INVITE"}
    # The compact form of Call-ID files the answer under the same call.
    assert (second.direction, second.first_line, second.cseq) == (
        "out", "SIP/2.0 100 Trying", "1 INVITE")
    assert capture.messages("other") is None


def test_compact_forms_from_a_recorded_message() -> None:
    raw = (DATA / "invite-compact-forms.sip").read_bytes()
    capture = MessageCapture()
    capture.received(raw, ALICE, US)
    assert len(capture) == 1


def test_a_body_line_is_not_a_call_id_and_keepalives_are_ignored() -> None:
    capture = MessageCapture()
    capture.received(b"\r\n\r\n", ALICE, US)
    capture.received(b"MESSAGE sip:b@x SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nCall-ID: body\r\n",
                     ALICE, US)
    assert len(capture) == 0


def test_bounded_per_call_and_in_calls_oldest_forgotten_first() -> None:
    capture = MessageCapture(max_dialogs=2, max_messages=3)
    for n in range(5):
        capture.received(invite("one", b"X-N: %d\r\n" % n), ALICE, US)
    assert len(capture.messages("one") or []) == 3
    capture.received(invite("two"), ALICE, US)
    capture.received(invite("one"), ALICE, US)  # "one" is now the most recent
    capture.received(invite("three"), ALICE, US)
    assert capture.messages("two") is None
    assert capture.messages("one") is not None and capture.messages("three") is not None
    long_line = b"INVITE sip:" + b"b" * 500 + b"@x SIP/2.0\r\nCall-ID: long\r\n\r\n"
    capture.received(long_line, ALICE, US)
    assert len((capture.messages("long") or [])[0].first_line) == 200


async def test_worker_tap_sees_a_call_and_untapped_is_as_before() -> None:
    proxy = Proxy(ProxyConfig(listeners=(US,), record_route=True), lambda: "t")
    worker = Worker(proxy, CallOps(proxy), lambda name, params: None)
    endpoint = RecordingEndpoint(US)
    worker.add_endpoint(endpoint)
    switch = CaptureSwitch(worker)
    assert not switch.enabled and worker._tap is None
    switch.lease(60)
    assert isinstance(worker.endpoints[US], TappedEndpoint)
    worker.receive(invite(), ALICE, US)
    ladder = [(m.direction, m.first_line.split()[0], m.peer)
              for m in switch.capture.messages("c1@alice") or []]
    assert ladder[0] == ("in", "INVITE", "udp:127.0.0.1:5061")
    assert ("out", "SIP/2.0", "udp:127.0.0.1:5061") in ladder  # 100 Trying
    assert ("out", "INVITE", "udp:127.0.0.1:5062") in ladder  # relayed to Bob
    outbound = [m.peer for m in switch.capture.messages("c1@alice") or []
                if m.direction == "out"]
    assert outbound == [f"udp:{d.host}:{d.port}" for _, d in endpoint.sent]
    switch.lease(60)  # renewed: still one wrapper, not two
    assert worker.endpoints[US].inner is endpoint  # type: ignore[union-attr]
    switch.stop()
    assert worker.endpoints[US] is endpoint and worker._tap is None
    assert len(switch.capture) == 0 and not switch.enabled
    worker.receive(invite("c2@alice"), ALICE, US)
    assert switch.capture.messages("c2@alice") is None
    assert len(endpoint.sent) > 2
    worker.close()


async def test_a_switch_answers_the_rest_api() -> None:
    proxy = Proxy(ProxyConfig(listeners=(US,)), lambda: "t")
    worker = Worker(proxy, CallOps(proxy), lambda name, params: None)
    worker.add_endpoint(RecordingEndpoint(US))
    control: CaptureControl = CaptureSwitch(worker)
    assert (await control.state())["enabled"] is False
    view = await control.enable(True)
    assert (view["enabled"], view["calls"], view["max_calls"]) == (True, 0, 1000)
    worker.receive(invite("c9@alice"), ALICE, US)
    found = await control.call_messages("c9@alice")
    assert found is not None and found[0]["direction"] == "in"
    assert found[0]["first_line"].startswith("INVITE sip:")
    assert await control.call_messages("nobody@x") is None
    assert (await control.enable(False))["calls"] == 0
    assert await control.call_messages("c9@alice") is None
    worker.close()


async def test_a_lease_ends_by_itself() -> None:
    """The lease's end is a loop timer; calling what it calls shows what it does."""
    proxy = Proxy(ProxyConfig(listeners=(US,)), lambda: "t")
    worker = Worker(proxy, CallOps(proxy), lambda name, params: None)
    worker.add_endpoint(RecordingEndpoint(US))
    switch = CaptureSwitch(worker)
    switch.lease(30)
    timer = switch._timer
    assert timer is not None and not timer.cancelled()
    assert timer.when() - asyncio.get_running_loop().time() <= 30
    switch.lease(30)
    assert timer.cancelled() and switch._timer is not timer
    switch.stop()
    assert not switch.enabled and not isinstance(worker.endpoints[US], TappedEndpoint)
    worker.close()


class _Unreachable:
    """An endpoint with no connection to its destination (a WebSocket client that left)."""

    local = Address("ws", "127.0.0.1", 5070)

    def send(self, data: bytes, dest: Address) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_tap_passes_a_failed_send_on_and_captures_nothing() -> None:
    capture = MessageCapture()
    tapped = TappedEndpoint(_Unreachable(), capture)
    assert tapped.send(invite(), Address("ws", "df7jal23ls0d.invalid", 0)) is False
    assert capture.messages("c1@alice") is None

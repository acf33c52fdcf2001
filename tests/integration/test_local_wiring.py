"""What the local runtime wires around its worker, in process on loopback sockets: the
listeners call the worker's `receive` itself, and again after a capture has come and gone
(which still sees what arrives); the worker makes only the events the bus has a taker for,
and the call metrics count either way; the core's branches carry 32 random bits."""

from __future__ import annotations

import asyncio
import re

from switchboard.cluster.local import LocalSwitchboard
from switchboard.config import Config, EventsConfig, ListenConfig, ListenSocket, MIConfig
from switchboard.events import E_CALL_HOLD, E_CALL_TRANSFER, E_DLG_STATE_CHANGED
from switchboard.sip import Request
from switchboard.transport.udp import UdpEndpoint
from tests.support.events import EventCollector
from tests.support.loopback_ua import HOST, final, invite, receive, ua, udp
from tests.unit.kit.callops import SDP_B, answer


async def started() -> LocalSwitchboard:
    sb = LocalSwitchboard(Config(listen=ListenConfig(sockets=(ListenSocket("udp", HOST, 0),)),
                                 mi=MIConfig(http=None)))
    await sb.start()
    return sb


def listener(sb: LocalSwitchboard) -> UdpEndpoint:
    (endpoint,) = sb.worker.endpoints.values() if sb.worker is not None else ()
    assert isinstance(endpoint, UdpEndpoint)
    return endpoint


async def test_the_listener_calls_the_worker_and_a_capture_still_sees_what_arrives() -> None:
    sb = await started()
    a_sock, b_sock = udp(), udp()
    try:
        worker = sb.worker
        assert worker is not None
        proxy = sb.listeners[0]
        alice, bob = ua("alice", a_sock), ua("bob", b_sock)
        # No function between the listener and the worker.
        assert listener(sb).receiver == worker.receive

        capture = sb.capture()
        assert capture is not None
        await capture.enable(True)
        a_sock.sendto(invite(alice, bob, "seen@alice"), (proxy.host, proxy.port))
        relayed = await receive(b_sock)
        assert isinstance(relayed, Request) and relayed.method == "INVITE"
        ladder = [(m["direction"], m["first_line"].split()[0])
                  for m in await capture.call_messages("seen@alice") or []]
        assert ladder[:1] == [("in", "INVITE")] and ("out", "INVITE") in ladder
        # The proxy's own branch ends in a 32-bit random token (RFC 3261 §19.3).
        assert re.search(r";branch=z9hG4bK[^;,]*\.[0-9a-f]{8}\b", relayed.get("via") or "")

        await capture.enable(False)
        assert listener(sb).receiver == worker.receive
        b_sock.sendto(answer(relayed, 486, "Busy Here", to_tag="bob-tag"),
                      (proxy.host, proxy.port))
        assert (await final(a_sock)).status == 486
        assert await capture.call_messages("seen@alice") is None
    finally:
        await sb.stop()
        a_sock.close()
        b_sock.close()


async def test_events_are_made_for_their_takers_only_and_the_metrics_count_regardless(
) -> None:
    sb = await started()
    a_sock, b_sock = udp(), udp()
    try:
        worker, metrics = sb.worker, sb.call_metrics
        assert worker is not None and metrics is not None
        proxy = sb.listeners[0]
        alice, bob = ua("alice", a_sock), ua("bob", b_sock)
        assert worker.wanted == frozenset()

        # A call nobody watches: answered, so the setup time is counted all the same.
        a_sock.sendto(invite(alice, bob, "quiet@alice"), (proxy.host, proxy.port))
        relayed = await receive(b_sock)
        assert isinstance(relayed, Request)
        b_sock.sendto(answer(relayed, 200, "OK", to_tag="bob-tag", contact=bob.contact,
                             body=SDP_B), (proxy.host, proxy.port))
        assert (await final(a_sock)).status == 200
        assert metrics.setup.count == 1

        with EventCollector() as events:
            await sb.subscribe_event(E_DLG_STATE_CHANGED, events.socket, 60)
            assert worker.wanted == {E_DLG_STATE_CHANGED}
            seen: list[str] = []
            unwatch = await sb.watch([E_CALL_HOLD], lambda event, params: seen.append(event))
            assert worker.wanted == {E_DLG_STATE_CHANGED, E_CALL_HOLD}
            await unwatch()
            assert worker.wanted == {E_DLG_STATE_CHANGED}

            a_sock.sendto(invite(alice, bob, "watched@alice"), (proxy.host, proxy.port))
            relayed = await receive(b_sock)
            assert isinstance(relayed, Request)
            b_sock.sendto(answer(relayed, 486, "Busy Here", to_tag="bob-tag"),
                          (proxy.host, proxy.port))
            assert (await final(a_sock)).status == 486
            deleted = await asyncio.to_thread(
                events.wait_for, E_DLG_STATE_CHANGED,
                lambda p: p["callid"] == "watched@alice" and p["new_state"] == 5)
            assert deleted["old_state"] == 1
            # Only what the subscription asked for, and only from when it was made.
            assert {n.params["callid"] for n in events.all()} == {"watched@alice"}
            await sb.subscribe_event(E_DLG_STATE_CHANGED, events.socket, 0)
            assert worker.wanted == frozenset()
        assert seen == []
    finally:
        await sb.stop()
        a_sock.close()
        b_sock.close()


async def test_a_configured_sink_is_a_taker_from_the_start() -> None:
    with EventCollector() as events:
        sb = LocalSwitchboard(Config(
            listen=ListenConfig(sockets=(ListenSocket("udp", HOST, 0),)),
            mi=MIConfig(http=None), events=EventsConfig(datagram=(events.socket,))))
        await sb.start()
        try:
            assert sb.worker is not None
            assert sb.worker.wanted == {E_DLG_STATE_CHANGED, E_CALL_TRANSFER, E_CALL_HOLD}
        finally:
            await sb.stop()

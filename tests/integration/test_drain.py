"""Draining the local runtime before it stops (SIGTERM, MI `kill`), in process on loopback
sockets: `/readyz` says unready at once, a new INVITE is answered 503 with Retry-After, the
transaction in flight is let finish, and the drain ends when it did."""

from __future__ import annotations

import asyncio

from switchboard.cluster.local import LocalSwitchboard, transactions_in_flight
from switchboard.config import Config, ListenConfig, ListenSocket, MIConfig
from switchboard.mi.commands import REGISTRY
from switchboard.mi.dispatch import handle_request
from switchboard.mi.registry import CommandContext
from switchboard.sip import Request
from tests.support.loopback_ua import HOST, final, invite, receive, ua, udp
from tests.unit.kit.callops import answer


async def test_a_drain_refuses_new_calls_and_waits_for_the_one_in_flight() -> None:
    sb = LocalSwitchboard(Config(listen=ListenConfig(sockets=(ListenSocket("udp", HOST, 0),)),
                                 mi=MIConfig(http=None)))
    await sb.start()
    a_sock, b_sock = udp(), udp()
    try:
        proxy = sb.listeners[0]
        alice, bob = ua("alice", a_sock), ua("bob", b_sock)
        assert await sb.readiness() == []
        a_sock.sendto(invite(alice, bob, "ringing@alice"), (proxy.host, proxy.port))
        ringing = await receive(b_sock)
        assert isinstance(ringing, Request) and ringing.method == "INVITE"
        assert sb.worker is not None and transactions_in_flight(sb.worker.proxy) == 2

        draining = asyncio.ensure_future(sb.drain(timeout=60))
        await asyncio.sleep(0)
        assert await sb.readiness() == ["draining"]
        a_sock.sendto(invite(alice, bob, "new@alice"), (proxy.host, proxy.port))
        refused = await final(a_sock)
        assert (refused.status, refused.get("retry-after")) == (503, "2")
        assert not draining.done()

        # The call in flight gets its answer: the drain is over.
        b_sock.sendto(answer(ringing, 486, "Busy Here", to_tag="bob-tag"),
                      (proxy.host, proxy.port))
        busy = await final(a_sock)
        assert busy.status == 486
        assert await asyncio.wait_for(draining, 30) == 0
    finally:
        await sb.stop()
        a_sock.close()
        b_sock.close()


async def test_mi_kill_asks_for_the_stop_and_turns_unready() -> None:
    sb = LocalSwitchboard(Config(listen=ListenConfig(sockets=(ListenSocket("udp", HOST, 0),)),
                                 mi=MIConfig(http=None)))
    await sb.start()
    try:
        assert REGISTRY.lookup("core:shutdown") is REGISTRY.lookup("kill")
        assert not sb.shutdown_requested.is_set()
        ctx = CommandContext(api=sb, registry=REGISTRY)
        reply = await handle_request(b'{"jsonrpc": "2.0", "id": 1, "method": "kill"}', ctx)
        assert reply == {"jsonrpc": "2.0", "id": 1, "result": "OK"}
        assert sb.shutdown_requested.is_set()
        assert await sb.readiness() == ["draining"]
        assert await sb.drain() == 0
    finally:
        await sb.stop()

"""Draining the local runtime before it stops (SIGTERM, MI `kill`), in process on loopback
sockets: `/readyz` says unready at once, a new INVITE is answered 503 with Retry-After, the
transaction in flight is let finish, and the drain ends when it did."""

from __future__ import annotations

import asyncio
import socket

from switchboard.cluster.local import LocalSwitchboard, transactions_in_flight
from switchboard.config import Config, ListenConfig, ListenSocket, MIConfig
from switchboard.mi.commands import REGISTRY
from switchboard.mi.dispatch import handle_request
from switchboard.mi.registry import CommandContext
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.wire import Address
from tests.unit.kit.callops import SDP_A, UA, answer, request

HOST = "127.0.0.1"


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(10.0)
    return sock


def ua(name: str, sock: socket.socket) -> UA:
    return UA(name, Address("udp", HOST, sock.getsockname()[1]))


def invite(caller: UA, callee: UA, call_id: str) -> bytes:
    return request("INVITE", callee.contact, caller, call_id=call_id, from_uri=caller.aor,
                   from_tag=f"{caller.name}-tag", to_uri=callee.aor, to_tag=None, cseq=1,
                   contact=caller.contact, body=SDP_A)


async def receive(sock: socket.socket) -> Request | Response:
    data, _ = await asyncio.to_thread(sock.recvfrom, 65535)
    return parse_message(data)


async def final(sock: socket.socket) -> Response:
    while True:
        msg = await receive(sock)
        if isinstance(msg, Response) and msg.status >= 200:
            return msg


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

"""A user agent of the in-process runtime tests: a blocking UDP socket on 127.0.0.1 and the
few steps those tests take with it (an INVITE, reading what comes back, waiting for the final
answer), built on the unit tests' message kit."""

from __future__ import annotations

import asyncio
import socket

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.wire import Address
from tests.unit.kit.callops import SDP_A, UA, request

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

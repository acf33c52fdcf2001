"""`switchboard serve` drops the bindings registered over a connection when it ends (RFC 5626
§5.3, RFC 7118 §6): Bob registers over a WebSocket, a secure WebSocket (both with `.invalid`
Contacts, as browsers write them) and a TCP connection; each one he closes takes its binding
(`usrloc:registered_contacts` on the MI says so) and leaves the others, a call reaches him
over the one left, and once none is left a call is answered 480 by the location lookup. A
request aimed at a WebSocket client's own name with no connection to it fails at once with
480 too (a server cannot open a WebSocket connection, RFC 7118 §5).
Test certificates are made at test time with openssl."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.certs import make_pki
from tests.support.ports import HOST, free_port
from tests.support.server import SwitchboardServer


def register(n: int, transport: str, sent_by: str, contact: str, port: int) -> str:
    return (f"REGISTER sip:{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {sent_by};branch=z9hG4bK-reg-{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bob@{HOST}>;tag=reg{n}\r\nTo: <sip:bob@{HOST}>\r\n"
            f"Call-ID: reg-{n}@bob\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <{contact}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n")


def invite(n: int, port: int, local_port: int) -> bytes:
    return (f"INVITE sip:bob@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local_port};rport;branch=z9hG4bK-inv-{n}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:alice@{HOST}>;tag=alice{n}\r\nTo: <sip:bob@{HOST}>\r\n"
            f"Call-ID: call-{n}@alice\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{HOST}:{local_port}>\r\nContent-Length: 0\r\n\r\n").encode()


def answer(request: str, status_line: str, *, to_tag: str) -> str:
    """The response a UA writes to `request`: its Via, From, To (tagged), Call-ID, CSeq."""
    copied = [line for line in request.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
              if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")]
    copied = [f"{line};tag={to_tag}" if line.lower().startswith("to:") else line
              for line in copied]
    return "\r\n".join([f"SIP/2.0 {status_line}", *copied, "Content-Length: 0", "", ""])


def status(message: bytes | str) -> int:
    text = message.decode() if isinstance(message, bytes) else message
    assert text.startswith("SIP/2.0 "), text[:80]
    return int(text.split(" ", 2)[1])


class Caller(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.inbox.put_nowait(data)

    async def final(self) -> int:
        while True:
            code = status(await asyncio.wait_for(self.inbox.get(), 5))
            if code >= 200:
                return code


def registered(server: SwitchboardServer) -> int:
    stats = server.mi_result("statistics:get", statistics=["usrloc:"])
    return int(stats["usrloc:registered_contacts"])


def undeliverable(server: SwitchboardServer) -> int:
    stats = server.mi_result("statistics:get", statistics=["core:"])
    return int(stats.get("core:undeliverable_requests", 0))


async def wait_registered(server: SwitchboardServer, count: int) -> None:
    deadline = time.monotonic() + 5
    while (now := await asyncio.to_thread(registered, server)) != count:
        assert time.monotonic() < deadline, f"{now} contacts registered, not {count}"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_each_closed_connection_takes_its_binding_and_the_last_leaves_a_480(
        switchboard_server: Callable[..., SwitchboardServer], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    cert = pki.issue("switchboard")
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[tls]\ncertificate = "{cert.certificate}"\n'
                      f'private_key = "{cert.private_key}"\n')
    ws_port, wss_port = free_port("tcp"), free_port("tcp")
    server = switchboard_server("--config", str(config), "--listen", f"ws:{HOST}:{ws_port}",
                                "--listen", f"wss:{HOST}:{wss_port}")
    port = server.udp_port
    loop = asyncio.get_running_loop()
    transport, caller = await loop.create_datagram_endpoint(Caller, local_addr=(HOST, 0))
    local_port = transport.get_extra_info("sockname")[1]
    client_ssl = ssl.create_default_context(cafile=str(pki.ca_file))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://{HOST}:{ws_port}/", protocols=("sip",))
        wss = await session.ws_connect(f"https://{HOST}:{wss_port}/", protocols=("sip",),
                                       ssl=client_ssl)
        tcp_reader, tcp_writer = await asyncio.open_connection(HOST, server.tcp_port)
        tcp_local = tcp_writer.get_extra_info("sockname")[1]
        try:
            await ws.send_str(register(1, "WS", "k2h3.invalid",
                                       "sip:k2h3@k2h3.invalid;transport=ws", ws_port))
            assert status((await ws.receive(timeout=5)).data) == 200
            await wss.send_str(register(2, "WSS", "p9q8.invalid",
                                        "sip:p9q8@p9q8.invalid;transport=ws", wss_port))
            assert status((await wss.receive(timeout=5)).data) == 200
            tcp_writer.write(register(3, "TCP", f"{HOST}:{tcp_local}",
                                      f"sip:bob@{HOST}:{tcp_local};transport=tcp",
                                      server.tcp_port).encode())
            head = await asyncio.wait_for(tcp_reader.readuntil(b"\r\n\r\n"), 5)
            assert status(head) == 200
            assert await asyncio.to_thread(registered, server) == 3

            await ws.close()
            await wait_registered(server, 2)
            tcp_writer.close()
            await wait_registered(server, 1)

            # The binding over the connection left is Bob's: the call reaches him over it.
            transport.sendto(invite(1, port, local_port), (HOST, port))
            incoming = (await wss.receive(timeout=5)).data
            assert incoming.startswith("INVITE sip:p9q8@p9q8.invalid;transport=ws SIP/2.0")
            await wss.send_str(answer(incoming, "486 Busy Here", to_tag="bob1"))
            assert await caller.final() == 486

            await wss.close()
            await wait_registered(server, 0)
            # Nobody left to try: 480 from the location lookup, not a send attempt.
            transport.sendto(invite(2, port, local_port), (HOST, port))
            assert await caller.final() == 480
            assert await asyncio.to_thread(undeliverable, server) == 0
            # A request aimed at the gone client's own name (as a dialog's remote target
            # would be) has no connection to go over: the send fails, 480 at once too.
            transport.sendto(invite(3, port, local_port).replace(
                f"INVITE sip:bob@{HOST}:{port}".encode(),
                b"INVITE sip:p9q8@p9q8.invalid;transport=ws"), (HOST, port))
            assert await caller.final() == 480
            assert await asyncio.to_thread(undeliverable, server) == 1
            assert server.proc.poll() is None
        finally:
            tcp_writer.close()
            transport.close()

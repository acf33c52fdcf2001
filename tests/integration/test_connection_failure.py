"""A TCP or TLS next hop that cannot be connected to, on real sockets: the requests that
waited for the connection fail at once (RFC 3261 §17.1.4), so the caller hears 480 rather
than, at timer B's end, 408. One next hop refuses the connection; the other is a TLS server
whose certificate no CA of ours signed."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.actors.worker import Worker
from switchboard.sip import Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.tls import TlsContexts, TlsFiles
from tests.support.certs import TestPki, make_pki
from tests.unit.kit.proxy import ALICE, PROXY_UDP, counter, invite

HOST = "127.0.0.1"


class Caller:
    """The UDP side: keeps what the proxy sends the caller."""

    def __init__(self) -> None:
        self.local = PROXY_UDP
        self.sent: list[tuple[bytes, Address]] = []

    def send(self, data: bytes, dest: Address) -> bool:
        self.sent.append((data, dest))
        return True

    def close(self) -> None:
        pass

    def statuses(self) -> list[int]:
        answers = [parse_message(data) for data, dest in self.sent if dest == ALICE]
        return [a.status for a in answers if isinstance(a, Response)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def closed_port() -> int:
    """A TCP port on loopback that nobody listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def answered(caller: Caller, status: int) -> list[int]:
    for _ in range(500):
        if status in caller.statuses():
            break
        await asyncio.sleep(0.02)
    return caller.statuses()


async def relay_to(ruri: str, **options: object) -> tuple[Worker, Caller]:
    box: list[Worker] = []
    endpoint = await TcpEndpoint.bind(
        HOST, 0, lambda data, source, local: box[0].receive(data, source, local),
        **options)
    proxy = Proxy(ProxyConfig(listeners=(PROXY_UDP, endpoint.local)), counter())
    worker = Worker(proxy, CallOps(proxy), lambda name, body: None)
    box.append(worker)
    caller = Caller()
    worker.add_endpoint(caller)
    worker.add_endpoint(endpoint)
    worker.receive(invite(ruri=ruri), ALICE, PROXY_UDP)
    return worker, caller


async def test_a_refused_tcp_connection_answers_480() -> None:
    worker, caller = await relay_to(f"sip:bob@{HOST}:{closed_port()};transport=tcp")
    try:
        assert await answered(caller, 480) == [100, 480]
        assert worker.proxy.stats["core:undeliverable_requests"] == 1
        assert worker.proxy.client_txns == {}
    finally:
        worker.close()


async def test_a_tls_server_that_fails_verification_answers_480(pki: TestPki,
                                                                  tmp_path: Path) -> None:
    ours = pki.issue("switchboard")
    contexts = TlsContexts(TlsFiles(str(ours.certificate), str(ours.private_key),
                                    str(pki.ca_file)), server=True)
    stranger = pki.self_signed("stranger")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(stranger.certificate, stranger.private_key)
    handshakes: list[bool] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(True)  # never reached: the handshake fails before
        writer.close()

    server = await asyncio.start_server(accept, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    worker, caller = await relay_to(f"sip:bob@{HOST}:{port};transport=tls",
                                    server_ssl=contexts.server, client_ssl=contexts.client)
    try:
        assert await answered(caller, 480) == [100, 480]
        assert worker.proxy.stats["core:undeliverable_requests"] == 1
        assert handshakes == []
    finally:
        worker.close()
        server.close()

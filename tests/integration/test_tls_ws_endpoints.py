"""The TLS and WebSocket endpoints on real sockets: what they refuse (garbage, plaintext and
half handshakes on a TLS port, WebSocket handshakes without `sip`, oversize frames, slow
upgrades), what they verify when they connect (the server's certificate and name, with SNI),
and certificates read again without closing a connection. Test certificates are made at
test time with openssl."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.tls import CertificateError, TlsContexts, TlsFiles
from switchboard.transport.ws import WsEndpoint
from tests.support.certs import TestPki, make_pki
from tests.support.streams import closed_by_peer, eventually

HOST = "127.0.0.1"
OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKt\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: t\r\n"
           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def contexts(pki: TestPki, name: str = "server", **options: bool) -> TlsContexts:
    cert = pki.issue(name)
    return TlsContexts(TlsFiles(str(cert.certificate), str(cert.private_key), str(pki.ca_file),
                                **options), server=True)


def client_context(pki: TestPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_file))


async def tls_endpoint(pki: TestPki, got: list[tuple[bytes, Address]], **options: float
                       ) -> TcpEndpoint:
    tls = contexts(pki)
    return await TcpEndpoint.bind(HOST, 0, lambda data, source, local: got.append((data, source)),
                                  server_ssl=tls.server, client_ssl=tls.client, idle_timeout=0,
                                  **options)


@pytest.mark.asyncio
async def test_tls_garbage_plaintext_and_half_handshakes_are_closed_others_served(
        pki: TestPki) -> None:
    got: list[tuple[bytes, Address]] = []
    endpoint = await tls_endpoint(pki, got, handshake_timeout=0.5)
    port = endpoint.local.port
    try:
        good_reader, good_writer = await asyncio.open_connection(
            HOST, port, ssl=client_context(pki), server_hostname="localhost")
        bad = []
        for first_bytes in (b"\x16\x03\x01\x00\x05garbage-garbage", OPTIONS, b"\x16\x03"):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(first_bytes)  # a broken record, plaintext SIP, half a record header
            bad.append((reader, writer))
        idle_reader, idle_writer = await asyncio.open_connection(HOST, port)  # says nothing
        bad.append((idle_reader, idle_writer))
        for reader, _ in bad:
            assert await closed_by_peer(reader)
        assert got == []
        good_writer.write(OPTIONS)
        await eventually(lambda: got, "received")
        assert got[0][0] == OPTIONS and got[0][1].transport == "tls"
        # Responses go back over the connection the request came on.
        endpoint.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", got[0][1])
        assert (await asyncio.wait_for(good_reader.readline(), 5)).startswith(b"SIP/2.0 200")
        for _, writer in [*bad, (good_reader, good_writer)]:
            writer.close()
    finally:
        endpoint.close()


async def tls_server(context: ssl.SSLContext, seen: list[str | None],
                     got: list[bytes]) -> asyncio.Server:
    def sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = sni  # type: ignore[assignment]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(4096))
        writer.close()

    return await asyncio.start_server(serve, HOST, 0, ssl=context)


@pytest.mark.asyncio
@pytest.mark.parametrize(("signed", "verify_peer", "delivered"), [
    (True, True, True), (False, True, False), (False, False, True)])
async def test_outgoing_tls_verifies_the_server(pki: TestPki, tmp_path: Path, signed: bool,
                                                verify_peer: bool, delivered: bool) -> None:
    """A server certificate from our CA for the name we meant is accepted (with SNI); a
    self-signed one only with verify_peer = false."""
    cert = pki.issue("peer") if signed else pki.self_signed("rogue")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.certificate, cert.private_key)
    seen: list[str | None] = []
    got: list[bytes] = []
    server = await tls_server(server_ctx, seen, got)
    port = server.sockets[0].getsockname()[1]
    endpoint = await tls_endpoint(pki, [], handshake_timeout=2.0)
    endpoint.client_ssl = contexts(pki, "client", verify_peer=verify_peer).client
    endpoint.server_names = {HOST: "localhost"}
    try:
        endpoint.send(OPTIONS, Address("tls", HOST, port))
        if delivered:
            await eventually(lambda: got, "delivered")
            assert got == [OPTIONS]
            assert seen == ["localhost"]
        else:
            await eventually(lambda: not endpoint.connections, "given up")
            assert got in ([], [b""])
    finally:
        endpoint.close()
        server.close()


@pytest.mark.asyncio
async def test_reloaded_certificates_serve_new_handshakes_and_keep_old_connections(
        pki: TestPki, tmp_path: Path) -> None:
    first, second = pki.issue("first", common_name="first"), pki.issue("second", common_name="second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first.certificate.read_bytes())
    live_key.write_bytes(first.private_key.read_bytes())
    tls = TlsContexts(TlsFiles(str(live_cert), str(live_key), str(pki.ca_file)), server=True)
    got: list[tuple[bytes, Address]] = []
    endpoint = await TcpEndpoint.bind(HOST, 0, lambda d, s, local: got.append((d, s)),
                                      server_ssl=tls.server, client_ssl=tls.client)
    port = endpoint.local.port
    try:
        _, old_writer = await asyncio.open_connection(HOST, port, ssl=client_context(pki),
                                                      server_hostname="localhost")
        subject = old_writer.get_extra_info("peercert")["subject"]
        assert (("commonName", "first"),) in subject
        # Broken files are refused and the old ones stay.
        live_key.write_text("not a key")
        assert not tls.reload()
        live_cert.write_bytes(second.certificate.read_bytes())
        live_key.write_bytes(second.private_key.read_bytes())
        assert tls.reload()
        _, new_writer = await asyncio.open_connection(HOST, port, ssl=client_context(pki),
                                                      server_hostname="localhost")
        assert (("commonName", "second"),) in new_writer.get_extra_info("peercert")["subject"]
        old_writer.write(OPTIONS)  # the connection made before the reload still works
        await eventually(lambda: got, "received")
        old_writer.close()
        new_writer.close()
    finally:
        endpoint.close()


def test_a_tls_listener_needs_a_certificate(pki: TestPki) -> None:
    with pytest.raises(CertificateError):
        TlsContexts(TlsFiles(), server=True)
    with pytest.raises(CertificateError):
        TlsContexts(TlsFiles(certificate="/nonexistent.pem"), server=True)


async def ws_endpoint(got: list[tuple[bytes, Address]], **options: float) -> WsEndpoint:
    return await WsEndpoint.bind("ws", HOST, 0, lambda d, s, local: got.append((d, s)),
                                 max_message_size=2048, **options)


@pytest.mark.asyncio
async def test_websocket_refusals(tmp_path: Path) -> None:
    """No `sip` subprotocol: 400. A frame over the limit: closed with 1009. A frame that is
    not SIP goes to the core (which refuses it) and the connection stays. A client that does
    not finish its upgrade in time is closed. Meanwhile a good connection is served."""
    got: list[tuple[bytes, Address]] = []
    endpoint = await ws_endpoint(got, handshake_timeout=0.5, ping_interval=0.2)
    url = f"http://{HOST}:{endpoint.local.port}/"
    try:
        async with aiohttp.ClientSession() as session:
            good = await session.ws_connect(url, protocols=("sip",))
            assert good.protocol == "sip"
            # Reading is what answers the server's pings (aiohttp's autoping).
            inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()

            async def read() -> None:
                async for message in good:
                    inbox.put_nowait(message)

            reader_task = asyncio.create_task(read())
            for protocols in ((), ("chat",)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url, protocols=protocols)
                assert refused.value.status == 400
            big = await session.ws_connect(url, protocols=("sip",))
            await big.send_str("x" * 4096)
            closing = await big.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert big.close_code == 1009
            await good.send_bytes(b"\x00\x01 not SIP at all")
            reader, writer = await asyncio.open_connection(HOST, endpoint.local.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of it
            assert await closed_by_peer(reader)
            writer.close()
            await asyncio.sleep(0.5)  # pings and pongs go on under it
            request = OPTIONS.replace(b"SIP/2.0/TLS 127.0.0.1:5999", b"SIP/2.0/WS df7jal23ls0d.invalid")
            await good.send_str(request.decode())
            await eventually(lambda: len(got) == 2, "received")
            assert got[0][0] == b"\x00\x01 not SIP at all" and got[1][0] == request
            source = got[1][1]
            assert source.transport == "ws" and not good.closed
            endpoint.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", source)
            answer = await asyncio.wait_for(inbox.get(), 5)
            assert answer.type is aiohttp.WSMsgType.TEXT and answer.data.startswith("SIP/2.0 200")
            # Known by the name in its requests' Via too (what its Contact carries).
            endpoint.send(b"OPTIONS sip:x SIP/2.0\r\n\r\n", Address("ws", "df7jal23ls0d.invalid", 80))
            assert (await asyncio.wait_for(inbox.get(), 5)).data.startswith("OPTIONS sip:x")
            assert endpoint.refused == 3
            await good.close()
            await reader_task
    finally:
        endpoint.close()

"""TCP limits against abuse (issue 6) on a real TcpEndpoint: connections per source, idle
connections closed, and a broken stream closed without touching the others."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint

OPTIONS = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKt\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: t\r\n"
           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except (ConnectionResetError, TimeoutError):
        return False


@pytest.mark.asyncio
async def test_connections_over_the_per_source_limit_are_refused() -> None:
    got: list[Address] = []
    endpoint = await TcpEndpoint.bind("127.0.0.1", 0, lambda data, source, local: got.append(source),
                                      max_per_source=2, idle_timeout=0)
    try:
        port = endpoint.local.port
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await closed_by_peer(conns[2][0])
        assert endpoint.refused == 1
        # The admitted ones still work.
        conns[0][1].write(OPTIONS)
        await conns[0][1].drain()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert len(got) == 1
        for _, writer in conns:
            writer.close()
    finally:
        endpoint.close()


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_and_a_busy_one_is_not() -> None:
    endpoint = await TcpEndpoint.bind("127.0.0.1", 0, lambda data, source, local: None,
                                      max_per_source=0, idle_timeout=0.3)
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", endpoint.local.port)
        assert await closed_by_peer(idle_reader)
        idle_writer.close()
    finally:
        endpoint.close()


@pytest.mark.asyncio
async def test_a_broken_stream_is_closed_and_others_keep_working() -> None:
    got: list[bytes] = []
    endpoint = await TcpEndpoint.bind("127.0.0.1", 0, lambda data, source, local: got.append(data),
                                      idle_timeout=0)
    try:
        port = endpoint.local.port
        bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", port)
        _, good_writer = await asyncio.open_connection("127.0.0.1", port)
        bad_writer.write(b"INVITE sip:x SIP/2.0\r\nContent-Length: nope\r\n\r\n")
        await bad_writer.drain()
        assert await closed_by_peer(bad_reader)
        good_writer.write(OPTIONS)
        await good_writer.drain()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [OPTIONS]
        bad_writer.close()
        good_writer.close()
    finally:
        endpoint.close()

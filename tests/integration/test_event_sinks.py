"""Event sinks and the EventBus against real UDP and TCP listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchboard.actors.eventbus import EventBus
from switchboard.events.sinks import SinkAddress, TcpSink, UdpSink, open_sink, parse_sink
from tests.support.ports import free_port

HOLD = {"callid": "X", "leg": "caller", "action": "hold", "state": "start"}
HOLD_BYTES = (
    b'{"jsonrpc":"2.0","method":"E_CALL_HOLD",'
    b'"params":{"callid":"X","leg":"caller","action":"hold","state":"start"}}'
)


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait(data)

    async def next(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.received.get(), timeout)


class TcpListener:
    """Accepts connections and collects newline-terminated lines from all of them."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.connections = 0
        self.ended = 0  # connections the peer (our sink) closed
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                self.lines.put_nowait(line)
        self.ended += 1

    async def next(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.lines.get(), timeout)

    async def drop_clients(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        self.writers.clear()

    async def close(self) -> None:
        await self.drop_clients()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def udp_listener() -> AsyncIterator[tuple[UdpListener, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        UdpListener, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    yield protocol, port
    transport.close()


@pytest.fixture
async def tcp_listener() -> AsyncIterator[TcpListener]:
    listener = TcpListener()
    await listener.start()
    yield listener
    await listener.close()


# --- sinks -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_udp_sink_sends_one_datagram_per_event(
    udp_listener: tuple[UdpListener, int],
) -> None:
    listener, port = udp_listener
    sink = await open_sink(parse_sink(f"udp:127.0.0.1:{port}"))
    assert isinstance(sink, UdpSink)
    sink.send(HOLD_BYTES)
    sink.send(b"second")
    assert await listener.next() == HOLD_BYTES
    assert await listener.next() == b"second"
    await sink.close()


@pytest.mark.asyncio
async def test_udp_sink_drops_oversized_and_after_close(
    udp_listener: tuple[UdpListener, int], caplog: pytest.LogCaptureFixture
) -> None:
    listener, port = udp_listener
    sink = UdpSink(SinkAddress("udp", "127.0.0.1", port))
    await sink.open()
    with caplog.at_level(logging.WARNING):
        sink.send(b"x" * 70000)
        await sink.close()
        sink.send(b"late")
    assert "datagram limit" in caplog.text
    assert "not open" in caplog.text
    with pytest.raises(TimeoutError):
        await listener.next(timeout=0.2)


@pytest.mark.asyncio
async def test_tcp_sink_writes_newline_delimited_json(tcp_listener: TcpListener) -> None:
    sink = await open_sink(parse_sink(f"tcp:127.0.0.1:{tcp_listener.port}"))
    assert isinstance(sink, TcpSink)
    sink.send(HOLD_BYTES)
    sink.send(b'{"n":2}')
    assert await tcp_listener.next() == HOLD_BYTES + b"\n"
    assert await tcp_listener.next() == b'{"n":2}\n'
    assert tcp_listener.connections == 1
    await sink.close()


@pytest.mark.asyncio
async def test_tcp_sink_reconnects_after_the_peer_closes(tcp_listener: TcpListener) -> None:
    sink = TcpSink(SinkAddress("tcp", "127.0.0.1", tcp_listener.port))
    await sink.open()
    sink.send(b"one")
    assert await tcp_listener.next() == b"one\n"
    await tcp_listener.drop_clients()
    # Give the sink a moment to see the FIN, as it would between real events.
    for _ in range(100):
        if not sink.connected:
            break
        await asyncio.sleep(0.01)
    sink.send(b"two")
    assert await tcp_listener.next() == b"two\n"
    assert tcp_listener.connections == 2
    assert sink.dropped == 0
    await sink.close()


@pytest.mark.asyncio
async def test_tcp_sink_drops_with_a_log_line_when_nobody_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = TcpSink(SinkAddress("tcp", "127.0.0.1", free_port("tcp")), retry_interval=60.0)
    await sink.open()
    with caplog.at_level(logging.WARNING, logger="switchboard.events.sinks"):
        for n in range(3):
            sink.send(b"event %d" % n)  # never raises, never blocks
        for _ in range(200):
            if sink.dropped == 3:
                break
            await asyncio.sleep(0.01)
    assert sink.dropped == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # One "cannot connect" and one "dropping events" line for the streak, not one per event.
    assert len(warnings) == 2
    assert "cannot connect" in warnings[0].getMessage()
    assert "dropping events" in warnings[1].getMessage()
    await sink.close()


@pytest.mark.asyncio
async def test_tcp_sink_delivers_again_when_the_peer_comes_back() -> None:
    port = free_port("tcp")
    sink = TcpSink(SinkAddress("tcp", "127.0.0.1", port), retry_interval=0.0)
    await sink.open()
    sink.send(b"lost")
    for _ in range(200):
        if sink.dropped:
            break
        await asyncio.sleep(0.01)
    assert sink.dropped == 1
    listener = TcpListener()
    await listener.start(port)
    try:
        sink.send(b"found")
        assert await listener.next() == b"found\n"
    finally:
        await sink.close()
        await listener.close()


# --- the bus -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bus_delivers_the_exact_envelope_to_udp_and_tcp(
    udp_listener: tuple[UdpListener, int], tcp_listener: TcpListener
) -> None:
    udp, udp_port = udp_listener
    bus = EventBus()
    await bus.subscribe("E_CALL_HOLD", f"udp:127.0.0.1:{udp_port}", 60)
    await bus.subscribe("E_CALL_HOLD", f"tcp:127.0.0.1:{tcp_listener.port}", 60)
    await bus.subscribe("E_CALL_TRANSFER", f"tcp:127.0.0.1:{tcp_listener.port}", 60)
    bus.publish("E_CALL_HOLD", HOLD)
    bus.publish("E_DLG_STATE_CHANGED", {"id": "1.2"})  # nobody subscribed
    bus.publish("E_CALL_TRANSFER", {"callid": "X", "state": "ok"})
    assert await udp.next() == HOLD_BYTES
    assert await tcp_listener.next() == HOLD_BYTES + b"\n"
    transfer = await tcp_listener.next()
    assert json.loads(transfer) == {
        "jsonrpc": "2.0",
        "method": "E_CALL_TRANSFER",
        "params": {"callid": "X", "state": "ok"},
    }
    # One TCP connection serves both events sent to the same socket.
    assert tcp_listener.connections == 1
    with pytest.raises(TimeoutError):
        await udp.next(timeout=0.2)
    await bus.close()


@pytest.mark.asyncio
async def test_bus_subscriptions_expire_and_unsubscribe(
    udp_listener: tuple[UdpListener, int],
) -> None:
    udp, port = udp_listener
    now = [1000.0]
    bus = EventBus(clock=lambda: now[0])
    socket_text = f"udp:127.0.0.1:{port}"
    await bus.subscribe("E_CALL_HOLD", socket_text, 10)
    await bus.subscribe("E_CALL_TRANSFER", socket_text, None)  # static
    assert [(s.event, s.expires_at) for s in bus.subscriptions()] == [
        ("E_CALL_HOLD", 1010.0),
        ("E_CALL_TRANSFER", None),
    ]
    bus.publish("E_CALL_HOLD", {"n": 1})
    assert await udp.next() == b'{"jsonrpc":"2.0","method":"E_CALL_HOLD","params":{"n":1}}'
    now[0] = 1010.0
    bus.publish("E_CALL_HOLD", {"n": 2})
    bus.publish("E_CALL_TRANSFER", {"n": 3})
    assert json.loads(await udp.next())["params"] == {"n": 3}
    # expire 0 removes; a static subscription stays.
    await bus.subscribe("E_CALL_HOLD", socket_text, 100)
    await bus.subscribe("E_CALL_HOLD", socket_text, 0)
    await bus.subscribe("E_CALL_TRANSFER", socket_text, 0)
    now[0] = 1e9
    bus.publish("E_CALL_HOLD", {"n": 4})
    bus.publish("E_CALL_TRANSFER", {"n": 5})
    assert json.loads(await udp.next())["params"] == {"n": 5}
    await bus.close()


@pytest.mark.asyncio
async def test_bus_closes_a_sink_nobody_uses_any_more(tcp_listener: TcpListener) -> None:
    bus = EventBus()
    socket_text = f"tcp:127.0.0.1:{tcp_listener.port}"
    await bus.subscribe("E_CALL_HOLD", socket_text, 10)
    bus.publish("E_CALL_HOLD", {"n": 1})
    assert (
        await tcp_listener.next() == b'{"jsonrpc":"2.0","method":"E_CALL_HOLD","params":{"n":1}}\n'
    )
    await bus.subscribe("E_CALL_HOLD", socket_text, 0)
    # The sink's connection is closed: the listener sees EOF.
    for _ in range(200):
        if tcp_listener.ended:
            break
        await asyncio.sleep(0.01)
    assert tcp_listener.ended == 1
    await bus.close()


@pytest.mark.asyncio
async def test_bus_refuses_bad_subscriptions() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="unknown event 'E_NOPE'"):
        await bus.subscribe("E_NOPE", "udp:127.0.0.1:9000", 10)
    with pytest.raises(ValueError, match="bad event socket"):
        await bus.subscribe("E_CALL_HOLD", "udp:127.0.0.1", 10)
    with pytest.raises(ValueError, match="negative"):
        await bus.subscribe("E_CALL_HOLD", "udp:127.0.0.1:9000", -5)
    assert bus.subscriptions() == []
    await bus.close()


@pytest.mark.asyncio
async def test_bus_publish_never_raises(
    udp_listener: tuple[UdpListener, int], caplog: pytest.LogCaptureFixture
) -> None:
    udp, port = udp_listener
    bus = EventBus()
    await bus.subscribe("E_CALL_HOLD", f"udp:127.0.0.1:{port}", 10)
    with caplog.at_level(logging.ERROR, logger="switchboard.actors.eventbus"):
        bus.publish("E_CALL_HOLD", {"bad": object()})
        bus.publish("E_CALL_HOLD", {"good": True})
        assert json.loads(await udp.next())["params"] == {"good": True}
    assert "cannot encode" in caplog.text
    await bus.close()
    bus.publish("E_CALL_HOLD", {"after": "close"})
    assert bus.dropped == 1


@pytest.mark.asyncio
async def test_bus_mailbox_full_drops_instead_of_blocking(
    caplog: pytest.LogCaptureFixture, tcp_listener: TcpListener,
) -> None:
    bus = EventBus(mailbox_size=2)
    await bus.subscribe("E_CALL_HOLD", f"tcp:127.0.0.1:{tcp_listener.port}", 10)
    with caplog.at_level(logging.WARNING, logger="switchboard.actors.eventbus"):
        for n in range(5):
            bus.publish("E_CALL_HOLD", {"n": n})
    assert bus.dropped == 3
    assert "mailbox full" in caplog.text
    await bus.close()


@pytest.mark.asyncio
async def test_an_event_nobody_listens_to_is_not_queued() -> None:
    bus = EventBus(mailbox_size=2)
    for n in range(5):
        bus.publish("E_CALL_HOLD", {"n": n})
    # Nothing queued, nothing dropped, and no task woken for it.
    assert bus.dropped == 0
    assert bus._mailbox.empty() and bus._task is None
    await bus.close()


@pytest.mark.asyncio
async def test_closing_the_bus_flushes_what_was_published(tcp_listener: TcpListener) -> None:
    bus = EventBus()
    await bus.subscribe("E_CALL_HOLD", f"tcp:127.0.0.1:{tcp_listener.port}", 10)
    for n in range(3):
        bus.publish("E_CALL_HOLD", {"n": n})
    await bus.close()
    lines = [await tcp_listener.next() for _ in range(3)]
    assert [json.loads(line)["params"]["n"] for line in lines] == [0, 1, 2]

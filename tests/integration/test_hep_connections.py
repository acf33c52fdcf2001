"""HEP capture of messages sent over connections, on real sockets: a WebSocket client known
only by the `.invalid` name in its Via is mirrored with its real address, and a message to a
client with no connection is reported undeliverable and not mirrored."""

from __future__ import annotations

import asyncio

import aiohttp

from switchboard.hep import HepMirror, MirroredEndpoint
from switchboard.sip.wire import Address
from switchboard.transport.ws import WsEndpoint
from tests.support.hep import by_type

HOST = "127.0.0.1"
NAME = "df7jal23ls0d.invalid"
REGISTER = (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS {NAME};branch=z9hG4bKw\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: w\r\n"
            "CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
OPTIONS = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.packets.put_nowait(data)


async def test_a_websocket_client_known_by_its_invalid_name_is_mirrored() -> None:
    loop = asyncio.get_running_loop()
    collector = Collector()
    sink, _ = await loop.create_datagram_endpoint(lambda: collector, local_addr=(HOST, 0))
    mirror = await HepMirror.connect(HOST, sink.get_extra_info("sockname")[1])
    got: list[Address] = []
    ws = await WsEndpoint.bind("ws", HOST, 0, lambda d, s, local: got.append(s))
    endpoint = MirroredEndpoint(ws, mirror)
    try:
        async with aiohttp.ClientSession() as session:
            client = await session.ws_connect(f"http://{HOST}:{ws.local.port}/",
                                              protocols=("sip",))
            await client.send_str(REGISTER)
            for _ in range(250):
                if got:
                    break
                await asyncio.sleep(0.02)
            (peer,) = got
            assert endpoint.send(OPTIONS, Address("ws", NAME, 80)) is True
            assert (await client.receive(timeout=5)).data.encode() == OPTIONS
            packet = await asyncio.wait_for(collector.packets.get(), 5)
            chunks = by_type(packet)
            assert chunks[15] == OPTIONS
            assert chunks[4] == bytes([127, 0, 0, 1])
            assert int.from_bytes(chunks[8], "big") == peer.port
            # Nobody is known by this name: undeliverable, and nothing is mirrored.
            assert endpoint.send(OPTIONS, Address("ws", "nobody.invalid", 80)) is False
            assert (mirror.sent, mirror.dropped) == (1, 0)
            await client.close()
    finally:
        endpoint.close()
        mirror.close()
        sink.close()

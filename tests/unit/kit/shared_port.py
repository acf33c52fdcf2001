"""Workers that share one address, in this loop (`cluster/shared_port.py`): a node of
in-process workers bound to one UDP (and TCP, or WebSocket) port with SO_REUSEPORT, each with
its end of the hand-off channel, and the parties that talk to it from one socket each: a UA
or trunk on UDP (`Party`), a UA on one TCP connection (`StreamParty`), a browser-like UA on
one WebSocket (`WsParty`, aiohttp's client).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from switchboard.actors.worker import Worker
from switchboard.cluster.owner import hashed_worker
from switchboard.cluster.shared_port import SharedPort
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.udp import UdpEndpoint
from switchboard.transport.ws import Flows, WsEndpoint
from tests.support.ports import HOST
from tests.unit.kit.proxy import counter, invite

WAIT = 5.0


@dataclass
class Node:
    """The workers of one node on one shared UDP address."""

    address: Address
    workers: list[Worker]
    shared: list[SharedPort]

    def owner_of(self, call_id: str) -> int:
        owners = [i for i, w in enumerate(self.workers)
                  if w.proxy.dialogs.by_call_id(call_id) is not None]
        assert len(owners) == 1, (call_id, owners)
        return owners[0]


def _started(port: int, workers: list[Worker], shared: list[SharedPort]) -> Node:
    """The node once every worker is attached: each sees the others, then serves."""
    for share in shared:
        share.refresh()
        share.start()
    return Node(Address("udp", HOST, port), workers, shared)


async def start_node(directory: Path, count: int, port: int) -> Node:
    workers, shared = [], []
    for index in range(count):
        share = await SharedPort.open(str(directory), index, "osid")
        local = Address("udp", HOST, port)
        proxy = Proxy(ProxyConfig(listeners=(local,), worker_id=index), counter())
        worker = Worker(proxy, CallOps(proxy), lambda event, params: None)
        endpoint = await UdpEndpoint.bind(HOST, port, worker.receive, reuse_port=True)
        worker.add_endpoint(endpoint)
        share.attach(worker)
        workers.append(worker)
        shared.append(share)
    return _started(port, workers, shared)


class Party:
    """A UA or trunk on one UDP socket: what it receives, and from which address."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.contact = f"sip:party@{HOST}:{self.port}"

    def send(self, data: bytes, to: Address) -> None:
        self.sock.sendto(data, (to.host, to.port))

    async def receive(self) -> tuple[Request | Response, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), WAIT)
        return parse_message(data), source

    async def expect(self, first_line: str) -> tuple[Request | Response, tuple[str, int]]:
        """The next message that starts with `first_line` (100 Trying and the like skipped)."""
        while True:
            msg, source = await self.receive()
            if msg.start_line().startswith(first_line):
                return msg, source

    def close(self) -> None:
        self.sock.close()


def via_of(party: Party, branch: str) -> str:
    return f"SIP/2.0/UDP {HOST}:{party.port};branch={branch}"


class StreamParty:
    """A UA on one TCP connection to the shared address: what it receives, framed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.port = writer.get_extra_info("sockname")[1]
        self.contact = f"sip:party@{HOST}:{self.port};transport=tcp"

    @classmethod
    async def connect(cls, node: Node) -> StreamParty:
        reader, writer = await asyncio.open_connection(HOST, node.address.port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, first_line: str) -> Request | Response:
        while True:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await self.reader.readexactly(length) if length else b""
            msg = parse_message(head + body)
            if msg.start_line().startswith(first_line):
                return msg

    def close(self) -> None:
        self.writer.close()


async def start_stream_node(directory: Path, count: int, port: int) -> Node:
    """Workers sharing udp:PORT and tcp:PORT."""
    workers, shared = [], []
    for index in range(count):
        share = await SharedPort.open(str(directory), index, "osid")
        udp, tcp = Address("udp", HOST, port), Address("tcp", HOST, port)
        proxy = Proxy(ProxyConfig(listeners=(udp, tcp), worker_id=index), counter())
        worker = Worker(proxy, CallOps(proxy), lambda event, params: None)
        worker.add_endpoint(await UdpEndpoint.bind(HOST, port, worker.receive,
                                                   reuse_port=True))
        worker.add_endpoint(await TcpEndpoint.bind(HOST, port, worker.receive,
                                                   reuse_port=True))
        share.attach(worker)
        workers.append(worker)
        shared.append(share)
    return _started(port, workers, shared)


async def start_ws_node(directory: Path, count: int, port: int, ws_port: int,
                        wss: tuple[int, ssl.SSLContext] | None = None) -> Node:
    """Workers sharing udp:PORT and ws:WS_PORT (and wss: on the port and with the server
    context of `wss`), their WebSocket listeners sharing one `Flows` each, as
    `cluster.local.build_worker` wires them."""
    workers, shared = [], []
    for index in range(count):
        share = await SharedPort.open(str(directory), index, "osid")
        listeners = [Address("udp", HOST, port), Address("ws", HOST, ws_port)]
        if wss is not None:
            listeners.append(Address("wss", HOST, wss[0]))
        proxy = Proxy(ProxyConfig(listeners=tuple(listeners), worker_id=index), counter())
        flows = Flows()
        proxy.addressing.connection_transport = flows.transport_of
        worker = Worker(proxy, CallOps(proxy), lambda event, params: None)
        worker.add_endpoint(await UdpEndpoint.bind(HOST, port, worker.receive,
                                                   reuse_port=True))
        worker.add_endpoint(await WsEndpoint.bind("ws", HOST, ws_port, worker.receive,
                                                  reuse_port=True, flows=flows))
        if wss is not None:
            worker.add_endpoint(await WsEndpoint.bind(
                "wss", HOST, wss[0], worker.receive, reuse_port=True, flows=flows,
                server_ssl=wss[1]))
        share.attach(worker)
        workers.append(worker)
        shared.append(share)
    return _started(port, workers, shared)


class WsParty:
    """A browser-like UA on one WebSocket to the shared address: it calls itself by a
    `.invalid` name in its Via and Contact (RFC 7118 §5), and writes `transport=ws` in its
    Contact even over WSS (§5.2)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 name: str, transport: str) -> None:
        self.session = session
        self.ws = ws
        self.name = name
        self.transport = transport
        self.contact = f"sip:bob@{name};transport=ws"

    @classmethod
    async def connect(cls, port: int, name: str, client_ssl: ssl.SSLContext | None = None
                      ) -> WsParty:
        session = aiohttp.ClientSession()
        scheme = "https" if client_ssl is not None else "http"
        try:
            ws = await session.ws_connect(f"{scheme}://{HOST}:{port}/", protocols=("sip",),
                                          ssl=client_ssl if client_ssl is not None else True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, name, "WSS" if client_ssl is not None else "WS")

    def via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport} {self.name};branch={branch}"

    async def send(self, data: bytes) -> None:
        await self.ws.send_str(data.decode())

    async def expect(self, first_line: str) -> Request | Response:
        while True:
            frame = await self.ws.receive(timeout=WAIT)
            assert frame.type is aiohttp.WSMsgType.TEXT, frame
            msg = parse_message(str(frame.data).encode())
            if msg.start_line().startswith(first_line):
                return msg

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


# -- what the tests of a shared node say again and again ----------------------------------

WORKERS = (0, 1)


def call_id_of(worker: int, tag: str) -> str:
    """A Call-ID that hashes to `worker` (of two)."""
    n = 0
    while hashed_worker(f"{tag}-{n}@{HOST}".encode(), WORKERS) != worker:
        n += 1
    return f"{tag}-{n}@{HOST}"


async def until(what: str, check: Callable[[], object]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {what} after 5 s")


def aor(node: Node) -> str:
    return f"sip:bob@{HOST}:{node.address.port}"


def key() -> str:
    return f"bob@{HOST}"


def contacts(worker: Worker) -> list[str]:
    return [b.contact for b in worker.proxy.location.lookup(key(), worker.now())]


async def refused(node: Node, caller: Party, call_id: str) -> int:
    caller.send(invite(call_id=call_id, ruri=aor(node), contact=caller.contact,
                       via=via_of(caller, f"z9hG4bK-{call_id}")), node.address)
    while True:
        answer, _ = await caller.expect("SIP/2.0 ")
        assert isinstance(answer, Response)
        if answer.status >= 200:
            return answer.status


async def close_node(node: Node) -> None:
    for worker, share in zip(node.workers, node.shared, strict=True):
        share.close()
        worker.close()

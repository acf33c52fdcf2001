"""Workers that share one address, in this loop (`cluster/shared_port.py`): a node of
in-process workers bound to one UDP (and TCP) port with SO_REUSEPORT, each with its end of
the hand-off channel, and the parties that talk to it from one socket each: a UA or trunk on
UDP (`Party`), a UA on one TCP connection (`StreamParty`).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

from switchboard.actors.worker import Worker
from switchboard.cluster.shared_port import SharedPort
from switchboard.sip import Request, Response, parse_message
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.wire import Address
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.udp import UdpEndpoint
from tests.support.ports import HOST
from tests.unit.kit.proxy import counter

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
    for share in shared:
        share.refresh()
        share.start()
    return Node(Address("udp", HOST, port), workers, shared)


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
    for share in shared:
        share.refresh()
        share.start()
    return Node(Address("udp", HOST, port), workers, shared)

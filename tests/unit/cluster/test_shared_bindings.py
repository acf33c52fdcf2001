"""Registrations shared by the workers of a node (`cluster/bindings.py`): two workers in this
loop on one real UDP (and TCP) port, a REGISTER owned by one of them by its Call-ID, and
calls toward the user whose Call-IDs hash to either: every worker keeps a copy of the
location table, so every call reaches the contact, from the shared address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchboard.actors.worker import Worker
from switchboard.cluster.bindings import NodeBindings, pack, unpack
from switchboard.cluster.shared_port import SharedPort
from switchboard.sip import Request, Response
from switchboard.sip.callops import CallOps
from switchboard.sip.proxy import Proxy, ProxyConfig
from switchboard.sip.registrar import BindingChange
from switchboard.sip.wire import Address
from switchboard.transport.handoff import BINDINGS
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.udp import UdpEndpoint
from tests.support.ports import HOST, free_port
from tests.unit.kit.proxy import counter, invite, reply, sip_request
from tests.unit.kit.shared_port import (
    WORKERS,
    Node,
    Party,
    StreamParty,
    aor,
    call_id_of,
    close_node,
    contacts,
    key,
    refused,
    start_node,
    start_stream_node,
    until,
    via_of,
)


def register(node: Node, ua: Party, call_id: str, *, cseq: int = 1, expires: int = 600
             ) -> bytes:
    return sip_request("REGISTER", f"sip:{HOST}:{node.address.port}",
                       branch=f"z9hG4bK-reg-{call_id}-{cseq}",
                       via=via_of(ua, f"z9hG4bK-reg-{call_id}-{cseq}"), from_uri=aor(node),
                       to_uri=aor(node), from_tag=f"reg-{cseq}", call_id=call_id, cseq=cseq,
                       contact=ua.contact, extra=[f"Expires: {expires}"])


async def registered(node: Node, ua: Party, call_id: str, **kw: int) -> Response:
    ua.send(register(node, ua, call_id, **kw), node.address)
    answer, _ = await ua.expect("SIP/2.0 ")
    assert isinstance(answer, Response)
    return answer


def accepted(node: Node) -> list[int]:
    return [w.proxy.statistics().get("registrar:accepted_regs", 0) for w in node.workers]


async def call_reaches(node: Node, caller: Party, callee: Party, call_id: str) -> Request:
    """A call toward the AOR: the callee gets the INVITE (from the shared address) and
    refuses it; the caller gets the 486 and ACKs it."""
    data = invite(call_id=call_id, ruri=aor(node), contact=caller.contact,
                  via=via_of(caller, f"z9hG4bK-{call_id}"))
    caller.send(data, node.address)
    relayed, source = await callee.expect("INVITE")
    assert source == (HOST, node.address.port)
    assert isinstance(relayed, Request) and relayed.call_id == call_id
    callee.send(reply(relayed, 486, contact=None), node.address)
    busy, _ = await caller.expect("SIP/2.0 486")
    assert isinstance(busy, Response)
    caller.send(sip_request("ACK", aor(node), branch=f"z9hG4bK-{call_id}", to_tag="bob-tag",
                            call_id=call_id, via=via_of(caller, f"z9hG4bK-{call_id}"),
                            contact=None), node.address)
    return relayed


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    running = await start_node(tmp_path / "node", 2, free_port("udp"))
    try:
        yield running
    finally:
        await close_node(running)


async def test_a_user_registered_on_one_worker_is_called_through_both(node: Node) -> None:
    bob, alice = Party(), Party()
    try:
        for registrar in WORKERS:
            reg = call_id_of(registrar, f"reg-on-{registrar}")
            before = accepted(node)
            assert (await registered(node, bob, reg)).status == 200
            assert [a - b for a, b in zip(accepted(node), before, strict=True)] == [
                int(w == registrar) for w in WORKERS]
            other = node.workers[1 - registrar]
            await until("copied", lambda other=other: contacts(other) == [bob.contact])
            for n in range(4):
                for owner in WORKERS:
                    call_id = call_id_of(owner, f"to-bob-{registrar}-{n}")
                    await call_reaches(node, alice, bob, call_id)
        # Each binding is counted once over the node: by the worker that took its REGISTER.
        counts = [w.proxy.statistics()["usrloc:registered_contacts"] for w in node.workers]
        assert sorted(counts) == [0, 1], counts
        stats = [s.statistics() for s in node.shared]
        assert sum(s["handoff:binding_updates_sent"] for s in stats) == 2
        assert sum(s["handoff:binding_updates_applied"] for s in stats) == 2
    finally:
        bob.close()
        alice.close()


async def test_a_de_register_through_one_worker_removes_the_binding_from_both(
        node: Node) -> None:
    bob, alice = Party(), Party()
    try:
        assert (await registered(node, bob, call_id_of(0, "reg"))).status == 200
        await until("copied", lambda: contacts(node.workers[1]) == [bob.contact])
        # Another registration (a Call-ID owned by worker 1) removes the contact.
        gone = await registered(node, bob, call_id_of(1, "unreg"), expires=0)
        assert gone.status == 200 and gone.get("contact") is None
        await until("removed", lambda: contacts(node.workers[0]) == [])
        assert contacts(node.workers[1]) == []
        for owner in WORKERS:
            assert await refused(node, alice, call_id_of(owner, f"after-{owner}")) == 404
    finally:
        bob.close()
        alice.close()


async def test_a_copy_expires_when_the_binding_does(node: Node) -> None:
    bob = Party()
    try:
        assert (await registered(node, bob, call_id_of(0, "short"), expires=60)).status == 200
        copy = node.workers[1]
        await until("copied", lambda: contacts(copy) == [bob.contact])
        location, now = copy.proxy.location, copy.now()
        assert [b.contact for b in location.lookup(key(), now + 59)] == [bob.contact]
        assert location.lookup(key(), now + 61) == []
        here = node.workers[0].proxy.location
        assert here.lookup(key(), now + 59) and not here.lookup(key(), now + 61)
    finally:
        bob.close()


async def test_a_restarted_worker_gets_the_table(tmp_path: Path) -> None:
    """Worker 1 goes and comes back empty: it asks worker 0 for the table, and has its own
    bindings (counted by it again) and worker 0's, with what they had left."""
    directory = tmp_path / "node"
    port = free_port("udp")
    node = await start_node(directory, 2, port)
    bob, carol, alice = Party(), Party(), Party()
    carol.contact = carol.contact.replace("party@", "carol@")
    try:
        assert (await registered(node, bob, call_id_of(0, "bob"))).status == 200
        carol.send(sip_request(
            "REGISTER", f"sip:{HOST}:{port}", branch="z9hG4bK-carol",
            via=via_of(carol, "z9hG4bK-carol"), from_uri=f"sip:carol@{HOST}:{port}",
            to_uri=f"sip:carol@{HOST}:{port}", call_id=call_id_of(1, "carol"),
            contact=carol.contact, extra=["Expires: 600"]), node.address)
        await carol.expect("SIP/2.0 200")
        await until("copied", lambda: contacts(node.workers[1]) == [bob.contact])
        node.shared[1].close()
        node.workers[1].close()

        share = await SharedPort.open(str(directory), 1, "osid")
        local = Address("udp", HOST, port)
        proxy = Proxy(ProxyConfig(listeners=(local,), worker_id=1), counter())
        worker = Worker(proxy, CallOps(proxy), lambda event, params: None)
        worker.add_endpoint(await UdpEndpoint.bind(HOST, port, worker.receive,
                                                   reuse_port=True))
        share.attach(worker)
        node.workers[1], node.shared[1] = worker, share
        assert contacts(worker) == []
        share.start()
        await until("the table", lambda: contacts(worker) == [bob.contact])
        carols = proxy.location.lookup(f"carol@{HOST}", worker.now())
        assert [b.contact for b in carols] == [carol.contact]
        assert 590 < carols[0].expires_at - worker.now() <= 600
        assert proxy.statistics()["usrloc:registered_contacts"] == 1  # carol's, its own
        assert node.shared[0].statistics()["handoff:binding_tables_sent"] == 2
        await until("counted", lambda: node.shared[0].ownership.members == (0, 1))
        for owner in WORKERS:
            await call_reaches(node, alice, bob, call_id_of(owner, f"back-{owner}"))
    finally:
        for party in (bob, carol, alice):
            party.close()
        await close_node(node)


async def test_a_binding_over_a_connection_is_reached_through_its_worker(
        tmp_path: Path) -> None:
    """Bob registers over a TCP connection the kernel gave one worker, with a Contact that
    names the connection's own address (reached over it only): calls owned by either worker
    reach him over that connection. When it closes, both workers drop the binding at once
    (480: offline) and the other worker no longer sends through the one that held it."""
    node = await start_stream_node(tmp_path / "node", 2, free_port("both"))
    bob = await StreamParty.connect(node)
    alice = Party()
    tcp = Address("tcp", HOST, node.address.port)
    try:
        def holders() -> list[int]:
            return [i for i, w in enumerate(node.workers)
                    if any(e.local == tcp and isinstance(e, TcpEndpoint) and e.connections
                           for e in w.endpoints.values())]

        await until("accepted", holders)
        [holder] = holders()
        other = 1 - holder
        # Registered through the worker that holds the connection: the other one has heard
        # nothing from Bob, and learns from the change which worker reaches him.
        bob.send(sip_request(
            "REGISTER", f"sip:{HOST}:{node.address.port}", branch="z9hG4bK-treg",
            via=f"SIP/2.0/TCP {HOST}:{bob.port};branch=z9hG4bK-treg", from_uri=aor(node),
            to_uri=aor(node), call_id=call_id_of(holder, "tcp-reg"), contact=bob.contact,
            extra=["Expires: 600"]))
        assert (await bob.expect("SIP/2.0 ")).status == 200  # type: ignore[union-attr]
        await until("copied", lambda: all(contacts(w) == [bob.contact] for w in node.workers))
        assert node.shared[other].channel.received == 0
        bob_conn = node.workers[other].proxy.location.lookup(key(), 0.0)[0].source
        assert node.shared[other].held.get(bob_conn) == holder
        for n in range(3):
            for owner in WORKERS:
                call_id = call_id_of(owner, f"tcp-call-{n}")
                alice.send(invite(call_id=call_id, ruri=aor(node), contact=alice.contact,
                                  via=via_of(alice, f"z9hG4bK-{call_id}")), node.address)
                relayed = await bob.expect("INVITE")
                assert isinstance(relayed, Request) and relayed.call_id == call_id
                bob.send(reply(relayed, 486, contact=None))
                await alice.expect("SIP/2.0 486")
                alice.send(sip_request(
                    "ACK", aor(node), branch=f"z9hG4bK-{call_id}", to_tag="bob-tag",
                    call_id=call_id, via=via_of(alice, f"z9hG4bK-{call_id}"), contact=None),
                    node.address)
        # The other worker opened no connection of its own: it went through the holder.
        assert not any(isinstance(e, TcpEndpoint) and e.connections
                       for e in node.workers[other].endpoints.values())

        bob.close()
        await until("dropped", lambda: all(contacts(w) == [] for w in node.workers))
        assert bob_conn not in node.shared[other].held
        for owner in WORKERS:
            assert await refused(node, alice, call_id_of(owner, f"offline-{owner}")) == 480
    finally:
        bob.close()
        alice.close()
        await close_node(node)


async def test_a_worker_that_restarts_took_its_connections_bindings_with_it(
        tmp_path: Path) -> None:
    """The worker holding Bob's connection dies (its connections with it, telling nobody):
    when it listens again, the other worker drops the binding registered over that
    connection (480: offline) and sends nothing more to Bob through it."""
    directory = tmp_path / "node"
    node = await start_stream_node(directory, 2, free_port("both"))
    bob = await StreamParty.connect(node)
    alice = Party()
    tcp = Address("tcp", HOST, node.address.port)
    try:
        def holders() -> list[int]:
            return [i for i, w in enumerate(node.workers)
                    if any(e.local == tcp and isinstance(e, TcpEndpoint) and e.connections
                           for e in w.endpoints.values())]

        await until("accepted", holders)
        [holder] = holders()
        other = 1 - holder
        bob.send(sip_request(
            "REGISTER", f"sip:{HOST}:{node.address.port}", branch="z9hG4bK-rreg",
            via=f"SIP/2.0/TCP {HOST}:{bob.port};branch=z9hG4bK-rreg", from_uri=aor(node),
            to_uri=aor(node), call_id=call_id_of(holder, "restart-reg"), contact=bob.contact,
            extra=["Expires: 600"]))
        assert (await bob.expect("SIP/2.0 ")).status == 200  # type: ignore[union-attr]
        await until("copied", lambda: contacts(node.workers[other]) == [bob.contact])
        assert node.shared[other].held

        node.shared[holder].close()  # it dies: the connection ends, nobody is told
        node.workers[holder].close()
        await asyncio.sleep(0.05)
        assert contacts(node.workers[other]) == [bob.contact]
        again = await SharedPort.open(str(directory), holder, "osid")
        node.shared[holder] = again  # closed with the node
        await until("dropped", lambda: contacts(node.workers[other]) == [])
        assert not node.shared[other].held
        assert await refused(node, alice, call_id_of(other, "after-restart")) == 480
    finally:
        bob.close()
        alice.close()
        await close_node(node)


async def test_a_bad_bindings_frame_is_dropped_and_the_channel_goes_on(node: Node) -> None:
    bob = Party()
    try:
        sender = node.shared[0].channel
        assert sender.tell(1, BINDINGS, b"\xc1 not msgpack")
        assert sender.tell(1, BINDINGS, pack([(BindingChange(
            key(), bob.contact, 600.0, "r", 1, Address("udp", HOST, bob.port),
            node.address), 0, -1)]))
        await until("applied", lambda: contacts(node.workers[1]) == [bob.contact])
        bindings = node.shared[1].bindings
        assert isinstance(bindings, NodeBindings) and bindings.applied == 1
    finally:
        bob.close()


def test_a_change_crosses_with_its_origin_and_holder() -> None:
    conn = Address("tcp", "2001:db8::7", 40001)
    change = BindingChange(key(), "sip:k@k.invalid;transport=tcp", 12.5, "c", 3, conn,
                           Address("tcp", "192.0.2.1", 5060), 0.5, True, -1)
    [(back, holder)] = unpack(pack([(change, 2, 3)]), me=1)
    assert holder == 3
    assert back == BindingChange(change.key, change.contact, 12.5, "c", 3, conn,
                                 change.local, 0.5, True, 2)
    [(mine, _)] = unpack(pack([(change, 1, -1)]), me=1)
    assert mine.origin == -1  # its own, back after a restart


class FakeChannel:
    """Two workers' channel as `NodeBindings` sees it: the frames told, and a peer that
    reads slowly at first."""

    def __init__(self) -> None:
        self.told: list[tuple[int, int, bytes]] = []
        self.slow = 2  # the first looks at the backlog find it full

    def members(self) -> list[int]:
        return [0, 1]

    def tell(self, worker: int, kind: int, data: bytes = b"") -> bool:
        self.told.append((worker, kind, data))
        return True

    def backlog(self, worker: int) -> int:
        self.slow -= 1
        return 1 << 30 if self.slow >= 0 else 0


async def test_a_table_goes_in_parts_and_the_changes_made_meanwhile_after_it() -> None:
    """A table larger than one frame, to a worker that reads slowly: a change made while it
    is being written reaches that worker after the table (which it would otherwise undo)."""
    from switchboard.cluster import bindings as module
    from switchboard.sip.registrar import Location

    location = Location()
    here = Address("udp", HOST, 5060)
    for n in range(module.TABLE_CHUNK + 10):
        location.apply(BindingChange(f"u{n}@{HOST}", f"sip:u{n}@{HOST}:7000", 600.0, f"c{n}",
                                     1, Address("udp", HOST, 7000), here), 0.0)
    channel = FakeChannel()
    node = NodeBindings(0, channel, location, lambda: 0.0,  # type: ignore[arg-type]
                        lambda source: 0, lambda source, worker: None)
    try:
        node.send_table(1)
        await asyncio.sleep(0)  # the task waits for the backlog to drain
        assert channel.told == []
        node.changed(BindingChange(f"u0@{HOST}", f"sip:u0@{HOST}:7000", 0.0, "c0", 2,
                                   Address("udp", HOST, 7000), here))
        assert channel.told == []  # held back for worker 1
        await until("sent", lambda: node.tables == 1)
        frames = [unpack(data, 1) for worker, kind, data in channel.told]
        assert [len(f) for f in frames] == [module.TABLE_CHUNK, 10, 1]
        last, _ = frames[-1][0]
        assert (last.key, last.expires_in, last.cseq) == (f"u0@{HOST}", 0.0, 2)
        assert node.sent == 1
    finally:
        node.close()

"""WebSocket listeners shared by the workers of a node (`cluster/shared_port.py`), and what a
worker does with bytes it was asked to write but cannot: two workers in this loop on one
real UDP port and one real WebSocket port (SO_REUSEPORT), a browser-like client on one
WebSocket (aiohttp's client, a `.invalid` name as browsers write it), a caller on UDP.

The kernel gives the WebSocket to one worker, which keeps it; its messages go to their owner
as a TCP connection's do, what the owner sends toward the client goes through the worker that
holds the connection, and its end is told to the other worker (`CLOSED`)."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.cluster.bindings import pack
from switchboard.sip import Request, Response
from switchboard.sip.registrar import BindingChange
from switchboard.sip.wire import Address
from switchboard.transport.handoff import BINDINGS
from switchboard.transport.tcp import TcpEndpoint
from switchboard.transport.ws import WsEndpoint
from tests.support.certs import make_pki
from tests.support.ports import HOST, free_port
from tests.unit.kit.proxy import invite, reply, sip_request
from tests.unit.kit.shared_port import (
    WORKERS,
    Node,
    Party,
    StreamParty,
    WsParty,
    aor,
    call_id_of,
    close_node,
    contacts,
    key,
    refused,
    start_stream_node,
    start_ws_node,
    until,
    via_of,
)


def holders(node: Node, transport: str) -> list[int]:
    """The workers with a connection on their `transport` listener."""
    return [i for i, w in enumerate(node.workers)
            if any(e.local.transport == transport and isinstance(e, (TcpEndpoint, WsEndpoint))
                   and e.connections for e in w.endpoints.values())]


def server_context(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts of a test CA made now."""
    pki = make_pki(tmp_path / "pki")
    cert = pki.issue("switchboard")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert.certificate, cert.private_key)
    return server, ssl.create_default_context(cafile=str(pki.ca_file))


async def answered_call(node: Node, alice: Party, bob: WsParty, call_id: str) -> None:
    """Alice calls Bob, he answers, she ACKs along the route set; Bob hangs up along his."""
    branch = f"z9hG4bK-{call_id}"
    alice.send(invite(call_id=call_id, ruri=aor(node), contact=alice.contact,
                      via=via_of(alice, branch)), node.address)
    relayed = await bob.expect("INVITE")
    assert isinstance(relayed, Request) and relayed.call_id == call_id
    await bob.send(reply(relayed, 200, contact=bob.contact))
    ok, source = await alice.expect("SIP/2.0 200")
    assert source == (HOST, node.address.port)
    assert isinstance(ok, Response)
    alice.send(sip_request("ACK", bob.contact, branch=f"{branch}-ack", to_tag="bob-tag",
                           call_id=call_id, routes=ok.values("record-route"),
                           via=via_of(alice, f"{branch}-ack")), node.address)
    assert isinstance(await bob.expect("ACK"), Request)
    await bob.send(sip_request(
        "BYE", alice.contact, branch=f"{branch}-bye", from_uri=aor(node), from_tag="bob-tag",
        to_uri="sip:alice@127.0.0.1", to_tag="alice-tag", call_id=call_id,
        routes=list(reversed(relayed.values("record-route"))), via=bob.via(f"{branch}-bye"),
        contact=bob.contact))
    bye, source = await alice.expect("BYE")
    assert source == (HOST, node.address.port) and isinstance(bye, Request)
    alice.send(reply(bye, 200, to_tag=None, contact=None), node.address)
    assert (await bob.expect("SIP/2.0 ")).status == 200  # type: ignore[union-attr]


@pytest.mark.parametrize("registrar", ["holder", "other"])
@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_a_websocket_client_is_registered_and_called_through_both_workers(
        tmp_path: Path, transport: str, registrar: str) -> None:
    """Bob's WebSocket lives in the worker the kernel gave it to (its holder). His REGISTER's
    Call-ID belongs to the holder (the other worker learns of him from the change naming
    the holder only) or to the other worker (which takes it, answers through the holder,
    and tells the change). Calls owned by either worker reach Bob over his connection and
    their answers come back; one each is answered and hung up by Bob. Over WSS Bob's Contact
    still says `transport=ws`: the worker that does not hold his connection goes out on the
    WSS listener all the same. When the connection ends, both workers drop the binding at
    once (480: offline) and forget the names it was known by."""
    tls = server_context(tmp_path) if transport == "wss" else None
    ports = free_port("udp"), free_port("tcp"), free_port("tcp")
    node = await start_ws_node(tmp_path / "node", 2, ports[0], ports[1],
                               (ports[2], tls[0]) if tls is not None else None)
    name = f"{secrets.token_hex(4)}.invalid"
    bob = await WsParty.connect(ports[2] if tls else ports[1], name,
                                tls[1] if tls else None)
    alice = Party()
    try:
        await until("accepted", lambda: holders(node, transport))
        [holder] = holders(node, transport)
        other = 1 - holder
        took = holder if registrar == "holder" else other
        branch = "z9hG4bK-wsreg"
        await bob.send(sip_request(
            "REGISTER", f"sip:{HOST}:{ports[0]}", branch=branch, via=bob.via(branch),
            from_uri=aor(node), to_uri=aor(node), call_id=call_id_of(took, "ws-reg"),
            contact=bob.contact, extra=["Expires: 600"]))
        assert (await bob.expect("SIP/2.0 ")).status == 200  # type: ignore[union-attr]
        assert [w.proxy.statistics().get("registrar:accepted_regs", 0)
                for w in node.workers] == [int(w == took) for w in WORKERS]
        await until("copied", lambda: all(contacts(w) == [bob.contact] for w in node.workers))
        peer = node.workers[holder].proxy.location.lookup(key(), 0.0)[0].source
        assert peer.transport == transport
        known = node.shared[other].connections if took == other else node.shared[other].held
        assert known[peer] == holder
        assert node.shared[other].connection_transport(name) == transport

        for n in range(2):
            for owner in WORKERS:
                call_id = call_id_of(owner, f"ws-call-{n}")
                alice.send(invite(call_id=call_id, ruri=aor(node), contact=alice.contact,
                                  via=via_of(alice, f"z9hG4bK-{call_id}")), node.address)
                relayed = await bob.expect("INVITE")
                assert isinstance(relayed, Request) and relayed.call_id == call_id
                assert relayed.uri == bob.contact
                await bob.send(reply(relayed, 486, contact=None))
                _, source = await alice.expect("SIP/2.0 486")
                assert source == (HOST, ports[0])
                alice.send(sip_request(
                    "ACK", aor(node), branch=f"z9hG4bK-{call_id}", to_tag="bob-tag",
                    call_id=call_id, via=via_of(alice, f"z9hG4bK-{call_id}"), contact=None),
                    node.address)
        for owner in WORKERS:
            await answered_call(node, alice, bob, call_id_of(owner, "ws-answered"))
        # Only the holder has the connection; the other sent through it.
        assert holders(node, transport) == [holder]
        assert node.shared[holder].channel.received > 0
        assert all(s.channel.refused == 0 for s in node.shared)
        assert sum(w.proxy.statistics().get("core:undeliverable_requests", 0)
                   for w in node.workers) == 0

        await bob.close()
        await until("dropped", lambda: all(contacts(w) == [] for w in node.workers))
        assert holder not in node.shared[other].connections.values()
        assert holder not in node.shared[other].held.values()
        assert node.shared[other].connection_transport(name) is None
        for owner in WORKERS:
            assert await refused(node, alice, call_id_of(owner, f"ws-offline-{owner}")) == 480
    finally:
        await bob.close()
        alice.close()
        await close_node(node)


async def tcp_node(tmp_path: Path) -> Node:
    return await start_stream_node(tmp_path / "node", 2, free_port("both"))


async def ws_node(tmp_path: Path) -> Node:
    return await start_ws_node(tmp_path / "node", 2, free_port("udp"), free_port("tcp"))


@pytest.mark.parametrize(("transport", "start"), [("tcp", tcp_node), ("ws", ws_node)])
async def test_bytes_the_holder_cannot_write_fail_their_transaction_at_once(
        tmp_path: Path, transport: str, start: Callable[[Path], object]) -> None:
    """Worker 1 believes Bob's connection is worker 0's (a binding worker 0 told it of), but
    worker 0 has no connection to him any more, and none opens (over TCP: nothing listens
    there; over a WebSocket a server never connects). Worker 0 sends the INVITE back, and
    worker 1's transaction fails at once: Alice hears 480 rather than nothing until timer C,
    through the same entry as a connection of worker 1's own that did not open."""
    node: Node = await start(tmp_path)  # type: ignore[misc]
    alice = Party()
    gone = Address(transport, HOST, free_port("tcp"))  # nobody listens there
    contact = f"sip:bob@{HOST}:{gone.port};transport={transport}"
    local = next(a for a in node.workers[0].endpoints if a.transport == transport)
    try:
        assert node.shared[0].channel.tell(1, BINDINGS, pack([(BindingChange(
            key(), contact, 600.0, "r", 1, gone, local, 1.0, True), 0, 0)]))
        await until("told", lambda: node.shared[1].held.get(gone) == 0)
        assert contacts(node.workers[1]) == [contact]
        assert await refused(node, alice, call_id_of(1, f"{transport}-gone")) == 480
        stats = [w.proxy.statistics() for w in node.workers]
        assert stats[1]["core:undeliverable_requests"] == 1
        assert stats[0].get("core:undeliverable_requests", 0) == 0
        assert node.shared[0].channel.received == 1  # the INVITE, handed to be written
    finally:
        alice.close()
        await close_node(node)


async def test_the_names_a_connection_was_known_by_go_with_it(tmp_path: Path) -> None:
    """A request over another worker's TCP connection names a sent-by at the connection's
    own IP address (RFC 5923): the owner sends there through the holder too, until the
    connection ends; then it forgets that name with the connection."""
    node = await tcp_node(tmp_path)
    bob = await StreamParty.connect(node)
    alice = Party()
    try:
        await until("accepted", lambda: holders(node, "tcp"))
        [holder] = holders(node, "tcp")
        other = 1 - holder
        listening = free_port("tcp")
        call_id = call_id_of(other, "alias")
        bob.send(sip_request(
            "OPTIONS", f"sip:alice@{HOST}:{alice.port}", branch="z9hG4bK-alias",
            via=f"SIP/2.0/TCP {HOST}:{listening};branch=z9hG4bK-alias", call_id=call_id,
            from_uri=f"sip:bob@{HOST}", to_uri=f"sip:alice@{HOST}", contact=None))
        options, _ = await alice.expect("OPTIONS")
        alice.send(reply(options, 200, to_tag="a", contact=None), node.address)
        assert (await bob.expect("SIP/2.0 200")).status == 200  # type: ignore[union-attr]
        alias = Address("tcp", HOST, listening)
        assert node.shared[other].connections.get(alias) == holder
        bob.close()
        await until("forgotten", lambda: alias not in node.shared[other].connections)
        assert holder not in node.shared[other].connections.values()
    finally:
        bob.close()
        alice.close()
        await close_node(node)

"""Workers that share one address (`cluster/shared_port.py`, `transport/handoff.py`): two
workers in this loop bind the same UDP port with SO_REUSEPORT, a UA and a trunk send to it
from one socket each, and every message is handled by the worker that owns its call, which
answers from the shared address. A message crosses the channel at most once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchboard.cluster.owner import Ownership, hashed_worker
from switchboard.cluster.shared_port import SharedPort
from switchboard.sip import Request, Response
from switchboard.sip.wire import Address
from switchboard.transport.handoff import HANDED, HandoffChannel, decode, encode
from tests.support.ports import HOST, free_port
from tests.unit.kit.proxy import invite, reply, sip_request
from tests.unit.kit.shared_port import (
    Node,
    Party,
    StreamParty,
    start_node,
    start_stream_node,
    via_of,
)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    running = await start_node(tmp_path / "node", 2, free_port("udp"))
    try:
        yield running
    finally:
        for worker, share in zip(running.workers, running.shared, strict=True):
            share.close()
            worker.close()


async def call(node: Node, caller: Party, callee: Party, call_id: str) -> Request:
    """A call set up through the node; answers Bob's relayed INVITE (what he received)."""
    caller.send(invite(call_id=call_id, ruri=callee.contact, contact=caller.contact,
                       via=via_of(caller, f"z9hG4bK-{call_id}")), node.address)
    relayed, source = await callee.expect("INVITE")
    assert source == (HOST, node.address.port)
    assert isinstance(relayed, Request)
    callee.send(reply(relayed, 200, contact=callee.contact), node.address)
    ok, source = await caller.expect("SIP/2.0 200")
    assert source == (HOST, node.address.port)  # from the address the caller sent to
    assert isinstance(ok, Response)
    routes = ok.values("record-route")
    caller.send(sip_request("ACK", callee.contact, branch=f"z9hG4bK-ack-{call_id}",
                            to_tag="bob-tag", call_id=call_id, routes=routes,
                            via=via_of(caller, f"z9hG4bK-ack-{call_id}")), node.address)
    await callee.expect("ACK")
    return relayed


async def test_one_trunk_socket_is_spread_over_both_workers(node: Node) -> None:
    trunk, callee = Party(), Party()
    try:
        owners = []
        for n in range(12):
            call_id = f"trunk-{n}@{HOST}"
            relayed = await call(node, trunk, callee, call_id)
            owners.append(node.owner_of(call_id))
            # The callee hangs up along its route set (our Record-Route, with the owner's
            # mark): its BYE reaches the owner whichever socket the kernel gives it to.
            routes = relayed.values("record-route")
            assert routes == [f"<sip:{HOST}:{node.address.port};lr;wk={owners[-1]:x}>"]
            callee.send(sip_request(
                "BYE", trunk.contact, branch=f"z9hG4bK-bye-{n}", from_tag="bob-tag",
                to_tag="alice-tag", call_id=call_id, routes=routes,
                via=via_of(callee, f"z9hG4bK-bye-{n}")), node.address)
            bye, source = await trunk.expect("BYE")
            assert source == (HOST, node.address.port)
            assert isinstance(bye, Request)
            trunk.send(reply(bye, 200, to_tag=None), node.address)
            await callee.expect("SIP/2.0 200")
        assert set(owners) == {0, 1}, owners
        # Everything came in on one socket: one worker handed the other its share.
        handed = [s.channel.sent for s in node.shared]
        received = [s.channel.received for s in node.shared]
        assert sum(handed) > 0 and sum(handed) == sum(received)
        assert all(s.channel.refused == 0 for s in node.shared)
    finally:
        trunk.close()
        callee.close()


async def test_the_owner_sends_its_own_requests_from_the_shared_address(node: Node) -> None:
    caller, callee = Party(), Party()
    try:
        for n in range(6):
            call_id = f"ended-{n}@{HOST}"
            await call(node, caller, callee, call_id)
            worker = node.workers[node.owner_of(call_id)]
            dialog = worker.proxy.dialogs.by_call_id(call_id)
            assert dialog is not None
            assert worker.proxy.end_dialog(dialog.id, worker.now())
            worker.flush()
            for party in (caller, callee):
                bye, source = await party.expect("BYE")
                assert source == (HOST, node.address.port)
                assert isinstance(bye, Request)
                party.send(reply(bye, 200, to_tag=None), node.address)
            await asyncio.sleep(0.05)
            assert worker.proxy.dialogs.by_call_id(call_id) is None or not dialog.active
    finally:
        caller.close()
        callee.close()


async def test_a_handed_message_is_never_handed_on(tmp_path: Path) -> None:
    """Two workers that each believe the other owns a message (their views of the node
    differ, as while a worker joins): it crosses once, and the worker it reaches handles
    it."""
    node = await start_node(tmp_path / "node", 2, free_port("udp"))
    # Worker 0 sees workers 0 and 1, worker 1 sees 0 and 2: a Call-ID that hashes to 1 in
    # the first view and to 0 in the second.
    call_id = next(cid for cid in (f"opt-{n}@ua" for n in range(1000))
                   if hashed_worker(cid.encode(), (0, 1)) == 1
                   and hashed_worker(cid.encode(), (0, 2)) == 0)
    try:
        node.shared[0].ownership = Ownership((0, 1))
        node.shared[1].ownership = Ownership((0, 2))
        ua = Party()
        try:
            options = sip_request("OPTIONS", f"sip:{HOST}:{node.address.port}",
                                  branch="z9hG4bK-opt", call_id=call_id,
                                  via=via_of(ua, "z9hG4bK-opt"))
            node.workers[0].receive(options, Address("udp", HOST, ua.port), node.address)
            answer, source = await ua.receive()
            assert isinstance(answer, Response)
            assert source == (HOST, node.address.port)
            await asyncio.sleep(0.1)  # nothing more moves between the workers
            assert [s.channel.sent for s in node.shared] == [1, 0]
            assert [s.channel.received for s in node.shared] == [0, 1]
            assert node.workers[1].proxy.statistics()["core:rcv_requests"] == 1
            assert node.workers[0].proxy.statistics()["core:rcv_requests"] == 0
        finally:
            ua.close()
    finally:
        for worker, share in zip(node.workers, node.shared, strict=True):
            share.close()
            worker.close()


async def test_an_owner_that_cannot_be_reached_leaves_the_message_here(tmp_path: Path) -> None:
    received: list[bytes] = []
    channel = await HandoffChannel.open(
        str(tmp_path), 0, lambda kind, sender, data, source, local: received.append(data))
    try:
        here = Address("udp", HOST, 5060)
        assert not channel.send(7, b"OPTIONS", here, here)  # no worker 7 listens
        assert channel.refused == 1 and channel.sent == 0
        assert channel.members() == [0]
        assert channel.send(0, b"to myself", here, here)
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"to myself"]
    finally:
        channel.close()
    assert not tmp_path.exists()  # the last worker of the node removes the directory


def test_an_envelope_keeps_the_message_and_both_addresses() -> None:
    source = Address("udp", "2001:db8::1", 5070)
    local = Address("udp", "192.0.2.7", 5060)
    data = invite()
    assert decode(encode(HANDED, 7, data, source, local)) == (HANDED, 7, data, source, local)


async def test_a_burst_is_handed_over_whole(tmp_path: Path) -> None:
    """More messages at once than a Unix datagram queue holds: all arrive, in order."""
    received: list[bytes] = []
    target = await HandoffChannel.open(
        str(tmp_path), 1, lambda kind, sender, data, source, local: received.append(data))
    sender = await HandoffChannel.open(str(tmp_path), 0, lambda *args: None)
    try:
        here = Address("udp", HOST, 5060)
        sent = [invite(call_id=f"burst-{n}") for n in range(2000)]
        for data in sent:
            assert sender.send(1, data, here, here)
        for _ in range(500):
            if len(received) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert received == sent
    finally:
        sender.close()
        target.close()


async def test_a_worker_that_joins_is_counted_at_once(tmp_path: Path) -> None:
    """The first worker saw only itself; the second tells it when it starts listening."""
    first = await SharedPort.open(str(tmp_path), 0, "osid")
    assert first.ownership.members == (0,)
    second = await SharedPort.open(str(tmp_path), 1, "osid")
    try:
        assert second.ownership.members == (0, 1)
        for _ in range(100):
            if first.ownership.members == (0, 1):
                break
            await asyncio.sleep(0.01)
        assert first.ownership.members == (0, 1)
        assert first.channel.received == 0  # a join is no message
    finally:
        second.close()
        first.close()


async def test_the_calls_of_one_connection_are_owned_by_both_workers(tmp_path: Path) -> None:
    """A caller on one TCP connection (accepted by one worker) calls a UDP callee: every call
    belongs to its Call-ID's worker; the other worker's answers and its callee's BYE reach
    the caller over that one connection, through the worker that holds it."""
    node = await start_stream_node(tmp_path / "node", 2, free_port("both"))
    caller = await StreamParty.connect(node)
    callee = Party()
    tcp = Address("tcp", HOST, node.address.port)
    try:
        owners = []
        for n in range(10):
            call_id = f"stream-{n}@{HOST}"
            caller.send(invite(call_id=call_id, ruri=callee.contact, contact=caller.contact,
                               via=f"SIP/2.0/TCP {HOST}:{caller.port};branch=z9hG4bK-s{n}"))
            relayed, _ = await callee.expect("INVITE")
            assert isinstance(relayed, Request)
            callee.send(reply(relayed, 200, contact=callee.contact), node.address)
            ok = await caller.expect("SIP/2.0 200")
            owner = node.owner_of(call_id)
            owners.append(owner)
            routes = ok.values("record-route")
            # RFC 5658: our entry toward the caller (TCP) and toward the callee (UDP).
            assert all(f";wk={owner:x}" in r for r in routes), routes
            caller.send(sip_request("ACK", callee.contact, branch=f"z9hG4bK-sa{n}",
                                    to_tag="bob-tag", call_id=call_id, routes=routes,
                                    via=f"SIP/2.0/TCP {HOST}:{caller.port};branch=z9hG4bK-sa{n}"))
            await callee.expect("ACK")
            # The callee hangs up: the owner's BYE goes to the caller over the connection.
            callee.send(sip_request(
                "BYE", caller.contact, branch=f"z9hG4bK-sb{n}", from_tag="bob-tag",
                to_tag="alice-tag", call_id=call_id,
                routes=list(reversed(relayed.values("record-route"))),
                via=via_of(callee, f"z9hG4bK-sb{n}")), node.address)
            bye = await caller.expect("BYE")
            assert isinstance(bye, Request)
            caller.send(reply(bye, 200, to_tag=None))
            await callee.expect("SIP/2.0 200")
        assert set(owners) == {0, 1}, owners
        # One worker accepted the connection; the other's messages crossed the channel both
        # ways, and it opened no connection of its own.
        holders = [i for i, w in enumerate(node.workers)
                   if any(e.local == tcp and getattr(e, "connections", None)
                          for e in w.endpoints.values())]
        assert len(holders) == 1, holders
        other = 1 - holders[0]
        assert node.shared[other].channel.sent > 0
        assert node.shared[other].connections
        assert all(s.channel.refused == 0 for s in node.shared)
    finally:
        caller.close()
        callee.close()
        for worker, share in zip(node.workers, node.shared, strict=True):
            share.close()
            worker.close()


async def test_a_restarted_worker_is_reached_again_at_once(tmp_path: Path) -> None:
    """The connection to a worker that went away breaks; the next message opens a fresh one
    to the worker listening there now, and is not refused."""
    got: list[bytes] = []
    here = Address("udp", HOST, 5060)
    sender = await HandoffChannel.open(str(tmp_path), 0, lambda *args: None)
    first = await HandoffChannel.open(
        str(tmp_path), 1, lambda kind, sender, data, source, local: got.append(data))
    try:
        assert sender.send(1, b"before", here, here)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        first.close()  # the worker dies ...
        await asyncio.sleep(0.05)
        again = await HandoffChannel.open(  # ... and Ray starts it again
            str(tmp_path), 1, lambda kind, sender, data, source, local: got.append(data))
        try:
            assert sender.send(1, b"after", here, here)
            for _ in range(100):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.01)
            assert got == [b"before", b"after"]
            assert sender.refused == 0
        finally:
            again.close()
    finally:
        sender.close()

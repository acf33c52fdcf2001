"""Whose is a message, read from its bytes (`cluster/owner.py`): captured OpenSIPS messages
(tests/data/opensips-*.sip), the same with our worker marks written in, and what a proxy core
with a worker mark writes itself (Record-Route, Via branch) as its peers send it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.cluster.owner import Ownership, hashed_worker
from switchboard.sip import Request, parse_message
from switchboard.sip.addressing import rr_uri
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import (
    ALICE,
    BOB,
    PROXY_UDP,
    Net,
    ack_for_2xx,
    ack_for_non_2xx,
    invite,
    one,
    one_request,
    reply,
    sip_request,
)

DATA = Path(__file__).resolve().parents[2] / "data"
NODE = (0, 1, 2, 3)  # the workers of a node


def captured(name: str) -> bytes:
    return (DATA / f"opensips-{name}.sip").read_bytes()


def owner(data: bytes, members: tuple[int, ...] = NODE, match: str = "osid") -> int | None:
    return Ownership(members, match).owner(data)


def by_call_id(call_id: str, members: tuple[int, ...] = NODE) -> int:
    return hashed_worker(call_id.encode(), members)


# -- captured messages, as they are and with our marks ----------------------------------------


def test_a_captured_response_without_a_mark_goes_by_its_call_id() -> None:
    data = captured("s4-f011-A-to-PROXY-resp202")  # branch z9hG4bKa688.17937f94.0
    assert owner(data) == by_call_id("blindcaller-1@127.0.0.1")


def test_a_response_goes_to_the_worker_its_via_branch_names() -> None:
    data = captured("s4-f011-A-to-PROXY-resp202").replace(
        b"branch=z9hG4bKa688.17937f94.0", b"branch=z9hG4bKa688.17937f94.0.w3")
    assert owner(data) == 3
    assert owner(data.replace(b".w3\r\n", b".w2\r\n")) == 2
    assert owner(data, members=(0, 1)) is None  # no worker 3 on this node: handled here


def test_an_in_dialog_request_goes_to_the_worker_its_route_names() -> None:
    data = captured("s4-f012-A-to-PROXY-NOTIFY")  # Route: <sip:127.0.0.1;lr;ftag=..;did=..>
    assert owner(data) == by_call_id("blindcaller-1@127.0.0.1")
    marked = data.replace(b";lr;ftag=", b";lr;wk=2;ftag=")
    assert owner(marked) == 2
    # The marked route of a worker that is not on this node: handled where it is.
    assert owner(data.replace(b";lr;ftag=", b";lr;wk=9;ftag="), members=(0, 1, 2)) is None


def test_a_transferred_calls_invite_goes_to_the_worker_of_the_dialog_it_names() -> None:
    data = captured("s4-f014-A-to-PROXY-INVITE")  # INVITE sip:c@..;osid=338.415f6d46
    assert owner(data, members=(0, 0x338)) == 0x338
    # The old call's worker is not on this node: a new request like any other.
    assert owner(data) == by_call_id("xfer///blindcaller-1@127.0.0.1")
    # Another match parameter, or a mode that names no dialog: the Call-ID.
    assert owner(data, members=(0, 0x338), match="") == by_call_id(
        "xfer///blindcaller-1@127.0.0.1", (0, 0x338))


@pytest.mark.parametrize("name", sorted(p.stem.removeprefix("opensips-")
                                        for p in DATA.glob("opensips-*.sip")))
def test_every_captured_message_has_one_owner_of_the_node(name: str) -> None:
    data = captured(name)
    found = owner(data)
    assert found in NODE
    msg = parse_message(data)
    if isinstance(msg, Request) and ";osid=" in msg.uri:
        return
    assert found == by_call_id(msg.call_id)


def test_the_call_id_hash_is_the_same_for_every_message_of_a_transaction() -> None:
    members = (0, 1, 2, 3, 4, 5, 6)
    for n in range(50):
        call_id = f"{n}-trunk@10.0.0.1"
        inv = invite(call_id=call_id)
        cancel = sip_request("CANCEL", "sip:bob@127.0.0.1:5062", branch="z9hG4bKa-inv",
                             call_id=call_id)
        compact = inv.replace(b"\r\nCall-ID: ", b"\r\ni:  ")
        expected = owner(inv, members)
        assert expected is not None
        assert owner(cancel, members) == owner(compact, members) == expected


def test_the_call_id_hash_spreads_calls_over_the_workers() -> None:
    counts = dict.fromkeys(NODE, 0)
    for n in range(400):
        found = owner(invite(call_id=f"{n}-trunk@10.0.0.1"))
        assert found is not None
        counts[found] += 1
    assert all(60 <= c <= 140 for c in counts.values()), counts


def test_only_the_header_section_is_read() -> None:
    body = b"Call-ID: in-the-body\r\nRoute: <sip:127.0.0.1;lr;wk=3>\r\n"
    data = sip_request("NOTIFY", "sip:b@127.0.0.1", branch="z9hG4bKn", call_id="head@a",
                       body=body, content_type="message/sipfrag")
    assert owner(data) == by_call_id("head@a")


@pytest.mark.parametrize("data", [
    b"", b"\r\n\r\n", b"garbage", b"INVITE sip:a SIP/2.0\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx.wzz\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx.w123456789\r\n\r\n",
])
def test_what_cannot_be_read_has_no_owner(data: bytes) -> None:
    assert owner(data) is None


def test_no_members_no_owner() -> None:
    assert owner(invite(), members=()) is None


# -- what a proxy core with a worker mark writes, sent back by its peers ----------------------


def marked_net(mark: int) -> Net:
    net = Net()
    net.proxy.addressing.worker_mark = f"{mark:x}"
    return net


def test_our_record_route_and_via_carry_the_mark_and_come_back_to_us() -> None:
    net = marked_net(0xB)
    members = (0, 5, 0xB)
    out = net.send(invite(call_id="marked@alice"), ALICE)
    forwarded = one_request([d for d in out if d.dest == BOB], BOB)
    assert forwarded.values("record-route") == ["<sip:127.0.0.1:5060;lr;wk=b>"]
    branch = forwarded.top_via.branch or ""
    assert branch.endswith(".wb")
    # Bob's answers carry our Via back: they name us whatever the Call-ID hashes to.
    ringing = reply(forwarded, 180)
    assert owner(ringing, members) == 0xB
    ok = reply(forwarded, 200)
    assert owner(ok, members) == 0xB
    d, up = one(net.send(ok, BOB), ALICE)
    # Alice's in-dialog requests carry our Record-Route back as their Route.
    routes = tuple(up.values("record-route"))
    ack = ack_for_2xx(routes=routes, call_id="marked@alice")
    bye = sip_request("BYE", "sip:bob@127.0.0.1:5062", branch="z9hG4bKa-bye",
                      to_tag="bob-tag", call_id="marked@alice", cseq=2, routes=routes)
    assert owner(ack, members) == owner(bye, members) == 0xB
    # Bob's BYE too (his route set is ours, his Request-URI Alice's Contact).
    bob_bye = sip_request("BYE", "sip:alice@127.0.0.1:5061", branch="z9hG4bKb-bye",
                          from_tag="bob-tag", to_tag="alice-tag", call_id="marked@alice",
                          routes=routes, via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKb")
    assert owner(bob_bye, members) == 0xB
    assert d.local == PROXY_UDP


def test_the_requests_the_proxy_sends_itself_carry_the_mark() -> None:
    net = marked_net(5)
    out = net.send(invite(call_id="own@alice"), ALICE)
    forwarded = one_request([d for d in out if d.dest == BOB], BOB)
    net.send(reply(forwarded, 200), BOB)
    net.send(ack_for_2xx(routes=("<sip:127.0.0.1:5060;lr;wk=5>",), call_id="own@alice"),
             ALICE)
    dialog = net.proxy.dialogs.by_call_id("own@alice")
    assert dialog is not None
    assert net.proxy.end_dialog(dialog.id, net.now)
    byes = [one_request([d]) for d in net.take()]
    assert byes and all(b.method == "BYE" for b in byes)
    for bye in byes:
        assert (bye.top_via.branch or "").endswith(".w5")
        answer = reply(bye, 200, to_tag=None)
        assert owner(answer, (0, 5, 6)) == 5


def test_without_a_mark_the_wire_is_unchanged() -> None:
    net = Net()
    out = net.send(invite(), ALICE)
    forwarded = one_request([d for d in out if d.dest == BOB], BOB)
    assert forwarded.values("record-route") == ["<sip:127.0.0.1:5060;lr>"]
    assert ".w" not in (forwarded.top_via.branch or "")
    assert rr_uri(PROXY_UDP, "") == "sip:127.0.0.1:5060;lr"


def test_a_signed_route_keeps_its_mark_and_its_signature() -> None:
    marked = rr_uri(Address("udp", "192.0.2.1", 5060), "0123456789abcdef", mark="1f")
    assert marked == "sip:192.0.2.1:5060;lr;wk=1f;sb=0123456789abcdef"
    bye = sip_request("BYE", "sip:bob@192.0.2.9", branch="z9hG4bKx", to_tag="t",
                      routes=(f"<{marked}>",))
    assert owner(bye, (0, 0x1F)) == 0x1F
    # A strict router puts our URI into the Request-URI (RFC 3261 §16.4).
    strict = sip_request("BYE", marked, branch="z9hG4bKx", to_tag="t",
                         routes=("<sip:bob@192.0.2.9>",))
    assert owner(strict, (0, 0x1F)) == 0x1F


def test_a_cancel_and_the_ack_of_a_failure_meet_their_invite() -> None:
    net = marked_net(2)
    inv = invite(call_id="fails@alice")
    out = net.send(inv, ALICE)
    forwarded = one_request([d for d in out if d.dest == BOB], BOB)
    busy = reply(forwarded, 486)
    assert owner(busy, NODE) == 2  # our Via
    _, upstream = one([d for d in net.send(busy, BOB) if d.dest == ALICE], ALICE)
    ack = ack_for_non_2xx(inv, upstream)
    cancel = sip_request("CANCEL", "sip:bob@127.0.0.1:5062", branch="z9hG4bKa-inv",
                         call_id="fails@alice")
    assert owner(ack, NODE) == owner(cancel, NODE) == owner(inv, NODE)


def test_header_names_are_read_in_any_case_and_spacing() -> None:
    """RFC 3261 §7.3.1: names are case-insensitive, whitespace may precede the colon; the
    Call-ID's value is case-sensitive and hashed as written."""
    bye = sip_request("BYE", "sip:bob@127.0.0.1:5062", branch="z9hG4bKa-bye", to_tag="t",
                      call_id="CaseKept@alice", routes=("<sip:127.0.0.1:5060;lr;WK=3>",))
    odd = bye.replace(b"\r\nRoute: ", b"\r\nROUTE\t : ")
    assert owner(bye) == owner(odd) == 3
    plain = invite(call_id="CaseKept@alice")
    odd_invite = plain.replace(b"\r\nCall-ID: ", b"\r\nCALL-id :")
    assert owner(plain) == owner(odd_invite) == by_call_id("CaseKept@alice")
    response = (b"SIP/2.0 200 OK\r\nv : SIP/2.0/UDP 192.0.2.1:5060;BRANCH=z9hG4bKab.12.w2,"
                b"SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKx.w3\r\nCall-ID: c@a\r\n\r\n")
    assert owner(response) == 2
    spaced = response.replace(b";BRANCH=", b" ; branch = ")
    assert owner(spaced) == 2


# -- the Call-ID hash when workers come and go ------------------------------------------------

CALL_IDS = [f"{n}-4711@192.0.2.{n % 250}".encode() for n in range(20000)]


def test_the_call_id_hash_spreads_calls_evenly_over_the_workers() -> None:
    for members in ((0, 1), (0, 1, 2), NODE, tuple(range(16))):
        counts = dict.fromkeys(members, 0)
        for call_id in CALL_IDS:
            counts[hashed_worker(call_id, members)] += 1
        fair = len(CALL_IDS) / len(members)
        assert all(abs(count - fair) < 0.1 * fair for count in counts.values()), counts


def test_a_worker_that_joins_takes_only_the_calls_it_now_wins() -> None:
    before = {call_id: hashed_worker(call_id, NODE) for call_id in CALL_IDS}
    after = {call_id: hashed_worker(call_id, (*NODE, 4)) for call_id in CALL_IDS}
    moved = [call_id for call_id in CALL_IDS if before[call_id] != after[call_id]]
    assert all(after[call_id] == 4 for call_id in moved)  # none moves between old workers
    assert abs(len(moved) - len(CALL_IDS) / 5) < 0.1 * len(CALL_IDS) / 5


def test_a_worker_that_leaves_gives_up_only_its_own_calls() -> None:
    before = {call_id: hashed_worker(call_id, NODE) for call_id in CALL_IDS}
    for call_id in CALL_IDS:
        now = hashed_worker(call_id, (0, 1, 3))
        if before[call_id] != 2:
            assert now == before[call_id]
        else:
            assert now in (0, 1, 3)


def test_the_call_id_hash_does_not_depend_on_the_order_workers_are_listed_in() -> None:
    for call_id in CALL_IDS[:2000]:
        assert hashed_worker(call_id, (3, 0, 2, 1)) == hashed_worker(call_id, NODE)

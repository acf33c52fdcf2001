"""The proxy core (RFC 3261 §16) driven sans-IO: UAs' bytes in, datagrams and events out.

With the proxy kit (`tests.unit.kit.proxy`): a `Net` wraps one `Proxy` with a fake clock, the
user agents are plain functions that write SIP the way a UA would; a test plays both UAs,
passes what the proxy sends on to the other side by hand, and asserts on every datagram in
between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.sip import Request, Response, parse_message
from switchboard.sip.dialog import DialogState, DialogStateChanged
from switchboard.sip.wire import Address
from tests.unit.kit.proxy import (
    ALICE,
    ALICE_CONTACT,
    BOB,
    BOB_CONTACT,
    BOB_TCP,
    OUR_RR,
    OUR_RR_TCP,
    P1,
    P2,
    PROXY_TCP,
    PROXY_UDP,
    SDP,
    Call,
    Net,
    ack_for_2xx,
    ack_for_non_2xx,
    first_line,
    invite,
    one,
    one_request,
    one_response,
    parsed,
    reply,
    sip_request,
    statuses,
)

MALFORMED = sorted((Path(__file__).parents[2] / "data" / "malformed").glob("*.sip"))


# -- a basic call --------------------------------------------------------------------------------


def test_invite_is_answered_100_and_forwarded_with_our_via_and_record_route() -> None:
    net = Net()
    out = net.send(invite(), ALICE)
    assert [d.dest for d in out] == [ALICE, BOB]
    assert all(d.local == PROXY_UDP for d in out)
    trying = parse_message(out[0].data)
    assert isinstance(trying, Response)
    assert (trying.status, trying.reason) == (100, "Trying")
    assert trying.to_tag is None
    assert [v.branch for v in trying.vias] == ["z9hG4bKa-inv"]
    assert trying.call_id == "call-1@alice"

    fwd = parse_message(out[1].data)
    assert isinstance(fwd, Request)
    assert fwd.method == "INVITE" and fwd.uri == BOB_CONTACT
    assert fwd.max_forwards == 69
    assert len(fwd.vias) == 2
    ours, alices = fwd.vias
    assert (ours.transport, ours.host, ours.port) == ("UDP", "127.0.0.1", 5060)
    assert ours.branch is not None and ours.branch.startswith("z9hG4bK")
    assert ours.branch != "z9hG4bKa-inv"
    assert alices.branch == "z9hG4bKa-inv"
    assert fwd.get_all("record-route") == [OUR_RR]
    assert fwd.body == SDP
    assert fwd.get("contact") == f"<{ALICE_CONTACT}>"
    assert fwd.to_tag is None and fwd.from_tag == "alice-tag"


def test_existing_record_route_stays_below_ours() -> None:
    net = Net()
    data = invite(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKp1",
                  vias=["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa-inv"],
                  record_routes=["<sip:127.0.0.1:5070;lr>"])
    out = parsed(net.send(data, P1))
    fwd = out[1][1]
    assert fwd.get_all("record-route") == [OUR_RR, "<sip:127.0.0.1:5070;lr>"]
    assert [v.port for v in fwd.vias] == [5060, 5070, 5061]
    assert out[0][0] == P1  # the 100 goes to the previous hop


def test_basic_call_relays_responses_ack_and_bye() -> None:
    net = Net()
    call = Call(net)
    at_bob = call.send_invite()
    our_branch = at_bob.top_via.branch

    ringing = call.ring()
    assert ringing.status == 180
    assert [v.branch for v in ringing.vias] == ["z9hG4bKa-inv"]  # our Via removed
    assert ringing.to_tag == "bob-tag"
    assert ringing.get_all("record-route") == [OUR_RR]

    ok = call.answer()
    assert ok.status == 200
    assert [v.branch for v in ok.vias] == ["z9hG4bKa-inv"]
    assert ok.body == SDP
    assert ok.get("contact") == f"<{BOB_CONTACT}>"

    # ACK for the 2xx: a new transaction, relayed statelessly along the Route.
    ack = call.ack()
    assert ack.uri == BOB_CONTACT
    assert ack.get("route") is None  # the only Route entry was us
    assert ack.max_forwards == 69
    assert len(ack.vias) == 2
    assert ack.top_via.branch is not None and ack.top_via.branch.startswith("z9hG4bK")
    assert ack.top_via.branch != our_branch
    assert ack.vias[1].branch == "z9hG4bKa-ack"
    assert ack.cseq.method == "ACK"
    # A retransmitted ACK is relayed again, with the same branch (stateless relay).
    again = one_request(net.send(ack_for_2xx(), ALICE), BOB)
    assert again.top_via.branch == ack.top_via.branch

    # BYE from the callee, along the route set, to the caller's Contact.
    bye = sip_request("BYE", ALICE_CONTACT, branch="z9hG4bKb-bye", via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKb-bye",
                      from_uri="sip:bob@127.0.0.1", from_tag="bob-tag", to_uri="sip:alice@127.0.0.1",
                      to_tag="alice-tag", cseq=1, contact=None, routes=[OUR_RR])
    at_alice = one_request(net.send(bye, BOB), ALICE)
    assert at_alice.method == "BYE" and at_alice.uri == ALICE_CONTACT
    assert at_alice.get("route") is None
    assert at_alice.get("record-route") is None  # in-dialog: no Record-Route
    assert [v.port for v in at_alice.vias] == [5060, 5062]
    assert at_alice.max_forwards == 69

    ok_bye = one_response(net.send(reply(at_alice, 200, to_tag=None, contact=None), ALICE), BOB)
    assert ok_bye.status == 200 and ok_bye.cseq.method == "BYE"
    assert [v.branch for v in ok_bye.vias] == ["z9hG4bKb-bye"]


def test_dialog_states_are_reported_with_tags_and_counted() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    [dialog] = list(net.proxy.dialogs)
    assert dialog.state == 1
    assert net.events() == []
    assert net.stats()["dialog:active_dialogs"] == 0

    call.ring()
    assert net.events() == [DialogStateChanged(dialog.id, "call-1@alice", "alice-tag", "bob-tag", DialogState.UNCONFIRMED, DialogState.EARLY)]
    assert net.stats()["dialog:early_dialogs"] == 1
    call.answer()
    assert net.events() == [DialogStateChanged(dialog.id, "call-1@alice", "alice-tag", "bob-tag", DialogState.EARLY, DialogState.CONFIRMED_NA)]
    assert net.stats()["dialog:active_dialogs"] == 1
    assert net.stats()["dialog:early_dialogs"] == 0
    call.ack()
    assert net.events() == [DialogStateChanged(dialog.id, "call-1@alice", "alice-tag", "bob-tag", DialogState.CONFIRMED_NA, DialogState.CONFIRMED)]
    assert net.stats()["dialog:active_dialogs"] == 1
    # A second ACK changes nothing.
    net.send(ack_for_2xx(), ALICE)
    assert net.events() == []

    at_bob = call.bye()
    assert net.events() == [DialogStateChanged(dialog.id, "call-1@alice", "alice-tag", "bob-tag", DialogState.CONFIRMED, DialogState.DELETED)]
    assert net.stats()["dialog:active_dialogs"] == 0
    one_response(call.bob_accepts(at_bob), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_statistics_after_a_call() -> None:
    net = Net()
    call = Call(net)
    call.establish()
    call.hang_up()
    stats = net.stats()
    assert stats["core:rcv_requests"] == 3  # INVITE, ACK, BYE
    assert stats["core:rcv_replies"] == 3  # 180, 200, 200
    assert stats["core:fwd_requests"] == 3
    assert stats["core:fwd_replies"] == 3
    assert stats["tm:UAS_transactions"] == 2  # INVITE, BYE
    assert stats["tm:UAC_transactions"] == 2
    assert stats["tm:2xx_transactions"] == 2
    assert stats["dialog:processed_dialogs"] == 1
    assert stats["dialog:active_dialogs"] == 0
    assert stats["dialog:failed_dialogs"] == 0
    assert stats["dialog:expired_dialogs"] == 0
    assert stats["core:err_requests"] == stats["core:bad_msg_hdr"] == 0
    assert stats["tm:retransmissions"] == 0
    assert stats["tm:inuse_transactions"] == 4
    net.run_all_timers()
    assert net.stats()["tm:inuse_transactions"] == 0
    net.assert_idle()


def test_retransmitted_invite_is_absorbed() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    # Before any answer from downstream, the copy gets our 100 again and is not forwarded.
    again = one_response(net.send(call.invite_bytes, ALICE), ALICE)
    assert again.status == 100
    call.ring()
    again = one_response(net.send(call.invite_bytes, ALICE), ALICE)
    assert again.status == 180 and again.to_tag == "bob-tag"
    assert net.stats()["tm:retransmissions"] == 2
    assert net.stats()["core:fwd_requests"] == 1
    # Once answered, copies are absorbed without a reply (RFC 6026 Accepted).
    call.answer()
    assert net.send(call.invite_bytes, ALICE) == []


def test_2xx_ack_reusing_the_invite_branch_is_relayed() -> None:
    """RFC 6026 §8.7: in Accepted, an ACK that matches the INVITE transaction goes to the TU.

    RFC 3261 asks for a new branch in the 2xx ACK, but some UAs reuse the INVITE's; the proxy
    must relay that ACK rather than swallow it as if it acknowledged a non-2xx response.
    """
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    net.events()
    ack = one_request(net.send(ack_for_2xx(branch="z9hG4bKa-inv"), ALICE), BOB)
    assert ack.method == "ACK" and ack.vias[1].branch == "z9hG4bKa-inv"
    [event] = net.events()
    assert (event.old_state, event.new_state) == (3, 4)


def test_2xx_retransmissions_are_relayed_upstream() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    first = call.answer()
    net.now = 0.5
    again = one_response(call.bob_replies(200, body=SDP), ALICE)
    assert again.to_bytes() == first.to_bytes()


def test_the_invite_transactions_end_t4_after_the_2xx_is_acked() -> None:
    # Accepted waits 64*T1 for a 2xx ACK that may not come; once it came through, a copy
    # can only be one already on its way: T4 covers it (the memory of 40,000 calls at
    # 1,500 calls/s).
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    net.now = 1.0
    one_request(net.send(ack_for_2xx(), ALICE), BOB)
    invite_keys = {k for k in net.proxy.server_txns if k[3] == "INVITE"}
    assert invite_keys and any(k[1] == "INVITE" for k in net.proxy.client_txns)
    net.advance(1.0 + net.proxy.config.timers.t4 + 0.01)
    assert not invite_keys & net.proxy.server_txns.keys()
    assert not any(k[1] == "INVITE" for k in net.proxy.client_txns)
    # A late copy of the 2xx is still relayed, statelessly, by its Via.
    again = one_response(call.bob_replies(200, body=SDP), ALICE)
    assert again.status == 200


def test_without_the_ack_the_invite_transactions_wait_64_t1() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    net.advance(net.proxy.config.timers.t4 + 1.0)
    assert any(k[3] == "INVITE" for k in net.proxy.server_txns)
    assert any(k[1] == "INVITE" for k in net.proxy.client_txns)


def test_invite_retransmitted_downstream_until_a_provisional() -> None:
    net = Net()
    call = Call(net)
    at_bob = call.send_invite()
    out = net.advance(1.6)
    assert [d.dest for d in out] == [BOB, BOB]  # timer A at 0.5 and 1.5
    assert all(d.data == out[0].data for d in out)
    assert parse_message(out[0].data).top_via.branch == at_bob.top_via.branch
    assert call.bob_replies(100, to_tag=None) == []  # a 100 is hop by hop: not relayed
    assert net.advance(30.0) == []  # timers A and B stopped


# -- Max-Forwards and loops -------------------------------------------------------------------


def test_max_forwards_zero_is_answered_483() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmf0", max_forwards=0)
    resp = one_response(net.send(data, ALICE), ALICE)
    assert resp.status == 483
    assert resp.to_tag is not None
    assert net.stats()["core:fwd_requests"] == 0


def test_invite_max_forwards_zero_gets_100_then_483() -> None:
    net = Net()
    out = parsed(net.send(invite(max_forwards=0), ALICE))
    assert statuses(out) == [(ALICE, 100), (ALICE, 483)]
    assert len(net.proxy.dialogs) == 0


def test_max_forwards_one_is_forwarded_with_zero() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmf1", max_forwards=1)
    assert one_request(net.send(data, ALICE), BOB).max_forwards == 0


def test_missing_max_forwards_is_set_to_70() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmfn", max_forwards=None)
    assert one_request(net.send(data, ALICE), BOB).max_forwards == 70


def test_loop_through_another_proxy_is_answered_482() -> None:
    net = Net()
    # P2 routes our forwarded request straight back to us, unchanged (a loop, §16.3 step 4).
    data = sip_request("MESSAGE", "sip:bob@127.0.0.1:5080", branch="z9hG4bKloop")
    fwd = one_request(net.send(data, ALICE), P2)
    looped = fwd.to_bytes().replace(
        b"Via: ", b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKp2\r\nVia: ", 1)
    resp = one_response(net.send(looped, P2), P2)
    assert resp.status == 482
    assert resp.top_via.branch == "z9hG4bKp2"


def test_spiral_with_a_new_request_uri_is_not_a_loop() -> None:
    net = Net()
    data = sip_request("MESSAGE", "sip:bob@127.0.0.1:5080", branch="z9hG4bKspiral")
    fwd = one_request(net.send(data, ALICE), P2)
    fwd.uri = "sip:carol@127.0.0.1:5090"  # P2 retargeted it and sends it back through us
    spiral = fwd.to_bytes().replace(
        b"Via: ", b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKp2\r\nVia: ", 1)
    again = one_request(net.send(spiral, P2), Address("udp", "127.0.0.1", 5090))
    assert [v.port for v in again.vias] == [5060, 5080, 5060, 5061]


def test_request_looped_straight_back_is_answered_482() -> None:
    """A next hop that resolves to ourselves (`localhost` is not one of our names)."""
    net = Net()
    data = sip_request("MESSAGE", "sip:bob@localhost:5060", branch="z9hG4bKself")
    fwd = one_request(net.send(data, ALICE), PROXY_UDP)
    # It arrives with our own Via on top: that is already the loop.
    resp = one_response(net.send(fwd.to_bytes(), PROXY_UDP), PROXY_UDP)
    assert resp.status == 482


# -- CANCEL -------------------------------------------------------------------------------------


def cancel_from_alice(branch: str = "z9hG4bKa-inv") -> bytes:
    return sip_request("CANCEL", BOB_CONTACT, branch=branch, cseq=1, contact=None)


def test_cancel_of_a_ringing_call() -> None:
    net = Net()
    call = Call(net)
    at_bob = call.send_invite()
    call.ring()
    net.events()
    out = parsed(net.send(cancel_from_alice(), ALICE))
    assert [(dest, first_line(m)) for dest, m in out] == [
        (ALICE, "SIP/2.0 200 OK"),
        (BOB, f"CANCEL {BOB_CONTACT} SIP/2.0"),
    ]
    ok_cancel = out[0][1]
    assert ok_cancel.cseq.method == "CANCEL" and ok_cancel.top_via.branch == "z9hG4bKa-inv"
    cancel = out[1][1]
    assert isinstance(cancel, Request)
    # §9.1: the same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE.
    assert [str(v) for v in cancel.vias] == [str(at_bob.top_via)]
    assert cancel.get("from") == at_bob.get("from")
    assert cancel.get("to") == at_bob.get("to")
    assert cancel.call_id == at_bob.call_id
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")

    # Bob answers the CANCEL (absorbed: it was ours) and the INVITE with 487.
    assert net.send(reply(cancel, 200, to_tag=None, contact=None), BOB) == []
    out = parsed(call.bob_replies(487, contact=None))
    assert [(dest, first_line(m)) for dest, m in out] == [
        (BOB, f"ACK {BOB_CONTACT} SIP/2.0"),
        (ALICE, "SIP/2.0 487 Reason"),
    ]
    ack = out[0][1]
    assert ack.top_via.branch == at_bob.top_via.branch and len(ack.vias) == 1
    assert ack.to_tag == "bob-tag"
    terminated = out[1][1]
    assert [v.branch for v in terminated.vias] == ["z9hG4bKa-inv"]
    [event] = net.events()
    assert (event.old_state, event.new_state) == (2, 5)

    # Alice ACKs the 487: that ACK is hop by hop and ends at the proxy.
    assert net.send(ack_for_non_2xx(call.invite_bytes, terminated), ALICE) == []
    assert net.stats()["dialog:failed_dialogs"] == 1
    net.run_all_timers()
    net.assert_idle()


@pytest.mark.parametrize("provisional", [180, 100])
def test_cancel_waits_for_a_provisional_before_going_downstream(provisional: int) -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    # Bob has not answered at all yet: the CANCEL is answered but not sent on (RFC 3261 §9.1).
    resp = one_response(net.send(cancel_from_alice(), ALICE), ALICE)  # nothing to Bob
    assert resp.status == 200
    out = parsed(call.bob_replies(provisional))
    cancels = [m for dest, m in out if isinstance(m, Request) and dest == BOB]
    assert [c.method for c in cancels] == ["CANCEL"]
    # Any provisional, 100 included, lets the pending CANCEL go.
    out_to_alice = [m for dest, m in out if dest == ALICE]
    assert [first_line(m) for m in out_to_alice] == (
        ["SIP/2.0 180 Reason"] if provisional == 180 else [])
    net.send(reply(cancels[0], 200, to_tag=None, contact=None), BOB)
    out = parsed(call.bob_replies(487, contact=None))
    assert [first_line(m) for _, m in out] == [f"ACK {BOB_CONTACT} SIP/2.0", "SIP/2.0 487 Reason"]


def test_cancel_for_an_unknown_transaction_is_481() -> None:
    net = Net()
    resp = one_response(net.send(cancel_from_alice("z9hG4bKnothing"), ALICE), ALICE)
    assert resp.status == 481


def test_cancel_retransmission_gets_the_same_200() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    first = net.send(cancel_from_alice(), ALICE)
    again = one_response(net.send(cancel_from_alice(), ALICE), ALICE)
    assert again.to_bytes() == first[0].data


def test_cancel_unanswered_by_a_dead_callee_does_not_leak() -> None:
    """The callee rings, then vanishes: neither the CANCEL nor the INVITE is ever answered."""
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    net.send(cancel_from_alice(), ALICE)
    out = parsed(net.advance(31.9))
    assert {dest for dest, _ in out} == {BOB}  # only CANCEL retransmissions (timer E)
    # The caller is not left ringing until timer C: 64*T1 after the CANCEL the INVITE branch
    # is given up (RFC 3261 §9.1) and the caller gets a final response.
    timeout = one_response(net.advance(32.0), ALICE)
    assert timeout.status == 408
    assert net.proxy.client_txns == {}
    net.send(ack_for_non_2xx(call.invite_bytes, timeout), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_timer_c_cancels_a_branch_that_rings_forever_and_does_not_leak() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    net.advance(179.0)
    out = parsed(net.advance(180.0))
    assert sorted((dest.port, first_line(m)) for dest, m in out) == [
        (5061, "SIP/2.0 408 Request Timeout"),
        (5062, f"CANCEL {BOB_CONTACT} SIP/2.0"),
    ]
    net.run_all_timers()  # Bob is gone: no answer to the CANCEL or the INVITE
    net.assert_idle()


def test_timer_c_is_reset_by_each_provisional() -> None:
    """RFC 3261 §16.7 step 2: a provisional other than 100 restarts timer C."""
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    net.advance(150.0)
    one_response(call.bob_replies(183), ALICE)  # e.g. periodic early media / queue updates
    assert net.advance(300.0) == []
    out = parsed(net.advance(330.0))
    assert sorted(first_line(m) for _, m in out) == [f"CANCEL {BOB_CONTACT} SIP/2.0",
                                                   "SIP/2.0 408 Request Timeout"]


# -- failures -------------------------------------------------------------------------------------


def test_busy_is_relayed_and_acked_hop_by_hop() -> None:
    net = Net()
    call = Call(net)
    at_bob = call.send_invite()
    call.ring()
    out = parsed(call.bob_replies(486, contact=None))
    assert [(dest, first_line(m)) for dest, m in out] == [
        (BOB, f"ACK {BOB_CONTACT} SIP/2.0"),
        (ALICE, "SIP/2.0 486 Reason"),
    ]
    ack = out[0][1]
    assert isinstance(ack, Request)
    assert [str(v) for v in ack.vias] == [str(at_bob.top_via)]
    assert ack.cseq.number == 1 and ack.cseq.method == "ACK"
    assert ack.to_tag == "bob-tag"
    busy = out[1][1]
    assert isinstance(busy, Response)
    assert [v.branch for v in busy.vias] == ["z9hG4bKa-inv"]
    # Bob retransmits the 486 (our ACK was lost): ACKed again, not relayed again.
    out = parsed(call.bob_replies(486, contact=None))
    assert [(dest, first_line(m)) for dest, m in out] == [(BOB, f"ACK {BOB_CONTACT} SIP/2.0")]
    # Alice's ACK ends at the proxy; without it the 486 would be retransmitted (timer G).
    assert net.send(ack_for_non_2xx(call.invite_bytes, busy), ALICE) == []
    assert net.advance(10.0) == []
    assert net.stats()["dialog:failed_dialogs"] == 1
    net.run_all_timers()
    net.assert_idle()


def test_final_response_is_retransmitted_upstream_until_acked() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.bob_replies(486, contact=None)
    out = net.advance(4.0)
    assert [d.dest for d in out] == [ALICE, ALICE, ALICE]  # timer G at 0.5, 1.5, 3.5
    assert all(d.data.startswith(b"SIP/2.0 486 ") for d in out)


def test_unanswered_invite_times_out_with_408_after_timer_b() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    net.events()
    out = net.advance(31.9)
    assert [d.dest for d in out] == [BOB] * 6  # timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5
    assert len(net.proxy.dialogs) == 1
    timeout = one_response(net.advance(32.0), ALICE)
    assert timeout.status == 408
    assert timeout.to_tag is not None
    assert [v.branch for v in timeout.vias] == ["z9hG4bKa-inv"]
    [event] = net.events()
    assert (event.old_state, event.new_state) == (1, 5)
    assert net.stats()["dialog:failed_dialogs"] == 1
    net.send(ack_for_non_2xx(call.invite_bytes, timeout), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_a_late_2xx_after_the_timeout_is_still_relayed_statelessly() -> None:
    """§16.7: a response matching no client transaction is forwarded as a stateless proxy."""
    net = Net()
    call = Call(net)
    call.send_invite()
    assert one_response(net.advance(32.0)[-1:], ALICE).status == 408  # after 6 INVITE copies
    late = one_response(call.bob_replies(200, body=SDP), ALICE)
    assert late.status == 200
    assert [v.branch for v in late.vias] == ["z9hG4bKa-inv"]


# -- registrar and location service -------------------------------------------------------------


def register(branch: str, contact: str | None = BOB_CONTACT, *, cseq: int = 1,
             expires: int | None = 3600, source_port: int = 5062, call_id: str = "reg-1@bob",
             star: bool = False) -> bytes:
    extra = [f"Expires: {expires}"] if expires is not None else []
    if star:
        extra.append("Contact: *")
    return sip_request(
        "REGISTER", "sip:127.0.0.1:5060", branch=branch,
        via=f"SIP/2.0/UDP 127.0.0.1:{source_port};branch={branch}", from_uri="sip:bob@127.0.0.1",
        from_tag=f"reg-{branch}", to_uri="sip:bob@127.0.0.1", call_id=call_id, cseq=cseq,
        contact=contact, extra=extra,
    )


def test_register_then_invite_is_retargeted_to_the_contact() -> None:
    net = Net()
    ok = one_response(net.send(register("z9hG4bKreg1"), BOB), BOB)
    assert ok.status == 200
    assert ok.to_tag is not None
    assert ok.get_all("contact") == [f"<{BOB_CONTACT}>;expires=3600"]
    assert net.stats()["usrloc:registered_contacts"] == 1

    out = parsed(net.send(invite(ruri="sip:bob@127.0.0.1;transport=udp"), ALICE))
    assert [(dest, first_line(m)) for dest, m in out] == [
        (ALICE, "SIP/2.0 100 Trying"),
        (BOB, f"INVITE {BOB_CONTACT} SIP/2.0"),
    ]


def test_registration_expires() -> None:
    net = Net()
    net.send(register("z9hG4bKreg1", expires=60), BOB)
    net.now = 59.0
    msg = sip_request("MESSAGE", "sip:bob@127.0.0.1", branch="z9hG4bKm1")
    one_request(net.send(msg, ALICE), BOB)
    net.now = 61.0
    msg = sip_request("MESSAGE", "sip:bob@127.0.0.1", branch="z9hG4bKm2")
    resp = one_response(net.send(msg, ALICE), ALICE)
    assert resp.status == 404
    assert net.stats()["usrloc:registered_contacts"] == 0


def test_register_refresh_and_query() -> None:
    net = Net()
    net.send(register("z9hG4bKreg1", expires=600), BOB)
    net.now = 100.0
    ok = one_response(net.send(register("z9hG4bKreg2", expires=None, contact=None, cseq=2), BOB))
    assert ok.get_all("contact") == [f"<{BOB_CONTACT}>;expires=500"]


def test_wildcard_unregister_removes_every_binding() -> None:
    net = Net()
    net.send(register("z9hG4bKreg1"), BOB)
    net.send(register("z9hG4bKreg2", "sip:bob@127.0.0.1:5063", cseq=2), BOB)
    assert net.stats()["usrloc:registered_contacts"] == 2
    ok = one_response(net.send(register("z9hG4bKreg3", None, cseq=3, expires=0, star=True), BOB))
    assert ok.status == 200
    assert ok.get("contact") is None
    assert net.stats()["usrloc:registered_contacts"] == 0
    msg = sip_request("MESSAGE", "sip:bob@127.0.0.1", branch="z9hG4bKm1")
    assert one_response(net.send(msg, ALICE), ALICE).status == 404


def test_wildcard_with_nonzero_expires_is_rejected() -> None:
    net = Net()
    resp = one_response(net.send(register("z9hG4bKreg1", None, expires=60, star=True), BOB))
    assert resp.status == 400


def test_unknown_user_at_our_address_is_404() -> None:
    net = Net()
    resp = one_response(net.send(sip_request("MESSAGE", "sip:nobody@127.0.0.1:5060",
                                             branch="z9hG4bKnb"), ALICE), ALICE)
    assert resp.status == 404


def test_register_over_tcp_reuses_the_connection() -> None:
    net = Net()
    conn = Address("tcp", "127.0.0.1", 40002)
    data = register("z9hG4bKtreg", "sip:bob@127.0.0.1:5062;transport=tcp").replace(
        b"SIP/2.0/UDP 127.0.0.1:5062", b"SIP/2.0/TCP 127.0.0.1:5062")
    ok = one_response(net.send(data, conn, PROXY_TCP), conn)
    assert ok.status == 200
    out = net.send(invite(ruri="sip:bob@127.0.0.1"), ALICE)
    assert [d.dest for d in out] == [ALICE, conn]  # back over the registered connection
    assert out[1].local == PROXY_TCP
    fwd = parse_message(out[1].data)
    assert isinstance(fwd, Request)
    assert fwd.uri == "sip:bob@127.0.0.1:5062;transport=tcp"
    assert fwd.get_all("record-route") == [OUR_RR_TCP, OUR_RR]


def test_unresolvable_contact_is_reached_at_the_register_source() -> None:
    net = Net()
    natted = Address("udp", "127.0.0.1", 40003)
    net.send(register("z9hG4bKnreg", "sip:bob@bobs-phone.invalid:5062"), natted)
    out = net.send(invite(ruri="sip:bob@127.0.0.1"), ALICE)
    assert [d.dest for d in out] == [ALICE, natted]
    assert out[1].data.startswith(b"INVITE sip:bob@bobs-phone.invalid:5062 SIP/2.0")


def test_too_brief_registration_is_423() -> None:
    net = Net()
    resp = one_response(net.send(register("z9hG4bKshort", expires=10), BOB), BOB)
    assert resp.status == 423
    assert resp.get("min-expires") == "60"
    assert net.stats()["usrloc:registered_contacts"] == 0


def test_in_dialog_request_is_not_retargeted_to_another_registered_contact() -> None:
    """Bob has two phones; the one that answered keeps getting the dialog's requests."""
    net = Net()
    net.send(register("z9hG4bKreg1", "sip:bob@127.0.0.1:5063", call_id="reg-a"), BOB)
    net.now = 1.0
    net.send(register("z9hG4bKreg2", BOB_CONTACT, call_id="reg-b"), BOB)
    call = Call(net, ruri="sip:bob@127.0.0.1")
    call.establish()  # the newest binding (:5062) answered
    # The other phone refreshes its registration during the call: now it is the newest.
    net.now = 2.0
    net.send(register("z9hG4bKreg3", "sip:bob@127.0.0.1:5063", call_id="reg-a", cseq=2), BOB)
    at_bob = call.bye()
    assert at_bob.uri == BOB_CONTACT


# -- requests for the proxy itself ---------------------------------------------------------


def test_options_to_the_proxy_is_answered_with_allow() -> None:
    net = Net()
    data = sip_request("OPTIONS", "sip:127.0.0.1:5060", branch="z9hG4bKopt", to_uri="sip:127.0.0.1:5060")
    resp = one_response(net.send(data, ALICE), ALICE)
    assert resp.status == 200
    allow = {m.strip() for m in (resp.get("allow") or "").split(",")}
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER"} <= allow
    assert resp.to_tag is not None
    assert net.stats()["core:fwd_requests"] == 0
    # A retransmission gets the same answer from the transaction.
    assert net.send(data, ALICE)[0].data == resp.to_bytes()


# -- routing ------------------------------------------------------------------------------------


def test_strict_router_rewrite_is_undone() -> None:
    """§16.4: the Request-URI is our Record-Route URI; the last Route is the real target."""
    net = Net()
    data = sip_request("INFO", "sip:127.0.0.1:5060;lr", branch="z9hG4bKstrict", to_tag="bob-tag",
                       routes=["<sip:127.0.0.1:5080;lr>", f"<{BOB_CONTACT}>"])
    fwd = one_request(net.send(data, ALICE), P2)
    assert fwd.uri == BOB_CONTACT
    assert fwd.get_all("route") == ["<sip:127.0.0.1:5080;lr>"]


def test_strict_router_rewrite_with_a_single_route() -> None:
    net = Net()
    data = sip_request("INFO", "sip:127.0.0.1:5060;lr", branch="z9hG4bKstrict", to_tag="bob-tag",
                       routes=[f"<{BOB_CONTACT}>"])
    fwd = one_request(net.send(data, ALICE), BOB)
    assert fwd.uri == BOB_CONTACT
    assert fwd.get("route") is None


def test_route_naming_us_is_popped_and_the_next_route_followed() -> None:
    net = Net()
    data = sip_request("INFO", BOB_CONTACT, branch="z9hG4bKroute", to_tag="bob-tag",
                       routes=[OUR_RR, "<sip:127.0.0.1:5080;lr>"])
    fwd = one_request(net.send(data, ALICE), P2)
    assert fwd.uri == BOB_CONTACT
    assert fwd.get_all("route") == ["<sip:127.0.0.1:5080;lr>"]


def test_strict_next_hop_is_put_in_the_request_uri() -> None:
    """§16.6 step 6: a next-hop Route without `lr` becomes the Request-URI."""
    net = Net()
    data = sip_request("INFO", BOB_CONTACT, branch="z9hG4bKsn", to_tag="bob-tag",
                       routes=["<sip:127.0.0.1:5080>"])
    fwd = one_request(net.send(data, ALICE), P2)
    assert fwd.uri == "sip:127.0.0.1:5080"
    assert fwd.get_all("route") == [f"<{BOB_CONTACT}>"]


def test_udp_to_tcp_doubles_record_route() -> None:
    """RFC 5658: a request that changes transport carries one Record-Route per side."""
    net = Net()
    ruri = "sip:bob@127.0.0.1:5062;transport=tcp"
    out = net.send(invite(ruri=ruri), ALICE)
    assert [d.dest for d in out] == [ALICE, BOB_TCP]
    assert out[1].local == PROXY_TCP
    fwd = parse_message(out[1].data)
    assert isinstance(fwd, Request)
    assert fwd.get_all("record-route") == [OUR_RR_TCP, OUR_RR]
    assert fwd.top_via.transport == "TCP"

    ok = parse_message(reply(fwd, 200, contact="sip:bob@127.0.0.1:5062;transport=tcp", body=SDP))
    assert isinstance(ok, Response)
    at_alice = one_response(net.send(ok.to_bytes(), BOB_TCP, PROXY_TCP), ALICE)
    assert at_alice.get_all("record-route") == [OUR_RR_TCP, OUR_RR]
    # Alice's route set is the RR list reversed: she puts our UDP entry first.
    ack = one_request(net.send(ack_for_2xx(ruri="sip:bob@127.0.0.1:5062;transport=tcp",
                                           routes=[OUR_RR, OUR_RR_TCP]), ALICE), BOB_TCP)
    assert ack.get("route") is None
    # Bob's BYE over TCP names both entries, in his order; both are ours and are popped.
    bye = sip_request("BYE", ALICE_CONTACT, branch="z9hG4bKb-bye", via="SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKb-bye",
                      from_uri="sip:bob@127.0.0.1", from_tag="bob-tag", to_uri="sip:alice@127.0.0.1",
                      to_tag="alice-tag", contact=None, routes=[OUR_RR_TCP, OUR_RR])
    out = net.send(bye, BOB_TCP, PROXY_TCP)
    _, at_alice_bye = one(out, ALICE)
    assert out[0].local == PROXY_UDP
    assert isinstance(at_alice_bye, Request)
    assert at_alice_bye.get("route") is None
    assert at_alice_bye.top_via.transport == "UDP"


def test_tcp_in_and_tcp_out_records_route_once() -> None:
    net = Net()
    alice_tcp = Address("tcp", "127.0.0.1", 40001)
    data = invite(ruri="sip:bob@127.0.0.1:5062;transport=tcp",
                  via="SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bKtcp")
    out = net.send(data, alice_tcp, PROXY_TCP)
    assert [d.dest for d in out] == [alice_tcp, BOB_TCP]  # the 100 goes back over the connection
    fwd = parse_message(out[1].data)
    assert fwd.get_all("record-route") == [OUR_RR_TCP]


def test_received_and_rport_are_stamped_and_used() -> None:
    net = Net()
    natted = Address("udp", "127.0.0.1", 40000)
    data = invite(via="SIP/2.0/UDP 10.0.0.5:5061;rport;branch=z9hG4bKnat")
    out = net.send(data, natted)
    assert [d.dest for d in out] == [natted, BOB]  # the 100 goes to the source port (rport)
    trying = parse_message(out[0].data)
    assert trying.top_via.params == {"rport": "40000", "branch": "z9hG4bKnat", "received": "127.0.0.1"}
    fwd = parse_message(out[1].data)
    assert fwd.vias[1].params["received"] == "127.0.0.1"
    assert fwd.vias[1].params["rport"] == "40000"
    # Responses find their way back through the stamped Via.
    assert isinstance(fwd, Request)
    ok = one_response(net.send(reply(fwd, 180), BOB))
    assert ok.status == 180
    assert net.take() == []


def test_received_without_rport_answers_the_sent_by_port() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKrcv",
                       via="SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKrcv")
    out = net.send(data, Address("udp", "127.0.0.1", 40000))
    fwd = one_request(out, BOB)
    assert fwd.vias[1].params == {"branch": "z9hG4bKrcv", "received": "127.0.0.1"}
    resp = one_response(net.send(reply(fwd, 200, contact=None), BOB))
    assert resp.status == 200
    assert net.proxy.server_txns  # the answer went through the server transaction
    # ... to the received address and the sent-by port (no rport).
    data_again = net.send(data, Address("udp", "127.0.0.1", 40000))
    assert [d.dest for d in data_again] == [Address("udp", "127.0.0.1", 5070)]


def test_no_received_when_the_source_matches_the_via() -> None:
    net = Net()
    fwd = one_request(net.send(sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKsame"), ALICE), BOB)
    assert "received" not in fwd.vias[1].params


def test_response_with_unknown_branch_is_forwarded_statelessly() -> None:
    """A 2xx retransmission arriving after the client transaction ended (timer M)."""
    net = Net()
    call = Call(net)
    call.send_invite()
    first = call.answer()
    net.run_all_timers()
    assert net.proxy.client_txns == {}
    again = one_response(call.bob_replies(200, body=SDP), ALICE)
    assert again.to_bytes() == first.to_bytes()


def test_response_not_for_us_is_dropped() -> None:
    net = Net()
    stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKx\r\n"
             b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
             b"Content-Length: 0\r\n\r\n")
    assert net.send(stray, BOB) == []
    assert net.stats()["core:drop_replies"] == 1


# -- malformed input ------------------------------------------------------------------------------


def test_malformed_request_is_answered_400() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKbad").replace(
        b"CSeq: 1 MESSAGE", b"CSeq: one MESSAGE")
    resp = one_response(net.send(data, ALICE), ALICE)
    assert resp.status == 400
    assert resp.top_via.branch == "z9hG4bKbad"
    assert net.stats()["core:bad_msg_hdr"] + net.stats()["core:err_requests"] == 1
    assert net.proxy.server_txns == {}


def test_cseq_method_mismatch_is_400() -> None:
    net = Net()
    data = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmm", cseq_method="INFO")
    assert one_response(net.send(data, ALICE), ALICE).status == 400


@pytest.mark.parametrize("data", [
    b"",
    b"\r\n\r\n",
    b"\x00\xff\xfe garbage \x80\x81",
    b"hello world",
    b"INVITE\r\n\r\n",
    b"SIP/2.0 200\r\n\r\n",
    bytes(range(256)),
])
def test_garbage_is_dropped_silently(data: bytes) -> None:
    net = Net()
    assert net.send(data, ALICE) == []
    assert net.proxy.server_txns == {}


@pytest.mark.parametrize("path", MALFORMED, ids=lambda p: p.name)
def test_recorded_malformed_messages_never_raise(path: Path) -> None:
    net = Net()
    out = net.send(path.read_bytes(), ALICE)
    for d in out:
        resp = parse_message(d.data)
        assert isinstance(resp, Response)
        assert 400 <= resp.status < 600
    assert net.proxy.client_txns == {}
    net.run_all_timers()
    net.assert_idle()


@pytest.mark.parametrize(
    ("ruri", "status"),
    [("tel:+15551234567", 416), ("sip:bob@127.0.0.1:99999", 400)],
)
def test_request_rejected_after_parsing_is_answered_through_its_transaction(
        ruri: str, status: int) -> None:
    """A late ParseError must not leave the server transaction behind, unanswered."""
    net = Net()
    data = invite(ruri=ruri, branch="z9hG4bKlate")
    out = parsed(net.send(data, ALICE))
    assert statuses(out)[-1] == (ALICE, status)
    # A retransmission gets the same final answer, not the 100.
    again = parsed(net.send(data, ALICE))
    assert statuses(again) == [(ALICE, status)]
    resp = out[-1][1]
    net.send(ack_for_non_2xx(data, resp), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_ack_with_max_forwards_zero_is_not_relayed() -> None:
    net = Net()
    Call(net).establish()
    assert net.send(ack_for_2xx(branch="z9hG4bKa-ack2", max_forwards=0), ALICE) == []


def test_2xx_with_an_unparsable_contact_is_still_relayed() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    assert call.at_bob is not None
    data = reply(call.at_bob, 200, contact=None, extra=["Contact: <>"], body=SDP)
    ok = one_response(net.send(data, BOB), ALICE)
    assert ok.status == 200


# -- management: ending dialogs --------------------------------------------------------------


def test_end_dialog_on_a_confirmed_call_sends_bye_both_ways() -> None:
    net = Net()
    # Alice's INVITE comes through P1, which record-routes; Bob's 200 went through P2, which
    # record-routed too.
    data = invite(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKp1",
                  vias=["SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa-inv"],
                  record_routes=["<sip:127.0.0.1:5070;lr>"], cseq=10)
    out = net.send(data, P1)
    at_bob = parse_message(out[1].data)
    assert isinstance(at_bob, Request)
    rr = ["<sip:127.0.0.1:5080;lr>", OUR_RR, "<sip:127.0.0.1:5070;lr>"]
    one_response(net.send(reply(at_bob, 200, record_routes=rr, body=SDP), BOB), P1)
    net.send(ack_for_2xx(via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKp1ack", cseq=10,
                         routes=[OUR_RR, "<sip:127.0.0.1:5080;lr>"]), P1)
    # Bob sends an in-dialog request with CSeq 7: the BYE toward Alice must go above it.
    info = sip_request("INFO", ALICE_CONTACT, branch="z9hG4bKb-info", via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb-info",
                       from_uri="sip:bob@127.0.0.1", from_tag="bob-tag", to_uri="sip:alice@127.0.0.1",
                       to_tag="alice-tag", cseq=7, contact=None, routes=[OUR_RR, "<sip:127.0.0.1:5070;lr>"])
    at_p1 = one_request(net.send(info, P2), P1)
    net.send(reply(at_p1, 200, to_tag=None, contact=None), P1)
    net.take()
    [dialog] = list(net.proxy.dialogs)
    net.events()

    assert net.proxy.end_dialog(dialog.id, net.now) is True
    byes = parsed(net.take())
    assert [dest for dest, _ in byes] == [P2, P1]
    to_bob, to_alice = (m for _, m in byes)
    assert isinstance(to_bob, Request) and isinstance(to_alice, Request)

    assert to_bob.method == "BYE"
    assert to_bob.uri == BOB_CONTACT
    assert to_bob.get_all("route") == ["<sip:127.0.0.1:5080;lr>"]
    assert str(to_bob.from_.uri) == "sip:alice@127.0.0.1" and to_bob.from_tag == "alice-tag"
    assert str(to_bob.to.uri) == "sip:bob@127.0.0.1" and to_bob.to_tag == "bob-tag"
    assert to_bob.call_id == "call-1@alice"
    assert (to_bob.cseq.number, to_bob.cseq.method) == (11, "BYE")  # Alice's last + 1
    assert to_bob.top_via.branch is not None and to_bob.top_via.branch.startswith("z9hG4bK")

    assert to_alice.method == "BYE"
    assert to_alice.uri == ALICE_CONTACT
    assert to_alice.get_all("route") == ["<sip:127.0.0.1:5070;lr>"]
    assert str(to_alice.from_.uri) == "sip:bob@127.0.0.1" and to_alice.from_tag == "bob-tag"
    assert str(to_alice.to.uri) == "sip:alice@127.0.0.1" and to_alice.to_tag == "alice-tag"
    assert (to_alice.cseq.number, to_alice.cseq.method) == (8, "BYE")  # Bob's last + 1
    assert to_alice.top_via.branch != to_bob.top_via.branch

    [event] = net.events()
    assert (event.old_state, event.new_state) == (4, 5)
    assert dialog.end_reason == "terminated"
    assert net.stats()["dialog:active_dialogs"] == 0
    assert net.proxy.end_dialog(dialog.id, net.now) is False  # already ended

    # The answers end at the proxy.
    assert net.send(reply(to_bob, 200, to_tag=None, contact=None), P2) == []
    assert net.send(reply(to_alice, 200, to_tag=None, contact=None), P1) == []
    net.run_all_timers()
    net.assert_idle()


def test_end_dialog_by_call_id_and_unknown_key() -> None:
    net = Net()
    Call(net).establish()
    assert net.proxy.end_dialog("no-such-dialog", net.now) is False
    assert net.proxy.end_dialog("call-1@alice", net.now) is True
    assert sorted(d.dest.port for d in net.take()) == [5061, 5062]


def test_end_dialog_byes_are_retransmitted_and_time_out_quietly() -> None:
    net = Net()
    Call(net).establish()
    [dialog] = list(net.proxy.dialogs)
    net.proxy.end_dialog(dialog.id, net.now)
    net.take()
    out = net.advance(net.now + 0.5)
    assert sorted(d.dest.port for d in out) == [5061, 5062]  # timer E
    out = net.run_all_timers()
    assert all(d.data.startswith(b"BYE ") for d in out)
    net.assert_idle()


def test_end_dialog_on_a_ringing_call_cancels_it() -> None:
    net = Net()
    call = Call(net)
    at_bob = call.send_invite()
    call.ring()
    [dialog] = list(net.proxy.dialogs)
    assert net.proxy.end_dialog(dialog.id, net.now) is True
    cancel = one_request(net.take(), BOB)
    assert cancel.method == "CANCEL"
    assert cancel.top_via.branch == at_bob.top_via.branch
    assert cancel.cseq.number == 1
    net.send(reply(cancel, 200, to_tag=None, contact=None), BOB)
    out = parsed(call.bob_replies(487, contact=None))
    assert [(dest, first_line(m)) for dest, m in out] == [
        (BOB, f"ACK {BOB_CONTACT} SIP/2.0"),
        (ALICE, "SIP/2.0 487 Reason"),
    ]
    assert dialog.state == 5
    net.send(ack_for_non_2xx(call.invite_bytes, out[1][1]), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_dialog_lifetime_expiry_sends_bye_both_ways() -> None:
    net = Net(dialog_lifetime=10.0)
    call = Call(net)
    call.send_invite()
    net.now = 1.0
    call.answer()
    call.ack()
    net.events()
    assert net.advance(10.9) == []
    out = parsed(net.advance(11.0))
    assert sorted((dest.port, first_line(m).split()[0]) for dest, m in out) == [
        (5061, "BYE"), (5062, "BYE")]
    [event] = net.events()
    assert (event.old_state, event.new_state) == (4, 5)
    stats = net.stats()
    assert stats["dialog:expired_dialogs"] == 1
    assert stats["dialog:active_dialogs"] == 0
    for dest, bye in out:
        net.send(reply(bye, 200, to_tag=None, contact=None), dest)
    net.run_all_timers()
    net.assert_idle()


def test_dialog_ended_by_bye_does_not_expire_later() -> None:
    net = Net(dialog_lifetime=10.0)
    call = Call(net)
    call.establish()
    call.hang_up()
    out = net.run_all_timers()
    assert out == []
    assert net.stats()["dialog:expired_dialogs"] == 0
    net.assert_idle()


# -- nothing is left behind ---------------------------------------------------------------------


def test_transaction_tables_empty_after_a_call_and_its_timers() -> None:
    net = Net()
    call = Call(net)
    call.establish()
    call.hang_up()
    assert net.proxy.server_txns and net.proxy.client_txns
    assert net.run_all_timers() == []
    net.assert_idle()
    assert net.stats()["tm:inuse_transactions"] == 0


def test_non_invite_transactions_end_after_timer_j_and_k() -> None:
    net = Net()
    msg = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmsg")
    fwd = one_request(net.send(msg, ALICE), BOB)
    one_response(net.send(reply(fwd, 200, contact=None), BOB), ALICE)
    net.advance(5.0)  # timer K (T4) ends the client side
    assert net.proxy.client_txns == {}
    assert net.proxy.server_txns
    net.advance(32.0)  # timer J (64*T1) the server side
    net.assert_idle()


def test_unresolvable_destination_is_503_and_the_dialog_fails() -> None:
    net = Net()
    data = invite(ruri="sip:bob@nowhere.invalid")
    out = parsed(net.send(data, ALICE))
    assert statuses(out) == [(ALICE, 100), (ALICE, 503)]
    assert net.stats()["dialog:failed_dialogs"] == 1
    net.send(ack_for_non_2xx(data, out[1][1]), ALICE)
    net.run_all_timers()
    net.assert_idle()


def test_unanswered_message_times_out_408_and_cleans_up() -> None:
    net = Net()
    msg = sip_request("MESSAGE", BOB_CONTACT, branch="z9hG4bKmsg")
    one_request(net.send(msg, ALICE), BOB)
    out = parsed(net.advance(32.0))
    assert [(dest, first_line(m)) for dest, m in out][-1] == (ALICE, "SIP/2.0 408 Request Timeout")
    net.run_all_timers()
    net.assert_idle()

"""Call operations through the proxy, sans-IO: transfers, NOTIFY handling, hold and unhold.

With the call operations kit (`tests.unit.kit.callops`): a `Net` wraps one `Proxy` with a fake
clock; `UA`s write SIP the way user agents do; a `Call` sets up a dialog through the proxy and
writes the in-dialog requests of either side. The tests drive `Proxy.callops` the way the
worker does for a management command, play every user agent by hand, and assert on the exact
datagrams the proxy emits and on the `CallEvent`s it reports (spec/callops.md, with DESIGN.md
§4's departures from the reference).
"""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.sip import Request, parse_message
from switchboard.sip.wire import Address
from tests.unit.kit.callops import (
    ALICE,
    BOB,
    CAROL,
    CAROL_URI,
    SDP_A,
    SDP_B,
    SDP_C,
    UA,
    Call,
    Net,
    accept,
    answer,
    established,
    expect_error,
    hold_event,
    invite_via_p1,
    line_set,
    lines_of,
    msgs,
    new_invite,
    normalized,
    only,
    only_request,
    only_response,
    reinvites,
    relayed_invite,
    request,
    sdp,
    start_blind,
    transfer_event,
    wire,
)
from tests.unit.kit.proxy import OUR_RR, P1, P1_RR, P2, P2_RR

# -- blind transfer: the REFER ---------------------------------------------------------------------


def test_blind_transfer_of_the_caller_sends_a_refer_impersonating_the_callee() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only(net.take(), ALICE)
    assert normalized(refer.data) == wire(
        "REFER sip:alice@127.0.0.1:5061 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:alice@example.com>;tag=alice-tag",
        "From: <sip:bob@example.com>;tag=bob-tag",
        "Call-ID: call-1@alice",
        "CSeq: 1 REFER",  # Bob never sent a request: his sequence starts at 1
        "Max-Forwards: 70",
        "Contact: <sip:bob@127.0.0.1:5062>",
        "Refer-To: <sip:carol@127.0.0.1:5063;osid=0.1>",
        "Content-Length: 0",
    )
    # `start` when the REFER goes out (the seed's meaning, DESIGN.md §4).
    assert net.events() == [transfer_event("call-1@alice", "caller", "", CAROL_URI, "start")]


def test_blind_transfer_of_the_callee_continues_the_callers_cseq() -> None:
    net = Net()
    call = established(net)
    # Alice's sequence is at 3 after two in-dialog requests.
    for _ in range(2):
        info = only_request(net.send(call.request("caller", "INFO"), ALICE), BOB)
        net.send(answer(info, 200, "OK"), BOB)
    net.callops.transfer("call-1@alice", "callee", "<sip:dave@127.0.0.1:5064;user=phone>",
                         net.now)
    refer = only(net.take(), BOB)
    assert normalized(refer.data) == wire(
        "REFER sip:bob@127.0.0.1:5062 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:bob@example.com>;tag=bob-tag",
        "From: <sip:alice@example.com>;tag=alice-tag",
        "Call-ID: call-1@alice",
        "CSeq: 4 REFER",
        "Max-Forwards: 70",
        "Contact: <sip:alice@127.0.0.1:5061>",
        "Refer-To: <sip:dave@127.0.0.1:5064;user=phone;osid=0.1>",
        "Content-Length: 0",
    )
    assert net.events() == [
        transfer_event("call-1@alice", "callee", "", "sip:dave@127.0.0.1:5064;user=phone",
                       "start")]


def test_refer_follows_the_route_set_and_the_latest_remote_target() -> None:
    """A call through P1 (caller side) and P2 (callee side): each REFER goes to its leg's next
    hop with that leg's route set, to the leg's latest Contact."""
    net = Net()
    out = msgs(net.send(invite_via_p1("call-1@alice", 5), P1))
    at_bob = out[1][1]
    assert at_bob.get_all("record-route") == [OUR_RR, P1_RR]
    # P2 (in front of Bob) added its own Record-Route to the 200.
    net.send(answer(at_bob, 200, "OK", to_tag="bob-tag", contact=BOB.contact, body=SDP_B,
                    record_routes=[P2_RR, OUR_RR, P1_RR]), P2)
    ack = request("ACK", BOB.contact, ALICE, call_id="call-1@alice", from_uri=ALICE.aor,
                  from_tag="alice-tag", to_uri=BOB.aor, to_tag="bob-tag", cseq=5,
                  routes=[OUR_RR, P2_RR])  # P1 took its own entry
    assert only_request(net.send(ack, P1), P2).get_all("route") == [P2_RR]
    # Bob moves: a re-INVITE with a new Contact, along his route set.
    reinv = request("INVITE", ALICE.contact, BOB, call_id="call-1@alice", from_uri=BOB.aor,
                    from_tag="bob-tag", to_uri=ALICE.aor, to_tag="alice-tag", cseq=7,
                    routes=[OUR_RR, P1_RR], contact="sip:bob@127.0.0.1:5099",
                    body=SDP_B)
    at_alice = msgs(net.send(reinv, P2))[-1][1]
    assert isinstance(at_alice, Request) and at_alice.get_all("route") == [P1_RR]
    net.send(answer(at_alice, 200, "OK", contact=ALICE.contact, body=SDP_A), P1)
    net.take()

    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), P1)
    assert refer.uri == ALICE.contact
    assert refer.get_all("route") == [P1_RR]
    assert refer.get("cseq") == "8 REFER"  # Bob's 7, plus one
    assert refer.get("contact") == "<sip:bob@127.0.0.1:5099>"
    net.send(answer(refer, 603, "Decline"), P1)

    # The callee leg: via P2 to Bob's new Contact, CSeq continuing Alice's 5.
    net.callops.transfer("call-1@alice", "callee", CAROL_URI, net.now)
    refer = only_request(net.take(), P2)
    assert refer.uri == "sip:bob@127.0.0.1:5099"
    assert refer.get_all("route") == [P2_RR]
    assert refer.get("cseq") == "6 REFER"
    assert refer.get("contact") == f"<{ALICE.contact}>"
    assert refer.get("to") == "<sip:bob@example.com>;tag=bob-tag"
    assert refer.get("from") == "<sip:alice@example.com>;tag=alice-tag"


def test_refer_accepted_raises_no_event_and_keeps_the_transfer_pending() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), ALICE)
    net.events()
    assert net.send(answer(refer, 202, "Accepted"), ALICE) == []
    assert net.events() == []
    expect_error(491, "Request Pending", net.callops.transfer, "call-1@alice", "callee",
                 CAROL_URI, net.now)


def test_refer_rejected_fails_the_transfer_and_the_dialog_is_idle_again() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), ALICE)
    net.events()
    assert net.send(answer(refer, 603, "Decline"), ALICE) == []
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "", CAROL_URI, "fail", "603 Decline")]
    # Not the reference's "one transfer per dialog" (spec §10.1).
    net.callops.transfer("call-1@alice", "caller", "sip:dave@127.0.0.1:5064", net.now)
    again = only_request(net.take(), ALICE)
    assert again.get("cseq") == "2 REFER"
    assert again.get("refer-to") == "<sip:dave@127.0.0.1:5064;osid=0.1>"
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "", "sip:dave@127.0.0.1:5064", "start")]


def test_refer_timeout_fails_the_transfer_with_408() -> None:
    net = Net()
    established(net)
    start = net.now
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    only_request(net.take(), ALICE)
    net.events()
    out = net.advance(start + 31.9)
    assert {line for _, line in lines_of(out)} == {"REFER sip:alice@127.0.0.1:5061 SIP/2.0"}
    assert net.events() == []
    net.advance(start + 32.0)
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "", CAROL_URI, "fail", "408 Request Timeout")]
    net.callops.transfer("call-1@alice", "callee", CAROL_URI, net.now)
    assert only_request(net.take(), BOB).method == "REFER"


def test_provisional_answer_to_the_refer_changes_nothing() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), ALICE)
    net.events()
    assert net.send(answer(refer, 100, "Trying"), ALICE) == []
    assert net.events() == []


def test_event_destination_is_the_bare_uri() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", "  < sip:dave@127.0.0.1:5064;lr >  ", net.now)
    refer = only_request(net.take(), ALICE)
    assert refer.get("refer-to") == "<sip:dave@127.0.0.1:5064;lr;osid=0.1>"
    assert net.events() == [transfer_event("call-1@alice", "caller", "",
                                           "sip:dave@127.0.0.1:5064;lr", "start")]


def test_new_call_for_an_ended_dialog_is_not_linked() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    bye = only_request(net.send(call.request("callee", "BYE"), BOB), ALICE)
    net.send(answer(bye, 200, "OK"), ALICE)
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=0.1 SIP/2.0"
    assert net.events() == []


# -- blind transfer: refusals ----------------------------------------------------------------------


def test_transfer_while_one_is_pending_is_491() -> None:
    net = Net()
    established(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    net.take()
    net.events()
    for leg in ("caller", "callee"):
        expect_error(491, "Request Pending", net.callops.transfer, "call-1@alice", leg,
                     CAROL_URI, net.now)
    assert net.take() == [] and net.events() == []


@pytest.mark.parametrize("leg", ["both", "Caller", "", "unknown"])
def test_transfer_of_an_unknown_leg_is_invalid_params(leg: str) -> None:
    net = Net()
    established(net)
    err = expect_error(400, "Bad input", net.callops.transfer, "call-1@alice", leg,
                       CAROL_URI, net.now)
    assert err.detail is not None and err.detail.startswith("leg:")
    assert net.take() == [] and net.events() == []


def test_transfer_of_an_unknown_call_is_404() -> None:
    net = Net()
    established(net)
    expect_error(404, "Dialog not found", net.callops.transfer, "nosuch@x", "caller",
                 CAROL_URI, net.now)
    assert net.take() == [] and net.events() == []


def test_transfer_of_an_ended_call_is_404() -> None:
    net = Net()
    call = established(net)
    bye = only_request(net.send(call.request("caller", "BYE"), ALICE), BOB)
    net.send(answer(bye, 200, "OK"), BOB)
    expect_error(404, "Dialog not found", net.callops.transfer, "call-1@alice", "caller",
                 CAROL_URI, net.now)
    assert net.take() == []


def test_transfer_of_an_early_dialog_is_410() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    net.events()
    expect_error(410, "Dialog not ready", net.callops.transfer, "call-1@alice", "caller",
                 CAROL_URI, net.now)
    assert net.take() == [] and net.events() == []


@pytest.mark.parametrize(
    "destination",
    ["sip:carol@127.0.0.1\r\nVia: SIP/2.0/UDP evil", "sip:c@x>;x=<", "tel:+15551234",
     "http://example.com", "", "<sip:c@x", '"C" <sip:c@x>'],
)
def test_bad_destination_is_refused_and_nothing_is_sent(destination: str) -> None:
    net = Net()
    established(net)
    err = expect_error(400, "Bad input", net.callops.transfer, "call-1@alice",
                       "caller", destination, net.now)
    assert err.detail is not None and err.detail.startswith("destination:")
    assert net.take() == [] and net.events() == []
    # Nothing left half-done: the dialog takes a good transfer.
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    assert only_request(net.take(), ALICE).get("cseq") == "1 REFER"


# -- NOTIFY (Event: refer) -------------------------------------------------------------------------



def test_notify_from_the_transferee_is_answered_by_the_proxy_and_not_forwarded() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    ok = only_response(net.send(call.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE), ALICE)
    assert (ok.status, ok.reason) == (200, "OK")
    assert ok.cseq.method == "NOTIFY" and ok.to_tag == "bob-tag"
    # Before the new call is seen: 200 and reported at once (not the reference's 480).
    assert net.events() == [transfer_event("call-1@alice", "caller", "", "", "notify",
                                           "100 Trying")]


def test_notify_retransmission_gets_the_same_answer_and_no_second_event() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    data = call.notify("caller", b"SIP/2.0 100 Trying\r\n")
    first = only(net.send(data, ALICE), ALICE)
    net.events()
    again = only(net.send(data, ALICE), ALICE)
    assert again.data == first.data
    assert net.events() == []


def test_notify_with_a_body_that_is_not_a_sipfrag_is_400() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    bad = only_response(net.send(call.notify("caller", b"hello", content_type="text/plain"),
                                 ALICE), ALICE)
    assert bad.status == 400
    assert net.events() == []


def test_notify_of_another_event_package_is_relayed() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    data = call.request("caller", "NOTIFY", body=b"SIP/2.0 200 OK\r\n",
                        content_type="message/sipfrag",
                        extra=["Event: dialog", "Subscription-State: active"])
    fwd = only_request(net.send(data, ALICE), BOB)
    assert fwd.method == "NOTIFY"
    assert net.events() == []


def test_notify_from_the_other_party_is_relayed() -> None:
    """Only the leg that got our REFER has a subscription with us."""
    net = Net()
    call = established(net)
    start_blind(net, call)
    fwd = only_request(net.send(call.notify("callee", b"SIP/2.0 200 OK\r\n"), BOB), ALICE)
    assert fwd.method == "NOTIFY"
    assert fwd.get("cseq") == "2 NOTIFY"  # after our REFER toward Alice: shifted by one
    assert net.events() == []


def test_notify_without_a_transfer_is_relayed() -> None:
    net = Net()
    call = established(net)
    fwd = only_request(net.send(call.notify("caller", b"SIP/2.0 200 OK\r\n"), ALICE), BOB)
    assert fwd.method == "NOTIFY"
    assert net.events() == []


# -- blind transfer: the new call ------------------------------------------------------------------


def test_blind_transfer_end_to_end_in_param_mode() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    only_response(net.send(call.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE), ALICE)
    assert net.events() == [transfer_event("call-1@alice", "caller", "", "", "notify",
                                           "100 Trying")]

    # The transferee calls the Refer-To URI; the proxy takes its parameter out.
    inv = new_invite(f"{CAROL_URI};osid=0.1")
    out = msgs(net.send(inv, ALICE))
    assert [(d, m.start_line()) for d, m in out] == [
        (ALICE.address, "SIP/2.0 100 Trying"),
        (CAROL.address, f"INVITE {CAROL_URI} SIP/2.0"),
    ]
    at_carol = out[1][1]
    assert at_carol.get("to") == f"<{CAROL_URI};osid=0.1>"  # To is left alone
    assert at_carol.call_id == "call-2@alice"
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "start")]
    # A NOTIFY now carries the new Call-ID.
    only_response(net.send(call.notify("caller", b"SIP/2.0 180 Ringing\r\n"), ALICE), ALICE)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", "",
                                           "notify", "180 Ringing")]

    only_response(net.send(answer(at_carol, 180, "Ringing", to_tag="carol-tag",
                                  contact=CAROL.contact), CAROL), ALICE)
    assert net.events() == []
    ok = only_response(net.send(answer(at_carol, 200, "OK", to_tag="carol-tag",
                                       contact=CAROL.contact, body=SDP_C), CAROL), ALICE)
    assert ok.status == 200
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "ok", "200 OK")]
    ack = request("ACK", CAROL.contact, ALICE, call_id="call-2@alice", from_uri=ALICE.aor,
                  from_tag="alice-new", to_uri=f"{CAROL_URI};osid=0.1", to_tag="carol-tag",
                  cseq=1, routes=[OUR_RR])
    only_request(net.send(ack, ALICE), CAROL)
    assert net.take() == []  # the old call waits for the final NOTIFY

    # The final NOTIFY: answered, reported, and the old call is ended both ways.
    out = net.send(call.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated;reason=noresource"),
                   ALICE)
    assert [(d.dest, normalized(d.data).split("\r\n", 1)[0]) for d in out] == [
        (ALICE.address, "SIP/2.0 200 OK"),
        (BOB.address, "BYE sip:bob@127.0.0.1:5062 SIP/2.0"),
        (ALICE.address, "BYE sip:alice@127.0.0.1:5061 SIP/2.0"),
    ]
    assert normalized(out[1].data) == wire(
        "BYE sip:bob@127.0.0.1:5062 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:bob@example.com>;tag=bob-tag",
        "From: <sip:alice@example.com>;tag=alice-tag",
        "Call-ID: call-1@alice",
        "CSeq: 4 BYE",  # above the 1 Bob saw; Alice's NOTIFYs never reached him
        "Max-Forwards: 70",
        "Content-Length: 0",
    )
    assert normalized(out[2].data) == wire(
        "BYE sip:alice@127.0.0.1:5061 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:alice@example.com>;tag=alice-tag",
        "From: <sip:bob@example.com>;tag=bob-tag",
        "Call-ID: call-1@alice",
        "CSeq: 2 BYE",  # after our REFER (1) in Bob's sequence
        "Max-Forwards: 70",
        "Content-Length: 0",
    )
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", "",
                                           "notify", "200 OK")]
    assert not call.dialog.active
    for d, m in msgs(out[1:]):
        net.send(answer(m, 200, "OK"), d)
    assert net.take() == []
    # The new call is untouched, and the grace timer does not fire a second time.
    assert net.advance(net.now + 10) == []
    new = net.proxy.dialogs.by_call_id("call-2@alice")
    assert new is not None and new.active


def test_old_call_is_ended_after_the_grace_time_without_a_final_notify() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    at_carol = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))[1][1]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    answered_at = net.now
    net.events()
    assert net.advance(answered_at + 1.9) == []
    out = net.advance(answered_at + 2.0)
    assert line_set(out) == {
        (BOB.address, "BYE sip:bob@127.0.0.1:5062 SIP/2.0"),
        (ALICE.address, "BYE sip:alice@127.0.0.1:5061 SIP/2.0"),
    }
    assert not call.dialog.active
    assert net.events() == []
    # A late final NOTIFY on the ended dialog is still answered, and ends nothing more.
    out = net.send(call.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated"), ALICE)
    assert only_response(out, ALICE).status == 200
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", "",
                                           "notify", "200 OK")]


def test_old_call_is_kept_when_end_old_call_is_off() -> None:
    net = Net(end_old_call=False)
    call = established(net)
    start_blind(net, call)
    at_carol = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))[1][1]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events()[-1].params["state"] == "ok"
    out = net.send(call.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated"), ALICE)
    assert only_response(out, ALICE).status == 200
    assert net.advance(net.now + 60) == []
    assert call.dialog.active


def test_new_call_rejected_fails_the_transfer_and_keeps_the_old_call() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    at_carol = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))[1][1]
    net.events()
    out = msgs(net.send(answer(at_carol, 486, "Busy Here", to_tag="carol-tag"), CAROL))
    assert [(d, m.start_line()) for d, m in out] == [
        (CAROL.address, f"ACK {CAROL_URI} SIP/2.0"),  # hop by hop
        (ALICE.address, "SIP/2.0 486 Busy Here"),
    ]
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "fail", "486 Busy Here")]
    out = net.send(call.notify("caller", b"SIP/2.0 486 Busy Here\r\n", state="terminated"),
                   ALICE)
    assert only_response(out, ALICE).status == 200
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", "",
                                           "notify", "486 Busy Here")]
    assert "BYE" not in str(lines_of(net.advance(net.now + 60)))  # only the 486 again
    assert call.dialog.active
    # The old call can be transferred again.
    net.callops.transfer("call-1@alice", "caller", "sip:dave@127.0.0.1:5064", net.now)
    assert only_request(net.take(), ALICE).get("cseq") == "2 REFER"


def test_new_call_timing_out_fails_the_transfer_with_408() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE)
    net.events()
    net.advance(net.now + 40)  # timer B: nobody answers at Carol's address
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "fail", "408 Request Timeout")]
    assert call.dialog.active


def test_invite_with_an_unknown_match_param_value_is_relayed_as_it_is() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=9.99"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=9.99 SIP/2.0"
    assert net.events() == []


def test_invite_with_the_match_param_and_other_params_keeps_the_others() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call, destination="<sip:carol@127.0.0.1:5063;user=phone?Subject=x>")
    out = msgs(net.send(new_invite("sip:carol@127.0.0.1:5063;user=phone;osid=0.1;foo"), ALICE))
    assert out[1][1].start_line() == "INVITE sip:carol@127.0.0.1:5063;user=phone;foo SIP/2.0"
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice",
                                           "sip:carol@127.0.0.1:5063;user=phone;foo", "start")]


def test_the_callee_leg_is_transferred_the_same_way() -> None:
    net = Net()
    call = established(net)
    refer = start_blind(net, call, leg="callee")
    assert refer.get("refer-to") == f"<{CAROL_URI};osid=0.1>"
    out = net.send(call.notify("callee", b"SIP/2.0 100 Trying\r\n"), BOB)
    assert only_response(out, BOB).status == 200
    assert net.events() == [transfer_event("call-1@alice", "callee", "", "", "notify",
                                           "100 Trying")]
    at_carol = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1", call_id="call-2@bob",
                                        sender=BOB), BOB))[1][1]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [
        transfer_event("call-1@alice", "callee", "call-2@bob", CAROL_URI, "start"),
        transfer_event("call-1@alice", "callee", "call-2@bob", CAROL_URI, "ok", "200 OK"),
    ]
    out = net.send(call.notify("callee", b"SIP/2.0 200 OK\r\n", state="terminated"), BOB)
    assert line_set(out) == {
        (BOB.address, "SIP/2.0 200 OK"),
        (BOB.address, "BYE sip:bob@127.0.0.1:5062 SIP/2.0"),
        (ALICE.address, "BYE sip:alice@127.0.0.1:5061 SIP/2.0"),
    }


def test_a_dialog_can_be_transferred_again_after_a_successful_transfer() -> None:
    net = Net(end_old_call=False)
    call = established(net)
    start_blind(net, call)
    at_carol = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))[1][1]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    net.events()
    net.callops.transfer("call-1@alice", "callee", "sip:dave@127.0.0.1:5064", net.now)
    refer = only_request(net.take(), BOB)
    assert refer.get("refer-to") == "<sip:dave@127.0.0.1:5064;osid=0.1>"
    assert net.events() == [transfer_event("call-1@alice", "callee", "",
                                           "sip:dave@127.0.0.1:5064", "start")]


def test_transfer_to_a_user_registered_here_is_linked_then_retargeted() -> None:
    net = Net()
    call = established(net)
    reg = request("REGISTER", "sip:127.0.0.1:5060", CAROL, call_id="reg-1@carol",
                  from_uri="sip:carol@127.0.0.1", from_tag="reg", to_uri="sip:carol@127.0.0.1",
                  to_tag=None, cseq=1, contact=CAROL.contact, extra=["Expires: 3600"])
    assert only_response(net.send(reg, CAROL), CAROL).status == 200
    refer = start_blind(net, call, destination="sip:carol@127.0.0.1")
    assert refer.get("refer-to") == "<sip:carol@127.0.0.1;osid=0.1>"
    at_carol = relayed_invite(net.send(new_invite("sip:carol@127.0.0.1;osid=0.1"), ALICE),
                              ALICE, CAROL)
    assert at_carol.uri == CAROL.contact
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice",
                                           "sip:carol@127.0.0.1", "start")]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice",
                                           "sip:carol@127.0.0.1", "ok", "200 OK")]


def test_new_call_answered_404_by_the_proxy_itself_fails_the_transfer() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call, destination="sip:nobody@127.0.0.1")
    out = msgs(net.send(new_invite("sip:nobody@127.0.0.1;osid=0.1"), ALICE))
    assert [(d, m.start_line()) for d, m in out] == [
        (ALICE.address, "SIP/2.0 100 Trying"), (ALICE.address, "SIP/2.0 404 Not Found")]
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "call-2@alice", "sip:nobody@127.0.0.1",
                       "start"),
        transfer_event("call-1@alice", "caller", "call-2@alice", "sip:nobody@127.0.0.1",
                       "fail", "404 Not Found"),
    ]


def test_notify_event_header_with_an_id_and_in_capitals() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    data = call.request("caller", "NOTIFY", body=b"SIP/2.0 100 Trying\r\n",
                        content_type="message/sipfrag",
                        extra=["Event: REFER ;id=93809824", "Subscription-State: active"])
    assert only_response(net.send(data, ALICE), ALICE).status == 200
    assert [e.params["status"] for e in net.events()] == ["100 Trying"]


def test_notify_without_an_event_header_is_relayed() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    data = call.request("caller", "NOTIFY", body=b"SIP/2.0 100 Trying\r\n",
                        content_type="message/sipfrag")
    assert only_request(net.send(data, ALICE), BOB).method == "NOTIFY"
    assert net.events() == []


# -- callid mode -----------------------------------------------------------------------------------


def test_callid_mode_refer_to_carries_the_escaped_call_id() -> None:
    net = Net(callops_mode="callid")
    call = established(net, call_id="a;b=c@alice")
    refer = start_blind(net, call)
    assert refer.get("refer-to") == f"<{CAROL_URI};osid=a%3Bb%3Dc%40alice>"
    ok = only_response(net.send(call.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE), ALICE)
    assert ok.status == 200
    assert net.events() == [transfer_event("a;b=c@alice", "caller", "", "", "notify",
                                           "100 Trying")]
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=a%3Bb%3Dc%40alice"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI} SIP/2.0"
    net.send(answer(out[1][1], 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [
        transfer_event("a;b=c@alice", "caller", "call-2@alice", CAROL_URI, "start"),
        transfer_event("a;b=c@alice", "caller", "call-2@alice", CAROL_URI, "ok", "200 OK"),
    ]


def test_callid_mode_ignores_a_dialog_id() -> None:
    net = Net(callops_mode="callid")
    call = established(net)
    start_blind(net, call)
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=0.1 SIP/2.0"
    assert net.events() == []


def test_param_mode_ignores_a_call_id() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=call-1%40alice"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=call-1%40alice SIP/2.0"
    assert net.events() == []


def test_a_custom_match_param() -> None:
    net = Net(match_param="xref")
    call = established(net)
    refer = start_blind(net, call)
    assert refer.get("refer-to") == f"<{CAROL_URI};xref=0.1>"
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1;xref=0.1"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=0.1 SIP/2.0"
    assert [e.params["state"] for e in net.events()] == ["start"]


# -- manual mode -----------------------------------------------------------------------------------


def test_manual_mode_refer_to_has_no_param_and_notify_is_relayed() -> None:
    net = Net(callops_mode="manual")
    call = established(net)
    refer = start_blind(net, call)
    assert refer.get("refer-to") == f"<{CAROL_URI}>"
    # The script decides about NOTIFYs (call_transfer_notify): the core relays them.
    fwd = only_request(net.send(call.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE), BOB)
    assert fwd.method == "NOTIFY" and fwd.body == b"SIP/2.0 100 Trying\r\n"
    assert net.events() == []
    # Nor is a new call linked by itself, even one that carries a match parameter.
    out = msgs(net.send(new_invite(f"{CAROL_URI};osid=0.1"), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI};osid=0.1 SIP/2.0"
    assert net.events() == []


def test_manual_mode_blind_replace_links_the_new_call() -> None:
    net = Net(callops_mode="manual")
    call = established(net)
    start_blind(net, call)
    at_carol = msgs(net.send(new_invite(CAROL_URI), ALICE))[1][1]
    assert net.events() == []
    new = net.proxy.dialogs.by_call_id("call-2@alice")
    assert new is not None
    ctx = net.proxy._invites[new.id]  # the relayed INVITE, as the routing script holds it
    assert net.callops.blind_replace(ctx.server.request, ctx.links, "call-1@alice", None)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "start")]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-2@alice", CAROL_URI,
                                           "ok", "200 OK")]
    # No NOTIFY reaches the proxy's hands in manual mode: the grace timer ends the old call.
    out = net.advance(net.now + 2)
    assert line_set(out) == {(BOB.address, "BYE sip:bob@127.0.0.1:5062 SIP/2.0"),
                             (ALICE.address, "BYE sip:alice@127.0.0.1:5061 SIP/2.0")}


def test_blind_replace_with_a_leg_and_unknown_calls() -> None:
    net = Net(callops_mode="manual")
    established(net)
    at_carol = msgs(net.send(new_invite(CAROL_URI), ALICE))[1][1]
    new = net.proxy.dialogs.by_call_id("call-2@alice")
    assert new is not None
    ctx = net.proxy._invites[new.id]
    req = ctx.server.request
    assert not net.callops.blind_replace(req, ctx.links, "nosuch@x", "caller")
    assert not net.callops.blind_replace(req, ctx.links, "call-2@alice", "caller")  # itself
    assert net.events() == []
    # No transfer was started: the leg is what the script says.
    assert net.callops.blind_replace(req, ctx.links, "call-1@alice", "callee")
    net.send(answer(at_carol, 486, "Busy Here", to_tag="carol-tag"), CAROL)
    assert net.events() == [
        transfer_event("call-1@alice", "callee", "call-2@alice", CAROL_URI, "start"),
        transfer_event("call-1@alice", "callee", "call-2@alice", CAROL_URI, "fail",
                       "486 Busy Here"),
    ]


def test_blind_replace_without_a_leg_or_transfer_says_unknown() -> None:
    net = Net(callops_mode="manual")
    established(net)
    net.send(new_invite(CAROL_URI), ALICE)
    new = net.proxy.dialogs.by_call_id("call-2@alice")
    assert new is not None
    ctx = net.proxy._invites[new.id]
    assert net.callops.blind_replace(ctx.server.request, ctx.links, "call-1@alice", None)
    assert net.events() == [transfer_event("call-1@alice", "unknown", "call-2@alice", CAROL_URI,
                                           "start")]


def test_blind_replace_refuses_a_leg_with_a_line_break() -> None:
    net = Net(callops_mode="manual")
    established(net)
    net.send(new_invite(CAROL_URI), ALICE)
    new = net.proxy.dialogs.by_call_id("call-2@alice")
    assert new is not None
    ctx = net.proxy._invites[new.id]
    with pytest.raises(Exception, match="control character"):
        net.callops.blind_replace(ctx.server.request, ctx.links, "call-1@alice", "x\r\ny")


def test_manual_mode_script_answers_the_notify() -> None:
    """`call_transfer_notify()`: the script hands the NOTIFY to `handle_notify`."""
    net = Net(callops_mode="manual")
    call = established(net)
    start_blind(net, call)
    data = parse_message(call.notify("caller", b"SIP/2.0 100 Trying\r\n"))
    assert isinstance(data, Request)
    replies: list[tuple[int, str]] = []
    handled = net.callops.handle_notify(data, call.dialog,
                                        lambda status, reason: replies.append((status, reason)),
                                        net.now)
    assert handled and replies == [(200, "OK")]
    assert net.events() == [transfer_event("call-1@alice", "caller", "", "", "notify",
                                           "100 Trying")]
    other = parse_message(call.request("caller", "NOTIFY", body=b"x", content_type="text/plain",
                                       extra=["Event: presence"]))
    assert isinstance(other, Request)
    assert not net.callops.handle_notify(other, call.dialog, lambda s, r: replies.append((s, r)),
                                         net.now)
    bad = parse_message(call.notify("caller", b"nope"))
    assert isinstance(bad, Request)
    assert net.callops.handle_notify(bad, call.dialog, lambda s, r: replies.append((s, r)),
                                     net.now)
    assert replies[1:] == [(400, "Bad Request")]


# -- attended transfer -----------------------------------------------------------------------------


def two_calls(net: Net) -> tuple[Call, Call]:
    """D1: Alice → Bob (call-1@alice); D2: Bob → Carol (call-2@bob), Bob's second line."""
    d1 = established(net)
    d2 = established(net, caller=BOB, callee=CAROL, call_id="call-2@bob", caller_tag="bob2-tag",
                     callee_tag="carol-tag", caller_sdp=SDP_B, callee_sdp=SDP_C,
                     to_uri=CAROL_URI)
    return d1, d2


REPLACES_D2 = "call-2%40bob%3Bto-tag%3Dcarol-tag%3Bfrom-tag%3Dbob2-tag"


def test_attended_transfer_end_to_end() -> None:
    net = Net()
    d1, d2 = two_calls(net)
    net.callops.attended_transfer("call-1@alice", "caller", "call-2@bob", "callee", None,
                                  None, None, net.now)
    refer = only(net.take(), ALICE)
    assert normalized(refer.data) == wire(
        "REFER sip:alice@127.0.0.1:5061 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:alice@example.com>;tag=alice-tag",
        "From: <sip:bob@example.com>;tag=bob-tag",
        "Call-ID: call-1@alice",
        "CSeq: 1 REFER",
        "Max-Forwards: 70",
        "Contact: <sip:bob@127.0.0.1:5062>",
        # D2's To URI by default; to-tag = Carol's (the target's own), from-tag = Bob's.
        f"Refer-To: <{CAROL_URI}?Replaces={REPLACES_D2}>",
        "Content-Length: 0",
    )
    assert net.events() == [transfer_event("call-1@alice", "caller", "", CAROL_URI, "start")]
    assert net.send(answer(parse_message(refer.data), 202, "Accepted"), ALICE) == []

    inv = new_invite(CAROL_URI, call_id="call-3@alice",
                     extra=["Replaces: call-2@bob;to-tag=carol-tag;from-tag=bob2-tag"])
    out = msgs(net.send(inv, ALICE))
    at_carol = out[1][1]
    assert at_carol.start_line() == f"INVITE {CAROL_URI} SIP/2.0"
    assert at_carol.get("replaces") == "call-2@bob;to-tag=carol-tag;from-tag=bob2-tag"
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "call-3@alice", CAROL_URI, "start"),
        transfer_event("call-2@bob", "callee", "call-3@alice", CAROL_URI, "start"),
    ]
    only_response(net.send(d1.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE), ALICE)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-3@alice", "",
                                           "notify", "100 Trying")]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-new", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [
        transfer_event("call-1@alice", "caller", "call-3@alice", CAROL_URI, "ok", "200 OK"),
        transfer_event("call-2@bob", "callee", "call-3@alice", CAROL_URI, "ok", "200 OK"),
    ]
    # Carol ends the call she replaced herself (RFC 3891 §3).
    bye = only_request(net.send(d2.request("callee", "BYE"), CAROL), BOB)
    net.send(answer(bye, 200, "OK"), BOB)
    # Alice's final NOTIFY ends D1 for the transferor the proxy spoke for.
    out = net.send(d1.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated"), ALICE)
    assert line_set(out) == {(ALICE.address, "SIP/2.0 200 OK"),
                             (BOB.address, "BYE sip:bob@127.0.0.1:5062 SIP/2.0"),
                             (ALICE.address, "BYE sip:alice@127.0.0.1:5061 SIP/2.0")}
    assert net.events()[0].params["state"] == "notify"
    assert not d1.dialog.active and not d2.dialog.active
    for dest, bye in msgs(out)[1:]:
        assert net.send(answer(bye, 200, "OK"), dest) == []
    assert net.advance(net.now + 10) == []  # D2 was ended by Carol: nothing more to do


def test_attended_transfer_to_the_caller_of_the_second_call() -> None:
    net = Net()
    two_calls(net)
    net.callops.attended_transfer("call-1@alice", "callee", "call-2@bob", "caller",
                                  "sip:bob-line2@127.0.0.1:5062", None, None, net.now)
    refer = only_request(net.take(), BOB)
    assert refer.get("refer-to") == (
        "<sip:bob-line2@127.0.0.1:5062?Replaces="
        "call-2%40bob%3Bto-tag%3Dbob2-tag%3Bfrom-tag%3Dcarol-tag>")
    assert refer.get("cseq") == "2 REFER"
    assert net.events() == [transfer_event("call-1@alice", "callee", "",
                                           "sip:bob-line2@127.0.0.1:5062", "start")]


def test_attended_default_destination_of_the_caller_is_the_from_uri() -> None:
    net = Net()
    two_calls(net)
    net.callops.attended_transfer("call-1@alice", "caller", "call-2@bob", "caller", None,
                                  None, None, net.now)
    refer = only_request(net.take(), ALICE)
    assert refer.get("refer-to") == (
        "<sip:bob@example.com?Replaces=call-2%40bob%3Bto-tag%3Dbob2-tag%3Bfrom-tag%3Dcarol-tag>")


def test_attended_destination_with_headers_gets_an_ampersand() -> None:
    net = Net()
    two_calls(net)
    net.callops.attended_transfer("call-1@alice", "caller", "call-2@bob", "callee",
                                  f"<{CAROL_URI}?Subject=x>", None, None, net.now)
    refer = only_request(net.take(), ALICE)
    assert refer.get("refer-to") == f"<{CAROL_URI}?Subject=x&Replaces={REPLACES_D2}>"


def test_attended_transfer_with_tags_and_destination_for_an_untracked_call() -> None:
    """The recipe with transfer_fromtag / transfer_totag / transfer_destination, which the
    reference can never run (spec §3.1)."""
    net = Net()
    established(net)
    net.callops.attended_transfer("call-1@alice", "caller", "z@elsewhere", None, CAROL_URI,
                                  "from-1", "to-1", net.now)
    refer = only_request(net.take(), ALICE)
    assert refer.get("refer-to") == (
        f"<{CAROL_URI}?Replaces=z%40elsewhere%3Bto-tag%3Dto-1%3Bfrom-tag%3Dfrom-1>")
    assert net.events() == [transfer_event("call-1@alice", "caller", "", CAROL_URI, "start")]
    net.send(answer(refer, 202, "Accepted"), ALICE)
    # The INVITE with Replaces for the call the proxy does not know links the transfer.
    inv = new_invite(CAROL_URI, call_id="call-3@alice",
                     extra=["Replaces: z@elsewhere;to-tag=to-1;from-tag=from-1"])
    at_carol = msgs(net.send(inv, ALICE))[1][1]
    assert at_carol.get("replaces") == "z@elsewhere;to-tag=to-1;from-tag=from-1"
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-3@alice", CAROL_URI,
                                           "start")]
    net.send(answer(at_carol, 200, "OK", to_tag="carol-new", contact=CAROL.contact,
                    body=SDP_C), CAROL)
    assert net.events() == [transfer_event("call-1@alice", "caller", "call-3@alice", CAROL_URI,
                                           "ok", "200 OK")]


def test_attended_transfer_with_tags_of_a_tracked_call() -> None:
    net = Net()
    two_calls(net)
    net.callops.attended_transfer("call-1@alice", "caller", "call-2@bob", None, CAROL_URI,
                                  "bob2-tag", "carol-tag", net.now)
    refer = only_request(net.take(), ALICE)
    assert refer.get("refer-to") == f"<{CAROL_URI}?Replaces={REPLACES_D2}>"
    net.events()
    inv = new_invite(CAROL_URI, call_id="call-3@alice",
                     extra=["Replaces: call-2@bob;to-tag=carol-tag;from-tag=bob2-tag"])
    net.send(inv, ALICE)
    assert [(e.params["callid"], e.params["state"]) for e in net.events()] == [
        ("call-1@alice", "start"), ("call-2@bob", "start")]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("call-1@alice", "caller", "nosuch@x", "callee", None, None, None), 404,
         "Transfer dialog not found"),
        (("nosuch@x", "caller", "call-2@bob", "callee", None, None, None), 404,
         "Dialog not found"),
        (("call-1@alice", "both", "call-2@bob", "callee", None, None, None), 400,
         "Bad input"),
        (("call-1@alice", "caller", "call-2@bob", "both", None, None, None), 400,
         "Bad input"),
        (("call-1@alice", "caller", "z@x", None, CAROL_URI, "f", None), 400,
         "Bad input"),
        (("call-1@alice", "caller", "z@x", None, None, "f", "t"), 400, "Bad input"),
        (("call-1@alice", "caller", "call-2@bob", "callee", "tel:+1555", None, None), 400,
         "Bad input"),
        (("call-1@alice", "caller", "z@x", None, CAROL_URI, "f\r\nX: y", "t"), 400,
         "Bad input"),
    ],
)
def test_attended_transfer_refusals(args: tuple[Any, ...], code: int, message: str) -> None:
    net = Net()
    two_calls(net)
    expect_error(code, message, net.callops.attended_transfer, *args, net.now)
    assert net.take() == [] and net.events() == []
    # Nothing half-done: D1 still takes a transfer.
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    assert only_request(net.take(), ALICE).method == "REFER"


def test_attended_transfer_while_one_is_pending_is_491() -> None:
    net = Net()
    two_calls(net)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    net.take()
    expect_error(491, "Request Pending", net.callops.attended_transfer, "call-1@alice", "caller",
                 "call-2@bob", "callee", None, None, None, net.now)


def test_invite_with_replaces_of_a_tracked_call_is_linked_in_manual_mode_too() -> None:
    net = Net(callops_mode="manual")
    two_calls(net)
    # An endpoint-driven attended transfer: the proxy started nothing on D1.
    inv = new_invite(CAROL_URI, call_id="call-3@alice",
                     extra=["Replaces: call-2@bob;to-tag=carol-tag;from-tag=bob2-tag"])
    at_carol = msgs(net.send(inv, ALICE))[1][1]
    assert net.events() == [
        transfer_event("call-2@bob", "callee", "call-3@alice", CAROL_URI, "start")]
    net.send(answer(at_carol, 603, "Decline", to_tag="carol-new"), CAROL)
    assert net.events() == [
        transfer_event("call-2@bob", "callee", "call-3@alice", CAROL_URI, "fail", "603 Decline")]


@pytest.mark.parametrize(
    "replaces",
    ["call-2@bob;to-tag=bob2-tag;from-tag=bob2-tag", "call-2@bob;to-tag=x;from-tag=y",
     "nosuch@x;to-tag=carol-tag;from-tag=bob2-tag", "garbage"],
)
def test_invite_with_replaces_that_matches_nothing_is_not_linked(replaces: str) -> None:
    net = Net()
    two_calls(net)
    out = msgs(net.send(new_invite(CAROL_URI, call_id="call-3@alice",
                                   extra=[f"Replaces: {replaces}"]), ALICE))
    assert out[1][1].start_line() == f"INVITE {CAROL_URI} SIP/2.0"
    assert net.events() == []


def test_replaces_of_the_caller_leg_names_it() -> None:
    net = Net()
    two_calls(net)
    inv = new_invite("sip:bob@127.0.0.1:5062", call_id="call-3@carol", sender=CAROL,
                     extra=["Replaces: call-2@bob;to-tag=bob2-tag;from-tag=carol-tag"])
    net.send(inv, CAROL)
    assert net.events() == [transfer_event("call-2@bob", "caller", "call-3@carol",
                                           "sip:bob@127.0.0.1:5062", "start")]


def test_untracked_replaces_with_other_tags_is_not_linked() -> None:
    net = Net()
    established(net)
    net.callops.attended_transfer("call-1@alice", "caller", "z@elsewhere", None, CAROL_URI,
                                  "from-1", "to-1", net.now)
    net.take()
    net.events()
    inv = new_invite(CAROL_URI, call_id="call-3@alice",
                     extra=["Replaces: z@elsewhere;to-tag=from-1;from-tag=to-1"])
    net.send(inv, ALICE)
    assert net.events() == []


def test_a_transfer_whose_new_call_never_came_ends_with_the_subscription() -> None:
    """The transferee reports the end of the REFER subscription, but its INVITE did not come
    through us (or lost the match parameter): the dialog must not stay busy for ever."""
    net = Net()
    call = established(net)
    start_blind(net, call)
    out = net.send(call.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated"), ALICE)
    assert only_response(out, ALICE).status == 200
    assert net.events() == [transfer_event("call-1@alice", "caller", "", "", "notify",
                                           "200 OK")]
    assert net.advance(net.now + 10) == []  # not linked: nothing to end
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    assert only_request(net.take(), ALICE).get("cseq") == "2 REFER"


# -- CSeq continuity -------------------------------------------------------------------------------


def test_requests_toward_a_leg_we_sent_a_refer_to_are_shifted_and_answers_mapped_back() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)  # REFER toward Alice took CSeq 1 of Bob's sequence
    # Bob → Alice: re-INVITE with Bob's CSeq 1, relayed as 2; the answer goes back as 1.
    at_alice = relayed_invite(net.send(call.request("callee", "INVITE", body=SDP_B), BOB), BOB,
                              ALICE)
    assert at_alice.get("cseq") == "2 INVITE"
    ok = only_response(net.send(answer(at_alice, 200, "OK", contact=ALICE.contact,
                                       body=SDP_A), ALICE), BOB)
    assert ok.get("cseq") == "1 INVITE"
    ack = only_request(net.send(call.request("callee", "ACK"), BOB), ALICE)
    assert ack.get("cseq") == "2 ACK"
    # Alice → Bob is not shifted: nothing of ours went toward Bob.
    at_bob = only_request(net.send(call.request("caller", "INFO"), ALICE), BOB)
    assert at_bob.get("cseq") == "2 INFO"
    assert only_response(net.send(answer(at_bob, 200, "OK"), BOB), ALICE).get("cseq") == (
        "2 INFO")
    # Bob's BYE: shifted toward Alice, her 200 mapped back.
    bye = only_request(net.send(call.request("callee", "BYE"), BOB), ALICE)
    assert bye.get("cseq") == "3 BYE"
    ok = only_response(net.send(answer(bye, 200, "OK"), ALICE), BOB)
    assert ok.get("cseq") == "2 BYE"
    assert net.events() == []


def test_a_second_refer_toward_the_same_leg_shifts_once_more() -> None:
    net = Net()
    call = established(net)
    refer = start_blind(net, call)
    assert refer.get("cseq") == "1 REFER"
    info = only_request(net.send(call.request("callee", "INFO"), BOB), ALICE)
    assert info.get("cseq") == "2 INFO"  # Bob's 1
    net.send(answer(info, 200, "OK"), ALICE)
    # Fail the first transfer, start another: above everything Alice saw from "Bob".
    net.send(call.notify("caller", b"SIP/2.0 603 Declined\r\n", state="terminated"), ALICE)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    assert only_request(net.take(), ALICE).get("cseq") == "3 REFER"
    info = only_request(net.send(call.request("callee", "INFO"), BOB), ALICE)
    assert info.get("cseq") == "4 INFO"  # Bob's 2


def test_cancel_of_a_shifted_reinvite_carries_the_shifted_cseq() -> None:
    net = Net()
    call = established(net)
    start_blind(net, call)
    data = call.request("callee", "INVITE", body=SDP_B)
    at_alice = relayed_invite(net.send(data, BOB), BOB, ALICE)
    assert at_alice.get("cseq") == "2 INVITE"
    net.send(answer(at_alice, 180, "Ringing", contact=ALICE.contact), ALICE)
    req = parse_message(data)
    assert isinstance(req, Request)
    cancel = (data.split(b"\r\n\r\n")[0].decode()
              .replace("INVITE sip:", "CANCEL sip:", 1)
              .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
              .replace("Content-Type: application/sdp\r\n", "")
              .replace(f"Content-Length: {len(SDP_B)}", "Content-Length: 0") + "\r\n\r\n")
    out = msgs(net.send(cancel.encode(), BOB))
    assert [(d, m.start_line()) for d, m in out] == [
        (BOB.address, "SIP/2.0 200 OK"), (ALICE.address, "CANCEL sip:alice@127.0.0.1:5061 SIP/2.0")]
    assert out[1][1].get("cseq") == "2 CANCEL"
    out = msgs(net.send(answer(at_alice, 487, "Request Terminated"), ALICE))
    assert [(d, m.start_line()) for d, m in out] == [
        (ALICE.address, "ACK sip:alice@127.0.0.1:5061 SIP/2.0"),
        (BOB.address, "SIP/2.0 487 Request Terminated")]
    assert out[0][1].get("cseq") == "2 ACK"
    assert out[1][1].get("cseq") == "1 INVITE"


# -- hold / unhold ---------------------------------------------------------------------------------



def test_hold_both_legs() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    out = net.take()
    assert [d.dest for d in out] == [ALICE.address, BOB.address]  # caller first
    to_alice = sdp("bob", 21, 5000, "inactive")  # what Alice last got, one version up
    assert normalized(out[0].data) == wire(
        "INVITE sip:alice@127.0.0.1:5061 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:alice@example.com>;tag=alice-tag",
        "From: <sip:bob@example.com>;tag=bob-tag",
        "Call-ID: call-1@alice",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        "Contact: <sip:bob@127.0.0.1:5062>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(to_alice)}",
        body=to_alice,
    )
    to_bob = sdp("alice", 11, 4000, "inactive")
    assert normalized(out[1].data) == wire(
        "INVITE sip:bob@127.0.0.1:5062 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "To: <sip:bob@example.com>;tag=bob-tag",
        "From: <sip:alice@example.com>;tag=alice-tag",
        "Call-ID: call-1@alice",
        "CSeq: 2 INVITE",  # Alice's INVITE was 1
        "Max-Forwards: 70",
        "Contact: <sip:alice@127.0.0.1:5061>",
        "Content-Type: application/sdp",
        f"Content-Length: {len(to_bob)}",
        body=to_bob,
    )
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "start")]
    at_alice, at_bob = (parse_message(d.data) for d in out)
    assert isinstance(at_alice, Request) and isinstance(at_bob, Request)

    # Each answer is ACKed by the proxy and not relayed to the other party.
    ack = only(net.send(answer(at_alice, 200, "OK", contact=ALICE.contact,
                               body=sdp("alice", 11, 4000, "inactive")), ALICE), ALICE)
    assert normalized(ack.data) == wire(
        "ACK sip:alice@127.0.0.1:5061 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK*",
        "From: <sip:bob@example.com>;tag=bob-tag",
        "Call-ID: call-1@alice",
        "Max-Forwards: 70",
        "To: <sip:alice@example.com>;tag=alice-tag",
        "CSeq: 1 ACK",
        "Content-Length: 0",
    )
    assert parse_message(ack.data).top_via.branch != at_alice.top_via.branch  # type: ignore[union-attr]
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "ok")]
    ack = accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    assert ack.get("cseq") == "2 ACK" and ack.uri == BOB.contact
    assert net.events() == [hold_event("call-1@alice", "callee", "hold", "ok")]

    expect_error(480, "Both dialog legs are on hold", net.callops.hold, "call-1@alice", None,
                 None, net.now)
    expect_error(480, "Both dialog legs are on hold", net.callops.hold, "call-1@alice", "both",
                 None, net.now)
    expect_error(480, "Both dialog legs are on hold", net.callops.hold, "call-1@alice",
                 "caller", None, net.now)
    assert net.take() == [] and net.events() == []

    # Unhold: callee first, each with the SDP it had before, one version further still.
    net.callops.unhold("call-1@alice", None, None, net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert at_bob.body == sdp("alice", 12, 4000)
    assert at_bob.get("cseq") == "3 INVITE"
    assert at_alice.body == sdp("bob", 22, 5000)
    assert at_alice.get("cseq") == "2 INVITE"
    assert net.events() == [hold_event("call-1@alice", "callee", "unhold", "start"),
                            hold_event("call-1@alice", "caller", "unhold", "start")]
    accept(net, at_alice, ALICE, sdp("alice", 12, 4000))
    accept(net, at_bob, BOB, sdp("bob", 22, 5000))
    assert net.events() == [hold_event("call-1@alice", "caller", "unhold", "ok"),
                            hold_event("call-1@alice", "callee", "unhold", "ok")]
    expect_error(480, "No dialog legs on hold", net.callops.unhold, "call-1@alice", None, None,
                 net.now)
    # And again from the start.
    net.callops.hold("call-1@alice", "both", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 23, 5000, "inactive")
    assert at_bob.body == sdp("alice", 13, 4000, "inactive")


def test_unhold_with_nothing_on_hold_is_480() -> None:
    net = Net()
    established(net)
    for leg in (None, "both", "caller", "callee"):
        expect_error(480, "No dialog legs on hold", net.callops.unhold, "call-1@alice", leg,
                     None, net.now)
    assert net.take() == [] and net.events() == []


def test_hold_of_the_caller_mutes_it_and_lets_it_hear() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "caller", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 21, 5000, "sendonly")  # Bob keeps talking to Alice
    assert at_bob.body == sdp("alice", 11, 4000, "recvonly")
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "start")]
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "recvonly"))
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "sendonly"))
    net.events()
    # Holding the callee as well ends in inactive both ways.
    net.callops.hold("call-1@alice", "callee", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 22, 5000, "inactive")
    assert at_bob.body == sdp("alice", 12, 4000, "inactive")
    accept(net, at_alice, ALICE, sdp("alice", 12, 4000, "inactive"))
    accept(net, at_bob, BOB, sdp("bob", 22, 5000, "inactive"))
    net.events()
    # Resuming the caller leaves the callee's hold: back to the callee-only directions.
    net.callops.unhold("call-1@alice", "caller", None, net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert at_bob.body == sdp("alice", 13, 4000, "sendonly")
    assert at_alice.body == sdp("bob", 23, 5000, "recvonly")
    accept(net, at_bob, BOB, sdp("bob", 23, 5000, "recvonly"))
    accept(net, at_alice, ALICE, sdp("alice", 13, 4000, "sendonly"))
    net.events()
    net.callops.unhold("call-1@alice", None, None, net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert at_bob.body == sdp("alice", 14, 4000)
    assert at_alice.body == sdp("bob", 24, 5000)


def test_hold_of_the_callee() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "callee", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 21, 5000, "recvonly")
    assert at_bob.body == sdp("alice", 11, 4000, "sendonly")
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "start")]
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "recvonly"))
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "sendonly"))
    assert net.events() == [hold_event("call-1@alice", "callee", "hold", "ok"),
                            hold_event("call-1@alice", "caller", "hold", "ok")]
    expect_error(480, "Both dialog legs are on hold", net.callops.hold, "call-1@alice",
                 "callee", None, net.now)
    net.callops.unhold("call-1@alice", "callee", None, net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert at_bob.body == sdp("alice", 12, 4000)
    assert at_alice.body == sdp("bob", 22, 5000)


def test_hold_rejected_reports_fail_and_leaves_the_leg_as_it_was() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    net.events()
    out = msgs(net.send(answer(at_alice, 488, "Not Acceptable Here"), ALICE))
    assert [(d, m.start_line()) for d, m in out] == [
        (ALICE.address, "ACK sip:alice@127.0.0.1:5061 SIP/2.0")]  # the transaction's ACK
    assert out[0][1].get("cseq") == "1 ACK"
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "fail")]
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    assert net.events() == [hold_event("call-1@alice", "callee", "hold", "ok")]
    # Only the callee is on hold; holding again retries the caller alone.
    net.callops.hold("call-1@alice", None, None, net.now)
    (at_alice,) = reinvites(net, ALICE)
    assert at_alice.get("cseq") == "2 INVITE"
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "start")]


def test_hold_timeout_reports_fail() -> None:
    net = Net()
    established(net)
    start = net.now
    net.callops.hold("call-1@alice", "both", None, net.now)
    reinvites(net, ALICE, BOB)
    net.events()
    net.advance(start + 32)
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "fail"),
                            hold_event("call-1@alice", "callee", "hold", "fail")]
    net.callops.hold("call-1@alice", "both", None, net.now)  # nothing was put on hold
    reinvites(net, ALICE, BOB)


def test_2xx_retransmission_is_acked_again() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, _ = reinvites(net, ALICE, BOB)
    net.events()
    ok = answer(at_alice, 200, "OK", contact=ALICE.contact, body=sdp("alice", 11, 4000))
    first = only(net.send(ok, ALICE), ALICE)
    again = only(net.send(ok, ALICE), ALICE)
    assert again.data == first.data
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "ok")]


def test_hold_while_a_reinvite_of_ours_is_pending_is_491() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    reinvites(net, ALICE, BOB)
    net.events()
    for leg in (None, "caller", "callee"):
        expect_error(491, "Request Pending", net.callops.hold, "call-1@alice", leg, None,
                     net.now)
    # Nothing is on hold until an answer says so.
    expect_error(480, "No dialog legs on hold", net.callops.unhold, "call-1@alice", None, None,
                 net.now)
    assert net.take() == [] and net.events() == []


def test_offer_versions_step_by_one_after_a_refused_request() -> None:
    """RFC 3264 §8: each offer to a leg is one version above the last one it saw. A command
    refused with 491 must not use up a version."""
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "callee", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 21, 5000, "recvonly")
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "sendonly"))
    # Bob has not answered yet: holding the caller is refused ...
    expect_error(491, "Request Pending", net.callops.hold, "call-1@alice", "caller", None,
                 net.now)
    assert net.take() == []
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "recvonly"))
    net.events()
    # ... and the next offer to Alice is 22, the one after the 21 she saw.
    net.callops.hold("call-1@alice", "caller", None, net.now)
    at_alice, _ = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 22, 5000, "inactive")


def test_unhold_of_a_leg_that_is_not_held_does_nothing() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "callee", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, SDP_A)
    accept(net, at_bob, BOB, SDP_B)
    net.events()
    # Only the callee is held: resuming the caller changes no direction on either leg.
    expect_error(480, "No dialog legs on hold", net.callops.unhold, "call-1@alice", "caller",
                 None, net.now)
    assert net.take() == [] and net.events() == []


def test_hold_without_sdp_to_offer_is_a_server_error() -> None:
    net = Net()
    established(net, caller_sdp=b"", callee_sdp=b"")
    err = expect_error(500, "Server error", net.callops.hold, "call-1@alice", None, None,
                       net.now)
    assert err.detail == "no usable SDP to offer to the caller"
    assert net.take() == [] and net.events() == []


def test_hold_with_an_sdp_that_cannot_be_rewritten_is_a_server_error() -> None:
    net = Net()
    established(net, callee_sdp=b"this is not SDP\r\n")
    err = expect_error(500, "Server error", net.callops.hold, "call-1@alice", "callee",
                       None, net.now)
    assert err.detail == "no usable SDP to offer to the caller"
    assert net.take() == [] and net.events() == []


def unreachable(leg: Any) -> None:
    """A leg the proxy has no way to reach any more."""
    leg.address = None
    leg.contact = "sip:gone@nowhere.invalid"


def test_hold_that_cannot_be_sent_fails() -> None:
    net = Net()
    call = established(net)
    unreachable(call.dialog.callee)
    net.callops.hold("call-1@alice", None, None, net.now)
    (at_alice,) = reinvites(net, ALICE)  # the caller's still goes out
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "fail")]
    accept(net, at_alice, ALICE, SDP_A)
    net.events()
    # Nothing at all could go: the command fails.
    err = expect_error(500, "Server error", net.callops.hold, "call-1@alice", "callee", None,
                       net.now)
    assert err.detail == "the re-INVITE could not be sent"
    assert net.take() == []
    assert net.events() == [hold_event("call-1@alice", "callee", "hold", "start"),
                            hold_event("call-1@alice", "callee", "hold", "fail")]


def test_refer_that_cannot_be_sent_fails_and_leaves_the_dialog_idle() -> None:
    net = Net()
    call = established(net)
    unreachable(call.dialog.callee)
    err = expect_error(500, "Server error", net.callops.transfer, "call-1@alice", "callee",
                       CAROL_URI, net.now)
    assert err.detail == "the REFER could not be sent"
    assert net.take() == []
    assert net.events() == [transfer_event("call-1@alice", "callee", "", CAROL_URI, "fail")]
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    assert only_request(net.take(), ALICE).method == "REFER"


@pytest.mark.parametrize("leg", ["bogus", "Caller", "", "bold"])
def test_hold_with_a_bad_leg_is_420(leg: str) -> None:
    net = Net()
    established(net)
    expect_error(420, "Bad leg", net.callops.hold, "call-1@alice", leg, None, net.now)
    expect_error(420, "Bad leg", net.callops.unhold, "call-1@alice", leg, None, net.now)
    assert net.take() == [] and net.events() == []


def test_hold_of_an_unknown_call_is_404() -> None:
    net = Net()
    established(net)
    expect_error(404, "Dialog not found", net.callops.hold, "nosuch@x", None, None, net.now)
    expect_error(404, "Dialog not found", net.callops.unhold, "nosuch@x", None, None, net.now)


def test_hold_of_a_call_not_confirmed_is_410() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.ring()
    expect_error(410, "Dialog not ready", net.callops.hold, "call-1@alice", None, None, net.now)
    call.answer()  # 200 relayed, no ACK yet
    expect_error(410, "Dialog not ready", net.callops.hold, "call-1@alice", None, None, net.now)
    call.ack()
    net.callops.hold("call-1@alice", None, None, net.now)
    reinvites(net, ALICE, BOB)


def test_hold_headers_string_goes_to_both_legs() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "both", "X-Hold-Reason: test\r\nX-Other:  two \r\n",
                     net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    for m in (at_alice, at_bob):
        names = [name for _, name, _ in m.headers]
        assert names[-5:] == ["Contact", "Content-Type", "X-Hold-Reason", "X-Other",
                              "Content-Length"]
        assert m.get("x-hold-reason") == "test" and m.get("x-other") == "two"


def test_hold_headers_list_goes_caller_then_callee() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", "both", ["X-To-Caller: 1", "X-To-Callee: 2\\r\\nX-B: 3"],
                     net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert (at_alice.get("x-to-caller"), at_alice.get("x-to-callee")) == ("1", None)
    assert (at_bob.get("x-to-caller"), at_bob.get("x-to-callee"), at_bob.get("x-b")) == (
        None, "2", "3")
    accept(net, at_alice, ALICE, SDP_A)
    accept(net, at_bob, BOB, SDP_B)
    # An empty caller entry: headers for the callee only (unhold goes callee first).
    net.callops.unhold("call-1@alice", "both", ["", "X-Only-Callee: yes\r\n"], net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert at_bob.get("x-only-callee") == "yes"
    assert at_alice.get("x-only-callee") is None


@pytest.mark.parametrize(
    "headers",
    [
        "X-A: 1\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKevil",
        "X-A: 1\\r\\nContact: <sip:evil@10.0.0.1>",
        "X-A: 1\r\n\r\nINVITE sip:evil@10.0.0.1 SIP/2.0",
        "X-A: 1\rRoute: <sip:10.0.0.1;lr>",
        "X-A: 1\x00",
        "no colon here",
        ": empty name",
        "Bad Name: x",
        "Content-Length: 0",
        "call-id: x",
        "CSEQ: 9 INVITE",
        # Compact forms of what the proxy writes itself: a second Content-Length (`l`) would
        # let a TCP receiver read the rest of the body as another message.
        "l: 5",
        "i: other@x",
        "v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKevil",
        "m: <sip:evil@10.0.0.1>",
        "c: text/plain",
        "e: gzip",
        "Record-Route: <sip:10.0.0.1;lr>",
        "X-Ünïcode: 1",
        "X-A: \x7f",
        ["X-A: 1", "X-B: 2", "X-C: 3"],
        ["X-A: 1", 7],
    ],
)
def test_hold_headers_that_could_inject_are_refused(headers: Any) -> None:
    net = Net()
    established(net)
    err = expect_error(400, "Bad input", net.callops.hold, "call-1@alice", "both",
                       headers, net.now)
    assert err.detail is not None and err.detail.startswith("headers:")
    assert net.take() == [] and net.events() == []


def glare(net: Net, reinvite: Request, ua: UA) -> None:
    """`ua` refuses our re-INVITE with 491; its INVITE transaction gets the hop-by-hop ACK."""
    out = msgs(net.send(answer(reinvite, 491, "Request Pending"), ua))
    assert [(d, m.start_line()) for d, m in out] == [(ua.address, f"ACK {ua.contact} SIP/2.0")]


def test_glare_toward_the_caller_is_retried_within_two_seconds() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    net.events()
    glare(net, at_alice, ALICE)
    assert net.events() == []  # no event for a 491 that will be retried
    # We speak for Bob, who does not own the Call-ID: 0 to 2 s (RFC 3261 §14.1).
    due = net.proxy.next_deadline()
    assert due is not None and net.now <= due < net.now + 2.0
    assert net.advance(due - 0.001) == []
    out = net.advance(due)
    retry = only_request(out, ALICE)
    assert retry.method == "INVITE"
    assert retry.get("cseq") == "2 INVITE"
    assert retry.body == at_alice.body  # the same offer: the 491 changed nothing
    assert retry.top_via.branch != at_alice.top_via.branch
    accept(net, retry, ALICE, sdp("alice", 11, 4000, "inactive"))
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "ok")]
    expect_error(480, "Both dialog legs are on hold", net.callops.hold, "call-1@alice", None,
                 None, net.now)


def test_glare_toward_the_callee_waits_2_1_to_4_seconds() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "inactive"))
    net.events()
    glare(net, at_bob, BOB)
    # We speak for Alice, the owner of the Call-ID.
    due = net.proxy.next_deadline()
    assert due is not None and net.now + 2.1 <= due < net.now + 4.0
    retry = only_request(net.advance(due), BOB)
    assert retry.get("cseq") == "3 INVITE"
    assert retry.body == at_bob.body
    accept(net, retry, BOB, sdp("bob", 21, 5000, "inactive"))
    assert net.events() == [hold_event("call-1@alice", "callee", "hold", "ok")]


def test_glare_is_given_up_after_three_retries() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    net.events()
    current = at_alice
    for cseq in (2, 3, 4):
        glare(net, current, ALICE)
        due = net.proxy.next_deadline()
        assert due is not None
        current = only_request(net.advance(due), ALICE)
        assert current.get("cseq") == f"{cseq} INVITE"
        assert net.events() == []
    glare(net, current, ALICE)
    assert net.events() == [hold_event("call-1@alice", "caller", "hold", "fail")]
    # The caller is not on hold: a new hold goes to it alone.
    net.callops.hold("call-1@alice", None, None, net.now)
    (at_alice,) = reinvites(net, ALICE)
    assert at_alice.get("cseq") == "5 INVITE"


def test_glare_retry_is_built_on_the_sdp_the_leg_saw_meanwhile() -> None:
    """Alice refused our hold because she was sending a re-INVITE of her own; Bob's answer to
    it reached her with a newer SDP version before our retry."""
    net = Net()
    call = established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 21, 5000, "inactive")
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    glare(net, at_alice, ALICE)
    # Alice's own re-INVITE, relayed to Bob after our re-INVITE to him (shifted by one).
    fwd = relayed_invite(net.send(call.request("caller", "INVITE", body=sdp("alice", 11, 4000)),
                                  ALICE), ALICE, BOB)
    assert fwd.get("cseq") == "3 INVITE"
    ok = only_response(net.send(answer(fwd, 200, "OK", contact=BOB.contact,
                                       body=sdp("bob", 22, 5000)), BOB), ALICE)
    assert ok.get("cseq") == "2 INVITE" and ok.body == sdp("bob", 22, 5000)
    only_request(net.send(call.request("caller", "ACK"), ALICE), BOB)
    due = net.proxy.next_deadline()
    assert due is not None
    retry = only_request(net.advance(due), ALICE)
    assert retry.body == sdp("bob", 23, 5000, "inactive")  # not 21: Alice has seen 22


# -- hold through other proxies, and the call afterwards -------------------------------------------


def test_hold_reinvite_and_ack_follow_the_route_set() -> None:
    net = Net()
    at_bob = msgs(net.send(invite_via_p1("call-1@alice", 1), P1))[1][1]
    net.send(answer(at_bob, 200, "OK", to_tag="bob-tag", contact=BOB.contact, body=SDP_B,
                    record_routes=[P2_RR, OUR_RR, P1_RR]), P2)
    ack = request("ACK", BOB.contact, ALICE, call_id="call-1@alice", from_uri=ALICE.aor,
                  from_tag="alice-tag", to_uri=BOB.aor, to_tag="bob-tag", cseq=1,
                  routes=[OUR_RR, P2_RR])
    net.send(ack, P1)
    net.events()

    net.callops.hold("call-1@alice", None, None, net.now)
    out = msgs(net.take())
    assert [(d, m.start_line()) for d, m in out] == [
        (P1, f"INVITE {ALICE.contact} SIP/2.0"), (P2, f"INVITE {BOB.contact} SIP/2.0")]
    to_alice, to_bob = (m for _, m in out)
    assert to_alice.get_all("route") == [P1_RR]
    assert to_bob.get_all("route") == [P2_RR]
    ack_alice = only_request(net.send(answer(to_alice, 200, "OK", contact=ALICE.contact,
                                             body=SDP_A), P1), P1)
    assert ack_alice.method == "ACK" and ack_alice.uri == ALICE.contact
    assert ack_alice.get_all("route") == [P1_RR]
    assert ack_alice.get("cseq") == "1 ACK"
    ack_bob = only_request(net.send(answer(to_bob, 200, "OK", contact=BOB.contact,
                                           body=SDP_B), P2), P2)
    assert ack_bob.get_all("route") == [P2_RR]
    assert ack_bob.get("cseq") == "2 ACK"


def test_call_continues_normally_after_hold_and_unhold() -> None:
    """Issue 3: re-INVITE and BYE from both sides after a hold and an unhold; every request
    toward a leg keeps that leg's CSeq increasing, every answer gets its own CSeq back."""
    net = Net()
    call = established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert (at_alice.get("cseq"), at_bob.get("cseq")) == ("1 INVITE", "2 INVITE")
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "inactive"))
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    net.callops.unhold("call-1@alice", None, None, net.now)
    at_bob, at_alice = reinvites(net, BOB, ALICE)
    assert (at_alice.get("cseq"), at_bob.get("cseq")) == ("2 INVITE", "3 INVITE")
    accept(net, at_bob, BOB, sdp("bob", 22, 5000))
    accept(net, at_alice, ALICE, sdp("alice", 12, 4000))
    assert [e.params["state"] for e in net.events()] == ["start", "start", "ok", "ok"] * 2

    # Alice re-INVITEs Bob (her CSeq 2): Bob got 1 and 2 and 3 from "Alice" → 4.
    fwd = relayed_invite(net.send(call.request("caller", "INVITE", body=sdp("alice", 13, 4000)),
                                  ALICE), ALICE, BOB)
    assert fwd.get("cseq") == "4 INVITE" and fwd.body == sdp("alice", 13, 4000)
    ok = only_response(net.send(answer(fwd, 200, "OK", contact=BOB.contact,
                                       body=sdp("bob", 23, 5000)), BOB), ALICE)
    assert ok.get("cseq") == "2 INVITE" and ok.body == sdp("bob", 23, 5000)
    ack = only_request(net.send(call.request("caller", "ACK"), ALICE), BOB)
    assert ack.get("cseq") == "4 ACK"

    # Bob re-INVITEs Alice (his CSeq 1): Alice got 1 and 2 from "Bob" → 3.
    fwd = relayed_invite(net.send(call.request("callee", "INVITE", body=sdp("bob", 24, 5000)),
                                  BOB), BOB, ALICE)
    assert fwd.get("cseq") == "3 INVITE"
    ok = only_response(net.send(answer(fwd, 200, "OK", contact=ALICE.contact,
                                       body=sdp("alice", 14, 4000)), ALICE), BOB)
    assert ok.get("cseq") == "1 INVITE"
    ack = only_request(net.send(call.request("callee", "ACK"), BOB), ALICE)
    assert ack.get("cseq") == "3 ACK"

    # A hold now starts from what each side last sent, above every version seen.
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    assert at_alice.body == sdp("bob", 25, 5000, "inactive")
    assert at_bob.body == sdp("alice", 15, 4000, "inactive")
    assert (at_alice.get("cseq"), at_bob.get("cseq")) == ("4 INVITE", "5 INVITE")
    accept(net, at_alice, ALICE, sdp("alice", 15, 4000, "inactive"))
    accept(net, at_bob, BOB, sdp("bob", 25, 5000, "inactive"))

    # Bob hangs up: BYE with his CSeq 2 reaches Alice as 5, her 200 goes back as 2.
    bye = only_request(net.send(call.request("callee", "BYE"), BOB), ALICE)
    assert bye.get("cseq") == "5 BYE"
    ok = only_response(net.send(answer(bye, 200, "OK"), ALICE), BOB)
    assert ok.get("cseq") == "2 BYE"
    assert not call.dialog.active


def test_caller_bye_after_hold_is_shifted_toward_the_callee() -> None:
    net = Net()
    call = established(net)
    net.callops.hold("call-1@alice", "callee", None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, SDP_A)
    accept(net, at_bob, BOB, SDP_B)
    bye = only_request(net.send(call.request("caller", "BYE"), ALICE), BOB)
    assert bye.get("cseq") == "3 BYE"  # Alice's 2, after our 2 toward Bob
    assert only_response(net.send(answer(bye, 200, "OK"), BOB), ALICE).get("cseq") == "2 BYE"


def test_transfer_after_hold_continues_the_shifted_sequence() -> None:
    net = Net()
    call = established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, SDP_A)
    accept(net, at_bob, BOB, SDP_B)
    net.events()
    refer = start_blind(net, call)
    assert refer.get("cseq") == "2 REFER"  # after the re-INVITE (1) toward Alice
    net.send(call.notify("caller", b"SIP/2.0 100 Trying\r\n"), ALICE)
    assert [e.params["state"] for e in net.events()] == ["notify"]


# -- remote target refresh and the ACK of our own re-INVITE (RFC 3261 §12.2.1.2, §13.2.2.4) --


def test_remote_target_is_refreshed_by_the_2xx_of_a_reinvite() -> None:
    net = Net()
    call = established(net)
    fwd = relayed_invite(net.send(call.request("callee", "INVITE", body=SDP_B), BOB), BOB, ALICE)
    net.send(answer(fwd, 200, "OK", contact="sip:alice@127.0.0.1:5099", body=SDP_A), ALICE)
    net.send(call.request("callee", "ACK"), BOB)
    net.callops.transfer("call-1@alice", "caller", CAROL_URI, net.now)
    refer = only_request(net.take(), Address("udp", "127.0.0.1", 5099))
    assert refer.uri == "sip:alice@127.0.0.1:5099"


def test_ack_of_a_hold_goes_to_the_contact_of_the_2xx() -> None:
    net = Net()
    established(net)
    net.callops.hold("call-1@alice", None, None, net.now)
    at_alice, _ = reinvites(net, ALICE, BOB)
    out = net.send(answer(at_alice, 200, "OK", contact="sip:alice@127.0.0.1:5099",
                          body=SDP_A), ALICE)
    ack = only_request(out, Address("udp", "127.0.0.1", 5099))
    assert ack.uri == "sip:alice@127.0.0.1:5099"


def test_a_transferee_that_never_places_the_new_call_fails_the_transfer() -> None:
    """Peers that vanish (issue 6): the REFER was accepted, then nothing; after the guard
    time the transfer fails with 408 and the dialog can be transferred again."""
    net = Net()
    call = established(net)
    start_blind(net, call)
    net.advance(net.now + 63.0)
    assert net.events() == []
    net.advance(net.now + 2.0)
    assert net.events() == [transfer_event("call-1@alice", "caller", "", CAROL_URI, "fail",
                                           "408 Request Timeout")]
    start_blind(net, call)  # idle again: accepted


def test_the_guard_does_not_fire_once_the_new_call_is_linked() -> None:
    net = Net()
    call = established(net)
    refer = start_blind(net, call)
    target = (refer.get("refer-to") or "").strip("<>")
    net.send(new_invite(target), ALICE)
    net.events()
    net.advance(net.now + 100.0)
    assert [e.params["state"] for e in net.events()] == ["fail"]  # the new INVITE timed out

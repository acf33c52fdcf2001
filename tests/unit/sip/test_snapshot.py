"""Dialog snapshots and restore (issue 5: a restarted worker gets its confirmed dialogs back),
in the sans-IO core.

A dialog is snapshot in one proxy (`Dialog.snapshot` / `Proxy.take_dirty`), sent through
msgpack as the Ray runtime sends it to the controller, and restored into a fresh proxy of the
same worker (`Proxy.restore_dialog`), whose clock reads something else entirely. The restored
proxy must then behave toward both parties exactly as the first one would have: in-dialog
requests relayed with the CSeq shift of the requests the proxy had sent, hold state and SDP
offer versions kept, a blind transfer run to its end, the lifetime counted on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest

from switchboard.sip import Request
from switchboard.sip.dialog import Dialog, DialogState, DialogStateChanged
from tests.unit.kit.callops import (
    ALICE,
    BOB,
    CAROL,
    CAROL_URI,
    SDP_A,
    SDP_B,
    SDP_C,
    Call,
    Net,
    accept,
    answer,
    established,
    expect_error,
    hold_event,
    invite_via_p1,
    lines_of,
    msgs,
    new_invite,
    normalized,
    only_request,
    only_response,
    reinvites,
    request,
    sdp,
    start_blind,
    transfer_event,
)
from tests.unit.kit.proxy import OUR_RR, P1, P1_RR

CALL_ID = "call-1@alice"


def through_msgpack(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the controller keeps and hands back: msgpack bytes, decoded again."""
    data = msgpack.packb(snapshot, use_bin_type=True)
    out: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return out


def plain(value: Any, path: str = "snapshot") -> None:
    """Only str, int, bytes, list and dict (with str keys) anywhere inside."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            plain(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            plain(item, f"{path}[{i}]")
    else:
        assert type(value) in (str, int, bytes), f"{path}: {type(value).__name__} {value!r}"


def restart(net: Net, call: Call, *, elapsed: float = 0.0, at: float = 5000.0
            ) -> tuple[Net, Call]:
    """The worker crashes and comes back: a fresh proxy (same worker id, another clock) with
    the dialog restored from its snapshot; the parties go on where they were."""
    snapshot = through_msgpack(call.dialog.snapshot(net.now))
    plain(snapshot)
    fresh = Net()
    fresh.now = at
    restored = fresh.proxy.restore_dialog(snapshot, fresh.now, elapsed)
    assert restored is not None
    # Restoring raises no event and sends nothing.
    assert fresh.proxy.events == [] and fresh.take() == []
    return fresh, dataclasses.replace(call, net=fresh, cseq=dict(call.cseq))


def held(net: Net, call: Call) -> None:
    """Both legs put on hold and answered (the proxy's own re-INVITEs: CSeq 1 toward Alice in
    Bob's sequence, 2 toward Bob in Alice's)."""
    net.callops.hold(call.call_id, None, None, net.now)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "inactive"))
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "inactive"))
    assert net.events() == [hold_event(CALL_ID, "caller", "hold", "start"),
                            hold_event(CALL_ID, "callee", "hold", "start"),
                            hold_event(CALL_ID, "caller", "hold", "ok"),
                            hold_event(CALL_ID, "callee", "hold", "ok")]


# -- the snapshot ------------------------------------------------------------------------------


def test_snapshot_holds_what_the_dialog_needs_as_plain_data() -> None:
    net = Net()
    call = established(net)
    held(net, call)
    net.now += 30.0
    snapshot = call.dialog.snapshot(net.now)
    plain(snapshot)
    assert through_msgpack(snapshot) == snapshot
    assert {k: v for k, v in snapshot.items() if k not in ("caller", "callee")} == {
        "v": 1, "id": "0.1", "call_id": CALL_ID, "from_uri": ALICE.aor, "to_uri": BOB.aor,
        "state": 4, "age_ms": 30_000, "lifetime_ms": (43200 - 30) * 1000, "hold": [12, 12]}
    assert snapshot["caller"] == {
        "tag": "alice-tag", "contact": ALICE.contact, "route_set": [], "cseq": 1,
        "cseq_offset": 1, "sdp": SDP_A, "sdp_version_sent": 21,
        "address": ["udp", "127.0.0.1", 5061], "local": ["udp", "127.0.0.1", 5060]}
    assert snapshot["callee"] == {
        "tag": "bob-tag", "contact": BOB.contact, "route_set": [], "cseq": 0,
        "cseq_offset": 1, "sdp": SDP_B, "sdp_version_sent": 11,
        "address": ["udp", "127.0.0.1", 5062], "local": ["udp", "127.0.0.1", 5060]}


def test_a_dialog_comes_back_as_it_was() -> None:
    net = Net()
    call = established(net)
    held(net, call)
    net.now += 60.0
    before = call.dialog
    fresh, again = restart(net, call, elapsed=2.5)
    after = again.dialog
    assert after is not before
    for name in ("id", "call_id", "from_uri", "to_uri", "state", "caller", "callee"):
        assert getattr(after, name) == getattr(before, name), name
    assert fresh.proxy.dialogs.by_id("0.1") is after
    # 60 s old when snapshot, restored 2.5 s later, by another clock.
    assert after.start_time == pytest.approx(fresh.now - 62.5)
    assert after.timeout_at == pytest.approx(fresh.now + 43200 - 62.5)
    assert (after.caller.hold_mask, after.callee.hold_mask) == (12, 12)
    assert fresh.callops.ops_of(after).transfer_leg == ""
    assert not after.caller.reinvite_pending
    assert fresh.proxy.statistics()["dialog:restored_dialogs"] == 1


# -- in-dialog requests on a restored dialog ---------------------------------------------------------


def test_in_dialog_requests_keep_their_cseq_shift_across_the_restart() -> None:
    """The proxy's hold re-INVITEs took a CSeq of each party's sequence; after the restart,
    requests relayed toward either party are shifted as before and answers mapped back."""
    net = Net()
    call = established(net)
    held(net, call)
    fresh, call = restart(net, call)
    # Alice → Bob: a re-INVITE (her CSeq 2) reaches Bob as 3; his answer goes back as 2.
    out = msgs(fresh.send(call.request("caller", "INVITE", body=SDP_A), ALICE))
    assert [d for d, _ in out] == [ALICE.address, BOB.address]
    at_bob = out[1][1]
    assert isinstance(at_bob, Request) and at_bob.get("cseq") == "3 INVITE"
    assert at_bob.get_all("route") == []
    ok = only_response(fresh.send(answer(at_bob, 200, "OK", contact=BOB.contact, body=SDP_B),
                                  BOB), ALICE)
    assert ok.get("cseq") == "2 INVITE"
    assert only_request(fresh.send(call.request("caller", "ACK"), ALICE), BOB).get(
        "cseq") == "3 ACK"
    # Bob → Alice: his BYE (CSeq 1) reaches Alice as 2, her 200 goes back as 1.
    bye = only_request(fresh.send(call.request("callee", "BYE"), BOB), ALICE)
    assert bye.get("cseq") == "2 BYE" and bye.uri == ALICE.contact
    assert only_response(fresh.send(answer(bye, 200, "OK"), ALICE), BOB).get("cseq") == "1 BYE"
    assert not call.dialog.active
    assert [e for e in fresh.proxy.events if isinstance(e, DialogStateChanged)] == [
        DialogStateChanged("0.1", CALL_ID, "alice-tag", "bob-tag", DialogState.CONFIRMED, DialogState.DELETED)]


def test_a_restored_dialog_follows_its_route_set() -> None:
    """Route sets on both sides (a proxy in front of each party) come back too."""
    net = Net()
    at_bob = msgs(net.send(invite_via_p1(CALL_ID, 5), P1))[1][1]
    net.send(answer(at_bob, 200, "OK", to_tag="bob-tag", contact=BOB.contact, body=SDP_B), BOB)
    ack = request("ACK", BOB.contact, ALICE, call_id=CALL_ID, from_uri=ALICE.aor,
                  from_tag="alice-tag", to_uri=BOB.aor, to_tag="bob-tag", cseq=5,
                  routes=[OUR_RR])
    only_request(net.send(ack, P1), BOB)
    call = Call(net, cseq={"caller": 5, "callee": 0})
    fresh, call = restart(net, call)
    assert call.dialog.caller.route_set == (P1_RR,)
    # Our BYE toward Alice goes through P1, with its Route.
    fresh.proxy.end_dialog(CALL_ID, fresh.now)
    out = msgs(fresh.take())
    assert [(d, m.start_line()) for d, m in out] == [
        (BOB.address, f"BYE {BOB.contact} SIP/2.0"), (P1, f"BYE {ALICE.contact} SIP/2.0")]
    to_bob, to_alice = (m for _, m in out)
    assert to_bob.get("cseq") == "6 BYE" and to_bob.get_all("route") == []
    assert to_alice.get("cseq") == "1 BYE" and to_alice.get_all("route") == [P1_RR]


# -- call operations on a restored dialog ------------------------------------------------------------


def test_hold_state_and_offer_versions_survive_the_restart() -> None:
    net = Net()
    call = established(net)
    held(net, call)
    fresh, call = restart(net, call)
    # Both legs are still on hold: a second hold is refused as before the restart.
    expect_error(480, "Both dialog legs are on hold", fresh.callops.hold, CALL_ID, None, None,
                 fresh.now)
    # Unhold: the CSeqs continue both sequences, the o= versions step on by one.
    fresh.callops.unhold(CALL_ID, None, None, fresh.now)
    at_bob, at_alice = reinvites(fresh, BOB, ALICE)
    assert (at_bob.get("cseq"), at_bob.body) == ("3 INVITE", sdp("alice", 12, 4000))
    assert (at_alice.get("cseq"), at_alice.body) == ("2 INVITE", sdp("bob", 22, 5000))
    accept(fresh, at_alice, ALICE, sdp("alice", 12, 4000))
    accept(fresh, at_bob, BOB, sdp("bob", 22, 5000))
    assert fresh.events() == [hold_event(CALL_ID, "callee", "unhold", "start"),
                              hold_event(CALL_ID, "caller", "unhold", "start"),
                              hold_event(CALL_ID, "caller", "unhold", "ok"),
                              hold_event(CALL_ID, "callee", "unhold", "ok")]
    # And on hold again.
    fresh.callops.hold(CALL_ID, "caller", None, fresh.now)
    at_alice, at_bob = reinvites(fresh, ALICE, BOB)
    assert at_alice.get("cseq") == "3 INVITE" and b"a=sendonly" in at_alice.body
    assert at_bob.get("cseq") == "4 INVITE" and b"a=recvonly" in at_bob.body


def test_hold_after_the_restart_of_a_call_never_held() -> None:
    net = Net()
    call = established(net)
    fresh, call = restart(net, call)
    assert (call.dialog.caller.hold_mask, call.dialog.callee.hold_mask) == (0, 0)
    held(fresh, call)
    # Alice hangs up: her BYE (CSeq 2) reaches Bob shifted by the hold's re-INVITE.
    bye = only_request(fresh.send(call.request("caller", "BYE"), ALICE), BOB)
    assert bye.get("cseq") == "3 BYE"


def test_blind_transfer_of_a_restored_dialog() -> None:
    """REFER with the next CSeq of Bob's sequence and the same dialog id as match parameter;
    the new call is linked, the transfer reported as in one process, the old call ended."""
    net = Net()
    call = established(net)
    held(net, call)  # one re-INVITE toward Alice already: her next CSeq from "Bob" is 2
    fresh, call = restart(net, call)
    refer = start_blind(fresh, call)
    assert refer.get("cseq") == "2 REFER"
    assert refer.get("refer-to") == f"<{CAROL_URI};osid=0.1>"
    inv = new_invite(f"{CAROL_URI};osid=0.1")
    out = msgs(fresh.send(inv, ALICE))
    assert [(d, m.start_line()) for d, m in out] == [
        (ALICE.address, "SIP/2.0 100 Trying"), (CAROL.address, f"INVITE {CAROL_URI} SIP/2.0")]
    at_carol = out[1][1]
    assert isinstance(at_carol, Request)
    assert fresh.events() == [transfer_event(CALL_ID, "caller", "call-2@alice", CAROL_URI,
                                             "start")]
    only_response(fresh.send(answer(at_carol, 200, "OK", to_tag="carol-tag",
                                    contact=CAROL.contact, body=SDP_C), CAROL), ALICE)
    assert fresh.events() == [transfer_event(CALL_ID, "caller", "call-2@alice", CAROL_URI,
                                             "ok", "200 OK")]
    out = fresh.send(call.notify("caller", b"SIP/2.0 200 OK\r\n", state="terminated"), ALICE)
    assert [(d.dest, normalized(d.data).split("\r\n", 1)[0]) for d in out] == [
        (ALICE.address, "SIP/2.0 200 OK"),
        (BOB.address, f"BYE {BOB.contact} SIP/2.0"),
        (ALICE.address, f"BYE {ALICE.contact} SIP/2.0"),
    ]
    bye_bob, bye_alice = (m for _, m in msgs(out[1:]))
    # Bob saw Alice's INVITE (1) and our hold re-INVITE (2): next is 3 (her NOTIFYs never
    # reached him).
    assert bye_bob.get("cseq") == "3 BYE"
    assert bye_alice.get("cseq") == "3 BYE"  # after the re-INVITE (1) and the REFER (2)
    assert not call.dialog.active


# -- lifetime ---------------------------------------------------------------------------------------


def test_the_lifetime_goes_on_from_where_it_was() -> None:
    net = Net(dialog_lifetime=100.0)
    call = established(net)
    net.now += 40.0
    fresh, call = restart(net, call, elapsed=10.0)
    # 40 s were used before the snapshot, 10 s between it and the restore: 50 s are left.
    assert fresh.advance(fresh.now + 49.9) == []
    out = fresh.advance(fresh.now + 0.2)
    assert set(lines_of(out)) == {(BOB.address, f"BYE {BOB.contact} SIP/2.0"),
                                  (ALICE.address, f"BYE {ALICE.contact} SIP/2.0")}
    assert not call.dialog.active and call.dialog.end_reason == "timeout"


def test_a_dialog_whose_lifetime_ran_out_meanwhile_is_ended_at_once() -> None:
    net = Net(dialog_lifetime=100.0)
    call = established(net)
    fresh, call = restart(net, call, elapsed=150.0)
    assert fresh.proxy.next_deadline() == fresh.now
    out = fresh.advance(fresh.now)
    assert {d.dest for d in out} == {ALICE.address, BOB.address}
    assert not call.dialog.active
    assert fresh.proxy.statistics()["dialog:expired_dialogs"] == 1


# -- what is restored and what is refused -----------------------------------------------------


def test_only_confirmed_dialogs_of_this_worker_are_restored() -> None:
    net = Net()
    call = established(net)
    snapshot = through_msgpack(call.dialog.snapshot(net.now))
    fresh = Net()
    assert fresh.proxy.restore_dialog(snapshot, fresh.now) is not None
    # Twice: the second one is refused (same id, same Call-ID).
    assert fresh.proxy.restore_dialog(snapshot, fresh.now) is None
    assert fresh.proxy.restore_dialog({**snapshot, "id": "0.77"}, fresh.now) is None
    assert Net().proxy.restore_dialog({**snapshot, "state": 2}, 0.0) is None
    assert Net().proxy.restore_dialog({**snapshot, "state": 5}, 0.0) is None
    with pytest.raises(ValueError, match="another worker"):
        Net().proxy.restore_dialog({**snapshot, "id": "3.1"}, 0.0)
    with pytest.raises(ValueError, match="another worker"):
        Net(worker_id=3).proxy.restore_dialog(snapshot, 0.0)
    for bad in ({**snapshot, "v": 2}, {**snapshot, "call_id": 5}, {**snapshot, "state": 9},
                {**snapshot, "caller": None}, {**snapshot, "hold": [1]},
                {**snapshot, "callee": {**snapshot["callee"], "address": ["sctp", "h", 1]}},
                {**snapshot, "callee": {**snapshot["callee"], "sdp": "text"}},
                {**snapshot, "caller": {**snapshot["caller"], "route_set": "<sip:x>"}},
                {k: v for k, v in snapshot.items() if k != "to_uri"}):
        with pytest.raises(ValueError):
            Net().proxy.restore_dialog(bad, 0.0)


def test_a_new_dialog_never_takes_the_id_of_a_restored_one() -> None:
    net = Net()
    call = established(net)
    fresh, _ = restart(net, call)
    # The fresh proxy's sequence starts where the first one's did: "0.1" is taken.
    Call(fresh, call_id="call-9@alice").establish()
    new = fresh.proxy.dialogs.by_call_id("call-9@alice")
    assert new is not None and new.id == "0.2"


def test_the_local_socket_of_a_leg_follows_the_new_listeners() -> None:
    net = Net()
    call = established(net)
    snapshot = through_msgpack(call.dialog.snapshot(net.now))
    snapshot["caller"]["local"] = ["udp", "127.0.0.1", 9999]  # a port we no longer have
    fresh = Net()
    dialog = fresh.proxy.restore_dialog(snapshot, fresh.now)
    assert dialog is not None
    assert str(dialog.caller.local) == "udp:127.0.0.1:5060"


# -- the dirty set -----------------------------------------------------------------------------------


def test_nothing_is_collected_without_tracking() -> None:
    net = Net()
    established(net)
    assert net.proxy.take_dirty(net.now) == ([], [])


def test_take_dirty_reports_changed_dialogs_once_and_ended_ones_as_ids() -> None:
    net = Net()
    net.proxy.track_changes()
    call = Call(net)
    call.send_invite()
    call.ring()
    # Early dialogs are not replicated.
    assert net.proxy.take_dirty(net.now) == ([], [])
    call.answer()
    (snapshot,), dropped = net.proxy.take_dirty(net.now)
    assert (snapshot["id"], snapshot["state"], dropped) == ("0.1", 3, [])
    call.ack()
    assert [s["state"] for s in net.proxy.take_dirty(net.now)[0]] == [4]
    assert net.proxy.take_dirty(net.now) == ([], [])  # nothing changed since
    # An in-dialog request changes the sender's CSeq; a hold the masks, offsets, versions.
    info = only_request(net.send(call.request("caller", "INFO"), ALICE), BOB)
    (snapshot,), _ = net.proxy.take_dirty(net.now)
    assert snapshot["caller"]["cseq"] == 2
    net.send(answer(info, 200, "OK"), BOB)
    net.proxy.take_dirty(net.now)
    net.callops.hold(CALL_ID, "callee", None, net.now)
    (snapshot,), _ = net.proxy.take_dirty(net.now)
    assert (snapshot["callee"]["cseq_offset"], snapshot.get("hold")) == (1, None)
    at_alice, at_bob = reinvites(net, ALICE, BOB)
    accept(net, at_alice, ALICE, sdp("alice", 11, 4000, "sendonly"))
    accept(net, at_bob, BOB, sdp("bob", 21, 5000, "recvonly"))
    (snapshot,), _ = net.proxy.take_dirty(net.now)
    assert snapshot["hold"] == [4, 8]
    # The call ends: its id is reported once, to drop.
    only_request(net.send(call.request("callee", "BYE"), BOB), ALICE)
    assert net.proxy.take_dirty(net.now) == ([], ["0.1"])
    assert net.proxy.take_dirty(net.now) == ([], [])


def test_a_call_that_ends_between_two_looks_is_reported_by_nobody() -> None:
    net = Net()
    net.proxy.track_changes()
    call = established(net)
    only_request(net.send(call.request("caller", "BYE"), ALICE), BOB)
    assert net.proxy.take_dirty(net.now) == ([], [])
    # A call that fails is not reported either.
    failed = Call(net, call_id="call-2@alice")
    at_bob = failed.send_invite()
    net.send(answer(at_bob, 486, "Busy Here", to_tag="bob-2"), BOB)
    assert net.proxy.take_dirty(net.now) == ([], [])


def test_a_restored_dialog_is_dropped_when_it_ends() -> None:
    net = Net()
    call = established(net)
    fresh, call = restart(net, call)
    fresh.proxy.track_changes()
    only_request(fresh.send(call.request("callee", "BYE"), BOB), ALICE)
    assert fresh.proxy.take_dirty(fresh.now) == ([], ["0.1"])


def test_restoring_needs_no_invite() -> None:
    """A restored dialog is a whole Dialog: what the proxy reads of one is all there."""
    net = Net()
    call = established(net)
    dialog = Dialog.from_snapshot(through_msgpack(call.dialog.snapshot(net.now)), 0.0)
    assert dialog.state is DialogState.CONFIRMED and dialog.active
    assert dialog.lifetime_timer is None and dialog.end_reason == ""
    assert dialog.leg_of("bob-tag") == (dialog.callee, dialog.caller)
    assert dialog.caller.sdp == SDP_A and dialog.callee.sdp == SDP_B

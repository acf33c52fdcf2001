"""What the core keeps per call, and that it lets go: a held dialog's lifetime shares a timer
with the dialogs ending in the same second, a settled INVITE transaction keeps no request,
route sets are tuples, and once every call and its timers are gone the tables are back to
empty (not merely without entries) and the timer queue holds nothing.
"""

from __future__ import annotations

import sys

from switchboard.sip import Request
from switchboard.sip.dialog import Dialog, DialogState, Leg, Lifetimes
from switchboard.sip.timers import TimerQueue
from switchboard.sip.transaction import SPENT

from ..kit.proxy import (
    ALICE,
    BOB,
    BOB_CONTACT,
    OUR_RR,
    SDP,
    Call,
    Net,
    ack_for_2xx,
    invite,
    one_request,
    one_response,
    parsed,
    reply,
    sip_request,
)

EMPTY_DICT = sys.getsizeof({})
NO_ROUTES: tuple[str, ...] = ()  # the one empty tuple


def _call(net: Net, n: int) -> None:
    """Call `n` set up (INVITE, 200, ACK) with its own Call-ID, tags and branches."""
    call_id = f"call-{n}@alice"
    [at_bob] = [m for dest, m in parsed(net.send(invite(
        branch=f"z9hG4bKi{n}", call_id=call_id, from_tag=f"a{n}"), ALICE)) if dest == BOB]
    assert isinstance(at_bob, Request)
    one_response(net.send(reply(at_bob, 200, to_tag=f"b{n}", body=SDP), BOB), ALICE)
    one_request(net.send(ack_for_2xx(branch=f"z9hG4bKk{n}", call_id=call_id,
                                     from_tag=f"a{n}", to_tag=f"b{n}"), ALICE), BOB)


def _hang_up(net: Net, n: int) -> None:
    bye = sip_request("BYE", BOB_CONTACT, branch=f"z9hG4bKb{n}", call_id=f"call-{n}@alice",
                      from_tag=f"a{n}", to_tag=f"b{n}", cseq=2, routes=[OUR_RR], contact=None)
    at_bob = one_request(net.send(bye, ALICE), BOB)
    one_response(net.send(reply(at_bob, 200, to_tag=None, contact=None), BOB), ALICE)


def test_dialogs_ending_in_the_same_second_share_one_timer() -> None:
    net = Net(dialog_lifetime=100.0)
    for n in range(50):
        net.now = 1.0 + n / 100  # all within one second
        _call(net, n)
    dialogs = list(net.proxy.dialogs)
    timers = {id(d.lifetime_timer) for d in dialogs}
    assert len(timers) == 1 and None not in {d.lifetime_timer for d in dialogs}
    # One of them hangs up: the others keep their end, at their own time.
    _hang_up(net, 0)
    assert net.advance(101.0 + 0.005) == []
    out = net.advance(101.0 + 0.015)  # calls 1 (101.01) ends, call 2 (101.02) not yet
    assert {d.dest for d in out} == {ALICE, BOB} and len(out) == 2
    assert [d.state for d in dialogs[1:3]] == [DialogState.DELETED, DialogState.CONFIRMED]
    net.advance(102.0)
    assert all(not d.active for d in dialogs)
    assert net.stats()["dialog:expired_dialogs"] == 49


def test_lifetimes_end_a_dialog_armed_earlier_than_the_rest_of_its_second() -> None:
    """A restored dialog may end earlier in a second than the dialogs already there."""
    timers = TimerQueue()
    timers.run_due(0.0)
    ended: list[tuple[str, float]] = []
    lifetimes = Lifetimes(timers, lambda d, now: ended.append((d.id, now)))
    late, early = _dialog("0.1"), _dialog("0.2")
    lifetimes.arm(late, 50.7)
    lifetimes.arm(early, 50.2)
    assert late.lifetime_timer is early.lifetime_timer
    assert timers.next_deadline() == 50.2
    timers.run_due(50.2)
    assert ended == [("0.2", 50.2)] and early.lifetime_timer is None
    assert timers.next_deadline() == 50.7
    lifetimes.disarm(late)
    assert timers.next_deadline() is None and len(timers) == 0


def _dialog(dialog_id: str) -> Dialog:
    return Dialog(dialog_id, f"{dialog_id}@x", "sip:a@x", "sip:b@x", DialogState.CONFIRMED,
                  0.0, Leg(tag="a"), Leg(tag="b"))


def test_a_settled_invite_transaction_keeps_no_request_and_still_absorbs() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    net.now = 1.0
    call.ack()
    [server] = [t for k, t in net.proxy.server_txns.items() if k[3] == "INVITE"]
    [client] = [t for k, t in net.proxy.client_txns.items() if k[1] == "INVITE"]
    assert server.request is SPENT and client.request is SPENT
    assert SPENT.headers == [] and SPENT.body == b""
    # Within the T4 wait an INVITE copy is still absorbed and a 2xx copy still relayed.
    assert net.send(call.invite_bytes, ALICE) == []
    again = one_response(call.bob_replies(200, body=SDP), ALICE)
    assert again.status == 200
    assert SPENT.headers == [] and SPENT.body == b""


def test_route_sets_are_tuples_and_the_empty_one_is_shared() -> None:
    net = Net()
    Call(net).establish()
    [dialog] = list(net.proxy.dialogs)
    assert dialog.caller.route_set is NO_ROUTES and dialog.callee.route_set is NO_ROUTES
    assert Leg().route_set is NO_ROUTES


def test_after_a_busy_moment_the_tables_and_timers_are_empty_again() -> None:
    net = Net()
    for n in range(300):
        net.now = n / 1000
        _call(net, n)
    assert sys.getsizeof(net.proxy.dialogs._by_id) > EMPTY_DICT
    for n in range(300):
        _hang_up(net, n)
    net.run_all_timers()
    net.assert_idle()
    proxy = net.proxy
    for table in (proxy.server_txns, proxy.client_txns, proxy.dialogs._by_id,
                  proxy.dialogs._by_callid, proxy._lifetimes._by_second):
        assert sys.getsizeof(table) == EMPTY_DICT
    assert proxy.timers._keys == [] and proxy.timers._buckets == {}


def test_a_timer_armed_and_cancelled_per_call_does_not_grow_the_queue() -> None:
    """Timer C's life: armed far ahead at each INVITE, cancelled by the answer a moment
    later, so its second's bucket empties again and again."""
    queue = TimerQueue()
    queue.run_due(0.0)
    for n in range(10_000):
        queue.call_at(180.0 + n / 10_000, lambda _now: None).cancel()
        assert len(queue._keys) <= 2 * len(queue._buckets)
    assert len(queue) == 0 and queue.next_deadline() is None
    assert queue._keys == [] and queue._buckets == {}


def test_the_seconds_of_far_timers_cancelled_go_with_them() -> None:
    queue = TimerQueue()
    queue.run_due(0.0)
    timers = [queue.call_at(43_200.0 + n, lambda _now: None) for n in range(100)]
    near = queue.call_at(30.0, lambda _now: None)
    for timer in timers:
        timer.cancel()
    # At most one second in `_keys` per live bucket, plus as many gone.
    assert list(queue._buckets) == [30] and 30 in queue._keys and len(queue._keys) <= 2
    near.cancel()
    assert queue._keys == [] and queue._buckets == {}



def test_the_settled_invite_transactions_wait_out_one_timer() -> None:
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    net.now = 1.0
    call.ack()
    [server] = [t for k, t in net.proxy.server_txns.items() if k[3] == "INVITE"]
    [client] = [t for k, t in net.proxy.client_txns.items() if k[1] == "INVITE"]
    assert server._ender is not None and client._ender is None
    net.advance(1.0 + net.proxy.config.timers.t4 + 0.01)
    assert server.key not in net.proxy.server_txns and client.key not in net.proxy.client_txns


def test_an_ack_after_the_servers_wait_leaves_the_client_its_own() -> None:
    """The 2xx ACK comes after the server side's Accepted wait ended: the client side
    still ends by its own timer, not never."""
    net = Net()
    call = Call(net)
    call.send_invite()
    call.answer()
    [client] = [t for k, t in net.proxy.client_txns.items() if k[1] == "INVITE"]
    [server] = [t for k, t in net.proxy.server_txns.items() if k[3] == "INVITE"]
    server._accepted_over(net.now)  # as if its timer L had fired first
    assert server.key not in net.proxy.server_txns
    call.ack()
    assert client._ender is not None
    net.run_all_timers()
    assert net.proxy.server_txns == {} and net.proxy.client_txns == {}

"""Transfers whose new call reaches another worker (issue 5), in the sans-IO core: two proxies
(workers 0 and 1) joined by a synchronous stand-in for the cluster runtime's `RemoteDialogs`,
which hands each remote call to whichever worker owns the named dialog."""

from __future__ import annotations

from typing import Any

from switchboard.sip import Request, parse_message
from switchboard.sip.wire import Datagram
from tests.unit.kit.callops import (
    ALICE,
    BOB,
    CAROL,
    CAROL_URI,
    SDP_C,
    UA,
    Net,
    answer,
    established,
    new_invite,
    only_request,
    transfer_event,
)


class Cluster:
    """Delivers `link`/`answer` to every other worker, as the controller routes them."""

    def __init__(self, *nets: Net) -> None:
        self.nets = nets
        self.delivered: list[tuple[str, ...]] = []
        for net in nets:
            net.callops.remote = _Remote(self, net)


class _Remote:
    def __init__(self, cluster: Cluster, origin: Net) -> None:
        self.cluster = cluster
        self.origin = origin

    def link(self, key: str, new_callid: str, destination: str) -> None:
        self.cluster.delivered.append(("link", key, new_callid))
        for net in self.cluster.nets:
            if net is not self.origin:
                net.callops.remote_link(key, new_callid, destination)

    def answer(self, key: str, new_callid: str, destination: str, status: int, reason: str,
               ok: bool) -> None:
        self.cluster.delivered.append(("answer", key, new_callid, str(status)))
        for net in self.cluster.nets:
            if net is not self.origin:
                net.callops.remote_answer(key, new_callid, destination, status, reason, ok,
                                          net.now)


def two_workers() -> tuple[Net, Net, Cluster]:
    w0, w1 = Net(worker_id=0), Net(worker_id=1)
    return w0, w1, Cluster(w0, w1)


def refer_to_of(net: Net) -> str:
    refer = only_request(net.take(), ALICE)
    value = refer.get("refer-to")
    assert value is not None
    net.send(answer(refer, 202, "Accepted"), ALICE)
    return value.strip("<>")


def at(out: list[Datagram], ua: UA) -> Request:
    """The one request relayed to `ua` (the 100 Trying back upstream left aside)."""
    sent = [parse_message(d.data) for d in out if d.dest == ua.address]
    assert len(sent) == 1 and isinstance(sent[0], Request), [d.data[:40] for d in out]
    return sent[0]


def states(net: Net) -> list[tuple[Any, ...]]:
    return [(e.params["state"], e.params["transfer_callid"], e.params["status"])
            for e in net.events() if e.name == "E_CALL_TRANSFER"]


def test_blind_transfer_linked_across_workers_by_the_dialog_id() -> None:
    w0, w1, cluster = two_workers()
    call = established(w0)
    assert call.dialog.id.startswith("0.")
    w0.callops.transfer(call.call_id, "caller", CAROL_URI, w0.now)
    target = refer_to_of(w0)
    assert target == f"{CAROL_URI};osid={call.dialog.id}"
    w0.events()
    # The transferee's new INVITE reaches worker 1, which owns nothing of the old call.
    out = w1.send(new_invite(target, call_id="call-2@alice"), ALICE)
    at_carol = at(out, CAROL)
    assert at_carol.uri == CAROL_URI  # the match parameter is stripped here too
    assert cluster.delivered == [("link", f"id:{call.dialog.id}", "call-2@alice")]
    assert states(w0) == [("start", "call-2@alice", "")]
    w1.send(answer(at_carol, 200, "OK", to_tag="carol-tag", contact=CAROL.contact,
                   body=SDP_C), CAROL)
    assert w0.events() == [transfer_event(call.call_id, "caller", "call-2@alice", CAROL_URI,
                                          "ok", "200 OK")]
    assert states(w1) == []  # worker 1 raises nothing about a dialog it does not own


def test_a_busy_target_on_the_other_worker_fails_the_transfer() -> None:
    w0, w1, _ = two_workers()
    call = established(w0)
    w0.callops.transfer(call.call_id, "caller", CAROL_URI, w0.now)
    target = refer_to_of(w0)
    w0.events()
    at_carol = at(w1.send(new_invite(target, call_id="call-2@alice"), ALICE), CAROL)
    w1.send(answer(at_carol, 486, "Busy Here", to_tag="carol-tag"), CAROL)
    assert states(w0) == [("start", "call-2@alice", ""), ("fail", "call-2@alice", "486 Busy Here")]
    # The old call is idle again: it can be transferred once more.
    w0.callops.transfer(call.call_id, "caller", CAROL_URI, w0.now)


def test_a_match_parameter_naming_this_worker_is_not_sent_anywhere() -> None:
    _, w1, cluster = two_workers()
    out = w1.send(new_invite(f"{CAROL_URI};osid=1.abc", call_id="call-9@alice"), ALICE)
    assert at(out, CAROL).uri == f"{CAROL_URI};osid=1.abc"  # unknown: left alone
    assert cluster.delivered == []


def test_attended_transfer_whose_replacing_invite_reaches_another_worker() -> None:
    w0, w1, cluster = two_workers()
    d1 = established(w0)  # alice -> bob, transferred to carol
    d2 = established(w0, caller=BOB, callee=CAROL, call_id="call-2@bob",
                     caller_tag="bob2-tag", callee_tag="carol-tag")
    w0.callops.attended_transfer(d1.call_id, "caller", d2.call_id, "callee", CAROL_URI, None,
                                 None, w0.now)
    target = refer_to_of(w0)
    w0.events()
    uri, _, _ = target.partition("?")
    replaces = "call-2@bob;to-tag=carol-tag;from-tag=bob2-tag"
    out = w1.send(new_invite(uri, call_id="call-3@alice", extra=[f"Replaces: {replaces}"]),
                  ALICE)
    at_carol = at(out, CAROL)
    assert at_carol.get("replaces") == replaces
    assert cluster.delivered == [("link", "replaces:call-2@bob;carol-tag;bob2-tag",
                                  "call-3@alice")]
    started = [(e.params["callid"], e.params["leg"], e.params["state"]) for e in w0.events()]
    assert started == [(d1.call_id, "caller", "start"), (d2.call_id, "callee", "start")]
    w1.send(answer(at_carol, 200, "OK", to_tag="carol-new", contact=CAROL.contact,
                   body=SDP_C), CAROL)
    done = {(e.params["callid"], e.params["state"]) for e in w0.events()}
    assert done == {(d1.call_id, "ok"), (d2.call_id, "ok")}


def test_attended_transfer_whose_two_calls_live_on_different_workers() -> None:
    """D1 (alice-bob) on worker 0, D2 (bob-carol) on worker 1: the runtime fetches D2's tags
    from worker 1, tells it to expect the replacing INVITE, and runs the REFER on worker 0;
    the INVITE with Replaces reaches worker 0, which links D1 itself and D2 through the
    cluster."""
    w0, w1, cluster = two_workers()
    d1 = established(w0)
    d2 = established(w1, caller=BOB, callee=CAROL, call_id="call-2@bob",
                     caller_tag="bob2-tag", callee_tag="carol-tag")
    replaces = w1.callops.replaces_for(d2.call_id, "callee")
    assert replaces is not None
    to_tag, from_tag, _ = replaces
    assert w1.callops.expect_replacing(d2.call_id, d1.call_id)
    w0.callops.attended_transfer(d1.call_id, "caller", d2.call_id, None, CAROL_URI, from_tag,
                                 to_tag, w0.now)
    target = refer_to_of(w0)
    w0.events()
    uri = target.partition("?")[0]
    header = f"{d2.call_id};to-tag={to_tag};from-tag={from_tag}"
    at_carol = at(w0.send(new_invite(uri, call_id="call-3@alice", extra=[f"Replaces: {header}"]),
                          ALICE), CAROL)
    assert cluster.delivered == [("link", f"replaces:{d2.call_id};{to_tag};{from_tag}",
                                  "call-3@alice")]
    assert [(e.params["callid"], e.params["state"]) for e in w0.events()] == [
        (d1.call_id, "start")]
    assert [(e.params["callid"], e.params["leg"], e.params["state"]) for e in w1.events()] == [
        (d2.call_id, "callee", "start")]
    w0.send(answer(at_carol, 200, "OK", to_tag="carol-new", contact=CAROL.contact,
                   body=SDP_C), CAROL)
    assert [e.params["state"] for e in w0.events()] == ["ok"]
    assert [e.params["state"] for e in w1.events()] == ["ok"]

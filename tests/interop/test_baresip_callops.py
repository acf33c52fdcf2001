"""Call operations driven from switchboard's MI, checked with real baresip user agents.

alice, bob and carol register with one `switchboard serve` (also their outbound proxy) that
sends every event to a datagram subscriber (``--event-datagram``, see ``events.py``). The MI
starts blind and attended transfers (``callops:transfer``) and holds/resumes calls
(``callops:hold`` / ``callops:unhold``); each test checks what the user agents saw (new call,
BYE, remote hold, the SDP direction they were offered) and the exact ``E_CALL_TRANSFER`` /
``E_CALL_HOLD`` sequence of every dialog involved.

Ordering rule of the event assertions: the stream of one dialog is compared exactly, in
arrival order; events of different dialogs, and the answers of the two legs to a hold (two
independent re-INVITE transactions), may interleave.

Every peer runs with ``--sip-trace``: a failed test's report shows each peer's SIP messages
(captured stdout), the events received, and the proxy's output (report section).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from tests.interop.baresip import BaresipPeer, PeerFactory, transfer_call_established
from tests.interop.sip_trace import Traced, trace
from tests.support.events import EventCollector
from tests.support.server import CONFIRMED, SwitchboardServer, wait_dialogs

pytestmark = [pytest.mark.baresip, pytest.mark.interop]

T = TypeVar("T")

CAROL = "sip:carol@127.0.0.1"  # carol's AOR: the proxy retargets it to her contact


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def sb(
    switchboard_server: Callable[..., SwitchboardServer], events: EventCollector
) -> SwitchboardServer:
    """switchboard in param mode, events to `events`; autouse so it starts before any peer
    and is torn down after them (a peer's quit unREGISTERs through it)."""
    return switchboard_server("--event-datagram", events.socket)


# SIP traces: `sip_trace.trace(peer, call_id)` reads what a peer sent and received.


def _requests(p: BaresipPeer, call_id: str, direction: str, method: str) -> list[Traced]:
    return [m for m in trace(p, call_id) if m.direction == direction and m.method == method]


def _sdp_direction(sdp: str) -> str:
    found = re.findall(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", sdp, re.M)
    assert len(found) == 1, f"expected one direction attribute (one audio stream):\n{sdp}"
    return str(found[0])


def _sdp_version(sdp: str) -> int:
    match = re.search(r"^o=\S+ \S+ (\d+) ", sdp, re.M)
    assert match, f"no o= line:\n{sdp}"
    return int(match[1])


def _final_reason(p: BaresipPeer, call_id: str) -> str:
    """`"200 <reason>"` of the 2xx `p` sent to the initial INVITE of `call_id`."""
    for m in trace(p, call_id):
        if m.direction == "TX" and m.status == 200 and m.cseq[1] == "INVITE":
            return m.start_line.split(" ", 1)[1]
    raise AssertionError(f"{p.user} sent no 200 to an INVITE of {call_id}")


def _eventually(check: Callable[[], T], timeout: float = 3.0) -> T:
    """`check()`'s value once it stops raising AssertionError (re-raised after `timeout` s).

    A peer's SIP trace reaches us through its stderr pipe, which can lag behind the events
    we waited for (a 200 to a BYE logged after "closed"): trace assertions retry.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _assert_no_errors(p: BaresipPeer, call_id: str) -> None:
    """No error answer (>= 300) was sent or received by `p` in call `call_id`."""
    bad = [str(m) for m in trace(p, call_id) if m.status is not None and m.status >= 300]
    assert not bad, f"{p.user}: error answers in {call_id}: {bad}"


# ----------------------------------------------------------------------------- helpers


def _register(
    peer: PeerFactory, sb: SwitchboardServer, *specs: tuple[str, dict[str, Any]]
) -> list[BaresipPeer]:
    registrar = f"sip:127.0.0.1:{sb.udp_port}"
    peers = [peer(user, registrar=registrar, sip_trace=True, **kw) for user, kw in specs]
    for p in peers:
        p.wait_event("registered")
        assert p.ready is not None and p.ready["registered"] is True, p.describe()
    return peers


def _confirmed(sb: SwitchboardServer, *call_ids: str) -> dict[str, dict[str, Any]]:
    """Wait until the dialogs are exactly `call_ids`, all confirmed; return them by Call-ID."""
    want = set(call_ids)
    dialogs = wait_dialogs(
        sb,
        lambda ds: {d["callid"] for d in ds} == want and all(d["state"] == CONFIRMED for d in ds),
        f"exactly {sorted(want)} confirmed",
    )
    return {d["callid"]: d for d in dialogs}


def _call(
    caller: BaresipPeer, callee: BaresipPeer, uri: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`caller` dials `uri` through the proxy; `callee` (auto-answer) picks up.
    Returns (caller's dial reply, callee's incoming event)."""
    dialed = caller.dial(uri)
    incoming = callee.wait_event("incoming", call_id=dialed["call_id"])
    caller.wait_event("established", call=dialed["call"])
    callee.wait_event("established", call=incoming["call"])
    return dialed, incoming


def _quiet_call(
    peer: PeerFactory, sb: SwitchboardServer
) -> tuple[BaresipPeer, BaresipPeer, dict[str, Any], dict[str, Any]]:
    """alice calls bob (auto-answer) through the proxy; returns once the dialog is confirmed
    and both have settled: (alice, bob, alice's dial reply, bob's incoming event)."""
    bob, alice = _register(peer, sb, ("bob", {"auto_answer": True}), ("alice", {}))
    dialed, incoming = _call(alice, bob, "sip:bob@127.0.0.1")
    _confirmed(sb, dialed["call_id"])
    _settle(bob, dialed["call_id"])
    _settle(alice, dialed["call_id"])
    return alice, bob, dialed, incoming


def _settle(p: BaresipPeer, call_id: str, quiet: float = 0.3, timeout: float = 5.0) -> None:
    """Wait until `p` has had no SIP traffic in `call_id` for `quiet` s (baresip may send a
    media-update re-INVITE right after the call is set up)."""
    deadline = time.monotonic() + timeout
    last = len(trace(p, call_id))
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = len(trace(p, call_id))
        if now == last:
            return
        last = now


TRANSFER_KEYS = ("leg", "transfer_callid", "destination", "state", "status")
HOLD_KEYS = ("leg", "action", "state")


def _transfers(events: EventCollector, call_id: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_CALL_TRANSFER", call_id, *TRANSFER_KEYS)


def _holds(events: EventCollector, call_id: str) -> list[tuple[Any, ...]]:
    return events.sequence("E_CALL_HOLD", call_id, *HOLD_KEYS)


# ----------------------------------------------------------------------------- blind transfer


@pytest.mark.parametrize("leg", ["caller", "callee"])
def test_blind_transfer_from_mi(
    sb: SwitchboardServer, peer: PeerFactory, events: EventCollector, leg: str
) -> None:
    """alice calls bob; the MI transfers `leg` (alice for caller, bob for callee) to carol.

    The transferee gets a REFER from the proxy (impersonating its peer) whose Refer-To carries
    the dialog id, calls carol with it, and is then in a call with carol; the party left
    behind gets the proxy's BYE, and so does the transferee's old call.
    """
    alice_policy = "auto" if leg == "caller" else "manual"
    bob_policy = "auto" if leg == "callee" else "manual"
    carol, bob, alice = _register(
        peer,
        sb,
        ("carol", {"auto_answer": True}),
        ("bob", {"auto_answer": True, "transfer_policy": bob_policy}),
        ("alice", {"transfer_policy": alice_policy}),
    )
    dialed, incoming = _call(alice, bob, "sip:bob@127.0.0.1")
    old = dialed["call_id"]
    dialog = _confirmed(sb, old)[old]
    transferee, transferee_call = (
        (alice, dialed["call"]) if leg == "caller" else (bob, incoming["call"])
    )
    left, left_call = (bob, incoming["call"]) if leg == "caller" else (alice, dialed["call"])

    assert sb.mi_result("callops:transfer", callid=old, leg=leg, destination=CAROL) == "Accepted"

    request = transferee.wait_event("transfer_request", call=transferee_call)
    assert request["target"] == f"{CAROL};osid={dialog['ID']}", request
    assert request["replaces"] is False
    new_call, carol_in = transfer_call_established(transferee, carol)
    new = new_call["call_id"]
    assert new and new != old
    assert carol_in["from"].startswith(f"sip:{transferee.user}@127.0.0.1"), carol_in

    # The proxy, as the transferor, ends the old call toward both parties.
    left.wait_event("closed", call=left_call)
    transferee.wait_event("closed", call=transferee_call)
    events.wait_for(
        "E_CALL_TRANSFER",
        lambda p: p["callid"] == old and p["state"] == "notify" and p["status"] == "200 OK",
    )
    _confirmed(sb, new)

    assert _transfers(events, old) == [
        (leg, "", CAROL, "start", ""),
        (leg, "", "", "notify", "100 Trying"),
        (leg, new, CAROL, "start", ""),
        (leg, new, CAROL, "ok", _eventually(lambda: _final_reason(carol, new))),
        (leg, new, "", "notify", "200 OK"),
    ], events.describe("E_CALL_TRANSFER")
    events.assert_quiet("E_CALL_TRANSFER", within=0.5)
    assert _transfers(events, new) == []
    assert events.params("E_CALL_HOLD") == []

    # On the wire: the REFER came from the proxy; carol's INVITE lost the match parameter;
    # neither old party sent a BYE, both received the proxy's.
    proxy = f"127.0.0.1:{sb.udp_port}"

    def wire() -> None:
        (refer,) = _requests(transferee, old, "RX", "REFER")
        assert refer.remote == proxy
        (invite,) = _requests(carol, new, "RX", "INVITE")
        assert "osid" not in invite.start_line, invite.start_line
        for p in (alice, bob):
            assert _requests(p, old, "TX", "BYE") == [], p.user
            (bye,) = _requests(p, old, "RX", "BYE")
            assert bye.remote == proxy
            _assert_no_errors(p, old)
        _assert_no_errors(transferee, new)
        _assert_no_errors(carol, new)

    _eventually(wire)

    transferee.hangup(call=new_call["call"])
    carol.wait_event("closed", call=carol_in["call"])
    wait_dialogs(sb, lambda ds: ds == [], "empty")


# ----------------------------------------------------------------------------- attended


def test_attended_transfer_from_mi(
    sb: SwitchboardServer, peer: PeerFactory, events: EventCollector
) -> None:
    """Call 1 alice→bob; bob holds it and consults carol (call 2 bob→carol); the MI hands
    alice over to carol: alice gets a REFER with Replaces (call 2, carol's tags), her INVITE
    with Replaces makes carol drop call 2 for the new call; the proxy ends call 1."""
    carol, bob, alice = _register(
        peer,
        sb,
        ("carol", {"auto_answer": True}),
        ("bob", {"auto_answer": True}),
        ("alice", {"transfer_policy": "auto"}),
    )
    d1, b1 = _call(alice, bob, "sip:bob@127.0.0.1")
    call1 = d1["call_id"]
    _settle(bob, call1)
    bob.hold(call=b1["call"])  # bob's own re-INVITE: the proxy's REFER must come after it
    assert alice.wait_event("remote_hold", call=d1["call"])["on"] is True
    d2, c2 = _call(bob, carol, CAROL)
    call2 = d2["call_id"]
    dialogs = _confirmed(sb, call1, call2)
    carol_tag = dialogs[call2]["CALLEES"][0]["callee_tag"]
    bob2_tag = dialogs[call2]["caller_tag"]
    # No destination given: the transfer targets call 2's To-URI (as bob dialed carol).
    target = dialogs[call2]["to_uri"]
    assert target.startswith(CAROL), target

    assert (
        sb.mi_result(
            "callops:transfer",
            callid=call1,
            leg="caller",
            transfer_callid=call2,
            transfer_leg="callee",
        )
        == "Accepted"
    )

    request = alice.wait_event("transfer_request", call=d1["call"])
    assert request["replaces"] is True, request
    assert request["target"] == target, request
    new_call, carol_new = transfer_call_established(alice, carol)
    new = new_call["call_id"]
    assert new not in ("", call1, call2)
    # carol's consultation call is replaced (her BYE to bob), the proxy ends call 1.
    carol.wait_event("closed", call=c2["call"])
    bob.wait_event("closed", call=d2["call"])
    bob.wait_event("closed", call=b1["call"])
    alice.wait_event("closed", call=d1["call"])
    events.wait_for(
        "E_CALL_TRANSFER",
        lambda p: p["callid"] == call1 and p["state"] == "notify" and p["status"] == "200 OK",
    )
    _confirmed(sb, new)

    ok = _eventually(lambda: _final_reason(carol, new))
    assert _transfers(events, call1) == [
        ("caller", "", target, "start", ""),
        ("caller", "", "", "notify", "100 Trying"),
        ("caller", new, target, "start", ""),
        ("caller", new, target, "ok", ok),
        ("caller", new, "", "notify", "200 OK"),
    ], events.describe("E_CALL_TRANSFER")
    assert _transfers(events, call2) == [
        ("callee", new, target, "start", ""),
        ("callee", new, target, "ok", ok),
    ], events.describe("E_CALL_TRANSFER")
    events.assert_quiet("E_CALL_TRANSFER", within=0.5)
    assert _transfers(events, new) == []

    # The REFER's Refer-To names call 2 with carol's tag as to-tag (RFC 3891, her view);
    # alice's INVITE carries that Replaces to carol.
    def wire() -> None:
        (refer,) = _requests(alice, call1, "RX", "REFER")
        (refer_to,) = refer.header("Refer-To")
        assert refer_to.startswith(f"<{target}?Replaces="), refer_to
        (invite,) = _requests(carol, new, "RX", "INVITE")
        (replaces,) = invite.header("Replaces")
        fields = replaces.split(";")
        assert fields[0] == call2
        assert sorted(fields[1:]) == sorted([f"to-tag={carol_tag}", f"from-tag={bob2_tag}"])
        assert _requests(alice, call1, "TX", "BYE") == []
        assert len(_requests(alice, call1, "RX", "BYE")) == 1
        for p, cid in (
            (alice, call1),
            (bob, call1),
            (bob, call2),
            (carol, call2),
            (alice, new),
            (carol, new),
        ):
            _assert_no_errors(p, cid)

    _eventually(wire)

    alice.hangup(call=new_call["call"])
    carol.wait_event("closed", call=carol_new["call"])
    wait_dialogs(sb, lambda ds: ds == [], "empty")


# ----------------------------------------------------------------------------- hold / unhold

# SDP direction offered to (caller, callee) on hold, spec §7.2.
HOLD_DIRECTIONS = {
    None: ("inactive", "inactive"),
    "both": ("inactive", "inactive"),
    "caller": ("sendonly", "recvonly"),
    "callee": ("recvonly", "sendonly"),
}


def _hold_params(callid: str, leg: str | None) -> dict[str, str]:
    return {"callid": callid} if leg is None else {"callid": callid, "leg": leg}


def _assert_hold_round(events: EventCollector, callid: str, action: str, before: int) -> None:
    """The E_CALL_HOLD events after the first `before` ones: both re-INVITEs start (caller
    first for hold, callee first for unhold), then each leg's ok."""
    seq = _holds(events, callid)[before : before + 4]
    first, second = ("caller", "callee") if action == "hold" else ("callee", "caller")
    assert seq[:2] == [(first, action, "start"), (second, action, "start")], seq
    for leg in ("caller", "callee"):
        assert [s for s in seq if s[0] == leg] == [(leg, action, "start"), (leg, action, "ok")], seq
    assert len(seq) == 4, seq


@pytest.mark.parametrize(
    "leg", [None, "both", "caller", "callee"], ids=["omitted", "both", "caller", "callee"]
)
def test_hold_and_unhold_from_mi(
    sb: SwitchboardServer, peer: PeerFactory, events: EventCollector, leg: str | None
) -> None:
    """MI hold then unhold of one leg or both: each leg gets a re-INVITE with the direction of
    spec §7.2 (a newer o= version each time), the UA offered sendonly/inactive reports it is
    held, and each leg raises start then ok."""
    alice, bob, dialed, incoming = _quiet_call(peer, sb)
    callid = dialed["call_id"]
    parties = {"caller": (alice, dialed["call"]), "callee": (bob, incoming["call"])}
    invites_before = {
        name: len(_requests(p, callid, "RX", "INVITE")) for name, (p, _) in parties.items()
    }

    assert sb.mi_result("callops:hold", **_hold_params(callid, leg)) == "OK"
    events.wait_for(
        "E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] != "start", count=2
    )
    _assert_hold_round(events, callid, "hold", 0)
    # Who reports being held: the UA that was offered sendonly or inactive.
    held = {
        name
        for name, d in zip(("caller", "callee"), HOLD_DIRECTIONS[leg], strict=True)
        if d in ("sendonly", "inactive")
    }
    for name, (p, call) in parties.items():
        if name in held:
            assert p.wait_event("remote_hold", call=call)["on"] is True
        else:
            p.assert_no_event("remote_hold", within=0.5, call=call)

    assert sb.mi_result("callops:unhold", **_hold_params(callid, leg)) == "OK"
    events.wait_for(
        "E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] != "start", count=4
    )
    _assert_hold_round(events, callid, "unhold", 4)
    for name, (p, call) in parties.items():
        if name in held:
            assert p.wait_event("remote_hold", call=call)["on"] is False
        else:
            p.assert_no_event("remote_hold", within=0.3, call=call)
    events.assert_quiet("E_CALL_HOLD", within=0.3)
    assert events.params("E_CALL_TRANSFER") == []

    # On the wire: two re-INVITEs per leg from the proxy, hold direction then sendrecv, each
    # with a newer o= version than the last SDP that leg received.
    proxy = f"127.0.0.1:{sb.udp_port}"

    def wire() -> None:
        for i, (name, (p, _)) in enumerate(parties.items()):
            received = _requests(p, callid, "RX", "INVITE")
            reinvites = received[invites_before[name] :]
            assert [m.remote for m in reinvites] == [proxy, proxy]
            assert [_sdp_direction(m.body) for m in reinvites] == [
                HOLD_DIRECTIONS[leg][i],
                "sendrecv",
            ], (name, [str(m) for m in reinvites])
            versions = [_sdp_version(m.body) for m in received]
            assert versions[-2] > max(versions[:-2]), (name, versions)
            assert versions[-1] > versions[-2], (name, versions)
            answered = [
                m
                for m in trace(p, callid)
                if m.direction == "TX" and m.status == 200 and m.cseq in [r.cseq for r in reinvites]
            ]
            assert len(answered) == 2, (name, [str(m) for m in trace(p, callid)])
            _assert_no_errors(p, callid)

    _eventually(wire)

    bob.hangup(call=incoming["call"])
    alice.wait_event("closed", call=dialed["call"])
    wait_dialogs(sb, lambda ds: ds == [], "empty")


# ----------------------------------------------------------------------------- CSeq continuity


def _assert_cseq_increasing(p: BaresipPeer, callid: str) -> None:
    """Every request `p` received in the call has a higher CSeq than the one before it
    (ACKs reuse their INVITE's), i.e. its peer's and the proxy's requests share one rising
    sequence; and every request `p` sent got its answers with its own CSeq."""
    messages = trace(p, callid)
    received = [
        m.cseq[0] for m in messages if m.direction == "RX" and m.method not in (None, "ACK", "CANCEL")
    ]
    assert received == sorted(received) and len(set(received)) == len(received), (
        p.user,
        [str(m) for m in messages if m.direction == "RX" and m.method],
    )
    sent = {m.cseq for m in messages if m.direction == "TX" and m.method not in (None, "ACK")}
    finals = {m.cseq for m in messages if m.direction == "RX" and m.status and m.status >= 200}
    assert sent <= finals, (p.user, sorted(sent - finals), [str(m) for m in messages])


@pytest.mark.parametrize("hangup_by", ["callee", "caller"])
def test_call_continues_after_mi_hold_and_unhold(
    sb: SwitchboardServer, peer: PeerFactory, events: EventCollector, hangup_by: str
) -> None:
    """The proxy's re-INVITEs shift each leg's CSeq; afterwards the UAs' own re-INVITEs (both
    directions) and the BYE (from either side) must still be accepted: the proxy rewrites
    their CSeq upward and maps the answers back."""
    alice, bob, dialed, incoming = _quiet_call(peer, sb)
    callid = dialed["call_id"]

    assert sb.mi_result("callops:hold", callid=callid) == "OK"
    events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] == "ok", count=2)
    assert sb.mi_result("callops:unhold", callid=callid) == "OK"
    events.wait_for("E_CALL_HOLD", lambda p: p["callid"] == callid and p["state"] == "ok", count=4)
    for p, call in ((alice, dialed["call"]), (bob, incoming["call"])):
        assert p.wait_event("remote_hold", call=call)["on"] is True
        assert p.wait_event("remote_hold", call=call)["on"] is False

    # alice's re-INVITEs (caller → callee), then bob's (callee → caller).
    assert alice.hold(call=dialed["call"])["changed"] is True
    assert bob.wait_event("remote_hold", call=incoming["call"])["on"] is True
    assert alice.resume(call=dialed["call"])["changed"] is True
    assert bob.wait_event("remote_hold", call=incoming["call"])["on"] is False
    assert bob.hold(call=incoming["call"])["changed"] is True
    assert alice.wait_event("remote_hold", call=dialed["call"])["on"] is True
    assert bob.resume(call=incoming["call"])["changed"] is True
    assert alice.wait_event("remote_hold", call=dialed["call"])["on"] is False
    _confirmed(sb, callid)

    if hangup_by == "callee":
        bob.hangup(call=incoming["call"])
    else:
        alice.hangup(call=dialed["call"])
    alice.wait_event("closed", call=dialed["call"])
    bob.wait_event("closed", call=incoming["call"])
    wait_dialogs(sb, lambda ds: ds == [], "empty")

    byer, byee = (bob, alice) if hangup_by == "callee" else (alice, bob)

    def wire() -> None:
        (bye,) = _requests(byer, callid, "TX", "BYE")
        assert [
            m.status for m in trace(byer, callid) if m.direction == "RX" and m.cseq == bye.cseq
        ] == [200], "BYE not answered 200"
        assert len(_requests(byee, callid, "RX", "BYE")) == 1
        for p in (alice, bob):
            _assert_no_errors(p, callid)
            _assert_cseq_increasing(p, callid)

    _eventually(wire)
    _assert_hold_round(events, callid, "hold", 0)
    _assert_hold_round(events, callid, "unhold", 4)
    assert len(_holds(events, callid)) == 8, _holds(events, callid)

"""Real baresip user agents calling each other through `switchboard serve`.

alice and bob register with switchboard's registrar and use it as their outbound proxy
(baresip puts ``Route: <sip:127.0.0.1:P;lr>`` on every request). alice dials the AOR
``sip:bob@127.0.0.1``; the proxy retargets it to bob's registered contact and
record-routes itself, so every in-dialog request (ACK, re-INVITE, BYE, from either side)
must come back through it. The MI (``dialog:list``, ``dialog:end_dlg``,
``statistics:get``) is checked against what the user agents see.

Every peer runs with ``--sip-trace``: when a test fails, its report shows each peer's SIP
messages (captured stdout) and the proxy's output (report section).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.interop.baresip import BaresipPeer, PeerFactory
from tests.interop.sip_trace import trace
from tests.support.server import CONFIRMED, SwitchboardServer, wait_dialogs

pytestmark = [pytest.mark.baresip, pytest.mark.interop]


@pytest.fixture(autouse=True)
def _proxy_outlives_peers(switchboard: SwitchboardServer) -> None:
    """Start switchboard before any peer, so it is torn down after them.

    A peer's ``quit`` unREGISTERs through the proxy; with the proxy gone first, every
    peer waits out its 10 s stop timeout and is killed.
    """


# SIP traces: `sip_trace.trace(peer, call_id)` reads what a peer sent and received.


def _assert_call_went_through_proxy(
    p: BaresipPeer, server: SwitchboardServer, call_id: str, sent: set[str]
) -> None:
    """Every message of the call went to or came from the proxy, and each request `p`
    sent carried the proxy's Route; `sent` are the methods `p` must have sent."""
    proxy = f"127.0.0.1:{server.udp_port}"
    route = _our_route(server)
    messages = trace(p, call_id)
    assert messages, f"no SIP trace of call {call_id} at {p.user}"
    strays = [m.start_line for m in messages if m.remote != proxy]
    assert not strays, f"{p.user} talked to someone other than the proxy {proxy}: {strays}"
    requests = [m for m in messages if m.direction == "TX" and m.method is not None]
    assert sent <= {m.method for m in requests}, [m.start_line for m in requests]
    unrouted = [m.start_line for m in requests if not _is_route(m.header("Route"), route)]
    assert not unrouted, f"{p.user}'s requests without Route: {route}: {unrouted}"


def _our_route(server: SwitchboardServer) -> str:
    return f"<sip:127.0.0.1:{server.udp_port};lr"


def _is_route(values: list[str], route: str) -> bool:
    """One Route, ours: the outbound proxy a UA is configured with, or the proxy's
    Record-Route as written, with its signature (`;sb=` followed by 16 hex digits)."""
    if len(values) != 1:
        return False
    value = values[0]
    return value == route + ">" or (value.startswith(route + ";sb=")
                                    and len(value) == len(route) + len(";sb=") + 16 + 1)


def _registered_pair(
    peer: PeerFactory, server: SwitchboardServer, *, bob_auto_answer: bool
) -> tuple[BaresipPeer, BaresipPeer]:
    """bob, then alice, both registered through `server` (also their outbound proxy)."""
    registrar = f"sip:127.0.0.1:{server.udp_port}"
    bob = peer("bob", registrar=registrar, auto_answer=bob_auto_answer, sip_trace=True)
    alice = peer("alice", registrar=registrar, sip_trace=True)
    for p in (bob, alice):
        p.wait_event("registered")
        assert p.ready is not None and p.ready["registered"] is True, p.describe()
        assert p.aor == f"sip:{p.user}@127.0.0.1"
    return alice, bob


def _one_confirmed(server: SwitchboardServer, call_id: str) -> dict[str, Any]:
    (dialog,) = wait_dialogs(
        server,
        lambda ds: len(ds) == 1 and ds[0]["state"] == CONFIRMED,
        "exactly one dialog in state 4",
    )
    assert dialog["callid"] == call_id
    return dialog


def _no_dialogs(server: SwitchboardServer) -> None:
    wait_dialogs(server, lambda ds: ds == [], "empty")


def _establish(alice: BaresipPeer, bob: BaresipPeer) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice dials bob's AOR through the proxy; bob (auto-answer) picks up."""
    dialed = alice.dial("sip:bob@127.0.0.1")
    incoming = bob.wait_event("incoming")
    assert incoming["call_id"] == dialed["call_id"]
    alice.wait_event("established", call=dialed["call"])
    bob.wait_event("established", call=incoming["call"])
    return dialed, incoming


def test_call_through_proxy_answer_and_hangup(
    switchboard: SwitchboardServer, peer: PeerFactory
) -> None:
    alice, bob = _registered_pair(peer, switchboard, bob_auto_answer=False)
    usrloc = switchboard.mi_result("statistics:get", statistics=["usrloc:"])
    assert usrloc["usrloc:registered_contacts"] == 2

    dialed = alice.dial("sip:bob@127.0.0.1")
    incoming = bob.wait_event("incoming")
    assert incoming["call_id"] == dialed["call_id"]
    assert incoming["from"].startswith("sip:alice@127.0.0.1")
    alice.wait_event("ringing", call=dialed["call"])  # bob's 180, relayed

    bob.answer()
    a_est = alice.wait_event("established", call=dialed["call"])
    b_est = bob.wait_event("established", call=incoming["call"])
    assert a_est["call_id"] == b_est["call_id"] == dialed["call_id"]

    dialog = _one_confirmed(switchboard, dialed["call_id"])
    assert dialog["caller_tag"]
    (callee,) = dialog["CALLEES"]
    assert callee["callee_tag"]
    assert callee["callee_tag"] != dialog["caller_tag"]
    assert "alice" in dialog["from_uri"]
    assert "bob" in dialog["to_uri"]
    # bob's contact is where the proxy sends alice's in-dialog requests.
    assert f":{bob.sip_port}" in callee["callee_contact"]
    assert f":{alice.sip_port}" in dialog["caller_contact"]
    assert (
        switchboard.mi_result("dialog:list", callid=dialed["call_id"])["Dialog"]["ID"]
        == dialog["ID"]
    )

    alice.hangup()
    alice.wait_event("closed", call=dialed["call"])
    b_closed = bob.wait_event("closed", call=incoming["call"])
    assert b_closed["call_id"] == dialed["call_id"]
    _no_dialogs(switchboard)

    stats = switchboard.mi_result("statistics:get", statistics=["dialog:"])
    assert stats["dialog:processed_dialogs"] == 1, stats
    assert stats["dialog:active_dialogs"] == 0, stats
    assert stats["dialog:failed_dialogs"] == 0, stats

    _assert_call_went_through_proxy(alice, switchboard, dialed["call_id"], {"INVITE", "ACK", "BYE"})
    _assert_call_went_through_proxy(bob, switchboard, dialed["call_id"], set())

    # quit unREGISTERs through the proxy (expires=0).
    for p in (alice, bob):
        assert p.stop() == 0, p.describe()
        p.wait_event("unregistered")
    usrloc = switchboard.mi_result("statistics:get", statistics=["usrloc:"])
    assert usrloc["usrloc:registered_contacts"] == 0


def test_hold_resume_and_callee_hangup_through_proxy(
    switchboard: SwitchboardServer, peer: PeerFactory
) -> None:
    alice, bob = _registered_pair(peer, switchboard, bob_auto_answer=True)
    dialed, incoming = _establish(alice, bob)
    call_id = dialed["call_id"]
    _one_confirmed(switchboard, call_id)

    # Caller-side re-INVITEs: relayed along the route set the proxy recorded.
    alice.hold()  # replies once the re-INVITE's answer arrived
    assert bob.wait_event("remote_hold")["on"] is True
    assert "a=sendonly" in _one_confirmed(switchboard, call_id)["caller_sdp"]
    alice.resume()
    assert bob.wait_event("remote_hold")["on"] is False
    assert "a=sendonly" not in _one_confirmed(switchboard, call_id)["caller_sdp"]

    # Callee-side re-INVITEs: bob's requests follow the Record-Route he got in the INVITE.
    bob.hold()
    assert alice.wait_event("remote_hold")["on"] is True
    callee_sdp = _one_confirmed(switchboard, call_id)["CALLEES"][0]["callee_sdp"]
    assert "a=sendonly" in callee_sdp
    bob.resume()
    assert alice.wait_event("remote_hold")["on"] is False

    (b_call,) = bob.state()["calls"]
    assert b_call["state"] == "established" and b_call["remote_hold"] is False
    (a_call,) = alice.state()["calls"]
    assert a_call["state"] == "established" and a_call["on_hold"] is False

    # The callee's BYE: routed through the proxy, which ends its dialog.
    bob.hangup()
    bob.wait_event("closed", call=incoming["call"])
    alice.wait_event("closed", call=dialed["call"])
    _no_dialogs(switchboard)

    # bob's requests follow the route set from the INVITE's Record-Route: the proxy.
    invites = [m for m in trace(bob, call_id) if m.direction == "RX" and m.method == "INVITE"]
    invite = invites[0]  # the initial one; re-INVITEs carry no Record-Route
    assert _is_route(invite.header("Record-Route"), _our_route(switchboard))
    _assert_call_went_through_proxy(alice, switchboard, call_id, {"INVITE", "ACK"})
    _assert_call_went_through_proxy(bob, switchboard, call_id, {"INVITE", "ACK", "BYE"})


def test_mi_end_dlg_tears_the_call_down(switchboard: SwitchboardServer, peer: PeerFactory) -> None:
    alice, bob = _registered_pair(peer, switchboard, bob_auto_answer=True)
    dialed, incoming = _establish(alice, bob)
    _one_confirmed(switchboard, dialed["call_id"])

    assert switchboard.mi_result("dialog:end_dlg", dialog_id=dialed["call_id"]) == "OK"
    alice.wait_event("closed", call=dialed["call"])
    bob.wait_event("closed", call=incoming["call"])
    _no_dialogs(switchboard)
    assert [c["state"] for c in alice.state()["calls"]] == ["closed"]
    assert [c["state"] for c in bob.state()["calls"]] == ["closed"]

    stats = switchboard.mi_result("statistics:get", statistics=["dialog:"])
    assert stats["dialog:processed_dialogs"] == 1, stats
    assert stats["dialog:active_dialogs"] == 0, stats

    # The proxy's BYEs: one to each side, each from the proxy, and neither UA sent one.
    for p in (alice, bob):
        byes = [m for m in trace(p, dialed["call_id"]) if m.method == "BYE"]
        assert [m.direction for m in byes] == ["RX"], [m.start_line for m in byes]
        assert byes[0].remote == f"127.0.0.1:{switchboard.udp_port}"
    _assert_call_went_through_proxy(alice, switchboard, dialed["call_id"], {"INVITE", "ACK"})
    _assert_call_went_through_proxy(bob, switchboard, dialed["call_id"], set())
